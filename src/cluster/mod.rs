//! The replicas' shared state (`[cluster]`): revocations pushed to every instance and kept in
//! Redis until they expire, and brute-force counters shared by all instances.
//!
//! Redis layout, every name under `key_prefix`:
//!
//! - `revoked:t:<32 hex>` and `revoked:s:<32 hex>`: a revoked token and a revoked session (their
//!   revocation keys, see `auth::revocations`), the value their `exp`, expiring with them
//!   (`EXAT exp + leeway + 1`): Redis holds the logouts of one token lifetime, never more;
//! - channel `revocations`: `t:<hex>:<exp>` or `s:<hex>:<exp>`, published when a revocation is
//!   new to Redis;
//! - `fail:<id>` and `lock:<id>`: failure counters and lock-outs (see [`lockout`]).
//!
//! The proxy path never waits for Redis: revocations arrive by pub/sub into each instance's
//! memory (a token cache hit costs what it costs without a cluster). One task per instance owns
//! the link: it connects, subscribes, writes back the revocations this instance holds that Redis
//! lacks (after an outage, or a Redis restarted empty), reads those it missed, and only then
//! counts as up. While Redis is unreachable the instance goes on alone: revocations are enforced
//! where they are made, lock-outs counted locally, and the link retries with backoff, logging one
//! warning per outage.

pub mod lockout;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::metrics::metrics;
use crate::secrets;

/// What a revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One token (its revocation key: half a SHA-256 of its signature).
    Token,
    /// Every token of a session (half a SHA-256 of its `sid`).
    Session,
}

impl Scope {
    fn tag(self) -> &'static str {
        match self {
            Scope::Token => "t",
            Scope::Session => "s",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "t" => Some(Scope::Token),
            "s" => Some(Scope::Session),
            _ => None,
        }
    }
}

/// One revocation, as the instances exchange it: no token, only its revocation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    pub scope: Scope,
    pub key: u128,
    /// When what it revokes expires anyway (unix seconds).
    pub exp: u64,
}

impl Revoked {
    /// `t:<32 hex>` or `s:<32 hex>`: the key's name under `revoked:`.
    fn name(&self) -> String {
        format!("{}:{:032x}", self.scope.tag(), self.key)
    }

    /// The pub/sub message: `<name>:<exp>`.
    fn message(&self) -> String {
        format!("{}:{}", self.name(), self.exp)
    }

    fn from_name(name: &str, exp: u64) -> Option<Self> {
        let (tag, hex) = name.split_once(':')?;
        if hex.len() != 32 {
            return None;
        }
        Some(Self {
            scope: Scope::from_tag(tag)?,
            key: u128::from_str_radix(hex, 16).ok()?,
            exp,
        })
    }

    fn from_message(message: &str) -> Option<Self> {
        let (name, exp) = message.rsplit_once(':')?;
        Self::from_name(name, exp.parse().ok()?)
    }
}

/// Where revocations live in this instance: the link delivers those of the other instances and
/// reads back the ones in force, to write them to a Redis that lost them.
pub trait RevocationSink: Send + Sync {
    /// Enforces `revoked` here from now on (already known ones are no-ops).
    fn apply(&self, revoked: &[Revoked]);
    /// Every revocation in force here.
    fn in_force(&self) -> Vec<Revoked>;
}

/// The link to the replicas' Redis. Cheap to clone; built once and kept across reloads while
/// `[cluster]` stays the same. Nothing connects before [`Cluster::attach`].
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    // Never the URL: it may hold the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("source", &self.inner.source)
            .field("key_prefix", &self.inner.config.key_prefix)
            .field("up", &self.is_up())
            .finish()
    }
}

struct Inner {
    config: ClusterConfig,
    /// Where the URL was found ("environment variable NAME"), for logs.
    source: String,
    client: redis::Client,
    /// Revocations kept this long past their `exp` (the token leeway).
    leeway: Duration,
    shared: Arc<Shared>,
    outbox: mpsc::UnboundedSender<Revoked>,
    /// The link task's end of the outbox, until it starts.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Revoked>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// What the link task and the request path share.
struct Shared {
    /// The command connection while the link is up; `None` sends lock-outs to local counters.
    connection: Mutex<Option<MultiplexedConnection>>,
    sink: Mutex<Option<Arc<dyn RevocationSink>>>,
    up: AtomicBool,
    /// Caught up once, or found Redis unreachable at the start (then ready, degraded).
    ready: AtomicBool,
}

/// Redis could not answer now (down, slow, or garbage); the caller goes on without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl Cluster {
    /// Reads the Redis URL from `config.redis_url_env` (or that name in `env_files`) and checks
    /// it. Errors start with the key and never quote the URL.
    pub fn new(
        config: &ClusterConfig,
        env_files: &[PathBuf],
        leeway: Duration,
    ) -> Result<Self, String> {
        let key = "cluster.redis_url_env";
        let name = &config.redis_url_env;
        let (url, source) = secrets::from_env_or_files(name, env_files)
            .map_err(|e| format!("{key}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{key}: environment variable {name} is unset or empty{}",
                    secrets::not_defined_in(env_files)
                )
            })?;
        // redis' parse errors may quote the URL: only say what is expected.
        let client = redis::Client::open(url.as_str()).map_err(|_| {
            format!(
                "{key}: {source} is not a Redis URL (redis://[:password@]host[:port][/db], rediss:// for TLS)"
            )
        })?;
        let (outbox, pending) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                source,
                client,
                leeway,
                shared: Arc::new(Shared {
                    connection: Mutex::new(None),
                    sink: Mutex::new(None),
                    up: AtomicBool::new(false),
                    ready: AtomicBool::new(false),
                }),
                outbox,
                pending: Mutex::new(Some(pending)),
                task: Mutex::new(None),
            }),
        })
    }

    /// Whether this link was built from `config` (a reload keeps it then).
    pub fn is_for(&self, config: &ClusterConfig) -> bool {
        self.inner.config == *config
    }

    /// Where the URL was read from, for logs ("environment variable UCGATE_REDIS_URL").
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Where Redis is (`host:port`, never the password), for logs and `ucgate doctor`.
    pub fn target(&self) -> String {
        self.inner.client.get_connection_info().addr().to_string()
    }

    /// For `ucgate doctor`: connects, pings and counts the revocations in force (one
    /// connection, each step bounded by `timeout`). The error is a kind
    /// (`refused`, `timeout`, `command` ...), never a URL.
    pub async fn probe(&self) -> Result<usize, &'static str> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.config.timeout))
            .set_response_timeout(Some(self.inner.config.timeout));
        let mut connection = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| kind(&e))?;
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| kind(&e))?;
        let mut count = 0;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}revoked:*", self.inner.config.key_prefix))
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut connection)
                .await
                .map_err(|e| kind(&e))?;
            count += keys.len();
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
    }

    /// Delivers revocations to `sink` from now on (a reload hands over its own); the first call
    /// starts the link on the runtime.
    pub fn attach(&self, sink: Arc<dyn RevocationSink>) {
        *lock(&self.inner.shared.sink) = Some(sink);
        let Some(outbox) = lock(&self.inner.pending).take() else {
            return;
        };
        let link = Link {
            client: self.inner.client.clone(),
            prefix: self.inner.config.key_prefix.clone(),
            timeout: self.inner.config.timeout,
            leeway: self.inner.leeway,
            shared: self.inner.shared.clone(),
        };
        *lock(&self.inner.task) = Some(tokio::spawn(link.run(outbox)));
    }

    /// Tells the other instances: stored in Redis and published when the link is up, else
    /// written back when it comes back. Never waits.
    pub fn publish(&self, revoked: Revoked) {
        let _ = self.inner.outbox.send(revoked);
    }

    /// Connected, subscribed and caught up.
    pub fn is_up(&self) -> bool {
        self.inner.shared.up.load(Ordering::Acquire)
    }

    /// Caught up once (or Redis was unreachable at the start): ready to serve.
    pub fn is_ready(&self) -> bool {
        self.inner.shared.ready.load(Ordering::Acquire)
    }

    /// The command connection, when the link is up.
    fn connection(&self) -> Result<MultiplexedConnection, Unavailable> {
        if !self.is_up() {
            return Err(Unavailable);
        }
        lock(&self.inner.shared.connection)
            .clone()
            .ok_or(Unavailable)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.config.key_prefix)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the key of a revocation new to Redis and publishes it; a known one is left as it is
/// (its expiry too). KEYS: the revocations' keys; ARGV[1]: the channel, then per key its
/// message, `exp` and the unix second it expires at. Returns how many were new.
static STORE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local new = 0
for i, key in ipairs(KEYS) do
  local message, exp, at = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if redis.call('SET', key, exp, 'EXAT', at, 'NX') then
    redis.call('PUBLISH', ARGV[1], message)
    new = new + 1
  end
end
return new
",
    )
});

/// Revocations written or read per round trip.
const BATCH: usize = 500;
/// How often a link that is up checks that Redis still answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why the link is down: the `kind` label of `ucgate_cluster_errors_total`.
fn kind(e: &redis::RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connection_refusal() {
        "refused"
    } else if e.is_connection_dropped() {
        "dropped"
    } else if e.is_io_error() {
        "io"
    } else if matches!(
        e.kind(),
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
    ) {
        "protocol"
    } else {
        "command"
    }
}

/// The link task's own state.
struct Link {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    leeway: Duration,
    shared: Arc<Shared>,
}

impl Link {
    async fn run(self, mut outbox: mpsc::UnboundedReceiver<Revoked>) {
        let mut backoff = Duration::from_millis(100);
        let mut outage = false;
        loop {
            let error = match self.connect().await {
                Ok((connection, messages)) => {
                    *lock(&self.shared.connection) = Some(connection.clone());
                    self.shared.up.store(true, Ordering::Release);
                    self.shared.ready.store(true, Ordering::Release);
                    if outage {
                        tracing::info!("cluster: Redis answers again; revocations caught up");
                        outage = false;
                    }
                    backoff = Duration::from_millis(100);
                    self.serve(connection, messages, &mut outbox).await
                }
                Err(e) => e,
            };
            *lock(&self.shared.connection) = None;
            self.shared.up.store(false, Ordering::Release);
            metrics().cluster_error(error);
            if !outage {
                // Once per outage; never the URL (redis' errors may name it).
                tracing::warn!(
                    kind = error,
                    "cluster: Redis unreachable; lock-outs are counted here alone and revocations kept for when it returns"
                );
                outage = true;
            }
            // Unreachable at the start: serve, degraded, rather than never.
            self.shared.ready.store(true, Ordering::Release);
            // What was to be published is in this instance's revocations: the write-back after
            // reconnecting sends it.
            while outbox.try_recv().is_ok() {}
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            metrics().cluster_reconnect();
        }
    }

    /// Connects both connections, subscribes, writes back and catches up.
    async fn connect(
        &self,
    ) -> Result<(MultiplexedConnection, redis::aio::PubSubStream), &'static str> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| kind(&e))?;
        // Subscribed before catching up, so that nothing published meanwhile is missed.
        let mut pubsub = tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| "timeout")?
            .map_err(|e| kind(&e))?;
        tokio::time::timeout(self.timeout, pubsub.subscribe(self.channel()))
            .await
            .map_err(|_| "timeout")?
            .map_err(|e| kind(&e))?;
        self.write_back(&mut connection)
            .await
            .map_err(|e| kind(&e))?;
        self.catch_up(&mut connection).await.map_err(|e| kind(&e))?;
        Ok((connection, pubsub.into_on_message()))
    }

    /// Serves while the link holds: messages in, revocations out, a health check every second.
    /// Returns why it broke.
    async fn serve(
        &self,
        mut connection: MultiplexedConnection,
        mut messages: redis::aio::PubSubStream,
        outbox: &mut mpsc::UnboundedReceiver<Revoked>,
    ) -> &'static str {
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return "dropped" };
                    let revoked = message
                        .get_payload::<String>()
                        .ok()
                        .and_then(|m| Revoked::from_message(&m));
                    match revoked {
                        Some(revoked) => self.apply(&[revoked]),
                        None => metrics().cluster_error("protocol"),
                    }
                }
                Some(first) = outbox.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match outbox.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.store(&mut connection, &batch).await {
                        return kind(&e);
                    }
                }
                _ = health.tick() => {
                    if let Err(e) = redis::cmd("PING").query_async::<()>(&mut connection).await {
                        return kind(&e);
                    }
                }
            }
        }
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    fn apply(&self, revoked: &[Revoked]) {
        let sink = lock(&self.shared.sink).clone();
        if let Some(sink) = sink {
            sink.apply(revoked);
        }
    }

    /// Stores and publishes those of `revoked` still in force that Redis lacks.
    async fn store(
        &self,
        connection: &mut MultiplexedConnection,
        revoked: &[Revoked],
    ) -> redis::RedisResult<()> {
        let now = unix_now();
        let channel = self.channel();
        let live: Vec<&Revoked> = revoked
            .iter()
            .filter(|r| r.exp + self.leeway.as_secs() + 1 > now)
            .collect();
        for chunk in live.chunks(BATCH) {
            let mut invocation = STORE.prepare_invoke();
            invocation.arg(&channel);
            for r in chunk {
                invocation
                    .key(format!("{}revoked:{}", self.prefix, r.name()))
                    .arg(r.message())
                    .arg(r.exp)
                    .arg(r.exp + self.leeway.as_secs() + 1);
            }
            invocation.invoke_async::<u64>(connection).await?;
        }
        Ok(())
    }

    /// Writes back this instance's revocations that Redis lacks (it restarted empty, or they
    /// were made while it was unreachable), publishing them to the others.
    async fn write_back(&self, connection: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let sink = lock(&self.shared.sink).clone();
        let Some(sink) = sink else { return Ok(()) };
        self.store(connection, &sink.in_force()).await
    }

    /// Reads every revocation Redis holds into this instance.
    async fn catch_up(&self, connection: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let pattern = format!("{}revoked:*", self.prefix);
        let skip = format!("{}revoked:", self.prefix).len();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(connection)
                .await?;
            if !keys.is_empty() {
                let values: Vec<Option<u64>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(connection)
                    .await?;
                let revoked: Vec<Revoked> = keys
                    .iter()
                    .zip(values)
                    .filter_map(|(key, exp)| Revoked::from_name(&key[skip..], exp?))
                    .collect();
                self.apply(&revoked);
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_travel_as_names_and_messages() {
        let r = Revoked {
            scope: Scope::Session,
            key: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            exp: 1_800_000_000,
        };
        assert_eq!(r.name(), "s:0123456789abcdef0011223344556677");
        assert_eq!(Revoked::from_message(&r.message()), Some(r));
        for bad in [
            "",
            "x:0123456789abcdef0011223344556677:1",
            "t:0123:1",
            "t:0123456789abcdef0011223344556677",
            "t:0123456789abcdef0011223344556677:-1",
            "t:0123456789abcdef00112233445566zz:1",
        ] {
            assert_eq!(Revoked::from_message(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_url_is_checked_and_never_quoted() {
        let config = ClusterConfig {
            redis_url_env: "UCGATE_TEST_CLUSTER_URL_UNSET".into(),
            key_prefix: "ucgate:".into(),
            timeout: Duration::from_millis(500),
        };
        let e = Cluster::new(&config, &[], Duration::ZERO).unwrap_err();
        assert!(
            e.starts_with("cluster.redis_url_env: environment variable"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("custom.env");
        for (url, ok) in [
            ("redis://:s3cret-PW@127.0.0.1:6379/0", true),
            ("rediss://redis.example:6380", true),
            ("http://:s3cret-PW@127.0.0.1/", false),
            ("s3cret-PW", false),
        ] {
            std::fs::write(&env, format!("UCGATE_TEST_CLUSTER_URL_UNSET={url}\n")).unwrap();
            match Cluster::new(&config, std::slice::from_ref(&env), Duration::ZERO) {
                Ok(cluster) => {
                    assert!(ok, "{url}");
                    assert!(!format!("{cluster:?}").contains("s3cret"));
                }
                Err(e) => {
                    assert!(!ok, "{url}: {e}");
                    assert!(!e.contains("s3cret"), "{e}");
                    assert!(e.contains("not a Redis URL"), "{e}");
                }
            }
        }
    }
}
