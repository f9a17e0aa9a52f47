//! Trusting the site's running xuc (`[xuc]`): a UC token that ucgate did not sign is checked at
//! `GET <url>/xuc/api/2.0/auth/check` with `Authorization: Bearer <token>`, the check XiVO's
//! web clients make, and a 200 naming a login is believed. It is token introspection (what
//! RFC 7662 defines for OAuth servers) in xuc's terms.
//!
//! The remote check stays off the request path: a vouched token goes into the token service's
//! cache ([`TokenService::vouch`]) for `check_cache`, where it costs what a cache hit of
//! ucgate's own tokens costs. Misses are coalesced per token (one remote check however many
//! requests wait for it), refusals are remembered for `negative_cache` in a bounded cache, and
//! each client address may cause at most [`CHECKS_PER_SECOND`] remote checks a second (429
//! beyond). xuc down or slow fails closed: `503 XucUnavailable` for a token not in the cache.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use moka::Expiry;
use serde::Deserialize;
use url::Url;

use super::session::Session;
use super::token::{Claims, Method, TokenError, TokenService, unix_now};
use crate::config::{ProfilesFrom, XucConfig};
use crate::directory::{Directory, User};
use crate::error::GateError;
use crate::metrics::metrics;

/// Remote checks one client address may cause per second; past it, `429 TooManyAttempts`.
pub const CHECKS_PER_SECOND: u32 = 20;
/// Answers remembered at most (refusals and coalesced acceptances): about 100 bytes each.
const MAX_ANSWERS: u64 = 100_000;
/// Client addresses whose remote checks are counted at once.
const MAX_CLIENTS: u64 = 100_000;
/// The largest check answer read; xuc's is well under 1 KiB.
const MAX_ANSWER: usize = 16 * 1024;
/// How often xuc's reachability is probed, for `/readyz` and `ucgate_xuc_up`.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Longest login believed (it becomes `X-Auth-User`).
const MAX_LOGIN: usize = 256;
/// Longest token sent to xuc: its tokens are well under 1 KiB, and a longer one would only
/// meet xuc's header limit (431), which says nothing of xuc's health.
const MAX_TOKEN: usize = 4096;
/// Unexpected answers of xuc are logged at most this often (a flood would repeat them).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// The check path under `[xuc].url` (XiVO UC API 2.0).
const CHECK_PATH: &str = "xuc/api/2.0/auth/check";

/// The site's xuc as a token issuer. Cheap to clone; kept across reloads that leave `[xuc]`
/// as it is, with what it remembers.
#[derive(Debug, Clone)]
pub struct Xuc {
    inner: Arc<Inner>,
}

struct Inner {
    config: XucConfig,
    check_url: Url,
    client: reqwest::Client,
    /// Answers by [`Inner::key`]: refusals for `negative_cache`, acceptances for what is left
    /// of their freshness (so that the requests of one token share one remote check).
    answers: moka::future::Cache<u128, Answer, foldhash::fast::RandomState>,
    /// Remote checks per client address in the current second (the entry's lifetime).
    budget: moka::sync::Cache<IpAddr, Arc<AtomicU32>, foldhash::fast::RandomState>,
    /// Random per process: the answers' keys are keyed hashes of the token, never the text.
    hashers: [foldhash::quality::RandomState; 2],
    /// The last probe or check reached xuc.
    up: AtomicBool,
    /// The reachability probe runs (once per `Xuc`, whatever the reloads that keep it).
    probing: AtomicBool,
    /// A vouched token is kept no longer than this (`tokens.max_session`), whatever it says.
    max_lifetime: Duration,
    /// When an unexpected answer was last logged, in seconds since the epoch.
    warned_at: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xuc")
            .field("url", &self.config.url.as_str())
            .field("answers", &self.answers.entry_count())
            .finish_non_exhaustive()
    }
}

/// What xuc said of a token.
#[derive(Debug, Clone)]
enum Answer {
    Vouched(Arc<Vouched>),
    Refused,
}

/// A token xuc vouched for.
#[derive(Debug)]
struct Vouched {
    login: String,
    /// The profile, or "" when none is known (routes with `profiles` refuse it).
    profile: String,
    /// The token's expiry as far as known, seconds since the epoch.
    exp: u64,
    /// When xuc answered, and for how long the answer may be reused.
    at: Instant,
    fresh_for: Duration,
}

/// Refusals live `negative_cache`, acceptances their freshness.
struct AnswerExpiry(Duration);

impl Expiry<u128, Answer> for AnswerExpiry {
    fn expire_after_create(&self, _: &u128, answer: &Answer, _: Instant) -> Option<Duration> {
        Some(match answer {
            Answer::Vouched(v) => v.fresh_for,
            Answer::Refused => self.0,
        })
    }
}

/// xuc's check answer (`{"login", "token", "TTL"}`); `profile` when a ucgate stands in.
#[derive(Deserialize)]
struct CheckAnswer {
    login: String,
    #[serde(rename = "TTL", default)]
    ttl: Option<u64>,
    #[serde(default)]
    profile: Option<String>,
}

/// Why a check did not end in an answer; cloned to every request that waited for it.
#[derive(Debug, Clone)]
enum Failure {
    /// xuc unreachable, too slow, failing (5xx): `reached` false, and xuc counts as down; or
    /// answering something else than a check answer (a 404 of a wrong URL, a 429, a garbled
    /// body): `reached` true.
    Unavailable { reached: bool },
    /// The client address spent its remote checks of this second.
    Limited,
    /// The directory could not give the profile.
    Directory(GateError),
}

impl From<Failure> for GateError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Unavailable { .. } => GateError::XucUnavailable,
            Failure::Limited => GateError::TooManyAttempts(1),
            Failure::Directory(e) => e,
        }
    }
}

impl Xuc {
    /// The check URL and the pooled client (with `ca_bundle`'s CAs, if set). A vouched token
    /// is kept `max_lifetime` at most (`tokens.max_session`).
    pub fn load(config: &XucConfig, max_lifetime: Duration) -> Result<Self, String> {
        let check_url = config
            .url
            .join(CHECK_PATH)
            .map_err(|e| format!("url: {e}"))?;
        let builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A check answer is never a redirect; following one would send the token on.
            .redirect(reqwest::redirect::Policy::none())
            // The token goes to the configured xuc and nowhere else.
            .no_proxy();
        let client = crate::tls::provider_client(builder, config.ca_bundle.as_deref())?;
        Ok(Self {
            inner: Arc::new(Inner {
                check_url,
                client,
                answers: moka::future::Cache::builder()
                    .max_capacity(MAX_ANSWERS)
                    .expire_after(AnswerExpiry(config.negative_cache))
                    .build_with_hasher(foldhash::fast::RandomState::default()),
                budget: moka::sync::Cache::builder()
                    .max_capacity(MAX_CLIENTS)
                    .time_to_live(Duration::from_secs(1))
                    .build_with_hasher(foldhash::fast::RandomState::default()),
                hashers: Default::default(),
                up: AtomicBool::new(true),
                probing: AtomicBool::new(false),
                max_lifetime,
                warned_at: AtomicU64::new(0),
                config: config.clone(),
            }),
        })
    }

    /// Whether this is the xuc `config` describes, as it describes it: a reload keeps it then.
    pub fn is_for(&self, config: &XucConfig) -> bool {
        self.inner.config == *config
    }

    /// Whether the last probe or check reached xuc.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// The claims of a token ucgate did not sign, as xuc vouches for them, cached in `tokens`
    /// (see [`TokenService::vouch`]). `client` is the address whose remote checks are counted;
    /// `directory` gives the profile when `profiles_from = "directory"`.
    ///
    /// Errors: `TokenInvalid` (xuc refuses it, now or within `negative_cache`; or ucgate's
    /// logout revoked it), `XucUnavailable` (xuc unreachable, slow, or not answering as xuc),
    /// `TooManyAttempts` (the client's remote checks are spent), `DirectoryUnavailable`.
    pub async fn authenticate(
        &self,
        token: &str,
        client: IpAddr,
        tokens: &TokenService,
        directory: &dyn Directory,
    ) -> Result<Arc<Claims>, GateError> {
        let inner = &*self.inner;
        // Only what can be an xuc token goes to xuc (RFC 6750 §2.1 b64token, not too long).
        if !is_bearer_token(token) || token.len() > MAX_TOKEN {
            return Err(GateError::TokenInvalid);
        }
        let key = inner.key(token);
        let answer = inner
            .answers
            .try_get_with(key, inner.ask(token, client, directory))
            .await
            .map_err(|failure| GateError::from((*failure).clone()))?;
        let vouched = match answer {
            Answer::Vouched(vouched) => vouched,
            Answer::Refused => return Err(GateError::TokenInvalid),
        };
        let fresh_for = vouched.fresh_for.saturating_sub(vouched.at.elapsed());
        let now = unix_now();
        let claims = Claims {
            sub: Box::from(&*vouched.login),
            profile: Box::from(&*vouched.profile),
            method: Method::Xuc,
            exp: vouched.exp,
            auth_time: now,
            // Its own session: a logout here of one xuc token must not end another's.
            sid: Session::xuc(key),
        };
        tokens.vouch(token, claims, fresh_for).map_err(|e| match e {
            TokenError::Expired => GateError::TokenExpired,
            _ => GateError::TokenInvalid,
        })
    }

    /// Whether xuc's check endpoint answers a request without a token (with a 401, as xuc
    /// does; any status below 500), for `ucgate doctor`; the reason when it does not.
    pub async fn reach(&self) -> Result<(), String> {
        self.inner.reach().await
    }

    /// The xuc, for reports: its URL (which holds no secret).
    pub fn url(&self) -> &str {
        self.inner.config.url.as_str().trim_end_matches('/')
    }

    /// Probes xuc every [`PROBE_INTERVAL`] while this `Xuc` lives: any HTTP answer of its check
    /// endpoint below 500 (a 401 to a request without a token) means reachable.
    pub fn start(&self) {
        if self.inner.probing.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(probe(weak));
    }
}

async fn probe(weak: Weak<Inner>) {
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let reached = inner.reach().await.is_ok();
        inner.set_up(reached);
    }
}

impl Inner {
    /// 128 bits of two keyed hashes of the whole token.
    fn key(&self, token: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.hashers[0].hash_one(token)) << 64)
            | u128::from(self.hashers[1].hash_one(token))
    }

    async fn reach(&self) -> Result<(), String> {
        let response = self
            .client
            .get(self.check_url.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status() {
            status if status < StatusCode::INTERNAL_SERVER_ERROR => Ok(()),
            status => Err(format!("its check endpoint answers {status}")),
        }
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(url = %self.config.url, "xuc answers again");
            } else {
                tracing::warn!(url = %self.config.url, "xuc cannot be reached: tokens it issued and not checked yet are refused (503)");
            }
        }
    }

    /// Logs an unexpected answer of xuc, at most once every [`WARN_EVERY`].
    fn warn(&self, what: &str) {
        let now = unix_now();
        let last = self.warned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY.as_secs()
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(url = %self.config.url, "xuc {what} (said at most once a minute)");
        } else {
            tracing::debug!(url = %self.config.url, "xuc {what}");
        }
    }

    /// Takes one remote check from `client`'s budget of this second. IPv6 clients are counted
    /// by their /64, which one host commonly holds whole.
    fn spend(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        };
        let count = self.budget.get_with(client, || Arc::new(AtomicU32::new(0)));
        count.fetch_add(1, Ordering::Relaxed) < CHECKS_PER_SECOND
    }

    /// One remote check, then the profile. Counted in `ucgate_xuc_checks_total{outcome}` and
    /// timed in `ucgate_xuc_check_seconds`.
    async fn ask(
        &self,
        token: &str,
        client: IpAddr,
        directory: &dyn Directory,
    ) -> Result<Answer, Failure> {
        if !self.spend(client) {
            metrics().xuc_check("limited");
            return Err(Failure::Limited);
        }
        let started = Instant::now();
        let outcome = self.check(token).await;
        metrics()
            .xuc_check_seconds
            .observe(started.elapsed().as_secs_f64());
        self.set_up(!matches!(
            outcome,
            Err(Failure::Unavailable { reached: false })
        ));
        let answer = match outcome {
            // A token with no life left is no token.
            Ok(Some(answer)) if answer.ttl != Some(0) => answer,
            Ok(_) => {
                metrics().xuc_check("refused");
                return Ok(Answer::Refused);
            }
            Err(failure) => {
                metrics().xuc_check("unavailable");
                return Err(failure);
            }
        };
        metrics().xuc_check("vouched");
        let profile = match self.config.profiles_from {
            ProfilesFrom::Check => answer.profile.unwrap_or_default(),
            ProfilesFrom::Directory => directory
                .lookup(&answer.login)
                .await
                .map_err(Failure::Directory)?
                .as_ref()
                .and_then(User::login_profile)
                .unwrap_or_default()
                .to_owned(),
        };
        let now = unix_now();
        // The token's own expiry when it is a JWT that says it (read, not verified: xuc vouched
        // for the token, and this only bounds how long ucgate keeps it), else the answer's TTL.
        let exp = jwt_exp(token)
            .filter(|&exp| exp > now)
            .or_else(|| answer.ttl.map(|ttl| now.saturating_add(ttl)))
            .unwrap_or(now.saturating_add(self.config.check_cache.as_secs()))
            .min(now.saturating_add(self.max_lifetime.as_secs()));
        let left = Duration::from_secs(exp.saturating_sub(now));
        let ttl = answer.ttl.map_or(left, Duration::from_secs);
        Ok(Answer::Vouched(Arc::new(Vouched {
            login: answer.login,
            profile,
            exp,
            at: Instant::now(),
            fresh_for: self.config.check_cache.min(left).min(ttl),
        })))
    }

    /// `Some` for a 200 with a check answer naming a login, `None` for 401 or 403 (xuc refuses
    /// the token), `Unavailable` otherwise.
    async fn check(&self, token: &str) -> Result<Option<CheckAnswer>, Failure> {
        let response = self
            .client
            .get(self.check_url.clone())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| {
                // reqwest's errors name the URL, which holds no token (the token is a header).
                tracing::debug!(error = %e, "xuc check failed");
                Failure::Unavailable { reached: false }
            })?;
        let garbled = Failure::Unavailable { reached: true };
        match response.status() {
            StatusCode::OK => {}
            // Refused; or a request xuc cannot take (a token too large for its limits): the
            // token is bad, xuc is fine.
            StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::BAD_REQUEST
            | StatusCode::URI_TOO_LONG
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => return Ok(None),
            status if status.is_server_error() => {
                self.warn(&format!("fails: it answered a check {status}"));
                return Err(Failure::Unavailable { reached: false });
            }
            status => {
                self.warn(&format!(
                    "answered a check {status}: is [xuc].url the xuc's address?"
                ));
                return Err(garbled);
            }
        }
        let Ok(body) = read_bounded(response).await else {
            self.warn("sent a check answer too large or cut off");
            return Err(garbled);
        };
        let Ok(answer) = serde_json::from_slice::<CheckAnswer>(&body) else {
            self.warn("answered a check with something else than {\"login\", \"token\", \"TTL\"}");
            return Err(garbled);
        };
        if !is_login(&answer.login) {
            self.warn("answered a check naming no usable login");
            return Err(garbled);
        }
        Ok(Some(answer))
    }
}

/// A login that can go upstream as `X-Auth-User`: visible ASCII, not too long.
fn is_login(login: &str) -> bool {
    !login.is_empty() && login.len() <= MAX_LOGIN && login.bytes().all(|b| b.is_ascii_graphic())
}

/// RFC 6750 §2.1: `b64token`, within the longest bearer token ucgate reads.
fn is_bearer_token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && token.len() <= super::credential::MAX_BEARER
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Reads at most [`MAX_ANSWER`] bytes.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ()> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| ())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `exp` claim of a JWT, unverified; `None` when the token is no JWT or has none.
fn jwt_exp(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Exp>(&json).ok().map(|e| e.exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_and_expiries() {
        assert!(is_login("alice"));
        assert!(is_login("j.doe@example.com"));
        for bad in ["", "a b", "a\r\nX-Auth-Token: x", "é", &"a".repeat(257)] {
            assert!(!is_login(bad), "{bad:?}");
        }
        let payload = URL_SAFE_NO_PAD.encode(br#"{"login":"alice","exp":1900000000}"#);
        assert_eq!(jwt_exp(&format!("e30.{payload}.sig")), Some(1_900_000_000));
        assert_eq!(jwt_exp("opaque-token"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
        let no_exp = URL_SAFE_NO_PAD.encode(br#"{"login":"alice"}"#);
        assert_eq!(jwt_exp(&format!("e30.{no_exp}.sig")), None);
        assert!(is_bearer_token("eyJ0.eyJ1.c2ln"));
        assert!(is_bearer_token("abc=="));
        for bad in ["", "==", "a b", "a,b", "a\"b", &"a".repeat(16 * 1024 + 1)] {
            assert!(!is_bearer_token(bad), "{bad:?}");
        }
    }
}
