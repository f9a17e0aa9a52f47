//! CAS: a service ticket for a UC token at `GET /xuc/api/2.0/auth/cas`.

use std::path::Path;
use std::sync::Arc;

use http::{Response, request};
use serde::Deserialize;

use crate::auth::throttle::Throttle;
use crate::body::Body;
use crate::error::GateError;
use crate::gateway::{ConnInfo, State};

/// The `[cas]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasConfig {}

impl CasConfig {
    /// Checks values and resolves relative paths against the config file's folder.
    pub fn validate(&mut self, _base: &Path) -> Result<(), String> {
        Ok(())
    }
}

/// What the endpoint needs at run time, loaded from the config.
#[derive(Debug)]
pub struct Cas {}

impl Cas {
    pub fn load(_config: &CasConfig) -> Result<Self, String> {
        Ok(Self {})
    }
}

pub async fn handle(
    state: Arc<State>,
    _throttle: &Throttle,
    _parts: &request::Parts,
    _conn: ConnInfo,
) -> Result<Response<Body>, GateError> {
    let Some(_cas) = &state.cas else {
        return Err(GateError::NoRoute);
    };
    Err(GateError::NoRoute)
}
