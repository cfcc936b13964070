#!/usr/bin/env bash
# One fresh server with 1M cards (sync, manual clock), then redis-benchmark -P 64 and the
# load generator (16 x 64, no ids), 3M pays each (docs/BENCHMARKS.md §4, before/after).
# usage: LOADGEN=<loadgen binary> scripts/server_ab.sh SERVER_BINARY PORT
#   prints "rb=<redis-benchmark pays/s> lg=<loadgen pays/s>"
BIN=$1; PORT=$2; DIR=/tmp/bench/ab-$PORT
rm -rf $DIR; mkdir -p /tmp/bench
$BIN --port $PORT --data-dir $DIR --durability sync --clock manual --populate 1000000 > $DIR.server.log 2>&1 &
SP=$!
for i in $(seq 1 120); do grep -q listening $DIR.server.log && break; sleep 0.5; done
rb=$(redis-benchmark -p $PORT -r 1000000 -n 3000000 -P 64 -c 50 -q PAY __rand_int__ 100 2>&1 | tr '\r' '\n' | grep -o "[0-9.]* requests per second" | tail -1 | cut -d' ' -f1)
${LOADGEN:-target/release/examples/loadgen} --target server --port $PORT --cards 1000000 --ops 3000000 --connections 16 --pipeline 64 --ids none > $DIR.loadgen.log 2>&1
lg=$(grep summary $DIR.loadgen.log | grep -o 'ops_per_s=[0-9]*' | cut -d= -f2)
echo "rb=$rb lg=$lg"
kill $SP; wait $SP 2>/dev/null; rm -rf $DIR
