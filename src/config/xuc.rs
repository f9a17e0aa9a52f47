//! `[xuc]`: the site's running xuc, whose UC tokens ucgate accepts after checking them there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{duration, within};

const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reuse of a positive answer: a logout at xuc must be honoured in reasonable time.
const MAX_CHECK_CACHE: Duration = Duration::from_secs(3600);
const MAX_NEGATIVE_CACHE: Duration = Duration::from_secs(600);

/// The validated `[xuc]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XucConfig {
    /// `http(s)://host:port` of the xuc, without a path; its check endpoint is
    /// `<url>/xuc/api/2.0/auth/check`.
    pub url: Url,
    /// A positive answer is reused this long (never past the token's own expiry): a logout at
    /// xuc is honoured within it.
    pub check_cache: Duration,
    /// A refused token is refused from memory this long.
    pub negative_cache: Duration,
    /// Each check at xuc, connection included.
    pub timeout: Duration,
    pub profiles_from: ProfilesFrom,
    /// PEM file of the CA(s) that sign an https xuc's certificate; when set, only these.
    pub ca_bundle: Option<PathBuf>,
}

/// Where the profile of an xuc token's login comes from, for routes with `profiles`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfilesFrom {
    /// ucgate's directory (`[users]`: the file, or XiVO's database): a login unknown there, or
    /// not allowed (CTI login disabled, no profile), has no profile.
    #[default]
    Directory,
    /// The `profile` field of the check answer, when the xuc gives one (xuc itself does not;
    /// a ucgate standing in for it does).
    Check,
}

/// `[xuc]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXuc {
    url: String,
    #[serde(default = "default_check_cache", deserialize_with = "duration")]
    check_cache: Duration,
    #[serde(default = "default_negative_cache", deserialize_with = "duration")]
    negative_cache: Duration,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default)]
    profiles_from: ProfilesFrom,
    #[serde(default)]
    ca_bundle: Option<PathBuf>,
}

fn default_check_cache() -> Duration {
    Duration::from_secs(30)
}

fn default_negative_cache() -> Duration {
    Duration::from_secs(5)
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl RawXuc {
    /// Checks values and resolves `ca_bundle` against the config file's folder. Errors start
    /// with the key within the section (`url: ...`).
    pub(super) fn validate(self, base: &Path) -> Result<XucConfig, String> {
        let url = xuc_url(&self.url).map_err(|e| format!("url: {e}"))?;
        within("check_cache", self.check_cache, false, MAX_CHECK_CACHE)?;
        within(
            "negative_cache",
            self.negative_cache,
            true,
            MAX_NEGATIVE_CACHE,
        )?;
        within("timeout", self.timeout, false, MAX_TIMEOUT)?;
        Ok(XucConfig {
            url,
            check_cache: self.check_cache,
            negative_cache: self.negative_cache,
            timeout: self.timeout,
            profiles_from: self.profiles_from,
            ca_bundle: self.ca_bundle.map(|ca| base.join(ca)),
        })
    }
}

/// `http(s)://host:port`, nothing more: the check path is xuc's, and a token must go to this
/// origin only. Plain http is allowed anywhere: xuc listens on plain http (8090) on most sites.
fn xuc_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: must be an http or https URL"));
    }
    if url.host_str().is_none() {
        return Err(format!("{text:?}: must name a host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?}: must be http(s)://host:port, without a path, query or fragment"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?}: must have no credentials"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> Result<XucConfig, String> {
        let raw: RawXuc = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        raw.validate(Path::new("/etc/ucgate"))
    }

    #[test]
    fn defaults_and_validation() {
        let c = config("url = \"http://xivo-cc.example.com:8090\"").unwrap();
        assert_eq!(c.url.as_str(), "http://xivo-cc.example.com:8090/");
        assert_eq!(c.check_cache, Duration::from_secs(30));
        assert_eq!(c.negative_cache, Duration::from_secs(5));
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.profiles_from, ProfilesFrom::Directory);
        assert_eq!(c.ca_bundle, None);
        let c = config(
            "url = \"https://xuc.example.com/\"\nprofiles_from = \"check\"\nca_bundle = \"ca.pem\"\nnegative_cache = \"0s\"",
        )
        .unwrap();
        assert_eq!(c.profiles_from, ProfilesFrom::Check);
        assert_eq!(c.ca_bundle, Some(PathBuf::from("/etc/ucgate/ca.pem")));
        assert_eq!(c.negative_cache, Duration::ZERO);

        for (text, needle) in [
            ("url = \"http://x:8090/xuc\"", "url: "),
            ("url = \"http://x:8090?a=b\"", "url: "),
            ("url = \"http://u:p@x:8090\"", "credentials"),
            ("url = \"ftp://x\"", "http or https"),
            ("url = \"x:8090\"", "url: "),
            (
                "url = \"http://x\"\ncheck_cache = \"0s\"",
                "check_cache: must be more than 0",
            ),
            ("url = \"http://x\"\ncheck_cache = \"2h\"", "check_cache: "),
            (
                "url = \"http://x\"\nnegative_cache = \"1h\"",
                "negative_cache: ",
            ),
            ("url = \"http://x\"\ntimeout = \"0s\"", "timeout: "),
            (
                "url = \"http://x\"\nprofiles_from = \"ldap\"",
                "unknown variant",
            ),
            ("url = \"http://x\"\nttl = \"1s\"", "unknown field"),
        ] {
            let e = config(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
