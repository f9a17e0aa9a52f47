//! Bodies: the response body type (an upstream body streamed through, or a small body made
//! here), and the request body on its way upstream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::lazy_timer::LazyTimer;

/// Every response body: streamed from the upstream, or made here whole.
pub type Body = Either<Streamed, Full<Bytes>>;

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body made here, sent whole.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

/// The upstream connection an upstream body arrives on. It has no task of its own: the body's
/// reader drives it (each read goes through [`Carrier::poll_frame`]), and gives it back once the
/// body has been read to its end ([`Carrier::release`]); dropped before, it closes.
pub trait Carrier: Send {
    /// `body`'s next frame, the connection driven first; the task of `cx` is woken when there
    /// is more.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        body: Pin<&mut Incoming>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>>;
    /// The body was read to its end: the connection may carry another exchange.
    fn release(self: Box<Self>);
}

/// An upstream body streamed through, cut off after `stall` of silence mid-body, read from
/// `carrier` (none: a body that needs no driving, as a request's from the client).
pub fn streamed(body: Incoming, stall: Duration, carrier: Option<Box<dyn Carrier>>) -> Body {
    Either::Left(Streamed::new(body, stall, carrier))
}

/// A body streamed through, cut off when its sender goes silent for `stall` mid-body. Upstream
/// to client: the client sees a broken response (an incomplete body, an h2 reset), never a
/// connection held open forever. Client to upstream: see [`Upload`].
pub struct Streamed {
    body: Incoming,
    stall: Duration,
    last_frame: Instant,
    timer: LazyTimer,
    carrier: Option<Box<dyn Carrier>>,
}

/// Why a streamed body ended early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the body broke off: {0}")]
    Broken(#[from] hyper::Error),
    #[error("the body's sender went silent mid-body")]
    Stalled,
}

impl Streamed {
    fn new(body: Incoming, stall: Duration, carrier: Option<Box<dyn Carrier>>) -> Self {
        Self {
            body,
            stall,
            last_frame: Instant::now(),
            timer: LazyTimer::default(),
            carrier,
        }
    }
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = &mut *self;
        let polled = match &mut this.carrier {
            Some(carrier) => carrier.poll_frame(cx, Pin::new(&mut this.body)),
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        if let Poll::Ready(frame) = polled {
            this.last_frame = Instant::now();
            // The end: a reader may stop at the last frame once `is_end_stream` says so.
            let ended = match &frame {
                None => true,
                Some(Ok(_)) => this.body.is_end_stream(),
                Some(Err(_)) => {
                    this.carrier = None;
                    false
                }
            };
            if ended && let Some(carrier) = this.carrier.take() {
                carrier.release();
            }
            return Poll::Ready(frame.map(|f| f.map_err(StreamError::from)));
        }
        if this
            .timer
            .poll_until(cx, this.last_frame + this.stall)
            .is_pending()
        {
            return Poll::Pending;
        }
        tracing::debug!(stall = ?this.stall, "body stalled");
        Poll::Ready(Some(Err(StreamError::Stalled)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client's request body on its way upstream: cut off when the client goes silent for
/// `stall` mid-body, and telling [`UploadEnd`] when it is over, so that the route's timeout for
/// the upstream's answer starts then, not while a long upload is still going.
pub struct Upload {
    /// None: no body (a request sent again, see `pool.rs`).
    body: Option<Streamed>,
    ended: Option<oneshot::Sender<()>>,
    /// Dropped with the body, or at its end: tells [`Uploading`] that the upload is over.
    watched: Option<oneshot::Receiver<()>>,
    /// Held until the body's end (or dropped with it): the client connection's mark that its
    /// request body is still being read (`client_timeouts`), opaque here.
    underway: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Upload {
    /// No body at all.
    pub fn empty() -> Self {
        Upload {
            body: None,
            ended: None,
            watched: None,
            underway: None,
        }
    }
}

/// Whether a request's body is still on its way upstream. An upstream may answer before it has
/// read the whole body (a 413, a 401): its connection, done with the response, still carries
/// the upload, and must not be lent to another request, which would wait for the end of
/// someone else's upload (and time out) before it could go out.
pub struct Uploading(oneshot::Sender<()>);

impl Uploading {
    /// True once the body has been sent whole, or dropped (the exchange failed).
    pub fn is_over(&self) -> bool {
        self.0.is_closed()
    }
}

/// Resolves once the request body has been sent whole (or dropped).
pub struct UploadEnd(Option<oneshot::Receiver<()>>);

impl UploadEnd {
    /// Waits for the end of the upload (at once for a request without a body).
    pub async fn wait(self) {
        if let Some(ended) = self.0 {
            let _ = ended.await;
        }
    }
}

/// The client's body on its way upstream, cut off after `stall` of silence, the signal of its
/// end, and (for a request with a body) whether it is still under way; `underway` is kept
/// until the body's end.
pub fn upload(
    body: Incoming,
    stall: Duration,
    underway: Option<Box<dyn std::any::Any + Send + Sync>>,
) -> (Upload, UploadEnd, Option<Uploading>) {
    // A request without a body (most of them) needs no channel.
    let (ended, end, watched, uploading) = match body.is_end_stream() {
        true => (None, UploadEnd(None), None, None),
        false => {
            let (tx, rx) = oneshot::channel();
            let (watch, watched) = oneshot::channel();
            (
                Some(tx),
                UploadEnd(Some(rx)),
                Some(watched),
                Some(Uploading(watch)),
            )
        }
    };
    let body = Some(Streamed::new(body, stall, None));
    let upload = Upload {
        body,
        ended,
        watched,
        underway,
    };
    (upload, end, uploading)
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let frame = match &mut self.body {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        };
        if let Poll::Ready(None) = frame {
            self.watched = None;
            self.underway = None;
            if let Some(ended) = self.ended.take() {
                let _ = ended.send(());
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Streamed::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Streamed::size_hint)
    }
}
