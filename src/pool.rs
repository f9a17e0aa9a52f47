//! Keep-alive HTTP/1.1 connections to one upstream origin, owned by the route that uses them.
//!
//! Written here rather than taken from hyper-util's `legacy::Client` because that client is the
//! most expensive part of the forwarding path (measured with callgrind: about 7,000 instructions
//! of a 57,000-instruction request): one pool for every origin behind a SipHash-keyed map and a
//! mutex, looked up twice per request, a connector service, and futures moved from layer to
//! layer. A route knows its origin, so its pool is a plain stack of idle connections: take the
//! most recently used one that is ready, or connect; give it back when the response body has
//! been read to its end. The HTTP/1.1 protocol itself stays hyper's (`hyper::client::conn`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{Upload, Uploading};
use crate::config::UpstreamUrl;

/// How long a connection attempt may take: a dead upstream fails fast with 502 instead of
/// eating the route's whole timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections older than this are closed rather than reused (upstreams such as nginx
/// close theirs after 60 to 75 s: reusing one as it closes would fail the request).
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// A request that a pooled connection idle this long fails may be sent again (see
/// [`Pool::send`]): keep-alive timeouts are seconds (nginx 75 s, Play 75 s, Apache 5 s); an
/// upstream closing idle connections within a second gets 502s instead.
const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);
/// Idle connections kept per route and worker at most; more are closed when they come back.
const MAX_IDLE: usize = 256;

/// Why an upstream exchange failed: connecting, or the exchange itself (hyper's error, whose
/// source chain names a failing request body).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(std::io::Error),
    #[error("the TLS handshake with the upstream failed: {0}")]
    Tls(std::io::Error),
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The connections of one route to its upstream. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .field(
                "idle",
                &self.inner.idle.iter().map(|s| lock(s).len()).sum::<usize>(),
            )
            .finish()
    }
}

struct Inner {
    host: String,
    port: u16,
    /// For `https://` upstreams: the client configuration and the name checked.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Idle connections, one stack per worker (see [`set_worker`]), most recently returned
    /// last. A connection's own task runs on the runtime that opened it: with a runtime per
    /// worker (`server.thread_per_core`), taking another worker's connection would wake that
    /// worker's thread for each exchange.
    idle: Box<[Mutex<Vec<Idle>>]>,
}

thread_local! {
    /// This thread's stack of idle connections in every pool; 0 outside per-core workers.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Stacks per pool: one per core, so that each per-core worker has its own.
fn stacks() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Marks the calling thread as worker `index` (from 0) of `server.thread_per_core`: the
/// connections it opens and gives back go to its own stacks. More workers than cores share.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

impl Inner {
    /// The calling worker's idle connections.
    fn stack(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[WORKER.with(std::cell::Cell::get) % self.idle.len()]
    }
}

struct Idle {
    sender: http1::SendRequest<Upload>,
    since: Instant,
}

/// A connection lent for one exchange; [`Lease::release`] gives it back once the response body
/// has been read to its end. Dropped instead, the connection closes (its body was not read:
/// it cannot carry another exchange).
pub struct Lease {
    sender: http1::SendRequest<Upload>,
    pool: Arc<Inner>,
    /// The request's body, if it had one: while it is still being sent (an upstream that
    /// answered early), the connection is not free.
    uploading: Option<Uploading>,
}

impl Lease {
    /// The exchange's request body is `uploading`: the connection goes back to the pool only
    /// once it is over.
    pub fn with_upload(mut self, uploading: Option<Uploading>) -> Self {
        self.uploading = uploading;
        self
    }

    /// Back to the pool, for the next request to this upstream; not if the request's body is
    /// still being sent (the next request would wait for the end of that upload): hyper then
    /// finishes the upload on it and closes it.
    pub fn release(self) {
        if self.uploading.as_ref().is_some_and(|u| !u.is_over()) {
            tracing::debug!("upstream answered before the whole upload: connection not reused");
            return;
        }
        let mut idle = lock(self.pool.stack());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// An empty pool for `url`; `tls` is the client configuration for `https://` upstreams.
    pub fn new(url: &UpstreamUrl, tls: &Arc<rustls::ClientConfig>) -> Self {
        let https = url.scheme == Scheme::HTTPS;
        let host = url.authority.host().to_owned();
        let port = url
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        // An IP literal in brackets is not a DNS name.
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = https
            .then(|| {
                ServerName::try_from(name.clone())
                    .ok()
                    .map(|server| (TlsConnector::from(tls.clone()), server))
            })
            .flatten();
        Self {
            inner: Arc::new(Inner {
                host: name,
                port,
                tls,
                idle: (0..stacks()).map(|_| Mutex::default()).collect(),
            }),
        }
    }

    /// Sends `request` on an idle connection, or a new one, and returns the response head with
    /// the connection lent until its body is read. A pooled connection that the upstream closed
    /// meanwhile is noticed before the request goes out, and the request goes on another one.
    /// One that the upstream closes as the request goes out (its keep-alive timeout ending at
    /// that moment) fails it; a request without a body and of an idempotent method (RFC 9110
    /// §9.2.2) is then sent once more on a new connection, as nginx's `proxy_next_upstream`
    /// does on an error. Only when the connection closed before a response head came back (not
    /// on an answer it could not parse), and only after a connection idle for
    /// [`REPLAY_AFTER_IDLE`]: the copy of the head it takes stays off the busy path.
    ///
    /// A function returning an `async move` block rather than an `async fn`: an async fn moves
    /// its arguments into locals of its own, so that its future held the request twice.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice"
    )]
    pub fn send(
        &self,
        mut request: Request<Upload>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Option<Lease>), PoolError>> + '_ {
        async move {
            while let Some((mut sender, idle_for)) = self.checkout() {
                // Ready at once unless the connection still settles its last exchange.
                if sender.ready().await.is_err() {
                    continue;
                }
                // Boxed: the copy is rare, and inline it took the request's size again in
                // every request's future.
                let replay = (idle_for >= REPLAY_AFTER_IDLE)
                    .then(|| replayable(&request).map(Box::new))
                    .flatten();
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok(self.lend(response, sender)),
                    Err(mut e) => match (e.take_message(), replay) {
                        // Never sent: the connection was closing. Try the next one.
                        (Some(unsent), _) => request = unsent,
                        (None, Some(again)) if closed_under(e.error()) => {
                            tracing::debug!(error = %e.into_error(), "a pooled upstream connection closed under the request: sent again");
                            request = *again;
                            break;
                        }
                        (None, _) => return Err(e.into_error().into()),
                    },
                }
            }
            // Boxed: connecting (DNS, TCP, TLS, handshake) is the rare path, and its future,
            // several KiB with a TLS session, would otherwise be part of every request's future,
            // copied whole each time one is built or boxed (measured with callgrind: see the
            // README).
            let mut sender = Box::pin(self.connect()).await?;
            let response = sender.send_request(request).await?;
            Ok(self.lend(response, sender))
        }
    }

    fn lend(
        &self,
        response: Response<Incoming>,
        sender: http1::SendRequest<Upload>,
    ) -> (Response<Incoming>, Option<Lease>) {
        // After a protocol switch the connection is the tunnel's.
        let lease = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Lease {
            sender,
            pool: self.inner.clone(),
            uploading: None,
        });
        (response, lease)
    }

    /// The most recently used idle connection that is still open and not too old, and how long
    /// it was idle.
    fn checkout(&self) -> Option<(http1::SendRequest<Upload>, Duration)> {
        let mut idle = lock(self.inner.stack());
        while let Some(candidate) = idle.pop() {
            let idle_for = candidate.since.elapsed();
            if !candidate.sender.is_closed() && idle_for < IDLE_TIMEOUT {
                return Some((candidate.sender, idle_for));
            }
        }
        None
    }

    async fn connect(&self) -> Result<http1::SendRequest<Upload>, PoolError> {
        let inner = &self.inner;
        let connect = async {
            let tcp = TcpStream::connect((inner.host.as_str(), inner.port))
                .await
                .map_err(PoolError::Connect)?;
            tcp.set_nodelay(true).map_err(PoolError::Connect)?;
            match &inner.tls {
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(PoolError::Tls)?;
                    handshake(TokioIo::new(tls)).await
                }
                None => handshake(TokioIo::new(tcp)).await,
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| PoolError::ConnectTimeout)?
    }
}

/// Whether an exchange failed because the connection closed under it (before a whole response
/// head came back): not an answer the upstream got wrong, which is not asked again.
fn closed_under(e: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    e.is_incomplete_message()
        || std::error::Error::source(e)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionAborted
                )
            })
}

/// A copy of `request` to send again, when it has no body and an idempotent method.
fn replayable(request: &Request<Upload>) -> Option<Request<Upload>> {
    if !request.method().is_idempotent() || !http_body::Body::is_end_stream(request.body()) {
        return None;
    }
    let mut again = Request::new(Upload::empty());
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.version_mut() = request.version();
    *again.headers_mut() = request.headers().clone();
    Some(again)
}

/// The HTTP/1.1 handshake on `io`; the connection itself runs as its own task (it reads and
/// writes while the request's task waits), upgrades allowed for WebSocket tunnels.
async fn handshake<T>(io: TokioIo<T>) -> Result<http1::SendRequest<Upload>, PoolError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}
