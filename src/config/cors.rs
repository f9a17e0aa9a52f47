//! `[cors]`: the web origins whose pages may call the exchange endpoints (and routes with
//! `cors = true`) from the browser, credentials included.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::optional_duration;

/// The validated `[cors]` section.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// Exact origins (RFC 6454 §6.2 serialisation: `https://host[:port]`, lower case, no path).
    pub allowed_origins: Vec<String>,
    /// How long a browser may keep a preflight's answer.
    pub max_age: Duration,
}

/// `[cors]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    allowed_origins: Vec<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    max_age: Option<Duration>,
}

impl RawCors {
    /// Errors start with the key within the section (`allowed_origins: ...`).
    pub(super) fn validate(self) -> Result<CorsConfig, String> {
        if self.allowed_origins.is_empty() {
            return Err("allowed_origins: at least one origin (or no [cors] section)".into());
        }
        let mut origins = Vec::with_capacity(self.allowed_origins.len());
        for origin in &self.allowed_origins {
            // Credentials are allowed: a wildcard would hand every site the user's session.
            if origin.contains('*') || origin == "null" {
                return Err(format!(
                    "allowed_origins: {origin:?}: exact origins only (no wildcard, no null)"
                ));
            }
            let url =
                Url::parse(origin).map_err(|e| format!("allowed_origins: {origin:?}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || !url.username().is_empty()
                || url.password().is_some()
                || !matches!(url.path(), "" | "/")
                || origin.ends_with('/')
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(format!(
                    "allowed_origins: {origin:?}: an origin is scheme://host[:port], nothing more"
                ));
            }
            // As browsers serialise it: lower case, the default port left out.
            origins.push(url.origin().ascii_serialization());
        }
        let max_age = self.max_age.unwrap_or(Duration::from_secs(600));
        if max_age > Duration::from_secs(86_400) {
            return Err("max_age: at most 1 day".into());
        }
        Ok(CorsConfig {
            allowed_origins: origins,
            max_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(text: &str) -> Result<CorsConfig, String> {
        let raw: RawCors = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate()
    }

    #[test]
    fn exact_origins_only() {
        let c =
            cors("allowed_origins = [\"HTTPS://Xivo.Example.com:443\", \"http://127.0.0.1:8080\"]")
                .unwrap();
        assert_eq!(
            c.allowed_origins,
            ["https://xivo.example.com", "http://127.0.0.1:8080"]
        );
        assert_eq!(c.max_age, Duration::from_secs(600));
        for bad in [
            "[]",
            "[\"*\"]",
            "[\"https://*.example.com\"]",
            "[\"null\"]",
            "[\"https://xivo.example.com/\"]",
            "[\"https://xivo.example.com/app\"]",
            "[\"ftp://xivo.example.com\"]",
            "[\"xivo.example.com\"]",
        ] {
            assert!(cors(&format!("allowed_origins = {bad}")).is_err(), "{bad}");
        }
    }
}
