//! The keyspace, connection and server commands against a real `crema serve` process, through
//! the `redis` crate (what applications use), with the edge cases clients rely on (string
//! commands: `string_commands.rs`).

mod common;

use std::time::Duration;

use common::cmd::{bulk, err, ok, q};
use common::*;
use redis::Value;

#[tokio::test]
async fn multi_key_commands_and_the_keyspace() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    assert_eq!(ok(c, &["MSET", "a", "1", "b", "2", "c", "3"]).await, Value::Okay);
    assert!(err(c, &["MSET", "a", "1", "b"]).await.contains("wrong number of arguments for 'mset'"));
    assert_eq!(
        ok(c, &["MGET", "a", "nokey", "c"]).await,
        Value::Array(vec![bulk("1"), Value::Nil, bulk("3")])
    );
    assert_eq!(q::<i64>(c, &["MSETNX", "a", "9", "d", "4"]).await.unwrap(), 0);
    assert_eq!(ok(c, &["GET", "d"]).await, Value::Nil, "MSETNX writes nothing when any key exists");
    assert_eq!(q::<i64>(c, &["MSETNX", "d", "4", "e", "5"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(c, &["EXISTS", "a", "a", "nokey"]).await.unwrap(), 2, "EXISTS counts repeats");
    assert_eq!(q::<i64>(c, &["DBSIZE"]).await.unwrap(), 5);
    assert_eq!(ok(c, &["TYPE", "a"]).await, Value::SimpleString("string".into()));
    assert_eq!(ok(c, &["TYPE", "nokey"]).await, Value::SimpleString("none".into()));
    let mut keys: Vec<String> = q(c, &["KEYS", "*"]).await.unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c", "d", "e"]);
    let keys: Vec<String> = q(c, &["KEYS", "[ab]"]).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(q::<Option<String>>(c, &["RANDOMKEY"]).await.unwrap().is_some());
    assert_eq!(q::<i64>(c, &["DEL", "a", "b", "nokey", "a"]).await.unwrap(), 2);
    assert_eq!(q::<i64>(c, &["UNLINK", "c"]).await.unwrap(), 1);
    assert_eq!(ok(c, &["GETDEL", "d"]).await, bulk("4"));
    assert_eq!(ok(c, &["GETDEL", "d"]).await, Value::Nil);
    assert_eq!(ok(c, &["FLUSHDB"]).await, Value::Okay);
    assert_eq!(q::<i64>(c, &["DBSIZE"]).await.unwrap(), 0);
    assert_eq!(ok(c, &["RANDOMKEY"]).await, Value::Nil);
    assert_eq!(ok(c, &["FLUSHALL", "ASYNC"]).await, Value::Okay);
}

#[tokio::test]
async fn scan_visits_every_key_once_per_pass() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    let mut args = vec!["MSET".to_owned()];
    for i in 0..250 {
        args.extend([format!("key:{i}"), i.to_string()]);
    }
    args.extend(["other".into(), "x".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(c, &refs).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_owned();
    let mut pages = 0;
    loop {
        let (next, keys): (String, Vec<String>) =
            q(c, &["SCAN", &cursor, "MATCH", "key:*", "COUNT", "40"]).await.unwrap();
        assert!(keys.len() <= 40, "{} keys in a COUNT 40 page", keys.len());
        for k in keys {
            assert!(seen.insert(k.clone()), "{k} returned twice");
        }
        pages += 1;
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 250);
    assert!(pages >= 7, "{pages} pages");
    let (next, keys): (String, Vec<String>) = q(c, &["SCAN", "0", "TYPE", "list"]).await.unwrap();
    assert_eq!((next.as_str(), keys.len()), ("0", 0));
    assert!(err(c, &["SCAN", "notanumber"]).await.contains("invalid cursor"));
    assert!(err(c, &["SCAN", "0", "COUNT", "0"]).await.contains("syntax error"));
}

/// Found from outside: every SCAN call walked the whole keyspace (520 ms a page at a million
/// keys, hours for a full iteration). A walk now keeps the next 65,536 keys for the connection's
/// next pages; a cursor continued on another connection (or node) is walked for again. Either
/// way a full iteration returns every key that stayed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_many_keys_in_small_pages_returns_each_once() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    let other = &mut client(node.resp).await;
    for batch in 0..100 {
        let mut mset = redis::cmd("MSET");
        for i in 0..1000 {
            mset.arg(format!("k{}", batch * 1000 + i)).arg("v");
        }
        let () = mset.query_async(c).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor = "0".to_owned();
    let mut page = 0;
    loop {
        // Every 1,000th page through the other connection, and a key written and one
        // deleted meanwhile (these may be returned or not).
        let on = if page % 1000 == 999 { &mut *other } else { &mut *c };
        let (next, keys): (String, Vec<String>) = q(on, &["SCAN", &cursor, "COUNT", "10"]).await.unwrap();
        assert!(keys.len() <= 10, "{} keys in a COUNT 10 page", keys.len());
        // Exact as a double: node-redis v4 reads cursors with `Number()`.
        assert!(next.parse::<u64>().unwrap() < 1 << 53, "cursor {next} is not exact as a double");
        for k in keys {
            assert!(seen.insert(k.clone()), "{k} returned twice");
        }
        if page == 5000 {
            ok(other, &["SET", "new", "v"]).await;
            ok(other, &["DEL", "k99999"]).await;
        }
        page += 1;
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    seen.remove("new");
    seen.remove("k99999");
    assert_eq!(seen.len(), 99_999, "every key that stayed, once");
}

#[tokio::test]
async fn expiry_commands() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    ok(c, &["SET", "k", "v"]).await;
    assert_eq!(q::<i64>(c, &["TTL", "k"]).await.unwrap(), -1);
    assert_eq!(q::<i64>(c, &["TTL", "nokey"]).await.unwrap(), -2);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k", "100", "XX"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k", "100", "GT"]).await.unwrap(), 0, "no TTL counts as infinite");
    assert_eq!(q::<i64>(c, &["EXPIRE", "k", "100", "NX"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k", "200", "NX"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k", "200", "GT"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(c, &["PEXPIRE", "k", "50000", "LT"]).await.unwrap(), 1);
    assert!((49..=50).contains(&q::<i64>(c, &["TTL", "k"]).await.unwrap()));
    assert!(err(c, &["EXPIRE", "k", "10", "NX", "XX"]).await.contains("not compatible"));
    assert!(err(c, &["EXPIRE", "k", "10", "FOO"]).await.contains("Unsupported option FOO"));
    assert_eq!(q::<i64>(c, &["EXPIRE", "nokey", "10"]).await.unwrap(), 0);
    let at = (crema::unix_now_ms() / 1000 + 1000).to_string();
    assert_eq!(q::<i64>(c, &["EXPIREAT", "k", &at]).await.unwrap(), 1);
    assert_eq!(q::<i64>(c, &["EXPIRETIME", "k"]).await.unwrap().to_string(), at);
    assert_eq!(q::<i64>(c, &["PERSIST", "k"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(c, &["PERSIST", "k"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(c, &["EXPIRETIME", "k"]).await.unwrap(), -1);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k", "-1"]).await.unwrap(), 1, "a past expiry deletes");
    assert_eq!(q::<i64>(c, &["EXISTS", "k"]).await.unwrap(), 0);

    ok(c, &["SET", "g", "v"]).await;
    assert_eq!(ok(c, &["GETEX", "g", "PX", "300"]).await, bulk("v"));
    assert!(q::<i64>(c, &["PTTL", "g"]).await.unwrap() > 0);
    assert_eq!(ok(c, &["GETEX", "g", "PERSIST"]).await, bulk("v"));
    assert_eq!(q::<i64>(c, &["TTL", "g"]).await.unwrap(), -1);
    assert!(err(c, &["GETEX", "g", "EX", "1", "PX", "1"]).await.contains("syntax error"));
    assert_eq!(ok(c, &["GETEX", "nokey", "EX", "10"]).await, Value::Nil);
    // As in Redis, GETEX looks the key up before it reads the expiry: a bad one is nil for a
    // missing key, an error for an existing key (which keeps its value and TTL).
    assert_eq!(ok(c, &["GETEX", "nokey", "EX", "0"]).await, Value::Nil);
    assert_eq!(ok(c, &["GETEX", "nokey", "PX", "abc"]).await, Value::Nil);
    assert!(err(c, &["GETEX", "g", "EX", "0"]).await.contains("invalid expire time in 'getex'"));
    assert!(err(c, &["GETEX", "g", "EX", "abc"]).await.contains("not an integer"));
    assert!(err(c, &["GETEX", "nokey", "EX", "1", "FOO"]).await.contains("syntax error"));
    assert_eq!(ok(c, &["GET", "g"]).await, bulk("v"));

    // A key really goes away when its time comes, on its own.
    ok(c, &["SET", "short", "v", "PX", "150"]).await;
    assert_eq!(ok(c, &["GET", "short"]).await, bulk("v"));
    wait_until(Duration::from_secs(5), "the key expires", || {
        let mut c = c.clone();
        async move { q::<Option<String>>(&mut c, &["GET", "short"]).await.unwrap().is_none() }
    })
    .await;
    assert_eq!(q::<i64>(c, &["TTL", "short"]).await.unwrap(), -2);
}

#[tokio::test]
async fn connection_commands() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    assert_eq!(ok(c, &["PING"]).await, Value::SimpleString("PONG".into()));
    assert_eq!(ok(c, &["PING", "hi"]).await, bulk("hi"));
    assert_eq!(ok(c, &["ECHO", "hey"]).await, bulk("hey"));
    assert_eq!(ok(c, &["SELECT", "0"]).await, Value::Okay);
    assert!(err(c, &["SELECT", "1"]).await.contains("DB index is out of range"));
    assert_eq!(ok(c, &["CLIENT", "SETNAME", "tester"]).await, Value::Okay);
    assert_eq!(ok(c, &["CLIENT", "GETNAME"]).await, bulk("tester"));
    assert!(err(c, &["CLIENT", "SETNAME", "has space"]).await.contains("cannot contain spaces"));
    // Names are kept and copied into every CLIENT LIST: bounded (Redis sets no bound).
    let long = "n".repeat(1025);
    assert!(err(c, &["CLIENT", "SETNAME", &long]).await.contains("at most 1024 bytes"));
    assert!(err(c, &["CLIENT", "SETINFO", "LIB-VER", &long]).await.contains("at most 1024 bytes"));
    assert_eq!(ok(c, &["CLIENT", "GETNAME"]).await, bulk("tester"), "a refused name changes nothing");
    assert!(q::<i64>(c, &["CLIENT", "ID"]).await.unwrap() > 0);
    let info: String = q(c, &["CLIENT", "INFO"]).await.unwrap();
    assert!(info.contains("name=tester") && info.contains("read-mode=linearizable"), "{info}");
    assert_eq!(ok(c, &["CLIENT", "SETINFO", "LIB-NAME", "mylib"]).await, Value::Okay);
    assert!(err(c, &["CLIENT", "NOSUCH"]).await.contains("unknown subcommand"));
    assert_eq!(ok(c, &["READONLY"]).await, Value::Okay);
    let info: String = q(c, &["CLIENT", "INFO"]).await.unwrap();
    assert!(info.contains("read-mode=local"), "{info}");
    ok(c, &["SET", "mine", "1"]).await;
    assert_eq!(ok(c, &["GET", "mine"]).await, bulk("1"), "local reads see this connection's writes");
    assert_eq!(ok(c, &["READWRITE"]).await, Value::Okay);
    assert_eq!(ok(c, &["ASKING"]).await, Value::Okay, "what a cluster client sends after -ASK");
    assert!(err(c, &["NOSUCHCMD", "a"])
        .await
        .contains("unknown command 'NOSUCHCMD', with args beginning with: 'a'"));
    // Each argument is followed by one space, as Redis writes them; none, none.
    let mut raw = tokio::net::TcpStream::connect(node.resp).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"NOSUCHCMD\r\nNOSUCHCMD a b\r\n").await.unwrap();
    let expected: &[u8] = b"-ERR unknown command 'NOSUCHCMD', with args beginning with: \r\n\
        -ERR unknown command 'NOSUCHCMD', with args beginning with: 'a' 'b' \r\n";
    assert_eq!(
        String::from_utf8_lossy(&read_some(&mut raw, expected.len()).await),
        String::from_utf8_lossy(expected)
    );
    assert!(err(c, &["AUTH", "pw"]).await.contains("without any password configured"));
    assert!(err(c, &["GET"]).await.contains("wrong number of arguments for 'get' command"));
}

#[tokio::test]
async fn resp3_after_hello() {
    let node = start(&[]);
    let reply = raw_until(
        node.resp,
        b"HELLO 3\r\nCLIENT SETNAME x\r\nGET nokey\r\nCONFIG GET databases\r\n",
        b"$1\r\n1\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), "{text}");
    assert!(text.contains("$5\r\nproto\r\n:3\r\n"), "{text}");
    // As INFO's redis_mode: cluster clients that look at HELLO see a cluster node.
    assert!(text.contains("$4\r\nmode\r\n$7\r\ncluster\r\n"), "{text}");
    assert!(text.ends_with("+OK\r\n_\r\n%1\r\n$9\r\ndatabases\r\n$1\r\n1\r\n"), "{text}");
    // Text for people comes as a verbatim string in RESP3, as from Redis.
    let reply = raw_until(node.resp, b"HELLO 3\r\nCLIENT INFO\r\n", b"\n\r\n").await;
    let text = String::from_utf8_lossy(&reply);
    let verbatim = &text[text.rfind("\r\n=").expect("a verbatim string") + 2..];
    let (length, body) = verbatim[1..].split_once("\r\n").unwrap();
    assert!(body.starts_with("txt:id="), "{text}");
    assert_eq!(length.parse::<usize>().unwrap(), body.len() - 2, "{text}");
    let reply = raw(node.resp, b"HELLO 4\r\n", 10).await;
    assert!(reply.starts_with(b"-NOPROTO"), "{}", String::from_utf8_lossy(&reply));
    let reply = raw(node.resp, b"GET nokey\r\n", 5).await;
    assert_eq!(reply, b"$-1\r\n", "RESP2 by default");
}

#[tokio::test]
async fn server_commands() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    let info: String = q(c, &["INFO"]).await.unwrap();
    for section in
        ["# Server", "# Clients", "# Memory", "# Stats", "# Replication", "# Cluster", "# Keyspace", "# Raft"]
    {
        assert!(info.contains(section), "{section} missing from INFO");
    }
    // Tools that check for a cluster node before speaking cluster (`redis-cli --cluster`) read these.
    assert!(info.contains("redis_mode:cluster\r\n") && info.contains("cluster_enabled:1\r\n"), "{info}");
    assert!(
        info.contains("role:master")
            && info.contains("raft_role:Leader")
            && info.contains("connected_clients:1")
    );
    // Found from outside: Ruby's, PHP's and Perl's clients read INFO into a map, and the Raft
    // section's `role` (Leader) replaced Redis's (master).
    assert_eq!(info.lines().filter(|l| l.starts_with("role:")).count(), 1, "one `role` field: {info}");
    // COMMAND GETKEYS answers as Redis does (cluster clients ask it).
    let keys: Vec<String> = q(c, &["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"]).await.unwrap();
    assert_eq!(keys, ["a", "b"]);
    let keys: Vec<String> = q(c, &["COMMAND", "GETKEYS", "GET", "k"]).await.unwrap();
    assert_eq!(keys, ["k"]);
    assert!(err(c, &["COMMAND", "GETKEYS", "PING"]).await.contains("The command has no key arguments"));
    assert!(err(c, &["COMMAND", "GETKEYS", "NOSUCH", "x"]).await.contains("Invalid command specified"));
    assert!(err(c, &["COMMAND", "GETKEYS", "GET"]).await.contains("Invalid number of arguments"));
    // Error texts as Redis words them (found from outside, beside redis-server 7.0).
    for (args, expected) in [
        (&["CONFIG", "GET"][..], "wrong number of arguments for 'config|get' command"),
        (&["WAIT", "1", "abc"], "timeout is not an integer or out of range"),
        (&["HELLO", "2", "AUTH", "default"], "Syntax error in HELLO option 'AUTH'"),
        (&["ACL", "LOG", "x"], "value is not an integer or out of range"),
        (&["ACL", "LOG", "-1"], "value is out of range, must be positive"),
    ] {
        let said = err(c, args).await;
        assert!(said.contains(expected), "{args:?}: {said}");
    }
    let shards: String = q(c, &["INFO", "shards"]).await.unwrap();
    assert!(
        shards.contains("shards:1\r\nshard0:state=active,leader=1,members=1,learners=,slots=0-16383,"),
        "{shards}"
    );
    let raft: String = q(c, &["INFO", "raft"]).await.unwrap();
    assert!(raft.starts_with("# Raft") && !raft.contains("# Server"));
    ok(c, &["SET", "k", "v"]).await;
    let keyspace: String = q(c, &["INFO", "keyspace"]).await.unwrap();
    assert!(keyspace.contains("db0:keys=1,expires=0"), "{keyspace}");
    ok(c, &["SET", "t", "v", "EX", "100"]).await;
    let keyspace: String = q(c, &["INFO", "keyspace"]).await.unwrap();
    assert!(keyspace.contains("db0:keys=2,expires=1,avg_ttl="), "{keyspace}");
    let memory: String = q(c, &["INFO", "memory"]).await.unwrap();
    assert!(!memory.contains("used_memory:0\r"), "{memory}");
    let count: i64 = q(c, &["COMMAND", "COUNT"]).await.unwrap();
    assert!(count > 50);
    let info = ok(c, &["COMMAND", "INFO", "get", "nosuch"]).await;
    let Value::Array(rows) = info else { panic!("{info:?}") };
    assert_eq!(rows[1], Value::Nil);
    let Value::Array(get) = &rows[0] else { panic!() };
    assert_eq!((&get[0], &get[1], &get[3]), (&bulk("get"), &Value::Int(2), &Value::Int(1)));
    assert!(matches!(ok(c, &["COMMAND", "DOCS", "get"]).await, Value::Array(_) | Value::Map(_)));
    // Each answer is built whole: a million names would have built about 0.9 GB of it.
    let mut names = vec!["COMMAND", "INFO"];
    names.extend(std::iter::repeat_n("get", 1024));
    assert!(matches!(ok(c, &names).await, Value::Array(rows) if rows.len() == 1024));
    names.push("set");
    assert!(err(c, &names).await.contains("at most 1024 command names"));
    names[1] = "DOCS";
    assert!(err(c, &names).await.contains("at most 1024 command names"));
    // ACL categories, LIST's filters, HELP and arity, as Redis 7 (found different from outside).
    assert!(matches!(&get[6], Value::Array(cats) if cats.contains(&bulk("@read"))), "{get:?}");
    let mut listed: Vec<String> = q(c, &["COMMAND", "LIST", "FILTERBY", "PATTERN", "mset*"]).await.unwrap();
    listed.sort();
    assert_eq!(listed, ["mset", "msetnx"]);
    let admin: Vec<String> = q(c, &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "dangerous"]).await.unwrap();
    assert!(admin.contains(&"flushall".to_owned()) && !admin.contains(&"get".to_owned()), "{admin:?}");
    assert!(q::<Vec<String>>(c, &["COMMAND", "LIST", "FILTERBY", "MODULE", "json"])
        .await
        .unwrap()
        .is_empty());
    assert!(err(c, &["COMMAND", "LIST", "FOO"]).await.contains("syntax error"));
    assert!(err(c, &["COMMAND", "COUNT", "x"]).await.contains("wrong number of arguments"));
    assert!(q::<Vec<String>>(c, &["COMMAND", "HELP"]).await.unwrap()[0].starts_with("COMMAND <subcommand>"));
    assert!(err(c, &["CLIENT", "NO-EVICT", "maybe"]).await.contains("syntax error"));
    assert_eq!(ok(c, &["CLIENT", "NO-EVICT", "on"]).await, Value::Okay);
    let config: Vec<String> = q(c, &["CONFIG", "GET", "maxmemory*"]).await.unwrap();
    assert!(config.contains(&"maxmemory-policy".to_owned()));
    let cluster: Vec<String> = q(c, &["CONFIG", "GET", "cluster-enabled"]).await.unwrap();
    assert_eq!(cluster, ["cluster-enabled", "yes"], "as INFO says");
    assert!(err(c, &["CONFIG", "SET", "maxmemory", "1"]).await.contains("not supported"));
    let time: Vec<String> = q(c, &["TIME"]).await.unwrap();
    assert!(time[0].parse::<u64>().unwrap() > 1_700_000_000);
    assert_eq!(q::<i64>(c, &["WAIT", "0", "100"]).await.unwrap(), 0, "a single node has no replicas");
    assert!(q::<String>(c, &["LOLWUT"]).await.unwrap().contains("crema"));
    // Redis Cluster's hash slots (the values of Redis's documentation); one node, one shard:
    // every slot is this node's.
    for (key, slot) in [("somekey", 11058), ("foo{hash_tag}", 2515), ("{user1000}.following", 3443)] {
        assert_eq!(q::<i64>(c, &["CLUSTER", "KEYSLOT", key]).await.unwrap(), slot, "{key}");
    }
    let myid: String = q(c, &["CLUSTER", "MYID"]).await.unwrap();
    assert_eq!(myid, format!("{:040x}", 1));
    let slots = common::shards::slot_map(c).await;
    assert_eq!(slots.len(), 1);
    assert_eq!((slots[0].0, slots[0].1, &slots[0].2 .2), (0, 16383, &myid));
    let info: String = q(c, &["CLUSTER", "INFO"]).await.unwrap();
    assert!(info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384"), "{info}");
    assert!(err(c, &["CLUSTER", "SETSLOT", "1", "NODE", "x"]).await.contains("unknown subcommand"));
    // Every node is a master: no replicas, no failure reports; an unknown node as Redis says it.
    for sub in ["REPLICAS", "SLAVES"] {
        assert!(q::<Vec<String>>(c, &["CLUSTER", sub, &myid]).await.unwrap().is_empty(), "{sub}");
    }
    assert_eq!(q::<i64>(c, &["CLUSTER", "COUNT-FAILURE-REPORTS", &myid]).await.unwrap(), 0);
    let stranger = format!("{:040x}", 9);
    assert!(err(c, &["CLUSTER", "REPLICAS", &stranger]).await.contains(&format!("Unknown node {stranger}")));
}

#[tokio::test]
async fn password_protects_everything_but_auth() {
    let node = start(&["--password", "s3cret"]);
    let reply =
        raw_until(node.resp, b"GET k\r\nPING\r\nAUTH wrong\r\nAUTH s3cret\r\nPING\r\n", b"+PONG\r\n").await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("-NOAUTH Authentication required.\r\n-NOAUTH"), "{text}");
    assert!(text.contains("-WRONGPASS"), "{text}");
    assert!(text.ends_with("+OK\r\n+PONG\r\n"), "{text}");
    let reply = raw_until(node.resp, b"HELLO 3 AUTH default s3cret\r\nPING\r\n", b"+PONG\r\n").await;
    assert!(reply.starts_with(b"%7") && reply.ends_with(b"+PONG\r\n"), "{}", String::from_utf8_lossy(&reply));
    // Before AUTH only small requests are read: a big one closes the connection.
    let mut big = b"*2\r\n$3\r\nSET\r\n$100000\r\n".to_vec();
    big.extend(vec![b'x'; 100]);
    let reply = raw(node.resp, &big, 1000).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("-ERR Protocol error"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let client = redis::Client::open(format!("redis://:s3cret@{}/", node.resp)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(ok(&mut c, &["SET", "k", "v"]).await, Value::Okay);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
        pipe.cmd("INCR").arg("counter");
    }
    let counts: Vec<i64> = pipe.query_async(c).await.unwrap();
    assert_eq!(counts, (1..=500).collect::<Vec<i64>>());
    // Many frames in one write, raw.
    let mut bytes = Vec::new();
    for i in 0..100 {
        bytes.extend(format!("*2\r\n$4\r\nECHO\r\n${}\r\n{i}\r\n", i.to_string().len()).as_bytes());
    }
    let expected: String = (0..100).map(|i| format!("${}\r\n{i}\r\n", i.to_string().len())).collect();
    let reply = raw(node.resp, &bytes, expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&reply), expected);
}

/// Pipelined writes are proposed together; every reply still comes back in order, errors in
/// their place, and reads in the same pipeline see the writes before them.
#[tokio::test]
async fn a_pipeline_mixing_writes_errors_and_reads_keeps_its_order() {
    let node = start(&["--max-key-bytes", "8"]);
    let mut wire = Vec::new();
    for args in [
        &["SET", "a", "1"][..],
        &["INCR", "a"],
        &["SET", "a", "x", "EX", "0"],
        &["SET", "keytoolong", "v"],
        &["INCR", "a"],
        &["GET", "a"],
        &["SET", "a", "text"],
        &["INCR", "a"],
        &["APPEND", "a", "!"],
        &["GET"],
        &["MGET", "a", "b"],
        &["DEL", "a"],
    ] {
        wire.extend(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            wire.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    let expected = "+OK\r\n:2\r\n-ERR invalid expire time in 'set' command\r\n\
        -ERR key is 10 bytes, the limit is 8\r\n:3\r\n$1\r\n3\r\n+OK\r\n\
        -ERR value is not an integer or out of range\r\n:5\r\n\
        -ERR wrong number of arguments for 'get' command\r\n*2\r\n$5\r\ntext!\r\n$-1\r\n:1\r\n";
    let reply = raw_until(node.resp, &wire, b":1\r\n").await;
    assert_eq!(String::from_utf8_lossy(&reply), expected);
}
