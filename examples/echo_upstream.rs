//! A demo upstream for `scripts/run-example.sh`: stands in for XiVO's configmgt and recording
//! APIs and answers every request with what it was told, so that a newcomer sees what ucgate
//! forwards: the method, the path, and the identity and forwarding headers. The shared token
//! ucgate adds is shown by its length, never its value.
//!
//! `cargo run --example echo_upstream -- configmgt=127.0.0.1:9100 recording=127.0.0.1:9400`

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};

/// The headers an upstream of ucgate learns something from.
const TOLD: [&str; 7] = [
    "x-auth-user",
    "x-auth-method",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "authorization",
];

async fn answer(
    name: &'static str,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let received = body.collect().await.map_or(0, |b| b.to_bytes().len());
    let mut told = Map::new();
    for header in TOLD {
        if let Some(value) = parts.headers.get(header) {
            told.insert(
                header.into(),
                String::from_utf8_lossy(value.as_bytes()).into(),
            );
        }
    }
    if let Some(token) = parts.headers.get("x-auth-token") {
        // The shared token: it must never leave the servers, so not even the demo prints it.
        told.insert(
            "x-auth-token".into(),
            format!("<{} characters: the shared token>", token.len()).into(),
        );
    }
    let answer = json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body_bytes": received,
        "told": Value::Object(told),
    });
    let mut text = serde_json::to_vec_pretty(&answer).unwrap_or_default();
    text.push(b'\n');
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .expect("a valid response"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut servers = Vec::new();
    for arg in std::env::args().skip(1) {
        let Some((name, addr)) = arg.split_once('=') else {
            eprintln!("usage: echo_upstream NAME=ADDRESS ... (e.g. configmgt=127.0.0.1:9100)");
            std::process::exit(2);
        };
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| {
            eprintln!("echo_upstream: {addr}: {e}");
            std::process::exit(2);
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| {
                eprintln!("echo_upstream: cannot listen on {addr}: {e}");
                std::process::exit(1);
            });
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        eprintln!("echo_upstream: {name} on {addr}");
        servers.push(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(name, request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }
    if servers.is_empty() {
        eprintln!("usage: echo_upstream NAME=ADDRESS ...");
        std::process::exit(2);
    }
    for server in servers {
        let _ = server.await;
    }
}
