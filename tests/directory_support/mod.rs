#![allow(dead_code)]
//! Real directories owned by one test: a throwaway PostgreSQL cluster holding XiVO's
//! `userfeatures` and `cti_profile` tables ([`Postgres`]), and a throwaway OpenLDAP slapd
//! ([`Slapd`]). Each is a child process of the test on a free 127.0.0.1 port with its own temp
//! dir, so that tests running in parallel under nextest never share one; each is stopped, reaped
//! and removed on drop, and can be stopped and restarted on the same port and data to exercise
//! ucgate while its directory is down.
//!
//! The servers are set up and inspected with the stock clients (initdb, psql, slapadd,
//! ldapmodify, ldapwhoami) rather than a Rust client, so that what a test checks never goes
//! through the client libraries ucgate itself uses.
//!
//! Every wait is bounded ([`BOUND`]) and polls (a TCP connect, then a real login) instead of
//! sleeping. A missing program fails the test with the command that installs it: these tests
//! never skip.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BOUND, SETUP_BOUND, run_bounded, run_within};

const INSTALL: &str =
    "run scripts/install-idp-deps.sh (apt-get install postgresql slapd ldap-utils)";

/// How often a wait polls.
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// The superuser initdb creates; the harness's own login, never ucgate's.
const SUPERUSER: &str = "postgres";

/// XiVO's two tables as ucgate reads them, owned by the superuser: the `asterisk` role may only
/// read them, as on a XiVO. No unique constraint on `loginclient`: XiVO has none, and a
/// duplicated login is a case ucgate must handle.
const XIVO_SCHEMA: &str = "
CREATE TABLE cti_profile (id SERIAL PRIMARY KEY, name VARCHAR(255) NOT NULL UNIQUE);
CREATE TABLE userfeatures (
  id SERIAL PRIMARY KEY,
  firstname VARCHAR(128) NOT NULL DEFAULT '',
  lastname VARCHAR(128) NOT NULL DEFAULT '',
  loginclient VARCHAR(254) NOT NULL DEFAULT '',
  passwdclient VARCHAR(64) NOT NULL DEFAULT '',
  enableclient INTEGER NOT NULL DEFAULT 0,
  cti_profile_id INTEGER REFERENCES cti_profile(id)
);
GRANT SELECT ON userfeatures, cti_profile TO asterisk;
";

/// A throwaway PostgreSQL cluster in a temp dir on a free 127.0.0.1 port.
pub struct Postgres {
    pub port: u16,
    /// The role and database ucgate reads, like XiVO's: `asterisk`.
    pub user: String,
    /// Random, contains no URL-special characters.
    pub password: String,
    pub database: String,
    superuser_password: String,
    /// /usr/lib/postgresql/<newest>/bin.
    bin: PathBuf,
    /// uid and gid initdb and postgres run as: PostgreSQL refuses to run as root.
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// initdb (scram-sha-256, the superuser `postgres` with its own password), start
    /// `postgres -D dir -k dir -h 127.0.0.1 -p PORT` as a child, wait until it accepts
    /// connections, create the role `asterisk` and its database, and XiVO's tables in it.
    ///
    /// As root, initdb and postgres run as nobody/nogroup (65534) in a temp dir chowned to it;
    /// otherwise as the current user. Durability is off (fsync, full_page_writes,
    /// synchronous_commit): the cluster lives for one test.
    pub fn start() -> Self {
        let bin = postgres_bin();
        // SAFETY: geteuid has no preconditions.
        let run_as = (unsafe { libc::geteuid() } == 0).then_some((65534, 65534));
        // nobody must be able to reach the cluster's dir: under root's own TMPDIR it may not.
        let parent = match run_as {
            Some(_) if !reachable_by_all(&std::env::temp_dir()) => PathBuf::from("/tmp"),
            _ => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("ucgate-pg")
            .tempdir_in(parent)
            .unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut pg = Postgres {
            port: 0,
            user: "asterisk".into(),
            password: random_password(),
            database: "asterisk".into(),
            superuser_password: random_password(),
            bin,
            run_as,
            child: None,
            dir,
        };
        pg.initdb();
        // The port is free when picked but another test may take it before postgres binds it:
        // then postgres exits at once, and another port is tried.
        let mut attempts = 0;
        loop {
            pg.port = free_port();
            match pg.spawn_and_wait() {
                Ok(()) => break,
                Err(log) if attempts < 3 && log.contains("could not bind") => attempts += 1,
                Err(log) => panic!("postgres did not start:\n{log}"),
            }
        }
        let created = pg.psql(
            "postgres",
            "CREATE ROLE asterisk LOGIN PASSWORD :'password';\n\
             CREATE DATABASE asterisk OWNER asterisk;\n",
            &[("password", &pg.password)],
            false,
        );
        check(&created, "create the asterisk role and database");
        pg.execute(XIVO_SCHEMA);
        pg
    }

    /// `postgresql://asterisk:<password>@127.0.0.1:<port>/asterisk`
    pub fn url(&self) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}",
            self.user, self.password, self.port, self.database
        )
    }

    /// Runs SQL (several statements allowed) as the superuser in database `asterisk` with psql
    /// (ON_ERROR_STOP=1); panics with psql's stderr on error.
    pub fn execute(&self, sql: &str) {
        let out = self.psql(&self.database, sql, &[], false);
        check(&out, sql);
    }

    /// Runs a query as the superuser and returns psql's unaligned, tuples-only output (`-At`),
    /// trimmed.
    pub fn query(&self, sql: &str) -> String {
        self.query_with(sql, &[])
    }

    /// Stops the server (fast shutdown), keeping the data: the port refuses connections after
    /// this returns.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, libc::SIGINT, "postgres", true);
        }
    }

    /// Starts it again on the same port with the same data; returns once it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn_and_wait() {
            panic!("postgres did not restart on port {}:\n{log}", self.port);
        }
    }

    /// `query` with psql variables, each used in the SQL as `:'name'` (a quoted literal).
    fn query_with(&self, sql: &str, vars: &[(&str, &str)]) -> String {
        let out = self.psql(&self.database, sql, vars, true);
        check(&out, sql);
        String::from_utf8(out.stdout)
            .expect("psql printed UTF-8")
            .trim()
            .to_owned()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server programs, as the user the server runs as.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path());
        clear_pg_env(&mut cmd);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) {
        // initdb reads the superuser's password from a file the server user can read.
        let pwfile = self.dir.path().join("superuser.pw");
        std::fs::write(&pwfile, format!("{}\n", self.superuser_password)).unwrap();
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-U", SUPERUSER, "-A", "scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]);
        let out = run_within(&mut cmd, b"", SETUP_BOUND);
        std::fs::remove_file(&pwfile).unwrap();
        check(&out, "initdb");
    }

    /// Spawns postgres on `self.port` and waits until the superuser can run a query; on failure
    /// returns the server's log (after killing it if it is still running).
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "synchronous_commit=off", "-c", "shared_buffers=16MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.join("postgres").display()));
        self.child = Some(child);
        let deadline = Instant::now() + BOUND;
        let outcome = loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                break Err(format!("postgres exited ({status})"));
            }
            // Listening is not accepting yet ("the database system is starting up"): only a
            // query that succeeds is.
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self
                    .psql("postgres", "SELECT 1", &[], true)
                    .status
                    .success()
            {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(format!(
                    "postgres did not accept connections within {BOUND:?}"
                ));
            }
            std::thread::sleep(POLL);
        };
        outcome.map_err(|why| {
            if let Some(child) = self.child.take() {
                stop_child(child, libc::SIGKILL, "postgres", false);
            }
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            format!("{why}; its log:\n{log}")
        })
    }

    /// psql as the superuser over TCP (so through scram-sha-256), SQL on stdin (several
    /// statements, each in its own transaction), stopping at the first error.
    fn psql(&self, database: &str, sql: &str, vars: &[(&str, &str)], tuples: bool) -> Output {
        let psql = self.bin.join("psql");
        let mut cmd = Command::new(if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        });
        clear_pg_env(&mut cmd);
        cmd.env("PGPASSWORD", &self.superuser_password)
            .env("PGCLIENTENCODING", "UTF8")
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "5")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ]);
        if tuples {
            cmd.arg("-At");
        }
        for (name, value) in vars {
            cmd.arg("-v").arg(format!("{name}={value}"));
        }
        cmd.args(["-f", "-"]);
        run_bounded(&mut cmd, sql.as_bytes())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, libc::SIGINT, "postgres", false);
        }
    }
}

/// Inserts a XiVO user: a `cti_profile` row named `profile` when given (created if missing),
/// and a `userfeatures` row. Returns the userfeatures id.
///
/// Values go through psql variables (`:'name'`), so any text is stored exactly.
pub fn add_xivo_user(
    pg: &Postgres,
    login: &str,
    password: &str,
    enabled: bool,
    profile: Option<&str>,
) -> i64 {
    let mut sql = String::new();
    let mut vars = vec![("login", login), ("password", password)];
    let profile_id = match profile {
        Some(name) => {
            vars.push(("profile", name));
            sql.push_str(
                "INSERT INTO cti_profile (name) VALUES (:'profile') ON CONFLICT (name) DO NOTHING;\n",
            );
            "(SELECT id FROM cti_profile WHERE name = :'profile')"
        }
        None => "NULL",
    };
    sql.push_str(&format!(
        "INSERT INTO userfeatures (loginclient, passwdclient, enableclient, cti_profile_id) \
         VALUES (:'login', :'password', {}, {profile_id}) RETURNING id;\n",
        i32::from(enabled)
    ));
    let id = pg.query_with(&sql, &vars);
    id.parse()
        .unwrap_or_else(|e| panic!("userfeatures id {id:?}: {e}"))
}

/// The newest /usr/lib/postgresql/<major>/bin that has initdb and postgres.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("no /usr/lib/postgresql/*/bin/{{initdb,postgres}}: {INSTALL}"))
}

/// Whether every directory down to `dir` lets any user through.
fn reachable_by_all(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors().all(|d| {
        std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0)
    })
}

/// PG* variables of the environment the tests run in would redirect psql or the server.
fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OpenLDAP
// ---------------------------------------------------------------------------------------------

const SUFFIX: &str = "dc=example,dc=com";
const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";

/// A throwaway OpenLDAP slapd (mdb backend) in a temp dir on a free 127.0.0.1 port.
pub struct Slapd {
    pub port: u16,
    /// `ldap://127.0.0.1:PORT`
    pub url: String,
    /// `cn=reader,dc=example,dc=com`: a plain entry (not the rootdn) the ACL lets search
    /// ou=people and read everything there but passwords.
    pub manager_dn: String,
    pub manager_password: String,
    /// `ou=people,dc=example,dc=com`
    pub search_base: String,
    /// The harness's own rootdn, never given to ucgate.
    root_dn: String,
    root_password: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Slapd {
    /// A slapd.conf (`slapd -f`) with the core, cosine, inetorgperson and nis schemas, the
    /// suffix dc=example,dc=com loaded with slapadd (the manager entry, ou=people, and one
    /// inetOrgPerson `uid=<login>,ou=people,...` with a cleartext `userPassword` per entry of
    /// `people`), then `slapd -d none -h ldap://127.0.0.1:PORT/ -f conf` in the foreground as a
    /// child, until a manager bind works.
    ///
    /// The ACL: `userPassword` is readable by nobody but usable to bind (`by anonymous auth`);
    /// the manager reads everything else; each person reads their own entry.
    pub fn start(people: &[(&str, &str)]) -> Self {
        for program in [SLAPD, SLAPADD] {
            assert!(Path::new(program).is_file(), "no {program}: {INSTALL}");
        }
        for program in ["ldapwhoami", "ldapmodify"] {
            assert!(on_path(program), "no {program} on PATH: {INSTALL}");
        }
        let dir = tempfile::Builder::new()
            .prefix("ucgate-slapd")
            .tempdir()
            .unwrap();
        let mut slapd = Slapd {
            port: 0,
            url: String::new(),
            manager_dn: format!("cn=reader,{SUFFIX}"),
            manager_password: random_password(),
            search_base: format!("ou=people,{SUFFIX}"),
            root_dn: format!("cn=harness,{SUFFIX}"),
            root_password: random_password(),
            child: None,
            dir,
        };
        std::fs::create_dir(slapd.dir.path().join("data")).unwrap();
        std::fs::write(slapd.conf_path(), slapd.conf()).unwrap();
        let ldif = slapd.ldif(people);
        let mut slapadd = Command::new(SLAPADD);
        slapadd
            .arg("-q")
            .arg("-f")
            .arg(slapd.conf_path())
            .args(["-l", "/dev/stdin"]);
        check(
            &run_within(&mut slapadd, ldif.as_bytes(), SETUP_BOUND),
            "slapadd",
        );
        // As for postgres: a port taken between picking and binding means another try.
        let mut attempts = 0;
        loop {
            slapd.port = free_port();
            slapd.url = format!("ldap://127.0.0.1:{}", slapd.port);
            match slapd.spawn_and_wait() {
                Ok(()) => break,
                Err(log) if attempts < 3 && log.contains("Address already in use") => attempts += 1,
                Err(log) => panic!("slapd did not start:\n{log}"),
            }
        }
        slapd
    }

    /// Sets a person's password (ldapmodify as the rootdn).
    pub fn set_password(&self, login: &str, password: &str) {
        use base64::Engine;
        let ldif = format!(
            "dn: uid={login},{}\nchangetype: modify\nreplace: userPassword\nuserPassword:: {}\n",
            self.search_base,
            base64::engine::general_purpose::STANDARD.encode(password)
        );
        let mut cmd = ldap_tool("ldapmodify");
        cmd.args([
            "-x",
            "-H",
            &self.url,
            "-D",
            &self.root_dn,
            "-w",
            &self.root_password,
        ]);
        check(&run_bounded(&mut cmd, ldif.as_bytes()), "ldapmodify");
    }

    /// Stops slapd: the port refuses connections after this returns.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, libc::SIGTERM, "slapd", true);
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn_and_wait() {
            panic!("slapd did not restart on port {}:\n{log}", self.port);
        }
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("slapd.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    fn conf(&self) -> String {
        let dir = self.dir.path().display();
        format!(
            r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb

database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {dir}/data
index objectClass,uid eq

access to attrs=userPassword
  by anonymous auth
  by * none
access to *
  by dn.exact="{manager}" read
  by self read
  by * none
"#,
            root_dn = self.root_dn,
            root_pw = self.root_password,
            manager = self.manager_dn,
        )
    }

    fn ldif(&self, people: &[(&str, &str)]) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: {manager}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
             cn: reader\nuserPassword:: {manager_pw}\n\n\
             dn: {base}\nobjectClass: organizationalUnit\nou: people\n\n",
            manager = self.manager_dn,
            manager_pw = b64(&self.manager_password),
            base = self.search_base,
        );
        for (login, password) in people {
            ldif.push_str(&format!(
                "dn: uid={login},{base}\nobjectClass: inetOrgPerson\nuid: {login}\ncn: {login}\n\
                 sn: {login}\nuserPassword:: {pw}\n\n",
                base = self.search_base,
                pw = b64(password),
            ));
        }
        ldif
    }

    /// Spawns slapd on `self.port` and waits until the manager can bind; on failure returns
    /// slapd's log (after killing it if it is still running).
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(SLAPD)
            // `-d` keeps slapd in the foreground; level `none` logs only what is logged at any
            // level (startup, shutdown, errors such as a port in use), where `-d 0` logs nothing.
            .args(["-d", "none", "-h", &format!("{}/", self.url), "-f"])
            .arg(self.conf_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {SLAPD}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + BOUND;
        let outcome = loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                break Err(format!("slapd exited ({status})"));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let mut whoami = ldap_tool("ldapwhoami");
                whoami.args(["-x", "-H", &self.url, "-D", &self.manager_dn]);
                whoami.args(["-w", &self.manager_password]);
                let out = run_bounded(&mut whoami, b"");
                if out.status.success() {
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    break Err(format!(
                        "the manager could not bind within {BOUND:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
            if Instant::now() >= deadline {
                break Err(format!("slapd did not listen within {BOUND:?}"));
            }
            std::thread::sleep(POLL);
        };
        outcome.map_err(|why| {
            if let Some(child) = self.child.take() {
                stop_child(child, libc::SIGKILL, "slapd", false);
            }
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            format!("{why}; its log:\n{log}")
        })
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, libc::SIGTERM, "slapd", false);
        }
    }
}

/// An OpenLDAP client program that reads no ldap.conf or ~/.ldaprc: nothing of the machine's
/// client configuration (a default BASE, TLS settings) applies.
fn ldap_tool(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LDAPNOINIT", "1");
    cmd
}

fn on_path(program: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|dir| Path::new(dir).join(program).is_file())
}

// ---------------------------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------------------------

/// Panics with the program's stderr unless it succeeded.
fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `signal` and reaps the child within [`BOUND`], then SIGKILL. Strict (from `stop`), a
/// server that ignored the signal fails the test; from `drop`, it is only killed.
fn stop_child(mut child: Child, signal: i32, what: &str, strict: bool) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our unreaped child, so it cannot have
    // been reused.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + BOUND;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                assert!(!strict, "{what} did not stop within {BOUND:?}");
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// 24 random letters and digits: no character a URL, an LDIF value or a config file would
/// need escaped.
fn random_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).unwrap();
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}
