//! The Redis harness itself (tests/redis_support/): a real redis-server starts, stores what it is
//! given, enforces its password, really goes down on `stop()` (and on drop) and comes back empty
//! on the same port on `start_again()`; the fake servers answer garbage or nothing.

mod common;
mod redis_support;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{BOUND, run_bounded};
use redis_support::*;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

fn assert_refused(port: u16) {
    match TcpStream::connect(("127.0.0.1", port)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "connect: {e}"),
        Ok(_) => panic!("port {port} still accepts connections"),
    }
}

/// redis-cli on `redis`'s port with no password: (succeeded, stdout and stderr). With `-e` an
/// error reply goes to stderr.
fn cli_without_password(redis: &Redis, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(program("redis-cli"));
    cmd.args(["-e", "-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(args);
    let out = run_bounded(&mut cmd, b"");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim()
        .to_owned(),
    )
}

#[test]
fn a_server_starts_and_holds_what_cli_sets() {
    let redis = Redis::start();
    assert_ne!(redis.port(), 0);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/0", redis.port()));
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
    assert_eq!(redis.cli(&["SET", "ucgate:a", "value one"]), "OK");
    assert_eq!(redis.cli(&["SET", "ucgate:b", "2", "EX", "100"]), "OK");
    assert_eq!(redis.cli(&["SET", "other", "3"]), "OK");
    assert_eq!(redis.cli(&["GET", "ucgate:a"]), "value one");
    let mut keys: Vec<String> = redis
        .cli(&["KEYS", "ucgate:*"])
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    assert_eq!(keys, ["ucgate:a", "ucgate:b"]);
    let ttl: i64 = redis.cli(&["TTL", "ucgate:b"]).parse().unwrap();
    assert!((1..=100).contains(&ttl), "TTL {ttl}");
    assert_eq!(redis.cli(&["TTL", "ucgate:a"]), "-1");
    assert_eq!(redis.cli(&["DBSIZE"]), "3");
}

#[test]
fn two_servers_are_independent() {
    let one = Redis::start();
    let two = Redis::start();
    assert_ne!(one.port(), two.port());
    one.cli(&["SET", "k", "1"]);
    assert_eq!(two.cli(&["DBSIZE"]), "0");
}

#[test]
#[should_panic(expected = "WRONGTYPE")]
fn cli_fails_on_an_error_reply() {
    let redis = Redis::start();
    redis.cli(&["SET", "k", "v"]);
    redis.cli(&["LPUSH", "k", "x"]);
}

#[test]
fn the_password_is_required() {
    let redis = Redis::start_with_password("s3cret-Pw");
    assert_eq!(
        redis.url(),
        format!("redis://:s3cret-Pw@127.0.0.1:{}/0", redis.port())
    );
    assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(redis.cli(&["GET", "k"]), "v");

    let (ok, stdout) = cli_without_password(&redis, &["GET", "k"]);
    assert!(!ok, "GET without the password succeeded: {stdout}");
    assert!(stdout.starts_with("NOAUTH"), "{stdout}");

    let (ok, stdout) = cli_without_password(&redis, &["AUTH", "wrong"]);
    assert!(!ok, "AUTH with a wrong password succeeded: {stdout}");
    assert!(stdout.starts_with("WRONGPASS"), "{stdout}");
}

#[test]
fn stop_refuses_connections_and_start_again_is_empty_on_the_same_port() {
    let mut redis = Redis::start_with_password("pw1");
    let (port, url) = (redis.port(), redis.url());
    redis.cli(&["SET", "ucgate:before", "v"]);
    assert_eq!(redis.cli(&["DBSIZE"]), "1");

    redis.stop();
    assert_refused(port);
    redis.stop(); // stopping a stopped server is a no-op
    assert_refused(port);

    redis.start_again();
    assert_eq!((redis.port(), redis.url()), (port, url));
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
    assert_eq!(redis.cli(&["EXISTS", "ucgate:before"]), "0");
    // Same password as before.
    let (ok, stdout) = cli_without_password(&redis, &["DBSIZE"]);
    assert!(!ok && stdout.starts_with("NOAUTH"), "{stdout}");

    // Again, twice in a row, and without stop() first.
    redis.cli(&["SET", "k", "v"]);
    redis.start_again();
    redis.start_again();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
}

#[test]
fn drop_kills_the_server() {
    let redis = Redis::start();
    let port = redis.port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(redis);
    assert_refused(port);
}

#[test]
#[should_panic(expected = "run `bash scripts/install-idp-deps.sh`")]
fn a_missing_program_names_the_install_script() {
    program("redis-server-not-installed");
}

/// Waits (bounded) until `fake` has accepted `n` connections.
async fn wait_connections(fake: &FakeRedis, n: usize) {
    let deadline = Instant::now() + BOUND;
    while fake.connections() < n {
        assert!(
            Instant::now() < deadline,
            "{} connections",
            fake.connections()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fake.connections(), n);
}

#[tokio::test]
async fn garbage_answers_every_read_with_bytes_that_are_not_resp() {
    let fake = FakeRedis::garbage().await;
    let url = fake.url();
    let port = url
        .strip_prefix("redis://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix("/0"))
        .unwrap_or_else(|| panic!("{url}"));
    let mut conn = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    for _ in 0..2 {
        conn.write_all(PING).await.unwrap();
        let mut reply = vec![0u8; GARBAGE.len()];
        tokio::time::timeout(BOUND, conn.read_exact(&mut reply))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(reply, GARBAGE);
        // No RESP reply starts with 'H' (RESP2 and RESP3 type bytes).
        assert!(!b"+-:$*_#,(!=%~>|".contains(&reply[0]));
    }
    // Nothing more, and the connection stays open.
    let mut byte = [0u8; 1];
    let more = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut byte)).await;
    assert!(more.is_err(), "expected silence, got {more:?}");
    wait_connections(&fake, 1).await;
}

#[tokio::test]
async fn stalling_never_answers_and_closes_on_drop() {
    let fake = FakeRedis::stalling().await;
    let addr = fake.url().replace("redis://", "").replace("/0", "");
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(PING).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "expected no answer within 300 ms, got {read:?}"
    );
    let _second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    wait_connections(&fake, 2).await;

    drop(fake);
    // Its tasks are aborted: the connection is closed (EOF or reset), and nothing listens.
    let read = tokio::time::timeout(BOUND, conn.read(&mut buf))
        .await
        .expect("the connection closed after drop");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let deadline = Instant::now() + BOUND;
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} still accepts after drop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
