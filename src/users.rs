//! The embedded user directory: a TOML file of users with argon2id password hashes.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use serde::Deserialize;

/// A person who may get a UC token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub login: String,
    /// PHC string; absent for users who sign in only through SSO.
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    pub cti_enabled: bool,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("login", &self.login)
            .field("cti_enabled", &self.cti_enabled)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl User {
    /// The profile of a user allowed to log in: CTI login enabled and a profile set.
    pub fn login_profile(&self) -> Option<&str> {
        self.profile
            .as_deref()
            .filter(|p| self.cti_enabled && !p.is_empty())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<User>,
}

/// The users, by login.
#[derive(Debug, Default)]
pub struct Directory {
    users: HashMap<String, Arc<User>>,
}

impl Directory {
    pub fn load(file: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut users = HashMap::with_capacity(file.users.len());
        for (i, user) in file.users.into_iter().enumerate() {
            if user.login.is_empty() {
                return Err(format!("user[{i}].login: must not be empty"));
            }
            if let Some(hash) = &user.password_hash {
                let parsed = PasswordHash::new(hash)
                    .map_err(|e| format!("user[{i}].password_hash: not a PHC hash ({e})"))?;
                if parsed.algorithm.as_str() != "argon2id" {
                    return Err(format!("user[{i}].password_hash: must be argon2id"));
                }
            }
            let login = user.login.clone();
            if users.insert(login.clone(), Arc::new(user)).is_some() {
                return Err(format!("user[{i}].login: duplicate login {login:?}"));
            }
        }
        Ok(Self { users })
    }

    pub fn get(&self, login: &str) -> Option<&Arc<User>> {
        self.users.get(login)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks `password` for `login`. Takes the same time whether the user exists, has a
    /// password or not: an unknown login is checked against a dummy hash.
    /// CPU-heavy (argon2): call it off the async workers.
    pub fn verify_password(&self, login: &str, password: &str) -> Option<Arc<User>> {
        let user = self.users.get(login);
        let hash = user
            .and_then(|u| u.password_hash.as_deref())
            .unwrap_or(&DUMMY_HASH);
        let ok = PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        match (ok, user) {
            (true, Some(user)) if user.password_hash.is_some() => Some(user.clone()),
            _ => None,
        }
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

    #[test]
    fn verifies_passwords_and_refuses_the_rest() {
        let hash = hash_password("alicepw").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let dir = Directory::parse(&format!(
            "[[user]]\nlogin = \"alice\"\npassword_hash = \"{hash}\"\ncti_enabled = true\nprofile = \"agent\"\n\
             [[user]]\nlogin = \"sso\"\ncti_enabled = true\nprofile = \"agent\"\n"
        ))
        .unwrap();
        assert_eq!(
            dir.verify_password("alice", "alicepw")
                .unwrap()
                .login_profile(),
            Some("agent")
        );
        assert!(dir.verify_password("alice", "wrong").is_none());
        assert!(dir.verify_password("bob", "alicepw").is_none());
        assert!(dir.verify_password("sso", "").is_none());
    }

    #[test]
    fn refuses_bad_files() {
        assert!(
            Directory::parse("[[user]]\nlogin = \"a\"\npassword_hash = \"plain\"")
                .unwrap_err()
                .contains("user[0].password_hash")
        );
        assert!(
            Directory::parse("[[user]]\nlogin = \"a\"\n[[user]]\nlogin = \"a\"")
                .unwrap_err()
                .contains("duplicate")
        );
        assert!(Directory::parse("[[user]]\nlogin = \"a\"\npasword = \"x\"").is_err());
    }

    #[test]
    fn login_needs_cti_and_profile() {
        let user = |cti, profile: Option<&str>| User {
            login: "x".into(),
            password_hash: None,
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
