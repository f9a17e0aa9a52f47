//! ucgate: a reverse-proxy authentication sidecar for XiVO's HTTP APIs.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; tests and benches use the
//! library directly.

pub mod auth;
pub mod body;
pub mod client_timeouts;
pub mod config;
pub mod doctor;
pub mod endpoints;
pub mod error;
pub mod gateway;
pub mod lazy_timer;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod users;
