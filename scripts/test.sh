#!/usr/bin/env bash
# The test command of ucgate (README and .ci/run call it): formatting, lints, every test.
# Installs what the tests need when it is missing; non-interactive (works with CI=true, no stdin).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
exec < /dev/null
log() { printf 'test.sh: %s\n' "$*" >&2; }

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-auto}
# Loopback servers only: never send test traffic through a proxy.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
# In CI the lock file is the contract.
CARGO_FLAGS=()
if [ -n "${CI:-}" ] && [ "${CI}" != "false" ]; then
  CARGO_FLAGS=(--locked)
  # A clean build is never rebuilt in part: incremental caches only cost time there.
  export CARGO_INCREMENTAL=0
fi

# --- what the tests need ----------------------------------------------------
command -v cargo > /dev/null || { log "cargo is required (https://rustup.rs)"; exit 1; }
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version > /dev/null 2>&1; then
    command -v rustup > /dev/null || { log "cargo $component is missing and rustup is not there to add it"; exit 1; }
    log "rustup component add $component"
    rustup component add "$component"
  fi
done
# Real identity providers (MIT KDC, oidc-provider, django-cas-server) for the exchange tests.
if [ -f scripts/install-idp-deps.sh ]; then
  bash scripts/install-idp-deps.sh
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- checks -----------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all --check

# `cargo clippy --all-targets -- -D warnings`, run inside the builds below rather than before
# them: cargo clippy type-checks every dependency a second time without keeping code (a third
# of the whole run on 2 cores). Cargo's own clippy subcommand works the same way (clippy-driver
# as the workspace's compiler wrapper, its lint flags in CLIPPY_ARGS): only the workspace's
# crates go through it, and it compiles them as rustc does while linting every target
# (library, binaries, tests, benches, examples) that nextest --all-targets builds.
CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$CLIPPY_DRIVER" ] || { log "clippy-driver not found at $CLIPPY_DRIVER"; exit 1; }
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
log "cargo clippy (in the builds): -D warnings"

# The demo upstream of run-example.sh, as a plain binary: tests/first_run.rs runs the script
# with it (--all-targets builds examples only as test harnesses).
log "cargo build --example echo_upstream"
cargo build "${CARGO_FLAGS[@]}" --example echo_upstream
if cargo nextest --version > /dev/null 2>&1; then
  log "cargo nextest run"
  # The crate has no doctests (nextest does not run them): the summary line is the last word.
  cargo nextest run "${CARGO_FLAGS[@]}" --workspace --all-targets --no-fail-fast
else
  log "cargo-nextest not found, running cargo test"
  cargo test "${CARGO_FLAGS[@]}" --workspace --all-targets --no-fail-fast
fi
log "ok"
