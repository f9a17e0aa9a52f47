//! The TOML configuration: the raw serde model (strict: unknown keys are errors) and the
//! validated [`Config`] the rest of ucgate works with.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use serde::{Deserialize, Deserializer};

use crate::auth::cas::CasConfig;
use crate::auth::kerberos::KerberosConfig;
use crate::auth::oidc::OidcConfig;
use crate::routes::normalise_path;
use crate::tls::TlsFiles;

/// A configuration that could not be loaded. Its `Display` names the file, the key and the reason.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A loaded and validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: ServerConfig,
    pub shared_token: SharedTokenConfig,
    /// UC tokens; absent = only the shared token opens routes.
    pub tokens: Option<TokensConfig>,
    /// The user directory; present whenever `tokens` is.
    pub users: Option<UsersConfig>,
    pub login: LoginConfig,
    pub kerberos: Option<KerberosConfig>,
    pub cas: Option<CasConfig>,
    pub oidc: Option<OidcConfig>,
    pub routes: Vec<RouteConfig>,
}

/// Far beyond any file-descriptor limit; keeps the count of connection slots a `u32`.
const MAX_CONNECTIONS: usize = 1_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// Tokio worker threads; 0 = one per core.
    pub workers: usize,
    /// A request head (and a TLS handshake) must arrive in this time: 408 and close otherwise.
    #[serde(deserialize_with = "duration")]
    pub request_header_timeout: Duration,
    /// A keep-alive connection with no request under way is closed after this time.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A client uploading a body may go silent this long between two pieces of it: 408 after.
    #[serde(deserialize_with = "duration")]
    pub request_body_timeout: Duration,
    /// A write to a client may stay pending this long (a client that stopped reading its
    /// response); the connection is closed after.
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Keep and extend client-sent `X-Forwarded-*` headers. Only safe behind a trusted proxy;
    /// by default ucgate faces clients directly and overwrites them.
    pub trust_forwarded_headers: bool,
    pub log_format: LogFormat,
    /// Serve HTTPS (h2 and HTTP/1.1 by ALPN) with these PEM files; reloaded with the config.
    pub tls: Option<TlsFiles>,
    /// CA bundle (PEM) for `https://` upstreams; absent = the system's roots.
    pub upstream_ca: Option<PathBuf>,
    /// Largest request head (request line and headers), bytes: 431 above. At least 8192.
    pub max_header_bytes: usize,
    /// Most request headers: 431 above.
    pub max_headers: usize,
    /// Longest request target, bytes: 414 above.
    pub max_uri_length: usize,
    /// Open client connections at most; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// Concurrent h2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Requests (h2 streams included) one connection may carry; then it is closed gracefully and
    /// the client opens another.
    pub max_requests_per_connection: u32,
    /// How often watched files are checked for changes; "0s" turns watching off (SIGHUP still works).
    #[serde(deserialize_with = "duration")]
    pub watch_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            workers: 0,
            request_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            trust_forwarded_headers: false,
            log_format: LogFormat::Text,
            tls: None,
            upstream_ca: None,
            watch_interval: Duration::from_secs(2),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            max_connections: 10_000,
            max_concurrent_streams: 256,
            max_requests_per_connection: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedTokenConfig {
    pub env: String,
    pub env_files: Vec<PathBuf>,
    pub previous_env: Option<String>,
}

impl Default for SharedTokenConfig {
    fn default() -> Self {
        Self {
            env: "PLAY_AUTH_TOKEN".into(),
            env_files: Vec::new(),
            previous_env: None,
        }
    }
}

/// How UC tokens are signed and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAlgorithm {
    /// A secret shared by every instance, read from an environment variable.
    Hs256 { signing_key_env: String },
    /// Key pairs from PEM files, so that other components can verify with the public key alone.
    EdDsa {
        private_key: PathBuf,
        public_key: PathBuf,
    },
    Rs256 {
        private_key: PathBuf,
        public_key: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub algorithm: TokenAlgorithm,
    pub issuer: String,
    pub ttl: Duration,
    pub leeway: Duration,
    pub cache_capacity: u64,
}

impl TokensConfig {
    pub fn algorithm_name(&self) -> &'static str {
        match self.algorithm {
            TokenAlgorithm::Hs256 { .. } => "HS256",
            TokenAlgorithm::EdDsa { .. } => "EdDSA",
            TokenAlgorithm::Rs256 { .. } => "RS256",
        }
    }
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            algorithm: TokenAlgorithm::Hs256 {
                signing_key_env: "UCGATE_SIGNING_KEY".into(),
            },
            issuer: "ucgate".into(),
            ttl: Duration::from_secs(8 * 3600),
            leeway: Duration::from_secs(5),
            cache_capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    pub file: PathBuf,
}

/// Brute-force protection of the exchange endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Failures allowed per login and per client address within `window`.
    pub max_failures: u32,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    #[serde(deserialize_with = "duration")]
    pub lockout: Duration,
    /// Logins and addresses tracked at most: memory stays bounded under a flood.
    pub max_tracked: u64,
    /// Largest accepted login request body, in bytes.
    pub max_body: usize,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(300),
            lockout: Duration::from_secs(300),
            max_tracked: 100_000,
            max_body: 16 * 1024,
        }
    }
}

/// A kind of credential a route may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    Shared,
    Uc,
}

/// What ucgate sends upstream to authenticate itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamAuth {
    /// `X-Auth-Token: <shared token>`.
    Shared,
    /// Nothing: the upstream does its own authentication or none.
    None,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: Arc<str>,
    /// Normalised, starts and ends with `/`.
    pub prefix: String,
    pub upstream: UpstreamUrl,
    pub accept: Accept,
    pub upstream_auth: UpstreamAuth,
    pub timeout: Duration,
    pub websocket: bool,
    /// UC tokens must carry one of these profiles; empty = any.
    pub profiles: Vec<String>,
}

/// The set of credentials that open a route; empty means public.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accept {
    pub shared: bool,
    pub uc: bool,
}

impl Accept {
    pub fn is_public(&self) -> bool {
        !self.shared && !self.uc
    }
}

impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.shared, self.uc) {
            (false, false) => f.write_str("public"),
            (true, false) => f.write_str("shared"),
            (false, true) => f.write_str("uc"),
            (true, true) => f.write_str("shared,uc"),
        }
    }
}

/// An upstream origin: scheme and authority, no path, query or credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl UpstreamUrl {
    fn parse(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("not a URL ({e})"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or("must start with http:// or https://")?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!(
                "scheme {scheme} is not supported, use http:// or https://"
            ));
        }
        let authority = uri.authority().cloned().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not contain credentials".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(
                "must not have a path or query: ucgate forwards the request path as is".into(),
            );
        }
        Ok(Self { scheme, authority })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    shared_token: SharedTokenConfig,
    #[serde(default)]
    tokens: Option<RawTokens>,
    #[serde(default)]
    users: Option<UsersConfig>,
    #[serde(default)]
    login: LoginConfig,
    #[serde(default)]
    kerberos: Option<KerberosConfig>,
    #[serde(default)]
    cas: Option<CasConfig>,
    #[serde(default)]
    oidc: Option<OidcConfig>,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    #[serde(default = "default_algorithm")]
    algorithm: String,
    signing_key_env: Option<String>,
    private_key: Option<PathBuf>,
    public_key: Option<PathBuf>,
    issuer: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    leeway: Option<Duration>,
    cache_capacity: Option<u64>,
}

fn default_algorithm() -> String {
    "HS256".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    prefix: String,
    upstream: String,
    accept: Vec<CredentialKind>,
    upstream_auth: UpstreamAuth,
    #[serde(default = "default_route_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default)]
    websocket: bool,
    #[serde(default)]
    profiles: Vec<String>,
}

fn default_route_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A humantime duration ("30s", "8h"), for every duration key of the configuration.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(file, &text)
    }

    /// Parses `text` as if read from `file` (relative paths resolve against its folder).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let tokens = raw
            .tokens
            .map(|t| validate_tokens(t, base))
            .transpose()
            .map_err(err)?;
        let users = raw.users.map(|u| UsersConfig {
            file: base.join(u.file),
        });
        if tokens.is_some() && users.is_none() {
            return Err(err(
                "users: a [users] directory is needed to issue UC tokens".into(),
            ));
        }
        validate_login(&raw.login).map_err(err)?;
        let (mut kerberos, mut cas, mut oidc) = (raw.kerberos, raw.cas, raw.oidc);
        let exchanges = [
            ("kerberos", kerberos.as_mut().map(|c| c.validate(base))),
            ("cas", cas.as_mut().map(|c| c.validate(base))),
            ("oidc", oidc.as_mut().map(|c| c.validate(base))),
        ];
        for (section, outcome) in exchanges {
            match outcome {
                Some(Err(reason)) => return Err(err(format!("{section}.{reason}"))),
                Some(Ok(())) if tokens.is_none() => {
                    return Err(err(format!(
                        "{section}: needs a [tokens] section to issue UC tokens"
                    )));
                }
                _ => {}
            }
        }
        let mut config = Config {
            file: file.to_owned(),
            server: raw.server,
            shared_token: raw.shared_token,
            tokens,
            users,
            login: raw.login,
            kerberos,
            cas,
            oidc,
            routes: Vec::with_capacity(raw.routes.len()),
        };
        config.validate_server().map_err(err)?;
        if let Some(tls) = &mut config.server.tls {
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
        }
        config.server.upstream_ca = config.server.upstream_ca.as_ref().map(|p| base.join(p));
        config.shared_token.env_files = config
            .shared_token
            .env_files
            .iter()
            .map(|p| base.join(p))
            .collect();
        if config.shared_token.env.is_empty() {
            return Err(err(
                "shared_token.env: must name an environment variable".into()
            ));
        }
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        for (i, raw) in raw.routes.into_iter().enumerate() {
            let route = validate_route(raw, config.tokens.is_some())
                .map_err(|(key, reason)| err(format!("route[{i}].{key}: {reason}")))?;
            if !names.insert(route.name.clone()) {
                return Err(err(format!(
                    "route[{i}].name: duplicate route name {:?}",
                    route.name
                )));
            }
            if !prefixes.insert(route.prefix.clone()) {
                return Err(err(format!(
                    "route[{i}].prefix: prefix {:?} is already used by another route",
                    route.prefix
                )));
            }
            config.routes.push(route);
        }
        Ok(config)
    }

    /// The files whose change triggers a reload: this file, the users file, the env files, the
    /// TLS files.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.file.clone()];
        files.extend(self.users.as_ref().map(|u| u.file.clone()));
        files.extend(self.shared_token.env_files.iter().cloned());
        files.extend(self.oidc.as_ref().and_then(|o| o.ca_bundle.clone()));
        files.extend(self.cas.as_ref().and_then(|c| c.ca_bundle.clone()));
        files.extend(self.kerberos.as_ref().map(|k| k.keytab.clone()));
        if let Some(tls) = &self.server.tls {
            files.extend([tls.cert.clone(), tls.key.clone()]);
        }
        files.extend(self.server.upstream_ca.iter().cloned());
        files
    }

    fn validate_server(&self) -> Result<(), String> {
        if self.server.listen.is_empty() {
            return Err("server.listen: needs at least one address".into());
        }
        let s = &self.server;
        if s.max_header_bytes < 8192 {
            return Err(
                "server.max_header_bytes: must be at least 8192 (hyper's minimum buffer)".into(),
            );
        }
        if s.max_headers == 0
            || s.max_uri_length == 0
            || s.max_connections == 0
            || s.max_concurrent_streams == 0
            || s.max_requests_per_connection == 0
        {
            return Err(
                "server.max_headers, max_uri_length, max_connections, max_concurrent_streams, max_requests_per_connection: must be more than zero".into(),
            );
        }
        if s.max_connections > MAX_CONNECTIONS {
            return Err(format!("server.max_connections: at most {MAX_CONNECTIONS}"));
        }
        let timeouts = [
            ("request_header_timeout", s.request_header_timeout),
            ("request_body_timeout", s.request_body_timeout),
            ("idle_timeout", s.idle_timeout),
            ("send_timeout", s.send_timeout),
        ];
        if let Some((key, _)) = timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(format!("server.{key}: must be more than zero"));
        }
        Ok(())
    }
}

fn validate_tokens(raw: RawTokens, base: &Path) -> Result<TokensConfig, String> {
    let defaults = TokensConfig::default();
    let pair = |alg: &str| -> Result<(PathBuf, PathBuf), String> {
        match (&raw.private_key, &raw.public_key) {
            (Some(private), Some(public)) => Ok((base.join(private), base.join(public))),
            _ => Err(format!(
                "tokens: algorithm {alg} needs private_key and public_key (PEM files)"
            )),
        }
    };
    let algorithm = match raw.algorithm.as_str() {
        "HS256" => {
            if raw.private_key.is_some() || raw.public_key.is_some() {
                return Err("tokens: private_key and public_key are for EdDSA and RS256; HS256 uses signing_key_env".into());
            }
            TokenAlgorithm::Hs256 {
                signing_key_env: raw
                    .signing_key_env
                    .clone()
                    .unwrap_or_else(|| "UCGATE_SIGNING_KEY".into()),
            }
        }
        "EdDSA" => {
            let (private_key, public_key) = pair("EdDSA")?;
            TokenAlgorithm::EdDsa {
                private_key,
                public_key,
            }
        }
        "RS256" => {
            let (private_key, public_key) = pair("RS256")?;
            TokenAlgorithm::Rs256 {
                private_key,
                public_key,
            }
        }
        other => {
            return Err(format!(
                "tokens.algorithm: {other:?} is not one of \"HS256\", \"EdDSA\", \"RS256\""
            ));
        }
    };
    if !matches!(algorithm, TokenAlgorithm::Hs256 { .. }) && raw.signing_key_env.is_some() {
        return Err("tokens.signing_key_env: only for HS256".into());
    }
    let config = TokensConfig {
        algorithm,
        issuer: raw.issuer.unwrap_or(defaults.issuer),
        ttl: raw.ttl.unwrap_or(defaults.ttl),
        leeway: raw.leeway.unwrap_or(defaults.leeway),
        cache_capacity: raw.cache_capacity.unwrap_or(defaults.cache_capacity),
    };
    if config.ttl < Duration::from_secs(1) {
        return Err("tokens.ttl: must be at least one second".into());
    }
    if config.leeway > Duration::from_secs(300) {
        return Err("tokens.leeway: more than 5 minutes would keep expired tokens alive".into());
    }
    if config.issuer.is_empty() {
        return Err("tokens.issuer: must not be empty".into());
    }
    Ok(config)
}

fn validate_login(login: &LoginConfig) -> Result<(), String> {
    if login.max_failures == 0 {
        return Err("login.max_failures: must be at least 1".into());
    }
    if login.window.is_zero() || login.lockout.is_zero() {
        return Err("login.window, login.lockout: must be more than zero".into());
    }
    if login.max_tracked == 0 || login.max_body == 0 {
        return Err("login.max_tracked, login.max_body: must be more than zero".into());
    }
    Ok(())
}

fn validate_route(raw: RawRoute, tokens: bool) -> Result<RouteConfig, (&'static str, String)> {
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err((
            "name",
            "must be non-empty ASCII letters, digits, '-', '_' or '.'".into(),
        ));
    }
    if !raw.prefix.starts_with('/') {
        return Err(("prefix", "must start with '/'".into()));
    }
    let normalised = normalise_path(&raw.prefix).map_err(|e| ("prefix", e.to_string()))?;
    if normalised != raw.prefix {
        return Err((
            "prefix",
            format!("must be a normalised path (did you mean {normalised:?}?)"),
        ));
    }
    let mut prefix = normalised.into_owned();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let upstream = UpstreamUrl::parse(&raw.upstream).map_err(|e| ("upstream", e))?;
    let mut accept = Accept::default();
    for kind in raw.accept {
        match kind {
            CredentialKind::Shared => accept.shared = true,
            CredentialKind::Uc => accept.uc = true,
        }
    }
    if accept.is_public() && raw.upstream_auth == UpstreamAuth::Shared {
        return Err((
            "upstream_auth",
            "a public route (accept = []) must not send the shared token upstream: \
             it would give anyone unrestricted access"
                .into(),
        ));
    }
    if accept.uc && !tokens {
        return Err(("accept", "\"uc\" needs a [tokens] section".into()));
    }
    if !raw.profiles.is_empty() && !accept.uc {
        return Err((
            "profiles",
            "restricts UC tokens, but the route does not accept \"uc\"".into(),
        ));
    }
    if raw.timeout.is_zero() {
        return Err(("timeout", "must be more than zero".into()));
    }
    Ok(RouteConfig {
        name: raw.name.into(),
        prefix,
        upstream,
        accept,
        upstream_auth: raw.upstream_auth,
        timeout: raw.timeout,
        websocket: raw.websocket,
        profiles: raw.profiles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ucgate/ucgate.toml"), text)
    }

    const ROUTE: &str = r#"
[tokens]
[users]
file = "users.toml"
[[route]]
name = "configmgt"
prefix = "/configmgt"
upstream = "http://127.0.0.1:9100"
accept = ["shared", "uc"]
upstream_auth = "shared"
"#;

    #[test]
    fn client_timeouts_have_defaults_and_must_not_be_zero() {
        let c = parse(ROUTE).unwrap();
        assert_eq!(c.server.request_header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.request_body_timeout, Duration::from_secs(60));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.send_timeout, Duration::from_secs(60));
        for key in [
            "request_header_timeout",
            "request_body_timeout",
            "idle_timeout",
            "send_timeout",
        ] {
            let err = parse(&format!("[server]\n{key} = \"0s\"\n{ROUTE}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("server.{key}: must be more than zero")),
                "{err}"
            );
        }
    }

    #[test]
    fn defaults_and_route() {
        let c = parse(ROUTE).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.shared_token.env, "PLAY_AUTH_TOKEN");
        let r = &c.routes[0];
        assert_eq!(r.prefix, "/configmgt/");
        assert_eq!(r.upstream.to_string(), "http://127.0.0.1:9100");
        assert_eq!(r.timeout, Duration::from_secs(30));
        assert!(r.accept.shared && r.accept.uc);
    }

    #[test]
    fn env_files_resolve_against_config_folder() {
        let c = parse("[shared_token]\nenv_files = [\"custom.env\", \"/abs.env\"]").unwrap();
        assert_eq!(
            c.shared_token.env_files,
            vec![
                PathBuf::from("/etc/ucgate/custom.env"),
                PathBuf::from("/abs.env")
            ]
        );
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = error("[server]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n");
        assert!(e.starts_with("/etc/ucgate/ucgate.toml: "), "{e}");
        assert!(e.contains("line 3") && e.contains("lisen"), "{e}");
    }

    #[test]
    fn invalid_values_are_refused_with_a_reason() {
        assert!(error("[server]\nshutdown_grace = \"3 parsecs\"").contains("invalid duration"));
        let bad_upstream = ROUTE.replace("http://127.0.0.1:9100", "ftp://x");
        assert!(error(&bad_upstream).contains("route[0].upstream"));
        let with_path = ROUTE.replace("9100\"", "9100/api\"");
        assert!(error(&with_path).contains("must not have a path"));
        let traversal = ROUTE.replace("\"/configmgt\"", "\"/a/../configmgt\"");
        assert!(error(&traversal).contains("route[0].prefix"));
        let public_shared = ROUTE.replace("[\"shared\", \"uc\"]", "[]");
        assert!(error(&public_shared).contains("route[0].upstream_auth"));
        let second = ROUTE.split_once("[[route]]").unwrap().1;
        assert!(error(&format!("{ROUTE}[[route]]{second}")).contains("route[1].name: duplicate"));
        let bad_kind = ROUTE.replace("\"uc\"]", "\"kerberos\"]");
        assert!(error(&bad_kind).contains("kerberos"));
        let no_auth = ROUTE.replace("upstream_auth = \"shared\"", "");
        assert!(error(&no_auth).contains("upstream_auth"));
        let no_tokens = ROUTE.replace("[tokens]\n", "");
        assert!(error(&no_tokens).contains("route[0].accept: \"uc\" needs a [tokens] section"));
        let no_users = ROUTE.replace("[users]\nfile = \"users.toml\"\n", "");
        assert!(error(&no_users).contains("users:"));
        let foreign_profiles = ROUTE.replace(
            "[\"shared\", \"uc\"]",
            "[\"shared\"]\nprofiles = [\"admin\"]",
        );
        assert!(error(&foreign_profiles).contains("route[0].profiles"));
        assert!(
            error("[tokens]\nalgorithm = \"none\"\n[users]\nfile = \"u\"")
                .contains("tokens.algorithm")
        );
        assert!(
            error("[tokens]\nalgorithm = \"EdDSA\"\n[users]\nfile = \"u\"").contains("private_key")
        );
        assert!(error("[login]\nmax_failures = 0").contains("login.max_failures"));
    }
}
