#!/usr/bin/env bash
# Starts ucgate on the example configuration (deploy/ucgate.toml), in the foreground.
# Installs the build packages it needs (Debian), and makes throwaway secrets when
# PLAY_AUTH_TOKEN / UCGATE_SIGNING_KEY are not set: never use those in production.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

missing=()
for pkg in libkrb5-dev libclang-dev pkg-config; do
  dpkg -s "$pkg" > /dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run-example.sh: installing ${missing[*]}" >&2
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi

random() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }
if [ -z "${PLAY_AUTH_TOKEN:-}" ] && [ ! -r /etc/docker/compose/custom.env ]; then
  export PLAY_AUTH_TOKEN; PLAY_AUTH_TOKEN=$(random)
  echo "run-example.sh: PLAY_AUTH_TOKEN was unset: using a throwaway one; set it yourself to call the routes with it" >&2
fi
if [ -z "${UCGATE_SIGNING_KEY:-}" ]; then
  export UCGATE_SIGNING_KEY; UCGATE_SIGNING_KEY=$(random)
fi
exec cargo run --release --locked -- --config deploy/ucgate.toml "$@"
