//! Issue 2, the proxy core: ucgate as a real process between real clients and real upstreams.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Version};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// One upstream behind the usual routes:
/// - `/api/`     accept shared, upstream_auth shared
/// - `/plain/`   accept shared, upstream_auth none
/// - `/public/`  public
/// - `/ws/`      accept shared, websocket
/// - `/slow/`    timeout 300ms
/// - `/down/`    upstream where nothing listens
fn routes(up: &Upstream) -> ConfigBuilder {
    let u = up.url();
    ConfigBuilder::new()
        .route(route("api", "/api/", &u))
        .route(route("plain", "/plain/", &u).upstream_auth("none"))
        .route(route("public", "/public/", &u).public())
        .route(route("ws", "/ws/", &u).websocket())
        .route(route("slow", "/slow/", &u).timeout("300ms"))
        .route(route("down", "/down/", &closed_url()))
}

async fn setup() -> (Upstream, Ucgate) {
    let up = Upstream::start().await;
    let gate = Ucgate::start(routes(&up).build()).await;
    (up, gate)
}

const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef0123456789";

/// [`routes`] plus `/uconly/`, a route that accepts UC tokens only (which needs `[tokens]` and
/// `[users]`).
async fn setup_with_uc_route() -> (Upstream, Ucgate) {
    let up = Upstream::start().await;
    let config = routes(&up)
        .route(route("uconly", "/uconly/", &up.url()).accept(&["uc"]))
        .raw("[tokens]\n\n[users]\nfile = \"users.toml\"")
        .build();
    let gate = Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", "")
        .start()
        .await;
    (up, gate)
}

fn with_token(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header(X_AUTH_TOKEN, SHARED_TOKEN)
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forwards_with_the_shared_token_and_injects_it_upstream() {
    let (up, gate) = setup().await;
    let response = with_token(client().post(gate.url("/api/items?a=1&b=two")))
        .header("X-Custom", "kept")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed["target"], "/api/items?a=1&b=two");

    let seen = up.last();
    assert_eq!(up.count(), 1);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/items?a=1&b=two");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    assert_eq!(seen.header("host"), Some(up.authority()));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gate.addr().to_string())
    );
    assert_eq!(seen.header("x-custom").as_deref(), Some("kept"));
    assert_eq!(seen.body_len, 5);
    assert_eq!(&seen.body[..], b"hello");

    let lines = gate.wait_access_lines(1).await;
    assert!(
        lines[0].contains(
            r#"request method=POST path="/api/items" route="api" status=200 credential="shared" error="-""#
        ),
        "{lines:?}"
    );
}

/// With `server.log_format = "json"`, every line ucgate writes is one JSON object, and a
/// request's access line holds its fields (the query, which may hold a token, never).
/// A small body (read whole before the answer goes out) that the upstream writes in three
/// pieces, apart in time: the client gets all of it, with its length, and the connection is
/// reused for the next request.
#[tokio::test]
async fn a_small_body_in_several_pieces_arrives_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // One request at a time: each head ends the exchange's reading.
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    let pieces: [&[u8]; 3] = [
                        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhel",
                        b"lo ",
                        b"world",
                    ];
                    for piece in pieces {
                        socket.write_all(piece).await.unwrap();
                        socket.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        }
    });
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("pieces", "/pieces/", &format!("http://{addr}")))
            .build(),
    )
    .await;
    for _ in 0..2 {
        let response = with_token(client().get(gate.url("/pieces/x")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.content_length(), Some(11));
        assert_eq!(response.text().await.unwrap(), "hello world");
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let up = Upstream::start().await;
    let gate = Ucgate::start(routes(&up).server("log_format = \"json\"").build()).await;
    let in_query = format!("/api/items?a=1&token={SHARED_TOKEN}");
    let response = client().get(gate.url(&in_query)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = client().get(gate.url("/api/x\"y")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let lines = gate.wait_access_lines(2).await;
    let access: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(access[0]["target"], "ucgate::access");
    assert_eq!(access[0]["message"], "request");
    assert_eq!(access[0]["level"], "INFO");
    assert_eq!(access[0]["method"], "GET");
    assert_eq!(access[0]["path"], "/api/items");
    assert_eq!(access[0]["route"], "api");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["credential"], "shared");
    assert_eq!(access[0]["client"], "127.0.0.1");
    assert_eq!(access[0]["version"], "HTTP/1.1");
    assert!(access[0]["latency_us"].is_u64(), "{}", lines[0]);
    assert!(
        humantime::parse_rfc3339(access[0]["timestamp"].as_str().unwrap()).is_ok(),
        "{}",
        lines[0]
    );
    assert_eq!(access[1]["status"], 401);
    assert_eq!(access[1]["error"], "TokenMissing");
    let logs = gate.logs();
    assert!(!logs.contains(SHARED_TOKEN), "{logs}");
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[tokio::test]
async fn a_missing_token_is_401_with_www_authenticate() {
    let (up, gate) = setup_with_uc_route().await;
    for path in ["/api/x", "/uconly/x", "/ws/x", "/plain/x?tokens=1&xtoken=2"] {
        let response = client().get(gate.url(path)).send().await.unwrap();
        let www = response.headers().get("www-authenticate").cloned();
        assert_error(response, 401, "TokenMissing").await;
        assert!(www.is_some(), "{path}: no WWW-Authenticate");
    }
    // An empty token is no token.
    let response = client()
        .get(gate.url("/api/x"))
        .header(X_AUTH_TOKEN, "")
        .send()
        .await
        .unwrap();
    assert!(
        matches!(response.status().as_u16(), 401),
        "{}",
        response.status()
    );
    assert_eq!(up.count(), 0, "{:#?}", up.requests());
    let lines = gate.wait_access_lines(5).await;
    assert!(
        lines[0].contains(r#"status=401"#) && lines[0].contains(r#"error="TokenMissing""#),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_wrong_token_is_401_in_header_or_query() {
    let (up, gate) = setup().await;
    let wrong = "wrong-token-Zx81Kq";
    let almost = &SHARED_TOKEN[..SHARED_TOKEN.len() - 1];
    let longer = format!("{SHARED_TOKEN}x");
    for token in [wrong, almost, longer.as_str(), " "] {
        let response = client()
            .get(gate.url("/api/x"))
            .header(X_AUTH_TOKEN, token)
            .send()
            .await
            .unwrap();
        let www = response.headers().get("www-authenticate").cloned();
        let body = assert_error(response, 401, "TokenInvalid").await;
        assert!(www.is_some());
        assert!(
            !body.to_string().contains(token.trim()) || token.trim().is_empty(),
            "{body}"
        );
    }
    let response = client()
        .get(gate.url(&format!("/api/x?token={wrong}")))
        .send()
        .await
        .unwrap();
    let body = assert_error(response, 401, "TokenInvalid").await;
    assert!(!body.to_string().contains(wrong));
    assert_eq!(up.count(), 0, "{:#?}", up.requests());
}

#[tokio::test]
async fn the_token_query_parameter_is_accepted_and_stripped() {
    let (up, gate) = setup().await;
    let http = client();

    let r = http
        .get(gate.url(&format!(
            "/api/q?a=1&token={SHARED_TOKEN}&b=x%20y&tokens=2&xtoken=3"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.target, "/api/q?a=1&b=x%20y&tokens=2&xtoken=3");
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);

    // Alone, the query disappears.
    let r = http
        .get(gate.url(&format!("/api/q?token={SHARED_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().target, "/api/q");

    // An encoded parameter name is the same parameter (raw: clients may re-encode it).
    let r = raw_http(
        gate.addr(),
        raw_request("GET", &format!("/api/q?%74oken={SHARED_TOKEN}&c=3"), &[]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().target, "/api/q?c=3");
    let r = raw_http(
        gate.addr(),
        raw_request(
            "GET",
            &format!("/api/q?%74%6F%6B%65%6E={SHARED_TOKEN}"),
            &[],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().target, "/api/q");

    // Same token in header and parameter: accepted, the parameter still stripped.
    let r = with_token(http.get(gate.url(&format!("/api/q?token={SHARED_TOKEN}&d=4"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().target, "/api/q?d=4");

    // upstream_auth = "none": the token is not forwarded anywhere.
    let r = http
        .get(gate.url(&format!("/plain/q?token={SHARED_TOKEN}&e=5")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.target, "/plain/q?e=5");
    assert!(seen.header_all("x-auth-token").is_empty());

    assert_eq!(up.count(), 6);
    for seen in up.requests() {
        assert!(!seen.target.contains(SHARED_TOKEN), "{}", seen.target);
    }
}

#[tokio::test]
async fn ambiguous_tokens_are_400() {
    let (up, gate) = setup().await;
    let http = client();
    let mut two = HeaderMap::new();
    two.append(X_AUTH_TOKEN, HeaderValue::from_static(SHARED_TOKEN));
    two.append(X_AUTH_TOKEN, HeaderValue::from_static("other"));
    let r = http
        .get(gate.url("/api/x"))
        .headers(two)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "AmbiguousToken").await;

    // Two identical headers are still two headers.
    let r = raw_http(
        gate.addr(),
        raw_request(
            "GET",
            "/api/x",
            &[(X_AUTH_TOKEN, SHARED_TOKEN), (X_AUTH_TOKEN, SHARED_TOKEN)],
        ),
    )
    .await;
    r.assert_error(400, "AmbiguousToken");
    // And the message says so, without claiming they differ.
    assert_eq!(r.json()["message"], "the request carries several tokens");

    let r = with_token(http.get(gate.url("/api/x?token=other")))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "AmbiguousToken").await;

    let r = http
        .get(gate.url(&format!("/api/x?token={SHARED_TOKEN}&token=other")))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "AmbiguousToken").await;

    assert_eq!(up.count(), 0, "{:#?}", up.requests());
}

#[tokio::test]
async fn the_shared_token_on_a_route_that_does_not_accept_it_is_403() {
    let (up, gate) = setup_with_uc_route().await;
    let r = with_token(client().get(gate.url("/uconly/x")))
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 403, "Forbidden").await;
    assert!(!body.to_string().contains(SHARED_TOKEN));
    assert_eq!(up.count(), 0);
    let lines = gate.wait_access_lines(1).await;
    assert!(
        lines[0].contains(r#"route="uconly" status=403 credential="shared" error="Forbidden""#),
        "{lines:?}"
    );
}

#[tokio::test]
async fn public_routes_need_no_token_and_forward_none() {
    let (up, gate) = setup().await;
    let r = client()
        .get(gate.url("/public/a?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.target, "/public/a?x=1");
    assert!(seen.header_all("x-auth-token").is_empty());

    // Whatever the client presents, even the shared token, nothing goes upstream.
    let r = with_token(client().get(gate.url(&format!("/public/b?token={SHARED_TOKEN}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.target, "/public/b");
    assert!(
        !seen.head_text().contains(SHARED_TOKEN),
        "{}",
        seen.head_text()
    );
    assert_eq!(up.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

const SPOOFED: [(&str, &str); 8] = [
    ("X-Auth-User", "admin"),
    ("X_Auth_User", "admin"),
    ("x.auth.user", "admin"),
    ("X-Auth-Method", "kerberos"),
    ("x_auth_method", "kerberos"),
    ("X.Auth.Method", "kerberos"),
    ("X_Auth_Token", "spoofed-token"),
    ("x.auth.token", "spoofed-token"),
];

fn assert_no_identity_headers(seen: &Recorded) {
    for name in seen.header_names() {
        let canonical = name.replace(['_', '.'], "-");
        assert!(
            !["x-auth-user", "x-auth-method"].contains(&canonical.as_str()),
            "{name} reached the upstream:\n{}",
            seen.head_text()
        );
        if canonical == "x-auth-token" {
            assert_eq!(name, "x-auth-token", "alias {name} reached the upstream");
        }
    }
    assert!(
        !seen.head_text().contains("spoofed-token"),
        "{}",
        seen.head_text()
    );
}

#[tokio::test]
async fn upstream_auth_none_never_forwards_client_identity_headers() {
    let (up, gate) = setup().await;
    let mut headers: Vec<(&str, &str)> = SPOOFED.to_vec();
    headers.push((X_AUTH_TOKEN, SHARED_TOKEN));
    let r = raw_http(gate.addr(), raw_request("GET", "/plain/x", &headers)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.path, "/plain/x");
    assert!(
        seen.header_all("x-auth-token").is_empty(),
        "{}",
        seen.head_text()
    );
    assert!(
        !seen.head_text().contains(SHARED_TOKEN),
        "{}",
        seen.head_text()
    );
    assert_no_identity_headers(&seen);

    // Same on a public route, with the token in the query.
    let r = raw_http(
        gate.addr(),
        raw_request("GET", &format!("/public/x?token={SHARED_TOKEN}"), &headers),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.target, "/public/x");
    assert!(
        !seen.head_text().contains(SHARED_TOKEN),
        "{}",
        seen.head_text()
    );
    assert_no_identity_headers(&seen);

    // And via h2, where header names are lower-case and arrive differently framed.
    let mut rb = h2_client().get(gate.url("/plain/h2"));
    for (k, v) in &headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), Version::HTTP_2);
    let seen = up.last();
    assert_eq!(seen.path, "/plain/h2");
    assert!(
        !seen.head_text().contains(SHARED_TOKEN),
        "{}",
        seen.head_text()
    );
    assert_no_identity_headers(&seen);
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn upstream_auth_shared_sends_exactly_one_token_and_no_client_identity() {
    let (up, gate) = setup().await;
    let mut headers: Vec<(&str, &str)> = SPOOFED.to_vec();
    headers.push((X_AUTH_TOKEN, SHARED_TOKEN));
    let r = raw_http(gate.addr(), raw_request("GET", "/api/x", &headers)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    assert_no_identity_headers(&seen);
}

#[tokio::test]
async fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
    let (up, gate) = setup().await;
    let headers = [
        (X_AUTH_TOKEN, SHARED_TOKEN),
        (
            "Connection",
            "close, X-Custom-Hop, X-Auth-User, x_auth_method",
        ),
        ("X-Custom-Hop", "1"),
        ("X-Auth-User", "admin"),
        ("x_auth_method", "kerberos"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("X-Kept", "yes"),
    ];
    let r = raw_http(gate.addr(), raw_request("GET", "/api/hop", &headers)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    for gone in [
        "x-custom-hop",
        "x-auth-user",
        "x_auth_method",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(
            seen.header_all(gone).is_empty(),
            "{gone} reached the upstream:\n{}",
            seen.head_text()
        );
    }
    for value in seen.header_all("connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-custom-hop"),
            "{}",
            seen.head_text()
        );
        assert!(
            !value.to_ascii_lowercase().contains("upgrade"),
            "{}",
            seen.head_text()
        );
    }
    assert_eq!(seen.header("x-kept").as_deref(), Some("yes"));
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
}

/// A `Connection` value with a byte outside visible ASCII (obs-text, which the HTTP library lets
/// through) still names its fields: once, it hid them all, and they reached the upstream.
#[tokio::test]
async fn a_connection_value_with_obs_text_still_names_its_fields() {
    let (up, gate) = setup().await;
    let mut request = b"GET /api/hop HTTP/1.1\r\nHost: ucgate.test\r\nConnection: close\r\n\
        Connection: X-Hop-Secret, \xe9\r\nX-Hop-Secret: s3cret\r\n"
        .to_vec();
    request.extend_from_slice(format!("{X_AUTH_TOKEN}: {SHARED_TOKEN}\r\n\r\n").as_bytes());
    let r = raw_http(gate.addr(), request).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert!(
        seen.header_all("x-hop-secret").is_empty(),
        "{}",
        seen.head_text()
    );
}

#[tokio::test]
async fn forwarded_headers_replace_what_the_client_claims() {
    let (up, gate) = setup().await;
    let headers = [
        (X_AUTH_TOKEN, SHARED_TOKEN),
        ("Host", "gate.example:8443"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("Forwarded", "for=203.0.113.9;proto=https"),
        ("X-Real-IP", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
    ];
    let r = raw_http(gate.addr(), raw_request("GET", "/api/fwd", &headers)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header("host"), Some(up.authority()));
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["gate.example:8443"]);
    assert!(
        seen.header_all("forwarded").is_empty(),
        "{}",
        seen.head_text()
    );
    assert!(
        seen.header_all("x-real-ip").is_empty(),
        "{}",
        seen.head_text()
    );
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, with several, or with one that is not a
/// host and port is a 400, before any credential is looked at; so is userinfo in an
/// absolute-form target (RFC 9110 §4.2.4), which would otherwise reach the upstream as
/// X-Forwarded-Host.
#[tokio::test]
async fn requests_without_one_valid_host_are_400_before_authentication() {
    let (up, gate) = setup().await;
    let token = format!("{X_AUTH_TOKEN}: {SHARED_TOKEN}\r\n");
    let refused: Vec<(String, &str)> = vec![
        (String::new(), "an HTTP/1.1 request needs a Host header"),
        (
            "Host: a.example\r\nHost: b.example\r\n".into(),
            "the request has several Host headers",
        ),
        (
            "Host: a.example\r\nHost: a.example\r\n".into(),
            "the request has several Host headers",
        ),
    ];
    let invalid = [
        "a b",
        "evil.com/path?x",
        "evil.com:99999",
        "evil.com:abc",
        "user:pass@evil.com",
        "evil.com#x",
        "",
    ];
    let refused = refused.into_iter().chain(invalid.iter().map(|host| {
        (
            format!("Host: {host}\r\n"),
            "the Host header is not a valid host and port",
        )
    }));
    for (host_lines, message) in refused {
        // With a valid token and without one: the Host is checked first.
        for credential in [token.as_str(), ""] {
            let head =
                format!("GET /api/x HTTP/1.1\r\n{host_lines}{credential}Connection: close\r\n\r\n");
            let r = raw_http(gate.addr(), &head).await;
            r.assert_error(400, "InvalidRequest");
            assert_eq!(r.json()["message"], message, "{head:?}");
        }
    }
    // Userinfo in an absolute-form target, whatever the Host says.
    for target in [
        "http://user:pass@evil/api/x",
        "http://user@evil.example:8080/api/x",
    ] {
        let head = format!(
            "GET {target} HTTP/1.1\r\nHost: gate.example\r\n{token}Connection: close\r\n\r\n"
        );
        let r = raw_http(gate.addr(), &head).await;
        r.assert_error(400, "InvalidRequest");
        assert_eq!(
            r.json()["message"],
            "the request target must not carry userinfo",
            "{target}"
        );
    }
    // An absolute-form target whose authority is no host and port, if the parser lets it by.
    let head = format!(
        "GET http://evil.com:99999/api/x HTTP/1.1\r\nHost: gate.example\r\n{token}Connection: close\r\n\r\n"
    );
    let r = raw_http(gate.addr(), &head).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.count(), 0, "{:#?}", up.requests());

    // HTTP/1.0 may go without Host; valid hosts of every shape pass.
    let r = raw_http(gate.addr(), format!("GET /api/x HTTP/1.0\r\n{token}\r\n")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for host in [
        "gate.example",
        "gate.example:8443",
        "127.0.0.1:1",
        "[::1]:8080",
        "[::1]",
    ] {
        let r = raw_http(
            gate.addr(),
            raw_request(
                "GET",
                "/api/x",
                &[(X_AUTH_TOKEN, SHARED_TOKEN), ("Host", host)],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(up.last().header_all("x-forwarded-host"), [host]);
    }
}

/// Over h2, a `host` header naming another host than `:authority` is malformed (RFC 9113
/// §8.3.1): 400 before authentication; the same host (any case) passes.
#[tokio::test]
async fn an_h2_host_that_differs_from_the_authority_is_400() {
    let (up, gate) = setup().await;
    let tcp = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let authority = format!("gate.example:{}", gate.addr().port());
    for (host, status) in [
        ("other.example", 400),
        (authority.as_str(), 200),
        (&*authority.to_uppercase(), 200),
    ] {
        let mut h2 = h2.clone().ready().await.unwrap();
        let request = http::Request::get(format!("http://{authority}/api/h2-host"))
            .header(X_AUTH_TOKEN, SHARED_TOKEN)
            .header("host", host)
            .body(())
            .unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status().as_u16(), status, "host: {host}");
    }
    assert_eq!(up.count(), 2, "{:#?}", up.requests());
}

/// X-Forwarded-Port is the port of the listener the client connected to (nginx's
/// `$server_port`), whatever port, or none, its Host or target names.
#[tokio::test]
async fn forwarded_port_is_the_listener_s() {
    let (up, gate) = setup().await;
    let port = gate.addr().port().to_string();
    for (target, host) in [
        ("/api/fwd", "gate.example:1234"),
        ("/api/fwd", "gate.example:9999"),
        ("/api/fwd", "gate.example"),
        ("http://gate.example:9999/api/fwd", "gate.example"),
    ] {
        let headers = [
            (X_AUTH_TOKEN, SHARED_TOKEN),
            ("Host", host),
            ("X-Forwarded-Port", "8443"),
        ];
        let r = raw_http(gate.addr(), raw_request("GET", target, &headers)).await;
        assert_eq!(r.status, 200, "{target} {host}: {}", r.text());
        let seen = up.last();
        assert_eq!(
            seen.header_all("x-forwarded-port"),
            [port.as_str()],
            "{target} {host}"
        );
    }
    // HTTP/1.0 without Host: nothing to read a port from, the listener still has one.
    let r = raw_http(
        gate.addr(),
        format!("GET /api/fwd HTTP/1.0\r\n{X_AUTH_TOKEN}: {SHARED_TOKEN}\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header_all("x-forwarded-port"), [port.as_str()]);
}

#[tokio::test]
async fn trusted_forwarded_headers_are_extended() {
    let up = Upstream::start().await;
    let gate = Ucgate::start(routes(&up).server("trust_forwarded_headers = true").build()).await;
    let headers = [
        (X_AUTH_TOKEN, SHARED_TOKEN),
        ("Host", "gate.example"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "public.example"),
    ];
    let r = raw_http(gate.addr(), raw_request("GET", "/api/fwd", &headers)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["public.example"]);
    // The proxy described the original request (scheme, host) without a port: ucgate's
    // listener port is the one the proxy reached, not the client's, and is not filled in.
    assert!(seen.header_all("x-forwarded-port").is_empty(), "{seen:?}");
    // A proxy that describes nothing (only X-Forwarded-For): ucgate's view stands for the
    // scheme, the host and the port, its listener's.
    let bare = [
        (X_AUTH_TOKEN, SHARED_TOKEN),
        ("Host", "gate.example"),
        ("X-Forwarded-For", "203.0.113.9"),
    ];
    let r = raw_http(gate.addr(), raw_request("GET", "/api/fwd", &bare)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    let port = gate.addr().port().to_string();
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["gate.example"]);
    assert_eq!(seen.header_all("x-forwarded-port"), [port.as_str()]);
    // What the proxy says stands.
    let mut with_port = headers.to_vec();
    with_port.push(("X-Forwarded-Port", "443"));
    let r = raw_http(gate.addr(), raw_request("GET", "/api/fwd", &with_port)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header_all("x-forwarded-port"), ["443"]);
    // Identity headers are never trusted, even behind a trusted proxy.
    let r = raw_http(
        gate.addr(),
        raw_request(
            "GET",
            "/plain/x",
            &[(X_AUTH_TOKEN, SHARED_TOKEN), ("X-Auth-User", "admin")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_no_identity_headers(&up.last());
    assert!(up.last().header_all("x-auth-token").is_empty());
}

#[tokio::test]
async fn upstream_responses_pass_through_untouched() {
    let (up, gate) = setup().await;
    up.on(
        "/api/teapot",
        Behavior::respond(418, "short and stout")
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("X-Upstream", "1")
            .header("Set-Cookie", "a=1")
            .header("Set-Cookie", "b=2")
            .header("WWW-Authenticate", "Basic realm=\"upstream\"")
            .header("Connection", "X-Upstream-Hop")
            .header("X-Upstream-Hop", "secret-hop")
            .header("Keep-Alive", "timeout=5"),
    );
    up.on(
        "/api/error",
        Behavior::respond(
            500,
            r#"{"error":"UpstreamOwnCode","message":"from upstream"}"#,
        )
        .header("Content-Type", "application/json"),
    );
    up.on("/api/missing", Behavior::respond(404, "upstream 404"));
    let http = client();

    let r = with_token(http.get(gate.url("/api/teapot")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 418);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(h["x-upstream"], "1");
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(h["www-authenticate"], "Basic realm=\"upstream\"");
    assert!(!h.contains_key("x-upstream-hop"), "{h:?}");
    assert!(!h.contains_key("keep-alive"), "{h:?}");
    assert_eq!(r.text().await.unwrap(), "short and stout");

    let r = with_token(http.get(gate.url("/api/error")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"error":"UpstreamOwnCode","message":"from upstream"}"#
    );

    let r = with_token(http.get(gate.url("/api/missing")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "upstream 404");
    assert_eq!(up.count(), 3);
}

// ---------------------------------------------------------------------------------------------
// Paths and routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn paths_are_normalised_once_for_routing_and_forwarding() {
    let (up, gate) = setup().await;
    // (raw request target, what the upstream must receive)
    let cases = [
        ("/api/./a//b/../c?x=1", "/api/a/c?x=1"),
        ("//api///a", "/api/a"),
        ("/api/%61bc", "/api/abc"),
        ("/api/%7euser/%2D%5F", "/api/~user/-_"),
        ("/api/a/%2e%2e/b", "/api/b"),
        ("/api/a/%2E/b/.", "/api/a/b/"),
        ("/api/%c3%a9/%3b/%20", "/api/%C3%A9/%3B/%20"),
        ("/api/%252f", "/api/%252f"),
        ("/api/a;v=1/b", "/api/a;v=1/b"),
        ("/api/..a/b", "/api/..a/b"),
        // Routed on the normalised path: these reach the api route, not public or plain.
        ("/public/../api/x", "/api/x"),
        ("/plain/%2e%2e/api/y", "/api/y"),
        ("/nowhere/../api/z", "/api/z"),
        ("/api", "/api"),
    ];
    for (target, want) in cases {
        up.clear();
        let r = raw_http(
            gate.addr(),
            raw_request("GET", target, &[(X_AUTH_TOKEN, SHARED_TOKEN)]),
        )
        .await;
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        let seen = up.last();
        assert_eq!(seen.target, want, "{target}");
        // On the api route, so the shared token was injected.
        assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN], "{target}");
    }

    // A traversal from a public route into a protected one needs the token.
    up.clear();
    let r = raw_http(gate.addr(), raw_request("GET", "/public/../api/x", &[])).await;
    r.assert_error(401, "TokenMissing");
    // And one from a protected route into a public one is public.
    let r = raw_http(gate.addr(), raw_request("GET", "/api/../public/x", &[])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().target, "/public/x");
    assert!(up.last().header_all("x-auth-token").is_empty());
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn ambiguous_paths_are_400_and_never_forwarded() {
    let (up, gate) = setup().await;
    let refused = [
        "/api/a%2fb",
        "/api/a%2Fb",
        "/api%2F..%2Fpublic/x",
        "/api/a%5cb",
        "/api/a%5C..%5Cb",
        "/api/..;/x",
        "/api/.;/x",
        "/api/..;jsessionid=1/x",
        // `;` encoded: an upstream decoding `%3B` before path parameters would see `..;`.
        "/api/..%3b/x",
        "/api/..%3B/x",
        "/api/.%3b/x",
        "/api/%2e%2e%3bjsessionid=1/x",
        "/..",
        "/../api/x",
        "/api/../../etc/passwd",
        "/api/%2e%2e/%2e%2e/x",
        "/api/a%00b",
        "/api/%zz",
        "/api/%2",
    ];
    for target in refused {
        let r = raw_http(
            gate.addr(),
            raw_request("GET", target, &[(X_AUTH_TOKEN, SHARED_TOKEN)]),
        )
        .await;
        r.assert_error(400, "InvalidPath");
        assert!(!r.text().contains(SHARED_TOKEN));
    }
    // A raw backslash is refused too (by ucgate or, before it, by the HTTP parser).
    for target in ["/api\\x", "/api/..\\..\\x"] {
        let r = raw_http(
            gate.addr(),
            raw_request("GET", target, &[(X_AUTH_TOKEN, SHARED_TOKEN)]),
        )
        .await;
        assert_eq!(r.status, 400, "{target}: {}", r.text());
    }
    // Not origin-form.
    let r = raw_http(
        gate.addr(),
        raw_request("OPTIONS", "*", &[(X_AUTH_TOKEN, SHARED_TOKEN)]),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.count(), 0, "{:#?}", up.requests());
}

#[tokio::test]
async fn the_longest_prefix_wins_on_whole_segments() {
    let outer = Upstream::start().await;
    let inner = Upstream::start().await;
    let root = Upstream::start().await;
    let config = ConfigBuilder::new()
        .route(route("outer", "/a/", &outer.url()))
        .route(route("inner", "/a/b/", &inner.url()))
        .route(route("root", "/", &root.url()).public())
        .build();
    let gate = Ucgate::start(config).await;
    let http = client();
    let cases = [
        ("/a/b/c", "inner"),
        ("/a/b/", "inner"),
        ("/a/b", "inner"),
        ("/a/./b/../b/c", "inner"),
        ("/a/bc", "outer"),
        ("/a/x/b/c", "outer"),
        ("/a/", "outer"),
        ("/a", "outer"),
        ("/ab", "root"),
        ("/", "root"),
        ("/b/a/b", "root"),
    ];
    for (path, want) in cases {
        for u in [&outer, &inner, &root] {
            u.clear();
        }
        let r = with_token(http.get(gate.url(path))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let counts = [outer.count(), inner.count(), root.count()];
        let got = match counts {
            [1, 0, 0] => "outer",
            [0, 1, 0] => "inner",
            [0, 0, 1] => "root",
            _ => panic!("{path}: {counts:?}"),
        };
        assert_eq!(got, want, "{path}");
    }
}

#[tokio::test]
async fn prefixes_match_whole_segments_and_unknown_paths_are_404() {
    let up = Upstream::start().await;
    let config = ConfigBuilder::new()
        .route(route("configmgt", "/configmgt/", &up.url()))
        .build();
    let gate = Ucgate::start(config).await;
    let http = client();
    for path in ["/configmgt", "/configmgt/", "/configmgt/api/1.0/users"] {
        let r = with_token(http.get(gate.url(path))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(up.last().path, path);
    }
    up.clear();
    for path in [
        "/configmgtx",
        "/configmgtx/y",
        "/config",
        "/",
        "/recording/x",
    ] {
        let r = with_token(http.get(gate.url(path))).send().await.unwrap();
        assert_error(r, 404, "NoRoute").await;
    }
    // Without a token too: 404, not 401.
    let r = client().get(gate.url("/nope")).send().await.unwrap();
    assert_error(r, 404, "NoRoute").await;
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn every_listener_serves() {
    let up = Upstream::start().await;
    let config = routes(&up)
        .server(r#"listen = ["127.0.0.1:0", "127.0.0.1:0"]"#)
        .build();
    let gate = Ucgate::builder(config).listeners(2).start().await;
    assert_eq!(gate.addrs.len(), 2);
    assert_ne!(gate.addrs[0], gate.addrs[1]);
    for addr in &gate.addrs {
        let r = with_token(client().get(format!("http://{addr}/api/l")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{addr}");
        assert_eq!(up.last().header("x-forwarded-host"), Some(addr.to_string()));
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn health_and_readiness_answer_locally() {
    let up = Upstream::start().await;
    // A catch-all public route must not shadow them.
    let config = ConfigBuilder::new()
        .route(route("root", "/", &up.url()).public())
        .build();
    let gate = Ucgate::start(config).await;
    for path in ["/healthz", "/readyz"] {
        let r = client().get(gate.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body.is_object(), "{body}");
        let r = h2_client().get(gate.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} over h2");
    }
    let r = client().post(gate.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(up.count(), 0, "{:#?}", up.requests());
}

// ---------------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let (_up, gate) = setup().await;
    let r = with_token(client().get(gate.url("/down/x")))
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 502, "UpstreamUnavailable").await;
    assert!(!body.to_string().contains(SHARED_TOKEN));
    let lines = gate.wait_access_lines(1).await;
    assert!(lines[0].contains(r#"route="down" status=502"#), "{lines:?}");
}

#[tokio::test]
async fn an_upstream_that_drops_the_connection_is_502() {
    let (up, gate) = setup().await;
    up.on("/api/abort", Behavior::Abort);
    let r = with_token(client().get(gate.url("/api/abort")))
        .send()
        .await
        .unwrap();
    assert_error(r, 502, "UpstreamUnavailable").await;
    assert_eq!(up.last().path, "/api/abort");
    // The gateway still works afterwards.
    let r = with_token(client().get(gate.url("/api/ok")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_slow_upstream_is_504() {
    let (up, gate) = setup().await;
    up.on("/slow/", Behavior::delay(5_000, Behavior::Echo));
    up.on("/slow/fast", Behavior::Echo);
    let r = with_token(client().get(gate.url("/slow/x")))
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 504, "UpstreamTimeout").await;
    assert!(!body.to_string().contains(SHARED_TOKEN));
    assert_eq!(up.last().path, "/slow/x", "the upstream did receive it");
    // The timeout is per route: a fast answer on the same route passes.
    let r = with_token(client().get(gate.url("/slow/fast")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines = gate.wait_access_lines(2).await;
    assert!(
        lines[0].contains(r#"route="slow" status=504"#) && lines[0].contains("UpstreamTimeout"),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Protocols and streaming
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn h2_with_prior_knowledge_is_served() {
    let (up, gate) = setup().await;
    let http = h2_client();
    let r = with_token(http.post(gate.url("/api/h2?a=1")))
        .body("h2 body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.target, "/api/h2?a=1");
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    assert_eq!(seen.header("host"), Some(up.authority()));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gate.addr().to_string())
    );
    assert_eq!(seen.body_len, 7);
    // Errors over h2 are the same JSON.
    let r = http.get(gate.url("/api/h2")).send().await.unwrap();
    assert_eq!(r.version(), Version::HTTP_2);
    assert_error(r, 401, "TokenMissing").await;
    // Many concurrent streams on one connection.
    let requests =
        (0..20).map(|i| with_token(http.get(gate.url(&format!("/api/stream/{i}")))).send());
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(up.count(), 21);
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let (up, gate) = setup().await;
    let http = client();
    for i in 0..10 {
        let r = with_token(http.get(gate.url(&format!("/api/pool/{i}"))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(up.count(), 10);
    assert!(
        up.connections() <= 2,
        "{} upstream connections for 10 sequential requests",
        up.connections()
    );
}

const GIB: u64 = 1 << 30;
const MAX_HWM_KIB: u64 = 100 * 1024;

#[tokio::test]
async fn a_1_gib_upload_streams_with_flat_memory() {
    let (up, gate) = setup().await;
    let r = with_token(client().put(gate.url("/api/upload")))
        .body(reqwest::Body::wrap_stream(generated_stream(GIB)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echoed["body_len"], GIB);
    let seen = up.last();
    assert_eq!(seen.body_len, GIB);
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    let hwm = gate.vm_hwm_kib();
    eprintln!("ucgate VmHWM: {hwm} KiB");
    assert!(
        hwm < MAX_HWM_KIB,
        "ucgate peak RSS {hwm} KiB after a 1 GiB upload"
    );
}

#[tokio::test]
async fn a_1_gib_upload_with_content_length_streams_too() {
    let (up, gate) = setup().await;
    // Over h2 this time, with a declared length.
    let size = GIB / 4;
    let r = with_token(h2_client().put(gate.url("/api/upload")))
        .header("content-length", size.to_string())
        .body(reqwest::Body::wrap_stream(generated_stream(size)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().body_len, size);
    assert_eq!(up.last().header("content-length"), Some(size.to_string()));
    let hwm = gate.vm_hwm_kib();
    eprintln!("ucgate VmHWM: {hwm} KiB");
    assert!(
        hwm < MAX_HWM_KIB,
        "ucgate peak RSS {hwm} KiB after a 256 MiB h2 upload"
    );
}

#[tokio::test]
async fn a_1_gib_download_streams_with_flat_memory() {
    let (up, gate) = setup().await;
    up.on("/api/download", Behavior::stream(GIB));
    let r = with_token(client().get(gate.url("/api/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut received = 0u64;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        received += chunk.unwrap().len() as u64;
    }
    assert_eq!(received, GIB);
    let hwm = gate.vm_hwm_kib();
    eprintln!("ucgate VmHWM: {hwm} KiB");
    assert!(
        hwm < MAX_HWM_KIB,
        "ucgate peak RSS {hwm} KiB after a 1 GiB download"
    );
}

#[tokio::test]
async fn aborted_requests_do_not_leak_connections() {
    let (up, gate) = setup().await;
    up.on("/api/hang", Behavior::delay(60_000, Behavior::Echo));
    up.on("/api/big", Behavior::stream(GIB));
    let baseline = gate.open_fds();
    for i in 0..10 {
        let http = client();
        let hang = tokio::spawn(with_token(http.get(gate.url(&format!("/api/hang/{i}")))).send());
        up.wait_for("the hanging request", |r| {
            r.path == format!("/api/hang/{i}")
        })
        .await;
        hang.abort();
        // A download abandoned after its first chunk.
        let r = with_token(http.get(gate.url("/api/big")))
            .send()
            .await
            .unwrap();
        let mut body = r.bytes_stream();
        body.next().await.unwrap().unwrap();
        drop(body);
    }
    // Bounded wait for ucgate to close both sides of every abandoned exchange.
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let fds = gate.open_fds();
        if fds <= baseline + 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fds: {baseline} at start, {fds} now"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = with_token(client().get(gate.url("/api/after")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

fn ws_request(
    gate: &Ucgate,
    path: &str,
    token: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut request = format!("ws://{}{path}", gate.addr())
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert(X_AUTH_TOKEN, token.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn websockets_pass_through_after_authentication() {
    let (up, gate) = setup().await;
    up.on("/ws/", Behavior::WebSocketEcho);
    let (mut ws, response) =
        tokio_tungstenite::connect_async(ws_request(&gate, "/ws/echo?room=1", Some(SHARED_TOKEN)))
            .await
            .expect("websocket handshake through ucgate");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let blob: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    ws.close(None).await.unwrap();

    let seen = up.last();
    assert_eq!(seen.target, "/ws/echo?room=1");
    assert_eq!(
        seen.header("upgrade")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);

    // The token in the query works and is stripped.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(
        &gate,
        &format!("/ws/echo?token={SHARED_TOKEN}"),
        None,
    ))
    .await
    .expect("websocket with a query token");
    ws.send(Message::text("q")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("q"));
    assert_eq!(up.last().target, "/ws/echo");

    // Authentication comes first.
    up.clear();
    for token in [None, Some("wrong")] {
        match tokio_tungstenite::connect_async(ws_request(&gate, "/ws/echo", token)).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{token:?}")
            }
            other => panic!("{token:?}: expected a 401, got {other:?}"),
        }
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn websocket_upgrades_are_stripped_on_other_routes() {
    let (up, gate) = setup().await;
    up.on("/api/", Behavior::WebSocketEcho);
    match tokio_tungstenite::connect_async(ws_request(&gate, "/api/echo", Some(SHARED_TOKEN))).await
    {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 426),
        other => panic!("expected the upstream's 426, got {other:?}"),
    }
    let seen = up.last();
    assert_eq!(seen.path, "/api/echo");
    assert!(
        seen.header_all("upgrade").is_empty(),
        "{}",
        seen.head_text()
    );
    for v in seen.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("upgrade"),
            "{}",
            seen.head_text()
        );
    }
}

/// A tunnel is not HTTP/1 any more: the head and idle deadlines of the connection it came from
/// neither write a 408 into it nor close it, whether messages flow or it is quiet.
#[tokio::test]
async fn a_websocket_tunnel_outlives_the_head_and_idle_deadlines() {
    let up = Upstream::start().await;
    up.on("/ws/", Behavior::WebSocketEcho);
    let config = routes(&up)
        .server("request_header_timeout = \"300ms\"")
        .server("idle_timeout = \"600ms\"")
        .build();
    let gate = Ucgate::start(config).await;
    let (mut ws, response) =
        tokio_tungstenite::connect_async(ws_request(&gate, "/ws/echo", Some(SHARED_TOKEN)))
            .await
            .expect("websocket handshake through ucgate");
    assert_eq!(response.status(), 101);
    // Flowing for longer than both deadlines.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ws.send(Message::text(format!("flowing {i}")))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("flowing {i}"))
        );
    }
    // Quiet for longer than both.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    ws.send(Message::text("after a quiet while")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("after a quiet while")
    );
    ws.close(None).await.unwrap();
}

/// An upstream that closes a kept-alive connection just as the next request arrives (its
/// keep-alive timeout ending then): a GET after the connection was idle is sent once more on a
/// new connection and answered; a POST with a body is not sent twice (502).
#[tokio::test]
async fn a_request_on_a_connection_the_upstream_just_closed_is_sent_again_when_idempotent() {
    let (up, gate) = setup().await;
    up.on("/api/reuse", Behavior::AbortOnReuse);
    let get = || with_token(client().get(gate.url("/api/reuse"))).send();
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(up.connections(), 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200, "{}", gate.logs());
    // The first connection took the request and closed; a new one answered it.
    assert_eq!(up.connections(), 2);
    assert_eq!(up.count(), 3);

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = with_token(client().post(gate.url("/api/reuse")))
        .body("a body sent once")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(up.count(), 4, "the POST was sent once");
}

/// Reads a request head from `stream` (and whatever came with it); false if it closed first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// An upstream that closes a kept-alive connection while it is idle (its keep-alive timeout):
/// ucgate closes its side too within seconds, rather than keeping the socket half-closed
/// (CLOSE_WAIT) until the next request to that route, and the next request is answered on a
/// new connection.
#[tokio::test]
async fn an_idle_connection_the_upstream_closes_is_closed_here_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                stream.write_all(ok).await.unwrap();
                // Idle: the upstream's keep-alive ends. Half-closed, to see ucgate's close.
                tokio::time::sleep(Duration::from_millis(200)).await;
                stream.shutdown().await.unwrap();
                let since = std::time::Instant::now();
                let eof = matches!(stream.read(&mut [0u8; 64]).await, Ok(0));
                let _ = closed_tx.send((eof, since.elapsed()));
            });
        }
    });
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("api", "/api/", &upstream))
            .build(),
    )
    .await;
    let get = || with_token(client().get(gate.url("/api/idle"))).send();
    assert_eq!(get().await.unwrap().text().await.unwrap(), "ok");
    let (eof, after) = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("ucgate kept the connection the upstream closed")
        .unwrap();
    assert!(eof, "ucgate sent something on an idle connection");
    eprintln!("ucgate closed its side {after:?} after the upstream");
    // The sweep that ended with no idle connection left starts again with the next one.
    assert_eq!(get().await.unwrap().text().await.unwrap(), "ok");
    let (eof, _) = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("ucgate kept the second connection the upstream closed")
        .unwrap();
    assert!(eof);
}

/// An upstream that closes each connection right after its first answer, without saying so
/// (no `Connection: close`): the next request, coming before anything looked at the idle
/// connection again, is not lost on it, and a POST with a body is sent once, on a new one.
#[tokio::test]
async fn a_request_is_not_sent_on_a_connection_the_upstream_closed_while_idle() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(ok).await;
            });
        }
    });
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("api", "/api/", &upstream))
            .build(),
    )
    .await;
    let r = with_token(client().get(gate.url("/api/a")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    for _ in 0..5 {
        // Well before ucgate's own look at idle connections (every second).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = with_token(client().post(gate.url("/api/a")))
            .body("sent once")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", gate.logs());
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 6);
}

/// An upstream that answers each POST with a 413 as soon as its head is in, without reading
/// its body (then reads and discards the rest), and anything else with 200 `ok`. Its URL.
async fn answers_posts_before_their_body() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let post = buf.starts_with(b"POST");
                    buf.drain(..end + 4);
                    if post {
                        // Answered before the body is read; the rest of the body is discarded.
                        let early =
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno";
                        if stream.write_all(early).await.is_err() {
                            return;
                        }
                        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    upstream
}

/// A client connection to `gate` that has sent a POST declaring `declared` bytes and the first
/// 1,000 of them, and has read the early 413 of [`answers_posts_before_their_body`].
async fn upload_answered_early(gate: &Ucgate, declared: usize) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut uploader = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nhost: x\r\n{X_AUTH_TOKEN}: {SHARED_TOKEN}\r\ncontent-length: {declared}\r\n\r\n"
    );
    uploader.write_all(head.as_bytes()).await.unwrap();
    uploader.write_all(&[b'a'; 1000]).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = uploader.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    uploader
}

/// An upstream that answers a POST at once (a 413) while its client is still uploading: the
/// connection, done with the response but still carrying the upload, is not lent to the next
/// request, which would otherwise wait for the end of that upload and time out (504).
#[tokio::test]
async fn a_connection_still_carrying_an_upload_is_not_lent_to_the_next_request() {
    use tokio::io::AsyncWriteExt;
    let upstream = answers_posts_before_their_body().await;
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("api", "/api/", &upstream).timeout("1s"))
            .build(),
    )
    .await;
    // The upload: a head declaring 1 MB, then a trickle, well within the stall limit.
    let mut uploader = upload_answered_early(&gate, 1_000_000).await;
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if uploader.write_all(&[b'a'; 10]).await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = with_token(client().get(gate.url("/api/next")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gate.logs());
    trickle.abort();
}

/// The same early answer, and a client that goes on uploading for longer than
/// `request_header_timeout`: the bytes after the answer are the rest of its body, not a slow
/// next head, and get no 408 (they used to: an unasked answer after the final one).
#[tokio::test]
async fn an_upload_going_on_after_an_early_answer_is_not_a_slow_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = answers_posts_before_their_body().await;
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .server("request_header_timeout = \"500ms\"")
            .route(route("api", "/api/", &upstream))
            .build(),
    )
    .await;
    let mut uploader = upload_answered_early(&gate, 100_000).await;
    // Two head timeouts' worth of upload, a piece every 100 ms (well within the stall limit).
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        uploader.write_all(&[b'a'; 10]).await.unwrap();
    }
    let mut after = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_millis(300), uploader.read_to_end(&mut after)).await;
    assert!(
        !String::from_utf8_lossy(&after).contains("408"),
        "an answer nobody asked for: {}",
        String::from_utf8_lossy(&after)
    );
    assert_eq!(
        metric(&gate, "ucgate_request_head_timeouts_total").await,
        0,
        "{}",
        gate.logs()
    );
}

/// The upload of [`answers_early_with_a_large_body`]'s requests, and its answer's body.
const EARLY_UPLOAD: usize = 8 << 20;
const EARLY_ANSWER: usize = 16 << 20;

/// An upstream that answers a request at once with a large body (an error page, a result it
/// needs no body for), [`EARLY_ANSWER`] bytes, and reads its body of [`EARLY_UPLOAD`] bytes
/// meanwhile. Its URL, a receiver of the body length read once it has been read whole, and the
/// body bytes read so far.
async fn answers_early_with_a_large_body() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let (read_tx, read_whole) = tokio::sync::mpsc::unbounded_channel();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let received_so_far = progress.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let read_tx = read_tx.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.into_split();
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                let end = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                    match reader.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                };
                // The answer, written while the body is read.
                tokio::spawn(async move {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {EARLY_ANSWER}\r\n\r\n");
                    let _ = writer.write_all(head.as_bytes()).await;
                    let _ = writer.write_all(&vec![b'x'; EARLY_ANSWER]).await;
                });
                let mut body = buf.len() - end;
                while body < EARLY_UPLOAD {
                    match reader.read(&mut chunk).await {
                        Ok(n) if n > 0 => {
                            body += n;
                            progress.store(body, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
                let _ = read_tx.send(body);
            });
        }
    });
    (upstream, read_whole, received_so_far)
}

/// [`answers_early_with_a_large_body`], and a client that sends its whole body before it reads
/// anything (most HTTP/1.1 clients do): the upload goes on while the answer waits in the
/// sockets, as it does with ucgate out of the way. It stalled when the upstream connection
/// progressed only as the client read the answer.
#[tokio::test]
async fn an_upload_answered_early_with_a_large_body_goes_on_while_the_client_is_not_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const UPLOAD: usize = EARLY_UPLOAD;
    const ANSWER: usize = EARLY_ANSWER;
    let (upstream, mut read_whole, received_so_far) = answers_early_with_a_large_body().await;
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("api", "/api/", &upstream))
            .build(),
    )
    .await;
    // Small socket buffers: the answer fills the way to the client well before the upload ends.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    let mut client = socket.connect(gate.addr()).await.unwrap();
    let head = format!(
        "POST /api/early HTTP/1.1\r\nhost: x\r\n{X_AUTH_TOKEN}: {SHARED_TOKEN}\r\ncontent-length: {UPLOAD}\r\n\r\n"
    );
    let upload = async {
        client.write_all(head.as_bytes()).await.unwrap();
        let piece = vec![b'a'; 256 * 1024];
        for _ in 0..UPLOAD / piece.len() {
            client.write_all(&piece).await.unwrap();
        }
    };
    tokio::time::timeout(BOUND, upload)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the upload stalled behind the answer, {} of {UPLOAD} bytes upstream\n{}",
                received_so_far.load(std::sync::atomic::Ordering::Relaxed),
                gate.logs()
            )
        });
    let received = tokio::time::timeout(BOUND, read_whole.recv())
        .await
        .expect("the upstream did not get the whole upload")
        .unwrap();
    assert_eq!(received, UPLOAD);
    // Then the answer, whole.
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let read = async {
        loop {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the answer broke off after {} bytes", answer.len());
            answer.extend_from_slice(&chunk[..n]);
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n")
                && answer.len() - (end + 4) == ANSWER
            {
                break;
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the answer stalled");
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
}

/// The same over h2: the client has the answer's head and goes on uploading without reading
/// the body, whose flow-control window fills. The upload goes on (it stalled with it).
#[tokio::test]
async fn an_h2_upload_answered_early_with_a_large_body_goes_on_while_the_client_is_not_reading() {
    let (upstream, mut read_whole, received_so_far) = answers_early_with_a_large_body().await;
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("api", "/api/", &upstream))
            .build(),
    )
    .await;
    let r = tokio::time::timeout(
        BOUND,
        with_token(h2_client().post(gate.url("/api/early")))
            .header("content-length", EARLY_UPLOAD.to_string())
            .body(reqwest::Body::wrap_stream(generated_stream(
                EARLY_UPLOAD as u64,
            )))
            .send(),
    )
    .await
    .expect("no answer")
    .unwrap();
    assert_eq!(r.status(), 200);
    let received = tokio::time::timeout(BOUND, read_whole.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the upload stalled behind the answer, {} of {EARLY_UPLOAD} bytes upstream\n{}",
                received_so_far.load(std::sync::atomic::Ordering::Relaxed),
                gate.logs()
            )
        })
        .unwrap();
    assert_eq!(received, EARLY_UPLOAD);
    let answer = tokio::time::timeout(BOUND, r.bytes())
        .await
        .expect("the answer stalled")
        .unwrap();
    assert_eq!(answer.len(), EARLY_ANSWER);
}

/// An upstream answer framed both ways, `Transfer-Encoding: chunked` and a `Content-Length`
/// that disagrees: the coding wins (RFC 9112 §6.3), and the client gets the whole body, not
/// as many bytes as the stale length says.
#[tokio::test]
async fn a_chunked_answer_with_a_stale_length_reaches_the_client_whole() {
    let upstream = faulty::FaultyUpstream::start(faulty::Fault::Answer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
          14\r\nabcdefghijklmnopqrst\r\n0\r\n\r\n",
    ))
    .await;
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("api", "/api/", &upstream.url()))
            .build(),
    )
    .await;
    let r = with_token(client().get(gate.url("/api/coded")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gate.logs());
    assert_ne!(
        r.headers().get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    assert_eq!(r.text().await.unwrap(), "abcdefghijklmnopqrst");
}

/// An upstream that answers a kept-alive connection's second request with a head it cannot
/// have meant (a status of four digits): an answer, not a connection closed under the request,
/// so the request is not sent again (502, received once).
#[tokio::test]
async fn a_garbled_answer_on_a_reused_connection_is_not_asked_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                for nth in 0.. {
                    // One request head per read is enough for this client's small GETs.
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let answer: &[u8] = if nth == 0 {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("api", "/api/", &upstream))
            .build(),
    )
    .await;
    let get = || with_token(client().get(gate.url("/api/garbled"))).send();
    assert_eq!(get().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(get().await.unwrap().status(), 502);
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the garbled answer's request was sent again"
    );
}

/// The kernel's timer on the IPv4 loopback socket from `local` port to `remote` port, from
/// /proc/net/tcp: (`timer_active`, ticks until it fires). 2 with about a minute to go is the
/// keepalive timer of an idle connection (a delayed ACK's is milliseconds).
fn tcp_timer(local: u16, remote: u16) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
        if port(fields[1])? != local || port(fields[2])? != remote {
            return None;
        }
        let (active, when) = fields[5].split_once(':')?;
        Some((active.parse().ok()?, u64::from_str_radix(when, 16).ok()?))
    })
}

/// A client that vanishes without closing (a WebSocket tunnel has no idle deadline) is found out
/// by TCP keepalive: ucgate's side of an idle client connection has its keepalive timer armed,
/// about a minute out.
#[tokio::test]
async fn client_connections_have_tcp_keepalive() {
    let (_up, gate) = setup().await;
    let client = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let (server, mine) = (gate.addr().port(), client.local_addr().unwrap().port());
    assert!(
        eventually(|| tcp_timer(server, mine).is_some_and(|(active, _)| active == 2)).await,
        "no keepalive timer on ucgate's side: {:?}",
        tcp_timer(server, mine)
    );
    let (_, ticks) = tcp_timer(server, mine).unwrap();
    // Clock ticks (USER_HZ, 100 a second): between 30 s and 60 s from now.
    assert!((3_000..=6_000).contains(&ticks), "{ticks}");
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_complete() {
    let (up, mut gate) = setup().await;
    up.on(
        "/api/slow",
        Behavior::delay(1_500, Behavior::respond(200, "finished")),
    );
    let in_flight = tokio::spawn(with_token(client().get(gate.url("/api/slow"))).send());
    up.wait_for("the slow request", |r| r.path == "/api/slow")
        .await;
    gate.sigterm();
    gate.wait_log("shutting down").await;
    // No new connections once draining.
    assert!(
        tokio::net::TcpStream::connect(gate.addr()).await.is_err(),
        "ucgate still accepts connections after SIGTERM"
    );
    let r = in_flight.await.unwrap().expect("the in-flight request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "finished");
    let status = gate.wait().await;
    assert_eq!(status.code(), Some(0), "{}", gate.logs());
    let lines = gate.access_log();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#"path="/api/slow" route="api" status=200"#)),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_shutdown_grace_bounds_the_drain() {
    let up = Upstream::start().await;
    up.on("/api/hang", Behavior::delay(60_000, Behavior::Echo));
    let mut gate = Ucgate::start(routes(&up).server("shutdown_grace = \"300ms\"").build()).await;
    let in_flight = tokio::spawn(with_token(client().get(gate.url("/api/hang"))).send());
    up.wait_for("the hanging request", |r| r.path == "/api/hang")
        .await;
    gate.sigint();
    // Exits (within the harness bound, far below the upstream's 60 s) with success.
    let status = gate.wait().await;
    assert_eq!(status.code(), Some(0), "{}", gate.logs());
    assert!(
        in_flight.await.unwrap().is_err(),
        "the request cut at the end of the grace must fail"
    );
    assert!(gate.logs().contains("SIGINT"), "{}", gate.logs());
}

/// An idle keep-alive connection is closed as the drain starts: it does not hold ucgate for
/// the whole grace (a minute here, beyond the harness's bound), and its client sees the close.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let mut gate = Ucgate::start(routes(&up).server("shutdown_grace = \"60s\"").build()).await;
    let mut idle = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let head = format!(
        "GET /api/x HTTP/1.1\r\nhost: {}\r\nx-auth-token: {SHARED_TOKEN}\r\n\r\n",
        gate.addr()
    );
    idle.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 65536];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    gate.sigterm();
    let status = gate.wait().await;
    assert_eq!(status.code(), Some(0), "{}", gate.logs());
    let closed = tokio::time::timeout(BOUND, async {
        loop {
            match idle.read(&mut answer).await {
                Ok(0) | Err(_) => break,
                // The rest of the first answer, if it came in two reads.
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was never closed");
}

// ---------------------------------------------------------------------------------------------
// Thread per core
// ---------------------------------------------------------------------------------------------

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Issue 18: with `server.thread_per_core`, worker threads of their own accept from every public
/// listener and serve what they accepted, the operator's listener stays apart, and SIGTERM
/// still drains: listeners closed first, the request under way finished, exit 0.
#[tokio::test]
async fn per_core_workers_serve_every_listener_and_drain() {
    let up = Upstream::start().await;
    up.on(
        "/api/slow",
        Behavior::delay(1_500, Behavior::respond(200, "finished")),
    );
    let admin = free_port();
    let config = routes(&up)
        .server(r#"listen = ["127.0.0.1:0", "127.0.0.1:0"]"#)
        .server("workers = 3")
        .server("thread_per_core = true")
        .server(&format!("admin_listen = \"127.0.0.1:{admin}\""))
        .build();
    let mut gate = Ucgate::builder(config).listeners(3).start().await;
    let workers: Vec<_> = thread_names(gate.pid())
        .into_iter()
        .filter(|n| n.starts_with("ucgate-worker-"))
        .collect();
    assert_eq!(workers.len(), 3, "{workers:?}");
    let public: Vec<_> = listening_addrs(&gate.logs())
        .into_iter()
        .filter(|a| a.port() != admin)
        .collect();
    assert_eq!(public.len(), 2, "{}", gate.logs());
    // Many clients, each its own connection, on both listeners: every answer is the upstream's,
    // which saw the shared token each time.
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..24 {
        let url = format!("http://{}/api/c{i}", public[i % 2]);
        clients.spawn(async move {
            let client = client();
            for _ in 0..10 {
                let r = with_token(client.get(&url)).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let requests = up.requests();
    assert_eq!(requests.len(), 240);
    assert!(
        requests
            .iter()
            .all(|r| r.header("x-auth-token").as_deref() == Some(SHARED_TOKEN)),
        "every forwarded request carries the shared token"
    );
    // The operator's listener answers, the public ones do not serve /metrics.
    let metrics = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("ucgate_tasks_alive"));
    let r = client()
        .get(format!("http://{}/metrics", public[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // workers and thread_per_core are read at start only: a reload says so.
    let file = gate.dir().join("ucgate.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    write_atomic(
        &file,
        text.replace("thread_per_core = true", "thread_per_core = false"),
    );
    gate.signal(libc::SIGHUP);
    let warning = gate.wait_log("take effect at the next restart only").await;
    assert!(
        warning.ends_with("settings=server.thread_per_core"),
        "{warning}"
    );

    let in_flight =
        tokio::spawn(with_token(client().get(format!("http://{}/api/slow", public[0]))).send());
    up.wait_for("the slow request", |r| r.path == "/api/slow")
        .await;
    gate.sigterm();
    gate.wait_log("shutting down").await;
    for addr in &public {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "a worker still accepts on {addr} after SIGTERM"
        );
    }
    let r = in_flight.await.unwrap().expect("the in-flight request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "finished");
    let status = gate.wait().await;
    assert_eq!(status.code(), Some(0), "{}", gate.logs());
}

// ---------------------------------------------------------------------------------------------
// Configuration and CLI
// ---------------------------------------------------------------------------------------------

fn static_routes() -> ConfigBuilder {
    ConfigBuilder::new()
        .route(route("configmgt", "/configmgt/", "http://127.0.0.1:9100"))
        .route(route("recording", "/recording/", "http://127.0.0.1:9400").timeout("1m"))
        .route(
            route("pub", "/pub/", "http://127.0.0.1:9500")
                .public()
                .websocket(),
        )
}

/// `ucgate_tasks_alive` counts the tasks of every runtime, whichever worker answers the
/// scrape (here the public listener serves /metrics, on both workers).
#[tokio::test]
async fn tasks_alive_counts_every_worker_s_tasks() {
    let up = Upstream::start().await;
    let config = routes(&up)
        .server("workers = 2")
        .server("thread_per_core = true")
        .build();
    let gate = Ucgate::start(config).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(gate.addr()).await.unwrap());
    }
    let workers = || {
        thread_names(gate.pid())
            .iter()
            .filter(|n| n.starts_with("ucgate-worker-"))
            .count()
    };
    assert_eq!(workers(), 2);
    let mut seen = Vec::new();
    for _ in 0..8 {
        // A new connection each time: either worker may take it.
        seen.push(metric(&gate, "ucgate_tasks_alive").await);
    }
    let (low, high) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
    assert!(low >= 40, "{seen:?}");
    assert!(
        high - low <= 4,
        "the count depends on the worker answering: {seen:?}"
    );
}

#[test]
fn check_config_prints_how_the_workers_run() {
    for (lines, expected) in [
        (
            &["workers = 4", "thread_per_core = true"][..],
            "workers: 4, thread per core\n",
        ),
        (
            &["workers = 2"][..],
            "workers: 2, one work-stealing runtime\n",
        ),
        (
            &["workers = 1", "thread_per_core = true"][..],
            "workers: 1\n",
        ),
    ] {
        let config = lines
            .iter()
            .fold(static_routes(), |c, line| c.server(line))
            .build();
        let out = Ucgate::builder(config).run(&["check-config"]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        assert!(
            out.stdout.contains(expected),
            "{expected:?} in\n{}",
            out.stdout
        );
    }
    let out = Ucgate::builder(static_routes().server("thread_per_core = \"yes\"").build())
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("thread_per_core"), "{}", out.stderr);
}

#[test]
fn check_config_prints_the_resolved_routes_and_the_token_source_only() {
    let out = Ucgate::builder(static_routes().build()).run(&["check-config"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("shared token: from environment variable PLAY_AUTH_TOKEN"),
        "{}",
        out.stdout
    );
    for needle in [
        "configmgt",
        "/configmgt/",
        "http://127.0.0.1:9100",
        "recording",
        "/recording/",
        "http://127.0.0.1:9400",
        "1m",
        "/pub/",
        "websocket",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle} missing from:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains(SHARED_TOKEN) && !out.stderr.contains(SHARED_TOKEN));

    // The config may come from UCGATE_CONFIG.
    let out = Ucgate::builder(static_routes().build())
        .config_via_env()
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("/recording/"), "{}", out.stdout);
}

/// Runs check-config on `config` and returns stderr, asserting exit 2 and the "ucgate: FILE: "
/// prefix.
fn config_error(builder: UcgateBuilder) -> String {
    let out = builder.run(&["check-config"]);
    assert_eq!(
        out.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let prefix = format!("ucgate: {}: ", out.config_path.display());
    assert!(
        out.stderr.starts_with(&prefix),
        "{:?} does not start with {prefix:?}",
        out.stderr
    );
    assert!(!out.stderr.contains(SHARED_TOKEN));
    out.stderr
}

#[test]
fn an_unknown_key_is_refused_naming_file_line_and_key() {
    let config = static_routes().server("lisen = [\"127.0.0.1:1\"]").build();
    let line = config.lines().position(|l| l.starts_with("lisen")).unwrap() + 1;
    let e = config_error(Ucgate::builder(config));
    assert!(e.contains("lisen"), "{e}");
    assert!(e.contains(&format!("line {line}")), "{e}");

    let e = config_error(Ucgate::builder(
        static_routes()
            .route(route("x", "/x/", "http://127.0.0.1:1").line("acept = []"))
            .build(),
    ));
    assert!(e.contains("acept"), "{e}");

    // And `run` refuses the same way.
    let config = static_routes().raw("[servre]\nlisten = []").build();
    let out = Ucgate::builder(config).run(&["run"]);
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("servre"), "{}", out.stderr);
}

#[test]
fn invalid_values_are_refused_with_the_key_and_reason() {
    let cases: Vec<(ConfigBuilder, &[&str])> = vec![
        (
            static_routes().server("shutdown_grace = \"3 parsecs\""),
            &["shutdown_grace", "duration"],
        ),
        (
            static_routes().server("listen = [\"not-an-address\"]"),
            &["listen"],
        ),
        (
            static_routes().route(route("bad", "/bad/", "ftp://127.0.0.1:1")),
            &["route[3].upstream"],
        ),
        (
            static_routes().route(route("bad", "/bad/", "http://127.0.0.1:1/api")),
            &["route[3].upstream", "path"],
        ),
        (
            static_routes().route(route("bad", "bad/", "http://127.0.0.1:1")),
            &["route[3].prefix"],
        ),
        (
            static_routes().route(route("bad", "/a/../bad/", "http://127.0.0.1:1")),
            &["route[3].prefix"],
        ),
        (
            static_routes().route(route("bad", "/bad/", "http://127.0.0.1:1").accept(&[])),
            &["route[3].upstream_auth"],
        ),
        (
            static_routes()
                .route(route("bad", "/bad/", "http://127.0.0.1:1").accept(&["kerberos"])),
            // The key and the problem, not the value typed (it could be anything, a secret).
            &["accept", "unknown variant"],
        ),
        (
            static_routes()
                .route(route("bad", "/bad/", "http://127.0.0.1:1").upstream_auth("basic")),
            &["upstream_auth", "unknown variant"],
        ),
        (
            static_routes().route(route("bad", "/bad/", "http://127.0.0.1:1").timeout("0s")),
            &["route[3].timeout"],
        ),
        (
            static_routes().route(route("configmgt", "/other/", "http://127.0.0.1:1")),
            &["route[3].name", "duplicate"],
        ),
        (
            static_routes().route(route("other", "/configmgt/", "http://127.0.0.1:1")),
            &["route[3].prefix"],
        ),
        (
            static_routes().shared_token("env = \"\""),
            &["shared_token.env"],
        ),
    ];
    for (config, needles) in cases {
        let e = config_error(Ucgate::builder(config.build()));
        for needle in needles {
            assert!(e.contains(needle), "{needle:?} missing from {e:?}");
        }
    }
}

#[test]
fn a_missing_shared_token_refuses_to_start() {
    let e = config_error(Ucgate::builder(static_routes().build()).env_remove("PLAY_AUTH_TOKEN"));
    assert!(e.contains("PLAY_AUTH_TOKEN"), "{e}");

    // Empty is missing.
    let e = config_error(Ucgate::builder(static_routes().build()).env("PLAY_AUTH_TOKEN", ""));
    assert!(e.contains("PLAY_AUTH_TOKEN"), "{e}");

    // Files that do not define it (or do not exist) are named.
    let config = static_routes()
        .shared_token("env_files = [\"custom.env\", \"absent.env\"]")
        .build();
    let e = config_error(
        Ucgate::builder(config)
            .env_remove("PLAY_AUTH_TOKEN")
            .file("custom.env", "OTHER=1\nPLAY_AUTH_TOKEN=\n"),
    );
    assert!(
        e.contains("PLAY_AUTH_TOKEN") && e.contains("custom.env"),
        "{e}"
    );

    // `run` too, before listening.
    let out = Ucgate::builder(static_routes().build())
        .env_remove("PLAY_AUTH_TOKEN")
        .run(&["run"]);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
}

#[test]
fn a_broken_env_file_is_refused_without_echoing_it() {
    let config = static_routes()
        .shared_token("env_files = [\"custom.env\"]")
        .build();
    let e = config_error(Ucgate::builder(config).env_remove("PLAY_AUTH_TOKEN").file(
        "custom.env",
        "PLAY_AUTH_TOKEN=\"unterminated-Secret-Value\n",
    ));
    assert!(e.contains("custom.env"), "{e}");
    assert!(!e.contains("unterminated-Secret-Value"), "{e}");
}

const ENV_FILE: &str = "# XiVO custom.env\n\
    XIVO_HOST=192.0.2.1\n\
    \n\
    export PLAY_AUTH_TOKEN=\"file token with spaces\"  # the shared token\n\
    OTHER='x'\n";

#[tokio::test]
async fn the_shared_token_comes_from_env_files_when_the_variable_is_unset() {
    let up = Upstream::start().await;
    let config = routes(&up)
        .shared_token("env_files = [\"absent.env\", \"conf/custom.env\"]")
        .build();
    let builder = || {
        Ucgate::builder(config.clone())
            .env_remove("PLAY_AUTH_TOKEN")
            .file("conf/custom.env", ENV_FILE)
    };

    let out = builder().run(&["check-config"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("shared token: from PLAY_AUTH_TOKEN in")
            && out.stdout.contains("conf/custom.env"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("file token with spaces"),
        "{}",
        out.stdout
    );

    let gate = builder().start().await;
    let file_token = "file token with spaces";
    let r = client()
        .get(gate.url("/api/x"))
        .header(X_AUTH_TOKEN, file_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header_all("x-auth-token"), [file_token]);
    // The test default is not the token here.
    let r = with_token(client().get(gate.url("/api/x")))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "TokenInvalid").await;
    assert!(!gate.logs().contains(file_token), "{}", gate.logs());

    // An empty variable falls back to the files as well; a set one wins over them.
    let out = builder().env("PLAY_AUTH_TOKEN", "").run(&["check-config"]);
    assert!(out.stdout.contains("conf/custom.env"), "{}", out.stdout);
    let out = builder()
        .env("PLAY_AUTH_TOKEN", "from-env")
        .run(&["check-config"]);
    assert!(
        out.stdout
            .contains("from environment variable PLAY_AUTH_TOKEN"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn the_shared_token_variable_name_is_configurable() {
    let up = Upstream::start().await;
    let config = routes(&up).shared_token("env = \"XIVO_SHARED\"").build();
    let gate = Ucgate::builder(config)
        .env_remove("PLAY_AUTH_TOKEN")
        .env("XIVO_SHARED", "named-variable-token")
        .start()
        .await;
    let r = client()
        .get(gate.url("/api/x"))
        .header(X_AUTH_TOKEN, "named-variable-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header_all("x-auth-token"),
        ["named-variable-token"]
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets and logs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_secret_reaches_logs_error_bodies_or_upstream_urls() {
    let up = Upstream::start().await;
    // Not Echo: an echo would (rightly) show the injected token in the body.
    up.on("/", Behavior::respond(200, "upstream ok"));
    up.on("/ws/", Behavior::WebSocketEcho);
    up.on("/slow/", Behavior::delay(2_000, Behavior::Echo));
    let gate = Ucgate::builder(routes(&up).build())
        .log("trace")
        .start()
        .await;
    let wrong = "wrong-Secret-Qv83Lm";
    let http = client();
    let h2 = h2_client();
    let mut bodies = Vec::new();
    let mut requests = 0;
    let scenario = [
        format!("/api/a?token={SHARED_TOKEN}"),
        format!("/api/b?x=1&token={SHARED_TOKEN}"),
        format!("/api/c?%74oken={SHARED_TOKEN}"),
        format!("/api/d?token={wrong}"),
        format!("/api/e?token={SHARED_TOKEN}&token={wrong}"),
        format!("/uconly/f?token={SHARED_TOKEN}"),
        format!("/down/g?token={SHARED_TOKEN}"),
        format!("/slow/h?token={SHARED_TOKEN}"),
        format!("/plain/i?token={SHARED_TOKEN}"),
        format!("/public/j?token={SHARED_TOKEN}"),
        format!("/api/%2e%2e/%2e%2e/k?token={SHARED_TOKEN}"),
        format!("/nowhere?token={SHARED_TOKEN}"),
    ];
    for path in &scenario {
        for c in [&http, &h2] {
            let r = c.get(gate.url(path)).send().await.unwrap();
            bodies.push(r.text().await.unwrap());
            requests += 1;
        }
    }
    for (token, c) in [
        (SHARED_TOKEN, &http),
        (wrong, &http),
        (SHARED_TOKEN, &h2),
        (wrong, &h2),
    ] {
        for path in [
            "/api/header",
            "/uconly/header",
            "/down/header",
            "/plain/header",
        ] {
            let r = c
                .get(gate.url(path))
                .header(X_AUTH_TOKEN, token)
                .send()
                .await
                .unwrap();
            bodies.push(r.text().await.unwrap());
            requests += 1;
        }
    }
    let r = raw_http(
        gate.addr(),
        raw_request(
            "GET",
            "/api/raw",
            &[(X_AUTH_TOKEN, SHARED_TOKEN), (X_AUTH_TOKEN, wrong)],
        ),
    )
    .await;
    bodies.push(r.text());
    requests += 1;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(ws_request(&gate, "/ws/s", Some(SHARED_TOKEN)))
            .await
            .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    requests += 1;

    gate.wait_access_lines(requests).await;
    let logs = gate.logs();
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes in logs written to a pipe"
    );
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the scenario must run with verbose logs"
    );
    for secret in [SHARED_TOKEN, wrong] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        for body in &bodies {
            assert!(
                !body.contains(secret),
                "{secret} in a response body: {body}"
            );
        }
    }
    for seen in up.requests() {
        assert!(
            !seen.target.contains(SHARED_TOKEN) && !seen.target.contains(wrong),
            "{}",
            seen.target
        );
        assert!(!seen.target.contains("token="), "{}", seen.target);
    }
    // Every request has its one access-log line, with the path but never the query.
    let lines = gate.access_log();
    assert_eq!(lines.len(), requests, "{lines:#?}");
    assert!(lines.iter().all(|l| !l.contains('?')), "{lines:#?}");
}

// ---------------------------------------------------------------------------------------------
// Upstream connections
// ---------------------------------------------------------------------------------------------

/// A raw keep-alive upstream that answers every request with a small 200 and closes its idle
/// connections when told to (as a keep-alive timeout shorter than ucgate's would, but at a moment
/// the test chooses: a timer of its own would also fire when the test process is merely held up
/// between two requests on a loaded machine); counts the connections it accepted and closed.
struct ClosingUpstream {
    url: String,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    close_idle: tokio::sync::watch::Sender<u64>,
}

impl ClosingUpstream {
    async fn start() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let closed = std::sync::Arc::new(AtomicUsize::new(0));
        let (close_idle, _) = tokio::sync::watch::channel(0u64);
        let (count, ended, orders) = (accepted.clone(), closed.clone(), close_idle.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                let mut order = orders.subscribe();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = tokio::select! {
                            read = stream.read(&mut chunk) => match read {
                                Ok(n @ 1..) => n,
                                _ => break,
                            },
                            // Between requests only: one under way is answered first.
                            _ = order.changed(), if buf.is_empty() => break,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                    drop(stream);
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        ClosingUpstream {
            url,
            accepted,
            closed,
            close_idle,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every idle connection; returns once they are closed.
    async fn close_idle_connections(&self) {
        let open = self.accepted() - self.closed.load(std::sync::atomic::Ordering::SeqCst);
        let target = self.closed.load(std::sync::atomic::Ordering::SeqCst) + open;
        self.close_idle.send_modify(|generation| *generation += 1);
        assert!(
            eventually(|| self.closed.load(std::sync::atomic::Ordering::SeqCst) >= target).await,
            "the upstream's idle connections were not closed"
        );
    }
}

#[tokio::test]
async fn upstream_connections_are_reused_and_one_the_upstream_closed_is_replaced() {
    let up = ClosingUpstream::start().await;
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("api", "/api/", &up.url))
            .build(),
    )
    .await;
    let get = || with_token(client().get(gate.url("/api/x"))).send();
    for _ in 0..20 {
        assert_eq!(get().await.unwrap().status(), 200);
    }
    assert_eq!(up.accepted(), 1, "one connection, kept alive");
    // The upstream closes it while idle: the next request goes on a new one, and succeeds.
    for round in 2..=4 {
        up.close_idle_connections().await;
        // ucgate reads the end of the connection meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = get().await.unwrap();
        assert_eq!(r.status(), 200, "{}", gate.logs());
        assert_eq!(r.text().await.unwrap(), "ok");
        assert_eq!(up.accepted(), round);
    }
    // Concurrent requests get connections of their own, then share them.
    let answers = futures_util::future::join_all((0..8).map(|_| get())).await;
    assert!(answers.iter().all(|r| r.as_ref().unwrap().status() == 200));
    let after_burst = up.accepted();
    assert!(after_burst <= 4 + 8, "{after_burst}");
    for _ in 0..20 {
        assert_eq!(get().await.unwrap().status(), 200);
    }
    assert_eq!(up.accepted(), after_burst, "the pool serves them");
}
