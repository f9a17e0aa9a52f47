//! Listeners, HTTP/1.1 and h2 connections, graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;

use crate::client_timeouts::{self, Timeouts};
use crate::config::ServerConfig;
use crate::gateway::Gateway;
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
/// for up to `shutdown_grace`.
pub async fn serve(
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    gateway: Gateway,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let builder = connection_builder(config);
    let timeouts = Timeouts {
        head: config.request_header_timeout,
        idle: config.idle_timeout,
        send: config.send_timeout,
    };
    let limits = ConnLimits {
        timeouts,
        max_requests: config.max_requests_per_connection,
    };
    // Connections drain when this turns true; they are all gone when every slot is back.
    let (drain, draining) = watch::channel(false);
    let (accepted_tx, mut accepted) = mpsc::channel::<Accepted>(64);
    let connections = Arc::new(Semaphore::new(config.max_connections));
    // Slots of their own: a flood of clients must not keep Prometheus and the probes out.
    let admin_connections = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let mut acceptors = tokio::task::JoinSet::new();
    let public = if admin.is_some() {
        Listener::Public
    } else {
        Listener::Everything
    };
    let kinds = listeners
        .into_iter()
        .map(|l| (l, public, &connections))
        .chain(admin.map(|l| (l, Listener::Admin, &admin_connections)));
    for (listener, kind, slots) in kinds {
        if let Ok(addr) = listener.local_addr() {
            if kind == Listener::Admin {
                tracing::info!(%addr, "listening for the operator (metrics, health)");
            } else {
                tracing::info!(%addr, "listening");
            }
        }
        acceptors.spawn(accept_loop(
            listener,
            kind,
            accepted_tx.clone(),
            slots.clone(),
        ));
    }
    drop(accepted_tx);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some((stream, remote, listener, permit)) = accepted.recv() => {
                let (gateway, builder, draining) = (gateway.clone(), builder.clone(), draining.clone());
                let handshake_timeout = config.request_header_timeout;
                tokio::spawn(async move {
                    let _slot = Slot::taken(permit);
                    // The acceptor of the current state: a reload brings new certificates to
                    // new connections.
                    // The operator's listener is plain HTTP.
                    let tls = match listener {
                        Listener::Admin => None,
                        Listener::Public | Listener::Everything => gateway.state().tls.clone(),
                    };
                    let Some(tls) = tls else {
                        return serve_connection(&builder, limits, draining, &gateway, stream, ConnInfo { remote, tls: false, listener }).await;
                    };
                    match tokio::time::timeout(handshake_timeout, TlsAcceptor::from(tls).accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, limits, draining, &gateway, stream, ConnInfo { remote, tls: true, listener }).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    // Closing the listeners first: new connections are refused while the old ones drain.
    acceptors.shutdown().await;
    drop(accepted);
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
}

/// What bounds one client connection.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    timeouts: Timeouts,
    max_requests: u32,
}

/// Serves one connection until it ends. It ends gracefully (requests under way finish, then
/// the close or an h2 GOAWAY) when ucgate drains, or once it has carried `max_requests`: a
/// client cannot keep one connection forever, nor open and cancel h2 streams without end.
async fn serve_connection<S>(
    builder: &auto::Builder<TokioExecutor>,
    limits: ConnLimits,
    mut draining: watch::Receiver<bool>,
    gateway: &Gateway,
    stream: S,
    conn: ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (stream, tracker) = client_timeouts::wrap(stream, limits.timeouts);
    let finished = tracker.clone();
    let enough = Arc::new(Notify::new());
    let reached = enough.clone();
    let service = ServiceBuilder::new()
        .map_request(move |req| {
            if tracker.started() == limits.max_requests {
                reached.notify_one();
            }
            req
        })
        .map_response(move |response| finished.track(response))
        .service(gateway.service(conn));
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let closing = async {
        tokio::select! {
            _ = draining.wait_for(|drain| *drain) => {}
            () = enough.notified() => {}
        }
    };
    tokio::pin!(closing);
    let mut closed = false;
    let ended = loop {
        tokio::select! {
            ended = connection.as_mut() => break ended,
            () = &mut closing, if !closed => {
                closed = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(remote = %conn.remote, error = %e, "connection ended with an error");
    }
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

/// Connections open at once on `server.admin_listen` (Prometheus, probes), apart from
/// `server.max_connections`.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// An accepted connection, the listener it came on, and its slot.
type Accepted = (TcpStream, SocketAddr, Listener, OwnedSemaphorePermit);

async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    accepted: mpsc::Sender<Accepted>,
    slots: Arc<Semaphore>,
) {
    loop {
        // At the limit, stop accepting: clients wait in the kernel's backlog instead of being
        // accepted and starved.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                if accepted.send((stream, remote, kind, permit)).await.is_err() {
                    return;
                }
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
