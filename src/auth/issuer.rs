//! The issuer: UC tokens and the directory of who may get one, in one value, so that no token
//! service exists without a directory. It turns what an exchange proved into the answer every
//! exchange endpoint gives.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::exchange::{Attempt, Exchange, Proof, Proven};
use super::revocations::Revocations;
use super::token::{Method, TokenService};
use crate::body::Body;
use crate::directory::{Directory, User};
use crate::error::{GateError, json_response};

/// The token service and the directory it issues for.
#[derive(Debug)]
pub struct Issuer {
    tokens: TokenService,
    directory: Arc<dyn Directory>,
}

impl Issuer {
    /// Issues `tokens` to the people `directory` allows.
    pub fn new(tokens: TokenService, directory: Arc<dyn Directory>) -> Self {
        Self { tokens, directory }
    }

    /// Validation and revocation of the tokens it issues.
    pub fn tokens(&self) -> &TokenService {
        &self.tokens
    }

    /// Tells the revocations of its tokens to the other instances through `cluster`.
    pub fn share(&mut self, cluster: crate::cluster::Cluster) {
        self.tokens.share(cluster);
    }

    /// Keeps the revocations of the issuer this one replaces (see [`TokenService::inherit`]).
    pub fn inherit(&mut self, old: &Issuer) {
        self.tokens.inherit(&old.tokens);
    }

    /// See [`TokenService::adopt_revocations`].
    pub fn adopt_revocations(&mut self, old: &Revocations) {
        self.tokens.adopt_revocations(old);
    }

    /// Who may get a token (the password exchange checks passwords there).
    pub fn directory(&self) -> &dyn Directory {
        &*self.directory
    }

    /// Starts what keeps the tokens' logins up to date with the directory, on the runtime.
    pub fn start(&self) {
        self.tokens.start(self.directory.clone());
    }

    /// Runs `exchange` on `request`, then answers what it proved. The brute-force protection
    /// is one decision for every exchange: a locked-out client address is refused before the
    /// exchange does any work, and a locked-out login after it proved who is calling, before any
    /// token is issued (`TooManyAttempts`).
    pub async fn exchange<E: Exchange>(
        &self,
        exchange: &E,
        request: Request<Incoming>,
        attempt: Attempt<'_>,
    ) -> Result<Response<Body>, GateError> {
        attempt.check_client().await?;
        let proof = exchange.prove(request, attempt).await?;
        self.answer(E::METHOD, proof, attempt).await
    }

    /// `{"login", "token", "TTL"}` (XiVO's UC API 2.0 answer) for a proven login. A login proven
    /// by an identity provider must be in the directory with CTI login enabled and a profile,
    /// else `UserNotFound`, which counts as a failure for the brute-force protection.
    async fn answer(
        &self,
        method: Method,
        proof: Proof,
        attempt: Attempt<'_>,
    ) -> Result<Response<Body>, GateError> {
        let (login, profile) = match proof.proven {
            Proven::Allowed { login, profile } => (login, profile),
            Proven::Login(login) => {
                attempt.check_login(&login).await?;
                let user = self.directory.lookup(&login).await?;
                match user.as_ref().and_then(User::login_profile) {
                    Some(profile) => (login, profile.to_owned()),
                    None => {
                        attempt.failed(&login).await;
                        tracing::info!(client = %attempt.client(), method = method.as_str(), login, "login refused: not in the directory or not allowed");
                        return Err(GateError::UserNotFound);
                    }
                }
            }
        };
        // Again at the last moment: a lock-out may have started while the proof was made.
        attempt.check_login(&login).await?;
        let issued = self
            .tokens
            .issue(&login, &profile, method, proof.lifetime)
            .map_err(|_| GateError::Unhandled)?;
        attempt.succeeded(&login).await;
        tracing::info!(
            login,
            method = method.as_str(),
            ttl = issued.ttl,
            "token issued"
        );
        let body = serde_json::to_value(&issued).map_err(|_| GateError::Unhandled)?;
        let mut response = json_response(StatusCode::OK, &body);
        if let Some(challenge) = proof.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        Ok(response)
    }
}
