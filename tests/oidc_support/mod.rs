//! The real OpenID provider of tests/idp/oidc (node oidc-provider) as a child process, the real
//! authorization-code + PKCE login against it, and the tools to forge tokens an attacker could.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::common::BOUND;

fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/idp/oidc")
}

/// The provider needs node and `npm ci` in tests/idp/oidc: a missing prerequisite fails the test
/// (it never skips), with the command that fixes it.
fn require_prerequisites() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is required for the OpenID tests: run scripts/install-idp-deps.sh"
    );
    assert!(
        idp_dir().join("node_modules/oidc-provider").is_dir(),
        "tests/idp/oidc/node_modules is missing: run scripts/install-idp-deps.sh"
    );
}

/// A running oidc-provider. Killed and reaped on drop.
pub struct Provider {
    child: Option<Child>,
    pub issuer: String,
    pub port: u16,
    pub client_id: String,
    pub client_secret: String,
    pub other_client_id: String,
    pub other_client_secret: String,
}

impl Provider {
    /// On a port of its choosing.
    pub fn start() -> Self {
        Self::start_with(0, &[])
    }

    /// On `port` (0 = any), with extra environment (`ID_TOKEN_TTL` ...). Waits (bounded) for the
    /// first stdout line, the ready signal.
    pub fn start_with(port: u16, env: &[(&str, &str)]) -> Self {
        require_prerequisites();
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(idp_dir())
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node server.mjs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep reading so that a later write never meets a closed pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(BOUND) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the OpenID provider did not start: {other:?}");
            }
        };
        let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        let text = |k: &str| ready[k].as_str().expect(k).to_owned();
        let issuer = text("issuer");
        let port = issuer.rsplit(':').next().unwrap().parse().unwrap();
        Provider {
            child: Some(child),
            issuer,
            port,
            client_id: text("client_id"),
            client_secret: text("client_secret"),
            other_client_id: text("other_client_id"),
            other_client_secret: text("other_client_secret"),
        }
    }

    /// Kills the provider and waits for it: its port refuses connections from then on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A real ID token for the `ucgate` client: authorization code + PKCE, through the login form.
    pub async fn id_token(&self, login: &str, password: &str) -> String {
        self.id_token_for(login, password, &self.client_id, &self.client_secret)
            .await
    }

    /// A real ID token of another client (another audience).
    pub async fn other_id_token(&self, login: &str, password: &str) -> String {
        self.id_token_for(
            login,
            password,
            &self.other_client_id,
            &self.other_client_secret,
        )
        .await
    }

    async fn id_token_for(
        &self,
        login: &str,
        password: &str,
        client: &str,
        secret: &str,
    ) -> String {
        let args = [
            "get_id_token.mjs",
            &self.issuer,
            login,
            password,
            client,
            secret,
        ]
        .map(String::from);
        let output = tokio::task::spawn_blocking(move || {
            Command::new("node")
                .args(args)
                .current_dir(idp_dir())
                .stdin(Stdio::null())
                .output()
                .expect("run get_id_token.mjs")
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "get_id_token.mjs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
        token
    }

    /// `POST /test/rotate-keys`: a new signing key; the old one is no longer published.
    pub async fn rotate_keys(&self) -> String {
        let response = crate::common::client()
            .post(format!("{}/test/rotate-keys", self.issuer))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body["kid"].as_str().unwrap().to_owned()
    }

    /// `POST /test/sign`: exactly `header` (plus `alg` RS256 and the current `kid`) and `claims`,
    /// signed with the provider's current key: a token only the provider could make, but one it
    /// would never issue.
    pub async fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let response = crate::common::client()
            .post(format!("{}/test/sign", self.issuer))
            .json(&serde_json::json!({ "header": header, "claims": claims }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap().trim().to_owned()
    }

    /// The first published key (a JWK), as `/jwks` serves it.
    pub async fn published_key(&self) -> serde_json::Value {
        let jwks: serde_json::Value = crate::common::client()
            .get(format!("{}/jwks", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jwks["keys"][0].clone()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port (bound, read, released) for a provider started later.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Tokens an attacker can make
// ---------------------------------------------------------------------------------------------

/// The decoded header and claims of a JWT (no verification).
pub fn parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    let mut it = token.split('.');
    let mut next = || -> serde_json::Value {
        serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap()
    };
    (next(), next())
}

/// `header.claims.signature` with the given parts, base64url-encoded as they are.
pub fn assemble(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    signature: &[u8],
) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(signature)
    )
}

fn node_eval(script: &str, args: &[&str]) -> String {
    let output = Command::new("node")
        .arg("-e")
        .arg(script)
        // The arguments are the script's, even one that starts with a dash (a PEM).
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("node -e");
    assert!(
        output.status.success(),
        "node -e failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A fresh RSA private key (PKCS#8 PEM) that the provider never saw.
pub fn attacker_rsa_key() -> String {
    node_eval(
        "const {privateKey} = require('crypto').generateKeyPairSync('rsa', {modulusLength: 2048});\
         process.stdout.write(privateKey.export({type: 'pkcs8', format: 'pem'}));",
        &[],
    )
}

/// The public half of `private_pem` as a JWK.
pub fn public_jwk(private_pem: &str) -> serde_json::Value {
    let jwk = node_eval(
        "const k = require('crypto').createPublicKey(process.argv[1]);\
         process.stdout.write(JSON.stringify(k.export({format: 'jwk'})));",
        &[private_pem],
    );
    serde_json::from_str(&jwk).unwrap()
}

/// The provider's public key as a PEM, from its JWK: what an HS256-with-public-key forger uses
/// as the HMAC secret.
pub fn public_pem(jwk: &serde_json::Value) -> String {
    node_eval(
        "const k = require('crypto').createPublicKey({key: JSON.parse(process.argv[1]), format: 'jwk'});\
         process.stdout.write(k.export({type: 'spki', format: 'pem'}));",
        &[&jwk.to_string()],
    )
}

/// `claims` signed with `alg` and `key`, under `kid`.
pub fn sign(
    alg: jsonwebtoken::Algorithm,
    kid: &str,
    claims: &serde_json::Value,
    key: &jsonwebtoken::EncodingKey,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}
