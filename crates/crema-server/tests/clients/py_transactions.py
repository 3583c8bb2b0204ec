"""redis-py against a crema node: pipeline() (a MULTI ... EXEC transaction by default), a WATCH
retry loop from two threads, WatchError, a pipeline that cannot be queued, and what Django's
RedisCache.set_many(data, timeout) sends (a transaction of MSET and one EXPIRE per key).

Run by crates/crema-server/tests/clients.rs: python3 py_transactions.py HOST:PORT
"""

import sys
import threading

import redis

host, port = sys.argv[1].rsplit(":", 1)
r = redis.Redis(host=host, port=int(port))
other = redis.Redis(host=host, port=int(port))

# pipeline(): transaction=True is the default, so this is MULTI, SET, INCR, GET, EXEC.
p = r.pipeline()
p.set("a", 1).incr("a").get("a").exists("a", "missing").ttl("a")
assert p.execute() == [True, 2, b"2", 1, -1], "pipeline replies"

# A runtime error is an element of the reply; redis-py raises it after the transaction ran.
r.set("text", "abc")
p = r.pipeline()
p.set("b", "1").incr("text").incr("b")
try:
    p.execute()
    raise AssertionError("INCR on text must fail")
except redis.ResponseError as e:
    assert "not an integer" in str(e), e
assert r.get("b") == b"2", "the other commands of the transaction applied"

# A command that cannot be queued discards the whole transaction.
p = r.pipeline()
p.set("c", "1").execute_command("NOSUCHCOMMAND", "x").set("d", "1")
try:
    p.execute()
    raise AssertionError("an unknown command must abort the transaction")
except redis.ResponseError as e:
    assert "unknown command" in str(e) or "EXECABORT" in str(e), e
assert r.get("c") is None and r.get("d") is None, "nothing of a discarded transaction applied"

# WatchError when the watched key changes before EXEC.
with r.pipeline() as p:
    p.watch("w")
    other.set("w", "theirs")
    p.multi()
    p.set("w", "mine")
    try:
        p.execute()
        raise AssertionError("EXEC after a change to a watched key must fail")
    except redis.WatchError:
        pass
assert r.get("w") == b"theirs"


# The WATCH retry loop of redis-py's docs, from two threads at once.
def increment(times, retries):
    client = redis.Redis(host=host, port=int(port))
    for _ in range(times):
        with client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch("counter")
                    current = int(pipe.get("counter") or 0)
                    pipe.multi()
                    pipe.set("counter", current + 1)
                    pipe.execute()
                    break
                except redis.WatchError:
                    retries.append(1)


retries = []
threads = [threading.Thread(target=increment, args=(50, retries)) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert int(r.get("counter")) == 100, r.get("counter")

# The same through redis-py's transaction() helper.
def add_one(pipe):
    current = int(pipe.get("counter"))
    pipe.multi()
    pipe.set("counter", current + 1)


r.transaction(add_one, "counter")
assert int(r.get("counter")) == 101

# Django's RedisCache.set_many(data, timeout=300): pipeline(), MSET, then EXPIRE per key.
data = {":1:user:%d" % i: b"\x80\x05K%d." % i for i in range(20)}
pipeline = r.pipeline()
pipeline.mset(data)
for key in data:
    pipeline.expire(key, 300)
replies = pipeline.execute()
assert replies == [True] + [True] * len(data), replies
for key, value in data.items():
    assert r.get(key) == value
    assert 299 <= r.ttl(key) <= 300
# A retry of the same set_many (what a client does after an error) leaves the same state.
pipeline = r.pipeline()
pipeline.mset(data)
for key in data:
    pipeline.expire(key, 300)
pipeline.execute()
assert r.mget(list(data)) == list(data.values())

print("ok: %d retries in the WATCH loop" % len(retries))
