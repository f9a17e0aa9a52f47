#!/usr/bin/env bash
# Install what tests/idp/ needs to run real identity providers on loopback:
#   Debian: MIT KDC + client tools (+ kadmin.local), libkrb5-dev/libclang-dev/pkg-config (Rust GSS-API build), curl;
#   npm ci in tests/idp/oidc; a Python venv with django-cas-server in tests/idp/cas/.venv.
# Idempotent and non-interactive; fast when everything is already there. Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
log() { printf 'install-idp-deps: %s\n' "$*" >&2; }

# --- Debian packages --------------------------------------------------------
APT_PKGS=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev libclang-dev pkg-config curl openssl)
missing=()
for p in "${APT_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo -n); fi
  log "apt-get install ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq < /dev/null
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" < /dev/null > /dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"
for b in krb5kdc kdb5_util kadmin.local kinit klist kdestroy curl pkg-config openssl; do
  command -v "$b" > /dev/null || { log "missing command after install: $b"; exit 1; }
done
curl -V | grep -q 'GSS-API' || { log "curl lacks GSS-API support"; exit 1; }
curl -V | grep -q 'SPNEGO' || { log "curl lacks SPNEGO support"; exit 1; }

# --- OpenID provider (node) -------------------------------------------------
OIDC="$ROOT/tests/idp/oidc"
command -v node > /dev/null || { log "node is required (>= 20)"; exit 1; }
command -v npm > /dev/null || { log "npm is required"; exit 1; }
lock_sum=$(sha256sum "$OIDC/package-lock.json" | cut -c1-16)
stamp="$OIDC/node_modules/.ucgate-installed-$lock_sum"
if [ ! -f "$stamp" ]; then
  log "npm ci in tests/idp/oidc"
  (cd "$OIDC" && npm ci --no-audit --no-fund --loglevel=error < /dev/null > /dev/null)
  touch "$stamp"
fi

# --- CAS server (python venv) -----------------------------------------------
CAS="$ROOT/tests/idp/cas"
VENV="$CAS/.venv"
PYTHON=${PYTHON:-python3}
req_sum=$(sha256sum "$CAS/requirements.txt" | cut -c1-16)
marker="$VENV/.ucgate-installed-$req_sum"
if [ ! -f "$marker" ] || [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV and installing requirements.txt"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$CAS/requirements.txt" < /dev/null
  "$VENV/bin/python" -c 'import django, cas_server, lxml'
  touch "$marker"
fi

log "ok"
