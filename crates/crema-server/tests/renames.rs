//! RENAME, RENAMENX, COPY, TOUCH, OBJECT and MEMORY USAGE against a real `crema serve` process
//! through the `redis` crate: Redis's answers and edge cases, inside transactions, and across
//! shards (both keys of a rename must be in one shard, as Redis Cluster asks; a hash tag puts
//! them there).

mod common;

use common::cmd::{bulk, err, ok};
use common::*;
use redis::aio::MultiplexedConnection;
use redis::Value;

async fn pttl(c: &mut MultiplexedConnection, key: &str) -> i64 {
    match ok(c, &["PTTL", key]).await {
        Value::Int(n) => n,
        other => panic!("PTTL answered {other:?}"),
    }
}

#[tokio::test]
async fn rename_moves_the_value_and_its_expiry() {
    let node = start(FAST);
    let c = &mut client(node.resp).await;
    ok(c, &["SET", "a", "1", "EX", "100"]).await;
    ok(c, &["SET", "b", "old"]).await;
    assert_eq!(ok(c, &["RENAME", "a", "b"]).await, Value::Okay);
    assert_eq!(ok(c, &["GET", "a"]).await, Value::Nil);
    assert_eq!(ok(c, &["GET", "b"]).await, bulk("1"), "the destination is overwritten");
    let left = pttl(c, "b").await;
    assert!((90_000..=100_000).contains(&left), "the expiry moved with the value: {left} ms");
    assert!(err(c, &["RENAME", "nope", "b"]).await.contains("no such key"));
    assert_eq!(ok(c, &["GET", "b"]).await, bulk("1"), "a failed rename changes nothing");
    assert_eq!(ok(c, &["RENAME", "b", "b"]).await, Value::Okay, "onto itself: nothing changes");
    assert_eq!(ok(c, &["GET", "b"]).await, bulk("1"));
    assert!(err(c, &["RENAME", "b"]).await.contains("wrong number of arguments for 'rename'"));

    // RENAMENX writes only a destination that does not exist.
    ok(c, &["SET", "c", "3"]).await;
    assert_eq!(ok(c, &["RENAMENX", "b", "c"]).await, Value::Int(0));
    assert_eq!(ok(c, &["GET", "b"]).await, bulk("1"));
    assert_eq!(ok(c, &["RENAMENX", "b", "d"]).await, Value::Int(1));
    assert_eq!((ok(c, &["GET", "b"]).await, ok(c, &["GET", "d"]).await), (Value::Nil, bulk("1")));
    assert_eq!(ok(c, &["RENAMENX", "d", "d"]).await, Value::Int(0));
    assert!(err(c, &["RENAMENX", "nope", "e"]).await.contains("no such key"));

    // A transaction's rename is applied with the rest, and WATCH sees the destination change.
    let mut watcher = client(node.resp).await;
    ok(&mut watcher, &["WATCH", "d"]).await;
    ok(c, &["SET", "x", "from-x"]).await;
    let tx = ok(c, &["MULTI"]).await;
    assert_eq!(tx, Value::Okay);
    assert_eq!(ok(c, &["RENAME", "x", "d"]).await, Value::SimpleString("QUEUED".into()));
    assert_eq!(ok(c, &["GET", "d"]).await, Value::SimpleString("QUEUED".into()));
    assert_eq!(ok(c, &["EXEC"]).await, Value::Array(vec![Value::Okay, bulk("from-x")]));
    ok(&mut watcher, &["MULTI"]).await;
    ok(&mut watcher, &["SET", "d", "watcher"]).await;
    assert_eq!(ok(&mut watcher, &["EXEC"]).await, Value::Nil, "the watched destination was renamed onto");
    assert_eq!(ok(c, &["GET", "d"]).await, bulk("from-x"));
}

#[tokio::test]
async fn copy_and_touch() {
    let node = start(FAST);
    let c = &mut client(node.resp).await;
    ok(c, &["SET", "src", "v", "PX", "60000"]).await;
    assert_eq!(ok(c, &["COPY", "src", "dst"]).await, Value::Int(1));
    assert_eq!((ok(c, &["GET", "src"]).await, ok(c, &["GET", "dst"]).await), (bulk("v"), bulk("v")));
    assert!(pttl(c, "dst").await > 50_000, "the copy keeps the expiry");
    ok(c, &["SET", "src", "w"]).await;
    assert_eq!(ok(c, &["COPY", "src", "dst"]).await, Value::Int(0), "no REPLACE: the destination stays");
    assert_eq!(ok(c, &["GET", "dst"]).await, bulk("v"));
    assert_eq!(ok(c, &["COPY", "src", "dst", "REPLACE"]).await, Value::Int(1));
    assert_eq!(ok(c, &["GET", "dst"]).await, bulk("w"));
    assert_eq!(pttl(c, "dst").await, -1, "and its expiry with it: none");
    assert_eq!(ok(c, &["COPY", "nope", "dst2"]).await, Value::Int(0));
    assert_eq!(ok(c, &["COPY", "src", "dst3", "DB", "0", "REPLACE"]).await, Value::Int(1));
    assert!(err(c, &["COPY", "src", "dst4", "DB", "1"]).await.contains("DB index is out of range"));
    assert!(err(c, &["COPY", "src", "src"]).await.contains("source and destination objects are the same"));
    assert!(err(c, &["COPY", "src", "dst5", "NOW"]).await.contains("syntax error"));
    assert_eq!(ok(c, &["EXISTS", "dst4", "dst5"]).await, Value::Int(0), "refused copies wrote nothing");

    assert_eq!(ok(c, &["TOUCH", "src", "dst", "nope", "src"]).await, Value::Int(3));
    ok(c, &["MULTI"]).await;
    ok(c, &["TOUCH", "src", "nope"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Array(vec![Value::Int(1)]));
    let info = ok(c, &["COMMAND", "INFO", "rename", "touch"]).await;
    let Value::Array(rows) = info else { panic!("COMMAND INFO answered {info:?}") };
    assert!(rows.iter().all(|r| matches!(r, Value::Array(_))), "both known: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_across_shards_is_refused_and_a_hash_tag_allows_it() {
    let node = start(&["--shards", "4", "--tick-interval-ms", "20"]);
    let c = &mut client(node.resp).await;
    let shard = |key: &str| crema::key_slot(key.as_bytes()) as u32 * 4 / 16384;
    assert_ne!(shard("a"), shard("b"));
    ok(c, &["SET", "a", "1"]).await;
    for args in [["RENAME", "a", "b"], ["RENAMENX", "a", "b"], ["COPY", "a", "b"]] {
        let e = err(c, &args).await;
        assert!(e.contains("CROSSSLOT") || e.contains("CrossSlot"), "{args:?}: {e}");
    }
    assert_eq!((ok(c, &["GET", "a"]).await, ok(c, &["GET", "b"]).await), (bulk("1"), Value::Nil));
    ok(c, &["SET", "{user:1}:draft", "text"]).await;
    assert_eq!(ok(c, &["RENAME", "{user:1}:draft", "{user:1}:final"]).await, Value::Okay);
    assert_eq!(ok(c, &["GET", "{user:1}:final"]).await, bulk("text"));
    assert_eq!(ok(c, &["COPY", "{user:1}:final", "{user:1}:copy"]).await, Value::Int(1));
    assert_eq!(ok(c, &["TOUCH", "a", "{user:1}:final", "{user:1}:copy", "b"]).await, Value::Int(3));
}

#[tokio::test]
async fn object_and_memory_describe_a_value() {
    let node = start(FAST);
    let c = &mut client(node.resp).await;
    ok(c, &["SET", "n", "12345"]).await;
    ok(c, &["SET", "short", "hello"]).await;
    let long = "x".repeat(100);
    ok(c, &["SET", "long", &long]).await;
    assert_eq!(ok(c, &["OBJECT", "ENCODING", "n"]).await, bulk("int"));
    assert_eq!(ok(c, &["object", "encoding", "short"]).await, bulk("embstr"));
    assert_eq!(ok(c, &["OBJECT", "ENCODING", "long"]).await, bulk("raw"));
    assert_eq!(ok(c, &["OBJECT", "ENCODING", "nope"]).await, Value::Nil);
    assert_eq!(ok(c, &["OBJECT", "REFCOUNT", "n"]).await, Value::Int(1));
    assert!(err(c, &["OBJECT", "IDLETIME", "n"]).await.contains("not tracked"));
    assert!(err(c, &["OBJECT", "FREQ", "n"]).await.contains("not tracked"));
    assert!(err(c, &["OBJECT", "ENCODING"])
        .await
        .contains("wrong number of arguments for 'object|encoding'"));
    assert!(err(c, &["OBJECT", "NOPE", "n"]).await.contains("unknown subcommand 'NOPE'. Try OBJECT HELP."));
    let Value::Array(help) = ok(c, &["OBJECT", "HELP"]).await else { panic!("OBJECT HELP is a list") };
    assert!(help.len() > 4);
    // The weight the memory limit counts: key, value and 64 bytes per entry.
    assert_eq!(ok(c, &["MEMORY", "USAGE", "long"]).await, Value::Int(4 + 100 + 64));
    assert_eq!(ok(c, &["MEMORY", "USAGE", "long", "SAMPLES", "5"]).await, Value::Int(168));
    assert_eq!(ok(c, &["MEMORY", "USAGE", "nope"]).await, Value::Nil);
    assert!(err(c, &["MEMORY", "USAGE", "long", "SOME", "5"]).await.contains("syntax error"));
    assert!(err(c, &["MEMORY", "USAGE", "long", "SAMPLES", "-1"]).await.contains("syntax error"));
    assert!(err(c, &["MEMORY", "STATS"]).await.contains("unknown subcommand"));
    ok(c, &["MULTI"]).await;
    assert!(err(c, &["OBJECT", "ENCODING", "n"]).await.contains("not allowed inside a transaction"));
    let aborted = err(c, &["EXEC"]).await;
    assert!(aborted.contains("EXECABORT") || aborted.contains("ExecAbort"), "{aborted}");
}
