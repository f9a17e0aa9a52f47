//! OpenID Connect: an IdP token for a UC token at `GET /xuc/api/2.0/auth/oidc`.
//!
//! The provider is discovered in the background once the runtime runs (ucgate starts even when
//! the provider is down, and is not ready until it has the keys); tokens are then verified
//! locally against the cached JWKS.

mod keys;
mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, Request};
use hyper::body::Incoming;

use super::credential::{Authorization, authorization};
use super::exchange::{Attempt, Exchange, Proof};
use super::token::Method;
use crate::config::OidcConfig;
use crate::error::GateError;
use keys::{Keys, ProviderHttp};
use verify::{Failure, Verifier};

/// Verified IdP tokens remembered (by hash) so that a client replaying its token does not cost
/// a signature check each time.
const VERIFIED_CACHE_CAPACITY: u64 = 10_000;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// Discovery is redone this often, so that a key the provider withdrew (compromised, retired)
/// stops being trusted without a restart; a failure keeps the keys we have.
const REDISCOVER_EVERY: Duration = Duration::from_secs(3600);

/// What the endpoint needs at run time, loaded from the config.
#[derive(Debug)]
pub struct Oidc {
    verifier: Arc<Verifier>,
    started: AtomicBool,
}

impl Oidc {
    /// Builds the client and the empty key cache; nothing is fetched here (no runtime yet).
    pub fn load(config: &OidcConfig) -> Result<Self, String> {
        let keys = Keys::new(
            config.issuer.clone(),
            ProviderHttp(provider_client(config)?),
            config.refresh_min_interval,
        );
        Ok(Self {
            verifier: Arc::new(Verifier::new(keys, config, VERIFIED_CACHE_CAPACITY)),
            started: AtomicBool::new(false),
        })
    }

    /// Discovers the provider in the background, retrying with exponential backoff until it
    /// answers, then again every [`REDISCOVER_EVERY`]. Must run inside the runtime; later calls
    /// do nothing.
    pub fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        // Weak: a configuration replaced by a reload stops its discovery.
        let verifier = Arc::downgrade(&self.verifier);
        tokio::spawn(async move {
            let mut backoff = FIRST_RETRY;
            loop {
                let Some(v) = verifier.upgrade() else { return };
                let wait = match v.keys.discover().await {
                    Ok(provider) => {
                        tracing::info!(
                            issuer = v.keys.issuer(),
                            keys = provider.key_count(),
                            algorithms = ?provider.algorithms,
                            "OpenID provider discovered"
                        );
                        backoff = FIRST_RETRY;
                        REDISCOVER_EVERY
                    }
                    Err(e) => {
                        tracing::warn!(
                            issuer = v.keys.issuer(),
                            error = %e,
                            retry_in = ?backoff,
                            keys_kept = v.ready(),
                            "OpenID provider discovery failed"
                        );
                        let wait = backoff;
                        backoff = (backoff * 2).min(LAST_RETRY);
                        wait
                    }
                };
                drop(v);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Reuses the keys of the configuration this one replaces (same issuer only).
    pub fn inherit(&self, old: &Oidc) {
        self.verifier.keys.adopt(&old.verifier.keys);
    }

    /// The provider's keys are loaded.
    pub fn is_ready(&self) -> bool {
        self.verifier.ready()
    }
}

fn provider_client(config: &OidcConfig) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        // A redirect could point the key fetch anywhere; providers serve these documents directly.
        .redirect(reqwest::redirect::Policy::none());
    crate::tls::provider_client(builder, config.ca_bundle.as_deref())
}

impl Exchange for Oidc {
    const METHOD: Method = Method::Oidc;

    /// `OidcInvalidParameter` for a missing or malformed bearer, `OidcAuthenticationFailed`
    /// for a token the provider's keys and the configured claims refuse (both a failure of the
    /// client's address, both with a `Bearer` challenge), `NotReady` before the keys are loaded.
    async fn prove(
        &self,
        request: Request<Incoming>,
        attempt: Attempt<'_>,
    ) -> Result<Proof, GateError> {
        let refused = async |reason: &str| {
            attempt.failed_client().await;
            tracing::info!(client = %attempt.client(), method = "oidc", reason, "token refused");
        };
        let token = match bearer(request.headers()) {
            Ok(token) => token,
            Err(e) => {
                if e == BearerError::Malformed {
                    refused("malformed bearer").await;
                }
                return Err(e.into());
            }
        };
        match self.verifier.verify(token).await {
            Ok(verified) => Ok(Proof::login(verified.login.to_string())),
            Err(Failure::NotReady) => Err(GateError::NotReady),
            Err(Failure::Rejected(reason)) => {
                let reason = reason.to_string();
                refused(&reason).await;
                Err(GateError::OidcAuthenticationFailed(reason))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BearerError {
    Missing,
    Malformed,
}

impl From<BearerError> for GateError {
    fn from(e: BearerError) -> Self {
        GateError::OidcInvalidParameter(match e {
            BearerError::Missing => "an Authorization: Bearer header is required",
            BearerError::Malformed => "the Authorization header is not a single Bearer token",
        })
    }
}

/// The token of the single `Authorization: Bearer` header (RFC 6750 b64token syntax).
fn bearer(headers: &HeaderMap) -> Result<&str, BearerError> {
    match authorization(headers) {
        Authorization::Bearer(token) => Ok(token),
        Authorization::Absent => Err(BearerError::Missing),
        Authorization::Other | Authorization::Several | Authorization::Malformed => {
            Err(BearerError::Malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::credential::MAX_BEARER;
    use http::{HeaderValue, header};

    #[test]
    fn bearer_parsing() {
        let parse = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            bearer(&h).map(str::to_owned)
        };
        assert_eq!(parse(&["Bearer a.b.c"]), Ok("a.b.c".into()));
        assert_eq!(
            parse(&["bearer  a-b_c.d~e+f/g=="]),
            Ok("a-b_c.d~e+f/g==".into())
        );
        assert_eq!(parse(&[]), Err(BearerError::Missing));
        assert_eq!(
            parse(&["Bearer a", "Bearer b"]),
            Err(BearerError::Malformed)
        );
        assert_eq!(parse(&["Basic YTpi"]), Err(BearerError::Malformed));
        assert_eq!(parse(&["Bearer"]), Err(BearerError::Malformed));
        assert_eq!(parse(&["Bearer "]), Err(BearerError::Malformed));
        assert_eq!(parse(&["Bearer a b"]), Err(BearerError::Malformed));
        assert_eq!(parse(&["Bearer a=b"]), Err(BearerError::Malformed));
        let long = format!("Bearer {}", "a".repeat(MAX_BEARER + 1));
        assert_eq!(parse(&[&long]), Err(BearerError::Malformed));
    }
}
