//! The user directory: who may get a UC token. A person may log in when the directory knows
//! their login, their CTI login is enabled and they have a profile (XiVO's rule for its own
//! users).
//!
//! [`Directory`] is the seam the exchanges see; its backends are asynchronous, because all but
//! the embedded file do network I/O. Backends: [`file`] (a TOML file with argon2id hashes).

pub mod file;

use std::fmt;

use futures_util::future::BoxFuture;

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

    /// What it is, for the start-up log and `check-config` (never a secret): "3 users in FILE".
    fn describe(&self) -> String;
}
