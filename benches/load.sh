#!/usr/bin/env bash
# Load benchmark of ucgate beside nginx and HAProxy (issue 7), on loopback, in one go.
#
#   benches/load.sh                 # 10 s per setup
#   QUICK=1 benches/load.sh         # 2 s per setup, to check that everything works
#   DURATION=30 benches/load.sh     # seconds per setup
#   PASSES=3 benches/load.sh        # every setup three times, alternated: medians and spread
#
# Other knobs (environment): CONNECTIONS (32), WARMUP (seconds, 2; 1 when QUICK),
# H2_CONNECTIONS x H2_STREAMS (4 x 8: as many requests in flight as wrk), TOKENS (100000),
# CLIENT_CPU / SERVER_CPU / UPSTREAM_CPU (taskset CPU lists), UCGATE_BIN (skip the build),
# KEEP_LOGS=1 (keep the temporary directory: rendered configurations, server logs, raw outputs).
#
# Every setup forwards to the same upstream (one nginx worker answering a small JSON body)
# and runs with one worker process or thread:
#   1. the upstream directly                    4. ucgate, shared token
#   2. nginx checking a static X-Auth-Token     5. ucgate, UC token (cached)
#   3. HAProxy jwt_verify (HS256)               6. ucgate, UC token over h2 (h2load)
# and, when named in SETUPS, ucgate with WORKERS worker threads (default: every CPU, unpinned):
#   7. ucgate_stealing: one work-stealing runtime   8. ucgate_per_core: server.thread_per_core
# then ucgate's memory with TOKENS distinct valid UC tokens cached, and a 200 MiB download and
# upload through nginx and ucgate (BIG_MIB, 200; ROUNDS, 3; streamed both ways, files on tmpfs).
# CPU per request (or per MiB) is the user + system time of the proxy's processes over the
# measured run. Prints markdown tables, then the ratios against the peers; exits non-zero when a
# setup produced no numbers (or answered anything but 2xx).
#
# Installs what it lacks from Debian (nginx, haproxy, wrk, nghttp2-client, ...), without
# starting their system services; servers run as children under a temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATES="$ROOT/benches/load"
export PATH="$PATH:/usr/sbin:/sbin"

if [ "${QUICK:-0}" = 1 ]; then
  DURATION=${DURATION:-2}
  WARMUP=${WARMUP:-1}
else
  DURATION=${DURATION:-10}
  WARMUP=${WARMUP:-2}
fi
CONNECTIONS=${CONNECTIONS:-32}
H2_CONNECTIONS=${H2_CONNECTIONS:-4}
H2_STREAMS=${H2_STREAMS:-8}
TOKENS=${TOKENS:-100000}
BIG_MIB=${BIG_MIB:-200}
ROUNDS=${ROUNDS:-3}
# The request setups run PASSES times in turn (1 2 3 ... 1 2 3 ...), so that the machine's drift
# falls on every setup alike; the tables give each figure's median (the lower one of an even
# count) and the ratios each pass's too. The large bodies and the memory run once.
PASSES=${PASSES:-1}
PASS=1
REQUEST_PATH=/api/bench
BIG=""                # a tmpfs directory for the large-body setups, removed on exit

WORK=""               # the temporary directory, removed on exit
CHILDREN=()           # pids of every server started, stopped on exit
CREATED_POLICY_RC=0   # whether this script created /usr/sbin/policy-rc.d
FAILED=0
declare -A RPS P50 P99 RSS CPU NOTE DL_MBS DL_CPU UL_MBS UL_CPU
# Each pass's figures, in pass order, space-separated (RPS etc. hold their medians).
declare -A ALL_RPS ALL_P50 ALL_P99 ALL_CPU

log() { printf 'load.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# --- setup and teardown -----------------------------------------------------------------------

cleanup() {
  local pid
  for pid in "${CHILDREN[@]}"; do
    stop_pid "$pid"
  done
  if [ "$CREATED_POLICY_RC" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  if [ -n "$BIG" ] && [ -d "$BIG" ]; then
    rm -rf "$BIG"
  fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "${KEEP_LOGS:-0}" = 1 ]; then
      log "configurations and logs kept in $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
}

install_missing() {
  local -A wanted=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [h2load]=nghttp2-client
    [curl]=curl [python3]=python3 [taskset]=util-linux)
  local cmd pkg missing=()
  for cmd in "${!wanted[@]}"; do
    command -v "$cmd" > /dev/null 2>&1 || missing+=("${wanted[$cmd]}")
  done
  if [ -z "${UCGATE_BIN:-}" ]; then   # what the release build needs (Debian)
    for pkg in libkrb5-dev libclang-dev pkg-config; do
      dpkg -s "$pkg" > /dev/null 2>&1 || missing+=("$pkg")
    done
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
  # Keep the packages' init scripts from starting system nginx/haproxy services.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d > /dev/null
    "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
    CREATED_POLICY_RC=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq < /dev/null
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" < /dev/null > /dev/null
  if [ "$CREATED_POLICY_RC" = 1 ]; then
    "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    CREATED_POLICY_RC=0
  fi
}

check_haproxy() {
  local vv version
  vv=$(haproxy -vv 2>&1)
  version=$(awk '/version/ {print $3; exit}' <<< "$vv")
  # jwt_verify appeared in HAProxy 2.5 and needs OpenSSL.
  [ "$(printf '2.5\n%s\n' "${version%%-*}" | sort -V | head -1)" = 2.5 ] ||
    die "HAProxy $version has no jwt_verify (2.5 or later needed)"
  [[ $vv == *"Built with OpenSSL"* ]] || die "HAProxy is built without OpenSSL: no jwt_verify"
  LABEL[haproxy]="3. HAProxy ${version%%-*}, jwt_verify HS256"
}

build_ucgate() {
  if [ -n "${UCGATE_BIN:-}" ]; then
    UCGATE=$UCGATE_BIN
  else
    log "building ucgate (cargo build --profile production --locked)"
    (cd "$ROOT" && cargo build --profile production --locked --quiet --bin ucgate < /dev/null)
    UCGATE="${CARGO_TARGET_DIR:-$ROOT/target}/production/ucgate"
  fi
  [ -x "$UCGATE" ] || die "no ucgate binary at $UCGATE"
}

# CPUs: the load generator on 0, the server under test on 1, the upstream on 2 when there is a
# third core (with two, it shares the server's core: the same cost for every proxy).
choose_cpus() {
  local ncpu
  ncpu=$(nproc)
  if [ "$ncpu" -ge 2 ]; then
    CLIENT_CPU=${CLIENT_CPU:-0}
    SERVER_CPU=${SERVER_CPU:-1}
    if [ "$ncpu" -ge 3 ]; then UPSTREAM_CPU=${UPSTREAM_CPU:-2}; else UPSTREAM_CPU=${UPSTREAM_CPU:-1}; fi
  else
    CLIENT_CPU=${CLIENT_CPU:-0} SERVER_CPU=${SERVER_CPU:-0} UPSTREAM_CPU=${UPSTREAM_CPU:-0}
  fi
  CPU_NOTE="$ncpu CPUs; client on $CLIENT_CPU, server on $SERVER_CPU, upstream on $UPSTREAM_CPU"
}

# Free loopback ports, all distinct (held open together while being chosen).
free_ports() {
  python3 - "$1" << 'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

random_secret() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# render TEMPLATE OUT: replaces every @NAME@ by the value of the shell variable NAME.
render() {
  local template=$1 out=$2 content name
  content=$(< "$TEMPLATES/$template")
  for name in DIR BIG UPSTREAM_PORT PORT SHARED_TOKEN SIGNING_KEY PASSWORD_HASH; do
    content=${content//@$name@/${!name:-}}
  done
  ! [[ $content =~ @[A-Z_]+@ ]] || die "unrendered placeholder in $template"
  printf '%s\n' "$content" > "$out"
}

# --- processes ----------------------------------------------------------------------------------

# start CPU LOGFILE COMMAND...: starts a server in the background; sets STARTED to its pid.
start() {
  local cpu=$1 logfile=$2
  shift 2
  taskset -c "$cpu" "$@" < /dev/null > "$logfile" 2>&1 &
  STARTED=$!
  CHILDREN+=("$STARTED")
}

stop_pid() {
  local pid=$1
  kill -0 "$pid" 2> /dev/null || return 0
  kill -TERM "$pid" 2> /dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
}

stop() {
  local pid=$1 kept=() p
  stop_pid "$pid"
  for p in "${CHILDREN[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  CHILDREN=("${kept[@]}")
}

# wait_port PID PORT: until something accepts on the port (and PID still runs), 20 s at most.
wait_port() {
  local pid=$1 port=$2
  for _ in $(seq 200); do
    kill -0 "$pid" 2> /dev/null || return 1
    if (: > "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# Peak RSS (VmHWM) in KiB of a process and its children (nginx: master + worker).
peak_rss_kib() {
  local pid total=0 kib
  for pid in "$1" $(pgrep -P "$1" || true); do
    kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2> /dev/null || true)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

# --- servers ------------------------------------------------------------------------------------

start_upstream() {
  mkdir -p "$WORK/upstream-tmp"
  PORT=$UPSTREAM_PORT render upstream.nginx.conf "$WORK/upstream.conf"
  start "$UPSTREAM_CPU" "$WORK/upstream.out" nginx -p "$WORK" -e "$WORK/upstream.error.log" -c "$WORK/upstream.conf"
  UPSTREAM_PID=$STARTED
  wait_port "$UPSTREAM_PID" "$UPSTREAM_PORT" || die "the upstream nginx did not start: $(cat "$WORK/upstream.out" "$WORK/upstream.error.log" 2> /dev/null)"
  curl -fsS "http://127.0.0.1:$UPSTREAM_PORT$REQUEST_PATH" > /dev/null || die "the upstream does not answer"
}

start_nginx_proxy() {
  mkdir -p "$WORK/proxy-tmp"
  PORT=$NGINX_PORT render proxy.nginx.conf "$WORK/proxy.conf"
  start "$SERVER_CPU" "$WORK/proxy.out" nginx -p "$WORK" -e "$WORK/proxy.error.log" -c "$WORK/proxy.conf"
  wait_port "$STARTED" "$NGINX_PORT"
}

start_haproxy() {
  PORT=$HAPROXY_PORT render haproxy.cfg "$WORK/haproxy.cfg"
  haproxy -c -q -f "$WORK/haproxy.cfg" > "$WORK/haproxy.check" 2>&1 ||
    { log "HAProxy refuses the configuration: $(cat "$WORK/haproxy.check")"; return 1; }
  start "$SERVER_CPU" "$WORK/haproxy.out" haproxy -db -f "$WORK/haproxy.cfg"
  wait_port "$STARTED" "$HAPROXY_PORT"
}

# start_ucgate NAME [CONFIG [CPUS]]
start_ucgate() {
  local name=$1 config=${2:-$WORK/ucgate.toml} cpus=${3:-$SERVER_CPU}
  start "$cpus" "$WORK/ucgate-$name.log" env UCGATE_LOG=warn \
    PLAY_AUTH_TOKEN="$SHARED_TOKEN" UCGATE_SIGNING_KEY="$SIGNING_KEY" \
    "$UCGATE" --config "$config"
  for _ in $(seq 200); do
    kill -0 "$STARTED" 2> /dev/null || break
    curl -fs "http://127.0.0.1:$UCGATE_PORT/healthz" > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "ucgate did not start: $(tail -5 "$WORK/ucgate-$name.log")"
  return 1
}

prepare_ucgate() {
  local hash
  hash=$(printf '%s\n' "$BENCH_PASSWORD" | "$UCGATE" hash-password) || die "ucgate hash-password failed"
  PASSWORD_HASH=$hash render users.toml "$WORK/users.toml"
  PORT=$UCGATE_PORT render ucgate.toml "$WORK/ucgate.toml"
  env PLAY_AUTH_TOKEN="$SHARED_TOKEN" UCGATE_SIGNING_KEY="$SIGNING_KEY" \
    "$UCGATE" --config "$WORK/ucgate.toml" check-config > "$WORK/check-config.out" 2>&1 ||
    die "ucgate refuses the benchmark configuration: $(cat "$WORK/check-config.out")"
}

# A UC token, from a ucgate that does nothing else (a login costs an argon2 hash and its memory,
# which must not count in the peak RSS of the measured processes).
login_uc_token() {
  start_ucgate login || die "cannot start ucgate for the login"
  local pid=$STARTED body
  body=$(curl -fsS -X POST -H 'Content-Type: application/json' \
    --data "{\"login\": \"bench\", \"password\": \"$BENCH_PASSWORD\", \"expiration\": 7200}" \
    "http://127.0.0.1:$UCGATE_PORT/xuc/api/2.0/auth/login") || die "login to ucgate failed"
  stop "$pid"
  UC_TOKEN=$(printf '%s' "$body" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
  [ -n "$UC_TOKEN" ] || die "no token in the login answer: $body"
}

# check_auth ID PORT TOKEN: the setup answers 200 with TOKEN and 401 with a forged one (same
# header and claims, another signature): a proxy that checks nothing would be no comparison.
check_auth() {
  local id=$1 port=$2 token=$3 good bad
  local url="http://127.0.0.1:$port$REQUEST_PATH"
  good=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $token" "$url" || true)
  bad=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Auth-Token: ${token%.*}.$(printf 'A%.0s' $(seq 43))" "$url" || true)
  [ "$good" = 200 ] || { NOTE[$id]="answers $good to a valid token"; return 1; }
  [ "$bad" = 401 ] || { NOTE[$id]="answers $bad to a forged token"; return 1; }
}

# cpu_ticks PID: user + system clock ticks of PID and its children (nginx's worker).
cpu_ticks() {
  local pid=$1 total=0 p
  for p in "$pid" $(pgrep -P "$pid" 2> /dev/null || true); do
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name (which may hold spaces).
    total=$((total + $(sed 's/.*) //' "/proc/$p/stat" 2> /dev/null | awk '{print $12 + $13}' || echo 0)))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# --- load generators ----------------------------------------------------------------------------

# wrk_run ID PORT TOKEN PID: warm-up, then a measured run; records the numbers under ID.
wrk_run() {
  local id=$1 port=$2 token=$3 pid=$4 out line
  local url="http://127.0.0.1:$port$REQUEST_PATH"
  local wrk=(taskset -c "$CLIENT_CPU" timeout $((DURATION + WARMUP + 30)) wrk -t1 -c"$CONNECTIONS"
    -H "X-Auth-Token: $token" -s "$TEMPLATES/report.lua")
  "${wrk[@]}" -d"${WARMUP}s" "$url" < /dev/null > "$WORK/$id.warmup" 2>&1 || true
  out="$WORK/$id.wrk"
  local ticks=$(cpu_ticks "$pid")
  "${wrk[@]}" -d"${DURATION}s" "$url" < /dev/null > "$out" 2>&1 ||
    { NOTE[$id]="wrk failed: $(tail -1 "$out")"; return 1; }
  ticks=$(($(cpu_ticks "$pid") - ticks))
  line=$(grep '^WRK_RESULT' "$out") || { NOTE[$id]="no wrk result"; return 1; }
  local rps p50 p99 requests status_errors socket_errors
  rps=$(field "$line" rps) p50=$(field "$line" p50_us) p99=$(field "$line" p99_us)
  requests=$(field "$line" requests) status_errors=$(field "$line" status_errors)
  socket_errors=$(field "$line" socket_errors)
  if [ "$requests" -eq 0 ] || [ "$status_errors" -ne 0 ]; then
    NOTE[$id]="$status_errors of $requests responses were errors (>= 400)"
    return 1
  fi
  [ "$socket_errors" -eq 0 ] || NOTE[$id]="$socket_errors socket errors"
  record "$id" "$rps" "$p50" "$p99" \
    "$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')" \
    "$(peak_rss_kib "$pid")"
}

# median "V1 V2 ...": the middle value (the lower one of an even count).
median() { printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# record ID RPS P50 P99 CPU RSS: one pass's figures of setup ID; RPS etc. become the medians of
# the passes so far, the peak RSS their largest.
record() {
  local id=$1
  ALL_RPS[$id]="${ALL_RPS[$id]:-} $2" ALL_P50[$id]="${ALL_P50[$id]:-} $3"
  ALL_P99[$id]="${ALL_P99[$id]:-} $4" ALL_CPU[$id]="${ALL_CPU[$id]:-} $5"
  RPS[$id]=$(median "${ALL_RPS[$id]}") P50[$id]=$(median "${ALL_P50[$id]}")
  P99[$id]=$(median "${ALL_P99[$id]}") CPU[$id]=$(median "${ALL_CPU[$id]}")
  RSS[$id]=$(( $6 > ${RSS[$id]:-0} ? $6 : ${RSS[$id]:-0} ))
}

# h2load_run ID PORT TOKEN PID: the same over h2 with prior knowledge; percentiles from its log.
h2load_run() {
  local id=$1 port=$2 token=$3 pid=$4 out requests ok bad
  local url="http://127.0.0.1:$port$REQUEST_PATH"
  out="$WORK/$id.h2load"
  local ticks=$(cpu_ticks "$pid")
  taskset -c "$CLIENT_CPU" timeout $((DURATION + WARMUP + 30)) h2load -t1 \
    -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -D"$DURATION" --warm-up-time="$WARMUP" \
    -H "x-auth-token: $token" --log-file="$WORK/$id.h2log" "$url" < /dev/null > "$out" 2>&1 ||
    { NOTE[$id]="h2load failed: $(tail -1 "$out")"; return 1; }
  requests=$(awk '/^requests:/ {print $2}' "$out")
  ok=$(awk '/^status codes:/ {print $3}' "$out")
  bad=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$out")
  if [ -z "$requests" ] || [ "${ok:-0}" -eq 0 ] || [ "${bad:-1}" -ne 0 ] || [ "$ok" -ne "$requests" ]; then
    NOTE[$id]="h2load: ${ok:-0} of ${requests:-0} requests answered 2xx"
    return 1
  fi
  ticks=$(($(cpu_ticks "$pid") - ticks))
  local rps cpu p50 p99
  rps=$(awk '/^finished in/ {sub(/,/, "", $5); print $4}' "$out")
  # The warm-up is inside h2load's run: the CPU counts it too, divided by the measured requests.
  cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$requests" -v d="$DURATION" -v w="$WARMUP" \
    'BEGIN { printf "%.2f", t / hz * 1e6 / n * d / (d + w) }')
  # --log-file: start time, status, microseconds to the end of the response; one line a request.
  read -r p50 p99 < <(awk '{print $3}' "$WORK/$id.h2log" | sort -n | awk '
    { v[NR] = $1 } END { if (NR) printf "%d %d\n", v[int((NR - 1) * 0.50) + 1], v[int((NR - 1) * 0.99) + 1] }')
  record "$id" "$rps" "$p50" "$p99" "$cpu" "$(peak_rss_kib "$pid")"
}

# transfer_run ID PORT TOKEN PID: ROUNDS downloads of the BIG_MIB file and ROUNDS uploads of it,
# one at a time with curl; the median MB/s of each, and the proxy's CPU per MiB moved.
transfer_run() {
  [ "$BIG_MIB" -gt 0 ] || return 0   # BIG_MIB=0 skips the large bodies
  [ "$PASS" = 1 ] || return 0         # once, whatever PASSES
  local id=$1 port=$2 token=$3 pid=$4 dir ticks speeds
  local base="http://127.0.0.1:$port/api"
  for dir in down up; do
    ticks=$(cpu_ticks "$pid")
    speeds=()
    for _ in $(seq "$ROUNDS"); do
      local args=(-fsS -o /dev/null -H "X-Auth-Token: $token")
      if [ "$dir" = down ]; then
        args+=(-w '%{speed_download}' "$base/big.bin")
      else
        args+=(-w '%{speed_upload}' -T "$BIG/www/api/big.bin" "$base/upload.bin")
      fi
      speeds+=("$(taskset -c "$CLIENT_CPU" timeout 120 curl "${args[@]}" < /dev/null)") ||
        { NOTE[$id]="large $dir transfer failed"; return 1; }
    done
    ticks=$(($(cpu_ticks "$pid") - ticks))
    local mbs cpu
    mbs=$(printf '%s\n' "${speeds[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "%.0f", v[int((NR + 1) / 2)] / 1e6 }')
    cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$ROUNDS" -v mib="$BIG_MIB" \
      'BEGIN { printf "%.1f", t / hz * 1e6 / (n * mib) }')
    if [ "$dir" = down ]; then DL_MBS[$id]=$mbs DL_CPU[$id]=$cpu; else UL_MBS[$id]=$mbs UL_CPU[$id]=$cpu; fi
  done
}

field() { sed -n "s/.*\b$2=\([0-9.]*\).*/\1/p" <<< "$1"; }

# --- the setups ---------------------------------------------------------------------------------

# SETUPS (environment, space-separated ids) runs a subset, e.g. SETUPS="nginx ucgate_shared";
# TOKENS=0 skips the memory measurement. SETUPS="ucgate_stealing ucgate_per_core" compares
# ucgate's two ways of running several workers (WORKERS threads, every CPU).
WORKERS=${WORKERS:-$(nproc)}
read -r -a SETUPS <<< "${SETUPS:-upstream nginx haproxy ucgate_shared ucgate_uc ucgate_h2}"
declare -A LABEL=(
  [upstream]="1. upstream nginx, directly"
  [nginx]="2. nginx, static X-Auth-Token"
  [haproxy]="3. HAProxy, jwt_verify HS256"
  [ucgate_shared]="4. ucgate, shared token"
  [ucgate_uc]="5. ucgate, UC token (cached)"
  [ucgate_h2]="6. ucgate, UC token, h2"
  [ucgate_stealing]="7. ucgate, shared token, $WORKERS workers, one work-stealing runtime"
  [ucgate_per_core]="8. ucgate, shared token, $WORKERS workers, thread_per_core"
)

run_setup() {
  local id=$1
  log "setup ${LABEL[$id]}: ${DURATION}s"
  case $id in
    upstream) wrk_run upstream "$UPSTREAM_PORT" "$SHARED_TOKEN" "$UPSTREAM_PID" ;;
    nginx)
      start_nginx_proxy || { NOTE[$id]="nginx did not start"; return 1; }
      { check_auth nginx "$NGINX_PORT" "$SHARED_TOKEN" &&
        wrk_run nginx "$NGINX_PORT" "$SHARED_TOKEN" "$STARTED" &&
        transfer_run nginx "$NGINX_PORT" "$SHARED_TOKEN" "$STARTED"; } || { stop "$STARTED"; return 1; }
      stop "$STARTED" ;;
    haproxy)
      start_haproxy || { NOTE[$id]="HAProxy did not start"; return 1; }
      { check_auth haproxy "$HAPROXY_PORT" "$UC_TOKEN" &&
        wrk_run haproxy "$HAPROXY_PORT" "$UC_TOKEN" "$STARTED"; } || { stop "$STARTED"; return 1; }
      stop "$STARTED" ;;
    ucgate_shared | ucgate_uc | ucgate_h2)
      start_ucgate "$id" || { NOTE[$id]="ucgate did not start"; return 1; }
      local pid=$STARTED rc=0
      check_auth "$id" "$UCGATE_PORT" "$([ "$id" = ucgate_shared ] && echo "$SHARED_TOKEN" || echo "$UC_TOKEN")" ||
        { stop "$pid"; return 1; }
      case $id in
        ucgate_shared)
          { wrk_run "$id" "$UCGATE_PORT" "$SHARED_TOKEN" "$pid" &&
            transfer_run "$id" "$UCGATE_PORT" "$SHARED_TOKEN" "$pid"; } || rc=1 ;;
        ucgate_uc) wrk_run "$id" "$UCGATE_PORT" "$UC_TOKEN" "$pid" || rc=1 ;;
        ucgate_h2) h2load_run "$id" "$UCGATE_PORT" "$UC_TOKEN" "$pid" || rc=1 ;;
      esac
      kill -0 "$pid" 2> /dev/null || { NOTE[$id]="ucgate died: $(tail -3 "$WORK/ucgate-$id.log")"; rc=1; }
      stop "$pid"
      return $rc ;;
    ucgate_stealing | ucgate_per_core)
      local config="$WORK/ucgate-$id.toml" per_core=false rc=0
      [ "$id" = ucgate_stealing ] || per_core=true
      sed "s/^workers = 1\$/workers = $WORKERS\nthread_per_core = $per_core/" "$WORK/ucgate.toml" > "$config"
      grep -q "^thread_per_core = $per_core" "$config" || die "cannot set the workers in $config"
      start_ucgate "$id" "$config" "0-$(($(nproc) - 1))" || { NOTE[$id]="ucgate did not start"; return 1; }
      local pid=$STARTED
      { check_auth "$id" "$UCGATE_PORT" "$SHARED_TOKEN" &&
        wrk_run "$id" "$UCGATE_PORT" "$SHARED_TOKEN" "$pid"; } || rc=1
      stop "$pid"
      return $rc ;;
  esac
}

# ucgate's memory with TOKENS distinct valid UC tokens in its cache (a fresh process).
run_many_tokens() {
  log "ucgate with $TOKENS distinct UC tokens"
  start_ucgate tokens || { TOKENS_NOTE="ucgate did not start"; return 1; }
  local pid=$STARTED out misses
  IDLE_KIB=$(peak_rss_kib "$pid")
  out=$(UCGATE_SIGNING_KEY=$SIGNING_KEY taskset -c "$CLIENT_CPU" timeout 600 python3 \
    "$TEMPLATES/tokens.py" --port "$UCGATE_PORT" --path "$REQUEST_PATH" --count "$TOKENS" \
    --connections "$CONNECTIONS" < /dev/null 2>&1) || { TOKENS_NOTE="tokens.py: $out"; stop "$pid"; return 1; }
  TOKENS_KIB=$(peak_rss_kib "$pid")
  misses=$(curl -fsS "http://127.0.0.1:$UCGATE_PORT/metrics" |
    awk '/^ucgate_token_cache_total\{.*outcome="miss"/ {print $2}' || true)
  TOKENS_NOTE="${out#TOKENS_RESULT }; cache misses ${misses:-?}"
  stop "$pid"
}

# --- report -------------------------------------------------------------------------------------

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
latency() { awk -v u="$1" 'BEGIN { if (u < 1000) printf "%d µs", u; else printf "%.2f ms", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" -v op="$2" 'BEGIN { ok = (op == "ge") ? r >= 1 : r <= 1; print ok ? "met" : "MISSED" }'; }

# passes ARRAY A B: " [r1, r2, ...]", the ratio of A's figure to B's in each pass, when there were
# several and both have one for each; nothing otherwise.
passes() {
  local -n all=$1
  local a=${all[$2]:-} b=${all[$3]:-}
  [ "$PASSES" != 1 ] && [ "$(wc -w <<< "$a")" = "$PASSES" ] && [ "$(wc -w <<< "$b")" = "$PASSES" ] || return 0
  paste -d' ' <(printf '%s\n' $a) <(printf '%s\n' $b) |
    awk '{ printf "%s%.2f", (NR > 1 ? ", " : " ["), ($2 > 0 ? $1 / $2 : 0) } END { printf "]" }'
}

report() {
  local id label r p
  echo
  echo "ucgate load benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$ROOT" describe --always --dirty 2> /dev/null || echo "?"),"
  echo "${DURATION}s a setup after ${WARMUP}s of warm-up, wrk 1 thread $CONNECTIONS connections," \
    "h2load 1 thread ${H2_CONNECTIONS}x${H2_STREAMS} streams; $CPU_NOTE."
  [ "$PASSES" = 1 ] ||
    echo "Every request setup ran $PASSES times in turn: each figure is the median of its passes."
  echo
  echo "| setup | requests/s | p50 | p99 | CPU per request | peak RSS |"
  echo "|---|---:|---:|---:|---:|---:|"
  for id in "${SETUPS[@]}"; do
    label=${LABEL[$id]}
    if [ -n "${RPS[$id]:-}" ]; then
      printf '| %s | %.0f | %s | %s | %s µs | %s |\n' "$label" "${RPS[$id]}" "$(latency "${P50[$id]}")" \
        "$(latency "${P99[$id]}")" "${CPU[$id]}" "$(mib "${RSS[$id]}")"
    else
      printf '| %s | FAILED: %s | | | | |\n' "$label" "${NOTE[$id]:-no numbers}"
    fi
  done
  echo
  # The large bodies go through nginx and ucgate_shared: a table only if one of them ran.
  local big=0
  if [ "$BIG_MIB" -gt 0 ] && { [ -n "${RPS[nginx]:-}" ] || [ -n "${RPS[ucgate_shared]:-}" ]; }; then
    big=1
    echo "| $BIG_MIB MiB, streamed, median of $ROUNDS | download MB/s | CPU per MiB | upload MB/s | CPU per MiB |"
    echo "|---|---:|---:|---:|---:|"
  fi
  for id in nginx ucgate_shared; do
    { [ "$big" = 1 ] && [ -n "${RPS[$id]:-}" ]; } || continue
    if [ -n "${DL_MBS[$id]:-}" ] && [ -n "${UL_MBS[$id]:-}" ]; then
      printf '| %s | %s | %s µs | %s | %s µs |\n' "${LABEL[$id]}" "${DL_MBS[$id]}" "${DL_CPU[$id]}" \
        "${UL_MBS[$id]}" "${UL_CPU[$id]}"
    else
      printf '| %s | FAILED: %s | | | |\n' "${LABEL[$id]}" "${NOTE[$id]:-no numbers}"
    fi
  done
  echo
  if [ "$PASSES" = 1 ]; then
    echo "Ratios against the peers (one run):"
  else
    echo "Ratios against the peers (one run: of the medians, then each pass's in brackets):"
  fi
  echo
  if [ -n "${RPS[ucgate_shared]:-}" ] && [ -n "${RPS[nginx]:-}" ]; then
    r=$(ratio "${RPS[ucgate_shared]}" "${RPS[nginx]}") p=$(ratio "${P99[ucgate_shared]}" "${P99[nginx]}")
    local c
    c=$(ratio "${CPU[ucgate_shared]}" "${CPU[nginx]}")
    echo "* ucgate (shared token) / nginx: requests/s ×$r$(passes ALL_RPS ucgate_shared nginx)" \
      "(target ≥ 1: $(verdict "$r" ge)), p99 ×$p$(passes ALL_P99 ucgate_shared nginx)" \
      "(target ≤ 1: $(verdict "$p" le)), CPU per request ×$c$(passes ALL_CPU ucgate_shared nginx)" \
      "(target ≤ 1: $(verdict "$c" le))"
  fi
  if [ -n "${DL_MBS[ucgate_shared]:-}" ] && [ -n "${DL_MBS[nginx]:-}" ]; then
    local dir
    for dir in download upload; do
      local mbs cpu
      if [ "$dir" = download ]; then
        mbs=$(ratio "${DL_MBS[ucgate_shared]}" "${DL_MBS[nginx]}") cpu=$(ratio "${DL_CPU[ucgate_shared]}" "${DL_CPU[nginx]}")
      else
        mbs=$(ratio "${UL_MBS[ucgate_shared]}" "${UL_MBS[nginx]}") cpu=$(ratio "${UL_CPU[ucgate_shared]}" "${UL_CPU[nginx]}")
      fi
      echo "* $BIG_MIB MiB $dir, ucgate / nginx: MB/s ×$mbs (target ≥ 1: $(verdict "$mbs" ge))," \
        "CPU per MiB ×$cpu (target ≤ 1: $(verdict "$cpu" le))"
    done
  fi
  if [ -n "${RPS[ucgate_uc]:-}" ] && [ -n "${RPS[haproxy]:-}" ]; then
    r=$(ratio "${RPS[ucgate_uc]}" "${RPS[haproxy]}") p=$(ratio "${P99[ucgate_uc]}" "${P99[haproxy]}")
    echo "* ucgate (UC token) / HAProxy: requests/s ×$r$(passes ALL_RPS ucgate_uc haproxy)" \
      "(target ≥ 1.3: $(awk -v r="$r" 'BEGIN { print ((r >= 1.3) ? "met" : "MISSED") }'))," \
      "p99 ×$p$(passes ALL_P99 ucgate_uc haproxy) (target ≤ 1: $(verdict "$p" le))," \
      "CPU per request ×$(ratio "${CPU[ucgate_uc]}" "${CPU[haproxy]}")$(passes ALL_CPU ucgate_uc haproxy)"
  fi
  if [ "$TOKENS" -eq 0 ]; then
    :   # TOKENS=0 skips the memory measurement
  elif [ -n "${TOKENS_KIB:-}" ]; then
    echo "* ucgate with $TOKENS distinct UC tokens cached: peak RSS $(mib "$TOKENS_KIB")" \
      "(idle $(mib "$IDLE_KIB"); target < 50 MiB) — $TOKENS_NOTE"
  else
    echo "* ucgate with $TOKENS distinct UC tokens: FAILED: ${TOKENS_NOTE:-no numbers}"
  fi
  for id in "${SETUPS[@]}"; do
    [ -z "${RPS[$id]:-}" ] || [ -z "${NOTE[$id]:-}" ] || echo "* note, ${LABEL[$id]}: ${NOTE[$id]}"
  done
}

main() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  install_missing
  check_haproxy
  build_ucgate
  choose_cpus
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ucgate-load.XXXXXX")
  # The large-body files on tmpfs, so that disks do not take part.
  BIG=$(mktemp -d /dev/shm/ucgate-load.XXXXXX)
  mkdir -p "$BIG/www/api" "$BIG/dav/api" "$BIG/dav-tmp"
  head -c "$((BIG_MIB * 1024 * 1024))" /dev/urandom > "$BIG/www/api/big.bin"
  chmod -R a+rwX "$BIG"
  chmod 755 "$WORK"
  # shellcheck disable=SC2034 # DIR is read by render, through ${!name}
  DIR=$WORK
  read -r UPSTREAM_PORT NGINX_PORT HAPROXY_PORT UCGATE_PORT <<< "$(free_ports 4)"
  SHARED_TOKEN=$(random_secret)
  SIGNING_KEY=$(random_secret)
  BENCH_PASSWORD=$(random_secret)

  start_upstream
  prepare_ucgate
  login_uc_token

  local id
  for PASS in $(seq "$PASSES"); do
    [ "$PASSES" = 1 ] || log "pass $PASS of $PASSES"
    for id in "${SETUPS[@]}"; do
      run_setup "$id" || FAILED=1
    done
  done
  if [ "$TOKENS" -gt 0 ]; then run_many_tokens || FAILED=1; fi
  report
  [ "$FAILED" = 0 ] || { log "at least one setup failed"; exit 1; }
}

main "$@"
