//! JOSE rules beyond what jsonwebtoken checks: the protected header's extensions (RFC 7515),
//! for every JWT ucgate accepts, UC tokens and identity providers' tokens alike; and the date
//! claims of identity providers' tokens (RFC 7519 §2, NumericDate).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Latest NumericDate accepted: 9999-12-31T23:59:59Z. Later values are no date a token needs,
/// and float values that large have lost their seconds.
const LAST_DATE: f64 = 253_402_300_799.0;

/// Why a protected header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the header is not base64url JSON")]
    Malformed,
    /// `crit` (RFC 7515 §4.1.11): extensions the recipient must understand. ucgate understands
    /// none, so any `crit` makes the token invalid.
    #[error("the header lists critical extensions ucgate does not understand")]
    Critical,
    /// `b64` (RFC 7797): an unencoded payload, an extension ucgate does not implement.
    #[error("the header asks for an unencoded payload")]
    Unencoded,
    /// `zip` (RFC 7516 §4.1.3) belongs to JWE; a JWS carrying it is invalid.
    #[error("the header asks for compression")]
    Compressed,
}

/// Checks the protected header of a compact JWS. Keys named in the header (`jku`, `x5u`, `jwk`,
/// `x5c`) are never followed nor used: keys come from the configuration or the provider's JWKS
/// only (jsonwebtoken ignores them too), so they need no refusal here.
pub fn check_header(token: &str) -> Result<(), HeaderError> {
    let encoded = token.split('.').next().unwrap_or("");
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| HeaderError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| HeaderError::Malformed)?;
    if header.contains_key("crit") {
        return Err(HeaderError::Critical);
    }
    if header.contains_key("b64") {
        return Err(HeaderError::Unencoded);
    }
    if header.contains_key("zip") {
        return Err(HeaderError::Compressed);
    }
    Ok(())
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, an integer or not (fractions are cut).
/// `None` for anything else: strings, booleans, negative or out-of-range numbers.
pub fn numeric_date(value: &Value) -> Option<u64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(seconds) = n.as_u64() {
        return (seconds as f64 <= LAST_DATE).then_some(seconds);
    }
    n.as_f64()
        .filter(|s| s.is_finite() && (0.0..=LAST_DATE).contains(s))
        .map(|s| s as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str) -> String {
        format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(header))
    }

    #[test]
    fn header_extensions_are_refused() {
        assert_eq!(
            check_header(&token(r#"{"alg":"HS256","typ":"JWT"}"#)),
            Ok(())
        );
        // Keys in the header are ignored, not refused.
        assert_eq!(
            check_header(&token(r#"{"alg":"RS256","jku":"http://x/","kid":"k"}"#)),
            Ok(())
        );
        for (header, error) in [
            (
                r#"{"alg":"RS256","crit":["urn:example:must-understand"],"urn:example:must-understand":1}"#,
                HeaderError::Critical,
            ),
            (r#"{"alg":"RS256","crit":[]}"#, HeaderError::Critical),
            (r#"{"alg":"RS256","crit":["exp"]}"#, HeaderError::Critical),
            (
                r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
                HeaderError::Critical,
            ),
            (r#"{"alg":"HS256","b64":true}"#, HeaderError::Unencoded),
            (r#"{"alg":"HS256","zip":"DEF"}"#, HeaderError::Compressed),
        ] {
            assert_eq!(check_header(&token(header)), Err(error), "{header}");
        }
        for malformed in ["", "!!!.e30.x", "bm90IGpzb24.e30.x", "WzFd.e30.x"] {
            assert_eq!(
                check_header(malformed),
                Err(HeaderError::Malformed),
                "{malformed}"
            );
        }
    }

    #[test]
    fn numeric_dates_are_integers_or_fractions() {
        let date = |json: &str| numeric_date(&serde_json::from_str(json).unwrap());
        assert_eq!(date("1796023847"), Some(1_796_023_847));
        assert_eq!(date("1796023847.763"), Some(1_796_023_847));
        assert_eq!(date("0"), Some(0));
        assert_eq!(date("1.5e9"), Some(1_500_000_000));
        for refused in [
            "\"1796023847\"",
            "true",
            "null",
            "-1",
            "-0.5",
            "1e300",
            "18446744073709551615",
            "253402300800",
            "[1]",
        ] {
            assert_eq!(date(refused), None, "{refused}");
        }
    }
}
