//! `[ldap]`: passwords checked by an LDAP bind (XiVO CC's "auth delegation"), the people still
//! coming from the directory of `[users]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::duration;

/// The validated `[ldap]` section.
#[derive(Debug, Clone)]
pub struct LdapConfig {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: Url,
    /// StartTLS (RFC 4511 §4.14) on an `ldap://` URL.
    pub starttls: bool,
    /// The entry that searches for people.
    pub manager_dn: String,
    /// The environment variable holding the manager's password.
    pub manager_password_env: String,
    /// Where people are searched, the whole subtree.
    pub search_base: String,
    /// The search filter, with `%s` where the (escaped) login goes: `(uid=%s)`; every `%s` is
    /// replaced.
    pub user_search_filter: String,
    /// CA bundle (PEM) trusted for `ldaps://` and StartTLS; absent: the system's roots.
    pub ca: Option<PathBuf>,
    /// Bound of each connection and operation.
    pub timeout: Duration,
}

/// `[ldap]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLdap {
    url: String,
    #[serde(default)]
    starttls: bool,
    manager_dn: String,
    manager_password_env: String,
    search_base: String,
    #[serde(default = "default_filter")]
    user_search_filter: String,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    timeout: Duration,
}

fn default_filter() -> String {
    "(uid=%s)".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl RawLdap {
    /// Errors start with the key within the section (`url: ...`).
    pub(super) fn validate(self, base: &Path) -> Result<LdapConfig, String> {
        let url = Url::parse(&self.url).map_err(|e| format!("url: {:?}: {e}", self.url))?;
        match url.scheme() {
            "ldap" => {}
            "ldaps" if self.starttls => {
                return Err("starttls: only with an ldap:// URL (ldaps:// is TLS already)".into());
            }
            "ldaps" => {}
            other => return Err(format!("url: scheme {other} is not ldap:// or ldaps://")),
        }
        if url.host_str().is_none_or(str::is_empty)
            || !url.username().is_empty()
            || url.password().is_some()
            || !matches!(url.path(), "" | "/")
            || url.query().is_some()
        {
            return Err(
                "url: must be scheme://host[:port], without credentials, DN or query".into(),
            );
        }
        if self.manager_dn.is_empty() {
            return Err("manager_dn: must not be empty".into());
        }
        if self.manager_password_env.is_empty() {
            return Err("manager_password_env: must name an environment variable".into());
        }
        if self.search_base.is_empty() {
            return Err("search_base: must not be empty".into());
        }
        // XiVO writes `uid=%s`; an LDAP filter is parenthesised (RFC 4515 §3).
        let filter = self.user_search_filter.trim();
        let filter = if filter.starts_with('(') {
            filter.to_owned()
        } else {
            format!("({filter})")
        };
        if !filter.contains("%s") {
            return Err("user_search_filter: needs %s where the login goes".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err("timeout: more than 0s and at most 1m".into());
        }
        Ok(LdapConfig {
            url,
            starttls: self.starttls,
            manager_dn: self.manager_dn,
            manager_password_env: self.manager_password_env,
            search_base: self.search_base,
            user_search_filter: filter,
            ca: self.ca.map(|ca| base.join(ca)),
            timeout: self.timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "manager_dn = \"cn=reader,dc=example,dc=com\"\nmanager_password_env = \"LDAP_PW\"\nsearch_base = \"ou=people,dc=example,dc=com\"\n";

    fn ldap(extra: &str) -> Result<LdapConfig, String> {
        let raw: RawLdap = toml::from_str(&format!("{BASE}{extra}")).map_err(|e| e.to_string())?;
        raw.validate(Path::new("/etc/ucgate"))
    }

    #[test]
    fn defaults_and_xivo_s_filter() {
        let c = ldap("url = \"ldap://127.0.0.1:389\"\nca = \"ca.pem\"").unwrap();
        assert_eq!(c.user_search_filter, "(uid=%s)");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.ca.unwrap(), Path::new("/etc/ucgate/ca.pem"));
        let c =
            ldap("url = \"ldaps://ldap.example.com\"\nuser_search_filter = \"uid=%s\"").unwrap();
        assert_eq!(c.user_search_filter, "(uid=%s)");
        let c =
            ldap("url = \"ldap://ldap\"\nuser_search_filter = \"(|(uid=%s)(mail=%s))\"").unwrap();
        assert_eq!(c.user_search_filter, "(|(uid=%s)(mail=%s))");
    }

    #[test]
    fn refuses_what_cannot_work() {
        for (extra, key) in [
            ("url = \"http://ldap\"", "url:"),
            ("url = \"ldap://cn=admin:pw@ldap\"", "url:"),
            ("url = \"ldap://ldap/dc=example\"", "url:"),
            ("url = \"ldaps://ldap\"\nstarttls = true", "starttls:"),
            (
                "url = \"ldap://ldap\"\nuser_search_filter = \"(uid=x)\"",
                "user_search_filter:",
            ),
            ("url = \"ldap://ldap\"\ntimeout = \"0s\"", "timeout:"),
        ] {
            let e = ldap(extra).unwrap_err();
            assert!(e.starts_with(key), "{extra}: {e}");
        }
        assert!(ldap("url = \"ldap://ldap\"\nmanager_password = \"x\"").is_err());
    }
}
