//! Passwords checked by an LDAP bind (XiVO CC's "auth delegation"), over another directory that
//! still says who may log in: the person must be a XiVO user with CTI login enabled and a
//! profile there, whatever LDAP says of the password.
//!
//! A check is: connect (StartTLS when asked), bind as the manager, search `search_base` for
//! exactly one entry matching `user_search_filter` with the login escaped (RFC 4515 §3), bind as
//! that entry with the password. An empty password is refused before any of it: most servers
//! take a bind with an empty password as an unauthenticated bind, and say yes (RFC 4513 §5.1.2).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::{Directory, User};
use crate::config::LdapConfig;
use crate::error::GateError;
use crate::metrics::metrics;

/// `Retry-After` of a `503 DirectoryUnavailable`, seconds.
const RETRY_AFTER: u64 = 5;
/// LDAP's result code for a bind with a wrong password (RFC 4511 appendix A.1).
const INVALID_CREDENTIALS: u32 = 49;
/// Longest login sent to the server.
const MAX_LOGIN: usize = 256;

/// `inner`'s users, their passwords checked by LDAP.
#[derive(Debug)]
pub struct LdapPasswords {
    inner: Arc<dyn Directory>,
    ldap: Ldap,
    up: AtomicBool,
}

/// The LDAP server of `[ldap]`, and how to reach it.
pub struct Ldap {
    config: LdapConfig,
    manager_password: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Ldap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ldap")
            .field("url", &self.config.url.as_str())
            .finish_non_exhaustive()
    }
}

/// Why a check could not be made (as opposed to a wrong password).
struct Unavailable {
    kind: &'static str,
    reason: String,
}

impl Unavailable {
    fn new(kind: &'static str) -> impl Fn(ldap3::LdapError) -> Self {
        move |e| Unavailable {
            kind,
            reason: e.to_string(),
        }
    }
}

impl LdapPasswords {
    /// `inner`'s users, their passwords checked by `ldap`.
    pub fn new(inner: Arc<dyn Directory>, ldap: Ldap) -> Self {
        Self {
            inner,
            ldap,
            up: AtomicBool::new(true),
        }
    }

    fn unavailable(&self, e: Unavailable) -> GateError {
        metrics().directory_error(e.kind);
        metrics().directory_up("ldap", false);
        let url = self.ldap.config.url.as_str();
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(
                ldap = url,
                kind = e.kind,
                reason = e.reason,
                "LDAP cannot check passwords"
            );
        } else {
            tracing::debug!(
                ldap = url,
                kind = e.kind,
                reason = e.reason,
                "LDAP still down"
            );
        }
        GateError::DirectoryUnavailable(RETRY_AFTER)
    }

    fn answered(&self) {
        metrics().directory_up("ldap", true);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(ldap = self.ldap.config.url.as_str(), "LDAP answers again");
        }
    }
}

impl Ldap {
    /// Reads the manager's password from its environment variable and the CA bundle, if any.
    /// Errors name the key, never the password.
    pub fn open(config: &LdapConfig) -> Result<Self, String> {
        let manager_password = std::env::var(&config.manager_password_env)
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                format!(
                    "ldap.manager_password_env: environment variable {} is unset or empty",
                    config.manager_password_env
                )
            })?;
        let tls = (config.url.scheme() == "ldaps" || config.starttls)
            .then(|| crate::tls::upstream_config(config.ca.as_deref()).map(Arc::new))
            .transpose()
            .map_err(|e| format!("ldap.ca: {e}"))?;
        Ok(Self {
            config: config.clone(),
            manager_password,
            tls,
        })
    }

    /// Whether `password` is `login`'s in LDAP: `Ok(false)` for an unknown login, an ambiguous
    /// one, or a wrong password.
    async fn check(&self, login: &str, password: &str) -> Result<bool, Unavailable> {
        let c = &self.config;
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(c.timeout)
            .set_starttls(c.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (connection, mut ldap) = LdapConnAsync::with_settings(settings, c.url.as_str())
            .await
            .map_err(Unavailable::new("ldap_unreachable"))?;
        ldap3::drive!(connection);
        let outcome = async {
            ldap.with_timeout(c.timeout)
                .simple_bind(&c.manager_dn, &self.manager_password)
                .await
                .and_then(|r| r.success())
                .map_err(Unavailable::new("ldap_manager_bind"))?;
            let filter = c
                .user_search_filter
                .replace("%s", &ldap3::ldap_escape(login));
            // "1.1": no attribute, only the entry's name (RFC 4511 §4.5.1.8).
            let (entries, _) = ldap
                .with_timeout(c.timeout)
                .search(&c.search_base, Scope::Subtree, &filter, vec!["1.1"])
                .await
                .and_then(|r| r.success())
                .map_err(Unavailable::new("ldap_search"))?;
            let dn = match entries.as_slice() {
                [entry] => SearchEntry::construct(entry.clone()).dn,
                [] => return Ok(false),
                _ => {
                    metrics().directory_error("ldap_ambiguous");
                    tracing::error!(
                        login,
                        entries = entries.len(),
                        "directory error: several LDAP entries match this login; it cannot log in"
                    );
                    return Ok(false);
                }
            };
            let bind = ldap
                .with_timeout(c.timeout)
                .simple_bind(&dn, password)
                .await
                .map_err(Unavailable::new("ldap_unreachable"))?;
            match bind.rc {
                0 => Ok(true),
                INVALID_CREDENTIALS => Ok(false),
                rc => Err(Unavailable {
                    kind: "ldap_bind",
                    reason: format!("bind answered result code {rc}"),
                }),
            }
        }
        .await;
        let _ = ldap.unbind().await;
        outcome
    }

    /// The manager's bind and a search under the base work, for `ucgate doctor`.
    pub async fn check_manager(&self) -> Result<(), String> {
        // A search for a login no one has exercises the bind and the search base.
        match self.check("\u{1}ucgate-doctor\u{1}", "-").await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}: {}", e.kind, e.reason)),
        }
    }
}

impl Directory for LdapPasswords {
    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Option<User>, GateError>> {
        self.inner.lookup(login)
    }

    fn verify_password<'a>(
        &'a self,
        login: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, GateError>> {
        Box::pin(async move {
            if password.is_empty() || login.is_empty() || login.len() > MAX_LOGIN {
                return Ok(None);
            }
            match self.ldap.check(login, password).await {
                Ok(true) => {
                    self.answered();
                    self.inner.lookup(login).await
                }
                Ok(false) => {
                    self.answered();
                    Ok(None)
                }
                Err(e) => Err(self.unavailable(e)),
            }
        })
    }

    fn lookup_many<'a>(
        &'a self,
        logins: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<User>>, GateError>> {
        self.inner.lookup_many(logins)
    }

    fn describe(&self) -> String {
        format!(
            "{}, passwords checked by LDAP at {}",
            self.inner.describe(),
            self.ldap.config.url.as_str().trim_end_matches('/')
        )
    }

    fn down(&self) -> Vec<&'static str> {
        let mut down = self.inner.down();
        if !self.up.load(Ordering::Relaxed) {
            down.push("ldap");
        }
        down
    }
}
