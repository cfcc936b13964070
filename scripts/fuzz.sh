#!/usr/bin/env bash
# Runs each fuzz target for a bounded time and keeps what it found small enough to replay
# on stable (docs/FUZZING.md). Not part of CI: scripts/test.sh runs only the regression tests.
#
#   scripts/fuzz.sh [SECONDS]   (default 60 per target)
#
# Needs `cargo install cargo-fuzz` and a nightly toolchain. The snapshot targets link
# RocksDB: set ROCKSDB_LIB_DIR/ROCKSDB_STATIC as for any build.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"

run() { # crate-dir target
    local dir="$root/$1" target="$2"
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
