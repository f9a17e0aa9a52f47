//! Issue 20, trusting the site's running xuc: tokens that xuc issued open ucgate's routes once
//! xuc's check endpoint vouches for them. The stand-in for xuc is a second ucgate, whose check
//! endpoint answers as xuc's does (`{"login", "token", "TTL"}`, 401 for a bad token); the
//! remote checks it receives are counted in its access log.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const LOGIN: &str = "/xuc/api/2.0/auth/login";
const CHECK: &str = "/xuc/api/2.0/auth/check";
const LOGOUT: &str = "/xuc/api/2.0/auth/logout";
/// The stand-in's key; ucgate's own is another one, so that xuc's tokens are not ucgate's.
const XUC_KEY: &str = "stand-in-xuc-signing-key-0123456789abcdef";
const GATE_KEY: &str = "ucgate-own-signing-key-0123456789abcdef0";

/// `[[user]]` entries with the password `<login>-pw`.
fn users(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(login, profile)| {
            let hash = String::from_utf8(hash_password_run(&format!("{login}-pw\n")).stdout)
                .unwrap();
            format!(
                "[[user]]\nlogin = \"{login}\"\npassword_hash = \"{}\"\ncti_enabled = true\nprofile = \"{profile}\"\n\n",
                hash.trim()
            )
        })
        .collect()
}

/// The stand-in xuc on `port`: alice (admin), bob and carol (agents) log in there.
async fn stand_in(port: u16) -> Ucgate {
    let config = ConfigBuilder::new()
        .server(&format!("listen = [\"127.0.0.1:{port}\"]"))
        .route(route("unused", "/unused/", &closed_url()))
        .raw("[tokens]\nttl = \"1h\"\n\n[users]\nfile = \"users.toml\"")
        .build();
    Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", XUC_KEY)
        .file(
            "users.toml",
            users(&[("alice", "admin"), ("bob", "agent"), ("carol", "agent")]),
        )
        .start()
        .await
}

/// ucgate trusting the xuc at `xuc_url`, with `[xuc]` `extra` lines. Its directory knows alice
/// (admin) and bob (agent), not carol. `/open/` takes any UC token, `/admins/` the admin profile.
async fn gate(up: &Upstream, xuc_url: &str, extra: &str) -> Ucgate {
    let config = ConfigBuilder::new()
        .route(route("open", "/open/", &up.url()).accept(&["uc"]))
        .route(
            route("admins", "/admins/", &up.url())
                .accept(&["uc"])
                .line("profiles = [\"admin\"]"),
        )
        .raw(&format!(
            "[tokens]\n\n[users]\nfile = \"users.toml\"\n\n[xuc]\nurl = \"{xuc_url}\"\n{extra}"
        ))
        .build();
    Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", GATE_KEY)
        .file("users.toml", users(&[("alice", "admin"), ("bob", "agent")]))
        .start()
        .await
}

/// A token issued by `issuer` to `login`.
async fn login(issuer: &Ucgate, login: &str) -> String {
    let response = client()
        .post(issuer.url(LOGIN))
        .json(&json!({ "login": login, "password": format!("{login}-pw") }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// The checks the stand-in answered with a token (its reachability probes carry none).
fn remote_checks(xuc: &Ucgate) -> usize {
    xuc.access_log()
        .iter()
        .filter(|l| l.contains("route=\"auth-check\"") && !l.contains("TokenMissing"))
        .count()
}

/// Waits (bounded) until the stand-in logged `n` remote checks.
async fn wait_remote_checks(xuc: &Ucgate, n: usize) {
    assert!(
        eventually(|| remote_checks(xuc) >= n).await,
        "{} remote checks, not {n}:\n{}",
        remote_checks(xuc),
        xuc.logs()
    );
}

fn assert_no_secret(logs: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!logs.contains(secret), "a token in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn xuc_tokens_open_routes_with_the_directory_s_profile() {
    let up = Upstream::start().await;
    let xuc = stand_in(free_port()).await;
    let gate = gate(
        &up,
        &xuc.base_url(),
        "check_cache = \"60s\"\nnegative_cache = \"60s\"",
    )
    .await;
    let (alice, bob, carol) = (
        login(&xuc, "alice").await,
        login(&xuc, "bob").await,
        login(&xuc, "carol").await,
    );

    // alice: checked at xuc once, then from memory.
    for _ in 0..5 {
        assert_eq!(get(&gate, "/open/x", &alice).await.status(), 200);
    }
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("xuc"));
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    assert!(!seen.head_text().contains(&alice), "{}", seen.head_text());
    assert_eq!(get(&gate, "/admins/x", &alice).await.status(), 200);
    wait_remote_checks(&xuc, 1).await;
    assert_eq!(remote_checks(&xuc), 1);

    // Profiles come from ucgate's directory: bob is an agent there, carol is unknown.
    assert_error(get(&gate, "/admins/x", &bob).await, 403, "Forbidden").await;
    assert_eq!(get(&gate, "/open/x", &carol).await.status(), 200);
    assert_eq!(up.last().header("x-auth-user").as_deref(), Some("carol"));
    assert_error(get(&gate, "/admins/x", &carol).await, 403, "Forbidden").await;
    wait_remote_checks(&xuc, 3).await;

    // ucgate's own tokens: no remote call.
    let own = login(&gate, "alice").await;
    assert_eq!(get(&gate, "/admins/x", &own).await.status(), 200);
    assert_eq!(
        up.last().header("x-auth-method").as_deref(),
        Some("password")
    );

    // Concurrent first requests with one token: one remote check.
    let fresh = login(&xuc, "bob").await;
    let requests = (0..20).map(|_| get(&gate, "/open/x", &fresh));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
    wait_remote_checks(&xuc, 4).await;

    // Garbage: refused, and remembered (one remote check each).
    let forged = hand_signed_hs256(
        "not-the-xuc-key-0123456789abcdef0123456789",
        &json!({"typ": "JWT", "alg": "HS256"}),
        &json!({"iss": "ucgate", "sub": "alice", "profile": "admin", "method": "password",
                "iat": unix_now(), "exp": unix_now() + 600, "jti": "x"}),
    );
    for token in ["not-a-token", forged.as_str()] {
        for _ in 0..3 {
            assert_error(get(&gate, "/open/x", token).await, 401, "TokenInvalid").await;
        }
    }
    wait_remote_checks(&xuc, 6).await;
    // Not even sent: what cannot be a bearer token.
    let spaced = client()
        .get(gate.url("/open/x?token=a%20b"))
        .send()
        .await
        .unwrap();
    assert_error(spaced, 401, "TokenInvalid").await;

    // The shared token is no UC token: never sent to xuc from check or logout.
    for (method, path) in [("GET", CHECK), ("POST", LOGOUT)] {
        let response = client()
            .request(method.parse().unwrap(), gate.url(path))
            .header("Authorization", format!("Bearer {SHARED_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_error(response, 401, "TokenInvalid").await;
    }

    // Check at ucgate with an xuc token: the same token back (xuc's to renew).
    let response = client()
        .get(gate.url(CHECK))
        .header("Authorization", format!("Bearer {alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["login"], "alice");
    assert_eq!(body["token"], alice.as_str());
    assert!(
        body["TTL"]
            .as_u64()
            .is_some_and(|ttl| ttl > 0 && ttl <= 3600),
        "{body}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(remote_checks(&xuc), 6, "{}", xuc.logs());
    assert_eq!(
        metric(&gate, "ucgate_xuc_checks_total{outcome=\"vouched\"}").await,
        4
    );
    assert_eq!(
        metric(&gate, "ucgate_xuc_checks_total{outcome=\"refused\"}").await,
        2
    );
    assert_eq!(metric(&gate, "ucgate_xuc_check_seconds_count").await, 6);
    assert_eq!(metric(&gate, "ucgate_xuc_up").await, 1);
    // 5 + 1 (alice) + 1 (carol) + 20 (bob's fresh token) answered requests with xuc tokens.
    assert_eq!(
        metric(
            &gate,
            "ucgate_requests_total{route=\"open\",status=\"200\",credential=\"xuc\"}"
        )
        .await,
        26
    );
    assert_no_secret(&gate.logs(), &[&alice, &bob, &carol, &fresh, &forged]);
    assert_no_secret(&xuc.logs(), &[&alice, &bob, &carol, &fresh, &forged]);
    for request in up.requests() {
        assert_no_secret(&request.head_text(), &[&alice, &bob, &carol, &fresh]);
    }
}

#[tokio::test]
async fn profiles_from_check_takes_only_what_the_answer_says() {
    let up = Upstream::start().await;
    let xuc = stand_in(free_port()).await;
    let gate = gate(&up, &xuc.base_url(), "profiles_from = \"check\"").await;
    // xuc's answer names no profile: alice is an admin in both directories, and still only
    // opens the routes without profiles.
    let alice = login(&xuc, "alice").await;
    assert_eq!(get(&gate, "/open/x", &alice).await.status(), 200);
    assert_error(get(&gate, "/admins/x", &alice).await, 403, "Forbidden").await;
}

#[tokio::test]
async fn a_flood_of_random_tokens_makes_a_bounded_number_of_remote_checks() {
    let up = Upstream::start().await;
    let xuc = stand_in(free_port()).await;
    let gate = gate(&up, &xuc.base_url(), "").await;
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for round in 0..10 {
        let requests = (0..30).map(|i| {
            let token = format!("random-{round}-{i}-{}", unix_now());
            let gate = &gate;
            async move { get(gate, "/open/x", &token).await }
        });
        for response in futures_util::future::join_all(requests).await {
            let status = response.status().as_u16();
            if status == 429 {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_error(response, 429, "TooManyAttempts").await;
            } else {
                assert_error(response, 401, "TokenInvalid").await;
            }
            *statuses.entry(status).or_default() += 1;
        }
    }
    let seconds = started.elapsed().as_secs() + 1;
    let limited = statuses.get(&429).copied().unwrap_or(0);
    assert!(limited > 0, "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checks = remote_checks(&xuc);
    // 20 a second per address (ucgate::auth::xuc::CHECKS_PER_SECOND), each window started anew.
    let bound = 20 * (seconds as usize + 1);
    assert!(
        checks <= bound,
        "{checks} remote checks in {seconds} s: {statuses:?}"
    );
    assert_eq!(checks + limited, 300, "{statuses:?}");
    assert_eq!(
        metric(&gate, "ucgate_xuc_checks_total{outcome=\"limited\"}").await,
        limited as u64
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn xuc_down_fails_closed_and_cached_tokens_keep_working_until_it_returns() {
    let up = Upstream::start().await;
    let port = free_port();
    let mut xuc = stand_in(port).await;
    let gate = gate(
        &up,
        &xuc.base_url(),
        "check_cache = \"60s\"\ntimeout = \"1s\"",
    )
    .await;
    let (used, unused) = (login(&xuc, "alice").await, login(&xuc, "bob").await);
    assert_eq!(get(&gate, "/open/x", &used).await.status(), 200);

    xuc.sigterm();
    xuc.wait().await;
    assert_eq!(get(&gate, "/open/x", &used).await.status(), 200, "cached");
    let refused = get(&gate, "/open/x", &unused).await;
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_error(refused, 503, "XucUnavailable").await;
    let ready = client().get(gate.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "xuc down does not take ucgate out");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body, json!({"status": "degraded", "down": ["xuc"]}));
    assert_eq!(metric(&gate, "ucgate_xuc_up").await, 0);
    assert!(metric(&gate, "ucgate_xuc_checks_total{outcome=\"unavailable\"}").await >= 1);
    gate.wait_log("xuc cannot be reached").await;

    // Back, with the same key: the token refused meanwhile was not remembered as bad.
    let xuc = stand_in(port).await;
    assert_eq!(get(&gate, "/open/x", &unused).await.status(), 200);
    assert_eq!(up.last().header("x-auth-user").as_deref(), Some("bob"));
    let ready = client().get(gate.url("/readyz")).send().await.unwrap();
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body, json!({"status": "ready"}));
    gate.wait_log("xuc answers again").await;
    assert_no_secret(&gate.logs(), &[&used, &unused]);
    drop(xuc);
}

#[tokio::test]
async fn an_xuc_that_never_answers_is_503_within_the_timeout() {
    let up = Upstream::start().await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let gate = gate(&up, &format!("http://{addr}"), "timeout = \"300ms\"").await;
    let response = get(&gate, "/open/x", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln").await;
    assert_error(response, 503, "XucUnavailable").await;
    held.abort();
}

#[tokio::test]
async fn a_logout_at_xuc_is_honoured_and_a_logout_here_refuses_locally() {
    let up = Upstream::start().await;
    let xuc = stand_in(free_port()).await;
    let gate = gate(&up, &xuc.base_url(), "check_cache = \"1s\"").await;

    // Logout at xuc: refused here once the positive answer is older than check_cache.
    let token = login(&xuc, "alice").await;
    assert_eq!(get(&gate, "/open/x", &token).await.status(), 200);
    let logout = client()
        .post(xuc.url(LOGOUT))
        .header(X_AUTH_TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let deadline = Instant::now() + BOUND;
    loop {
        let response = get(&gate, "/open/x", &token).await;
        if response.status() == 401 {
            assert_error(response, 401, "TokenInvalid").await;
            break;
        }
        assert_eq!(response.status(), 200);
        assert!(
            Instant::now() < deadline,
            "the logout at xuc was never honoured"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Logout here with an xuc token: refused here at once, without asking xuc; xuc itself
    // still accepts it.
    let other = login(&xuc, "bob").await;
    assert_eq!(get(&gate, "/open/x", &other).await.status(), 200);
    let logout = client()
        .post(gate.url(LOGOUT))
        .header("Authorization", format!("Bearer {other}"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let checks = remote_checks(&xuc);
    for _ in 0..3 {
        assert_error(get(&gate, "/open/x", &other).await, 401, "TokenInvalid").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_error(get(&gate, "/open/x", &other).await, 401, "TokenInvalid").await;
    assert_eq!(
        remote_checks(&xuc),
        checks,
        "refused without a remote check"
    );
    let at_xuc = client()
        .get(xuc.url(CHECK))
        .header("Authorization", format!("Bearer {other}"))
        .send()
        .await
        .unwrap();
    assert_eq!(at_xuc.status(), 200, "xuc's own tokens are xuc's to revoke");
    assert_no_secret(&gate.logs(), &[&token, &other]);
}

#[test]
fn xuc_needs_uc_tokens() {
    let config = ConfigBuilder::new()
        .route(route("open", "/open/", &closed_url()))
        .raw("[xuc]\nurl = \"http://127.0.0.1:8090\"")
        .build();
    let out = Ucgate::builder(config).run(&["check-config"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("xuc: needs a [tokens] section"),
        "{}",
        out.stderr
    );
    let valid = ConfigBuilder::new()
        .route(route("open", "/open/", &closed_url()))
        .raw("[tokens]\n[users]\nfile = \"users.toml\"\n[xuc]\nurl = \"http://127.0.0.1:8090\"")
        .build();
    let out = Ucgate::builder(valid.clone())
        .env("UCGATE_SIGNING_KEY", GATE_KEY)
        .file("users.toml", "")
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let described = "xuc: tokens checked at http://127.0.0.1:8090, check_cache 30s, negative_cache 5s, timeout 2s, profiles from directory";
    assert!(out.stdout.contains(described), "{}", out.stdout);
    let config = valid.replace("8090\"", "8090/xuc\"");
    let out = Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", GATE_KEY)
        .file("users.toml", "")
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("xuc.url"), "{}", out.stderr);
}

/// A reload that keeps `[xuc]` as it is keeps what xuc answered: no new remote check.
#[tokio::test]
async fn a_reload_keeps_what_xuc_answered() {
    let up = Upstream::start().await;
    let xuc = stand_in(free_port()).await;
    let gate = gate(&up, &xuc.base_url(), "check_cache = \"60s\"").await;
    let token = login(&xuc, "alice").await;
    assert_eq!(get(&gate, "/open/x", &token).await.status(), 200);
    wait_remote_checks(&xuc, 1).await;

    let config = std::fs::read_to_string(&gate.config_path).unwrap();
    let more = format!(
        "{config}\n{}",
        route("more", "/more/", &up.url()).accept(&["uc"]).to_toml()
    );
    write_atomic(&gate.config_path, more);
    gate.signal(libc::SIGHUP);
    gate.wait_log("configuration reloaded").await;
    assert_eq!(get(&gate, "/more/x", &token).await.status(), 200);
    assert_eq!(get(&gate, "/open/x", &token).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(remote_checks(&xuc), 1, "{}", xuc.logs());
}

/// `ucgate doctor` says whether the xuc answers.
#[tokio::test]
async fn doctor_says_whether_xuc_answers() {
    let port = free_port();
    let mut xuc = stand_in(port).await;
    // A sound shared token, so that the exit code is xuc's.
    let (_env, custom_env) = sound_custom_env();
    let doctor = move || {
        let config = ConfigBuilder::new()
            .route(route("open", "/open/", &closed_url()).accept(&["uc"]))
            .raw(&format!(
                "[tokens]\n\n[users]\nfile = \"users.toml\"\n\n[xuc]\nurl = \"http://127.0.0.1:{port}\"\ntimeout = \"1s\""
            ))
            .build();
        Ucgate::builder(config)
            .env("UCGATE_SIGNING_KEY", GATE_KEY)
            .file("users.toml", users(&[("alice", "admin")]))
            // Only the sound file: doctor judges its environment's token too.
            .env_remove("PLAY_AUTH_TOKEN")
            .run(&[
                "doctor",
                "--root",
                "/nonexistent",
                custom_env.to_str().unwrap(),
            ])
    };
    let out = tokio::task::spawn_blocking(doctor.clone()).await.unwrap();
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let ok = format!(" OK  xuc at http://127.0.0.1:{port}: its check endpoint answers");
    assert!(out.stdout.contains(&ok), "{}", out.stdout);
    xuc.sigterm();
    xuc.wait().await;
    let out = tokio::task::spawn_blocking(doctor.clone()).await.unwrap();
    assert_eq!(out.code(), Some(1), "{}{}", out.stdout, out.stderr);
    let fail = format!("FAIL xuc at http://127.0.0.1:{port}: ");
    assert!(out.stdout.contains(&fail), "{}", out.stdout);
}

/// An xuc that answers what it should not. Its own failures (5xx) mark it down; answers about a
/// token (431: too large for it) refuse the token and leave its health alone; a wrong URL (404)
/// or a garbled answer is 503 without marking it down, logged once, not once per request; a
/// TTL of 0 is no token; a TTL past `tokens.max_session` is cut there.
#[tokio::test]
async fn what_a_misbehaving_xuc_says_is_not_believed_blindly() {
    let up = Upstream::start().await;
    let answer = |status: u16, body: &str| {
        let body = body.to_owned();
        async move {
            let xuc = Upstream::start().await;
            xuc.on(
                CHECK,
                Behavior::respond(status, body).header("content-type", "application/json"),
            );
            xuc
        }
    };
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    // 431: the token is refused; xuc is up.
    let xuc = answer(431, "").await;
    let gate = gate(&up, &xuc.url(), "").await;
    assert_error(get(&gate, "/open/x", token).await, 401, "TokenInvalid").await;
    assert_eq!(readyz(&gate).await, json!({"status": "ready"}));

    // A token longer than any xuc token is not even sent.
    let long = "a".repeat(5000);
    assert_error(get(&gate, "/open/x", &long).await, 401, "TokenInvalid").await;
    assert!(
        xuc.requests()
            .iter()
            .all(|r| !r.head_text().contains(&long))
    );

    // 404 (a wrong URL): 503, logged once however many requests, xuc not marked down.
    let xuc = answer(404, "not here").await;
    let gate = self::gate(&up, &xuc.url(), "negative_cache = \"0s\"").await;
    for i in 0..5 {
        let response = get(&gate, "/open/x", &format!("{token}{i}")).await;
        assert_error(response, 503, "XucUnavailable").await;
    }
    assert_eq!(readyz(&gate).await, json!({"status": "ready"}));
    gate.wait_log("is [xuc].url the xuc's address?").await;
    let warnings = gate
        .logs()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("answered a check 404"))
        .count();
    assert_eq!(warnings, 1, "{}", gate.logs());

    // 500: xuc fails, and is down.
    let xuc = answer(500, "").await;
    let gate = self::gate(&up, &xuc.url(), "").await;
    assert_error(get(&gate, "/open/x", token).await, 503, "XucUnavailable").await;
    let body = readyz(&gate).await;
    assert_eq!(body, json!({"status": "degraded", "down": ["xuc"]}));

    // A login that cannot be a header: 503, nothing forwarded.
    let xuc = answer(200, r#"{"login": "alice\r\nX-Auth-User: root", "TTL": 60}"#).await;
    let gate = self::gate(&up, &xuc.url(), "").await;
    assert_error(get(&gate, "/open/x", token).await, 503, "XucUnavailable").await;

    // TTL 0: no token.
    let xuc = answer(200, r#"{"login": "alice", "token": "t", "TTL": 0}"#).await;
    let gate = self::gate(&up, &xuc.url(), "").await;
    assert_error(get(&gate, "/open/x", token).await, 401, "TokenInvalid").await;

    // A TTL of centuries: kept no longer than tokens.max_session (7 days by default).
    let xuc = answer(
        200,
        r#"{"login": "alice", "token": "t", "TTL": 18446744073709551615}"#,
    )
    .await;
    let gate = self::gate(&up, &xuc.url(), "").await;
    let opaque = "opaque-xuc-token-0123456789";
    assert_eq!(get(&gate, "/open/x", opaque).await.status(), 200);
    let response = client()
        .get(gate.url(CHECK))
        .header(X_AUTH_TOKEN, opaque)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(
        body["TTL"].as_u64().is_some_and(|ttl| ttl <= 7 * 24 * 3600),
        "{body}"
    );
    assert_eq!(up.requests().len(), 1);
}
