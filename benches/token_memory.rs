//! Memory per cached UC token, in one process, as its resident set grows: first a bare moka
//! cache holding what the validation cache holds for nothing (its keys, its per-entry expiry, a
//! value of the same size), then ucgate's token service validating distinct tokens as ucgate
//! issues them (a session each), one login for all and then one login each with `users.recheck`
//! on (a directory cell per login). Each stage stays alive while the next one is measured, so
//! that what one frees is not reused by the next.
//!
//! `cargo bench --bench token_memory` (`TOKENS=` sets how many, 100,000 by default)

use std::time::{Duration, Instant};

use ucgate::config::{TokenAlgorithm, TokensConfig};
use ucgate::{Method, Standing, TokenService};

/// As ucgate: the allocator decides what a cached entry really costs.
#[global_allocator]
static ALLOCATOR: ucgate::Allocator = ucgate::Allocator;

/// The size of the validation cache's value (a fingerprint, a revision, the claims and the
/// login's cell, the freshness of a vouched token).
type Value = [u64; 5];

struct UntilExpiry;

impl moka::Expiry<u128, Value> for UntilExpiry {
    fn expire_after_create(&self, _: &u128, _: &Value, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

/// The resident set, in bytes (Linux).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// A token service caching `capacity` tokens, as `tokens.cache_capacity` (its default is
/// 100,000).
fn service(capacity: u64, recheck: bool) -> TokenService {
    // SAFETY: set before any other thread of this bench reads the environment.
    unsafe {
        std::env::set_var(
            "UCGATE_BENCH_SIGNING_KEY",
            "bench-signing-key-of-at-least-32-bytes!!",
        )
    };
    let config = TokensConfig {
        algorithm: TokenAlgorithm::Hs256 {
            signing_key_env: "UCGATE_BENCH_SIGNING_KEY".into(),
        },
        ttl: Duration::from_secs(8 * 3600),
        cache_capacity: capacity,
        ..TokensConfig::default()
    };
    let mut tokens = TokenService::load(&config).expect("a token service");
    if recheck {
        tokens.follow(Standing::new(
            capacity,
            Duration::from_secs(8 * 3600),
            Duration::from_secs(60),
        ));
    }
    tokens
}

/// Validates every token, then lets moka's housekeeping run (it admits entries in batches, at
/// the next operation after a pause).
fn fill(service: &TokenService, tokens: &[String]) {
    for token in tokens {
        service.validate(token).expect("a valid token");
    }
    std::thread::sleep(Duration::from_millis(600));
    service.validate(&tokens[0]).expect("a valid token");
}

fn main() {
    // `cargo nextest run --all-targets` lists bench targets: this one has no test.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let count: usize = std::env::var("TOKENS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    // The tokens' text is the clients', not the cache's: made before anything is measured.
    let one_login = service(count as u64, false);
    let many_logins = service(count as u64, true);
    let shared_login: Vec<String> = (0..count)
        .map(|_| {
            let issued = one_login.issue("alice", "agent", Method::Password, None);
            issued.expect("a token").token
        })
        .collect();
    let own_login: Vec<String> = (0..count)
        .map(|i| {
            let issued = many_logins.issue(&format!("user{i}"), "agent", Method::Password, None);
            issued.expect("a token").token
        })
        .collect();
    let per_entry = |before: u64| (rss().saturating_sub(before)) as f64 / count as f64;

    let before = rss();
    let bare = moka::sync::Cache::builder()
        .max_capacity(count as u64)
        .expire_after(UntilExpiry)
        .build();
    let multiplier = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835_u128;
    for i in 0..count as u128 {
        bare.insert(i.wrapping_mul(multiplier), [0; 5]);
    }
    bare.run_pending_tasks();
    let bare_bytes = per_entry(before);

    let before = rss();
    fill(&one_login, &shared_login);
    let one_bytes = per_entry(before);

    let before = rss();
    fill(&many_logins, &own_login);
    let many_bytes = per_entry(before);

    println!("{count} distinct UC tokens cached, resident bytes per token:");
    println!(
        "  a bare moka cache, u128 keys, per-entry expiry, a {}-byte value: {bare_bytes:.0}",
        std::mem::size_of::<Value>()
    );
    println!("  ucgate, one login for all the tokens: {one_bytes:.0}");
    println!("  ucgate, users.recheck on, a login per token: {many_bytes:.0}");
    assert_eq!(bare.entry_count(), count as u64, "every entry admitted");
    assert_eq!(one_login.cached(), count as u64, "every token cached");
    assert_eq!(many_logins.cached(), count as u64, "every token cached");
}
