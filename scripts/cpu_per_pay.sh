#!/usr/bin/env bash
# The server's CPU time per pay, by thread name (from /proc/PID/task/*/stat), for
# --ids none and unique alternated, 3M pays each, on one fresh server with 1M cards
# (docs/BENCHMARKS.md §7). On a shared machine the throughput is noise; CPU per pay is not.
# FLOWS="pay hold" alternates the load generator's flows instead (ids none; §9: a hold
# payment is AUTHORIZE then CAPTURE.FINAL, counted once).
#   usage: LOADGEN=<loadgen binary> [IDS="none unique" | FLOWS="pay hold"] [OPS=N] scripts/cpu_per_pay.sh SERVER PORT [CONNECTIONS]
BIN=$1; PORT=$2; CONNS=${3:-16}; OPS=${OPS:-3000000}; DIR=/tmp/bench/c-$PORT
rm -rf $DIR; mkdir -p /tmp/bench
$BIN --port $PORT --data-dir $DIR --durability sync --clock manual --populate 1000000 > $DIR.server.log 2>&1 &
SP=$!
for i in $(seq 1 120); do grep -q listening $DIR.server.log && break; sleep 0.5; done
snap() { for t in /proc/$SP/task/*; do echo "$(cat $t/comm | tr ' ' _) $(awk '{print $14+$15}' $t/stat)"; done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort; }
if [ -n "${FLOWS:-}" ]; then runs=$(for f in $FLOWS; do echo none/$f; done)
else runs=$(for i in ${IDS:-none unique none unique}; do echo $i/pay; done); fi
for run in $runs; do
  ids=${run%/*}; flow=${run#*/}
  snap > /tmp/cpu.before
  ${LOADGEN} --target server --port $PORT --cards 1000000 --ops $OPS --connections $CONNS --pipeline 64 --ids $ids --flow $flow > $DIR.lg.log 2>&1
  snap > /tmp/cpu.after
  rate=$(grep summary $DIR.lg.log | grep -o 'ops_per_s=[0-9]*' | cut -d= -f2)
  echo "ids=$ids flow=$flow ops_per_s=$rate  cpu_us_per_pay:" $(join /tmp/cpu.before /tmp/cpu.after | awk -v ops=$OPS '{d=($3-$2)*10000/ops; if (d>0.01) printf "%s=%.2f ", $1, d; t+=d} END {printf "total=%.2f", t}')
done
kill $SP; wait $SP 2>/dev/null; rm -rf $DIR
