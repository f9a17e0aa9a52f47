//! Issue 3, UC tokens: the login/password exchange, JWT validation (expired, tampered, wrongly
//! signed, `alg: none`, algorithm confusion, bad claims), check, logout and revocation across a
//! reload, route profiles, identity headers upstream, the brute-force lock-out, `hash-password`,
//! EdDSA and RS256 keys, metrics, and secrets kept out of logs and error bodies.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SIGNING_KEY: &str = "uc-tokens-SIGNING-key-5cT9wq0Lr8Zk2mVx7bN4";
const OTHER_KEY: &str = "another-signing-key-J3kd92LxQm0Pz7Rt5Vw1yB";
const LOGIN: &str = "/xuc/api/2.0/auth/login";
const CHECK: &str = "/xuc/api/2.0/auth/check";
const LOGOUT: &str = "/xuc/api/2.0/auth/logout";

const ALICE_PW: &str = "alice-PW-q8Zr!secret";
const ADAM_PW: &str = "adam-PW-m3Lx?secret";
const CAROL_PW: &str = "carol-PW-t6Vn#secret";
const BOB_PW: &str = "bob-PW-w2Hs&secret";
const NINA_PW: &str = "nina-PW-p7Kc%secret";
const EMMA_PW: &str = "emma-PW-d4Fj@secret";
const DAVE_PW: &str = "dave-PW-r5Gq*secret";
const WRONG_PW: &str = "wrong-PW-z1Yb^guess";

/// Every password a test may send: none may ever show in a log or a body.
const PASSWORDS: &[&str] = &[
    ALICE_PW, ADAM_PW, CAROL_PW, BOB_PW, NINA_PW, EMMA_PW, DAVE_PW, WRONG_PW,
];

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// An argon2id PHC hash, as `ucgate hash-password` makes it (same crate, default parameters).
fn hash(password: &str) -> String {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

fn user(login: &str, password: Option<&str>, cti: bool, profile: Option<&str>) -> String {
    let mut s = format!(
        "[[user]]\nlogin = {}\ncti_enabled = {cti}\n",
        toml_str(login)
    );
    if let Some(pw) = password {
        s.push_str(&format!("password_hash = {}\n", toml_str(&hash(pw))));
    }
    if let Some(p) = profile {
        s.push_str(&format!("profile = {}\n", toml_str(p)));
    }
    s.push('\n');
    s
}

/// alice (agent), adam (admin), carol (agent); bob (CTI login disabled), nina (no profile),
/// emma (empty profile), sso (no password: SSO only).
fn users_toml() -> String {
    static USERS: OnceLock<String> = OnceLock::new();
    USERS
        .get_or_init(|| {
            [
                user("alice", Some(ALICE_PW), true, Some("agent"))
                    .replace("\n\n", "\nname = \"Alice Martin\"\n\n"),
                user("adam", Some(ADAM_PW), true, Some("admin")),
                user("carol", Some(CAROL_PW), true, Some("agent")),
                user("bob", Some(BOB_PW), false, Some("agent")),
                user("nina", Some(NINA_PW), true, None),
                user("emma", Some(EMMA_PW), true, Some("")),
                user("sso", None, true, Some("agent")),
            ]
            .concat()
        })
        .clone()
}

/// One upstream behind:
/// - `/uc/`      accept uc, upstream_auth shared
/// - `/ucnone/`  accept uc, upstream_auth none
/// - `/admin/`   accept uc, profiles = ["admin"], upstream_auth none
/// - `/both/`    accept shared and uc, upstream_auth shared
fn config(up: &Upstream, tokens: &str, login: &str) -> ConfigBuilder {
    let u = up.url();
    ConfigBuilder::new()
        .server("watch_interval = \"0s\"")
        .route(route("uc", "/uc/", &u).accept(&["uc"]))
        .route(
            route("ucnone", "/ucnone/", &u)
                .accept(&["uc"])
                .upstream_auth("none"),
        )
        .route(
            route("admin", "/admin/", &u)
                .accept(&["uc"])
                .upstream_auth("none")
                .line("profiles = [\"admin\"]"),
        )
        .route(route("both", "/both/", &u).accept(&["shared", "uc"]))
        .raw(&format!(
            "[tokens]\n{tokens}\n\n[users]\nfile = \"users.toml\"\n\n[login]\n{login}"
        ))
}

/// The default `[tokens]`: HS256, one hour, no leeway.
const TOKENS: &str = "ttl = \"1h\"\nleeway = \"0s\"";
/// The default `[login]`: a lock-out far away (every test client is 127.0.0.1), small bodies.
const LOGIN_CFG: &str = "max_failures = 1000\nmax_body = 1024";

async fn start_with(tokens: &str, login: &str) -> (Upstream, Ucgate) {
    let up = Upstream::start().await;
    let gate = Ucgate::builder(config(&up, tokens, login).build())
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", users_toml())
        .start()
        .await;
    (up, gate)
}

async fn start() -> (Upstream, Ucgate) {
    start_with(TOKENS, LOGIN_CFG).await
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn post_login(gate: &Ucgate, body: Value) -> reqwest::Response {
    post_login_from(&client(), gate, body).await
}

async fn post_login_from(http: &reqwest::Client, gate: &Ucgate, body: Value) -> reqwest::Response {
    http.post(gate.url(LOGIN)).json(&body).send().await.unwrap()
}

/// Logs in and returns the whole answer, checked: exactly `login`, `token`, `TTL`.
async fn login_ok(gate: &Ucgate, body: Value) -> Value {
    let response = post_login(gate, body.clone()).await;
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "login {body}: {text}");
    assert_eq!(content_type.unwrap(), "application/json");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&String> = answer.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["TTL", "login", "token"], "{answer}");
    assert_eq!(answer["login"], body["login"]);
    answer
}

async fn token_for(gate: &Ucgate, login: &str, password: &str) -> String {
    let answer = login_ok(gate, json!({ "login": login, "password": password })).await;
    answer["token"].as_str().unwrap().to_owned()
}

async fn check(gate: &Ucgate, token: &str) -> reqwest::Response {
    get(gate, CHECK, token).await
}

async fn logout(gate: &Ucgate, token: &str) -> reqwest::Response {
    client()
        .post(gate.url(LOGOUT))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap()
}

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64url_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {text:?}"),
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The JSON of one part of a JWT (0 header, 1 payload).
fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("a JWT has three parts");
    serde_json::from_slice(&b64url_decode(part)).unwrap()
}

/// `base64url(header).base64url(claims).signature`, by hand.
fn craft(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret), claims)
}

/// Claims as ucgate issues them, for `sub` with `profile`, expiring in an hour.
fn claims(sub: &str, profile: &str) -> Value {
    let iat = unix_now();
    json!({
        "iss": "ucgate", "sub": sub, "profile": profile, "method": "password",
        "iat": iat, "exp": iat + 3600, "jti": "0123456789abcdef0123456789abcdef",
    })
}

/// A token ucgate must accept: 200 on a UC route, with its identity upstream, and on check.
async fn assert_accepted(gate: &Ucgate, up: &Upstream, token: &str, login: &str) {
    let before = up.count();
    let response = get(gate, "/ucnone/accepted", token).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(up.count(), before + 1);
    let seen = up.last();
    assert_eq!(seen.path, "/ucnone/accepted");
    assert_eq!(seen.header("x-auth-user").as_deref(), Some(login));
    let response = check(gate, token).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["login"], login);
}

/// A token ucgate must refuse with 401 `code`, in the header or the query, on every UC route and
/// on check, without echoing it. The caller checks that the upstream saw nothing.
async fn assert_refused(gate: &Ucgate, token: &str, code: &str, what: &str) {
    for path in ["/uc/x", "/ucnone/x", "/admin/x", "/both/x", CHECK] {
        let response = get(gate, path, token).await;
        let www = response.headers().get("www-authenticate").cloned();
        let body = assert_error(response, 401, code).await;
        assert!(www.is_some(), "{what} on {path}: no WWW-Authenticate");
        assert_no_secret(&body.to_string(), &[token], what);
        let response = client()
            .get(gate.url(&format!("{path}?token={token}")))
            .send()
            .await
            .unwrap();
        let body = assert_error(response, 401, code).await;
        assert_no_secret(&body.to_string(), &[token], what);
    }
    let response = logout(gate, token).await;
    assert_error(response, 401, code).await;
}

/// `text` contains none of `secrets`, nor the signature of those that are JWTs.
fn assert_no_secret(text: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what}: a secret leaked: {text}");
        if let Some(signature) = secret.rsplit('.').next().filter(|s| s.len() >= 16) {
            assert!(
                !text.contains(signature),
                "{what}: a token signature leaked: {text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn login_issues_a_signed_token_with_the_expected_claims_and_ttl() {
    let (up, gate) = start().await;
    let answer = login_ok(&gate, json!({ "login": "alice", "password": ALICE_PW })).await;
    assert_eq!(answer["TTL"], 3600, "no expiration: tokens.ttl");
    let token = answer["token"].as_str().unwrap();

    let header = jwt_part(token, 0);
    assert_eq!(header["alg"], "HS256", "{header}");
    let c = jwt_part(token, 1);
    assert_eq!(c["iss"], "ucgate", "{c}");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["profile"], "agent");
    assert_eq!(c["method"], "password");
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 3600, "{c}");
    assert!(iat.abs_diff(unix_now()) < 60, "{c}");
    let jti = c["jti"].as_str().unwrap();
    assert!(jti.len() >= 16, "{c}");
    // The token is signed with the configured key: the test can verify it too.
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.set_issuer(&["ucgate"]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SIGNING_KEY.as_bytes()),
        &validation,
    )
    .expect("signed with tokens.signing_key_env");

    // Every token is new.
    let again = token_for(&gate, "alice", ALICE_PW).await;
    assert_ne!(again, token);
    assert_ne!(jwt_part(&again, 1)["jti"], jti);

    // `expiration` is honoured below tokens.ttl and capped above it.
    for (requested, ttl) in [(60, 60), (3600, 3600), (999_999, 3600)] {
        let answer = login_ok(
            &gate,
            json!({ "login": "adam", "password": ADAM_PW, "expiration": requested }),
        )
        .await;
        assert_eq!(answer["TTL"], ttl, "expiration {requested}");
        let c = jwt_part(answer["token"].as_str().unwrap(), 1);
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), ttl);
        assert_eq!(c["profile"], "admin");
    }
    assert_eq!(
        up.count(),
        0,
        "login is served by ucgate: {:#?}",
        up.requests()
    );
}

#[tokio::test]
async fn every_refused_login_gets_the_same_401() {
    let (up, gate) = start().await;
    let attempts = [
        (
            "wrong password",
            json!({ "login": "alice", "password": WRONG_PW }),
        ),
        (
            "unknown user",
            json!({ "login": "nobody", "password": ALICE_PW }),
        ),
        (
            "CTI disabled",
            json!({ "login": "bob", "password": BOB_PW }),
        ),
        (
            "no profile",
            json!({ "login": "nina", "password": NINA_PW }),
        ),
        (
            "empty profile",
            json!({ "login": "emma", "password": EMMA_PW }),
        ),
        (
            "no password hash",
            json!({ "login": "sso", "password": "" }),
        ),
        (
            "empty password",
            json!({ "login": "alice", "password": "" }),
        ),
        (
            "case of the login",
            json!({ "login": "Alice", "password": ALICE_PW }),
        ),
    ];
    let mut reference: Option<(Vec<(String, String)>, String)> = None;
    for (what, body) in attempts {
        let response = post_login(&gate, body).await;
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], "InvalidCredentials", "{what}: {text}");
        assert!(
            headers.iter().any(|(k, _)| k == "www-authenticate"),
            "{what}: {headers:?}"
        );
        assert_no_secret(&text, PASSWORDS, what);
        match &reference {
            None => reference = Some((headers, text)),
            Some((h, t)) => {
                assert_eq!(&text, t, "{what}: the body tells refusals apart");
                assert_eq!(&headers, h, "{what}: the headers tell refusals apart");
            }
        }
    }
    let response = post_login(&gate, json!({ "login": "alice", "password": WRONG_PW })).await;
    assert_error(response, 401, "InvalidCredentials").await;

    // The user who failed can still log in: one failure is no lock-out.
    token_for(&gate, "alice", ALICE_PW).await;
    assert_eq!(up.count(), 0);
    assert_eq!(
        metric(
            &gate,
            r#"ucgate_logins_total{method="password",outcome="failure"}"#
        )
        .await,
        9
    );
    assert_eq!(
        metric(
            &gate,
            r#"ucgate_logins_total{method="password",outcome="success"}"#
        )
        .await,
        1
    );
}

#[tokio::test]
async fn malformed_oversized_and_non_post_logins_are_refused() {
    let (up, gate) = start().await;
    let http = client();
    // Each with what the message says: what was expected, never what was sent.
    let not_json = "the body is not valid JSON, or holds a number out of range";
    let expected = r#"the body must be {"login": string, "password": string}"#;
    let bad_bodies: [(&[u8], &str); 11] = [
        (b"", not_json),
        (b"{", not_json),
        (b"not json", not_json),
        (br#"{"login": "alice"}"#, expected),
        (br#"{"password": "x"}"#, expected),
        (br#"{"login": 1, "password": "x"}"#, expected),
        (br#"{"login": "alice", "password": 987654}"#, expected),
        (
            br#"{"login": "alice", "password": "x", "expiration": "soon"}"#,
            expected,
        ),
        (
            br#"{"login": "alice", "password": "x", "expiration": -1}"#,
            expected,
        ),
        (
            br#"{"login": "alice", "password": "x", "expiration": 1e400}"#,
            not_json,
        ),
        (
            br#"{"login": "alice", "password": "x", "expiration": 0}"#,
            r#""expiration" must be a positive whole number of seconds"#,
        ),
    ];
    for (body, message) in bad_bodies {
        let response = http
            .post(gate.url(LOGIN))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let answer = assert_error(response, 400, "InvalidJson").await;
        let text = answer["message"].as_str().unwrap();
        assert!(text.starts_with(message), "{text:?} for {body:?}");
        assert!(!text.contains("987654") && !text.contains("soon"), "{text}");
    }
    // The password in a refused body is not echoed.
    let response = http
        .post(gate.url(LOGIN))
        .body(format!(r#"{{"login": "alice", "password": "{ALICE_PW}", "#))
        .send()
        .await
        .unwrap();
    let body = assert_error(response, 400, "InvalidJson").await;
    assert_no_secret(&body.to_string(), PASSWORDS, "InvalidJson");

    // max_body = 1024: a valid JSON body past it is refused before it is parsed.
    let padding = "p".repeat(2048);
    let response = post_login(
        &gate,
        json!({ "login": "alice", "password": ALICE_PW, "pad": padding }),
    )
    .await;
    assert_error(response, 413, "RequestTooLarge").await;
    // Also when chunked, without a length.
    let chunk = format!(
        "{{\"login\":\"alice\",\"password\":\"{}\"}}",
        "x".repeat(2048)
    );
    let request = format!(
        "POST {LOGIN} HTTP/1.1\r\nHost: ucgate.test\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    raw_http(gate.addr(), request)
        .await
        .assert_error(413, "RequestTooLarge");

    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let response = client()
            .request(method.clone(), gate.url(LOGIN))
            .send()
            .await
            .unwrap();
        let allow = response.headers().get("allow").cloned();
        assert_error(response, 405, "MethodNotAllowed").await;
        assert_eq!(allow.unwrap(), "POST", "{method}");
    }
    assert_eq!(
        metric(
            &gate,
            r#"ucgate_logins_total{method="password",outcome="success"}"#
        )
        .await,
        0
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn hash_password_reads_stdin_and_its_hash_works_in_the_users_file() {
    const PASSWORD: &str = "from-STDIN-pw-8Hq2 with spaces";
    let hash_of = hash_password_run;
    let out = hash_of(&format!("{PASSWORD}\n"));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let hash = stdout.trim_end();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!stdout.contains(PASSWORD) && !String::from_utf8_lossy(&out.stderr).contains(PASSWORD));
    // Fresh salt every time.
    let other = hash_of(&format!("{PASSWORD}\r\n"));
    let other = String::from_utf8(other.stdout).unwrap();
    assert!(other.starts_with("$argon2id$") && other.trim_end() != hash);
    // Nothing to hash: an error, no hash.
    let empty = hash_of("");
    assert!(!empty.status.success());
    assert!(empty.stdout.is_empty(), "{empty:?}");

    let up = Upstream::start().await;
    let users = format!(
        "[[user]]\nlogin = \"zoe\"\npassword_hash = {}\ncti_enabled = true\nprofile = \"agent\"\n\
         [[user]]\nlogin = \"yann\"\npassword_hash = {}\ncti_enabled = true\nprofile = \"agent\"\n",
        toml_str(hash),
        toml_str(other.trim_end()),
    );
    let gate = Ucgate::builder(config(&up, TOKENS, LOGIN_CFG).build())
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", users)
        .start()
        .await;
    let token = token_for(&gate, "zoe", PASSWORD).await;
    // The line end is not part of the password.
    token_for(&gate, "yann", PASSWORD).await;
    assert_accepted(&gate, &up, &token, "zoe").await;
    for wrong in [&format!("{PASSWORD}\n"), "from-STDIN-pw-8Hq2", ""] {
        let response = post_login(&gate, json!({ "login": "zoe", "password": wrong })).await;
        assert_error(response, 401, "InvalidCredentials").await;
    }
}

// ---------------------------------------------------------------------------------------------
// Using a token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_uc_token_opens_uc_routes_with_the_identity_upstream_and_spoofed_headers_removed() {
    let (up, gate) = start().await;
    let token = token_for(&gate, "alice", ALICE_PW).await;

    // upstream_auth = "shared": the shared token replaces the UC token.
    let response = client()
        .post(gate.url("/uc/items?a=1"))
        .header("X-Auth-Token", &token)
        .header("X-Auth-User", "adam")
        .header("X-Auth-Method", "shared")
        .header("X_Auth_User", "adam")
        .header("x_auth_method", "kerberos")
        .header("X-Auth.User", "adam")
        .header("X_Auth_Token", SHARED_TOKEN)
        .header("X-Other", "kept")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["target"], "/uc/items?a=1");
    let seen = up.last();
    assert_eq!(up.count(), 1);
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-method"), ["password"]);
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    assert_eq!(seen.header("x-other").as_deref(), Some("kept"));
    assert_eq!(&seen.body[..], b"payload");
    let names = seen.header_names();
    for alias in [
        "x_auth_user",
        "x_auth_method",
        "x-auth.user",
        "x_auth_token",
    ] {
        assert!(!names.contains(&alias.to_owned()), "{alias}: {names:?}");
    }
    assert!(!seen.head_text().contains("adam"), "{}", seen.head_text());
    assert_no_secret(&seen.head_text(), &[&token], "upstream request");

    // upstream_auth = "none": no token at all upstream, the UC token included.
    let response = client()
        .get(gate.url("/ucnone/x"))
        .header("X-Auth-Token", &token)
        .header("X-Auth-User", "adam")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert!(seen.header_all("x-auth-token").is_empty(), "{seen:#?}");
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-method"), ["password"]);
    assert_no_secret(
        &seen.head_text(),
        &[&token, SHARED_TOKEN],
        "upstream_auth none",
    );

    // The token in the query: accepted, and the parameter never reaches upstream.
    let response = client()
        .get(gate.url(&format!("/uc/q?a=1&token={token}&b=x%20y&tokens=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.target, "/uc/q?a=1&b=x%20y&tokens=2");
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    let response = client()
        .get(gate.url(&format!("/ucnone/q?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(up.last().target, "/ucnone/q");
    assert_no_secret(&up.last().head_text(), &[&token], "query");

    // A route open to both credentials: the UC token there too; the shared token carries no user.
    let response = get(&gate, "/both/x", &token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(up.last().header_all("x-auth-user"), ["alice"]);
    let response = client()
        .get(gate.url("/both/x"))
        .header("X-Auth-Token", SHARED_TOKEN)
        .header("X-Auth-User", "adam")
        .header("X_Auth_Method", "password")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert!(seen.header_all("x-auth-user").is_empty(), "{seen:#?}");
    assert!(seen.header_all("x-auth-method").is_empty(), "{seen:#?}");
    assert!(!seen.header_names().contains(&"x_auth_method".to_owned()));
    assert_eq!(up.count(), 6);

    // Header and query: the same token is fine, a different one is ambiguous (400).
    let other = token_for(&gate, "adam", ADAM_PW).await;
    let response = client()
        .get(gate.url(&format!("/uc/y?token={token}")))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(up.count(), 7);
    for path in ["/uc/y", "/both/y", CHECK] {
        let response = client()
            .get(gate.url(&format!("{path}?token={other}")))
            .header("X-Auth-Token", &token)
            .send()
            .await
            .unwrap();
        let body = assert_error(response, 400, "AmbiguousToken").await;
        assert_no_secret(&body.to_string(), &[&token, &other], path);
        let response = client()
            .get(gate.url(&format!("{path}?token={other}&token={token}")))
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "AmbiguousToken").await;
    }
    assert_eq!(up.count(), 7, "{:#?}", up.requests());
}

#[tokio::test]
async fn route_profiles_restrict_uc_tokens_and_the_shared_token_is_refused_on_uc_only_routes() {
    let (up, gate) = start().await;
    let agent = token_for(&gate, "alice", ALICE_PW).await;
    let admin = token_for(&gate, "adam", ADAM_PW).await;

    let response = get(&gate, "/admin/x", &agent).await;
    let body = assert_error(response, 403, "Forbidden").await;
    assert_no_secret(&body.to_string(), &[&agent], "403");
    let response = client()
        .get(gate.url(&format!("/admin/x?token={agent}")))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "Forbidden").await;
    assert_eq!(up.count(), 0);

    let response = get(&gate, "/admin/x", &admin).await;
    assert_eq!(response.status(), 200);
    assert_eq!(up.last().header_all("x-auth-user"), ["adam"]);
    assert_eq!(up.count(), 1);
    // The agent's token is valid, only not here.
    let response = get(&gate, "/uc/x", &agent).await;
    assert_eq!(response.status(), 200);
    assert_eq!(up.count(), 2);

    // The shared token is a valid credential, but these routes accept UC tokens only.
    for path in ["/uc/x", "/ucnone/x", "/admin/x"] {
        let response = get(&gate, path, SHARED_TOKEN).await;
        let body = assert_error(response, 403, "Forbidden").await;
        assert_no_secret(&body.to_string(), &[SHARED_TOKEN], path);
    }
    // And it is no UC token for check or logout.
    assert_error(check(&gate, SHARED_TOKEN).await, 401, "TokenInvalid").await;
    assert_error(logout(&gate, SHARED_TOKEN).await, 401, "TokenInvalid").await;
    let response = get(&gate, "/both/x", SHARED_TOKEN).await;
    assert_eq!(response.status(), 200);
    assert_eq!(up.count(), 3, "{:#?}", up.requests());
    assert_no_secret(&gate.logs(), &[SHARED_TOKEN, &agent, &admin], "logs");
}

// ---------------------------------------------------------------------------------------------
// Check and logout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn check_answers_login_and_ttl_for_a_valid_token_only() {
    let (up, gate) = start().await;
    let answer = login_ok(
        &gate,
        json!({ "login": "alice", "password": ALICE_PW, "expiration": 600 }),
    )
    .await;
    let token = answer["token"].as_str().unwrap();
    let header_check = check(&gate, token).await;
    assert_eq!(header_check.status(), 200);
    assert_eq!(header_check.headers()["content-type"], "application/json");
    let query_check = client()
        .get(gate.url(&format!("{CHECK}?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(query_check.status(), 200);
    for body in [
        header_check.json::<Value>().await.unwrap(),
        query_check.json::<Value>().await.unwrap(),
    ] {
        let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["TTL", "login", "token"], "{body}");
        assert_eq!(body["login"], "alice");
        // A renewal: a fresh token of tokens.ttl (1h here), not what is left of the old one.
        assert_eq!(body["TTL"], 3600, "{body}");
        let renewed = body["token"].as_str().unwrap();
        assert_ne!(renewed, token);
        let (old, new) = (jwt_part(token, 1), jwt_part(renewed, 1));
        for same in ["sub", "profile", "method", "auth_time", "sid"] {
            assert_eq!(new[same], old[same], "{same}");
        }
        assert_eq!(check(&gate, renewed).await.status(), 200);
    }

    let response = client().get(gate.url(CHECK)).send().await.unwrap();
    assert_error(response, 401, "TokenMissing").await;
    for garbage in ["garbage", "a.b.c", "..", &token[..token.len() - 1]] {
        assert_error(check(&gate, garbage).await, 401, "TokenInvalid").await;
    }
    let response = client().post(gate.url(CHECK)).send().await.unwrap();
    assert_error(response, 405, "MethodNotAllowed").await;
    let response = client().get(gate.url(LOGOUT)).send().await.unwrap();
    assert_error(response, 405, "MethodNotAllowed").await;
    let response = client().post(gate.url(LOGOUT)).send().await.unwrap();
    assert_error(response, 401, "TokenMissing").await;
    assert_eq!(up.count(), 0);
}

/// `ucgate_token_cache_entries`: what the validation cache holds, for sizing
/// `tokens.cache_capacity` (each token once, however often it is used).
#[tokio::test]
async fn the_validation_cache_s_size_is_exported() {
    let (_up, gate) = start().await;
    let first = token_for(&gate, "alice", ALICE_PW).await;
    let second = token_for(&gate, "alice", ALICE_PW).await;
    for token in [&first, &second, &first, &second] {
        assert_eq!(get(&gate, "/uc/x", token).await.status(), 200);
    }
    assert_eq!(metric(&gate, "ucgate_token_cache_entries").await, 2);
}

#[tokio::test]
async fn logout_revokes_a_cached_token_everywhere_and_no_other() {
    let (up, gate) = start().await;
    let token = token_for(&gate, "alice", ALICE_PW).await;
    let second = token_for(&gate, "alice", ALICE_PW).await;
    // Validated and cached before the logout.
    for _ in 0..2 {
        assert_eq!(get(&gate, "/uc/x", &token).await.status(), 200);
    }
    assert_eq!(check(&gate, &token).await.status(), 200);
    assert!(metric(&gate, r#"ucgate_token_cache_total{outcome="hit"}"#).await >= 2);
    assert_eq!(up.count(), 2);

    let response = logout(&gate, &token).await;
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());
    // Logged as the issue is: the login quoted, as a string field (a login could hold a space).
    let line = gate.wait_log("token revoked").await;
    assert!(line.contains(r#"login="alice""#), "{line}");

    assert_refused(&gate, &token, "TokenInvalid", "logged out").await;
    assert_eq!(up.count(), 2, "{:#?}", up.requests());
    // The user's other token is not affected.
    assert_accepted(&gate, &up, &second, "alice").await;
    // Logging out with the token in the query works the same.
    let response = client()
        .post(gate.url(&format!("{LOGOUT}?token={second}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let before = up.count();
    assert_refused(&gate, &second, "TokenInvalid", "logged out by query").await;
    assert_eq!(up.count(), before);
    // Logging in again gives a working token.
    let fresh = token_for(&gate, "alice", ALICE_PW).await;
    assert_accepted(&gate, &up, &fresh, "alice").await;
}

#[tokio::test]
async fn revocations_survive_a_sighup_reload_which_also_reloads_the_users_file() {
    let (up, gate) = start().await;
    let revoked = token_for(&gate, "alice", ALICE_PW).await;
    let revoked_uncached = token_for(&gate, "adam", ADAM_PW).await;
    let kept = token_for(&gate, "alice", ALICE_PW).await;
    assert_eq!(get(&gate, "/uc/x", &revoked).await.status(), 200);
    assert_eq!(logout(&gate, &revoked).await.status(), 204);
    assert_eq!(logout(&gate, &revoked_uncached).await.status(), 204);
    let response = post_login(&gate, json!({ "login": "dave", "password": DAVE_PW })).await;
    assert_error(response, 401, "InvalidCredentials").await;

    // A new user and a new route, so that the reload is observable.
    let users = format!(
        "{}{}",
        users_toml(),
        user("dave", Some(DAVE_PW), true, Some("agent"))
    );
    std::fs::write(gate.dir().join("users.toml"), users).unwrap();
    let config = config(&up, TOKENS, LOGIN_CFG)
        .route(route("after", "/after/", &up.url()).accept(&["uc"]))
        .build();
    std::fs::write(&gate.config_path, config).unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log("configuration reloaded").await;

    let dave = token_for(&gate, "dave", DAVE_PW).await;
    assert_accepted(&gate, &up, &dave, "dave").await;
    let response = get(&gate, "/after/x", &kept).await;
    assert_eq!(response.status(), 200, "the reloaded config is in use");
    assert_eq!(up.last().header_all("x-auth-user"), ["alice"]);
    let before = up.count();
    assert_refused(&gate, &revoked, "TokenInvalid", "revoked before reload").await;
    assert_refused(
        &gate,
        &revoked_uncached,
        "TokenInvalid",
        "revoked, never used",
    )
    .await;
    let response = get(&gate, "/after/x", &revoked).await;
    assert_error(response, 401, "TokenInvalid").await;
    assert_eq!(up.count(), before, "{:#?}", up.requests());
    // Tokens issued before the reload stay valid.
    assert_accepted(&gate, &up, &kept, "alice").await;
}

/// A reload through a configuration without `[tokens]` (UC tokens switched off for a while, or
/// a config file caught half-written) and back must not bring logged-out tokens back to life:
/// without a revocations file, memory is all that remembers them.
#[tokio::test]
async fn revocations_survive_a_reload_through_a_configuration_without_tokens() {
    let (up, gate) = start().await;
    let revoked = token_for(&gate, "alice", ALICE_PW).await;
    let kept = token_for(&gate, "adam", ADAM_PW).await;
    assert_eq!(logout(&gate, &revoked).await.status(), 204);
    assert_refused(&gate, &revoked, "TokenInvalid", "revoked").await;

    let shared_only = ConfigBuilder::new()
        .server("watch_interval = \"0s\"")
        .route(route("both", "/both/", &up.url()).accept(&["shared"]))
        .build();
    std::fs::write(&gate.config_path, shared_only).unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log_count("configuration reloaded", 1).await;
    // Twice without UC tokens: what is kept passes from one such generation to the next.
    gate.signal(libc::SIGHUP);
    gate.wait_log_count("configuration reloaded", 2).await;
    let response = get(&gate, "/uc/x", &kept).await;
    assert_error(response, 404, "NoRoute").await;

    std::fs::write(&gate.config_path, config(&up, TOKENS, LOGIN_CFG).build()).unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log_count("configuration reloaded", 3).await;
    assert_accepted(&gate, &up, &kept, "adam").await;
    let before = up.count();
    assert_refused(
        &gate,
        &revoked,
        "TokenInvalid",
        "revoked before the reloads",
    )
    .await;
    let response = get(&gate, "/both/x", &revoked).await;
    assert_error(response, 401, "TokenInvalid").await;
    assert_eq!(up.count(), before, "{:#?}", up.requests());
}

// ---------------------------------------------------------------------------------------------
// Forged and expired tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forged_tokens_are_refused_and_never_reach_the_upstream() {
    let (up, gate) = start().await;
    let key = SIGNING_KEY.as_bytes();
    let token = token_for(&gate, "alice", ALICE_PW).await;
    let genuine = jwt_part(&token, 1);
    let [header_b64, payload_b64, signature] = token.split('.').collect::<Vec<_>>()[..] else {
        panic!("{token}")
    };

    // Controls: the forging below is sound, since what it signs with the right key is accepted.
    assert_accepted(&gate, &up, &hs256(key, &claims("adam", "admin")), "adam").await;
    assert_accepted(&gate, &up, &hs256(key, &genuine), "alice").await;
    let resigned = craft(&json!({"alg": "HS256", "typ": "JWT"}), &genuine, "");
    let resigned = {
        let signing_input = resigned.trim_end_matches('.');
        format!("{signing_input}.{}", token_signature(signing_input, key))
    };
    assert_accepted(&gate, &up, &resigned, "alice").await;
    up.clear();

    let mut escalated = genuine.clone();
    escalated["profile"] = json!("admin");
    escalated["sub"] = json!("adam");
    let mut extended = genuine.clone();
    extended["exp"] = json!(genuine["exp"].as_u64().unwrap() + 86_400);
    let mut no_exp = claims("alice", "agent");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_sub = claims("alice", "agent");
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut no_profile = claims("alice", "agent");
    no_profile.as_object_mut().unwrap().remove("profile");
    let mut string_exp = claims("alice", "agent");
    string_exp["exp"] = json!("9999999999");
    let mut float_exp = claims("alice", "agent");
    float_exp["exp"] = json!(9_999_999_999.5);
    let mut negative_exp = claims("alice", "agent");
    negative_exp["exp"] = json!(-1);
    let mut wrong_issuer = claims("alice", "agent");
    wrong_issuer["iss"] = json!("evil");
    let mut no_issuer = claims("alice", "agent");
    no_issuer.as_object_mut().unwrap().remove("iss");
    let mut unknown_method = claims("alice", "agent");
    unknown_method["method"] = json!("magic");
    // Signed with the key but not as ucgate signs (the key leaked): of a session starting
    // after the token (check would renew it forever), issued in the future, a login or
    // profile that is no header value (check would renew it, signing a new token of it).
    let mut endless = claims("alice", "agent");
    endless["auth_time"] = json!(unix_now() + 1_000_000_000);
    let mut future = claims("alice", "agent");
    future["iat"] = json!(unix_now() + 600);
    future["exp"] = json!(unix_now() + 1200);
    let crlf_login = claims("demo\r\nX-Auth-User: root", "agent");
    let crlf_profile = claims("alice", "agent\r\nX-Auth-User: root");

    let flipped = {
        let mut s = signature.to_owned();
        let first = if s.starts_with('A') { "B" } else { "A" };
        s.replace_range(0..1, first);
        s
    };
    let none = |alg: &str, sig: &str| craft(&json!({"alg": alg, "typ": "JWT"}), &genuine, sig);
    let forged: Vec<(&str, String)> = vec![
        (
            "payload tampered (sub, profile)",
            format!(
                "{header_b64}.{}.{signature}",
                b64url(escalated.to_string().as_bytes())
            ),
        ),
        (
            "payload tampered (exp)",
            format!(
                "{header_b64}.{}.{signature}",
                b64url(extended.to_string().as_bytes())
            ),
        ),
        (
            "signature tampered",
            format!("{header_b64}.{payload_b64}.{flipped}"),
        ),
        ("signature removed", format!("{header_b64}.{payload_b64}.")),
        ("signature only", format!("{header_b64}.{payload_b64}")),
        ("wrong key", hs256(OTHER_KEY.as_bytes(), &genuine)),
        ("alg none, no signature", none("none", "")),
        ("alg None", none("None", "")),
        ("alg NONE", none("NONE", "")),
        ("alg none, genuine signature", none("none", signature)),
        (
            "HS384 with the key",
            sign(Algorithm::HS384, &EncodingKey::from_secret(key), &genuine),
        ),
        (
            "HS512 with the key",
            sign(Algorithm::HS512, &EncodingKey::from_secret(key), &genuine),
        ),
        ("missing exp", hs256(key, &no_exp)),
        ("exp as a string", hs256(key, &string_exp)),
        ("exp as a float", hs256(key, &float_exp)),
        ("negative exp", hs256(key, &negative_exp)),
        ("wrong issuer", hs256(key, &wrong_issuer)),
        ("missing issuer", hs256(key, &no_issuer)),
        ("missing sub", hs256(key, &no_sub)),
        ("missing profile", hs256(key, &no_profile)),
        ("unknown method", hs256(key, &unknown_method)),
        ("a session starting after its token", hs256(key, &endless)),
        ("issued in the future", hs256(key, &future)),
        ("CR LF in the login", hs256(key, &crlf_login)),
        ("CR LF in the profile", hs256(key, &crlf_profile)),
        ("not a JWT", "not-a-jwt".into()),
        ("four parts", format!("{token}.{signature}")),
    ];
    for (what, forged) in &forged {
        assert_refused(&gate, forged, "TokenInvalid", what).await;
    }
    // Expired long ago, correctly signed: expired, whatever the cache.
    let mut expired = claims("alice", "agent");
    expired["iat"] = json!(unix_now() - 7200);
    expired["exp"] = json!(unix_now() - 3600);
    assert_refused(&gate, &hs256(key, &expired), "TokenExpired", "expired").await;

    assert_eq!(up.count(), 0, "{:#?}", up.requests());
    // The genuine token still works after all this.
    assert_accepted(&gate, &up, &token, "alice").await;
    let secrets: Vec<&str> = forged.iter().map(|(_, t)| t.as_str()).collect();
    assert_no_secret(&gate.logs(), &secrets, "logs");
    assert_no_secret(&gate.logs(), &[&token, SIGNING_KEY], "logs");
}

/// HMAC-SHA256 of `input` under `key`, base64url: a JWT signature made without jsonwebtoken.
fn token_signature(input: &str, key: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(input.as_bytes())
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    b64url(&outer)
}

#[tokio::test]
async fn expired_tokens_are_refused_cached_or_not() {
    let (up, gate) = start().await;
    // 2 s (not 1): a token must be accepted right after login even if the clock ticks meanwhile.
    let login = json!({ "login": "alice", "password": ALICE_PW, "expiration": 2 });
    let cached = login_ok(&gate, login.clone()).await;
    assert_eq!(cached["TTL"], 2);
    let cached = cached["token"].as_str().unwrap().to_owned();
    let uncached = login_ok(&gate, login).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_accepted(&gate, &up, &cached, "alice").await;
    let before = up.count();

    // leeway = "0s": past exp, refused.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_refused(&gate, &cached, "TokenExpired", "expired, cached").await;
    assert_refused(&gate, &uncached, "TokenExpired", "expired, never used").await;
    assert_eq!(up.count(), before, "{:#?}", up.requests());
}

// ---------------------------------------------------------------------------------------------
// Asymmetric keys
// ---------------------------------------------------------------------------------------------

struct KeyPair {
    private_pem: String,
    public_pem: String,
}

fn ed25519() -> KeyPair {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    KeyPair {
        private_pem: pair.serialize_pem(),
        public_pem: pair.public_key_pem(),
    }
}

fn rsa(dir: &std::path::Path) -> KeyPair {
    let private = dir.join("rsa.key");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        out.stdout
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    let public = run(&["pkey", "-in", private.to_str().unwrap(), "-pubout"]);
    KeyPair {
        private_pem: std::fs::read_to_string(&private).unwrap(),
        public_pem: String::from_utf8(public).unwrap(),
    }
}

/// The PEM body of a key, decoded: its DER bytes.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let standard = b64
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    b64url_decode(&standard)
}

async fn start_asymmetric(alg: &str, keys: &KeyPair) -> (Upstream, Ucgate) {
    let up = Upstream::start().await;
    let tokens = format!(
        "algorithm = \"{alg}\"\nprivate_key = \"keys/private.pem\"\npublic_key = \"keys/public.pem\"\n\
         issuer = \"ucgate-test\"\nttl = \"10m\"\nleeway = \"30s\""
    );
    // No UCGATE_SIGNING_KEY: an asymmetric config needs none.
    let gate = Ucgate::builder(config(&up, &tokens, LOGIN_CFG).build())
        .file("users.toml", users_toml())
        .file("keys/private.pem", &keys.private_pem)
        .file("keys/public.pem", &keys.public_pem)
        .start()
        .await;
    (up, gate)
}

/// End to end with `alg`, then algorithm confusion: HS256 tokens whose secret is the public key.
async fn asymmetric_end_to_end(alg: Algorithm, name: &str, keys: KeyPair, other: KeyPair) {
    let (up, gate) = start_asymmetric(name, &keys).await;
    let answer = login_ok(&gate, json!({ "login": "alice", "password": ALICE_PW })).await;
    assert_eq!(answer["TTL"], 600);
    let token = answer["token"].as_str().unwrap().to_owned();
    assert_eq!(jwt_part(&token, 0)["alg"], name);
    let c = jwt_part(&token, 1);
    assert_eq!(c["iss"], "ucgate-test", "{c}");

    // Another component verifies it with the public key alone.
    let decoding = match alg {
        Algorithm::EdDSA => jsonwebtoken::DecodingKey::from_ed_pem(keys.public_pem.as_bytes()),
        _ => jsonwebtoken::DecodingKey::from_rsa_pem(keys.public_pem.as_bytes()),
    }
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_issuer(&["ucgate-test"]);
    let verified = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap();
    assert_eq!(verified.claims["sub"], "alice");

    let response = get(&gate, "/uc/x", &token).await;
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-method"), ["password"]);
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);

    let encoding = |pem: &str| {
        match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .unwrap()
    };
    let mut forged_claims = claims("adam", "admin");
    forged_claims["iss"] = json!("ucgate-test");
    forged_claims["exp"] = json!(forged_claims["iat"].as_u64().unwrap() + 600);
    // Controls: signed with the private key by someone else than ucgate, accepted; and the
    // leeway (30 s) keeps a token that expired 10 s ago.
    let control = sign(alg, &encoding(&keys.private_pem), &forged_claims);
    assert_accepted(&gate, &up, &control, "adam").await;
    let mut in_leeway = forged_claims.clone();
    in_leeway["exp"] = json!(unix_now() - 10);
    assert_accepted(
        &gate,
        &up,
        &sign(alg, &encoding(&keys.private_pem), &in_leeway),
        "adam",
    )
    .await;
    up.clear();

    // Logged out within the leeway (past exp): refused from then on, though the signature and
    // the leeway would still admit it.
    let mut late = claims("carol", "agent");
    late["iss"] = json!("ucgate-test");
    late["exp"] = json!(unix_now() - 5);
    let late = sign(alg, &encoding(&keys.private_pem), &late);
    assert_accepted(&gate, &up, &late, "carol").await;
    assert_eq!(logout(&gate, &late).await.status(), 204);
    assert_refused(&gate, &late, "TokenInvalid", "logged out within the leeway").await;
    up.clear();

    let mut past_leeway = forged_claims.clone();
    past_leeway["exp"] = json!(unix_now() - 120);
    let public_der = pem_der(&keys.public_pem);
    let forged: Vec<(&str, String)> = vec![
        (
            "HS256 keyed with the public PEM",
            hs256(keys.public_pem.as_bytes(), &forged_claims),
        ),
        (
            "HS256 keyed with the public PEM, no final newline",
            hs256(keys.public_pem.trim_end().as_bytes(), &forged_claims),
        ),
        (
            "HS256 keyed with the public DER",
            hs256(&public_der, &forged_claims),
        ),
        (
            "HS512 keyed with the public PEM",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(keys.public_pem.as_bytes()),
                &forged_claims,
            ),
        ),
        (
            "another private key",
            sign(alg, &encoding(&other.private_pem), &forged_claims),
        ),
        (
            "alg none",
            craft(&json!({"alg": "none"}), &forged_claims, ""),
        ),
        (
            "HS256 with a shared secret",
            hs256(SIGNING_KEY.as_bytes(), &forged_claims),
        ),
    ];
    for (what, forged) in &forged {
        assert_refused(&gate, forged, "TokenInvalid", what).await;
    }
    let past = sign(alg, &encoding(&keys.private_pem), &past_leeway);
    assert_refused(&gate, &past, "TokenExpired", "past the leeway").await;
    assert_eq!(up.count(), 0, "{:#?}", up.requests());
    assert_no_secret(&gate.logs(), &[&token, &control], "logs");
    assert!(
        !gate
            .logs()
            .contains(keys.private_pem.lines().nth(1).unwrap())
    );
}

#[tokio::test]
async fn eddsa_tokens_work_end_to_end_and_resist_algorithm_confusion() {
    asymmetric_end_to_end(Algorithm::EdDSA, "EdDSA", ed25519(), ed25519()).await;
}

#[tokio::test]
async fn rs256_tokens_work_end_to_end_and_resist_algorithm_confusion() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rsa(dir.path());
    let other = rsa(dir.path());
    asymmetric_end_to_end(Algorithm::RS256, "RS256", keys, other).await;
}

// ---------------------------------------------------------------------------------------------
// Brute force
// ---------------------------------------------------------------------------------------------

/// A client whose connections come from `127.0.0.N` (all of 127/8 is loopback on Linux), so that
/// the per-address and per-login limits can be told apart.
fn client_from(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from([127, 0, 0, n]))
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn attempt(gate: &Ucgate, from: u8, login: &str, password: &str) -> reqwest::Response {
    post_login_from(
        &client_from(from),
        gate,
        json!({ "login": login, "password": password }),
    )
    .await
}

async fn assert_fails(gate: &Ucgate, from: u8, login: &str) {
    let response = attempt(gate, from, login, WRONG_PW).await;
    assert_error(response, 401, "InvalidCredentials").await;
}

async fn assert_succeeds(gate: &Ucgate, from: u8, login: &str, password: &str) {
    let response = attempt(gate, from, login, password).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{login} from 127.0.0.{from}: {body}");
    assert!(
        body["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
}

async fn assert_locked(gate: &Ucgate, from: u8, login: &str, password: &str) {
    let response = attempt(gate, from, login, password).await;
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let body = assert_error(response, 429, "TooManyAttempts").await;
    assert!(body.get("token").is_none(), "{body}");
    assert_no_secret(&body.to_string(), PASSWORDS, "429");
    let retry = retry.expect("429 without Retry-After");
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
}

#[tokio::test]
async fn brute_force_locks_the_login_and_the_address_and_successes_reset_the_login() {
    let (up, gate) = start_with(
        TOKENS,
        "max_failures = 3\nwindow = \"5m\"\nlockout = \"5m\"\nmax_body = 1024",
    )
    .await;

    // Per login: three failures for alice from .2; then alice is locked from anywhere, even
    // with the right password, and nobody else is.
    for _ in 0..3 {
        assert_fails(&gate, 2, "alice").await;
    }
    assert_locked(&gate, 3, "alice", ALICE_PW).await;
    assert_locked(&gate, 4, "alice", WRONG_PW).await;
    assert_succeeds(&gate, 3, "adam", ADAM_PW).await;
    // Per address: .2 had three failures too.
    assert_locked(&gate, 2, "adam", ADAM_PW).await;

    // Per address across distinct logins (one failure each).
    for login in ["ghost1", "ghost2", "bob"] {
        assert_fails(&gate, 5, login).await;
    }
    assert_locked(&gate, 5, "adam", ADAM_PW).await;
    assert_locked(&gate, 5, "ghost4", WRONG_PW).await;
    assert_succeeds(&gate, 6, "adam", ADAM_PW).await;

    // A success resets the login's count: 2 failures, success, 2 failures: not locked.
    assert_fails(&gate, 7, "carol").await;
    assert_fails(&gate, 8, "carol").await;
    assert_succeeds(&gate, 9, "carol", CAROL_PW).await;
    assert_fails(&gate, 10, "carol").await;
    assert_fails(&gate, 11, "carol").await;
    assert_succeeds(&gate, 12, "carol", CAROL_PW).await;
    // ... and counting starts again from zero.
    for from in [13, 14, 15] {
        assert_fails(&gate, from, "carol").await;
    }
    assert_locked(&gate, 16, "carol", CAROL_PW).await;
    // A locked login does not lock the address it is tried from.
    assert_succeeds(&gate, 16, "adam", ADAM_PW).await;

    let series =
        |outcome: &str| format!(r#"ucgate_logins_total{{method="password",outcome="{outcome}"}}"#);
    assert_eq!(metric(&gate, &series("success")).await, 5);
    assert_eq!(metric(&gate, &series("failure")).await, 3 + 3 + 7);
    assert_eq!(metric(&gate, &series("locked")).await, 6);
    assert_eq!(metric(&gate, "ucgate_lockouts_total").await, 6);
    assert_eq!(up.count(), 0);
    assert_no_secret(&gate.logs(), PASSWORDS, "logs");
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_password_token_or_key_appears_in_debug_logs() {
    let (up, gate) = start().await;
    let mut tokens = Vec::new();
    for (login, password) in [("alice", ALICE_PW), ("adam", ADAM_PW)] {
        tokens.push(token_for(&gate, login, password).await);
    }
    for (login, password) in [
        ("alice", WRONG_PW),
        ("bob", BOB_PW),
        ("nina", NINA_PW),
        (ALICE_PW, ALICE_PW),
    ] {
        let response = post_login(&gate, json!({ "login": login, "password": password })).await;
        assert_eq!(response.status(), 401);
    }
    let response = client()
        .post(gate.url(LOGIN))
        .body(format!("{{\"login\":\"emma\",\"password\":\"{EMMA_PW}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (alice, adam) = (&tokens[0], &tokens[1]);
    assert_eq!(get(&gate, "/uc/x", alice).await.status(), 200);
    let response = client()
        .get(gate.url(&format!("/ucnone/x?token={adam}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(get(&gate, "/admin/x", alice).await.status(), 403);
    assert_eq!(check(&gate, alice).await.status(), 200);
    assert_eq!(logout(&gate, alice).await.status(), 204);
    assert_eq!(get(&gate, "/uc/x", alice).await.status(), 401);
    let forged = hs256(OTHER_KEY.as_bytes(), &claims("adam", "admin"));
    assert_eq!(get(&gate, "/uc/x", &forged).await.status(), 401);
    gate.signal(libc::SIGHUP);
    gate.wait_log("configuration reloaded").await;
    assert_eq!(get(&gate, "/uc/x", adam).await.status(), 200);
    assert_eq!(up.count(), 3);

    gate.wait_access_lines(15).await;
    let logs = gate.logs();
    assert!(
        logs.contains("DEBUG") || logs.contains("debug"),
        "UCGATE_LOG=debug is on"
    );
    assert!(logs.contains("token issued"), "{logs}");
    let mut secrets: Vec<&str> = PASSWORDS.to_vec();
    secrets.extend([alice.as_str(), adam.as_str(), forged.as_str()]);
    secrets.extend([SIGNING_KEY, SHARED_TOKEN]);
    assert_no_secret(&logs, &secrets, "logs");
    // Access lines log the path, never the query that carried the token.
    assert!(
        !logs.contains("token=ey") && !logs.contains("?token"),
        "{logs}"
    );
}

#[tokio::test]
async fn concurrent_guesses_do_not_get_past_the_lockout() {
    let (up, gate) = start_with(
        TOKENS,
        "max_failures = 3\nwindow = \"5m\"\nlockout = \"5m\"\nmax_body = 1024",
    )
    .await;
    // Many guesses at once for one login, each from its own address (so that no address limit
    // applies): the login is locked after 3 failures, whatever the concurrency. ucgate checks one
    // password per core at a time, so at most one guess per core beyond the third gets through.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let n = (4 * cores + 8).min(200);
    let guesses = (0..n as u8).map(|i| {
        let gate = &gate;
        async move {
            let response = attempt(gate, 40 + i, "alice", WRONG_PW).await;
            response.status().as_u16()
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let locked = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + locked, n, "{statuses:?}");
    assert!(
        checked < 3 + cores,
        "{checked} passwords checked, max_failures = 3, {cores} cores: {statuses:?}"
    );
    assert_locked(&gate, 60, "alice", ALICE_PW).await;
    assert_eq!(up.count(), 0);
}
