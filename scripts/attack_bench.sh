#!/usr/bin/env bash
# The issue-15 benchmark (docs/BENCHMARKS.md §8). usage: scripts/attack_bench.sh NAME ATTACK_ARGS...   (ATTACK_ARGS empty: alone)
set -u
name=$1; shift
B=${BIN:-$HOME/.cache/plafond/target/release/examples}; P=7611; T=bench-token-0123456789abcdef
rm -rf /tmp/c-bench-data; mkdir -p /tmp/c-bench-out
$B/server --port $P --durability ${DUR:-sync} --data-dir /tmp/c-bench-data --populate 100000 --clock manual --token $T > /tmp/c-bench-out/$name.server.out 2> /tmp/c-bench-out/$name.server.err &
spid=$!
for i in $(seq 1 200); do grep -q "listening on" /tmp/c-bench-out/$name.server.out 2>/dev/null && break; sleep 0.2; done
base=$(grep VmRSS /proc/$spid/status | awk '{print $2}')
apid=
if [ $# -gt 0 ]; then
  $B/attack --port $P --duration-s 40 "$@" 2> /tmp/c-bench-out/$name.attack.err & apid=$!
  sleep 8
fi
( peak=0; while kill -0 $spid 2>/dev/null; do r=$(grep VmRSS /proc/$spid/status 2>/dev/null | awk '{print $2}'); [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r; echo $peak > /tmp/c-bench-out/$name.peak; sleep 0.5; done ) &
mpid=$!
$B/loadgen --target server --port $P --token $T --cards 100000 --duration-s 20 --connections 4 --pipeline 64 --rate 20000 > /tmp/c-bench-out/$name.rate.out 2>/dev/null
$B/loadgen --target server --port $P --token $T --cards 100000 --duration-s 10 > /tmp/c-bench-out/$name.closed.out 2>/dev/null
# A fresh client: 50 single PINGs and PAYs on new connections, worst latency.
python3 - $P $T > /tmp/c-bench-out/$name.fresh.out <<'PY'
import socket,sys,time
p=int(sys.argv[1]); t=sys.argv[2].encode()
worst=0; lat=[]
for i in range(50):
    s0=time.time()
    s=socket.create_connection(("127.0.0.1",p)); s.settimeout(30)
    s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*3\r\n$3\r\nPAY\r\n$1\r\n7\r\n$1\r\n1\r\n"%(len(t),t))
    buf=b""
    while buf.count(b"\r\n")<4: 
        d=s.recv(4096)
        if not d: break
        buf+=d
    lat.append((time.time()-s0)*1000); s.close(); time.sleep(0.1)
lat.sort(); print("fresh connect+AUTH+PAY ms: median %.1f p90 %.1f max %.1f"%(lat[25],lat[45],lat[-1]))
PY
echo "rss_base_kib=$base rss_peak_kib=$(cat /tmp/c-bench-out/$name.peak)" > /tmp/c-bench-out/$name.rss
[ -n "$apid" ] && { kill $apid; wait $apid; } 2>/dev/null
kill $spid; wait $spid 2>/dev/null; kill $mpid 2>/dev/null
grep -h "summary" /tmp/c-bench-out/$name.rate.out /tmp/c-bench-out/$name.closed.out; cat /tmp/c-bench-out/$name.fresh.out /tmp/c-bench-out/$name.rss
