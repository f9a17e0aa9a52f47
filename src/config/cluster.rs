//! `[cluster]`: several ucgate instances sharing revocations and lock-outs through Redis.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// The `[cluster]` section. Absent: one instance, everything in its own memory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The environment variable (or that name in `shared_token.env_files`) holding the Redis
    /// URL: `redis://[:password@]host[:port][/db]`, `rediss://` for TLS. Never logged.
    pub redis_url_env: String,
    /// Prepended to every key and channel, so that several deployments can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// How long one Redis command may take before ucgate goes on without Redis (lock-outs are
    /// then counted locally); also the connection timeout.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_prefix() -> String {
    "ucgate:".into()
}

fn default_timeout() -> Duration {
    Duration::from_millis(500)
}

impl ClusterConfig {
    /// Errors start with the key within the section (`key_prefix: ...`).
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.redis_url_env.is_empty() {
            return Err("redis_url_env: must name an environment variable".into());
        }
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "*?[]\\".contains(c))
        {
            // It is also a SCAN pattern.
            return Err("key_prefix: no spaces, control or glob characters (*?[]\\)".into());
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(10) {
            return Err("timeout: between 10ms and 10s".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        let c: ClusterConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn defaults_and_limits() {
        let c = parse("redis_url_env = \"UCGATE_REDIS_URL\"").unwrap();
        assert_eq!(c.key_prefix, "ucgate:");
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert!(parse("").is_err(), "redis_url_env is required");
        assert!(
            parse("redis_url_env = \"\"")
                .unwrap_err()
                .contains("redis_url_env")
        );
        assert!(
            parse("redis_url_env = \"U\"\nkey_prefix = \"a b\"")
                .unwrap_err()
                .contains("key_prefix")
        );
        assert!(
            parse("redis_url_env = \"U\"\ntimeout = \"1h\"")
                .unwrap_err()
                .contains("timeout")
        );
        assert!(parse("redis_url_env = \"U\"\nkey_prefix = \"a*\"").is_err());
        assert!(parse("redis_url_env = \"U\"\nredis_url = \"redis://x\"").is_err());
    }
}
