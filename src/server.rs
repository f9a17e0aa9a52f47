//! Listeners, HTTP/1.1 and h2 connections, graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::client_timeouts::{self, Timeouts};
use crate::config::ServerConfig;
use crate::gateway::Gateway;
use crate::identity::ListenerPort;
use crate::state::{ConnInfo, Listener};

/// Binds every configured address before anything is served, so that a port in use fails the
/// start instead of leaving a half-listening process.
pub async fn bind(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish
/// for up to `shutdown_grace`. Errors only at start, when the per-core workers cannot start.
/// With `server.thread_per_core` and more than one worker, the public listeners are served by
/// worker threads of their own (see [`ServerConfig`]); the operator's listener stays on the
/// calling runtime, beside the background work.
pub async fn serve(
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    gateway: Gateway,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = ConnLimits {
        timeouts: Timeouts {
            head: config.request_header_timeout,
            idle: config.idle_timeout,
            send: config.send_timeout,
        },
        max_requests: config.max_requests_per_connection,
        // The streams open when the close is asked for, and as many opened by a client in the
        // round trip before it reads the GOAWAY (slots freed by answers sent before it).
        in_flight: config.max_concurrent_streams.saturating_mul(2),
    };
    // Connections drain when this turns true; they are all gone when every slot is back.
    let (drain, draining) = watch::channel(false);
    let serving = Serving {
        builder: connection_builder(config),
        limits,
        draining,
        gateway,
    };
    let connections = Arc::new(Semaphore::new(config.max_connections));
    // Slots of their own: a flood of clients must not keep Prometheus and the probes out.
    let admin_connections = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let public = if admin.is_some() {
        Listener::Public
    } else {
        Listener::Everything
    };
    // Said once every listener has its acceptors (the per-core workers are up): a `listening`
    // line means served, not only queued in the kernel's backlog.
    // (The configuration refuses an operator's address that is also a public one.)
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    let public_addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let (stop, stopping) = watch::channel(false);
    let mut acceptors = tokio::task::JoinSet::new();
    let per_core = if let Some(workers) = config.per_core_workers() {
        crate::metrics::count_runtime(tokio::runtime::Handle::current());
        PerCore::start(
            workers,
            listeners,
            public,
            &connections,
            &serving,
            &stopping,
        )?
    } else {
        for listener in listeners {
            acceptors.spawn(accept_loop(
                listener,
                public,
                connections.clone(),
                serving.clone(),
            ));
        }
        PerCore::default()
    };
    if let Some(admin) = admin {
        acceptors.spawn(accept_loop(
            admin,
            Listener::Admin,
            admin_connections.clone(),
            serving.clone(),
        ));
    }
    for addr in public_addrs {
        tracing::info!(%addr, "listening");
    }
    if let Some(addr) = admin_addr {
        tracing::info!(%addr, "listening for the operator (metrics, health)");
    }
    shutdown.await;
    // Closing the listeners first: new connections are refused while the old ones drain. (A
    // per-core worker may take one more from the backlog before it sees the stop: that one is
    // served and drained like the others.)
    stop.send_replace(true);
    acceptors.shutdown().await;
    let per_core = per_core.stopped_accepting().await;
    let open = config.max_connections - connections.available_permits();
    tracing::info!(open_connections = open, grace = ?config.shutdown_grace, "shutting down");
    drain.send_replace(true);
    let every_slot = u32::try_from(config.max_connections).expect("max_connections is bounded");
    let all_closed = async {
        let _ = connections.acquire_many(every_slot).await;
        let _ = admin_connections
            .acquire_many(ADMIN_MAX_CONNECTIONS as u32)
            .await;
    };
    tokio::select! {
        () = all_closed => tracing::info!("all connections closed"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!("grace period over, closing the remaining connections");
        }
    }
    drop(stop);
    per_core.join().await;
    Ok(())
}

/// What every connection is served with, whichever runtime serves it.
#[derive(Clone)]
struct Serving {
    builder: auto::Builder<TokioExecutor>,
    limits: ConnLimits,
    draining: watch::Receiver<bool>,
    gateway: Gateway,
}

impl Serving {
    /// Serves an accepted connection in its slot: the TLS handshake when the public listener
    /// has TLS, then HTTP until the connection ends.
    async fn serve(
        self,
        stream: TcpStream,
        remote: SocketAddr,
        listener: Listener,
        port: ListenerPort,
        slot: Slot,
    ) {
        let _slot = slot;
        // The acceptor of the current state: a reload brings new certificates to new
        // connections. The operator's listener is plain HTTP.
        let tls = match listener {
            Listener::Admin => None,
            Listener::Public | Listener::Everything => self.gateway.state().tls.clone(),
        };
        let Some(tls) = tls else {
            let conn = ConnInfo {
                remote,
                tls: false,
                listener,
                port,
            };
            return self.serve_http(stream, conn).await;
        };
        // The handshake is bounded as a request head is; plain HTTP sent here (an http:// URL
        // for this https:// listener) gets told so, as nginx does, instead of a silent close.
        let handshake = async {
            if opens_with_plain_http(&stream).await {
                answer_plain_http(stream).await;
                return None;
            }
            Some(TlsAcceptor::from(tls).accept(stream).await)
        };
        match tokio::time::timeout(self.limits.timeouts.head, handshake).await {
            Ok(None) => tracing::debug!(%remote, "plain HTTP on the TLS listener"),
            Ok(Some(Ok(stream))) => {
                let conn = ConnInfo {
                    remote,
                    tls: true,
                    listener,
                    port,
                };
                self.serve_http(stream, conn).await;
            }
            Ok(Some(Err(e))) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
        }
    }

    /// Serves one connection until it ends. It ends gracefully (requests under way finish, then
    /// the close or an h2 GOAWAY) when ucgate drains, or once it has carried `max_requests`: a
    /// client cannot keep one connection forever, nor open and cancel h2 streams without end.
    async fn serve_http<S>(mut self, stream: S, conn: ConnInfo)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.limits;
        let (stream, tracker) = client_timeouts::wrap(
            stream,
            limits.timeouts,
            limits.max_requests,
            limits.in_flight,
        );
        let service = self.gateway.service(conn, tracker.clone());
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let draining = &mut self.draining;
        // What ends the connection besides its client, in two stages: the close is asked for
        // (a drain, its last request), then, should its client ignore it, the connection is
        // dropped. An h2 client that never answers the PING of the first GOAWAY keeps it from
        // becoming final, and could open streams without end: past its last request and as
        // many as were in flight, it is dropped (Notify keeps the permit until looked at).
        // One future at a time, polled only when its own wakers fire, not at each of the
        // connection's wake-ups (a second select branch cost 500 instructions per request).
        type Stage<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
        let close_asked: Stage<'_> = Box::pin(async {
            tokio::select! {
                _ = draining.wait_for(|drain| *drain) => {}
                () = tracker.enough().notified() => {}
            }
        });
        let mut ending = crate::woken::when_woken(close_asked);
        let mut closed = false;
        let ended = loop {
            tokio::select! {
                // The close first: polled after the connection, a response that became ready
                // in the same wake-up (on another worker) would go out before hyper knows to
                // say `connection: close`.
                biased;
                () = &mut ending => {
                    if closed {
                        tracing::debug!(
                            remote = %conn.remote,
                            "connection dropped: more requests than max_requests_per_connection after its close"
                        );
                        return;
                    }
                    closed = true;
                    connection.as_mut().graceful_shutdown();
                    let ignored: Stage<'_> = Box::pin(tracker.overrun().notified());
                    ending = crate::woken::when_woken(ignored);
                }
                ended = connection.as_mut() => break ended,
            }
        };
        if let Err(e) = ended {
            tracing::debug!(remote = %conn.remote, error = %e, "connection ended with an error");
        }
    }
}

/// The worker threads of `server.thread_per_core`, each with a current-thread runtime that
/// accepts from its own handles on the public listeners (the same sockets: an idle worker
/// takes a new connection first, as nginx's workers do) and serves what it accepted.
#[derive(Default)]
struct PerCore {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each worker holds a sender until its acceptors are gone.
    accepting: Option<mpsc::Receiver<()>>,
    /// Turns true once the drain is over: the workers' runtimes end.
    finished: Option<watch::Sender<bool>>,
}

impl PerCore {
    /// Starts `workers` threads serving `listeners`; returns once every one of them listens.
    /// Errors when a listener cannot be shared or a worker cannot start: half the workers would
    /// be half a server.
    fn start(
        workers: usize,
        listeners: Vec<TcpListener>,
        kind: Listener,
        connections: &Arc<Semaphore>,
        serving: &Serving,
        stopping: &watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let listeners = listeners
            .into_iter()
            .map(TcpListener::into_std)
            .collect::<io::Result<Vec<_>>>()?;
        let handles = (0..workers)
            .map(|_| {
                listeners
                    .iter()
                    .map(std::net::TcpListener::try_clone)
                    .collect()
            })
            .collect::<io::Result<Vec<Vec<_>>>>()?;
        drop(listeners);
        let (accepting_tx, accepting) = mpsc::channel(1);
        let (finished, finishing) = watch::channel(false);
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let mut per_core = Self {
            threads: Vec::with_capacity(workers),
            accepting: Some(accepting),
            finished: Some(finished),
        };
        for (index, handles) in handles.into_iter().enumerate() {
            let (connections, serving, mut stopping, mut finishing, accepting, ready) = (
                connections.clone(),
                serving.clone(),
                stopping.clone(),
                finishing.clone(),
                accepting_tx.clone(),
                ready_tx.clone(),
            );
            let worker = move || {
                crate::pool::set_worker(index);
                let started = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        // Registered with this runtime's reactor.
                        let entered = runtime.enter();
                        let listeners = handles
                            .into_iter()
                            .map(TcpListener::from_std)
                            .collect::<io::Result<Vec<_>>>();
                        drop(entered);
                        Ok((runtime, listeners?))
                    });
                let (runtime, listeners) = match started {
                    Ok(started) => started,
                    Err(e) => return drop(ready.send(Err(e))),
                };
                crate::metrics::count_runtime(runtime.handle().clone());
                runtime.block_on(async move {
                    let mut acceptors = tokio::task::JoinSet::new();
                    for listener in listeners {
                        acceptors.spawn(accept_loop(
                            listener,
                            kind,
                            connections.clone(),
                            serving.clone(),
                        ));
                    }
                    // Ready with its acceptors spawned and its runtime counted: `listening` is
                    // logged once every worker says so.
                    let _ = ready.send(Ok(()));
                    let _ = stopping.wait_for(|stop| *stop).await;
                    acceptors.shutdown().await;
                    drop(accepting);
                    // Its connections are served until the drain is over.
                    let _ = finishing.wait_for(|finished| *finished).await;
                });
                // Whatever is left (connections past the grace, blocking work) is dropped.
                runtime.shutdown_background();
            };
            // On an error, the workers already started end: their channels' senders are gone.
            let thread = std::thread::Builder::new()
                .name(format!("ucgate-worker-{index}"))
                .spawn(worker)?;
            per_core.threads.push(thread);
        }
        drop(ready_tx);
        // Blocking, once, at start: each worker answers as soon as its acceptors are spawned.
        for _ in 0..workers {
            ready
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended at start"))??;
        }
        Ok(per_core)
    }

    /// Resolves once no worker accepts any more (at once without workers).
    async fn stopped_accepting(mut self) -> Self {
        if let Some(accepting) = &mut self.accepting {
            // Every sender gone: every worker's acceptors are.
            let _ = accepting.recv().await;
        }
        self
    }

    /// Ends the workers' runtimes and waits for their threads.
    async fn join(mut self) {
        if let Some(finished) = self.finished.take() {
            finished.send_replace(true);
        }
        let threads = std::mem::take(&mut self.threads);
        if !threads.is_empty() {
            let _ = tokio::task::spawn_blocking(move || {
                for thread in threads {
                    let _ = thread.join();
                }
            })
            .await;
        }
    }
}

/// What bounds one client connection.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    timeouts: Timeouts,
    max_requests: u32,
    /// Requests that may be under way when a connection is asked to close (h2 streams).
    in_flight: u32,
}

fn connection_builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Head and idle deadlines are `client_timeouts`' job: hyper's would close without a 408.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(config.max_header_bytes)
        .max_headers(config.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// A connection's place among `max_connections`, counted in `connections_open` while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn taken(permit: OwnedSemaphorePermit) -> Self {
        crate::metrics::metrics().connections_open.inc();
        Slot { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::metrics().connections_open.dec();
    }
}

/// TCP keepalive probes on client connections: a client that vanished without closing (its
/// machine off, its network gone) is found out after about two minutes of silence. Only a
/// WebSocket tunnel needs it (HTTP/1.1 has the idle timeout, h2 its pings), and only a dead
/// peer trips it: a quiet tunnel whose client still answers stays open.
const CLIENT_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(6);

/// Connections open at once on `server.admin_listen` (Prometheus, probes), apart from
/// `server.max_connections`.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Accepts connections from `listener` into `slots` and serves each as a task of the calling
/// runtime, until aborted. The slot is taken after the accept, not before: an acceptor waiting
/// for a connection holds none, so that listeners without traffic (an IPv6 address beside the
/// IPv4 one, each per-core worker's handle) do not keep slots from the others. At the limit,
/// each acceptor holds the one connection it accepted until a slot frees, and accepts nothing
/// more: the other clients wait in the kernel's backlog instead of being accepted and starved.
async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    slots: Arc<Semaphore>,
    serving: Serving,
) {
    // The port the clients of this listener reach, made once for all of them. A bound socket
    // always has an address: without one, nothing could be accepted from it either.
    let port = match listener.local_addr() {
        Ok(local) => ListenerPort::new(local.port()),
        Err(e) => {
            tracing::error!(error = %e, "a listener has no local address: it serves nothing");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let permit = match slots.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => match slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&CLIENT_KEEPALIVE);
                let slot = Slot::taken(permit);
                tokio::spawn(serving.clone().serve(stream, remote, kind, port, slot));
            }
            // Out of file descriptors or a connection reset before accept: keep serving the
            // others, without spinning.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Whether a connection to a TLS listener opens with plain HTTP: its first byte a request
/// method's first letter, where a TLS client sends a handshake record (content type 22, RFC 8446
/// §5.1). Peeks, so that the TLS handshake still reads every byte; false when the client
/// closed or failed first (the handshake then says so).
async fn opens_with_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Answers a plain HTTP client on a TLS listener with `400 PlainHttpToTls` in plain HTTP, then
/// closes: its request is never parsed nor forwarded. The close lingers (as nginx's
/// `lingering_close`): what the client sent is read and dropped, up to [`LINGER_BYTES`] within
/// [`LINGER_TIME`], since closing a socket with unread input sends a reset that can destroy the
/// answer on its way (not seen on loopback, hence untested). The caller bounds the whole by the
/// head timeout.
async fn answer_plain_http(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = crate::client_timeouts::direct_response(crate::error::GateError::PlainHttpToTls);
    if stream.write_all(&answer).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let linger = async {
        let mut buf = [0u8; 4096];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, linger).await;
}

/// How much of a plain HTTP client's input [`answer_plain_http`] reads and drops at most, and
/// for how long (nginx lingers 5 s by default; a client's request is in well before).
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);
