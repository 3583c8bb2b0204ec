#!/usr/bin/env python3
"""Do concurrent writes of multi-MB values cost leaderships? Starts 3 `crema serve` nodes
(memory storage, RESP ports 15001-15003), has `crema-bench` make CLIENTS connections SET
values of VALUE_SIZE bytes on the leader for SECS seconds, and meanwhile makes a small SET
through a follower every 5 ms. Prints the slowest and p99 small SET, the small SETs that
failed, the leaderships taken (of any shard), the snapshots sent, the frames to peers
dropped, how long the first small SET on the leader took once the load stopped and how many
writes the leaders left out of the log because their callers had timed out, the bench's
throughput, and each node's resident memory at the end.

    scripts/big-writes.py [--bin-dir target/release] [--clients 20] [--value-size 8000000]
                          [--secs 20] [--tick-ms 100] [--shards 1] [--storage rocksdb]
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import redis

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from three_nodes import start_three  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--bin-dir", default="target/release")
parser.add_argument("--clients", type=int, default=20)
parser.add_argument("--value-size", type=int, default=8_000_000)
parser.add_argument("--secs", type=int, default=20)
parser.add_argument("--tick-ms", type=int, default=100)
parser.add_argument("--shards", type=int, default=1)
parser.add_argument("--storage", choices=["memory", "rocksdb"], default="memory")
args = parser.parse_args()
work = tempfile.mkdtemp()
storage = ("--storage", "rocksdb", "--data-dir", f"{work}/data{{i}}") if args.storage == "rocksdb" else ()
procs = start_three(f"{args.bin_dir}/crema", work,
                    ("--tick-interval-ms", str(args.tick_ms), "--shards", str(args.shards), *storage))


def metric(i, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{15200 + i}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def leaderships():
    return sum(open(f).read().count("role=Leader") for f in glob.glob(f"{work}/node*.log"))


def leader_of_slot_zero():
    for i in (1, 2, 3):
        try:
            c = redis.Redis(port=15000 + i, socket_timeout=2)
            slots = c.execute_command("CLUSTER", "SLOTS")
            if all(len(s) > 2 for s in slots):
                return int(slots[0][2][1]) - 15000
        except redis.RedisError:
            pass
    return None


def all_led():
    try:
        info = redis.Redis(port=15001, socket_timeout=2).info("shards")
    except redis.RedisError:
        return False
    return sum(1 for k, v in info.items() if k.startswith("shard") and "leader=0" not in str(v)) >= args.shards


try:
    deadline = time.time() + 30
    while not (all_led() and leader_of_slot_zero() and leaderships() >= args.shards):
        assert time.time() < deadline, "no leader"
        time.sleep(0.1)
    first = leader_of_slot_zero()
    probe_node = first % 3 + 1
    time.sleep(1)
    leaderships_before = leaderships()
    dropped_before = sum(metric(i, "crema_peer_frames_dropped_total") for i in (1, 2, 3))
    latencies, failures, stop = [], [], threading.Event()

    def probe():
        c = redis.Redis(port=15000 + probe_node, socket_timeout=10)
        n = 0
        while not stop.is_set():
            started = time.time()
            try:
                c.set("probe", n)
                latencies.append(time.time() - started)
            except redis.RedisError as e:
                failures.append(str(e))
            n += 1
            time.sleep(0.005)

    thread = threading.Thread(target=probe)
    thread.start()
    bench = subprocess.run(
        [f"{args.bin_dir}/crema-bench", "--clients", str(args.clients), "--keys", str(args.clients),
         "--value-size", str(args.value_size), "--reads", "0", "--duration", str(args.secs), "--warmup", "0",
         "resp", "--addr", f"127.0.0.1:{15000 + first}"], capture_output=True, text=True)
    # Writes whose callers timed out under the load must not hold up the first one after it.
    started = time.time()
    redis.Redis(port=15000 + first, socket_timeout=60).set("after-load", 1)
    after_load = time.time() - started
    stop.set()
    thread.join()
    elections = leaderships() - leaderships_before
    dropped = sum(metric(i, "crema_peer_frames_dropped_total") for i in (1, 2, 3)) - dropped_before
    snapshots = sum(open(f).read().count("snapshot sent") for f in glob.glob(f"{work}/node*.log"))
    latencies.sort()
    print(f"{len(latencies)} small SETs through a follower: slowest {latencies[-1] * 1000:.0f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, {len(failures)} failed"
          + (f" ({failures[0]})" if failures else ""))
    print(f"leaderships taken: {elections}; snapshots sent: {snapshots}; frames to peers dropped: {dropped:.0f}")
    given_up = sum(metric(i, "crema_raft_writes_given_up_total") for i in (1, 2, 3))
    print(f"first small SET on the leader after the load: {after_load * 1000:.0f} ms; "
          f"writes left out of the log after their callers timed out: {given_up:.0f}")
    rss = [int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024 for p in procs]
    print(f"resident memory at the end: {rss} MiB")
    print("\n".join(line for line in bench.stdout.splitlines() if "ops/s" in line or "error" in line.lower())
          or bench.stdout[-2000:] + bench.stderr[-2000:])
finally:
    for p in procs:
        p.kill()
        p.wait()
