//! `[tokens]`: how UC tokens are signed, how long they live, how many validations are cached.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::optional_duration;

/// How UC tokens are signed and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAlgorithm {
    /// A secret shared by every instance, read from an environment variable.
    Hs256 { signing_key_env: String },
    /// Key pairs from PEM files, so that other components can verify with the public key alone.
    EdDsa {
        private_key: PathBuf,
        public_key: PathBuf,
    },
    Rs256 {
        private_key: PathBuf,
        public_key: PathBuf,
    },
}

impl TokenAlgorithm {
    /// The JOSE name (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn name(&self) -> &'static str {
        match self {
            TokenAlgorithm::Hs256 { .. } => "HS256",
            TokenAlgorithm::EdDsa { .. } => "EdDSA",
            TokenAlgorithm::Rs256 { .. } => "RS256",
        }
    }
}

/// The validated `[tokens]` section.
#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub algorithm: TokenAlgorithm,
    /// The `iss` of every token, and the only one accepted.
    pub issuer: String,
    /// The longest lifetime a token gets.
    pub ttl: Duration,
    /// The longest a session lasts from its authentication, renewals included.
    pub max_session: Duration,
    /// Clock skew tolerated on `exp`.
    pub leeway: Duration,
    /// Validations cached at most.
    pub cache_capacity: u64,
    /// Where revocations (logouts) are kept across restarts; absent = in memory only.
    pub revocations_file: Option<PathBuf>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            algorithm: TokenAlgorithm::Hs256 {
                signing_key_env: "UCGATE_SIGNING_KEY".into(),
            },
            issuer: "ucgate".into(),
            ttl: Duration::from_secs(8 * 3600),
            max_session: Duration::from_secs(7 * 24 * 3600),
            leeway: Duration::from_secs(5),
            cache_capacity: 100_000,
            revocations_file: None,
        }
    }
}

/// `[tokens]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    #[serde(default = "default_algorithm")]
    algorithm: String,
    signing_key_env: Option<String>,
    private_key: Option<PathBuf>,
    public_key: Option<PathBuf>,
    issuer: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    max_session: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    leeway: Option<Duration>,
    cache_capacity: Option<u64>,
    revocations_file: Option<PathBuf>,
}

fn default_algorithm() -> String {
    "HS256".into()
}

impl RawTokens {
    /// Checks the section; key files resolve against the config file's folder `base`. Errors
    /// start with the key (`tokens.ttl: ...`).
    pub(super) fn validate(self, base: &Path) -> Result<TokensConfig, String> {
        let defaults = TokensConfig::default();
        let pair = |alg: &str| -> Result<(PathBuf, PathBuf), String> {
            match (&self.private_key, &self.public_key) {
                (Some(private), Some(public)) => Ok((base.join(private), base.join(public))),
                _ => Err(format!(
                    "tokens: algorithm {alg} needs private_key and public_key (PEM files)"
                )),
            }
        };
        let algorithm = match self.algorithm.as_str() {
            "HS256" => {
                if self.private_key.is_some() || self.public_key.is_some() {
                    return Err("tokens: private_key and public_key are for EdDSA and RS256; HS256 uses signing_key_env".into());
                }
                TokenAlgorithm::Hs256 {
                    signing_key_env: self
                        .signing_key_env
                        .clone()
                        .unwrap_or_else(|| "UCGATE_SIGNING_KEY".into()),
                }
            }
            "EdDSA" => {
                let (private_key, public_key) = pair("EdDSA")?;
                TokenAlgorithm::EdDsa {
                    private_key,
                    public_key,
                }
            }
            "RS256" => {
                let (private_key, public_key) = pair("RS256")?;
                TokenAlgorithm::Rs256 {
                    private_key,
                    public_key,
                }
            }
            // The value is not repeated: whatever was typed there may be a secret.
            _ => {
                return Err(
                    "tokens.algorithm: must be one of \"HS256\", \"EdDSA\", \"RS256\"".into(),
                );
            }
        };
        if !matches!(algorithm, TokenAlgorithm::Hs256 { .. }) && self.signing_key_env.is_some() {
            return Err("tokens.signing_key_env: only for HS256".into());
        }
        let config = TokensConfig {
            algorithm,
            issuer: self.issuer.unwrap_or(defaults.issuer),
            ttl: self.ttl.unwrap_or(defaults.ttl),
            max_session: self.max_session.unwrap_or(defaults.max_session),
            leeway: self.leeway.unwrap_or(defaults.leeway),
            cache_capacity: self.cache_capacity.unwrap_or(defaults.cache_capacity),
            revocations_file: self.revocations_file.map(|f| base.join(f)),
        };
        if config.ttl < Duration::from_secs(1) {
            return Err("tokens.ttl: must be at least one second".into());
        }
        if config.max_session < config.ttl {
            return Err(format!(
                "tokens.ttl: {} is longer than tokens.max_session ({}), which a session's tokens \
                 never outlive: lower ttl or raise max_session",
                humantime::format_duration(config.ttl),
                humantime::format_duration(config.max_session)
            ));
        }
        if config.leeway > Duration::from_secs(300) {
            return Err(
                "tokens.leeway: more than 5 minutes would keep expired tokens alive".into(),
            );
        }
        if config.issuer.is_empty() {
            return Err("tokens.issuer: must not be empty".into());
        }
        Ok(config)
    }
}
