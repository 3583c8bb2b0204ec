#!/usr/bin/env python3
"""Does client load stall a leader's Raft group? Starts 3 `crema serve` nodes (memory storage,
RESP ports 15001-15003), stores an 8 MB value on the leader, then makes SETs through a
follower (they reach the leader over the peer port) every 5 ms while CLIENTS connections ask
the leader for the value and never read it. Prints the slowest SET and whether the leader
changed.

    scripts/client-stall.py [--bin target/release/crema] [--clients 200] [--via leader]
"""
import argparse
import os
import socket
import sys
import tempfile
import threading
import time

import redis

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from three_nodes import start_three  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--bin", default="target/release/crema")
parser.add_argument("--clients", type=int, default=200)
parser.add_argument("--via", choices=["follower", "leader"], default="follower")
args = parser.parse_args()
work = tempfile.mkdtemp()
procs = start_three(args.bin, work, ())


def leader():
    for i in (1, 2, 3):
        try:
            if redis.Redis(port=15000 + i, socket_timeout=2).info("replication").get("role") == "master":
                return i
        except redis.RedisError:
            pass
    return None


try:
    deadline = time.time() + 20
    while leader() is None:
        assert time.time() < deadline, "no leader"
        time.sleep(0.1)
    first = leader()
    redis.Redis(port=15000 + first).set("big", b"x" * (8 << 20))
    probe_node = first if args.via == "leader" else first % 3 + 1
    latencies, stop = [], threading.Event()

    def probe():
        c = redis.Redis(port=15000 + probe_node, socket_timeout=10)
        n = 0
        while not stop.is_set():
            started = time.time()
            c.set("probe", n)
            latencies.append(time.time() - started)
            n += 1
            time.sleep(0.005)

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(1)
    held = []
    for _ in range(args.clients):
        s = socket.create_connection(("127.0.0.1", 15000 + first))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET big\r\n")
        held.append(s)
    time.sleep(4)
    stop.set()
    thread.join()
    latencies.sort()
    print(f"{len(latencies)} SETs through the {args.via}: slowest {latencies[-1] * 1000:.0f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; "
          f"leader {first} before, {leader()} after")
finally:
    for p in procs:
        p.kill()
