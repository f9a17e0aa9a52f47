//! The GSSAPI acceptor. Its credential is acquired with `gss_acquire_cred_from` and a credential
//! store naming the keytab (and the replay cache), instead of the process-wide `KRB5_KTNAME`
//! environment variable or `krb5_gss_register_acceptor_identity`: nothing global is mutated, so
//! a reload can build a new acceptor while requests still use the old one, and no thread can
//! read the environment while it changes.

use std::ffi::{CString, c_void};
use std::path::Path;
use std::ptr;

use libgssapi::context::{SecurityContext, ServerCtx};
use libgssapi::credential::Cred;
use libgssapi::error::{Error as GssError, MajorFlags};
use libgssapi::oid::GSS_MECH_KRB5;
use libgssapi_sys as sys;

/// DER bodies of the OIDs: Kerberos 5 (1.2.840.113554.1.2.2), SPNEGO (1.3.6.1.5.5.2) and the
/// Kerberos principal name type (1.2.840.113554.1.2.2.1).
const KRB5_MECH: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02";
const SPNEGO_MECH: &[u8] = b"\x2b\x06\x01\x05\x05\x02";
const KRB5_PRINCIPAL_NAME: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01";

/// An acceptor credential for the keys of one keytab; shared by all requests (MIT locks its
/// credentials internally).
#[derive(Clone)]
pub struct Acceptor {
    cred: Cred,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").finish_non_exhaustive()
    }
}

/// A context accepted in one round.
#[derive(Debug)]
pub struct Accepted {
    /// The client principal, `name@REALM`.
    pub principal: String,
    /// The mutual-authentication token for the client, if GSSAPI made one.
    pub reply: Option<Vec<u8>>,
}

/// Why a token was not accepted; `detail` is GSSAPI's text (names and reasons, never key or
/// token bytes) for the log.
#[derive(Debug)]
pub struct Refusal {
    pub detail: String,
}

impl Acceptor {
    /// Acquires the acceptor credential. `principal` absent: any key of the keytab (the client
    /// chooses the service principal). `replay_cache` absent: MIT's default replay cache.
    pub fn acquire(
        keytab: &Path,
        principal: Option<&str>,
        replay_cache: Option<&Path>,
    ) -> Result<Self, String> {
        let keytab = CString::new(format!("FILE:{}", keytab.display()))
            .map_err(|_| "keytab path contains a NUL byte")?;
        let rcache = replay_cache
            .map(|p| CString::new(format!("file2:{}", p.display())))
            .transpose()
            .map_err(|_| "replay_cache path contains a NUL byte")?;
        let mut elements = vec![sys::gss_key_value_element_desc {
            key: c"keytab".as_ptr(),
            value: keytab.as_ptr(),
        }];
        if let Some(rcache) = &rcache {
            elements.push(sys::gss_key_value_element_desc {
                key: c"rcache".as_ptr(),
                value: rcache.as_ptr(),
            });
        }
        let store = sys::gss_key_value_set_desc {
            count: elements.len() as u32,
            elements: elements.as_mut_ptr(),
        };
        let name = principal.map(ImportedName::krb5_principal).transpose()?;
        let mut mechs = [oid(KRB5_MECH), oid(SPNEGO_MECH)];
        let mut mech_set = sys::gss_OID_set_desc {
            count: mechs.len(),
            elements: mechs.as_mut_ptr(),
        };
        let mut minor = 0;
        let mut cred: sys::gss_cred_id_t = ptr::null_mut();
        // SAFETY: every pointer is valid for the call (locals above outlive it); GSSAPI copies
        // what it keeps, and `cred` is owned by `Cred` from here on.
        let major = unsafe {
            sys::gss_acquire_cred_from(
                &mut minor,
                name.as_ref().map_or(ptr::null_mut(), |n| n.0),
                sys::_GSS_C_INDEFINITE,
                &mut mech_set,
                sys::GSS_C_ACCEPT as sys::gss_cred_usage_t,
                &store,
                &mut cred,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if major != sys::GSS_S_COMPLETE {
            let e = GssError {
                major: MajorFlags::from_bits_retain(major),
                minor,
            };
            return Err(format!("cannot use the keytab: {e}"));
        }
        // SAFETY: a credential GSSAPI just handed us, released once by `Cred`'s drop.
        Ok(Self {
            cred: unsafe { Cred::from_c(cred) },
        })
    }

    /// Accepts a context from one client token (blocking: a keytab read, maybe a replay-cache
    /// write). Only Kerberos 5 is accepted, directly or through SPNEGO.
    pub fn accept(&self, token: &[u8]) -> Result<Accepted, Refusal> {
        let refuse = |e: GssError| Refusal {
            detail: e.to_string().trim().to_owned(),
        };
        let mut ctx = ServerCtx::new(Some(self.cred.clone()));
        let reply = ctx.step(token, None).map_err(refuse)?;
        if !ctx.is_complete() {
            return Err(Refusal {
                detail: "negotiation needs another round trip, which HTTP cannot carry here".into(),
            });
        }
        if ctx.mechanism().map_err(refuse)? != GSS_MECH_KRB5 {
            return Err(Refusal {
                detail: "the negotiated mechanism is not Kerberos 5".into(),
            });
        }
        let name = ctx.source_name().map_err(refuse)?;
        let principal = name.display_name().map_err(refuse)?;
        let principal = String::from_utf8(principal.to_vec()).map_err(|_| Refusal {
            detail: "the client principal is not UTF-8".into(),
        })?;
        Ok(Accepted {
            principal,
            reply: reply.map(|b| b.to_vec()),
        })
    }
}

fn oid(der: &'static [u8]) -> sys::gss_OID_desc {
    sys::gss_OID_desc {
        length: der.len() as u32,
        // GSSAPI's C signature is not const-correct; it never writes through OIDs it is given.
        elements: der.as_ptr() as *mut c_void,
    }
}

/// A `gss_name_t` released on drop.
struct ImportedName(sys::gss_name_t);

impl ImportedName {
    fn krb5_principal(principal: &str) -> Result<Self, String> {
        let mut buffer = sys::gss_buffer_desc {
            length: principal.len(),
            value: principal.as_ptr() as *mut c_void,
        };
        let mut name_type = oid(KRB5_PRINCIPAL_NAME);
        let (mut minor, mut name) = (0, ptr::null_mut());
        // SAFETY: the buffer and OID outlive the call; GSSAPI copies the name.
        let major =
            unsafe { sys::gss_import_name(&mut minor, &mut buffer, &mut name_type, &mut name) };
        if major != sys::GSS_S_COMPLETE {
            let e = GssError {
                major: MajorFlags::from_bits_retain(major),
                minor,
            };
            return Err(format!("principal {principal:?}: {e}"));
        }
        Ok(Self(name))
    }
}

impl Drop for ImportedName {
    fn drop(&mut self) {
        let mut minor = 0;
        // SAFETY: a name from gss_import_name, released exactly once.
        unsafe {
            sys::gss_release_name(&mut minor, &mut self.0);
        }
    }
}
