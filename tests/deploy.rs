//! The deployment files agree with each other: the compose file parses, mounts every file the
//! example configuration names where the configuration expects it, and passes the environment
//! it needs; the image runs that configuration as an unprivileged user. (No Docker engine runs
//! here, so this is as far as the files can be checked.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    strings(&service["volumes"])
        .iter()
        .filter(|m| m.split(':').next().is_some_and(|src| src.contains('/')))
        .map(|m| {
            let mut parts = m.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().expect("src:dst"));
            let src = if src.starts_with('/') {
                PathBuf::from(src)
            } else {
                deploy(src)
            };
            (PathBuf::from(dst), src)
        })
        .collect()
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
