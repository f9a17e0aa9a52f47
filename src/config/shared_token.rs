//! `[shared_token]`: where XiVO's `PLAY_AUTH_TOKEN` is read from.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `[shared_token]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedTokenConfig {
    /// The environment variable holding the token.
    pub env: String,
    /// dotenv files (XiVO's `custom.env`) read, in order, when `env` is unset.
    pub env_files: Vec<PathBuf>,
    /// A second variable whose value is also accepted, during a rotation.
    pub previous_env: Option<String>,
}

impl Default for SharedTokenConfig {
    fn default() -> Self {
        Self {
            env: "PLAY_AUTH_TOKEN".into(),
            env_files: Vec::new(),
            previous_env: None,
        }
    }
}

impl SharedTokenConfig {
    /// Resolves the env files against the config file's folder `base`.
    pub(super) fn validate(&mut self, base: &Path) -> Result<(), String> {
        self.env_files = self.env_files.iter().map(|p| base.join(p)).collect();
        if self.env.is_empty() {
            return Err("shared_token.env: must name an environment variable".into());
        }
        Ok(())
    }
}
