//! Brute-force counters shared by the instances: `fail:<id>` counts failures within the window
//! (`PEXPIRE` set by the first one), `lock:<id>` is a lock-out (`PX` lockout), where `<id>` is
//! `l:<32 hex of SHA-256(login)>` or `a:<client address>`. Each operation is one Lua script, so
//! that concurrent failures on several instances are counted atomically, and the lock-out's
//! remaining time (`PTTL`) is the same whichever instance answers.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Cluster, Unavailable};
use crate::metrics::metrics;

/// Whose failures: a login or a client address (already reduced to what is counted: a login
/// truncated, an IPv6 /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Login(&'a str),
    Addr(IpAddr),
}

impl Subject<'_> {
    /// `l:<hex>` (the login hashed: any bytes, bounded length) or `a:<address>`.
    fn id(&self) -> String {
        match self {
            Subject::Login(login) => {
                let digest = Sha256::digest(login.as_bytes());
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                format!("l:{hex}")
            }
            Subject::Addr(addr) => format!("a:{addr}"),
        }
    }
}

/// The longest remaining lock-out among KEYS (lock keys), in milliseconds; 0 when none.
static LOCKED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local longest = 0
for _, key in ipairs(KEYS) do
  local ms = redis.call('PTTL', key)
  if ms > longest then longest = ms end
end
return longest
",
    )
});

/// A failure for each subject: KEYS are pairs (fail key, lock key); ARGV: max_failures, window
/// and lock-out in milliseconds. A counter reaching the maximum starts a lock-out and restarts.
static FAILED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
for i = 1, #KEYS, 2 do
  local failures = redis.call('INCR', KEYS[i])
  if failures == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
  if failures >= tonumber(ARGV[1]) then
    redis.call('SET', KEYS[i + 1], '1', 'PX', ARGV[3])
    redis.call('DEL', KEYS[i])
  end
end
return 0
",
    )
});

/// Clears the failures of KEYS[1] unless KEYS[2] (its lock-out) is running.
static SUCCEEDED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// The lock-out limits, as `[login]` sets them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

impl Cluster {
    /// The longest lock-out running for `subjects` on any instance; `Ok(None)` when none.
    /// `Unavailable` when Redis cannot tell now.
    pub async fn locked(&self, subjects: &[Subject<'_>]) -> Result<Option<Duration>, Unavailable> {
        let mut invocation = LOCKED.prepare_invoke();
        for subject in subjects {
            invocation.key(self.key(&format!("lock:{}", subject.id())));
        }
        let ms: i64 = self.invoke(&invocation).await?;
        Ok(u64::try_from(ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis))
    }

    /// Counts a failure for each of `subjects` on every instance.
    pub async fn failed(
        &self,
        subjects: &[Subject<'_>],
        limits: Limits,
    ) -> Result<(), Unavailable> {
        let mut invocation = FAILED.prepare_invoke();
        for subject in subjects {
            let id = subject.id();
            invocation
                .key(self.key(&format!("fail:{id}")))
                .key(self.key(&format!("lock:{id}")));
        }
        invocation
            .arg(limits.max_failures)
            .arg(limits.window.as_millis().max(1) as u64)
            .arg(limits.lockout.as_millis().max(1) as u64);
        self.invoke::<i64>(&invocation).await.map(drop)
    }

    /// A success clears `subject`'s failures, unless it is locked out.
    pub async fn succeeded(&self, subject: Subject<'_>) -> Result<(), Unavailable> {
        let id = subject.id();
        let mut invocation = SUCCEEDED.prepare_invoke();
        invocation
            .key(self.key(&format!("fail:{id}")))
            .key(self.key(&format!("lock:{id}")));
        self.invoke::<i64>(&invocation).await.map(drop)
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut connection = self.connection()?;
        // The connection's response timeout bounds the wait; the link notices an outage by
        // itself (its health check), this only reports it.
        invocation.invoke_async(&mut connection).await.map_err(|e| {
            metrics().cluster_error(super::kind(&e));
            Unavailable
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_named_without_their_bytes() {
        let long = "é".repeat(300);
        for login in ["alice", "", "a:b", long.as_str(), "x\r\ny"] {
            let id = Subject::Login(login).id();
            assert_eq!(id.len(), 34, "{id}");
            assert!(id[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(Subject::Login("alice").id(), Subject::Login("Alice").id());
        assert_eq!(
            Subject::Addr("2001:db8::".parse().unwrap()).id(),
            "a:2001:db8::"
        );
    }
}
