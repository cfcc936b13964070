#!/usr/bin/env bash
# Reading the change stream from the start (docs/BENCHMARKS.md §4, issue 13): one shard
# of 1,000,006 entries (--populate 500000, made once in DIR and kept), one server restarted
# on it, then each consumer given read it all ROUNDS times in turn (--count-only
# --catch-up), after one read to warm the server. Prints per read the wall time, the
# entries per second, and the server's and the consumer's CPU per entry (utime+stime).
#   usage: [COUNT=2000] [ROUNDS=3] [DIR=/tmp/bench/stream-read] \
#          scripts/stream_read.sh SERVER PORT CONSUMER [CONSUMER ...]
SRV=$1; PORT=$2; shift 2; COUNT=${COUNT:-2000}; ROUNDS=${ROUNDS:-3}
DIR=${DIR:-/tmp/bench/stream-read}; ENTRIES=1000006
if [ ! -d $DIR ]; then
  $SRV --port $PORT --data-dir $DIR --shards 1 --populate 500000 > $DIR.log 2>&1 &
  P=$!; for i in $(seq 1 240); do grep -q listening $DIR.log && break; sleep 0.5; done
  kill $P; wait $P 2>/dev/null
fi
nice -n -15 $SRV --port $PORT --data-dir $DIR --shards 1 > $DIR.log 2>&1 &
SP=$!; for i in $(seq 1 240); do grep -q listening $DIR.log && break; sleep 0.5; done
cpu() { awk '{print $14+$15}' /proc/$SP/stat; }
$1 --port $PORT --count-only --catch-up --count $COUNT 2>/dev/null
for r in $(seq 1 $ROUNDS); do for CON in "$@"; do
  c0=$(cpu)
  t=$( { /usr/bin/time -f "%e %U %S" nice -n -15 $CON --port $PORT --count-only --catch-up --count $COUNT 2>&1 >/dev/null; } | tail -1)
  c1=$(cpu); read wall cu cs <<< "$t"
  echo "consumer=$CON count=$COUNT wall_s=$wall entries_per_s=$(echo "$ENTRIES/$wall" | bc)" \
    "server_cpu_us_per_entry=$(echo "($c1-$c0)*10000/$ENTRIES" | bc -l | cut -c1-5)" \
    "consumer_cpu_us_per_entry=$(echo "($cu+$cs)*1000000/$ENTRIES" | bc -l | cut -c1-5)" \
    "load=$(cut -d' ' -f1 /proc/loadavg)"
done; done
kill $SP; wait $SP 2>/dev/null
