//! Brute-force protection for the exchange endpoints: failures are counted per login and per
//! client address; past `max_failures` within `window`, both are locked out for `lockout`.
//!
//! With `[cluster]`, the counters are also kept in Redis, shared by every instance (see
//! `cluster::lockout`): a lock-out anywhere is one everywhere. The local counters go on
//! counting, and decide alone while Redis is unreachable.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::cluster::lockout::{Limits, Subject};
use crate::config::LoginConfig;

/// Longest login kept as a key: longer ones cannot be in the directory anyway.
const MAX_LOGIN_KEY: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Login(Box<str>),
    Addr(IpAddr),
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// Failure counters, bounded in number: under a flood of distinct logins and addresses the
/// least useful entries are evicted, and memory stays flat. Built with each configuration, the
/// counters carried over from the one it replaces (see [`Throttle::inherit`]).
pub struct Throttle {
    entries: moka::sync::Cache<Key, Arc<Mutex<Entry>>>,
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    /// The other instances' counters, with `[cluster]`.
    cluster: Option<Cluster>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("tracked", &self.entries.entry_count())
            .finish()
    }
}

impl Throttle {
    /// Empty counters with `config`'s limits; at most `max_tracked` logins and addresses.
    pub fn new(config: &LoginConfig) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(config.max_tracked)
                .time_to_idle(config.window.max(config.lockout))
                .build(),
            max_failures: config.max_failures,
            window: config.window,
            lockout: config.lockout,
            cluster: None,
        }
    }

    /// Counts in `cluster` too, shared with the other instances.
    pub fn share(&mut self, cluster: Cluster) {
        self.cluster = Some(cluster);
    }

    /// Takes over the counters of the configuration this one replaces: a reload must not forgive
    /// past failures nor lift a lock-out. (Their bound, `max_tracked`, stays the first one's.)
    pub fn inherit(&mut self, old: &Throttle) {
        self.entries = old.entries.clone();
    }

    /// `Err(retry_after)` while the login or the address is locked out, here or (with a
    /// cluster) on any instance.
    pub async fn check(&self, login: &str, addr: IpAddr) -> Result<(), Duration> {
        let (login, addr) = (login_key(login), addr_key(addr));
        self.check_keys(&[login, addr]).await
    }

    /// `Err(retry_after)` while the address is locked out: for exchanges where the login is
    /// only known once the credential is proven.
    pub async fn check_addr(&self, addr: IpAddr) -> Result<(), Duration> {
        self.check_keys(&[addr_key(addr)]).await
    }

    async fn check_keys(&self, keys: &[Key]) -> Result<(), Duration> {
        let now = Instant::now();
        let local = keys.iter().filter_map(|k| self.locked_for(k, now)).max();
        let shared = match &self.cluster {
            // Unavailable: the local counters decide alone.
            Some(cluster) => cluster
                .locked(&keys.iter().map(Key::subject).collect::<Vec<_>>())
                .await
                .unwrap_or(None),
            None => None,
        };
        match local.max(shared) {
            Some(remaining) => Err(remaining),
            None => Ok(()),
        }
    }

    fn locked_for(&self, key: &Key, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        let entry = entry.lock().expect("throttle entry");
        entry
            .locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// A failure of `login` from `addr`: counted for both.
    pub async fn record_failure(&self, login: &str, addr: IpAddr) {
        self.record_keys(&[login_key(login), addr_key(addr)]).await;
    }

    /// A failure whose login is unknown (e.g. a refused CAS ticket): counted per address only.
    pub async fn record_addr_failure(&self, addr: IpAddr) {
        self.record_keys(&[addr_key(addr)]).await;
    }

    async fn record_keys(&self, keys: &[Key]) {
        for key in keys {
            self.record(key.clone());
        }
        if let Some(cluster) = &self.cluster {
            let limits = Limits {
                max_failures: self.max_failures,
                window: self.window,
                lockout: self.lockout,
            };
            let subjects: Vec<Subject<'_>> = keys.iter().map(Key::subject).collect();
            // Unavailable: counted here only.
            let _ = cluster.failed(&subjects, limits).await;
        }
    }

    fn record(&self, key: Key) {
        let now = Instant::now();
        let entry = self.entries.get_with(key, || {
            Arc::new(Mutex::new(Entry {
                failures: 0,
                window_start: now,
                locked_until: None,
            }))
        });
        let mut entry = entry.lock().expect("throttle entry");
        if now.duration_since(entry.window_start) > self.window {
            entry.failures = 0;
            entry.window_start = now;
        }
        entry.failures += 1;
        if entry.failures >= self.max_failures {
            entry.locked_until = Some(now + self.lockout);
            entry.failures = 0;
            entry.window_start = now;
        }
    }

    /// A success clears the login's failures (not the address's: one good password must not
    /// unlock guessing for others from the same place), unless the login is locked out: a
    /// lock-out in force ends at its time, whatever succeeds meanwhile.
    pub async fn record_success(&self, login: &str) {
        let key = login_key(login);
        if self.locked_for(&key, Instant::now()).is_none() {
            self.entries.invalidate(&key);
        }
        if let Some(cluster) = &self.cluster {
            let _ = cluster.succeeded(key.subject()).await;
        }
    }

    /// Entries tracked (approximate).
    #[cfg(test)]
    fn tracked(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

impl Key {
    fn subject(&self) -> Subject<'_> {
        match self {
            Key::Login(login) => Subject::Login(login),
            Key::Addr(addr) => Subject::Addr(*addr),
        }
    }
}

fn login_key(login: &str) -> Key {
    let end = if login.len() <= MAX_LOGIN_KEY {
        login.len()
    } else {
        (0..=MAX_LOGIN_KEY)
            .rev()
            .find(|&i| login.is_char_boundary(i))
            .unwrap_or(0)
    };
    Key::Login(login[..end].into())
}

/// IPv6 clients usually own a whole /64: count them as one.
fn addr_key(addr: IpAddr) -> Key {
    match addr {
        IpAddr::V4(_) => Key::Addr(addr),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::Addr(IpAddr::V4(v4)),
            None => {
                let masked = u128::from(v6) & !((1u128 << 64) - 1);
                Key::Addr(IpAddr::V6(masked.into()))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoginConfig {
        LoginConfig {
            max_failures: 3,
            ..LoginConfig::default()
        }
    }

    #[tokio::test]
    async fn locks_a_login_after_max_failures_and_success_resets() {
        let t = Throttle::new(&config());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        t.record_failure("alice", a).await;
        t.record_failure("alice", b).await;
        t.record_success("alice").await;
        t.record_failure("alice", b).await;
        assert!(t.check("alice", "10.0.0.9".parse().unwrap()).await.is_ok());
        t.record_failure("alice", a).await;
        t.record_failure("alice", "10.0.0.3".parse().unwrap()).await;
        let retry = t
            .check("alice", "10.0.0.9".parse().unwrap())
            .await
            .unwrap_err();
        assert!(retry > Duration::from_secs(290));
        assert!(t.check("bob", "10.0.0.9".parse().unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn locks_an_address_whatever_the_logins() {
        let t = Throttle::new(&config());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for login in ["a", "b", "c"] {
            t.record_failure(login, ip).await;
        }
        assert!(
            t.check("d", "2001:db8::ffff".parse().unwrap())
                .await
                .is_err(),
            "same /64"
        );
        assert!(t.check("d", "2001:db9::1".parse().unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn address_only_failures_lock_the_address_and_no_login() {
        let t = Throttle::new(&config());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check_addr(ip).await.is_ok());
            t.record_addr_failure(ip).await;
        }
        assert!(t.check_addr(ip).await.is_err());
        assert!(t.check("alice", ip).await.is_err());
        assert!(t.check("alice", "10.0.0.2".parse().unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn a_success_never_lifts_a_lockout_in_force() {
        let t = Throttle::new(&config());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            t.record_failure("alice", ip).await;
        }
        t.record_success("alice").await;
        assert!(t.check("alice", "10.0.0.2".parse().unwrap()).await.is_err());
    }

    #[tokio::test]
    async fn a_new_configuration_keeps_the_counters_and_lockouts() {
        let old = Throttle::new(&config());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        old.record_failure("alice", ip).await;
        old.record_failure("alice", ip).await;
        let mut new = Throttle::new(&config());
        new.inherit(&old);
        new.record_failure("alice", "10.0.0.2".parse().unwrap())
            .await;
        assert!(
            new.check("alice", "10.0.0.3".parse().unwrap())
                .await
                .is_err()
        );
        assert!(
            new.check_addr(ip).await.is_ok(),
            "two failures from ip, three needed"
        );
    }

    #[tokio::test]
    async fn memory_stays_bounded() {
        let c = LoginConfig {
            max_tracked: 1000,
            ..config()
        };
        let t = Throttle::new(&c);
        for i in 0..20_000u32 {
            t.record_failure(&format!("user{i}"), IpAddr::V4(i.into()))
                .await;
        }
        assert!(t.tracked() <= 1000, "{}", t.tracked());
    }
}
