//! The properties the fuzz targets check (fuzz/fuzz_targets/*.rs include this file), also run by
//! tests/fuzz_regressions.rs on every input kept in tests/fuzz_regressions/<target>/. Each
//! function takes arbitrary bytes and panics when a property fails.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use ucgate::config::{Config, TokensConfig};
use ucgate::{TokenService, normalise_path, read_env_file};

/// A property check over arbitrary bytes: panics when the property fails.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name, for the regression test.
pub const TARGETS: [(&str, Check); 7] = [
    ("path", path),
    ("config", config),
    ("dotenv", dotenv),
    ("token", token),
    ("token_claims", token_claims),
    ("cas_xml", cas_xml),
    ("jose", jose),
];

/// `normalise_path`: never panics; what it accepts is a fixed point with no dot segment, no
/// empty segment, no encoded slash or backslash and no control character.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(out) = normalise_path(raw) else {
        return;
    };
    let again = normalise_path(&out)
        .unwrap_or_else(|e| panic!("{raw:?} gave {out:?}, which is refused: {e}"));
    assert_eq!(again, out, "{raw:?}: normalising twice changed {out:?}");
    assert!(out.starts_with('/'), "{raw:?} -> {out:?}");
    for bad in ["/../", "/./", "//", "\\"] {
        assert!(!out.contains(bad), "{raw:?} -> {out:?} has {bad:?}");
    }
    let upper = out.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%2E"] {
        assert!(!upper.contains(bad), "{raw:?} -> {out:?} has {bad:?}");
    }
    assert!(
        !out.bytes().any(|b| b < 0x20 || b == 0x7f),
        "{raw:?} -> {out:?} has a control character"
    );
    let segments: Vec<&str> = out[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i == segments.len() - 1;
        assert!(last || !seg.is_empty(), "{raw:?} -> {out:?}: empty segment");
        // `;` encoded is `;` to an upstream that decodes before splitting off parameters.
        let name = seg.split(';').next().unwrap_or("");
        let name = name.split("%3B").next().unwrap_or("");
        assert!(
            name != "." && name != "..",
            "{raw:?} -> {out:?}: dot segment {seg:?}"
        );
    }
}

/// `Config::parse`: never panics; an accepted configuration has normalised route prefixes
/// ending in `/`, and distinct route names and prefixes.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/nonexistent/ucgate-fuzz/ucgate.toml");
    let config = match Config::parse(file, text) {
        Ok(config) => config,
        Err(e) => {
            assert!(e.to_string().starts_with(&file.display().to_string()));
            return;
        }
    };
    let mut names = std::collections::HashSet::new();
    let mut prefixes = std::collections::HashSet::new();
    for route in &config.routes {
        assert!(
            route.prefix.starts_with('/') && route.prefix.ends_with('/'),
            "{:?}",
            route.prefix
        );
        assert_eq!(
            normalise_path(&route.prefix).as_deref(),
            Ok(route.prefix.as_str())
        );
        assert!(names.insert(route.name.clone()), "duplicate name accepted");
        assert!(
            prefixes.insert(route.prefix.clone()),
            "duplicate prefix accepted"
        );
        assert!(!route.timeout.is_zero());
    }
    assert!(!config.server.listen.is_empty());
    assert!(config.server.max_header_bytes >= 8192);
    assert!(config.tokens.is_none() || config.users.is_some());
}

/// Marker a seed puts in a value: an error message must never quote it.
pub const SECRET_MARKER: &str = "S3CR3T";

/// `read_env_file`: never panics; its errors never quote the file (which holds secrets). The
/// file is removed after each input (a file kept per process was left behind by every test run).
pub fn dotenv(data: &[u8]) {
    let file = std::env::temp_dir().join(format!(
        "ucgate-fuzz-dotenv-{}-{:?}.env",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&file, data).expect("write the dotenv file");
    let read = read_env_file(&file, "PLAY_AUTH_TOKEN");
    std::fs::remove_file(&file).expect("remove the dotenv file");
    match read {
        Ok(_) => {}
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.contains(SECRET_MARKER),
                "the error quotes the file: {message}"
            );
        }
    }
}

const SIGNING_KEY: &str = "fuzz-signing-key-0123456789abcdef-0123456789";

pub fn service() -> &'static TokenService {
    static SERVICE: OnceLock<TokenService> = OnceLock::new();
    SERVICE.get_or_init(|| {
        // SAFETY: set once, before any other thread of this process reads the environment.
        unsafe { std::env::set_var("UCGATE_FUZZ_SIGNING_KEY", SIGNING_KEY) };
        let config = TokensConfig {
            algorithm: ucgate::config::TokenAlgorithm::Hs256 {
                signing_key_env: "UCGATE_FUZZ_SIGNING_KEY".into(),
            },
            // About 136 years: the kept seeds (issued in 1970, expiring in 2100) stay valid
            // whatever the day, so that the claims' types are what is checked.
            ttl: Duration::from_secs(u32::MAX.into()),
            max_session: Duration::from_secs(u32::MAX.into()),
            ..TokensConfig::default()
        };
        TokenService::load(&config).expect("the token service loads")
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `TokenService::validate` on any string: never panics, never accepts (no key, no token).
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let outcome = service().validate(&text);
    assert!(outcome.is_err(), "{text:?} accepted without the key");
}

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len() * 4 / 3 + 3);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn hs256(message: &[u8]) -> Vec<u8> {
    let key = SIGNING_KEY.as_bytes();
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// The headers the first input byte picks from; only the first is a UC token's.
const HEADERS: [&str; 5] = [
    r#"{"alg":"HS256","typ":"JWT"}"#,
    r#"{"alg":"HS256"}"#,
    r#"{"alg":"HS256","typ":"at+jwt"}"#,
    r#"{"alg":"none","typ":"JWT"}"#,
    r#"{"alg":"HS512","typ":"JWT"}"#,
];

/// The first byte picks the header, the rest is the payload: the token signed with the key.
pub fn signed_token(data: &[u8]) -> Option<(&'static str, &[u8], String)> {
    let (&pick, payload) = data.split_first()?;
    let header = HEADERS[usize::from(pick) % HEADERS.len()];
    let input = format!("{}.{}", b64url(header.as_bytes()), b64url(payload));
    let token = format!("{input}.{}", b64url(&hs256(input.as_bytes())));
    Some((header, payload, token))
}

/// Claims signed with the right key (so the fuzzer gets past the signature): whatever is
/// accepted has the claims a UC token must have, with the right JSON types: no type confusion.
pub fn token_claims(data: &[u8]) {
    let Some((header, payload, token)) = signed_token(data) else {
        return;
    };
    let Ok(claims) = service().validate(&token) else {
        return;
    };
    assert_eq!(header, HEADERS[0], "accepted with header {header}");
    // Lossy: serde_json skips the strings of unknown claims without checking their UTF-8 (found
    // by this target; harmless, since ucgate reads only the typed claims below).
    let json: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(payload))
        .unwrap_or_else(|e| panic!("accepted claims that are not JSON ({e}): {payload:?}"));
    let exp = json["exp"]
        .as_u64()
        .expect("accepted without an integer exp");
    assert!(exp + 5 >= now(), "accepted an expired token: exp {exp}");
    assert_eq!(json["exp"].as_u64(), Some(claims.exp));
    assert_eq!(json["iss"].as_str(), Some("ucgate"));
    assert_eq!(json["sub"].as_str(), Some(&*claims.sub));
    assert_eq!(json["profile"].as_str(), Some(&*claims.profile));
    assert_eq!(json["method"].as_str(), Some(claims.method.as_str()));
    // The session, kept compactly, is written back as signed (renewals sign it, revocations
    // hash it): its `sid`, or the `jti` of a token older than sessions.
    let session = match json["sid"].as_str() {
        Some(sid) if !sid.is_empty() => sid,
        _ => json["jti"].as_str().expect("accepted without a string jti"),
    };
    assert_eq!(claims.sid.to_string(), session);
}

/// `parse_service_response`: never panics; a success names a plausible user.
pub fn cas_xml(data: &[u8]) {
    use ucgate::{CasOutcome, parse_service_response};
    match parse_service_response(data) {
        Ok(CasOutcome::Success(principal)) => {
            let user = principal.user.as_str();
            assert!(!user.is_empty() && user.len() <= 256, "{user:?}");
            assert!(
                !user.chars().any(char::is_control),
                "control character in {user:?}"
            );
            assert_eq!(principal.login(None), Ok(user));
            if let Some((name, _)) = principal.attributes.first() {
                let _ = principal.login(Some(name));
            }
        }
        Ok(CasOutcome::Failure(code)) => {
            assert!(
                !code.is_empty()
                    && code.len() <= 64
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "an echoed failure code that is not a plain identifier: {code:?}"
            );
        }
        Err(_) => {}
    }
}

/// `check_jws_header` and `numeric_date` (issue 14): never panic; a header that passes is
/// base64url JSON naming no `crit`, `b64` or `zip`; a date that passes is the number's whole
/// seconds, within 0 and year 9999.
pub fn jose(data: &[u8]) {
    use base64::Engine;
    let text = String::from_utf8_lossy(data);
    // As a compact token whose header is the input, and as the input itself.
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
    for token in [format!("{encoded}.e30.sig"), text.clone().into_owned()] {
        if ucgate::check_jws_header(&token).is_ok() {
            let segment = token.split('.').next().unwrap();
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(segment)
                .expect("a passing header is base64url");
            let header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&json).expect("a passing header is a JSON object");
            for key in ["crit", "b64", "zip"] {
                assert!(!header.contains_key(key), "{key} passed: {header:?}");
            }
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data)
        && let Some(date) = ucgate::numeric_date(&value)
    {
        let number = value.as_f64().expect("a date is a number");
        assert!(date <= 253_402_300_799, "{value}");
        assert_eq!(date, number.trunc() as u64, "{value}");
    }
}
