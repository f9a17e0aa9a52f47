//! UC tokens: JWTs issued by ucgate, validated through a moka cache, revocable.

use std::fmt;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use moka::Expiry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::jose;
use super::revocations::Revocations;
use super::session::Session;
use super::standing::{Cell, Standing, Verdict};
use crate::cluster::{Cluster, RevocationSink, Revoked, Scope};
use crate::config::{TokenAlgorithm, TokensConfig};
use crate::metrics::metrics;

/// How a person proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Password,
    Kerberos,
    Cas,
    Oidc,
    /// A token of the site's xuc, vouched for by its check endpoint (`[xuc]`); never in a
    /// token ucgate signs.
    Xuc,
}

impl Method {
    /// The name in the `method` claim and `X-Auth-Method`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::Kerberos => "kerberos",
            Method::Cas => "cas",
            Method::Oidc => "oidc",
            Method::Xuc => "xuc",
        }
    }
}

/// The claims of a validated UC token, as the request path reads them. Kept in the validation
/// cache for each token until its `exp`, so it holds only what is read after validation, in one
/// allocation of 96 bytes beside two small strings: `iss` was checked by the validation, `iat`
/// too, `jti` matters only as the session of tokens older than `sid`, and the session is kept
/// as its 128 bits (about 140 bytes less per cached token than the wire form). Tokens carry
/// [`WireClaims`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The login.
    pub sub: Box<str>,
    pub profile: Box<str>,
    pub method: Method,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// When the person authenticated, seconds since the epoch (as OpenID Connect's
    /// `auth_time`): renewals keep it, and none outlives it by more than `tokens.max_session`.
    /// A token issued before sessions has none on the wire: its `iat` stands for it.
    pub auth_time: u64,
    /// The session (as OpenID Connect's `sid`): every token renewed from one authentication
    /// shares it, and a logout ends them all. A token issued before sessions has none on the
    /// wire: its `jti` stands for it.
    pub sid: Session,
}

/// The claims of a UC token as signed (RFC 7519 §4): what [`Claims`] keeps, and `iss` and `jti`.
#[derive(Debug, Serialize, Deserialize)]
struct WireClaims {
    iss: String,
    sub: String,
    profile: String,
    method: Method,
    /// An integer: ucgate issues UC tokens and writes integers; another type in a correctly
    /// signed token is a sign of something else at work.
    iat: u64,
    /// An integer, as `iat`.
    exp: u64,
    jti: String,
    #[serde(default)]
    auth_time: u64,
    #[serde(default)]
    sid: String,
}

impl From<WireClaims> for Claims {
    fn from(wire: WireClaims) -> Self {
        Claims {
            sub: wire.sub.into_boxed_str(),
            profile: wire.profile.into_boxed_str(),
            method: wire.method,
            exp: wire.exp,
            auth_time: if wire.auth_time == 0 {
                wire.iat
            } else {
                wire.auth_time
            },
            sid: Session::from(if wire.sid.is_empty() {
                &*wire.jti
            } else {
                &*wire.sid
            }),
        }
    }
}

impl Claims {
    /// Seconds left before expiry.
    pub fn ttl(&self) -> u64 {
        self.exp.saturating_sub(unix_now())
    }
}

/// Why a UC token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token has been revoked")]
    Revoked,
    #[error("the directory no longer allows this login")]
    Disallowed,
    #[error("the token is invalid")]
    Invalid,
}

/// A freshly issued token.
#[derive(Debug, Serialize)]
pub struct Issued {
    pub login: String,
    pub token: String,
    #[serde(rename = "TTL")]
    pub ttl: u64,
}

/// Signs, validates and revokes UC tokens.
pub struct TokenService {
    header: Header,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    max_ttl: Duration,
    max_session: Duration,
    /// Valid tokens by [`TokenService::cache_key`] (never the text itself), until their `exp`.
    cache: moka::sync::Cache<u128, Cached, foldhash::fast::RandomState>,
    /// Random per service, never revealed: what the cache keys are masked with.
    key_mask: u128,
    /// Random per service, never revealed: the two halves of an opaque token's cache key, and
    /// the fingerprint.
    hashers: [foldhash::quality::RandomState; 3],
    /// Revoked tokens, by [`revocation_key`].
    revoked: Revocations,
    /// With `users.recheck`: what the directory says now of each token's login.
    standing: Option<Standing>,
    /// With `[cluster]`: where revocations are told to the other instances.
    cluster: Option<Cluster>,
}

impl fmt::Debug for TokenService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenService")
            .field("alg", &self.header.alg)
            .field("issuer", &self.issuer)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// A cached validation. A hit needs the whole token: the key comes from its signature, and the
/// fingerprint, a keyed 64-bit hash of the whole text, must match too.
#[derive(Clone)]
struct Cached {
    fingerprint: u64,
    /// The revocations' revision when it was last checked against them.
    revision: u64,
    claims: Arc<Claims>,
    /// The login's standing, when followed: read at each hit, without a look-up.
    cell: Option<Arc<Cell>>,
    /// A token vouched for by another issuer (xuc) is reused this many milliseconds at most,
    /// then asked again; `None` for ucgate's own, kept until their `exp`. Not a `Duration`: a
    /// cached validation is 16 bytes smaller in moka's entry with 32 bits here (measured).
    fresh_ms: Option<NonZeroU32>,
}

/// Cached validations live until the token's `exp`, or less for a vouched token.
struct UntilExpiry;

impl Expiry<u128, Cached> for UntilExpiry {
    fn expire_after_create(&self, _: &u128, cached: &Cached, _: Instant) -> Option<Duration> {
        let until_exp = Duration::from_secs(cached.claims.ttl());
        Some(cached.fresh_ms.map_or(until_exp, |fresh| {
            Duration::from_millis(fresh.get().into()).min(until_exp)
        }))
    }
}

impl TokenService {
    /// Loads the keys named by `config`. Errors name the key and never echo its value.
    pub fn load(config: &TokensConfig) -> Result<Self, String> {
        let (encoding, decoding) = match &config.algorithm {
            TokenAlgorithm::Hs256 { signing_key_env } => {
                let secret = std::env::var(signing_key_env).unwrap_or_default();
                if secret.len() < 32 {
                    return Err(format!(
                        "tokens.signing_key_env: environment variable {signing_key_env} must hold a \
                         secret of at least 32 bytes (it is {})",
                        if secret.is_empty() {
                            "unset"
                        } else {
                            "too short"
                        }
                    ));
                }
                (
                    EncodingKey::from_secret(secret.as_bytes()),
                    DecodingKey::from_secret(secret.as_bytes()),
                )
            }
            TokenAlgorithm::EdDsa {
                private_key,
                public_key,
            }
            | TokenAlgorithm::Rs256 {
                private_key,
                public_key,
            } => {
                let read = |key: &str, path: &std::path::Path| {
                    std::fs::read(path)
                        .map_err(|e| format!("tokens.{key}: cannot read {}: {e}", path.display()))
                };
                let private = read("private_key", private_key)?;
                let public = read("public_key", public_key)?;
                let bad = |key: &'static str| {
                    move |e: jsonwebtoken::errors::Error| format!("tokens.{key}: {e}")
                };
                if matches!(config.algorithm, TokenAlgorithm::EdDsa { .. }) {
                    (
                        EncodingKey::from_ed_pem(&private).map_err(bad("private_key"))?,
                        DecodingKey::from_ed_pem(&public).map_err(bad("public_key"))?,
                    )
                } else {
                    (
                        EncodingKey::from_rsa_pem(&private).map_err(bad("private_key"))?,
                        DecodingKey::from_rsa_pem(&public).map_err(bad("public_key"))?,
                    )
                }
            }
        };
        let revoked = Revocations::load(config.leeway, config.revocations_file.as_deref())?;
        let service = Self::new(config, encoding, decoding, revoked);
        // A key pair that does not match would issue tokens nobody accepts: check it now.
        let probe = service
            .sign(
                "ucgate-key-check",
                "probe",
                Method::Password,
                config.ttl.min(Duration::from_secs(60)),
                None,
            )
            .map_err(|e| format!("tokens: cannot sign with the configured key: {e}"))?;
        service
            .decode(&probe.token)
            .map_err(|_| "tokens: public_key does not verify what private_key signs".to_string())?;
        Ok(service)
    }

    fn new(
        config: &TokensConfig,
        encoding: EncodingKey,
        decoding: DecodingKey,
        revoked: Revocations,
    ) -> Self {
        let alg = jwt_algorithm(&config.algorithm);
        // Pinned to the one configured algorithm: `none` and algorithm confusion are refused
        // before any signature check.
        let mut validation = Validation::new(alg);
        validation.leeway = config.leeway.as_secs();
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        Self {
            header: Header::new(alg),
            encoding,
            decoding,
            validation,
            issuer: config.issuer.clone(),
            max_ttl: config.ttl,
            max_session: config.max_session,
            cache: moka::sync::Cache::builder()
                .max_capacity(config.cache_capacity)
                .expire_after(UntilExpiry)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            key_mask: random_u128(),
            hashers: Default::default(),
            revoked,
            standing: None,
            cluster: None,
        }
    }

    /// Issues a token for `login`, living `requested` seconds at most (capped by `tokens.ttl`),
    /// the first of a new session.
    pub fn issue(
        &self,
        login: &str,
        profile: &str,
        method: Method,
        requested: Option<u64>,
    ) -> Result<Issued, TokenError> {
        let ttl = requested.map_or(self.max_ttl, |s| Duration::from_secs(s).min(self.max_ttl));
        self.sign(login, profile, method, ttl, None)
            .map_err(|_| TokenError::Invalid)
    }

    /// A fresh token of the same session as `claims` (a token validated just before): same
    /// login, profile and method, living `tokens.ttl` but never past the session's end
    /// (`auth_time` + `tokens.max_session`): `Expired` once the session is over.
    pub fn renew(&self, claims: &Claims) -> Result<Issued, TokenError> {
        // An xuc token is xuc's to renew: signing one here would outlive a logout at xuc.
        if claims.method == Method::Xuc {
            return Err(TokenError::Invalid);
        }
        let end = claims.auth_time.saturating_add(self.max_session.as_secs());
        let left = end.saturating_sub(unix_now());
        if left == 0 {
            return Err(TokenError::Expired);
        }
        let ttl = self.max_ttl.min(Duration::from_secs(left));
        let session = (claims.auth_time, claims.sid.clone());
        self.sign(
            &claims.sub,
            &claims.profile,
            claims.method,
            ttl,
            Some(session),
        )
        .map_err(|_| TokenError::Invalid)
    }

    fn sign(
        &self,
        login: &str,
        profile: &str,
        method: Method,
        ttl: Duration,
        session: Option<(u64, Session)>,
    ) -> Result<Issued, jsonwebtoken::errors::Error> {
        let iat = unix_now();
        let jti = random_hex();
        let (auth_time, sid) = session.unwrap_or_else(|| (iat, Session::random(random_u128())));
        let claims = WireClaims {
            iss: self.issuer.clone(),
            sub: login.to_owned(),
            profile: profile.to_owned(),
            method,
            iat,
            exp: iat + ttl.as_secs(),
            jti,
            auth_time,
            sid: sid.to_string(),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.encoding)?;
        Ok(Issued {
            login: login.to_owned(),
            token,
            ttl: ttl.as_secs(),
        })
    }

    /// Follows each token's login in the directory through `standing` (see
    /// `auth::standing`): [`TokenService::validate`] then answers with the profile the
    /// directory gives now, or `Disallowed`.
    pub fn follow(&mut self, standing: Standing) {
        self.standing = Some(standing);
    }

    /// Starts what keeps the followed logins up to date, on the runtime.
    pub fn start(&self, directory: Arc<dyn crate::directory::Directory>) {
        if let Some(standing) = &self.standing {
            standing.start(directory);
        }
    }

    /// Validates a token, with its login's standing in the directory when followed:
    /// `Expired`, `Revoked`, `Invalid`, or `Disallowed` by the directory. A cache hit costs
    /// a scan for the signature, one keyed hash of the token (its fingerprint), one look-up
    /// and, when followed, one atomic load.
    pub fn validate(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let key = self.cache_key(token);
        let fingerprint = self.hashers[2].hash_one(token);
        if let Some(cached) = self
            .cache
            .get(&key)
            .filter(|c| c.fingerprint == fingerprint)
        {
            metrics().token_cache_hits.inc();
            let revision = self.revoked.revision();
            if cached.revision != revision {
                // Something was revoked since this token was checked: check it again, once.
                if self.is_revoked(token, &cached.claims) {
                    self.cache.invalidate(&key);
                    return Err(TokenError::Revoked);
                }
                self.cache.insert(
                    key,
                    Cached {
                        revision,
                        ..cached.clone()
                    },
                );
            }
            return self.as_followed(cached);
        }
        metrics().token_cache_misses.inc();
        // Read before the checks: a revocation made after them changes it, and the entry is
        // checked again at its next use.
        let revision = self.revoked.revision();
        if self.revoked.contains(revocation_key(token)) {
            return Err(TokenError::Revoked);
        }
        let claims = Arc::new(self.decode(token)?);
        if self.revoked.session_revoked(claims.sid.revocation_key()) {
            return Err(TokenError::Revoked);
        }
        let cached = Cached {
            fingerprint,
            revision,
            cell: self.standing.as_ref().map(|s| s.cell(&claims.sub)),
            claims,
            fresh_ms: None,
        };
        self.remember(token, key, cached)
    }

    /// Caches `cached` for `token`, unless a logout ran since its revision was read.
    fn remember(&self, token: &str, key: u128, cached: Cached) -> Result<Arc<Claims>, TokenError> {
        let revision = cached.revision;
        self.cache.insert(key, cached.clone());
        // A logout may have run between the checks before and the insert.
        if self.revoked.revision() != revision && self.is_revoked(token, &cached.claims) {
            self.cache.invalidate(&key);
            return Err(TokenError::Revoked);
        }
        self.as_followed(cached)
    }

    /// Caches a token that another issuer (the site's xuc) vouched for, as `claims` (method
    /// [`Method::Xuc`]), for `fresh_for` at most: from then on it costs what a cache hit of
    /// ucgate's own tokens costs, and it is revocable like them. `Revoked` when it is revoked
    /// here (ucgate's logout), whatever its issuer says. The login's profile is the caller's
    /// (not followed by `users.recheck`: `fresh_for` bounds its age).
    pub fn vouch(
        &self,
        token: &str,
        claims: Claims,
        fresh_for: Duration,
    ) -> Result<Arc<Claims>, TokenError> {
        debug_assert_eq!(claims.method, Method::Xuc);
        let revision = self.revoked.revision();
        if self.is_revoked(token, &claims) {
            return Err(TokenError::Revoked);
        }
        let millis = u32::try_from(fresh_for.as_millis()).unwrap_or(u32::MAX);
        let Some(fresh_ms) = NonZeroU32::new(millis) else {
            // Its freshness is spent already: answered, not kept.
            return Ok(Arc::new(claims));
        };
        let cached = Cached {
            fingerprint: self.hashers[2].hash_one(token),
            revision,
            claims: Arc::new(claims),
            cell: None,
            fresh_ms: Some(fresh_ms),
        };
        self.remember(token, self.cache_key(token), cached)
    }

    /// Whether the token, or its session, is revoked.
    fn is_revoked(&self, token: &str, claims: &Claims) -> bool {
        self.revoked.contains(revocation_key(token))
            || self.revoked.session_revoked(claims.sid.revocation_key())
    }

    /// The claims with the profile the directory gives now.
    fn as_followed(&self, cached: Cached) -> Result<Arc<Claims>, TokenError> {
        let (Some(mut cell), Some(standing)) = (cached.cell, &self.standing) else {
            return Ok(cached.claims);
        };
        if cell.is_evicted() {
            // Left the table (idle, or past its capacity): the login's current cell.
            cell = standing.cell(&cached.claims.sub);
        }
        match standing.verdict(&cell, &cached.claims.profile) {
            Verdict::Stands => Ok(cached.claims),
            Verdict::Profile(profile) => Ok(Arc::new(Claims {
                profile: Box::from(&*profile),
                ..(*cached.claims).clone()
            })),
            Verdict::Refused => Err(TokenError::Disallowed),
        }
    }

    fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        jose::check_header(token).map_err(|_| TokenError::Invalid)?;
        let data = jsonwebtoken::decode::<WireClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        // Explicit typing (RFC 8725 §3.11): ucgate writes `typ: JWT`; a JWT of another type
        // signed with the same key is not a UC token.
        if !data
            .header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("JWT"))
        {
            return Err(TokenError::Invalid);
        }
        let claims = data.claims;
        // What ucgate never signs, refused should its key leak (defence in depth): a token
        // issued in the future, a session that starts after its token (renewals would extend
        // it forever: a session ends `tokens.max_session` after `auth_time`), both within the
        // leeway; and a login or profile that cannot be a header value (`X-Auth-User`), which
        // check would otherwise renew. No bound on `exp` − `iat` from the configuration: a
        // reload that shortens `tokens.ttl` or `tokens.max_session` would refuse at once every
        // token signed under the longer one.
        let leeway = self.validation.leeway;
        if claims.iat > unix_now().saturating_add(leeway)
            || claims.auth_time > claims.iat.saturating_add(leeway)
            || http::HeaderValue::from_str(&claims.sub).is_err()
            || http::HeaderValue::from_str(&claims.profile).is_err()
        {
            return Err(TokenError::Invalid);
        }
        Ok(claims.into())
    }

    /// Revokes a token and its whole session (every token renewed from the same
    /// authentication): refused everywhere from now on, cached or not. In memory; the
    /// revocations file is written by `Revocations::persist` (see [`TokenService::revocations`]).
    pub fn revoke(&self, token: &str, claims: &Claims) {
        let session_end = claims.auth_time.saturating_add(self.max_session.as_secs());
        let revoked = [
            Revoked {
                scope: Scope::Token,
                key: revocation_key(token),
                exp: claims.exp,
            },
            Revoked {
                scope: Scope::Session,
                key: claims.sid.revocation_key(),
                exp: session_end,
            },
        ];
        for r in &revoked {
            // Every cached validation is checked again at its next use (the revision moved).
            self.revoked.add(r);
            if let Some(cluster) = &self.cluster {
                cluster.publish(*r);
            }
        }
    }

    /// Tokens in the validation cache, counted after its pending work (admissions, expiries)
    /// is done: for the metrics scrape, not the request path.
    pub fn cached(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// The revocations in force.
    pub fn revocations(&self) -> &Revocations {
        &self.revoked
    }

    /// Tells every revocation to the other instances through `cluster`.
    pub fn share(&mut self, cluster: Cluster) {
        self.cluster = Some(cluster);
    }

    /// Where `cluster` delivers the other instances' revocations: the revocations themselves,
    /// shared by every generation (their revision makes the caches check again).
    pub fn sink(&self) -> Arc<dyn RevocationSink> {
        Arc::new(self.revoked.clone())
    }

    /// The cache key: the first 16 bytes of the token's signature segment, masked with a secret
    /// of the service. The signature is a MAC (or signature) of everything before it, so two
    /// valid tokens share those bytes with a chance of 2^-96 (base64url carries 6 bits a byte),
    /// and such a pair would only evict each other. Two keyed hashes of the segment cost 460
    /// instructions of every UC-token request (callgrind); SHA-256 of the whole token, 310 ns.
    /// The fingerprint binds the entry to the whole text, so that a signature alone opens
    /// nothing. A token without a segment of MAC length (an opaque token of another issuer,
    /// whose text may share a prefix with others) is keyed by two keyed hashes of it instead.
    fn cache_key(&self, token: &str) -> u128 {
        let signature = signature(token);
        match signature.as_bytes().first_chunk::<16>() {
            Some(head) if signature.len() >= MAC_SEGMENT && signature.len() < token.len() => {
                u128::from_le_bytes(*head) ^ self.key_mask
            }
            _ => {
                (u128::from(self.hashers[0].hash_one(signature)) << 64)
                    | u128::from(self.hashers[1].hash_one(signature))
            }
        }
    }

    /// Keeps the revocations of the service this one replaces: a reload must not bring a
    /// logged-out token back. The validation cache starts empty, since the keys may have changed.
    pub fn inherit(&mut self, old: &TokenService) {
        self.revoked.inherit(&old.revoked);
        if let (Some(new), Some(old)) = (&mut self.standing, &old.standing) {
            new.inherit(old);
        }
    }

    /// Keeps revocations made before a configuration without `[tokens]` came and went: tokens
    /// logged out then are still refused now that UC tokens are accepted again.
    pub fn adopt_revocations(&mut self, old: &Revocations) {
        self.revoked.inherit(old);
    }
}

/// The last segment of a JWS compact serialisation (RFC 7515 §7.1): the signature. Found with
/// the memchr crate's vectorised `memrchr`: `rsplit('.')` went through core's generic one (590
/// instructions of every UC-token request, callgrind), a byte-by-byte backward scan cost 250.
fn signature(token: &str) -> &str {
    match memchr::memrchr(b'.', token.as_bytes()) {
        Some(dot) => &token[dot + 1..],
        None => token,
    }
}

/// Revocations are keyed by SHA-256 of the signature segment: deterministic, so that they survive
/// a reload (the cache's keyed hashes do not), and shared by any token carrying that signature
/// (fail closed). Only cache misses pay for it.
fn revocation_key(token: &str) -> u128 {
    let digest = Sha256::digest(signature(token).as_bytes());
    u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"))
}

/// The shortest signature segment of a JWS ucgate signs or trusts: HMAC-SHA-256's 32 bytes in
/// base64url (EdDSA's take 86 characters, RS256's 342).
const MAC_SEGMENT: usize = 43;

/// 128 random bits.
fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random generator works");
    u128::from_le_bytes(bytes)
}

/// 128 random bits, in hex.
fn random_hex() -> String {
    format!("{:032x}", random_u128())
}

/// Seconds since the Unix epoch (JWT `NumericDate`, RFC 7519 §2).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn jwt_algorithm(algorithm: &TokenAlgorithm) -> Algorithm {
    match algorithm {
        TokenAlgorithm::Hs256 { .. } => Algorithm::HS256,
        TokenAlgorithm::EdDsa { .. } => Algorithm::EdDSA,
        TokenAlgorithm::Rs256 { .. } => Algorithm::RS256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ttl: u64) -> TokenService {
        let config = TokensConfig {
            ttl: Duration::from_secs(ttl),
            ..TokensConfig::default()
        };
        let key = b"0123456789abcdef0123456789abcdef";
        TokenService::new(
            &config,
            EncodingKey::from_secret(key),
            DecodingKey::from_secret(key),
            Revocations::load(config.leeway, None).unwrap(),
        )
    }

    #[test]
    fn issues_validates_and_revokes() {
        let s = service(3600);
        let issued = s
            .issue("alice", "agent", Method::Password, Some(60))
            .unwrap();
        assert_eq!(issued.ttl, 60);
        let claims = s.validate(&issued.token).unwrap();
        assert_eq!((&*claims.sub, claims.method), ("alice", Method::Password));
        assert!(claims.ttl() <= 60 && claims.ttl() >= 59);
        assert!(
            Arc::ptr_eq(&claims, &s.validate(&issued.token).unwrap()),
            "second validation is a cache hit"
        );
        s.revoke(&issued.token, &claims);
        assert_eq!(s.validate(&issued.token), Err(TokenError::Revoked));
    }

    #[test]
    fn a_cached_signature_opens_nothing_without_its_token() {
        let s = service(3600);
        let token = s
            .issue("alice", "agent", Method::Password, None)
            .unwrap()
            .token;
        s.validate(&token).unwrap();
        let (_, signature) = token.rsplit_once('.').unwrap();
        let forged = format!("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.{signature}");
        assert_eq!(s.validate(&forged), Err(TokenError::Invalid));
        assert_eq!(
            &*s.validate(&token).unwrap().sub,
            "alice",
            "the real token still hits"
        );
    }

    #[test]
    fn expiration_is_capped_by_ttl() {
        let s = service(100);
        assert_eq!(s.issue("a", "p", Method::Cas, Some(1000)).unwrap().ttl, 100);
        assert_eq!(s.issue("a", "p", Method::Cas, None).unwrap().ttl, 100);
    }

    #[test]
    fn refuses_tampered_and_foreign_tokens() {
        let s = service(3600);
        let token = s
            .issue("alice", "agent", Method::Password, None)
            .unwrap()
            .token;
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let replacement = if parts[2].starts_with("AA") {
            "BB"
        } else {
            "AA"
        };
        parts[2].replace_range(0..2, replacement);
        assert_eq!(s.validate(&parts.join(".")), Err(TokenError::Invalid));
        let other = TokenService::new(
            &TokensConfig::default(),
            EncodingKey::from_secret(b"another-key-another-key-another-key"),
            DecodingKey::from_secret(b"another-key-another-key-another-key"),
            Revocations::load(Duration::ZERO, None).unwrap(),
        );
        let foreign = other
            .issue("alice", "agent", Method::Password, None)
            .unwrap()
            .token;
        assert_eq!(s.validate(&foreign), Err(TokenError::Invalid));
        assert_eq!(s.validate("not.a.jwt"), Err(TokenError::Invalid));
        assert_eq!(s.validate(""), Err(TokenError::Invalid));
    }

    /// A token signed before sessions (no `sid`, no `auth_time`): its `jti` is its session and
    /// its `iat` the session's start, for logout and renewal alike.
    #[test]
    fn a_token_without_session_claims_is_its_own_session() {
        let s = service(3600);
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let iat = unix_now() - 10;
        let older = |jti: &str| {
            let claims = serde_json::json!({
                "iss": "ucgate", "sub": "alice", "profile": "agent", "method": "password",
                "iat": iat, "exp": iat + 600, "jti": jti,
            });
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let token = older("the-jti");
        let claims = s.validate(&token).unwrap();
        assert_eq!(
            (claims.sid.to_string(), claims.auth_time),
            ("the-jti".into(), iat)
        );
        let renewed = s.renew(&claims).unwrap();
        let renewed = s.validate(&renewed.token).unwrap();
        assert_eq!(
            (renewed.sid.to_string(), renewed.auth_time),
            ("the-jti".into(), iat)
        );
        s.revoke(&token, &claims);
        assert_eq!(
            s.validate(&older("another-jti")).unwrap().sub,
            Box::from("alice")
        );
        assert_eq!(s.validate(&older("the-jti")), Err(TokenError::Revoked));
    }

    /// Tokens signed with ucgate's own key but not as ucgate signs them (its key leaked):
    /// issued in the future, of a session starting after them, a login or profile that cannot
    /// be a header value. Within the leeway (5 s here), clocks may differ.
    #[test]
    fn refuses_what_ucgate_never_signs() {
        let s = service(600);
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let forged = |sub: &str, profile: &str, iat: u64, exp: u64, auth_time: u64| {
            let claims = serde_json::json!({
                "iss": "ucgate", "sub": sub, "profile": profile, "method": "password",
                "iat": iat, "exp": exp, "auth_time": auth_time, "sid": random_hex(), "jti": random_hex(),
            });
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let now = unix_now();
        let valid = |sub, profile, iat, exp| s.validate(&forged(sub, profile, iat, exp, iat));
        assert!(valid("alice", "agent", now, now + 600).is_ok());
        assert!(
            valid("alice", "agent", now + 3, now + 600).is_ok(),
            "within the leeway"
        );
        assert!(
            valid("josé", "agent", now, now + 600).is_ok(),
            "obs-text is a header value"
        );
        // Longer than tokens.ttl (600 s here): a reload that shortens the ttl (or the
        // sessions) does not refuse the tokens already issued.
        assert!(valid("alice", "agent", now - 10, now + 3600).is_ok());
        assert!(valid("alice", "agent", now - 10, now + 30 * 86400).is_ok());
        let invalid = Err(TokenError::Invalid);
        assert_eq!(valid("alice", "agent", now + 60, now + 600), invalid);
        assert_eq!(
            valid("alice", "agent", now + 86400, now + 86400 + 60),
            invalid
        );
        let session_from =
            |auth_time| s.validate(&forged("alice", "agent", now, now + 60, auth_time));
        assert!(session_from(now - 3600).is_ok());
        assert!(session_from(now + 3).is_ok(), "within the leeway");
        assert_eq!(session_from(now + 1_000_000_000), invalid);
        assert_eq!(
            valid("demo\r\nX-Auth-User: root", "agent", now, now + 60),
            invalid
        );
        assert_eq!(valid("demo\n", "agent", now, now + 60), invalid);
        assert_eq!(valid("demo", "agent\r\nX-Evil: 1", now, now + 60), invalid);
        assert_eq!(valid("demo", "agent\u{7f}", now, now + 60), invalid);
    }

    /// The claims of bob's xuc token, as xuc vouches for them, of session `sid`.
    fn vouched(sid: &str) -> Claims {
        Claims {
            sub: "bob".into(),
            profile: "agent".into(),
            method: Method::Xuc,
            exp: unix_now() + 600,
            auth_time: unix_now(),
            sid: sid.into(),
        }
    }

    /// A vouched token is kept as long as its issuer's word is fresh, and not at all when that
    /// word is already spent.
    #[test]
    fn a_vouched_token_is_kept_while_fresh() {
        let s = service(3600);
        let fresh = "xuc-token-fresh";
        let kept = s
            .vouch(fresh, vouched("xuc:1"), Duration::from_secs(30))
            .unwrap();
        assert!(
            Arc::ptr_eq(&kept, &s.validate(fresh).unwrap()),
            "a cache hit"
        );
        let spent = "xuc-token-spent";
        assert_eq!(
            s.vouch(spent, vouched("xuc:2"), Duration::ZERO)
                .unwrap()
                .sub,
            Box::from("bob")
        );
        assert_eq!(s.validate(spent), Err(TokenError::Invalid), "not kept");
    }

    /// A cached token's claims and Arc's two counts fit the allocator's 96-byte class: a field
    /// more would take the next one (112 bytes) for each of the 100,000 tokens of a full cache.
    #[test]
    fn cached_claims_fit_96_bytes() {
        assert!(std::mem::size_of::<Claims>() + 16 <= 96);
    }

    /// A cache key holds no text of the token, and opaque tokens of another issuer that share
    /// a long prefix are each kept under a key of their own.
    #[test]
    fn cache_keys() {
        let s = service(3600);
        let token = s
            .issue("alice", "agent", Method::Password, None)
            .unwrap()
            .token;
        let head: [u8; 16] = *signature(&token).as_bytes().first_chunk().unwrap();
        assert_ne!(s.cache_key(&token), u128::from_le_bytes(head));
        assert_ne!(
            s.cache_key(&token),
            service(3600).cache_key(&token),
            "a secret per service"
        );
        let opaque = [
            "opaque-token-of-the-site-s-xuc-1",
            "opaque-token-of-the-site-s-xuc-2",
        ];
        let kept: Vec<_> = opaque
            .iter()
            .map(|t| {
                s.vouch(t, vouched("xuc:1"), Duration::from_secs(30))
                    .unwrap()
            })
            .collect();
        for (token, kept) in opaque.iter().zip(&kept) {
            assert!(
                Arc::ptr_eq(kept, &s.validate(token).unwrap()),
                "{token}: a hit"
            );
        }
    }
}
