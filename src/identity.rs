//! What the upstream is told about who is calling and from where, in one place: the identity
//! headers (`X-Auth-*`) and the forwarding metadata (`X-Forwarded-*` and its relatives), each
//! list written once; the removal of whatever a client sent under those names; the values
//! ucgate sets; and the client's address, derived once per request.
//!
//! An upstream trusts these headers because only ucgate can set them, so every client-sent copy
//! goes first: the names themselves and their `_`/`.` aliases, which some frameworks (CGI-style
//! environments, Play's header normalisation) read as the same header. The client's hop-by-hop
//! headers go in the same pass: a header it names in `Connection` must not remove what ucgate
//! sets.

use std::net::{IpAddr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue, Version, header, request};
use ipnet::IpNet;

use crate::config::ServerConfig;
use crate::error::GateError;
use crate::hop_by_hop;

/// A token: the shared token (client to ucgate, ucgate to upstream) or a UC token (client to
/// ucgate).
pub const X_AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");
/// The login a UC token names.
pub const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
/// How that person authenticated: `password`, `kerberos`, `cas` or `oidc`.
pub const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

// Every header by which a proxy tells its upstream about the original request: the client's
// address, the scheme, host, port or server it reached, the path prefix it stripped, the
// original or rewritten URL and method, the client certificate. From a client that is not a
// trusted proxy each one is a claim nobody checked: all are removed, and ucgate sets
// `X-Forwarded-For`, `-Proto`, `-Host` and `-Port`, whose values it knows.
forwarding_headers!(
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-method",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-forwarded-ssl",
    "x-forwarded-client-cert",
    "x-forwarded-tls-client-cert",
    "x-original-url",
    "x-original-uri",
    "x-original-host",
    "x-original-method",
    "x-original-forwarded-for",
    "x-rewrite-url",
    "x-envoy-original-path",
    "x-envoy-external-address",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "client-ip",
    "x-proxyuser-ip",
    "x-host",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
);

/// [`is_forwarding`] (and, for the tests, `FORWARDING`) from one list.
macro_rules! forwarding_headers {
    ($($name:literal,)*) => {
        /// The forwarding headers of the list above.
        #[cfg(test)]
        const FORWARDING: [&str; 35] = [$($name),*];

        /// Whether `name` (lower case, as a `HeaderName` is) is one of the list above: a
        /// `match` on the text, which the compiler turns into a switch on the length, where a
        /// look-up per listed name would hash 35 times per request.
        fn is_forwarding(name: &str) -> bool {
            matches!(name, $($name)|*)
        }
    };
}
use forwarding_headers;

/// Whose forwarding headers are believed (`server.trust_forwarded_headers`,
/// `server.trusted_proxies`), built once per configuration.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// No peer: ucgate faces clients directly.
    forwarded: bool,
    /// With `forwarded`: the peers believed; empty = any (one trusted hop).
    proxies: Vec<IpNet>,
}

impl Trust {
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            forwarded: server.trust_forwarded_headers,
            proxies: server.trusted_proxies.clone(),
        }
    }

    fn believes(&self, peer: IpAddr) -> bool {
        self.forwarded && (self.proxies.is_empty() || self.is_listed(peer))
    }

    fn is_listed(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.proxies.iter().any(|net| net.contains(&addr))
    }

    /// Where a request comes from. The client's address is derived here once and used for
    /// lock-outs, logs and `X-Forwarded-For` alike: the TCP peer, or, when the peer is a
    /// believed proxy, the right-most `X-Forwarded-For` entry that is not a listed proxy (RFC
    /// 7239 §5.2's rule for `for=`; entries further left were written by whoever the client
    /// was and prove nothing). An entry that is not an address ends the walk at the hop that
    /// wrote it.
    pub fn origin(&self, peer: IpAddr, headers: &HeaderMap) -> Origin {
        let peer = canonical(peer);
        if !self.believes(peer) {
            return Origin {
                client: peer,
                peer,
                trusted: false,
            };
        }
        let mut client = peer;
        let entries = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for entry in entries.iter().rev() {
            let Ok(addr) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            client = canonical(addr);
            if self.proxies.is_empty() || !self.is_listed(client) {
                break;
            }
        }
        Origin {
            client,
            peer,
            trusted: true,
        }
    }
}

/// Checks the host a request names, once, before anything reads it (routing, authentication,
/// `X-Forwarded-Host`). RFC 9112 §3.2: an HTTP/1.1 request without `Host`, with several `Host`
/// lines, or with one that is not a host and port is a 400; HTTP/1.0 may go without. An
/// absolute-form target's authority (and h2's `:authority`, which arrives there too) must be a
/// host and port as well, and userinfo in it is an error (RFC 9110 §4.2.4): it would otherwise
/// reach the upstream as `X-Forwarded-Host`. Over h2, a `host` header must name the same host as
/// `:authority` (RFC 9113 §8.3.1).
pub fn check_host(parts: &request::Parts) -> Result<(), GateError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GateError::InvalidRequest(
            "the request has several Host headers",
        ));
    }
    if let Some(authority) = parts.uri.authority() {
        let authority = authority.as_str().as_bytes();
        if authority.contains(&b'@') {
            return Err(GateError::InvalidRequest(
                "the request target must not carry userinfo",
            ));
        }
        if !is_host_and_port(authority) {
            return Err(GateError::InvalidRequest(
                "the request target's authority is not a valid host and port",
            ));
        }
        // RFC 9113 §8.3.1: an h2 request whose `host` names another host than its
        // `:authority` is malformed; ucgate reads the authority, an upstream or a log may read
        // Host.
        if parts.version == Version::HTTP_2
            && host.is_some_and(|host| !authority.eq_ignore_ascii_case(host.as_bytes()))
        {
            return Err(GateError::InvalidRequest(
                "the Host header and :authority name different hosts",
            ));
        }
    }
    match host {
        Some(host) if !is_host_and_port(host.as_bytes()) => Err(GateError::InvalidRequest(
            "the Host header is not a valid host and port",
        )),
        None if parts.version == Version::HTTP_11 => Err(GateError::InvalidRequest(
            "an HTTP/1.1 request needs a Host header",
        )),
        _ => Ok(()),
    }
}

/// Whether `authority` is `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a
/// non-empty registered name (unreserved characters, percent-escapes, sub-delimiters) or IPv4
/// address, or an IPv6 literal in brackets; then digits naming a port that exists. A byte scan:
/// it runs on every request.
fn is_host_and_port(authority: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(literal) = authority.strip_prefix(b"[") {
        let Some(close) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let v6 = std::str::from_utf8(&literal[..close])
            .ok()
            .and_then(|text| text.parse::<Ipv6Addr>().ok());
        (v6.is_some(), &literal[close + 1..])
    } else {
        let end = authority
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(authority.len());
        let name = &authority[..end];
        (!name.is_empty() && is_reg_name(name), &authority[end..])
    };
    let port_ok = match rest {
        [] => true,
        // `*DIGIT`: empty is allowed (the scheme's default), a number past 65535 is no port.
        [b':', digits @ ..] => digits
            .iter()
            .try_fold(0u32, |n, &d| {
                let n = n * 10 + u32::from(d.wrapping_sub(b'0'));
                (d.is_ascii_digit() && n <= u32::from(u16::MAX)).then_some(n)
            })
            .is_some(),
        _ => false,
    };
    host_ok && port_ok
}

/// RFC 3986's `reg-name` (which covers IPv4 addresses): unreserved characters, sub-delimiters
/// and percent-escapes. Bytes are looked up in [`REG_NAME_BYTES`]: a `match` of ranges cost 17
/// instructions a byte, 250 of every request (callgrind).
fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        let byte = name[i];
        if !REG_NAME_BYTES[usize::from(byte)] {
            let escape = byte == b'%'
                && name
                    .get(i + 1..i + 3)
                    .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
            if !escape {
                return false;
            }
            i += 2;
        }
        i += 1;
    }
    true
}

/// The bytes a `reg-name` holds as they are (RFC 3986 §3.2.2): unreserved characters (§2.3)
/// and sub-delimiters (§2.2).
static REG_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = matches!(
            byte as u8,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
                | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        );
        byte += 1;
    }
    table
};

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 clients) as IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client, as far as ucgate can tell.
    pub client: IpAddr,
    /// The TCP peer.
    pub peer: IpAddr,
    /// The peer is a believed proxy: its forwarding headers are kept and extended.
    pub trusted: bool,
}

/// What ucgate asserts upstream on one request.
#[derive(Debug, Clone, Copy)]
pub struct Asserted<'a> {
    /// `X-Auth-Token`: the shared token, when the route authenticates ucgate to its upstream.
    pub token: Option<&'a HeaderValue>,
    /// `X-Auth-User` and `X-Auth-Method`: the login and method of a UC token.
    pub user: Option<(&'a str, &'static str)>,
    pub origin: Origin,
    /// Whether the client reached ucgate over TLS.
    pub tls: bool,
    /// The port of the listener the client reached.
    pub port: ListenerPort,
    /// The client's `Authorization` carried its ucgate credential (`Bearer`): not forwarded.
    pub drop_authorization: bool,
}

impl Asserted<'_> {
    /// Removes the client's hop-by-hop headers, every identity header it sent (and forwarding
    /// header, unless the peer is a believed proxy), in one pass, then sets the asserted ones.
    /// `original_host` is the authority the client asked for. Fails with `TokenInvalid` for a
    /// login that cannot be a header value (no valid token carries one).
    pub fn apply(
        self,
        headers: &mut HeaderMap,
        original_host: Option<HeaderValue>,
    ) -> Result<(), GateError> {
        hop_by_hop::strip(headers, false, |name| self.strips(name));
        if self.drop_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        if let Some(token) = self.token {
            headers.insert(X_AUTH_TOKEN, token.clone());
        }
        if let Some((login, method)) = self.user {
            let login = HeaderValue::from_str(login).map_err(|_| GateError::TokenInvalid)?;
            headers.insert(X_AUTH_USER, login);
            headers.insert(X_AUTH_METHOD, HeaderValue::from_static(method));
        }
        self.set_forwarded(headers, original_host);
        Ok(())
    }

    /// Whether the client's header `name` goes before ucgate sets its own: the identity headers
    /// and, from a peer that is not a believed proxy, the forwarding headers, with their aliases
    /// (`X_Auth_User`, `x.forwarded.for`). Not the exact names [`Asserted::apply`] sets anyway:
    /// an insert replaces every value of its name, and a removal before it hashed the name once
    /// more (the client's `X-Auth-Token`, on every request).
    fn strips(&self, name: &HeaderName) -> bool {
        let text = name.as_str();
        let listed =
            |text: &str| is_identity(text) || (!self.origin.trusted && is_forwarding(text));
        // Names are checked for `_` and `.` by bytes (a `contains` of a char array decoded each
        // name as UTF-8), and only an alias is copied.
        if text.bytes().any(|b| b == b'_' || b == b'.') {
            return listed(&text.replace(['_', '.'], "-"));
        }
        listed(text) && !self.replaces(name)
    }

    /// Whether [`Asserted::apply`] sets `name` on this request whatever the client sent.
    fn replaces(&self, name: &HeaderName) -> bool {
        (self.token.is_some() && *name == X_AUTH_TOKEN)
            || (self.user.is_some() && (*name == X_AUTH_USER || *name == X_AUTH_METHOD))
            || (!self.origin.trusted
                && (*name == X_FORWARDED_FOR
                    || *name == X_FORWARDED_PROTO
                    || *name == X_FORWARDED_PORT))
    }

    fn set_forwarded(&self, headers: &mut HeaderMap, original_host: Option<HeaderValue>) {
        let peer = address_value(self.origin.peer);
        if self.origin.trusted {
            // Behind a believed proxy: its view of the request stands; ucgate adds itself as
            // a hop and fills in what is missing.
            // Several header lines are one list (RFC 9110 §5.3), as the client address was
            // read from them.
            let mut chain: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            chain.push(peer.to_str().expect("an IP address is visible ASCII"));
            let chain = chain.join(", ");
            if let Ok(v) = HeaderValue::from_str(&chain) {
                headers.insert(X_FORWARDED_FOR, v);
            }
            // The port ucgate's listener has is the one the proxy reached, not the client: it
            // is filled in only when the proxy described nothing of the original request (no
            // scheme, no host), as ucgate's own view then stands for all three. Otherwise the
            // upstream derives it from the proxy's scheme or host, as behind that proxy alone.
            let described =
                headers.contains_key(&X_FORWARDED_PROTO) || headers.contains_key(&X_FORWARDED_HOST);
            if !headers.contains_key(&X_FORWARDED_PROTO) {
                headers.insert(X_FORWARDED_PROTO, proto(self.tls));
            }
            if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), original_host) {
                headers.insert(X_FORWARDED_HOST, host);
            }
            if !described && !headers.contains_key(&X_FORWARDED_PORT) {
                headers.insert(X_FORWARDED_PORT, self.port.header());
            }
            return;
        }
        headers.insert(X_FORWARDED_FOR, peer);
        headers.insert(X_FORWARDED_PROTO, proto(self.tls));
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        headers.insert(X_FORWARDED_PORT, self.port.header());
    }
}

/// The port of the listener a connection came in on, as `X-Forwarded-Port` says it (nginx's
/// `$server_port`): the port the client reached, which it cannot choose, not the one its `Host`
/// claims. Made once per listener, its text kept for the life of the process (as the listener
/// is): each request then sets the header without formatting or allocating, and `ConnInfo`
/// stays `Copy`.
#[derive(Debug, Clone, Copy)]
pub struct ListenerPort(&'static str);

impl ListenerPort {
    pub fn new(port: u16) -> Self {
        Self(Box::leak(port.to_string().into_boxed_str()))
    }

    /// The header value: the same static text, no copy.
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.0)
    }
}

/// `ip` as a header value. IPv4 written by [`ipv4_text`]; IPv6 (rarer, and longer to write)
/// keeps `Display`.
fn address_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).expect("an IP address is visible ASCII");
    };
    let (text, len) = ipv4_text(v4);
    HeaderValue::from_bytes(&text[..len]).expect("digits and dots")
}

/// `v4` in dotted decimal: the text in the first `len` bytes, and `len`. `Ipv4Addr`'s
/// `Display` goes through the formatter's padding machinery, about 1,300 instructions of
/// every request where a header or the access log writes the client (callgrind); these few
/// lines cost a tenth of that.
pub fn ipv4_text(v4: std::net::Ipv4Addr) -> ([u8; 15], usize) {
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    (text, len)
}

fn proto(tls: bool) -> HeaderValue {
    HeaderValue::from_static(if tls { "https" } else { "http" })
}

/// Whether `name` is one of the identity headers ucgate sets: `X-Auth-Token`, `-User`,
/// `-Method`.
fn is_identity(name: &str) -> bool {
    matches!(name, "x-auth-token" | "x-auth-user" | "x-auth-method")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in names {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

    fn direct() -> Origin {
        Trust::default().origin(PEER, &HeaderMap::new())
    }

    fn asserted<'a>(
        token: Option<&'a HeaderValue>,
        user: Option<(&'a str, &'static str)>,
    ) -> Asserted<'a> {
        Asserted {
            token,
            user,
            origin: direct(),
            tls: false,
            port: ListenerPort::new(8080),
            drop_authorization: false,
        }
    }

    #[test]
    fn hosts_are_a_host_and_a_port() {
        for good in [
            "example.com",
            "example.com:8443",
            "127.0.0.1:47235",
            "[::1]",
            "[::1]:8080",
            "host:",
            "host:0081",
            "host:000080",
            "host:65535",
            "xn--bcher-kva.example",
            "a%41b",
            "a_b~c!$&'()*+,;=",
        ] {
            assert!(is_host_and_port(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "evil.com/path?x",
            "evil.com:99999",
            "evil.com:65536",
            "evil.com:abc",
            "evil.com:+80",
            "user:pass@evil",
            "u@host:81",
            "a:b:80",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[a:81]",
            "a]:81",
            "x{y}:9",
            "h%4:81",
            "h%zz",
            "h%",
            "\u{e9}.example",
            "a\u{0}b",
            "a\u{7f}b",
            "evil.com#x",
            "evil.com\\x",
        ] {
            assert!(!is_host_and_port(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "1.20.3.40",
            "127.0.0.1",
            "192.168.10.255",
            "::1",
            "2001:db8::8:800:200c:417a",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(address_value(ip), ip.to_string().as_str(), "{text}");
        }
    }

    #[test]
    fn strips_identity_headers_and_aliases() {
        let mut h = headers(&[
            "x-auth-token",
            "X_Auth_User",
            "x.auth.method",
            "x-auth-tokens",
            "x_other",
        ]);
        asserted(None, None).apply(&mut h, None).unwrap();
        let kept: Vec<String> = names(&h)
            .into_iter()
            .filter(|n| !n.starts_with("x-forwarded-"))
            .collect();
        assert_eq!(kept, ["x-auth-tokens", "x_other"]);
    }

    /// The names ucgate sets on a request are replaced instead of removed first: every value
    /// the client sent under them goes, and their aliases too.
    #[test]
    fn what_ucgate_sets_replaces_every_value_the_client_sent() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-auth-token", "forged-1"),
            ("x-auth-token", "forged-2"),
            ("x_auth_token", "forged-3"),
            ("x-auth-user", "mallory"),
            ("x-auth-user", "eve"),
            ("x-auth-method", "cas"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "203.0.113.10"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-port", "2"),
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.append(name, value.parse().unwrap());
        }
        let shared = HeaderValue::from_static("shared");
        asserted(Some(&shared), Some(("alice", "password")))
            .apply(&mut h, None)
            .unwrap();
        let all = |name: &str| -> Vec<&str> {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-auth-token"), ["shared"]);
        assert_eq!(all("x_auth_token"), Vec::<&str>::new());
        assert_eq!(all("x-auth-user"), ["alice"]);
        assert_eq!(all("x-auth-method"), ["password"]);
        assert_eq!(all("x-forwarded-for"), ["10.0.0.7"]);
        assert_eq!(all("x-forwarded-proto"), ["http"]);
        assert_eq!(all("x-forwarded-port"), ["8080"]);
    }

    /// A header the client names in `Connection` goes with the identity headers, and cannot
    /// take away one that ucgate sets.
    #[test]
    fn hop_by_hop_headers_go_in_the_same_pass() {
        let mut h = headers(&["x-secret", "x-auth-user", "x-kept"]);
        h.insert(
            header::CONNECTION,
            "x-secret, x-auth-token, x-forwarded-for".parse().unwrap(),
        );
        with_the_shared_token(&mut h);
        assert_eq!(
            names(&h),
            [&WITH_THE_SHARED_TOKEN[..], &["x-kept"]].concat()
        );
    }

    /// What ucgate sets for the shared token, from a client it faces directly, without a host.
    const WITH_THE_SHARED_TOKEN: [&str; 4] = [
        "x-auth-token",
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-proto",
    ];

    fn with_the_shared_token(h: &mut HeaderMap) {
        let shared = HeaderValue::from_static("shared");
        asserted(Some(&shared), None).apply(h, None).unwrap();
        assert_eq!(h[X_AUTH_TOKEN], "shared");
    }

    #[test]
    fn sets_only_what_is_asserted() {
        let mut h = headers(&["x-auth-user", "x_auth_method"]);
        with_the_shared_token(&mut h);
        assert_eq!(names(&h), WITH_THE_SHARED_TOKEN);

        let mut h = headers(&["x-auth-token"]);
        asserted(None, Some(("alice", "kerberos")))
            .apply(&mut h, None)
            .unwrap();
        assert_eq!(h[X_AUTH_USER], "alice");
        assert_eq!(h[X_AUTH_METHOD], "kerberos");
        assert!(h.get(X_AUTH_TOKEN).is_none());

        let bad = asserted(None, Some(("al\nice", "password")));
        assert!(matches!(
            bad.apply(&mut HeaderMap::new(), None),
            Err(GateError::TokenInvalid)
        ));
    }

    #[test]
    fn every_forwarding_header_from_a_client_is_replaced() {
        let mut claimed: Vec<String> = FORWARDING.iter().map(|n| n.to_string()).collect();
        claimed.extend(["X_Forwarded_Prefix".into(), "x.original.url".into()]);
        let claimed: Vec<&str> = claimed.iter().map(String::as_str).collect();
        let mut h = headers(&claimed);
        h.insert("x-kept", "1".parse().unwrap());
        let host = HeaderValue::from_static("gate.example:8443");
        asserted(None, None).apply(&mut h, Some(host)).unwrap();
        assert_eq!(
            names(&h),
            [
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-forwarded-proto",
                "x-kept"
            ]
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(h[X_FORWARDED_HOST], "gate.example:8443");
        // The port the client reached, not the one its Host names.
        assert_eq!(h[X_FORWARDED_PORT], "8080");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, value.parse().unwrap());
        h
    }

    fn trust(proxies: &[&str]) -> Trust {
        Trust {
            forwarded: true,
            proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_client_is_the_peer_unless_a_believed_proxy_says_otherwise() {
        let spoofed = xff("203.0.113.9");
        assert_eq!(Trust::default().origin(PEER, &spoofed).client, PEER);
        // One trusted hop, whoever it is: the right-most entry.
        let one_hop = trust(&[]);
        let origin = one_hop.origin(PEER, &xff("198.51.100.1, 203.0.113.9"));
        assert_eq!(origin.client, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert!(origin.trusted);
        assert_eq!(one_hop.origin(PEER, &HeaderMap::new()).client, PEER);
        // Listed proxies: the right-most entry that is not one of them.
        let listed = trust(&["10.0.0.0/8", "192.0.2.1/32"]);
        let chain = xff("198.51.100.1, 203.0.113.9, 192.0.2.1, 10.1.1.1");
        assert_eq!(
            listed.origin(PEER, &chain).client,
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A peer that is not listed is a client like any other.
        let stranger: IpAddr = "198.51.100.200".parse().unwrap();
        let origin = listed.origin(stranger, &chain);
        assert_eq!((origin.client, origin.trusted), (stranger, false));
        // Garbage stops the walk at the hop that wrote it.
        assert_eq!(listed.origin(PEER, &xff("203.0.113.9, junk")).client, PEER);
        // IPv4-mapped peers are IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(listed.origin(mapped, &HeaderMap::new()).client, PEER);
    }

    #[test]
    fn a_believed_proxy_s_headers_are_extended() {
        let origin = trust(&[]).origin(PEER, &xff("203.0.113.9"));
        let mut h = xff("203.0.113.9");
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert("x-forwarded-prefix", "/ucgate".parse().unwrap());
        Asserted {
            token: None,
            user: None,
            origin,
            tls: false,
            port: ListenerPort::new(8080),
            drop_authorization: false,
        }
        .apply(&mut h, Some(HeaderValue::from_static("gate.example")))
        .unwrap();
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.9, 10.0.0.7");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "gate.example");
        // The proxy gave the scheme: the port ucgate's listener has is the proxy's view, not
        // the client's, and stays out.
        assert!(!h.contains_key(X_FORWARDED_PORT));
        assert_eq!(h["x-forwarded-prefix"], "/ucgate");
        // Two header lines are one list: none of it is lost.
        let mut h = xff("198.51.100.1");
        h.append(X_FORWARDED_FOR, "203.0.113.9".parse().unwrap());
        Asserted {
            token: None,
            user: None,
            origin: trust(&[]).origin(PEER, &h),
            tls: false,
            port: ListenerPort::new(8080),
            drop_authorization: false,
        }
        .apply(&mut h, None)
        .unwrap();
        let chain: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(chain, ["198.51.100.1, 203.0.113.9, 10.0.0.7"]);
    }
}
