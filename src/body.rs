//! The response body type: an upstream body streamed through, or a small body made here.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub type Body = Either<Streamed, Full<Bytes>>;

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

pub fn streamed(body: Incoming, stall: Duration) -> Body {
    Either::Left(Streamed {
        body,
        stall,
        last_frame: Instant::now(),
        timer: None,
    })
}

/// An upstream body streamed to the client, cut off when the upstream goes silent for `stall`
/// mid-body: the client sees a broken response (an incomplete body, an h2 reset), never a
/// connection held open forever.
pub struct Streamed {
    body: Incoming,
    stall: Duration,
    last_frame: Instant,
    /// Armed on the first wait only, then moved on lazily when it fires: a frame costs a clock
    /// read, not a timer update.
    timer: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the upstream body broke off: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("the upstream went silent mid-body")]
    Stalled,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.last_frame = Instant::now();
            return Poll::Ready(frame.map(|f| f.map_err(StreamError::from)));
        }
        let deadline = this.last_frame + this.stall;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if timer.deadline() >= deadline {
                tracing::debug!(stall = ?this.stall, "upstream body stalled");
                return Poll::Ready(Some(Err(StreamError::Stalled)));
            }
            timer.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
