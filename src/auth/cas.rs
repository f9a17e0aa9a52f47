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
        // The service goes as the client sent it, still encoded: the CAS server decodes it once,
        // as it decoded the one of its login page, so that the two compare equal whatever the
        // encoding (JavaScript's escape(), encodeURIComponent()).
        let mut url = self.validate_url.clone();
        let ticket: String =
            url::form_urlencoded::byte_serialize(request.ticket.0.as_bytes()).collect();
        url.set_query(Some(&format!(
            "service={}&ticket={ticket}",
            request.service
        )));
        let response = self
            .client
            .get(url)
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
    /// The parameter's value as the client sent it, still percent-encoded: it goes to the CAS
    /// server so, and the CAS server compares it with the service of its login page.
    service: String,
    /// Decoded and parsed, for the allow-list.
    service_url: Url,
    ticket: Ticket,
}

impl TicketRequest {
    fn from_query(query: Option<&str>) -> Result<Self, GateError> {
        let (mut service, mut ticket) = (None, None);
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key: String = url::form_urlencoded::parse(format!("{key}=").as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            let slot = match key.as_str() {
                "service" => &mut service,
                "ticket" => &mut ticket,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(GateError::InvalidRequest(match key.as_str() {
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
        let ticket = Ticket(unescape(ticket).ok_or(GateError::InvalidRequest(
            "the ticket is not a CAS service ticket",
        ))?);
        if !ticket_well_formed(&ticket.0) {
            return Err(GateError::InvalidRequest(
                "the ticket is not a CAS service ticket",
            ));
        }
        let service_url = unescape(service)
            .and_then(|s| parse_service(&s))
            .ok_or(GateError::CasServiceNotAllowed)?;
        Ok(Self {
            service: service.to_owned(),
            service_url,
            ticket,
        })
    }
}

/// A query value decoded as browsers' encoders mean it: `+` is a space, `%XX` a byte (UTF-8,
/// or Latin-1 where the bytes are not UTF-8: JavaScript's `escape()` writes `é` as `%E9`), and
/// `%uXXXX` a UTF-16 unit (`escape()` of a character beyond Latin-1; two for a surrogate
/// pair). `None` for a broken escape: a service the browser cannot have been sent to.
fn unescape(raw: &str) -> Option<String> {
    fn flush(bytes: &mut Vec<u8>, out: &mut String) {
        match std::str::from_utf8(bytes) {
            Ok(text) => out.push_str(text),
            Err(_) => out.extend(bytes.iter().map(|&b| char::from(b))),
        }
        bytes.clear();
    }
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let (mut out, mut bytes, mut units) = (String::new(), Vec::new(), Vec::<u16>::new());
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("%u").or_else(|| rest.strip_prefix("%U")) {
            let unit = hex(after.get(..4)?)?;
            flush(&mut bytes, &mut out);
            units.push(unit as u16);
            rest = &after[4..];
            continue;
        }
        if !units.is_empty() {
            out.push_str(&String::from_utf16(&units).ok()?);
            units.clear();
        }
        if let Some(after) = rest.strip_prefix('%') {
            bytes.push(hex(after.get(..2)?)? as u8);
            rest = &after[2..];
            continue;
        }
        flush(&mut bytes, &mut out);
        out.push(if c == '+' { ' ' } else { c });
        rest = &rest[c.len_utf8()..];
    }
    if !units.is_empty() {
        out.push_str(&String::from_utf16(&units).ok()?);
    }
    flush(&mut bytes, &mut out);
    Some(out)
}

fn ticket_well_formed(ticket: &str) -> bool {
    ticket.len() <= MAX_TICKET
        && ticket.len() > "ST-".len()
        && ticket.starts_with("ST-")
        && ticket.bytes().all(|b| b.is_ascii_graphic())
}

/// The service as a URL, refusing what different parsers could read differently (spaces,
/// backslashes, control characters) and credentials or fragments, which a service never has.
/// Letters beyond ASCII (a decoded `é` of a query) are fine.
fn parse_service(service: &str) -> Option<Url> {
    let plain = service.len() <= MAX_SERVICE
        && service
            .chars()
            .all(|c| !c.is_ascii() || (c.is_ascii_graphic() && c != '\\'));
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
        matches!(self, Refusal::Failure(code) if !matches!(code.as_str(), "INVALID_REQUEST" | "INTERNAL_ERROR"))
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
            // What XiVO's web clients look for to send the browser back to the CAS login page
            // (CAS protocol 3.0 §2.5.3: an unknown, used or expired ticket, or one for another
            // service).
            Refusal::Failure(code)
                if matches!(
                    code.as_str(),
                    "INVALID_TICKET" | "INVALID_TICKET_SPEC" | "INVALID_SERVICE"
                ) =>
            {
                GateError::CasServerInvalidTicket(code)
            }
            Refusal::Failure(code) if code == "INVALID_REQUEST" => GateError::CasInvalidRequest,
            Refusal::Failure(code) if code == "INTERNAL_ERROR" => GateError::CasInternalError,
            Refusal::Failure(code) => GateError::CasAuthenticationFailed(code),
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
    /// `CasServerInvalidTicket` for a ticket the CAS server refuses (a failure of the client's
    /// address), `CasInvalidRequest` / `CasAuthenticationFailed` for its other codes, and
    /// `CasInternalError`, `CasInvalidResponse`, `CasUnavailable` or `CasTimeout` when the CAS
    /// server fails.
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
                    attempt.failed_client().await;
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
    fn services_are_decoded_as_browsers_encode_them() {
        let service = "http://127.0.0.1:8081/café/☃/?x=1 2";
        // JavaScript's escape(), encodeURIComponent(), and form encoding.
        for encoded in [
            "http%3A//127.0.0.1%3A8081/caf%E9/%u2603/%3Fx%3D1%202",
            "http%3A%2F%2F127.0.0.1%3A8081%2Fcaf%C3%A9%2F%E2%98%83%2F%3Fx%3D1%202",
            "http://127.0.0.1:8081/caf%C3%A9/%E2%98%83/?x=1+2",
        ] {
            assert_eq!(unescape(encoded).as_deref(), Some(service), "{encoded}");
        }
        // A character beyond the BMP: escape() writes its UTF-16 surrogate pair.
        assert_eq!(unescape("%uD83D%uDE00").as_deref(), Some("😀"));
        for broken in ["%u12", "%uZZZZ", "%zz", "%4", "%uD83D", "%u+123"] {
            assert_eq!(unescape(broken), None, "{broken}");
        }
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
        assert_eq!(ok.service, "http%3A%2F%2F127.0.0.1%3A1%2Fcb%3Fa%3Db");
        assert_eq!(ok.service_url.as_str(), "http://127.0.0.1:1/cb?a=b");
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
