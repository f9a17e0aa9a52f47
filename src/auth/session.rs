//! A UC token's session name (`sid`), kept in the validation cache beside each token.
//!
//! ucgate names sessions with 128 random bits in 32 lowercase hex digits (and the `jti` of
//! tokens older than sessions, which stands for their session, is made the same way); a token
//! of the site's xuc gets `xuc:` and 32 such digits. Kept as text, that name was a 32-byte
//! allocation of every cached token; kept as its 16 bytes it is none, and its text is written
//! again where it is needed (a renewal signs it, a revocation hashes it). Any other name, which
//! ucgate never signs, is kept as text.

use std::fmt;

use sha2::{Digest, Sha256};

/// A session's name: its text, stored compactly. 24 bytes, no allocation for ucgate's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session(Name);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// 32 lowercase hex digits.
    Hex([u8; 16]),
    /// `xuc:` and 32 lowercase hex digits.
    Xuc([u8; 16]),
    /// Anything else.
    Text(Box<str>),
}

/// The text of a [`Name::Xuc`] name starts with this.
const XUC_PREFIX: &str = "xuc:";

impl Session {
    /// A session named by 128 bits (ucgate's sessions: 32 hex digits).
    pub fn random(bits: u128) -> Self {
        Self(Name::Hex(bits.to_be_bytes()))
    }

    /// The session of the xuc token whose cache key is `key`: `xuc:` and its 32 hex digits.
    pub fn xuc(key: u128) -> Self {
        Self(Name::Xuc(key.to_be_bytes()))
    }

    /// The key its revocation is kept under: the first half of the SHA-256 of its text, as in
    /// the revocations file and in Redis (so it must not change with the storage).
    pub fn revocation_key(&self) -> u128 {
        let mut buffer = [0u8; XUC_PREFIX.len() + 32];
        let digest = Sha256::digest(self.text(&mut buffer));
        u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"))
    }

    /// Its text, written into `buffer` unless kept as text.
    fn text<'a>(&'a self, buffer: &'a mut [u8; XUC_PREFIX.len() + 32]) -> &'a [u8] {
        match &self.0 {
            Name::Hex(bits) => hex_into(bits, buffer),
            Name::Xuc(bits) => {
                buffer[..XUC_PREFIX.len()].copy_from_slice(XUC_PREFIX.as_bytes());
                hex_into(bits, &mut buffer[XUC_PREFIX.len()..]);
                &buffer[..]
            }
            Name::Text(text) => text.as_bytes(),
        }
    }
}

/// Writes `bits` as 32 lowercase hex digits at the start of `out`; returns them.
fn hex_into<'a>(bits: &[u8; 16], out: &'a mut [u8]) -> &'a [u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in bits.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    &out[..32]
}

/// 32 lowercase hex digits as their 16 bytes; `None` for any other text (uppercase digits
/// included: their text would not be written back the same).
fn hex_bits(text: &str) -> Option<[u8; 16]> {
    let digits = text.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut bits = [0u8; 16];
    for (byte, pair) in bits.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (value(pair[0])? << 4) | value(pair[1])?;
    }
    Some(bits)
}

impl From<&str> for Session {
    fn from(text: &str) -> Self {
        if let Some(bits) = hex_bits(text) {
            return Self(Name::Hex(bits));
        }
        match text.strip_prefix(XUC_PREFIX).and_then(hex_bits) {
            Some(bits) => Self(Name::Xuc(bits)),
            None => Self(Name::Text(text.into())),
        }
    }
}

impl fmt::Display for Session {
    /// The name's text, padded as a `str` would be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = [0u8; XUC_PREFIX.len() + 32];
        // UTF-8: hex digits and the prefix, or a `str`.
        f.pad(std::str::from_utf8(self.text(&mut buffer)).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of_text(text: &str) -> u128 {
        let digest = Sha256::digest(text.as_bytes());
        u128::from_le_bytes(digest[..16].try_into().unwrap())
    }

    /// Every name is written back as it was read, and revoked under the key of its text
    /// (the revocations file and the other instances know sessions by that key).
    #[test]
    fn names_keep_their_text_and_key() {
        let names = [
            "0123456789abcdef0123456789abcdef",
            "xuc:00000000000000000000000000000001",
            "the-jti",
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcde",
            "xuc:0123456789abcdef0123456789abcdef0",
            "XUC:0123456789abcdef0123456789abcdef",
            "été-0123456789abcdef0123456789ab",
        ];
        for name in names {
            let session = Session::from(name);
            assert_eq!(session.to_string(), name);
            assert_eq!(session.revocation_key(), key_of_text(name), "{name}");
        }
        assert!(matches!(Session::from(names[0]).0, Name::Hex(_)));
        assert!(matches!(Session::from(names[1]).0, Name::Xuc(_)));
        for text in &names[2..] {
            assert!(matches!(Session::from(*text).0, Name::Text(_)), "{text}");
        }
    }

    #[test]
    fn made_names() {
        let bits = 0x0123_4567_89ab_cdef_0011_2233_4455_6677_u128;
        let ours = Session::random(bits);
        assert_eq!(ours.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(ours, Session::from("0123456789abcdef0011223344556677"));
        assert_eq!(
            Session::xuc(1).to_string(),
            "xuc:00000000000000000000000000000001"
        );
        assert_eq!(std::mem::size_of::<Session>(), 24);
        assert_eq!(
            format!("{:>6}|{:<4}|", Session::from("ab"), Session::from("c")),
            "    ab|c   |"
        );
        assert_eq!(
            format!("{:>34}", Session::random(1)),
            format!("{:>34}", format!("{:032x}", 1))
        );
    }
}
