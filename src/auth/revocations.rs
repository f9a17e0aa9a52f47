//! Revoked UC tokens (logouts): kept until the token would have expired anyway, and, with
//! `tokens.revocations_file`, across restarts.
//!
//! The file is JSON, `{"version": 2, "revoked": [{"key": "<32 hex>", "exp": <unix seconds>}],
//! "sessions": [...the same...]}`, replaced whole and atomically (written beside, synced,
//! renamed) at every logout, and read when the configuration is loaded, before the listener
//! opens. A token's key is half a SHA-256 of its signature, a session's half a SHA-256 of its
//! name: they name a token or a session without being one. (Version 1 files, without sessions,
//! are read too.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use serde::{Deserialize, Serialize};

use super::token::unix_now;
use crate::cluster::{RevocationSink, Revoked, Scope};

/// The revocations in force, shared by the token services of successive configurations.
#[derive(Clone)]
pub struct Revocations {
    /// Revocation key → the token's `exp`. Unbounded on purpose: evicting a revocation would
    /// bring a token back to life. Each entry costs a successful login.
    entries: moka::sync::Cache<u128, u64>,
    /// Session key → the session's end: every token of the session is refused.
    sessions: moka::sync::Cache<u128, u64>,
    /// Bumped by every revocation: a validation cached at an older revision is checked again
    /// (see `TokenService::validate`), so that revoking never has to search the cache.
    revision: Arc<AtomicU64>,
    file: Option<Arc<RevocationsFile>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("entries", &self.entries.entry_count())
            .field("sessions", &self.sessions.entry_count())
            .field("file", &self.file.as_ref().map(|f| &f.path))
            .finish()
    }
}

struct RevocationsFile {
    path: PathBuf,
    /// One writer at a time: each write is a snapshot taken under the lock, so the last one
    /// written holds every revocation made before it.
    writing: Mutex<()>,
}

/// Entries live until the token's `exp`, plus `extra`: as long as the leeway still admits it.
struct UntilExpiry {
    extra: Duration,
}

impl Expiry<u128, u64> for UntilExpiry {
    fn expire_after_create(&self, _: &u128, exp: &u64, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(exp.saturating_sub(unix_now())) + self.extra)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    revoked: Vec<Entry>,
    #[serde(default)]
    sessions: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: String,
    exp: u64,
}

const VERSION: u32 = 2;

impl Revocations {
    /// Revocations kept `leeway` past each token's expiry; with `file`, those it holds. A
    /// missing file is an empty one (the first start); an unreadable or malformed one is an
    /// error naming it, since starting without the revocations would let logged-out tokens in.
    pub fn load(leeway: Duration, file: Option<&Path>) -> Result<Self, String> {
        // `exp` and the leeway count whole seconds: one more covers the last one.
        let extra = leeway + Duration::from_secs(1);
        let cache = || {
            moka::sync::Cache::builder()
                .expire_after(UntilExpiry { extra })
                .build()
        };
        let revocations = Self {
            entries: cache(),
            sessions: cache(),
            revision: Arc::new(AtomicU64::new(0)),
            file: file.map(|path| {
                Arc::new(RevocationsFile {
                    path: path.to_owned(),
                    writing: Mutex::new(()),
                })
            }),
        };
        let Some(path) = file else {
            return Ok(revocations);
        };
        let error =
            |reason: String| format!("tokens.revocations_file: {}: {reason}", path.display());
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        if folder.is_some_and(|f| !f.is_dir()) {
            return Err(error("its folder does not exist".into()));
        }
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(revocations),
            Err(e) => return Err(error(e.to_string())),
        };
        let stored: Stored = serde_json::from_slice(&text)
            .map_err(|e| error(format!("not a revocations file ({e})")))?;
        if !(1..=VERSION).contains(&stored.version) {
            return Err(error(format!("unknown version {}", stored.version)));
        }
        let now = unix_now();
        for (entries, into) in [
            (stored.revoked, &revocations.entries),
            (stored.sessions, &revocations.sessions),
        ] {
            for entry in entries {
                let key = u128::from_str_radix(&entry.key, 16)
                    .ok()
                    .filter(|_| entry.key.len() == 32)
                    .ok_or_else(|| error(format!("{:?} is not a revocation key", entry.key)))?;
                if entry.exp.saturating_add(leeway.as_secs() + 1) >= now {
                    into.insert(key, entry.exp);
                }
            }
        }
        Ok(revocations)
    }

    pub fn contains(&self, key: u128) -> bool {
        self.entries.contains_key(&key)
    }

    /// Revokes the token of `key`, which expires at `exp` (unix seconds). In memory: see
    /// [`Revocations::persist`].
    pub fn insert(&self, key: u128, exp: u64) {
        self.entries.insert(key, exp);
        self.revision.fetch_add(1, Ordering::AcqRel);
    }

    /// Ends the session of `key` until `end` (unix seconds), when its last token would expire.
    pub fn insert_session(&self, key: u128, end: u64) {
        self.sessions.insert(key, end);
        self.revision.fetch_add(1, Ordering::AcqRel);
    }

    /// How many revocations were added so far (one atomic load): validations remember it.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn session_revoked(&self, key: u128) -> bool {
        self.sessions.contains_key(&key)
    }

    /// Every revocation in force, tokens and sessions, for the other instances.
    pub fn in_force(&self) -> Vec<Revoked> {
        let now = unix_now();
        let of = |cache: &moka::sync::Cache<u128, u64>, scope: Scope| {
            cache
                .iter()
                .filter(move |(_, exp)| exp.saturating_add(1) >= now)
                .map(move |(key, exp)| Revoked {
                    scope,
                    key: *key,
                    exp,
                })
                .collect::<Vec<_>>()
        };
        let mut all = of(&self.entries, Scope::Token);
        all.extend(of(&self.sessions, Scope::Session));
        all
    }

    /// Adds `revoked` unless it is known; whether it was new.
    pub fn add(&self, revoked: &Revoked) -> bool {
        let cache = match revoked.scope {
            Scope::Token => &self.entries,
            Scope::Session => &self.sessions,
        };
        let fresh = cache.entry(revoked.key).or_insert(revoked.exp).is_fresh();
        if fresh {
            self.revision.fetch_add(1, Ordering::AcqRel);
        }
        fresh
    }

    /// Writes every revocation in force to the file, if there is one: written beside it,
    /// synced, renamed over it, the folder synced. Blocking: call it off the async workers.
    pub fn persist(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let _one_writer = file.writing.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_now();
        let in_force = |cache: &moka::sync::Cache<u128, u64>| {
            let mut entries: Vec<Entry> = cache
                .iter()
                .filter(|(_, exp)| exp.saturating_add(1) >= now)
                .map(|(key, exp)| Entry {
                    key: format!("{:032x}", *key),
                    exp,
                })
                .collect();
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            entries
        };
        let text = serde_json::to_vec(&Stored {
            version: VERSION,
            revoked: in_force(&self.entries),
            sessions: in_force(&self.sessions),
        })?;
        let mut partial = file.path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let mut out = std::fs::File::create(&partial)?;
        out.write_all(&text)?;
        out.sync_all()?;
        std::fs::rename(&partial, &file.path)?;
        if let Some(folder) = file.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(folder)?.sync_all()?;
        }
        Ok(())
    }

    /// Keeps the revocations of the configuration this one replaces (a reload must not bring a
    /// logged-out token back), adding those this one read from its file. The next
    /// [`Revocations::persist`] writes them all to this one's file.
    pub fn inherit(&mut self, old: &Revocations) {
        for (key, exp) in self.entries.iter() {
            old.entries.insert(*key, exp);
        }
        for (key, end) in self.sessions.iter() {
            old.sessions.insert(*key, end);
        }
        self.entries = old.entries.clone();
        self.sessions = old.sessions.clone();
        old.revision.fetch_add(1, Ordering::AcqRel);
        self.revision = old.revision.clone();
    }
}

/// Another instance's revocations, told by the cluster: into these revocations (shared by every
/// generation), and their file.
impl RevocationSink for Revocations {
    fn apply(&self, revoked: &[Revoked]) {
        let new = revoked.iter().filter(|r| self.add(r)).count() > 0;
        if new && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let revocations = self.clone();
            runtime.spawn_blocking(move || {
                if let Err(e) = revocations.persist() {
                    tracing::error!(error = %e, "cannot write the revocations file");
                }
            });
        }
    }

    fn in_force(&self) -> Vec<Revoked> {
        Revocations::in_force(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_a_folder() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("revocations.json");
        (dir, file)
    }

    #[test]
    fn survive_a_restart_until_they_expire() {
        let (_dir, file) = in_a_folder();
        let leeway = Duration::from_secs(5);
        let r = Revocations::load(leeway, Some(&file)).unwrap();
        let now = unix_now();
        r.insert(1, now + 3600);
        r.insert(2, now - 3600);
        r.insert(u128::MAX, now + 60);
        r.insert_session(9, now + 7200);
        r.persist().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"version\":2"), "{text}");
        assert!(!text.contains(&format!("{:032x}", 2)), "expired: {text}");
        let again = Revocations::load(leeway, Some(&file)).unwrap();
        assert!(again.contains(1) && again.contains(u128::MAX));
        assert!(again.session_revoked(9) && !again.session_revoked(1));
        // Version 1 files, from before sessions, are read.
        std::fs::write(
            &file,
            format!(
                "{{\"version\":1,\"revoked\":[{{\"key\":\"{:032x}\",\"exp\":{}}}]}}",
                5,
                now + 60
            ),
        )
        .unwrap();
        assert!(Revocations::load(leeway, Some(&file)).unwrap().contains(5));
        assert!(!again.contains(2));
        assert!(!file.with_extension("json.partial").exists());
    }

    #[test]
    fn a_missing_file_is_empty_and_a_broken_one_is_refused() {
        let (dir, file) = in_a_folder();
        let r = Revocations::load(Duration::ZERO, Some(&file)).unwrap();
        assert!(!r.contains(1));
        for broken in [
            "",
            "{}",
            "{\"version\":3,\"revoked\":[]}",
            "{\"version\":1,\"revoked\":[{\"key\":\"xyz\",\"exp\":1}]}",
        ] {
            std::fs::write(&file, broken).unwrap();
            let e = Revocations::load(Duration::ZERO, Some(&file)).unwrap_err();
            assert!(e.starts_with("tokens.revocations_file: "), "{e}");
        }
        let nowhere = dir.path().join("missing/revocations.json");
        assert!(
            Revocations::load(Duration::ZERO, Some(&nowhere))
                .unwrap_err()
                .contains("folder does not exist")
        );
    }

    #[test]
    fn a_reload_keeps_the_revocations_in_memory_and_on_file() {
        let (_dir, file) = in_a_folder();
        let old = Revocations::load(Duration::ZERO, None).unwrap();
        old.insert(7, unix_now() + 60);
        let mut new = Revocations::load(Duration::ZERO, Some(&file)).unwrap();
        new.inherit(&old);
        assert!(new.contains(7));
        new.persist().unwrap();
        assert!(
            Revocations::load(Duration::ZERO, Some(&file))
                .unwrap()
                .contains(7)
        );
    }
}
