//! `[kerberos]`: the keytab and principals of SPNEGO single sign-on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `[kerberos]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KerberosConfig {
    /// The service keys (MIT `FILE:` keytab).
    pub keytab: PathBuf,
    /// The one service principal to accept for (`HTTP/host` or `HTTP/host@REALM`); absent: any
    /// principal of the keytab, as clients name the service after the host they reach.
    #[serde(default)]
    pub principal: Option<String>,
    /// Client realms accepted; absent: the realms of the service principals in the keytab, so
    /// that a cross-realm trust does not silently let another realm's `alice` in as ours.
    #[serde(default)]
    pub realms: Option<Vec<String>>,
    /// Explicit `"name@REALM" = "login"` mappings; they win over realm stripping and bypass
    /// `realms`.
    #[serde(default)]
    pub principal_map: BTreeMap<String, String>,
    /// The replay cache file (MIT `file2` type); absent: MIT's default (`KRB5RCACHENAME`, else
    /// `/var/tmp/krb5_<uid>.rcache2`). Must be on a writable, persistent volume in a container.
    #[serde(default)]
    pub replay_cache: Option<PathBuf>,
}

impl KerberosConfig {
    /// Checks values and resolves relative paths against the config file's folder. Errors start
    /// with the key within the section (`realms: ...`).
    pub(super) fn validate(&mut self, base: &Path) -> Result<(), String> {
        self.keytab = base.join(&self.keytab);
        if let Some(rc) = &mut self.replay_cache {
            *rc = base.join(&*rc);
        }
        if let Some(p) = &self.principal
            && (p.is_empty() || p.contains('\0'))
        {
            return Err("principal: must be a non-empty principal name".into());
        }
        if let Some(realms) = &self.realms {
            if realms.is_empty() {
                return Err(
                    "realms: an empty list would refuse everyone; omit the key to \
                            accept the keytab's realms"
                        .into(),
                );
            }
            if realms.iter().any(|r| r.is_empty() || r.contains('@')) {
                return Err("realms: each realm must be a non-empty name without '@'".into());
            }
        }
        for (principal, login) in &self.principal_map {
            if !principal.contains('@') {
                return Err(format!(
                    "principal_map: {principal:?} must be a full principal (name@REALM)"
                ));
            }
            if login.is_empty() {
                return Err(format!(
                    "principal_map: {principal:?} maps to an empty login"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_the_section() {
        let parse = |extra: &str| -> Result<KerberosConfig, String> {
            let mut c: KerberosConfig =
                toml::from_str(&format!("keytab = \"http.keytab\"\n{extra}"))
                    .map_err(|e| e.to_string())?;
            c.validate(Path::new("/etc/ucgate"))?;
            Ok(c)
        };
        let c = parse("replay_cache = \"rc/krb5.rcache2\"").unwrap();
        assert_eq!(c.keytab, Path::new("/etc/ucgate/http.keytab"));
        assert_eq!(
            c.replay_cache.unwrap(),
            Path::new("/etc/ucgate/rc/krb5.rcache2")
        );
        assert!(parse("realms = []").unwrap_err().contains("realms"));
        assert!(parse("principal = \"\"").unwrap_err().contains("principal"));
        assert!(
            parse("[principal_map]\nalice = \"bob\"")
                .unwrap_err()
                .contains("principal_map")
        );
        assert!(
            parse("[principal_map]\n\"a@R\" = \"\"")
                .unwrap_err()
                .contains("empty login")
        );
        assert!(parse("keytab_typo = 1").is_err());
        assert!(toml::from_str::<KerberosConfig>("principal = \"HTTP/x\"").is_err());
    }
}
