//! The request lifecycle, as named phases in the order a request meets them:
//!
//! 1. [`admit`]: refuse what cannot be forwarded faithfully (methods other than
//!    [`METHODS`], a missing, repeated or invalid `Host`, userinfo in the target, transfer
//!    codings other than chunked, an over-long target), normalise the path and derive where the
//!    request comes from, once, for everything after;
//! 2. [`target`]: an endpoint ucgate serves itself, or the route with the longest prefix;
//! 3. [`cross_origin`]: for the exchange endpoints and routes with `cors = true`, the CORS
//!    grant of a listed `Origin`, added to whatever the request is answered (errors too), and
//!    the preflight `OPTIONS` answered here, before any credential is asked for;
//! 4. [`authenticate`]: the token the request presents (`X-Auth-Token`, `Authorization:
//!    Bearer` or `token`), checked (shared, then UC);
//! 5. [`authorise`]: the route's policy turns the credential into a [`Permit`], or refuses;
//! 6. [`rewrite`]: the upstream target without the `token` parameter;
//! 7. [`forward`]: the identity headers the permit asserts, the request streamed upstream and
//!    its answer back;
//! 8. log: what each phase learnt goes into the request's [`RequestLog`], which turns into a
//!    log line and metrics once the response head is ready.
//!
//! Every phase returns a [`GateError`] to refuse; `handle` turns it into the JSON answer. The
//! state is one generation, loaded once per request: a reload never changes a request halfway.

use std::borrow::Cow;
use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header, request};
use hyper::body::Incoming;

use crate::auth::credential::Presented;
use crate::auth::{self, Credential, Permit};
use crate::body::Body;
use crate::client_timeouts::{BodyUnderway, RequestTracker, Tracked};
use crate::config::{Config, ServerConfig};
use crate::cors::Cors;
use crate::endpoints::Endpoint;
use crate::error::GateError;
use crate::identity::{Asserted, Origin};
use crate::metrics::metrics;
use crate::path::normalise_path;
use crate::proxy::Forward;
use crate::routes::Route;
use crate::state::{ConnInfo, Listener, LoadError, State};
use crate::telemetry::RequestLog;

/// The methods ucgate serves. The others make no sense through an authenticating proxy, or are
/// dangerous there: TRACE and TRACK answer with the request, identity headers and shared token
/// included; CONNECT asks for a tunnel; WebDAV and unknown methods are not part of the APIs
/// behind it. They are refused (405) before anything else.
pub const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];
const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The shared, cheaply cloned gateway: the current generation of the state, swapped whole on
/// reload.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<ArcSwap<State>>,
    /// `[server]` as read at start-up: what the listeners and connections run with, whatever
    /// later reloads said (see [`ServerConfig::restart_only_changes`]).
    started: Arc<ServerConfig>,
}

impl Gateway {
    /// A gateway serving `state`.
    pub fn new(state: State) -> Self {
        Self {
            started: Arc::new(state.config.server.clone()),
            state: Arc::new(ArcSwap::from_pointee(state)),
        }
    }

    /// Starts what needs the runtime; call inside it, after `new`.
    pub fn start_background_tasks(&self) {
        self.state().start_background_tasks();
    }

    /// Loads `config_file` anew and swaps it in, or leaves the running state as it is.
    pub fn reload(&self, config_file: &Path) -> Result<(), LoadError> {
        let config = Config::load(config_file)?;
        let old = self.state();
        // A file caught half-written, or emptied by mistake, can still parse: refusing a
        // reload that removes every route keeps the service up (a restart may run without).
        if config.routes.is_empty() && !old.config.routes.is_empty() {
            return Err(LoadError::Unusable {
                file: config_file.to_owned(),
                reason: "it declares no [[route]]: a reload may not remove every route (restart \
                         ucgate to run without routes)"
                    .into(),
            });
        }
        // Against what runs, not the last reload's file: a value put back is no change, one
        // left as a reload set it still is. Said once the reload is known to go through.
        let restart_only = config.server.restart_only_changes(&self.started);
        let mut state = State::load(config)?;
        // The users file caught empty (being rewritten, or emptied by mistake) would refuse
        // every login and, at the next recheck, every token: refused like an empty config.
        if state.listed_users() == Some(0) && old.listed_users().is_some_and(|n| n > 0) {
            return Err(LoadError::Unusable {
                file: config_file.to_owned(),
                reason: "users.file: holds no user now: a reload may not remove every user \
                         (restart ucgate to run without)"
                    .into(),
            });
        }
        if !restart_only.is_empty() {
            tracing::warn!(
                settings = %restart_only.iter().map(|s| format!("server.{s}")).collect::<Vec<_>>().join(", "),
                "these changed settings take effect at the next restart only"
            );
        }
        state.inherit(&old);
        self.state.store(Arc::new(state));
        self.start_background_tasks();
        Ok(())
    }

    /// The current generation.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// The service hyper calls for each request of one connection; `tracker` follows its
    /// exchanges.
    pub(crate) fn service(&self, conn: ConnInfo, tracker: RequestTracker) -> GatewayService {
        GatewayService {
            gateway: self.clone(),
            conn,
            tracker,
        }
    }

    /// Answers one request: upstream's answer, an endpoint's, or the JSON error of the phase
    /// that refused it; never fails. Takes the gateway (a clone: one `Arc`) so that its
    /// future is the whole request's, boxed as it is.
    ///
    /// This and the phases below are functions returning `async move` blocks, not `async fn`s:
    /// an async fn moves its arguments into locals of its own, and its future then holds the
    /// request's head twice; a block uses what it captured in place.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice"
    )]
    fn handle(
        self,
        parts: request::Parts,
        body: Incoming,
        conn: ConnInfo,
        tracker: RequestTracker,
    ) -> impl Future<Output = Result<Response<Tracked<Body>>, Infallible>> {
        async move {
            let last = tracker.start();
            let started = Instant::now();
            let (method, version) = (parts.method.clone(), parts.version);
            let state = self.state();
            let mut ctx = RequestCtx {
                underway: (!http_body::Body::is_end_stream(&body)).then(|| tracker.body_underway()),
                ..RequestCtx::default()
            };
            let mut response = match process(&state, parts, body, conn, &mut ctx).await {
                Ok(response) => response,
                Err(e) => {
                    ctx.log.error = Some(e.code());
                    e.into_response()
                }
            };
            // Errors included: a browser reads a 401 only with the grant.
            if let Some(origin) = ctx.cors_origin {
                Cors::decorate(&mut response, origin);
            }
            if last
                && version < Version::HTTP_2
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ctx.log.finish(&method, version, started, response.status());
            Ok(tracker.track(response))
        }
    }
}

/// What the phases learn about one request, beyond the request itself.
#[derive(Default)]
struct RequestCtx {
    /// For the access log and the metrics.
    log: RequestLog,
    /// An allowed `Origin` of a resource that answers browsers: the answer grants it.
    cors_origin: Option<HeaderValue>,
    /// The request's body, while it is read: handed to the upload when forwarded (an upstream
    /// may answer before reading it all), else kept until the answer is ready.
    underway: Option<BodyUnderway>,
}

/// The phases, in order (an `async move` block: see [`Gateway::handle`]).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice"
)]
fn process<'a>(
    state: &'a State,
    parts: request::Parts,
    body: Incoming,
    conn: ConnInfo,
    ctx: &'a mut RequestCtx,
) -> impl Future<Output = Result<Response<Body>, GateError>> + 'a {
    async move {
        let log = &mut ctx.log;
        let (path, origin) = admit(state, &parts, conn, log)?;
        let target = target(state, &path, conn, log)?;
        if let Some(response) = cross_origin(state, &target, &parts, &mut ctx.cors_origin)? {
            return Ok(response);
        }
        let log = &mut ctx.log;
        let route = match target {
            Target::Endpoint(endpoint) => {
                let request = Request::from_parts(parts, body);
                // Boxed: the exchanges' futures are large, and would make every proxied
                // request's future (moved whole at least once) as large as the largest of them.
                return Box::pin(endpoint.serve(state, request, origin.client, log)).await;
            }
            Target::Route(route) => route,
        };
        // On a public route, `Authorization` is the upstream's business, not a credential.
        let public = route.policy.is_public();
        let presented = auth::presented(&parts.headers, parts.uri.query(), !public)?;
        let credential = authenticate(state, route, &presented, origin.client).await?;
        log.credential = Some(credential.kind());
        let permit = authorise(route, &credential)?;
        let mut asserted = permit.asserted(&state.shared, origin, conn.tls, conn.port);
        asserted.drop_authorization = presented.bearer;
        let path_and_query = rewrite(&parts.uri, &path, presented.query)?;
        let underway = ctx.underway.take();
        forward(route, asserted, path_and_query, parts, body, underway).await
    }
}

/// Phase 1: what can be forwarded faithfully, its one normalised path, and where it comes from.
fn admit<'r>(
    state: &State,
    parts: &'r request::Parts,
    conn: ConnInfo,
    log: &mut RequestLog,
) -> Result<(Cow<'r, str>, Origin), GateError> {
    let origin = state.trust.origin(conn.remote.ip(), &parts.headers);
    log.client = Some(origin.client);
    if !METHODS.contains(&parts.method) {
        // The operator's listener serves only GET and HEAD endpoints: say so.
        let allow = match conn.listener {
            Listener::Admin => crate::endpoints::GET_ALLOW,
            Listener::Public | Listener::Everything => ALLOW,
        };
        return Err(GateError::MethodNotAllowed(allow));
    }
    crate::identity::check_host(parts)?;
    // hyper decodes `chunked` and ucgate re-frames the body; any other coding would be
    // dropped on the way (Transfer-Encoding is hop-by-hop), so refuse it (RFC 9112 §6.1).
    let other_coding = parts
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .any(|c| !c.trim().eq_ignore_ascii_case("chunked"));
    if other_coding {
        return Err(GateError::UnsupportedTransferCoding);
    }
    if parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        > state.config.server.max_uri_length
    {
        return Err(GateError::UriTooLong);
    }
    let path = normalise_path(parts.uri.path())?;
    // The path is kept only for the access log: no allocation when it is off.
    if tracing::enabled!(target: "ucgate::access", tracing::Level::INFO) {
        log.path = Some(path.as_ref().into());
    }
    Ok((path, origin))
}

/// Where a request goes.
enum Target<'s> {
    Endpoint(Endpoint),
    Route(&'s Route),
}

/// Phase 2: an endpoint of ucgate's own that the configuration enables (exact path), else the
/// longest-prefix route: an exchange whose section is not configured is a path like any other,
/// for routing, CORS, the log and the metrics. With `server.admin_listen`, the operator's
/// endpoints are there and only there, and that listener serves nothing else.
fn target<'s>(
    state: &'s State,
    path: &str,
    conn: ConnInfo,
    log: &mut RequestLog,
) -> Result<Target<'s>, GateError> {
    let endpoint = Endpoint::find(path).filter(|endpoint| endpoint.enabled(state));
    let operational = endpoint.is_some_and(Endpoint::is_operational);
    let served_here = match conn.listener {
        Listener::Everything => true,
        Listener::Public => !operational,
        Listener::Admin => operational,
    };
    if !served_here {
        return Err(GateError::NoRoute);
    }
    if let Some(endpoint) = endpoint {
        return Ok(Target::Endpoint(endpoint));
    }
    let route = state.routes.find(path).ok_or(GateError::NoRoute)?;
    log.route = Some(route.name.clone());
    Ok(Target::Route(route))
}

/// Phase 2b, for browsers of other origins on the resources that answer them (the UC API's
/// endpoints, routes with `cors = true`): a preflight is answered here, before any credential
/// (browsers send none with it); another request from an allowed origin gets its grant on the
/// way out (`cors_origin`).
fn cross_origin(
    state: &State,
    target: &Target<'_>,
    parts: &request::Parts,
    cors_origin: &mut Option<HeaderValue>,
) -> Result<Option<Response<Body>>, GateError> {
    let Some(cors) = &state.cors else {
        return Ok(None);
    };
    let methods = match target {
        Target::Endpoint(endpoint) => endpoint.cors_methods(),
        Target::Route(route) => route.cors.then_some(ALLOW),
    };
    let Some(methods) = methods else {
        return Ok(None);
    };
    if Cors::is_preflight(&parts.method, &parts.headers) {
        return cors
            .preflight(&parts.headers, methods)
            .map(Some)
            .ok_or(GateError::CorsNotAllowed);
    }
    *cors_origin = cors.allowed(&parts.headers);
    Ok(None)
}

/// Phase 3: the presented token, checked. A public route checks nothing; no token is
/// `Anonymous`, which only a public route lets through.
async fn authenticate(
    state: &State,
    route: &Route,
    presented: &Presented<'_>,
    client: std::net::IpAddr,
) -> Result<Credential, GateError> {
    match (&presented.token, route.policy.is_public()) {
        (_, true) | (None, false) => Ok(Credential::Anonymous),
        (Some(token), false) => state.authenticate(token, client).await,
    }
}

/// Phase 4: the route's policy decides.
fn authorise<'c>(route: &Route, credential: &'c Credential) -> Result<Permit<'c>, GateError> {
    route.policy.authorize(credential)
}

/// Phase 5: the upstream target: the normalised path and the query without `token`. When
/// neither changed the request's own target, that target (its bytes shared, not parsed again).
fn rewrite(
    original: &Uri,
    path: &str,
    query: Option<Cow<'_, str>>,
) -> Result<PathAndQuery, GateError> {
    if let Some(target) = original.path_and_query()
        && path == target.path()
        && query.as_deref() == target.query()
    {
        return Ok(target.clone());
    }
    match query {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| GateError::InvalidTarget)
}

/// Phase 6: upstream and back with the headers the permit asserts, timed for
/// `ucgate_upstream_response_seconds`. A combinator, not an `async fn`: a future of its own
/// would hold the forwarder's whole future again, copied once more per request.
fn forward<'a>(
    route: &'a Route,
    asserted: Asserted<'a>,
    path_and_query: PathAndQuery,
    parts: request::Parts,
    body: Incoming,
    underway: Option<BodyUnderway>,
) -> impl Future<Output = Result<Response<Body>, GateError>> + 'a {
    let started = Instant::now();
    Forward {
        upstream: &route.upstream,
        websocket: route.websocket,
        path_and_query,
        asserted,
    }
    .send(parts, body, underway)
    .inspect(move |response| {
        if response.is_ok() {
            metrics().observe_upstream(&route.name, started.elapsed().as_secs_f64());
        }
    })
}

/// The service for one connection, called by hyper directly: the tower stack it replaces
/// (request and response mapping, hyper-util's `Oneshot` adapter) cost about 260 instructions
/// per request (callgrind) to do what `call` does.
pub(crate) struct GatewayService {
    gateway: Gateway,
    conn: ConnInfo,
    tracker: RequestTracker,
}

impl hyper::service::Service<Request<Incoming>> for GatewayService {
    type Response = Response<Tracked<Body>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // The handler's own future, boxed: no wrapper future around it to copy it into first.
        let (parts, body) = req.into_parts();
        Box::pin(
            self.gateway
                .clone()
                .handle(parts, body, self.conn, self.tracker.clone()),
        )
    }
}
