//! Hop-by-hop headers (RFC 9110 §7.6.1): those that describe one connection, not the message,
//! are removed at every hop: `Connection`, the fields it names, and the fixed list of
//! connection-specific fields (with the legacy `Keep-Alive` and `Proxy-Connection`).

use http::header::{self, HeaderMap, HeaderName};
use smallvec::SmallVec;

/// Connection-specific fields, removed whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The field names a message's `Connection` headers list (RFC 9110 §7.6.1), as sent (any case),
/// as bytes: a value with a byte outside visible ASCII (obs-text, which hyper lets through) still
/// names the fields around it, instead of hiding them all.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes from `headers` the hop-by-hop fields and those its `Connection` names, and whatever
/// else `also` names, in one pass over the message's names: a forwarder that strips several
/// lists pays for one. `Upgrade` stays when `keep_upgrade` (a protocol switch). Framing fields
/// (`Content-Length`) and `Host` stay whatever `Connection` says: hyper owns framing, and the
/// forwarder sets Host. But a message with `Transfer-Encoding` loses its `Content-Length` too:
/// the coding framed the body (hyper read it so), and a length sent on would cut it short
/// (RFC 9112 §6.3: a proxy removes it).
pub fn strip(headers: &mut HeaderMap, keep_upgrade: bool, also: impl Fn(&HeaderName) -> bool) {
    // Inline up to four: a message names one or two fields in Connection (`keep-alive`) and
    // has as few to remove, and these vectors were two allocations of every response.
    let doomed: SmallVec<[HeaderName; 4]> = {
        let named: SmallVec<[&[u8]; 4]> = connection_tokens(headers).collect();
        headers
            .keys()
            .filter(|k| {
                if *k == header::UPGRADE {
                    // `Connection: upgrade` names Upgrade: on a protocol switch it must survive.
                    return !keep_upgrade;
                }
                HOP_BY_HOP.contains(k)
                    || also(k)
                    || (*k != header::CONTENT_LENGTH
                        && *k != header::HOST
                        && named
                            .iter()
                            .any(|t| k.as_str().as_bytes().eq_ignore_ascii_case(t)))
            })
            .cloned()
            .collect()
    };
    let coded = doomed.contains(&header::TRANSFER_ENCODING);
    for name in doomed {
        headers.remove(name);
    }
    if coded {
        headers.remove(header::CONTENT_LENGTH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        names
    }

    fn message() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, X-Secret, x-auth-user, Content-Length, Host, upgrade"
                .parse()
                .unwrap(),
        );
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        h.insert(header::HOST, "example.com".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.insert("x-also", "1".parse().unwrap());
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = message();
        strip(&mut h, false, |_| false);
        assert_eq!(names(&h), ["content-length", "host", "x-also", "x-kept"]);
    }

    #[test]
    fn keeps_upgrade_on_a_switch_and_removes_what_also_names() {
        let mut h = message();
        strip(&mut h, true, |k| k.as_str() == "x-also");
        assert_eq!(names(&h), ["content-length", "host", "upgrade", "x-kept"]);
    }

    /// `Transfer-Encoding` beside `Content-Length`: the length goes with the coding, whatever
    /// `Connection` says; without a coding it stays.
    #[test]
    fn a_length_beside_a_transfer_coding_goes() {
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h, false, |_| false);
        assert_eq!(names(&h), ["x-kept"]);
        let mut h = message();
        h.remove(header::CONNECTION);
        strip(&mut h, false, |_| false);
        assert!(h.contains_key(header::CONTENT_LENGTH));
    }

    /// Every connection-specific field goes, in any case the client wrote it, named in
    /// `Connection` or not; `Upgrade` too, but on a protocol switch.
    #[test]
    fn every_connection_specific_field_goes() {
        let listed = [
            "Connection",
            "Keep-Alive",
            "Proxy-Connection",
            "Proxy-Authenticate",
            "Proxy-Authorization",
            "TE",
            "Trailer",
            "Transfer-Encoding",
        ];
        for keep_upgrade in [false, true] {
            let mut h = HeaderMap::new();
            for name in listed.iter().chain(&["Upgrade", "X-Kept"]) {
                h.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    "1".parse().unwrap(),
                );
            }
            strip(&mut h, keep_upgrade, |_| false);
            let kept: &[&str] = if keep_upgrade {
                &["upgrade", "x-kept"]
            } else {
                &["x-kept"]
            };
            assert_eq!(names(&h), kept);
        }
    }

    /// A `Connection` value with a byte outside visible ASCII still names its fields.
    #[test]
    fn a_value_with_obs_text_still_names_its_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"X-Hop-Secret, \xe9").unwrap(),
        );
        h.insert("x-hop-secret", "s3cret".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h, false, |_| false);
        assert_eq!(names(&h), ["x-kept"]);
    }

    /// More named fields than the inline capacity: the vectors spill, nothing is missed.
    #[test]
    fn many_named_fields() {
        let mut h = HeaderMap::new();
        let listed: Vec<String> = (0..20).map(|i| format!("x-hop-{i}")).collect();
        h.insert(header::CONNECTION, listed.join(", ").parse().unwrap());
        for name in &listed {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h, false, |_| false);
        assert_eq!(names(&h), ["x-kept"]);
    }
}
