//! The one error type of ucgate. Every refusal ucgate makes, on a route or at an endpoint of its
//! own, is a variant here, and this file alone decides its status, its code, its extra headers
//! (`WWW-Authenticate`, `Retry-After`, `Allow`, `Connection: close`) and renders the JSON body
//! `{"error": "<Code>", "message": "<text>"}`. Messages never carry a secret: variants hold
//! only fixed texts, codes from a protocol, or reasons made from them.
//!
//! Where XiVO's xuc API defines a code it is used (`InvalidCredentials`, `InvalidJson`,
//! `UnhandledError`, `UserNotFound`, `SsoAuthenticationFailed`); ucgate's own codes follow the
//! same CamelCase style.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::path::PathError;

/// The challenge of a missing or refused UC or shared token (RFC 9110 §11.6.1).
const TOKEN_CHALLENGE: HeaderValue = HeaderValue::from_static("X-Auth-Token realm=\"ucgate\"");
/// SPNEGO's challenge, inviting the client to (re)try Kerberos (RFC 4559 §4).
const NEGOTIATE_CHALLENGE: HeaderValue = HeaderValue::from_static("Negotiate");
/// A refused bearer token (RFC 6750 §3.1).
const BEARER_CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer error=\"invalid_token\"");

/// A refusal, by the phase or endpoint that made it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GateError {
    // --- the request itself (400, 405, 408, 413, 414, 431, 501) --------------------------
    #[error("{0}")]
    InvalidPath(#[from] PathError),
    /// A request head hyper could not parse (request line, header syntax, framing headers).
    #[error("the request is not valid HTTP/1.1")]
    MalformedRequest,
    /// Plain HTTP sent to a listener that speaks TLS (an `http://` URL for an `https://` one).
    #[error("a plain HTTP request reached ucgate's TLS listener: use https://")]
    PlainHttpToTls,
    /// A request head larger than `server.max_header_bytes` or with more than
    /// `server.max_headers` headers.
    #[error("the request head is too large")]
    HeadersTooLarge,
    #[error("the request target must be a path")]
    InvalidTarget,
    #[error("the request target is too long")]
    UriTooLong,
    #[error("this method is not allowed here")]
    MethodNotAllowed(&'static str),
    #[error("only the chunked transfer coding is supported")]
    UnsupportedTransferCoding,
    #[error("the request was not received in time")]
    RequestTimeout,
    #[error("the request body is malformed or was cut off")]
    InvalidBody,
    #[error("the request body is too large")]
    BodyTooLarge,
    /// A token-exchange body that is not the JSON expected; the message says what was expected,
    /// never what was sent (a password may be in it).
    #[error("{0}")]
    InvalidJson(&'static str),
    /// A malformed exchange request (missing or repeated parameter, not a service ticket).
    #[error("{0}")]
    InvalidRequest(&'static str),

    // --- routing (404) --------------------------------------------------------------------
    #[error("no route for this path")]
    NoRoute,

    // --- credentials on routes, check and logout (400, 401, 403) ---------------------------
    #[error(
        "an X-Auth-Token header, an Authorization: Bearer header or a token parameter is required"
    )]
    TokenMissing,
    #[error("the token is invalid or expired")]
    TokenInvalid,
    #[error("the token has expired")]
    TokenExpired,
    /// Different tokens in different places, or several `X-Auth-Token` (or `Bearer`) header
    /// lines, identical or not: the message must hold for both.
    #[error("the request carries several tokens")]
    AmbiguousToken,
    #[error("this credential does not open this route")]
    Forbidden,
    /// A preflight from an origin (or for a method) that is not allowed.
    #[error("this origin may not call here from a browser")]
    CorsNotAllowed,

    // --- token exchanges (401, 429) ---------------------------------------------------------
    #[error("invalid login or password")]
    InvalidCredentials,
    /// Proven by an identity provider, but not in the directory, disabled or without a profile.
    #[error("the user is not allowed to log in")]
    UserNotFound,
    /// Locked out by the brute-force protection; retry after this many seconds.
    #[error("too many failed attempts, retry later")]
    TooManyAttempts(u64),
    /// Kerberos (SPNEGO) refused; answered with a `Negotiate` challenge.
    #[error("{0}")]
    SsoAuthenticationFailed(&'static str),
    /// The CAS server refused the ticket as unknown, used, expired or not for this service
    /// (`INVALID_TICKET`, `INVALID_SERVICE`): XiVO's web clients then go back to the CAS login.
    #[error("the CAS server refused the ticket: {0}")]
    CasServerInvalidTicket(String),
    /// The CAS server refused the ticket with another `authenticationFailure` code.
    #[error("the CAS server refused the ticket: {0}")]
    CasAuthenticationFailed(String),
    #[error("the service is not one of the allowed CAS services")]
    CasServiceNotAllowed,
    /// The bearer token of the OIDC exchange is missing or malformed.
    #[error("{0}")]
    OidcInvalidParameter(&'static str),
    /// The OIDC token was verified and refused, for this reason.
    #[error("{0}")]
    OidcAuthenticationFailed(String),

    // --- what ucgate depends on (500, 502, 503, 504) -------------------------------------
    #[error("the upstream cannot be reached")]
    UpstreamUnavailable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the CAS server's answer is not a valid CAS response")]
    CasInvalidResponse,
    #[error("the CAS server found the validation request invalid")]
    CasInvalidRequest,
    #[error("the CAS server failed with an internal error")]
    CasInternalError,
    #[error("the CAS server cannot be reached")]
    CasUnavailable,
    #[error("the CAS server did not answer in time")]
    CasTimeout,
    /// The user directory (XiVO's database, LDAP) cannot answer now; retry after this many
    /// seconds.
    #[error("the user directory cannot be reached, retry later")]
    DirectoryUnavailable(u64),
    /// The site's xuc (`[xuc]`) cannot check a token it issued now: unreachable, too slow, or
    /// answering something else than a check answer. Fail closed; retry after a few seconds.
    #[error("the xuc that issued the token cannot check it now, retry later")]
    XucUnavailable,
    #[error("the service is not ready")]
    NotReady,
    #[error("an internal error occurred")]
    Unhandled,
}

/// Seconds a client is told to wait after `XucUnavailable`: about one reachability probe.
const XUC_RETRY_AFTER: u64 = 5;

impl GateError {
    /// The answer to a client locked out by the brute-force protection.
    pub fn locked_out(retry_after: std::time::Duration) -> Self {
        GateError::TooManyAttempts(retry_after.as_secs().max(1))
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        use GateError::*;
        match self {
            InvalidPath(_) | MalformedRequest | PlainHttpToTls | InvalidTarget | AmbiguousToken
            | InvalidJson(_) | InvalidBody | InvalidRequest(_) | CasServiceNotAllowed => {
                StatusCode::BAD_REQUEST
            }
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            TokenMissing
            | TokenInvalid
            | TokenExpired
            | InvalidCredentials
            | UserNotFound
            | SsoAuthenticationFailed(_)
            | CasServerInvalidTicket(_)
            | CasAuthenticationFailed(_)
            | OidcInvalidParameter(_)
            | OidcAuthenticationFailed(_) => StatusCode::UNAUTHORIZED,
            Forbidden | CorsNotAllowed => StatusCode::FORBIDDEN,
            NoRoute => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UriTooLong => StatusCode::URI_TOO_LONG,
            TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            Unhandled => StatusCode::INTERNAL_SERVER_ERROR,
            UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            UpstreamUnavailable | CasInvalidResponse | CasInvalidRequest | CasInternalError
            | CasUnavailable => StatusCode::BAD_GATEWAY,
            NotReady | DirectoryUnavailable(_) | XucUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamTimeout | CasTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The CamelCase code of the JSON body.
    pub fn code(&self) -> &'static str {
        use GateError::*;
        match self {
            InvalidPath(_) => "InvalidPath",
            MalformedRequest => "MalformedRequest",
            PlainHttpToTls => "PlainHttpToTls",
            HeadersTooLarge => "HeadersTooLarge",
            InvalidTarget => "InvalidTarget",
            UriTooLong => "UriTooLong",
            MethodNotAllowed(_) => "MethodNotAllowed",
            UnsupportedTransferCoding => "UnsupportedTransferCoding",
            RequestTimeout => "RequestTimeout",
            InvalidBody => "InvalidBody",
            BodyTooLarge => "RequestTooLarge",
            InvalidJson(_) => "InvalidJson",
            InvalidRequest(_) => "InvalidRequest",
            NoRoute => "NoRoute",
            TokenMissing => "TokenMissing",
            TokenInvalid => "TokenInvalid",
            TokenExpired => "TokenExpired",
            AmbiguousToken => "AmbiguousToken",
            Forbidden => "Forbidden",
            CorsNotAllowed => "CorsNotAllowed",
            InvalidCredentials => "InvalidCredentials",
            UserNotFound => "UserNotFound",
            TooManyAttempts(_) => "TooManyAttempts",
            SsoAuthenticationFailed(_) => "SsoAuthenticationFailed",
            CasServerInvalidTicket(_) => "CasServerInvalidTicket",
            CasAuthenticationFailed(_) => "CasAuthenticationFailed",
            CasServiceNotAllowed => "CasServiceNotAllowed",
            OidcInvalidParameter(_) => "OidcInvalidParameter",
            OidcAuthenticationFailed(_) => "OidcAuthenticationFailed",
            UpstreamUnavailable => "UpstreamUnavailable",
            UpstreamTimeout => "UpstreamTimeout",
            CasInvalidResponse => "CasInvalidResponse",
            CasInvalidRequest => "CasInvalidRequest",
            CasInternalError => "CasInternalError",
            CasUnavailable => "CasUnavailable",
            CasTimeout => "CasTimeout",
            NotReady => "NotReady",
            DirectoryUnavailable(_) => "DirectoryUnavailable",
            XucUnavailable => "XucUnavailable",
            Unhandled => "UnhandledError",
        }
    }

    /// The JSON body: `{"error": "<Code>", "message": "<text>"}`.
    pub fn json_body(&self) -> String {
        serde_json::json!({ "error": self.code(), "message": self.to_string() }).to_string()
    }

    /// The `WWW-Authenticate` challenge of a 401: the scheme the endpoint or route expects.
    fn challenge(&self) -> Option<HeaderValue> {
        use GateError::*;
        match self {
            SsoAuthenticationFailed(_) => Some(NEGOTIATE_CHALLENGE),
            OidcInvalidParameter(_) | OidcAuthenticationFailed(_) => Some(BEARER_CHALLENGE),
            // A refused CAS ticket is answered by going back to the CAS login page, not by
            // a challenge.
            CasServerInvalidTicket(_) | CasAuthenticationFailed(_) => None,
            _ if self.status() == StatusCode::UNAUTHORIZED => Some(TOKEN_CHALLENGE),
            _ => None,
        }
    }

    /// The answer: status, JSON body, and the headers the variant calls for.
    pub fn into_response(self) -> Response<Body> {
        let mut response = json_response(self.status(), self.json_body());
        let challenge = self.challenge();
        let headers = response.headers_mut();
        if let Some(challenge) = challenge {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        match self {
            GateError::TooManyAttempts(seconds) | GateError::DirectoryUnavailable(seconds) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            GateError::XucUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(XUC_RETRY_AFTER));
            }
            // The body was not read to its end: the connection cannot carry another request.
            GateError::BodyTooLarge | GateError::InvalidBody | GateError::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            GateError::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_gets_its_challenge() {
        let challenge = |e: GateError| {
            e.into_response()
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            challenge(GateError::TokenMissing).as_deref(),
            Some("X-Auth-Token realm=\"ucgate\"")
        );
        assert_eq!(
            challenge(GateError::SsoAuthenticationFailed("no")).as_deref(),
            Some("Negotiate")
        );
        assert_eq!(
            challenge(GateError::OidcInvalidParameter("no")).as_deref(),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(
            challenge(GateError::OidcAuthenticationFailed("no".into())).as_deref(),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(
            challenge(GateError::CasAuthenticationFailed("X".into())),
            None
        );
        assert_eq!(challenge(GateError::Forbidden), None);
    }
}
