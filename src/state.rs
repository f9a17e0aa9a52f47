//! What one loaded configuration builds (a generation): the route table, the shared token, the
//! listener's TLS, the UC token issuer with its directory and exchanges, the brute-force
//! throttle. A request runs on one generation from start to end; a reload builds the next one
//! and carries over what must outlive it (revocations, lock-outs, the OpenID provider's keys).
//!
//! This module assembles the services of `auth/`, so it sits above it: the exchanges get their
//! narrow arguments from here, never the whole state.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::cas::Cas;
use crate::auth::kerberos::Kerberos;
use crate::auth::oidc::Oidc;
use crate::auth::revocations::Revocations;
use crate::auth::standing::Standing;
use crate::auth::throttle::Throttle;
use crate::auth::token::{Claims, TokenError, TokenService};
use crate::auth::xuc::Xuc;
use crate::auth::{Credential, Issuer, SharedToken};
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError, TokensConfig, UsersConfig};
use crate::cors::Cors;
use crate::directory::{self, OpenError};
use crate::error::GateError;
use crate::identity::{ListenerPort, Trust};
use crate::proxy::upstream_tls;
use crate::routes::RouteTable;
use crate::tls;

/// A configuration that cannot be served. `Display` is one line: the file, then the key and
/// the reason; never a secret.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file, key or secret the configuration names cannot be used; `reason` starts with the
    /// configuration key (`tokens.signing_key_env: ...`), or is about `file` itself.
    #[error("{}: {reason}", file.display())]
    Unusable { file: PathBuf, reason: String },
}

impl LoadError {
    fn unusable(file: &Path, reason: impl std::fmt::Display) -> Self {
        // Some libraries' messages span lines; a log line must not.
        let reason = reason.to_string();
        LoadError::Unusable {
            file: file.to_owned(),
            reason: reason.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }
}

/// One generation of ucgate's runtime state.
#[derive(Debug)]
pub struct State {
    pub(crate) config: Config,
    pub(crate) routes: RouteTable,
    pub(crate) shared: SharedToken,
    /// The listener's TLS: new connections get the certificates of the current generation.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// UC tokens, with what issues them; absent without `[tokens]`.
    pub(crate) uc: Option<UcAuth>,
    pub(crate) throttle: Throttle,
    /// Whose forwarding headers are believed.
    pub(crate) trust: Trust,
    /// The origins allowed to call from the browser.
    pub(crate) cors: Option<Cors>,
    /// The link to the other instances, with `[cluster]`; kept across reloads that leave the
    /// section as it is.
    pub(crate) cluster: Option<Cluster>,
    /// Without `[tokens]`: the revocations of the last generation that had UC tokens, kept
    /// until `[tokens]` comes back (each until its token's `exp`), so that a reload through a
    /// configuration without UC tokens does not bring logged-out tokens back to life.
    dormant_revocations: Option<Revocations>,
}

/// UC tokens and the exchanges that lead to one: they exist only together, since an exchange
/// answers with a token.
#[derive(Debug)]
pub(crate) struct UcAuth {
    pub(crate) issuer: Issuer,
    pub(crate) kerberos: Option<Kerberos>,
    pub(crate) cas: Option<Cas>,
    pub(crate) oidc: Option<Oidc>,
    /// The site's xuc, whose tokens are accepted too.
    pub(crate) xuc: Option<Xuc>,
}

impl UcAuth {
    /// The claims of a UC token: ucgate's own (no remote call), else, with `[xuc]`, one the
    /// site's xuc vouches for (see `auth::xuc`; `client` is charged for the remote check).
    /// `TokenInvalid`, `TokenExpired`, and with `[xuc]` `XucUnavailable`, `TooManyAttempts`,
    /// `DirectoryUnavailable`. Never given the shared token (see [`State::uc_claims`]).
    async fn validate(&self, token: &str, client: IpAddr) -> Result<Arc<Claims>, GateError> {
        let tokens = self.issuer.tokens();
        match (tokens.validate(token), &self.xuc) {
            // Not one ucgate signed (a bad signature, another issuer): maybe xuc's. Boxed: the
            // remote check's future would make every request's future as large.
            (Err(TokenError::Invalid), Some(xuc)) => {
                Box::pin(xuc.authenticate(token, client, tokens, self.issuer.directory())).await
            }
            (result, _) => Ok(result?),
        }
    }
}

/// `tokens` following each token's login in the directory, unless `users.recheck` is zero.
fn followed(mut tokens: TokenService, config: &TokensConfig, users: &UsersConfig) -> TokenService {
    if !users.recheck.is_zero() {
        tokens.follow(Standing::new(
            config.cache_capacity,
            config.ttl + config.leeway,
            users.recheck,
        ));
    }
    tokens
}

/// The connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    pub listener: Listener,
    /// The port of the listener that accepted it: `X-Forwarded-Port`.
    pub port: ListenerPort,
}

/// Which listener accepted a connection, which decides the endpoints it serves. What is bound
/// decides, not a reloaded configuration: `server.admin_listen` takes effect at a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.listen` without an operator's listener: every endpoint and route.
    Everything,
    /// `server.listen` while `server.admin_listen` is bound: routes and the exchange API, not
    /// `/metrics`, `/healthz`, `/readyz` (404 here).
    Public,
    /// `server.admin_listen` (plain HTTP): `/metrics`, `/healthz`, `/readyz` and nothing else.
    Admin,
}

impl State {
    /// Builds everything the configuration points at: the shared token, the token keys, the
    /// directory, the exchanges' providers, TLS. Errors name the file and key, never a secret.
    pub fn load(config: Config) -> Result<Self, LoadError> {
        let file = config.file.clone();
        let in_file = |key: &'static str| {
            let file = file.clone();
            move |e: String| LoadError::unusable(&file, format!("{key}: {e}"))
        };
        let upstream_tls = upstream_tls(config.server.upstream_ca.as_deref())
            .map_err(in_file("server.upstream_ca"))?;
        let tls = config
            .server
            .tls
            .as_ref()
            .map(tls::server_config)
            .transpose()
            .map_err(in_file("server.tls"))?;
        let shared = SharedToken::load(&config.shared_token)
            .map_err(|e| in_file("shared_token")(e.to_string()))?;
        let directory = config
            .users
            .as_ref()
            .map(|users| {
                directory::open(users, config.ldap.as_ref(), &config.shared_token.env_files)
                    .map_err(|e| match e {
                        OpenError::File { file, reason } => LoadError::unusable(&file, reason),
                        OpenError::Config(reason) => LoadError::unusable(&file, reason),
                    })
            })
            .transpose()?;
        // Validation made sure that `[cluster]` comes with `[tokens]`.
        let cluster = match (&config.cluster, &config.tokens) {
            (Some(cluster), Some(tokens)) => Some(
                Cluster::new(cluster, &config.shared_token.env_files, tokens.leeway)
                    .map_err(|e| LoadError::unusable(&file, e))?,
            ),
            _ => None,
        };
        // Validation made sure that `[tokens]` comes with `[users]`, and exchanges with both.
        let uc = match (&config.tokens, &config.users, directory) {
            (Some(tokens), Some(users), Some(directory)) => Some(UcAuth {
                issuer: Issuer::new(
                    // Token errors name their `tokens.*` key themselves.
                    followed(
                        TokenService::load(tokens).map_err(|e| LoadError::unusable(&file, e))?,
                        tokens,
                        users,
                    ),
                    directory,
                ),
                kerberos: config
                    .kerberos
                    .as_ref()
                    .map(Kerberos::load)
                    .transpose()
                    .map_err(in_file("kerberos"))?,
                cas: config
                    .cas
                    .as_ref()
                    .map(Cas::load)
                    .transpose()
                    .map_err(in_file("cas"))?,
                oidc: config
                    .oidc
                    .as_ref()
                    .map(Oidc::load)
                    .transpose()
                    .map_err(in_file("oidc"))?,
                xuc: config
                    .xuc
                    .as_ref()
                    .map(|xuc| Xuc::load(xuc, tokens.max_session))
                    .transpose()
                    .map_err(in_file("xuc"))?,
            }),
            _ => None,
        };
        let mut state = Self {
            routes: RouteTable::build(
                &config.routes,
                &upstream_tls,
                config.server.request_body_timeout,
            ),
            throttle: Throttle::new(&config.login),
            trust: Trust::new(&config.server),
            cors: config.cors.as_ref().map(Cors::new),
            config,
            shared,
            tls,
            uc,
            cluster: None,
            dormant_revocations: None,
        };
        if let Some(cluster) = cluster {
            state.share(cluster);
        }
        Ok(state)
    }

    /// Shares revocations and lock-outs with the other instances through `cluster`.
    fn share(&mut self, cluster: Cluster) {
        self.throttle.share(cluster.clone());
        if let Some(uc) = &mut self.uc {
            uc.issuer.share(cluster.clone());
        }
        self.cluster = Some(cluster);
    }

    /// Carries over what must survive a reload: revocations, lock-outs, the OpenID provider's
    /// keys, the link to the other instances (when `[cluster]` is unchanged: no reconnection).
    pub(crate) fn inherit(&mut self, old: &State) {
        if let (Some(config), Some(running)) = (&self.config.cluster, &old.cluster)
            && running.is_for(config)
        {
            self.share(running.clone());
        }
        self.throttle.inherit(&old.throttle);
        match (&mut self.uc, &old.uc) {
            (Some(new), Some(old)) => {
                new.issuer.inherit(&old.issuer);
                if let (Some(new), Some(old)) = (&new.oidc, &old.oidc) {
                    new.inherit(old);
                }
                // The same xuc: what it answered stays valid, and its probe keeps running.
                if let (Some(config), Some(old)) = (&self.config.xuc, &old.xuc)
                    && old.is_for(config)
                {
                    new.xuc = Some(old.clone());
                }
            }
            (Some(new), None) => {
                if let Some(dormant) = &old.dormant_revocations {
                    new.issuer.adopt_revocations(dormant);
                }
            }
            (None, Some(old)) => {
                self.dormant_revocations = Some(old.issuer.tokens().revocations().clone());
            }
            (None, None) => self.dormant_revocations = old.dormant_revocations.clone(),
        }
    }

    /// Starts what needs the runtime (the OpenID provider's discovery); call inside it, once
    /// the generation is in place.
    pub(crate) fn start_background_tasks(&self) {
        let Some(uc) = &self.uc else { return };
        if let Some(cluster) = &self.cluster {
            // Revocations from the other instances go to this generation's tokens from now on.
            cluster.attach(uc.issuer.tokens().sink());
        }
        if let Some(oidc) = &uc.oidc {
            oidc.start();
        }
        if let Some(xuc) = &uc.xuc {
            xuc.start();
        }
        uc.issuer.start();
    }

    /// The dependencies that do not answer now (`database`, `ldap`): logins fail (503) while
    /// they are down, but requests with a token keep flowing.
    pub(crate) fn down(&self) -> Vec<&'static str> {
        let mut down = self
            .uc
            .as_ref()
            .map(|uc| uc.issuer.directory().down())
            .unwrap_or_default();
        if self.cluster.as_ref().is_some_and(|c| !c.is_up()) {
            down.push("redis");
        }
        if self
            .uc
            .as_ref()
            .and_then(|uc| uc.xuc.as_ref())
            .is_some_and(|x| !x.is_up())
        {
            down.push("xuc");
        }
        down
    }

    /// The replicas' Redis, described for the start-up log ("redis at HOST:PORT from
    /// environment variable NAME, prefix \"ucgate:\""); never the URL.
    pub fn cluster(&self) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        let prefix = &self.config.cluster.as_ref()?.key_prefix;
        Some(format!(
            "redis at {} from {}, prefix {prefix:?}",
            cluster.target(),
            cluster.source()
        ))
    }

    /// The configuration this generation was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the shared token was found, for logs and `check-config` (never the value).
    pub fn shared_token_source(&self) -> &str {
        self.shared.source()
    }

    /// A warning when the shared token is weak (see `secrets::weakness`), for the start-up log,
    /// reloads and `check-config`; never the value.
    fn shared_token_warning(&self) -> Option<String> {
        let current = self.shared.weakness().map(|why| {
            format!(
                "the shared token from {} is weak ({why}): it opens every route that accepts \
                 it; set a strong one (`ucgate doctor --new-token`) in every XiVO component",
                self.shared.source()
            )
        });
        let previous_env = self.config.shared_token.previous_env.as_deref();
        let previous = self
            .shared
            .previous_weakness()
            .zip(previous_env)
            .map(|(why, name)| {
                format!(
                    "the previous shared token from environment variable {name} \
                 (shared_token.previous_env) is weak ({why}): it opens the same routes until the \
                 rotation ends"
                )
            });
        match (current, previous) {
            (Some(current), Some(previous)) => Some(format!("{current}; {previous}")),
            (current, previous) => current.or(previous),
        }
    }

    /// What the start-up log, each reload and `check-config` warn of (never a secret): a weak
    /// shared token, a users file without a user.
    pub fn warnings(&self) -> impl Iterator<Item = String> {
        let without_users = self
            .uc
            .as_ref()
            .and_then(|uc| uc.issuer.directory().without_users());
        [self.shared_token_warning(), without_users]
            .into_iter()
            .flatten()
    }

    /// How many users the users file holds; `None` without UC tokens or with a remote
    /// directory.
    pub fn listed_users(&self) -> Option<usize> {
        self.uc.as_ref()?.issuer.directory().listed()
    }

    /// The directory, described for the start-up log and `check-config` ("3 users in FILE").
    pub fn directory(&self) -> Option<String> {
        self.uc.as_ref().map(|uc| uc.issuer.directory().describe())
    }

    /// Ready to serve: everything needed to check credentials is loaded (the OpenID
    /// provider's keys are fetched after the start; the other instances' revocations are read
    /// from Redis after the start, unless it is unreachable).
    pub(crate) fn is_ready(&self) -> bool {
        self.uc
            .as_ref()
            .and_then(|uc| uc.oidc.as_ref())
            .is_none_or(Oidc::is_ready)
            && self.cluster.as_ref().is_none_or(Cluster::is_ready)
    }

    /// Checks a presented token: the shared token first (one comparison), then a UC token
    /// (see [`UcAuth::validate`]). `TokenInvalid` or `TokenExpired` when it is neither.
    pub(crate) async fn authenticate(
        &self,
        token: &str,
        client: IpAddr,
    ) -> Result<Credential, GateError> {
        if let Some(m) = self.shared.matches(token.as_bytes()) {
            return Ok(Credential::Shared(m));
        }
        match &self.uc {
            Some(uc) => Ok(Credential::Uc(uc.validate(token, client).await?)),
            None => Err(GateError::TokenInvalid),
        }
    }

    /// The claims of a UC token (see [`UcAuth::validate`]), for check and logout: the shared
    /// token is no UC token, and is refused here (`TokenInvalid`) before it could be sent to
    /// xuc. `NoRoute` without UC tokens.
    pub(crate) async fn uc_claims(
        &self,
        token: &str,
        client: IpAddr,
    ) -> Result<Arc<Claims>, GateError> {
        let uc = self.uc.as_ref().ok_or(GateError::NoRoute)?;
        if self.shared.matches(token.as_bytes()).is_some() {
            return Err(GateError::TokenInvalid);
        }
        uc.validate(token, client).await
    }
}
