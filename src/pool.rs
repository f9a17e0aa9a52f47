//! Keep-alive HTTP/1.1 connections to one upstream origin, owned by the route that uses them.
//!
//! Written here rather than taken from hyper-util's `legacy::Client` because that client is the
//! most expensive part of the forwarding path (measured with callgrind: about 7,000 instructions
//! of a 57,000-instruction request): one pool for every origin behind a SipHash-keyed map and a
//! mutex, looked up twice per request, a connector service, and futures moved from layer to
//! layer. A route knows its origin, so its pool is a plain stack of idle connections: take the
//! most recently used one that is ready, or connect; give it back when the response body has
//! been read to its end. The HTTP/1.1 protocol itself stays hyper's (`hyper::client::conn`).
//!
//! A connection has no task of its own (see [`Driver`]): hyper's connection future is polled by
//! whoever waits on the exchange, so that an upstream's answer wakes the task serving the client
//! directly instead of a connection task that then hands it over through a channel.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame};
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
/// How often idle connections are looked at (see [`sweep`]).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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
    /// last. A connection's socket is registered with the reactor of the runtime that opened
    /// it: with a runtime per worker (`server.thread_per_core`), another worker using it would
    /// be woken from that worker's thread for each exchange.
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// Whether [`sweep`] runs for this pool (started with the first idle connection).
    swept: AtomicBool,
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
    conn: Box<Conn>,
    since: Instant,
}

/// hyper's side of one upstream connection: the future that reads and writes its socket. It is
/// not spawned as a task: it is polled by whoever waits on the connection's exchange (the
/// request's task until the response head, then the response body's reader), so that a request
/// never crosses to another task and the upstream's answer wakes the task serving the client,
/// as nginx's one event loop per worker does. That saves the connection task's polls and the
/// channel hops of every request and response (measured: see the README). A connection with
/// more to do than its exchange's reader drives gets a task after all ([`Driver::spawn`]): a
/// tunnel after its switch ([`Conn::detach`]), and an upload its upstream answered before the
/// end ([`Lease::with_upload`]), which must go on whether or not the client reads the answer.
struct Driver {
    /// `None` once it has ended (closed by either side, or failed).
    connection: Option<Running>,
    wakes: Arc<Wakes>,
    /// `wakes` as a waker, made once per connection.
    waker: Waker,
}

/// hyper's connection future, until it ends.
type Running = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// The waker a connection and its exchange's futures are polled with. hyper's connection and
/// the futures it answers through (the response, the body's channel) signal each other with
/// wake-ups; with one task for all of them each would be a wasted poll of the whole client
/// connection. Wake-ups that come while [`Driver::poll_driving`] polls are noted and acted on
/// in the same poll instead; the others (the socket's readiness, from the reactor) wake the
/// reader's task.
struct Wakes {
    /// [`IDLE`], [`POLLING`] or [`WOKEN`]: one atomic, so that a wake-up from another thread
    /// cannot fall between the check and the end of a poll.
    state: AtomicU8,
    task: AtomicWaker,
}

/// Not being polled: a wake-up goes to the reader's task.
const IDLE: u8 = 0;
/// Being polled: a wake-up makes the poll go round once more.
const POLLING: u8 = 1;
/// Being polled, and woken meanwhile.
const WOKEN: u8 = 2;

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let noted =
            self.state
                .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire);
        if matches!(noted, Err(IDLE)) {
            self.task.wake();
        }
    }
}

impl Driver {
    fn new(connection: Running) -> Self {
        let wakes = Arc::new(Wakes {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        Self {
            connection: Some(connection),
            waker: Waker::from(wakes.clone()),
            wakes,
        }
    }

    /// Lets the connection read and write what it can; false once it has ended (closed by either
    /// side, or failed). Then it is dropped: requests still queued on it fail at once, handing
    /// their request back (see [`Pool::send`]).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.connection, cx)
    }

    /// Polls `poll` (what waits on the exchange), then the connection if `poll` is pending, both
    /// with [`Wakes`], and `poll` again as long as one woke the other meanwhile; the task of
    /// `cx` is woken by the socket. `poll` first: what the connection hands over (a response
    /// head, a body's data) it hands over when polled after its reader asked for it.
    ///
    /// A wake-up that comes with `poll`'s `Ready` is not passed on: what the connection has
    /// left to do is done at its next poll, which its next reader (the body's next read, the
    /// next exchange, [`sweep`]) makes.
    fn poll_driving<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.wakes.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        loop {
            self.wakes.state.store(POLLING, Ordering::Release);
            let polled = poll(&mut inner);
            if polled.is_ready() {
                self.wakes.state.store(IDLE, Ordering::Release);
                return polled;
            }
            drive(&mut self.connection, &mut inner);
            if self.wakes.state.swap(IDLE, Ordering::AcqRel) != WOKEN {
                return Poll::Pending;
            }
        }
    }

    /// `call`'s result, the wake-ups it gives dropped: a request handed to the connection wakes
    /// it, and the caller drives it right after.
    fn quietly<T>(&self, call: impl FnOnce() -> T) -> T {
        self.wakes.state.store(POLLING, Ordering::Release);
        let result = call();
        self.wakes.state.store(IDLE, Ordering::Release);
        result
    }

    /// `future`'s output, the connection driven while it waits. `future` is pinned by the
    /// caller: moved into a future of this function's own, it would be copied once more.
    fn driving<'a, F: Future>(
        &'a mut self,
        mut future: Pin<&'a mut F>,
    ) -> impl Future<Output = F::Output> + 'a {
        std::future::poll_fn(move |cx| self.poll_driving(cx, |inner| future.as_mut().poll(inner)))
    }

    /// Forgets the reader's task: an idle connection's socket must not wake it.
    fn unhook(&self) {
        self.wakes.task.take();
    }

    /// Hands the connection to a task of its own, which drives it from now on whoever reads
    /// (or does not read) its exchange; [`Driver::poll_driving`] then only polls what waits on
    /// the exchange. The connection ends in that task once its sender is dropped and its
    /// exchange is over: it is not given back to the pool.
    fn spawn(&mut self) {
        // What the connection registered before it moves still wakes through `wakes`: not the
        // reader's task any more.
        self.unhook();
        if let Some(connection) = self.connection.take() {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
        }
    }
}

/// [`Driver::drive`] on its connection alone (a free function: [`Driver::poll_driving`] polls
/// with a waker the driver itself holds).
fn drive(connection: &mut Option<Running>, cx: &mut Context<'_>) -> bool {
    if let Some(running) = connection
        && let Poll::Ready(ended) = running.as_mut().poll(cx)
    {
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upstream connection ended");
        }
        *connection = None;
    }
    connection.is_some()
}

/// One upstream connection: where requests are sent, and its [`Driver`]. Boxed once when
/// opened: it moves with every exchange (pool, lease, body), as a pointer.
struct Conn {
    sender: http1::SendRequest<Upload>,
    driver: Driver,
}

impl Conn {
    /// Waits until the connection can take a request, driving it: it settles what its last
    /// exchange left, or reads the close of an upstream that ended it while idle. False if it
    /// cannot take one.
    async fn ready(&mut self) -> bool {
        let Self { sender, driver } = self;
        std::future::poll_fn(|cx| {
            driver.poll_driving(cx, |inner| sender.poll_ready(inner).map(|r| r.is_ok()))
        })
        .await
    }

    /// Hands the connection to a task of its own, for what it still has to do after its
    /// exchange (a WebSocket tunnel's switch, the rest of an upload): it ends then, no request
    /// being able to come (the sender is dropped).
    fn detach(mut self) {
        self.driver.spawn();
    }

    /// Whether an idle connection is still usable, looked at without a task to wake: a close
    /// the upstream sent meanwhile is read now.
    fn still_open(&mut self) -> bool {
        self.driver
            .drive(&mut Context::from_waker(std::task::Waker::noop()))
            && !self.sender.is_closed()
    }
}

/// A connection lent for one exchange, driven by the response body's reader
/// ([`Lease::driving`], [`crate::body::Carrier`]); [`Lease::release`] gives it back once the
/// response body has been read to its end. Dropped instead, the connection closes (its body was
/// not read: it cannot carry another exchange).
pub struct Lease {
    conn: Box<Conn>,
    pool: Arc<Inner>,
    /// The request's body, if it had one: while it is still being sent (an upstream that
    /// answered early), the connection is not free.
    uploading: Option<Uploading>,
}

impl Lease {
    /// The exchange's request body is `uploading`: the connection goes back to the pool only
    /// once it is over.
    ///
    /// An upstream that answered before the whole upload gets a task driving its connection at
    /// once ([`Driver::spawn`]): the rest of the upload must go on whether or not the answer is
    /// read. A client that sends its whole body before reading (most HTTP/1.1 clients) does not
    /// read a large answer until its upload is through, and the upload, driven only by the
    /// answer's reader, would wait for it: neither would move again.
    pub fn with_upload(mut self, uploading: Option<Uploading>) -> Self {
        if uploading.as_ref().is_some_and(|u| !u.is_over()) {
            self.conn.driver.spawn();
        }
        self.uploading = uploading;
        self
    }

    /// `future`'s output (reading the response body), the connection driven while it waits.
    pub fn driving<'a, F: Future>(
        &'a mut self,
        future: Pin<&'a mut F>,
    ) -> impl Future<Output = F::Output> + 'a {
        self.conn.driver.driving(future)
    }

    /// Back to the pool, for the next request to this upstream; not if the request's body is
    /// still being sent (the next request would wait for the end of that upload): hyper then
    /// finishes the upload on it, in a task of its own, and closes it.
    pub fn release(self) {
        if self.uploading.as_ref().is_some_and(|u| !u.is_over()) {
            tracing::debug!("upstream answered before the whole upload: connection not reused");
            self.conn.detach();
            return;
        }
        // Closed after its answer (`Connection: close`, HTTP/1.0): nothing to give back.
        if self.conn.driver.connection.is_none() {
            return;
        }
        self.conn.driver.unhook();
        let mut idle = lock(self.pool.stack());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn: self.conn,
                since: Instant::now(),
            });
        }
        drop(idle);
        // After the push: a sweep ending sees it (see `sweep`).
        if !self.pool.swept.load(Ordering::SeqCst) && !self.pool.swept.swap(true, Ordering::SeqCst)
        {
            tokio::spawn(sweep(Arc::downgrade(&self.pool)));
        }
    }
}

impl crate::body::Carrier for Lease {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        mut body: Pin<&mut Incoming>,
    ) -> Poll<Option<hyper::Result<Frame<Bytes>>>> {
        self.conn
            .driver
            .poll_driving(cx, |inner| body.as_mut().poll_frame(inner))
    }

    fn release(self: Box<Self>) {
        Lease::release(*self);
    }
}

/// Every [`SWEEP_EVERY`] while `pool` lives and has idle connections, closes those that the
/// upstream closed or that are idle past [`IDLE_TIMEOUT`]. With no task of their own, idle
/// connections would otherwise be looked at only when taken, and an upstream's close would
/// leave sockets in CLOSE_WAIT, one per connection of the busiest moment, until traffic came
/// back. Started by the first connection given back ([`Lease::release`]); it ends when none is
/// left, and the next one given back starts it again.
async fn sweep(pool: Weak<Inner>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        let mut left = 0;
        for stack in &inner.idle {
            let mut stack = lock(stack);
            stack.retain_mut(|idle| idle.since.elapsed() < IDLE_TIMEOUT && idle.conn.still_open());
            left += stack.len();
        }
        if left == 0 {
            inner.swept.store(false, Ordering::SeqCst);
            // A connection given back meanwhile saw `swept` still set: this sweep stays for it.
            let given_back = inner.idle.iter().any(|stack| !lock(stack).is_empty());
            if !given_back || inner.swept.swap(true, Ordering::SeqCst) {
                return;
            }
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
                swept: AtomicBool::new(false),
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
            while let Some((mut conn, idle_for)) = self.checkout() {
                if !conn.sender.is_ready() && !conn.ready().await {
                    continue;
                }
                // Boxed: the copy is rare, and inline it took the request's size again in
                // every request's future.
                let replay = (idle_for >= REPLAY_AFTER_IDLE)
                    .then(|| replayable(&request).map(Box::new))
                    .flatten();
                let sent = conn
                    .driver
                    .quietly(|| conn.sender.try_send_request(request));
                match conn.driver.driving(std::pin::pin!(sent)).await {
                    Ok(response) => return Ok(self.lend(response, conn)),
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
            let mut conn = Box::pin(self.connect()).await?;
            let sent = conn.driver.quietly(|| conn.sender.send_request(request));
            let response = conn.driver.driving(std::pin::pin!(sent)).await?;
            Ok(self.lend(response, conn))
        }
    }

    fn lend(
        &self,
        response: Response<Incoming>,
        conn: Box<Conn>,
    ) -> (Response<Incoming>, Option<Lease>) {
        // After a protocol switch the connection is the tunnel's: its task completes the switch.
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            conn.detach();
            return (response, None);
        }
        let lease = Lease {
            conn,
            pool: self.inner.clone(),
            uploading: None,
        };
        (response, Some(lease))
    }

    /// The most recently used idle connection that is still open and not too old, and how long
    /// it was idle.
    fn checkout(&self) -> Option<(Box<Conn>, Duration)> {
        let mut idle = lock(self.inner.stack());
        while let Some(candidate) = idle.pop() {
            let idle_for = candidate.since.elapsed();
            if !candidate.conn.sender.is_closed() && idle_for < IDLE_TIMEOUT {
                return Some((candidate.conn, idle_for));
            }
        }
        None
    }

    async fn connect(&self) -> Result<Box<Conn>, PoolError> {
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

/// The HTTP/1.1 handshake on `io`, upgrades allowed for WebSocket tunnels; the connection is
/// driven by its exchanges (see [`Driver`]).
async fn handshake<T>(io: TokioIo<T>) -> Result<Box<Conn>, PoolError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(io).await?;
    Ok(Box::new(Conn {
        sender,
        driver: Driver::new(Box::pin(connection.with_upgrades())),
    }))
}
