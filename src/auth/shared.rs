//! The XiVO shared token (`PLAY_AUTH_TOKEN`): where it is read from and how it is checked.

use std::fmt;
use std::path::{Path, PathBuf};

use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::SharedTokenConfig;

/// Which of the configured values a presented shared token matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedMatch {
    Current,
    /// The value of `previous_env`, accepted during a rotation.
    Previous,
}

/// The shared token, held so that it cannot be printed by accident.
pub struct SharedToken {
    /// Sent upstream; marked sensitive so that HPACK never indexes it.
    header: HeaderValue,
    /// Presented tokens are compared digest to digest, so the comparison takes the same time
    /// whatever their length and content.
    current: [u8; 32],
    previous: Option<[u8; 32]>,
    source: String,
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedToken")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why the shared token could not be loaded; never its value.
#[derive(Debug, thiserror::Error)]
pub enum SharedTokenError {
    #[error(
        "no shared token: environment variable {env} is unset or empty{files}; set it, or list \
         the custom.env that defines it in shared_token.env_files"
    )]
    Missing { env: String, files: String },
    #[error("cannot read {file}: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    #[error("the shared token from {origin} is not a valid header value (control characters?)")]
    Invalid { origin: String },
}

impl SharedToken {
    /// Reads the token from the environment or, when unset there, from the env files (the last
    /// file that defines it wins, as if they were sourced in order).
    pub fn load(config: &SharedTokenConfig) -> Result<Self, SharedTokenError> {
        let (value, source) = match std::env::var(&config.env) {
            Ok(v) if !v.is_empty() => (v, format!("environment variable {}", config.env)),
            _ => find_in_files(&config.env, &config.env_files)?.ok_or_else(|| {
                SharedTokenError::Missing {
                    env: config.env.clone(),
                    files: if config.env_files.is_empty() {
                        String::new()
                    } else {
                        let list: Vec<_> = config
                            .env_files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect();
                        format!(" and not defined in {}", list.join(", "))
                    },
                }
            })?,
        };
        let previous = config
            .previous_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok())
            .filter(|v| !v.is_empty() && *v != value)
            .map(|v| digest(v.as_bytes()));
        Self::new(&value, previous, source)
    }

    fn new(
        value: &str,
        previous: Option<[u8; 32]>,
        source: String,
    ) -> Result<Self, SharedTokenError> {
        let mut header = HeaderValue::from_str(value).map_err(|_| SharedTokenError::Invalid {
            origin: source.clone(),
        })?;
        header.set_sensitive(true);
        Ok(Self {
            header,
            current: digest(value.as_bytes()),
            previous,
            source,
        })
    }

    /// Builds a token from a literal, for tests and benches.
    pub fn from_value(value: &str) -> Result<Self, SharedTokenError> {
        Self::new(value, None, "literal".into())
    }

    /// Where the token was found, for logs (never the value).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value to send upstream.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// Checks a presented token in constant time.
    pub fn matches(&self, presented: &[u8]) -> Option<SharedMatch> {
        let d = digest(presented);
        let current = self.current.ct_eq(&d);
        let previous = self.previous.map_or(0u8.ct_eq(&1), |p| p.ct_eq(&d));
        if bool::from(current) {
            Some(SharedMatch::Current)
        } else if bool::from(previous) {
            Some(SharedMatch::Previous)
        } else {
            None
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn find_in_files(
    name: &str,
    files: &[PathBuf],
) -> Result<Option<(String, String)>, SharedTokenError> {
    let mut found = None;
    for file in files {
        if let Some(value) = read_env_file(file, name)? {
            found = Some((value, format!("{} in {}", name, file.display())));
        }
    }
    Ok(found.filter(|(v, _)| !v.is_empty()))
}

/// The value of `name` in a dotenv file (comments, quotes, `export` prefix), or None when the
/// file does not exist or does not define it.
pub fn read_env_file(file: &Path, name: &str) -> Result<Option<String>, SharedTokenError> {
    let unreadable = |reason: String| SharedTokenError::Unreadable {
        file: file.to_owned(),
        reason,
    };
    let iter = match dotenvy::from_path_iter(file) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // dotenvy's errors quote the offending line, which may hold a secret: keep only the kind.
        Err(e) => return Err(unreadable(describe(&e))),
    };
    let mut value = None;
    for item in iter {
        let (key, v) = item.map_err(|e| unreadable(describe(&e)))?;
        if key == name {
            value = Some(v);
        }
    }
    Ok(value)
}

fn describe(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::Io(e) => e.to_string(),
        dotenvy::Error::LineParse(_, index) => format!("syntax error at character {index}"),
        _ => "invalid file".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn matches_current_and_previous_only() {
        let mut t = SharedToken::from_value("s3cret-token-value").unwrap();
        assert_eq!(t.matches(b"s3cret-token-value"), Some(SharedMatch::Current));
        assert_eq!(t.matches(b"s3cret-token-valu"), None);
        assert_eq!(t.matches(b""), None);
        t.previous = Some(digest(b"old"));
        assert_eq!(t.matches(b"old"), Some(SharedMatch::Previous));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn reads_dotenv_syntax() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "# comment\nOTHER=1\nexport PLAY_AUTH_TOKEN=\"quoted value\" # trailing\nX='y'"
        )
        .unwrap();
        assert_eq!(
            read_env_file(f.path(), "PLAY_AUTH_TOKEN")
                .unwrap()
                .as_deref(),
            Some("quoted value")
        );
        assert_eq!(read_env_file(f.path(), "NOPE").unwrap(), None);
        assert_eq!(
            read_env_file(Path::new("/nonexistent/custom.env"), "X").unwrap(),
            None
        );
    }

    #[test]
    fn syntax_errors_do_not_echo_the_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "PLAY_AUTH_TOKEN=\"topsecret").unwrap();
        let e = read_env_file(f.path(), "PLAY_AUTH_TOKEN")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("topsecret"), "{e}");
    }
}
