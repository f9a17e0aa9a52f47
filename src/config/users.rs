//! `[users]`: the user directory, where the people who may get a UC token are found.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::optional_duration;

/// The validated `[users]` section.
#[derive(Debug, Clone)]
pub struct UsersConfig {
    pub source: UsersSource,
    /// How often the login of each UC token in use is looked up again, so that a user disabled
    /// or changed in the directory loses (or changes) access within this time. Zero: never;
    /// a token then stands for its whole lifetime.
    pub recheck: Duration,
    /// Bound of each connection and query to a remote directory.
    pub timeout: Duration,
}

/// Where the users are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersSource {
    /// The embedded TOML file (see `directory::file`), resolved against the config's folder.
    File(PathBuf),
    /// XiVO's PostgreSQL database `asterisk`; the URL (with its password) is the value of this
    /// environment variable, or of the same name in `[shared_token].env_files`.
    Database { url_env: String },
}

/// `[users]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUsers {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    database_url_env: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    recheck: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    timeout: Option<Duration>,
}

impl RawUsers {
    /// Errors start with the key (`users.recheck: ...`).
    pub(super) fn validate(self, base: &Path) -> Result<UsersConfig, String> {
        let source = match (self.file, self.database_url_env) {
            (Some(file), None) => UsersSource::File(base.join(file)),
            (None, Some(env)) if !env.is_empty() && !env.contains(['=', '\0']) => {
                UsersSource::Database { url_env: env }
            }
            (None, Some(_)) => {
                return Err("users.database_url_env: must name an environment variable".into());
            }
            (Some(_), Some(_)) => {
                return Err("users.file, users.database_url_env: set one of them, not both".into());
            }
            (None, None) => {
                return Err(
                    "users.file, users.database_url_env: one of them is needed (the users file, or XiVO's database)"
                        .into(),
                );
            }
        };
        let recheck = self.recheck.unwrap_or(Duration::from_secs(60));
        if !recheck.is_zero() && recheck < Duration::from_secs(1) {
            return Err("users.recheck: at least 1s (or \"0s\": never)".into());
        }
        let timeout = self.timeout.unwrap_or(Duration::from_secs(3));
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err("users.timeout: more than 0s and at most 1m".into());
        }
        Ok(UsersConfig {
            source,
            recheck,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(text: &str) -> Result<UsersConfig, String> {
        let raw: RawUsers = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate(Path::new("/etc/ucgate"))
    }

    #[test]
    fn exactly_one_source_and_sane_bounds() {
        let file = users("file = \"users.toml\"").unwrap();
        assert_eq!(
            file.source,
            UsersSource::File("/etc/ucgate/users.toml".into())
        );
        assert_eq!(file.recheck, Duration::from_secs(60));
        let db = users("database_url_env = \"XIVO_DB_URL\"\nrecheck = \"5s\"").unwrap();
        assert_eq!(
            db.source,
            UsersSource::Database {
                url_env: "XIVO_DB_URL".into()
            }
        );
        assert_eq!(db.recheck, Duration::from_secs(5));
        for (text, key) in [
            ("", "users.file, users.database_url_env"),
            (
                "file = \"u\"\ndatabase_url_env = \"X\"",
                "users.file, users.database_url_env",
            ),
            ("database_url_env = \"\"", "users.database_url_env"),
            ("file = \"u\"\nrecheck = \"500ms\"", "users.recheck"),
            ("file = \"u\"\ntimeout = \"0s\"", "users.timeout"),
        ] {
            let e = users(text).unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        // The URL itself is never a key of the file.
        assert!(users("database_url = \"postgresql://a:b@h/d\"").is_err());
    }
}
