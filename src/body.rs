//! The response body type: an upstream body streamed through, or a small body made here.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

pub type Body = Either<Incoming, Full<Bytes>>;

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}
