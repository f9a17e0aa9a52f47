//! What a request presents (a token in the `X-Auth-Token` header or the `token` query
//! parameter), and what it proved.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderMap;

use super::shared::SharedMatch;
use super::token::{Claims, TokenError};
use crate::error::GateError;
use crate::identity::X_AUTH_TOKEN;

/// The query parameter a token may come in (XiVO's clients use it for downloads and WebSockets).
const TOKEN_PARAM: &str = "token";

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
    /// The kind, for logs and metrics: `none`, `shared`, `shared-previous` or `uc`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Anonymous => "none",
            Credential::Shared(SharedMatch::Current) => "shared",
            Credential::Shared(SharedMatch::Previous) => "shared-previous",
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
}

/// Finds the token in the `X-Auth-Token` header or the `token` query parameter. Several headers,
/// several differing parameters, or a header and a differing parameter are ambiguous
/// (`AmbiguousToken`): an upstream could otherwise read a different one than ucgate checked. A
/// header that is not visible ASCII is `TokenInvalid`.
pub fn presented<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Presented<'a>, GateError> {
    let mut values = headers.get_all(X_AUTH_TOKEN).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(GateError::AmbiguousToken);
    }
    let header = header
        .map(|v| v.to_str().map_err(|_| GateError::TokenInvalid))
        .transpose()?;
    let (param, query) = match query {
        Some(q) => split_token_param(q)?,
        None => (None, None),
    };
    let token = match (header, param) {
        (Some(h), Some(p)) if h != p => return Err(GateError::AmbiguousToken),
        (Some(h), _) => Some(Cow::Borrowed(h)),
        (None, p) => p,
    };
    Ok(Presented { token, query })
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
            presented(&h, Some("token=abc")).unwrap().token.as_deref(),
            Some("abc")
        );
        assert!(matches!(
            presented(&h, Some("token=abd")),
            Err(GateError::AmbiguousToken)
        ));
        h.append(X_AUTH_TOKEN, "abc".parse().unwrap());
        assert!(matches!(
            presented(&h, None),
            Err(GateError::AmbiguousToken)
        ));
    }
}
