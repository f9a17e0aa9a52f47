//! Replicas (issue 17): the UC-token proxy path with `[cluster]` on and off, in one run, and how
//! long a logout on one instance takes to be refused by another (1,000 logouts), over a real
//! Redis (the tests' harness) and ucgate's release binary on loopback.
//!
//! `cargo bench --bench cluster` (needs scripts/install-idp-deps.sh's redis-server). Prints
//! markdown tables; nothing is asserted: figures, not tests.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/redis_support/mod.rs"]
mod redis_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use redis_support::Redis;
use support::{agent_token, agent_users, load, status};

const SIGNING_KEY: &str = "bench-cluster-signing-key-0123456789abcdef";
const LOGOUTS: usize = 1000;
const TOKENS: usize = 200;

fn gate_config(upstream: &str, cluster: bool) -> String {
    let cluster = if cluster {
        "\n[cluster]\nredis_url_env = \"UCGATE_REDIS_URL\"\n"
    } else {
        ""
    };
    ConfigBuilder::new()
        .server("workers = 1")
        .route(
            route("api", "/api/", upstream)
                .accept(&["uc"])
                .upstream_auth("none"),
        )
        .raw(&format!(
            "[tokens]\n\n[users]\nfile = \"users.toml\"\n\n[login]\nmax_failures = 1000000\n{cluster}"
        ))
        .build()
}

async fn start(upstream: &str, cluster: bool, redis: &Redis, users: &str) -> Ucgate {
    support::gate(gate_config(upstream, cluster), SIGNING_KEY, users)
        .env("UCGATE_REDIS_URL", &redis.url())
        .start()
        .await
}

fn main() {
    support::run(async {
        let redis = Redis::start();
        let hash = String::from_utf8(hash_password_run("password\n").stdout).unwrap();
        let users = agent_users(&hash, LOGOUTS.max(TOKENS));
        let up = Upstream::start().await;

        println!("| UC-token requests, {TOKENS} tokens, 16 clients | per second | p50 | p99 |");
        println!("|---|---:|---:|---:|");
        // Alternated, so that drift of the machine shows as a difference between rounds.
        for round in 1..=3 {
            for cluster in [true, false] {
                let gate = start(&up.url(), cluster, &redis, &users).await;
                let mut tokens = Vec::new();
                for n in 0..TOKENS {
                    tokens.push(
                        agent_token(&client(), &gate.url("/xuc/api/2.0/auth/login"), n).await,
                    );
                }
                let (url, tokens, client) = (gate.url("/api/x"), Arc::new(tokens), client());
                let request = move |i: usize| {
                    let (url, tokens, client) = (url.clone(), tokens.clone(), client.clone());
                    async move { status(&client, &url, &tokens[i % TOKENS]).await == 200 }
                };
                let (rate, p50, p99) = load(16, request).await;
                let what = if cluster { "on" } else { "off" };
                println!(
                    "| `[cluster]` {what}, round {round} | {rate:.0} | {p50:.2?} | {p99:.2?} |"
                );
            }
        }

        // Propagation: each token cached on B, revoked on A, then B asked until it refuses.
        let (a, b) = (
            start(&up.url(), true, &redis, &users).await,
            start(&up.url(), true, &redis, &users).await,
        );
        let client = client();
        let (on_b, logout) = (b.url("/api/x"), a.url("/xuc/api/2.0/auth/logout"));
        let mut took = Vec::with_capacity(LOGOUTS);
        for n in 0..LOGOUTS {
            let t = agent_token(&client, &a.url("/xuc/api/2.0/auth/login"), n).await;
            assert_eq!(status(&client, &on_b, &t).await, 200);
            let revoked = client
                .post(&logout)
                .header(X_AUTH_TOKEN, &t)
                .send()
                .await
                .unwrap();
            assert_eq!(revoked.status(), 204);
            // From the logout's answer: what a client racing it on another instance sees.
            let since = Instant::now();
            while status(&client, &on_b, &t).await != 401 {
                assert!(since.elapsed() < Duration::from_secs(5), "never refused");
            }
            took.push(since.elapsed());
        }
        took.sort();
        let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
        println!("\n| logout on A refused by B ({LOGOUTS} logouts) | p50 | p99 | max |");
        println!("|---|---:|---:|---:|");
        println!(
            "| after the logout's answer | {:.2?} | {:.2?} | {:.2?} |",
            at(0.50),
            at(0.99),
            took[took.len() - 1]
        );
    });
}
