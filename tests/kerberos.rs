//! Kerberos SSO against a real MIT KDC: `GET /xuc/api/2.0/auth/sso` with SPNEGO tokens from
//! curl and from a libgssapi initiator, then the UC token on a real upstream route.

mod browser_support;
mod common;
mod kerberos_support;

use browser_support::Page;
use common::*;
use kerberos_support::*;

const SSO: &str = "/xuc/api/2.0/auth/sso";
const SIGNING_KEY: &str = "kerberos-test-signing-key-0123456789abcdef-SECRET";
/// A base64 NTLMSSP NEGOTIATE message, as a Windows client offers when it has no ticket.
const NTLM_NEGOTIATE: &str = "TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==";

/// The `[kerberos]` section for the realm's HTTP keytab, the replay cache in ucgate's temp dir.
fn kerberos_section(kdc: &Kdc, extra: &str) -> String {
    format!(
        "[kerberos]\nkeytab = {}\nreplay_cache = \"krb5.rcache2\"\n{extra}\n",
        toml_str(&kdc.path("http.keytab").display().to_string())
    )
}

fn config(kdc: &Kdc, upstream: &str, kerberos_extra: &str) -> String {
    ConfigBuilder::new()
        .raw("[tokens]\n\n[users]\nfile = \"users.toml\"\n")
        .raw("[login]\nmax_failures = 50\n")
        .raw(&kerberos_section(kdc, kerberos_extra))
        .route(
            route("api", "/api/", upstream)
                .accept(&["uc"])
                .upstream_auth("none"),
        )
        .build()
}

async fn ucgate(kdc: &Kdc, config: String) -> Ucgate {
    Ucgate::builder(config)
        .file("users.toml", SSO_USERS)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("KRB5_CONFIG", kdc.krb5_config())
        .start()
        .await
}

/// The URL curl reaches ucgate by, so that the SPN is `HTTP/localhost`.
fn localhost_url(gate: &Ucgate, path: &str) -> String {
    format!("http://localhost:{}{path}", gate.addr().port())
}

fn assert_no_secret_in_logs(gate: &Ucgate, secrets: &[&str]) {
    let logs = gate.logs();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {secret}\n{logs}"
        );
    }
    assert!(!logs.contains(SIGNING_KEY));
}

fn assert_sso_refused(curl: &Curl, code: &str) {
    assert_eq!(curl.status, 401, "{curl:?}");
    assert_eq!(curl.header("content-type"), Some("application/json"));
    assert_eq!(curl.json()["error"], code, "{curl:?}");
}

#[tokio::test]
async fn curl_negotiate_gets_a_token_that_opens_a_protected_route() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    kdc.kinit("alice", "alicepw");
    let upstream = Upstream::start().await;
    let gate = ucgate(&kdc, config(&kdc, &upstream.url(), "")).await;

    let challenge = client().get(gate.url(SSO)).send().await.unwrap();
    assert_eq!(
        challenge.headers().get("www-authenticate").unwrap(),
        "Negotiate"
    );
    assert_error(challenge, 401, "SsoAuthenticationFailed").await;

    let mut tokens = Vec::new();
    for url in [localhost_url(&gate, SSO), gate.url(SSO)] {
        let curl = kdc.curl_negotiate("alice", &url, &[]);
        assert_eq!(curl.status, 200, "{curl:?}\n{}", gate.logs());
        let body = curl.json();
        assert_eq!(body["login"], "alice");
        assert!(body["TTL"].as_u64().unwrap() > 0);
        let mutual = curl.header("www-authenticate").expect("mutual token");
        assert!(
            mutual.starts_with("Negotiate ") && mutual.len() > 20,
            "{mutual}"
        );
        assert_eq!(curl.sent_tokens.len(), 1, "curl sent one SPNEGO token");
        tokens.push(body["token"].as_str().unwrap().to_owned());
        tokens.extend(curl.sent_tokens.clone());
    }

    let response = client()
        .get(gate.url("/api/calls"))
        .header("X-Auth-Token", &tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("kerberos"));

    let check = client()
        .get(gate.url("/xuc/api/2.0/auth/check"))
        .header("X-Auth-Token", &tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 200);
    assert_eq!(
        check.json::<serde_json::Value>().await.unwrap()["login"],
        "alice"
    );

    let secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_secret_in_logs(&gate, &secrets);
    assert!(gate.logs().contains("method=\"kerberos\""));
}

/// Not a test: the libgssapi initiator that [`Initiator`] runs in a child process.
#[test]
#[ignore = "helper run by the Kerberos tests in a child process"]
fn spnego_initiator_helper() {
    run_initiator_helper();
}

#[tokio::test]
async fn rust_initiator_gets_mutual_authentication_and_a_replay_is_refused() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    kdc.kinit("alice", "alicepw");
    let upstream = Upstream::start().await;
    let gate = ucgate(&kdc, config(&kdc, &upstream.url(), "")).await;

    let initiator = Initiator::start(&kdc, "alice", "HTTP@localhost", "spnego_initiator_helper");
    let spnego = initiator.token.clone();
    let send = || {
        client()
            .get(gate.url(SSO))
            .header("Authorization", format!("Negotiate {spnego}"))
            .send()
    };
    let response = send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", gate.logs());
    let reply = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["login"], "alice");
    assert!(
        initiator.finish(&reply),
        "the client rejected the mutual token"
    );

    let replayed = send().await.unwrap();
    assert_eq!(replayed.headers()["www-authenticate"], "Negotiate");
    assert_error(replayed, 401, "SsoAuthenticationFailed").await;
    let line = gate.wait_log("sso refused").await;
    assert!(line.contains("replay"), "{line}");
    assert!(
        gate.dir().join("krb5.rcache2").is_file(),
        "replay cache in the configured file"
    );

    let uc = body["token"].as_str().unwrap();
    assert_no_secret_in_logs(&gate, &[&spnego, uc, &reply["Negotiate ".len()..]]);
}

#[tokio::test]
async fn every_failure_is_a_clean_401() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    for (user, pw) in [("alice", "alicepw"), ("bob", "bobpw"), ("carol", "carolpw")] {
        kdc.kinit(user, pw);
    }
    let upstream = Upstream::start().await;
    let gate = ucgate(&kdc, config(&kdc, &upstream.url(), "")).await;
    let with_header = |value: &str| {
        client()
            .get(gate.url(SSO))
            .header("Authorization", value.to_owned())
            .send()
    };

    for (value, message) in [
        ("Negotiate !!not*base64!!", "not valid base64"),
        (&format!("Negotiate {NTLM_NEGOTIATE}") as &str, "NTLM"),
        (&format!("NTLM {NTLM_NEGOTIATE}"), "not Negotiate"),
        ("Basic YWxpY2U6YWxpY2Vwdw==", "not Negotiate"),
        ("Negotiate YIIBAAYGKwYBBQUCoA==", "not accepted"),
    ] {
        let response = with_header(value).await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Negotiate");
        let body = assert_error(response, 401, "SsoAuthenticationFailed").await;
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{value}: {body}"
        );
    }

    // A ticket for another service, which the keytab has no key for.
    let other = kdc.curl_negotiate(
        "alice",
        "http://other.test/xuc/api/2.0/auth/sso",
        &[
            "--connect-to",
            &format!("other.test:80:127.0.0.1:{}", gate.addr().port()),
        ],
    );
    assert_sso_refused(&other, "SsoAuthenticationFailed");
    assert!(
        gate.logs()
            .contains("HTTP/other.test@EXAMPLE.TEST not found in keytab")
    );

    // Kerberos proves bob and carol, but bob has CTI login disabled and carol is not a user.
    let bob = kdc.curl_negotiate("bob", &localhost_url(&gate, SSO), &[]);
    assert_sso_refused(&bob, "UserNotFound");
    let carol = kdc.curl_negotiate("carol", &localhost_url(&gate, SSO), &[]);
    assert_sso_refused(&carol, "UserNotFound");
    assert!(!bob.body.contains("token") && !carol.body.contains("token"));

    let mut secrets: Vec<&str> = Vec::new();
    for curl in [&other, &bob, &carol] {
        assert!(!curl.sent_tokens.is_empty(), "{curl:?}");
        secrets.extend(curl.sent_tokens.iter().map(String::as_str));
    }
    assert_no_secret_in_logs(&gate, &secrets);
    assert!(!gate.logs().contains("panicked"));
}

#[tokio::test]
async fn realm_allow_list_and_principal_map() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    kdc.kinit("alice", "alicepw");
    kdc.kinit("carol", "carolpw");
    let upstream = Upstream::start().await;
    let extra =
        "realms = [\"OTHER.TEST\"]\n[kerberos.principal_map]\n\"carol@EXAMPLE.TEST\" = \"alice\"";
    let gate = ucgate(&kdc, config(&kdc, &upstream.url(), extra)).await;

    let alice = kdc.curl_negotiate("alice", &localhost_url(&gate, SSO), &[]);
    assert_sso_refused(&alice, "SsoAuthenticationFailed");
    assert!(alice.json()["message"].as_str().unwrap().contains("realm"));

    let carol = kdc.curl_negotiate("carol", &localhost_url(&gate, SSO), &[]);
    assert_eq!(carol.status, 200, "{carol:?}");
    assert_eq!(carol.json()["login"], "alice");
}

#[tokio::test]
async fn one_named_principal_refuses_tickets_for_the_others() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    kdc.kinit("alice", "alicepw");
    let upstream = Upstream::start().await;
    let gate = ucgate(
        &kdc,
        config(&kdc, &upstream.url(), "principal = \"HTTP/localhost\""),
    )
    .await;
    let by_name = kdc.curl_negotiate("alice", &localhost_url(&gate, SSO), &[]);
    assert_eq!(by_name.status, 200, "{by_name:?}");
    let by_ip = kdc.curl_negotiate("alice", &gate.url(SSO), &[]);
    assert_sso_refused(&by_ip, "SsoAuthenticationFailed");
}

#[tokio::test]
async fn failures_are_throttled_per_client_address() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    kdc.kinit("alice", "alicepw");
    let upstream = Upstream::start().await;
    let config = config(&kdc, &upstream.url(), "")
        .replace("max_failures = 50", "max_failures = 3\nlockout = \"5m\"");
    let gate = ucgate(&kdc, config).await;
    for _ in 0..3 {
        let response = client()
            .get(gate.url(SSO))
            .header("Authorization", "Negotiate %%%")
            .send()
            .await
            .unwrap();
        assert_error(response, 401, "SsoAuthenticationFailed").await;
    }
    // A valid ticket from the same address is refused too while the address is locked out.
    let locked = kdc.curl_negotiate("alice", &localhost_url(&gate, SSO), &[]);
    assert_eq!(locked.status, 429, "{locked:?}");
    assert_eq!(locked.json()["error"], "TooManyAttempts");
    assert!(
        locked
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
}

#[tokio::test]
async fn a_bad_keytab_refuses_to_start() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    let start = |kerberos: String| {
        Ucgate::builder(
            ConfigBuilder::new()
                .raw("[tokens]\n\n[users]\nfile = \"users.toml\"\n")
                .raw(&kerberos)
                .build(),
        )
        .file("users.toml", SSO_USERS)
        .file("empty.keytab", [0x05, 0x02])
        .file("garbage.keytab", "not a keytab")
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("KRB5_CONFIG", kdc.krb5_config())
        .run(&["run"])
    };
    let keytab = toml_str(&kdc.path("http.keytab").display().to_string());
    for (section, expected) in [
        (
            "[kerberos]\nkeytab = \"missing.keytab\"".to_owned(),
            "missing.keytab",
        ),
        (
            "[kerberos]\nkeytab = \"empty.keytab\"".to_owned(),
            "has no keys",
        ),
        (
            "[kerberos]\nkeytab = \"garbage.keytab\"".to_owned(),
            "not a keytab",
        ),
        (
            format!("[kerberos]\nkeytab = {keytab}\nprincipal = \"HTTP/other.test\""),
            "is not in keytab",
        ),
        (
            format!("[kerberos]\nkeytab = {keytab}\nreplay_cache = \"no/such/dir/rc\""),
            "does not exist",
        ),
        (
            format!("[kerberos]\nkeytab = {keytab}\nrealms = []"),
            "realms",
        ),
    ] {
        let finished = start(section.clone());
        assert_eq!(finished.code(), Some(2), "{section}: {}", finished.stderr);
        assert!(finished.stderr.contains("kerberos"), "{}", finished.stderr);
        assert!(
            finished.stderr.contains(expected),
            "{section}: {}",
            finished.stderr
        );
    }
}

/// Without `[kerberos]`, `[cas]` or `[oidc]`, their endpoints are paths ucgate does not serve:
/// 404, no route in the access log, no login in the metrics (which do count a password login
/// that fails on its body, but not one refused for its method).
#[tokio::test]
async fn without_their_sections_the_sso_endpoints_are_404_and_count_no_login() {
    let gate = Ucgate::builder(
        ConfigBuilder::new()
            .raw("[tokens]\n\n[users]\nfile = \"users.toml\"\n")
            .raw("[cors]\nallowed_origins = [\"https://xivo.example.com\"]\n")
            .build(),
    )
    .file("users.toml", SSO_USERS)
    .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
    .start()
    .await;
    // A browser's preflight, and its request, get what an unknown path gets: no grant.
    let preflight = client()
        .request(reqwest::Method::OPTIONS, gate.url(SSO))
        .header("Access-Control-Request-Method", "GET");
    for request in [preflight, client().get(gate.url(SSO))] {
        let response = request
            .header("Origin", "https://xivo.example.com")
            .send()
            .await
            .unwrap();
        let grant = response.headers().get("access-control-allow-origin");
        assert!(grant.is_none(), "{grant:?}");
        assert_error(response, 404, "NoRoute").await;
    }
    let response = client()
        .get(gate.url(SSO))
        .header("Authorization", format!("Negotiate {NTLM_NEGOTIATE}"))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "NoRoute").await;
    let line = gate.wait_log(&format!(r#"path="{SSO}""#)).await;
    assert!(line.contains(r#"route="-""#), "{line}");
    for path in [
        "/xuc/api/2.0/auth/cas?ticket=ST-1",
        "/xuc/api/2.0/auth/oidc",
    ] {
        let response = client().get(gate.url(path)).send().await.unwrap();
        assert_error(response, 404, "NoRoute").await;
    }
    let login = "/xuc/api/2.0/auth/login";
    let response = client().put(gate.url(login)).send().await.unwrap();
    assert_error(response, 405, "MethodNotAllowed").await;
    let response = client()
        .post(gate.url(login))
        .header("Content-Type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "InvalidJson").await;
    let logins =
        |method: &str| format!(r#"ucgate_logins_total{{method="{method}",outcome="error"}}"#);
    assert_eq!(metric(&gate, &logins("password")).await, 1);
    for method in ["kerberos", "cas", "oidc"] {
        assert_eq!(metric(&gate, &logins(method)).await, 0, "{method}");
    }
}

/// Without `[tokens]`, the UC API's paths are ucgate's no more: a route covering them (a
/// ucgate in front of the site's own xuc) forwards them as any other path.
#[tokio::test]
async fn without_tokens_a_route_covering_the_uc_api_forwards_it() {
    let up = Upstream::start().await;
    let gate = Ucgate::start(
        ConfigBuilder::new()
            .route(route("xuc", "/xuc/", &up.url()).public())
            .build(),
    )
    .await;
    for path in ["/xuc/api/2.0/auth/login", SSO, "/xuc/api/2.0/auth/check"] {
        let response = client().get(gate.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let line = gate.wait_log(&format!(r#"path="{path}""#)).await;
        assert!(line.contains(r#"route="xuc""#), "{line}");
    }
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn a_changed_keytab_is_reloaded_and_a_broken_one_refused_while_serving_goes_on() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    kdc.kinit("alice", "alicepw");
    let upstream = Upstream::start().await;
    // The keytab is the realm's own: nothing but ucgate reads it once the tickets are issued.
    let mut gate = ucgate(&kdc, config(&kdc, &upstream.url(), "")).await;
    // Where ucgate keeps its private copy of the keys (TMPDIR, the harness's directory of the
    // instance): one copy at a time, none left once it has stopped.
    let tmp = gate.dir().to_path_buf();
    let copies = || {
        std::fs::read_dir(&tmp)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("ucgate-keytab-")
            })
            .count()
    };
    assert_eq!(copies(), 1);
    let path = kdc.path("http.keytab");
    let keytab = std::fs::read(&path).unwrap();
    let sso_works = || {
        let curl = kdc.curl_negotiate("alice", &localhost_url(&gate, SSO), &[]);
        assert_eq!(curl.status, 200, "{curl:?}\n{}", gate.logs());
    };
    sso_works();

    // Replaced by something that is not a keytab: the watcher notices, the reload is refused
    // with the reason, and the keys already loaded keep serving.
    write_atomic(&path, b"not a keytab");
    let refused = gate.wait_log("reload refused").await;
    assert!(refused.contains("keytab"), "{refused}");
    sso_works();

    // Put back: reloaded.
    write_atomic(&path, &keytab);
    gate.wait_log("configuration reloaded").await;
    sso_works();

    // A rotation, as an operator does it: new keys in the KDC, then the new keytab in place.
    // Tickets issued from now on are under the new keys; only a reloaded keytab opens them.
    let rotated = kdc.rotate_keys(&["HTTP/localhost", "HTTP/127.0.0.1"]);
    let reloads = gate.logs().matches("configuration reloaded").count();
    write_atomic(&path, &rotated);
    gate.wait_log_count("configuration reloaded", reloads + 1)
        .await;
    kdc.kinit("alice", "alicepw");
    sso_works();
    // The keys of a keytab replaced are not left on disk.
    assert_eq!(copies(), 1);

    gate.sigterm();
    assert!(gate.wait().await.success(), "{}", gate.logs());
    assert_eq!(
        copies(),
        0,
        "a stopped ucgate left a copy of its keys behind"
    );
}

/// The UC Assistant's SSO as Chromium does it: a credentialed cross-origin `fetch` of the SSO
/// endpoint; the browser answers the `Negotiate` challenge from its ticket cache, for hosts of
/// `--auth-server-allowlist` only.
const SSO_PAGE: &str = r#"
const gate = new URLSearchParams(location.search).get('gate');
(async () => {
  const out = {};
  try {
    const sso = await fetch(gate + '/xuc/api/2.0/auth/sso', {credentials: 'include'});
    out.sso = {status: sso.status, body: await sso.json()};
    if (sso.ok) {
      const headers = {Authorization: 'Bearer ' + out.sso.body.token};
      const check = await fetch(gate + '/xuc/api/2.0/auth/check', {headers});
      out.check = {status: check.status, body: await check.json()};
    }
  } catch (e) {
    out.error = String(e);
  }
  await report(out);
})();
"#;

#[tokio::test]
async fn chromium_with_a_ticket_cache_gets_a_uc_token_through_spnego() {
    if !prerequisites_present() {
        return;
    }
    let kdc = Kdc::start();
    kdc.kinit("alice", "alicepw");
    let upstream = Upstream::start().await;
    // The UC Assistant is served by the XiVO host, the SSO endpoint on another port of it: same
    // site, other origin. (Chromium keeps the tickets from cross-site fetches.)
    let page = Page::serve_on_localhost(SSO_PAGE).await;
    let config = format!(
        "{}\n[cors]\nallowed_origins = [\"{}\"]\n",
        config(&kdc, &upstream.url(), ""),
        page.origin()
    );
    let gate = ucgate(&kdc, config).await;
    // By name, so that the browser asks for a ticket for HTTP/localhost.
    let query = format!("gate={}", localhost_url(&gate, ""));
    let env = kdc.client_env("alice");

    let out = page
        .open(&query, &["--auth-server-allowlist=localhost"], &env)
        .await;
    assert_eq!(out["sso"]["status"], 200, "{out:#}\n{}", gate.logs());
    assert_eq!(out["sso"]["body"]["login"], "alice");
    assert_eq!(out["check"]["status"], 200, "{out:#}");
    assert_eq!(out["check"]["body"]["login"], "alice");
    let token = out["sso"]["body"]["token"].as_str().unwrap().to_owned();

    // Not on the allowlist: the browser keeps its tickets, and reads ucgate's refusal.
    let out = page.open(&query, &[], &env).await;
    assert_eq!(out["sso"]["status"], 401, "{out:#}");
    assert_eq!(out["sso"]["body"]["error"], "SsoAuthenticationFailed");
    assert_no_secret_in_logs(&gate, &[&token]);
}
