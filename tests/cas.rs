//! `GET /xuc/api/2.0/auth/cas`: service tickets from a real django-cas-server exchanged for UC
//! tokens, and the ways an exchange must fail (bad requests, refused tickets, users outside the
//! directory, CAS down, slow or hostile).

mod cas_support;
mod common;

use cas_support::{CasServer, FakeCas, Pki, TlsCas, http_200, http_response};
use common::faulty::{End, Fault, FaultyUpstream};
use common::{
    SSO_USERS, Ucgate, Upstream, assert_error, client, closed_url, eventually, route, toml_str,
};
use std::sync::atomic::Ordering;

const SIGNING_KEY: &str = "test-signing-key-cas-0123456789abcdef01234";
const CAS_PATH: &str = "/xuc/api/2.0/auth/cas";
/// The application the tickets are for. Nothing listens there: CAS only redirects browsers to it.
const SERVICE: &str = "http://127.0.0.1:8081/ucassistant/";
const OTHER_SERVICE: &str = "http://localhost:8081/ucassistant/";
/// Starts with an allowed pattern as text, but is another path: a naive prefix match admits it.
const EVIL_SERVICE: &str = "http://127.0.0.1:8081/ucassistant.evil/";
const NS: &str = r#"xmlns:cas="http://www.yale.edu/tp/cas""#;

/// ucgate with `[cas]` (the given lines), the directory above, and `/uconly/` opened by UC tokens.
async fn ucgate(up: &Upstream, cas_lines: &str) -> Ucgate {
    let config = common::ConfigBuilder::new()
        .route(
            route("uconly", "/uconly/", &up.url())
                .accept(&["uc"])
                .upstream_auth("none"),
        )
        .raw(&format!(
            "[tokens]\n\n[users]\nfile = \"users.toml\"\n\n[login]\nmax_failures = 3\n\n[cas]\n{cas_lines}"
        ))
        .build();
    Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .file("users.toml", SSO_USERS)
        .start()
        .await
}

/// `[cas]` lines for a server, allowing `/ucassistant` on 127.0.0.1 and localhost (no trailing
/// slash, so that the evil sibling path tests segment matching).
fn cas_config(server: &str, extra: &str) -> String {
    format!(
        "server = {}\nallowed_services = [\"http://127.0.0.1:8081/ucassistant\", \"http://localhost:8081/ucassistant\"]\n{extra}",
        toml_str(server)
    )
}

async fn exchange(gate: &Ucgate, service: &str, ticket: &str) -> reqwest::Response {
    client()
        .get(gate.url(CAS_PATH))
        .query(&[("service", service), ("ticket", ticket)])
        .send()
        .await
        .unwrap()
}

/// Validates a ticket at the CAS server directly: proves whether ucgate consumed it.
async fn cas_says(cas: &CasServer, service: &str, ticket: &str) -> String {
    client()
        .get(format!("{}/p3/serviceValidate", cas.base))
        .query(&[("service", service), ("ticket", ticket)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn assert_not_logged(gate: &Ucgate, secrets: &[&str]) {
    let logs = gate.logs();
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret:?} in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn a_real_ticket_gives_a_uc_token_once() {
    let (cas, up) = tokio::join!(CasServer::start(), Upstream::start());
    let gate = ucgate(&up, &cas_config(&cas.base, "")).await;
    let ticket = cas.ticket(SERVICE, "alice", "alicepw").await;

    let response = exchange(&gate, SERVICE, &ticket).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["login"], "alice");
    assert!(body["TTL"].as_u64().is_some_and(|ttl| ttl > 0), "{body}");
    let token = body["token"].as_str().unwrap().to_owned();

    let routed = client()
        .get(gate.url("/uconly/agents"))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status(), 200);
    let seen = up.last();
    assert_eq!(seen.path, "/uconly/agents");
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("cas"));

    // Service tickets are single use: the CAS server refuses it now, and ucgate says why.
    let again = assert_error(
        exchange(&gate, SERVICE, &ticket).await,
        401,
        "CasServerInvalidTicket",
    )
    .await;
    let message = again["message"].as_str().unwrap();
    assert!(message.contains("INVALID_TICKET"), "{again}");
    assert!(!again.to_string().contains(&ticket), "{again}");

    gate.wait_log("token issued").await;
    assert_not_logged(&gate, &[&ticket, &token]);
}

#[tokio::test]
async fn a_service_off_the_list_is_refused_before_cas_is_asked() {
    let (cas, up) = tokio::join!(CasServer::start(), Upstream::start());
    let gate = ucgate(&up, &cas_config(&cas.base, "")).await;

    // A ticket CAS issued for another site, replayed here with that site's URL.
    let evil = cas.ticket(EVIL_SERVICE, "alice", "alicepw").await;
    let refused = assert_error(
        exchange(&gate, EVIL_SERVICE, &evil).await,
        400,
        "CasServiceNotAllowed",
    )
    .await;
    assert!(!refused.to_string().contains(&evil), "{refused}");
    // ucgate never asked CAS: the ticket is still unused, and CAS accepts it now.
    let direct = cas_says(&cas, EVIL_SERVICE, &evil).await;
    assert!(direct.contains("<cas:user>alice</cas:user>"), "{direct}");

    // The same holds with an allowed service and its ticket presented under a refused service.
    let ticket = cas.ticket(SERVICE, "alice", "alicepw").await;
    let elsewhere = "http://127.0.0.1:8081/elsewhere/";
    assert_error(
        exchange(&gate, elsewhere, &ticket).await,
        400,
        "CasServiceNotAllowed",
    )
    .await;
    let response = exchange(&gate, SERVICE, &ticket).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    assert_not_logged(&gate, &[&evil, &ticket]);
}

#[tokio::test]
async fn a_ticket_for_another_allowed_service_is_invalid_service() {
    let (cas, up) = tokio::join!(CasServer::start(), Upstream::start());
    let gate = ucgate(&up, &cas_config(&cas.base, "")).await;
    let ticket = cas.ticket(SERVICE, "alice", "alicepw").await;

    let body = assert_error(
        exchange(&gate, OTHER_SERVICE, &ticket).await,
        401,
        "CasServerInvalidTicket",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("INVALID_SERVICE"),
        "{body}"
    );
    // The CAS server burnt the ticket on that attempt: which is why the previous test's "still
    // valid afterwards" proves that ucgate did not call CAS.
    let body = assert_error(
        exchange(&gate, SERVICE, &ticket).await,
        401,
        "CasServerInvalidTicket",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("INVALID_TICKET"),
        "{body}"
    );
    assert_not_logged(&gate, &[&ticket]);
}

/// Also runs the CAS 2 protocol (`/serviceValidate`) and a login taken from an attribute.
#[tokio::test]
async fn users_outside_the_directory_or_without_cti_are_refused() {
    let (cas, up) = tokio::join!(CasServer::start(), Upstream::start());
    let gate = ucgate(&up, &cas_config(&cas.base, "protocol = \"cas2\"")).await;

    for (login, password) in [("carol", "carolpw"), ("bob", "bobpw")] {
        let ticket = cas.ticket(SERVICE, login, password).await;
        assert_error(exchange(&gate, SERVICE, &ticket).await, 401, "UserNotFound").await;
        assert_not_logged(&gate, &[&ticket]);
    }
    let ticket = cas.ticket(SERVICE, "alice", "alicepw").await;
    let response = exchange(&gate, SERVICE, &ticket).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["login"],
        "alice"
    );

    // p3 releases attributes; django-cas-server's `username` is the login here.
    let gate = ucgate(
        &up,
        &cas_config(&cas.base, "login_attribute = \"username\""),
    )
    .await;
    let ticket = cas.ticket(SERVICE, "alice", "alicepw").await;
    let response = exchange(&gate, SERVICE, &ticket).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["login"],
        "alice"
    );
    let ticket = cas.ticket(SERVICE, "carol", "carolpw").await;
    assert_error(exchange(&gate, SERVICE, &ticket).await, 401, "UserNotFound").await;
}

#[tokio::test]
async fn bad_requests_are_400_without_calling_cas() {
    let (fake, up) = tokio::join!(FakeCas::start(), Upstream::start());
    let gate = ucgate(&up, &cas_config(&fake.base(), "")).await;
    let get = |query: &'static str| {
        client()
            .get(format!("{}?{query}", gate.url(CAS_PATH)))
            .send()
    };

    for query in [
        "",
        "service=http%3A%2F%2F127.0.0.1%3A8081%2Fucassistant%2F",
        "ticket=ST-1-abc",
        "service=http%3A%2F%2F127.0.0.1%3A8081%2Fucassistant%2F&ticket=",
        "service=http%3A%2F%2F127.0.0.1%3A8081%2Fucassistant%2F&ticket=ST-1&ticket=ST-2",
        "service=http%3A%2F%2F127.0.0.1%3A8081%2Fucassistant%2F&ticket=TGT-1-abc",
        "service=http%3A%2F%2F127.0.0.1%3A8081%2Fucassistant%2F&ticket=ST-1%0Aabc",
    ] {
        let body = assert_error(get(query).await.unwrap(), 400, "InvalidRequest").await;
        assert!(!body.to_string().contains("ST-1"), "{query}: {body}");
    }
    for service in [
        "http://127.0.0.1:8081/ucassistant.evil/",
        "http://127.0.0.1:8081.evil.org/ucassistant/",
        "http://127.0.0.1:8082/ucassistant/",
        "https://127.0.0.1:8081/ucassistant/",
        "http://evil.org@127.0.0.1:8081/ucassistant/",
        "http://127.0.0.1:8081/ucassistant/../admin/",
        "http://127.0.0.1:8081/ucassistant/#x",
        "not a url",
    ] {
        assert_error(
            exchange(&gate, service, "ST-1-abc").await,
            400,
            "CasServiceNotAllowed",
        )
        .await;
    }
    let post = client().post(gate.url(CAS_PATH)).send().await.unwrap();
    assert_error(post, 405, "MethodNotAllowed").await;
    assert_eq!(fake.targets(), Vec::<String>::new(), "CAS was called");
}

#[tokio::test]
async fn cas_down_is_502_and_cas_silent_is_504() {
    let up = Upstream::start().await;
    let down = ucgate(&up, &cas_config(&format!("{}/cas", closed_url()), "")).await;
    let body = assert_error(
        exchange(&down, SERVICE, "ST-1-down").await,
        502,
        "CasUnavailable",
    )
    .await;
    assert!(!body.to_string().contains("ST-1-down"), "{body}");

    // CAS accepts, reads the request and never answers.
    let silent = FaultyUpstream::start(Fault::Silent(End::Stall)).await;
    let slow = ucgate(
        &up,
        &cas_config(&format!("{}/cas", silent.url()), "timeout = \"500ms\""),
    )
    .await;
    let fds_before = slow.open_fds();
    let body = assert_error(
        exchange(&slow, SERVICE, "ST-1-slow").await,
        504,
        "CasTimeout",
    )
    .await;
    assert!(!body.to_string().contains("ST-1-slow"), "{body}");
    // Many at once: each waits its own timeout, none holds its connection after, and the
    // routes keep serving meanwhile.
    let waits: Vec<_> = (0..16)
        .map(|i| {
            let url = slow.url(CAS_PATH);
            tokio::spawn(async move {
                client()
                    .get(url)
                    .query(&[("service", SERVICE), ("ticket", &format!("ST-{i}-slow"))])
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    // Answered at once, CAS or not: the route refuses a request without a token.
    let served = client()
        .get(slow.url("/uconly/during"))
        .send()
        .await
        .unwrap();
    assert_error(served, 401, "TokenMissing").await;
    for wait in waits {
        assert_eq!(wait.await.unwrap(), 504);
    }
    eventually(|| silent.open.load(Ordering::SeqCst) == 0 && slow.open_fds() <= fds_before).await;
    assert_eq!(
        silent.open.load(Ordering::SeqCst),
        0,
        "connections to CAS left open"
    );
    assert!(
        slow.open_fds() <= fds_before,
        "{fds_before} fds before, {} after",
        slow.open_fds()
    );

    assert_not_logged(&down, &["ST-1-down"]);
    assert_not_logged(&slow, &["ST-1-slow"]);
}

fn success(user: &str) -> String {
    format!(
        "<cas:serviceResponse {NS}><cas:authenticationSuccess><cas:user>{user}</cas:user></cas:authenticationSuccess></cas:serviceResponse>"
    )
}

#[tokio::test]
async fn hostile_answers_are_502_and_never_log_in() {
    let (fake, up) = tokio::join!(FakeCas::start(), Upstream::start());
    let gate = ucgate(&up, &cas_config(&fake.base(), "")).await;
    let laughs = format!(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>{}"#,
        success("&lol3;")
    );
    let wrong_ns =
        success("alice").replace("http://www.yale.edu/tp/cas", "http://evil.example/cas");
    let two_users = format!(
        "<cas:serviceResponse {NS}><cas:authenticationSuccess><cas:user>bob</cas:user><cas:user>alice</cas:user></cas:authenticationSuccess></cas:serviceResponse>"
    );
    let huge = success(&format!("alice<!--{}-->", "x".repeat(100 * 1024)));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("billion laughs", http_200(&laughs)),
        ("wrong namespace", http_200(&wrong_ns)),
        ("two users", http_200(&two_users)),
        (
            "no user",
            http_200(&format!(
                "<cas:serviceResponse {NS}><cas:authenticationSuccess/></cas:serviceResponse>"
            )),
        ),
        ("huge", http_200(&huge)),
        ("huge, no length", {
            let mut raw =
                b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nConnection: close\r\n\r\n".to_vec();
            raw.extend_from_slice(huge.as_bytes());
            raw
        }),
        (
            "html login page",
            http_200("<html><body><form>Login</form></body></html>"),
        ),
        ("CAS 1 answer", http_200("yes\nalice\n")),
        ("truncated", http_200(&success("alice")[..60])),
        (
            "server error",
            http_response(
                "500 Internal Server Error",
                &[],
                success("alice").as_bytes(),
            ),
        ),
        (
            "redirect",
            http_response(
                "302 Found",
                &[("Location", "http://127.0.0.1:1/steal")],
                b"",
            ),
        ),
        ("not http", b"SSH-2.0-OpenSSH\r\n".to_vec()),
    ];
    for (name, raw) in cases {
        fake.set(raw);
        let response = exchange(&gate, SERVICE, "ST-42-hostile").await;
        let status = response.status().as_u16();
        let code = if name == "not http" {
            "CasUnavailable"
        } else {
            "CasInvalidResponse"
        };
        let body = assert_error(response, 502, code).await;
        assert!(!body.to_string().contains("alice"), "{name}: {body}");
        assert_eq!(status, 502, "{name}");
    }
    // Every case reached the fake CAS with the ticket for this service, at /p3/serviceValidate.
    let targets = fake.targets();
    assert_eq!(targets.len(), 12, "{targets:?}");
    assert!(targets.iter().all(|t| t.starts_with("/cas/p3/serviceValidate?service=http%3A%2F%2F127.0.0.1%3A8081%2Fucassistant%2F&ticket=ST-42-hostile")), "{targets:?}");

    // A failure whose text echoes the ticket: only the code comes back, and it is the 401.
    fake.set(http_200(&format!(
        r#"<cas:serviceResponse {NS}><cas:authenticationFailure code="INVALID_TICKET">Ticket ST-42-hostile not recognized</cas:authenticationFailure></cas:serviceResponse>"#
    )));
    let body = assert_error(
        exchange(&gate, SERVICE, "ST-42-hostile").await,
        401,
        "CasServerInvalidTicket",
    )
    .await;
    assert!(!body.to_string().contains("ST-42"), "{body}");
    // The process survived it all and still serves.
    fake.set(http_200(&success("alice")));
    assert_eq!(
        exchange(&gate, SERVICE, "ST-42-hostile").await.status(),
        200
    );
    assert_not_logged(&gate, &["ST-42-hostile"]);
}

#[tokio::test]
async fn refused_tickets_lock_out_the_client_address() {
    let (fake, up) = tokio::join!(FakeCas::start(), Upstream::start());
    let gate = ucgate(&up, &cas_config(&fake.base(), "")).await;
    fake.set(http_200(&format!(
        r#"<cas:serviceResponse {NS}><cas:authenticationFailure code="INVALID_TICKET">no</cas:authenticationFailure></cas:serviceResponse>"#
    )));
    for i in 0..3 {
        let ticket = format!("ST-{i}-guess");
        assert_error(
            exchange(&gate, SERVICE, &ticket).await,
            401,
            "CasServerInvalidTicket",
        )
        .await;
    }
    // Locked out: refused before CAS is asked, even with what would be a good ticket.
    fake.set(http_200(&success("alice")));
    let response = exchange(&gate, SERVICE, "ST-9-good").await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 429, "TooManyAttempts").await;
    assert_eq!(fake.targets().len(), 3);
}

#[test]
fn a_bad_cas_section_refuses_to_start() {
    let base = "[tokens]\n\n[users]\nfile = \"users.toml\"\n\n[cas]\n";
    for (cas, expected) in [
        (
            "server = \"https://cas.example.com/cas\"\nallowed_services = [\"xivo.example.com\"]",
            "cas.allowed_services",
        ),
        (
            "server = \"http://cas.example.com/cas\"\nallowed_services = [\"https://xivo.example.com/\"]",
            "cas.server",
        ),
        (
            "server = \"https://cas.example.com/cas\"\nallowed_services = [\"https://xivo.example.com/\"]\nca_bundle = \"missing.pem\"",
            "ca_bundle",
        ),
        (
            "server = \"https://cas.example.com/cas\"\nallowed_services = [\"https://xivo.example.com/\"]\nprotocol = \"saml\"",
            "protocol: unknown variant",
        ),
    ] {
        let finished = Ucgate::builder(format!("{base}{cas}"))
            .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
            .file("users.toml", SSO_USERS)
            .run(&["check-config"]);
        assert_eq!(finished.code(), Some(2), "{cas}: {}", finished.stderr);
        assert!(
            finished.stderr.contains(expected),
            "{cas}: {}",
            finished.stderr
        );
    }
}

/// The CAS client trusts exactly `ca_bundle` when it is set: a private CA works, and the system
/// roots or another CA do not.
#[tokio::test]
async fn tls_to_cas_is_checked_against_the_ca_bundle() {
    let up = Upstream::start().await;
    let pki = tokio::task::spawn_blocking(Pki::new).await.unwrap();
    let tls = TlsCas::start(&pki, &success("alice"));
    let start = |bundle: Option<&str>| {
        let extra = bundle.map_or(String::new(), |_| "ca_bundle = \"cas-ca.pem\"".into());
        let config = common::ConfigBuilder::new()
            .route(route("uconly", "/uconly/", &up.url()).accept(&["uc"]))
            .raw(&format!(
                "[tokens]\n\n[users]\nfile = \"users.toml\"\n\n[cas]\n{}",
                cas_config(&tls.base, &extra)
            ))
            .build();
        let mut builder = Ucgate::builder(config)
            .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
            .file("users.toml", SSO_USERS);
        if let Some(name) = bundle {
            builder = builder.file("cas-ca.pem", pki.pem(name));
        }
        builder.start()
    };

    let trusted = start(Some("ca.pem")).await;
    let response = exchange(&trusted, SERVICE, "ST-1-tls").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["login"],
        "alice"
    );

    let system_roots = start(None).await;
    assert_error(
        exchange(&system_roots, SERVICE, "ST-2-tls").await,
        502,
        "CasUnavailable",
    )
    .await;
    let other_ca = start(Some("other-ca.pem")).await;
    assert_error(
        exchange(&other_ca, SERVICE, "ST-3-tls").await,
        502,
        "CasUnavailable",
    )
    .await;
    for gate in [&trusted, &system_roots, &other_ca] {
        assert_not_logged(gate, &["ST-1-tls", "ST-2-tls", "ST-3-tls"]);
    }
}
