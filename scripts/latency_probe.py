#!/usr/bin/env python3
"""A well-behaved client's latency, second by second: one PAY, wait for its reply, 2 ms
pause, again, for DURATION seconds; prints p50/p99/max of each second, then of the whole run
(docs/BENCHMARKS.md §8).

usage: scripts/latency_probe.py PORT DURATION_S [TOKEN]
"""
import socket
import sys
import time

port, duration = int(sys.argv[1]), float(sys.argv[2])
token = sys.argv[3].encode() if len(sys.argv) > 3 else None
conn = socket.create_connection(("127.0.0.1", port))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def call(request):
    conn.sendall(request)
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = conn.recv(65536)
        if not chunk:
            sys.exit("the server closed the connection")
        reply += chunk
    return reply


if token:
    call(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(token), token))
start = time.time()
second, latencies, every = 0, [], []
while time.time() - start < duration:
    asked = time.time()
    call(b"*3\r\n$3\r\nPAY\r\n$1\r\n7\r\n$1\r\n1\r\n")
    latencies.append((time.time() - asked) * 1000)
    every.append(latencies[-1])
    now = int(time.time() - start)
    if now != second:
        latencies.sort()
        n = len(latencies)
        print(f"t={second:3d}s n={n:4d} p50={latencies[n // 2]:.2f} "
              f"p99={latencies[int(n * 0.99)]:.2f} max={latencies[-1]:.2f} ms", flush=True)
        second, latencies = now, []
    time.sleep(0.002)
every.sort()
n = len(every)
print(f"all: n={n} p50={every[n // 2]:.2f} p99={every[int(n * 0.99)]:.2f} "
      f"p99.9={every[int(n * 0.999)]:.2f} max={every[-1]:.2f} ms")
