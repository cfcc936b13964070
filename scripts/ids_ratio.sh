#!/usr/bin/env bash
# One server with 1M cards, then --ids none / unique / none / unique, 3M pays each
# (docs/BENCHMARKS.md §7). usage: scripts/ids_ratio.sh SERVER_BINARY PORT CONNECTIONS
BIN=$1; PORT=$2; CONNS=$3; DIR=/tmp/bench/r-$PORT
rm -rf $DIR; mkdir -p /tmp/bench
$BIN --port $PORT --data-dir $DIR --durability sync --clock manual --populate 1000000 > $DIR.server.log 2>&1 &
SP=$!
for i in $(seq 1 60); do grep -q listening $DIR.server.log && break; sleep 0.5; done
for ids in none unique none unique; do
  ${LOADGEN:-target/release/examples/loadgen} --target server --port $PORT --cards 1000000 --ops 3000000 --connections $CONNS --pipeline 64 --ids $ids > $DIR.loadgen.log 2>&1
  echo -n "$ids=$(grep summary $DIR.loadgen.log | grep -o 'ops_per_s=[0-9]*' | cut -d= -f2) "
done
echo
kill $SP; wait $SP 2>/dev/null; rm -rf $DIR
