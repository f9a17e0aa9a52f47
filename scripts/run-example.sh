#!/usr/bin/env bash
# Starts ucgate on the example configuration (deploy/ucgate.toml) in front of a demo upstream
# that stands in for configmgt and recording (examples/echo_upstream.rs: it answers with what it
# was told), with a demo user whose password is made now and printed once, and a throwaway
# shared token. Prints the curl lines that show what ucgate does. Ctrl-C stops everything.
#
# Never use these secrets in production. Knobs (environment): UCGATE_PORT (8080), ADMIN_PORT
# (9090), CONFIGMGT_PORT (9100), RECORDING_PORT (9400); UCGATE_BIN and ECHO_BIN to run binaries
# already built instead of `cargo build --release`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf 'run-example.sh: %s\n' "$*" >&2; }

UCGATE_PORT=${UCGATE_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9090}
CONFIGMGT_PORT=${CONFIGMGT_PORT:-9100}
RECORDING_PORT=${RECORDING_PORT:-9400}

for port in "$UCGATE_PORT" "$ADMIN_PORT" "$CONFIGMGT_PORT" "$RECORDING_PORT"; do
  if (: > "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    log "port $port is taken (a XiVO, or another ucgate?): stop it, or choose other ports, e.g."
    log "  UCGATE_PORT=18080 ADMIN_PORT=19090 CONFIGMGT_PORT=19100 RECORDING_PORT=19400 $0"
    exit 1
  fi
done

if [ -z "${UCGATE_BIN:-}" ] || [ -z "${ECHO_BIN:-}" ]; then
  missing=()
  for pkg in libkrb5-dev libclang-dev pkg-config; do
    dpkg -s "$pkg" > /dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo -n")
    $SUDO apt-get update -qq < /dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" < /dev/null > /dev/null
  fi
  log "building ucgate and the demo upstream (cargo build --release)"
  cargo build --release --locked --bin ucgate --example echo_upstream
  target=${CARGO_TARGET_DIR:-$ROOT/target}/release
  UCGATE_BIN=$target/ucgate ECHO_BIN=$target/examples/echo_upstream
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ucgate-example.XXXXXX")
CHILDREN=()
cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${CHILDREN[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
  for pid in "${CHILDREN[@]}"; do wait "$pid" 2> /dev/null || true; done
  rm -rf "$WORK"
  log "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

random() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | cut -c1-32; }
export PLAY_AUTH_TOKEN UCGATE_SIGNING_KEY
PLAY_AUTH_TOKEN=$(random)
UCGATE_SIGNING_KEY=$(random)$(random)
PASSWORD=$(random | cut -c1-16)

# The example configuration, on the chosen ports, beside a users file holding the demo user.
sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$UCGATE_PORT/; s/127\.0\.0\.1:9090/127.0.0.1:$ADMIN_PORT/" \
  -e "s/127\.0\.0\.1:9100/127.0.0.1:$CONFIGMGT_PORT/; s/127\.0\.0\.1:9400/127.0.0.1:$RECORDING_PORT/" \
  -e 's#^env_files = .*#env_files = []#' deploy/ucgate.toml > "$WORK/ucgate.toml"
hash=$(printf '%s\n' "$PASSWORD" | "$UCGATE_BIN" hash-password)
cat > "$WORK/users.toml" << USERS
[[user]]
login = "demo"
password_hash = "$hash"
cti_enabled = true
profile = "admin"
USERS

"$ECHO_BIN" "configmgt=127.0.0.1:$CONFIGMGT_PORT" "recording=127.0.0.1:$RECORDING_PORT" < /dev/null &
CHILDREN+=($!)
"$UCGATE_BIN" --config "$WORK/ucgate.toml" run < /dev/null &
CHILDREN+=($!)

ready=""
for _ in $(seq 300); do
  if ready=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" 2> /dev/null); then break; fi
  for pid in "${CHILDREN[@]}"; do
    kill -0 "$pid" 2> /dev/null || { log "a server stopped before it was ready"; exit 1; }
  done
  sleep 0.1
done
[ -n "$ready" ] || { log "ucgate was not ready within 30 s"; exit 1; }

GATE=http://127.0.0.1:$UCGATE_PORT
cat << TRY

ucgate is running on $GATE, in front of a demo configmgt (:$CONFIGMGT_PORT) and recording
(:$RECORDING_PORT) that answer with what they were told. Throwaway secrets: the demo user
"demo" has the password $PASSWORD, the shared token is $PLAY_AUTH_TOKEN.
Paste these lines in another terminal:

----- try it -----
# 1. Log in as the demo user: ucgate answers a UC token
TOKEN=\$(curl -s $GATE/xuc/api/2.0/auth/login -H 'Content-Type: application/json' -d '{"login": "demo", "password": "$PASSWORD"}' | sed -n 's/.*"token":"\\([^"]*\\)".*/\\1/p'); echo "\$TOKEN"
# 2. Call configmgt with it: the upstream is told who you are (x-auth-user) and gets the shared token, never yours
curl -s -w '\\n' $GATE/configmgt/api/1.0/users -H "X-Auth-Token: \$TOKEN"
# 3. The shared token opens the routes too
curl -s -w '\\n' $GATE/recording/records -H "X-Auth-Token: $PLAY_AUTH_TOKEN"
# 4. Without a token: 401, in JSON
curl -s -i -w '\\n' $GATE/configmgt/api/1.0/users
# 5. Check the token as XiVO's web clients do: the answer holds a renewed one
curl -s -w '\\n' $GATE/xuc/api/2.0/auth/check -H "Authorization: Bearer \$TOKEN"
# 6. Log out (204): the token is refused from then on
curl -s -o /dev/null -w '%{http_code}\\n' -X POST $GATE/xuc/api/2.0/auth/logout -H "X-Auth-Token: \$TOKEN"
curl -s -w '\\n' $GATE/configmgt/api/1.0/users -H "X-Auth-Token: \$TOKEN"
# 7. Health and metrics are on the operator's listener only
curl -s -w '\\n' http://127.0.0.1:$ADMIN_PORT/readyz; curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep '^ucgate_requests_total'
----- end -----

Ctrl-C stops ucgate and the demo upstream. ucgate's log follows.
TRY

# Until Ctrl-C, or until one of them stops. Ctrl-C reaches the whole process group: ucgate
# stops on it too (exit 0), and may do so before this shell's own trap runs; a script started in
# the background of another shell ignores SIGINT itself. Either way, say what stopped, and how.
status=0
wait -n "${CHILDREN[@]}" || status=$?
log "ucgate or the demo upstream stopped (exit status $status; see the log above): stopping the other"
exit "$status"
