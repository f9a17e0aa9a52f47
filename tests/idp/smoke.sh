#!/usr/bin/env bash
# Start each identity provider on a free loopback port, get a credential from it, stop it.
# Needs scripts/install-idp-deps.sh first. Prints one line per provider with timings; exit 1 on failure.
set -euo pipefail

IDP=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ucgate-idp-smoke.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
export PATH="$PATH:/usr/sbin:/sbin" no_proxy='127.0.0.1,localhost' NO_PROXY='127.0.0.1,localhost'

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
wait_port() { # port pid
  for _ in $(seq 500); do
    if (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; then return 0; fi
    kill -0 "$2" 2> /dev/null || return 1
    sleep 0.02
  done
  return 1
}
fail() { echo "idp smoke: FAIL: $*" >&2; exit 1; }

# Kerberos
t0=$(now_ms)
port=$(free_port)
KWORK="$WORK/kdc" KDC_PORT=$port bash "$IDP/kdc/setup_realm.sh" > "$WORK/kdc.out" 2>&1 &
PIDS+=($!)
wait_port "$port" "$!" || fail "KDC did not start: $(cat "$WORK/kdc.out")"
t1=$(now_ms)
(
  # shellcheck source=/dev/null
  . "$WORK/kdc/env.sh"
  echo alicepw | kinit alice > /dev/null
  klist | grep -q 'Default principal: alice@EXAMPLE.TEST'
  kvno HTTP/localhost@EXAMPLE.TEST > /dev/null
  if echo wrong | kinit bob > /dev/null 2>&1; then exit 1; fi
) || fail "kinit/klist/kvno"
echo "kdc: port $port, realm ready $((t1 - t0)) ms, kinit+kvno $(($(now_ms) - t1)) ms"

# OpenID Connect
t0=$(now_ms)
node "$IDP/oidc/server.mjs" > "$WORK/oidc.out" 2> "$WORK/oidc.err" &
PIDS+=($!)
for _ in $(seq 500); do [ -s "$WORK/oidc.out" ] && break; sleep 0.02; done
issuer=$(head -n1 "$WORK/oidc.out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["issuer"])') \
  || fail "oidc server: $(cat "$WORK/oidc.err")"
t1=$(now_ms)
tok=$(node "$IDP/oidc/get_id_token.mjs" "$issuer" alice alicepw) || fail "get_id_token alice"
[ "$(printf '%s' "$tok" | tr -cd . | wc -c)" -eq 2 ] || fail "id_token is not a JWS"
if node "$IDP/oidc/get_id_token.mjs" "$issuer" alice wrong > /dev/null 2>&1; then fail "wrong password accepted"; fi
echo "oidc: $issuer ready $((t1 - t0)) ms, two logins $(($(now_ms) - t1)) ms"

# CAS
t0=$(now_ms)
PY="$IDP/cas/.venv/bin/python"
CASDIR="$WORK/cas" PY="$PY" bash "$IDP/cas/make_project.sh"
port=$(free_port)
(cd "$WORK/cas" && exec "$PY" manage.py runserver "127.0.0.1:$port" --noreload > "$WORK/cas.log" 2>&1) &
PIDS+=($!)
wait_port "$port" "$!" || fail "CAS did not start: $(cat "$WORK/cas.log")"
t1=$(now_ms)
base="http://127.0.0.1:$port/cas"
svc="http://127.0.0.1:8081/cb"
st=$(python3 "$IDP/cas/get_ticket.py" "$base" "$svc" alice alicepw) || fail "get_ticket alice"
curl -sfG --noproxy '*' "$base/p3/serviceValidate" --data-urlencode "service=$svc" --data-urlencode "ticket=$st" \
  | grep -q '<cas:user>alice</cas:user>' || fail "serviceValidate"
curl -sfG --noproxy '*' "$base/p3/serviceValidate" --data-urlencode "service=$svc" --data-urlencode "ticket=$st" \
  | grep -q 'INVALID_TICKET' || fail "ticket reuse not rejected"
echo "cas: $base ready $((t1 - t0)) ms, ticket+2 validations $(($(now_ms) - t1)) ms"
echo "idp smoke: ok"
