#!/usr/bin/env bash
# Three replicas on this machine (SPEC §14), sync, the §11 workload from the pipelined
# load generator against the leader: pays/s and the CPU time per pay of each replica and
# of all three (from /proc/PID/stat), for --ids none and unique (docs/BENCHMARKS.md,
# replication). Every replica shares the same cores and disk.
#   usage: SERVER=<server binary> LOADGEN=<loadgen binary> [IDS="none unique"] [OPS=N]
#          [CARDS=N] [CONNS=16] scripts/cluster_bench.sh BASE_PORT
BASE=${1:-7600}; OPS=${OPS:-3000000}; CARDS=${CARDS:-1000000}; CONNS=${CONNS:-16}
DIR=/tmp/bench/cluster-$BASE; rm -rf $DIR; mkdir -p $DIR
MEMBERS="1=127.0.0.1:$BASE:$((BASE+1)),2=127.0.0.1:$((BASE+2)):$((BASE+3)),3=127.0.0.1:$((BASE+4)):$((BASE+5))"
PIDS=()
for n in 1 2 3; do
  $SERVER --node-id $n --cluster $MEMBERS --data-dir $DIR/n$n --snapshot-dir $DIR/s$n \
    --clock manual --populate $CARDS > $DIR/n$n.log 2>&1 &
  PIDS+=($!)
done
for i in $(seq 1 240); do
  up=0; for n in 1 2 3; do grep -q listening $DIR/n$n.log && up=$((up+1)); done
  [ $up = 3 ] && break; sleep 0.5
done
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
# Per thread name, the CPU ticks of process $1.
threads() { for t in /proc/$1/task/*; do echo "$(cat $t/comm | tr ' ' _) $(awk '{print $14+$15}' $t/stat)"; done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort; }
for ids in ${IDS:-none unique}; do
  before=(); for k in 0 1 2; do before+=($(cpu ${PIDS[$k]})); threads ${PIDS[$k]} > $DIR/t$k.before; done
  $LOADGEN --target server --port $BASE --cards $CARDS --ops $OPS --connections $CONNS \
    --pipeline 64 --ids $ids > $DIR/lg.log 2>&1
  rate=$(grep summary $DIR/lg.log | grep -o 'ops_per_s=[0-9]*' | cut -d= -f2)
  line="ids=$ids ops_per_s=$rate cpu_us_per_pay:"; total=0
  for k in 0 1 2; do
    d=$(( $(cpu ${PIDS[$k]}) - ${before[$k]} ))
    us=$(awk -v d=$d -v ops=$OPS 'BEGIN {printf "%.2f", d*10000/ops}')
    line="$line node$((k+1))=$us"; total=$(awk -v t=$total -v u=$us 'BEGIN {print t+u}')
  done
  echo "$line total=$total"
  for k in 0 1 2; do
    threads ${PIDS[$k]} > $DIR/t$k.after
    echo "  node$((k+1)) by thread:" $(join $DIR/t$k.before $DIR/t$k.after | awk -v ops=$OPS '{d=($3-$2)*10000/ops; if (d>0.01) printf "%s=%.2f ", $1, d}')
  done
  grep summary $DIR/lg.log
done
for p in "${PIDS[@]}"; do kill $p; done; wait 2>/dev/null; rm -rf $DIR
