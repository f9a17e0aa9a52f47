//! Issue 6, OpenID Connect: real ID tokens from a real oidc-provider on loopback (authorization
//! code + PKCE through its login form), exchanged at ucgate for UC tokens.

mod common;
mod oidc_support;

use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use oidc_support::{Provider, assemble, attacker_rsa_key, free_port, parts, public_pem, sign};

const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef0123456789";
const OIDC: &str = "/xuc/api/2.0/auth/oidc";
const CHALLENGE: &str = "Bearer error=\"invalid_token\"";
const REFETCH_LOG: &str = "unknown key id; fetching the provider's keys again";

/// A UC-only route to `up`, UC tokens, the users above, and `[oidc]` for `issuer` with `extra`
/// lines. The lockout is out of the way unless a test sets `[login]` itself.
fn config(up_url: &str, issuer: &str, extra: &str, login: &str) -> String {
    ConfigBuilder::new()
        .route(
            route("api", "/api/", up_url)
                .accept(&["uc"])
                .upstream_auth("none"),
        )
        .raw("[tokens]\n\n[users]\nfile = \"users.toml\"")
        .raw(&format!(
            "[login]\n{}",
            if login.is_empty() {
                "max_failures = 100"
            } else {
                login
            }
        ))
        .raw(&format!(
            "[oidc]\nissuer = {}\naudience = [\"ucgate\"]\n{extra}",
            toml_str(issuer)
        ))
        .build()
}

async fn start_gate(up_url: &str, issuer: &str, extra: &str, login: &str) -> Ucgate {
    Ucgate::builder(config(up_url, issuer, extra, login))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", SSO_USERS)
        .start()
        .await
}

/// Waits (bounded) until `/readyz` says ready, i.e. the provider's keys are loaded.
async fn wait_ready(gate: &Ucgate) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client().get(gate.url("/readyz")).send().await.unwrap();
        if response.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ucgate never became ready; logs:\n{}",
            gate.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exchange(gate: &Ucgate, authorization: Option<&str>) -> reqwest::Response {
    let mut request = client().get(gate.url(OIDC));
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    request.send().await.unwrap()
}

async fn bearer(gate: &Ucgate, token: &str) -> reqwest::Response {
    exchange(gate, Some(&format!("Bearer {token}"))).await
}

/// A 401 of the OIDC endpoint: the bearer challenge, the code, a message about `why`.
async fn assert_refused(response: reqwest::Response, code: &str, why: &str) {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = assert_error(response, 401, code).await;
    assert_eq!(challenge.as_deref(), Some(CHALLENGE), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(why), "message {message:?} lacks {why:?}");
}

/// 200 `{"login", "token", "TTL"}` for `login`; returns the UC token.
async fn assert_issued(response: reqwest::Response, login: &str) -> String {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["login"], login, "{text}");
    assert!(body["TTL"].as_u64().is_some_and(|t| t > 0), "{text}");
    body["token"].as_str().expect("token").to_owned()
}

/// No credential, nor the signature part of one (the part that makes it usable), in the logs.
fn assert_not_logged(gate: &Ucgate, secrets: &[&str]) {
    let logs = gate.logs();
    assert!(!logs.is_empty());
    for secret in secrets {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(secret) && (signature.len() < 16 || !logs.contains(signature)),
            "a credential is in the logs:\n{logs}"
        );
    }
}

#[tokio::test]
async fn a_real_id_token_buys_a_uc_token_that_opens_a_protected_route() {
    let idp = Provider::start();
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &idp.issuer, "", "").await;
    wait_ready(&gate).await;
    let id_token = idp.id_token("alice", "alicepw").await;

    let uc = assert_issued(bearer(&gate, &id_token).await, "alice").await;
    // Again: from the cache of verified tokens, same answer.
    let again = assert_issued(bearer(&gate, &id_token).await, "alice").await;
    assert_ne!(uc, again, "each exchange issues its own UC token");

    let response = client()
        .get(gate.url("/api/items"))
        .header("X-Auth-Token", &uc)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("oidc"));
    assert_eq!(seen.path, "/api/items");
    assert!(!seen.head_text().contains(&id_token));

    let check = client()
        .get(gate.url("/xuc/api/2.0/auth/check"))
        .header("X-Auth-Token", &uc)
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 200);
    let check: serde_json::Value = check.json().await.unwrap();
    assert_eq!(check["login"], "alice");

    gate.wait_log("OpenID provider discovered").await;
    assert_not_logged(&gate, &[&id_token, &uc, &again]);
}

#[tokio::test]
async fn bad_bearers_forgeries_and_unknown_users_are_refused() {
    let idp = Provider::start();
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &idp.issuer, "", "").await;
    wait_ready(&gate).await;
    let alice = idp.id_token("alice", "alicepw").await;

    // No bearer, or not a bearer.
    assert_refused(
        exchange(&gate, None).await,
        "OidcInvalidParameter",
        "Bearer",
    )
    .await;
    for value in ["Bearer", "Bearer not a jwt", "Basic YWxpY2U6YWxpY2Vwdw=="] {
        assert_refused(
            exchange(&gate, Some(value)).await,
            "OidcInvalidParameter",
            "Bearer",
        )
        .await;
    }
    assert_refused(
        bearer(&gate, "abc.def.ghi").await,
        "OidcAuthenticationFailed",
        "not a JWT",
    )
    .await;

    // A real token of the same provider for another client.
    let other = idp.other_id_token("alice", "alicepw").await;
    assert_eq!(parts(&other).1["aud"], "other");
    assert_refused(
        bearer(&gate, &other).await,
        "OidcAuthenticationFailed",
        "audience",
    )
    .await;

    // alice's token with the login changed, the provider's signature kept.
    let (header, mut claims) = parts(&alice);
    let kid = header["kid"].as_str().unwrap().to_owned();
    claims["preferred_username"] = "bob".into();
    let signature = alice.rsplit('.').next().unwrap();
    let tampered = format!(
        "{}.{signature}",
        assemble(&header, &claims, b"").rsplit_once('.').unwrap().0
    );
    assert_refused(
        bearer(&gate, &tampered).await,
        "OidcAuthenticationFailed",
        "signature",
    )
    .await;

    // Re-signed with a key the provider never had, under the provider's kid.
    let (_, claims) = parts(&alice);
    let attacker = EncodingKey::from_rsa_pem(attacker_rsa_key().as_bytes()).unwrap();
    let forged = sign(Algorithm::RS256, &kid, &claims, &attacker);
    assert_refused(
        bearer(&gate, &forged).await,
        "OidcAuthenticationFailed",
        "signature",
    )
    .await;

    // alg "none", and HS256 keyed with the provider's public key.
    let none = assemble(
        &serde_json::json!({ "alg": "none", "kid": kid }),
        &claims,
        b"",
    );
    assert_refused(bearer(&gate, &none).await, "OidcAuthenticationFailed", "").await;
    let pem = public_pem(&idp.published_key().await);
    let hs256 = sign(
        Algorithm::HS256,
        &kid,
        &claims,
        &EncodingKey::from_secret(pem.as_bytes()),
    );
    assert_refused(
        bearer(&gate, &hs256).await,
        "OidcAuthenticationFailed",
        "algorithm",
    )
    .await;

    // A real token of another provider (another issuer, another key).
    let stranger = Provider::start();
    let foreign = stranger.id_token("alice", "alicepw").await;
    assert_refused(
        bearer(&gate, &foreign).await,
        "OidcAuthenticationFailed",
        "key",
    )
    .await;

    // Real tokens, but carol is not in the directory and bob may not log in.
    let carol = idp.id_token("carol", "carolpw").await;
    assert_error(bearer(&gate, &carol).await, 401, "UserNotFound").await;
    let bob = idp.id_token("bob", "bobpw").await;
    assert_error(bearer(&gate, &bob).await, 401, "UserNotFound").await;

    // None of that hurt alice.
    assert_issued(bearer(&gate, &alice).await, "alice").await;
    assert_not_logged(
        &gate,
        &[
            &alice, &other, &tampered, &forged, &none, &hs256, &foreign, &carol, &bob,
        ],
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_even_after_it_was_cached() {
    let idp = Provider::start_with(0, &[("ID_TOKEN_TTL", "3")]);
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &idp.issuer, "leeway = \"1s\"", "").await;
    wait_ready(&gate).await;
    let token = idp.id_token("alice", "alicepw").await;
    let exp = parts(&token).1["exp"].as_u64().unwrap();
    assert_issued(bearer(&gate, &token).await, "alice").await;

    // Past exp + leeway (the clock decides, not a timer).
    while unix_now() <= exp + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_refused(
        bearer(&gate, &token).await,
        "OidcAuthenticationFailed",
        "expired",
    )
    .await;
    assert_not_logged(&gate, &[&token]);
}

#[tokio::test]
async fn key_rotation_is_followed_with_one_refetch_then_rate_limited() {
    let idp = Provider::start();
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &idp.issuer, "refresh_min_interval = \"1h\"", "").await;
    wait_ready(&gate).await;
    let before = idp.id_token("alice", "alicepw").await;
    assert_issued(bearer(&gate, &before).await, "alice").await;

    let new_kid = idp.rotate_keys().await;
    let after = idp.id_token("alice", "alicepw").await;
    assert_eq!(parts(&after).0["kid"], new_kid.as_str());
    // Concurrent requests for the new key share one refetch.
    let answers = futures_util::future::join_all((0..8).map(|_| bearer(&gate, &after))).await;
    for response in answers {
        assert_issued(response, "alice").await;
    }
    let refetches = gate.logs().matches(REFETCH_LOG).count();
    assert_eq!(refetches, 1, "logs:\n{}", gate.logs());

    // Another rotation within refresh_min_interval: no second fetch, a 401 (not a 500).
    let newest_kid = idp.rotate_keys().await;
    let newest = idp.id_token("alice", "alicepw").await;
    assert_eq!(parts(&newest).0["kid"], newest_kid.as_str());
    assert_refused(
        bearer(&gate, &newest).await,
        "OidcAuthenticationFailed",
        "key",
    )
    .await;
    gate.wait_log("refetch rate-limited").await;
    assert_eq!(gate.logs().matches(REFETCH_LOG).count(), 1);
    assert_not_logged(&gate, &[&before, &after, &newest]);
}

#[tokio::test]
async fn when_the_provider_goes_down_the_known_keys_keep_serving() {
    let mut idp = Provider::start();
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &idp.issuer, "", "").await;
    wait_ready(&gate).await;
    let first = idp.id_token("alice", "alicepw").await;
    let second = idp.id_token("alice", "alicepw").await;
    let kid = parts(&first).0["kid"].as_str().unwrap().to_owned();
    idp.stop();

    assert_issued(bearer(&gate, &first).await, "alice").await;

    // An unknown kid: the refetch fails (connection refused), the answer is 401.
    let (_, claims) = parts(&first);
    let attacker = EncodingKey::from_rsa_pem(attacker_rsa_key().as_bytes()).unwrap();
    let unknown = sign(Algorithm::RS256, "k-unknown", &claims, &attacker);
    assert_refused(
        bearer(&gate, &unknown).await,
        "OidcAuthenticationFailed",
        "key",
    )
    .await;
    gate.wait_log("cannot fetch the provider's keys").await;

    // A reload while the provider is down keeps the keys (same issuer) and readiness.
    gate.signal(libc::SIGHUP);
    gate.wait_log("configuration reloaded").await;

    // Neither the failed refetch nor the reload dropped anything: a token never seen before,
    // under the known kid.
    assert_eq!(parts(&second).0["kid"], kid.as_str());
    assert_issued(bearer(&gate, &second).await, "alice").await;
    let ready = client().get(gate.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_not_logged(&gate, &[&first, &second, &unknown]);
}

#[tokio::test]
async fn ucgate_starts_without_the_provider_and_becomes_ready_when_it_comes() {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &issuer, "", "").await;

    let ready = client().get(gate.url("/readyz")).send().await.unwrap();
    assert_error(ready, 503, "NotReady").await;
    // Fail closed: no keys, no login (a well-formed JWT, so that only readiness decides).
    let header = serde_json::json!({ "alg": "RS256", "kid": "k" });
    let claims = serde_json::json!({ "preferred_username": "alice" });
    let token = assemble(&header, &claims, b"signature");
    assert_error(bearer(&gate, &token).await, 503, "NotReady").await;
    gate.wait_log("OpenID provider discovery failed").await;

    let idp = Provider::start_with(port, &[]);
    assert_eq!(idp.issuer, issuer);
    wait_ready(&gate).await;
    let id_token = idp.id_token("alice", "alicepw").await;
    assert_issued(bearer(&gate, &id_token).await, "alice").await;
    assert_not_logged(&gate, &[&id_token]);
}

#[tokio::test]
async fn failures_are_throttled_per_client_address() {
    // No provider needed: malformed bearers fail before any key is looked at.
    let up = Upstream::start().await;
    let gate = start_gate(
        &up.url(),
        &closed_url(),
        "",
        "max_failures = 3\nlockout = \"5m\"",
    )
    .await;
    for _ in 0..3 {
        assert_refused(
            bearer(&gate, "abc.def.ghi").await,
            "OidcAuthenticationFailed",
            "JWT",
        )
        .await;
    }
    let response = bearer(&gate, "abc.def.ghi").await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    assert_error(response, 429, "TooManyAttempts").await;
    assert!(retry_after.is_some_and(|s| s > 0 && s <= 300));
    // A missing bearer is not a failed attempt, but the address stays locked.
    assert_error(exchange(&gate, None).await, 429, "TooManyAttempts").await;
}

#[tokio::test]
async fn a_provider_that_never_answers_costs_a_timeout_not_a_connection_each_retry() {
    use common::faulty::{End, Fault, FaultyUpstream};
    use std::sync::atomic::Ordering;
    let silent = FaultyUpstream::start(Fault::Silent(End::Stall)).await;
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &silent.url(), "timeout = \"300ms\"", "").await;

    // Discovery is asked, times out, and is retried with backoff.
    gate.wait_log("OpenID provider discovery failed").await;
    assert!(
        eventually(|| silent.accepted.load(Ordering::SeqCst) >= 3).await,
        "discovery was not retried"
    );
    // Each timed-out attempt let go of its connection.
    assert!(
        silent.open.load(Ordering::SeqCst) <= 1,
        "{} connections to the silent provider are still open",
        silent.open.load(Ordering::SeqCst)
    );
    // Meanwhile: not ready, OIDC fails closed at once, and the IdP's silence costs the other
    // endpoints nothing.
    let ready = client().get(gate.url("/readyz")).send().await.unwrap();
    assert_error(ready, 503, "NotReady").await;
    let header = serde_json::json!({ "alg": "RS256", "kid": "k" });
    let claims = serde_json::json!({ "preferred_username": "alice" });
    let refused = bearer(&gate, &assemble(&header, &claims, b"signature")).await;
    assert_error(refused, 503, "NotReady").await;
    let health = client().get(gate.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Issue 14: JOSE header extensions, NumericDate claims, one lock-out for every exchange
// ---------------------------------------------------------------------------------------------

/// Claims the provider would issue for `login` to ucgate, valid for ten minutes.
fn provider_claims(idp: &Provider, login: &str) -> serde_json::Value {
    let now = unix_now();
    serde_json::json!({
        "iss": idp.issuer,
        "aud": "ucgate",
        "sub": login,
        "preferred_username": login,
        "iat": now,
        "exp": now + 600,
    })
}

#[tokio::test]
async fn critical_header_extensions_are_refused_and_header_keys_never_followed() {
    let idp = Provider::start();
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &idp.issuer, "", "").await;
    wait_ready(&gate).await;
    let claims = provider_claims(&idp, "alice");
    // The same claims, signed by the provider's own key, with a plain header: accepted.
    assert_issued(
        bearer(
            &gate,
            &idp.sign(serde_json::json!({}), claims.clone()).await,
        )
        .await,
        "alice",
    )
    .await;
    // RFC 7515 §4.1.11: an extension the recipient does not understand makes the token invalid;
    // RFC 7797's unencoded payload and JWE's compression are extensions ucgate does not do.
    for header in [
        serde_json::json!({"crit": ["urn:example:must-understand"], "urn:example:must-understand": true}),
        serde_json::json!({"crit": ["exp"]}),
        serde_json::json!({"crit": []}),
        serde_json::json!({"b64": false, "crit": ["b64"]}),
        serde_json::json!({"b64": true}),
        serde_json::json!({"zip": "DEF"}),
    ] {
        let token = idp.sign(header.clone(), claims.clone()).await;
        assert_refused(
            bearer(&gate, &token).await,
            "OidcAuthenticationFailed",
            "extension",
        )
        .await;
    }
    // Keys named in the header are never fetched: a listener behind `jku` and `x5u` sees no
    // connection, and a token signed with a key carried in `jwk` is refused.
    let watcher = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let watched = format!("http://{}/keys", watcher.local_addr().unwrap());
    let token = idp
        .sign(
            serde_json::json!({"jku": watched, "x5u": watched}),
            claims.clone(),
        )
        .await;
    assert_issued(bearer(&gate, &token).await, "alice").await;
    // An attacker's key, announced in the header as URLs and as a JWK: none is taken.
    let attacker_pem = attacker_rsa_key();
    let attacker = EncodingKey::from_rsa_pem(attacker_pem.as_bytes()).unwrap();
    for kid in [
        "k-attacker",
        parts(&idp.id_token("alice", "alicepw").await).0["kid"]
            .as_str()
            .unwrap(),
    ] {
        let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        h.jku = Some(watched.clone());
        h.x5u = Some(watched.clone());
        h.jwk = Some(serde_json::from_value(oidc_support::public_jwk(&attacker_pem)).unwrap());
        let forged = jsonwebtoken::encode(&h, &claims, &attacker).unwrap();
        let response = bearer(&gate, &forged).await;
        assert_error(response, 401, "OidcAuthenticationFailed").await;
    }
    let accepted = tokio::time::timeout(Duration::from_millis(300), watcher.accept()).await;
    assert!(accepted.is_err(), "a URL of the token's header was fetched");
}

#[tokio::test]
async fn numeric_dates_may_have_fractions_and_nothing_else() {
    let idp = Provider::start();
    let up = Upstream::start().await;
    let gate = start_gate(&up.url(), &idp.issuer, "", "").await;
    wait_ready(&gate).await;
    let now = unix_now() as f64;
    // RFC 7519 §2: a NumericDate may be a non-integer.
    for (claim, value) in [
        ("iat", serde_json::json!(now - 0.237)),
        ("exp", serde_json::json!(now + 600.5)),
        ("nbf", serde_json::json!(now - 1.5)),
        ("auth_time", serde_json::json!(now - 30.25)),
    ] {
        let mut claims = provider_claims(&idp, "alice");
        claims[claim] = value;
        let token = idp.sign(serde_json::json!({}), claims).await;
        assert_issued(bearer(&gate, &token).await, "alice").await;
    }
    // Strings, booleans, null, negative and out-of-range numbers are no dates.
    for (claim, value) in [
        ("iat", serde_json::json!(now.to_string())),
        ("iat", serde_json::json!(true)),
        ("iat", serde_json::json!(null)),
        ("iat", serde_json::json!(-1)),
        ("exp", serde_json::json!((now + 600.0).to_string())),
        ("exp", serde_json::json!(1e300)),
        ("nbf", serde_json::json!(false)),
        ("auth_time", serde_json::json!("yesterday")),
        ("auth_time", serde_json::json!(-5.5)),
    ] {
        let mut claims = provider_claims(&idp, "alice");
        claims[claim] = value.clone();
        let token = idp.sign(serde_json::json!({}), claims).await;
        let response = bearer(&gate, &token).await;
        assert_eq!(response.status(), 401, "{claim} = {value}");
        assert_error(response, 401, "OidcAuthenticationFailed").await;
    }
}

#[tokio::test]
async fn a_locked_out_login_stays_locked_whatever_the_exchange() {
    let idp = Provider::start();
    let up = Upstream::start().await;
    let hash = String::from_utf8(hash_password_run("alice-password\n").stdout).unwrap();
    let users = format!(
        "[[user]]\nlogin = \"alice\"\npassword_hash = \"{}\"\ncti_enabled = true\nprofile = \"agent\"\n",
        hash.trim()
    );
    // Behind a trusted proxy, so that each guess comes from another client address: only the
    // login's own lock-out is at stake, never an address's.
    let config = config(
        &up.url(),
        &idp.issuer,
        "",
        "max_failures = 5\nlockout = \"5m\"",
    )
    .replacen(
        "[server]\n",
        "[server]\ntrust_forwarded_headers = true\n",
        1,
    );
    let gate = Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", users)
        .start()
        .await;
    wait_ready(&gate).await;
    let id_token = idp.id_token("alice", "alicepw").await;
    let from = |n: u8| format!("203.0.113.{n}");
    let password = |client_addr: String, password: &'static str| {
        client()
            .post(gate.url("/xuc/api/2.0/auth/login"))
            .header("X-Forwarded-For", client_addr)
            .json(&serde_json::json!({"login": "alice", "password": password}))
            .send()
    };
    let oidc = |client_addr: String| {
        client()
            .get(gate.url(OIDC))
            .header("X-Forwarded-For", client_addr)
            .header("Authorization", format!("Bearer {id_token}"))
            .send()
    };
    // Before: the ID token works.
    assert_issued(oidc(from(100)).await.unwrap(), "alice").await;
    for n in 1..=5 {
        let response = password(from(n), "wrong").await.unwrap();
        assert_error(response, 401, "InvalidCredentials").await;
    }
    // Locked: the right password and a valid ID token for the same login, from addresses that
    // never failed, are both refused before any token is issued.
    let right = password(from(10), "alice-password").await.unwrap();
    assert_error(right, 429, "TooManyAttempts").await;
    assert_error(oidc(from(11)).await.unwrap(), 429, "TooManyAttempts").await;
    // No success happened, so nothing lifted the lock: a wrong password is still a 429.
    let wrong = password(from(12), "wrong").await.unwrap();
    assert_error(wrong, 429, "TooManyAttempts").await;
    // Other logins are not concerned.
    let bob = client()
        .post(gate.url("/xuc/api/2.0/auth/login"))
        .header("X-Forwarded-For", from(13))
        .json(&serde_json::json!({"login": "bob", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(bob, 401, "InvalidCredentials").await;
}

// ---------------------------------------------------------------------------------------------
// Issue 16: authorised parties and RFC 9068 access tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn authorized_party_restricts_the_clients_a_token_may_come_from() {
    let idp = Provider::start();
    let up = Upstream::start().await;
    // Both clients are audiences; only `ucgate` is an authorised party.
    let gate = Ucgate::builder(
        config(
            &up.url(),
            &idp.issuer,
            "authorized_party = [\"ucgate\"]",
            "",
        )
        .replace(
            "audience = [\"ucgate\"]",
            "audience = [\"ucgate\", \"other\"]",
        ),
    )
    .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
    .file("users.toml", SSO_USERS)
    .start()
    .await;
    wait_ready(&gate).await;
    // Real ID tokens: the one for ucgate passes, the one for the other client does not.
    let ours = idp.id_token("alice", "alicepw").await;
    assert_issued(bearer(&gate, &ours).await, "alice").await;
    let theirs = idp.other_id_token("alice", "alicepw").await;
    assert_refused(
        bearer(&gate, &theirs).await,
        "OidcAuthenticationFailed",
        "party",
    )
    .await;
    // An explicit azp of another party, signed by the provider.
    let mut claims = provider_claims(&idp, "alice");
    claims["azp"] = serde_json::json!("other");
    let token = idp.sign(serde_json::json!({}), claims).await;
    assert_refused(
        bearer(&gate, &token).await,
        "OidcAuthenticationFailed",
        "party",
    )
    .await;
}

#[tokio::test]
async fn access_tokens_are_accepted_only_when_asked_for() {
    let idp = Provider::start();
    let up = Upstream::start().await;
    // An RFC 9068 access token for alice, issued to ucgate, signed by the provider.
    let mut claims = provider_claims(&idp, "alice");
    claims["client_id"] = serde_json::json!("ucgate");
    claims["scope"] = serde_json::json!("openid profile");
    let access = idp
        .sign(serde_json::json!({"typ": "at+jwt"}), claims.clone())
        .await;
    let also_access = idp
        .sign(serde_json::json!({"typ": "application/at+jwt"}), claims)
        .await;
    let strict = start_gate(&up.url(), &idp.issuer, "", "").await;
    wait_ready(&strict).await;
    for token in [&access, &also_access] {
        assert_refused(
            bearer(&strict, token).await,
            "OidcAuthenticationFailed",
            "access token",
        )
        .await;
    }
    // ID tokens keep working.
    assert_issued(
        bearer(&strict, &idp.id_token("alice", "alicepw").await).await,
        "alice",
    )
    .await;
    let open = start_gate(
        &up.url(),
        &idp.issuer,
        "accept_access_tokens = true\nauthorized_party = [\"ucgate\"]",
        "",
    )
    .await;
    wait_ready(&open).await;
    assert_issued(bearer(&open, &access).await, "alice").await;
    assert_issued(bearer(&open, &also_access).await, "alice").await;
}
