//! Kerberos single sign-on: SPNEGO at `GET /xuc/api/2.0/auth/sso`.

use std::path::Path;
use std::sync::Arc;

use http::{Response, request};
use serde::Deserialize;

use crate::auth::throttle::Throttle;
use crate::body::Body;
use crate::error::GateError;
use crate::gateway::{ConnInfo, State};

/// The `[kerberos]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KerberosConfig {}

impl KerberosConfig {
    /// Checks values and resolves relative paths against the config file's folder.
    pub fn validate(&mut self, _base: &Path) -> Result<(), String> {
        Ok(())
    }
}

/// What the endpoint needs at run time, loaded from the config.
#[derive(Debug)]
pub struct Kerberos {}

impl Kerberos {
    pub fn load(_config: &KerberosConfig) -> Result<Self, String> {
        Ok(Self {})
    }
}

pub async fn handle(
    state: Arc<State>,
    _throttle: &Throttle,
    _parts: &request::Parts,
    _conn: ConnInfo,
) -> Result<Response<Body>, GateError> {
    let Some(_kerberos) = &state.kerberos else {
        return Err(GateError::NoRoute);
    };
    Err(GateError::NoRoute)
}
