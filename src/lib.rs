//! ucgate: a reverse-proxy authentication sidecar for XiVO's HTTP APIs.
//!
//! A request goes one way through the modules, and no module imports one above it
//! (`tests/layering.rs` checks it). From the bottom:
//!
//! * plain data and tools: [`config`] (the TOML model, validated once), `path` (normalisation),
//!   `error` (the one error type), `identity` (the identity headers), `body`, `metrics`, `tls`,
//!   `telemetry`, `lazy_timer`;
//! * remote stores: `directory`, who may get a UC token (the `Directory` seam and its
//!   backends), and `cluster`, the state the replicas share through Redis;
//! * `auth`: credentials, route policies, the token exchanges and the issuer;
//! * `proxy` (forwarding) and `routes` (the route table);
//! * `state`: what one loaded configuration builds, and the connection facts;
//! * `endpoints` and `gateway`: the request lifecycle as named phases;
//! * `client_timeouts`, `server`, `reload`, `doctor`, and the CLI in `main.rs` on top.
//!
//! Modules are private; what the binary, the tests and the benches use is re-exported here.

mod allocator;
mod auth;
mod body;
mod client_timeouts;
mod cluster;
pub mod config;
mod cors;
mod directory;
mod doctor;
mod endpoints;
mod error;
mod gateway;
mod hop_by_hop;
mod identity;
mod lazy_timer;
mod metrics;
mod path;
mod pool;
mod proxy;
mod reload;
mod routes;
mod secrets;
mod server;
mod state;
mod telemetry;
mod tls;
mod woken;

// What the binary runs.
pub use allocator::Allocator;
pub use directory::file::hash_password;
pub use doctor::{directory as doctor_directory, new_token, run as doctor};
pub use gateway::Gateway;
pub use reload::{hangup, watch};
pub use server::{bind, serve, shutdown_signal};
pub use state::{LoadError, State};
pub use telemetry::init as init_logging;
pub use tls::install_provider;

// The pieces tests, benches and fuzz targets exercise on their own.
pub use auth::cas::{CasOutcome, parse_service_response};
pub use auth::jose::{check_header as check_jws_header, numeric_date};
pub use auth::shared::SharedToken;
pub use auth::standing::Standing;
pub use auth::token::{Method, TokenService};
pub use path::normalise_path;
pub use proxy::upstream_tls;
pub use routes::RouteTable;
pub use secrets::read_env_file;
