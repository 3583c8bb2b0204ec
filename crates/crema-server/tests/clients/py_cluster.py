"""redis-py's RedisCluster against a sharded crema cluster: it reads the slot map, routes every
key to its shard's leader, and keeps working after the test kills a node (it waits for a line on
stdin after printing "kill now").

Usage: py_cluster.py host:port [host:port ...]
"""
import sys
import time

from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError


def retrying(what, call, deadline_s=20.0):
    """Calls `call` until it succeeds, as an application would across a failover."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return call()
        except RedisError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {deadline_s}s: {e!r}")
            time.sleep(0.1)


def main():
    nodes = [ClusterNode(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[1:]]
    rc = RedisCluster(startup_nodes=nodes, decode_responses=True, cluster_error_retry_attempts=5)
    slots = rc.cluster_slots(target_nodes=RedisCluster.RANDOM)
    covered = sorted((s[0], s[1]) for s in slots)
    assert covered[0][0] == 0 and covered[-1][1] == 16383, covered
    assert len(rc.get_nodes()) == len(nodes), rc.get_nodes()
    # Each range names its primary alone, and every node that leads a shard is a primary to the
    # client. Found from outside: with the other members listed as each range's replicas (every
    # node holds replicas of shards others lead), redis-py's slot cache kept the role a node was
    # last listed with, and get_primaries() missed nodes that lead shards.
    assert all(not r["replicas"] for r in slots.values()), slots
    leaders = {f"{r['primary'][0]}:{r['primary'][1]}" for r in slots.values()}
    assert {n.name for n in rc.get_primaries()} == leaders, (rc.get_primaries(), leaders)
    # Every node is a master of the slots it leads: no replicas (found from outside, the
    # command was unknown and cluster_replicas() raised).
    for node in rc.get_nodes():
        assert rc.cluster_replicas(rc.cluster_myid(node)) == {}, node

    for i in range(300):
        rc.set(f"key:{i}", i)
    for i in range(300):
        assert rc.get(f"key:{i}") == str(i), i
    # Multi-key commands are split by slot by the client; hash tags keep keys together.
    assert rc.mget_nonatomic([f"key:{i}" for i in range(10)]) == [str(i) for i in range(10)]
    rc.mset({"{user:7}:name": "ann", "{user:7}:mail": "ann@example.com"})
    assert rc.mget("{user:7}:name", "{user:7}:mail") == ["ann", "ann@example.com"]
    assert rc.incr("{user:7}:visits") == 1
    assert rc.delete("key:0", "key:1") == 2  # split per slot by redis-py
    assert rc.keyslot("{user:7}:name") == rc.keyslot("{user:7}:mail")

    print("kill now", flush=True)
    sys.stdin.readline()

    for i in range(2, 300):
        got = retrying(f"get key:{i}", lambda: rc.get(f"key:{i}"))
        assert got == str(i), (i, got)
    for i in range(300, 400):
        retrying(f"set key:{i}", lambda: rc.set(f"key:{i}", i))
    for i in range(300, 400):
        assert retrying(f"get key:{i}", lambda: rc.get(f"key:{i}")) == str(i)
    retrying("set", lambda: rc.set("{user:7}:name", "bob"))
    assert retrying("get", lambda: rc.get("{user:7}:name")) == "bob"
    print("redis-py RedisCluster: 400 keys across a node's death")


if __name__ == "__main__":
    main()
