//! Issue 16: XiVO's web clients (UC Assistant, CC Agent, CC Manager) against ucgate, as their
//! public client code calls the xuc authentication API: login with extra fields, check with
//! `Authorization: Bearer` and the renewed token stored in place of the old, CAS with services
//! built by JavaScript's `escape()`, `CasServerInvalidTicket` sending them back to the CAS login,
//! `TokenExpired` meaning "log in again", and cross-origin calls (CORS).

mod browser_support;
mod cas_support;
mod common;

use std::time::Duration;

use browser_support::Page;
use cas_support::CasServer;
use common::*;
use serde_json::{Value, json};

const SIGNING_KEY: &str = "web-clients-signing-key-0123456789abcdef";
const LOGIN: &str = "/xuc/api/2.0/auth/login";
const CHECK: &str = "/xuc/api/2.0/auth/check";
const LOGOUT: &str = "/xuc/api/2.0/auth/logout";
const CAS: &str = "/xuc/api/2.0/auth/cas";
const WEB_ORIGIN: &str = "http://127.0.0.1:8070";

fn users() -> String {
    let hash = String::from_utf8(hash_password_run("alice-pw\n").stdout).unwrap();
    format!(
        "[[user]]\nlogin = \"alice\"\npassword_hash = \"{}\"\ncti_enabled = true\nprofile = \"agent\"\n",
        hash.trim()
    )
}

/// `/api/` opened by UC tokens (the shared token upstream), `/pub/` public, `/web/` with CORS.
fn config(up: &str, tokens: &str, origin: &str, extra: &str) -> String {
    ConfigBuilder::new()
        .route(route("api", "/api/", up).accept(&["shared", "uc"]))
        .route(route("pub", "/pub/", up).public().upstream_auth("none"))
        .route(
            route("web", "/web/", up)
                .accept(&["uc"])
                .upstream_auth("none")
                .line("cors = true"),
        )
        .raw(&format!(
            "[tokens]\n{tokens}\n\n[users]\nfile = \"users.toml\"\nrecheck = \"1s\"\n\n[cors]\nallowed_origins = [\"{origin}\"]\n{extra}"
        ))
        .build()
}

async fn start(up: &Upstream, tokens: &str) -> Ucgate {
    start_for(up, tokens, WEB_ORIGIN).await
}

/// ucgate with `origin` as the one CORS origin.
async fn start_for(up: &Upstream, tokens: &str, origin: &str) -> Ucgate {
    Ucgate::builder(config(&up.url(), tokens, origin, ""))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", users())
        .start()
        .await
}

async fn login(gate: &Ucgate) -> Value {
    // The clients send more than login and password.
    let response = client()
        .post(gate.url(LOGIN))
        .json(&json!({
            "login": "alice",
            "password": "alice-pw",
            "softwareType": "webBrowser",
            "applicationType": "ucassistant",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn check(gate: &Ucgate, token: &str) -> reqwest::Response {
    client()
        .get(gate.url(CHECK))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
}

async fn bearer_get(gate: &Ucgate, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gate.url(path))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn check_renews_within_the_session_and_not_past_it() {
    let up = Upstream::start().await;
    let gate = start(&up, "ttl = \"3s\"\nmax_session = \"5s\"\nleeway = \"0s\"").await;
    let first = login(&gate).await;
    let first = first["token"].as_str().unwrap().to_owned();

    // A check answers a fresh token of the same session, which the client stores.
    let renewed = check(&gate, &first).await;
    assert_eq!(renewed.status(), 200);
    let body: Value = renewed.json().await.unwrap();
    assert_eq!(body["login"], "alice");
    let second = body["token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert!(
        body["TTL"].as_u64().is_some_and(|t| (1..=3).contains(&t)),
        "{body}"
    );
    let (a, b) = (claims(&first), claims(&second));
    for same in ["sub", "profile", "method", "sid", "auth_time"] {
        assert_eq!(a[same], b[same], "{same}");
    }
    assert_ne!(a["jti"], b["jti"]);
    // The renewed token opens the route; the old one still does until its own expiry.
    assert_eq!(bearer_get(&gate, "/api/x", &second).await.status(), 200);
    assert_eq!(bearer_get(&gate, "/api/x", &first).await.status(), 200);

    // Renewed again and again, a session still ends `max_session` after the login.
    let mut token = second;
    let session_end = a["auth_time"].as_u64().unwrap() + 5;
    loop {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let response = check(&gate, &token).await;
        if response.status() != 200 {
            assert!(unix_now() >= session_end - 1, "ended early");
            assert_error(response, 401, "TokenExpired").await;
            break;
        }
        let body: Value = response.json().await.unwrap();
        token = body["token"].as_str().unwrap().to_owned();
        assert!(
            claims(&token)["exp"].as_u64().unwrap() <= session_end,
            "renewed past the session: {body}"
        );
        assert!(
            unix_now() <= session_end + 1,
            "the session outlived max_session"
        );
    }
    // Expired tokens say TokenExpired everywhere the clients may send them.
    for response in [
        check(&gate, &first).await,
        bearer_get(&gate, "/api/x", &first).await,
        client()
            .post(gate.url(LOGOUT))
            .header("X-Auth-Token", &first)
            .send()
            .await
            .unwrap(),
    ] {
        assert_error(response, 401, "TokenExpired").await;
    }
}

#[tokio::test]
async fn logout_ends_every_token_of_the_session() {
    let up = Upstream::start().await;
    let gate = start(&up, "").await;
    let first = login(&gate).await["token"].as_str().unwrap().to_owned();
    let other_session = login(&gate).await["token"].as_str().unwrap().to_owned();
    let mut tokens = vec![first.clone()];
    for _ in 0..2 {
        let body: Value = check(&gate, tokens.last().unwrap())
            .await
            .json()
            .await
            .unwrap();
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    // All used (so cached) before the logout.
    for token in &tokens {
        assert_eq!(bearer_get(&gate, "/api/x", token).await.status(), 200);
    }
    let logout = client()
        .post(gate.url(LOGOUT))
        .header("Authorization", format!("Bearer {}", tokens[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    for token in &tokens {
        assert_error(
            bearer_get(&gate, "/api/x", token).await,
            401,
            "TokenInvalid",
        )
        .await;
        assert_error(check(&gate, token).await, 401, "TokenInvalid").await;
    }
    // Another login of the same person is another session.
    assert_eq!(
        bearer_get(&gate, "/api/x", &other_session).await.status(),
        200
    );
}

#[tokio::test]
async fn a_disabled_user_s_token_is_not_renewed() {
    let up = Upstream::start().await;
    let gate = start(&up, "").await;
    let token = login(&gate).await["token"].as_str().unwrap().to_owned();
    assert_eq!(check(&gate, &token).await.status(), 200);
    write_atomic(
        &gate.dir().join("users.toml"),
        users().replace("cti_enabled = true", "cti_enabled = false"),
    );
    let mut refused = false;
    for _ in 0..80 {
        if check(&gate, &token).await.status() == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "{}", gate.logs());
    assert_error(check(&gate, &token).await, 401, "TokenInvalid").await;
}

#[tokio::test]
async fn bearer_carries_uc_and_shared_tokens_and_never_goes_upstream() {
    let up = Upstream::start().await;
    let gate = start(&up, "").await;
    let token = login(&gate).await["token"].as_str().unwrap().to_owned();
    for credential in [token.as_str(), SHARED_TOKEN] {
        let response = bearer_get(&gate, "/api/x", credential).await;
        assert_eq!(response.status(), 200);
        let seen = up.last();
        assert!(
            seen.header("authorization").is_none(),
            "{}",
            seen.head_text()
        );
        assert_eq!(seen.header_all("x-auth-token"), [SHARED_TOKEN]);
    }
    assert_eq!(up.last().header("x-auth-user"), None);
    // Another scheme is not ucgate's: it goes upstream as it came.
    let response = client()
        .get(gate.url("/api/basic"))
        .header("X-Auth-Token", &token)
        .header("Authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Basic YWxpY2U6c2VjcmV0")
    );
    // The same credential in two places is one; two different ones are ambiguous.
    let same = client()
        .get(gate.url("/api/same"))
        .query(&[("token", token.as_str())])
        .header("Authorization", format!("Bearer {token}"))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200);
    assert_eq!(up.last().target, "/api/same");
    let twice = client()
        .get(gate.url("/api/x"))
        .header("Authorization", format!("Bearer {token}"))
        .header("X-Auth-Token", SHARED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_error(twice, 400, "AmbiguousToken").await;
    // On a public route the Authorization header is the upstream's, whatever it holds.
    let public = bearer_get(&gate, "/pub/x", "upstream-own-token").await;
    assert_eq!(public.status(), 200);
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Bearer upstream-own-token")
    );
    // Check and logout take it too.
    assert_eq!(check(&gate, &token).await.status(), 200);
    let logout = client()
        .post(gate.url(LOGOUT))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert_error(
        bearer_get(&gate, "/api/x", &token).await,
        401,
        "TokenInvalid",
    )
    .await;
}

/// JavaScript's `escape()` of a string: what the web clients build the CAS service with.
fn js_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '@' | '*' | '_' | '+' | '-' | '.' | '/' => {
                out.push(c)
            }
            c if (c as u32) < 0x100 => out.push_str(&format!("%{:02X}", c as u32)),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("%u{unit:04X}"));
                }
            }
        }
    }
    out
}

/// JavaScript's `encodeURIComponent()`.
fn js_encode_uri_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[tokio::test]
async fn cas_as_the_web_clients_do_it() {
    let (cas, up) = tokio::join!(CasServer::start(), Upstream::start());
    let config = config(
        &up.url(),
        "",
        WEB_ORIGIN,
        &format!(
            "\n[cas]\nserver = {}\nallowed_services = [\"http://127.0.0.1:8081/ucassistant\"]\n",
            toml_str(&cas.base)
        ),
    );
    let gate = Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", SSO_USERS)
        .start()
        .await;
    let page = "http://127.0.0.1:8081/ucassistant/?lang=fr&x=é☃";
    for service in [js_escape(page), js_encode_uri_component(page)] {
        // The browser goes to the CAS login page with the service as the client encoded it,
        // then the client sends the same string to ucgate.
        let ticket = cas.ticket_for_encoded(&service, "alice", "alicepw").await;
        let response = client()
            .get(format!(
                "{}?service={service}&ticket={ticket}",
                gate.url(CAS)
            ))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{service}: {body}");
        let token = body["token"].as_str().unwrap().to_owned();
        let renewed: Value = check(&gate, &token).await.json().await.unwrap();
        assert_eq!(renewed["login"], "alice");

        // Used once: a refused ticket is CasServerInvalidTicket, which sends the client back to
        // the CAS login page.
        let again = client()
            .get(format!(
                "{}?service={service}&ticket={ticket}",
                gate.url(CAS)
            ))
            .send()
            .await
            .unwrap();
        assert_error(again, 401, "CasServerInvalidTicket").await;
    }
    // A service outside the allowed ones, however encoded, never reaches the CAS server.
    let evil = js_escape("http://127.0.0.1:8081/ucassistant.evil/");
    let response = client()
        .get(format!("{}?service={evil}&ticket=ST-1-x", gate.url(CAS)))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "CasServiceNotAllowed").await;
}

#[tokio::test]
async fn browsers_of_listed_origins_get_cors_grants_and_others_nothing() {
    let up = Upstream::start().await;
    let gate = start(&up, "").await;
    let token = login(&gate).await["token"].as_str().unwrap().to_owned();
    let preflight = |path: &str, origin: &str, method: &str| {
        client()
            .request(reqwest::Method::OPTIONS, gate.url(path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method)
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
    };
    // Preflights of the exchange endpoints and CORS routes are answered by ucgate, before any
    // credential.
    for (path, method, allowed) in [
        (LOGIN, "POST", "POST"),
        (CHECK, "GET", "GET, HEAD"),
        (LOGOUT, "POST", "POST"),
        (
            "/web/x",
            "DELETE",
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ),
    ] {
        let response = preflight(path, WEB_ORIGIN, method).await.unwrap();
        assert_eq!(response.status(), 204, "{path}");
        let h = response.headers();
        assert_eq!(h["access-control-allow-origin"], WEB_ORIGIN);
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], allowed);
        let allowed_headers = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        assert!(
            allowed_headers.contains("authorization") && allowed_headers.contains("x-auth-token")
        );
        assert_eq!(h["vary"], "Origin");
        // An origin not listed, or a method not served: refused, and no grant.
        for (origin, method) in [("http://evil.test", method), (WEB_ORIGIN, "PROPFIND")] {
            let response = preflight(path, origin, method).await.unwrap();
            assert!(
                response
                    .headers()
                    .get("access-control-allow-origin")
                    .is_none()
            );
            assert_error(response, 403, "CorsNotAllowed").await;
        }
    }
    assert_eq!(up.count(), 0, "preflights never go upstream");
    // Answers, errors included, carry the grant for a listed origin only.
    let from = |origin: &str| {
        client()
            .get(gate.url(CHECK))
            .header("Origin", origin)
            .header("Authorization", format!("Bearer {token}"))
            .send()
    };
    let ok = from(WEB_ORIGIN).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["access-control-allow-origin"], WEB_ORIGIN);
    assert!(
        ok.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("WWW-Authenticate")
    );
    let refused = client()
        .post(gate.url(LOGIN))
        .header("Origin", WEB_ORIGIN)
        .json(&json!({"login": "alice", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.headers()["access-control-allow-origin"], WEB_ORIGIN);
    assert_error(refused, 401, "InvalidCredentials").await;
    let stranger = from("http://evil.test").await.unwrap();
    assert_eq!(stranger.status(), 200);
    assert!(
        stranger
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // A CORS route: the upstream's own grant is replaced by ucgate's.
    up.on(
        "/web/",
        Behavior::respond(200, "ok").header("Access-Control-Allow-Origin", "*"),
    );
    let response = client()
        .get(gate.url("/web/x"))
        .header("Origin", WEB_ORIGIN)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let grants: Vec<_> = response
        .headers()
        .get_all("access-control-allow-origin")
        .iter()
        .collect();
    assert_eq!(grants, [WEB_ORIGIN]);
    // A route without `cors`: no grant, and its preflight is a request like any other (401).
    let response = client()
        .get(gate.url("/api/x"))
        .header("Origin", WEB_ORIGIN)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let response = preflight("/api/x", WEB_ORIGIN, "GET").await.unwrap();
    assert_error(response, 401, "TokenMissing").await;
}

/// What the web clients do, in a real browser: the page's script (from its own origin) logs in,
/// checks with Bearer, stores the renewed token and calls a CORS route with it; it reads a 401 of
/// ucgate's too. Chromium's CORS (preflights for JSON and `Authorization`, credentials) is the
/// judge.
const WEB_CLIENT_PAGE: &str = r#"
const gate = new URLSearchParams(location.search).get('gate');
const call = async (path, init) => {
  const r = await fetch(gate + path, init);
  return {status: r.status, body: await r.json()};
};
(async () => {
  const out = {};
  try {
    out.login = await call('/xuc/api/2.0/auth/login', {
      method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({login: 'alice', password: 'alice-pw', softwareType: 'webBrowser'}),
    });
    const bearer = (t) => ({headers: {Authorization: 'Bearer ' + t}});
    out.check = await call('/xuc/api/2.0/auth/check', bearer(out.login.body.token));
    out.route = await call('/web/calls', bearer(out.check.body.token));
    out.refused = await call('/xuc/api/2.0/auth/check', bearer('not-a-token'));
  } catch (e) {
    out.error = String(e);
  }
  await report(out);
})();
"#;

#[tokio::test]
async fn chromium_on_a_listed_origin_logs_in_checks_and_calls_a_route_and_others_are_blocked() {
    let up = Upstream::start().await;
    let page = Page::serve(WEB_CLIENT_PAGE).await;
    let gate = start_for(&up, "", &page.origin()).await;
    let query = format!("gate={}", gate.url(""));

    let out = page.open(&query, &[], &[]).await;
    assert!(out.get("error").is_none(), "{out:#}\n{}", gate.logs());
    assert_eq!(out["login"]["status"], 200, "{out:#}");
    assert_eq!(out["check"]["status"], 200, "{out:#}");
    assert_eq!(out["check"]["body"]["login"], "alice");
    let (first, renewed) = (
        &out["login"]["body"]["token"],
        &out["check"]["body"]["token"],
    );
    assert!(renewed.is_string() && renewed != first, "{out:#}");
    assert_eq!(out["route"]["status"], 200, "{out:#}");
    assert_eq!(out["route"]["body"]["path"], "/web/calls");
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the Bearer stays at ucgate"
    );
    assert_eq!(out["refused"]["status"], 401, "{out:#}");
    assert_eq!(out["refused"]["body"]["error"], "TokenInvalid");

    // The same page from an origin ucgate does not list: the browser stops at the preflight of
    // the login, which never happens.
    let stranger = Page::serve(WEB_CLIENT_PAGE).await;
    let calls = gate.access_log().len();
    let out = stranger.open(&query, &[], &[]).await;
    assert!(out.get("login").is_none(), "{out:#}");
    assert!(
        out["error"].as_str().unwrap().contains("Failed to fetch"),
        "{out:#}"
    );
    assert_eq!(up.count(), 1, "only the listed page's call went upstream");
    let after: Vec<String> = gate.access_log().split_off(calls);
    assert!(
        !after.is_empty()
            && after
                .iter()
                .all(|l| l.contains("OPTIONS") && l.contains("403")),
        "the preflight, refused, and nothing else: {after:#?}"
    );
}
