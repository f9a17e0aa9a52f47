//! What a request presents (a token in the `X-Auth-Token` header, an `Authorization: Bearer`
//! header or the `token` query parameter), and what it proved.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, header};

use super::shared::SharedMatch;
use super::token::{Claims, Method, TokenError};
use crate::error::GateError;
use crate::identity::X_AUTH_TOKEN;

/// The query parameter a token may come in (XiVO's clients use it for downloads and WebSockets).
const TOKEN_PARAM: &str = "token";
/// Longest bearer token read; real ones are a few KiB.
pub const MAX_BEARER: usize = 16 * 1024;

/// The `Authorization` header, as far as bearer tokens go (RFC 6750 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'a> {
    Absent,
    /// One `Bearer` header, its token of the RFC's b64token syntax.
    Bearer(&'a str),
    /// Another scheme (`Basic` ...): not a bearer token, and not ucgate's business.
    Other,
    /// Several `Authorization` headers, one of them `Bearer`: which one is meant is unknowable.
    Several,
    /// A `Bearer` that is not one: a bad token, or too long.
    Malformed,
}

/// Reads the `Authorization` header.
pub fn authorization(headers: &HeaderMap) -> Authorization<'_> {
    let is_bearer = |v: &http::HeaderValue| {
        v.as_bytes()
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer "))
            || v.as_bytes().eq_ignore_ascii_case(b"bearer")
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Authorization::Absent;
    };
    if let Some(second) = values.next() {
        return match is_bearer(value) || is_bearer(second) || values.any(is_bearer) {
            true => Authorization::Several,
            false => Authorization::Other,
        };
    }
    if !is_bearer(value) {
        return Authorization::Other;
    }
    let Ok(value) = value.to_str() else {
        return Authorization::Malformed;
    };
    let token = value[6..].trim_start_matches(' ');
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    let body = token.trim_end_matches('=');
    if token.is_empty() || token.len() > MAX_BEARER || !body.chars().all(b64token) {
        return Authorization::Malformed;
    }
    Authorization::Bearer(token)
}

/// What a request proved about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credential was presented (public routes only).
    Anonymous,
    Shared(SharedMatch),
    /// A valid UC token.
    Uc(Arc<Claims>),
}

impl Credential {
    /// The kind, for logs and metrics: `none`, `shared`, `shared-previous`, `uc`, or `xuc` (a
    /// token of the site's xuc).
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Anonymous => "none",
            Credential::Shared(SharedMatch::Current) => "shared",
            Credential::Shared(SharedMatch::Previous) => "shared-previous",
            Credential::Uc(claims) if claims.method == Method::Xuc => "xuc",
            Credential::Uc(_) => "uc",
        }
    }
}

impl From<TokenError> for GateError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => GateError::TokenExpired,
            TokenError::Revoked | TokenError::Invalid | TokenError::Disallowed => {
                GateError::TokenInvalid
            }
        }
    }
}

/// The token a request presents, and its query string without the `token` parameter.
#[derive(Debug, Default)]
pub struct Presented<'a> {
    pub token: Option<Cow<'a, str>>,
    /// The query to forward: `None` when empty.
    pub query: Option<Cow<'a, str>>,
    /// The token came (also) in `Authorization: Bearer`: that header is ucgate's, not the
    /// upstream's.
    pub bearer: bool,
}

/// Finds the token in the `X-Auth-Token` header, the `token` query parameter or, with
/// `bearer`, an `Authorization: Bearer` header. The same value in several places is one
/// credential; several headers, or places that differ, are ambiguous (`AmbiguousToken`): an
/// upstream could otherwise read a different one than ucgate checked. A header that is not
/// visible ASCII, or a `Bearer` that is not one, is `TokenInvalid`. Without `bearer` (public
/// routes), `Authorization` is the upstream's, whatever it holds.
pub fn presented<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    bearer: bool,
) -> Result<Presented<'a>, GateError> {
    let mut values = headers.get_all(X_AUTH_TOKEN).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(GateError::AmbiguousToken);
    }
    let header = header
        .map(|v| v.to_str().map_err(|_| GateError::TokenInvalid))
        .transpose()?;
    let from_bearer = match bearer.then(|| authorization(headers)) {
        Some(Authorization::Bearer(token)) => Some(token),
        Some(Authorization::Several) => return Err(GateError::AmbiguousToken),
        Some(Authorization::Malformed) => return Err(GateError::TokenInvalid),
        Some(Authorization::Absent | Authorization::Other) | None => None,
    };
    let (param, query) = match query {
        Some(q) => split_token_param(q)?,
        None => (None, None),
    };
    let mut token: Option<Cow<'a, str>> = None;
    for found in [
        header.map(Cow::Borrowed),
        from_bearer.map(Cow::Borrowed),
        param,
    ]
    .into_iter()
    .flatten()
    {
        match &token {
            Some(t) if *t != found => return Err(GateError::AmbiguousToken),
            _ => token = Some(found),
        }
    }
    Ok(Presented {
        token,
        query,
        bearer: from_bearer.is_some(),
    })
}

/// The `token` parameter's value and the rest of the query.
type TokenAndRest<'a> = (Option<Cow<'a, str>>, Option<Cow<'a, str>>);

/// Splits `query` into the value of its `token` parameter and the other parameters, kept byte for
/// byte. Keys and values are form-decoded for the comparison, as the Play framework would.
fn split_token_param(query: &str) -> Result<TokenAndRest<'_>, GateError> {
    // Fast path: no parameter can be named "token", even encoded.
    if !query.contains(TOKEN_PARAM) && !query.contains('%') {
        return Ok((None, (!query.is_empty()).then_some(Cow::Borrowed(query))));
    }
    let mut token: Option<Cow<'_, str>> = None;
    let mut rest = String::new();
    let mut stripped = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode_form(key) == TOKEN_PARAM {
            let value = decode_form(value);
            match &token {
                Some(t) if *t != value => return Err(GateError::AmbiguousToken),
                _ => token = Some(value),
            }
            stripped = true;
            continue;
        }
        if pair.is_empty() {
            continue;
        }
        if !rest.is_empty() {
            rest.push('&');
        }
        rest.push_str(pair);
    }
    let rest = if !stripped {
        (!query.is_empty()).then_some(Cow::Borrowed(query))
    } else {
        (!rest.is_empty()).then_some(Cow::Owned(rest))
    };
    Ok((token, rest))
}

fn decode_form(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let spaced = s.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(q: &str) -> (Option<String>, Option<String>) {
        let (t, r) = split_token_param(q).unwrap();
        (t.map(Cow::into_owned), r.map(Cow::into_owned))
    }

    #[test]
    fn strips_the_token_parameter_only() {
        assert_eq!(split("a=1&b=2"), (None, Some("a=1&b=2".into())));
        assert_eq!(split("token=abc"), (Some("abc".into()), None));
        assert_eq!(
            split("a=1&token=abc&b=%20"),
            (Some("abc".into()), Some("a=1&b=%20".into()))
        );
        assert_eq!(
            split("%74oken=abc&tokens=1"),
            (Some("abc".into()), Some("tokens=1".into()))
        );
        assert_eq!(split("token=a%2Bb+c"), (Some("a+b c".into()), None));
        assert_eq!(split("token=x&token=x"), (Some("x".into()), None));
        assert!(matches!(
            split_token_param("token=x&token=y"),
            Err(GateError::AmbiguousToken)
        ));
    }

    #[test]
    fn header_and_parameter_must_agree() {
        let mut h = HeaderMap::new();
        h.insert(X_AUTH_TOKEN, "abc".parse().unwrap());
        assert_eq!(
            presented(&h, Some("token=abc"), true)
                .unwrap()
                .token
                .as_deref(),
            Some("abc")
        );
        assert!(matches!(
            presented(&h, Some("token=abd"), true),
            Err(GateError::AmbiguousToken)
        ));
        h.append(X_AUTH_TOKEN, "abc".parse().unwrap());
        assert!(matches!(
            presented(&h, None, true),
            Err(GateError::AmbiguousToken)
        ));
    }

    fn with_authorization(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_is_a_third_place_for_the_same_credential() {
        let h = with_authorization(&["Bearer abc"]);
        let p = presented(&h, None, true).unwrap();
        assert_eq!((p.token.as_deref(), p.bearer), (Some("abc"), true));
        // Not read on a public route: the upstream's header.
        let p = presented(&h, None, false).unwrap();
        assert_eq!((p.token, p.bearer), (None, false));
        // The same value elsewhere is the same credential; another value is ambiguous.
        let mut same = with_authorization(&["bearer abc"]);
        same.insert(X_AUTH_TOKEN, "abc".parse().unwrap());
        assert!(presented(&same, Some("token=abc"), true).unwrap().bearer);
        assert!(matches!(
            presented(&same, Some("token=abd"), true),
            Err(GateError::AmbiguousToken)
        ));
        let mut other = with_authorization(&["Bearer abd"]);
        other.insert(X_AUTH_TOKEN, "abc".parse().unwrap());
        assert!(matches!(
            presented(&other, None, true),
            Err(GateError::AmbiguousToken)
        ));
        // Another scheme is not a credential of ucgate's.
        let basic = with_authorization(&["Basic YTpi"]);
        let p = presented(&basic, None, true).unwrap();
        assert_eq!((p.token, p.bearer), (None, false));
        // A Bearer that is not one, or one among others.
        for (bad, invalid) in [
            (&["Bearer"][..], true),
            (&["Bearer a b"], true),
            (&["Bearer a", "Bearer b"], false),
            (&["Basic YTpi", "Bearer a"], false),
        ] {
            match presented(&with_authorization(bad), None, true) {
                Err(GateError::TokenInvalid) if invalid => {}
                Err(GateError::AmbiguousToken) if !invalid => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
