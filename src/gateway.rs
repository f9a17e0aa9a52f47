//! The request path: normalise, local endpoint or route, credential, policy, forward.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::auth::cas::Cas;
use crate::auth::kerberos::Kerberos;
use crate::auth::oidc::Oidc;
use crate::auth::throttle::Throttle;
use crate::auth::token::TokenService;
use crate::auth::{self, Credential, SharedToken};
use crate::body::Body;
use crate::config::{Config, UpstreamAuth};
use crate::endpoints::Endpoint;
use crate::error::GateError;
use crate::metrics::{RouteLabels, RouteName, metrics};
use crate::proxy::{Forward, HttpClient, Upstream, http_client};
use crate::routes::{Route, RouteTable, normalise_path};
use crate::telemetry::RequestLog;
use crate::tls;
use crate::users::Directory;

const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");

/// Everything a request needs, swapped as one piece on reload so that a request sees one
/// consistent configuration from start to end.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub routes: RouteTable,
    pub shared: SharedToken,
    /// The listener's TLS, reloaded with the rest: new connections get new certificates.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub tokens: Option<TokenService>,
    pub users: Option<Directory>,
    pub kerberos: Option<Kerberos>,
    pub cas: Option<Cas>,
    pub oidc: Option<Oidc>,
}

impl State {
    /// Loads everything the configuration points at: shared token, token keys, users. Errors
    /// name the file and key, never a secret.
    pub fn load(config: Config) -> Result<Self, String> {
        let file = config.file.display().to_string();
        let file = file.as_str();
        // Every error names the file and the key it comes from.
        let section = |key: &'static str| move |e: String| format!("{file}: {key}: {e}");
        let client = http_client(config.server.upstream_ca.as_deref())
            .map_err(section("server.upstream_ca"))?;
        let tls = config
            .server
            .tls
            .as_ref()
            .map(tls::server_config)
            .transpose()
            .map_err(section("server.tls"))?;
        let shared = SharedToken::load(&config.shared_token)
            .map_err(|e| section("shared_token")(e.to_string()))?;
        // Token errors name their `tokens.*` key themselves.
        let tokens = config
            .tokens
            .as_ref()
            .map(TokenService::load)
            .transpose()
            .map_err(|e| format!("{file}: {e}"))?;
        let users = config
            .users
            .as_ref()
            .map(|u| Directory::load(&u.file).map_err(|e| format!("{}: {e}", u.file.display())))
            .transpose()?;
        let kerberos = config
            .kerberos
            .as_ref()
            .map(Kerberos::load)
            .transpose()
            .map_err(section("kerberos"))?;
        let cas = config
            .cas
            .as_ref()
            .map(Cas::load)
            .transpose()
            .map_err(section("cas"))?;
        let oidc = config
            .oidc
            .as_ref()
            .map(Oidc::load)
            .transpose()
            .map_err(section("oidc"))?;
        let mut state = Self::new(config, shared, &client);
        state.tls = tls;
        state.tokens = tokens;
        state.users = users;
        state.kerberos = kerberos;
        state.cas = cas;
        state.oidc = oidc;
        Ok(state)
    }

    /// A state with the shared token only (UC tokens and exchanges off).
    pub fn new(config: Config, shared: SharedToken, client: &HttpClient) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                upstream: Upstream::new(
                    &r.upstream,
                    r.timeout,
                    config.server.request_body_timeout,
                    client.clone(),
                ),
                config: r.clone(),
            })
            .collect();
        Self {
            routes: RouteTable::new(routes),
            config,
            shared,
            tls: None,
            tokens: None,
            users: None,
            kerberos: None,
            cas: None,
            oidc: None,
        }
    }

    /// Carries over what must survive a reload: revocations, the OpenID provider's keys.
    fn inherit(&mut self, old: &State) {
        if let (Some(new), Some(old)) = (&mut self.tokens, &old.tokens) {
            new.inherit(old);
        }
        if let (Some(new), Some(old)) = (&self.oidc, &old.oidc) {
            new.inherit(old);
        }
    }

    /// Ready to serve: everything needed to check credentials is loaded (the OpenID
    /// provider's keys are fetched after the start).
    pub fn is_ready(&self) -> bool {
        self.oidc.as_ref().is_none_or(Oidc::is_ready)
    }

    /// Checks a presented token: the shared token first (one digest), then a UC token.
    pub fn authenticate(&self, token: &str) -> Result<Credential, GateError> {
        if let Some(m) = self.shared.matches(token.as_bytes()) {
            return Ok(Credential::Shared(m));
        }
        match &self.tokens {
            Some(tokens) => Ok(Credential::Uc(tokens.validate(token)?)),
            None => Err(GateError::TokenInvalid),
        }
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
    /// Outlives reloads: a new configuration must not forgive past failures.
    throttle: Throttle,
}

impl Gateway {
    pub fn new(state: State) -> Self {
        let throttle = Throttle::new(&state.config.login);
        Self {
            inner: Arc::new(Inner {
                state: ArcSwap::from_pointee(state),
                throttle,
            }),
        }
    }

    /// Starts what needs the runtime (the OpenID provider's discovery); call inside it, after
    /// `new` and after every reload.
    pub fn start_background_tasks(&self) {
        if let Some(oidc) = &self.state().oidc {
            oidc.start();
        }
    }

    /// Loads `config_file` anew and swaps it in, or leaves the running state as it is.
    pub fn reload(&self, config_file: &std::path::Path) -> Result<(), String> {
        let config = Config::load(config_file).map_err(|e| e.to_string())?;
        let old = self.state();
        if config.server.listen != old.config.server.listen {
            tracing::warn!("server.listen changed: it takes effect at the next restart");
        }
        let mut state = State::load(config)?;
        state.inherit(&old);
        self.inner.state.store(Arc::new(state));
        self.start_background_tasks();
        Ok(())
    }

    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
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
        // hyper decodes `chunked` and ucgate re-frames the body; any other coding would be
        // dropped on the way (Transfer-Encoding is hop-by-hop), so refuse it (RFC 9112 §6.1).
        let other_coding = req
            .headers()
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"));
        if other_coding {
            return Err(GateError::UnsupportedTransferCoding);
        }
        let state = self.inner.state.load_full();
        if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
            > state.config.server.max_uri_length
        {
            return Err(GateError::UriTooLong);
        }
        let (parts, body) = req.into_parts();
        let path = normalise_path(parts.uri.path())?;
        // The path is kept only for the access log: no allocation when it is off.
        if tracing::enabled!(target: "ucgate::access", tracing::Level::INFO) {
            log.path = Some(path.as_ref().into());
        }
        if let Some(endpoint) = Endpoint::find(&path) {
            return endpoint.serve(self, state, parts, body, conn, log).await;
        }
        let route = state.routes.find(&path).ok_or(GateError::NoRoute)?;
        log.route = Some(route.config.name.clone());
        let presented = auth::presented(&parts.headers, parts.uri.query())?;
        let credential = match (&presented.token, route.config.accept.is_public()) {
            (_, true) | (None, false) => Credential::Anonymous,
            (Some(token), false) => state.authenticate(token)?,
        };
        log.credential = Some(credential.kind());
        credential.allowed_by(&route.config)?;

        let path_and_query = match presented.query {
            Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
            None => PathAndQuery::try_from(path.as_ref()),
        }
        .map_err(|_| GateError::InvalidTarget)?;
        let mut add_headers: Vec<(HeaderName, _)> = Vec::with_capacity(3);
        if route.config.upstream_auth == UpstreamAuth::Shared {
            add_headers.push((
                HeaderName::from_static(auth::X_AUTH_TOKEN),
                state.shared.header().clone(),
            ));
        }
        if let Credential::Uc(claims) = &credential {
            let user = HeaderValue::from_str(&claims.sub).map_err(|_| GateError::TokenInvalid)?;
            add_headers.push((X_AUTH_USER, user));
            add_headers.push((
                X_AUTH_METHOD,
                HeaderValue::from_static(claims.method.as_str()),
            ));
        }
        let started = std::time::Instant::now();
        let response = Forward {
            upstream: &route.upstream,
            websocket: route.config.websocket,
            path_and_query,
            client_addr: conn.remote,
            tls: conn.tls,
            trust_forwarded: state.config.server.trust_forwarded_headers,
            add_headers,
        }
        .send(parts, body)
        .await;
        if response.is_ok() {
            let labels = RouteLabels {
                route: RouteName(route.config.name.clone()),
            };
            metrics()
                .upstream_seconds
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
        response
    }
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
