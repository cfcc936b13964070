#!/usr/bin/env bash
# What following the change stream costs the pays (docs/BENCHMARKS.md, issue 13): one fresh
# server (--durability sync, host clock, 1M cards), then 2M pays from the load generator,
# alone and with the example consumer following every stream from the end (count-only),
# alternated. Prints per run the pay rate, the server's CPU per pay (utime+stime of
# /proc/PID/stat: robust on a shared machine, where the rate is not), its minor page faults
# (a fault on fresh memory zeroes a page), the consumer's CPU per pay, and the consumer's
# lag lines (every second).
#   usage: LOADGEN=<loadgen> CONSUMER=<consumer> [MODES="alone follow ..."] [OPS=N] \
#          scripts/stream_cost.sh SERVER PORT
BIN=$1; PORT=$2; OPS=${OPS:-2000000}; DIR=/tmp/bench/s-$PORT
MODES=${MODES:-alone follow alone follow alone follow}
rm -rf $DIR; mkdir -p /tmp/bench
$BIN --port $PORT --data-dir $DIR --durability sync --populate 1000000 > $DIR.server.log 2>&1 &
SP=$!
for i in $(seq 1 240); do grep -q listening $DIR.server.log && break; sleep 0.5; done
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
faults() { awk '{print $10}' /proc/$1/stat; }
for mode in $MODES; do
  CP=
  if [ $mode = follow ]; then
    $CONSUMER --port $PORT --count-only --from-end --progress-every-ms 1000 2> $DIR.consumer.log &
    CP=$!
    sleep 2
  fi
  before=$(cpu $SP); fbefore=$(faults $SP); [ -n "$CP" ] && cbefore=$(cpu $CP)
  ${LOADGEN} --target server --port $PORT --cards 1000000 --ops $OPS --connections 16 --pipeline 64 --ids none > $DIR.lg.log 2>&1
  after=$(cpu $SP); fafter=$(faults $SP); [ -n "$CP" ] && cafter=$(cpu $CP)
  rate=$(grep summary $DIR.lg.log | grep -o 'ops_per_s=[0-9]*' | cut -d= -f2)
  line="mode=$mode ops_per_s=$rate server_cpu_us_per_pay=$(echo "($after-$before)*10000/$OPS" | bc -l | cut -c1-5)"
  line="$line server_faults_per_1k_pays=$(echo "($fafter-$fbefore)*1000/$OPS" | bc -l | cut -c1-5)"
  if [ -n "$CP" ]; then
    sleep 2
    kill -TERM $CP; wait $CP 2>/dev/null
    line="$line consumer_cpu_us_per_pay=$(echo "($cafter-$cbefore)*10000/$OPS" | bc -l | cut -c1-5)"
    line="$line lag_ms=$(grep -o 'lag_ms=[-0-9]*' $DIR.consumer.log | cut -d= -f2 | tr '\n' ',')"
  fi
  echo "$line"
done
kill $SP; wait $SP 2>/dev/null; rm -rf $DIR
