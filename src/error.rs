//! The one error type of ucgate: each variant knows its status and renders the JSON body
//! `{"error": "<Code>", "message": "<text>"}`. Messages never carry a secret.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::routes::PathError;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    InvalidPath(#[from] PathError),
    #[error("the request target must be a path")]
    InvalidTarget,
    #[error("no route for this path")]
    NoRoute,
    #[error("an X-Auth-Token header or a token parameter is required")]
    TokenMissing,
    #[error("the token is invalid or expired")]
    TokenInvalid,
    #[error("the request carries several different tokens")]
    AmbiguousToken,
    #[error("this credential does not open this route")]
    Forbidden,
    #[error("the upstream cannot be reached")]
    UpstreamUnavailable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the service is not ready")]
    NotReady,
    #[error("the token has expired")]
    TokenExpired,
    #[error("invalid login or password")]
    InvalidCredentials,
    #[error("the body is not the expected JSON")]
    InvalidJson,
    #[error("the request body is malformed or was cut off")]
    InvalidBody,
    #[error("the request body is too large")]
    BodyTooLarge,
    #[error("too many failed attempts, retry later")]
    TooManyAttempts(u64),
    #[error("this method is not allowed here")]
    MethodNotAllowed(&'static str),
    #[error("an internal error occurred")]
    Unhandled,
    #[error("the request target is too long")]
    UriTooLong,
    #[error("the request was not received in time")]
    RequestTimeout,
    #[error("only the chunked transfer coding is supported")]
    UnsupportedTransferCoding,
    #[error("the user is not allowed to log in")]
    UserNotFound,
    /// An exchange endpoint's own failure (SSO, CAS, OIDC): its status, XiVO-style code, a
    /// message that must never carry a secret, and the `WWW-Authenticate` challenge if any.
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
        challenge: Option<HeaderValue>,
    },
}

impl GateError {
    /// The answer to a client locked out by the brute-force protection.
    pub fn locked_out(retry_after: std::time::Duration) -> Self {
        GateError::TooManyAttempts(retry_after.as_secs().max(1))
    }

    pub fn status(&self) -> StatusCode {
        use GateError::*;
        match self {
            InvalidPath(_) | InvalidTarget | AmbiguousToken | InvalidJson | InvalidBody => {
                StatusCode::BAD_REQUEST
            }
            TokenMissing | TokenInvalid | TokenExpired | InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            Unhandled => StatusCode::INTERNAL_SERVER_ERROR,
            UserNotFound => StatusCode::UNAUTHORIZED,
            UriTooLong => StatusCode::URI_TOO_LONG,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Refused { status, .. } => *status,
            Forbidden => StatusCode::FORBIDDEN,
            NoRoute => StatusCode::NOT_FOUND,
            UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            NotReady => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The CamelCase code of the JSON body.
    pub fn code(&self) -> &'static str {
        use GateError::*;
        match self {
            InvalidPath(_) => "InvalidPath",
            InvalidTarget => "InvalidTarget",
            NoRoute => "NoRoute",
            TokenMissing => "TokenMissing",
            TokenInvalid => "TokenInvalid",
            AmbiguousToken => "AmbiguousToken",
            Forbidden => "Forbidden",
            UpstreamUnavailable => "UpstreamUnavailable",
            UpstreamTimeout => "UpstreamTimeout",
            NotReady => "NotReady",
            TokenExpired => "TokenExpired",
            InvalidCredentials => "InvalidCredentials",
            InvalidJson => "InvalidJson",
            InvalidBody => "InvalidBody",
            BodyTooLarge => "RequestTooLarge",
            TooManyAttempts(_) => "TooManyAttempts",
            MethodNotAllowed(_) => "MethodNotAllowed",
            Unhandled => "UnhandledError",
            UserNotFound => "UserNotFound",
            UriTooLong => "UriTooLong",
            RequestTimeout => "RequestTimeout",
            UnsupportedTransferCoding => "UnsupportedTransferCoding",
            Refused { code, .. } => code,
        }
    }

    /// The JSON body: `{"error": "<Code>", "message": "<text>"}`.
    pub fn json_body(&self) -> String {
        serde_json::json!({ "error": self.code(), "message": self.to_string() }).to_string()
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = json_response(self.status(), self.json_body());
        let headers = response.headers_mut();
        match self {
            GateError::TooManyAttempts(seconds) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            // The body was not read to its end: the connection cannot carry another request.
            GateError::BodyTooLarge | GateError::InvalidBody | GateError::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            GateError::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            GateError::Refused {
                challenge: Some(challenge),
                ..
            } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge);
            }
            GateError::Refused { .. } => {}
            _ if self.status() == StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("X-Auth-Token realm=\"ucgate\""),
                );
            }
            _ => {}
        }
        response
    }
}

/// A JSON response made by ucgate itself.
pub fn json_response(status: StatusCode, body: impl std::fmt::Display) -> Response<Body> {
    let mut response = Response::new(crate::body::full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
