//! What the benchmarks share: a closed-loop load generator over loopback.
// Each bench uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Seconds each measured load lasts.
pub const SECONDS: u64 = 5;

/// Requests made by `concurrency` clients for `SECONDS`, each a call of `request(i)`: how many
/// per second, and the latency percentiles.
pub async fn load<F, Fut>(concurrency: usize, request: F) -> (f64, Duration, Duration)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while Instant::now() < deadline {
                let t = Instant::now();
                assert!(request(i).await, "a request failed");
                latencies.push(t.elapsed());
                i += concurrency;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (latencies.len() as f64 / elapsed, at(0.50), at(0.99))
}

/// The release binary on `config`, signing with `key`, its users in `users.toml`, logging
/// warnings and where it listens: each bench adds its own environment, then starts it.
pub fn gate(config: impl Into<String>, key: &str, users: &str) -> crate::common::UcgateBuilder {
    crate::common::Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", key)
        .env("UCGATE_LOG", "warn,ucgate::server=info")
        .file("users.toml", users)
}

/// A UC token for `agent{n}` (password `password`), from the login endpoint at `login_url`.
pub async fn agent_token(client: &reqwest::Client, login_url: &str, n: usize) -> String {
    let body: serde_json::Value = client
        .post(login_url)
        .json(&serde_json::json!({"login": format!("agent{n}"), "password": "password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["token"].as_str().expect("a token").to_owned()
}

/// The status of a GET of `url` with `token` in `X-Auth-Token`.
pub async fn status(client: &reqwest::Client, url: &str, token: &str) -> u16 {
    client
        .get(url)
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Runs a bench's `body` on a tokio runtime; nothing under `--list`, as `cargo nextest run
/// --all-targets` lists bench targets, which have no test.
pub fn run(body: impl Future<Output = ()>) {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(body);
}

/// A users file of `agent0` .. `agent{count - 1}`, CTI login enabled, profile `agent`, all
/// with the password whose argon2 hash is `hash`.
pub fn agent_users(hash: &str, count: usize) -> String {
    (0..count)
        .map(|n| {
            format!(
                "[[user]]\nlogin = \"agent{n}\"\npassword_hash = \"{}\"\ncti_enabled = true\nprofile = \"agent\"\n",
                hash.trim()
            )
        })
        .collect()
}
