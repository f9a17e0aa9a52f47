//! Issue 17: three ucgate instances sharing revocations and lock-outs through a real Redis
//! (Debian's redis-server, started on a free loopback port without persistence).

mod common;
mod redis_support;

use std::time::{Duration, Instant};

use common::*;
use redis_support::{FakeRedis, Redis};
use serde_json::{Value, json};

const SIGNING_KEY: &str = "cluster-test-signing-key-0123456789abcdef";
const REDIS_PASSWORD: &str = "redis-S3CRET-pw";
const LOGIN: &str = "/xuc/api/2.0/auth/login";
const CHECK: &str = "/xuc/api/2.0/auth/check";
const LOGOUT: &str = "/xuc/api/2.0/auth/logout";
/// The longest any wait in these tests lasts before it fails them.
const BOUND: Duration = Duration::from_secs(10);

fn users() -> String {
    let hash = String::from_utf8(hash_password_run("alice-pw\n").stdout).unwrap();
    format!(
        "[[user]]\nlogin = \"alice\"\npassword_hash = \"{}\"\ncti_enabled = true\nprofile = \"agent\"\n",
        hash.trim()
    )
}

fn config(up: &str, login: &str) -> String {
    ConfigBuilder::new()
        .route(route("api", "/api/", up).accept(&["uc"]).upstream_auth("none"))
        .raw(&format!(
            "[tokens]\nleeway = \"0s\"\n\n[users]\nfile = \"users.toml\"\n\n[login]\n{login}\n\n\
             [cluster]\nredis_url_env = \"UCGATE_REDIS_URL\"\nkey_prefix = \"site1:\"\ntimeout = \"300ms\"\n"
        ))
        .build()
}

async fn instance(up: &Upstream, redis_url: &str, login: &str) -> Ucgate {
    Ucgate::builder(config(&up.url(), login))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("UCGATE_REDIS_URL", redis_url)
        .file("users.toml", users())
        .start()
        .await
}

/// Three instances on one Redis, each ready (caught up).
async fn three(up: &Upstream, redis_url: &str, login: &str) -> [Ucgate; 3] {
    let (a, b, c) = tokio::join!(
        instance(up, redis_url, login),
        instance(up, redis_url, login),
        instance(up, redis_url, login)
    );
    for gate in [&a, &b, &c] {
        wait_ready(gate).await;
    }
    [a, b, c]
}

async fn wait_ready(gate: &Ucgate) -> Value {
    let deadline = Instant::now() + BOUND;
    loop {
        let r = client().get(gate.url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            return r.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", gate.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn login(gate: &Ucgate, password: &str) -> reqwest::Response {
    client()
        .post(gate.url(LOGIN))
        .json(&json!({"login": "alice", "password": password}))
        .send()
        .await
        .unwrap()
}

async fn token(gate: &Ucgate) -> String {
    let r = login(gate, "alice-pw").await;
    assert_eq!(r.status(), 200, "{}", gate.logs());
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn status(gate: &Ucgate, token: &str) -> u16 {
    client()
        .get(gate.url("/api/x"))
        .header(X_AUTH_TOKEN, token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn logout(gate: &Ucgate, token: &str) {
    let r = client()
        .post(gate.url(LOGOUT))
        .header(X_AUTH_TOKEN, token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", gate.logs());
}

/// Waits (bounded) until `gate` refuses `token`; how long it took.
async fn refused_within(gate: &Ucgate, token: &str, bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match status(gate, token).await {
            401 => return start.elapsed(),
            200 => {}
            other => panic!("unexpected {other}"),
        }
        assert!(
            start.elapsed() < bound,
            "still accepted after {bound:?}:\n{}",
            gate.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_of(gate: &Ucgate) -> String {
    client()
        .get(gate.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn assert_no_secret(gate: &Ucgate, redis: &Redis, tokens: &[&str]) {
    let logs = gate.logs();
    for secret in [REDIS_PASSWORD, &redis.url(), SIGNING_KEY]
        .into_iter()
        .chain(tokens.iter().copied())
    {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn a_logout_on_one_instance_is_refused_by_the_others_within_a_second() {
    let redis = Redis::start_with_password(REDIS_PASSWORD);
    let up = Upstream::start().await;
    let [a, b, c] = three(&up, &redis.url(), "").await;
    let first = token(&a).await;
    // Cached on every instance: the revocation must reach their caches.
    for gate in [&a, &b, &c] {
        assert_eq!(status(gate, &first).await, 200);
    }
    // Renewed on B: the same session.
    let renewed = client()
        .get(b.url(CHECK))
        .header(X_AUTH_TOKEN, &first)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(status(&c, &renewed).await, 200);
    let other = token(&c).await;

    logout(&a, &first).await;
    assert_eq!(status(&a, &first).await, 401, "at once where it was made");
    for gate in [&b, &c] {
        let took = refused_within(gate, &first, Duration::from_secs(1)).await;
        eprintln!("propagated in {took:?}");
        // The whole session, cached or not.
        assert_eq!(status(gate, &renewed).await, 401);
        assert_eq!(status(gate, &other).await, 200, "another session stands");
    }
    // In Redis until the revoked token would expire, never longer.
    let keys = redis.cli(&["--scan", "--pattern", "site1:revoked:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 2, "the token and its session: {keys:?}");
    // The session's key is half a SHA-256 of its `sid` text (little-endian), as instances of
    // earlier releases, sharing this Redis, write and read it.
    let sid = {
        use base64::Engine;
        let payload = first.split('.').nth(1).unwrap();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<Value>(&payload).unwrap()["sid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let digest = <sha2::Sha256 as sha2::Digest>::digest(sid.as_bytes());
    let half = u128::from_le_bytes(digest[..16].try_into().unwrap());
    assert!(
        keys.contains(&format!("site1:revoked:s:{half:032x}").as_str()),
        "{sid}: {keys:?}"
    );
    for key in keys {
        let ttl: i64 = redis.cli(&["TTL", key]).parse().unwrap();
        // tokens.ttl is 8 h, max_session 7 d: at most that plus the leeway (0) and a second.
        assert!(ttl > 0 && ttl <= 7 * 24 * 3600 + 1, "{key}: {ttl}");
    }
    for gate in [&a, &b, &c] {
        assert_no_secret(gate, &redis, &[&first, &renewed, &other]);
    }
}

#[tokio::test]
async fn failures_spread_over_the_instances_lock_the_login_everywhere() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let [a, b, c] = three(&up, &redis.url(), "max_failures = 6\nlockout = \"60s\"").await;
    for gate in [&a, &b, &c, &a, &b, &c] {
        assert_eq!(login(gate, "wrong").await.status(), 401);
    }
    // Two failures per instance: no instance counted six by itself.
    let mut retry_after = Vec::new();
    for gate in [&a, &b, &c] {
        let r = login(gate, "alice-pw").await;
        assert_eq!(r.status(), 429, "{}", gate.logs());
        retry_after.push(
            r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        assert_error(r, 429, "TooManyAttempts").await;
    }
    let (min, max) = (
        *retry_after.iter().min().unwrap(),
        *retry_after.iter().max().unwrap(),
    );
    assert!(
        max <= 60 && max - min <= 1,
        "Retry-After agrees: {retry_after:?}"
    );
    // The counters are in Redis, hashed: no login in a key name.
    let keys = redis.cli(&["--scan", "--pattern", "site1:*"]);
    assert!(keys.contains("site1:lock:l:"), "{keys}");
    assert!(!keys.contains("alice"), "{keys}");
}

#[tokio::test]
async fn a_restarted_instance_refuses_revoked_tokens_before_it_is_ready() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let [a, b, _c] = three(&up, &redis.url(), "").await;
    let revoked = token(&a).await;
    assert_eq!(status(&b, &revoked).await, 200);
    logout(&a, &revoked).await;
    drop(b);
    // A new process, no revocations file: what it knows comes from Redis, read before ready.
    let b = instance(&up, &redis.url(), "").await;
    let ready = wait_ready(&b).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(status(&b, &revoked).await, 401);
    let fresh = token(&b).await;
    assert_eq!(status(&a, &fresh).await, 200);
}

#[tokio::test]
async fn redis_down_under_load_loses_no_request_and_no_revocation() {
    let mut redis = Redis::start_with_password(REDIS_PASSWORD);
    let up = Upstream::start().await;
    let [a, b, c] = three(&up, &redis.url(), "").await;
    let steady = token(&b).await;
    let doomed = token(&a).await;
    for gate in [&b, &c] {
        assert_eq!(status(gate, &doomed).await, 200);
    }
    // Steady load on B and C with a token nobody revokes.
    let load = {
        let (urls, steady) = ([b.url("/api/load"), c.url("/api/load")], steady.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let stop = Instant::now() + Duration::from_secs(4);
            while Instant::now() < stop {
                for url in &urls {
                    match client().get(url).header(X_AUTH_TOKEN, &steady).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    for gate in [&a, &b, &c] {
        wait_degraded(gate).await;
    }
    // Revoked during the outage: at once on A, unknown to B and C for now.
    logout(&a, &doomed).await;
    assert_eq!(status(&a, &doomed).await, 401);
    assert_eq!(status(&b, &doomed).await, 200);
    // Lock-outs are counted locally meanwhile: logins still work.
    let during = token(&c).await;
    assert_eq!(status(&c, &during).await, 200);
    let metrics = metrics_of(&b).await;
    assert_eq!(
        metric(&metrics, "ucgate_cluster_up"),
        Some(0.0),
        "{metrics}"
    );

    // Back, empty (no persistence): A writes its revocations back and the others learn them.
    redis.start_again();
    for gate in [&b, &c] {
        let took = refused_within(gate, &doomed, Duration::from_secs(5)).await;
        eprintln!("after the outage, propagated in {took:?}");
    }
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        ok
    );
    assert!(ok > 50, "{ok}");
    for gate in [&a, &b, &c] {
        let ready = wait_ready(gate).await;
        assert_eq!(ready["status"], "ready", "{ready}");
        let metrics = metrics_of(gate).await;
        assert_eq!(metric(&metrics, "ucgate_cluster_up"), Some(1.0));
        assert!(metric(&metrics, "ucgate_cluster_reconnects_total").unwrap() >= 1.0);
        assert!(
            metrics.contains("ucgate_cluster_errors_total{kind="),
            "{metrics}"
        );
        // One warning for the outage, not one per request or retry.
        let warnings = gate.logs().matches("cluster: Redis unreachable").count();
        assert_eq!(warnings, 1, "{}", gate.logs());
        assert_no_secret(gate, &redis, &[&steady, &doomed, &during]);
    }
}

/// Waits (bounded) until `gate` reports Redis down on `/readyz`.
async fn wait_degraded(gate: &Ucgate) {
    let deadline = Instant::now() + BOUND;
    loop {
        let r = readyz(gate).await;
        if r["down"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("redis")))
        {
            assert_eq!(r["status"], "degraded");
            return;
        }
        assert!(Instant::now() < deadline, "{r}\n{}", gate.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn with_redis_down_lock_outs_are_counted_locally() {
    let mut redis = Redis::start();
    let up = Upstream::start().await;
    let a = instance(&up, &redis.url(), "max_failures = 3").await;
    let b = instance(&up, &redis.url(), "max_failures = 3").await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    redis.stop();
    wait_degraded(&a).await;
    for _ in 0..3 {
        assert_eq!(login(&a, "wrong").await.status(), 401);
    }
    assert_eq!(login(&a, "alice-pw").await.status(), 429);
    assert_eq!(
        login(&b, "alice-pw").await.status(),
        200,
        "B never saw them"
    );
}

#[tokio::test]
async fn a_redis_that_answers_garbage_or_stalls_stalls_nothing() {
    let up = Upstream::start().await;
    for fake in [FakeRedis::garbage().await, FakeRedis::stalling().await] {
        let gate = instance(&up, &fake.url(), "").await;
        // Ready, degraded: Redis is unusable, not the instance.
        let ready = wait_ready(&gate).await;
        assert!(fake.connections() >= 1, "it tried");
        assert_eq!(ready["status"], "degraded", "{ready}");
        let start = Instant::now();
        let t = token(&gate).await;
        for _ in 0..20 {
            assert_eq!(status(&gate, &t).await, 200);
        }
        logout(&gate, &t).await;
        assert_eq!(status(&gate, &t).await, 401);
        // Bounded by the 300 ms command timeout, not by Redis: a liveness bound, generous.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn an_unusable_redis_url_is_refused_without_quoting_it() {
    let up = Upstream::start().await;
    let finished = Ucgate::builder(config(&up.url(), ""))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("UCGATE_REDIS_URL", "http://:S3cretInUrl@127.0.0.1:1/")
        .file("users.toml", users())
        .run(&["check-config"]);
    assert!(!finished.status.success());
    assert!(
        finished.stderr.contains("cluster.redis_url_env"),
        "{}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("S3cretInUrl"),
        "{}",
        finished.stderr
    );
}

#[test]
fn doctor_reports_redis_without_its_password() {
    let mut redis = Redis::start_with_password(REDIS_PASSWORD);
    redis.cli(&[
        "SET",
        "site1:revoked:t:0123456789abcdef0123456789abcdef",
        "1",
        "EX",
        "60",
    ]);
    // A sound shared token, so that the exit code is Redis's.
    let (_env, custom_env) = sound_custom_env();
    let url = redis.url();
    let doctor = || {
        Ucgate::builder(config("http://127.0.0.1:9", ""))
            .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
            .env("UCGATE_REDIS_URL", &url)
            .file("users.toml", users())
            // Only the sound file: doctor judges its environment's token too.
            .env_remove("PLAY_AUTH_TOKEN")
            .run(&[
                "doctor",
                "--root",
                "/nonexistent",
                custom_env.to_str().unwrap(),
            ])
    };
    let out = doctor();
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let expected = format!(
        " OK  Redis at 127.0.0.1:{} (environment variable UCGATE_REDIS_URL): answers; 1 revocations in force",
        redis.port()
    );
    assert!(out.stdout.contains(&expected), "{}", out.stdout);
    redis.stop();
    let out = doctor();
    assert_eq!(out.code(), Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("FAIL Redis at 127.0.0.1:"),
        "{}",
        out.stdout
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(REDIS_PASSWORD), "{text}");
    }
}

#[tokio::test]
async fn a_reload_keeps_the_link_and_the_revocations_reach_the_new_configuration() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let [a, b, _c] = three(&up, &redis.url(), "").await;
    let t = token(&a).await;
    assert_eq!(status(&b, &t).await, 200);
    let before = metric(&metrics_of(&b).await, "ucgate_cluster_reconnects_total");
    b.signal(libc::SIGHUP);
    b.wait_log_count("configuration reloaded", 1).await;
    // Cached again in the new configuration's cache, then revoked elsewhere.
    assert_eq!(status(&b, &t).await, 200);
    logout(&a, &t).await;
    refused_within(&b, &t, Duration::from_secs(1)).await;
    let metrics = metrics_of(&b).await;
    assert_eq!(metric(&metrics, "ucgate_cluster_up"), Some(1.0));
    assert_eq!(
        metric(&metrics, "ucgate_cluster_reconnects_total"),
        before,
        "the same link, no reconnection"
    );
}
