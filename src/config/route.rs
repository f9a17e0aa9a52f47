//! `[[route]]`: a path prefix, its upstream, and who may open it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use serde::Deserialize;

use super::duration;
use crate::path::normalise_path;

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
    /// Answer browsers of the `[cors]` origins (preflight, `Access-Control-*`).
    pub cors: bool,
}

/// The set of credentials that open a route; empty means public.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accept {
    pub shared: bool,
    pub uc: bool,
}

impl Accept {
    /// No credential needed: `accept = []`.
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

/// `[[route]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
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
    #[serde(default)]
    cors: bool,
}

fn default_route_timeout() -> Duration {
    Duration::from_secs(30)
}

impl RawRoute {
    /// Checks the route; `tokens`, `cors`: whether UC tokens and `[cors]` are configured. The
    /// error names the key.
    pub(super) fn validate(
        self,
        tokens: bool,
        cors: bool,
    ) -> Result<RouteConfig, (&'static str, String)> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                "name",
                "must be non-empty ASCII letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if !self.prefix.starts_with('/') {
            return Err(("prefix", "must start with '/'".into()));
        }
        let normalised = normalise_path(&self.prefix).map_err(|e| ("prefix", e.to_string()))?;
        if normalised != self.prefix {
            return Err((
                "prefix",
                format!("must be a normalised path (did you mean {normalised:?}?)"),
            ));
        }
        let mut prefix = normalised.into_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let upstream = UpstreamUrl::parse(&self.upstream).map_err(|e| ("upstream", e))?;
        let mut accept = Accept::default();
        for kind in self.accept {
            match kind {
                CredentialKind::Shared => accept.shared = true,
                CredentialKind::Uc => accept.uc = true,
            }
        }
        if accept.is_public() && self.upstream_auth == UpstreamAuth::Shared {
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
        if !self.profiles.is_empty() && !accept.uc {
            return Err((
                "profiles",
                "restricts UC tokens, but the route does not accept \"uc\"".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be more than zero".into()));
        }
        if self.cors && !cors {
            return Err((
                "cors",
                "needs a [cors] section naming the allowed origins".into(),
            ));
        }
        Ok(RouteConfig {
            name: self.name.into(),
            prefix,
            upstream,
            accept,
            upstream_auth: self.upstream_auth,
            timeout: self.timeout,
            websocket: self.websocket,
            profiles: self.profiles,
            cors: self.cors,
        })
    }
}
