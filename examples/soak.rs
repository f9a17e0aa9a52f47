//! Bounded soak test (issue 9): the real ucgate binary between a loopback client and an in-process
//! upstream, under a mix of valid and invalid credentials, 8 MiB streamed uploads and a SIGHUP
//! every 500 ms. Reports requests by kind, unexpected outcomes, memory and file descriptors, and
//! exits non-zero when anything unexpected happened, fds grew by more than 16 or RSS by more than
//! 32 MiB.
//!
//! `soak --binary target/release/ucgate --seconds 60` (see `scripts/soak.sh`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHARED_TOKEN: &str = "soak-shared-token-3f9c1a7e5b2d4c6e8a0b1d3f5a7c9e1b";
const SIGNING_KEY: &str = "soak-signing-key-0123456789abcdef0123456789abcdef";
const LOGIN: &str = "soaker";
const PASSWORD: &str = "correct horse battery staple";
const UPLOAD_BYTES: usize = 8 * 1024 * 1024;
const UPLOAD_CHUNK: usize = 64 * 1024;
const TASKS: usize = 16;
const UPLOAD_TASKS: usize = 2;
const MAX_FD_GROWTH: i64 = 16;
const MAX_RSS_GROWTH_KB: i64 = 32 * 1024;

/// The kinds of request sent, in report order.
const KINDS: [&str; 6] = [
    "shared_get",
    "uc_get",
    "wrong_token",
    "missing_token",
    "traversal",
    "upload_8mib",
];

#[derive(Default)]
struct Stats {
    sent: BTreeMap<&'static str, u64>,
    unexpected: BTreeMap<&'static str, u64>,
    examples: Vec<String>,
}

impl Stats {
    fn record(&mut self, kind: &'static str, outcome: Result<(), String>) {
        *self.sent.entry(kind).or_default() += 1;
        if let Err(e) = outcome {
            *self.unexpected.entry(kind).or_default() += 1;
            if self.examples.len() < 10 {
                self.examples.push(format!("{kind}: {e}"));
            }
        }
    }
}

/// What the upstream saw that it should not have.
#[derive(Default)]
struct UpstreamSeen {
    requests: AtomicU64,
    bad_token: AtomicU64,
    leaked_path: AtomicU64,
    body_bytes: AtomicU64,
}

struct Args {
    binary: PathBuf,
    seconds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut binary = PathBuf::from("target/release/ucgate");
    let mut seconds = 60;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--binary" => binary = args.next().ok_or("--binary needs a path")?.into(),
            "--seconds" => {
                seconds = args
                    .next()
                    .ok_or("--seconds needs a number")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if seconds < 2 {
        return Err("--seconds must be at least 2".into());
    }
    Ok(Args { binary, seconds })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}\nusage: soak --binary PATH --seconds N");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let seen = Arc::new(UpstreamSeen::default());
    let upstream = start_upstream(seen.clone()).await?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = write_config(dir.path(), &args.binary, upstream)?;
    let (mut child, addr, log) = start_ucgate(&args.binary, &config).await?;
    let pid = child.id();
    let base = format!("http://{addr}");
    let result = soak(&args, &base, pid, &seen).await;

    // Stop: SIGTERM, exit code 0 expected (bounded wait).
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut ok = match result {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("soak: error: {e}");
            false
        }
    };
    match status {
        Some(s) if s.success() => println!("ucgate exit        : {s} after SIGTERM"),
        Some(s) => {
            println!("ucgate exit        : {s} after SIGTERM (FAIL: expected 0)");
            ok = false;
        }
        None => {
            println!("ucgate exit        : did not exit within 15 s of SIGTERM (FAIL)");
            ok = false;
        }
    }
    let log = log.lock().unwrap();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    println!("ucgate warn/error : {} log lines", problems.len());
    for line in problems.iter().take(5) {
        println!("  {line}");
    }
    println!("verdict            : {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// The load phases and the measurements; true when everything was as expected.
async fn soak(args: &Args, base: &str, pid: u32, seen: &UpstreamSeen) -> Result<bool, String> {
    let uc_token = login(base).await?;
    let total = Duration::from_secs(args.seconds);
    let warmup = Duration::from_secs(5)
        .min(total / 10)
        .max(Duration::from_secs(1));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let reloads = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    // Warm-up, then quiesce (clients dropped, idle connections closed) and take the baseline.
    load(base, &uc_token, warmup, &stats, pid, &reloads).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Sample::take(pid)?;
    load(
        base,
        &uc_token,
        total.saturating_sub(warmup),
        &stats,
        pid,
        &reloads,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = Sample::take(pid)?;
    let elapsed = started.elapsed();

    // Still serving after all that: one last valid request.
    let client = reqwest::Client::new();
    let last = client
        .get(format!("{base}/api/final"))
        .header("x-auth-token", SHARED_TOKEN)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string());
    // The SIGHUPs reloaded: ucgate_config_reloads_total{outcome="ok"} from /metrics.
    let metrics = match client.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let reloaded: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("ucgate_config_reloads_total"))
        .map(str::to_string)
        .collect();
    let stats = stats.lock().unwrap();
    let mut unexpected: u64 = stats.unexpected.values().sum();
    if last.as_ref().ok() != Some(&200) {
        println!("final request      : {last:?} (FAIL: expected 200)");
        unexpected += 1;
    }
    let leaked = seen.bad_token.load(Ordering::Relaxed) + seen.leaked_path.load(Ordering::Relaxed);
    unexpected += leaked;

    let fd_growth = end.fds as i64 - start.fds as i64;
    let rss_growth = end.rss_kb as i64 - start.rss_kb as i64;
    let total_sent: u64 = stats.sent.values().sum();
    println!(
        "== ucgate soak: {:.1} s, {TASKS} tasks, pid {pid} ==",
        elapsed.as_secs_f64()
    );
    println!("{:<19}{:>10}{:>12}", "kind", "requests", "unexpected");
    for kind in KINDS {
        println!(
            "{kind:<19}{:>10}{:>12}",
            stats.sent.get(kind).copied().unwrap_or(0),
            stats.unexpected.get(kind).copied().unwrap_or(0)
        );
    }
    println!("{:<19}{total_sent:>10}", "total");
    println!(
        "reloads (SIGHUP)   : {} sent; ucgate: {}",
        reloads.load(Ordering::Relaxed),
        reloaded.join(", ")
    );
    println!(
        "upstream saw       : {} requests, {} MiB of bodies, {} without the shared token, {} traversal paths",
        seen.requests.load(Ordering::Relaxed),
        seen.body_bytes.load(Ordering::Relaxed) / (1024 * 1024),
        seen.bad_token.load(Ordering::Relaxed),
        seen.leaked_path.load(Ordering::Relaxed),
    );
    for e in &stats.examples {
        println!("  unexpected: {e}");
    }
    println!("unexpected         : {unexpected}");
    println!(
        "RSS                : start {} KiB, end {} KiB (growth {rss_growth} KiB), peak VmHWM {} KiB",
        start.rss_kb, end.rss_kb, end.hwm_kb
    );
    println!(
        "open fds           : start {}, end {} (growth {fd_growth})",
        start.fds, end.fds
    );

    let mut ok = true;
    if unexpected > 0 {
        println!("FAIL: {unexpected} unexpected outcomes");
        ok = false;
    }
    if fd_growth > MAX_FD_GROWTH {
        println!("FAIL: fds grew by {fd_growth} (> {MAX_FD_GROWTH})");
        ok = false;
    }
    if rss_growth > MAX_RSS_GROWTH_KB {
        println!("FAIL: RSS grew by {rss_growth} KiB (> {MAX_RSS_GROWTH_KB} KiB)");
        ok = false;
    }
    if total_sent == 0 {
        println!("FAIL: no request was sent");
        ok = false;
    }
    Ok(ok)
}

/// Runs the mixed load for `duration` with a fresh client (dropped at the end), plus SIGHUPs.
async fn load(
    base: &str,
    uc_token: &str,
    duration: Duration,
    stats: &Arc<Mutex<Stats>>,
    pid: u32,
    reloads: &Arc<AtomicU64>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let client = client.clone();
        let base = base.to_string();
        let uc_token = uc_token.to_string();
        let stats = stats.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut i = task;
            while !stop.load(Ordering::Relaxed) {
                let kind = if task < UPLOAD_TASKS {
                    "upload_8mib"
                } else {
                    KINDS[i % (KINDS.len() - 1)]
                };
                let outcome = one(&client, &base, &uc_token, kind).await;
                stats.lock().unwrap().record(kind, outcome);
                i += 1;
            }
        });
    }
    {
        let stop = stop.clone();
        let reloads = reloads.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                signal(pid, libc::SIGHUP);
                reloads.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    drop(client);
}

/// One request of `kind`; Err describes an unexpected outcome.
async fn one(
    client: &reqwest::Client,
    base: &str,
    uc_token: &str,
    kind: &'static str,
) -> Result<(), String> {
    let url = format!("{base}/api/items/42");
    let (request, expected): (_, &[u16]) = match kind {
        "shared_get" => (
            client.get(&url).header("x-auth-token", SHARED_TOKEN),
            &[200],
        ),
        "uc_get" => (client.get(&url).header("x-auth-token", uc_token), &[200]),
        "wrong_token" => {
            let wrong = if url.len() % 2 == 0 {
                "not-the-shared-token-at-all-0123456789"
            } else {
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
            };
            (client.get(&url).header("x-auth-token", wrong), &[401])
        }
        "missing_token" => (client.get(&url), &[401]),
        "traversal" => return traversal(base).await,
        "upload_8mib" => {
            let chunks = (0..UPLOAD_BYTES / UPLOAD_CHUNK)
                .map(|_| Ok::<_, Infallible>(Bytes::from_static(&[b'x'; UPLOAD_CHUNK])));
            let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
            (
                client
                    .post(format!("{base}/api/upload"))
                    .header("x-auth-token", SHARED_TOKEN)
                    .header("content-type", "application/octet-stream")
                    .body(body),
                &[200],
            )
        }
        _ => unreachable!("unknown kind {kind}"),
    };
    let response = request.send().await.map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| format!("body: {e}"))?;
    if !expected.contains(&status) {
        return Err(format!(
            "status {status}, expected {expected:?}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    if kind == "upload_8mib" {
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("upload answer: {e}"))?;
        if json["bytes"] != UPLOAD_BYTES {
            return Err(format!("upstream received {} bytes", json["bytes"]));
        }
    }
    Ok(())
}

/// `GET /api/../secret` with a valid shared token as a raw request target (reqwest would
/// normalise it): must be refused (400) or find no route (404), never reach the upstream.
async fn traversal(base: &str) -> Result<(), String> {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET /api/../secret HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {SHARED_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    if status == "400" || status == "404" {
        Ok(())
    } else {
        Err(format!(
            "status {status:?}, expected 400 or 404: {}",
            answer.lines().next().unwrap_or("")
        ))
    }
}

async fn login(base: &str) -> Result<String, String> {
    let response = reqwest::Client::new()
        .post(format!("{base}/xuc/api/2.0/auth/login"))
        .json(&serde_json::json!({ "login": LOGIN, "password": PASSWORD }))
        .send()
        .await
        .map_err(|e| format!("login: {e}"))?;
    let status = response.status();
    let json: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("login answer: {e}"))?;
    match json["token"].as_str() {
        Some(token) if status == 200 => Ok(token.to_string()),
        _ => Err(format!("login refused: {status} {json}")),
    }
}

/// The upstream: drains request bodies, answers small JSON, counts what it should not see.
async fn start_upstream(seen: Arc<UpstreamSeen>) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("upstream bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| upstream(req, seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn upstream(
    req: Request<Incoming>,
    seen: Arc<UpstreamSeen>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let token_ok = req
        .headers()
        .get("x-auth-token")
        .is_some_and(|v| v.as_bytes() == SHARED_TOKEN.as_bytes());
    if !token_ok {
        seen.bad_token.fetch_add(1, Ordering::Relaxed);
    }
    if req.uri().path().contains("secret") {
        seen.leaked_path.fetch_add(1, Ordering::Relaxed);
    }
    let path = req.uri().path().to_string();
    let mut body = req.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    seen.body_bytes.fetch_add(bytes, Ordering::Relaxed);
    let json = serde_json::json!({ "ok": token_ok, "path": path, "bytes": bytes });
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    if !token_ok {
        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    }
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn write_config(dir: &Path, binary: &Path, upstream: SocketAddr) -> Result<PathBuf, String> {
    let hash = hash_password(binary)?;
    let users = format!(
        "[[user]]\nlogin = \"{LOGIN}\"\npassword_hash = \"{hash}\"\ncti_enabled = true\nprofile = \"agent\"\n"
    );
    std::fs::write(dir.join("users.toml"), users).map_err(|e| format!("users.toml: {e}"))?;
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
watch_interval = "0s"
shutdown_grace = "5s"

[shared_token]
env = "PLAY_AUTH_TOKEN"

[tokens]
algorithm = "HS256"
signing_key_env = "UCGATE_SIGNING_KEY"

[users]
file = "users.toml"

[[route]]
name = "api"
prefix = "/api/"
upstream = "http://{upstream}"
accept = ["shared", "uc"]
upstream_auth = "shared"
"#
    );
    let path = dir.join("ucgate.toml");
    std::fs::write(&path, config).map_err(|e| format!("ucgate.toml: {e}"))?;
    Ok(path)
}

fn hash_password(binary: &Path) -> Result<String, String> {
    let mut child = Command::new(binary)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .map_err(|e| format!("hash-password stdin: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("hash-password: {e}"))?;
    let hash = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || !hash.starts_with("$argon2") {
        return Err(format!("hash-password failed: {} {hash:?}", output.status));
    }
    Ok(hash)
}

type Log = Arc<Mutex<String>>;

/// Spawns ucgate and waits (at most 15 s) for its `listening addr=` line; stderr keeps being
/// drained into the returned log.
async fn start_ucgate(binary: &Path, config: &Path) -> Result<(Child, SocketAddr, Log), String> {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("PLAY_AUTH_TOKEN", SHARED_TOKEN)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        // warn, plus the server's `listening` line.
        .env("UCGATE_LOG", "warn,ucgate::server=info")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
    let log: Log = Arc::default();
    let stderr = child.stderr.take().expect("stderr");
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let addr = log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("listening"))
            .filter_map(|l| l.split("addr=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .find_map(|a| a.trim_matches('"').parse::<SocketAddr>().ok());
        if let Some(addr) = addr {
            return Ok((child, addr, log));
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "ucgate exited ({status}) before listening:\n{}",
                log.lock().unwrap()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "ucgate did not log `listening addr=` within 15 s:\n{}",
                log.lock().unwrap()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// ucgate's memory and open file descriptors, from /proc.
struct Sample {
    rss_kb: u64,
    hwm_kb: u64,
    fds: usize,
}

impl Sample {
    fn take(pid: u32) -> Result<Sample, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
            .count();
        Ok(Sample {
            rss_kb: field("VmRSS:"),
            hwm_kb: field("VmHWM:"),
            fds,
        })
    }
}
