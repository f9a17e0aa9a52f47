#!/usr/bin/env bash
# Bounded soak test (issue 9): the release ucgate on loopback under valid and invalid
# credentials, 8 MiB uploads and a SIGHUP every 500 ms, for SOAK_SECONDS (60). Prints requests
# by kind, unexpected outcomes, RSS and open fds; fails on any unexpected outcome, fd growth > 16
# or RSS growth > 32 MiB.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cargo build --release --locked --bin ucgate --example soak
exec target/release/examples/soak --binary target/release/ucgate --seconds "${SOAK_SECONDS:-60}"
