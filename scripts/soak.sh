#!/usr/bin/env bash
# A long soak of the server (docs/BENCHMARKS.md §7): sync durability, 1M cards, a unique
# command id on every pay, the business day advancing every 1M pays (the load generator's
# default), so that id retention (30 days by default) and log retention (7 days) really
# happen. Every 10 s it samples the server's resident memory and the data directory's size
# into samples.csv; the load generator's progress lines give throughput over time.
#
# usage: scripts/soak.sh [pays (default 100000000)] [work dir (default /tmp/plafond-soak)]
# Binaries: $SERVER and $LOADGEN, else the release examples in $CARGO_TARGET_DIR or target/.
set -euo pipefail
pays=${1:-100000000}
work=${2:-/tmp/plafond-soak}
target=${CARGO_TARGET_DIR:-target}
server=${SERVER:-$target/release/examples/server}
loadgen=${LOADGEN:-$target/release/examples/loadgen}
port=${PORT:-7420}
rm -rf "$work"
mkdir -p "$work"
"$server" --port "$port" --data-dir "$work/data" --archive-dir "$work/archive" \
    --durability sync --clock manual --populate 1000000 >"$work/server.log" 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do grep -q listening "$work/server.log" && break; sleep 0.5; done
echo "seconds,rss_mb,data_dir_mb,archive_mb" >"$work/samples.csv"
(
    start=$(date +%s)
    while kill -0 "$server_pid" 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$server_pid/status" 2>/dev/null || echo 0)
        data=$(du -sm "$work/data" 2>/dev/null | cut -f1)
        archive=$(du -sm "$work/archive" 2>/dev/null | cut -f1 || echo 0)
        echo "$(($(date +%s) - start)),$rss,$data,${archive:-0}" >>"$work/samples.csv"
        sleep 10
    done
) &
"$loadgen" --target server --port "$port" --cards 1000000 --ops "$pays" \
    --connections 16 --pipeline 64 --ids unique --duration-s 86400 >"$work/loadgen.log" 2>&1
tail -1 "$work/loadgen.log"
echo "samples: $work/samples.csv"
