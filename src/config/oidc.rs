//! `[oidc]`: the OpenID provider whose ID tokens (and JWT access tokens) are exchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openidconnect::IssuerUrl;
use serde::Deserialize;

use super::duration;

/// The validated `[oidc]` section.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Exactly the `iss` of the tokens; discovery is under it (OpenID Connect Discovery 1.0 §4).
    /// https, or http on loopback only: the keys fetched from it decide who logs in.
    pub issuer: IssuerUrl,
    /// A token is accepted when its `aud` contains one of these.
    pub audience: Vec<String>,
    /// The claim that holds the login.
    pub login_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// At most one JWKS refetch for an unknown `kid` within this interval.
    pub refresh_min_interval: Duration,
    /// For each request to the provider.
    pub timeout: Duration,
    /// PEM certificates trusted for the provider instead of the system's roots (a private CA).
    pub ca_bundle: Option<PathBuf>,
    /// When not empty, the party the token was issued to (`azp`; `client_id` in an access
    /// token) must be one of these.
    pub authorized_party: Vec<String>,
    /// Also accept JWT access tokens (`typ: at+jwt`, RFC 9068), not only ID tokens.
    pub accept_access_tokens: bool,
}

/// `[oidc]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    issuer: String,
    audience: Vec<String>,
    #[serde(default = "default_login_claim")]
    login_claim: String,
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    leeway: Duration,
    #[serde(
        default = "default_refresh_min_interval",
        deserialize_with = "duration"
    )]
    refresh_min_interval: Duration,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default)]
    ca_bundle: Option<PathBuf>,
    #[serde(default)]
    authorized_party: Vec<String>,
    #[serde(default)]
    accept_access_tokens: bool,
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

impl RawOidc {
    /// Checks values and resolves relative paths against the config file's folder. Errors start
    /// with the key within the section (`issuer: ...`).
    pub(super) fn validate(self, base: &Path) -> Result<OidcConfig, String> {
        let issuer = issuer_url(&self.issuer)?;
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
        if self.authorized_party.iter().any(String::is_empty) {
            return Err("authorized_party: each party must be a non-empty client id".into());
        }
        Ok(OidcConfig {
            issuer,
            audience: self.audience,
            login_claim: self.login_claim,
            leeway: self.leeway,
            refresh_min_interval: self.refresh_min_interval,
            timeout: self.timeout,
            ca_bundle: self.ca_bundle.map(|bundle| base.join(bundle)),
            authorized_party: self.authorized_party,
            accept_access_tokens: self.accept_access_tokens,
        })
    }
}

/// The issuer as a URL. Plain http only on loopback.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<OidcConfig, String> {
        let text =
            format!("issuer = \"https://idp.test/realms/x\"\naudience = [\"xivo\"]\n{extra}");
        let raw: RawOidc = toml::from_str(&text).map_err(|e| e.to_string())?;
        raw.validate(Path::new("/etc/ucgate"))
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
        let no_audience: RawOidc =
            toml::from_str("issuer = \"https://idp.test/realms/x\"\naudience = []").unwrap();
        assert!(
            no_audience
                .validate(Path::new("/"))
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
}
