//! The route table of one configuration: longest-prefix matching by whole segments; each route
//! with its policy and its upstream, built once per configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Policy;
use crate::config::RouteConfig;
use crate::proxy::Upstream;

/// A route ready to serve.
#[derive(Debug)]
pub struct Route {
    /// For logs and metrics.
    pub name: Arc<str>,
    pub policy: Policy,
    pub upstream: Upstream,
    /// Whether WebSocket upgrades pass.
    pub websocket: bool,
    /// Whether browsers of the `[cors]` origins are answered.
    pub cors: bool,
}

/// Routes indexed by prefix. Matching costs one hash look-up per path segment, whatever the
/// number of routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Prefix without its trailing slash ("" for "/") → index in `routes`. foldhash, not
    /// SipHash: one look-up per path segment of every request, and prefixes are the operator's.
    by_prefix: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
}

impl RouteTable {
    /// The routes of `configs`, each with its own upstream connections (`tls` for `https://`
    /// upstreams); `upload_stall`: how long a client may go silent mid-upload
    /// (`server.request_body_timeout`).
    pub fn build(
        configs: &[RouteConfig],
        tls: &Arc<rustls::ClientConfig>,
        upload_stall: Duration,
    ) -> Self {
        let mut routes = Vec::with_capacity(configs.len());
        let mut by_prefix = HashMap::with_capacity_and_hasher(
            configs.len(),
            foldhash::fast::RandomState::default(),
        );
        for (i, config) in configs.iter().enumerate() {
            by_prefix.insert(config.prefix.trim_end_matches('/').into(), i);
            routes.push(Route {
                name: config.name.clone(),
                policy: Policy::new(config),
                upstream: Upstream::new(&config.upstream, config.timeout, upload_stall, tls),
                websocket: config.websocket,
                cors: config.cors,
            });
        }
        Self { routes, by_prefix }
    }

    /// The route with the longest prefix that contains `path` (a normalised path). A prefix
    /// matches whole segments only: "/config/" opens "/config" and "/config/x", not "/configmgt".
    pub fn find(&self, path: &str) -> Option<&Route> {
        if !path.ends_with('/')
            && let Some(&i) = self.by_prefix.get(path)
        {
            return Some(&self.routes[i]);
        }
        path.rmatch_indices('/')
            .find_map(|(pos, _)| self.by_prefix.get(&path[..pos]))
            .map(|&i| &self.routes[i])
    }
}
