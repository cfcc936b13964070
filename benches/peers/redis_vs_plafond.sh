#!/usr/bin/env bash
# The peer a bank would try first: Redis 7 with the check-and-debit as a Lua script,
# fsync on every write (appendfsync always), against plafond's server (durability sync),
# driven by the same client (redis-benchmark, 50 connections), same workload, same machine,
# same run. Both servers stay up and the rounds alternate between them, so machine noise
# falls on both; each round prints both rates and their ratio, the last line the median.
#
#   bash benches/peers/redis_vs_plafond.sh [CARDS] [REQUESTS] [PIPELINE] [ROUNDS]
#
# The default is issue 5's example: 1,000,000 cards, pipeline 64.
set -euo pipefail
cd "$(dirname "$0")/../.."
cards="${1:-1000000}"
requests="${2:-3000000}"
pipeline="${3:-64}"
rounds="${4:-1}"
target_dir="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d)"
redis_pid="" plafond_pid=""
# Both servers write their files until they have exited: wait for them before removing.
trap 'kill $redis_pid $plafond_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release -q -p plafond-examples --example server

# Redis: balance and seven-day spending per card in a hash; the script declines on the
# ceiling, then on funds, like plafond (a fixed window: simpler than plafond's sliding one).
redis-server --port 6390 --dir "$work" --appendonly yes --appendfsync always --save "" \
    --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!
until redis-cli -p 6390 PING >/dev/null 2>&1; do sleep 0.1; done
redis-cli -p 6390 EVAL "for i = 0, tonumber(ARGV[1]) - 1 do \
    redis.call('HSET', 'c:' .. i, 'balance', 20000, 'spent', 0) end" 0 "$cards" >/dev/null
sha=$(redis-cli -p 6390 SCRIPT LOAD "local c = redis.call('HMGET', KEYS[1], 'balance', 'spent') \
    if not c[1] then return {'DECLINED', 'UNKNOWN_CARD'} end \
    local amount = tonumber(ARGV[1]) \
    if tonumber(c[2]) + amount > 10000 then return {'DECLINED', 'CEILING_EXCEEDED'} end \
    if tonumber(c[1]) < amount then return {'DECLINED', 'INSUFFICIENT_FUNDS'} end \
    local balance = redis.call('HINCRBY', KEYS[1], 'balance', -amount) \
    local spent = redis.call('HINCRBY', KEYS[1], 'spent', amount) \
    return {'APPROVED', balance, spent}")

"$target_dir/release/examples/server" --port 7390 --data-dir "$work/plafond" --durability sync \
    --populate "$cards" >"$work/plafond.log" 2>&1 &
plafond_pid=$!
until grep -q "listening on" "$work/plafond.log"; do sleep 0.1; done

# One redis-benchmark run's summary line ("...: N requests per second, p50=...").
bench() {
    local port="$1"
    shift
    redis-benchmark -p "$port" -r "$cards" -n "$requests" -P "$pipeline" -q "$@" |
        tr '\r' '\n' | grep "requests per second" | tail -n 1
}

# The requests per second of a summary line.
rate() {
    echo "$1" | sed 's/.*: \([0-9.]*\) requests per second.*/\1/'
}

echo "cards $cards, requests $requests, pipeline $pipeline, rounds $rounds"
ratios=()
for round in $(seq 1 "$rounds"); do
    echo "== round $round: Redis 7 + Lua (appendfsync always), then plafond (durability sync)"
    redis_line=$(bench 6390 EVALSHA "$sha" 1 c:__rand_int__ 100)
    echo "   Redis:   ${redis_line#*: }"
    plafond_line=$(bench 7390 PAY __rand_int__ 100)
    echo "   plafond: ${plafond_line#*: }"
    ratio=$(awk -v p="$(rate "$plafond_line")" -v r="$(rate "$redis_line")" \
        'BEGIN { printf "%.2f", p / r }')
    echo "   ratio ${ratio}x"
    ratios+=("$ratio")
done
printf '%s\n' "${ratios[@]}" | sort -n |
    awk '{ r[NR] = $1 } END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2;
          printf "median ratio %.2fx over %d rounds (min %.2fx, max %.2fx)\n", m, NR, r[1], r[NR] }'
