//! Endpoints served by ucgate itself, matched on the exact normalised path before any route.

use std::sync::Arc;

use http::{Response, StatusCode, request};
use hyper::body::Incoming;

use crate::auth::token::Method;
use crate::auth::{self, cas, kerberos, login, oidc};
use crate::body::{self, Body};
use crate::error::{GateError, json_response};
use crate::gateway::{ConnInfo, Gateway, State};
use crate::metrics::metrics;
use crate::telemetry::RequestLog;

/// The local endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    Login,
    Check,
    Logout,
    Sso,
    Cas,
    Oidc,
}

impl Endpoint {
    pub fn find(path: &str) -> Option<Self> {
        Some(match path {
            "/healthz" => Endpoint::Health,
            "/readyz" => Endpoint::Ready,
            "/metrics" => Endpoint::Metrics,
            "/xuc/api/2.0/auth/login" => Endpoint::Login,
            "/xuc/api/2.0/auth/check" => Endpoint::Check,
            "/xuc/api/2.0/auth/logout" => Endpoint::Logout,
            "/xuc/api/2.0/auth/sso" => Endpoint::Sso,
            "/xuc/api/2.0/auth/cas" => Endpoint::Cas,
            "/xuc/api/2.0/auth/oidc" => Endpoint::Oidc,
            _ => return None,
        })
    }

    fn allowed(self) -> (&'static [http::Method], &'static str) {
        const GET: &[http::Method] = &[http::Method::GET, http::Method::HEAD];
        const POST: &[http::Method] = &[http::Method::POST];
        match self {
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics | Endpoint::Check => {
                (GET, "GET, HEAD")
            }
            Endpoint::Sso | Endpoint::Cas | Endpoint::Oidc => (&[http::Method::GET], "GET"),
            Endpoint::Login | Endpoint::Logout => (POST, "POST"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Endpoint::Health => "healthz",
            Endpoint::Ready => "readyz",
            Endpoint::Metrics => "metrics",
            Endpoint::Login => "auth-login",
            Endpoint::Check => "auth-check",
            Endpoint::Logout => "auth-logout",
            Endpoint::Sso => "auth-sso",
            Endpoint::Cas => "auth-cas",
            Endpoint::Oidc => "auth-oidc",
        }
    }

    /// The method a token-exchange endpoint authenticates with, for metrics.
    fn exchange(self) -> Option<&'static str> {
        match self {
            Endpoint::Login => Some(Method::Password.as_str()),
            Endpoint::Sso => Some(Method::Kerberos.as_str()),
            Endpoint::Cas => Some(Method::Cas.as_str()),
            Endpoint::Oidc => Some(Method::Oidc.as_str()),
            _ => None,
        }
    }

    pub async fn serve(
        self,
        gateway: &Gateway,
        state: Arc<State>,
        parts: request::Parts,
        body: Incoming,
        conn: ConnInfo,
        log: &mut RequestLog,
    ) -> Result<Response<Body>, GateError> {
        log.route = Some(self.name().into());
        log.exchange = self.exchange();
        let (methods, allow) = self.allowed();
        if !methods.contains(&parts.method) {
            return Err(GateError::MethodNotAllowed(allow));
        }
        match self {
            Endpoint::Health => Ok(json_response(
                StatusCode::OK,
                serde_json::json!({ "status": "ok" }),
            )),
            Endpoint::Ready if state.is_ready() => Ok(json_response(
                StatusCode::OK,
                serde_json::json!({ "status": "ready" }),
            )),
            Endpoint::Ready => Err(GateError::NotReady),
            Endpoint::Metrics => {
                let mut response = Response::new(body::full(metrics().encode()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                Ok(response)
            }
            Endpoint::Login => login::handle(state, gateway.throttle(), body, conn).await,
            Endpoint::Sso => kerberos::handle(state, gateway.throttle(), &parts, conn).await,
            Endpoint::Cas => cas::handle(state, gateway.throttle(), &parts, conn).await,
            Endpoint::Oidc => oidc::handle(state, gateway.throttle(), &parts, conn).await,
            Endpoint::Check => {
                let (claims, _) = uc_token(&state, &parts)?;
                log.credential = Some("uc");
                Ok(json_response(
                    StatusCode::OK,
                    serde_json::json!({ "login": claims.sub, "TTL": claims.ttl() }),
                ))
            }
            Endpoint::Logout => {
                let (claims, token) = uc_token(&state, &parts)?;
                log.credential = Some("uc");
                tracing::info!(login = %claims.sub, "token revoked");
                state
                    .tokens
                    .as_ref()
                    .expect("validated")
                    .revoke(&token, claims);
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
        }
    }
}

/// The UC token a request presents, validated, with its text.
fn uc_token(
    state: &State,
    parts: &request::Parts,
) -> Result<(Arc<auth::token::Claims>, String), GateError> {
    let tokens = state.tokens.as_ref().ok_or(GateError::NoRoute)?;
    let token = auth::presented(&parts.headers, parts.uri.query())?
        .token
        .ok_or(GateError::TokenMissing)?;
    let claims = tokens.validate(&token).map_err(GateError::from)?;
    Ok((claims, token.into_owned()))
}
