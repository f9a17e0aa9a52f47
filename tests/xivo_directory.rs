//! Issue 15: XiVO's own users, from a real PostgreSQL server holding XiVO's two tables, with
//! passwords optionally checked by a real OpenLDAP slapd. Both run on loopback, started by the
//! tests (tests/directory_support).

mod common;
mod directory_support;
mod oidc_support;

use std::time::Duration;

use common::*;
use directory_support::{Postgres, Slapd, add_xivo_user};

const SIGNING_KEY: &str = "xivo-directory-signing-key-0123456789abcd";
const LOGIN: &str = "/xuc/api/2.0/auth/login";
const LDAP_PASSWORD_ENV: &str = "UCGATE_LDAP_PASSWORD";

/// `/api/` (shared or UC), `/agents/` (UC tokens of profile `agent` only) to `upstream`; XiVO's
/// database from `XIVO_DB_URL`, looked up again every second.
fn config(upstream: &str, extra: &str) -> String {
    ConfigBuilder::new()
        .route(route("api", "/api/", upstream).accept(&["shared", "uc"]))
        .route(
            route("agents", "/agents/", upstream)
                .accept(&["uc"])
                .line("profiles = [\"agent\"]"),
        )
        .raw(&format!(
            "[tokens]\n\n[users]\ndatabase_url_env = \"XIVO_DB_URL\"\nrecheck = \"1s\"\ntimeout = \"2s\"\n\n[login]\nmax_failures = 1000\n{extra}"
        ))
        .build()
}

async fn start(pg: &Postgres, config: String) -> Ucgate {
    Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("XIVO_DB_URL", &pg.url())
        .start()
        .await
}

async fn login(gate: &Ucgate, login: &str, password: &str) -> reqwest::Response {
    client()
        .post(gate.url(LOGIN))
        .json(&serde_json::json!({"login": login, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn token(gate: &Ucgate, user: &str, password: &str) -> String {
    let response = login(gate, user, password).await;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Whether `path` answers `status` to `token` within 6 s (several `recheck`s), asking every
/// 100 ms.
async fn answers(gate: &Ucgate, path: &str, token: &str, status: u16) -> bool {
    for _ in 0..60 {
        if get(gate, path, token).await.status() == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Nothing about how to reach the database, nor any password, in the logs.
fn assert_no_secret_logged(gate: &Ucgate, pg: &Postgres, passwords: &[&str]) {
    let logs = gate.logs();
    assert!(!logs.contains(&pg.url()), "the database URL is in the logs");
    assert!(
        !logs.contains(&pg.password),
        "the database password is in the logs"
    );
    for password in passwords {
        assert!(
            !logs.contains(password),
            "a password is in the logs: {password}"
        );
    }
}

const QUOTED: &str = "it's \"quoted\" \\ é☃";

#[tokio::test]
async fn logins_follow_xivo_s_users_table() {
    let pg = Postgres::start();
    add_xivo_user(&pg, "alice", "alice-pw", true, Some("agent"));
    add_xivo_user(&pg, "dan", "dan-pw", false, Some("agent"));
    add_xivo_user(&pg, "noprofile", "noprofile-pw", true, None);
    add_xivo_user(&pg, "quoted", QUOTED, true, Some("supervisor"));
    add_xivo_user(&pg, "twice", "twice-pw", true, Some("agent"));
    add_xivo_user(&pg, "twice", "twice-pw", true, Some("agent"));
    let up = Upstream::start().await;
    let gate = start(&pg, config(&up.url(), "")).await;

    // The person XiVO allows: a token with XiVO's profile, which opens the agents' route.
    let alice = token(&gate, "alice", "alice-pw").await;
    assert_eq!(get(&gate, "/agents/me", &alice).await.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("password"));
    // Passwords in clear text in XiVO, compared exactly, quotes and unicode included.
    let quoted = token(&gate, "quoted", QUOTED).await;
    assert_error(get(&gate, "/agents/me", &quoted).await, 403, "Forbidden").await;
    assert_eq!(get(&gate, "/api/x", &quoted).await.status(), 200);

    // Everything else is the same 401: wrong password, CTI login disabled, no profile, a login
    // two rows share, unknown logins, and hostile inputs of every kind.
    let long = "a".repeat(10_000);
    let refused: Vec<(&str, &str)> = vec![
        ("alice", "wrong"),
        ("alice", "ALICE-PW"),
        ("alice", ""),
        ("dan", "dan-pw"),
        ("noprofile", "noprofile-pw"),
        ("twice", "twice-pw"),
        ("nobody", "x"),
        ("", ""),
        ("alice'--", "alice-pw"),
        ("alice' OR '1'='1", "x' OR '1'='1"),
        ("' OR 1=1; DROP TABLE userfeatures; --", "x"),
        ("ali%", "alice-pw"),
        ("_lice", "alice-pw"),
        ("alice\u{0}", "alice-pw"),
        ("аlice", "alice-pw"), // Cyrillic а
        ("ALICE", "alice-pw"),
        (&long, "x"),
    ];
    for (user, password) in refused {
        let response = login(&gate, user, password).await;
        assert_error(response, 401, "InvalidCredentials").await;
    }
    assert!(gate.logs().contains("several userfeatures rows"));
    assert_eq!(
        pg.query("SELECT count(*) FROM userfeatures"),
        "6",
        "nothing dropped"
    );

    // A password changed in XiVO takes effect at the next login.
    pg.execute("UPDATE userfeatures SET passwdclient = 'new-alice-pw' WHERE loginclient = 'alice'");
    assert_error(
        login(&gate, "alice", "alice-pw").await,
        401,
        "InvalidCredentials",
    )
    .await;
    token(&gate, "alice", "new-alice-pw").await;

    assert_no_secret_logged(&gate, &pg, &["alice-pw", "new-alice-pw", "dan-pw", QUOTED]);
}

#[tokio::test]
async fn a_token_follows_its_user_in_xivo_within_recheck() {
    let pg = Postgres::start();
    add_xivo_user(&pg, "alice", "alice-pw", true, Some("agent"));
    add_xivo_user(&pg, "bob", "bob-pw", true, Some("agent"));
    let up = Upstream::start().await;
    let gate = start(&pg, config(&up.url(), "")).await;
    let alice = token(&gate, "alice", "alice-pw").await;
    let bob = token(&gate, "bob", "bob-pw").await;
    assert_eq!(get(&gate, "/agents/x", &alice).await.status(), 200);
    assert_eq!(get(&gate, "/agents/x", &bob).await.status(), 200);

    // Profile changed in XiVO: the agents' route refuses alice within `recheck` (1 s).
    pg.execute(
        "INSERT INTO cti_profile (name) VALUES ('supervisor'); \
         UPDATE userfeatures SET cti_profile_id = (SELECT id FROM cti_profile WHERE name = 'supervisor') \
         WHERE loginclient = 'alice'",
    );
    assert!(
        answers(&gate, "/agents/x", &alice, 403).await,
        "the new profile was not applied"
    );
    assert_eq!(get(&gate, "/api/x", &alice).await.status(), 200);

    // CTI login disabled: refused everywhere within `recheck`.
    pg.execute("UPDATE userfeatures SET enableclient = 0 WHERE loginclient = 'alice'");
    assert!(
        answers(&gate, "/api/x", &alice, 401).await,
        "a disabled user's token still works"
    );
    assert_error(get(&gate, "/api/x", &alice).await, 401, "TokenInvalid").await;
    // Deleted from XiVO: the same.
    pg.execute("DELETE FROM userfeatures WHERE loginclient = 'bob'");
    assert!(
        answers(&gate, "/agents/x", &bob, 401).await,
        "a deleted user's token still works"
    );
    // Enabled again: alice's token works again, on the route her profile opens.
    pg.execute("UPDATE userfeatures SET enableclient = 1 WHERE loginclient = 'alice'");
    assert!(answers(&gate, "/api/x", &alice, 200).await);
}

#[tokio::test]
async fn the_database_down_stops_logins_but_not_the_traffic() {
    let mut pg = Postgres::start();
    add_xivo_user(&pg, "alice", "alice-pw", true, Some("agent"));
    let up = Upstream::start().await;
    let gate = start(&pg, config(&up.url(), "")).await;
    let alice = token(&gate, "alice", "alice-pw").await;
    let ready = client().get(gate.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "ready"
    );

    pg.stop();
    let started = std::time::Instant::now();
    let response = login(&gate, "alice", "alice-pw").await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_error(response, 503, "DirectoryUnavailable").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by users.timeout"
    );
    assert_eq!(retry_after.as_deref(), Some("5"));
    // Requests with a token keep flowing, on the last known directory state.
    for _ in 0..3 {
        assert_eq!(get(&gate, "/agents/x", &alice).await.status(), 200);
        assert_eq!(get(&gate, "/api/x", SHARED_TOKEN).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let ready = client().get(gate.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["down"], serde_json::json!(["database"]));
    assert_eq!(
        metric(&gate, "ucgate_directory_up{backend=\"database\"}").await,
        0
    );
    assert!(metric(&gate, "ucgate_directory_errors_total{kind=\"unreachable\"}").await > 0);

    // Back: logins work again without a restart of ucgate.
    pg.restart();
    let mut back = false;
    for _ in 0..50 {
        if login(&gate, "alice", "alice-pw").await.status() == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "{}", gate.logs());
    assert_eq!(
        metric(&gate, "ucgate_directory_up{backend=\"database\"}").await,
        1
    );
    let ready = client().get(gate.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "ready"
    );
    assert_no_secret_logged(&gate, &pg, &["alice-pw"]);
}

fn ldap_section(slapd: &Slapd) -> String {
    format!(
        "\n[ldap]\nurl = {}\nmanager_dn = {}\nmanager_password_env = \"{LDAP_PASSWORD_ENV}\"\nsearch_base = {}\nuser_search_filter = \"uid=%s\"\ntimeout = \"2s\"\n",
        toml_str(&slapd.url),
        toml_str(&slapd.manager_dn),
        toml_str(&slapd.search_base)
    )
}

#[tokio::test]
async fn ldap_checks_the_passwords_of_xivo_s_users() {
    let pg = Postgres::start();
    add_xivo_user(&pg, "alice", "alice-xivo-pw", true, Some("agent"));
    add_xivo_user(&pg, "dan", "dan-xivo-pw", false, Some("agent"));
    // A XiVO login that is an LDAP wildcard: unescaped, `(uid=al*)` would find alice's entry,
    // and alice's password would log in as "al*".
    add_xivo_user(&pg, "al*", "x", true, Some("agent"));
    let mut slapd = Slapd::start(&[
        ("alice", "alice-ldap-pw"),
        ("dan", "dan-ldap-pw"),
        ("eve", "eve-ldap-pw"),
    ]);
    let up = Upstream::start().await;
    let gate = Ucgate::builder(config(&up.url(), &ldap_section(&slapd)))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("XIVO_DB_URL", &pg.url())
        .env(LDAP_PASSWORD_ENV, &slapd.manager_password)
        .start()
        .await;
    let alice = token(&gate, "alice", "alice-ldap-pw").await;
    assert_eq!(get(&gate, "/agents/x", &alice).await.status(), 200);
    for (user, password) in [
        // XiVO's password is not the one checked any more.
        ("alice", "alice-xivo-pw"),
        ("alice", "wrong"),
        // An empty password would be an unauthenticated bind, which servers accept.
        ("alice", ""),
        // Right in LDAP, but CTI login disabled in XiVO; in LDAP but not a XiVO user.
        ("dan", "dan-ldap-pw"),
        ("eve", "eve-ldap-pw"),
        // Filter injection: the login is escaped (RFC 4515), so none of these matches.
        ("*", "alice-ldap-pw"),
        ("al*", "alice-ldap-pw"),
        ("alice)(uid=*", "alice-ldap-pw"),
        ("*)(|(uid=*", "alice-ldap-pw"),
        ("alice\\2a", "alice-ldap-pw"),
        ("alice\u{0}", "alice-ldap-pw"),
    ] {
        let response = login(&gate, user, password).await;
        assert_error(response, 401, "InvalidCredentials").await;
    }
    // A password changed in LDAP takes effect at once.
    slapd.set_password("alice", "alice-new-ldap-pw");
    assert_error(
        login(&gate, "alice", "alice-ldap-pw").await,
        401,
        "InvalidCredentials",
    )
    .await;
    token(&gate, "alice", "alice-new-ldap-pw").await;

    // LDAP down: 503, tokens keep working, and back without a restart.
    slapd.stop();
    assert_error(
        login(&gate, "alice", "alice-new-ldap-pw").await,
        503,
        "DirectoryUnavailable",
    )
    .await;
    assert_eq!(get(&gate, "/agents/x", &alice).await.status(), 200);
    assert_eq!(readyz(&gate).await["down"], serde_json::json!(["ldap"]));
    slapd.restart();
    token(&gate, "alice", "alice-new-ldap-pw").await;
    let logs = gate.logs();
    for secret in [
        slapd.manager_password.as_str(),
        "alice-ldap-pw",
        "alice-new-ldap-pw",
        "dan-ldap-pw",
    ] {
        assert!(!logs.contains(secret), "a password is in the logs");
    }
}

#[tokio::test]
async fn single_sign_on_looks_the_proven_login_up_in_xivo_s_database() {
    let idp = oidc_support::Provider::start();
    let pg = Postgres::start();
    add_xivo_user(&pg, "alice", "alice-pw", true, Some("agent"));
    add_xivo_user(&pg, "bob", "bob-pw", false, Some("agent"));
    let up = Upstream::start().await;
    let oidc = format!(
        "\n[oidc]\nissuer = {}\naudience = [\"ucgate\"]\n",
        toml_str(&idp.issuer)
    );
    let gate = start(&pg, config(&up.url(), &oidc)).await;
    let mut ready = false;
    for _ in 0..100 {
        let r = client().get(gate.url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready);
    let exchange = |token: String| {
        client()
            .get(gate.url("/xuc/api/2.0/auth/oidc"))
            .header("Authorization", format!("Bearer {token}"))
            .send()
    };
    let response = exchange(idp.id_token("alice", "alicepw").await)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // bob: CTI login disabled in XiVO; carol: not a XiVO user at all.
    for (user, password) in [("bob", "bobpw"), ("carol", "carolpw")] {
        let response = exchange(idp.id_token(user, password).await).await.unwrap();
        assert_error(response, 401, "UserNotFound").await;
    }
}

#[test]
fn the_configuration_names_what_is_wrong_and_never_the_url() {
    let pg = Postgres::start();
    let up = "http://127.0.0.1:9";
    // Both sources, or neither.
    let both = config(up, "").replace(
        "database_url_env = \"XIVO_DB_URL\"",
        "database_url_env = \"XIVO_DB_URL\"\nfile = \"users.toml\"",
    );
    let out = Ucgate::builder(both)
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("XIVO_DB_URL", &pg.url())
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("users.file, users.database_url_env"),
        "{}",
        out.stderr
    );
    // The variable unset: named, with the files looked in.
    let out = Ucgate::builder(config(up, ""))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("XIVO_DB_URL is unset"),
        "{}",
        out.stderr
    );
    // Not a URL: said so, the value never quoted.
    let out = Ucgate::builder(config(up, ""))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("XIVO_DB_URL", "postgres//asterisk:S3cret-value@nowhere")
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(2));
    assert!(!out.stderr.contains("S3cret-value"), "{}", out.stderr);
    // Valid: check-config describes the directory without the URL.
    let out = Ucgate::builder(config(up, ""))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("XIVO_DB_URL", &pg.url())
        .run(&["check-config"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("XiVO's database at 127.0.0.1:"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&pg.password) && !out.stderr.contains(&pg.password));
}

#[test]
fn doctor_reports_the_database_and_the_ldap_manager() {
    let mut pg = Postgres::start();
    add_xivo_user(&pg, "alice", "alice-pw", true, Some("agent"));
    add_xivo_user(&pg, "dan", "dan-pw", false, Some("agent"));
    add_xivo_user(&pg, "noprofile", "x", true, None);
    let slapd = Slapd::start(&[("alice", "alice-ldap-pw")]);
    // A sound shared token, so that the exit code is the directory's.
    let (_env, custom_env) = sound_custom_env();
    let url = pg.url();
    let doctor = |manager_password: &str| {
        Ucgate::builder(config("http://127.0.0.1:9", &ldap_section(&slapd)))
            .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
            .env("XIVO_DB_URL", &url)
            .env(LDAP_PASSWORD_ENV, manager_password)
            // Only the sound file: doctor judges its environment's token too.
            .env_remove("PLAY_AUTH_TOKEN")
            .run(&[
                "doctor",
                "--root",
                "/nonexistent",
                custom_env.to_str().unwrap(),
            ])
    };
    let out = doctor(&slapd.manager_password);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(" OK  XiVO's database at 127.0.0.1:")
            && out.stdout.contains(": 1 user with CTI login enabled"),
        "{}",
        out.stdout
    );
    // No one allowed: said, not a failure (users may be enabled later).
    pg.execute("UPDATE userfeatures SET enableclient = 0 WHERE loginclient = 'alice'");
    let out = doctor(&slapd.manager_password);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("WARN XiVO's database at 127.0.0.1:")
            && out.stdout.contains("no one can log in"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(" OK  LDAP at ldap://127.0.0.1:"),
        "{}",
        out.stdout
    );
    let out = doctor("wrong-manager-password");
    assert!(out.stdout.contains("FAIL LDAP at"), "{}", out.stdout);
    assert_eq!(out.code(), Some(1));
    pg.stop();
    let out = doctor(&slapd.manager_password);
    assert!(
        out.stdout.contains("FAIL XiVO's database at"),
        "{}",
        out.stdout
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(&url) && !text.contains(&slapd.manager_password));
    }
}

#[tokio::test]
async fn the_read_only_role_of_deploy_reads_what_ucgate_needs_and_nothing_else() {
    let pg = Postgres::start();
    add_xivo_user(&pg, "alice", "alice-pw", true, Some("agent"));
    let sql = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/xivo-directory.sql"),
    )
    .unwrap();
    // XiVO's tables hold more than ucgate reads: a column of each that the role must not see.
    pg.execute(
        "ALTER TABLE userfeatures ADD COLUMN email VARCHAR(128) NOT NULL DEFAULT 'alice@example.test'; \
         ALTER TABLE cti_profile ADD COLUMN deletable BOOLEAN NOT NULL DEFAULT true",
    );
    let role_password = "Ro1e-Pa55word-for-ucgate";
    pg.execute(&sql.replace(":password", &format!("'{role_password}'")));
    let url = format!(
        "postgresql://ucgate:{role_password}@127.0.0.1:{}/asterisk",
        pg.port
    );
    let up = Upstream::start().await;
    let gate = Ucgate::builder(config(&up.url(), ""))
        .env("UCGATE_SIGNING_KEY", SIGNING_KEY)
        .env("XIVO_DB_URL", &url)
        .start()
        .await;
    let alice = token(&gate, "alice", "alice-pw").await;
    assert_eq!(get(&gate, "/agents/x", &alice).await.status(), 200);
    // The role reads those columns only: not the rest of the row, not another table, no write.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for denied in [
        "SELECT * FROM userfeatures",
        "SELECT email FROM userfeatures",
        "SELECT deletable FROM cti_profile",
        "SELECT * FROM cti_profile",
        "UPDATE userfeatures SET enableclient = 1",
        "CREATE TABLE x (y int)",
    ] {
        let e = client.simple_query(denied).await.unwrap_err();
        let code = e.as_db_error().map(|d| d.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{denied}: {e}");
    }
    assert!(!gate.logs().contains(role_password));
}
