//! Trusting xuc (issue 20): requests/s through ucgate with xuc tokens (cached after their first
//! check) against ucgate's own tokens, in one run, alternated; and the first request of an xuc
//! token (one remote check). The stand-in xuc is a second ucgate, as in `tests/xuc.rs`; both
//! are the release binary on loopback.
//!
//! `cargo bench --bench xuc`. Prints markdown tables; nothing is asserted: figures, not tests.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use support::{agent_token, agent_users, load, status};

const XUC_KEY: &str = "bench-xuc-stand-in-key-0123456789abcdef012";
const GATE_KEY: &str = "bench-xuc-ucgate-key-0123456789abcdef0123";
const TOKENS: usize = 100;
const COLD: usize = 100;
/// Paces first requests under ucgate's limit of remote checks per client address (20/s).
const PACE: Duration = Duration::from_millis(60);

fn users() -> String {
    let hash = String::from_utf8(hash_password_run("password\n").stdout).unwrap();
    agent_users(&hash, TOKENS + COLD)
}

async fn start(config: String, key: &str, users: &str) -> Ucgate {
    support::gate(config, key, users).start().await
}

fn main() {
    support::run(async {
        let users = users();
        let up = Upstream::start().await;
        let login_only =
            "[tokens]\n\n[users]\nfile = \"users.toml\"\n\n[login]\nmax_failures = 1000000\n";
        let xuc = start(
            ConfigBuilder::new()
                .route(route("unused", "/unused/", &closed_url()))
                .raw(login_only)
                .build(),
            XUC_KEY,
            &users,
        )
        .await;
        let gate = start(
            ConfigBuilder::new()
                .server("workers = 1")
                .route(
                    route("api", "/api/", &up.url())
                        .accept(&["uc"])
                        .upstream_auth("none"),
                )
                .raw(&format!(
                    "{login_only}\n[xuc]\nurl = \"{}\"\ncheck_cache = \"10m\"\n",
                    xuc.base_url()
                ))
                .build(),
            GATE_KEY,
            &users,
        )
        .await;
        let client = client();
        let url = gate.url("/api/x");

        // First requests: each one remote check at the stand-in.
        let mut first = Vec::with_capacity(COLD);
        for n in TOKENS..TOKENS + COLD {
            let t = agent_token(&client, &xuc.url("/xuc/api/2.0/auth/login"), n).await;
            tokio::time::sleep(PACE).await;
            let since = Instant::now();
            assert_eq!(status(&client, &url, &t).await, 200);
            first.push(since.elapsed());
        }
        first.sort();
        let at = |q: f64| first[((first.len() as f64 * q) as usize).min(first.len() - 1)];
        println!(
            "| first request of an xuc token ({COLD} tokens, one remote check each) | p50 | p99 |"
        );
        println!("|---|---:|---:|");
        println!(
            "| check at xuc + directory + forward | {:.2?} | {:.2?} |\n",
            at(0.5),
            at(0.99)
        );

        let mut own = Vec::with_capacity(TOKENS);
        let mut theirs = Vec::with_capacity(TOKENS);
        for n in 0..TOKENS {
            own.push(agent_token(&client, &gate.url("/xuc/api/2.0/auth/login"), n).await);
            let t = agent_token(&client, &xuc.url("/xuc/api/2.0/auth/login"), n).await;
            tokio::time::sleep(PACE).await;
            assert_eq!(status(&client, &url, &t).await, 200, "warm-up");
            theirs.push(t);
        }
        let (own, theirs) = (Arc::new(own), Arc::new(theirs));
        println!(
            "| requests, {TOKENS} tokens, 16 clients, ucgate on 1 worker | per second | p50 | p99 |"
        );
        println!("|---|---:|---:|---:|");
        // Alternated, so that drift of the machine shows as a difference between rounds.
        for round in 1..=3 {
            for (what, tokens) in [
                ("xuc tokens (cached)", &theirs),
                ("ucgate's own tokens", &own),
            ] {
                let (url, tokens, client) = (url.clone(), tokens.clone(), client.clone());
                let request = move |i: usize| {
                    let (url, tokens, client) = (url.clone(), tokens.clone(), client.clone());
                    async move { status(&client, &url, &tokens[i % TOKENS]).await == 200 }
                };
                let (rate, p50, p99) = load(16, request).await;
                println!("| {what}, round {round} | {rate:.0} | {p50:.2?} | {p99:.2?} |");
            }
        }
        let checks = metric(&gate, "ucgate_xuc_checks_total{outcome=\"vouched\"}").await;
        println!("\nremote checks during the whole run: {checks} (one per xuc token)");
    });
}
