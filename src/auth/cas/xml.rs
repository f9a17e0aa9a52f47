//! The CAS `serviceResponse` document, parsed strictly: the answer decides who logs in, so
//! anything unexpected is an error rather than a guess.

use std::borrow::Cow;

use quick_xml::NsReader;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};

/// The CAS 2.0/3.0 namespace. Checked by URI: a prefix named `cas` means nothing by itself.
const CAS_NS: &str = "http://www.yale.edu/tp/cas";
/// A real answer is a few hundred bytes; this leaves room for many attributes.
pub const MAX_RESPONSE: usize = 64 * 1024;
const MAX_DEPTH: usize = 16;
const MAX_ATTRIBUTES: usize = 256;
const MAX_LOGIN: usize = 256;
const MAX_CODE: usize = 64;

/// What the CAS server said about a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    Success(Principal),
    /// `authenticationFailure`: its `code` (e.g. `INVALID_TICKET`), checked to be a plain
    /// upper-case identifier so that it can be echoed. The element's text is dropped: servers
    /// put the ticket in it.
    Failure(String),
}

/// The authenticated user and the released attributes, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub attributes: Vec<(String, String)>,
}

impl Principal {
    /// The login: `cas:user`, or the single value of the named attribute.
    pub fn login(&self, attribute: Option<&str>) -> Result<&str, CasError> {
        let Some(name) = attribute else {
            return Ok(&self.user);
        };
        let mut values = self
            .attributes
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str());
        match (values.next(), values.next()) {
            (None, _) => Err(CasError::MissingLoginAttribute),
            (Some(_), Some(_)) => Err(CasError::SeveralLoginValues),
            (Some(value), None) => valid_login(value),
        }
    }
}

/// Why an answer is not a usable `serviceResponse`. Messages never quote the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CasError {
    #[error("the response is larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("the response is not UTF-8")]
    NotUtf8,
    #[error("the response is not well-formed XML")]
    Malformed,
    #[error("the response has a document type declaration")]
    Doctype,
    #[error("the response refers to an entity other than the XML predefined ones")]
    UnknownEntity,
    #[error("the response nests elements too deeply")]
    TooDeep,
    #[error("the root element is not serviceResponse in the CAS namespace")]
    WrongRoot,
    #[error("the response has content after its root element")]
    TrailingContent,
    #[error("the response has no authenticationSuccess or authenticationFailure")]
    NoOutcome,
    #[error("the response has several outcomes")]
    SeveralOutcomes,
    #[error("the response has an unexpected element")]
    UnexpectedElement,
    #[error("the response has markup inside a value")]
    MarkupInValue,
    #[error("the authenticationFailure has no valid code")]
    BadCode,
    #[error("the authenticationSuccess has no user")]
    NoUser,
    #[error("the authenticationSuccess has several users")]
    SeveralUsers,
    #[error("the response releases too many attributes")]
    TooManyAttributes,
    #[error("the user is empty, too long or has control characters")]
    BadUser,
    #[error("the login attribute is not released")]
    MissingLoginAttribute,
    #[error("the login attribute has several values")]
    SeveralLoginValues,
}

/// Parses a CAS 2.0/3.0 `serviceResponse`. Pure and total: any input gives a value, never a
/// panic, in time and memory linear in the (bounded) input.
pub fn parse_service_response(input: &[u8]) -> Result<CasOutcome, CasError> {
    if input.len() > MAX_RESPONSE {
        return Err(CasError::TooLarge);
    }
    let text = std::str::from_utf8(input).map_err(|_| CasError::NotUtf8)?;
    let mut reader = NsReader::from_str(text);
    let mut doc = Document::default();
    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|_| CasError::Malformed)?;
        let is_cas = matches!(ns, ResolveResult::Bound(Namespace(uri)) if uri == CAS_NS);
        match event {
            Event::Start(e) => doc.open(is_cas, &e)?,
            Event::Empty(e) => {
                doc.open(is_cas, &e)?;
                doc.close()?;
            }
            Event::End(_) => doc.close()?,
            Event::Text(t) => doc.text(&t.xml10_content())?,
            Event::CData(c) => doc.text(&c.xml10_content())?,
            Event::GeneralRef(r) => doc.text(&resolve_reference(&r)?)?,
            // No DTD means no entity can be declared, so nothing can expand.
            Event::DocType(_) => return Err(CasError::Doctype),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => return doc.finish(),
        }
    }
}

/// Only the five predefined entities and character references: no DTD, so nothing else exists.
fn resolve_reference(r: &BytesRef<'_>) -> Result<Cow<'static, str>, CasError> {
    if let Some(c) = r.resolve_char_ref().map_err(|_| CasError::Malformed)? {
        return Ok(Cow::Owned(c.to_string()));
    }
    let predefined = match r.xml10_content().as_ref() {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => return Err(CasError::UnknownEntity),
    };
    Ok(Cow::Borrowed(predefined))
}

/// An element on the open path: a CAS element by local name, or anything else.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    Cas(String),
    Other,
}

/// Where the text being read goes.
#[derive(Debug)]
enum Capture {
    User(String),
    Attribute(String, String),
}

#[derive(Debug)]
enum Outcome {
    Success,
    Failure(String),
}

#[derive(Debug, Default)]
struct Document {
    path: Vec<Name>,
    root_closed: bool,
    outcome: Option<Outcome>,
    user: Option<String>,
    attributes: Vec<(String, String)>,
    capture: Option<Capture>,
}

impl Document {
    fn open(&mut self, is_cas: bool, e: &BytesStart<'_>) -> Result<(), CasError> {
        if self.root_closed {
            return Err(CasError::TrailingContent);
        }
        if self.capture.is_some() {
            return Err(CasError::MarkupInValue);
        }
        if self.path.len() >= MAX_DEPTH {
            return Err(CasError::TooDeep);
        }
        let name = match is_cas {
            true => {
                let local = e.local_name();
                Name::Cas(local.as_ref().to_owned())
            }
            false => Name::Other,
        };
        self.enter(&name, e)?;
        self.path.push(name);
        Ok(())
    }

    /// Acts on an element about to be opened under the current path.
    fn enter(&mut self, name: &Name, e: &BytesStart<'_>) -> Result<(), CasError> {
        let cas = |n: &str| *name == Name::Cas(n.into());
        match self.path_names().as_slice() {
            [] if cas("serviceResponse") => Ok(()),
            [] => Err(CasError::WrongRoot),
            ["serviceResponse"] => {
                let outcome = match name {
                    _ if cas("authenticationSuccess") => Outcome::Success,
                    _ if cas("authenticationFailure") => Outcome::Failure(failure_code(e)?),
                    _ => return Err(CasError::UnexpectedElement),
                };
                match self.outcome.replace(outcome) {
                    Some(_) => Err(CasError::SeveralOutcomes),
                    None => Ok(()),
                }
            }
            ["serviceResponse", "authenticationSuccess"] if cas("user") => {
                if self.user.is_some() {
                    return Err(CasError::SeveralUsers);
                }
                self.capture = Some(Capture::User(String::new()));
                Ok(())
            }
            ["serviceResponse", "authenticationSuccess", "attributes"] => {
                if let Name::Cas(attribute) = name {
                    if self.attributes.len() >= MAX_ATTRIBUTES {
                        return Err(CasError::TooManyAttributes);
                    }
                    self.capture = Some(Capture::Attribute(attribute.clone(), String::new()));
                }
                Ok(())
            }
            // Other content (proxyGrantingTicket, extensions, foreign elements) is not needed.
            _ => Ok(()),
        }
    }

    /// The local names of the open path while it is all CAS elements ("" for others).
    fn path_names(&self) -> Vec<&str> {
        self.path
            .iter()
            .map(|n| match n {
                Name::Cas(local) => local.as_str(),
                Name::Other => "",
            })
            .collect()
    }

    fn close(&mut self) -> Result<(), CasError> {
        self.path.pop().ok_or(CasError::Malformed)?;
        match self.capture.take() {
            Some(Capture::User(user)) => self.user = Some(user),
            Some(Capture::Attribute(name, value)) => {
                self.attributes.push((name, value.trim().to_owned()))
            }
            None => {}
        }
        if self.path.is_empty() {
            self.root_closed = true;
        }
        Ok(())
    }

    fn text(&mut self, text: &str) -> Result<(), CasError> {
        match &mut self.capture {
            Some(Capture::User(value) | Capture::Attribute(_, value)) => {
                value.push_str(text);
                Ok(())
            }
            None if self.path.is_empty() && !text.trim().is_empty() => {
                Err(CasError::TrailingContent)
            }
            None => Ok(()),
        }
    }

    fn finish(self) -> Result<CasOutcome, CasError> {
        if !self.root_closed {
            return Err(CasError::Malformed);
        }
        match self.outcome.ok_or(CasError::NoOutcome)? {
            Outcome::Failure(code) => Ok(CasOutcome::Failure(code)),
            Outcome::Success => {
                let user = self.user.ok_or(CasError::NoUser)?;
                Ok(CasOutcome::Success(Principal {
                    user: valid_login(&user)?.to_owned(),
                    attributes: self.attributes,
                }))
            }
        }
    }
}

fn failure_code(e: &BytesStart<'_>) -> Result<String, CasError> {
    let attribute = e
        .try_get_attribute("code")
        .map_err(|_| CasError::Malformed)?
        .ok_or(CasError::BadCode)?;
    let code = attribute
        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
        .map_err(|_| CasError::BadCode)?;
    let code = code.trim();
    let plain = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    match !code.is_empty() && code.len() <= MAX_CODE && code.chars().all(plain) {
        true => Ok(code.to_owned()),
        false => Err(CasError::BadCode),
    }
}

/// A login goes into a token and an upstream header: non-empty, bounded, no control characters.
fn valid_login(value: &str) -> Result<&str, CasError> {
    let login = value.trim();
    match !login.is_empty() && login.len() <= MAX_LOGIN && !login.chars().any(char::is_control) {
        true => Ok(login),
        false => Err(CasError::BadUser),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = r#"xmlns:cas="http://www.yale.edu/tp/cas""#;

    fn parse(s: &str) -> Result<CasOutcome, CasError> {
        parse_service_response(s.as_bytes())
    }

    fn success(user: &str, attributes: &str) -> String {
        format!(
            "<cas:serviceResponse {NS}><cas:authenticationSuccess><cas:user>{user}</cas:user>\
             <cas:attributes>{attributes}</cas:attributes></cas:authenticationSuccess>\
             </cas:serviceResponse>"
        )
    }

    #[test]
    fn django_cas_server_success() {
        let doc = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<cas:serviceResponse {NS}>
    <cas:authenticationSuccess>
        <cas:user>alice</cas:user>
        <cas:attributes>
            <cas:authenticationDate>2026-11-25T10:00:00+00:00</cas:authenticationDate>
            <cas:email>alice@example.test</cas:email>
            <cas:username>alice</cas:username>
        </cas:attributes>
    </cas:authenticationSuccess>
</cas:serviceResponse>
"#
        );
        let CasOutcome::Success(p) = parse(&doc).unwrap() else {
            panic!("not a success")
        };
        assert_eq!(p.user, "alice");
        assert_eq!(p.login(None), Ok("alice"));
        assert_eq!(p.login(Some("email")), Ok("alice@example.test"));
        assert_eq!(
            p.login(Some("missing")),
            Err(CasError::MissingLoginAttribute)
        );
    }

    #[test]
    fn failure_keeps_the_code_and_drops_the_text() {
        let doc = format!(
            r#"<cas:serviceResponse {NS}><cas:authenticationFailure code="INVALID_TICKET">Ticket ST-123-secret not recognized</cas:authenticationFailure></cas:serviceResponse>"#
        );
        assert_eq!(
            parse(&doc),
            Ok(CasOutcome::Failure("INVALID_TICKET".into()))
        );
    }

    #[test]
    fn failure_code_must_be_a_plain_identifier() {
        for code in ["", "invalid ticket", "X<script>", &"A".repeat(65)] {
            let doc = format!(
                r#"<cas:serviceResponse {NS}><cas:authenticationFailure code="{}"/></cas:serviceResponse>"#,
                code.replace('<', "&lt;")
            );
            assert_eq!(parse(&doc), Err(CasError::BadCode), "{code}");
        }
        let doc = format!(
            r#"<cas:serviceResponse {NS}><cas:authenticationFailure/></cas:serviceResponse>"#
        );
        assert_eq!(parse(&doc), Err(CasError::BadCode));
    }

    #[test]
    fn namespace_is_checked_by_uri_not_prefix() {
        let wrong = r#"<cas:serviceResponse xmlns:cas="http://evil.example/cas"><cas:authenticationSuccess><cas:user>alice</cas:user></cas:authenticationSuccess></cas:serviceResponse>"#;
        assert_eq!(parse(wrong), Err(CasError::WrongRoot));
        let undeclared = "<cas:serviceResponse><cas:authenticationSuccess><cas:user>alice</cas:user></cas:authenticationSuccess></cas:serviceResponse>";
        assert_eq!(parse(undeclared), Err(CasError::WrongRoot));
        // A user element from another namespace does not count.
        let foreign_user = format!(
            r#"<cas:serviceResponse {NS} xmlns:x="urn:x"><cas:authenticationSuccess><x:user>alice</x:user></cas:authenticationSuccess></cas:serviceResponse>"#
        );
        assert_eq!(parse(&foreign_user), Err(CasError::NoUser));
        // Any prefix, or the default namespace, bound to the CAS URI is fine.
        let default_ns = r#"<serviceResponse xmlns="http://www.yale.edu/tp/cas"><authenticationSuccess><user>alice</user></authenticationSuccess></serviceResponse>"#;
        assert!(matches!(parse(default_ns), Ok(CasOutcome::Success(_))));
    }

    #[test]
    fn a_success_needs_exactly_one_valid_user() {
        let two = format!(
            "<cas:serviceResponse {NS}><cas:authenticationSuccess><cas:user>alice</cas:user><cas:user>bob</cas:user></cas:authenticationSuccess></cas:serviceResponse>"
        );
        assert_eq!(parse(&two), Err(CasError::SeveralUsers));
        let none =
            format!("<cas:serviceResponse {NS}><cas:authenticationSuccess/></cas:serviceResponse>");
        assert_eq!(parse(&none), Err(CasError::NoUser));
        assert_eq!(parse(&success("   ", "")), Err(CasError::BadUser));
        assert_eq!(parse(&success("al&#10;ice", "")), Err(CasError::BadUser));
        assert_eq!(
            parse(&success(&"a".repeat(257), "")),
            Err(CasError::BadUser)
        );
        assert_eq!(
            parse(&success("<b>alice</b>", "")),
            Err(CasError::MarkupInValue)
        );
        let ok = parse(&success(" a&amp;b&#x41;<![CDATA[<c>]]> ", "")).unwrap();
        assert!(matches!(ok, CasOutcome::Success(p) if p.user == "a&bA<c>"));
    }

    #[test]
    fn two_outcomes_or_none_are_refused() {
        let both = format!(
            r#"<cas:serviceResponse {NS}><cas:authenticationFailure code="INVALID_TICKET"/><cas:authenticationSuccess><cas:user>alice</cas:user></cas:authenticationSuccess></cas:serviceResponse>"#
        );
        assert_eq!(parse(&both), Err(CasError::SeveralOutcomes));
        let empty = format!("<cas:serviceResponse {NS}/>");
        assert_eq!(parse(&empty), Err(CasError::NoOutcome));
        let proxy = format!(
            "<cas:serviceResponse {NS}><cas:proxySuccess><cas:proxyTicket>PT-1</cas:proxyTicket></cas:proxySuccess></cas:serviceResponse>"
        );
        assert_eq!(parse(&proxy), Err(CasError::UnexpectedElement));
    }

    #[test]
    fn several_values_of_the_login_attribute_are_ambiguous() {
        let doc = success(
            "alice",
            "<cas:uid>alice</cas:uid><cas:uid>root</cas:uid><cas:memberOf>a</cas:memberOf>",
        );
        let CasOutcome::Success(p) = parse(&doc).unwrap() else {
            panic!()
        };
        assert_eq!(p.login(Some("uid")), Err(CasError::SeveralLoginValues));
        assert_eq!(p.login(Some("memberOf")), Ok("a"));
    }

    #[test]
    fn billion_laughs_is_refused_at_the_doctype() {
        let doc = format!(
            r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<cas:serviceResponse {NS}><cas:authenticationSuccess><cas:user>&lol3;</cas:user></cas:authenticationSuccess></cas:serviceResponse>"#
        );
        assert_eq!(parse(&doc), Err(CasError::Doctype));
        let external = format!(
            r#"<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><cas:serviceResponse {NS}/>"#
        );
        assert_eq!(parse(&external), Err(CasError::Doctype));
    }

    #[test]
    fn undeclared_entities_are_refused() {
        assert_eq!(parse(&success("&lol9;", "")), Err(CasError::UnknownEntity));
    }

    #[test]
    fn huge_and_deep_inputs_are_refused() {
        let huge = success(&"a".repeat(MAX_RESPONSE), "");
        assert_eq!(parse(&huge), Err(CasError::TooLarge));
        let deep = format!(
            "<cas:serviceResponse {NS}><cas:authenticationSuccess>{}{}</cas:authenticationSuccess></cas:serviceResponse>",
            "<x>".repeat(100),
            "</x>".repeat(100)
        );
        assert_eq!(parse(&deep), Err(CasError::TooDeep));
        let many: String = (0..300)
            .map(|i| format!("<cas:a{i}>v</cas:a{i}>"))
            .collect();
        assert_eq!(
            parse(&success("alice", &many)),
            Err(CasError::TooManyAttributes)
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let doc = success("alice", "");
        for cut in 0..doc.len() {
            assert!(parse(&doc[..cut]).is_err(), "prefix {cut} accepted");
        }
        let trailing = format!("{doc}<cas:serviceResponse {NS}/>");
        assert_eq!(parse(&trailing), Err(CasError::TrailingContent));
        assert_eq!(parse(&format!("{doc}junk")), Err(CasError::TrailingContent));
        assert_eq!(parse_service_response(b"\xff\xfe<"), Err(CasError::NotUtf8));
        assert!(parse("yes\nalice\n").is_err(), "CAS 1 answer");
        assert!(parse("<html><body>Login</body></html>").is_err());
        let mismatched = format!("<cas:serviceResponse {NS}></cas:other>");
        assert!(parse(&mismatched).is_err());
        // Every byte string of a small alphabet: total, never panics.
        let alphabet = [
            b'<', b'>', b'/', b'&', b';', b'a', b'"', b'=', b' ', b'!', b'?',
        ];
        let mut input = Vec::new();
        for n in 0..alphabet.len().pow(5) {
            input.clear();
            let mut k = n;
            for _ in 0..5 {
                input.push(alphabet[k % alphabet.len()]);
                k /= alphabet.len();
            }
            let _ = parse_service_response(&input);
        }
    }
}
