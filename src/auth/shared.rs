//! The XiVO shared token (`PLAY_AUTH_TOKEN`): where it is read from and how it is checked.

use std::fmt;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use http::HeaderValue;

use crate::config::SharedTokenConfig;
use crate::secrets::{self, EnvFileError};

/// `secrets::weakness` of a token held as bytes (always UTF-8: it was read as a string).
fn weakness_of(token: &[u8]) -> Option<String> {
    std::str::from_utf8(token).ok().and_then(secrets::weakness)
}

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
    /// Presented tokens of the same length are compared in constant time (aws-lc's
    /// `CRYPTO_memcmp`); a token of another length is refused at once, which tells a timing
    /// attacker the length and nothing else (as every constant-time slice comparison does): a
    /// length is no secret worth a SHA-256 per request, and most requests carry a UC token, a
    /// JWT never of the shared token's length.
    current: Box<[u8]>,
    previous: Option<Box<[u8]>>,
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
    #[error(transparent)]
    Unreadable(#[from] EnvFileError),
    #[error("the shared token from {origin} is not a valid header value (control characters?)")]
    Invalid { origin: String },
}

impl SharedToken {
    /// Reads the token from the environment or, when unset there, from the env files (the last
    /// file that defines it wins, as if they were sourced in order).
    pub fn load(config: &SharedTokenConfig) -> Result<Self, SharedTokenError> {
        let (value, source) = secrets::from_env_or_files(&config.env, &config.env_files)?
            .ok_or_else(|| SharedTokenError::Missing {
                env: config.env.clone(),
                files: secrets::not_defined_in(&config.env_files),
            })?;
        let previous = config
            .previous_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok())
            .filter(|v| !v.is_empty() && *v != value)
            .map(|v| v.into_bytes().into_boxed_slice());
        Self::new(&value, previous, source)
    }

    fn new(
        value: &str,
        previous: Option<Box<[u8]>>,
        source: String,
    ) -> Result<Self, SharedTokenError> {
        let mut header = HeaderValue::from_str(value).map_err(|_| SharedTokenError::Invalid {
            origin: source.clone(),
        })?;
        header.set_sensitive(true);
        Ok(Self {
            header,
            current: value.as_bytes().into(),
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

    /// Why the token is weak (too short, a word, too little entropy), if it is: it opens every
    /// route that accepts it, so a guessable one is worth a warning (never the value).
    /// Read at start-up, reloads and `check-config`, not per request: derived each time.
    pub fn weakness(&self) -> Option<String> {
        weakness_of(&self.current)
    }

    /// The same for the previous token of a rotation (`shared_token.previous_env`), which
    /// opens the same routes until the rotation ends.
    pub fn previous_weakness(&self) -> Option<String> {
        self.previous.as_deref().and_then(weakness_of)
    }

    /// The value to send upstream.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// Checks a presented token: in constant time against a value of its length (aws-lc's
    /// `CRYPTO_memcmp`, cheaper than `subtle`'s byte-at-a-time comparison: see the README).
    pub fn matches(&self, presented: &[u8]) -> Option<SharedMatch> {
        let current = verify_slices_are_equal(&self.current, presented).is_ok();
        let previous = self
            .previous
            .as_deref()
            .is_some_and(|p| verify_slices_are_equal(p, presented).is_ok());
        if current {
            Some(SharedMatch::Current)
        } else if previous {
            Some(SharedMatch::Previous)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_current_and_previous_only() {
        let mut t = SharedToken::from_value("s3cret-token-value").unwrap();
        assert_eq!(t.matches(b"s3cret-token-value"), Some(SharedMatch::Current));
        assert_eq!(t.matches(b"s3cret-token-valu"), None);
        assert_eq!(t.matches(b""), None);
        assert_eq!(t.matches(b"s3cret-token-valuE"), None);
        t.previous = Some(b"old".as_slice().into());
        assert_eq!(t.matches(b"old"), Some(SharedMatch::Previous));
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
