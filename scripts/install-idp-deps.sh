#!/usr/bin/env bash
# Install what tests/idp/ needs to run real identity providers on loopback:
#   Debian: MIT KDC + client tools (+ kadmin.local), libkrb5-dev/libclang-dev/pkg-config (Rust GSS-API build), curl;
#   PostgreSQL (initdb/postgres/psql) and OpenLDAP (slapd + ldap-utils) for tests/directory_support/, and
#   Redis (redis-server + redis-cli) for tests/redis_support/, which run throwaway servers as children of
#   the tests (the packages' own system services are never started);
#   Chromium (headless) for tests/browser_support/, the web clients' tests in a real browser;
#   npm ci in tests/idp/oidc; a Python venv with django-cas-server in tests/idp/cas/.venv.
# Idempotent and non-interactive; fast when everything is already there. Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
log() { printf 'install-idp-deps: %s\n' "$*" >&2; }

# --- Debian packages --------------------------------------------------------
APT_PKGS=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev libclang-dev pkg-config curl openssl
  postgresql slapd ldap-utils redis-server chromium)
missing=()
for p in "${APT_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo -n); fi
  # Installing postgresql, slapd or redis-server must not start their system services (the tests
  # run their own servers on free ports; a system slapd/postgres/redis would hold 389/5432/6379
  # and outlive the run):
  # a policy-rc.d that refuses every start, removed afterwards if this script created it.
  CREATED_POLICY_RC=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d > /dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    CREATED_POLICY_RC=1
    trap '"${SUDO[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  log "apt-get install ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq < /dev/null
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" < /dev/null > /dev/null
  if [ "$CREATED_POLICY_RC" = 1 ]; then
    "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
for b in krb5kdc kdb5_util kadmin.local kinit klist kdestroy curl pkg-config openssl chromium; do
  command -v "$b" > /dev/null || { log "missing command after install: $b"; exit 1; }
done
# PostgreSQL's server programs are not on PATH (Debian keeps them per major version).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -1 || true)
for b in initdb postgres; do
  [ -n "$pg_bin" ] && [ -x "$pg_bin/$b" ] || { log "missing /usr/lib/postgresql/*/bin/$b after install"; exit 1; }
done
for b in psql ldapadd ldapmodify ldapsearch ldapwhoami redis-server redis-cli; do
  command -v "$b" > /dev/null || { log "missing command after install: $b"; exit 1; }
done
[ -x /usr/sbin/slapd ] || { log "missing /usr/sbin/slapd after install"; exit 1; }
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
