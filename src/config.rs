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

use crate::routes::normalise_path;

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
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// Tokio worker threads; 0 = one per core.
    pub workers: usize,
    #[serde(deserialize_with = "duration")]
    pub request_header_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Keep and extend client-sent `X-Forwarded-*` headers. Only safe behind a trusted proxy;
    /// by default ucgate faces clients directly and overwrites them.
    pub trust_forwarded_headers: bool,
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            workers: 0,
            request_header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            trust_forwarded_headers: false,
            log_format: LogFormat::Text,
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
        let scheme = uri.scheme().cloned().ok_or("must start with http://")?;
        if scheme != Scheme::HTTP {
            return Err(format!(
                "scheme {scheme} is not supported, use http:// (the upstream runs beside ucgate)"
            ));
        }
        let authority = uri.authority().cloned().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not contain credentials".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("must not have a path or query: ucgate forwards the request path as is".into());
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
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
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
}

fn default_route_timeout() -> Duration {
    Duration::from_secs(30)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
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
        let mut config = Config {
            file: file.to_owned(),
            server: raw.server,
            shared_token: raw.shared_token,
            routes: Vec::with_capacity(raw.routes.len()),
        };
        config.validate_server().map_err(err)?;
        config.shared_token.env_files = config
            .shared_token
            .env_files
            .iter()
            .map(|p| base.join(p))
            .collect();
        if config.shared_token.env.is_empty() {
            return Err(err("shared_token.env: must name an environment variable".into()));
        }
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        for (i, raw) in raw.routes.into_iter().enumerate() {
            let route = validate_route(raw)
                .map_err(|(key, reason)| err(format!("route[{i}].{key}: {reason}")))?;
            if !names.insert(route.name.clone()) {
                return Err(err(format!("route[{i}].name: duplicate route name {:?}", route.name)));
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

    fn validate_server(&self) -> Result<(), String> {
        if self.server.listen.is_empty() {
            return Err("server.listen: needs at least one address".into());
        }
        if self.server.request_header_timeout.is_zero() {
            return Err("server.request_header_timeout: must be more than zero".into());
        }
        Ok(())
    }
}

fn validate_route(raw: RawRoute) -> Result<RouteConfig, (&'static str, String)> {
    if raw.name.is_empty() || !raw.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(("name", "must be non-empty ASCII letters, digits, '-', '_' or '.'".into()));
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ucgate/ucgate.toml"), text)
    }

    const ROUTE: &str = r#"
[[route]]
name = "configmgt"
prefix = "/configmgt"
upstream = "http://127.0.0.1:9100"
accept = ["shared", "uc"]
upstream_auth = "shared"
"#;

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
            vec![PathBuf::from("/etc/ucgate/custom.env"), PathBuf::from("/abs.env")]
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
        assert!(error(&format!("{ROUTE}{ROUTE}")).contains("route[1].name: duplicate"));
        let bad_kind = ROUTE.replace("\"uc\"]", "\"kerberos\"]");
        assert!(error(&bad_kind).contains("kerberos"));
        let no_auth = ROUTE.replace("upstream_auth = \"shared\"", "");
        assert!(error(&no_auth).contains("upstream_auth"));
    }
}
