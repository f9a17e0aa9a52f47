//! OpenID Connect: an IdP token for a UC token at `GET /xuc/api/2.0/auth/oidc`.

use std::path::Path;
use std::sync::Arc;

use http::{Response, request};
use serde::Deserialize;

use crate::auth::throttle::Throttle;
use crate::body::Body;
use crate::error::GateError;
use crate::gateway::{ConnInfo, State};

/// The `[oidc]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {}

impl OidcConfig {
    /// Checks values and resolves relative paths against the config file's folder.
    pub fn validate(&mut self, _base: &Path) -> Result<(), String> {
        Ok(())
    }
}

/// What the endpoint needs at run time, loaded from the config.
#[derive(Debug)]
pub struct Oidc {}

impl Oidc {
    pub fn load(_config: &OidcConfig) -> Result<Self, String> {
        Ok(Self {})
    }
}

pub async fn handle(
    state: Arc<State>,
    _throttle: &Throttle,
    _parts: &request::Parts,
    _conn: ConnInfo,
) -> Result<Response<Body>, GateError> {
    let Some(_oidc) = &state.oidc else {
        return Err(GateError::NoRoute);
    };
    Err(GateError::NoRoute)
}
