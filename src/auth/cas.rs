//! CAS: a service ticket for a UC token at `GET /xuc/api/2.0/auth/cas?service=URL&ticket=ST-...`.
//!
//! The ticket is checked with the CAS server (`/p3/serviceValidate`, or `/serviceValidate` for
//! CAS 2) and the answer parsed strictly. The service must be on the allow-list before the CAS
//! server is called: otherwise a ticket issued to any other CAS-enabled site could be replayed
//! here.

mod xml;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode, request};
use serde::Deserialize;
use url::Url;

use crate::auth::login;
use crate::auth::throttle::Throttle;
use crate::auth::token::Method;
use crate::body::Body;
use crate::error::GateError;
use crate::gateway::{ConnInfo, State};
pub use xml::{CasError, CasOutcome, MAX_RESPONSE, Principal, parse_service_response};

/// Longest service URL accepted: browsers and CAS servers cap URLs near this anyway.
const MAX_SERVICE: usize = 2048;
/// CAS 3.0 §3.7: tickets may be up to 256 characters; more is a hostile client.
const MAX_TICKET: usize = 256;
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The `[cas]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasConfig {
    /// Base URL of the CAS server, e.g. `https://cas.example.com/cas`.
    pub server: String,
    /// Service URL prefixes: scheme, host and port must be equal, the path a prefix.
    pub allowed_services: Vec<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// An attribute released under `cas:attributes` to use as the login instead of `cas:user`.
    #[serde(default)]
    pub login_attribute: Option<String>,
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::duration"
    )]
    pub timeout: Duration,
    /// PEM file of the CA(s) that sign the CAS server's certificate; when set, only these are
    /// trusted for it.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// CAS 3.0: `/p3/serviceValidate`, which releases attributes.
    #[default]
    P3,
    /// CAS 2.0: `/serviceValidate`.
    Cas2,
}

impl Protocol {
    fn validate_path(self) -> &'static str {
        match self {
            Protocol::P3 => "p3/serviceValidate",
            Protocol::Cas2 => "serviceValidate",
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl CasConfig {
    /// Checks values and resolves relative paths against the config file's folder.
    pub fn validate(&mut self, base: &Path) -> Result<(), String> {
        validate_url(&self.server).map_err(|e| format!("server: {e}"))?;
        if self.allowed_services.is_empty() {
            return Err("allowed_services: at least one service URL is needed".into());
        }
        for pattern in &self.allowed_services {
            ServicePattern::parse(pattern)
                .map_err(|e| format!("allowed_services: {pattern:?}: {e}"))?;
        }
        if let Some(attribute) = &self.login_attribute {
            login_attribute(attribute).map_err(|e| format!("login_attribute: {e}"))?;
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(format!(
                "timeout: must be more than 0 and at most {}",
                humantime::format_duration(MAX_TIMEOUT)
            ));
        }
        if let Some(ca) = &mut self.ca_bundle {
            *ca = base.join(&*ca);
        }
        Ok(())
    }
}

/// `None` for `cas:user` (the default), else the attribute's local name.
fn login_attribute(name: &str) -> Result<Option<String>, String> {
    let name = name.strip_prefix("cas:").unwrap_or(name);
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    match name {
        "user" => Ok(None),
        _ if !name.is_empty() && name.chars().all(plain) => Ok(Some(name.to_owned())),
        _ => Err(format!("{name:?} is not an XML local name")),
    }
}

/// The CAS server URL: https, or http on loopback only, since whoever can change its answers
/// chooses who logs in.
fn validate_url(server: &str) -> Result<Url, String> {
    let url = Url::parse(server).map_err(|e| format!("{server:?}: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(format!("{server:?}: must be an https URL")),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{server:?}: must have no query, fragment or credentials"
        ));
    }
    Ok(url)
}

/// An allowed service URL prefix, parsed, so that the comparison is on URL parts and not on
/// text: `https://xivo.example.com` must not admit `https://xivo.example.com.evil.org/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServicePattern {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

impl ServicePattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        let url = Url::parse(pattern).map_err(|e| e.to_string())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err("must have no query, fragment or credentials".into());
        }
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str().ok_or("must have a host")?.to_owned(),
            port: url.port_or_known_default().ok_or("must have a port")?,
            path: url.path().to_owned(),
        })
    }

    /// The path matches whole segments: `/app` admits `/app` and `/app/x`, not `/application`.
    fn matches(&self, url: &Url) -> bool {
        let path = url.path();
        let path_ok = match self.path.ends_with('/') {
            true => path.starts_with(&self.path),
            false => {
                path == self.path
                    || path
                        .strip_prefix(&self.path)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        };
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == Some(self.port)
            && path_ok
    }
}

/// What the endpoint needs at run time, loaded from the config.
#[derive(Debug)]
pub struct Cas {
    validate_url: Url,
    allowed: Vec<ServicePattern>,
    login_attribute: Option<String>,
    client: reqwest::Client,
}

impl Cas {
    pub fn load(config: &CasConfig) -> Result<Self, String> {
        let server = validate_url(&config.server).map_err(|e| format!("server: {e}"))?;
        let validate_url = Url::parse(&format!(
            "{}/{}",
            server.as_str().trim_end_matches('/'),
            config.protocol.validate_path()
        ))
        .map_err(|e| format!("server: {e}"))?;
        let allowed = config
            .allowed_services
            .iter()
            .map(|p| ServicePattern::parse(p).map_err(|e| format!("allowed_services: {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let login_attribute = match &config.login_attribute {
            Some(name) => login_attribute(name).map_err(|e| format!("login_attribute: {e}"))?,
            None => None,
        };
        Ok(Self {
            validate_url,
            allowed,
            login_attribute,
            client: client(config)?,
        })
    }

    fn service_allowed(&self, service: &Url) -> bool {
        self.allowed.iter().any(|p| p.matches(service))
    }

    /// Asks the CAS server about the ticket; the proven login on success.
    async fn validate(&self, request: &TicketRequest) -> Result<String, Refusal> {
        let response = self
            .client
            .get(self.validate_url.clone())
            .query(&[("service", &request.service), ("ticket", &request.ticket.0)])
            .send()
            .await
            .map_err(Refusal::transport)?;
        if response.status() != StatusCode::OK {
            return Err(Refusal::Status(response.status()));
        }
        let body = read_bounded(response).await?;
        match parse_service_response(&body).map_err(Refusal::Invalid)? {
            CasOutcome::Failure(code) => Err(Refusal::Failure(code)),
            CasOutcome::Success(principal) => principal
                .login(self.login_attribute.as_deref())
                .map(str::to_owned)
                .map_err(Refusal::Invalid),
        }
    }
}

/// One pooled client for the CAS server, built once: TLS sessions and connections are reused.
fn client(config: &CasConfig) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        // A validation answer is never a redirect; following one would send the ticket on.
        .redirect(reqwest::redirect::Policy::none())
        // The ticket is in the query: it goes to the CAS server and nowhere else.
        .no_proxy();
    crate::tls::provider_client(builder, config.ca_bundle.as_deref())
}

/// Reads at most `MAX_RESPONSE` bytes: a CAS answer is small, and a larger one is refused
/// before it is held in memory.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, Refusal> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE as u64)
    {
        return Err(Refusal::Invalid(CasError::TooLarge));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Refusal::transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(Refusal::Invalid(CasError::TooLarge));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A service ticket. Never printed: `Debug` is redacted.
struct Ticket(String);

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket(..)")
    }
}

#[derive(Debug)]
struct TicketRequest {
    /// As the client sent it: the CAS server compares it byte for byte.
    service: String,
    /// Parsed, for the allow-list.
    service_url: Url,
    ticket: Ticket,
}

impl TicketRequest {
    fn from_query(query: Option<&str>) -> Result<Self, GateError> {
        let (mut service, mut ticket) = (None, None);
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "service" => &mut service,
                "ticket" => &mut ticket,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(bad_request(format!("the {key} parameter is repeated")));
            }
        }
        let (Some(service), Some(ticket)) = (service, ticket) else {
            return Err(bad_request(
                "the service and ticket parameters are required".into(),
            ));
        };
        let ticket = Ticket(ticket);
        if !ticket_well_formed(&ticket.0) {
            return Err(bad_request("the ticket is not a CAS service ticket".into()));
        }
        let service_url = parse_service(&service).ok_or_else(service_not_allowed)?;
        Ok(Self {
            service,
            service_url,
            ticket,
        })
    }
}

fn ticket_well_formed(ticket: &str) -> bool {
    ticket.len() <= MAX_TICKET
        && ticket.len() > "ST-".len()
        && ticket.starts_with("ST-")
        && ticket.bytes().all(|b| b.is_ascii_graphic())
}

/// The service as a URL, refusing what different parsers could read differently (spaces,
/// backslashes, control characters) and credentials or fragments, which a service never has.
fn parse_service(service: &str) -> Option<Url> {
    let plain =
        service.len() <= MAX_SERVICE && service.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    let url = Url::parse(service).ok().filter(|_| plain)?;
    let clean = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none();
    clean.then_some(url)
}

fn bad_request(message: String) -> GateError {
    GateError::Refused {
        status: StatusCode::BAD_REQUEST,
        code: "InvalidRequest",
        message,
        challenge: None,
    }
}

fn service_not_allowed() -> GateError {
    GateError::Refused {
        status: StatusCode::BAD_REQUEST,
        code: "CasServiceNotAllowed",
        message: "the service is not one of the allowed CAS services".into(),
        challenge: None,
    }
}

/// Why a ticket was not accepted, once the CAS server was asked.
#[derive(Debug)]
enum Refusal {
    /// `authenticationFailure` with this (checked) code.
    Failure(String),
    Invalid(CasError),
    Status(StatusCode),
    Unreachable,
    Timeout,
}

impl Refusal {
    /// reqwest's errors carry the URL, ticket included: only the kind is kept.
    fn transport(e: reqwest::Error) -> Self {
        match e.is_timeout() {
            true => Refusal::Timeout,
            false => Refusal::Unreachable,
        }
    }

    /// Only a refused ticket is the client's doing; a broken CAS server is not.
    fn counts_as_failure(&self) -> bool {
        matches!(self, Refusal::Failure(_))
    }

    fn reason(&self) -> String {
        match self {
            Refusal::Failure(code) => format!("authenticationFailure {code}"),
            Refusal::Invalid(e) => e.to_string(),
            Refusal::Status(status) => format!("HTTP status {status}"),
            Refusal::Unreachable => "CAS server unreachable".into(),
            Refusal::Timeout => "CAS server timed out".into(),
        }
    }
}

impl From<Refusal> for GateError {
    fn from(refusal: Refusal) -> Self {
        let (status, code, message) = match &refusal {
            Refusal::Failure(cas_code) => (
                StatusCode::UNAUTHORIZED,
                "CasAuthenticationFailed",
                format!("the CAS server refused the ticket: {cas_code}"),
            ),
            Refusal::Invalid(_) | Refusal::Status(_) => (
                StatusCode::BAD_GATEWAY,
                "CasInvalidResponse",
                "the CAS server's answer is not a valid CAS response".into(),
            ),
            Refusal::Unreachable => (
                StatusCode::BAD_GATEWAY,
                "CasUnavailable",
                "the CAS server cannot be reached".into(),
            ),
            Refusal::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "CasTimeout",
                "the CAS server did not answer in time".into(),
            ),
        };
        GateError::Refused {
            status,
            code,
            message,
            challenge: None,
        }
    }
}

pub async fn handle(
    state: Arc<State>,
    throttle: &Throttle,
    parts: &request::Parts,
    conn: ConnInfo,
) -> Result<Response<Body>, GateError> {
    let Some(cas) = &state.cas else {
        return Err(GateError::NoRoute);
    };
    let addr = conn.remote.ip();
    throttle.check_addr(addr).map_err(GateError::locked_out)?;
    let request = TicketRequest::from_query(parts.uri.query())?;
    if !cas.service_allowed(&request.service_url) {
        tracing::info!(client = %addr, method = "cas", "service not allowed");
        return Err(service_not_allowed());
    }
    let login = match cas.validate(&request).await {
        Ok(login) => login,
        Err(refusal) => {
            if refusal.counts_as_failure() {
                throttle.record_addr_failure(addr, &state.config.login);
            }
            tracing::info!(client = %addr, method = "cas", reason = %refusal.reason(), "login refused");
            return Err(refusal.into());
        }
    };
    login::issue_proven(&state, throttle, &login, Method::Cas, addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> ServicePattern {
        ServicePattern::parse(p).unwrap()
    }

    fn allowed(p: &str, service: &str) -> bool {
        parse_service(service).is_some_and(|url| pattern(p).matches(&url))
    }

    #[test]
    fn service_patterns_compare_url_parts_not_text() {
        let p = "https://xivo.example.com";
        assert!(allowed(p, "https://xivo.example.com/"));
        assert!(allowed(p, "https://xivo.example.com/ucassistant/?x=1"));
        assert!(allowed(p, "https://XIVO.example.com:443/a"));
        assert!(!allowed(p, "https://xivo.example.com.evil.org/"));
        assert!(!allowed(p, "https://xivo.example.com.evil.org"));
        assert!(!allowed(p, "https://xivo.example.com@evil.org/"));
        assert!(!allowed(p, "https://xivo.example.com:8443/"));
        assert!(!allowed(p, "http://xivo.example.com/"));
        assert!(!allowed(p, "https://evil.org/https://xivo.example.com/"));
        assert!(!allowed(p, "https://xivo.example.com\\@evil.org/"));
        assert!(!allowed(p, "https://xivo.example.com/#frag"));
        assert!(!allowed(p, "javascript://xivo.example.com/"));
    }

    #[test]
    fn service_pattern_paths_match_whole_segments() {
        let p = "https://xivo.example.com/app";
        assert!(allowed(p, "https://xivo.example.com/app"));
        assert!(allowed(p, "https://xivo.example.com/app/login?x"));
        assert!(allowed(p, "https://xivo.example.com/app?x"));
        assert!(!allowed(p, "https://xivo.example.com/application"));
        assert!(!allowed(p, "https://xivo.example.com/other/../x"));
        assert!(!allowed(p, "https://xivo.example.com/app/../evil"));
        assert!(!allowed(p, "https://xivo.example.com/app/%2e%2e/evil"));
        let slash = "https://xivo.example.com/app/";
        assert!(allowed(slash, "https://xivo.example.com/app/x"));
        assert!(!allowed(slash, "https://xivo.example.com/app"));
        assert!(allowed(
            "http://127.0.0.1:8081/cb",
            "http://127.0.0.1:8081/cb?next=%2F"
        ));
        assert!(!allowed(
            "http://127.0.0.1:8081/cb",
            "http://127.0.0.1:8082/cb"
        ));
        assert!(!allowed("http://[::1]:80/", "http://127.0.0.1/"));
    }

    #[test]
    fn bad_service_patterns_are_refused() {
        for p in [
            "xivo.example.com",
            "/relative",
            "ftp://xivo.example.com/",
            "https://user@xivo.example.com/",
            "https://xivo.example.com/?q",
            "https://xivo.example.com/#f",
        ] {
            assert!(ServicePattern::parse(p).is_err(), "{p}");
        }
    }

    fn config(toml_text: &str) -> Result<CasConfig, String> {
        let mut c: CasConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.validate(Path::new("/etc/ucgate"))?;
        Ok(c)
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = config(
            "server = \"https://cas.example.com/cas/\"\nallowed_services = [\"https://xivo.example.com/\"]\nca_bundle = \"ca.pem\"",
        )
        .unwrap();
        assert_eq!(c.protocol, Protocol::P3);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.ca_bundle, Some(PathBuf::from("/etc/ucgate/ca.pem")));
        let base = "allowed_services = [\"https://x.example/\"]\n";
        let err = |extra: &str| config(&format!("{base}{extra}")).unwrap_err();
        assert!(err("server = \"http://cas.example.com/cas\"").starts_with("server:"));
        assert!(err("server = \"https://cas.example.com/cas?x=1\"").starts_with("server:"));
        let ok = "server = \"http://127.0.0.1:9/cas\"\n";
        assert!(err(&format!("{ok}timeout = \"0s\"")).starts_with("timeout:"));
        assert!(err(&format!("{ok}timeout = \"2m\"")).starts_with("timeout:"));
        assert!(err(&format!("{ok}protocol = \"cas1\"")).contains("cas1"));
        assert!(err(&format!("{ok}login_attribute = \"a b\"")).starts_with("login_attribute:"));
        assert!(err(&format!("{ok}unknown = 1")).contains("unknown"));
        let no_services = config("server = \"https://c.example/cas\"\nallowed_services = []");
        assert!(no_services.unwrap_err().starts_with("allowed_services:"));
    }

    #[test]
    fn load_builds_the_validation_url_and_reads_the_ca_bundle() {
        let mut c = config(
            "server = \"https://cas.example.com/cas/\"\nallowed_services = [\"https://x.example/\"]\nprotocol = \"cas2\"\nlogin_attribute = \"cas:user\"",
        )
        .unwrap();
        let cas = Cas::load(&c).unwrap();
        assert_eq!(
            cas.validate_url.as_str(),
            "https://cas.example.com/cas/serviceValidate"
        );
        assert_eq!(cas.login_attribute, None);
        c.protocol = Protocol::P3;
        c.login_attribute = Some("username".into());
        let cas = Cas::load(&c).unwrap();
        assert_eq!(
            cas.validate_url.as_str(),
            "https://cas.example.com/cas/p3/serviceValidate"
        );
        assert_eq!(cas.login_attribute.as_deref(), Some("username"));

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        c.ca_bundle = Some(missing);
        assert!(Cas::load(&c).unwrap_err().starts_with("ca_bundle:"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        c.ca_bundle = Some(empty);
        assert!(Cas::load(&c).unwrap_err().contains("no PEM certificate"));
    }

    #[test]
    fn ticket_requests_are_checked_before_anything_else() {
        let ok = TicketRequest::from_query(Some(
            "service=http%3A%2F%2F127.0.0.1%3A1%2Fcb%3Fa%3Db&ticket=ST-1-abc",
        ))
        .unwrap();
        assert_eq!(ok.service, "http://127.0.0.1:1/cb?a=b");
        assert!(!format!("{ok:?}").contains("ST-1-abc"));
        let status = |q: &str| {
            let e = TicketRequest::from_query(Some(q)).unwrap_err();
            assert!(!e.to_string().contains("ST-"), "{e}");
            (e.status(), e.code())
        };
        let bad = (StatusCode::BAD_REQUEST, "InvalidRequest");
        assert_eq!(status("service=http://a/"), bad);
        assert_eq!(status("ticket=ST-1"), bad);
        assert_eq!(status("service=http://a/&ticket=ST-1&ticket=ST-2"), bad);
        assert_eq!(status("service=http://a/&ticket=PT-1"), bad);
        assert_eq!(status("service=http://a/&ticket=ST-a%20b"), bad);
        assert_eq!(
            status(&format!("service=http://a/&ticket=ST-{}", "x".repeat(300))),
            bad
        );
        assert_eq!(
            status("service=not%20a%20url&ticket=ST-1"),
            (StatusCode::BAD_REQUEST, "CasServiceNotAllowed")
        );
    }
}
