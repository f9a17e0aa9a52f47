//! Endpoints served by ucgate itself, matched on the exact normalised path before any route:
//! health, readiness and metrics; the token exchanges, check and logout of XiVO's UC API 2.0.

use std::net::IpAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::exchange::Exchange;
use crate::auth::password::Password;
use crate::auth::token::{Claims, Issued, Method};
use crate::auth::{self, Attempt};
use crate::body::{self, Body};
use crate::error::{GateError, json_response};
use crate::metrics::metrics;
use crate::state::{State, UcAuth};
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

/// The `Allow` of the GET endpoints, the operator's among them.
pub const GET_ALLOW: &str = "GET, HEAD";

impl Endpoint {
    /// The operator's endpoints (health, readiness, metrics): on `server.admin_listen` when
    /// it is set.
    pub fn is_operational(self) -> bool {
        matches!(self, Endpoint::Health | Endpoint::Ready | Endpoint::Metrics)
    }

    /// The endpoint at exactly `path` (normalised), if any.
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
                (GET, GET_ALLOW)
            }
            Endpoint::Sso | Endpoint::Cas | Endpoint::Oidc => (&[http::Method::GET], "GET"),
            Endpoint::Login | Endpoint::Logout => (POST, "POST"),
        }
    }

    /// The methods a browser of the `[cors]` origins may use here: the UC API's endpoints
    /// answer web clients; health, readiness and metrics are for operators.
    pub fn cors_methods(self) -> Option<&'static str> {
        (!self.is_operational()).then(|| self.allowed().1)
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

    /// Whether the configuration serves this endpoint: the UC API's need `[tokens]` (and the
    /// single sign-on exchanges their section); the operational ones are always served. The
    /// gateway routes only enabled endpoints here: the path of another is like any other.
    pub fn enabled(self, state: &State) -> bool {
        let uc = state.uc.as_ref();
        match self {
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics => true,
            Endpoint::Login | Endpoint::Check | Endpoint::Logout => uc.is_some(),
            Endpoint::Sso => uc.is_some_and(|uc| uc.kerberos.is_some()),
            Endpoint::Cas => uc.is_some_and(|uc| uc.cas.is_some()),
            Endpoint::Oidc => uc.is_some_and(|uc| uc.oidc.is_some()),
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

    /// Serves the endpoint, one the configuration enables ([`Endpoint::enabled`]; `NoRoute`
    /// otherwise); `MethodNotAllowed` (405, with `Allow`) for another method.
    pub async fn serve(
        self,
        state: &State,
        request: Request<Incoming>,
        client: IpAddr,
        log: &mut RequestLog,
    ) -> Result<Response<Body>, GateError> {
        log.route = Some(self.name().into());
        let (methods, allow) = self.allowed();
        if !methods.contains(request.method()) {
            return Err(GateError::MethodNotAllowed(allow));
        }
        // From here on an exchange was attempted, whatever its outcome.
        log.exchange = self.exchange();
        let attempt = Attempt::new(&state.throttle, client);
        match self {
            Endpoint::Health => Ok(json_response(
                StatusCode::OK,
                serde_json::json!({ "status": "ok" }),
            )),
            Endpoint::Ready if state.is_ready() => {
                // A directory down stops logins, not the requests that carry a token: ucgate
                // stays in service, and says what is down.
                let down = state.down();
                let body = if down.is_empty() {
                    serde_json::json!({ "status": "ready" })
                } else {
                    serde_json::json!({ "status": "degraded", "down": down })
                };
                Ok(json_response(StatusCode::OK, body))
            }
            Endpoint::Ready => Err(GateError::NotReady),
            Endpoint::Metrics => {
                let cached = state
                    .uc
                    .as_ref()
                    .map_or(0, |uc| uc.issuer.tokens().cached());
                metrics()
                    .token_cache_entries
                    .set(i64::try_from(cached).unwrap_or(i64::MAX));
                // Only what is configured: without `[cluster]` or `[xuc]`, no gauge says "down".
                metrics()
                    .cluster_up
                    .set(state.cluster.as_ref().map(|c| i64::from(c.is_up())));
                metrics().xuc_up.set(
                    state
                        .uc
                        .as_ref()
                        .and_then(|uc| uc.xuc.as_ref())
                        .map(|xuc| i64::from(xuc.is_up())),
                );
                let mut response = Response::new(body::full(metrics().encode()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                Ok(response)
            }
            Endpoint::Login => {
                let uc = uc(state)?;
                let password = Password {
                    directory: uc.issuer.directory(),
                    max_body: state.config.login.max_body,
                    body_timeout: state.config.server.request_body_timeout,
                };
                uc.issuer.exchange(&password, request, attempt).await
            }
            Endpoint::Sso => {
                exchange(uc(state)?, |uc| uc.kerberos.as_ref(), request, attempt).await
            }
            Endpoint::Cas => exchange(uc(state)?, |uc| uc.cas.as_ref(), request, attempt).await,
            Endpoint::Oidc => exchange(uc(state)?, |uc| uc.oidc.as_ref(), request, attempt).await,
            Endpoint::Check => {
                // XiVO's web clients store the token of the answer in place of theirs: a fresh
                // one of the same session (see TokenService::renew).
                let uc = uc(state)?;
                let (claims, token) = uc_token(state, &request, client).await?;
                log.credential = Some("uc");
                if claims.method == Method::Xuc {
                    // xuc's to renew: the same token back, as long as it is known to live.
                    let same = Issued {
                        login: claims.sub.to_string(),
                        token,
                        ttl: claims.ttl(),
                    };
                    return Ok(json_response(StatusCode::OK, serde_json::json!(same)));
                }
                let renewed = uc.issuer.tokens().renew(&claims)?;
                tracing::debug!(login = &*claims.sub, ttl = renewed.ttl, "token renewed");
                Ok(json_response(StatusCode::OK, serde_json::json!(renewed)))
            }
            Endpoint::Logout => {
                let uc = uc(state)?;
                let (claims, token) = uc_token(state, &request, client).await?;
                log.credential = Some("uc");
                tracing::info!(
                    login = &*claims.sub,
                    method = claims.method.as_str(),
                    "token revoked"
                );
                let tokens = uc.issuer.tokens();
                tokens.revoke(&token, &claims);
                // Durable before the answer: a 204 means the token stays refused after a
                // restart too. A failed write leaves it revoked in this process, and says so.
                let revocations = tokens.revocations().clone();
                match tokio::task::spawn_blocking(move || revocations.persist()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "tokens.revocations_file: cannot write it; the revocation holds until ucgate stops");
                    }
                    Err(_) => return Err(GateError::Unhandled),
                }
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
        }
    }
}

/// UC tokens and their exchanges, or 404 when the configuration has none.
fn uc(state: &State) -> Result<&UcAuth, GateError> {
    state.uc.as_ref().ok_or(GateError::NoRoute)
}

/// The single sign-on exchange `provider` picks, or 404 when it is not configured.
async fn exchange<'s, E: Exchange + 's>(
    uc: &'s UcAuth,
    provider: impl FnOnce(&'s UcAuth) -> Option<&'s E>,
    request: Request<Incoming>,
    attempt: Attempt<'_>,
) -> Result<Response<Body>, GateError> {
    let exchange = provider(uc).ok_or(GateError::NoRoute)?;
    uc.issuer.exchange(exchange, request, attempt).await
}

/// The UC token a request presents (ucgate's or, with `[xuc]`, xuc's), validated, with its text.
async fn uc_token(
    state: &State,
    request: &Request<Incoming>,
    client: IpAddr,
) -> Result<(Arc<Claims>, String), GateError> {
    let token = auth::presented(request.headers(), request.uri().query(), true)?
        .token
        .ok_or(GateError::TokenMissing)?;
    let claims = state.uc_claims(&token, client).await?;
    Ok((claims, token.into_owned()))
}
