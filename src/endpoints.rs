//! Endpoints served by ucgate itself, matched on the exact normalised path before any route.

use std::sync::Arc;

use http::{Method, Response, StatusCode, request};
use hyper::body::Incoming;

use crate::auth::{self, cas, kerberos, login, oidc};
use crate::body::{self, Body};
use crate::error::{GateError, json_response};
use crate::gateway::{ConnInfo, Gateway, State};
use crate::telemetry::RequestLog;

/// The local endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
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
            "/xuc/api/2.0/auth/login" => Endpoint::Login,
            "/xuc/api/2.0/auth/check" => Endpoint::Check,
            "/xuc/api/2.0/auth/logout" => Endpoint::Logout,
            "/xuc/api/2.0/auth/sso" => Endpoint::Sso,
            "/xuc/api/2.0/auth/cas" => Endpoint::Cas,
            "/xuc/api/2.0/auth/oidc" => Endpoint::Oidc,
            _ => return None,
        })
    }

    fn allowed(self) -> (&'static [Method], &'static str) {
        const GET: &[Method] = &[Method::GET, Method::HEAD];
        const POST: &[Method] = &[Method::POST];
        match self {
            Endpoint::Health | Endpoint::Ready | Endpoint::Check => (GET, "GET, HEAD"),
            Endpoint::Sso | Endpoint::Cas | Endpoint::Oidc => (&[Method::GET], "GET"),
            Endpoint::Login | Endpoint::Logout => (POST, "POST"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Endpoint::Health => "healthz",
            Endpoint::Ready => "readyz",
            Endpoint::Login => "auth-login",
            Endpoint::Check => "auth-check",
            Endpoint::Logout => "auth-logout",
            Endpoint::Sso => "auth-sso",
            Endpoint::Cas => "auth-cas",
            Endpoint::Oidc => "auth-oidc",
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
        let (methods, allow) = self.allowed();
        if !methods.contains(&parts.method) {
            return Err(GateError::MethodNotAllowed(allow));
        }
        match self {
            Endpoint::Health => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "status": "ok" }),
            )),
            Endpoint::Ready if !state.is_ready() => Err(GateError::NotReady),
            Endpoint::Ready => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "status": "ready" }),
            )),
            Endpoint::Login => login::handle(state, gateway.throttle(), body, conn).await,
            Endpoint::Sso => kerberos::handle(state, gateway.throttle(), &parts, conn).await,
            Endpoint::Cas => cas::handle(state, gateway.throttle(), &parts, conn).await,
            Endpoint::Oidc => oidc::handle(state, gateway.throttle(), &parts, conn).await,
            Endpoint::Check => {
                let (claims, _) = uc_token(&state, &parts)?;
                log.credential = Some("uc");
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "login": claims.sub, "TTL": claims.ttl() }),
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
