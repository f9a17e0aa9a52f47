//! `POST /xuc/api/2.0/auth/login`: a login and password, checked by the directory.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::exchange::{Attempt, Exchange, Proof, Proven};
use super::token::Method;
use crate::directory::{Directory, User};
use crate::error::GateError;

/// The body XiVO's clients send; other fields (`softwareType`, ...) are ignored.
#[derive(Deserialize)]
struct LoginRequest {
    login: String,
    password: String,
    /// Seconds the token should live at most.
    #[serde(default)]
    expiration: Option<u64>,
}

/// Password checks run at most one per core at a time: a flood of logins queues here instead
/// of exhausting memory (an argon2 check takes 19 MiB) or the blocking pool, or flooding a
/// remote directory.
static PASSWORD_CHECKS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// The password exchange, over a directory.
pub struct Password<'a> {
    pub directory: &'a dyn Directory,
    /// Largest request body, bytes (`login.max_body`).
    pub max_body: usize,
    /// Time for the whole body to arrive (`server.request_body_timeout`).
    pub body_timeout: Duration,
}

impl Exchange for Password<'_> {
    const METHOD: Method = Method::Password;

    /// `InvalidJson` for a body that is not `{"login", "password"}` (or asks for a zero
    /// lifetime), `RequestTooLarge` past `max_body`, `RequestTimeout` for a body not all in
    /// within `body_timeout`, `InvalidBody` for one cut off, `TooManyAttempts` when locked out,
    /// `InvalidCredentials` for any wrong login, password, disabled user or user without a
    /// profile, all alike.
    async fn prove(
        &self,
        request: Request<Incoming>,
        attempt: Attempt<'_>,
    ) -> Result<Proof, GateError> {
        let body = read_body(request.into_body(), self.max_body, self.body_timeout).await?;
        let request: LoginRequest = serde_json::from_slice(&body).map_err(|e| {
            // serde's own message would quote the offending value, which may be the password.
            GateError::InvalidJson(match e.classify() {
                serde_json::error::Category::Data => {
                    "the body must be {\"login\": string, \"password\": string}, with an optional \"expiration\": a whole number of seconds"
                }
                // serde_json files a number out of range (`1e400`) under syntax.
                _ => "the body is not valid JSON, or holds a number out of range",
            })
        })?;
        if request.expiration == Some(0) {
            return Err(GateError::InvalidJson(
                "\"expiration\" must be a positive whole number of seconds",
            ));
        }
        attempt.check_login(&request.login).await?;
        // Look at the throttle again under the permit, and record a failure before releasing
        // it: otherwise concurrent guesses all pass the check before the first failure is
        // counted. At most one guess per permit gets past max_failures.
        let _permit = PASSWORD_CHECKS
            .acquire()
            .await
            .map_err(|_| GateError::Unhandled)?;
        attempt.check_login(&request.login).await?;
        let user = self
            .directory
            .verify_password(&request.login, &request.password)
            .await?;
        // Disabled users and users without a profile fail after the password check, so that the
        // answer and its timing say nothing about which of the conditions failed.
        match user.as_ref().and_then(User::login_profile) {
            Some(profile) => Ok(Proof {
                proven: Proven::Allowed {
                    profile: profile.to_owned(),
                    login: request.login,
                },
                lifetime: request.expiration,
                challenge: None,
            }),
            None => {
                attempt.failed(&request.login).await;
                tracing::info!(client = %attempt.client(), method = "password", "login refused");
                Err(GateError::InvalidCredentials)
            }
        }
    }
}

/// The whole body, of at most `limit` bytes (`BodyTooLarge` at once for a longer declared
/// length, or as soon as more arrives), all of it within `deadline` (`RequestTimeout`): a
/// client that trickles its login holds a connection slot, unauthenticated, no longer than a
/// slow upload would. A body cut off is `InvalidBody`.
async fn read_body(body: Incoming, limit: usize, deadline: Duration) -> Result<Bytes, GateError> {
    use http_body::Body as _;
    if body.size_hint().lower() > limit as u64 {
        return Err(GateError::BodyTooLarge);
    }
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GateError::BodyTooLarge),
        Ok(Err(_)) => Err(GateError::InvalidBody),
        Err(_) => Err(GateError::RequestTimeout),
    }
}
