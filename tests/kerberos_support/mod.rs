//! A real MIT KDC owned by one test (tests/idp/kdc/setup_realm.sh), kinit, curl --negotiate, and
//! a libgssapi initiator run in a child process so that its Kerberos environment (KRB5_CONFIG,
//! KRB5CCNAME) never has to be set in the test process itself.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const REALM: &str = "EXAMPLE.TEST";
const BOUND: Duration = Duration::from_secs(10);

/// The programs the realm and the clients need. Outside CI a missing one skips the test (with a
/// message); under CI=true it fails it.
pub fn prerequisites_present() -> bool {
    let missing: Vec<&str> = ["krb5kdc", "kdb5_util", "kadmin.local", "kinit", "curl"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "missing {missing:?}: run scripts/install-idp-deps.sh (needs krb5-kdc, krb5-admin-server, krb5-user, curl)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(tool).is_file())
}

fn free_port() -> u16 {
    // The KDC listens on the port over UDP and TCP: take one free for both.
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A throw-away realm EXAMPLE.TEST with alice, bob, carol, and the keytabs `http.keytab`
/// (HTTP/localhost, HTTP/127.0.0.1) and `other.keytab` (HTTP/other.test). The KDC is killed
/// and reaped on drop.
pub struct Kdc {
    child: Child,
    pub dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl Kdc {
    pub fn start() -> Kdc {
        let dir = tempfile::Builder::new()
            .prefix("ucgate-kdc")
            .tempdir()
            .unwrap();
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp/kdc/setup_realm.sh");
        let mut child = Command::new("bash")
            .arg(script)
            .env("KWORK", dir.path())
            .env("KDC_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn setup_realm.sh");
        let deadline = Instant::now() + BOUND;
        let env_file = dir.path().join("env.sh");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
                let setup =
                    std::fs::read_to_string(dir.path().join("setup.log")).unwrap_or_default();
                panic!("setup_realm.sh exited ({status}): {err}\n{setup}");
            }
            if env_file.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the KDC did not listen within {BOUND:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let env = parse_env(&std::fs::read_to_string(&env_file).unwrap());
        Kdc { child, dir, env }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn krb5_config(&self) -> &str {
        &self.env["KRB5_CONFIG"]
    }

    /// The client environment for `user`'s ticket cache: KRB5_CONFIG and KRB5CCNAME only (no
    /// KRB5RCACHETYPE=none: nothing here accepts tokens).
    pub fn client_env(&self, user: &str) -> Vec<(String, String)> {
        vec![
            ("KRB5_CONFIG".into(), self.krb5_config().into()),
            (
                "KRB5CCNAME".into(),
                format!("FILE:{}", self.path(&format!("{user}.ccache")).display()),
            ),
        ]
    }

    /// Rotates the service keys of `principals` (`kadmin.local ktadd`: new random keys, kvno + 1)
    /// and returns a keytab holding only the new keys.
    pub fn rotate_keys(&self, principals: &[&str]) -> Vec<u8> {
        let fresh = self.path("rotated.keytab");
        let _ = std::fs::remove_file(&fresh);
        let out = Command::new("kadmin.local")
            .args(["-r", "EXAMPLE.TEST", "-q"])
            .arg(format!(
                "ktadd -k {} {}",
                fresh.display(),
                principals.join(" ")
            ))
            .env("KRB5_CONFIG", self.krb5_config())
            .env("KRB5_KDC_PROFILE", &self.env["KRB5_KDC_PROFILE"])
            .stdin(Stdio::null())
            .output()
            .expect("spawn kadmin.local");
        assert!(
            out.status.success(),
            "kadmin.local ktadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&fresh).unwrap()
    }

    /// `echo PASSWORD | kinit USER` into `USER.ccache`.
    pub fn kinit(&self, user: &str, password: &str) {
        let mut child = Command::new("kinit")
            .arg(user)
            .envs(self.client_env(user))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kinit");
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kinit {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `curl --negotiate -u : URL` with `user`'s tickets.
    pub fn curl_negotiate(&self, user: &str, url: &str, extra: &[&str]) -> Curl {
        let out = Command::new("curl")
            .args(["-sS", "-v", "--noproxy", "*", "--negotiate", "-u", ":"])
            .args(["-D", "-", "-o", "-"])
            .args(extra)
            .arg(url)
            .envs(self.client_env(user))
            .output()
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "curl failed: {stderr}");
        Curl::parse(&stdout, &stderr)
    }
}

impl Drop for Kdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// What curl got back for the last response (after its Negotiate retry), and the Negotiate
/// tokens it sent (from its verbose trace), to grep logs for.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub sent_tokens: Vec<String>,
}

impl Curl {
    fn parse(stdout: &str, stderr: &str) -> Curl {
        // `-D -` prints each response's head; the last one is the final response.
        let start = stdout.rfind("HTTP/").expect("a response head");
        let (head, body) = stdout[start..]
            .split_once("\r\n\r\n")
            .expect("end of the head");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let sent_tokens = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("> Authorization: Negotiate "))
            .map(|t| t.trim().to_owned())
            .collect();
        Curl {
            status,
            headers,
            body: body.to_owned(),
            sent_tokens,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// The environment variable that turns the ignored helper test into the initiator.
pub const INITIATOR_TARGET: &str = "UCGATE_TEST_SPNEGO_TARGET";

/// A libgssapi initiator in a child process (this test binary, running its ignored helper
/// test): it prints the first SPNEGO token, then checks the server's mutual-authentication
/// token.
pub struct Initiator {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// The base64 SPNEGO token.
    pub token: String,
}

impl Initiator {
    /// `target` is a host-based service name, e.g. `HTTP@localhost`.
    pub fn start(kdc: &Kdc, user: &str, target: &str, helper_test: &str) -> Initiator {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                helper_test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .envs(kdc.client_env(user))
            .env(INITIATOR_TARGET, target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the initiator helper");
        let stdin = child.stdin.take().unwrap();
        let lines = read_lines(child.stdout.take().unwrap());
        let token = read_marked(&lines, "SPNEGO-TOKEN ");
        Initiator {
            child,
            stdin,
            lines,
            token,
        }
    }

    /// Feeds the server's `WWW-Authenticate: Negotiate <token>`; returns whether the client
    /// accepted it as mutual authentication.
    pub fn finish(mut self, reply: &str) -> bool {
        writeln!(self.stdin, "{reply}").unwrap();
        let verdict = read_marked(&self.lines, "MUTUAL ");
        let _ = self.child.wait();
        verdict == "ok"
    }
}

impl Drop for Initiator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's stdout, line by line, so that waiting for a line can be bounded.
fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn read_marked(lines: &mpsc::Receiver<String>, marker: &str) -> String {
    let deadline = Instant::now() + BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("the initiator helper printed no {marker:?}: {e}"));
        // libtest writes "test NAME ... " without a newline before the helper's own output.
        if let Some(at) = line.find(marker) {
            return line[at + marker.len()..].trim().to_owned();
        }
    }
}

/// The body of the helper test: runs only in the child [`Initiator::start`] spawns.
pub fn run_initiator_helper() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext};
    use libgssapi::credential::{Cred, CredUsage};
    use libgssapi::name::Name;
    use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE, OidSet};

    let Ok(target) = std::env::var(INITIATOR_TARGET) else {
        return;
    };
    let mut mechs = OidSet::new();
    mechs.add(GSS_MECH_KRB5).unwrap();
    mechs.add(GSS_MECH_SPNEGO).unwrap();
    let cred =
        Cred::acquire(None, None, CredUsage::Initiate, Some(&mechs)).expect("initiator cred");
    let name = Name::new(target.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE)).unwrap();
    let mut ctx = ClientCtx::new(
        Some(cred),
        name,
        CtxFlags::GSS_C_MUTUAL_FLAG,
        Some(GSS_MECH_SPNEGO),
    );
    let token = ctx
        .step(None, None)
        .expect("first SPNEGO token")
        .expect("a token");
    println!("SPNEGO-TOKEN {}", STANDARD.encode(&*token));
    let mut reply = String::new();
    std::io::stdin().read_line(&mut reply).unwrap();
    let verdict = reply
        .trim()
        .strip_prefix("Negotiate ")
        .and_then(|b64| STANDARD.decode(b64).ok())
        .map(|reply| matches!(ctx.step(Some(&reply), None), Ok(None)) && ctx.is_complete());
    println!(
        "MUTUAL {}",
        if verdict == Some(true) {
            "ok"
        } else {
            "failed"
        }
    );
}
