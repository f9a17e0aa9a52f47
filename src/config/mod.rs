//! The configuration model: the TOML file parsed and validated once, here, into plain data.
//!
//! One file per section. Each section is strict (unknown keys are errors) and validated where it
//! is defined; [`Config::parse`] puts them together and checks the rules between sections (UC
//! tokens need a directory; exchanges need UC tokens). Nothing here reads a secret or opens a
//! connection: that is what `state` does with a [`Config`].

mod cas;
mod cluster;
mod cors;
mod kerberos;
mod ldap;
mod login;
mod oidc;
mod route;
mod server;
mod shared_token;
mod tokens;
mod users;
mod xuc;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use cas::{CasConfig, CasProtocol, ServicePattern};
pub use cluster::ClusterConfig;
pub use cors::CorsConfig;
pub use kerberos::KerberosConfig;
pub use ldap::LdapConfig;
pub use login::LoginConfig;
pub use oidc::OidcConfig;
pub use route::{Accept, CredentialKind, RouteConfig, UpstreamAuth, UpstreamUrl};
pub use server::{LogFormat, ServerConfig, TlsFiles};
pub use shared_token::SharedTokenConfig;
pub use tokens::{TokenAlgorithm, TokensConfig};
pub use users::{UsersConfig, UsersSource};
pub use xuc::{ProfilesFrom, XucConfig};

/// A configuration file that could not be used. `Display` is one line naming the file and, for
/// syntax errors, the line; for the rest, the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", file.display())]
    Unreadable {
        file: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type; `key` as written on that line.
    #[error("{}: line {line}, column {column}: {}{message}", file.display(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    /// Valid TOML that is not a valid configuration; `reason` starts with the key.
    #[error("{}: {reason}", file.display())]
    Invalid { file: PathBuf, reason: String },
}

/// A loaded and validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: ServerConfig,
    pub shared_token: SharedTokenConfig,
    /// UC tokens; absent = only the shared token opens routes. When present, `users` is too.
    pub tokens: Option<TokensConfig>,
    /// The user directory.
    pub users: Option<UsersConfig>,
    /// Passwords checked by an LDAP bind; only with `users`.
    pub ldap: Option<LdapConfig>,
    pub login: LoginConfig,
    pub kerberos: Option<KerberosConfig>,
    pub cas: Option<CasConfig>,
    pub oidc: Option<OidcConfig>,
    /// The web origins allowed to call from the browser.
    pub cors: Option<CorsConfig>,
    /// Revocations and lock-outs shared with the other instances; only with `tokens`.
    pub cluster: Option<ClusterConfig>,
    /// The site's xuc, whose tokens routes accepting `"uc"` accept too; only with `tokens`.
    pub xuc: Option<XucConfig>,
    pub routes: Vec<RouteConfig>,
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    shared_token: SharedTokenConfig,
    #[serde(default)]
    tokens: Option<tokens::RawTokens>,
    #[serde(default)]
    users: Option<users::RawUsers>,
    #[serde(default)]
    ldap: Option<ldap::RawLdap>,
    #[serde(default)]
    login: LoginConfig,
    #[serde(default)]
    kerberos: Option<KerberosConfig>,
    #[serde(default)]
    cas: Option<cas::RawCas>,
    #[serde(default)]
    oidc: Option<oidc::RawOidc>,
    #[serde(default)]
    cors: Option<cors::RawCors>,
    #[serde(default)]
    cluster: Option<ClusterConfig>,
    #[serde(default)]
    xuc: Option<xuc::RawXuc>,
    #[serde(default, rename = "route")]
    routes: Vec<route::RawRoute>,
}

/// A humantime duration ("30s", "8h"), for every duration key of the configuration.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        // The kind of mistake, never the text typed (or humantime's unit, a piece of it): a
        // secret pasted into the wrong key must not reach a log line.
        use humantime::DurationError as E;
        let kind = match e {
            E::InvalidCharacter(_) => "an invalid character",
            E::NumberExpected(_) => "a number expected",
            E::UnknownUnit { .. } => "an unknown unit",
            E::NumberOverflow => "too large",
            E::Empty => "empty",
        };
        serde::de::Error::custom(format!(
            "invalid duration ({kind}): a number and a unit, as \"30s\" or \"8h\""
        ))
    })
}

/// Checks that the duration `key` is `value` at most `max`, and more than zero unless
/// `zero_allowed`: "KEY: must be more than 0 and at most 1m" otherwise.
fn within(key: &str, value: Duration, zero_allowed: bool, max: Duration) -> Result<(), String> {
    if (value.is_zero() && !zero_allowed) || value > max {
        let low = if zero_allowed {
            "at least 0"
        } else {
            "more than 0"
        };
        return Err(format!(
            "{key}: must be {low} and at most {}",
            humantime::format_duration(max)
        ));
    }
    Ok(())
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Unreadable {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(file, &text)
    }

    /// Parses `text` as if read from `file` (relative paths resolve against its folder).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| syntax(file, text, &e))?;
        // Every key has a default, so an empty file would be a valid configuration without a
        // route: most likely a file caught while being written, which a reload must not load.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                reason: "the file holds no configuration (empty, or only comments)".into(),
            });
        }
        // `ucgate.toml` has the parent "", which is no folder to check: name it.
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::validate(file, raw, base).map_err(|reason| ConfigError::Invalid {
            file: file.to_owned(),
            reason,
        })
    }

    /// The sections one by one, then the rules between them. Errors start with the key.
    fn validate(file: &Path, raw: RawConfig, base: &Path) -> Result<Self, String> {
        let tokens = raw.tokens.map(|t| t.validate(base)).transpose()?;
        let users = raw.users.map(|u| u.validate(base)).transpose()?;
        if tokens.is_some() && users.is_none() {
            return Err("users: a [users] directory is needed to issue UC tokens".into());
        }
        let ldap = raw
            .ldap
            .map(|l| l.validate(base))
            .transpose()
            .map_err(|reason| format!("ldap.{reason}"))?;
        if ldap.is_some() && users.is_none() {
            return Err(
                "ldap: checks the passwords of the [users] directory, which is missing".into(),
            );
        }
        raw.login.validate()?;
        let in_section =
            |section: &'static str| move |reason: String| format!("{section}.{reason}");
        let kerberos = match raw.kerberos {
            Some(mut k) => Some(
                k.validate(base)
                    .map(|()| k)
                    .map_err(in_section("kerberos"))?,
            ),
            None => None,
        };
        let cas = raw
            .cas
            .map(|c| c.validate(base))
            .transpose()
            .map_err(in_section("cas"))?;
        let oidc = raw
            .oidc
            .map(|o| o.validate(base))
            .transpose()
            .map_err(in_section("oidc"))?;
        let xuc = raw
            .xuc
            .map(|x| x.validate(base))
            .transpose()
            .map_err(in_section("xuc"))?;
        // [xuc] lives beside ucgate's own UC tokens: their cache, revocations (ucgate's logout
        // of an xuc token) and directory (profiles) serve both.
        let exchanges = [
            ("kerberos", kerberos.is_some()),
            ("cas", cas.is_some()),
            ("oidc", oidc.is_some()),
            ("xuc", xuc.is_some()),
        ];
        if let (Some((section, _)), None) = (exchanges.iter().find(|(_, on)| *on), &tokens) {
            let why = match *section {
                "xuc" => "its tokens share the cache, revocations and directory of UC tokens",
                _ => "to issue UC tokens",
            };
            return Err(format!("{section}: needs a [tokens] section {why}"));
        }
        let cors = raw
            .cors
            .map(cors::RawCors::validate)
            .transpose()
            .map_err(in_section("cors"))?;
        if let Some(cluster) = &raw.cluster {
            cluster.validate().map_err(in_section("cluster"))?;
            if tokens.is_none() {
                return Err(
                    "cluster: shares UC token revocations and lock-outs, which need [tokens]"
                        .into(),
                );
            }
        }
        let (mut server, mut shared_token) = (raw.server, raw.shared_token);
        server.validate(base)?;
        shared_token.validate(base)?;
        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        for (i, raw) in raw.routes.into_iter().enumerate() {
            let route = raw
                .validate(tokens.is_some(), cors.is_some())
                .map_err(|(key, reason)| format!("route[{i}].{key}: {reason}"))?;
            if !names.insert(route.name.clone()) {
                return Err(format!(
                    "route[{i}].name: duplicate route name {:?}",
                    route.name
                ));
            }
            if !prefixes.insert(route.prefix.clone()) {
                return Err(format!(
                    "route[{i}].prefix: prefix {:?} is already used by another route",
                    route.prefix
                ));
            }
            routes.push(route);
        }
        Ok(Config {
            file: file.to_owned(),
            server,
            shared_token,
            tokens,
            users,
            ldap,
            login: raw.login,
            kerberos,
            cas,
            oidc,
            cors,
            cluster: raw.cluster,
            xuc,
            routes,
        })
    }

    /// The files whose change triggers a reload: this file, the users file, the env files, the
    /// CA bundles, the keytab, the TLS files.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.file.clone()];
        if let Some(UsersConfig {
            source: UsersSource::File(file),
            ..
        }) = &self.users
        {
            files.push(file.clone());
        }
        files.extend(self.ldap.as_ref().and_then(|l| l.ca.clone()));
        files.extend(self.shared_token.env_files.iter().cloned());
        files.extend(self.oidc.as_ref().and_then(|o| o.ca_bundle.clone()));
        files.extend(self.cas.as_ref().and_then(|c| c.ca_bundle.clone()));
        files.extend(self.xuc.as_ref().and_then(|x| x.ca_bundle.clone()));
        files.extend(self.kerberos.as_ref().map(|k| k.keytab.clone()));
        if let Some(tls) = &self.server.tls {
            files.extend([tls.cert.clone(), tls.key.clone()]);
        }
        files.extend(self.server.upstream_ca.iter().cloned());
        files
    }
}

/// A TOML or schema error, on one line: where it is, the key of that line, and what. (toml's
/// own `Display` spans several lines, with a snippet of the file.)
fn syntax(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = TomlErrorAt::new(text, e);
    ConfigError::Syntax {
        file: file.to_owned(),
        line: at.line,
        column: at.column,
        key: at.key,
        message: at.message,
    }
}

/// Where a TOML or schema error is and what it says, without the file's text: toml's own
/// `Display` quotes the offending line, which may hold a secret (a password written where its
/// hash belongs). Its `Display` is one line: `line L, column C: KEY: MESSAGE`.
#[derive(Debug)]
pub(crate) struct TomlErrorAt {
    pub line: usize,
    pub column: usize,
    /// The key of a `key = value` line, as written; never its value.
    pub key: Option<String>,
    /// toml's message on one line, string values it quotes replaced by "a string".
    pub message: String,
}

impl TomlErrorAt {
    pub(crate) fn new(text: &str, e: &toml::de::Error) -> Self {
        let mut offset = e.span().map_or(0, |span| span.start.min(text.len()));
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let (before, after) = text.split_at(offset);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_text = &text[line_start..offset + after.find('\n').unwrap_or(after.len())];
        // Only the key of a `key = value` line: values are not repeated (whatever they hold).
        let key = line_text
            .split_once('=')
            .map(|(key, _)| key.trim())
            .filter(|key| !key.is_empty() && key.len() <= 64 && !key.starts_with(['[', '#']))
            .map(str::to_owned);
        let mut message = without_quoted_values(e.message())
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        // `[route]` for `[[route]]` is the likeliest slip, and toml's words for it ("invalid
        // type: map", "duplicate key") do not say what to write.
        if line_text.trim() == "[route]" {
            message.push_str(" (each route is a [[route]] table, with double brackets)");
        }
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            key,
            message,
        }
    }
}

impl std::fmt::Display for TomlErrorAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}: ", self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// serde's messages that quote the value typed (`invalid type: integer `73519246``, `invalid
/// value: ...`, `unknown variant `...``, and the strings of [`without_quoted_strings`]), with
/// the value left out: a PIN typed where its hash belongs, or a secret pasted into the wrong
/// key, must not reach a log line. Field names (`unknown field `password``) are keys, and stay.
fn without_quoted_values(message: &str) -> String {
    let mut out = without_quoted_strings(message);
    for lead in ["invalid type: ", "invalid value: ", "unknown variant"] {
        let mut from = 0;
        while let Some(at) = out[from..].find(lead).map(|i| from + i) {
            // `unknown variant `X`` or `invalid type: KIND `X``: the value is the next
            // backticked text, up to ", expected" when there is one.
            let after = at + lead.len();
            let Some(open) = out[after..].find('`').map(|i| after + i) else {
                break;
            };
            let close = out[open..]
                .find("`, expected")
                .map(|i| open + i + 1)
                .or_else(|| out[open + 1..].find('`').map(|i| open + 1 + i + 1))
                .unwrap_or(out.len());
            let keep = out[..open].trim_end().len();
            out.replace_range(keep..close, "");
            from = keep;
        }
    }
    out
}

/// serde's "invalid type: string \"VALUE\", expected a boolean" quotes the value (a password
/// typed into the wrong key): `string "…"` becomes `a string`.
fn without_quoted_strings(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(MARK) {
        out.push_str(&rest[..start]);
        out.push_str("a string");
        // The value is Debug-escaped: it ends at the first quote not preceded by a backslash.
        let value = &rest[start + MARK.len()..];
        let mut escaped = false;
        let end = value
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(value.len(), |(i, _)| i + 1);
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ucgate/ucgate.toml"), text)
    }

    const ROUTE: &str = r#"
[tokens]
[users]
file = "users.toml"
[[route]]
name = "configmgt"
prefix = "/configmgt"
upstream = "http://127.0.0.1:9100"
accept = ["shared", "uc"]
upstream_auth = "shared"
"#;

    /// Values typed into the wrong key, or of the wrong type, are not repeated: a PIN where
    /// a hash belongs, a secret pasted into a variant.
    #[test]
    fn errors_do_not_repeat_values() {
        for (text, secret) in [
            ("[server]\nidle_timeout = \"hunter4secret\"\n", "secret"),
            ("[server]\nidle_timeout = \"4secret\"\n", "secret"),
            ("[server]\nlog_format = \"Secr3tPass\"\n", "Secr3tPass"),
            ("[server]\nmax_headers = \"Secr3tPass\"\n", "Secr3tPass"),
            ("[server]\nmax_headers = 73519246.5\n", "73519246"),
            ("[server]\nlog_format = 73519246\n", "73519246"),
            ("[tokens]\nsigning_key_env = 98765432\n", "98765432"),
            ("[tokens]\nalgorithm = \"Secr3tPass\"\n", "Secr3tPass"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(!e.contains(secret), "{text:?}: {e}");
            let key = text.lines().nth(1).unwrap().split(" =").next().unwrap();
            assert!(e.contains(key), "names the key {key}: {e}");
        }
        // Field names are keys, and stay.
        let e = parse("[server]\nlisten_on = 1\n").unwrap_err().to_string();
        assert!(e.contains("listen_on"), "{e}");
        assert_eq!(
            without_quoted_values("unknown variant `x`, expected `text` or `json`"),
            "unknown variant, expected `text` or `json`"
        );
        assert_eq!(
            without_quoted_values("invalid type: integer `1`, expected a string"),
            "invalid type: integer, expected a string"
        );
    }

    #[test]
    fn a_route_in_single_brackets_says_to_double_them() {
        let route = "[route]\nname = \"a\"\nprefix = \"/a/\"\nupstream = \"http://127.0.0.1:1\"\n";
        for text in [route.to_owned(), format!("{route}{route}")] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("[[route]] table"), "{e}");
        }
    }

    #[test]
    fn a_file_without_configuration_is_refused() {
        for text in ["", "\n  \n", "# only\n  # comments\n"] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("holds no configuration"), "{text:?}: {e}");
        }
        assert!(parse("# a comment, then\n[server]\n").is_ok());
    }

    /// A ttl longer than the sessions is named as what is set too long, with both durations.
    #[test]
    fn a_ttl_past_max_session_names_both() {
        let text = ROUTE.replace("[tokens]\n", "[tokens]\nttl = \"1M\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("tokens.ttl: 1month") && e.contains("(7days)"),
            "{e}"
        );
    }

    #[test]
    fn client_timeouts_have_defaults_and_must_not_be_zero() {
        let c = parse(ROUTE).unwrap();
        assert_eq!(c.server.request_header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.request_body_timeout, Duration::from_secs(60));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.send_timeout, Duration::from_secs(60));
        for key in [
            "request_header_timeout",
            "request_body_timeout",
            "idle_timeout",
            "send_timeout",
        ] {
            let err = parse(&format!("[server]\n{key} = \"0s\"\n{ROUTE}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("server.{key}: must be more than zero")),
                "{err}"
            );
        }
    }

    #[test]
    fn defaults_and_route() {
        let c = parse(ROUTE).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.shared_token.env, "PLAY_AUTH_TOKEN");
        let r = &c.routes[0];
        assert_eq!(r.prefix, "/configmgt/");
        assert_eq!(r.upstream.to_string(), "http://127.0.0.1:9100");
        assert_eq!(r.timeout, Duration::from_secs(30));
        assert!(r.accept.shared && r.accept.uc);
    }

    #[test]
    fn env_files_resolve_against_config_folder() {
        let c = parse("[shared_token]\nenv_files = [\"custom.env\", \"/abs.env\"]").unwrap();
        assert_eq!(
            c.shared_token.env_files,
            vec![
                PathBuf::from("/etc/ucgate/custom.env"),
                PathBuf::from("/abs.env")
            ]
        );
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = error("[server]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n");
        assert!(e.starts_with("/etc/ucgate/ucgate.toml: "), "{e}");
        assert!(e.contains("line 3") && e.contains("lisen"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = error("[server]\nshutdown_grace = \"3 parsecs\"\n");
        assert!(
            e.contains("line 2, column 18: shutdown_grace: invalid duration"),
            "{e}"
        );
        let e = error("[server\n");
        assert!(e.contains("line 1, column 8: unclosed table"), "{e}");
    }

    #[test]
    fn invalid_values_are_refused_with_a_reason() {
        assert!(error("[server]\nshutdown_grace = \"3 parsecs\"").contains("invalid duration"));
        let bad_upstream = ROUTE.replace("http://127.0.0.1:9100", "ftp://x");
        assert!(error(&bad_upstream).contains("route[0].upstream"));
        let with_path = ROUTE.replace("9100\"", "9100/api\"");
        assert!(error(&with_path).contains("must not have a path"));
        let traversal = ROUTE.replace("\"/configmgt\"", "\"/a/../configmgt\"");
        assert!(error(&traversal).contains("route[0].prefix"));
        let public_shared = ROUTE.replace("[\"shared\", \"uc\"]", "[]");
        assert!(error(&public_shared).contains("route[0].upstream_auth"));
        let second = ROUTE.split_once("[[route]]").unwrap().1;
        assert!(error(&format!("{ROUTE}[[route]]{second}")).contains("route[1].name: duplicate"));
        let bad_kind = ROUTE.replace("\"uc\"]", "\"kerberos\"]");
        let e = error(&bad_kind);
        assert!(e.contains("accept") && e.contains("unknown variant"), "{e}");
        let no_auth = ROUTE.replace("upstream_auth = \"shared\"", "");
        assert!(error(&no_auth).contains("upstream_auth"));
        let no_tokens = ROUTE.replace("[tokens]\n", "");
        assert!(error(&no_tokens).contains("route[0].accept: \"uc\" needs a [tokens] section"));
        let no_users = ROUTE.replace("[users]\nfile = \"users.toml\"\n", "");
        assert!(error(&no_users).contains("users:"));
        let foreign_profiles = ROUTE.replace(
            "[\"shared\", \"uc\"]",
            "[\"shared\"]\nprofiles = [\"admin\"]",
        );
        assert!(error(&foreign_profiles).contains("route[0].profiles"));
        assert!(
            error("[tokens]\nalgorithm = \"none\"\n[users]\nfile = \"u\"")
                .contains("tokens.algorithm")
        );
        assert!(
            error("[tokens]\nalgorithm = \"EdDSA\"\n[users]\nfile = \"u\"").contains("private_key")
        );
        assert!(error("[login]\nmax_failures = 0").contains("login.max_failures"));
        assert!(
            error("[cas]\nserver = \"https://c.example/cas\"\nallowed_services = [\"https://x.example/\"]")
                .contains("cas: needs a [tokens] section")
        );
    }
}
