//! Logging: the tracing subscriber and the access-log layer (one line per request).

use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::metrics::{ReasonLabels, RequestLabels, RouteName, metrics};

/// Installs the global subscriber. `UCGATE_LOG` (or `RUST_LOG`) overrides the `info` default.
pub fn init(format: LogFormat) {
    let filter = std::env::var("UCGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// What the gateway learnt about a request, attached to its response for the access log.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    pub path: Option<Box<str>>,
    /// The client's address (see `identity::Trust::origin`).
    pub client: Option<std::net::IpAddr>,
    pub route: Option<Arc<str>>,
    pub credential: Option<&'static str>,
    pub error: Option<&'static str>,
    /// The method of a token-exchange endpoint (password, kerberos, cas, oidc).
    pub exchange: Option<&'static str>,
}

static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));

impl RequestLog {
    /// Counts the request in the metrics: one place derives them all from what the gateway learnt.
    fn record(&self, status: StatusCode) {
        let m = metrics();
        let credential = self.credential.unwrap_or("none");
        let route = RouteName(self.route.clone().unwrap_or_else(|| NO_ROUTE.clone()));
        m.count_request(RequestLabels {
            route,
            status: status.as_u16(),
            credential,
        });
        if credential == "shared-previous" {
            m.shared_token_previous.inc();
        }
        match (self.error, status) {
            (Some("TooManyAttempts"), _) => {
                m.lockouts.inc();
            }
            (Some(reason), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                m.auth_failures
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
            }
            _ => {}
        }
        if let Some(method) = self.exchange {
            let outcome = match status {
                StatusCode::OK => "success",
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "failure",
                StatusCode::TOO_MANY_REQUESTS => "locked",
                _ => "error",
            };
            m.login(method, outcome);
        }
    }
}

/// A tower layer that logs one line per request once its response head is ready.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer;

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// The access-log service (see [`AccessLogLayer`]).
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<Request<B>> for AccessLog<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Logged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Logged {
            started: Instant::now(),
            method: req.method().clone(),
            version: req.version(),
            inner: self.inner.call(req),
        }
    }
}

/// The future of [`AccessLog`]: the inner service's (already boxed), logged when it answers.
/// Not boxed again: a box would copy the whole request future (4 KiB) once more per request.
pub struct Logged<F> {
    inner: F,
    started: Instant,
    method: http::Method,
    version: http::Version,
}

impl<F, RB, E> Future for Logged<F>
where
    F: Future<Output = Result<Response<RB>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(Ok(response)) => response,
            other => return other,
        };
        let log = response.extensions().get::<RequestLog>();
        if let Some(log) = log {
            log.record(response.status());
        }
        if tracing::enabled!(target: "ucgate::access", tracing::Level::INFO) {
            let field = |f: fn(&RequestLog) -> Option<&str>| log.and_then(f).unwrap_or("-");
            let client = log.and_then(|l| l.client).map(|c| c.to_string());
            tracing::info!(
                target: "ucgate::access",
                method = %self.method,
                path = field(|l| l.path.as_deref()),
                route = field(|l| l.route.as_deref()),
                status = response.status().as_u16(),
                credential = field(|l| l.credential),
                error = field(|l| l.error),
                client = client.as_deref().unwrap_or("-"),
                version = ?self.version,
                latency_us = self.started.elapsed().as_micros() as u64,
                "request"
            );
        }
        Poll::Ready(Ok(response))
    }
}
