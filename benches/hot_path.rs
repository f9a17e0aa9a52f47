//! The pieces of the request path that every proxied request pays for.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};

use ucgate::config::{Config, TokensConfig};
use ucgate::{
    Method, RouteTable, SharedToken, Standing, TokenService, normalise_path, upstream_tls,
};

const SHARED: &str = "d7f3a9c1e5b2046f8a1c3e5d7b9f0a2c4e6d8b0f";

fn shared_token(c: &mut Criterion) {
    let shared = SharedToken::from_value(SHARED).unwrap();
    c.bench_function("shared_token/match", |b| {
        b.iter(|| shared.matches(black_box(SHARED.as_bytes())))
    });
    c.bench_function("shared_token/mismatch", |b| {
        b.iter(|| shared.matches(black_box(b"d7f3a9c1e5b2046f8a1c3e5d7b9f0a2c4e6d8b0e")))
    });
}

fn tokens() -> TokenService {
    // SAFETY: set before any other thread of this bench reads the environment.
    unsafe {
        std::env::set_var(
            "UCGATE_BENCH_SIGNING_KEY",
            "bench-signing-key-of-at-least-32-bytes!!",
        )
    };
    let config = TokensConfig {
        algorithm: ucgate::config::TokenAlgorithm::Hs256 {
            signing_key_env: "UCGATE_BENCH_SIGNING_KEY".into(),
        },
        ..TokensConfig::default()
    };
    TokenService::load(&config).unwrap()
}

fn uc_token(c: &mut Criterion) {
    let tokens = tokens();
    let token = tokens
        .issue("alice", "agent", Method::Password, None)
        .unwrap()
        .token;
    tokens.validate(&token).unwrap();
    c.bench_function("uc_token/validate_cache_hit", |b| {
        b.iter(|| tokens.validate(black_box(&token)).unwrap())
    });
    // With `users.recheck` on: the directory's last word on the login, beside the cached token.
    let mut followed = self::tokens();
    followed.follow(Standing::new(
        100_000,
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(60),
    ));
    let token = followed
        .issue("alice", "agent", Method::Password, None)
        .unwrap()
        .token;
    followed.validate(&token).unwrap();
    c.bench_function("uc_token/validate_cache_hit_recheck_on", |b| {
        b.iter(|| followed.validate(black_box(&token)).unwrap())
    });
    // A miss: a fresh service every batch so that nothing is cached (the set-up is not timed).
    c.bench_function("uc_token/validate_cache_miss", |b| {
        b.iter_batched(
            || {
                let fresh = self::tokens();
                let t = fresh
                    .issue("alice", "agent", Method::Password, None)
                    .unwrap()
                    .token;
                (fresh, t)
            },
            // The service is returned, so that criterion drops it (its caches) untimed.
            |(fresh, t)| {
                let claims = fresh.validate(&t).unwrap();
                (fresh, claims)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn routes_config(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nprefix = \"/api{}/service{i}/v{}/\"\nupstream = \"http://127.0.0.1:{}\"\naccept = [\"shared\"]\nupstream_auth = \"shared\"\n",
            i % 7,
            i % 3,
            10000 + i
        ));
    }
    text
}

fn route_matching(c: &mut Criterion) {
    for n in [10, 1000] {
        let config = Config::parse(Path::new("bench.toml"), &routes_config(n)).unwrap();
        let routes = RouteTable::build(
            &config.routes,
            &upstream_tls(None).unwrap(),
            config.server.request_body_timeout,
        );
        let hit = format!(
            "/api{}/service{}/v{}/users/42/lines",
            (n - 1) % 7,
            n - 1,
            (n - 1) % 3
        );
        c.bench_function(&format!("routes/{n}/hit"), |b| {
            b.iter(|| routes.find(black_box(&hit)).unwrap())
        });
        c.bench_function(&format!("routes/{n}/miss"), |b| {
            b.iter(|| routes.find(black_box("/nowhere/at/all/x")).is_none())
        });
    }
}

fn path_normalisation(c: &mut Criterion) {
    c.bench_function("normalise/clean", |b| {
        b.iter(|| normalise_path(black_box("/configmgt/api/1.0/users/42/lines")).unwrap())
    });
    c.bench_function("normalise/dirty", |b| {
        b.iter(|| normalise_path(black_box("/configmgt//api/./1.0/%75sers/x/../42/lines")).unwrap())
    });
}

criterion_group!(
    benches,
    shared_token,
    uc_token,
    route_matching,
    path_normalisation
);
criterion_main!(benches);
