#!/usr/bin/env bash
# Runs the main job: the server on its embedded RocksDB, then a short demo with redis-cli.
# The data directory is ./plafond-data (kept, so a second run shows recovery); pass
# another as the first argument.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

data_dir="${1:-./plafond-data}"
port="${PLAFOND_PORT:-7379}"
cargo build --release -p plafond-examples --example server
server="$CARGO_TARGET_DIR/release/examples/server"
log="$(mktemp)"
"$server" --port "$port" --data-dir "$data_dir" --durability sync --clock manual >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    grep -q "listening on" "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
head -n 1 "$log"

cli() { echo "> $*"; redis-cli -p "$port" "$@"; }
cli PING
profile=$(redis-cli -p "$port" PROFILE.OPEN eu-west)
echo "> PROFILE.OPEN eu-west"; echo "$profile"
opened=$(redis-cli -p "$port" ACCOUNT.OPEN "$profile" CHECKING)
echo "> ACCOUNT.OPEN $profile CHECKING"; echo "$opened"
account=$(echo "$opened" | head -n 1)
savings=$(redis-cli -p "$port" ACCOUNT.OPEN "$profile" SAVINGS | head -n 1)
cli PAY "$account" 2500 demo-order-1
cli PAY "$account" 2500 demo-order-1
cli PAY "$account" 150000
cli TRANSFER "$account" "$savings" 10000
cli BALANCE "$account"
cli BALANCE "$savings"
cli CARD "$account"
cli CLOCK.ADVANCE 86400000
cli BATCH.RUN eu-west
cli STATS
echo "demo done: the server keeps its data in $data_dir"
