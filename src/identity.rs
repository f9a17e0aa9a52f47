//! What the upstream is told about who is calling, in one place: the identity header names, the
//! removal of whatever a client sent under them, and the values ucgate vouches for.
//!
//! An upstream trusts these headers because only ucgate can set them, so every client-sent copy
//! goes first: the names themselves and their `_`/`.` aliases, which some frameworks (CGI-style
//! environments, Play's header normalisation) read as the same header. Headers a client names
//! in `Connection` are hop-by-hop and dropped by the forwarder before [`Asserted::apply`] runs.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::GateError;

/// A token: the shared token (client to ucgate, ucgate to upstream) or a UC token (client to
/// ucgate).
pub const X_AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");
/// The login a UC token names.
pub const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
/// How that person authenticated: `password`, `kerberos`, `cas` or `oidc`.
pub const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");

const NAMES: [HeaderName; 3] = [X_AUTH_TOKEN, X_AUTH_USER, X_AUTH_METHOD];

/// What ucgate asserts upstream on one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asserted<'a> {
    /// `X-Auth-Token`: the shared token, when the route authenticates ucgate to its upstream.
    pub token: Option<&'a HeaderValue>,
    /// `X-Auth-User` and `X-Auth-Method`: the login and method of a UC token.
    pub user: Option<(&'a str, &'static str)>,
}

impl Asserted<'_> {
    /// Removes every client-sent identity header, then sets the asserted ones. Fails with
    /// `TokenInvalid` for a login that cannot be a header value (no valid token carries one).
    pub fn apply(self, headers: &mut HeaderMap) -> Result<(), GateError> {
        strip(headers);
        if let Some(token) = self.token {
            headers.insert(X_AUTH_TOKEN, token.clone());
        }
        if let Some((login, method)) = self.user {
            let login = HeaderValue::from_str(login).map_err(|_| GateError::TokenInvalid)?;
            headers.insert(X_AUTH_USER, login);
            headers.insert(X_AUTH_METHOD, HeaderValue::from_static(method));
        }
        Ok(())
    }
}

/// Removes client-sent identity headers, including aliases such as `X_Auth_User`.
fn strip(headers: &mut HeaderMap) {
    for name in &NAMES {
        headers.remove(name);
    }
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains(['_', '.']))
        .filter(|k| {
            let canonical = k.as_str().replace(['_', '.'], "-");
            NAMES.iter().any(|n| n.as_str() == canonical)
        })
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in names {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn strips_identity_headers_and_aliases() {
        let mut h = headers(&[
            "x-auth-token",
            "X_Auth_User",
            "x.auth.method",
            "x-auth-tokens",
            "x_other",
        ]);
        strip(&mut h);
        assert_eq!(names(&h), ["x-auth-tokens", "x_other"]);
    }

    #[test]
    fn sets_only_what_is_asserted() {
        let shared = HeaderValue::from_static("shared");
        let mut h = headers(&["x-auth-user", "x_auth_method"]);
        Asserted {
            token: Some(&shared),
            user: None,
        }
        .apply(&mut h)
        .unwrap();
        assert_eq!(names(&h), ["x-auth-token"]);
        assert_eq!(h[X_AUTH_TOKEN], "shared");

        let mut h = headers(&["x-auth-token"]);
        Asserted {
            token: None,
            user: Some(("alice", "kerberos")),
        }
        .apply(&mut h)
        .unwrap();
        assert_eq!(names(&h), ["x-auth-method", "x-auth-user"]);
        assert_eq!(h[X_AUTH_USER], "alice");
        assert_eq!(h[X_AUTH_METHOD], "kerberos");

        let bad = Asserted {
            token: None,
            user: Some(("al\nice", "password")),
        };
        assert!(matches!(
            bad.apply(&mut HeaderMap::new()),
            Err(GateError::TokenInvalid)
        ));
    }
}
