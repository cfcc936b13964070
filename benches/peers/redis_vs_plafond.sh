#!/usr/bin/env bash
# The peer a bank would try first: Redis 7 with the check-and-debit as a Lua script,
# fsync on every write (appendfsync always), against plafond's server (durability sync),
# driven by the same client (redis-benchmark), same workload, same machine, same run.
#
#   bash benches/peers/redis_vs_plafond.sh [CARDS] [REQUESTS] [PIPELINE]
set -euo pipefail
cd "$(dirname "$0")/../.."
cards="${1:-100000}"
requests="${2:-1000000}"
pipeline="${3:-64}"
target_dir="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d)"
trap 'kill $redis_pid $plafond_pid 2>/dev/null || true; rm -rf "$work"' EXIT

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
echo "== Redis 7 + Lua, appendfsync always"
redis-benchmark -p 6390 -r "$cards" -n "$requests" -P "$pipeline" -q \
    EVALSHA "$sha" 1 c:__rand_int__ 100 | tr '\r' '\n' | tail -n 1
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true

cargo build --release -q -p plafond-examples --example server
"$target_dir/release/examples/server" --port 7390 --data-dir "$work/plafond" --durability sync \
    --populate "$cards" >"$work/plafond.log" 2>&1 &
plafond_pid=$!
until grep -q "listening on" "$work/plafond.log"; do sleep 0.1; done
echo "== plafond server, durability sync"
redis-benchmark -p 7390 -r "$cards" -n "$requests" -P "$pipeline" -q \
    PAY __rand_int__ 100 | tr '\r' '\n' | tail -n 1
