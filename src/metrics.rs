//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::LocalKey;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A route name as a label, shared with the route (no allocation per request).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteName(pub Arc<str>);

impl EncodeLabelValue for RouteName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// `ucgate_requests_total` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RouteName,
    pub status: u16,
    pub credential: &'static str,
}

/// Labels of per-route metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: RouteName,
}

/// `ucgate_auth_failures_total` labels: the error code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `ucgate_logins_total` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LoginLabels {
    pub method: &'static str,
    pub outcome: &'static str,
}

/// Labels of the directory metrics: the backend (`database`, `ldap`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: &'static str,
}

/// `ucgate_directory_errors_total` labels: what failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Labels of counters by outcome (`success`, `failure`; `hit`, `miss`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A gauge of something that may not be configured (`[cluster]`, `[xuc]`): without a value,
/// neither its sample nor its description is exported, so that a standalone install does not
/// read as "dependency down".
#[derive(Debug, Clone)]
pub struct OptionalGauge(Arc<AtomicI64>);

/// What an [`OptionalGauge`] holds while absent.
const ABSENT: i64 = i64::MIN;

impl Default for OptionalGauge {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(ABSENT)))
    }
}

impl OptionalGauge {
    /// `None`: not configured, not exported.
    pub fn set(&self, value: Option<i64>) {
        self.0.store(value.unwrap_or(ABSENT), Ordering::Relaxed);
    }

    fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&v| v != ABSENT)
    }
}

impl EncodeMetric for OptionalGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.get() {
            Some(value) => encoder.encode_gauge(&value),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        self.get().is_none()
    }
}

/// Every metric of ucgate, registered once (see [`metrics`]).
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub logins: Family<LoginLabels, Counter>,
    pub lockouts: Counter,
    /// `token_cache{outcome="hit"}` and `{outcome="miss"}`, resolved once: on the hot path a
    /// count is one atomic add, not a family look-up.
    pub token_cache_hits: Counter,
    pub token_cache_misses: Counter,
    /// Set when scraped, from the token service: tokens in the validation cache.
    pub token_cache_entries: Gauge,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub shared_token_previous: Counter,
    pub request_head_timeouts: Counter,
    pub connections_open: Gauge,
    directory_up: Family<BackendLabels, Gauge>,
    directory_errors: Family<KindLabels, Counter>,
    /// Set when scraped, from the state: absent without `[cluster]`.
    pub cluster_up: OptionalGauge,
    cluster_reconnects: Counter,
    cluster_errors: Family<KindLabels, Counter>,
    xuc_checks: Family<OutcomeLabels, Counter>,
    pub xuc_check_seconds: Histogram,
    /// Set when scraped, from the state: absent without `[xuc]`.
    pub xuc_up: OptionalGauge,
    /// Set when encoded, from the runtime.
    tasks_alive: Gauge,
}

fn latency_histogram() -> Histogram {
    // 250 µs to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ucgate");
        let token_cache = Family::<OutcomeLabels, Counter>::default();
        let m = Self {
            requests: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            auth_failures: Family::default(),
            logins: Family::default(),
            lockouts: Counter::default(),
            token_cache_hits: token_cache.get_or_create_owned(&OutcomeLabels { outcome: "hit" }),
            token_cache_misses: token_cache.get_or_create_owned(&OutcomeLabels { outcome: "miss" }),
            token_cache_entries: Gauge::default(),
            reloads: Family::default(),
            shared_token_previous: Counter::default(),
            request_head_timeouts: Counter::default(),
            connections_open: Gauge::default(),
            directory_up: Family::default(),
            directory_errors: Family::default(),
            cluster_up: OptionalGauge::default(),
            cluster_reconnects: Counter::default(),
            cluster_errors: Family::default(),
            xuc_checks: Family::default(),
            xuc_check_seconds: latency_histogram(),
            xuc_up: OptionalGauge::default(),
            tasks_alive: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by route, status and credential kind",
            m.requests.clone(),
        );
        registry.register(
            "upstream_response_seconds",
            "Time from forwarding to the upstream's response head",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused credentials by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "logins",
            "Token exchanges by method and outcome",
            m.logins.clone(),
        );
        registry.register(
            "lockouts",
            "Exchanges refused by the brute-force protection",
            m.lockouts.clone(),
        );
        registry.register(
            "token_cache",
            "UC token validations by cache outcome (hit, miss)",
            token_cache,
        );
        registry.register(
            "token_cache_entries",
            "UC tokens (and tokens the site's xuc vouched for) in the validation cache, bounded by tokens.cache_capacity",
            m.token_cache_entries.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by outcome",
            m.reloads.clone(),
        );
        registry.register(
            "shared_token_previous_uses",
            "Requests authenticated by the previous shared token (rotation in progress)",
            m.shared_token_previous.clone(),
        );
        registry.register(
            "request_head_timeouts",
            "Connections answered 408: the request head was not received in time",
            m.request_head_timeouts.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open",
            m.connections_open.clone(),
        );
        registry.register(
            "directory_up",
            "Whether each remote directory backend answers (1) or not (0)",
            m.directory_up.clone(),
        );
        registry.register(
            "directory_errors",
            "Failures of the user directory by kind (unreachable, timeout, query, duplicate, ldap_*)",
            m.directory_errors.clone(),
        );
        registry.register(
            "cluster_up",
            "Whether the replicas' Redis is connected and caught up (1) or not (0); absent without [cluster]",
            m.cluster_up.clone(),
        );
        registry.register(
            "cluster_reconnects",
            "Attempts to reconnect to the replicas' Redis after it was lost or could not be reached",
            m.cluster_reconnects.clone(),
        );
        registry.register(
            "cluster_errors",
            "Failures talking to the replicas' Redis by kind (refused, timeout, io, protocol, command, dropped)",
            m.cluster_errors.clone(),
        );
        registry.register(
            "xuc_checks",
            "Tokens checked at the site's xuc by outcome (vouched, refused, unavailable, limited)",
            m.xuc_checks.clone(),
        );
        registry.register(
            "xuc_check_seconds",
            "Time of each check at the site's xuc",
            m.xuc_check_seconds.clone(),
        );
        registry.register(
            "xuc_up",
            "Whether the site's xuc answers (1) or not (0); absent without [xuc]",
            m.xuc_up.clone(),
        );
        registry.register(
            "tasks_alive",
            "Tokio tasks alive: connections, tunnels, background work",
            m.tasks_alive.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let counted = {
            let runtimes = lock_runtimes();
            let alive = runtimes.iter().map(|r| r.metrics().num_alive_tasks());
            (!runtimes.is_empty()).then(|| alive.sum::<usize>())
        };
        let alive = counted.or_else(|| {
            tokio::runtime::Handle::try_current()
                .ok()
                .map(|runtime| runtime.metrics().num_alive_tasks())
        });
        if let Some(alive) = alive {
            self.tasks_alive
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }

    /// Whether a directory `backend` answers.
    pub fn directory_up(&self, backend: &'static str, up: bool) {
        self.directory_up
            .get_or_create(&BackendLabels { backend })
            .set(i64::from(up));
    }

    /// Counts a directory failure of `kind`.
    pub fn directory_error(&self, kind: &'static str) {
        self.directory_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Counts an attempt to reconnect to the replicas' Redis.
    pub fn cluster_reconnect(&self) {
        self.cluster_reconnects.inc();
    }

    /// Counts a failure talking to the replicas' Redis.
    pub fn cluster_error(&self, kind: &'static str) {
        self.cluster_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Counts a check at the site's xuc by outcome.
    pub fn xuc_check(&self, outcome: &'static str) {
        self.xuc_checks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one request in `ucgate_requests_total`.
    pub fn count_request(&self, labels: RequestLabels) {
        thread_local! {
            static FOUND: Found<RequestLabels, Counter> = RefCell::default();
        }
        with_found(&FOUND, &self.requests, labels, |counter| {
            counter.inc();
        });
    }

    /// Records how long `route`'s upstream took to answer, in seconds
    /// (`ucgate_upstream_response_seconds`).
    pub fn observe_upstream(&self, route: &Arc<str>, seconds: f64) {
        thread_local! {
            static FOUND: Found<RouteLabels, Histogram> = RefCell::default();
        }
        let labels = RouteLabels {
            route: RouteName(route.clone()),
        };
        with_found(&FOUND, &self.upstream_seconds, labels, |histogram| {
            histogram.observe(seconds);
        });
    }

    /// Counts an exchange by method and outcome.
    pub fn login(&self, method: &'static str, outcome: &'static str) {
        self.logins
            .get_or_create(&LoginLabels { method, outcome })
            .inc();
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The metrics of a family that one thread has already found, by their labels.
type Found<L, M> = RefCell<HashMap<L, M, foldhash::fast::RandomState>>;

/// Applies `act` to the metric of `family` labelled `labels`. prometheus-client finds it under
/// a lock in a SipHash map (about 470 instructions for a request's counter, callgrind); each
/// thread keeps the metrics it found in a map of its own (`found`), so that the request path
/// pays one foldhash look-up. They are the family's own metrics (shared atomics), so what is
/// exported is the same, and the label sets are as bounded as the family's.
fn with_found<L, M, C>(
    found: &'static LocalKey<Found<L, M>>,
    family: &Family<L, M, C>,
    labels: L,
    act: impl FnOnce(&M),
) where
    L: Clone + Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    found.with_borrow_mut(|found| {
        if let Some(metric) = found.get(&labels) {
            return act(metric);
        }
        let metric = family.get_or_create_owned(&labels);
        act(&metric);
        found.insert(labels, metric);
    });
}

/// With `server.thread_per_core`, every runtime of the process (the main thread's and the
/// workers'): `tasks_alive` is their sum, whichever of them encodes. Empty otherwise: the one
/// runtime that encodes is the process's.
static RUNTIMES: std::sync::Mutex<Vec<tokio::runtime::Handle>> = std::sync::Mutex::new(Vec::new());

fn lock_runtimes() -> std::sync::MutexGuard<'static, Vec<tokio::runtime::Handle>> {
    RUNTIMES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a runtime in `tasks_alive` (see [`RUNTIMES`]).
pub fn count_runtime(handle: tokio::runtime::Handle) {
    lock_runtimes().push(handle);
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
