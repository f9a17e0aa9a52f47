//! Client-side deadlines of a connection: a request head must arrive within
//! `request_header_timeout` (else 408 and close), and a keep-alive connection with no request
//! under way is closed quietly after `idle_timeout`.
//!
//! hyper's own `header_read_timeout` closes without an answer and doubles as the idle timeout,
//! so a slow client cannot tell that it was cut off and idle connections cannot be kept longer
//! than a head may take. The deadlines live in the connection's IO ([`DeadlineIo`]); the
//! service tells it when a request starts and when its response is done ([`RequestTracker`]),
//! because only the service sees hyper's message boundaries.
//!
//! h2 connections (recognised by their preface) have no head or idle deadline here: h2 has its
//! own keep-alive pings, and a stream's head arrives in one frame.
//!
//! On every connection, HTTP/1 or h2, a write that stays pending for `send_timeout` (a client
//! that stopped reading) ends the connection, as nginx's `send_timeout` does. (An h2 client that
//! stops reading one stream only holds that stream: its flow-control window stops the writes.)
//!
//! hyper answers a request head it cannot parse itself (400, 414, 431), with an empty body and
//! outside the service. The IO recognises those answers and writes ucgate's JSON error in their
//! place, so that every error a client gets is the same contract.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::error::GateError;
use crate::lazy_timer::LazyTimer;

/// The h2 connection preface; a connection that starts with it is h2 by prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The client deadlines of one connection (`server.*_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub head: Duration,
    pub idle: Duration,
    /// Longest a write may stay pending.
    pub send: Duration,
}

/// Requests started and responses finished on one connection, counted by the service and read
/// by the IO. Counters rather than a flag, so that a whole exchange happening between two reads
/// is not missed.
#[derive(Debug)]
struct Exchanges {
    started: AtomicU32,
    finished: AtomicU32,
    /// When the last response ended, in nanoseconds since `opened`: the idle wait starts there,
    /// however late the IO looks at the counts.
    finished_at: AtomicU64,
    opened: Instant,
    /// Requests the connection may carry (`server.max_requests_per_connection`).
    max_requests: u32,
    /// Notified when the request numbered `max_requests` starts.
    enough: Notify,
    /// Requests past which the connection is dropped, not closed gracefully: `max_requests`
    /// and as many more as may have been in flight when the close was asked for (h2 streams).
    /// Only a client that ignores the close (an h2 one that never answers the GOAWAY's PING,
    /// so that its first GOAWAY never becomes final) gets there. None past `u32::MAX`: a
    /// saturated count would equal `max_requests` and drop the last request's connection.
    abandon_at: Option<u32>,
    /// Notified when the request numbered `abandon_at` starts.
    overrun: Notify,
    /// Set when a response switched protocols (a WebSocket tunnel): the bytes that follow are
    /// not HTTP/1, and its deadlines no longer apply.
    upgraded: AtomicBool,
    /// Request bodies still on their way upstream ([`BodyUnderway`]): an upstream may answer
    /// before it has read the whole body (a 413), and the client's bytes that follow are that
    /// body, not the next head.
    uploads: AtomicU32,
}

/// What the connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No byte of the next request yet: closed quietly at the deadline.
    Waiting,
    /// Part of a request head: 408 at the deadline.
    Head,
    /// A request is being served: its body and the upstream have their own bounds.
    Serving,
}

/// The connection's IO with the deadlines of [`Timeouts`].
pub struct DeadlineIo<IO> {
    inner: IO,
    exchanges: Arc<Exchanges>,
    finished_seen: u32,
    timeouts: Timeouts,
    phase: Phase,
    /// Requests started when the current head's first byte arrived: a response written while
    /// the count is still that is not the service's (hyper answering a head it refused).
    started_at_head: u32,
    deadline: Instant,
    timer: LazyTimer,
    /// Bytes of the h2 preface matched so far; `None` once the connection is known to be HTTP/1.
    /// All of it: h2, no deadline here.
    preface_matched: Option<usize>,
    /// Set once the head's deadline passed, or hyper answered a head it could not parse: what of
    /// ucgate's answer is still to write. Empty once written; the connection then ends.
    refusing: Option<Bytes>,
    /// Armed while a write is pending: the client is not reading.
    write_stall: Option<Pin<Box<Sleep>>>,
}

/// The service-side half of [`DeadlineIo`]: marks requests as they start and responses as they
/// are done.
#[derive(Clone)]
pub struct RequestTracker {
    exchanges: Arc<Exchanges>,
}

/// A new connection's IO and its request tracker, for `max_requests` requests, and at most
/// `in_flight` more that were under way when the close was asked for.
pub fn wrap<IO>(
    io: IO,
    timeouts: Timeouts,
    max_requests: u32,
    in_flight: u32,
) -> (DeadlineIo<IO>, RequestTracker) {
    let exchanges = Arc::new(Exchanges {
        started: AtomicU32::new(0),
        finished: AtomicU32::new(0),
        finished_at: AtomicU64::new(0),
        opened: Instant::now(),
        max_requests,
        enough: Notify::new(),
        abandon_at: max_requests
            .checked_add(in_flight)
            .filter(|_| in_flight > 0),
        overrun: Notify::new(),
        upgraded: AtomicBool::new(false),
        uploads: AtomicU32::new(0),
    });
    // A new connection must send its first head within `head` of being accepted.
    let deadline = exchanges.opened + timeouts.head;
    let io = DeadlineIo {
        inner: io,
        exchanges: exchanges.clone(),
        finished_seen: 0,
        timeouts,
        phase: Phase::Waiting,
        started_at_head: 0,
        deadline,
        timer: LazyTimer::default(),
        preface_matched: Some(0),
        refusing: None,
        write_stall: None,
    };
    (io, RequestTracker { exchanges })
}

impl RequestTracker {
    /// Marks a request started; the response's body marks it finished when it is dropped, which
    /// hyper does once the response is written.
    pub fn track<B>(&self, response: Response<B>) -> Response<Tracked<B>> {
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            self.exchanges.upgraded.store(true, Ordering::Release);
        }
        response.map(|inner| Tracked {
            inner,
            exchanges: self.exchanges.clone(),
        })
    }

    /// Counts a request started; true when it is the connection's last (`max_requests`): its
    /// HTTP/1 response is to say `Connection: close` (an answer ready at once goes out before
    /// the graceful close [`RequestTracker::enough`] asks for can be heard). Call it when the
    /// request's future is first polled, not when hyper calls the service: hyper reads once
    /// more in between, and the IO must not see that read as one made while a request is served.
    pub fn start(&self) -> bool {
        let started = self.exchanges.started.fetch_add(1, Ordering::Release) + 1;
        let last = started >= self.exchanges.max_requests;
        if started == self.exchanges.max_requests {
            self.exchanges.enough.notify_one();
        }
        if Some(started) == self.exchanges.abandon_at {
            self.exchanges.overrun.notify_one();
        }
        last
    }

    /// A request body on its way upstream, until the returned guard is dropped (at the body's
    /// end, or with it): until then the connection is serving, whether or not the response is
    /// done, and its idle wait starts at the later of the two ends.
    pub fn body_underway(&self) -> BodyUnderway {
        self.exchanges.uploads.fetch_add(1, Ordering::Release);
        BodyUnderway {
            exchanges: self.exchanges.clone(),
        }
    }

    /// Notified when the connection has started more requests than it may, even counting those
    /// under way when it was asked to close: its client ignores the close, and it is to be
    /// dropped.
    pub fn overrun(&self) -> &Notify {
        &self.exchanges.overrun
    }

    /// Notified when the connection has started its last request (`max_requests`): it is to
    /// be closed gracefully.
    pub fn enough(&self) -> &Notify {
        &self.exchanges.enough
    }
}

/// See [`RequestTracker::body_underway`].
pub struct BodyUnderway {
    exchanges: Arc<Exchanges>,
}

impl Drop for BodyUnderway {
    fn drop(&mut self) {
        self.exchanges.mark_end();
        self.exchanges.uploads.fetch_sub(1, Ordering::Release);
    }
}

impl Exchanges {
    /// Notes now as the end of the last exchange (its response, or its upload).
    fn mark_end(&self) {
        let since = self.opened.elapsed().as_nanos();
        // Read after the count it comes with (Release there, Acquire by the reader).
        self.finished_at
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// A response body that marks its exchange finished when dropped.
pub struct Tracked<B> {
    inner: B,
    exchanges: Arc<Exchanges>,
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.exchanges.mark_end();
        // Release: whoever sees the count sees the time.
        self.exchanges.finished.fetch_add(1, Ordering::Release);
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer written straight to the connection, when hyper has no request to answer: the
/// JSON error, dated as every other answer (RFC 9110 §6.6.1), and the connection closed after
/// it.
pub fn direct_response(error: GateError) -> Bytes {
    let status = error.status();
    let body = error.json_body();
    format!(
        "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        body.len()
    )
    .into()
}

/// The status lines of the answers hyper writes itself for a head it cannot parse (its
/// `Server::on_error`), with ucgate's error for each.
const HYPER_ANSWERS: [(&[u8], GateError); 3] = [
    (b"HTTP/1.1 400 Bad Request\r\n", GateError::MalformedRequest),
    (b"HTTP/1.1 414 URI Too Long\r\n", GateError::UriTooLong),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        GateError::HeadersTooLarge,
    ),
];

impl<IO: AsyncRead + AsyncWrite + Unpin> DeadlineIo<IO> {
    /// Follows the service's count of exchanges: a request under way has no deadline here, and
    /// a finished one starts the idle wait.
    fn observe_exchanges(&mut self) {
        let finished = self.exchanges.finished.load(Ordering::Acquire);
        let started = self.exchanges.started.load(Ordering::Acquire);
        if started != finished || self.exchanges.uploads.load(Ordering::Acquire) != 0 {
            self.phase = Phase::Serving;
        } else if finished != self.finished_seen {
            self.finished_seen = finished;
            self.phase = Phase::Waiting;
            let finished_at = self.exchanges.finished_at.load(Ordering::Relaxed);
            self.deadline =
                self.exchanges.opened + Duration::from_nanos(finished_at) + self.timeouts.idle;
        }
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        if let Some(matched) = self.preface_matched {
            let n = bytes.len().min(H2_PREFACE.len() - matched);
            self.preface_matched =
                (bytes[..n] == H2_PREFACE[matched..matched + n]).then_some(matched + n);
            if self.is_h2() {
                return;
            }
        }
        if self.phase == Phase::Waiting {
            // A head has `head` from its first byte, and never more than the wait it ends.
            self.phase = Phase::Head;
            self.started_at_head = self.exchanges.started.load(Ordering::Acquire);
            self.deadline = self.deadline.min(Instant::now() + self.timeouts.head);
        }
    }

    /// Writes the 408, then reports the end of the input so that hyper closes the connection.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.refusing.is_none() {
            self.refusing = Some(direct_response(GateError::RequestTimeout));
        }
        self.poll_write_refusal(cx)
    }
}

impl<IO: AsyncWrite + Unpin> DeadlineIo<IO> {
    /// Writes what is left of ucgate's own answer. The write is bounded by `send` like any
    /// other: a client that reads nothing does not hold the connection open.
    fn poll_write_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(mut rest) = self.refusing.take() else {
            return Poll::Ready(Ok(()));
        };
        while !rest.is_empty() {
            let outcome = Pin::new(&mut self.inner).poll_write(cx, &rest);
            match self.bound_write(cx, outcome) {
                Poll::Ready(Ok(n)) if n > 0 => rest.advance(n),
                // Closed, or not read in time: given up, the input ends all the same.
                Poll::Ready(_) => rest.clear(),
                Poll::Pending => {
                    self.refusing = Some(rest);
                    return Poll::Pending;
                }
            }
        }
        self.refusing = Some(rest);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        Poll::Ready(Ok(()))
    }

    /// Whether `first` (the start of a write) is hyper's own answer to a head it could not
    /// parse: one of [`HYPER_ANSWERS`], written while a head is being received and no request
    /// has started since its first byte (a response of the service always comes after its
    /// request started). If so, ucgate's answer replaces it. (A head pipelined behind a request
    /// still being served is not followed here: hyper's empty answer then stands.)
    fn replaces_hyper_answer(&mut self, first: &[u8]) -> bool {
        if self.refusing.is_some() {
            return true;
        }
        if self.is_untimed()
            || self.phase != Phase::Head
            || self.exchanges.started.load(Ordering::Acquire) != self.started_at_head
        {
            return false;
        }
        let Some((_, error)) = HYPER_ANSWERS
            .iter()
            .find(|(line, _)| first.starts_with(line))
        else {
            return false;
        };
        tracing::debug!(status = %error.status(), "request head not parsed: JSON answer");
        self.refusing = Some(direct_response(error.clone()));
        true
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for DeadlineIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.is_untimed() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.refusing.is_some() {
            return this.poll_refuse(cx);
        }
        this.observe_exchanges();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes(&buf.filled()[before..]);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if this.phase == Phase::Serving {
            // No deadline while a request is served; but hyper may not read again after the
            // response until the client writes, so the exchanges are looked at again one idle
            // timeout from now at the latest: still within the idle wait, which starts when the
            // response ended. (A wake when the response ends would cost a poll of the connection
            // per request.)
            if this.timer.poll_until(cx, this.deadline).is_ready() {
                this.deadline = Instant::now() + this.timeouts.idle;
                let _ = this.timer.poll_until(cx, this.deadline);
            }
            return Poll::Pending;
        }
        if this.timer.poll_until(cx, this.deadline).is_pending() {
            return Poll::Pending;
        }
        if this.phase == Phase::Head {
            crate::metrics::metrics().request_head_timeouts.inc();
            tracing::debug!("request head not received in time: 408");
            return this.poll_refuse(cx);
        }
        // Idle: an end of input, which hyper answers by closing.
        Poll::Ready(Ok(()))
    }
}

impl<IO> DeadlineIo<IO> {
    fn is_h2(&self) -> bool {
        self.preface_matched == Some(H2_PREFACE.len())
    }

    /// h2, or a tunnel after a protocol switch: no head or idle deadline here.
    fn is_untimed(&self) -> bool {
        self.is_h2() || self.exchanges.upgraded.load(Ordering::Acquire)
    }

    /// Passes a write's outcome through; a write pending for longer than `send` (a client that
    /// does not read its response) becomes an error, on which hyper drops the connection.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.write_stall = None;
            return outcome;
        }
        let send = self.timeouts.send;
        let timer = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        tracing::debug!("client not reading: connection closed");
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replaces_hyper_answer(buf) {
            // Taken, and dropped: ucgate's answer goes out at the flush.
            return Poll::Ready(Ok(buf.len()));
        }
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound_write(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if self.replaces_hyper_answer(first) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound_write(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_refusal(cx))?;
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound_write(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_refusal(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    const TIMEOUTS: Timeouts = Timeouts {
        head: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        send: Duration::from_secs(60),
    };

    /// The connection is to be dropped only past its last request and those in flight, and
    /// never at its last request, whatever the limit.
    #[tokio::test]
    async fn overrun_comes_after_the_last_request_and_those_in_flight() {
        use futures_util::FutureExt;
        let ready = |n: &Notify| n.notified().now_or_never().is_some();
        let (_client, server) = duplex(64);
        let (_io, tracker) = wrap(server, TIMEOUTS, 2, 3);
        for _ in 0..4 {
            tracker.start();
        }
        assert!(ready(tracker.enough()));
        assert!(!ready(tracker.overrun()));
        tracker.start();
        assert!(ready(tracker.overrun()));

        let (_client, server) = duplex(64);
        let (_io, tracker) = wrap(server, TIMEOUTS, u32::MAX, 512);
        tracker
            .exchanges
            .started
            .store(u32::MAX - 1, Ordering::Release);
        assert!(tracker.start(), "the last request");
        assert!(ready(tracker.enough()));
        assert!(!ready(tracker.overrun()), "a saturated count is no overrun");
    }

    /// What the wrapped side reads until its end of input.
    async fn read_all(io: &mut DeadlineIo<tokio::io::DuplexStream>) -> Vec<u8> {
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_head_gets_a_408_at_the_deadline() {
        let (mut client, server) = duplex(4096);
        let (mut io, _tracker) = wrap(server, TIMEOUTS, u32::MAX, 0);
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let started = Instant::now();
        assert_eq!(read_all(&mut io).await, b"GET / HTTP/1.1\r\nHo");
        assert_eq!(started.elapsed(), TIMEOUTS.head);
        let mut answer = vec![0; 4096];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        assert!(answer.contains(r#""error":"RequestTimeout""#), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
    }

    /// A connection whose first request head was read and whose request started: the client's
    /// end, the IO and its tracker.
    async fn serving() -> (DuplexStream, DeadlineIo<DuplexStream>, RequestTracker) {
        let (mut client, server) = duplex(4096);
        let (mut io, tracker) = wrap(server, TIMEOUTS, u32::MAX, 0);
        let head = b"GET / HTTP/1.1\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut buf = [0u8; 64];
        io.read_exact(&mut buf[..head.len()]).await.unwrap();
        tracker.start();
        (client, io, tracker)
    }

    /// hyper reads while a request is served and, the response written, does not read again
    /// until the client writes: that pending read must still end, an idle timeout after the
    /// response.
    #[tokio::test(start_paused = true)]
    async fn a_read_pending_through_the_exchange_ends_at_the_idle_deadline() {
        let (_client, mut io, tracker) = serving().await;
        let mut buf = [0u8; 64];
        let served_for = TIMEOUTS.head * 3;
        let started = Instant::now();
        // A task of its own: woken only by what the IO registered.
        let reader = tokio::spawn(async move { io.read(&mut buf).await.map(|n| (n, io)) });
        tokio::time::sleep(served_for).await;
        drop(tracker.track(http::Response::new(())));
        let read = tokio::time::timeout(TIMEOUTS.idle * 2, reader).await;
        let (n, _io) = read.expect("the read ends").unwrap().unwrap();
        assert_eq!(n, 0, "closed at the idle deadline");
        assert_eq!(started.elapsed(), served_for + TIMEOUTS.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_under_way_has_no_deadline_and_then_the_idle_one_applies() {
        let (mut client, mut io, tracker) = serving().await;
        let mut buf = [0u8; 64];
        // Served for longer than both deadlines: no end of input meanwhile.
        let waited = tokio::time::timeout(TIMEOUTS.idle * 2, io.read(&mut buf)).await;
        assert!(waited.is_err(), "a request under way was cut off");
        // The response is done: the idle deadline, and a quiet close.
        drop(tracker.track(http::Response::new(())));
        let started = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), TIMEOUTS.idle);
        drop(io);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "an idle close says nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn an_h2_preface_split_over_reads_turns_the_deadlines_off() {
        let (mut client, server) = duplex(4096);
        let (mut io, _tracker) = wrap(server, TIMEOUTS, u32::MAX, 0);
        let mut buf = [0u8; 64];
        for part in [&H2_PREFACE[..5], &H2_PREFACE[5..]] {
            client.write_all(part).await.unwrap();
            let n = io.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], part);
        }
        let waited = tokio::time::timeout(TIMEOUTS.idle * 2, io.read(&mut buf)).await;
        assert!(waited.is_err(), "an h2 connection got an HTTP/1 deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_408_the_client_never_takes_ends_the_input_after_the_send_timeout() {
        // Too small a buffer for the 408, and a client that never reads it.
        let (mut client, server) = duplex(16);
        let (mut io, _tracker) = wrap(server, TIMEOUTS, u32::MAX, 0);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        assert_eq!(read_all(&mut io).await, b"GET / HTTP/1.1\r\n");
        assert_eq!(started.elapsed(), TIMEOUTS.head + TIMEOUTS.send);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_takes_fails_after_the_send_timeout() {
        let (_client, server) = duplex(16);
        let (mut io, _tracker) = wrap(server, TIMEOUTS, u32::MAX, 0);
        let started = Instant::now();
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUTS.send);
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_s_answer_to_a_refused_head_becomes_json_and_the_service_s_answers_stay() {
        const CANNED: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        // No request started since the head began: hyper's own answer, replaced.
        let (mut client, server) = duplex(4096);
        let (mut io, _tracker) = wrap(server, TIMEOUTS, u32::MAX, 0);
        client
            .write_all(b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        io.write_all(CANNED).await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        let date = answer
            .strip_prefix("HTTP/1.1 400 Bad Request\r\ndate: ")
            .and_then(|rest| rest.split_once("\r\n"))
            .map(|(date, _)| date);
        let dated = date.and_then(|d| httpdate::parse_http_date(d).ok());
        assert!(dated.is_some(), "a dated answer: {answer}");
        assert!(
            answer.contains("\r\ncontent-type: application/json\r\n"),
            "{answer}"
        );
        assert!(answer.contains(r#""error":"MalformedRequest""#), "{answer}");

        // The same bytes from the service (a request started, even if its body is done): kept.
        let (mut client, server) = duplex(4096);
        let (mut io, tracker) = wrap(server, TIMEOUTS, u32::MAX, 0);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        tracker.start();
        drop(tracker.track(http::Response::new(())));
        io.write_all(CANNED).await.unwrap();
        io.flush().await.unwrap();
        drop(io);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, CANNED);
    }
}
