#!/usr/bin/env bash
# What watching the server costs (docs/BENCHMARKS.md §4): one fresh server with 1M cards
# (sync, manual clock, --metrics-port), then redis-benchmark -P 64, 2M pays, while:
#   none     nothing watches;
#   scraped  a scraper GETs /metrics every second and another /stats.json every second
#            (what an open live page asks of the server);
#   page     the scraper, and the live page open in headless Chromium on this machine
#            (it fetches /stats.json every second and draws; the browser's own CPU too).
# usage: scripts/observed_ab.sh SERVER_BINARY PORT none|scraped|page
#   prints "<mode> rb=<redis-benchmark pays/s>"
set -u
BIN=$1; PORT=$2; MODE=$3; METRICS=$((PORT + 2000)); BENCH=${BENCH_DIR:-/tmp/bench}
DIR=$BENCH/observed-$PORT
rm -rf $DIR $DIR.profile; mkdir -p $BENCH
$BIN --port $PORT --data-dir $DIR --durability sync --clock manual --populate 1000000 \
    --metrics-port $METRICS > $DIR.server.log 2>&1 &
SP=$!
for i in $(seq 1 120); do grep -q listening $DIR.server.log && break; sleep 0.5; done
WATCHERS=()
if [ "$MODE" != none ]; then
    (while true; do curl -s -o /dev/null localhost:$METRICS/metrics; sleep 1; done) &
    WATCHERS+=($!)
fi
if [ "$MODE" = scraped ]; then
    (while true; do curl -s -o /dev/null localhost:$METRICS/stats.json; sleep 1; done) &
    WATCHERS+=($!)
fi
if [ "$MODE" = page ]; then
    # Stays open (remote debugging keeps it running) and polls in real time.
    chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-sync \
        --disable-background-networking --disable-component-update \
        --user-data-dir=$DIR.profile --remote-debugging-port=$((PORT + 3000)) \
        http://127.0.0.1:$METRICS/ > /dev/null 2>&1 &
    WATCHERS+=($!)
    sleep 3
fi
rb=$(redis-benchmark -p $PORT -r 1000000 -n 2000000 -P 64 -c 50 -q PAY __rand_int__ 100 2>&1 \
    | tr '\r' '\n' | grep -o "[0-9.]* requests per second" | tail -1 | cut -d' ' -f1)
echo "$MODE rb=$rb"
for pid in "${WATCHERS[@]}"; do kill $pid; wait $pid 2>/dev/null; done
kill $SP; wait $SP 2>/dev/null; rm -rf $DIR $DIR.profile
