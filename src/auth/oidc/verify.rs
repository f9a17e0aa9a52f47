//! Local verification of an IdP token (ID token or JWT access token) against the cached keys.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use moka::Expiry;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::keys::Keys;
use crate::auth::jose::{self, HeaderError};
use crate::auth::token::unix_now;
use crate::config::OidcConfig;

/// Longest login taken from a token: a longer one cannot be in the directory.
const MAX_LOGIN: usize = 256;

/// Why a token is refused. The texts go into error bodies and logs: never a token's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the bearer token is not a JWT")]
    Malformed,
    #[error("the token's algorithm is not one the provider signs with")]
    Algorithm,
    #[error("the token is signed with a key the provider does not publish")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token is not from the configured issuer")]
    Issuer,
    #[error("the token is not for this audience")]
    Audience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("the token carries no usable login claim")]
    NoLogin,
    #[error("the token's header asks for an extension ucgate does not support")]
    UnsupportedHeader,
    #[error("the token has a date claim that is not a NumericDate")]
    Date,
    #[error("the token is an access token, and access tokens are not accepted")]
    AccessToken,
    #[error("the token was issued to a party that is not authorised")]
    AuthorizedParty,
}

/// Why a token was not accepted: refused, or not checkable yet (keys not loaded).
#[derive(Debug)]
pub enum Failure {
    NotReady,
    Rejected(Rejection),
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        Failure::Rejected(r)
    }
}

/// What a verified token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub login: Box<str>,
    exp: u64,
}

struct UntilExp;

impl Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(&self, _: &[u8; 32], v: &Arc<Verified>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(v.exp.saturating_sub(unix_now())))
    }
}

/// The rules a token must pass, and the cache of tokens that passed.
pub struct Verifier {
    pub keys: Keys,
    audience: Vec<String>,
    login_claim: String,
    leeway: u64,
    authorized_party: Vec<String>,
    accept_access_tokens: bool,
    /// Keyed by SHA-256 of the token: the tokens themselves are never kept.
    verified: moka::sync::Cache<[u8; 32], Arc<Verified>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.keys.issuer())
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The rules of `config`: `audience` (one must be in `aud`), the claim that holds the
    /// login, the clock skew tolerated, the authorised parties, access tokens or not; and how
    /// many verified tokens to remember.
    pub fn new(keys: Keys, config: &OidcConfig, capacity: u64) -> Self {
        Self {
            keys,
            audience: config.audience.clone(),
            login_claim: config.login_claim.clone(),
            leeway: config.leeway.as_secs(),
            authorized_party: config.authorized_party.clone(),
            accept_access_tokens: config.accept_access_tokens,
            verified: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// Verifies an ID token or JWT access token against the provider's keys (RFC 7519 §7.2,
    /// OpenID Connect Core §3.1.3.7): `Failure::NotReady` before the keys are loaded,
    /// `Failure::Rejected` with the reason otherwise.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, Failure> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.verified.get(&digest).filter(|v| v.exp > unix_now()) {
            return Ok(hit);
        }
        jose::check_header(token).map_err(|e| match e {
            HeaderError::Malformed => Rejection::Malformed,
            _ => Rejection::UnsupportedHeader,
        })?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        // RFC 9068 §2.1: a JWT access token says so in `typ`; ID tokens do not.
        let access_token = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if access_token && !self.accept_access_tokens {
            return Err(Rejection::AccessToken.into());
        }
        let provider = self.keys.current().ok_or(Failure::NotReady)?;
        if !provider.algorithms.contains(&header.alg) {
            return Err(Rejection::Algorithm.into());
        }
        let kid = header.kid.as_deref();
        let key = match provider.key(kid, header.alg) {
            Some(key) => key,
            None if kid.is_some() => self
                .keys
                .refetch(&provider)
                .await
                .and_then(|p| p.key(kid, header.alg))
                .ok_or(Rejection::UnknownKey)?,
            None => return Err(Rejection::UnknownKey.into()),
        };
        let claims = jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &key.decoding,
            &self.validation(header.alg),
        )
        .map_err(|e| rejection(e.kind()))?
        .claims;
        let verified = Arc::new(self.check_claims(&claims, access_token)?);
        self.verified.insert(digest, verified.clone());
        Ok(verified)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.required_spec_claims = ["exp", "iss", "aud"].map(String::from).into();
        v.set_issuer(&[self.keys.issuer()]);
        v.aud = Some(self.audience.iter().cloned().collect::<HashSet<_>>());
        v
    }

    /// What jsonwebtoken does not check: `iat` (required, not in the future), that every date
    /// claim is a NumericDate (integer or not), and the login.
    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        access_token: bool,
    ) -> Result<Verified, Rejection> {
        if !self.authorized_party.is_empty() {
            // The party the token was issued to: `azp` (OpenID Connect Core §2), else an access
            // token's `client_id` (RFC 9068 §2.2), else the one audience of an ID token (`azp`
            // may be left out then).
            let single_audience = match claims.get("aud") {
                Some(Value::String(aud)) => Some(aud.as_str()),
                Some(Value::Array(auds)) if auds.len() == 1 => auds[0].as_str(),
                _ => None,
            };
            let party = match claims.get("azp") {
                Some(azp) => azp.as_str(),
                None if access_token => claims.get("client_id").and_then(Value::as_str),
                None => single_audience,
            };
            if !party.is_some_and(|p| self.authorized_party.iter().any(|a| a == p)) {
                return Err(Rejection::AuthorizedParty);
            }
        }
        let now = unix_now();
        let date = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(value) => jose::numeric_date(value).map(Some).ok_or(Rejection::Date),
        };
        let iat = date("iat")?.ok_or(Rejection::MissingClaim)?;
        if iat > now + self.leeway {
            return Err(Rejection::NotYetValid);
        }
        let exp = date("exp")?.ok_or(Rejection::MissingClaim)?;
        date("nbf")?;
        date("auth_time")?;
        let login = claims
            .get(&self.login_claim)
            .and_then(Value::as_str)
            .filter(|l| usable_login(l))
            .ok_or(Rejection::NoLogin)?;
        Ok(Verified {
            login: login.into(),
            exp,
        })
    }

    /// The keys are loaded (the provider was discovered once).
    pub fn ready(&self) -> bool {
        self.keys.current().is_some()
    }

    #[cfg(test)]
    fn cached(&self) -> u64 {
        self.verified.run_pending_tasks();
        self.verified.entry_count()
    }
}

/// A login becomes a header value upstream and a key in the directory: printable, bounded.
fn usable_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= MAX_LOGIN
        && !login.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature => Rejection::Signature,
        ErrorKind::InvalidIssuer => Rejection::Issuer,
        ErrorKind::InvalidAudience => Rejection::Audience,
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::MissingRequiredClaim(_) => Rejection::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Rejection::Algorithm,
        _ => Rejection::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_printable_and_bounded() {
        assert!(usable_login("alice"));
        assert!(usable_login("alice@example.test"));
        assert!(!usable_login(""));
        assert!(!usable_login("ali ce"));
        assert!(!usable_login("alice\r\nX-Auth-User: root"));
        assert!(!usable_login(&"a".repeat(MAX_LOGIN + 1)));
    }

    #[test]
    fn jsonwebtoken_errors_map_to_rejections() {
        assert_eq!(rejection(&ErrorKind::ExpiredSignature), Rejection::Expired);
        assert_eq!(rejection(&ErrorKind::InvalidAudience), Rejection::Audience);
        assert_eq!(rejection(&ErrorKind::InvalidToken), Rejection::Malformed);
    }

    fn verifier(authorized_party: &[&str], accept_access_tokens: bool) -> Verifier {
        let issuer = openidconnect::IssuerUrl::new("https://idp.test".into()).unwrap();
        let keys = Keys::new(
            issuer.clone(),
            super::super::keys::ProviderHttp(reqwest::Client::new()),
            Duration::from_secs(10),
        );
        let config = OidcConfig {
            issuer,
            audience: vec!["x".into()],
            login_claim: "preferred_username".into(),
            leeway: Duration::ZERO,
            refresh_min_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            ca_bundle: None,
            authorized_party: authorized_party.iter().map(|p| p.to_string()).collect(),
            accept_access_tokens,
        };
        Verifier::new(keys, &config, 10)
    }

    #[test]
    fn the_cache_starts_empty() {
        let v = verifier(&[], false);
        assert!(!v.ready());
        assert_eq!(v.cached(), 0);
    }

    #[test]
    fn claims_need_dates_a_login_and_an_authorised_party() {
        let now = unix_now();
        let claims = |extra: Value| {
            let mut c =
                serde_json::json!({"iat": now, "exp": now + 60, "preferred_username": "alice"});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c.as_object().unwrap().clone()
        };
        let open = verifier(&[], false);
        assert!(
            open.check_claims(&claims(serde_json::json!({})), false)
                .is_ok()
        );
        assert_eq!(
            open.check_claims(
                &claims(serde_json::json!({"iat": now as f64 + 0.25})),
                false
            )
            .unwrap()
            .exp,
            now + 60
        );
        let picky = verifier(&["ucgate"], true);
        for (extra, access, ok) in [
            (serde_json::json!({"azp": "ucgate"}), false, true),
            (serde_json::json!({"azp": "other"}), false, false),
            (serde_json::json!({}), false, false),
            (serde_json::json!({"aud": "ucgate"}), false, true),
            (serde_json::json!({"aud": ["ucgate"]}), false, true),
            (
                serde_json::json!({"aud": ["ucgate", "other"]}),
                false,
                false,
            ),
            (serde_json::json!({"aud": "other"}), false, false),
            (serde_json::json!({"client_id": "ucgate"}), true, true),
            (serde_json::json!({"client_id": "ucgate"}), false, false),
            (serde_json::json!({"aud": "ucgate"}), true, false),
            (
                serde_json::json!({"azp": "other", "client_id": "ucgate"}),
                true,
                false,
            ),
        ] {
            let outcome = picky.check_claims(&claims(extra.clone()), access);
            assert_eq!(outcome.is_ok(), ok, "{extra} {access}: {outcome:?}");
            if !ok {
                assert_eq!(outcome.unwrap_err(), Rejection::AuthorizedParty);
            }
        }
    }
}
