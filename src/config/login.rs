//! `[login]`: brute-force protection of the exchange endpoints.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// The `[login]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Failures allowed per login and per client address within `window`.
    pub max_failures: u32,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    #[serde(deserialize_with = "duration")]
    pub lockout: Duration,
    /// Logins and addresses tracked at most: memory stays bounded under a flood.
    pub max_tracked: u64,
    /// Largest accepted login request body, in bytes.
    pub max_body: usize,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(300),
            lockout: Duration::from_secs(300),
            max_tracked: 100_000,
            max_body: 16 * 1024,
        }
    }
}

impl LoginConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_failures == 0 {
            return Err("login.max_failures: must be at least 1".into());
        }
        if self.window.is_zero() || self.lockout.is_zero() {
            return Err("login.window, login.lockout: must be more than zero".into());
        }
        if self.max_tracked == 0 || self.max_body == 0 {
            return Err("login.max_tracked, login.max_body: must be more than zero".into());
        }
        Ok(())
    }
}
