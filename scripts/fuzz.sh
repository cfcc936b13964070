#!/usr/bin/env bash
# Runs each fuzz target for a bounded time and keeps what it found small enough to replay
# on stable (docs/FUZZING.md). Not part of CI: scripts/test.sh runs only the regression tests.
#
#   scripts/fuzz.sh [SECONDS] [TARGET]   (default 60 s per target; every target)
#
# Needs `cargo install cargo-fuzz` and a nightly toolchain. The snapshot targets link
# RocksDB: set ROCKSDB_LIB_DIR/ROCKSDB_STATIC as for any build.
set -euo pipefail
seconds="${1:-60}"
only="${2:-}"
root="$(cd "$(dirname "$0")/.." && pwd)"
# The v3 snapshot decoder spreads its tables over scoped worker threads; glibc's and std's
# per-thread bookkeeping for them (32 and 48 bytes) is still held when libFuzzer's leak
# check runs as a thread exits, and is reported as leaked (not ours, and not a leak).
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

run() { # crate-dir target
    local dir="$root/$1" target="$2"
    [ -z "$only" ] || [ "$only" = "$target" ] || return 0
    local corpus="$dir/corpus/$target" kept="$dir/regressions/$target"
    mkdir -p "$corpus" "$kept"
    # The kept corpus seeds the run; what the run adds is minimized back into it.
    cp -n "$kept"/* "$corpus"/ 2>/dev/null || true
    (cd "$dir" && cargo +nightly fuzz run --release "$target" "$corpus" -- \
        -max_total_time="$seconds" -max_len=131072 -timeout=10 -print_final_stats=1)
    local minimized
    minimized="$(mktemp -d)"
    (cd "$dir" && cargo +nightly fuzz cmin --release "$target" "$corpus" -- -max_len=131072)
    cp "$corpus"/* "$minimized"/
    # Keep at most 300 files, the smallest first, plus every seed already kept.
    ls -S -r "$minimized" | head -n 300 | while read -r name; do
        cp -n "$minimized/$name" "$kept/$name"
    done
    rm -rf "$minimized"
    echo "$target: $(ls "$kept" | wc -l) files kept in ${kept#"$root"/}"
}

run examples/wire/fuzz request_parser
run snapshots/fuzz snapshot_reader
