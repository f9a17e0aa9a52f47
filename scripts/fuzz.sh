#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, then fails if any found a crash.
#
#   scripts/fuzz.sh                    # every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=600 scripts/fuzz.sh path cas_xml
#
# Only stable Rust is installed: cargo-fuzz's nightly flags are enabled with RUSTC_BOOTSTRAP=1.
# FUZZ_SANITIZER (default none: ucgate is safe Rust, and it doubles the exec rate; "address"
# works too). Each target starts from its corpus in fuzz/corpus/<target> (kept between runs, not
# committed) plus the inputs kept in tests/fuzz_regressions/<target>. A crash, timeout or OOM is
# copied to tests/fuzz_regressions/<target>/, where tests/fuzz_regressions.rs replays it in the
# normal suite: fix the bug, keep the file.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build --sanitizer "$sanitizer"

failed=()
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    log=fuzz/artifacts/$target.log
    mkdir -p "$corpus" "$artifacts"
    rm -f "$artifacts"/*
    if [ -d "tests/fuzz_regressions/$target" ]; then
        find "tests/fuzz_regressions/$target" -maxdepth 1 -type f ! -name .gitkeep \
            -exec cp -n -t "$corpus" {} +
    fi
    dict=()
    [ -f "fuzz/dicts/$target.dict" ] && dict=(-dict="fuzz/dicts/$target.dict")
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${dict[@]}" >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    found=0
    for artifact in "$artifacts"/crash-* "$artifacts"/oom-* "$artifacts"/timeout-* "$artifacts"/leak-*; do
        [ -e "$artifact" ] || continue
        mkdir -p "tests/fuzz_regressions/$target"
        cp "$artifact" "tests/fuzz_regressions/$target/"
        found=$((found + 1))
    done
    if [ "$status" -ne 0 ] || [ "$found" -gt 0 ]; then
        echo "$target: FAILED after $execs execs (exit $status, $found input(s) kept in tests/fuzz_regressions/$target/); log: $log"
        failed+=("$target")
    else
        echo "$target: ok, $execs execs in ${seconds}s, corpus $(find "$corpus" -type f | wc -l) inputs"
    fi
done
rm -f "${TMPDIR:-/tmp}"/ucgate-fuzz-dotenv-*.env

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found failures in: ${failed[*]}"
    exit 1
fi
echo "fuzzing: no failure in ${#targets[@]} target(s)"
