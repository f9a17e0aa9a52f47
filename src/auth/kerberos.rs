//! Kerberos single sign-on: SPNEGO at `GET /xuc/api/2.0/auth/sso` (RFC 4559), one round trip.
//!
//! The client's `Authorization: Negotiate <token>` is accepted with GSSAPI against the keytab of
//! `[kerberos]`, the client principal is mapped to a login, and the answer is the login
//! endpoint's. Built without the `kerberos` cargo feature, a `[kerberos]` section refuses to
//! start and the endpoint answers 404.
// Without the feature, the header parsing and principal mapping stay compiled (and unit-tested)
// but nothing calls them.
#![cfg_attr(not(feature = "kerberos"), allow(dead_code))]

#[cfg(feature = "kerberos")]
mod gss;
#[cfg(feature = "kerberos")]
mod keytab;

use std::collections::BTreeMap;
#[cfg(feature = "kerberos")]
use std::path::Path;

use http::{HeaderMap, Request, header};
use hyper::body::Incoming;

use super::exchange::{Attempt, Exchange, Proof};
use super::token::Method;
use crate::config::KerberosConfig;
use crate::error::GateError;

/// Client principal → login.
#[derive(Debug, Clone)]
struct PrincipalMap {
    realms: Vec<String>,
    map: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Unmapped {
    /// The principal's realm is not accepted.
    Realm,
    /// A service or instance principal (`host/x`, `alice/admin`): not a person.
    NotAUser,
}

impl PrincipalMap {
    fn login_for(&self, principal: &str) -> Result<String, Unmapped> {
        if let Some(login) = self.map.get(principal) {
            return Ok(login.clone());
        }
        let (name, realm) = principal.rsplit_once('@').ok_or(Unmapped::Realm)?;
        if !self.realms.iter().any(|r| r == realm) {
            return Err(Unmapped::Realm);
        }
        if name.is_empty() || name.contains('/') || name.contains('\\') {
            return Err(Unmapped::NotAUser);
        }
        Ok(name.to_owned())
    }
}

/// What the endpoint needs at run time, loaded from the config.
#[derive(Debug)]
pub struct Kerberos {
    #[cfg(feature = "kerberos")]
    acceptor: gss::Acceptor,
    /// The keys the acceptor reads: MIT reads a `FILE:` keytab again at every acceptance, so
    /// the acceptor gets a private copy of the keytab as validated. Replacing the operator's
    /// file then changes nothing until a reload checks the new one, and a broken replacement is
    /// refused without breaking logins. Removed when this configuration is dropped.
    #[cfg(feature = "kerberos")]
    _keys: tempfile::NamedTempFile,
    #[cfg(feature = "kerberos")]
    names: PrincipalMap,
    /// Built without the feature, no value of this type exists.
    #[cfg(not(feature = "kerberos"))]
    never: std::convert::Infallible,
}

impl Kerberos {
    /// Built without the `kerberos` feature: always an error saying so.
    #[cfg(not(feature = "kerberos"))]
    pub fn load(_config: &KerberosConfig) -> Result<Self, String> {
        Err(
            "this ucgate was built without Kerberos support (cargo feature \"kerberos\"); \
             remove the [kerberos] section or use a build with it"
                .into(),
        )
    }

    /// Checks the keytab (readable, has keys, holds `principal`) and acquires the acceptor
    /// credential, so that a bad setup refuses to start instead of failing every login.
    #[cfg(feature = "kerberos")]
    pub fn load(config: &KerberosConfig) -> Result<Self, String> {
        let path = config.keytab.display();
        let data = std::fs::read(&config.keytab).map_err(|e| format!("keytab {path}: {e}"))?;
        let principals = keytab::principals(&data).map_err(|e| format!("keytab {path}: {e}"))?;
        if principals.is_empty() {
            return Err(format!("keytab {path}: has no keys"));
        }
        let served: Vec<&String> = match &config.principal {
            None => principals.iter().collect(),
            Some(wanted) => {
                let found: Vec<&String> = principals
                    .iter()
                    .filter(|p| {
                        *p == wanted || p.rsplit_once('@').is_some_and(|(n, _)| n == wanted)
                    })
                    .collect();
                if found.is_empty() {
                    return Err(format!(
                        "principal {wanted:?} is not in keytab {path} (it holds {})",
                        principals.join(", ")
                    ));
                }
                found
            }
        };
        let realms = match &config.realms {
            Some(realms) => realms.clone(),
            None => {
                let mut realms: Vec<String> = served
                    .iter()
                    .filter_map(|p| p.rsplit_once('@').map(|(_, r)| r.to_owned()))
                    .collect();
                realms.dedup();
                realms
            }
        };
        if let Some(rc) = &config.replay_cache {
            let dir = rc
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(format!(
                    "replay_cache {}: folder {} does not exist",
                    rc.display(),
                    dir.display()
                ));
            }
        }
        let keys = private_copy(&data)
            .map_err(|e| format!("keytab {path}: cannot make its private copy: {e}"))?;
        let acceptor = gss::Acceptor::acquire(
            keys.path(),
            config.principal.as_deref(),
            config.replay_cache.as_deref(),
        )?;
        Ok(Self {
            acceptor,
            _keys: keys,
            names: PrincipalMap {
                realms,
                map: config.principal_map.clone(),
            },
        })
    }
}

/// `data` in a new file readable by this user only (0600, in `TMPDIR`: a tmpfs in the container).
#[cfg(feature = "kerberos")]
fn private_copy(data: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix("ucgate-keytab-")
        .tempfile()?;
    file.write_all(data)?;
    file.flush()?;
    Ok(file)
}

/// Decoded tokens are a few KiB; anything much larger is not a Kerberos ticket.
#[cfg(feature = "kerberos")]
const MAX_TOKEN: usize = 64 * 1024;

/// The `Authorization` header as far as Negotiate is concerned.
#[derive(Debug, PartialEq, Eq)]
enum Negotiate<'a> {
    Absent,
    /// The base64 text of the token (unchecked).
    Token(&'a str),
    Malformed(&'static str),
}

fn negotiate_header(headers: &HeaderMap) -> Negotiate<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Negotiate::Absent;
    };
    if values.next().is_some() {
        return Negotiate::Malformed("several Authorization headers");
    }
    let Ok(value) = value.to_str() else {
        return Negotiate::Malformed("the Authorization header is not ASCII");
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("Negotiate") {
        return Negotiate::Malformed("the Authorization scheme is not Negotiate");
    }
    match rest.trim() {
        "" => Negotiate::Malformed("the Negotiate token is empty"),
        token => Negotiate::Token(token),
    }
}

impl Exchange for Kerberos {
    const METHOD: Method = Method::Kerberos;

    /// One round of SPNEGO (RFC 4559 §4.2). `SsoAuthenticationFailed` (with a `Negotiate`
    /// challenge) for no, a malformed or a refused token, or a realm not accepted;
    /// `UserNotFound` for a principal that is not a person.
    #[cfg(feature = "kerberos")]
    async fn prove(
        &self,
        request: Request<Incoming>,
        attempt: Attempt<'_>,
    ) -> Result<Proof, GateError> {
        accept::prove(self, request.headers(), attempt).await
    }

    #[cfg(not(feature = "kerberos"))]
    async fn prove(&self, _: Request<Incoming>, _: Attempt<'_>) -> Result<Proof, GateError> {
        match self.never {}
    }
}

#[cfg(feature = "kerberos")]
mod accept {
    use std::sync::LazyLock;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use http::HeaderValue;
    use tokio::sync::Semaphore;

    use super::*;

    /// GSSAPI accepts run on the blocking pool, a bounded number at a time, so that a flood of
    /// tokens queues here instead of filling the blocking pool.
    static ACCEPTS: LazyLock<Semaphore> = LazyLock::new(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()) * 2)
    });

    pub(super) async fn prove(
        kerberos: &Kerberos,
        headers: &HeaderMap,
        attempt: Attempt<'_>,
    ) -> Result<Proof, GateError> {
        let fail = async |reason: &str, message: &'static str| {
            // The reason is GSSAPI's or ours: principal names at most, never token bytes.
            tracing::info!(client = %attempt.client(), method = "kerberos", reason, "sso refused");
            attempt.failed_client().await;
            GateError::SsoAuthenticationFailed(message)
        };
        let token = match negotiate_header(headers) {
            Negotiate::Absent => {
                return Err(GateError::SsoAuthenticationFailed(
                    "Kerberos authentication is required",
                ));
            }
            Negotiate::Malformed(reason) => return Err(fail(reason, reason).await),
            Negotiate::Token(text) if text.len() > MAX_TOKEN * 4 / 3 + 4 => {
                return Err(fail("token too large", "the Negotiate token is too large").await);
            }
            Negotiate::Token(text) => match STANDARD.decode(text) {
                Ok(token) => token,
                Err(_) => {
                    let reason = "the Negotiate token is not valid base64";
                    return Err(fail(reason, reason).await);
                }
            },
        };
        if token.starts_with(b"NTLMSSP\0") {
            let reason = "NTLM is not supported, only Kerberos";
            return Err(fail(reason, reason).await);
        }
        let accepted = {
            let _permit = ACCEPTS.acquire().await.map_err(|_| GateError::Unhandled)?;
            let acceptor = kerberos.acceptor.clone();
            tokio::task::spawn_blocking(move || acceptor.accept(&token))
                .await
                .map_err(|_| GateError::Unhandled)?
        };
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(refusal) => {
                return Err(fail(&refusal.detail, "the Kerberos token was not accepted").await);
            }
        };
        let login = match kerberos.names.login_for(&accepted.principal) {
            Ok(login) => login,
            Err(why) => {
                tracing::info!(client = %attempt.client(), method = "kerberos", principal = accepted.principal, reason = ?why, "sso refused");
                attempt.failed_client().await;
                return Err(match why {
                    Unmapped::Realm => {
                        GateError::SsoAuthenticationFailed("this Kerberos realm is not accepted")
                    }
                    Unmapped::NotAUser => GateError::UserNotFound,
                });
            }
        };
        let challenge = accepted
            .reply
            .map(|reply| HeaderValue::try_from(format!("Negotiate {}", STANDARD.encode(reply))))
            .transpose()
            .map_err(|_| GateError::Unhandled)?;
        Ok(Proof {
            challenge,
            ..Proof::login(login)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> PrincipalMap {
        PrincipalMap {
            realms: vec!["EXAMPLE.TEST".into()],
            map: [("admin@OTHER.TEST".to_owned(), "bob".to_owned())].into(),
        }
    }

    #[test]
    fn maps_principals_to_logins() {
        let n = names();
        assert_eq!(n.login_for("alice@EXAMPLE.TEST"), Ok("alice".into()));
        assert_eq!(n.login_for("admin@OTHER.TEST"), Ok("bob".into()));
        assert_eq!(n.login_for("alice@OTHER.TEST"), Err(Unmapped::Realm));
        assert_eq!(n.login_for("alice@example.test"), Err(Unmapped::Realm));
        assert_eq!(n.login_for("alice"), Err(Unmapped::Realm));
        assert_eq!(
            n.login_for("alice/admin@EXAMPLE.TEST"),
            Err(Unmapped::NotAUser)
        );
        assert_eq!(
            n.login_for("HTTP/localhost@EXAMPLE.TEST"),
            Err(Unmapped::NotAUser)
        );
        assert_eq!(n.login_for("@EXAMPLE.TEST"), Err(Unmapped::NotAUser));
        assert_eq!(n.login_for("a\\@b@EXAMPLE.TEST"), Err(Unmapped::NotAUser));
    }

    #[test]
    fn reads_the_negotiate_header() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::AUTHORIZATION, v.parse().unwrap());
            }
            h
        };
        assert_eq!(negotiate_header(&headers(&[])), Negotiate::Absent);
        assert_eq!(
            negotiate_header(&headers(&["negotiate  YII= "])),
            Negotiate::Token("YII=")
        );
        for bad in [
            &["Negotiate"][..],
            &["Negotiate   "],
            &["Basic YTpi"],
            &["NTLM TlRMTVNTUAAB"],
            &["Negotiate a", "Negotiate b"],
        ] {
            assert!(
                matches!(negotiate_header(&headers(bad)), Negotiate::Malformed(_)),
                "{bad:?}"
            );
        }
    }

    #[cfg(not(feature = "kerberos"))]
    #[test]
    fn without_the_feature_a_kerberos_section_refuses_to_start() {
        let config: KerberosConfig = toml::from_str("keytab = \"http.keytab\"").unwrap();
        let error = Kerberos::load(&config).unwrap_err();
        assert!(error.contains("built without Kerberos support"), "{error}");
    }
}
