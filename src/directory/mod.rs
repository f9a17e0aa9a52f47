//! The user directory: who may get a UC token. A person may log in when the directory knows
//! their login, their CTI login is enabled and they have a profile (XiVO's rule for its own
//! users).
//!
//! [`Directory`] is the seam the exchanges see; its backends are asynchronous, because all but
//! the embedded file do network I/O. Backends: [`file`] (a TOML file with argon2id hashes),
//! [`database`] (XiVO's PostgreSQL database); [`ldap`] checks passwords over either.

pub mod database;
pub mod file;
pub mod ldap;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::{LdapConfig, UsersConfig, UsersSource};
use crate::error::GateError;

/// A person as a directory holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub login: String,
    pub cti_enabled: bool,
    pub profile: Option<String>,
    pub name: Option<String>,
}

impl User {
    /// The profile of a user allowed to log in: CTI login enabled and a profile set.
    pub fn login_profile(&self) -> Option<&str> {
        self.profile
            .as_deref()
            .filter(|p| self.cti_enabled && !p.is_empty())
    }
}

/// A source of users. Answers are `Ok(None)` for an unknown login; `Err` only when the
/// directory cannot answer (a backend down), never to say no.
pub trait Directory: Send + Sync + fmt::Debug {
    /// The user `login`, for exchanges whose identity provider proved the login (Kerberos, CAS,
    /// OIDC).
    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Option<User>, GateError>>;

    /// The user `login` when `password` is theirs; `None` when the login is unknown, has no
    /// password or the password is wrong, in the same time whichever it is.
    fn verify_password<'a>(
        &'a self,
        login: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, GateError>>;

    /// Several logins at once, for the recheck of the tokens in use: each login's user, in
    /// order, `None` for those it does not know.
    fn lookup_many<'a>(
        &'a self,
        logins: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<User>>, GateError>> {
        Box::pin(async move {
            let mut users = Vec::with_capacity(logins.len());
            for login in logins {
                users.push(self.lookup(login).await?);
            }
            Ok(users)
        })
    }

    /// What it is, for the start-up log and `check-config` (never a secret): "3 users in FILE".
    fn describe(&self) -> String;

    /// How many users a local list holds (the users file); `None` for a remote directory,
    /// which ucgate does not count.
    fn listed(&self) -> Option<usize> {
        None
    }

    /// A warning when this is a local list without a user (never a failure: ucgate serves the
    /// shared token, and users may be added by reload), for the start-up log, reloads,
    /// `check-config` and `doctor`.
    fn without_users(&self) -> Option<String> {
        (self.listed() == Some(0)).then(|| {
            format!(
                "{}: no one can log in until users are added (then reload)",
                self.describe()
            )
        })
    }

    /// The remote dependencies that did not answer the last time they were asked (`database`,
    /// `ldap`), for `/readyz`.
    fn down(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// Why the directory of a configuration cannot be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The users file: its path and what is wrong in it.
    File { file: PathBuf, reason: String },
    /// A key of the configuration; `reason` starts with it.
    Config(String),
}

/// The directory `users` describes, its passwords checked by LDAP when `ldap` is set. Secrets
/// (the database URL, the LDAP manager's password) come from the environment or `env_files`.
pub fn open(
    users: &UsersConfig,
    ldap: Option<&LdapConfig>,
    env_files: &[PathBuf],
) -> Result<Arc<dyn Directory>, OpenError> {
    let base: Arc<dyn Directory> =
        match &users.source {
            UsersSource::File(file) => Arc::new(file::FileDirectory::load(file).map_err(
                |reason| OpenError::File {
                    file: file.clone(),
                    reason,
                },
            )?),
            UsersSource::Database { url_env } => Arc::new(
                database::Database::open(url_env, env_files, users.timeout)
                    .map_err(OpenError::Config)?,
            ),
        };
    match ldap {
        Some(config) => {
            let ldap = ldap::Ldap::open(config).map_err(OpenError::Config)?;
            Ok(Arc::new(ldap::LdapPasswords::new(base, ldap)))
        }
        None => Ok(base),
    }
}
