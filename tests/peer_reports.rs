//! Issue 14: faults found by replaying other auth proxies' bug reports (Traefik, oauth2-proxy,
//! Envoy, YARP, Authelia ...). Each test covers a class, not one input, and asserts both what
//! the client gets and what the upstream saw.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SIGNING_KEY: &str = "peer-reports-signing-key-0123456789abcdef";
const LOGIN: &str = "/xuc/api/2.0/auth/login";
const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

// ---------------------------------------------------------------------------------------------
// An upstream that does what the attacks need: it implements TRACE (the answer is the request
// it received, RFC 9110 §9.3.8) and accepts any protocol upgrade it is offered (101), after
// which it records whatever arrives through the tunnel.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Seen {
    heads: Vec<String>,
    tunnelled: Vec<u8>,
    connections: usize,
}

struct Reflector {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reflector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().unwrap().connections += 1;
                tokio::spawn(Self::serve(stream, shared.clone()));
            }
        });
        Self { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..head_end + length);
            seen.lock().unwrap().heads.push(head.clone());
            if lower.lines().any(|l| l.starts_with("upgrade:")) {
                let protocol = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("upgrade:"))
                    .unwrap()
                    .trim()
                    .to_owned();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                seen.lock().unwrap().tunnelled.extend_from_slice(&buf);
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    seen.lock()
                        .unwrap()
                        .tunnelled
                        .extend_from_slice(&chunk[..n]);
                }
                return;
            }
            let trace = head.starts_with("TRACE ");
            let (content_type, body) = if trace {
                ("message/http", head.clone())
            } else {
                ("text/plain", "ok".to_owned())
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().heads.clone()
    }

    fn tunnelled(&self) -> Vec<u8> {
        self.seen.lock().unwrap().tunnelled.clone()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }
}

/// The directory: `agent` (password `agent-pass`, profile `agent`).
fn users() -> String {
    let hash = String::from_utf8(hash_password_run("agent-pass\n").stdout).unwrap();
    format!(
        "[[user]]\nlogin = \"agent\"\npassword_hash = \"{}\"\ncti_enabled = true\nprofile = \"agent\"\n\n\
         [[user]]\nlogin = \"bob\"\npassword_hash = \"{}\"\ncti_enabled = true\nprofile = \"agent\"\n",
        hash.trim(),
        hash.trim()
    )
}

/// `/pub/` public, `/api/` shared token, `/uc/` UC tokens (shared token upstream), `/ws/`
/// WebSocket route for UC tokens and the shared token: all to `upstream`.
fn layout(upstream: &str) -> ConfigBuilder {
    ConfigBuilder::new()
        .route(route("pub", "/pub/", upstream).public())
        .route(route("api", "/api/", upstream))
        .route(route("uc", "/uc/", upstream).accept(&["uc"]))
        .route(
            route("ws", "/ws/", upstream)
                .accept(&["shared", "uc"])
                .websocket(),
        )
        .raw("[tokens]\n\n[users]\nfile = \"users.toml\"")
}

async fn start(config: String) -> Ucgate {
    Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", users())
        .start()
        .await
}

async fn uc_token(gate: &Ucgate) -> String {
    let response = client()
        .post(gate.url(LOGIN))
        .json(&serde_json::json!({"login": "agent", "password": "agent-pass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// 1. Methods whose answer reflects the request, and methods that make no sense here
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn reflecting_tunnelling_and_unknown_methods_are_refused_before_authentication() {
    let up = Reflector::start().await;
    let gate = start(layout(&up.url()).build()).await;
    let token = uc_token(&gate).await;
    let credentials: [&[(&str, &str)]; 3] = [
        &[],
        &[(X_AUTH_TOKEN, SHARED_TOKEN)],
        &[(X_AUTH_TOKEN, token.as_str())],
    ];
    for method in [
        "TRACE", "TRACK", "CONNECT", "DEBUG", "PROPFIND", "MKCOL", "LOCK", "PURGE", "BREW",
    ] {
        for path in ["/pub/x", "/api/x", "/uc/x", "/ws/x", "/nowhere", "/healthz"] {
            for headers in credentials {
                let r = raw_http(gate.addr(), raw_request(method, path, headers)).await;
                r.assert_error(405, "MethodNotAllowed");
                assert_eq!(r.header("allow"), Some(ALLOW), "{method} {path}");
                assert!(!r.text().contains(SHARED_TOKEN));
            }
        }
    }
    assert_eq!(up.connections(), 0, "{:?}", up.heads());
    // The methods that pass, all the way.
    for method in ALLOW.split(", ") {
        let r = raw_http(
            gate.addr(),
            raw_request(method, "/uc/x", &[(X_AUTH_TOKEN, token.as_str())]),
        )
        .await;
        assert_eq!(r.status, 200, "{method}: {}", r.text());
    }
    let heads = up.heads();
    assert_eq!(heads.len(), 7, "{heads:?}");
    for (head, method) in heads.iter().zip(ALLOW.split(", ")) {
        assert!(head.starts_with(&format!("{method} /uc/x ")), "{head}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Forwarding metadata from clients
// ---------------------------------------------------------------------------------------------

/// Every header by which a proxy describes the original request, as clients could send it.
const FORWARDING_CLAIMS: [(&str, &str); 30] = [
    ("Forwarded", "for=203.0.113.9;proto=https;host=evil.example"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Port", "8443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "evil.example"),
    ("X-Forwarded-Uri", "/admin/users"),
    ("X-Forwarded-Path", "/admin"),
    ("X-Forwarded-Method", "DELETE"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Ssl", "on"),
    (
        "X-Forwarded-Client-Cert",
        "Hash=deadbeef;Subject=\"CN=admin\"",
    ),
    ("X-Original-URL", "/admin/users"),
    ("X-Original-URI", "/admin/users"),
    ("X-Original-Host", "evil.example"),
    ("X-Original-Method", "DELETE"),
    ("X-Rewrite-URL", "/admin/users"),
    ("X-Envoy-Original-Path", "/admin/users"),
    ("X-Real-IP", "203.0.113.9"),
    ("X-Client-IP", "203.0.113.9"),
    ("X-Cluster-Client-IP", "203.0.113.9"),
    ("True-Client-IP", "203.0.113.9"),
    ("CF-Connecting-IP", "203.0.113.9"),
    ("Client-IP", "203.0.113.9"),
    ("X-Host", "evil.example"),
    ("X-Scheme", "https"),
    ("X-Url-Scheme", "https"),
    ("Front-End-Https", "on"),
    ("X_Forwarded_Prefix", "/admin"),
];

/// The names (lower case) of the forwarding headers an upstream received, with their values.
fn forwarding_seen(seen: &Recorded) -> Vec<(String, String)> {
    let claimed: Vec<String> = FORWARDING_CLAIMS
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase().replace('_', "-"))
        .collect();
    let mut found: Vec<(String, String)> = seen
        .header_names()
        .into_iter()
        .filter(|n| claimed.contains(&n.replace('_', "-")))
        .map(|n| {
            let value = seen.header_all(&n).join(" | ");
            (n, value)
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn forwarding_headers_of_untrusted_clients_are_replaced_by_what_ucgate_knows() {
    let up = Upstream::start().await;
    let mut headers: Vec<(&str, &str)> = FORWARDING_CLAIMS.to_vec();
    headers.push((X_AUTH_TOKEN, SHARED_TOKEN));
    // Its port is neither the claimed X-Forwarded-Port nor the listener's.
    headers.push(("Host", "gate.example:1234"));
    let expected = |port: u16| {
        vec![
            ("x-forwarded-for".to_owned(), "127.0.0.1".to_owned()),
            (
                "x-forwarded-host".to_owned(),
                "gate.example:1234".to_owned(),
            ),
            ("x-forwarded-port".to_owned(), port.to_string()),
            ("x-forwarded-proto".to_owned(), "http".to_owned()),
        ]
    };
    // Facing clients directly, and behind proxies that are not this peer: the same answer.
    for server in [
        "trust_forwarded_headers = false",
        "trust_forwarded_headers = true\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]",
    ] {
        let gate = start(layout(&up.url()).server(server).build()).await;
        let r = raw_http(gate.addr(), raw_request("GET", "/api/fwd", &headers)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // The port the client reached, as the listener knows it.
        let port = gate.addr().port();
        assert_eq!(forwarding_seen(&up.last()), expected(port), "{server}");
    }
    // A listed proxy is believed: its view stands, and ucgate adds itself as a hop.
    let gate = start(
        layout(&up.url())
            .server("trust_forwarded_headers = true\ntrusted_proxies = [\"127.0.0.0/8\"]")
            .build(),
    )
    .await;
    let r = raw_http(gate.addr(), raw_request("GET", "/api/fwd", &headers)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(seen.header_all("x-forwarded-prefix"), ["/admin"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.header_all("x-forwarded-port"), ["8443"]);
    // A configuration that lists proxies without trusting forwarding is refused.
    let out = Ucgate::builder(
        layout(&up.url())
            .server("trusted_proxies = [\"10.0.0.0/8\"]")
            .build(),
    )
    .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
    .file("users.toml", users())
    .run(&["check-config"]);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("server.trusted_proxies"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Protocol upgrades other than WebSocket
// ---------------------------------------------------------------------------------------------

/// Sends `request` then, on the same connection, `then`; returns everything read until close.
async fn two_on_one_connection(addr: SocketAddr, request: &str, then: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let _ = stream.write_all(then.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn only_a_websocket_handshake_ever_switches_protocols() {
    let up = Reflector::start().await;
    let gate = start(layout(&up.url()).build()).await;
    let token = uc_token(&gate).await;
    let smuggled = "GET /uc/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let offers: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
        vec![("Connection", "Upgrade"), ("Upgrade", "websocket, h2c")],
        vec![("Connection", "Upgrade"), ("Upgrade", "TLS/1.2")],
        // A websocket upgrade that is not a valid handshake: no key, a bad key, a bad version.
        vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
        ],
        vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "c2hvcnQ="),
            ("Sec-WebSocket-Version", "13"),
        ],
        vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "8"),
        ],
    ];
    for path in ["/ws/x", "/uc/x"] {
        for offer in &offers {
            let mut headers = offer.clone();
            headers.push((X_AUTH_TOKEN, token.as_str()));
            let request = raw_request("GET", path, &headers);
            let answer = two_on_one_connection(gate.addr(), &request, smuggled).await;
            assert!(answer.starts_with("HTTP/1.1 200 "), "{offer:?}: {answer}");
            // The second request was ucgate's to judge (no credential: 401), not a tunnel's.
            assert!(answer.contains("HTTP/1.1 401 "), "{offer:?}: {answer}");
            let head = up.heads().pop().unwrap().to_ascii_lowercase();
            assert!(
                !head.contains("upgrade") && !head.contains("http2-settings"),
                "{offer:?} reached the upstream: {head}"
            );
        }
    }
    assert!(
        up.tunnelled().is_empty(),
        "{:?}",
        String::from_utf8_lossy(&up.tunnelled())
    );
    // A real WebSocket handshake on the WebSocket route does switch.
    let request = raw_request(
        "GET",
        "/ws/x",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
            (X_AUTH_TOKEN, token.as_str()),
        ],
    );
    let answer = two_on_one_connection(gate.addr(), &request, "frames").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(eventually(|| up.tunnelled() == b"frames").await);
}

#[tokio::test]
async fn h2_extended_connect_is_not_offered_and_connect_is_refused() {
    let up = Reflector::start().await;
    let gate = start(layout(&up.url()).build()).await;
    let tcp = TcpStream::connect(gate.addr()).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    // One exchange first, so that the server's SETTINGS have arrived.
    let get = http::Request::get(format!("http://{}/healthz", gate.addr()))
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(get, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // RFC 8441 §3: without SETTINGS_ENABLE_CONNECT_PROTOCOL, no extended CONNECT.
    assert!(!h2.is_extended_connect_protocol_enabled());
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::builder()
        .method("CONNECT")
        .uri(gate.addr().to_string())
        .header(X_AUTH_TOKEN, SHARED_TOKEN)
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let status = match response.await {
        Ok(response) => response.status().as_u16(),
        Err(e) => {
            assert!(e.is_reset(), "{e}");
            0
        }
    };
    assert!(status == 405 || status == 0, "CONNECT over h2 got {status}");
    assert_eq!(up.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// 4. One client address, derived once
// ---------------------------------------------------------------------------------------------

async fn login_from(gate: &Ucgate, forwarded_for: &str, login: &str, password: &str) -> u16 {
    client()
        .post(gate.url(LOGIN))
        .header("X-Forwarded-For", forwarded_for)
        .json(&serde_json::json!({"login": login, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn behind_a_trusted_proxy_one_client_cannot_lock_out_the_others() {
    let up = Upstream::start().await;
    let gate = start(
        layout(&up.url())
            .server("trust_forwarded_headers = true\ntrusted_proxies = [\"127.0.0.1\"]")
            .raw("[login]\nmax_failures = 5")
            .build(),
    )
    .await;
    let (attacker, other) = ("203.0.113.9", "198.51.100.7");
    for n in 0..5 {
        let status = login_from(&gate, attacker, &format!("guess{n}"), "x").await;
        assert_eq!(status, 401);
    }
    assert_eq!(login_from(&gate, attacker, "bob", "agent-pass").await, 429);
    assert_eq!(login_from(&gate, other, "bob", "agent-pass").await, 200);
    // A chain: the right-most entry that is not a listed proxy is the client.
    let chain = format!("{other}, {attacker}, 127.0.0.1");
    assert_eq!(login_from(&gate, &chain, "bob", "agent-pass").await, 429);
    // The same address in the logs and upstream.
    let refused = gate.wait_log("login refused").await;
    assert!(refused.contains(attacker), "{refused}");
    let r = raw_http(
        gate.addr(),
        raw_request(
            "GET",
            "/api/x",
            &[(X_AUTH_TOKEN, SHARED_TOKEN), ("X-Forwarded-For", other)],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header_all("x-forwarded-for"),
        [format!("{other}, 127.0.0.1")]
    );
    // The line is written after the answer: wait for it, not for any line.
    let line = gate.wait_log("path=\"/api/x\"").await;
    assert!(line.contains(&format!("client=\"{other}\"")), "{line}");

    // Forwarding headers from a peer that is not listed prove nothing: its own address counts.
    let strict = start(
        layout(&up.url())
            .server("trust_forwarded_headers = true\ntrusted_proxies = [\"10.0.0.0/8\"]")
            .raw("[login]\nmax_failures = 3")
            .build(),
    )
    .await;
    for n in 0..3 {
        let spoofed = format!("203.0.113.{n}");
        assert_eq!(login_from(&strict, &spoofed, "mallory", "x").await, 401);
    }
    assert_eq!(login_from(&strict, other, "bob", "agent-pass").await, 429);
}

// ---------------------------------------------------------------------------------------------
// 6. Revocations survive a restart
// ---------------------------------------------------------------------------------------------

async fn get_with(gate: &Ucgate, token: &str) -> reqwest::Response {
    client()
        .get(gate.url("/uc/me"))
        .header(X_AUTH_TOKEN, token)
        .send()
        .await
        .unwrap()
}

fn with_revocations_file(up: &str, file: &Path) -> String {
    layout(up).build().replace(
        "[tokens]\n",
        &format!(
            "[tokens]\nrevocations_file = {}\n",
            toml_str(file.to_str().unwrap())
        ),
    )
}

#[tokio::test]
async fn a_logout_outlives_a_restart() {
    let up = Upstream::start().await;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("revocations.json");
    let config = with_revocations_file(&up.url(), &file);

    let mut first = start(config.clone()).await;
    let token = uc_token(&first).await;
    let kept = uc_token(&first).await;
    assert_eq!(get_with(&first, &token).await.status(), 200);
    let logout = client()
        .post(first.url("/xuc/api/2.0/auth/logout"))
        .header(X_AUTH_TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    // Written before the 204, atomically: no partial file left, and no token in it.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&token) && !text.contains(token.rsplit('.').next().unwrap()));
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 1);
    first.sigterm();
    first.wait().await;

    let second = start(config.clone()).await;
    assert_error(get_with(&second, &token).await, 401, "TokenInvalid").await;
    assert_eq!(
        get_with(&second, &kept).await.status(),
        200,
        "only the logged-out one"
    );
    drop(second);

    // The file lost: what it held is forgotten (see the README), until those tokens expire.
    std::fs::remove_file(&file).unwrap();
    let third = start(config.clone()).await;
    assert_eq!(get_with(&third, &token).await.status(), 200);
    drop(third);

    // A damaged file is not silently ignored: ucgate refuses to start and names it.
    std::fs::write(&file, "{\"version\": 1, \"revoked\": [").unwrap();
    let out = Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", users())
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("tokens.revocations_file"),
        "{}",
        out.stderr
    );
}

/// The session keys of the revocations file are half a SHA-256 of the session's text, whatever
/// ucgate keeps in memory: a file written by an earlier release (or another instance) still
/// ends its sessions, and a logout writes the same keys. The keys below were computed outside
/// ucgate (`printf %s SID | sha256sum`, first 16 bytes read little-endian): a 32-hex `sid`, an
/// `xuc:` one, and the 16-hex `jti` of a token older than sessions.
#[tokio::test]
async fn session_keys_of_the_revocations_file_are_those_of_earlier_releases() {
    const SESSIONS: [(&str, &str); 3] = [
        (
            "0123456789abcdef0123456789abcdef",
            "99e0c2cc66e5982976eb479943bdb13e",
        ),
        (
            "xuc:0123456789abcdef0123456789abcdef",
            "431a9822ac0aa5c679ae813f625e503d",
        ),
        ("0123456789abcdef", "ddc2ebe5dd1d1f1f787ab2f711519f9f"),
    ];
    let up = Upstream::start().await;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("revocations.json");
    let config = with_revocations_file(&up.url(), &file);
    let now = unix_now();
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    let signed = |sid: Option<&str>, jti: &str| {
        let mut claims = serde_json::json!({
            "iss": "ucgate", "sub": "agent", "profile": "agent", "method": "password",
            "iat": now, "exp": now + 600, "jti": jti,
        });
        if let Some(sid) = sid {
            claims["sid"] = sid.into();
        }
        hs256(&header, &claims)
    };
    // The sessions' tokens: the third has no sid, its jti stands for its session.
    let tokens = [
        signed(Some(SESSIONS[0].0), "a-jti"),
        signed(Some(SESSIONS[1].0), "b-jti"),
        signed(None, SESSIONS[2].0),
    ];
    let other = signed(Some("fedcba9876543210fedcba9876543210"), "c-jti");

    // Read: a file naming those sessions, as an earlier release wrote it.
    let entries: Vec<String> = SESSIONS
        .iter()
        .map(|(_, key)| format!("{{\"key\": \"{key}\", \"exp\": {}}}", now + 3600))
        .collect();
    std::fs::write(
        &file,
        format!(
            "{{\"version\": 2, \"revoked\": [], \"sessions\": [{}]}}",
            entries.join(", ")
        ),
    )
    .unwrap();
    let gate = start(config.clone()).await;
    for token in &tokens {
        assert_error(get_with(&gate, token).await, 401, "TokenInvalid").await;
    }
    assert_eq!(get_with(&gate, &other).await.status(), 200);
    drop(gate);

    // Written: a logout of each session puts the same key in the file.
    std::fs::remove_file(&file).unwrap();
    let gate = start(config).await;
    for token in &tokens {
        let logout = client()
            .post(gate.url("/xuc/api/2.0/auth/logout"))
            .header(X_AUTH_TOKEN, token)
            .send()
            .await
            .unwrap();
        assert_eq!(logout.status(), 204);
    }
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let mut keys: Vec<&str> = stored["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    let mut expected: Vec<&str> = SESSIONS.iter().map(|(_, key)| *key).collect();
    expected.sort_unstable();
    assert_eq!(keys, expected, "{stored}");
}

// ---------------------------------------------------------------------------------------------
// 7 for UC tokens: header extensions refused
// ---------------------------------------------------------------------------------------------

fn hs256(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    hand_signed_hs256(SIGNING_KEY, header, claims)
}

#[tokio::test]
async fn uc_tokens_with_header_extensions_are_refused() {
    let up = Upstream::start().await;
    let gate = start(layout(&up.url()).build()).await;
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "ucgate", "sub": "agent", "profile": "agent", "method": "password",
        "iat": now, "exp": now + 600, "jti": "0123456789abcdef",
    });
    let plain = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    assert_eq!(get_with(&gate, &hs256(&plain, &claims)).await.status(), 200);
    for extension in [
        serde_json::json!({"crit": ["urn:example:must-understand"], "urn:example:must-understand": 1}),
        serde_json::json!({"crit": ["exp"]}),
        serde_json::json!({"b64": false, "crit": ["b64"]}),
        serde_json::json!({"zip": "DEF"}),
    ] {
        let mut header = plain.clone();
        header
            .as_object_mut()
            .unwrap()
            .extend(extension.as_object().unwrap().clone());
        let response = get_with(&gate, &hs256(&header, &claims)).await;
        assert_error(response, 401, "TokenInvalid").await;
    }
    assert_eq!(up.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// 9. Errors raised inside the HTTP layer are JSON too
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn heads_the_http_library_refuses_get_the_json_error_contract() {
    let up = Upstream::start().await;
    let gate = start(layout(&up.url()).server("max_headers = 20").build()).await;
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let cases: Vec<(String, u16, &str)> = vec![
        (
            "GET /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nabcd".into(),
            400,
            "MalformedRequest",
        ),
        (
            "GET /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd"
                .into(),
            400,
            "MalformedRequest",
        ),
        (
            "GET /api/x HTTP/1.1 extra\r\nHost: x\r\n\r\n".into(),
            400,
            "MalformedRequest",
        ),
        (
            "GET /api/x HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n".into(),
            400,
            "MalformedRequest",
        ),
        (
            "GET /api/x HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n".into(),
            400,
            "MalformedRequest",
        ),
        (
            "G\x01T /api/x HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            "MalformedRequest",
        ),
        (
            "GET /api/x HTTP/9.9\r\nHost: x\r\n\r\n".into(),
            400,
            "MalformedRequest",
        ),
        (
            format!("GET /api/x HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
            431,
            "HeadersTooLarge",
        ),
        (
            format!("GET /api/x HTTP/1.1\r\nHost: x\r\n{huge}\r\n"),
            431,
            "HeadersTooLarge",
        ),
    ];
    for (request, status, code) in cases {
        let r = raw_http(gate.addr(), &request).await;
        r.assert_error(status, code);
        assert_eq!(r.header("connection"), Some("close"), "{request:?}");
        assert!(
            r.json()["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{request:?}"
        );
    }
    assert_eq!(up.count(), 0);
    // The connection-level answers keep working: a good request after all of that.
    let r = raw_http(
        gate.addr(),
        raw_request("GET", "/api/x", &[(X_AUTH_TOKEN, SHARED_TOKEN)]),
    )
    .await;
    assert_eq!(r.status, 200);
}
