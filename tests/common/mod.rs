//! The integration-test harness: real upstream servers on loopback, ucgate as a real process,
//! raw HTTP for what well-behaved clients will not send, and /proc probes.
//!
//! Every wait here is bounded ([`BOUND`]) so that a broken ucgate fails a test instead of hanging
//! it; none of them is an assertion on speed.
#![allow(dead_code)]

pub mod faulty;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The shared token every test ucgate gets by default (`PLAY_AUTH_TOKEN`). Distinctive, so that a
/// leak into logs, URLs or bodies can be grepped for.
pub const SHARED_TOKEN: &str = "st-7Qk2vX9pL4mZ8wR1-shared-SECRET";

/// The directory of the single sign-on tests: alice may log in; bob has CTI login disabled;
/// anyone else (carol, known to the identity providers) is not in it.
pub const SSO_USERS: &str = r#"
[[user]]
login = "alice"
cti_enabled = true
profile = "agent"

[[user]]
login = "bob"
cti_enabled = false
profile = "agent"
"#;

/// The UC-token header, as clients spell it.
pub const X_AUTH_TOKEN: &str = "X-Auth-Token";

/// The longest any harness wait lasts before it fails the test.
pub const BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Upstream: a real HTTP server that records what it receives
// ---------------------------------------------------------------------------------------------

/// What an upstream does for requests under a path prefix.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with a JSON description of the request (see [`Recorded::to_json`]).
    Echo,
    /// A fixed response.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Waits (after reading the request body), then behaves as the inner behaviour.
    Delay(Duration, Box<Behavior>),
    /// 200 with a generated body of `total` bytes, sent in `chunk`-sized frames.
    Stream { total: u64, chunk: usize },
    /// Accepts a WebSocket upgrade and echoes every text and binary message; a request that does
    /// not ask for an upgrade gets 426.
    WebSocketEcho,
    /// Closes the connection without answering.
    Abort,
    /// As [`Behavior::Echo`] for a connection's first request; closes the connection without
    /// answering any later one (an upstream whose keep-alive timeout ends as a request arrives).
    AbortOnReuse,
}

impl Behavior {
    pub fn respond(status: u16, body: impl Into<Bytes>) -> Self {
        Behavior::Respond {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a response header (only to [`Behavior::Respond`]).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Behavior::Respond { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        } else {
            panic!("Behavior::header applies to Behavior::Respond only");
        }
        self
    }

    pub fn delay(ms: u64, then: Behavior) -> Self {
        Behavior::Delay(Duration::from_millis(ms), Box::new(then))
    }

    pub fn stream(total: u64) -> Self {
        Behavior::Stream {
            total,
            chunk: 256 * 1024,
        }
    }
}

/// One request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query exactly as received in the request line.
    pub target: String,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
    /// Total body bytes received.
    pub body_len: u64,
    /// The first [`Recorded::BODY_KEPT`] bytes of the body.
    pub body: Bytes,
    pub remote: SocketAddr,
}

impl Recorded {
    pub const BODY_KEPT: usize = 64 * 1024;

    /// The single value of a header (panics if it appears several times), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }

    /// Every value of a header, as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// Header names, lower-case, in order.
    pub fn header_names(&self) -> Vec<String> {
        self.headers.keys().map(|k| k.as_str().to_owned()).collect()
    }

    /// Everything received except the body, as one string: for "this never reached upstream"
    /// greps.
    pub fn head_text(&self) -> String {
        let mut s = format!("{} {} {:?}\n", self.method, self.target, self.version);
        for (k, v) in &self.headers {
            s.push_str(&format!(
                "{}: {}\n",
                k,
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        serde_json::json!({
            "method": self.method.as_str(),
            "target": self.target,
            "path": self.path,
            "query": self.query,
            "version": format!("{:?}", self.version),
            "headers": headers,
            "body_len": self.body_len,
        })
    }
}

type UpBody = BoxBody<Bytes, std::io::Error>;

struct UpInner {
    records: Mutex<Vec<Recorded>>,
    behaviors: RwLock<Vec<(String, Behavior)>>,
    connections: AtomicUsize,
}

impl UpInner {
    fn behavior_for(&self, path: &str) -> Behavior {
        self.behaviors
            .read()
            .unwrap()
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, b)| b.clone())
            .unwrap_or(Behavior::Echo)
    }
}

/// A real HTTP/1.1 + h2 server on `127.0.0.1:0`, inside the test's runtime. Answers
/// [`Behavior::Echo`] unless told otherwise with [`Upstream::on`]. Stops accepting on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    inner: Arc<UpInner>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(UpInner {
            records: Mutex::new(Vec::new()),
            behaviors: RwLock::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let state = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, remote)) = listener.accept().await else {
                    continue;
                };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let service = hyper::service::service_fn(move |req| {
                        let nth = served.fetch_add(1, Ordering::SeqCst);
                        handle(state.clone(), remote, nth, req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            inner,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`, for a route's `upstream`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `Host` ucgate must send: the upstream authority.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Requests whose path starts with `prefix` get `behavior` (longest prefix wins).
    pub fn on(&self, prefix: &str, behavior: Behavior) -> &Self {
        self.inner
            .behaviors
            .write()
            .unwrap()
            .push((prefix.into(), behavior));
        self
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.records.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.inner.records.lock().unwrap().len()
    }

    /// The last request received; panics when there is none.
    pub fn last(&self) -> Recorded {
        self.inner
            .records
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received no request")
    }

    pub fn clear(&self) {
        self.inner.records.lock().unwrap().clear();
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Waits (bounded) for a received request matching `pred`. Requests are recorded once their
    /// body is read, before any [`Behavior::Delay`].
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Recorded) -> bool) -> Recorded {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(r) = self.inner.records.lock().unwrap().iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the upstream never received {what}: {:#?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Answers `req`, the connection's request number `nth` (from 0).
async fn handle(
    state: Arc<UpInner>,
    remote: SocketAddr,
    nth: usize,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, std::io::Error> {
    let mut behavior = state.behavior_for(req.uri().path());
    if let Behavior::AbortOnReuse = behavior {
        behavior = if nth == 0 {
            Behavior::Echo
        } else {
            Behavior::Abort
        };
    }
    let upgrade = matches!(behavior, Behavior::WebSocketEcho)
        .then(|| {
            let key = req.headers().get("sec-websocket-key")?.clone();
            req.headers()
                .contains_key(header::UPGRADE)
                .then(|| (key, hyper::upgrade::on(&mut req)))
        })
        .flatten();
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0u64;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            body_len += data.len() as u64;
            let room = Recorded::BODY_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
    let record = Recorded {
        method: parts.method.clone(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned()),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len,
        body: Bytes::from(kept),
        remote,
    };
    state.records.lock().unwrap().push(record.clone());

    while let Behavior::Delay(pause, then) = behavior {
        tokio::time::sleep(pause).await;
        behavior = *then;
    }
    let response = match behavior {
        Behavior::Echo => json(StatusCode::OK, &record.to_json()),
        Behavior::Respond {
            status,
            headers,
            body,
        } => {
            let mut response = Response::new(full(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            response
        }
        Behavior::Stream { total, chunk } => {
            let body = Generated {
                remaining: total,
                chunk: Bytes::from(vec![b'x'; chunk]),
            };
            let mut response = Response::new(body.boxed());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Behavior::WebSocketEcho => match upgrade {
            Some((key, on_upgrade)) => {
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(msg)) = rx.next().await {
                        if msg.is_close() {
                            break;
                        }
                        if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                    let _ = tx.close().await;
                });
                let mut response = Response::new(full(Bytes::new()));
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = response.headers_mut();
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                h.insert(
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
                );
                response
            }
            None => json(StatusCode::UPGRADE_REQUIRED, &record.to_json()),
        },
        Behavior::Abort => return Err(std::io::Error::other("Behavior::Abort")),
        Behavior::Delay(..) | Behavior::AbortOnReuse => unreachable!(),
    };
    Ok(response)
}

fn full(body: Bytes) -> UpBody {
    Full::new(body).map_err(|never| match never {}).boxed()
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<UpBody> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A body of `remaining` bytes made of one reused chunk: no allocation per frame.
struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl HttpBody for Generated {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A stream of `total` bytes in 1 MiB chunks of one shared buffer, for request bodies.
pub fn generated_stream(
    total: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let chunk = Bytes::from(vec![b'u'; 1024 * 1024]);
    futures_util::stream::unfold(total, move |remaining| {
        let chunk = chunk.clone();
        async move {
            (remaining > 0).then(|| {
                let n = remaining.min(chunk.len() as u64);
                (Ok(chunk.slice(..n as usize)), remaining - n)
            })
        }
    })
}

/// `http://127.0.0.1:PORT` where nothing listens (the port was just bound and released).
pub fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.into()).to_string()
}

/// One `[[route]]`. Defaults: `accept = ["shared"]`, `upstream_auth = "shared"`.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub prefix: String,
    pub upstream: String,
    pub accept: Vec<String>,
    pub upstream_auth: String,
    pub timeout: Option<String>,
    pub websocket: bool,
    pub extra: Vec<String>,
}

pub fn route(name: &str, prefix: &str, upstream: &str) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        prefix: prefix.into(),
        upstream: upstream.into(),
        accept: vec!["shared".into()],
        upstream_auth: "shared".into(),
        timeout: None,
        websocket: false,
        extra: Vec::new(),
    }
}

impl RouteSpec {
    pub fn accept(mut self, kinds: &[&str]) -> Self {
        self.accept = kinds.iter().map(|k| k.to_string()).collect();
        self
    }

    pub fn upstream_auth(mut self, auth: &str) -> Self {
        self.upstream_auth = auth.into();
        self
    }

    /// A public route: `accept = []`, `upstream_auth = "none"`.
    pub fn public(self) -> Self {
        self.accept(&[]).upstream_auth("none")
    }

    pub fn timeout(mut self, t: &str) -> Self {
        self.timeout = Some(t.into());
        self
    }

    pub fn websocket(mut self) -> Self {
        self.websocket = true;
        self
    }

    /// Any other `key = value` line.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }

    pub fn to_toml(&self) -> String {
        let accept: Vec<String> = self.accept.iter().map(|a| toml_str(a)).collect();
        let mut s = format!(
            "[[route]]\nname = {}\nprefix = {}\nupstream = {}\naccept = [{}]\nupstream_auth = {}\n",
            toml_str(&self.name),
            toml_str(&self.prefix),
            toml_str(&self.upstream),
            accept.join(", "),
            toml_str(&self.upstream_auth),
        );
        if let Some(t) = &self.timeout {
            s.push_str(&format!("timeout = {}\n", toml_str(t)));
        }
        if self.websocket {
            s.push_str("websocket = true\n");
        }
        for line in &self.extra {
            s.push_str(line);
            s.push('\n');
        }
        s
    }
}

/// A configuration file. `[server]` starts with `listen = ["127.0.0.1:0"]` (the harness reads the
/// port from the log) and `shutdown_grace = "10s"`.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    server: Vec<String>,
    shared_token: Vec<String>,
    routes: Vec<RouteSpec>,
    extra: Vec<String>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            server: vec![
                "listen = [\"127.0.0.1:0\"]".into(),
                "shutdown_grace = \"10s\"".into(),
            ],
            shared_token: Vec::new(),
            routes: Vec::new(),
            extra: Vec::new(),
        }
    }
}

impl ConfigBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `key = value` line of `[server]`; replaces an earlier line with the same key.
    pub fn server(mut self, line: &str) -> Self {
        set_line(&mut self.server, line);
        self
    }

    /// A `key = value` line of `[shared_token]`; replaces an earlier line with the same key.
    pub fn shared_token(mut self, line: &str) -> Self {
        set_line(&mut self.shared_token, line);
        self
    }

    pub fn route(mut self, route: RouteSpec) -> Self {
        self.routes.push(route);
        self
    }

    /// Raw TOML appended at the end (other tables: `[tokens]`, `[users]`, `[kerberos]` ...).
    pub fn raw(mut self, toml: &str) -> Self {
        self.extra.push(toml.into());
        self
    }

    pub fn build(&self) -> String {
        let mut s = format!("[server]\n{}\n", self.server.join("\n"));
        if !self.shared_token.is_empty() {
            s.push_str(&format!(
                "\n[shared_token]\n{}\n",
                self.shared_token.join("\n")
            ));
        }
        for extra in &self.extra {
            s.push('\n');
            s.push_str(extra);
            s.push('\n');
        }
        for r in &self.routes {
            s.push('\n');
            s.push_str(&r.to_toml());
        }
        s
    }
}

fn set_line(lines: &mut Vec<String>, line: &str) {
    let key = line.split('=').next().unwrap_or("").trim().to_owned();
    lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
    lines.push(line.into());
}

// ---------------------------------------------------------------------------------------------
// ucgate as a process
// ---------------------------------------------------------------------------------------------

/// Prepares a ucgate process: a temp dir with the config (`ucgate.toml`) and extra files, and a
/// cleared environment (PATH kept) with `PLAY_AUTH_TOKEN=SHARED_TOKEN` and `UCGATE_LOG=debug`.
pub struct UcgateBuilder {
    config: String,
    files: Vec<(PathBuf, Vec<u8>)>,
    env: BTreeMap<String, String>,
    listeners: usize,
    config_via_env: bool,
}

/// A one-shot run (`check-config`, or a start that must fail).
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl UcgateBuilder {
    pub fn new(config: impl Into<String>) -> Self {
        let mut env = BTreeMap::new();
        env.insert("PLAY_AUTH_TOKEN".into(), SHARED_TOKEN.into());
        env.insert("UCGATE_LOG".into(), "debug".into());
        Self {
            config: config.into(),
            files: Vec::new(),
            env,
            listeners: 1,
            config_via_env: false,
        }
    }

    /// A file beside the config (`path` relative to the temp dir).
    pub fn file(mut self, path: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files.push((path.into(), contents.as_ref().to_vec()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    /// `UCGATE_LOG`.
    pub fn log(self, filter: &str) -> Self {
        self.env("UCGATE_LOG", filter)
    }

    /// How many `listening` lines to wait for.
    pub fn listeners(mut self, n: usize) -> Self {
        self.listeners = n;
        self
    }

    /// Pass the config as `UCGATE_CONFIG` instead of `--config`.
    pub fn config_via_env(mut self) -> Self {
        self.config_via_env = true;
        self
    }

    fn prepare(&self, args: &[&str]) -> (tempfile::TempDir, PathBuf, Command) {
        let dir = tempfile::Builder::new()
            .prefix("ucgate-test")
            .tempdir()
            .unwrap();
        let config_path = dir.path().join("ucgate.toml");
        std::fs::write(&config_path, &self.config).unwrap();
        for (path, contents) in &self.files {
            let path = dir.path().join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, contents).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ucgate"));
        cmd.env_clear().current_dir(dir.path());
        for key in [
            "PATH",
            "LLVM_PROFILE_FILE",
            "CARGO_LLVM_COV",
            "CARGO_LLVM_COV_TARGET_DIR",
        ] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        // Its temporary files (the keytab's private copy) in its own directory, removed with it
        // even when the process is killed.
        cmd.env("TMPDIR", dir.path());
        cmd.envs(&self.env);
        if self.config_via_env {
            cmd.env("UCGATE_CONFIG", &config_path);
        } else {
            cmd.arg("--config").arg(&config_path);
        }
        cmd.args(args);
        (dir, config_path, cmd)
    }

    /// Runs `ucgate [--config FILE] ARGS` to its end (bounded) and captures its output.
    pub fn run(self, args: &[&str]) -> Finished {
        let (dir, config_path, mut cmd) = self.prepare(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ucgate");
        let stdout = read_all(child.stdout.take().unwrap());
        let stderr = read_all(child.stderr.take().unwrap());
        let deadline = Instant::now() + BOUND;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ucgate {args:?} did not exit within {BOUND:?}; stderr:\n{}",
                    stderr.join().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Finished {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
            config_path,
            dir,
        }
    }

    /// Starts `ucgate run` and waits (bounded) until it logs its listening addresses.
    pub async fn start(self) -> Ucgate {
        let (dir, config_path, mut cmd) = self.prepare(&["run"]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ucgate");
        let logs = Arc::new(Mutex::new(StderrLog::new(child.stderr.take().unwrap())));
        let reader = {
            let logs = logs.clone();
            std::thread::spawn(move || StderrLog::follow(&logs))
        };
        let deadline = Instant::now() + BOUND;
        let addrs = loop {
            let addrs = listening_addrs(logs.lock().unwrap().drained());
            if addrs.len() >= self.listeners {
                break addrs;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let _ = reader.join();
                panic!(
                    "ucgate exited ({status}) before listening; stderr:\n{}",
                    logs.lock().unwrap().drained()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ucgate did not log `listening` within {BOUND:?}; stderr:\n{}",
                    logs.lock().unwrap().drained()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        Ucgate {
            child,
            status: None,
            dir,
            config_path,
            logs,
            reader: Some(reader),
            addrs,
        }
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// ucgate's stderr, kept as it is read. The pipe is non-blocking and read under the lock, both
/// by a thread that follows it (so that ucgate never blocks on a full pipe) and by every look at
/// the logs (so that a look sees all that was written before it).
struct StderrLog {
    pipe: std::process::ChildStderr,
    text: String,
    /// An incomplete last line (or UTF-8 sequence), kept until its end is read.
    partial: Vec<u8>,
    closed: bool,
}

impl StderrLog {
    fn new(pipe: std::process::ChildStderr) -> Self {
        use std::os::fd::AsRawFd;
        let fd = pipe.as_raw_fd();
        // SAFETY: fcntl(2) on a descriptor we own, changing only its O_NONBLOCK flag.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            assert!(flags >= 0, "F_GETFL");
            assert!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0);
        }
        StderrLog {
            pipe,
            text: String::new(),
            partial: Vec::new(),
            closed: false,
        }
    }

    /// Reads what the pipe holds now; returns all the complete lines read so far.
    fn drained(&mut self) -> &str {
        let mut buf = [0u8; 64 * 1024];
        while !self.closed {
            match self.pipe.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => self.closed = true,
            }
        }
        let complete = if self.closed {
            self.partial.len()
        } else {
            self.partial
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        };
        if complete > 0 {
            let lines: Vec<u8> = self.partial.drain(..complete).collect();
            self.text.push_str(&String::from_utf8_lossy(&lines));
        }
        &self.text
    }

    /// Drains the pipe whenever it has something, until ucgate (and whatever inherited its
    /// stderr) closed it.
    fn follow(log: &Mutex<StderrLog>) {
        use std::os::fd::AsRawFd;
        let fd = log.lock().unwrap().pipe.as_raw_fd();
        loop {
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the descriptor stays open as long as `log` does.
            unsafe { libc::poll(&mut poll, 1, 100) };
            let mut log = log.lock().unwrap();
            log.drained();
            if log.closed {
                return;
            }
        }
    }
}

/// The addresses of the `listening addr=...` log lines.
pub fn listening_addrs(logs: &str) -> Vec<SocketAddr> {
    logs.lines()
        .filter(|l| l.contains("listening"))
        .filter_map(|l| {
            if l.starts_with('{') {
                // `server.log_format = "json"`.
                let line: serde_json::Value = serde_json::from_str(l).ok()?;
                return (line["message"] == "listening")
                    .then(|| line["addr"].as_str()?.parse().ok())
                    .flatten();
            }
            let rest = l.split("addr=").nth(1)?;
            rest.split_whitespace()
                .next()?
                .trim_matches('"')
                .parse()
                .ok()
        })
        .collect()
}

/// A running ucgate. Killed on drop; its logs are printed then if the test is failing.
pub struct Ucgate {
    child: Child,
    status: Option<ExitStatus>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<StderrLog>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub addrs: Vec<SocketAddr>,
}

impl Ucgate {
    pub fn builder(config: impl Into<String>) -> UcgateBuilder {
        UcgateBuilder::new(config)
    }

    /// Starts ucgate on `config` with the default environment.
    pub async fn start(config: impl Into<String>) -> Ucgate {
        UcgateBuilder::new(config).start().await
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `base_url() + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything ucgate wrote to stderr so far, up to this very call: what is still in the pipe
    /// is read first, so that a line ucgate wrote before it answered a request is there once the
    /// answer is (the reader thread alone may lag behind on a loaded machine).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().drained().to_owned()
    }

    /// The access-log lines (target `ucgate::access`).
    pub fn access_log(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains("ucgate::access"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (bounded) until the logs contain `needle`; returns the first line containing it.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(line) = self.logs().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "ucgate never logged {needle:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) until `needle` is in `n` log lines.
    pub async fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + BOUND;
        while self.logs().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "ucgate logged {needle:?} fewer than {n} times; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) until `n` access-log lines have been written; returns them.
    pub async fn wait_access_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + BOUND;
        loop {
            let lines = self.access_log();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} access-log lines, got {}; logs:\n{}",
                lines.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status.is_none()
    }

    /// Waits (bounded) for the process to exit; the stderr reader is drained too.
    pub async fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOUND;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "ucgate did not exit within {BOUND:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(reader) = self.reader.take() {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        self.status.unwrap()
    }

    pub fn vm_hwm_kib(&self) -> u64 {
        vm_hwm_kib(self.pid()).expect("VmHWM")
    }

    pub fn vm_rss_kib(&self) -> u64 {
        vm_rss_kib(self.pid()).expect("VmRSS")
    }

    pub fn open_fds(&self) -> usize {
        open_fds(self.pid())
    }
}

impl Drop for Ucgate {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- ucgate (pid {}) stderr -----\n{}",
                self.child.id(),
                self.logs()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc probes
// ---------------------------------------------------------------------------------------------

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, `VmSize` ...).
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// Peak resident set size.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 client that never uses a proxy. Its timeout is a safety bound, not an assertion.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// An h2 client with prior knowledge (cleartext h2).
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Replaces a file in one step (write beside it, rename), as editors and config managers do:
/// ucgate never reads half a file.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits (bounded by [`BOUND`]) until `done` holds; says whether it did. For conditions that
/// settle on their own (connections let go, descriptors closed): the caller asserts, with the
/// values in its message.
pub async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + BOUND;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// A GET of `path` with `token` in `X-Auth-Token`.
pub async fn get(gate: &Ucgate, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gate.url(path))
        .header(X_AUTH_TOKEN, token)
        .send()
        .await
        .unwrap()
}

/// A custom.env (in a temporary folder, kept while the `TempDir` lives) defining a sound
/// `PLAY_AUTH_TOKEN`, made now by ucgate's own generator: `doctor` then judges only what a test
/// is about.
pub fn sound_custom_env() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custom.env");
    std::fs::write(&file, format!("PLAY_AUTH_TOKEN={}\n", ucgate::new_token())).unwrap();
    (dir, file)
}

/// The JSON body of `/readyz`, whatever its status.
pub async fn readyz(gate: &Ucgate) -> serde_json::Value {
    client()
        .get(gate.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A loopback port free now (for a server that must come back on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Seconds since the Unix epoch, as JWT claims count them.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `ucgate hash-password` with `input` on stdin (the password and its line end, as typed).
pub fn hash_password_run(input: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ucgate"))
        .arg("hash-password")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The value of one sample of `/metrics`, 0 when absent, read on a connection of its own.
/// `series` is the name with its labels as printed, e.g.
/// `ucgate_logins_total{method="password",outcome="success"}`.
pub async fn metric(gate: &Ucgate, series: &str) -> u64 {
    let text = client()
        .get(gate.url("/metrics"))
        .header(header::CONNECTION, "close")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Checks an error made by ucgate: status, JSON content type, `error` code, a `message`.
/// Returns the body.
pub async fn assert_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "status; body: {text}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "content-type; body: {text}"
    );
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["error"], code, "error code; body: {text}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message; body: {text}"
    );
    body
}

/// A response read from a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// Checks an error made by ucgate (see [`assert_error`]).
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.text()
        );
        assert_eq!(self.json()["error"], code, "{}", self.text());
    }
}

/// `METHOD TARGET HTTP/1.1` with `Host`, the given headers and `Connection: close` (unless a
/// Connection header is given), no body.
pub fn raw_request(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        s.push_str("Host: ucgate.test\r\n");
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        s.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// Sends raw bytes on a new connection and reads one response, until the server closes the
/// connection (send `Connection: close`). Handles Content-Length and chunked bodies.
pub async fn raw_http(addr: SocketAddr, request: impl AsRef<[u8]>) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_ref()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut buf))
        .await
        .expect("raw_http: the server did not close the connection")
        .expect("raw_http read");
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "not an HTTP response ({other:?}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let status = response.code.unwrap();
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let rest = &buf[head_len..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else if let Some((_, len)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        rest[..len.parse::<usize>().unwrap().min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// A JWT of exactly `header` and `claims`, HS256 with `key`, made by hand (base64url, HMAC-SHA-256
/// of RFC 2104) so that no JOSE library "fixes" what a test wants to send.
pub fn hand_signed_hs256(
    key: &str,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let b64 = |data: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key.as_bytes()));
    } else {
        block[..key.len()].copy_from_slice(key.as_bytes());
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(input.as_bytes())
        .finalize();
    let mac = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    format!("{input}.{}", b64(&mac))
}

/// Runs a command to completion with `stdin` as its input, killing it and failing the test if
/// it has not finished within [`BOUND`].
pub fn run_bounded(cmd: &mut Command, stdin: &[u8]) -> Output {
    run_within(cmd, stdin, BOUND)
}

/// The longest a server's one-off setup (`initdb`, `slapadd`) may take: it writes a whole data
/// directory, which a loaded machine can stretch past [`BOUND`] (`initdb` did, beside six busy
/// processes), and it measures nothing of ucgate.
pub const SETUP_BOUND: Duration = Duration::from_secs(60);

/// [`run_bounded`] with a bound of its own.
pub fn run_within(cmd: &mut Command, stdin: &[u8], bound: Duration) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    // Pipes are drained in threads so that a chatty program never blocks on a full pipe.
    let mut input = child.stdin.take().unwrap();
    let input_data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut input, &input_data);
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
