//! The one shape of a token exchange: it proves who is calling from the request, or refuses; it
//! never issues a token itself (that is the [`Issuer`](super::Issuer)'s job, the same for all).

use std::net::IpAddr;

use http::{HeaderValue, Request};
use hyper::body::Incoming;

use super::throttle::Throttle;
use super::token::Method;
use crate::error::GateError;

/// A way to prove a login: password, Kerberos, CAS, OIDC.
pub trait Exchange: Sync {
    /// What its proofs are recorded as: the token's `method` claim, `X-Auth-Method`, logs.
    const METHOD: Method;

    /// Proves who is calling. Called once the client's address is known not to be locked out;
    /// the login's lock-out is the issuer's to check, once the login is known. Refusals are the
    /// exchange's own `GateError`s (each counted as a failure in `attempt` when it is the
    /// client's doing, not when a provider is down).
    fn prove(
        &self,
        request: Request<Incoming>,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Proof, GateError>> + Send;
}

/// What an exchange proved.
#[derive(Debug)]
pub struct Proof {
    pub proven: Proven,
    /// The token lifetime the client asked for, in seconds (capped by `tokens.ttl`).
    pub lifetime: Option<u64>,
    /// A `WWW-Authenticate` value for the answer: SPNEGO's mutual-authentication token.
    pub challenge: Option<HeaderValue>,
}

/// Who is proven, and how far.
#[derive(Debug)]
pub enum Proven {
    /// The directory itself checked the password of this user, who may log in with `profile`.
    Allowed { login: String, profile: String },
    /// An identity provider proved this login; the directory must still allow it.
    Login(String),
}

impl Proof {
    /// A login proven by an identity provider, nothing more.
    pub fn login(login: String) -> Self {
        Self {
            proven: Proven::Login(login),
            lifetime: None,
            challenge: None,
        }
    }
}

/// One try at an exchange: the client's address, under the brute-force protection. Every
/// exchange reads and records through it, so that they all count alike.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    client: IpAddr,
}

impl<'a> Attempt<'a> {
    /// An attempt from `client`, counted in `throttle`.
    pub fn new(throttle: &'a Throttle, client: IpAddr) -> Self {
        Self { throttle, client }
    }

    /// The client's address, for logs.
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// `TooManyAttempts` while the client's address is locked out.
    pub async fn check_client(&self) -> Result<(), GateError> {
        self.throttle
            .check_addr(self.client)
            .await
            .map_err(GateError::locked_out)
    }

    /// `TooManyAttempts` while `login` or the client's address is locked out.
    pub async fn check_login(&self, login: &str) -> Result<(), GateError> {
        self.throttle
            .check(login, self.client)
            .await
            .map_err(GateError::locked_out)
    }

    /// A failure for `login`, from this client.
    pub async fn failed(&self, login: &str) {
        self.throttle.record_failure(login, self.client).await;
    }

    /// A failure whose login is unknown (a refused ticket or token): counted for the address.
    pub async fn failed_client(&self) {
        self.throttle.record_addr_failure(self.client).await;
    }

    /// A success clears the login's failures (not the address's).
    pub async fn succeeded(&self, login: &str) {
        self.throttle.record_success(login).await;
    }
}
