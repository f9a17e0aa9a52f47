//! TLS with rustls: the listener's certificate (h2 and HTTP/1.1 by ALPN) and the roots that
//! upstream certificates are checked against.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// Installs aws-lc-rs as the process's rustls provider. Called first thing in `main`, so that
/// no dependency's choice can make the provider ambiguous at run time.
pub fn install_provider() {
    // An error means a provider is installed already: the same one, by an earlier call.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The listener's TLS configuration. Errors name the file, never the key material.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    install_provider();
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no usable private key ({e})", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client TLS configuration for upstreams: the CA bundle if one is given (a private CA is
/// the usual case beside XiVO), else the system's roots.
pub fn upstream_config(ca_bundle: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    install_provider();
    let mut roots = RootCertStore::empty();
    match ca_bundle {
        Some(path) => {
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            // Unreadable system certificates are skipped: an https upstream then fails with 502,
            // which names the problem better than a refusal to start for plain-http setups.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds a client for an identity provider (CAS server, OpenID provider). With `ca_bundle`,
/// only those CAs are trusted: a private IdP's CA must not widen trust for anything else.
pub fn provider_client(
    builder: reqwest::ClientBuilder,
    ca_bundle: Option<&Path>,
) -> Result<reqwest::Client, String> {
    let mut builder = builder.user_agent(concat!("ucgate/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path)
            .map_err(|e| format!("ca_bundle: cannot read {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_bundle: {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "ca_bundle: {}: no PEM certificate in it",
                path.display()
            ));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}
