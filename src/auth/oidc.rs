//! OpenID Connect: an IdP token for a UC token at `GET /xuc/api/2.0/auth/oidc`.
//!
//! The provider is discovered in the background once the runtime runs (ucgate starts even when
//! the provider is down, and is not ready until it has the keys); tokens are then verified
//! locally against the cached JWKS.

mod keys;
mod verify;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header, request};
use openidconnect::IssuerUrl;
use serde::Deserialize;

use crate::auth::login;
use crate::auth::throttle::Throttle;
use crate::auth::token::Method;
use crate::body::Body;
use crate::error::GateError;
use crate::gateway::{ConnInfo, State};
use keys::{Keys, ProviderHttp};
use verify::{Failure, Rejection, Verifier};

/// Verified IdP tokens remembered (by hash) so that a client replaying its token does not cost
/// a signature check each time.
const VERIFIED_CACHE_CAPACITY: u64 = 10_000;
/// Longest bearer accepted; real ID tokens are a few KiB.
const MAX_BEARER: usize = 16 * 1024;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// Discovery is redone this often, so that a key the provider withdrew (compromised, retired)
/// stops being trusted without a restart; a failure keeps the keys we have.
const REDISCOVER_EVERY: Duration = Duration::from_secs(3600);

/// The `[oidc]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Exactly the `iss` of the tokens; discovery is under it.
    pub issuer: String,
    /// A token is accepted when its `aud` contains one of these.
    pub audience: Vec<String>,
    #[serde(default = "default_login_claim")]
    pub login_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(
        default = "default_leeway",
        deserialize_with = "crate::config::duration"
    )]
    pub leeway: Duration,
    /// At most one JWKS refetch for an unknown `kid` within this interval.
    #[serde(
        default = "default_refresh_min_interval",
        deserialize_with = "crate::config::duration"
    )]
    pub refresh_min_interval: Duration,
    /// For each request to the provider.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::duration"
    )]
    pub timeout: Duration,
    /// PEM certificates trusted for the provider instead of the system's roots (a private CA).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

fn default_login_claim() -> String {
    "preferred_username".into()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_refresh_min_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl OidcConfig {
    /// Checks values and resolves relative paths against the config file's folder.
    pub fn validate(&mut self, base: &Path) -> Result<(), String> {
        issuer_url(&self.issuer)?;
        if self.audience.is_empty() || self.audience.iter().any(|a| a.is_empty()) {
            return Err("audience: at least one non-empty audience is needed".into());
        }
        if self.login_claim.is_empty() {
            return Err("login_claim: must not be empty".into());
        }
        if self.leeway > Duration::from_secs(300) {
            return Err("leeway: at most 5m".into());
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be more than 0s".into());
        }
        if let Some(bundle) = &mut self.ca_bundle {
            *bundle = base.join(&*bundle);
        }
        Ok(())
    }
}

/// The issuer as a URL. Plain http only on loopback: the keys fetched from it decide who logs in.
fn issuer_url(issuer: &str) -> Result<IssuerUrl, String> {
    let url = IssuerUrl::new(issuer.into()).map_err(|e| format!("issuer: {e}"))?;
    let parsed = url.url();
    let loopback = match parsed.host() {
        Some(openidconnect::url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("issuer: must be an https URL (http only on loopback)".into()),
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("issuer: must have no query or fragment".into());
    }
    Ok(url)
}

/// What the endpoint needs at run time, loaded from the config.
#[derive(Debug)]
pub struct Oidc {
    verifier: Arc<Verifier>,
    started: AtomicBool,
}

impl Oidc {
    /// Builds the client and the empty key cache; nothing is fetched here (no runtime yet).
    pub fn load(config: &OidcConfig) -> Result<Self, String> {
        let issuer = issuer_url(&config.issuer)?;
        let keys = Keys::new(
            issuer,
            ProviderHttp(provider_client(config)?),
            config.refresh_min_interval,
        );
        Ok(Self {
            verifier: Arc::new(Verifier::new(
                keys,
                config.audience.clone(),
                config.login_claim.clone(),
                config.leeway,
                VERIFIED_CACHE_CAPACITY,
            )),
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

pub async fn handle(
    state: Arc<State>,
    throttle: &Throttle,
    parts: &request::Parts,
    conn: ConnInfo,
) -> Result<Response<Body>, GateError> {
    let Some(oidc) = &state.oidc else {
        return Err(GateError::NoRoute);
    };
    let addr = conn.remote.ip();
    throttle.check_addr(addr).map_err(GateError::locked_out)?;
    let token = bearer(&parts.headers).inspect_err(|e| {
        if matches!(e, BearerError::Malformed) {
            refused_by(throttle, &state, addr, "malformed bearer");
        }
    })?;
    let verified = match oidc.verifier.verify(token).await {
        Ok(verified) => verified,
        Err(Failure::NotReady) => return Err(GateError::NotReady),
        Err(Failure::Rejected(reason)) => {
            refused_by(throttle, &state, addr, &reason.to_string());
            return Err(authentication_failed(reason));
        }
    };
    login::issue_proven(&state, throttle, &verified.login, Method::Oidc, addr)
}

fn refused_by(throttle: &Throttle, state: &State, addr: IpAddr, reason: &str) {
    throttle.record_addr_failure(addr, &state.config.login);
    tracing::info!(client = %addr, method = "oidc", reason, "token refused");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BearerError {
    Missing,
    Malformed,
}

impl From<BearerError> for GateError {
    fn from(e: BearerError) -> Self {
        let message = match e {
            BearerError::Missing => "an Authorization: Bearer header is required",
            BearerError::Malformed => "the Authorization header is not a single Bearer token",
        };
        GateError::Refused {
            status: StatusCode::UNAUTHORIZED,
            code: "OidcInvalidParameter",
            message: message.into(),
            challenge: Some(invalid_token_challenge()),
        }
    }
}

fn authentication_failed(reason: Rejection) -> GateError {
    GateError::Refused {
        status: StatusCode::UNAUTHORIZED,
        code: "OidcAuthenticationFailed",
        message: reason.to_string(),
        challenge: Some(invalid_token_challenge()),
    }
}

fn invalid_token_challenge() -> HeaderValue {
    HeaderValue::from_static("Bearer error=\"invalid_token\"")
}

/// The token of the single `Authorization: Bearer` header (RFC 6750 b64token syntax).
fn bearer(headers: &HeaderMap) -> Result<&str, BearerError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(BearerError::Missing)?;
    if values.next().is_some() {
        return Err(BearerError::Malformed);
    }
    let value = value.to_str().map_err(|_| BearerError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Malformed);
    }
    let token = token.trim_start_matches(' ');
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    let body = token.trim_end_matches('=');
    if token.is_empty() || token.len() > MAX_BEARER || !body.chars().all(b64token) {
        return Err(BearerError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<OidcConfig, String> {
        let text =
            format!("issuer = \"https://idp.test/realms/x\"\naudience = [\"xivo\"]\n{extra}");
        let mut c: OidcConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.validate(Path::new("/etc/ucgate")).map(|()| c)
    }

    #[test]
    fn config_defaults_and_checks() {
        let c = config("").unwrap();
        assert_eq!(c.login_claim, "preferred_username");
        assert_eq!(c.leeway, Duration::from_secs(30));
        assert_eq!(c.refresh_min_interval, Duration::from_secs(10));
        let c = config("ca_bundle = \"idp-ca.pem\"\nleeway = \"2s\"").unwrap();
        assert_eq!(c.ca_bundle.unwrap(), Path::new("/etc/ucgate/idp-ca.pem"));
        assert!(
            config("audience2 = []")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            config("leeway = \"1h\"")
                .unwrap_err()
                .starts_with("leeway:")
        );
        assert!(
            config("timeout = \"0s\"")
                .unwrap_err()
                .starts_with("timeout:")
        );
        assert!(
            config("login_claim = \"\"")
                .unwrap_err()
                .starts_with("login_claim:")
        );
        let mut c = config("").unwrap();
        c.audience.clear();
        assert!(
            c.validate(Path::new("/"))
                .unwrap_err()
                .starts_with("audience:")
        );
    }

    #[test]
    fn plain_http_issuers_only_on_loopback() {
        assert!(issuer_url("http://127.0.0.1:8080").is_ok());
        assert!(issuer_url("http://localhost/realms/x").is_ok());
        assert!(issuer_url("http://[::1]:9000").is_ok());
        assert!(issuer_url("http://idp.example.com").is_err());
        assert!(issuer_url("ftp://idp.example.com").is_err());
        assert!(issuer_url("https://idp.example.com?x=1").is_err());
        assert!(issuer_url("not a url").is_err());
    }

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

    #[test]
    fn errors_carry_the_bearer_challenge() {
        let response = GateError::from(BearerError::Missing).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let response = authentication_failed(Rejection::Audience).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}
