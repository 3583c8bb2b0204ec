#!/usr/bin/env python3
"""Splits a crema profile into the parts of the node that took its CPU, per operation.

    scripts/cpu-per-write.sh --shards 16 --secs 8 --perf /tmp/w1.data   # prints ms per 1,000 ops per node
    scripts/perf-split.py /tmp/w1.data 82.9                              # their sum over the nodes

Each sample of `perf.data` (recorded with call graphs, as `cpu-per-write.sh --perf` does) is
counted in the first part, in the order below, that has a frame on its stack; the sample
shares are then scaled to microseconds per operation with the CPU the nodes spent per 1,000
operations (the second argument, in ms: the sum of the per-node figures the script printed).
Needs `perf` (Debian's linux-perf).
"""

import collections
import subprocess
import sys

# (part, frames that put a sample in it), checked in this order.
PARTS = [
    ("apply (state machine)", ["Group<S>>::apply", "CacheStateMachine::apply"]),
    ("raft-rs ready/advance", ["RawNode<T>::ready", "RawNode<T>::advance", "on_ready"]),
    ("raft-rs step", ["RawNode<T>::step", "Group<S>::step"]),
    ("proposing", ["propose_gathered", "Group<S>::propose"]),
    ("group loop, rest", ["Group<S>::pass", "Group<S>::run"]),
    ("log writer thread", ["rocks_writer"]),
    ("read rounds", ["read_rounds"]),
    ("peer transport, receiving", ["read_loop", "Transport::dispatch", "on_envelope"]),
    ("peer transport, sending", ["write_loop", "write_batch"]),
    ("RESP connections", ["crema_server::"]),
    ("tokio, parked", ["park_internal", "Context::park", "epoll_wait"]),
    ("tokio, scheduling", ["tokio::runtime"]),
]


def samples(path):
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "ip,sym"], capture_output=True, text=True, check=True
    ).stdout
    stack = []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            if stack:
                yield stack
            stack = []
        else:
            stack.append(line.split(" ", 1)[1] if " " in line else line)
    if stack:
        yield stack


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, ms_per_1000 = sys.argv[1], float(sys.argv[2])
    counts = collections.Counter()
    total = 0
    for stack in samples(path):
        total += 1
        frames = "\n".join(stack)
        part = next((name for name, pats in PARTS if any(p in frames for p in pats)), "other")
        counts[part] += 1
    if total == 0:
        sys.exit(f"no samples in {path}")
    print(f"{total} samples; {ms_per_1000} ms CPU per 1,000 operations, all nodes")
    for name, _ in PARTS + [("other", [])]:
        n = counts[name]
        print(f"{name:28s} {100 * n / total:5.1f}%  {ms_per_1000 * n / total:6.2f} µs per operation")


if __name__ == "__main__":
    main()
