//! Cross-origin requests from XiVO's web clients (CORS): the preflight answered here, and the
//! `Access-Control-*` headers of the answers, for the listed origins only.
//!
//! Written here rather than with tower-http's `CorsLayer`: whether a request is concerned is
//! known only once it is routed (the exchange endpoints, and routes with `cors = true`), and a
//! layer in front would also touch the answers of every other route (`Vary`), which upstreams'
//! answers must pass through untouched. What is done is the Fetch standard's CORS protocol
//! (fetch.spec.whatwg.org, "CORS protocol"), for credentialed requests.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{self, Body};
use crate::config::CorsConfig;

/// Request headers a page may send: the credential transports and JSON bodies.
const ALLOWED_HEADERS: HeaderValue =
    HeaderValue::from_static("Authorization, X-Auth-Token, Content-Type");
/// Answer headers a page may read: why it is refused, and when to retry.
const EXPOSED_HEADERS: HeaderValue = HeaderValue::from_static("WWW-Authenticate, Retry-After");

/// The allowed origins, built once per configuration.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<String>,
    max_age: HeaderValue,
}

impl Cors {
    pub fn new(config: &CorsConfig) -> Self {
        Self {
            origins: config.allowed_origins.clone(),
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    /// The request's `Origin`, when it is one of the allowed: compared exactly, as browsers
    /// send it; never a pattern, never reflected otherwise.
    pub fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let mut values = headers.get_all(header::ORIGIN).iter();
        let origin = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o == text)
            .then(|| origin.clone())
    }

    /// Whether a request is a preflight (`OPTIONS` with `Access-Control-Request-Method`).
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight for a resource that takes `methods` (`"GET, HEAD"`): `204`
    /// with the grant for an allowed origin asking for one of them; `None` (to be refused)
    /// otherwise.
    pub fn preflight(&self, headers: &HeaderMap, methods: &'static str) -> Option<Response<Body>> {
        let origin = self.allowed(headers)?;
        let asked = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)?
            .to_str()
            .ok()?;
        if !methods.split(", ").any(|m| m == asked) {
            return None;
        }
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS);
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        grant(h, origin);
        Some(response)
    }

    /// Grants `origin` the reading of `response`, replacing whatever `Access-Control-*` an
    /// upstream put there (two grants are no grant to a browser).
    pub fn decorate(response: &mut Response<Body>, origin: HeaderValue) {
        let h = response.headers_mut();
        let theirs: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in theirs {
            h.remove(name);
        }
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED_HEADERS);
        grant(h, origin);
    }
}

/// `Access-Control-Allow-Origin` (the origin itself: credentials forbid `*`),
/// `-Allow-Credentials`, and `Vary: Origin`, since the answer depends on it.
fn grant(h: &mut HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors() -> Cors {
        Cors::new(&CorsConfig {
            allowed_origins: vec!["https://xivo.example.com".into()],
            max_age: Duration::from_secs(600),
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_listed_origins_exactly() {
        let c = cors();
        assert!(
            c.allowed(&headers(&[("origin", "https://xivo.example.com")]))
                .is_some()
        );
        for origin in [
            "https://xivo.example.com.evil.test",
            "https://evil.test",
            "http://xivo.example.com",
            "https://xivo.example.com:8443",
            "null",
        ] {
            assert!(
                c.allowed(&headers(&[("origin", origin)])).is_none(),
                "{origin}"
            );
        }
        let twice = headers(&[
            ("origin", "https://xivo.example.com"),
            ("origin", "https://xivo.example.com"),
        ]);
        assert!(c.allowed(&twice).is_none());
    }

    #[test]
    fn preflights_grant_the_methods_of_the_resource() {
        let c = cors();
        let ask = |method: &str| {
            headers(&[
                ("origin", "https://xivo.example.com"),
                ("access-control-request-method", method),
            ])
        };
        let ok = c.preflight(&ask("POST"), "POST").unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        let h = ok.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://xivo.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("Authorization")
        );
        assert_eq!(h[header::VARY], "Origin");
        assert!(c.preflight(&ask("DELETE"), "POST").is_none());
        let mut stranger = ask("POST");
        stranger.insert(header::ORIGIN, "https://evil.test".parse().unwrap());
        assert!(c.preflight(&stranger, "POST").is_none());
    }

    #[test]
    fn a_grant_replaces_the_upstream_s() {
        let mut response = Response::new(body::empty());
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".parse().unwrap());
        response
            .headers_mut()
            .insert(header::VARY, "Accept-Encoding".parse().unwrap());
        Cors::decorate(&mut response, "https://xivo.example.com".parse().unwrap());
        let h = response.headers();
        assert_eq!(
            h.get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .iter()
                .count(),
            1
        );
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://xivo.example.com"
        );
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);
    }
}
