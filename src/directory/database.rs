//! XiVO's own users, in its PostgreSQL database `asterisk`: table `userfeatures` (`loginclient`
//! the CTI login, `passwdclient` its password in clear text, `enableclient` 1 when CTI login is
//! enabled, `cti_profile_id`) and table `cti_profile` (`id`, `name`).
//!
//! Every query is parameterised and bounded by `users.timeout`, through a pool of at most
//! [`POOL_SIZE`] connections that reconnects by itself. The URL, which holds the password, is
//! read from the environment or a `custom.env` and never logged: logs name the variable it came
//! from and the server's host and port.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_postgres::config::{Host, SslMode};

use super::{Directory, User};
use crate::error::GateError;
use crate::metrics::metrics;
use crate::secrets;

/// Connections at most: logins are rare next to proxied requests, and XiVO's PostgreSQL serves
/// its own daemons first.
pub const POOL_SIZE: usize = 4;
/// `Retry-After` of a `503 DirectoryUnavailable`, seconds.
pub const RETRY_AFTER: u64 = 5;
/// Longest login looked up: XiVO's column is 254 characters.
const MAX_LOGIN: usize = 254;
/// Logins looked up per query by `lookup_many`.
const BATCH: usize = 500;

const SELECT: &str = "SELECT u.loginclient, u.passwdclient, u.enableclient, p.name, \
     u.firstname, u.lastname FROM userfeatures u \
     LEFT JOIN cti_profile p ON p.id = u.cti_profile_id";

/// A user row, the password included.
struct Row {
    user: User,
    password: String,
}

/// XiVO's users in PostgreSQL.
pub struct Database {
    pool: Pool,
    timeout: Duration,
    /// Where the URL came from ("XIVO_DB_URL in /etc/docker/compose/custom.env").
    source: String,
    /// `host:port/database`, for logs: no user, no password.
    target: String,
    up: AtomicBool,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The pool for the URL in environment variable `url_env` (or that name in `env_files`).
    /// Nothing is connected yet. Errors name the variable, never its value.
    pub fn open(url_env: &str, env_files: &[PathBuf], timeout: Duration) -> Result<Self, String> {
        let key = "users.database_url_env";
        let (url, source) = secrets::from_env_or_files(url_env, env_files)
            .map_err(|e| format!("{key}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{key}: environment variable {url_env} is unset or empty{}",
                    secrets::not_defined_in(env_files)
                )
            })?;
        // tokio-postgres' parse errors may quote the URL: only say what is expected.
        let mut pg: tokio_postgres::Config = url.parse().map_err(|_| {
            format!(
                "{key}: {source} is not a PostgreSQL URL (postgresql://user:password@host[:port]/asterisk)"
            )
        })?;
        pg.connect_timeout(timeout);
        pg.application_name("ucgate");
        let hosts = pg.get_hosts();
        let loopback = hosts.iter().all(|h| match h {
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Host::Unix(_) => true,
        });
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let target = format!(
            "{}:{port}/{}",
            hosts.first().map_or_else(String::new, |h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            }),
            pg.get_dbname().unwrap_or("")
        );
        let config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        // TLS to a database on this host protects nothing and XiVO's has a self-signed
        // certificate: plain there, unless `sslmode=require`. Elsewhere TLS (with the system's
        // roots), unless `sslmode=disable`.
        let tls = match pg.get_ssl_mode() {
            SslMode::Disable => false,
            SslMode::Require => true,
            _ => !loopback,
        };
        let manager = if tls {
            let client = crate::tls::upstream_config(None).map_err(|e| format!("{key}: {e}"))?;
            Manager::from_config(
                pg,
                tokio_postgres_rustls::MakeRustlsConnect::new(client),
                config,
            )
        } else {
            Manager::from_config(pg, tokio_postgres::NoTls, config)
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| format!("{key}: cannot build the connection pool: {e}"))?;
        Ok(Self {
            pool,
            timeout,
            source,
            target,
            up: AtomicBool::new(true),
        })
    }

    /// The rows of `logins`, by login. A login with two rows is refused (`None`), never guessed.
    async fn rows(&self, logins: &[&str]) -> Result<HashMap<String, Option<Row>>, GateError> {
        let query = async {
            let client = self.pool.get().await?;
            let statement = client
                .prepare_cached(&format!("{SELECT} WHERE u.loginclient = ANY($1)"))
                .await?;
            Ok::<_, PoolError>(client.query(&statement, &[&logins]).await?)
        };
        let rows = match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(self.failed(&e)),
            Err(_) => return Err(self.failed_kind("timeout", "the query did not finish in time")),
        };
        self.set_up(true);
        let mut found: HashMap<String, Option<Row>> = HashMap::with_capacity(rows.len());
        for row in rows {
            let login: String = row.get(0);
            let names = [row.get::<_, String>(4), row.get::<_, String>(5)];
            let name = names.join(" ").trim().to_owned();
            let entry = Row {
                user: User {
                    login: login.clone(),
                    cti_enabled: row.get::<_, i32>(2) == 1,
                    profile: row.get(3),
                    name: (!name.is_empty()).then_some(name),
                },
                password: row.get(1),
            };
            if let Some(first) = found.get_mut(&login) {
                if first.take().is_some() {
                    metrics().directory_error("duplicate");
                    tracing::error!(
                        login,
                        "directory error: several userfeatures rows have this loginclient; it cannot log in"
                    );
                }
                continue;
            }
            found.insert(login, Some(entry));
        }
        Ok(found)
    }

    async fn row(&self, login: &str) -> Result<Option<Row>, GateError> {
        // PostgreSQL's text cannot hold NUL: such a login is no user, not a failed query.
        if login.is_empty() || login.len() > MAX_LOGIN || login.contains('\0') {
            return Ok(None);
        }
        Ok(self.rows(&[login]).await?.remove(login).flatten())
    }

    fn failed(&self, e: &PoolError) -> GateError {
        let kind = match e {
            PoolError::Timeout(_) => "timeout",
            PoolError::Backend(e) if e.as_db_error().is_some() => "query",
            _ => "unreachable",
        };
        // tokio-postgres' messages hold no URL and no password.
        self.failed_kind(kind, &e.to_string())
    }

    fn failed_kind(&self, kind: &'static str, reason: &str) -> GateError {
        metrics().directory_error(kind);
        if self.set_up(false) {
            tracing::error!(database = %self.target, kind, reason, "the user database cannot be used");
        } else {
            tracing::debug!(database = %self.target, kind, reason, "the user database is still down");
        }
        GateError::DirectoryUnavailable(RETRY_AFTER)
    }

    /// Records whether the database answers; whether it changed.
    fn set_up(&self, up: bool) -> bool {
        metrics().directory_up("database", up);
        let changed = self.up.swap(up, Ordering::Relaxed) != up;
        if changed && up {
            tracing::info!(database = %self.target, "the user database answers again");
        }
        changed
    }

    /// How many users may log in (CTI login enabled, a login, a password, a profile), for
    /// `ucgate doctor`.
    pub async fn count_allowed(&self) -> Result<i64, String> {
        let query = async {
            let client = self.pool.get().await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM userfeatures u JOIN cti_profile p ON p.id = u.cti_profile_id \
                     WHERE u.enableclient = 1 AND u.loginclient <> '' AND u.passwdclient <> ''",
                    &[],
                )
                .await?;
            Ok::<i64, PoolError>(row.get(0))
        };
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }

    /// Where the database is, for reports: `host:port/database` (no credentials).
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Passwords are compared digest to digest, so that the time taken says nothing of how much of
/// them matched, nor of their length.
fn same_password(stored: &str, given: &str) -> bool {
    let (a, b) = (
        Sha256::digest(stored.as_bytes()),
        Sha256::digest(given.as_bytes()),
    );
    bool::from(a.ct_eq(&b)) && !stored.is_empty()
}

impl Directory for Database {
    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Option<User>, GateError>> {
        Box::pin(async move { Ok(self.row(login).await?.map(|r| r.user)) })
    }

    fn verify_password<'a>(
        &'a self,
        login: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, GateError>> {
        Box::pin(async move {
            let row = self.row(login).await?;
            // A comparison happens whether the user exists or not.
            let stored = row.as_ref().map_or("", |r| r.password.as_str());
            let ok = same_password(stored, password);
            Ok(row.filter(|_| ok).map(|r| r.user))
        })
    }

    fn lookup_many<'a>(
        &'a self,
        logins: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<User>>, GateError>> {
        Box::pin(async move {
            let mut users = Vec::with_capacity(logins.len());
            for chunk in logins.chunks(BATCH) {
                let mut rows = self.rows(chunk).await?;
                users.extend(
                    chunk
                        .iter()
                        .map(|l| rows.remove(*l).flatten().map(|r| r.user)),
                );
            }
            Ok(users)
        })
    }

    fn describe(&self) -> String {
        format!(
            "XiVO's database at {} (URL from {})",
            self.target, self.source
        )
    }

    fn down(&self) -> Vec<&'static str> {
        if self.up.load(Ordering::Relaxed) {
            Vec::new()
        } else {
            vec!["database"]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_match_exactly_and_never_empty() {
        assert!(same_password("s3cr'et\"☃", "s3cr'et\"☃"));
        assert!(!same_password("secret", "Secret"));
        assert!(!same_password("secret", "secret "));
        assert!(!same_password("", ""));
    }

    #[test]
    fn errors_name_the_variable_never_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("custom.env");
        std::fs::write(&env, "XIVO_DB_URL_TEST_A=not-a-url-with-s3cret\n").unwrap();
        let e = Database::open(
            "XIVO_DB_URL_TEST_A",
            std::slice::from_ref(&env),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains("XIVO_DB_URL_TEST_A in"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = Database::open("XIVO_DB_URL_TEST_B", &[env], Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("XIVO_DB_URL_TEST_B is unset"), "{e}");
    }
}
