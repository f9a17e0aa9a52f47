//! Issue 19, a newcomer's first five minutes: `scripts/run-example.sh` starts ucgate on the
//! example configuration in front of the demo upstream, prints the `curl` lines of the README's
//! quick start, and those lines, pasted into a shell, show the main job. Ctrl-C stops everything.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A debug build hashes the demo password and starts two servers: generous, but bounded.
const START_BOUND: Duration = Duration::from_secs(60);

/// Where `cargo test` / `cargo nextest` put the examples: `target/<profile>/examples/`, beside
/// `target/<profile>/deps/` where this test runs from.
fn echo_upstream() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let echo = profile_dir.join("examples").join("echo_upstream");
    assert!(
        echo.exists(),
        "{} is missing: cargo test builds the examples (cargo build --example echo_upstream)",
        echo.display()
    );
    echo
}

/// Four loopback ports free right now.
fn free_ports() -> [u16; 4] {
    let listeners: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn listening(port: u16) -> bool {
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
}

/// The script's output, read as it comes.
struct Collected {
    text: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Collected {
    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// All of it, once the pipe is closed (bounded): the script's last lines may still be in
    /// the pipe when it has exited.
    fn complete(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.text()
    }
}

fn collect(stream: impl Read + Send + 'static) -> Collected {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    Collected { text, reader }
}

fn wait_exit(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The text between two marker lines.
fn between<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let (_, rest) = text.split_once(start)?;
    Some(rest.split_once(end)?.0)
}

/// The value after `prefix` on the line that has it.
fn after<'t>(text: &'t str, prefix: &str) -> &'t str {
    text.split_once(prefix)
        .and_then(|(_, rest)| rest.split(|c: char| c.is_whitespace() || c == ',').next())
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
}

/// A process group, killed when the test ends, whatever its outcome: a failing test leaves
/// nothing running.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a process group this test created; ESRCH once it is gone.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

#[test]
fn the_example_script_runs_what_it_prints_and_stops_on_ctrl_c() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ports = free_ports();
    let [gate, admin, configmgt, recording] = ports;
    let mut script = Command::new("bash")
        .arg(root.join("scripts/run-example.sh"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("UCGATE_BIN", env!("CARGO_BIN_EXE_ucgate"))
        .env("ECHO_BIN", echo_upstream())
        .env("UCGATE_PORT", gate.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("CONFIGMGT_PORT", configmgt.to_string())
        .env("RECORDING_PORT", recording.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, as a shell gives a command run in a terminal.
        .process_group(0)
        .spawn()
        .expect("run scripts/run-example.sh");
    let group = Group(i32::try_from(script.id()).unwrap());
    let stdout = collect(script.stdout.take().unwrap());
    let stderr = collect(script.stderr.take().unwrap());
    let (start, end) = ("----- try it -----\n", "----- end -----");
    let deadline = Instant::now() + START_BOUND;
    let printed = loop {
        let text = stdout.text();
        if between(&text, start, end).is_some() {
            break text;
        }
        if let Some(status) = script.try_wait().unwrap() {
            panic!("the script stopped ({status}):\n{text}\n{}", stderr.text());
        }
        if Instant::now() > deadline {
            let _ = script.kill();
            panic!(
                "no curl lines within {START_BOUND:?}:\n{text}\n{}",
                stderr.text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let password = after(&printed, "has the password ");
    let shared = after(&printed, "the shared token is ").trim_end_matches('.');
    assert!(password.len() >= 12 && shared.len() >= 32, "{printed}");
    for port in ports {
        assert!(listening(port), "nothing on {port}:\n{printed}");
    }

    // The lines, pasted as they are into a shell.
    let lines = between(&printed, start, end).unwrap();
    let pasted = Command::new("bash")
        .args(["-c", lines])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&pasted.stdout).into_owned();
    let err = String::from_utf8_lossy(&pasted.stderr).into_owned();
    assert!(pasted.status.success(), "{out}\n{err}");
    let mut answers = out.lines();
    // 1. A UC token.
    let token = answers.next().unwrap_or_default().to_owned();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {out}");
    // 2. configmgt is told who it is and gets the shared token, never the UC token.
    assert!(out.contains(r#""upstream": "configmgt""#), "{out}");
    assert!(out.contains(r#""x-auth-user": "demo""#), "{out}");
    assert!(out.contains(r#""x-auth-method": "password""#), "{out}");
    let told_shared = format!(
        r#""x-auth-token": "<{} characters: the shared token>""#,
        shared.len()
    );
    assert_eq!(out.matches(&told_shared).count(), 2, "{out}");
    assert!(
        !out.contains(&format!(r#""x-auth-token": "{token}""#)),
        "{out}"
    );
    // 3. The shared token opens recording.
    assert!(out.contains(r#""upstream": "recording""#), "{out}");
    assert!(out.contains(r#""path": "/recording/records""#), "{out}");
    // 4. No token: 401 in JSON.
    assert!(out.contains("HTTP/1.1 401"), "{out}");
    assert!(out.contains(r#"{"error":"TokenMissing","#), "{out}");
    // 5. The check renews.
    assert!(
        out.contains(r#""login":"demo""#) && out.contains(r#""TTL":"#),
        "{out}"
    );
    // 6. Logout, then the token is refused.
    assert!(out.lines().any(|l| l == "204"), "{out}");
    assert!(out.contains(r#"{"error":"TokenInvalid","#), "{out}");
    // 7. The operator's listener.
    assert!(out.contains(r#"{"status":"ready"}"#), "{out}");
    assert!(
        out.contains(r#"ucgate_requests_total{route="configmgt",status="200",credential="uc"} 1"#),
        "{out}"
    );
    // The public listener does not answer them.
    let on_public = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{gate}/metrics"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&on_public.stdout), "404");

    // Ctrl-C, as a terminal sends it: SIGINT to the whole foreground process group. Everything
    // the script started stops, nothing is left listening.
    // SAFETY: kill(2) of the process group created above.
    assert_eq!(unsafe { libc::kill(-group.0, libc::SIGINT) }, 0);
    let status = wait_exit(&mut script, Duration::from_secs(30));
    let log = stderr.complete();
    let status = status.unwrap_or_else(|| {
        let _ = script.kill();
        panic!("the script did not stop on SIGINT:\n{log}")
    });
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(
        log.contains("SIGINT received") || log.contains("SIGTERM received"),
        "{log}"
    );
    assert!(log.contains("run-example.sh: stopped"), "{log}");
    for port in ports {
        assert!(
            !listening(port),
            "{port} still listening after Ctrl-C:\n{log}"
        );
    }
    // ucgate's log, which the terminal shows, holds no secret.
    assert!(log.contains("ucgate::access"), "{log}");
    for secret in [password, shared, token.as_str()] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}

/// The README's quick start shows the lines the script prints: the same steps, the same
/// requests, so that one cannot change without the other.
#[test]
fn the_readme_quick_start_follows_the_printed_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let quick = between(&readme, "## Quick start", "\n## ").expect("a Quick start section");
    let script = std::fs::read_to_string(root.join("scripts/run-example.sh")).unwrap();
    let printed = between(&script, "----- try it -----\n", "----- end -----").unwrap();
    let steps = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix("# "))
            .filter_map(|l| l.split_once(". ").map(|(n, _)| n.to_owned()))
            .filter(|n| n.parse::<u32>().is_ok())
            .collect()
    };
    assert_eq!(steps(quick), steps(printed), "the numbered steps differ");
    // Every request the script prints, by method and path, is in the README.
    let mut checked = 0;
    for line in printed.lines().filter(|l| l.contains("curl ")) {
        for word in line.split_whitespace() {
            // `$GATE/path` or `http://127.0.0.1:$ADMIN_PORT/path`.
            let Some(path) = ["$GATE", "_PORT"]
                .iter()
                .find_map(|base| word.split_once(base))
                .map(|(_, path)| path.trim_end_matches(';').to_owned())
            else {
                continue;
            };
            checked += 1;
            assert!(
                quick.contains(&path),
                "{path} is printed, not in the README"
            );
        }
        if line.contains("-X POST") {
            assert!(quick.contains("-X POST"), "{line}");
        }
    }
    assert!(checked >= 8, "only {checked} requests found in the script");
}
