//! A route's policy: which credentials open it, and what its upstream is told. Authorisation
//! yields a [`Permit`], the only way to the forwarding stage.

use std::sync::Arc;

use super::credential::Credential;
use super::shared::SharedToken;
use super::token::Claims;
use crate::config::{Accept, RouteConfig, UpstreamAuth};
use crate::error::GateError;
use crate::identity::{Asserted, ListenerPort, Origin};

/// Built once per configuration for each route.
#[derive(Debug, Clone)]
pub struct Policy {
    accept: Accept,
    /// UC tokens must carry one of these profiles; empty = any.
    profiles: Box<[Box<str>]>,
    upstream_auth: UpstreamAuth,
}

/// An authorised request: what the upstream is to be told about it.
#[derive(Debug)]
pub struct Permit<'a> {
    upstream_auth: UpstreamAuth,
    /// The UC token's claims, when a person is calling.
    user: Option<&'a Arc<Claims>>,
}

impl Policy {
    /// The policy of `route`.
    pub fn new(route: &RouteConfig) -> Self {
        Self {
            accept: route.accept,
            profiles: route.profiles.iter().map(|p| p.as_str().into()).collect(),
            upstream_auth: route.upstream_auth,
        }
    }

    /// A route that accepts no credential: whatever the request presents is not even checked.
    pub fn is_public(&self) -> bool {
        self.accept.is_public()
    }

    /// Whether the route opens to `credential`. `TokenMissing` when a route that needs a
    /// credential gets none; `Forbidden` for a valid credential of a kind the route does not
    /// accept, or a UC token whose profile is not in `profiles`.
    pub fn authorize<'c>(&self, credential: &'c Credential) -> Result<Permit<'c>, GateError> {
        let accept = self.accept;
        let user = match credential {
            _ if accept.is_public() => None,
            Credential::Anonymous => return Err(GateError::TokenMissing),
            Credential::Shared(_) if accept.shared => None,
            Credential::Uc(claims)
                if accept.uc
                    && (self.profiles.is_empty()
                        || self.profiles.iter().any(|p| **p == *claims.profile)) =>
            {
                Some(claims)
            }
            Credential::Shared(_) | Credential::Uc(_) => return Err(GateError::Forbidden),
        };
        Ok(Permit {
            upstream_auth: self.upstream_auth,
            user,
        })
    }
}

impl<'a> Permit<'a> {
    /// The identity headers of the upstream request: the shared token when the route
    /// authenticates ucgate upstream, the person when a UC token opened it; and where the
    /// request came from.
    pub fn asserted(
        &self,
        shared: &'a SharedToken,
        origin: Origin,
        tls: bool,
        port: ListenerPort,
    ) -> Asserted<'a> {
        Asserted {
            token: (self.upstream_auth == UpstreamAuth::Shared).then(|| shared.header()),
            user: self
                .user
                .map(|claims| (&*claims.sub, claims.method.as_str())),
            origin,
            tls,
            port,
            drop_authorization: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::shared::SharedMatch;
    use crate::auth::token::Method;
    use crate::config::Config;

    fn route(accept: &str, extra: &str) -> RouteConfig {
        let config = Config::parse(
            std::path::Path::new("t.toml"),
            &format!(
                r#"
                [tokens]
                [users]
                file = "users.toml"
                [[route]]
                name = "r"
                prefix = "/r/"
                upstream = "http://127.0.0.1:1"
                accept = {accept}
                upstream_auth = "none"
                {extra}
                "#
            ),
        )
        .unwrap();
        config.routes[0].clone()
    }

    fn uc(profile: &str) -> Credential {
        Credential::Uc(Arc::new(Claims {
            sub: "alice".into(),
            profile: profile.into(),
            method: Method::Password,
            exp: 0,
            auth_time: 0,
            sid: "".into(),
        }))
    }

    #[test]
    fn policy() {
        let shared = Credential::Shared(SharedMatch::Current);
        let uc_only = Policy::new(&route("[\"uc\"]", "profiles = [\"admin\"]"));
        assert!(uc_only.authorize(&uc("admin")).is_ok());
        assert!(matches!(
            uc_only.authorize(&uc("agent")),
            Err(GateError::Forbidden)
        ));
        assert!(matches!(
            uc_only.authorize(&shared),
            Err(GateError::Forbidden)
        ));
        assert!(matches!(
            uc_only.authorize(&Credential::Anonymous),
            Err(GateError::TokenMissing)
        ));
        let shared_only = Policy::new(&route("[\"shared\"]", ""));
        assert!(shared_only.authorize(&shared).is_ok());
        assert!(matches!(
            shared_only.authorize(&uc("admin")),
            Err(GateError::Forbidden)
        ));
        let public = Policy::new(&route("[]", ""));
        assert!(public.is_public());
        assert!(public.authorize(&Credential::Anonymous).is_ok());
    }

    fn origin() -> Origin {
        crate::identity::Trust::default()
            .origin("127.0.0.1".parse().unwrap(), &http::HeaderMap::new())
    }

    #[test]
    fn the_permit_asserts_the_person_and_the_route_s_upstream_auth() {
        let token = SharedToken::from_value("shared-secret").unwrap();
        let claims = uc("agent");
        let none = Policy::new(&route("[\"uc\"]", ""));
        let permit = none.authorize(&claims).unwrap();
        let asserted = permit.asserted(&token, origin(), false, ListenerPort::new(80));
        assert!(asserted.token.is_none());
        assert_eq!(asserted.user, Some(("alice", "password")));

        let mut shared_route = route("[\"shared\", \"uc\"]", "");
        shared_route.upstream_auth = UpstreamAuth::Shared;
        let shared = Policy::new(&shared_route);
        let credential = Credential::Shared(SharedMatch::Current);
        let permit = shared.authorize(&credential).unwrap();
        let asserted = permit.asserted(&token, origin(), false, ListenerPort::new(80));
        assert_eq!(asserted.token, Some(token.header()));
        assert!(asserted.user.is_none());
    }
}
