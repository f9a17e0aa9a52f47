//! The embedded directory: a TOML file of users with argon2id password hashes (RFC 9106),
//! loaded whole at each configuration load.
//!
//! ```toml
//! [[user]]
//! login = "alice"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."   # `ucgate hash-password`
//! cti_enabled = true
//! profile = "agent"
//! name = "Alice Martin"                                  # optional
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{Directory, User};
use crate::error::GateError;

/// One `[[user]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    login: String,
    /// PHC string; absent for users who sign in only through SSO.
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    cti_enabled: bool,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<Entry>,
}

/// A user and their password hash, if any.
struct Known {
    user: User,
    password_hash: Option<String>,
}

/// The users of one file, by login.
pub struct FileDirectory {
    file: PathBuf,
    users: HashMap<String, Arc<Known>>,
}

impl fmt::Debug for FileDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDirectory")
            .field("file", &self.file)
            .field("users", &self.users.len())
            .finish()
    }
}

impl FileDirectory {
    /// Reads and checks `file`. Errors name the entry and key (`user[2].password_hash: ...`),
    /// never a hash.
    pub fn load(file: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
        Self::parse(file, &text)
    }

    fn parse(file: &Path, text: &str) -> Result<Self, String> {
        // One line, like every load error, and never the file's text: toml's own `Display`
        // quotes the offending line, which may be `password = "..."` written instead of its hash.
        let parsed: UsersFile = toml::from_str(text)
            .map_err(|e| crate::config::TomlErrorAt::new(text, &e).to_string())?;
        let mut users = HashMap::with_capacity(parsed.users.len());
        for (i, entry) in parsed.users.into_iter().enumerate() {
            if entry.login.is_empty() {
                return Err(format!("user[{i}].login: must not be empty"));
            }
            if let Some(hash) = &entry.password_hash {
                let parsed = PasswordHash::new(hash)
                    .map_err(|e| format!("user[{i}].password_hash: not a PHC hash ({e})"))?;
                if parsed.algorithm.as_str() != "argon2id" {
                    return Err(format!("user[{i}].password_hash: must be argon2id"));
                }
            }
            let known = Known {
                user: User {
                    login: entry.login.clone(),
                    cti_enabled: entry.cti_enabled,
                    profile: entry.profile,
                    name: entry.name,
                },
                password_hash: entry.password_hash,
            };
            if users.insert(entry.login.clone(), Arc::new(known)).is_some() {
                return Err(format!(
                    "user[{i}].login: duplicate login {:?}",
                    entry.login
                ));
            }
        }
        Ok(Self {
            file: file.to_owned(),
            users,
        })
    }
}

impl Directory for FileDirectory {
    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Option<User>, GateError>> {
        let user = self.users.get(login).map(|k| k.user.clone());
        Box::pin(std::future::ready(Ok(user)))
    }

    /// argon2 takes tens of milliseconds of CPU: it runs on the blocking pool.
    fn verify_password<'a>(
        &'a self,
        login: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, GateError>> {
        let known = self.users.get(login).cloned();
        let password = password.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || verify(known.as_deref(), &password))
                .await
                .map_err(|_| GateError::Unhandled)
        })
    }

    fn describe(&self) -> String {
        let n = self.users.len();
        let users = if n == 1 { "user" } else { "users" };
        format!("{n} {users} in {}", self.file.display())
    }

    fn listed(&self) -> Option<usize> {
        Some(self.users.len())
    }
}

/// Checks `password` against `known`'s hash, or against a dummy hash when there is no user or
/// no hash, so that the time taken says nothing about which.
fn verify(known: Option<&Known>, password: &str) -> Option<User> {
    let hash = known
        .and_then(|k| k.password_hash.as_deref())
        .unwrap_or(&DUMMY_HASH);
    let ok = PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    });
    match (ok, known) {
        (true, Some(known)) if known.password_hash.is_some() => Some(known.user.clone()),
        _ => None,
    }
}

/// A hash of a random password, with the default parameters, so that checking it costs what a
/// real check costs.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).expect("the OS random generator works");
    hash_password(&String::from_utf8_lossy(&random)).expect("hashing works")
});

/// An argon2id PHC hash of `password` with a fresh salt and the default parameters
/// (m=19456 KiB, t=2, p=1: OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileDirectory, String> {
        FileDirectory::parse(Path::new("users.toml"), text)
    }

    #[tokio::test]
    async fn verifies_passwords_and_refuses_the_rest() {
        let hash = hash_password("alicepw").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let dir = parse(&format!(
            "[[user]]\nlogin = \"alice\"\npassword_hash = \"{hash}\"\ncti_enabled = true\nprofile = \"agent\"\n\
             [[user]]\nlogin = \"sso\"\ncti_enabled = true\nprofile = \"agent\"\n"
        ))
        .unwrap();
        let verified = |login: &'static str, password: &'static str| {
            let dir = &dir;
            async move { dir.verify_password(login, password).await.unwrap() }
        };
        assert_eq!(
            verified("alice", "alicepw").await.unwrap().login_profile(),
            Some("agent")
        );
        assert!(verified("alice", "wrong").await.is_none());
        assert!(verified("bob", "alicepw").await.is_none());
        assert!(verified("sso", "").await.is_none());
        assert_eq!(
            dir.lookup("sso").await.unwrap().unwrap().login_profile(),
            Some("agent")
        );
        assert_eq!(dir.lookup("bob").await.unwrap(), None);
        assert_eq!(dir.describe(), "2 users in users.toml");
        assert!(!format!("{dir:?}").contains("argon2"));
    }

    #[test]
    fn refuses_bad_files() {
        let error = |text: &str| parse(text).map(|_| ()).unwrap_err();
        assert!(
            error("[[user]]\nlogin = \"a\"\npassword_hash = \"plain\"")
                .contains("user[0].password_hash")
        );
        assert!(error("[[user]]\nlogin = \"a\"\n[[user]]\nlogin = \"a\"").contains("duplicate"));
        assert!(!error("[[user]]\nlogin = \"a\"\npasword = \"x\"").contains('\n'));
    }

    /// A password written where its hash belongs (or in any other key) is never quoted back:
    /// the error names the line, the column, the key and the problem.
    #[test]
    fn errors_never_quote_the_file() {
        let error = |text: &str| parse(text).map(|_| ()).unwrap_err();
        let e = error("[[user]]\nlogin = \"bob\"\npassword = \"BobPlainSecret99\"\n");
        assert!(!e.contains("BobPlainSecret99"), "{e}");
        assert!(
            e.starts_with("line 3, column 1: password: unknown field"),
            "{e}"
        );
        let e = error("[[user]]\nlogin = \"bob\"\ncti_enabled = \"Bob\\\"Plain\\\"Secret\"\n");
        assert!(!e.contains("Plain"), "{e}");
        assert!(
            e.contains("line 3") && e.contains("cti_enabled: invalid type: a string"),
            "{e}"
        );
        let e = error("[[user]]\nlogin = \"bob\"\npassword = BobPlainSecret99\n");
        assert!(!e.contains("BobPlainSecret99"), "{e}");
        assert!(e.starts_with("line 3, column"), "{e}");
    }

    #[test]
    fn login_needs_cti_and_profile() {
        let user = |cti, profile: Option<&str>| User {
            login: "x".into(),
            cti_enabled: cti,
            profile: profile.map(Into::into),
            name: None,
        };
        assert_eq!(user(true, Some("agent")).login_profile(), Some("agent"));
        assert_eq!(user(false, Some("agent")).login_profile(), None);
        assert_eq!(user(true, None).login_profile(), None);
        assert_eq!(user(true, Some("")).login_profile(), None);
    }
}
