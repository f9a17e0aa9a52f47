//! Logging: the tracing subscriber and the access log (one line per request).

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Instant, SystemTime};

use http::{Method, StatusCode, Version};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::identity::ipv4_text;
use crate::metrics::{ReasonLabels, RequestLabels, RouteName, metrics};

/// Installs the global subscriber. `UCGATE_LOG` (or `RUST_LOG`) overrides the `info` default.
pub fn init(format: LogFormat) {
    let filter = std::env::var("UCGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    if !ansi {
        // Colours on a terminal are tracing's to write; elsewhere (a file, a pipe to the
        // container's log driver), access lines are written by hand (see `AccessLine`).
        let _ = ACCESS_FORMAT.set(format);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        // A line that cannot be written (stderr a pipe whose reader left: EPIPE) is dropped, as
        // the hand-written access lines are. tracing's default reports it with `eprintln!`, to
        // the same stderr, and that panics: the request being logged was cut off, and a
        // SIGTERM's "SIGTERM received" ended the process (101) instead of its drain.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The format access lines are written in by hand, set by [`init`] when stderr is no terminal;
/// unset (tests of the library, a terminal), they go through tracing's formatter.
static ACCESS_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// What the gateway learnt about a request, for the access log and the metrics.
#[derive(Debug, Default)]
pub struct RequestLog {
    pub path: Option<Box<str>>,
    /// The client's address (see `identity::Trust::origin`).
    pub client: Option<std::net::IpAddr>,
    pub route: Option<Arc<str>>,
    pub credential: Option<&'static str>,
    pub error: Option<&'static str>,
    /// The method of a token-exchange endpoint (password, kerberos, cas, oidc).
    pub exchange: Option<&'static str>,
}

static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));

impl RequestLog {
    /// Counts the request in the metrics: one place derives them all from what the gateway learnt.
    fn record(&self, status: StatusCode) {
        let m = metrics();
        let credential = self.credential.unwrap_or("none");
        let route = RouteName(self.route.clone().unwrap_or_else(|| NO_ROUTE.clone()));
        m.count_request(RequestLabels {
            route,
            status: status.as_u16(),
            credential,
        });
        if credential == "shared-previous" {
            m.shared_token_previous.inc();
        }
        match (self.error, status) {
            (Some("TooManyAttempts"), _) => {
                m.lockouts.inc();
            }
            (Some(reason), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                m.auth_failures
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
            }
            _ => {}
        }
        if let Some(method) = self.exchange {
            let outcome = match status {
                StatusCode::OK => "success",
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "failure",
                StatusCode::TOO_MANY_REQUESTS => "locked",
                _ => "error",
            };
            m.login(method, outcome);
        }
    }

    /// Counts the request in the metrics and writes its access-log line (target
    /// `ucgate::access`, when enabled), once its response head is ready: `started` is when
    /// it reached ucgate. Called by the gateway itself rather than by a tower layer around it:
    /// handing the log to such a layer took a response extension, a map allocated per request
    /// (500 instructions, callgrind).
    pub fn finish(&self, method: &Method, version: Version, started: Instant, status: StatusCode) {
        self.record(status);
        if tracing::enabled!(target: "ucgate::access", tracing::Level::INFO) {
            let line = AccessLine {
                method,
                path: self.path.as_deref().unwrap_or("-"),
                route: self.route.as_deref().unwrap_or("-"),
                status: status.as_u16(),
                credential: self.credential.unwrap_or("-"),
                error: self.error.unwrap_or("-"),
                client: self.client,
                version,
                latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            };
            match ACCESS_FORMAT.get() {
                Some(format) => line.write(*format, SystemTime::now()),
                None => line.trace(),
            }
        }
    }
}

/// One request's access-log line (target `ucgate::access`, message `request`).
///
/// Written by hand, the same bytes as tracing's formatter would write (a unit test compares
/// them, text and JSON): tracing's field visitors, `Debug` quoting and ANSI styling wrappers
/// cost 16,000 instructions per line, nearly half of what forwarding the request costs
/// (callgrind, `UCGATE_LOG=info`); this costs about 2,500, half of it the timestamp and the
/// write. The `UCGATE_LOG` filter still decides whether it is written.
#[derive(Debug)]
struct AccessLine<'a> {
    method: &'a Method,
    path: &'a str,
    route: &'a str,
    status: u16,
    credential: &'a str,
    error: &'a str,
    client: Option<IpAddr>,
    version: Version,
    latency_us: u64,
}

/// A field's value in an access line, by how tracing writes it.
enum Value<'a> {
    /// Recorded through `Display` or `Debug` of a token-like value (a method, a version):
    /// bare in text, a string in JSON. Never holds a character either escapes.
    Word(&'a str),
    /// A `str`: quoted and escaped as `Debug` escapes in text (see [`quoted`]), by serde_json
    /// in JSON.
    Text(&'a str),
    Number(u64),
    /// The client's address, or `-`: a string in both, which needs no escaping.
    Client(Option<IpAddr>),
}

impl Value<'_> {
    // Inlined, so that each field's kind is known where it is written: a call per field cost
    // 140 instructions a line more (callgrind).
    #[inline(always)]
    fn write(&self, format: LogFormat, out: &mut Vec<u8>, number: &mut itoa::Buffer) {
        match (self, format) {
            (Value::Word(word), LogFormat::Text) => out.extend_from_slice(word.as_bytes()),
            (Value::Text(text), LogFormat::Text) => quoted(out, text),
            (Value::Word(text) | Value::Text(text), LogFormat::Json) => {
                let _ = serde_json::to_writer(&mut *out, text);
            }
            (Value::Number(n), _) => out.extend_from_slice(number.format(*n).as_bytes()),
            (Value::Client(client), _) => {
                out.push(b'"');
                match client {
                    Some(IpAddr::V4(v4)) => {
                        let (text, len) = ipv4_text(*v4);
                        out.extend_from_slice(&text[..len]);
                    }
                    Some(v6) => {
                        let _ = write!(out, "{v6}");
                    }
                    None => out.push(b'-'),
                }
                out.push(b'"');
            }
        }
    }
}

thread_local! {
    /// The line being written, reused: no allocation per request.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl AccessLine<'_> {
    /// Writes the line to stderr in one `write`, as tracing's writer does (lines of several
    /// threads do not interleave).
    fn write(&self, format: LogFormat, now: SystemTime) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            self.format(format, now, line);
            // A log that cannot be written is not an error of the request (nor of the process:
            // `init` has tracing's writer drop such lines too).
            let _ = std::io::stderr().write_all(line);
            if line.capacity() > 4096 {
                *line = Vec::new();
            }
        });
    }

    /// The line as tracing's formatter writes it, `now` its timestamp: the same fields in
    /// both formats, each written as the format writes its kind of value.
    fn format(&self, format: LogFormat, now: SystemTime, out: &mut Vec<u8>) {
        let timestamp = humantime::format_rfc3339_micros(now);
        // Pieces copied, numbers through itoa: `write!` cost 2,900 of the line's 3,500
        // instructions.
        let mut number = itoa::Buffer::new();
        let version = version_text(self.version);
        let fields = [
            ("method", Value::Word(self.method.as_str())),
            ("path", Value::Text(self.path)),
            ("route", Value::Text(self.route)),
            ("status", Value::Number(self.status.into())),
            ("credential", Value::Text(self.credential)),
            ("error", Value::Text(self.error)),
            ("client", Value::Client(self.client)),
            ("version", Value::Word(&version)),
            ("latency_us", Value::Number(self.latency_us)),
        ];
        match format {
            LogFormat::Text => {
                let _ = write!(out, "{timestamp}");
                out.extend_from_slice(b"  INFO ucgate::access: request");
                for (key, value) in fields {
                    out.push(b' ');
                    out.extend_from_slice(key.as_bytes());
                    out.push(b'=');
                    value.write(format, out, &mut number);
                }
                out.push(b'\n');
            }
            LogFormat::Json => {
                // The keys in tracing's order (`flatten_event`: timestamp, level, the message
                // and fields, target).
                let _ = write!(
                    out,
                    "{{\"timestamp\":\"{timestamp}\",\"level\":\"INFO\",\"message\":\"request\""
                );
                for (key, value) in fields {
                    out.extend_from_slice(b",\"");
                    out.extend_from_slice(key.as_bytes());
                    out.extend_from_slice(b"\":");
                    value.write(format, out, &mut number);
                }
                out.extend_from_slice(b",\"target\":\"ucgate::access\"}\n");
            }
        }
    }

    /// The same line through tracing (on a terminal, or without [`init`]).
    fn trace(&self) {
        let client = self.client.map(|c| c.to_string());
        tracing::info!(
            target: "ucgate::access",
            method = %self.method,
            path = self.path,
            route = self.route,
            status = self.status,
            credential = self.credential,
            error = self.error,
            client = client.as_deref().unwrap_or("-"),
            version = ?self.version,
            latency_us = self.latency_us,
            "request"
        );
    }
}

/// A version as its `Debug` writes it (`HTTP/1.1`), without the formatting machinery.
fn version_text(version: Version) -> std::borrow::Cow<'static, str> {
    match version {
        Version::HTTP_09 => "HTTP/0.9".into(),
        Version::HTTP_10 => "HTTP/1.0".into(),
        Version::HTTP_11 => "HTTP/1.1".into(),
        Version::HTTP_2 => "HTTP/2.0".into(),
        Version::HTTP_3 => "HTTP/3.0".into(),
        other => format!("{other:?}").into(),
    }
}

/// `text` as tracing writes a string field: quoted, escaped as `Debug` escapes it. Printable
/// ASCII without a quote or backslash, nearly every value, is copied as it is.
fn quoted(out: &mut Vec<u8>, text: &str) {
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{text:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::fmt::MakeWriter;

    /// What a subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Captured {
        type Writer = Captured;

        fn make_writer(&self) -> Captured {
            self.clone()
        }
    }

    /// The line tracing's formatter writes, configured as [`init`] configures it.
    fn through_tracing(format: LogFormat, line: &AccessLine<'_>) -> String {
        let captured = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false);
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), || line.trace()),
            LogFormat::Json => tracing::subscriber::with_default(
                builder.json().flatten_event(true).finish(),
                || line.trace(),
            ),
        }
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    /// `line` with its timestamp (RFC 3339, microseconds) replaced by a fixed one.
    fn without_timestamp(line: &str) -> String {
        let start = line.find("20").expect("a timestamp");
        let end = start + "2026-12-01T04:05:06.123456Z".len();
        assert!(
            humantime::parse_rfc3339(&line[start..end]).is_ok(),
            "{line}"
        );
        format!("{}<time>{}", &line[..start], &line[end..])
    }

    /// The hand-written access line is, byte for byte but its time, what tracing's formatter
    /// writes for the same event, in both formats, whatever the fields hold.
    #[test]
    fn access_lines_are_tracing_s() {
        let custom = Method::from_bytes(b"PROPFIND").unwrap();
        let hostile = "/a\"b\\c\u{7f}é\n\t\u{0}'x";
        let lines = [
            AccessLine {
                method: &Method::GET,
                path: "/configmgt/api/1.0/users",
                route: "configmgt",
                status: 200,
                credential: "shared",
                error: "-",
                client: Some("192.0.2.7".parse().unwrap()),
                version: Version::HTTP_11,
                latency_us: 1234,
            },
            AccessLine {
                method: &custom,
                path: hostile,
                route: "-",
                status: 401,
                credential: "-",
                error: "TokenMissing",
                client: None,
                version: Version::HTTP_2,
                latency_us: 0,
            },
            AccessLine {
                method: &Method::DELETE,
                path: "/recording/records/1",
                route: "recording",
                status: 204,
                credential: "uc",
                error: "-",
                client: Some("0.0.0.0".parse().unwrap()),
                version: Version::HTTP_09,
                latency_us: 7,
            },
            AccessLine {
                method: &Method::PUT,
                path: "/",
                route: "-",
                status: 100,
                credential: "-",
                error: "-",
                client: Some("255.255.255.255".parse().unwrap()),
                version: Version::HTTP_3,
                latency_us: 10_000_000,
            },
            AccessLine {
                method: &Method::POST,
                path: "-",
                route: "r\"oute",
                status: 502,
                credential: "uc",
                error: "UpstreamUnavailable",
                client: Some("2001:db8::1".parse().unwrap()),
                version: Version::HTTP_10,
                latency_us: u64::MAX,
            },
        ];
        // More: escapes Debug and JSON write differently, a combining mark first, unprintable
        // Unicode, a path longer than the reused buffer, a method of every token character,
        // IPv4-mapped, loopback and link-local IPv6, every version.
        let long = format!("/{}", "a\\\"é".repeat(3000));
        let reviewer = [
            "\u{301}é\u{200b}\u{feff}\u{2028}\u{85}\u{9f}\u{1b}[31m\r\u{7}\u{8}\u{c}\u{b}",
            "/tokens/0123456789abcdef0123456789abcdef?token=x",
            "'\"'\\\\\u{10ffff}\u{e000}\u{fffd}😀",
            long.as_str(),
        ];
        let tchars = Method::from_bytes(b"X-MY_M.E~T!H#O$D%&*+^`|").unwrap();
        let reviewer: Vec<AccessLine<'_>> = reviewer
            .iter()
            .zip(["::ffff:192.0.2.1", "::1", "fe80::1:2:3:4", "::ffff:0:0"])
            .zip([
                Version::HTTP_09,
                Version::HTTP_10,
                Version::HTTP_11,
                Version::HTTP_2,
            ])
            .map(|((text, ip), version)| AccessLine {
                method: &tchars,
                path: text,
                route: text,
                status: 999,
                credential: text,
                error: text,
                client: Some(ip.parse().unwrap()),
                version,
                latency_us: 1,
            })
            .collect();
        let lines: Vec<&AccessLine<'_>> = lines.iter().chain(&reviewer).collect();
        for line in lines {
            for format in [LogFormat::Text, LogFormat::Json] {
                let mut ours = Vec::new();
                line.format(format, SystemTime::now(), &mut ours);
                let ours = String::from_utf8(ours).unwrap();
                assert_eq!(
                    without_timestamp(&ours),
                    without_timestamp(&through_tracing(format, line)),
                    "{format:?}"
                );
            }
        }
    }
}
