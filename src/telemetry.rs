//! Logging: the tracing subscriber and the access log (one line per request).

use std::io::IsTerminal;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use http::{Method, StatusCode, Version};
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

/// What the gateway learnt about a request, for the access log and the metrics.
#[derive(Debug, Default)]
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

    /// Counts the request in the metrics and writes its access-log line (target
    /// `ucgate::access`, when enabled), once its response head is ready: `started` is when
    /// it reached ucgate. Called by the gateway itself rather than by a tower layer around it:
    /// handing the log to such a layer took a response extension, a map allocated per request
    /// (500 instructions, callgrind).
    pub fn finish(&self, method: &Method, version: Version, started: Instant, status: StatusCode) {
        self.record(status);
        if tracing::enabled!(target: "ucgate::access", tracing::Level::INFO) {
            fn field(f: Option<&str>) -> &str {
                f.unwrap_or("-")
            }
            let client = self.client.map(|c| c.to_string());
            tracing::info!(
                target: "ucgate::access",
                method = %method,
                path = field(self.path.as_deref()),
                route = field(self.route.as_deref()),
                status = status.as_u16(),
                credential = field(self.credential),
                error = field(self.error),
                client = client.as_deref().unwrap_or("-"),
                version = ?version,
                latency_us = started.elapsed().as_micros() as u64,
                "request"
            );
        }
    }
}
