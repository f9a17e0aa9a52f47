//! CAS test peers: the real django-cas-server (tests/idp/cas) as a child process, and a fake
//! CAS endpoint for hostile answers that a real server would never send.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The longest a start-up wait lasts before it fails the test.
const BOUND: Duration = Duration::from_secs(20);

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp/cas")
}

/// The venv python from scripts/install-idp-deps.sh. A missing venv fails the test (never a
/// skip): a CAS test that does not talk to CAS proves nothing.
fn python() -> PathBuf {
    let py = idp_dir().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `bash scripts/install-idp-deps.sh` first",
        py.display()
    );
    py
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real django-cas-server on loopback. Killed and reaped on drop.
pub struct CasServer {
    child: Child,
    /// `http://127.0.0.1:PORT/cas`
    pub base: String,
    dir: tempfile::TempDir,
}

impl CasServer {
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .unwrap()
    }

    fn start_blocking() -> Self {
        let py = python();
        let dir = tempfile::Builder::new()
            .prefix("ucgate-cas")
            .tempdir()
            .unwrap();
        let made = Command::new("bash")
            .arg(idp_dir().join("make_project.sh"))
            .env("CASDIR", dir.path())
            .env("PY", &py)
            .stdin(Stdio::null())
            .output()
            .expect("run make_project.sh");
        assert!(
            made.status.success(),
            "make_project.sh failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("runserver.log")).unwrap();
        let mut child = Command::new(&py)
            .args([
                "manage.py",
                "runserver",
                &format!("127.0.0.1:{port}"),
                "--noreload",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn django runserver");
        let deadline = Instant::now() + BOUND;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "django-cas-server exited ({status}): {}",
                    std::fs::read_to_string(dir.path().join("runserver.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("django-cas-server did not listen within {BOUND:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            base: format!("http://127.0.0.1:{port}/cas"),
            dir,
        }
    }

    /// A real service ticket for `service`, through the CAS login form.
    pub async fn ticket(&self, service: &str, login: &str, password: &str) -> String {
        self.ticket_with(service, login, password, false).await
    }

    /// A real service ticket for a service already encoded for a query string (by JavaScript's
    /// `escape()` or `encodeURIComponent()`), sent to the login page as a browser sends it.
    pub async fn ticket_for_encoded(&self, encoded: &str, login: &str, password: &str) -> String {
        self.ticket_with(encoded, login, password, true).await
    }

    async fn ticket_with(
        &self,
        service: &str,
        login: &str,
        password: &str,
        encoded: bool,
    ) -> String {
        let args = [
            idp_dir().join("get_ticket.py").display().to_string(),
            self.base.clone(),
            service.to_owned(),
            login.to_owned(),
            password.to_owned(),
        ];
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python())
                .args(args)
                .env("SERVICE_ENCODED", if encoded { "1" } else { "0" })
                .stdin(Stdio::null())
                .output()
                .expect("run get_ticket.py")
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "get_ticket.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ticket = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(ticket.starts_with("ST-"), "not a service ticket: {ticket}");
        ticket
    }
}

impl Drop for CasServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fake CAS server: answers every request with the raw HTTP response currently set, then
/// closes the connection. Records the request targets it received.
pub struct FakeCas {
    addr: SocketAddr,
    response: Arc<Mutex<Vec<u8>>>,
    targets: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCas {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let response = Arc::new(Mutex::new(http_200("")));
        let targets = Arc::new(Mutex::new(Vec::new()));
        let (r, t) = (response.clone(), targets.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (r, t) = (r.clone(), t.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head);
                    let target = line.split(' ').nth(1).unwrap_or("").to_owned();
                    t.lock().unwrap().push(target);
                    let bytes = r.lock().unwrap().clone();
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            response,
            targets,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/cas`
    pub fn base(&self) -> String {
        format!("http://{}/cas", self.addr)
    }

    pub fn set(&self, raw_response: Vec<u8>) {
        *self.response.lock().unwrap() = raw_response;
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

impl Drop for FakeCas {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A complete HTTP/1.1 200 response with an XML body.
pub fn http_200(body: &str) -> Vec<u8> {
    http_response("200 OK", &[], body.as_bytes())
}

pub fn http_response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The TLS peer: Python's stdlib HTTPS server answering every GET with a fixed body. CAS over
/// TLS with a private CA is the case under test; django's runserver has no TLS.
const TLS_SERVER: &str = r#"
import http.server, ssl, sys
body = sys.argv[3].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A private CA and a certificate for 127.0.0.1 that it signed, made with the openssl CLI.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ucgate-pki")
            .tempdir()
            .unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let subject = format!("/CN=ucgate test {ca}");
            let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout", &key, "-out", &pem, "-subj", &subject, "-days", "2",
            ]);
            openssl(&args);
        }
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&args);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        Self { dir }
    }

    pub fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap()
    }
}

/// An HTTPS server with the certificate of [`Pki`], answering `body` to every GET.
pub struct TlsCas {
    child: Child,
    pub base: String,
}

impl TlsCas {
    pub fn start(pki: &Pki, body: &str) -> Self {
        let mut child = Command::new(python())
            .args(["-c", TLS_SERVER])
            .arg(pki.dir.path().join("server.pem"))
            .arg(pki.dir.path().join("server.key"))
            .arg(body)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the TLS server");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the TLS server did not start: {line:?}")
        });
        Self {
            child,
            base: format!("https://127.0.0.1:{port}/cas"),
        }
    }
}

impl Drop for TlsCas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
