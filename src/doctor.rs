//! `ucgate doctor`: checks the shared token across the custom.env files of a XiVO install and
//! ucgate's own environment without ever printing it, and the user directory of the configuration.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::auth::xuc::Xuc;
use crate::cluster::Cluster;
use crate::config::{Config, UsersSource};
use crate::directory::Directory;
use crate::directory::database::Database;
use crate::directory::file::FileDirectory;
use crate::directory::ldap::Ldap;
use crate::secrets::{read_env_file, weakness};

/// Where XiVO's docker environments keep their custom.env.
pub const XIVO_ENV_FILES: [&str; 3] = [
    "/etc/docker/xivo/custom.env",
    "/etc/docker/mds/custom.env",
    "/etc/docker/compose/custom.env",
];

/// What was found in one file.
#[derive(Debug, PartialEq)]
pub enum Finding {
    Missing,
    Unreadable(String),
    Undefined,
    Defined {
        digest: [u8; 32],
        weakness: Option<String>,
    },
}

/// Checks `variable` in the XiVO files found under `root`, in `extra` and in the environment
/// (where `ucgate run` looks first); prints a report and returns whether everything is fine.
pub fn run(
    root: &Path,
    extra: &[PathBuf],
    variable: &str,
    out: &mut impl std::io::Write,
) -> std::io::Result<bool> {
    let mut files: Vec<PathBuf> = XIVO_ENV_FILES
        .iter()
        .map(|f| root.join(f.trim_start_matches('/')))
        .collect();
    files.extend(extra.iter().cloned());
    let mut healthy = true;
    let mut digests = HashSet::new();
    let mut defined = 0;
    for file in &files {
        let explicit = extra.contains(file);
        match inspect(file, variable) {
            Finding::Missing if !explicit => writeln!(
                out,
                "  -  {}: not present (component not installed here)",
                file.display()
            )?,
            Finding::Missing => {
                healthy = false;
                writeln!(out, "FAIL {}: no such file", file.display())?;
            }
            Finding::Unreadable(reason) => {
                healthy = false;
                writeln!(out, "FAIL {}: {reason}", file.display())?;
            }
            Finding::Undefined => {
                healthy = false;
                writeln!(out, "FAIL {}: {variable} is not defined", file.display())?;
            }
            Finding::Defined { digest, weakness } => {
                defined += 1;
                digests.insert(digest);
                match weakness {
                    Some(why) => {
                        healthy = false;
                        writeln!(out, "FAIL {}: {variable} is weak: {why}", file.display())?;
                    }
                    None => writeln!(
                        out,
                        " OK  {}: {variable} is defined and strong",
                        file.display()
                    )?,
                }
            }
        }
    }
    // `ucgate run` reads the variable from its environment before any file: judge that value
    // too, and compare it with the files'.
    let in_env = std::env::var(variable).ok().filter(|v| !v.is_empty());
    match &in_env {
        None => writeln!(out, "  -  environment variable {variable}: unset")?,
        Some(value) => {
            digests.insert(Sha256::digest(value.as_bytes()).into());
            match weakness(value) {
                Some(why) => {
                    healthy = false;
                    writeln!(out, "FAIL environment variable {variable} is weak: {why}")?;
                }
                None => writeln!(
                    out,
                    " OK  environment variable {variable} is defined and strong"
                )?,
            }
        }
    }
    let env = if in_env.is_some() {
        " and the environment"
    } else {
        ""
    };
    match (defined, digests.len()) {
        (0, 0) => {
            healthy = false;
            writeln!(out, "FAIL {variable} is defined nowhere")?;
        }
        (0, _) => writeln!(
            out,
            " OK  {variable} is defined in the environment only (no file to compare it with)"
        )?,
        (_, 1) => writeln!(
            out,
            " OK  {variable} is identical in the {defined} file(s){env} that define it"
        )?,
        (_, n) => {
            healthy = false;
            writeln!(
                out,
                "FAIL {variable} differs: {n} distinct values; every component must share one"
            )?;
        }
    }
    Ok(healthy)
}

/// Checks the remote dependencies of `config` as ucgate would use them: the users file, or
/// XiVO's database (reachable, how many users may log in), the LDAP manager's bind, and the
/// replicas' Redis. Prints a report (never a password or a URL); returns whether everything is
/// fine.
pub async fn directory(config: &Config, out: &mut impl std::io::Write) -> std::io::Result<bool> {
    let Some(users) = &config.users else {
        writeln!(out, "  -  no [users] directory: UC tokens are off")?;
        return Ok(true);
    };
    let mut healthy = true;
    match &users.source {
        UsersSource::File(file) => match FileDirectory::load(file) {
            Ok(directory) => match directory.without_users() {
                Some(warning) => writeln!(out, "WARN {warning}")?,
                None => writeln!(out, " OK  {}", directory.describe())?,
            },
            Err(e) => {
                healthy = false;
                writeln!(out, "FAIL {}: {e}", file.display())?;
            }
        },
        UsersSource::Database { url_env } => {
            match Database::open(url_env, &config.shared_token.env_files, users.timeout) {
                Err(e) => {
                    healthy = false;
                    writeln!(out, "FAIL {e}")?;
                }
                Ok(db) => match db.count_allowed().await {
                    Ok(0) => writeln!(
                        out,
                        "WARN XiVO's database at {}: no user has CTI login enabled, a login, a password and a profile: no one can log in",
                        db.target()
                    )?,
                    Ok(n) => writeln!(
                        out,
                        " OK  XiVO's database at {}: {n} {} with CTI login enabled, a login, a password and a profile",
                        db.target(),
                        if n == 1 { "user" } else { "users" }
                    )?,
                    Err(e) => {
                        healthy = false;
                        writeln!(out, "FAIL XiVO's database at {}: {e}", db.target())?;
                    }
                },
            }
        }
    }
    if let Some(config) = &config.ldap {
        let url = config.url.as_str().trim_end_matches('/');
        match Ldap::open(config) {
            Err(e) => {
                healthy = false;
                writeln!(out, "FAIL {e}")?;
            }
            Ok(ldap) => match ldap.check_manager().await {
                Ok(()) => writeln!(
                    out,
                    " OK  LDAP at {url}: the manager binds and searches {}",
                    config.search_base
                )?,
                Err(e) => {
                    healthy = false;
                    writeln!(out, "FAIL LDAP at {url}: {e}")?;
                }
            },
        }
    }
    if let Some(config) = &config.xuc {
        match Xuc::load(config, std::time::Duration::ZERO) {
            Err(e) => {
                healthy = false;
                writeln!(out, "FAIL xuc: {e}")?;
            }
            Ok(xuc) => match xuc.reach().await {
                Ok(()) => writeln!(out, " OK  xuc at {}: its check endpoint answers", xuc.url())?,
                Err(e) => {
                    healthy = false;
                    writeln!(
                        out,
                        "FAIL xuc at {}: {e}; its tokens would get 503 XucUnavailable",
                        xuc.url()
                    )?;
                }
            },
        }
    }
    if let (Some(cluster), Some(tokens)) = (&config.cluster, &config.tokens) {
        match Cluster::new(cluster, &config.shared_token.env_files, tokens.leeway) {
            Err(e) => {
                healthy = false;
                writeln!(out, "FAIL {e}")?;
            }
            Ok(link) => match link.probe().await {
                Ok(n) => writeln!(
                    out,
                    " OK  Redis at {} ({}): answers; {n} revocations in force under {:?}",
                    link.target(),
                    link.source(),
                    cluster.key_prefix
                )?,
                Err(kind) => {
                    healthy = false;
                    writeln!(
                        out,
                        "FAIL Redis at {} ({}): {kind}; the instances would run alone",
                        link.target(),
                        link.source()
                    )?;
                }
            },
        }
    }
    Ok(healthy)
}

fn inspect(file: &Path, variable: &str) -> Finding {
    if !file.exists() {
        return Finding::Missing;
    }
    match read_env_file(file, variable) {
        Err(e) => Finding::Unreadable(e.to_string()),
        Ok(None) => Finding::Undefined,
        Ok(Some(value)) if value.is_empty() => Finding::Undefined,
        Ok(Some(value)) => Finding::Defined {
            digest: Sha256::digest(value.as_bytes()).into(),
            weakness: weakness(&value),
        },
    }
}

/// A fresh token: 32 random bytes, base64url without padding (43 characters, 256 bits).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random generator works");
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(43);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_strength() {
        assert!(weakness("short").unwrap().contains("shorter"));
        assert_eq!(
            weakness(&"a".repeat(64)).unwrap(),
            "about 0 bits of entropy, 100 wanted"
        );
        assert!(weakness(&"abcd".repeat(10)).is_some());
        assert!(
            weakness("change-me-to-a-long-random-value")
                .unwrap()
                .contains("placeholder")
        );
        let fresh = new_token();
        assert_eq!(fresh.len(), 43);
        assert_eq!(weakness(&fresh), None, "{fresh}");
        assert_ne!(fresh, new_token());
    }

    #[test]
    fn reports_without_printing_the_token() {
        let root = tempfile::tempdir().unwrap();
        let token = new_token();
        for (dir, value) in [("xivo", token.as_str()), ("compose", token.as_str())] {
            let d = root.path().join("etc/docker").join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("custom.env"), format!("PLAY_AUTH_TOKEN={value}\n")).unwrap();
        }
        let mut out = Vec::new();
        assert!(run(root.path(), &[], "PLAY_AUTH_TOKEN", &mut out).unwrap());
        let report = String::from_utf8(out).unwrap();
        assert!(!report.contains(&token), "{report}");
        assert!(report.contains("identical in the 2 file(s)"), "{report}");

        let other = root.path().join("other.env");
        std::fs::write(&other, "export PLAY_AUTH_TOKEN='hunter2xyz'\n").unwrap();
        let mut out = Vec::new();
        assert!(!run(root.path(), &[other], "PLAY_AUTH_TOKEN", &mut out).unwrap());
        let report = String::from_utf8(out).unwrap();
        assert!(
            report.contains("weak") && report.contains("differs"),
            "{report}"
        );
        assert!(
            !report.contains("hunter2xyz") && !report.contains(&token),
            "{report}"
        );
    }
}
