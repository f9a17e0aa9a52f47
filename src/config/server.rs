//! `[server]`: listeners, client limits and deadlines, TLS, logging.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::duration;

/// Addresses (`192.0.2.1`) and CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`).
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!("{s:?} is not an address or a CIDR block"))
                })
        })
        .collect()
}

/// Far beyond any file-descriptor limit; keeps the count of connection slots a `u32`.
const MAX_CONNECTIONS: usize = 1_000_000;

/// The `[server]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// The operator's listener (plain HTTP): `/metrics`, `/healthz` and `/readyz` are served
    /// there, and no longer on `listen` (404 there). Absent: they are served on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Each worker thread runs a runtime of its own: it accepts connections from the listeners
    /// (shared by every worker), serves them to the end and keeps its own upstream connections,
    /// so that a proxied request's client and upstream connections stay on one thread. Off:
    /// one work-stealing runtime for every worker (a busy connection's work spreads over idle
    /// threads). No effect with one worker.
    pub thread_per_core: bool,
    /// A request head (and a TLS handshake) must arrive in this time: 408 and close otherwise.
    #[serde(deserialize_with = "duration")]
    pub request_header_timeout: Duration,
    /// A keep-alive connection with no request under way is closed after this time.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A client uploading a body may go silent this long between two pieces of it: 408 after.
    #[serde(deserialize_with = "duration")]
    pub request_body_timeout: Duration,
    /// A write to a client may stay pending this long (a client that stopped reading its
    /// response); the connection is closed after.
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Keep and extend client-sent `X-Forwarded-*` headers, and take the client's address from
    /// `X-Forwarded-For`. Only safe behind a trusted proxy; by default ucgate faces clients
    /// directly and replaces them.
    pub trust_forwarded_headers: bool,
    /// With `trust_forwarded_headers`: the proxies (addresses or CIDR blocks) whose forwarding
    /// headers are believed; empty = whichever peer connects (one trusted hop).
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<IpNet>,
    pub log_format: LogFormat,
    /// Serve HTTPS (h2 and HTTP/1.1 by ALPN) with these PEM files; reloaded with the config.
    pub tls: Option<TlsFiles>,
    /// CA bundle (PEM) for `https://` upstreams; absent = the system's roots.
    pub upstream_ca: Option<PathBuf>,
    /// Largest request head (request line and headers), bytes: 431 above. At least 8192.
    pub max_header_bytes: usize,
    /// Most request headers: 431 above.
    pub max_headers: usize,
    /// Longest request target, bytes: 414 above.
    pub max_uri_length: usize,
    /// Open client connections at most; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// Concurrent h2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Requests (h2 streams included) one connection may carry; then it is closed gracefully and
    /// the client opens another.
    pub max_requests_per_connection: u32,
    /// How often watched files are checked for changes; "0s" turns watching off (SIGHUP still works).
    #[serde(deserialize_with = "duration")]
    pub watch_interval: Duration,
}

impl ServerConfig {
    /// The settings of `self` that differ from `running`'s and are read only at start-up (the
    /// listeners, the workers, the connections' limits and timeouts, the log format): a reload
    /// cannot apply them. Empty when a reload applies everything.
    pub fn restart_only_changes(&self, running: &ServerConfig) -> Vec<&'static str> {
        // One list: each name is its field's, and cannot drift from it.
        macro_rules! changed {
            ($($field:ident),* $(,)?) => {
                [$((stringify!($field), self.$field != running.$field)),*]
            };
        }
        changed!(
            listen,
            admin_listen,
            workers,
            thread_per_core,
            request_header_timeout,
            idle_timeout,
            send_timeout,
            shutdown_grace,
            log_format,
            max_header_bytes,
            max_headers,
            max_connections,
            max_concurrent_streams,
            max_requests_per_connection,
        )
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            admin_listen: None,
            workers: 0,
            thread_per_core: false,
            request_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            trust_forwarded_headers: false,
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Text,
            tls: None,
            upstream_ca: None,
            watch_interval: Duration::from_secs(2),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            max_connections: 10_000,
            max_concurrent_streams: 256,
            max_requests_per_connection: 1000,
        }
    }
}

/// `server.log_format`: human-readable lines or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The listener's certificate chain and key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerConfig {
    /// The worker threads `workers` asks for: 0 resolves to the cores this process may use.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// How many per-core workers serve the public listeners: `Some` with `thread_per_core` and
    /// more than one worker, `None` when one runtime serves everything.
    pub fn per_core_workers(&self) -> Option<usize> {
        let workers = self.worker_threads();
        (self.thread_per_core && workers > 1).then_some(workers)
    }

    /// Why `admin_listen` cannot be served beside the public listeners `listen` (those of the
    /// file, or `--listen`'s), if it cannot: it is one of them.
    pub fn admin_clash(&self, listen: &[SocketAddr]) -> Option<String> {
        // Port 0 (an ephemeral port, each bind its own) cannot clash.
        let admin = self.admin_listen.filter(|a| a.port() != 0)?;
        listen.contains(&admin).then(|| {
            format!(
                "server.admin_listen: {admin} is also in server.listen (or --listen); the operator's listener needs an address of its own"
            )
        })
    }

    /// Checks the limits and resolves relative paths against the config file's folder `base`.
    /// Errors start with the key (`server.max_headers: ...`).
    pub(super) fn validate(&mut self, base: &Path) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err("server.listen: needs at least one address".into());
        }
        if let Some(clash) = self.admin_clash(&self.listen) {
            return Err(clash);
        }
        if self.max_header_bytes < 8192 {
            return Err(
                "server.max_header_bytes: must be at least 8192 (hyper's minimum buffer)".into(),
            );
        }
        if self.max_headers == 0
            || self.max_uri_length == 0
            || self.max_connections == 0
            || self.max_concurrent_streams == 0
            || self.max_requests_per_connection == 0
        {
            return Err(
                "server.max_headers, max_uri_length, max_connections, max_concurrent_streams, max_requests_per_connection: must be more than zero".into(),
            );
        }
        if self.max_connections > MAX_CONNECTIONS {
            return Err(format!("server.max_connections: at most {MAX_CONNECTIONS}"));
        }
        let timeouts = [
            ("request_header_timeout", self.request_header_timeout),
            ("request_body_timeout", self.request_body_timeout),
            ("idle_timeout", self.idle_timeout),
            ("send_timeout", self.send_timeout),
        ];
        if let Some((key, _)) = timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(format!("server.{key}: must be more than zero"));
        }
        if !self.trusted_proxies.is_empty() && !self.trust_forwarded_headers {
            return Err(
                "server.trusted_proxies: only used with trust_forwarded_headers = true".into(),
            );
        }
        if let Some(tls) = &mut self.tls {
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
        }
        self.upstream_ca = self.upstream_ca.as_ref().map(|p| base.join(p));
        Ok(())
    }
}
