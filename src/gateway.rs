//! The request path: normalise, local endpoint or route, credential, policy, forward.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{HeaderName, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::{self, Credential, SharedToken};
use crate::body::Body;
use crate::config::{Config, UpstreamAuth};
use crate::error::{GateError, json_response};
use crate::proxy::{Forward, HttpClient, Upstream, http_client};
use crate::routes::{Route, RouteTable, normalise_path};
use crate::telemetry::RequestLog;

/// Everything a request needs, swapped as one piece on reload so that a request sees one
/// consistent configuration from start to end.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub routes: RouteTable,
    pub shared: SharedToken,
}

impl State {
    pub fn new(config: Config, shared: SharedToken, client: &HttpClient) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                upstream: Upstream::new(&r.upstream, r.timeout, client.clone()),
                config: r.clone(),
            })
            .collect();
        Self {
            routes: RouteTable::new(routes),
            config,
            shared,
        }
    }

    /// Checks a presented token.
    pub fn authenticate(&self, token: &str) -> Result<Credential, GateError> {
        self.shared
            .matches(token.as_bytes())
            .map(Credential::Shared)
            .ok_or(GateError::TokenInvalid)
    }
}

/// The connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
}

/// The shared, cheaply cloned gateway.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    state: ArcSwap<State>,
}

impl Gateway {
    pub fn new(config: Config, shared: SharedToken) -> Self {
        let client = http_client();
        let state = State::new(config, shared, &client);
        Self {
            inner: Arc::new(Inner {
                state: ArcSwap::from_pointee(state),
            }),
        }
    }

    pub fn state(&self) -> Arc<State> {
        self.inner.state.load_full()
    }

    /// The per-connection service handed to hyper.
    pub fn service(&self, conn: ConnInfo) -> GatewayService {
        GatewayService {
            gateway: self.clone(),
            conn,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let mut log = RequestLog::default();
        let mut response = match self.dispatch(req, conn, &mut log).await {
            Ok(response) => response,
            Err(e) => {
                log.error = Some(e.code());
                e.into_response()
            }
        };
        response.extensions_mut().insert(log);
        response
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        log: &mut RequestLog,
    ) -> Result<Response<Body>, GateError> {
        if req.method() == Method::CONNECT {
            return Err(GateError::InvalidTarget);
        }
        let state = self.inner.state.load_full();
        let (parts, body) = req.into_parts();
        let path = normalise_path(parts.uri.path())?;
        log.path = Some(path.as_ref().into());
        if let Some(response) = local_endpoint(&path, &parts.method) {
            return Ok(response);
        }
        let route = state.routes.find(&path).ok_or(GateError::NoRoute)?;
        log.route = Some(route.config.name.clone());
        let presented = auth::presented(&parts.headers, parts.uri.query())?;
        let credential = match (&presented.token, route.config.accept.is_public()) {
            (_, true) | (None, false) => Credential::Anonymous,
            (Some(token), false) => state.authenticate(token)?,
        };
        log.credential = Some(credential.kind());
        credential.allowed_by(route.config.accept)?;

        let path_and_query = match presented.query {
            Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
            None => PathAndQuery::try_from(path.as_ref()),
        }
        .map_err(|_| GateError::InvalidTarget)?;
        let mut add_headers: Vec<(HeaderName, _)> = Vec::with_capacity(1);
        if route.config.upstream_auth == UpstreamAuth::Shared {
            add_headers.push((HeaderName::from_static(auth::X_AUTH_TOKEN), state.shared.header().clone()));
        }
        Forward {
            upstream: &route.upstream,
            websocket: route.config.websocket,
            path_and_query,
            client_addr: conn.remote,
            tls: conn.tls,
            trust_forwarded: state.config.server.trust_forwarded_headers,
            add_headers,
        }
        .send(parts, body)
        .await
    }
}

/// Endpoints served by ucgate itself, matched on the exact normalised path.
fn local_endpoint(path: &str, method: &Method) -> Option<Response<Body>> {
    let body = match path {
        "/healthz" => serde_json::json!({ "status": "ok" }),
        "/readyz" => serde_json::json!({ "status": "ready" }),
        _ => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({ "error": "MethodNotAllowed", "message": "use GET" }),
        );
        response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return Some(response);
    }
    Some(json_response(StatusCode::OK, &body))
}

/// The tower service for one connection.
#[derive(Clone)]
pub struct GatewayService {
    gateway: Gateway,
    conn: ConnInfo,
}

impl tower::Service<Request<Incoming>> for GatewayService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let gateway = self.gateway.clone();
        let conn = self.conn;
        Box::pin(async move { Ok(gateway.handle(req, conn).await) })
    }
}
