//! Issue 8, operating ucgate: hot reload under traffic, the users-file watcher, shared-token
//! rotation, `doctor`, `/metrics`, TLS on the listener and to upstreams, the deploy example.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::Version;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How many log lines contain `needle`.
fn log_count(gate: &Ucgate, needle: &str) -> usize {
    gate.logs().lines().filter(|l| l.contains(needle)).count()
}

/// Waits (bounded) until `n` log lines contain `needle`.
async fn wait_log_count(gate: &Ucgate, needle: &str, n: usize) {
    let deadline = Instant::now() + BOUND;
    while log_count(gate, needle) < n {
        assert!(
            Instant::now() < deadline,
            "expected {n} log lines with {needle:?}; logs:\n{}",
            gate.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of one sample of an OpenMetrics exposition: `name` with (at least) these labels.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let wanted = labels.iter().all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            (n == name && wanted).then(|| value.parse().unwrap())
        })
}

async fn metrics_text(gate: &Ucgate) -> String {
    let response = client().get(gate.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The `host` header an echoing upstream saw: which upstream answered.
fn echoed_host(body: &serde_json::Value) -> Option<String> {
    body["headers"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == "host")
        .and_then(|pair| pair[1].as_str().map(str::to_owned))
}

async fn get_shared(gate: &Ucgate, path: &str) -> reqwest::Response {
    client()
        .get(gate.url(path))
        .header(X_AUTH_TOKEN, SHARED_TOKEN)
        .send()
        .await
        .unwrap()
}

/// GET with the shared token; asserts 200 and returns which upstream answered.
async fn served_by(gate: &Ucgate, path: &str) -> String {
    let response = get_shared(gate, path).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{path}: {text}");
    echoed_host(&serde_json::from_str(&text).unwrap()).expect("an echo")
}

// ---------------------------------------------------------------------------------------------
// 1. Hot reload under traffic
// ---------------------------------------------------------------------------------------------

/// Requests sent by the traffic loop, and what they got.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// Successful answers by the upstream (authority) that gave them.
    by_upstream: Mutex<HashMap<String, usize>>,
}

impl Traffic {
    /// Waits (bounded) until `n` more requests have succeeded: traffic flows across each step.
    async fn progress(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + BOUND;
        while self.ok.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "traffic stalled; failures: {:?}",
                self.failures.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sends `GET url` with the shared token until told to stop (or a safety bound passes).
async fn hammer(label: &'static str, client: reqwest::Client, url: String, traffic: Arc<Traffic>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while !traffic.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        n += 1;
        let outcome = match client
            .get(format!("{url}?n={n}"))
            .header(X_AUTH_TOKEN, SHARED_TOKEN)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                match response.text().await {
                    Ok(text) if status == 200 => serde_json::from_str(&text)
                        .ok()
                        .and_then(|v| echoed_host(&v))
                        .ok_or(format!("{label} #{n}: 200 but not an echo: {text}")),
                    Ok(text) => Err(format!("{label} #{n}: {status} {text}")),
                    Err(e) => Err(format!("{label} #{n}: body: {e:?}")),
                }
            }
            Err(e) => Err(format!("{label} #{n}: {e:?}")),
        };
        match outcome {
            Ok(host) => {
                *traffic.by_upstream.lock().unwrap().entry(host).or_default() += 1;
                traffic.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(failure) => traffic.failures.lock().unwrap().push(failure),
        }
    }
}

/// An upstream that receives one request and answers only when told to: a request in flight
/// for as long as the test wants, with no clock involved.
struct HeldUpstream {
    addr: SocketAddr,
    received: tokio::sync::oneshot::Receiver<String>,
    release: tokio::sync::oneshot::Sender<()>,
}

impl HeldUpstream {
    async fn start(body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (received_tx, received) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the request head");
                head.extend_from_slice(&buf[..n]);
            }
            let _ = received_tx.send(String::from_utf8_lossy(&head).into_owned());
            let _ = release_rx.await;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            let _ = stream.shutdown().await;
        });
        Self {
            addr,
            received,
            release,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_traffic_never_fail_a_request() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let held = HeldUpstream::start("answer from the old upstream").await;
    // Reloads by SIGHUP only (no polling), so that every reload is one the test asked for.
    let base = || ConfigBuilder::new().server("watch_interval = \"0s\"");
    let v0 =
        base()
            .route(route("api", "/api/", &a.url()))
            .route(route("slow", "/slow/", &held.url()));
    let gate = Ucgate::start(v0.build()).await;
    let config = gate.config_path.clone();
    let fds_before = gate.open_fds();

    let traffic = Arc::new(Traffic::default());
    let new_connections = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = gate.url("/api/loop");
    let mut tasks = [
        ("h1 keep-alive 1", client()),
        ("h1 keep-alive 2", client()),
        ("h2", h2_client()),
        ("h1 new connections", new_connections),
    ]
    .map(|(label, c)| tokio::spawn(hammer(label, c, url.clone(), traffic.clone())));
    traffic.progress(20).await;

    // A request in flight on the old configuration: it stays there across two reloads.
    let slow = {
        let url = gate.url("/slow/inflight");
        tokio::spawn(async move {
            let response = client()
                .get(url)
                .header(X_AUTH_TOKEN, SHARED_TOKEN)
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        })
    };
    let held_head = tokio::time::timeout(BOUND, held.received)
        .await
        .expect("the slow request never reached the held upstream")
        .unwrap();
    assert!(held_head.starts_with("GET /slow/inflight "), "{held_head}");

    // v1: a new route.
    let v1 = v0.clone().route(route("extra", "/extra/", &b.url()));
    write_atomic(&config, v1.build());
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "configuration reloaded", 1).await;
    assert_eq!(served_by(&gate, "/extra/x").await, b.authority());
    traffic.progress(20).await;

    // v2: every route moves to upstream B.
    let v2 = base()
        .route(route("api", "/api/", &b.url()))
        .route(route("slow", "/slow/", &b.url()))
        .route(route("extra", "/extra/", &b.url()));
    write_atomic(&config, v2.build());
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "configuration reloaded", 2).await;
    assert_eq!(served_by(&gate, "/api/after-v2").await, b.authority());
    assert_eq!(served_by(&gate, "/slow/after-v2").await, b.authority());
    traffic.progress(20).await;

    // The in-flight request finishes on the upstream it started with.
    assert!(
        !slow.is_finished(),
        "the held upstream has not answered yet"
    );
    held.release.send(()).unwrap();
    let (status, body) = tokio::time::timeout(BOUND, slow).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "answer from the old upstream");
    assert!(
        held_head.contains(&format!("x-auth-token: {SHARED_TOKEN}\r\n")),
        "{held_head}"
    );

    // v3: broken TOML, then valid TOML that is not a valid configuration: both refused.
    write_atomic(&config, format!("{}\n[[route]\nname = ", v2.build()));
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "reload refused", 1).await;
    let refused = gate.wait_log("reload refused").await;
    assert!(
        refused.contains(&config.display().to_string()),
        "the reason names the file: {refused}"
    );
    write_atomic(
        &config,
        v2.clone()
            .route(route("bad", "/bad/", &b.url()).line("upstream_tls = true"))
            .build(),
    );
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "reload refused", 2).await;
    let refused = gate
        .logs()
        .lines()
        .filter(|l| l.contains("reload refused"))
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(refused.contains("upstream_tls"), "names the key: {refused}");
    // The running configuration (v2) stays.
    traffic.progress(20).await;
    assert_eq!(served_by(&gate, "/extra/still").await, b.authority());
    assert_eq!(served_by(&gate, "/api/still").await, b.authority());
    assert_error(get_shared(&gate, "/bad/x").await, 404, "NoRoute").await;

    // v4: valid again: back to A, "extra" gone, "late" added.
    let v4 = base()
        .route(route("api", "/api/", &a.url()))
        .route(route("late", "/late/", &a.url()));
    write_atomic(&config, v4.build());
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "configuration reloaded", 3).await;
    assert_eq!(served_by(&gate, "/late/x").await, a.authority());
    assert_eq!(served_by(&gate, "/api/after-v4").await, a.authority());
    assert_error(get_shared(&gate, "/extra/x").await, 404, "NoRoute").await;
    traffic.progress(20).await;

    // Back and forth between the upstreams, reload after reload, traffic flowing throughout.
    for i in 0..10 {
        let upstream = if i % 2 == 0 { &b } else { &a };
        let next = base()
            .route(route("api", "/api/", &upstream.url()))
            .route(route("late", "/late/", &a.url()));
        write_atomic(&config, next.build());
        gate.signal(libc::SIGHUP);
        wait_log_count(&gate, "configuration reloaded", 4 + i).await;
        traffic.progress(10).await;
    }

    traffic.stop.store(true, Ordering::SeqCst);
    for task in &mut tasks {
        tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
    }
    let failures = traffic.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed: {failures:#?}",
        failures.len()
    );
    let by_upstream = traffic.by_upstream.lock().unwrap().clone();
    let ok = traffic.ok.load(Ordering::SeqCst);
    assert!(ok >= 240, "{ok} requests");
    assert!(
        by_upstream.get(&a.authority()).is_some_and(|&n| n > 0)
            && by_upstream.get(&b.authority()).is_some_and(|&n| n > 0)
            && by_upstream.len() == 2,
        "{by_upstream:?}"
    );
    // Every request the upstreams saw was authenticated with the shared token.
    for r in a.requests().iter().chain(b.requests().iter()) {
        assert_eq!(r.header_all("x-auth-token"), [SHARED_TOKEN]);
    }

    let text = metrics_text(&gate).await;
    let reloads = |outcome| {
        sample(
            &text,
            "ucgate_config_reloads_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(reloads("success"), Some(13.0), "{text}");
    assert_eq!(reloads("failure"), Some(2.0), "{text}");
    assert!(gate.logs().contains("cause=\"SIGHUP\""), "{}", gate.logs());
    // Nothing held for the old configurations: once the clients are gone, what is left open
    // beyond the start is the current upstream pool, one idle connection per hammer at most.
    assert!(
        eventually(|| gate.open_fds() <= fds_before + tasks.len()).await,
        "{fds_before} file descriptors at the start, {} after 15 reloads",
        gate.open_fds()
    );
}

/// What a reload must not load (a file emptied, or cut short to a configuration without
/// routes: both parse) and what it cannot apply (settings read at start-up: named in a warning).
#[tokio::test]
async fn a_reload_to_no_route_is_refused_and_restart_only_settings_are_named() {
    let a = Upstream::start().await;
    let base = || {
        ConfigBuilder::new()
            .server("watch_interval = \"0s\"")
            .route(route("api", "/api/", &a.url()))
    };
    let gate = Ucgate::start(base().build()).await;
    let config = gate.config_path.clone();

    write_atomic(&config, "# being rewritten\n\n");
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "reload refused", 1).await;
    assert!(
        gate.logs().contains("holds no configuration"),
        "{}",
        gate.logs()
    );
    write_atomic(&config, "[server]\nwatch_interval = \"0s\"\n");
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "reload refused", 2).await;
    assert!(gate.logs().contains("no [[route]]"), "{}", gate.logs());
    // Refused once loaded (a users file that is not there): nothing to warn about either.
    write_atomic(
        &config,
        base()
            .server("max_headers = 20")
            .raw("[tokens]\n\n[users]\nfile = \"missing-users.toml\"")
            .build(),
    );
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "reload refused", 3).await;
    assert_eq!(log_count(&gate, "next restart only"), 0, "{}", gate.logs());
    assert_eq!(served_by(&gate, "/api/still").await, a.authority());

    write_atomic(
        &config,
        ConfigBuilder::new()
            .server("watch_interval = \"0s\"\nmax_headers = 20\nidle_timeout = \"5s\"")
            .route(route("api", "/api/", &a.url()))
            .build(),
    );
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "configuration reloaded", 1).await;
    let warning = gate.wait_log("next restart only").await;
    assert!(
        warning.contains("server.idle_timeout, server.max_headers"),
        "{warning}"
    );
    // A second reload keeping them (and changing what a reload applies).
    write_atomic(
        &config,
        ConfigBuilder::new()
            .server("watch_interval = \"0s\"\nmax_headers = 20\nidle_timeout = \"5s\"")
            .server("max_uri_length = 4096")
            .route(route("api", "/api/", &a.url()))
            .build(),
    );
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "configuration reloaded", 2).await;
    // Still not applied: said again (against what runs, not against the last reload).
    assert_eq!(log_count(&gate, "next restart only"), 2, "{}", gate.logs());
    // Put back as they run: nothing to say.
    write_atomic(&config, base().build());
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "configuration reloaded", 3).await;
    assert_eq!(log_count(&gate, "next restart only"), 2, "{}", gate.logs());
}

/// A watched file is loaded once it has stayed the same for a whole `watch_interval` (a file
/// being written is not), and a reload that sets `watch_interval = "0s"` stops the polling.
#[tokio::test]
async fn a_file_is_reloaded_once_it_settles_and_watch_interval_applies_at_once() {
    let a = Upstream::start().await;
    let with = |interval: &str, name: &str, padding: usize| {
        format!(
            "{}\n# {}\n",
            ConfigBuilder::new()
                .server(&format!("watch_interval = \"{interval}\""))
                .route(route(name, &format!("/{name}/"), &a.url()))
                .build(),
            "x".repeat(padding)
        )
    };
    let gate = Ucgate::start(with("400ms", "api", 0)).await;
    let config = gate.config_path.clone();
    // Rewritten every 50 ms for about a second (each time another length): no two polls see
    // the same file, so nothing is loaded until it settles. A writer held up for a whole
    // interval (a loaded CI machine) does let a churned file settle: such stalls are counted
    // and allowed for, one reload each at most; without the settling every poll would load.
    let interval = Duration::from_millis(400);
    // A file stayed from its rename to the next one's, both inside the span from the start of
    // its write to the end of the next: a stall anywhere in that span (before, between or after
    // the renames) is counted.
    let mut previous_start: Option<Instant> = None;
    let mut stalls = 0;
    let mut write = |contents: String| {
        let start = Instant::now();
        write_atomic(&config, contents);
        if previous_start.is_some_and(|previous| previous.elapsed() >= interval) {
            stalls += 1;
        }
        previous_start = Some(start);
    };
    for i in 0..20 {
        write(with("400ms", &format!("churn{i}"), i % 7));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write(with("400ms", "settled", 0));
    let deadline = Instant::now() + BOUND;
    while get_shared(&gate, "/settled/x").await.status() != 200 {
        assert!(Instant::now() < deadline, "never settled: {}", gate.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_by(&gate, "/settled/x").await, a.authority());
    let reloads = log_count(&gate, "configuration reloaded");
    assert!(
        reloads <= 1 + stalls,
        "{reloads} reloads for {stalls} stalls of the writer: {}",
        gate.logs()
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        log_count(&gate, "configuration reloaded"),
        reloads,
        "{}",
        gate.logs()
    );

    write_atomic(&config, with("0s", "quiet", 0));
    wait_log_count(&gate, "configuration reloaded", reloads + 1).await;
    write_atomic(&config, with("0s", "unseen", 3));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        log_count(&gate, "configuration reloaded"),
        reloads + 1,
        "{}",
        gate.logs()
    );
    assert_error(get_shared(&gate, "/unseen/x").await, 404, "NoRoute").await;
    gate.signal(libc::SIGHUP);
    wait_log_count(&gate, "configuration reloaded", reloads + 2).await;
    assert_eq!(served_by(&gate, "/unseen/x").await, a.authority());
}

// ---------------------------------------------------------------------------------------------
// 2. The users file is watched
// ---------------------------------------------------------------------------------------------

const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef0123456789";

/// `ucgate hash-password` with the password on stdin.
fn hash_password(password: &str) -> String {
    let output = hash_password_run(&format!("{password}\n"));
    assert!(output.status.success(), "{output:?}");
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

async fn login(gate: &Ucgate, login: &str, password: &str) -> reqwest::Response {
    client()
        .post(gate.url("/xuc/api/2.0/auth/login"))
        .json(&serde_json::json!({ "login": login, "password": password }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_user_added_to_the_users_file_can_log_in_without_a_restart() {
    let up = Upstream::start().await;
    let config = ConfigBuilder::new()
        .server("watch_interval = \"200ms\"")
        .route(route("agents", "/agents/", &up.url()).accept(&["uc"]))
        .raw("[tokens]\n\n[users]\nfile = \"users.toml\"")
        .build();
    let gate = Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", "")
        .start()
        .await;
    assert_error(
        login(&gate, "bob", "b0b-pass").await,
        401,
        "InvalidCredentials",
    )
    .await;

    let users = gate.dir().join("users.toml");
    let bob = format!(
        "[[user]]\nlogin = \"bob\"\npassword_hash = {}\ncti_enabled = true\nprofile = \"agent\"\n",
        toml_str(&hash_password("b0b-pass"))
    );
    write_atomic(&users, &bob);
    let reloaded = gate.wait_log("configuration reloaded").await;
    assert!(reloaded.contains("file change"), "{reloaded}");

    let response = login(&gate, "bob", "b0b-pass").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["login"], "bob");
    let token = body["token"].as_str().unwrap().to_owned();
    let response = client()
        .get(gate.url("/agents/me"))
        .header(X_AUTH_TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("bob"));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("password"));

    // A broken users file is refused: bob still logs in and his token still opens the route.
    write_atomic(&users, format!("{bob}\n[[user]\n"));
    assert!(
        gate.wait_log("reload refused").await.contains("users.toml"),
        "the reason names the users file"
    );
    assert_eq!(login(&gate, "bob", "b0b-pass").await.status(), 200);
    let response = client()
        .get(gate.url("/agents/me"))
        .header(X_AUTH_TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Emptied (caught while being rewritten): refused too, bob stays.
    write_atomic(&users, "# rewritten\n");
    gate.wait_log_count("reload refused", 2).await;
    assert!(gate.logs().contains("holds no user now"), "{}", gate.logs());
    assert_eq!(login(&gate, "bob", "b0b-pass").await.status(), 200);
}

/// A password written in the users file where its hash belongs (`password = "..."`): the
/// reload refusal and `check-config` name the line and the key, never the line's text.
#[tokio::test]
async fn a_plaintext_password_in_the_users_file_is_never_logged() {
    const PLAIN: &str = "BobPlainSecret99";
    let plain_users = format!(
        "[[user]]\nlogin = \"alice\"\ncti_enabled = true\nprofile = \"agent\"\n\n\
         [[user]]\nlogin = \"bob\"\ncti_enabled = true\nprofile = \"agent\"\npassword = {}\n",
        toml_str(PLAIN)
    );
    let config = ConfigBuilder::new()
        .server("watch_interval = \"0s\"")
        .raw("[tokens]\n\n[users]\nfile = \"users.toml\"")
        .build();

    let finished = Ucgate::builder(config.clone())
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", &plain_users)
        .run(&["check-config"]);
    let output = format!("{}{}", finished.stdout, finished.stderr);
    assert_eq!(finished.code(), Some(2), "{output}");
    assert!(
        output.contains("users.toml")
            && output.contains("line 10, column 1: password: unknown field"),
        "{output}"
    );
    assert!(!output.contains(PLAIN), "{output}");

    let gate = Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", "")
        .start()
        .await;
    write_atomic(&gate.dir().join("users.toml"), &plain_users);
    gate.signal(libc::SIGHUP);
    let refused = gate.wait_log("reload refused").await;
    assert!(refused.contains("line 10, column 1: password"), "{refused}");
    assert!(!gate.logs().contains(PLAIN), "{}", gate.logs());
}

// ---------------------------------------------------------------------------------------------
// 3. Shared-token rotation
// ---------------------------------------------------------------------------------------------

const NEW_TOKEN: &str = "rot-NEW-9xQ2mL7vK4pZ8wR1tY6u";
const OLD_TOKEN: &str = "rot-OLD-3bH8nC5jD2fG7kS9aE4q";

#[tokio::test]
async fn both_tokens_open_routes_during_a_rotation_and_upstreams_get_the_new_one() {
    let up = Upstream::start().await;
    let config = ConfigBuilder::new()
        .server("watch_interval = \"0s\"")
        .shared_token("previous_env = \"PLAY_AUTH_TOKEN_PREVIOUS\"")
        .route(route("api", "/api/", &up.url()))
        .build();
    let gate = Ucgate::builder(config)
        .env("PLAY_AUTH_TOKEN", NEW_TOKEN)
        .env("PLAY_AUTH_TOKEN_PREVIOUS", OLD_TOKEN)
        .start()
        .await;
    let get = |path: &str, token: Option<&str>| {
        let mut request = client().get(gate.url(path));
        if let Some(token) = token {
            request = request.header(X_AUTH_TOKEN, token);
        }
        request.send()
    };

    assert_eq!(
        get("/api/new", Some(NEW_TOKEN)).await.unwrap().status(),
        200
    );
    assert_eq!(
        get("/api/old", Some(OLD_TOKEN)).await.unwrap().status(),
        200
    );
    let by_query = get(&format!("/api/old-query?token={OLD_TOKEN}&a=1"), None);
    assert_eq!(by_query.await.unwrap().status(), 200);
    let wrong = get("/api/wrong", Some(SHARED_TOKEN)).await.unwrap();
    assert_error(wrong, 401, "TokenInvalid").await;

    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(
            r.header_all("x-auth-token"),
            [NEW_TOKEN],
            "{}",
            r.head_text()
        );
        assert!(!r.head_text().contains(OLD_TOKEN), "{}", r.head_text());
    }
    assert_eq!(seen[2].target, "/api/old-query?a=1");

    let lines = gate.wait_access_lines(4).await;
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| {
            l.split("credential=")
                .nth(1)
                .and_then(|c| c.split_whitespace().next())
                .unwrap_or("?")
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "\"shared\"",
            "\"shared-previous\"",
            "\"shared-previous\"",
            "\"-\""
        ],
        "{lines:#?}"
    );

    let text = metrics_text(&gate).await;
    assert_eq!(
        sample(&text, "ucgate_shared_token_previous_uses_total", &[]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ucgate_requests_total",
            &[("route", "api"), ("credential", "shared-previous")]
        ),
        Some(2.0),
        "{text}"
    );

    // The rotation ends: previous_env removed and reloaded; the old token no longer opens.
    let done = ConfigBuilder::new()
        .server("watch_interval = \"0s\"")
        .route(route("api", "/api/", &up.url()))
        .build();
    write_atomic(&gate.config_path, done);
    gate.signal(libc::SIGHUP);
    gate.wait_log("configuration reloaded").await;
    assert_eq!(
        get("/api/new2", Some(NEW_TOKEN)).await.unwrap().status(),
        200
    );
    let old = get("/api/old2", Some(OLD_TOKEN)).await.unwrap();
    assert_error(old, 401, "TokenInvalid").await;
    assert_eq!(up.count(), 4);

    let logs = gate.logs();
    assert!(
        !logs.contains(NEW_TOKEN) && !logs.contains(OLD_TOKEN),
        "{logs}"
    );
    assert!(!text.contains(NEW_TOKEN) && !text.contains(OLD_TOKEN));
}

// ---------------------------------------------------------------------------------------------
// 4. doctor
// ---------------------------------------------------------------------------------------------

/// Two sound shared tokens, made at run time by ucgate's own generator: no token-like value
/// sits in the repository.
fn strong() -> &'static str {
    static TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(ucgate::new_token);
    &TOKEN
}

fn strong_other() -> &'static str {
    static TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(ucgate::new_token);
    &TOKEN
}
const WEAK: &str = "changeme";

struct Doctor {
    code: Option<i32>,
    output: String,
}

fn doctor(args: &[&str]) -> Doctor {
    doctor_env(args, None)
}

/// `ucgate doctor` with PLAY_AUTH_TOKEN set to `token` in its environment, or unset.
fn doctor_env(args: &[&str], token: Option<&str>) -> Doctor {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ucgate"));
    command.arg("doctor").args(args).env_clear();
    if let Some(token) = token {
        command.env("PLAY_AUTH_TOKEN", token);
    }
    let output = command.output().unwrap();
    Doctor {
        code: output.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// A fake XiVO root: `etc/docker/COMPONENT/custom.env` with these contents.
fn xivo_root(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (component, contents) in files {
        let dir = root.path().join("etc/docker").join(component);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("custom.env"), contents).unwrap();
    }
    root
}

fn env_line(value: &str) -> String {
    format!("# XiVO\nXIVO_HOST=10.0.0.1\nPLAY_AUTH_TOKEN={value}\n")
}

#[test]
fn doctor_checks_the_shared_token_everywhere_without_printing_it() {
    let secrets = [strong(), strong_other(), WEAK, SHARED_TOKEN];
    // `token`: PLAY_AUTH_TOKEN in doctor's environment, where `ucgate run` looks first.
    let check_env = |args: &[&str], token: Option<&str>, code: i32, needles: &[&str]| {
        let d = doctor_env(args, token);
        assert_eq!(d.code, Some(code), "{args:?}:\n{}", d.output);
        for needle in needles {
            assert!(
                d.output.contains(needle),
                "{args:?}: no {needle:?} in\n{}",
                d.output
            );
        }
        for secret in secrets {
            assert!(
                !d.output.contains(secret),
                "{args:?} printed a token:\n{}",
                d.output
            );
        }
        d.output
    };
    let check = |args: &[&str], code: i32, needles: &[&str]| check_env(args, None, code, needles);

    let strong_line = env_line(strong());
    let same = xivo_root(&[
        ("xivo", &strong_line),
        ("mds", &strong_line),
        ("compose", &strong_line),
    ]);
    let same_root = same.path().to_str().unwrap();
    check(&["--root", same_root], 0, &["identical in the 3 file(s)"]);

    let differs = xivo_root(&[
        ("xivo", &strong_line),
        ("mds", &env_line(strong_other())),
        ("compose", &strong_line),
    ]);
    check(
        &["--root", differs.path().to_str().unwrap()],
        1,
        &["differs", "2 distinct values"],
    );

    let weak = xivo_root(&[("xivo", &env_line(WEAK)), ("compose", &env_line(WEAK))]);
    let out = check(&["--root", weak.path().to_str().unwrap()], 1, &["weak"]);
    assert!(out.contains("mds/custom.env: not present"), "{out}");

    // Defined nowhere: files without the variable, or no XiVO file at all.
    let undefined = xivo_root(&[("xivo", "XIVO_HOST=10.0.0.1\n"), ("compose", "# empty\n")]);
    check(
        &["--root", undefined.path().to_str().unwrap()],
        1,
        &["is not defined", "defined nowhere"],
    );
    let empty = tempfile::tempdir().unwrap();
    check(
        &["--root", empty.path().to_str().unwrap()],
        1,
        &["defined nowhere"],
    );

    // The environment: judged and compared too, never printed.
    let empty_root = empty.path().to_str().unwrap();
    let out = check_env(
        &["--root", empty_root],
        Some(WEAK),
        1,
        &["environment variable PLAY_AUTH_TOKEN is weak"],
    );
    assert!(!out.contains("defined nowhere"), "{out}");
    check_env(
        &["--root", empty_root],
        Some("x"),
        1,
        &["is weak: shorter than 24"],
    );
    let out = check_env(
        &["--root", empty_root],
        Some(strong()),
        0,
        &["in the environment only"],
    );
    assert!(!out.contains("FAIL"), "{out}");
    check_env(
        &["--root", same_root],
        Some(strong()),
        0,
        &["identical in the 3 file(s) and the environment"],
    );
    check_env(
        &["--root", same_root],
        Some(strong_other()),
        1,
        &["differs", "2 distinct values"],
    );
    let out = doctor(&["--root", same_root]).output;
    assert!(
        out.contains("environment variable PLAY_AUTH_TOKEN: unset"),
        "{out}"
    );

    // Files copied from the other servers of a multi-server install.
    let copies = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &str| {
        let path = copies.path().join(name);
        std::fs::write(&path, env_line(value)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let mds2_same = write("mds2.env", strong());
    let mds3_other = write("mds3.env", strong_other());
    let out = check(
        &["--root", same_root, &mds2_same],
        0,
        &["identical in the 4 file(s)", "mds2.env"],
    );
    assert!(!out.contains("FAIL"), "{out}");
    check(
        &["--root", same_root, &mds2_same, &mds3_other],
        1,
        &["differs"],
    );
    let nowhere = copies.path().join("absent.env");
    check(
        &["--root", same_root, nowhere.to_str().unwrap()],
        1,
        &["absent.env: no such file"],
    );
    // Only the extra files, under an empty root.
    check(
        &["--root", empty.path().to_str().unwrap(), &mds2_same],
        0,
        &["identical in the 1 file(s)"],
    );

    // Another variable name.
    let custom = xivo_root(&[("compose", &format!("OTHER_TOKEN={}\n", strong()))]);
    check(
        &[
            "--root",
            custom.path().to_str().unwrap(),
            "--variable",
            "OTHER_TOKEN",
        ],
        0,
        &["OTHER_TOKEN is identical"],
    );

    // --new-token: 43 base64url characters, fresh each time, judged strong.
    let fresh = doctor(&["--new-token"]);
    assert_eq!(fresh.code, Some(0), "{}", fresh.output);
    let token = fresh.output.trim().to_owned();
    assert_eq!(token.len(), 43, "{token:?}");
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{token}"
    );
    assert_ne!(token, doctor(&["--new-token"]).output.trim());
    let line = env_line(&token);
    let fresh_root = xivo_root(&[("xivo", &line), ("mds", &line), ("compose", &line)]);
    let d = doctor(&["--root", fresh_root.path().to_str().unwrap()]);
    assert_eq!(d.code, Some(0), "{}", d.output);
    assert!(!d.output.contains(&token), "{}", d.output);
}

/// A weak shared token still starts ucgate (sites must keep running), with a warning that says
/// why and never prints the value, at start, at each reload and in `check-config`.
#[tokio::test]
async fn a_weak_shared_token_is_warned_about_without_its_value() {
    const WEAK_SHORT: &str = "Zq7weak";
    let up = Upstream::start().await;
    let config = ConfigBuilder::new()
        .route(route("api", "/api/", &up.url()))
        .build();
    for weak in [WEAK_SHORT, WEAK] {
        let finished = Ucgate::builder(config.clone())
            .env("PLAY_AUTH_TOKEN", weak)
            .run(&["check-config"]);
        assert_eq!(finished.code(), Some(0), "{finished:?}");
        let output = format!("{}{}", finished.stdout, finished.stderr);
        assert!(
            finished.stderr.contains(
                "warning: the shared token from environment variable PLAY_AUTH_TOKEN is weak"
            ),
            "{output}"
        );
        assert!(!output.contains(weak), "{output}");
    }
    let strong_check = Ucgate::builder(config.clone())
        .env("PLAY_AUTH_TOKEN", strong())
        .run(&["check-config"]);
    assert_eq!(strong_check.code(), Some(0), "{strong_check:?}");
    assert!(
        !strong_check.stderr.contains("weak"),
        "{}",
        strong_check.stderr
    );

    let gate = Ucgate::builder(config.clone())
        .env("PLAY_AUTH_TOKEN", WEAK_SHORT)
        .start()
        .await;
    let warning = gate.wait_log("is weak").await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("shorter than 24 characters"), "{warning}");
    let response = client()
        .get(gate.url("/api/x"))
        .header(X_AUTH_TOKEN, WEAK_SHORT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "it still opens the routes");
    gate.signal(libc::SIGHUP);
    gate.wait_log("configuration reloaded").await;
    gate.wait_log_count("is weak", 2).await;
    assert!(!gate.logs().contains(WEAK_SHORT), "{}", gate.logs());

    let gate = Ucgate::builder(config)
        .env("PLAY_AUTH_TOKEN", strong())
        .start()
        .await;
    assert!(!gate.logs().contains("is weak"), "{}", gate.logs());

    // The previous token of a rotation opens the same routes: judged too.
    let rotating = ConfigBuilder::new()
        .shared_token("previous_env = \"PLAY_AUTH_TOKEN_PREVIOUS\"")
        .route(route("api", "/api/", &up.url()))
        .build();
    let finished = Ucgate::builder(rotating)
        .env("PLAY_AUTH_TOKEN", strong())
        .env("PLAY_AUTH_TOKEN_PREVIOUS", WEAK_SHORT)
        .run(&["check-config"]);
    assert_eq!(finished.code(), Some(0), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains("previous shared token from environment variable PLAY_AUTH_TOKEN_PREVIOUS"),
        "{}",
        finished.stderr
    );
    assert!(!finished.stderr.contains(WEAK_SHORT), "{}", finished.stderr);
}

// ---------------------------------------------------------------------------------------------
// 5, 6. TLS
// ---------------------------------------------------------------------------------------------

/// A private CA.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate for localhost and 127.0.0.1 signed by `ca`.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, serial: u8) -> Leaf {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from_slice(&[serial]));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// An HTTPS client that trusts only `ca`, opens a new connection for every request and
/// reports the peer certificate.
fn tls_client(ca: &CertifiedIssuer<'static, KeyPair>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
}

/// ucgate serving HTTPS with `leaf` (`cert.pem`, `key.pem`, watched), `/api/` to `up`, and one
/// more `[server]` line.
async fn tls_gate(up: &Upstream, leaf: &Leaf, server_line: &str) -> Ucgate {
    let config = ConfigBuilder::new()
        .server("tls = { cert = \"cert.pem\", key = \"key.pem\" }")
        .server(server_line)
        .route(route("api", "/api/", &up.url()))
        .build();
    Ucgate::builder(config)
        .file("cert.pem", &leaf.cert_pem)
        .file("key.pem", &leaf.key_pem)
        .start()
        .await
}

fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

#[tokio::test]
async fn the_tls_listener_serves_h1_and_h2_and_picks_up_new_certificates() {
    let up = Upstream::start().await;
    let (ca1, ca2) = (ca("ucgate test CA 1"), ca("ucgate test CA 2"));
    let first = leaf(&ca1, "ucgate-first", 1);
    let gate = tls_gate(&up, &first, "watch_interval = \"200ms\"").await;
    let https = |path: &str| format!("https://{}{path}", gate.addr());

    for (builder, version) in [
        (tls_client(&ca1).http1_only(), Version::HTTP_11),
        (tls_client(&ca1), Version::HTTP_2),
    ] {
        let response = builder
            .build()
            .unwrap()
            .get(https("/api/tls"))
            .header(X_AUTH_TOKEN, SHARED_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version, "ALPN");
        assert_eq!(peer_certificate(&response), first.der);
        let seen = up.last();
        assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
        assert_eq!(seen.path, "/api/tls");
    }
    assert_eq!(up.count(), 2);

    // Plaintext HTTP on the TLS port (an http:// URL for this https:// listener): told so in
    // plain HTTP, as nginx does, then closed; never forwarded, nothing echoed; serving goes on.
    let mut plain = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    plain
        .write_all(raw_request("GET", "/api/plain", &[(X_AUTH_TOKEN, SHARED_TOKEN)]).as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, plain.read_to_end(&mut answer))
        .await
        .expect("ucgate kept a plaintext connection open on its TLS port")
        .unwrap();
    assert!(!String::from_utf8_lossy(&answer).contains(SHARED_TOKEN));
    parse_response(&answer).assert_error(400, "PlainHttpToTls");
    drop(plain);
    gate.wait_log("plain HTTP on the TLS listener").await;
    assert_eq!(up.count(), 2, "the plaintext request was never forwarded");
    // Neither a TLS client's garbage: its handshake fails, without an HTTP answer.
    let mut garbage = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x00\x05hello")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(BOUND, garbage.read_to_end(&mut answer))
        .await
        .expect("ucgate kept a broken handshake open");
    assert!(
        read.is_err() || !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    gate.wait_log("TLS handshake failed").await;
    let again = tls_client(&ca1).build().unwrap();
    let response = again
        .get(https("/api/after-plain"))
        .header(X_AUTH_TOKEN, SHARED_TOKEN);
    assert_eq!(response.send().await.unwrap().status(), 200);

    // Rotation: new key and certificate from another CA, picked up by the watcher.
    let second = leaf(&ca2, "ucgate-second", 2);
    write_atomic(&gate.dir().join("key.pem"), &second.key_pem);
    write_atomic(&gate.dir().join("cert.pem"), &second.cert_pem);
    let trusts_second = tls_client(&ca2).build().unwrap();
    let deadline = Instant::now() + BOUND;
    let response = loop {
        let attempt = trusts_second
            .get(https("/api/rotated"))
            .header(X_AUTH_TOKEN, SHARED_TOKEN)
            .send()
            .await;
        match attempt {
            Ok(response) => break response,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the new certificate was never served: {e:?}\n{}",
                gate.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(response.status(), 200);
    assert_eq!(peer_certificate(&response), second.der);
    assert_ne!(first.der, second.der);
    gate.wait_log("configuration reloaded").await;
    // A client that trusts only the old CA cannot connect any more.
    let old = tls_client(&ca1).build().unwrap();
    let refused = old
        .get(https("/api/old-ca"))
        .header(X_AUTH_TOKEN, SHARED_TOKEN)
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(up.last().path, "/api/rotated");
}

/// A TLS front for a harness upstream: terminates TLS with `leaf`, relays the bytes.
async fn tls_front(target: SocketAddr, leaf: &Leaf) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    ucgate::install_provider();
    let certs = vec![rustls_pki_types::CertificateDer::from(leaf.der.clone())];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstreams_are_checked_against_the_configured_ca() {
    let up = Upstream::start().await;
    let private_ca = ca("XiVO private CA");
    let front = tls_front(up.addr, &leaf(&private_ca, "localhost", 7)).await;
    let upstream = format!("https://localhost:{}", front.port());
    let with_ca = ConfigBuilder::new()
        .server("upstream_ca = \"ca.pem\"")
        .route(route("rec", "/recording/", &upstream))
        .build();
    let gate = Ucgate::builder(with_ca.clone())
        .file("ca.pem", private_ca.pem())
        .start()
        .await;
    let response = get_shared(&gate, "/recording/records?page=2").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["target"], "/recording/records?page=2");
    let seen = up.last();
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    assert_eq!(
        seen.header("host"),
        Some(format!("localhost:{}", front.port()))
    );
    drop(gate);

    // The system's roots do not know the private CA; nor does another CA's bundle.
    let without_ca = ConfigBuilder::new()
        .server("watch_interval = \"200ms\"")
        .route(route("rec", "/recording/", &upstream))
        .build();
    let gate = Ucgate::start(without_ca).await;
    assert_error(
        get_shared(&gate, "/recording/x").await,
        502,
        "UpstreamUnavailable",
    )
    .await;
    std::fs::write(gate.dir().join("other-ca.pem"), ca("another CA").pem()).unwrap();
    std::fs::write(gate.dir().join("ca.pem"), private_ca.pem()).unwrap();
    write_atomic(
        &gate.config_path,
        with_ca.replace("ca.pem", "other-ca.pem") + "\n",
    );
    wait_log_count(&gate, "configuration reloaded", 1).await;
    assert_error(
        get_shared(&gate, "/recording/y").await,
        502,
        "UpstreamUnavailable",
    )
    .await;
    assert_eq!(
        up.count(),
        1,
        "nothing reached the upstream without a trusted certificate"
    );
    // Reloading with the right bundle: the new client trusts it.
    write_atomic(&gate.config_path, with_ca);
    wait_log_count(&gate, "configuration reloaded", 2).await;
    let response = get_shared(&gate, "/recording/z").await;
    assert_eq!(response.status(), 200);
    assert_eq!(up.last().path, "/recording/z");
    assert!(!gate.logs().contains(SHARED_TOKEN));
}

// ---------------------------------------------------------------------------------------------
// 7. /metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_requests_latency_and_auth_failures() {
    let up = Upstream::start().await;
    let config = ConfigBuilder::new()
        .route(route("api", "/api/", &up.url()))
        .route(route("down", "/down/", &closed_url()))
        .build();
    let gate = Ucgate::start(config).await;
    for _ in 0..3 {
        assert_eq!(get_shared(&gate, "/api/x").await.status(), 200);
    }
    let no_token = client().get(gate.url("/api/x")).send().await.unwrap();
    assert_error(no_token, 401, "TokenMissing").await;
    for _ in 0..2 {
        let wrong = client()
            .get(gate.url("/api/x"))
            .header(X_AUTH_TOKEN, "not-the-token")
            .send()
            .await
            .unwrap();
        assert_error(wrong, 401, "TokenInvalid").await;
    }
    assert_error(get_shared(&gate, "/nowhere").await, 404, "NoRoute").await;
    assert_error(
        get_shared(&gate, "/down/x").await,
        502,
        "UpstreamUnavailable",
    )
    .await;

    let text = metrics_text(&gate).await;
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF: {text}"
    );
    for family in [
        "# TYPE ucgate_requests counter",
        "# TYPE ucgate_upstream_response_seconds histogram",
        "# TYPE ucgate_auth_failures counter",
        "# TYPE ucgate_shared_token_previous_uses counter",
    ] {
        assert!(text.contains(family), "no {family:?} in\n{text}");
    }
    // Without [cluster] and [xuc] no gauge says that they are down: they are not there at all.
    for absent in ["ucgate_cluster_up", "ucgate_xuc_up"] {
        assert!(
            !text.contains(absent),
            "{absent} without its section:\n{text}"
        );
    }
    let requests = |text: &str, route: &str, status: &str, credential: &str| {
        sample(
            text,
            "ucgate_requests_total",
            &[
                ("route", route),
                ("status", status),
                ("credential", credential),
            ],
        )
    };
    assert_eq!(requests(&text, "api", "200", "shared"), Some(3.0), "{text}");
    assert_eq!(requests(&text, "api", "401", "none"), Some(3.0), "{text}");
    assert_eq!(
        requests(&text, "down", "502", "shared"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(requests(&text, "-", "404", "none"), Some(1.0), "{text}");
    let failures = |text: &str, reason: &str| {
        sample(text, "ucgate_auth_failures_total", &[("reason", reason)])
    };
    assert_eq!(failures(&text, "TokenMissing"), Some(1.0), "{text}");
    assert_eq!(failures(&text, "TokenInvalid"), Some(2.0), "{text}");
    let latency = |text: &str, suffix: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("route", "api")];
        labels.extend_from_slice(extra);
        sample(
            text,
            &format!("ucgate_upstream_response_seconds_{suffix}"),
            &labels,
        )
    };
    assert_eq!(latency(&text, "count", &[]), Some(3.0), "{text}");
    assert_eq!(
        latency(&text, "bucket", &[("le", "+Inf")]),
        Some(3.0),
        "{text}"
    );
    assert!(
        latency(&text, "sum", &[]).is_some_and(|s| s > 0.0),
        "{text}"
    );
    // Only answered upstream requests are timed.
    assert_eq!(
        sample(
            &text,
            "ucgate_upstream_response_seconds_count",
            &[("route", "down")]
        ),
        None,
        "{text}"
    );

    // The counts move.
    assert_eq!(get_shared(&gate, "/api/y").await.status(), 200);
    let wrong = client()
        .get(gate.url("/api/y"))
        .header(X_AUTH_TOKEN, "still-not-the-token")
        .send()
        .await
        .unwrap();
    assert_error(wrong, 401, "TokenInvalid").await;
    let after = metrics_text(&gate).await;
    assert_eq!(
        requests(&after, "api", "200", "shared"),
        Some(4.0),
        "{after}"
    );
    assert_eq!(failures(&after, "TokenInvalid"), Some(3.0), "{after}");
    assert_eq!(latency(&after, "count", &[]), Some(4.0), "{after}");
    assert_eq!(
        requests(&after, "metrics", "200", "none"),
        Some(1.0),
        "{after}"
    );
    assert!(!after.contains(SHARED_TOKEN) && !after.contains("not-the-token"));
    assert_eq!(up.count(), 4);
}

/// Issue 19: with `server.admin_listen`, `/metrics`, `/healthz` and `/readyz` are answered there
/// (plain HTTP, even when the public listener speaks TLS) and 404 on the public listener; the
/// operator's listener serves nothing else, not a route, not the exchange API.
#[tokio::test]
async fn the_operators_listener_alone_serves_metrics_and_health() {
    let up = Upstream::start().await;
    let ca = ca("ucgate admin test CA");
    let leaf = leaf(&ca, "ucgate-admin", 3);
    let gate = tls_gate(&up, &leaf, "admin_listen = \"127.0.0.1:0\"").await;
    let line = gate.wait_log("listening for the operator").await;
    let admin: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_ne!(admin, gate.addr());
    let public = tls_client(&ca).build().unwrap();
    let https = |path: &str| format!("https://{}{path}", gate.addr());
    let plain = |path: &str| format!("http://{admin}{path}");

    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = public.get(https(path)).send().await.unwrap();
        assert_error(response, 404, "NoRoute").await;
        let response = public
            .get(https(path))
            .header(X_AUTH_TOKEN, SHARED_TOKEN)
            .send()
            .await
            .unwrap();
        assert_error(response, 404, "NoRoute").await;
        let response = client().get(plain(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} on the operator's listener");
    }
    // The public listener still does its job.
    let response = public
        .get(https("/api/x"))
        .header(X_AUTH_TOKEN, SHARED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(up.count(), 1);

    // The operator's listener serves nothing else, whatever the credential.
    let forwarded = client()
        .get(plain("/api/x"))
        .header(X_AUTH_TOKEN, SHARED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_error(forwarded, 404, "NoRoute").await;
    let login = client()
        .post(plain("/xuc/api/2.0/auth/login"))
        .json(&serde_json::json!({"login": "alice", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(login, 404, "NoRoute").await;
    assert_eq!(
        up.count(),
        1,
        "nothing forwarded from the operator's listener"
    );
    // Its methods are GET and HEAD, whatever the method refused.
    for method in ["POST", "TRACE"] {
        let response = client()
            .request(method.parse().unwrap(), plain("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], "GET, HEAD", "{method}");
        assert_error(response, 405, "MethodNotAllowed").await;
    }
    // It is plain HTTP: a TLS client gets no answer there.
    let tls_on_admin = public.get(format!("https://{admin}/metrics")).send().await;
    assert!(tls_on_admin.is_err(), "{tls_on_admin:?}");

    let text = client()
        .get(plain("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &text,
            "ucgate_requests_total",
            &[("route", "api"), ("status", "200")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains(SHARED_TOKEN));
}

/// Without `server.admin_listen` the public listener keeps serving them; and the operator's
/// listener cannot share an address with a public one.
#[tokio::test]
async fn without_an_operators_listener_health_stays_on_the_public_one() {
    let up = Upstream::start().await;
    let config = ConfigBuilder::new().route(route("api", "/api/", &up.url()));
    let gate = Ucgate::start(config.build()).await;
    assert!(!gate.logs().contains("listening for the operator"));
    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = client().get(gate.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    let clash = config
        .clone()
        .server("listen = [\"127.0.0.1:18123\"]")
        .server("admin_listen = \"127.0.0.1:18123\"")
        .build();
    let finished = Ucgate::builder(clash).run(&["check-config"]);
    assert_eq!(finished.code(), Some(2), "{finished:?}");
    assert!(
        finished.stderr.contains("server.admin_listen"),
        "{}",
        finished.stderr
    );
    // The same clash made by --listen, which replaces server.listen.
    let by_flag = config
        .server("listen = [\"127.0.0.1:18124\"]")
        .server("admin_listen = \"127.0.0.1:18123\"")
        .build();
    for command in ["check-config", "run"] {
        let finished =
            Ucgate::builder(by_flag.clone()).run(&["--listen", "127.0.0.1:18123", command]);
        assert_eq!(finished.code(), Some(2), "{command}: {finished:?}");
        assert!(
            finished.stderr.contains("or --listen"),
            "{command}: {}",
            finished.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 8. The deploy example
// ---------------------------------------------------------------------------------------------

fn check_config(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ucgate"))
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What `deploy/ucgate.toml` needs besides the shared token: the HS256 key of `[tokens]`.
const DEPLOY_SIGNING_KEY: &str = "deploy-signing-key-0123456789abcdef0123456789";

#[test]
fn the_deploy_example_config_is_valid() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let config = deploy.join("ucgate.toml");
    let (code, stdout, stderr) = check_config(
        &config,
        &[
            ("PLAY_AUTH_TOKEN", SHARED_TOKEN),
            ("UCGATE_SIGNING_KEY", DEPLOY_SIGNING_KEY),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for needle in [
        "is valid",
        "shared token: from environment variable PLAY_AUTH_TOKEN",
        "configmgt",
        "/configmgt/",
        "recording",
        "/recording/",
        "admin_listen: 127.0.0.1:9090 (metrics, health; not on listen)",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in\n{stdout}");
    }
    let all = format!("{stdout}{stderr}");
    assert!(!all.contains(SHARED_TOKEN) && !all.contains(DEPLOY_SIGNING_KEY));
    // The example ships without users: valid, and said to let no one in.
    assert!(
        stderr.contains("0 users in") && stderr.contains("no one can log in until users are added"),
        "{stderr}"
    );

    // `UCGATE_LISTEN` (as `--listen`) replaces server.listen for check-config as for run.
    let (code, stdout, stderr) = check_config(
        &config,
        &[
            ("PLAY_AUTH_TOKEN", SHARED_TOKEN),
            ("UCGATE_SIGNING_KEY", DEPLOY_SIGNING_KEY),
            ("UCGATE_LISTEN", "127.0.0.1:38080,127.0.0.1:38081"),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "listen: 127.0.0.1:38080, 127.0.0.1:38081 (--listen or UCGATE_LISTEN, instead of \
             server.listen: 127.0.0.1:8080)"
        ),
        "{stdout}"
    );

    // As deployed beside XiVO: no variable, the token comes from the compose custom.env (here
    // the example, with a real value), the users file from beside the config.
    let dir = tempfile::tempdir().unwrap();
    let custom_env = dir.path().join("custom.env");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("/etc/docker/compose/custom.env"), "{text}");
    std::fs::write(
        dir.path().join("ucgate.toml"),
        text.replace(
            "/etc/docker/compose/custom.env",
            custom_env.to_str().unwrap(),
        ),
    )
    .unwrap();
    std::fs::copy(deploy.join("users.toml"), dir.path().join("users.toml")).unwrap();
    let example = std::fs::read_to_string(deploy.join("custom.env.example")).unwrap();
    assert!(example.contains("PLAY_AUTH_TOKEN="), "{example}");
    std::fs::write(
        &custom_env,
        example.replace(
            "PLAY_AUTH_TOKEN=",
            &format!("PLAY_AUTH_TOKEN={}\n#", strong()),
        ),
    )
    .unwrap();
    let copied = dir.path().join("ucgate.toml");
    let signing_key = [("UCGATE_SIGNING_KEY", DEPLOY_SIGNING_KEY)];
    let (code, stdout, stderr) = check_config(&copied, &signing_key);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("PLAY_AUTH_TOKEN in {}", custom_env.display())),
        "{stdout}"
    );
    assert!(!stdout.contains(strong()) && !stderr.contains(strong()));

    // Neither: refused with exit code 2, naming the variable and the file.
    std::fs::remove_file(&custom_env).unwrap();
    let (code, stdout, stderr) = check_config(&copied, &signing_key);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("PLAY_AUTH_TOKEN") && stderr.contains("custom.env"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// SIGHUP from the first moment
// ---------------------------------------------------------------------------------------------

/// A SIGHUP sent as soon as ucgate says it listens (a config manager reloading right after a
/// start) reloads it: it must not meet the default action of SIGHUP, which ends the process.
#[test]
fn a_sighup_right_after_start_reloads_instead_of_killing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ucgate.toml");
    let text = ConfigBuilder::new()
        .server("watch_interval = \"0s\"")
        .route(route("api", "/api/", &closed_url()))
        .build();
    std::fs::write(&config, text).unwrap();
    // Several starts: the window is short, each attempt may hit it.
    for attempt in 0..8 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ucgate"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env_clear()
            .env("PLAY_AUTH_TOKEN", SHARED_TOKEN)
            .env("UCGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        let mut wait_for = |needle: &str| loop {
            match lines.recv_timeout(BOUND) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        };
        assert!(wait_for("listening"), "attempt {attempt}: {seen:#?}");
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        assert_eq!(
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) },
            0
        );
        let reloaded = wait_for("configuration reloaded");
        let status = child.try_wait().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            reloaded,
            "attempt {attempt}: no reload after an early SIGHUP (exit: {status:?}); stderr:\n{}",
            seen.join("\n")
        );
    }
}

#[tokio::test]
async fn a_slow_head_over_tls_is_408_too() {
    let up = Upstream::start().await;
    let ca1 = ca("ucgate test CA");
    let gate = tls_gate(
        &up,
        &leaf(&ca1, "ucgate", 1),
        "request_header_timeout = \"1s\"",
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca1.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    // The handshake is done; half a head follows, then nothing.
    stream
        .write_all(
            format!("GET /api/x HTTP/1.1\r\nHost: gate\r\n{X_AUTH_TOKEN}: {SHARED_TOKEN}\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut answer))
        .await
        .expect("the connection stayed open");
    parse_response(&answer).assert_error(408, "RequestTimeout");
    assert_eq!(up.count(), 0);
}

/// stderr a pipe whose reader has left (a log collector gone, `ucgate 2>&1 | tee` ended): the
/// lines that cannot be written are dropped. tracing's writer reported each with `eprintln!`
/// to that same stderr, which panics: a request that logged a line was cut off (no answer) and
/// SIGTERM's "SIGTERM received" ended the process with 101 instead of draining it.
#[tokio::test]
async fn a_broken_stderr_pipe_cuts_neither_requests_nor_the_shutdown() {
    use std::io::BufRead;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ucgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nshutdown_grace = \"10s\"\n\n\
             [[route]]\nname = \"gone\"\nprefix = \"/gone/\"\nupstream = \"http://{dead_addr}\"\n\
             accept = []\nupstream_auth = \"none\"\n"
        ),
    )
    .unwrap();
    /// Killed on drop: a failing assertion leaves no ucgate behind.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ucgate"))
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("PLAY_AUTH_TOKEN", SHARED_TOKEN)
        // The failed upstream request is logged at debug: a line written during the request.
        .env("UCGATE_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Killed)
        .unwrap();
    let child = &mut child.0;
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr: SocketAddr = loop {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "no `listening` line"
        );
        if let Some(addr) = listening_addrs(&line).pop() {
            break addr;
        }
    };
    // The reader leaves: every later write to stderr fails with EPIPE.
    drop(stderr);

    for path in ["/gone/x", "/healthz"] {
        let response = client()
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: no answer: {e}"));
        let expected = if path == "/healthz" { 200 } else { 502 };
        assert_eq!(response.status(), expected, "{path}");
    }
    // SAFETY: kill(2) on the pid of a child we own and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            panic!("ucgate did not exit within {BOUND:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}
