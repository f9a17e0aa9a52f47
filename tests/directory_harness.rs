//! The directory harness itself (tests/directory_support/): a real PostgreSQL holding XiVO's
//! tables and a real OpenLDAP slapd start, hold exactly what was put in them, enforce what the
//! tests of ucgate rely on (scram logins, read-only grants, hidden passwords), and really go down
//! on `stop()` and come back with their data on `restart()`.

mod common;
mod directory_support;

use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Instant;

use common::run_bounded;
use directory_support::*;

fn connects(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// psql as ucgate would log in: with `url` (the asterisk role over TCP), nothing else.
fn psql_url(url: &str, sql: &str) -> Output {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ])
    .env("PGSSLMODE", "disable")
    .env_remove("PGPASSWORD")
    .env_remove("PGSERVICE");
    run_bounded(&mut cmd, b"")
}

fn ldap(program: &str, slapd: &Slapd, dn: &str, password: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LDAPNOINIT", "1")
        .args(["-x", "-H", &slapd.url, "-D", dn, "-w", password]);
    cmd
}

fn whoami(slapd: &Slapd, login: &str, password: &str) -> Output {
    let dn = format!("uid={login},{}", slapd.search_base);
    run_bounded(&mut ldap("ldapwhoami", slapd, &dn, password), b"")
}

/// The manager's search under the search base, as LDIF without comments or line wrapping.
fn manager_search(slapd: &Slapd, filter: &str, attrs: &[&str]) -> String {
    let mut cmd = ldap(
        "ldapsearch",
        slapd,
        &slapd.manager_dn,
        &slapd.manager_password,
    );
    cmd.args([
        "-LLL",
        "-o",
        "ldif-wrap=no",
        "-b",
        &slapd.search_base,
        filter,
    ])
    .args(attrs);
    let out = run_bounded(&mut cmd, b"");
    assert!(
        out.status.success(),
        "ldapsearch {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn postgres_stores_xivo_users_exactly_and_survives_a_restart() {
    let started = Instant::now();
    let mut pg = Postgres::start();
    eprintln!("Postgres::start took {:?}", started.elapsed());
    assert_eq!(
        pg.url(),
        format!(
            "postgresql://asterisk:{}@127.0.0.1:{}/asterisk",
            pg.password, pg.port
        )
    );
    assert!(
        pg.password.chars().all(|c| c.is_ascii_alphanumeric()),
        "{}",
        pg.password
    );

    let tricky = "it's \"quoted\" \\back\\slash\\ é ☃ $$ :'x'";
    let alice = add_xivo_user(&pg, "alice", tricky, true, Some("agent"));
    assert_eq!(
        pg.query(&format!(
            "SELECT passwdclient FROM userfeatures WHERE id = {alice}"
        )),
        tricky
    );
    assert_eq!(
        pg.query(&format!(
            "SELECT u.loginclient, u.enableclient, p.name FROM userfeatures u \
             JOIN cti_profile p ON p.id = u.cti_profile_id WHERE u.id = {alice}"
        )),
        "alice|1|agent"
    );
    // A second alice (XiVO has no unique login), the existing profile reused; and a user
    // without a profile.
    let alice2 = add_xivo_user(&pg, "alice", "other", false, Some("agent"));
    assert_ne!(alice, alice2);
    let bob = add_xivo_user(&pg, "bob", "bob-pw", true, None);
    assert_eq!(
        pg.query("SELECT count(*) FROM userfeatures WHERE loginclient = 'alice'"),
        "2"
    );
    assert_eq!(pg.query("SELECT count(*) FROM cti_profile"), "1");
    assert_eq!(
        pg.query(&format!(
            "SELECT enableclient, cti_profile_id IS NULL FROM userfeatures WHERE id = {bob}"
        )),
        "1|t"
    );

    // The asterisk role logs in over TCP with url(), reads, and may not write.
    let read = psql_url(&pg.url(), "SELECT count(*) FROM userfeatures");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "3");
    let write = psql_url(&pg.url(), "DELETE FROM userfeatures");
    assert!(!write.status.success());
    assert!(
        String::from_utf8_lossy(&write.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );
    let wrong = pg.url().replace(&pg.password, "not-the-password");
    let denied = psql_url(&wrong, "SELECT 1");
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // execute() stops at the first error and fails the test with psql's message.
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pg.execute("INSERT INTO cti_profile (name) VALUES ('x'); SELECT nope; INSERT INTO cti_profile (name) VALUES ('y');")
    }));
    let message = *failed
        .expect_err("execute of bad SQL panics")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains("\"nope\" does not exist"), "{message}");
    assert_eq!(
        pg.query("SELECT string_agg(name, ',' ORDER BY name) FROM cti_profile"),
        "agent,x"
    );

    let port = pg.port;
    pg.stop();
    assert!(!connects(port), "port {port} still accepts after stop()");
    pg.stop(); // idempotent
    let started = Instant::now();
    pg.restart();
    eprintln!("Postgres::restart took {:?}", started.elapsed());
    assert_eq!(pg.port, port);
    assert!(connects(port));
    assert_eq!(
        pg.query(&format!(
            "SELECT passwdclient FROM userfeatures WHERE id = {alice}"
        )),
        tricky
    );
    let read = psql_url(&pg.url(), "SELECT count(*) FROM userfeatures");
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "3");
}

#[test]
fn slapd_binds_searches_hides_passwords_and_survives_a_restart() {
    let started = Instant::now();
    let mut slapd = Slapd::start(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    eprintln!("Slapd::start took {:?}", started.elapsed());
    assert_eq!(slapd.url, format!("ldap://127.0.0.1:{}", slapd.port));
    assert_eq!(slapd.manager_dn, "cn=reader,dc=example,dc=com");
    assert_eq!(slapd.search_base, "ou=people,dc=example,dc=com");

    let alice_dn = "dn:uid=alice,ou=people,dc=example,dc=com";
    let ok = whoami(&slapd, "alice", "alice-pw");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), alice_dn);
    let bad = whoami(&slapd, "alice", "bob-pw");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Invalid credentials (49)"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!whoami(&slapd, "carol", "alice-pw").status.success());

    // The manager finds exactly alice, reads her uid and cn, never her password, even when
    // asking for it by name or for all attributes.
    let found = manager_search(&slapd, "(uid=alice)", &["uid", "cn", "userPassword"]);
    assert_eq!(found.matches("dn: ").count(), 1, "{found}");
    assert!(
        found.contains("dn: uid=alice,ou=people,dc=example,dc=com"),
        "{found}"
    );
    assert!(
        found.contains("uid: alice") && found.contains("cn: alice"),
        "{found}"
    );
    assert!(!found.to_lowercase().contains("userpassword"), "{found}");
    let all = manager_search(&slapd, "(objectClass=inetOrgPerson)", &["*"]);
    assert_eq!(all.matches("dn: ").count(), 2, "{all}");
    assert!(!all.to_lowercase().contains("userpassword"), "{all}");
    // Filtering on the password reveals nothing either.
    let probe = manager_search(&slapd, "(userPassword=alice-pw)", &["uid"]);
    assert_eq!(probe, "", "{probe}");
    // Anonymous sees nothing.
    let mut anonymous = Command::new("ldapsearch");
    anonymous
        .env("LDAPNOINIT", "1")
        .args(["-x", "-LLL", "-H", &slapd.url, "-b", &slapd.search_base])
        .arg("(uid=*)");
    let anonymous = run_bounded(&mut anonymous, b"");
    assert!(!String::from_utf8_lossy(&anonymous.stdout).contains("dn: "));

    let new = "n€w 'pass' \"word\" \\ ☃";
    slapd.set_password("alice", new);
    assert!(!whoami(&slapd, "alice", "alice-pw").status.success());
    assert!(whoami(&slapd, "alice", new).status.success());
    assert!(whoami(&slapd, "bob", "bob-pw").status.success());

    let port = slapd.port;
    slapd.stop();
    assert!(!connects(port), "port {port} still accepts after stop()");
    slapd.stop(); // idempotent
    let started = Instant::now();
    slapd.restart();
    eprintln!("Slapd::restart took {:?}", started.elapsed());
    assert_eq!(slapd.port, port);
    assert!(whoami(&slapd, "alice", new).status.success());
    assert!(!whoami(&slapd, "alice", "alice-pw").status.success());
    let found = manager_search(&slapd, "(uid=alice)", &["uid"]);
    assert_eq!(found.matches("dn: ").count(), 1, "{found}");
}

/// Two of each side by side, as nextest runs tests: separate ports, dirs and data.
#[test]
fn instances_are_independent() {
    let (a, b) = (Postgres::start(), Postgres::start());
    assert_ne!(a.port, b.port);
    add_xivo_user(&a, "only-in-a", "pw", true, None);
    assert_eq!(a.query("SELECT count(*) FROM userfeatures"), "1");
    assert_eq!(b.query("SELECT count(*) FROM userfeatures"), "0");
    assert_ne!(a.password, b.password);

    let x = Slapd::start(&[("alice", "x-pw")]);
    let y = Slapd::start(&[("alice", "y-pw")]);
    assert_ne!(x.port, y.port);
    assert!(whoami(&x, "alice", "x-pw").status.success());
    assert!(!whoami(&y, "alice", "x-pw").status.success());
    let (px, pa) = (x.port, a.port);
    drop(x);
    drop(a);
    assert!(
        !connects(px) && !connects(pa),
        "a dropped server still listens"
    );
    assert!(whoami(&y, "alice", "y-pw").status.success());
}
