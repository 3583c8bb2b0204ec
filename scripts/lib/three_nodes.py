"""Starts 3 `crema serve` nodes on 127.0.0.1 for the scripts beside this directory: node i
(1-3) has RESP port 15000+i, peer port 15100+i, admin port 15200+i, memory storage, and logs
to WORK/node{i}.log."""
import subprocess


def start_three(binary, work, extra=()):
    """The three processes (kill and wait for them when done). `{i}` in an argument of `extra`
    becomes the node's number."""
    procs = []
    for i in (1, 2, 3):
        peers = []
        for j in (1, 2, 3):
            if j != i:
                peers += ["--peer", f"{j}=127.0.0.1:{15100 + j},127.0.0.1:{15000 + j}"]
        procs.append(subprocess.Popen(
            [binary, "serve", "--node-id", str(i), "--raft-addr", f"127.0.0.1:{15100 + i}",
             "--resp-addr", f"127.0.0.1:{15000 + i}", "--admin-addr", f"127.0.0.1:{15200 + i}",
             *(a.replace("{i}", str(i)) for a in extra), *peers],
            stdout=subprocess.DEVNULL, stderr=open(f"{work}/node{i}.log", "w")))
    return procs
