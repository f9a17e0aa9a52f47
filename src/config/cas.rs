//! `[cas]`: the CAS server that validates service tickets, and the services allowed to use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{duration, within};

const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The validated `[cas]` section.
#[derive(Debug, Clone)]
pub struct CasConfig {
    /// Base URL of the CAS server, e.g. `https://cas.example.com/cas`: https, or http on
    /// loopback only, since whoever can change its answers chooses who logs in.
    pub server: Url,
    /// Service URL prefixes: scheme, host and port must be equal, the path a prefix.
    pub allowed_services: Vec<ServicePattern>,
    pub protocol: CasProtocol,
    /// The attribute released under `cas:attributes` to use as the login; `None`: `cas:user`.
    pub login_attribute: Option<String>,
    /// For each validation request.
    pub timeout: Duration,
    /// PEM file of the CA(s) that sign the CAS server's certificate; when set, only these are
    /// trusted for it.
    pub ca_bundle: Option<PathBuf>,
}

/// Which validation endpoint the CAS server is asked at (CAS protocol specification §2.5, §2.6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CasProtocol {
    /// CAS 3.0: `/p3/serviceValidate`, which releases attributes.
    #[default]
    P3,
    /// CAS 2.0: `/serviceValidate`.
    Cas2,
}

impl CasProtocol {
    /// The validation endpoint's path under the server URL.
    pub fn validate_path(self) -> &'static str {
        match self {
            CasProtocol::P3 => "p3/serviceValidate",
            CasProtocol::Cas2 => "serviceValidate",
        }
    }
}

/// `[cas]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCas {
    server: String,
    allowed_services: Vec<String>,
    #[serde(default)]
    protocol: CasProtocol,
    #[serde(default)]
    login_attribute: Option<String>,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default)]
    ca_bundle: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl RawCas {
    /// Checks values and resolves relative paths against the config file's folder. Errors start
    /// with the key within the section (`server: ...`).
    pub(super) fn validate(self, base: &Path) -> Result<CasConfig, String> {
        let server = server_url(&self.server).map_err(|e| format!("server: {e}"))?;
        if self.allowed_services.is_empty() {
            return Err("allowed_services: at least one service URL is needed".into());
        }
        let allowed_services = self
            .allowed_services
            .iter()
            .map(|p| ServicePattern::parse(p).map_err(|e| format!("allowed_services: {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let login_attribute = match &self.login_attribute {
            Some(name) => login_attribute(name).map_err(|e| format!("login_attribute: {e}"))?,
            None => None,
        };
        within("timeout", self.timeout, false, MAX_TIMEOUT)?;
        Ok(CasConfig {
            server,
            allowed_services,
            protocol: self.protocol,
            login_attribute,
            timeout: self.timeout,
            ca_bundle: self.ca_bundle.map(|ca| base.join(ca)),
        })
    }
}

/// `None` for `cas:user` (the default), else the attribute's local name.
fn login_attribute(name: &str) -> Result<Option<String>, String> {
    let name = name.strip_prefix("cas:").unwrap_or(name);
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    match name {
        "user" => Ok(None),
        _ if !name.is_empty() && name.chars().all(plain) => Ok(Some(name.to_owned())),
        _ => Err(format!("{name:?} is not an XML local name")),
    }
}

/// The CAS server URL: https, or http on loopback only.
fn server_url(server: &str) -> Result<Url, String> {
    let url = Url::parse(server).map_err(|e| format!("{server:?}: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(format!("{server:?}: must be an https URL")),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{server:?}: must have no query, fragment or credentials"
        ));
    }
    Ok(url)
}

/// An allowed service URL prefix, parsed, so that the comparison is on URL parts and not on
/// text: `https://xivo.example.com` must not admit `https://xivo.example.com.evil.org/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePattern {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

impl ServicePattern {
    /// Parses an `allowed_services` entry: an http(s) URL without query, fragment or credentials.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let url = Url::parse(pattern).map_err(|e| e.to_string())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err("must have no query, fragment or credentials".into());
        }
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str().ok_or("must have a host")?.to_owned(),
            port: url.port_or_known_default().ok_or("must have a port")?,
            path: url.path().to_owned(),
        })
    }

    /// Whether `url` is under this prefix: same scheme, host and port, and the path matches
    /// whole segments (`/app` admits `/app` and `/app/x`, not `/application`).
    pub fn matches(&self, url: &Url) -> bool {
        let path = url.path();
        let path_ok = match self.path.ends_with('/') {
            true => path.starts_with(&self.path),
            false => {
                path == self.path
                    || path
                        .strip_prefix(&self.path)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        };
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == Some(self.port)
            && path_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> Result<CasConfig, String> {
        let raw: RawCas = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        raw.validate(Path::new("/etc/ucgate"))
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = config(
            "server = \"https://cas.example.com/cas/\"\nallowed_services = [\"https://xivo.example.com/\"]\nca_bundle = \"ca.pem\"",
        )
        .unwrap();
        assert_eq!(c.protocol, CasProtocol::P3);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.ca_bundle, Some(PathBuf::from("/etc/ucgate/ca.pem")));
        let base = "allowed_services = [\"https://x.example/\"]\n";
        let err = |extra: &str| config(&format!("{base}{extra}")).unwrap_err();
        assert!(err("server = \"http://cas.example.com/cas\"").starts_with("server:"));
        assert!(err("server = \"https://cas.example.com/cas?x=1\"").starts_with("server:"));
        let ok = "server = \"http://127.0.0.1:9/cas\"\n";
        assert!(err(&format!("{ok}timeout = \"0s\"")).starts_with("timeout:"));
        assert!(err(&format!("{ok}timeout = \"2m\"")).starts_with("timeout:"));
        assert!(err(&format!("{ok}protocol = \"cas1\"")).contains("cas1"));
        assert!(err(&format!("{ok}login_attribute = \"a b\"")).starts_with("login_attribute:"));
        assert!(err(&format!("{ok}unknown = 1")).contains("unknown"));
        let no_services = config("server = \"https://c.example/cas\"\nallowed_services = []");
        assert!(no_services.unwrap_err().starts_with("allowed_services:"));
    }

    #[test]
    fn login_attribute_is_a_local_name_and_cas_user_is_the_default() {
        let attribute = |a: &str| {
            config(&format!(
                "server = \"https://cas.example.com/cas/\"\nallowed_services = [\"https://x.example/\"]\nlogin_attribute = \"{a}\""
            ))
            .map(|c| c.login_attribute)
        };
        assert_eq!(attribute("cas:user"), Ok(None));
        assert_eq!(attribute("user"), Ok(None));
        assert_eq!(attribute("username"), Ok(Some("username".into())));
        assert_eq!(attribute("cas:mail"), Ok(Some("mail".into())));
        assert!(attribute("").is_err());
    }

    #[test]
    fn bad_service_patterns_are_refused() {
        for p in [
            "xivo.example.com",
            "/relative",
            "ftp://xivo.example.com/",
            "https://user@xivo.example.com/",
            "https://xivo.example.com/?q",
            "https://xivo.example.com/#f",
        ] {
            assert!(ServicePattern::parse(p).is_err(), "{p}");
        }
    }
}
