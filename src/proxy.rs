//! Forwarding: request rewrite, the pooled upstream client, streaming both ways, upgrades.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Extensions, Request, Response, StatusCode, Uri, Version, request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::{Body, StreamError};
use crate::client_timeouts::BodyUnderway;
use crate::config::UpstreamUrl;
use crate::error::GateError;
use crate::hop_by_hop;
use crate::identity::Asserted;
use crate::pool::{Lease, Pool, PoolError};
use crate::tls;

const UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");

/// The TLS client configuration of `https://` upstreams, shared by every route of a
/// configuration: checked against `ca_bundle`, or the system's roots; HTTP/1.1 by ALPN.
pub fn upstream_tls(ca_bundle: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut config = tls::upstream_config(ca_bundle)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The upstream of one route: its origin, the route's timeout and its connections.
#[derive(Debug, Clone)]
pub struct Upstream {
    authority: Authority,
    host: HeaderValue,
    /// For the response head once the request body is sent, and for any silence mid-body.
    timeout: Duration,
    /// For a client's silence mid-upload.
    upload_stall: Duration,
    pool: Pool,
}

impl Upstream {
    /// The upstream at `url`: `timeout` for its answer once the upload ended (and for any
    /// silence mid-body), `upload_stall` for a client's silence mid-upload; `tls` for
    /// `https://` upstreams.
    pub fn new(
        url: &UpstreamUrl,
        timeout: Duration,
        upload_stall: Duration,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            authority: url.authority.clone(),
            host: HeaderValue::from_str(url.authority.as_str())
                .expect("an authority is a valid header"),
            timeout,
            upload_stall,
            pool: Pool::new(url, tls),
        }
    }
}

/// What the forwarder needs to know besides the request.
pub struct Forward<'a> {
    pub upstream: &'a Upstream,
    pub websocket: bool,
    /// The normalised path and the query without the `token` parameter.
    pub path_and_query: PathAndQuery,
    /// The identity and forwarding headers the upstream gets, set once the client's headers
    /// are cleaned.
    pub asserted: Asserted<'a>,
}

impl Forward<'_> {
    /// Sends the request upstream and returns its response, bodies streamed both ways.
    ///
    /// An `async move` block rather than an `async fn`, whose arguments are moved into locals of
    /// its own: the future held the request's head and this forwarder twice.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice"
    )]
    pub fn send(
        self,
        mut parts: request::Parts,
        body: Incoming,
        underway: Option<BodyUnderway>,
    ) -> impl Future<Output = Result<Response<Body>, GateError>> {
        async move {
            let upgrade = (self.websocket && is_websocket_handshake(&parts))
                .then(|| parts.extensions.remove::<OnUpgrade>())
                .flatten();
            self.rewrite(&mut parts, upgrade.is_some())?;
            let underway = underway.map(|u| Box::new(u) as _);
            let (body, upload_end, uploading) =
                crate::body::upload(body, self.upstream.upload_stall, underway);
            let response = self.upstream.pool.send(Request::from_parts(parts, body));
            // The route's timeout runs from the end of the upload, not from its start: a long upload
            // is bounded by its stall limit instead. (So not tower's Timeout, which would start the
            // clock with the call.) A small answer's body must be in by the same deadline: one
            // timer per request, not one for the head and another for the body.
            let timeout = self.upstream.timeout;
            let mut answer_due = std::pin::pin!(async move {
                upload_end.wait().await;
                tokio::time::sleep(timeout).await;
            });
            let result = tokio::select! {
                biased;
                result = response => result,
                () = &mut answer_due => return Err(GateError::UpstreamTimeout),
            };
            let (mut response, lease) = match result {
                Ok((response, lease)) => (response, lease.map(|l| l.with_upload(uploading))),
                Err(e) => return Err(self.failure(&e)),
            };
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            match (switching, upgrade) {
                (true, Some(client_side)) => {
                    let upstream_side = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_side, upstream_side));
                }
                // An upstream may not switch protocols unasked.
                (true, None) => return Err(GateError::UpstreamUnavailable),
                (false, _) => {}
            }
            hop_by_hop::strip(response.headers_mut(), switching, |_| false);
            if switching {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, UPGRADE_VALUE);
            }
            small_body_in_one_piece(response, lease, self.upstream.timeout, answer_due).await
        }
    }

    /// Whose fault a failed exchange is: the client's body (silent: 408; malformed or cut off:
    /// 400), or the upstream's (502).
    fn failure(&self, e: &PoolError) -> GateError {
        match request_body_error(e) {
            Some(StreamError::Stalled) => {
                tracing::debug!("the client went silent mid-upload");
                GateError::RequestTimeout
            }
            Some(StreamError::Broken(_)) => {
                tracing::debug!(error = %e, "request body broke off");
                GateError::InvalidBody
            }
            None => {
                tracing::debug!(error = %e, upstream = %self.upstream.authority, "upstream request failed");
                GateError::UpstreamUnavailable
            }
        }
    }

    fn rewrite(&self, parts: &mut request::Parts, upgrade: bool) -> Result<(), GateError> {
        // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2); h2's
        // :authority arrives there too.
        let original_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| parts.headers.get(header::HOST).cloned());
        let upgrade_protocol = parts.headers.get(header::UPGRADE).cloned();
        let headers = &mut parts.headers;
        // The client's hop-by-hop headers go in the same pass as its identity headers, before
        // ucgate sets its own: a header the client names in `Connection` must not remove them.
        self.asserted.apply(headers, original_host)?;
        headers.insert(header::HOST, self.upstream.host.clone());
        if let (true, Some(protocol)) = (upgrade, upgrade_protocol) {
            headers.insert(header::CONNECTION, UPGRADE_VALUE);
            headers.insert(header::UPGRADE, protocol);
        }
        // Origin-form (RFC 9112 §3.2.1): the connection is already the upstream's, and Host
        // names it.
        parts.uri = Uri::from(self.path_and_query.clone());
        parts.version = Version::HTTP_11;
        parts.extensions = Extensions::new();
        Ok(())
    }
}

/// The request body's own failure, if that is why hyper's client failed.
fn request_body_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e StreamError> {
    let mut source = e.source();
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<StreamError>() {
            return Some(body);
        }
        source = e.source();
    }
    None
}

/// Responses whose declared length is at most this are read whole before being answered.
const SMALL_BODY: u64 = 16 * 1024;

/// A small upstream body (the usual JSON answer) is read before answering, so that the client
/// gets head and body in one write instead of a head, a wake-up and a body; and so that the
/// upstream connection goes back to the pool at once; it must be in by `answer_due` (504
/// after). Larger or unsized bodies stream, `timeout` being the longest silence between two
/// pieces.
async fn small_body_in_one_piece(
    response: Response<Incoming>,
    lease: Option<Lease>,
    timeout: Duration,
    answer_due: Pin<&mut impl Future<Output = ()>>,
) -> Result<Response<Body>, GateError> {
    use http_body::Body as _;
    if response.body().is_end_stream() {
        if let Some(lease) = lease {
            lease.release();
        }
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, crate::body::empty()));
    }
    let small = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= SMALL_BODY);
    if !small {
        // The client's reads drive the connection; it goes back to the pool when the client has
        // read the body to its end.
        let carrier = lease.map(|lease| Box::new(lease) as _);
        return Ok(response.map(|body| crate::body::streamed(body, timeout, carrier)));
    }
    let (parts, body) = response.into_parts();
    let mut lease = lease;
    let mut collect = std::pin::pin!(whole(body));
    let collect = async {
        match &mut lease {
            Some(lease) => lease.driving(collect.as_mut()).await,
            None => collect.await,
        }
    };
    // The head is not sent yet: an upstream that breaks off or stalls mid-body gets the client
    // a clean 502 or 504.
    let collected = tokio::select! {
        biased;
        collected = collect => collected,
        () = answer_due => return Err(GateError::UpstreamTimeout),
    };
    let Ok(collected) = collected else {
        return Err(GateError::UpstreamUnavailable);
    };
    if let Some(lease) = lease {
        lease.release();
    }
    Ok(Response::from_parts(parts, crate::body::full(collected)))
}

/// A small body's data in one piece, its trailers dropped (the answer is sent with a length).
/// Written out rather than `http_body_util`'s `collect().to_bytes()`, whose list of frames is
/// an allocation of every proxied request for what is nearly always one frame (callgrind: 400
/// instructions a request); a second frame is appended to a copy of the first, within the
/// declared length that made the body small (hyper's client holds the upstream to it).
async fn whole(mut body: Incoming) -> Result<Bytes, hyper::Error> {
    let mut first = Bytes::new();
    let mut more: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match &mut more {
            Some(more) => more.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
        }
    }
    Ok(more.map_or(first, BytesMut::freeze))
}

/// A WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1 GET with `Connection: upgrade`,
/// `Upgrade: websocket` and nothing else, a `Sec-WebSocket-Key` of 16 bytes in base64, and
/// `Sec-WebSocket-Version: 13`. It is the only protocol switch ucgate lets through: after any
/// switch the upstream reads a tunnel in which ucgate authenticates nothing more, and other
/// protocols (`h2c`, ...) would carry later requests past it. Any other upgrade is not one:
/// its `Upgrade` header is dropped and the request forwarded as a plain request.
fn is_websocket_handshake(parts: &request::Parts) -> bool {
    let single = |name: header::HeaderName| {
        let mut values = parts.headers.get_all(name).iter();
        values.next().filter(|_| values.next().is_none())
    };
    let key_ok = single(header::SEC_WEBSOCKET_KEY).is_some_and(|key| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .is_ok_and(|k| k.len() == 16)
    });
    parts.version == Version::HTTP_11
        && parts.method == http::Method::GET
        && single(header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && single(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13")
        && key_ok
        && hop_by_hop::connection_tokens(&parts.headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// Copies bytes both ways between the client and the upstream once both have switched.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}
