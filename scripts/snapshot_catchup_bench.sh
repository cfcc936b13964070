#!/usr/bin/env bash
# How long a replica takes to catch up through a Raft snapshot (SPEC §14, docs/BENCHMARKS.md
# §12): three replicas on this machine, CARDS cards populated by the leader; then, RUNS
# times, a follower is killed (-9), its data directory emptied, OPS payments are sent to the
# leader (the §11 workload), the leader writes a checkpoint, and the follower is restarted
# and timed until its state digests equal the leader's (it has installed the leader's
# checkpoint and the log after it, and followed the log since). Prints the time, the
# snapshots it installed (1: not through the log), the snapshot's size and what the
# replicas logged about it. OPS runs first too, so that the leader's Raft log no longer
# starts at its first entry (a follower could otherwise replay it whole).
#   usage: SERVER=<server binary> LOADGEN=<loadgen binary> [CARDS=1000000] [OPS=1000000]
#          [RUNS=3] scripts/snapshot_catchup_bench.sh BASE_PORT
BASE=${1:-7800}; CARDS=${CARDS:-1000000}; OPS=${OPS:-1000000}; RUNS=${RUNS:-3}
DIR=/tmp/bench/snapshot-$BASE; rm -rf $DIR; mkdir -p $DIR
MEMBERS="1=127.0.0.1:$BASE:$((BASE+1)),2=127.0.0.1:$((BASE+2)):$((BASE+3)),3=127.0.0.1:$((BASE+4)):$((BASE+5))"
port() { echo $((BASE + 2 * ($1 - 1))); }
start() {
  $SERVER --node-id $1 --cluster $MEMBERS --data-dir $DIR/n$1 --snapshot-dir $DIR/s$1 \
    --clock manual --checkpoint-interval-s 10 --populate $CARDS >> $DIR/n$1.log 2>&1 &
  echo $! > $DIR/pid$1
}
for n in 1 2 3; do start $n; done
for i in $(seq 1 600); do
  up=0; for n in 1 2 3; do grep -q listening $DIR/n$n.log && up=$((up+1)); done
  [ $up = 3 ] && break; sleep 0.5
done
stats() { redis-cli -p $(port $1) STATS JSON 2>/dev/null; }
digests() { stats $1 | python3 -c 'import json,sys; print(" ".join(s["digest"] for s in json.load(sys.stdin)["shards"]))' 2>/dev/null; }
checkpoints() { stats $1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["checkpoint"]["written"])' 2>/dev/null; }
installed() { stats $1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["replication"]["snapshots_installed"])' 2>/dev/null; }
leader() { for n in 1 2 3; do [ "$(redis-cli -p $(port $n) ROLE 2>/dev/null | head -1)" = leader ] && echo $n; done; }
load() {
  $LOADGEN --target server --port $(port $1) --cards $CARDS --ops $OPS --connections 16 \
    --pipeline 64 --ids none > $DIR/lg.log 2>&1
}
load $(leader)
for run in $(seq 1 $RUNS); do
  L=$(leader); F=$(( L % 3 + 1 ))
  # Everyone agrees first (the followers have replayed the population).
  until [ "$(digests $F)" = "$(digests $L)" ]; do sleep 0.5; done
  kill -9 $(cat $DIR/pid$F); wait $(cat $DIR/pid$F) 2>/dev/null; rm -rf $DIR/n$F
  load $L
  written=$(checkpoints $L); until [ "$(checkpoints $L)" -gt "$written" ]; do sleep 0.2; done
  started=$(date +%s.%N)
  start $F
  until [ -n "$(digests $F)" ] && [ "$(digests $F)" = "$(digests $L)" ]; do sleep 0.1; done
  ended=$(date +%s.%N)
  echo "run $run: follower $F (emptied) caught up with leader $L in $(echo "$ended - $started" | bc) s, snapshots installed: $(installed $F)"
  grep -h "snapshot" $DIR/n$L.log | tail -3 | sed 's/^/  leader: /'
  grep -h "snapshot" $DIR/n$F.log | tail -4 | sed 's/^/  follower: /'
  ls -l $DIR/n$F/checkpoints | tail -1 | sed 's/^/  checkpoint: /'
done
for n in 1 2 3; do kill $(cat $DIR/pid$n); done; wait 2>/dev/null; rm -rf $DIR
