//! `POST /xuc/api/2.0/auth/login`: login and password for a UC token.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::auth::throttle::Throttle;
use crate::auth::token::{Method, TokenService};
use crate::body::Body;
use crate::error::{GateError, json_response};
use crate::gateway::{ConnInfo, State};
use crate::users::User;

#[derive(Deserialize)]
struct LoginRequest {
    login: String,
    password: String,
    #[serde(default)]
    expiration: Option<u64>,
}

/// Argon2 checks run on the blocking pool, at most one per core at a time: a flood of logins
/// queues here instead of exhausting memory (each check takes 19 MiB) or the blocking pool.
static PASSWORD_CHECKS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

pub async fn handle(
    state: Arc<State>,
    throttle: &Throttle,
    body: Incoming,
    conn: ConnInfo,
) -> Result<Response<Body>, GateError> {
    let (Some(tokens), Some(_)) = (&state.tokens, &state.users) else {
        return Err(GateError::NoRoute);
    };
    let body = read_body(body, state.config.login.max_body).await?;
    let request: LoginRequest =
        serde_json::from_slice(&body).map_err(|_| GateError::InvalidJson)?;
    if request.expiration == Some(0) {
        return Err(GateError::InvalidJson);
    }
    let addr = conn.remote.ip();
    let locked = || {
        throttle
            .check(&request.login, addr)
            .map_err(GateError::locked_out)
    };
    locked()?;

    // Look at the throttle again under the permit, and record the outcome before releasing it:
    // otherwise concurrent guesses all pass the check before the first failure is counted. At most
    // one guess per permit gets past max_failures.
    let _permit = PASSWORD_CHECKS
        .acquire()
        .await
        .map_err(|_| GateError::Unhandled)?;
    locked()?;
    let user = {
        let state = state.clone();
        let (login, password) = (request.login.clone(), request.password);
        tokio::task::spawn_blocking(move || {
            let users = state.users.as_ref().expect("checked above");
            users.verify_password(&login, &password)
        })
        .await
        .map_err(|_| GateError::Unhandled)?
    };
    // Disabled users and users without a profile fail after the password check, so that the
    // answer and its timing say nothing about which of the conditions failed.
    match user.as_deref().and_then(User::login_profile) {
        Some(profile) => {
            throttle.record_success(&request.login);
            issue(
                tokens,
                &request.login,
                profile,
                Method::Password,
                request.expiration,
            )
        }
        None => {
            throttle.record_failure(&request.login, addr, &state.config.login);
            tracing::info!(client = %addr, method = "password", "login refused");
            Err(GateError::InvalidCredentials)
        }
    }
}

/// The answer of the single sign-on endpoints once an identity provider proved `login`: the
/// login must be in the directory with CTI login enabled and a profile, else `UserNotFound`,
/// which counts as a failure for the brute-force protection.
pub fn issue_proven(
    state: &State,
    throttle: &Throttle,
    login: &str,
    method: Method,
    addr: IpAddr,
) -> Result<Response<Body>, GateError> {
    let (Some(tokens), Some(users)) = (&state.tokens, &state.users) else {
        return Err(GateError::NoRoute);
    };
    let Some(profile) = users.get(login).and_then(|u| u.login_profile()) else {
        throttle.record_failure(login, addr, &state.config.login);
        tracing::info!(client = %addr, method = method.as_str(), login, "login refused: not in the directory or not allowed");
        return Err(GateError::UserNotFound);
    };
    let response = issue(tokens, login, profile, method, None)?;
    throttle.record_success(login);
    Ok(response)
}

/// The answer of every exchange endpoint: `{"login", "token", "TTL"}`.
pub fn issue(
    tokens: &TokenService,
    login: &str,
    profile: &str,
    method: Method,
    expiration: Option<u64>,
) -> Result<Response<Body>, GateError> {
    let issued = tokens
        .issue(login, profile, method, expiration)
        .map_err(|_| GateError::Unhandled)?;
    tracing::info!(
        login,
        method = method.as_str(),
        ttl = issued.ttl,
        "token issued"
    );
    let body = serde_json::to_value(&issued).map_err(|_| GateError::Unhandled)?;
    Ok(json_response(StatusCode::OK, &body))
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, GateError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(GateError::BodyTooLarge),
        Err(_) => Err(GateError::InvalidJson),
    }
}
