//! The deployment files agree with each other: the compose file parses, mounts every file the
//! example configuration names where the configuration expects it, and passes the environment
//! it needs; the image runs that configuration as an unprivileged user. The replicated setup
//! (`deploy/replicas/`) runs three instances on a configuration `check-config` accepts, sharing a
//! signing key and a Redis, behind an HAProxy that health-checks each of them on `/readyz`; the
//! Grafana dashboard (`deploy/grafana/`) queries only metrics a running ucgate exports. (No
//! Docker engine runs here, so this is as far as the files can be checked.)

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use common::{
    BOUND, ConfigBuilder, SHARED_TOKEN, Ucgate, UcgateBuilder, Upstream, X_AUTH_TOKEN, client,
    closed_url, route,
};
use serde_yaml_ng::Value;
use ucgate::config::{Config, TokenAlgorithm};

const CONFIG_IN_IMAGE: &str = "/etc/ucgate/ucgate.toml";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn compose_service() -> Value {
    let text = std::fs::read_to_string(deploy("docker-compose.yml")).unwrap();
    let compose: Value = serde_yaml_ng::from_str(&text).expect("docker-compose.yml parses");
    compose["services"]["ucgate"].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("a list, not {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// Mount destination → source, sources resolved against deploy/ like compose does. Named
/// volumes (a source without a slash) are left out: compose creates them.
fn mounts(service: &Value) -> HashMap<PathBuf, PathBuf> {
    mounts_relative_to(service, &deploy(""))
}

/// [`mounts`] of a compose file in `dir`: relative sources resolve against it.
fn mounts_relative_to(service: &Value, dir: &Path) -> HashMap<PathBuf, PathBuf> {
    strings(&service["volumes"])
        .iter()
        .filter(|m| m.split(':').next().is_some_and(|src| src.contains('/')))
        .map(|m| {
            let mut parts = m.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().expect("src:dst"));
            let src = if src.starts_with('/') {
                PathBuf::from(src)
            } else {
                lexical(&dir.join(src))
            };
            (PathBuf::from(dst), src)
        })
        .collect()
}

/// `path` without its `.` and `..` components (`deploy/replicas/../users.toml` →
/// `deploy/users.toml`), as compose resolves a relative source.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[test]
fn compose_mounts_what_the_configuration_names() {
    let service = compose_service();
    let mounts = mounts(&service);
    let config_src = mounts
        .get(Path::new(CONFIG_IN_IMAGE))
        .expect("the configuration is mounted");
    let text = std::fs::read_to_string(config_src).unwrap();
    let config = Config::parse(Path::new(CONFIG_IN_IMAGE), &text)
        .expect("the mounted configuration is valid");

    let mut needed: Vec<PathBuf> = config
        .users
        .iter()
        .filter_map(|u| match &u.source {
            ucgate::config::UsersSource::File(file) => Some(file.clone()),
            ucgate::config::UsersSource::Database { .. } => None,
        })
        .collect();
    needed.extend(config.shared_token.env_files.iter().cloned());
    if let Some(tls) = &config.server.tls {
        needed.extend([tls.cert.clone(), tls.key.clone()]);
    }
    needed.extend(config.server.upstream_ca.iter().cloned());
    assert!(!needed.is_empty());
    for file in &needed {
        let src = mounts
            .get(file)
            .unwrap_or_else(|| panic!("{} is named by the config but not mounted", file.display()));
        if src.starts_with(deploy("")) {
            assert!(
                src.exists(),
                "{} is mounted from {}, which is not in the repository",
                file.display(),
                src.display()
            );
        }
    }
    for src in mounts.values().filter(|s| s.starts_with(deploy(""))) {
        assert!(src.exists(), "{} is mounted but missing", src.display());
    }
}

#[test]
fn compose_passes_the_environment_the_configuration_reads() {
    let service = compose_service();
    let text = std::fs::read_to_string(deploy("ucgate.toml")).unwrap();
    let config = Config::parse(Path::new(CONFIG_IN_IMAGE), &text).unwrap();
    let env_files = strings(&service["env_file"]);
    // PLAY_AUTH_TOKEN comes from the same custom.env as the XiVO services.
    assert!(
        env_files
            .iter()
            .any(|f| f == "/etc/docker/compose/custom.env"),
        "{env_files:?}"
    );
    let environment = service["environment"]
        .as_mapping()
        .expect("environment is a map");
    let has = |k: &str| environment.contains_key(Value::String(k.into()));
    if let Some(TokenAlgorithm::Hs256 { signing_key_env }) =
        config.tokens.as_ref().map(|t| &t.algorithm)
    {
        assert!(has(signing_key_env), "{signing_key_env} is not passed");
    }
    assert!(
        has("UCGATE_LISTEN"),
        "the container must listen beyond loopback"
    );
    assert_eq!(
        service["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    assert!(deploy("Dockerfile").exists());
}

#[test]
fn the_image_runs_the_mounted_configuration_unprivileged() {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let final_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        final_stage.starts_with("debian:") && final_stage.contains("slim"),
        "small final image"
    );
    let user = final_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line in the final stage");
    assert!(
        user.trim() != "root" && user.trim() != "0",
        "runs as {user}"
    );
    assert!(
        final_stage.contains(CONFIG_IN_IMAGE),
        "CMD reads the mounted configuration"
    );
    assert!(
        final_stage.contains("libgssapi-krb5-2"),
        "the Kerberos runtime library is in the image"
    );
    // The image ships what the benchmarks measure: the production profile, as Cargo.toml
    // defines it.
    assert!(
        dockerfile.contains("cargo build --profile production")
            && final_stage.contains("/src/target/production/ucgate "),
        "{dockerfile}"
    );
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[profile.production]"), "{manifest}");
}

#[test]
fn the_revocations_file_has_a_writable_volume_in_the_read_only_container() {
    let service = compose_service();
    assert_eq!(service["read_only"].as_bool(), Some(true));
    let state = "/var/lib/ucgate";
    assert!(
        strings(&service["volumes"])
            .iter()
            .any(|m| m.split(':').nth(1) == Some(state)),
        "no volume at {state}"
    );
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("install -d -o ucgate -g ucgate -m 0700 {state}")),
        "{state} is created for the unprivileged user, so that the volume starts owned by it"
    );
    let example = std::fs::read_to_string(deploy("ucgate.toml")).unwrap();
    assert!(
        example.contains(&format!("revocations_file = \"{state}/revocations.json\"")),
        "the example names the volume"
    );
}

/// The image's `ENTRYPOINT` + `CMD`, as JSON arrays (exec form).
fn image_command() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let final_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    ["ENTRYPOINT ", "CMD "]
        .iter()
        .flat_map(|instruction| {
            let json = final_stage
                .lines()
                .find_map(|l| l.strip_prefix(instruction))
                .unwrap_or_else(|| panic!("no {instruction}in the final stage"));
            serde_json::from_str::<Vec<String>>(json)
                .unwrap_or_else(|e| panic!("{instruction}{json} is not the exec form: {e}"))
        })
        .collect()
}

/// Issue 19: what the image runs, with the environment compose gives it, is a command `ucgate
/// check-config` accepts on the mounted configuration; the ports compose, the image and the
/// configuration name agree, and the operator's listener stays on the host's loopback.
#[test]
fn the_image_command_and_ports_agree_with_the_configuration() {
    let service = compose_service();
    let command = image_command();
    assert_eq!(
        command.first().map(String::as_str),
        Some("/usr/local/bin/ucgate")
    );
    assert_eq!(
        command.last().map(String::as_str),
        Some("run"),
        "{command:?}"
    );
    let config_at = command
        .iter()
        .position(|a| a == "--config")
        .map(|i| &command[i + 1])
        .expect("--config in the image command");
    assert_eq!(config_at, CONFIG_IN_IMAGE);

    // The same arguments, `run` replaced by `check-config`, on the mounted files: custom.env is
    // the XiVO host's, so the test gives its variables in the environment instead.
    let mounts = mounts(&service);
    let source = &mounts[Path::new(CONFIG_IN_IMAGE)];
    let environment = service["environment"].as_mapping().unwrap();
    let listen = environment[&Value::String("UCGATE_LISTEN".into())]
        .as_str()
        .expect("UCGATE_LISTEN is a string")
        .to_owned();
    let mut args: Vec<String> = command[1..command.len() - 1].to_vec();
    let i = args.iter().position(|a| a == "--config").unwrap();
    args[i + 1] = source.display().to_string();
    args.push("check-config".into());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ucgate"))
        .args(&args)
        .env_clear()
        .env("UCGATE_LISTEN", &listen)
        .env("PLAY_AUTH_TOKEN", SHARED_TOKEN)
        .env(
            "UCGATE_SIGNING_KEY",
            "deploy-signing-key-0123456789abcdef0123456789",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ucgate {args:?}: {stdout}{stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");

    let text = std::fs::read_to_string(source).unwrap();
    let config = Config::parse(Path::new(CONFIG_IN_IMAGE), &text).unwrap();
    let listen: std::net::SocketAddr = listen.parse().expect("UCGATE_LISTEN is one address");
    let port = listen.port();
    assert!(
        config.server.listen.iter().all(|a| a.port() == port),
        "compose listens on {port}, the configuration on {:?}",
        config.server.listen
    );
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("\nEXPOSE {port}\n")),
        "EXPOSE {port}"
    );
    let admin = config
        .server
        .admin_listen
        .expect("the example has an operator's listener");
    assert!(
        admin.ip().is_loopback(),
        "metrics stay on loopback: {admin}"
    );
    assert_ne!(admin.port(), port);
    // Loopback upstreams (configmgt 9100, recording 9400) are the host's only with its network.
    assert_eq!(service["network_mode"].as_str(), Some("host"));
    for (name, upstream_port) in [("configmgt", 9100), ("recording", 9400)] {
        let route = config
            .routes
            .iter()
            .find(|r| &*r.name == name)
            .unwrap_or_else(|| panic!("no {name} route"));
        let url = route.upstream.to_string();
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{upstream_port}")),
            "{name}: {url}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// deploy/replicas: three instances behind HAProxy, sharing a signing key and a Redis
// ---------------------------------------------------------------------------------------------

/// `deploy/replicas/docker-compose.yml`, its `<<: *anchor` merge keys applied as compose does.
fn replicas_compose() -> Value {
    let text = std::fs::read_to_string(deploy("replicas/docker-compose.yml")).unwrap();
    let mut compose: Value =
        serde_yaml_ng::from_str(&text).expect("replicas/docker-compose.yml parses");
    compose.apply_merge().expect("its merge keys apply");
    compose
}

/// The services of `compose` by name.
fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services is a map")
        .iter()
        .map(|(k, v)| (k.as_str().expect("a service name").to_owned(), v.clone()))
        .collect()
}

/// The services that run ucgate: built from its Dockerfile.
fn ucgate_services(compose: &Value) -> BTreeMap<String, Value> {
    services(compose)
        .into_iter()
        .filter(|(_, s)| s["build"]["dockerfile"].as_str() == Some("deploy/Dockerfile"))
        .collect()
}

/// A service's `environment` map, as written (before interpolation).
fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .expect("environment is a map")
        .iter()
        .map(|(k, v)| {
            let value = v.as_str().unwrap_or_else(|| panic!("{k:?}: a string"));
            (k.as_str().unwrap().to_owned(), value.to_owned())
        })
        .collect()
}

/// A dummy value for a compose variable: URL-safe (it may go into a `redis://` URL as the
/// password) and longer than 32 bytes (it may be the HS256 key).
fn dummy(variable: &str) -> String {
    format!(
        "dummy-{}-0123456789abcdef0123456789abcdef",
        variable.to_lowercase()
    )
}

/// Compose's interpolation of `${VAR}`, `${VAR:?message}`, `${VAR:-default}` ... and `$$`,
/// every variable taking its [`dummy`] value. The variables met are added to `seen`.
fn interpolate(text: &str, seen: &mut BTreeSet<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .expect("an unterminated ${ in the compose file");
            let name_end = inner[..end].find([':', '?', '-', '+']).unwrap_or(end);
            let name = &inner[..name_end];
            assert!(!name.is_empty(), "an empty variable name in {text:?}");
            seen.insert(name.to_owned());
            out.push_str(&dummy(name));
            rest = &inner[end + 1..];
        } else {
            panic!("unbraced $ in {text:?}: write ${{VAR}} or $$");
        }
    }
    out.push_str(rest);
    out
}

/// The variables a compose string refers to (`${NAME...}`).
fn variables(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    interpolate(text, &mut seen);
    seen
}

#[test]
fn replicas_compose_runs_redis_three_hardened_ucgates_and_haproxy() {
    let compose = replicas_compose();
    let services = services(&compose);
    let ucgates = ucgate_services(&compose);
    assert_eq!(
        ucgates.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ucgate-1", "ucgate-2", "ucgate-3"],
        "three ucgate services"
    );
    let base = compose_service();
    for (name, service) in &ucgates {
        // The image of deploy/docker-compose.yml, built from the repository's root.
        assert_eq!(service["image"], base["image"], "{name}");
        assert_eq!(service["build"]["dockerfile"], base["build"]["dockerfile"]);
        let context = service["build"]["context"].as_str().expect("a context");
        assert_eq!(
            lexical(&deploy("replicas").join(context)),
            lexical(&deploy("..")),
            "{name}: built from the repository"
        );
        // Its hardening.
        assert_eq!(service["read_only"].as_bool(), Some(true), "{name}");
        assert!(
            strings(&service["tmpfs"])
                .iter()
                .any(|t| t.starts_with("/tmp")),
            "{name}: a tmpfs /tmp"
        );
        assert_eq!(strings(&service["cap_drop"]), ["ALL"], "{name}");
        assert!(
            strings(&service["security_opt"])
                .iter()
                .any(|o| o == "no-new-privileges:true"),
            "{name}"
        );
        assert_eq!(service["stop_grace_period"], base["stop_grace_period"]);
        assert!(
            strings(&service["extra_hosts"]).contains(&"host.docker.internal:host-gateway".into()),
            "{name}: the upstreams are on the Docker host"
        );
        assert!(
            service.get("ports").is_none(),
            "{name}: reached through HAProxy only"
        );
        // A state volume of its own (revocations file, Kerberos replay cache).
        let state: Vec<String> = strings(&service["volumes"])
            .into_iter()
            .filter(|m| m.split(':').nth(1) == Some("/var/lib/ucgate"))
            .collect();
        assert_eq!(state.len(), 1, "{name}: one volume at /var/lib/ucgate");
        for (other, s) in ucgates.iter().filter(|(n, _)| *n != name) {
            assert!(
                !strings(&s["volumes"]).contains(&state[0]),
                "{name} and {other} share {}",
                state[0]
            );
        }
    }

    let redis = &services["redis"];
    assert!(
        redis["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("redis:7")),
        "{:?}",
        redis["image"]
    );
    assert!(
        redis.get("ports").is_none(),
        "Redis is not published on the host"
    );
    let command = strings(&redis["command"]);
    let after = |flag: &str| {
        command
            .iter()
            .position(|a| a == flag)
            .and_then(|i| command.get(i + 1))
            .unwrap_or_else(|| panic!("no {flag} VALUE in {command:?}"))
            .clone()
    };
    assert_eq!(after("--appendonly"), "yes");
    assert!(
        !variables(&after("--requirepass")).is_empty(),
        "the password comes from the environment, not the file"
    );
    assert!(
        !strings(&redis["healthcheck"]["test"]).is_empty(),
        "Redis has a healthcheck"
    );

    let haproxy = &services["haproxy"];
    assert!(
        haproxy["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("haproxy:")),
        "{:?}",
        haproxy["image"]
    );
    assert!(
        strings(&haproxy["ports"]).contains(&"8080:8080".into()),
        "HAProxy publishes the host's port 8080"
    );
    let mounted = mounts_relative_to(haproxy, &deploy("replicas"));
    assert_eq!(
        mounted.get(Path::new("/usr/local/etc/haproxy/haproxy.cfg")),
        Some(&deploy("replicas/haproxy.cfg"))
    );
}

/// Runs `check-config` on what `service` mounts at [`CONFIG_IN_IMAGE`], laid out as in the
/// container: the files mounted beside it are copied beside it, a named volume is a folder, and
/// the environment is the service's (interpolated with [`dummy`] values) plus `PLAY_AUTH_TOKEN`
/// (the harness's), which comes from custom.env. Returns the parsed configuration.
fn check_replica(name: &str, service: &Value) -> Config {
    let dir = deploy("replicas");
    let mounted = mounts_relative_to(service, &dir);
    let config_src = mounted
        .get(Path::new(CONFIG_IN_IMAGE))
        .unwrap_or_else(|| panic!("{name}: the configuration is mounted"));
    let mut text = std::fs::read_to_string(config_src).unwrap();
    let config =
        Config::parse(Path::new(CONFIG_IN_IMAGE), &text).unwrap_or_else(|e| panic!("{name}: {e}"));

    let in_image = Path::new(CONFIG_IN_IMAGE).parent().unwrap();
    let mut builder_files: Vec<(String, Vec<u8>)> = Vec::new();
    for (dst, src) in &mounted {
        if src.starts_with(deploy("")) {
            assert!(
                src.exists(),
                "{name}: {} is mounted but missing",
                src.display()
            );
        }
        if let Ok(beside) = dst.strip_prefix(in_image)
            && dst != Path::new(CONFIG_IN_IMAGE)
        {
            builder_files.push((beside.display().to_string(), std::fs::read(src).unwrap()));
        }
    }
    // Named volumes: compose creates them; here, a folder beside the config.
    for (i, m) in strings(&service["volumes"]).iter().enumerate() {
        let mut parts = m.split(':');
        let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
        if !src.contains('/') {
            let folder = format!("volume{i}");
            text = text.replace(&format!("\"{dst}/"), &format!("\"{folder}/"));
            builder_files.push((format!("{folder}/.created-by-compose"), Vec::new()));
        }
    }

    let mut builder = UcgateBuilder::new(text);
    for (path, contents) in &builder_files {
        builder = builder.file(path, contents);
    }
    let mut seen = BTreeSet::new();
    let mut secrets = vec![SHARED_TOKEN.to_owned()];
    for (key, value) in environment(service) {
        let value = interpolate(&value, &mut seen);
        secrets.push(value.clone());
        builder = builder.env(&key, &value);
    }
    let out = builder.run(&["check-config"]);
    assert_eq!(
        out.code(),
        Some(0),
        "{name}: check-config refuses the mounted configuration:\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("is valid"), "{}", out.stdout);
    for route in &config.routes {
        assert!(out.stdout.contains(&*route.name), "{}", out.stdout);
    }
    let all = format!("{}{}", out.stdout, out.stderr);
    for secret in &secrets {
        assert!(
            !all.contains(secret.as_str()),
            "{name}: a secret is printed:\n{all}"
        );
    }
    config
}

#[test]
fn every_replica_mounts_a_cluster_configuration_check_config_accepts() {
    let compose = replicas_compose();
    let services = services(&compose);
    let ucgates = ucgate_services(&compose);
    assert!(!ucgates.is_empty());
    let redis_password = {
        let command = strings(&services["redis"]["command"]);
        let i = command
            .iter()
            .position(|a| a == "--requirepass")
            .expect("redis requires a password");
        command[i + 1].clone()
    };
    let subnets: Vec<String> = compose["networks"]
        .as_mapping()
        .expect("a network of its own")
        .values()
        .flat_map(|n| {
            n["ipam"]["config"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["subnet"].as_str().map(str::to_owned))
        .collect();
    assert!(!subnets.is_empty(), "the network's subnet is fixed");

    let mut signing_keys = BTreeSet::new();
    for (name, service) in &ucgates {
        let config = check_replica(name, service);
        let env = environment(service);
        // PLAY_AUTH_TOKEN comes from XiVO's custom.env, as for the other XiVO services.
        assert!(
            strings(&service["env_file"])
                .iter()
                .any(|f| f == "/etc/docker/compose/custom.env"),
            "{name}"
        );

        // [cluster], its URL passed and pointing at the compose file's Redis with its password.
        let cluster = config
            .cluster
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no [cluster]"));
        let url = env.get(&cluster.redis_url_env).unwrap_or_else(|| {
            panic!(
                "{name}: {} is not in the environment",
                cluster.redis_url_env
            )
        });
        let parsed = url::Url::parse(&interpolate(url, &mut BTreeSet::new()))
            .unwrap_or_else(|e| panic!("{name}: {url}: {e}"));
        assert!(matches!(parsed.scheme(), "redis" | "rediss"), "{url}");
        let host = parsed.host_str().unwrap_or_default();
        assert!(
            services.contains_key(host),
            "{name}: {url} names {host:?}, not a service"
        );
        assert_eq!(
            parsed.password().map(str::to_owned),
            Some(interpolate(&redis_password, &mut BTreeSet::new())),
            "{name}: {url} has Redis's password"
        );

        // The same signing key everywhere.
        let Some(TokenAlgorithm::Hs256 { signing_key_env }) =
            config.tokens.as_ref().map(|t| &t.algorithm)
        else {
            panic!("{name}: HS256 UC tokens");
        };
        let key = env
            .get(signing_key_env)
            .unwrap_or_else(|| panic!("{name}: {signing_key_env} is not passed"));
        assert!(
            !variables(key).is_empty(),
            "{name}: the key is not in the file"
        );
        signing_keys.insert((signing_key_env.clone(), key.clone()));

        // HAProxy's forwarding headers are believed from the compose network, no wider.
        assert!(config.server.trust_forwarded_headers, "{name}");
        let trusted: Vec<String> = config
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(!trusted.is_empty(), "{name}: trusted_proxies is listed");
        assert!(
            trusted.iter().all(|t| subnets.contains(t)),
            "{name}: trusted_proxies {trusted:?} is not the compose network {subnets:?}"
        );
        assert!(
            config.server.listen.iter().all(|a| a.ip().is_unspecified()),
            "{name}: listens beyond the container's loopback"
        );
    }
    assert_eq!(
        signing_keys.len(),
        1,
        "the instances must share one signing key: {signing_keys:?}"
    );
}

/// `haproxy.cfg` as sections: the header line and its lines, comments and blank lines dropped.
fn haproxy_sections() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(deploy("replicas/haproxy.cfg")).unwrap();
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let code = match line
            .find(" #")
            .or(line.trim_start().starts_with('#').then_some(0))
        {
            Some(i) => &line[..i],
            None => line,
        };
        if code.trim().is_empty() {
            continue;
        }
        if code.starts_with(char::is_whitespace) {
            sections
                .last_mut()
                .expect("a line before the first section")
                .1
                .push(code.trim().to_owned());
        } else {
            sections.push((code.trim().to_owned(), Vec::new()));
        }
    }
    sections
}

/// The variables of an HAProxy `log-format` line: `%ci`, `%{+Q}r` (as `r`), `%[sample]` (as
/// `[sample]`).
fn log_format_variables(line: &str) -> Vec<String> {
    let mut variables = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find('%') {
        let mut after = &rest[i + 1..];
        if let Some(flags) = after.strip_prefix('{') {
            after = &flags[flags.find('}').map_or(0, |e| e + 1)..];
        }
        let variable: String = if after.starts_with('[') {
            after[..after.find(']').map_or(after.len(), |e| e + 1)].to_owned()
        } else {
            after
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect()
        };
        rest = &after[variable.len()..];
        variables.push(variable);
    }
    variables
}

#[test]
fn haproxy_health_checks_readyz_on_every_replica_and_keeps_tokens_out_of_its_logs() {
    let compose = replicas_compose();
    let ucgates = ucgate_services(&compose);
    let sections = haproxy_sections();
    let section = |header: &str| -> Vec<String> {
        sections
            .iter()
            .find(|(h, _)| h == header)
            .unwrap_or_else(|| panic!("no `{header}` section"))
            .1
            .clone()
    };
    let defaults = section("defaults");
    let replica_config = std::fs::read_to_string(deploy("replicas/ucgate.toml")).unwrap();
    let replica_config = Config::parse(Path::new(CONFIG_IN_IMAGE), &replica_config).unwrap();
    let admin_port = replica_config
        .server
        .admin_listen
        .expect("the replicas have an operator's listener")
        .port();
    // Prometheus's ports reach each instance's operator's listener.
    for (i, name) in ucgates.keys().enumerate() {
        let metrics = section(&format!("backend metrics-{name}"));
        assert_eq!(
            metrics,
            [format!(
                "server {name} {name}:{admin_port} resolvers docker init-addr libc,none"
            )],
            "metrics port {}",
            9181 + i
        );
    }

    // The backend that health-checks /readyz, 200 expected (200 "degraded" stays in).
    let checked: Vec<&(String, Vec<String>)> = sections
        .iter()
        .filter(|(h, lines)| {
            h.starts_with("backend ")
                && lines.iter().any(|l| {
                    l.starts_with("http-check send ")
                        && l.contains("meth GET")
                        && l.split_whitespace()
                            .collect::<Vec<_>>()
                            .windows(2)
                            .any(|w| w == ["uri", "/readyz"])
                })
        })
        .collect();
    assert_eq!(checked.len(), 1, "one backend checks /readyz");
    let (header, lines) = checked[0];
    let backend = header.strip_prefix("backend ").unwrap().trim();
    assert!(lines.contains(&"option httpchk".to_owned()), "{lines:?}");
    assert!(
        lines.contains(&"http-check expect status 200".to_owned()),
        "{lines:?}"
    );
    let servers: BTreeMap<String, Vec<String>> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("server "))
        .map(|l| {
            let words: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            (words[0].clone(), words)
        })
        .collect();
    for name in ucgates.keys() {
        let words = servers
            .get(name)
            .unwrap_or_else(|| panic!("backend {backend}: no server {name}"));
        assert_eq!(
            words[1],
            format!("{name}:8080"),
            "the compose service's port"
        );
        assert!(words.contains(&"check".to_owned()), "{name}: {words:?}");
        // /readyz is answered on the operator's listener only (404 on 8080).
        let admin_port = admin_port.to_string();
        for (key, value) in [
            ("inter", "2s"),
            ("fall", "2"),
            ("rise", "2"),
            ("port", admin_port.as_str()),
        ] {
            assert!(
                words.windows(2).any(|w| w[0] == key && w[1] == value),
                "{name}: no `{key} {value}` in {words:?}"
            );
        }
    }
    assert!(
        servers.keys().all(|s| ucgates.contains_key(s)),
        "backend {backend} serves {:?}, not only {:?}",
        servers.keys(),
        ucgates.keys()
    );
    assert!(
        lines
            .iter()
            .chain(&defaults)
            .any(|l| l == "option redispatch"),
        "option redispatch"
    );

    // The clients' frontend: the published port, X-Forwarded-For added, clients' forwarding
    // headers dropped (ucgate believes HAProxy's).
    let (front_header, front) = sections
        .iter()
        .find(|(h, lines)| {
            h.starts_with("frontend ") && lines.contains(&format!("default_backend {backend}"))
        })
        .expect("a frontend sends clients to the checked backend");
    assert!(
        front.contains(&"bind :8080".to_owned()),
        "{front_header}: {front:?}"
    );
    assert!(
        front
            .iter()
            .chain(lines)
            .chain(&defaults)
            .any(|l| l.starts_with("option forwardfor")),
        "option forwardfor"
    );
    assert!(
        front
            .iter()
            .any(|l| l.starts_with("http-request del-header ") && l.contains("forwarded")),
        "{front_header}: a client's own X-Forwarded-* are dropped"
    );

    // No token added or logged: no X-Auth-Token, no captured header, no request line or query
    // string in the log (a `token` parameter carries tokens).
    for (header, lines) in &sections {
        for line in lines {
            assert!(
                !line.to_lowercase().contains("x-auth-token"),
                "{header}: {line}"
            );
            assert!(
                !line.contains("capture request header")
                    && !line.starts_with("http-request capture"),
                "{header}: {line}"
            );
            assert!(
                !line.starts_with("option httplog") && !line.starts_with("option httpslog"),
                "{header}: {line}: the default HTTP log line has the query string"
            );
            if line.starts_with("log-format") {
                for variable in log_format_variables(line) {
                    assert!(
                        !matches!(variable.as_str(), "r" | "HU" | "HQ")
                            && !["query", "url", "hdr", "capture"]
                                .iter()
                                .any(|w| variable.contains(w)),
                        "{header}: %{variable} logs the request line, its query or a header: {line}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// deploy/grafana: the dashboard queries what ucgate exports
// ---------------------------------------------------------------------------------------------

/// Every string under a key named `key`, anywhere in `value`.
fn json_strings(value: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k == key => out.push(s.clone()),
                    v => json_strings(v, key, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, key, out)),
        _ => {}
    }
}

/// The `ucgate_[a-z_]+` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ucgate_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

/// The label names a PromQL expression uses: `by (a, b)` and the keys of `{a="x", b=~"y"}`.
fn label_names(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for (open, close) in [("by (", ')'), ("{", '}')] {
        let mut rest = expr;
        while let Some(i) = rest.find(open) {
            let inner = &rest[i + open.len()..];
            let end = inner.find(close).expect("a closed group");
            for part in inner[..end].split(',') {
                let label = part
                    .split(['=', '!', '~'])
                    .next()
                    .unwrap_or_default()
                    .trim();
                if !label.is_empty() {
                    labels.push(label.to_owned());
                }
            }
            rest = &inner[end..];
        }
    }
    labels
}

/// `# TYPE` lines of an exposition: family → type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// How an exposition names a series: a counter `F` as `F_total`, a histogram `F` as
/// `F_bucket`, `F_sum`, `F_count`, anything else by its family's name. The family, if exported.
fn family_of(series: &str, families: &BTreeMap<String, String>) -> Option<String> {
    if families
        .get(series)
        .is_some_and(|kind| kind != "counter" && kind != "histogram")
    {
        return Some(series.to_owned());
    }
    let suffixed = [
        ("_total", "counter"),
        ("_bucket", "histogram"),
        ("_sum", "histogram"),
        ("_count", "histogram"),
    ];
    suffixed.iter().find_map(|(suffix, kind)| {
        let family = series.strip_suffix(suffix)?;
        (families.get(family).map(String::as_str) == Some(*kind)).then(|| family.to_owned())
    })
}

/// The label names of the samples of `series` in an exposition.
fn sample_labels(exposition: &str, series: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix('{'))
        .flat_map(|l| {
            let labels = l.split('}').next().unwrap_or_default();
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the dashboard queries: its expressions, and its variables' queries.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    json_strings(dashboard, "expr", &mut queries);
    json_strings(&dashboard["templating"], "definition", &mut queries);
    queries
}

#[test]
fn the_dashboard_is_importable_and_filters_by_instance() {
    let text = std::fs::read_to_string(deploy("grafana/ucgate-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard parses");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    assert!(
        dashboard["__inputs"].as_array().is_some_and(|inputs| inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus")),
        "a DS_PROMETHEUS input"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(variable("DS_PROMETHEUS")["query"], "prometheus");
    assert_eq!(variable("instance")["type"], "query");

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut seen_ids = BTreeSet::new();
    let mut targets = 0;
    for panel in panels {
        assert!(
            seen_ids.insert(panel["id"].as_u64().expect("an id")),
            "{}",
            panel["id"]
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            targets += 1;
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}");
            let expr = target["expr"].as_str().expect("an expr");
            for name in metric_names(expr) {
                let filtered = format!("{name}{{instance=~\"$instance\"");
                assert!(
                    expr.contains(&filtered),
                    "{}: {expr} is not filtered by $instance",
                    panel["title"]
                );
            }
        }
    }
    assert!(targets >= 10, "{targets} queries");
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_one_ucgate_exports() {
    let text = std::fs::read_to_string(deploy("grafana/ucgate-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let queries = dashboard_queries(&dashboard);
    let queried: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    // What the dashboard is for: requests, refusals, exchanges, lock-outs, latency, the cache,
    // connections, reloads and the dependencies' health.
    for needed in [
        "ucgate_requests_total",
        "ucgate_auth_failures_total",
        "ucgate_logins_total",
        "ucgate_lockouts_total",
        "ucgate_upstream_response_seconds_bucket",
        "ucgate_token_cache_total",
        "ucgate_token_cache_entries",
        "ucgate_connections_open",
        "ucgate_config_reloads_total",
        "ucgate_cluster_up",
        "ucgate_cluster_reconnects_total",
        "ucgate_cluster_errors_total",
        "ucgate_directory_up",
        "ucgate_xuc_up",
        "ucgate_xuc_checks_total",
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard does not query {needed}"
        );
    }

    // A ucgate with every kind of metric: [tokens], XiVO's database, [cluster] and [xuc], all
    // unreachable (it starts degraded), a route to a real upstream.
    let up = Upstream::start().await;
    let nowhere = closed_url();
    let nowhere = nowhere.trim_start_matches("http://");
    let config = ConfigBuilder::new()
        .raw(
            "[tokens]\n\n[users]\ndatabase_url_env = \"XIVO_DB_URL\"\ntimeout = \"1s\"\n\n\
             [cluster]\nredis_url_env = \"UCGATE_REDIS_URL\"\ntimeout = \"100ms\"",
        )
        .raw(&format!(
            "[xuc]\nurl = \"http://{nowhere}\"\ntimeout = \"1s\""
        ))
        .route(route("configmgt", "/configmgt/", &up.url()).accept(&["shared", "uc"]))
        .build();
    let gate = Ucgate::builder(config)
        .env("UCGATE_SIGNING_KEY", &dummy("UCGATE_SIGNING_KEY"))
        .env(
            "XIVO_DB_URL",
            &format!("postgresql://ucgate:secret@{nowhere}/asterisk"),
        )
        .env("UCGATE_REDIS_URL", &format!("redis://{nowhere}/0"))
        .start()
        .await;
    // Requests of each kind, so that every labelled family has a sample: proxied, refused,
    // an exchange (the directory is down: 503), a reload.
    let http = client();
    let proxied = http
        .get(gate.url("/configmgt/x"))
        .header(X_AUTH_TOKEN, SHARED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    // Not even a bearer token: refused here, never asked at xuc.
    let refused = http
        .get(gate.url("/configmgt/x"))
        .header(X_AUTH_TOKEN, "not a token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let unchecked = http
        .get(gate.url("/configmgt/x"))
        .header(X_AUTH_TOKEN, "maybe-an-xuc-token")
        .send()
        .await
        .unwrap();
    assert_eq!(unchecked.status(), 503);
    let exchange = http
        .post(gate.url("/xuc/api/2.0/auth/login"))
        .json(&serde_json::json!({"login": "alice", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(exchange.status(), 503);
    gate.signal(libc::SIGHUP);
    gate.wait_log("configuration reloaded").await;

    // Families appear with their first sample: poll (bounded) until every queried one is there.
    let deadline = std::time::Instant::now() + BOUND;
    let (exposition, exported) = loop {
        let exposition = http
            .get(gate.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let exported = families(&exposition);
        let missing = queried
            .iter()
            .any(|name| family_of(name, &exported).is_none());
        if !missing || std::time::Instant::now() > deadline {
            break (exposition, exported);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        exported.keys().all(|f| f.starts_with("ucgate_")),
        "{exported:?}"
    );
    let unknown: Vec<&String> = queried
        .iter()
        .filter(|name| family_of(name, &exported).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries {unknown:?}, which ucgate does not export; it exports:\n{exported:#?}"
    );
    // The labels each query groups or filters by are labels of its metrics.
    for query in &queries {
        let names = metric_names(query);
        let known: BTreeSet<String> = names
            .iter()
            .flat_map(|n| sample_labels(&exposition, n))
            .collect();
        for label in label_names(query) {
            if label == "instance" || label == "job" {
                continue; // Prometheus adds them when it scrapes
            }
            assert!(
                known.contains(&label),
                "{query}: `{label}` is not a label of {names:?} ({known:?})"
            );
        }
    }
}
