//! `[users]`: the user directory.

use std::path::PathBuf;

use serde::Deserialize;

/// The `[users]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    /// The TOML users file (see `directory::file`), resolved against the config file's folder.
    pub file: PathBuf,
}
