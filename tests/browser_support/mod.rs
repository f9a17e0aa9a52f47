//! A real browser for the web-client tests: Debian's headless `chromium` (installed by
//! scripts/install-idp-deps.sh) opens a page served from its own loopback origin; the page runs
//! its script against ucgate on another origin and POSTs what it saw back to `/report` on the
//! page's origin. A missing chromium fails the test (never a skip): a browser test without a
//! browser proves nothing.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Behavior, Upstream};

/// The longest a page may take to report; a cold Chromium start is 1 to 3 s on 2 cores.
const BOUND: Duration = Duration::from_secs(60);

/// Chromium's own binary, on PATH.
fn chromium() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| path.split(':').map(move |dir| Path::new(dir).join(name)))
        .find(|p| p.is_file())
        .expect("chromium is missing: run `bash scripts/install-idp-deps.sh` first")
}

/// A loopback origin serving one page at `/` and recording what the page reports.
pub struct Page {
    server: Upstream,
    /// How the browser names the page's host: `127.0.0.1` or `localhost`.
    host: &'static str,
}

impl Page {
    /// Serves `script` in an HTML page. The script gets `report(value)`, which POSTs `value` as
    /// JSON to `/report` (same origin, so never subject to CORS).
    pub async fn serve(script: &str) -> Page {
        Page::serve_as("127.0.0.1", script).await
    }

    /// As [`Page::serve`], the page's origin named `http://localhost:PORT`: the same site as
    /// ucgate reached by `localhost` (sites ignore ports), which Chromium requires before it
    /// answers a cross-origin Negotiate challenge with the user's tickets.
    pub async fn serve_on_localhost(script: &str) -> Page {
        Page::serve_as("localhost", script).await
    }

    async fn serve_as(host: &'static str, script: &str) -> Page {
        let html = format!(
            "<!doctype html><meta charset=utf-8><title>ucgate browser test</title>\n<script>\n\
             const report = (value) => fetch('/report', {{method: 'POST', body: JSON.stringify(value)}});\n\
             {script}\n</script>\n"
        );
        let server = Upstream::start().await;
        server.on(
            "/report",
            Behavior::respond(204, "").header("cache-control", "no-store"),
        );
        server.on(
            "/",
            Behavior::respond(200, html)
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "no-store"),
        );
        Page { server, host }
    }

    /// `http://HOST:PORT`: the page's origin, as the browser sends it in `Origin`.
    pub fn origin(&self) -> String {
        format!("http://{}:{}", self.host, self.server.addr.port())
    }

    /// Opens the page (`/?query`) in a fresh headless Chromium (`flags` added, `env` set) and
    /// returns the JSON the page reported. Panics if it reports nothing within the bound.
    pub async fn open(
        &self,
        query: &str,
        flags: &[&str],
        env: &[(String, String)],
    ) -> serde_json::Value {
        let profile = tempfile::Builder::new()
            .prefix("ucgate-chromium")
            .tempdir()
            .unwrap();
        let log = profile.path().join("chromium.log");
        // Chromium on Linux loads GSSAPI only once a profile has met a Negotiate challenge
        // (and drops the first one it meets): this profile is one that has, as any profile of a
        // Kerberos site's users.
        std::fs::write(
            profile.path().join("Local State"),
            r#"{"net": {"received_http_auth_negotiate_headers": true}}"#,
        )
        .unwrap();
        // Reports of an earlier opening are not this one's.
        self.server.clear();
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                // Root in a container has no user namespaces for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-proxy-server",
                "--enable-logging=stderr",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(flags)
            .arg(format!("{}/?{query}", self.origin()))
            // Its own temporary files (org.chromium.Chromium.*) go with the profile.
            .env("TMPDIR", profile.path())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            // Its own process group: its helpers (zygote, renderers) are stopped with it, and
            // none still writes into the profile when the profile is removed.
            .process_group(0)
            .spawn()
            .expect("spawn chromium");
        let _kill = KillOnDrop(&mut child);
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(report) = self
                .server
                .requests()
                .into_iter()
                .find(|r| r.path == "/report")
            {
                // Shown by the test runner when the test fails.
                eprintln!(
                    "chromium said:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                return serde_json::from_slice(&report.body).expect("the page reports JSON");
            }
            assert!(
                Instant::now() < deadline,
                "the page reported nothing within {BOUND:?}; chromium said:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we own and have not reaped.
        unsafe { libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}
