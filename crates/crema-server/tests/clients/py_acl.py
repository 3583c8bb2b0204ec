"""redis-py's ACL helpers against a crema node: acl_setuser with keys, categories and a password,
acl_getuser / acl_list / acl_users / acl_whoami / acl_cat / acl_dryrun / acl_log as redis-py parses
them, a client logging in with username and password, and NoPermissionError on a refused
command and a refused key.

Run by crates/crema-server/tests/clients.rs: python3 py_acl.py HOST:PORT
"""

import sys

import redis

host, port = sys.argv[1].rsplit(":", 1)
admin = redis.Redis(host=host, port=int(port))

assert admin.acl_setuser(
    "app", enabled=True, passwords=["+s3cret"], keys=["app:*"], commands=["+@read", "+@write", "-@dangerous"]
)
user = admin.acl_getuser("app")
assert "on" in user["flags"], user
assert len(user["passwords"]) == 1 and "s3cret" not in str(user["passwords"]), user
# redis-py splits the command rules into categories and commands.
assert user["categories"] == ["-@all", "+@read", "+@write", "-@dangerous"], user
assert user["keys"] == ["~app:*"] or user["keys"] == "~app:*", user
assert set(admin.acl_users()) == {b"default", b"app"} or set(admin.acl_users()) == {"default", "app"}
assert any("user app on" in (line.decode() if isinstance(line, bytes) else line) for line in admin.acl_list())
assert "read" in [c.decode() if isinstance(c, bytes) else c for c in admin.acl_cat()]
assert admin.acl_dryrun("app", "set", "app:1", "v") in (True, b"OK", "OK")

app = redis.Redis(host=host, port=int(port), username="app", password="s3cret")
app.set("app:1", "v")
assert app.get("app:1") == b"v"
try:
    app.flushall()
    raise AssertionError("FLUSHALL must be refused")
except redis.exceptions.NoPermissionError as e:
    assert "flushall" in str(e), e
try:
    app.get("other:1")
    raise AssertionError("a key outside app:* must be refused")
except redis.exceptions.NoPermissionError as e:
    assert "key" in str(e), e
try:
    redis.Redis(host=host, port=int(port), username="app", password="wrong").ping()
    raise AssertionError("a wrong password must be refused")
except redis.exceptions.AuthenticationError:
    pass

log = admin.acl_log()
reasons = {entry["reason"] for entry in log}
assert {"command", "key", "auth"} <= reasons, log
assert admin.acl_deluser("app") == 1
# CLIENT INFO in the shape redis-py parses (it reads the numeric fields as integers).
info = admin.client_info()
assert info["user"] == "default" and info["multi"] == -1 and "tot-mem" in info, info
print("redis-py ACL: ok")
