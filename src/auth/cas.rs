//! CAS: a service ticket for a UC token at `GET /xuc/api/2.0/auth/cas?service=URL&ticket=ST-...`.
//!
//! The ticket is checked with the CAS server (`/p3/serviceValidate`, or `/serviceValidate` for
//! CAS 2) and the answer parsed strictly. The service must be on the allow-list before the CAS
//! server is called: otherwise a ticket issued to any other CAS-enabled site could be replayed
//! here.

mod xml;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use url::Url;

use super::exchange::{Attempt, Exchange, Proof};
use super::token::Method;
use crate::config::{CasConfig, ServicePattern};
use crate::error::GateError;
pub use xml::{CasError, CasOutcome, MAX_RESPONSE, parse_service_response};

/// Longest service URL accepted: browsers and CAS servers cap URLs near this anyway.
const MAX_SERVICE: usize = 2048;
/// CAS 3.0 §3.7: tickets may be up to 256 characters; more is a hostile client.
const MAX_TICKET: usize = 256;

/// What the endpoint needs at run time, loaded from the config.
#[derive(Debug)]
pub struct Cas {
    validate_url: Url,
    allowed: Vec<ServicePattern>,
    login_attribute: Option<String>,
    client: reqwest::Client,
}

impl Cas {
    /// Builds the validation URL and the pooled client (with `ca_bundle`'s CAs, if set).
    pub fn load(config: &CasConfig) -> Result<Self, String> {
        let validate_url = Url::parse(&format!(
            "{}/{}",
            config.server.as_str().trim_end_matches('/'),
            config.protocol.validate_path()
        ))
        .map_err(|e| format!("server: {e}"))?;
        Ok(Self {
            validate_url,
            allowed: config.allowed_services.clone(),
            login_attribute: config.login_attribute.clone(),
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
                return Err(GateError::InvalidRequest(match key.as_ref() {
                    "service" => "the service parameter is repeated",
                    _ => "the ticket parameter is repeated",
                }));
            }
        }
        let (Some(service), Some(ticket)) = (service, ticket) else {
            return Err(GateError::InvalidRequest(
                "the service and ticket parameters are required",
            ));
        };
        let ticket = Ticket(ticket);
        if !ticket_well_formed(&ticket.0) {
            return Err(GateError::InvalidRequest(
                "the ticket is not a CAS service ticket",
            ));
        }
        let service_url = parse_service(&service).ok_or(GateError::CasServiceNotAllowed)?;
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
        match refusal {
            Refusal::Failure(cas_code) => GateError::CasAuthenticationFailed(cas_code),
            Refusal::Invalid(_) | Refusal::Status(_) => GateError::CasInvalidResponse,
            Refusal::Unreachable => GateError::CasUnavailable,
            Refusal::Timeout => GateError::CasTimeout,
        }
    }
}

impl Exchange for Cas {
    const METHOD: Method = Method::Cas;

    /// `InvalidRequest` for a missing, repeated or malformed parameter, `CasServiceNotAllowed`
    /// for a service off the allow-list (before the CAS server is asked),
    /// `CasAuthenticationFailed` for a refused ticket (a failure of the client's address), and
    /// `CasInvalidResponse`, `CasUnavailable` or `CasTimeout` when the CAS server fails.
    async fn prove(
        &self,
        request: Request<Incoming>,
        attempt: Attempt<'_>,
    ) -> Result<Proof, GateError> {
        let ticket = TicketRequest::from_query(request.uri().query())?;
        if !self.service_allowed(&ticket.service_url) {
            tracing::info!(client = %attempt.client(), method = "cas", "service not allowed");
            return Err(GateError::CasServiceNotAllowed);
        }
        match self.validate(&ticket).await {
            Ok(login) => Ok(Proof::login(login)),
            Err(refusal) => {
                if refusal.counts_as_failure() {
                    attempt.failed_client();
                }
                tracing::info!(client = %attempt.client(), method = "cas", reason = %refusal.reason(), "login refused");
                Err(refusal.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CasProtocol;

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

    fn config(protocol: CasProtocol, login_attribute: Option<&str>) -> CasConfig {
        CasConfig {
            server: Url::parse("https://cas.example.com/cas/").unwrap(),
            allowed_services: vec![pattern("https://x.example/")],
            protocol,
            login_attribute: login_attribute.map(Into::into),
            timeout: std::time::Duration::from_secs(5),
            ca_bundle: None,
        }
    }

    #[test]
    fn load_builds_the_validation_url_and_reads_the_ca_bundle() {
        let cas = Cas::load(&config(CasProtocol::Cas2, None)).unwrap();
        assert_eq!(
            cas.validate_url.as_str(),
            "https://cas.example.com/cas/serviceValidate"
        );
        assert_eq!(cas.login_attribute, None);
        let mut c = config(CasProtocol::P3, Some("username"));
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
