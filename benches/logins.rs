//! Logins against XiVO's PostgreSQL database, against the users file (argon2id), and the UC-token
//! proxy path with the recheck of issue 15 on and off: a real PostgreSQL (the tests' harness),
//! ucgate's release binary, requests over loopback.
//!
//! `cargo bench --bench logins` (needs scripts/install-idp-deps.sh's PostgreSQL). Prints a
//! markdown table; nothing is asserted: figures, not tests.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/directory_support/mod.rs"]
mod directory_support;
mod support;

use std::time::Duration;

use common::*;
use directory_support::Postgres;
use support::{agent_users, load};

const SIGNING_KEY: &str = "bench-logins-signing-key-0123456789abcdef";
const USERS: usize = 200;

fn gate_config(upstream: &str, users: &str) -> String {
    ConfigBuilder::new()
        .server("workers = 1")
        .route(
            route("api", "/api/", upstream)
                .accept(&["uc"])
                .upstream_auth("none"),
        )
        .raw(&format!(
            "[tokens]\n\n[users]\n{users}\n\n[login]\nmax_failures = 1000000"
        ))
        .build()
}

async fn start(config: String, pg: &Postgres, users_file: &str) -> Ucgate {
    support::gate(config, SIGNING_KEY, users_file)
        .env("XIVO_DB_URL", &pg.url())
        .start()
        .await
}

fn login_request(
    gate: &Ucgate,
    password_of: fn(usize) -> String,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Clone + Send + 'static
{
    let url = gate.url("/xuc/api/2.0/auth/login");
    let client = client();
    move |i| {
        let (url, client) = (url.clone(), client.clone());
        Box::pin(async move {
            let n = i % USERS;
            let response = client
                .post(&url)
                .json(
                    &serde_json::json!({"login": format!("agent{n}"), "password": password_of(n)}),
                )
                .send()
                .await
                .unwrap();
            response.status() == 200
        })
    }
}

fn password(n: usize) -> String {
    format!("password-{n}")
}

fn main() {
    support::run(async {
        let pg = Postgres::start();
        let mut sql = String::from("INSERT INTO cti_profile (name) VALUES ('agent');\n");
        for n in 0..USERS {
            sql.push_str(&format!(
                "INSERT INTO userfeatures (loginclient, passwdclient, enableclient, cti_profile_id) \
                 VALUES ('agent{n}', '{}', 1, (SELECT id FROM cti_profile WHERE name = 'agent'));\n",
                password(n)
            ));
        }
        pg.execute(&sql);
        let hash = String::from_utf8(hash_password_run("password-0\n").stdout).unwrap();
        let users_file = agent_users(&hash, USERS);
        let up = Upstream::start().await;
        println!("| measure | per second | p50 | p99 |\n|---|---:|---:|---:|");
        let row = |what: &str, (rate, p50, p99): (f64, Duration, Duration)| {
            println!("| {what} | {rate:.0} | {p50:.2?} | {p99:.2?} |");
        };

        let database = "database_url_env = \"XIVO_DB_URL\"";
        let gate = start(gate_config(&up.url(), database), &pg, "").await;
        row(
            "logins, XiVO's database, 8 clients",
            load(8, login_request(&gate, password)).await,
        );
        drop(gate);
        let gate = start(
            gate_config(&up.url(), "file = \"users.toml\""),
            &pg,
            &users_file,
        )
        .await;
        row(
            "logins, users file (argon2id), 8 clients",
            load(8, login_request(&gate, |_| "password-0".into())).await,
        );
        drop(gate);

        for recheck in ["60s", "0s"] {
            let gate = start(
                gate_config(&up.url(), &format!("{database}\nrecheck = \"{recheck}\"")),
                &pg,
                "",
            )
            .await;
            let mut tokens = Vec::new();
            for n in 0..USERS {
                let response = client()
                    .post(gate.url("/xuc/api/2.0/auth/login"))
                    .json(
                        &serde_json::json!({"login": format!("agent{n}"), "password": password(n)}),
                    )
                    .send()
                    .await
                    .unwrap();
                let body: serde_json::Value = response.json().await.unwrap();
                tokens.push(body["token"].as_str().unwrap().to_owned());
            }
            let tokens = std::sync::Arc::new(tokens);
            let url = gate.url("/api/x");
            let client = client();
            let request = move |i: usize| {
                let (url, client, tokens) = (url.clone(), client.clone(), tokens.clone());
                async move {
                    client
                        .get(&url)
                        .header(X_AUTH_TOKEN, &tokens[i % USERS])
                        .send()
                        .await
                        .unwrap()
                        .status()
                        == 200
                }
            };
            row(
                &format!("UC-token requests, {USERS} users, recheck = \"{recheck}\", 16 clients"),
                load(16, request).await,
            );
        }
    });
}
