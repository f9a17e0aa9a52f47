#![allow(dead_code)]
//! Redis for one test: a real throwaway redis-server ([`Redis`]) and two fake ones that are not
//! Redis at all ([`FakeRedis`]: one answers garbage, one never answers).
//!
//! The real server is a child process of the test on a free 127.0.0.1 port with its own temp dir
//! and no persistence (`--save "" --appendonly no`), so that tests running in parallel under
//! nextest never share one. [`Redis::stop`] kills it like a crash and [`Redis::start_again`]
//! brings up an empty one on the same port, to exercise ucgate while its Redis is down or has
//! lost its data. It is inspected with the stock `redis-cli` ([`Redis::cli`]) rather than a Rust
//! client, so that what a test checks never goes through the client ucgate itself uses.
//!
//! Every wait is bounded ([`BOUND`]) and polls instead of sleeping. A missing program fails the
//! test with the command that installs it: these tests never skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};

use crate::common::{BOUND, run_bounded};

/// How often a wait polls.
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// A real redis-server
// ---------------------------------------------------------------------------------------------

/// A throwaway redis-server, a child of the test on 127.0.0.1; killed and reaped on drop.
pub struct Redis {
    port: u16,
    password: Option<String>,
    child: Option<Child>,
    /// Holds one empty `runN` data dir per start, and `redis.log` (all starts).
    dir: tempfile::TempDir,
    starts: u32,
}

impl Redis {
    /// A server without a password on a free port, answering `PING`.
    pub fn start() -> Self {
        Self::start_on_free_port(None)
    }

    /// A server that requires `password` (`--requirepass`) on a free port, answering `PING`.
    /// The password goes verbatim into [`Redis::url`], so it may only hold URL-safe characters.
    pub fn start_with_password(password: &str) -> Self {
        assert!(
            !password.is_empty()
                && password
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)),
            "the Redis password {password:?} must be non-empty and URL-safe ([A-Za-z0-9-._~])"
        );
        Self::start_on_free_port(Some(password.to_owned()))
    }

    /// `redis://127.0.0.1:PORT/0`, or `redis://:PASSWORD@127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The port it listens on, the same across [`Redis::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: its data is lost, as in a crash) and reaps it; the port
    /// refuses connections when this returns. Does nothing if it is already stopped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        let deadline = Instant::now() + BOUND;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {} still accepts connections {BOUND:?} after redis-server was killed",
                self.port
            );
            std::thread::sleep(POLL);
        }
    }

    /// Starts a fresh, empty server on the same port with the same password (stopping the
    /// running one first, if any), and waits until it answers `PING`. A port still briefly
    /// busy is retried for up to [`BOUND`].
    pub fn start_again(&mut self) {
        self.stop();
        let deadline = Instant::now() + BOUND;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(log) if Instant::now() < deadline && log.contains("Address already in use") => {
                    std::thread::sleep(POLL);
                }
                Err(log) => panic!(
                    "redis-server did not start again on port {}:\n{log}",
                    self.port
                ),
            }
        }
    }

    /// Runs `redis-cli -e -h 127.0.0.1 -p PORT [-a PASSWORD --no-auth-warning] ARGS...` and
    /// returns its stdout, trimmed (raw replies: `OK`, a value, an integer, one line per element
    /// of an array). Panics with its stdout and stderr if it fails, an error reply included
    /// (`-e`: redis-cli then exits 1 and prints the error on stderr).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(program("redis-cli"));
        cmd.args(["-e", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        cmd.args(args);
        let out = run_bounded(&mut cmd, b"");
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn start_on_free_port(password: Option<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ucgate-redis")
            .tempdir()
            .unwrap();
        let mut redis = Redis {
            port: 0,
            password,
            child: None,
            dir,
            starts: 0,
        };
        // The port is free when picked but another test may take it before redis-server binds
        // it: then redis-server exits at once, and another port is tried.
        let mut attempts = 0;
        loop {
            redis.port = free_port();
            match redis.spawn_and_wait() {
                Ok(()) => return redis,
                Err(log) if attempts < 3 && log.contains("Address already in use") => attempts += 1,
                Err(log) => panic!("redis-server did not start:\n{log}"),
            }
        }
    }

    /// Spawns redis-server on `self.port` with a new, empty data dir and waits until it answers
    /// `PING`; on failure returns why and the server's log (after killing it if it still runs).
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.starts += 1;
        let data = self.dir.path().join(format!("run{}", self.starts));
        std::fs::create_dir(&data).unwrap();
        let log_path = self.dir.path().join("redis.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new(program("redis-server"));
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&data)
            .args(["--daemonize", "no", "--protected-mode", "no"]);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        self.child = Some(child);
        let deadline = Instant::now() + BOUND;
        let outcome = loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                break Err(format!("redis-server exited ({status})"));
            }
            let reply = match ping(self.port, self.password.as_deref()) {
                Ok(()) => break Ok(()),
                Err(reply) => reply,
            };
            if Instant::now() >= deadline {
                break Err(format!(
                    "redis-server did not answer PING within {BOUND:?} (last: {reply})"
                ));
            }
            std::thread::sleep(POLL);
        };
        outcome.map_err(|why| {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!("{why}; its log ({}):\n{log}", log_path.display())
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `[AUTH password] PING` over raw RESP: Ok once the server answers `+PONG`, else what went
/// wrong (refused, timed out, or the server's reply).
fn ping(port: u16, password: Option<&str>) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut request = Vec::new();
    if let Some(pw) = password {
        request
            .extend_from_slice(format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len()).as_bytes());
    }
    request.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    conn.write_all(&request).map_err(|e| e.to_string())?;
    let expected: &[u8] = if password.is_some() {
        b"+OK\r\n+PONG\r\n"
    } else {
        b"+PONG\r\n"
    };
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while reply.len() < expected.len() {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&reply))),
        }
    }
    if reply == expected {
        Ok(())
    } else {
        Err(format!("reply {:?}", String::from_utf8_lossy(&reply)))
    }
}

/// Where `name` is (PATH, then /usr/sbin and /sbin); panics with the command that installs it.
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH: run `bash scripts/install-idp-deps.sh` \
                 (installs Debian's redis-server, which brings redis-cli)"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Servers that are not Redis
// ---------------------------------------------------------------------------------------------

/// What [`FakeRedis::garbage`] answers to every read: an HTTP response, not RESP.
pub const GARBAGE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n<html>";

/// A TCP server on 127.0.0.1 where a Redis is expected, that is not one: it answers garbage or
/// nothing at all. Its tasks (and so its connections) end on drop. Needs a tokio runtime.
pub struct FakeRedis {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Accepts connections and owns their tasks (a `JoinSet`): aborting it closes them all.
    acceptor: JoinHandle<()>,
}

impl FakeRedis {
    /// Answers every read with [`GARBAGE`] and keeps the connection open.
    pub async fn garbage() -> Self {
        Self::serve(true).await
    }

    /// Reads whatever it is sent and never answers; the connection stays open.
    pub async fn stalling() -> Self {
        Self::serve(false).await
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    async fn serve(answer: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let acceptor = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                connections.spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(1..) = conn.read(&mut buf).await {
                        if answer && conn.write_all(GARBAGE).await.is_err() {
                            break;
                        }
                    }
                });
                // Reap finished connection tasks so that the set does not grow forever.
                while connections.try_join_next().is_some() {}
            }
        });
        FakeRedis {
            addr,
            accepted,
            acceptor,
        }
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}
