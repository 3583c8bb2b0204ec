//! Redis transactions (MULTI, EXEC, DISCARD, WATCH, UNWATCH) against real `crema serve`
//! processes through the `redis` crate: replies, aborts, watches from other connections, and a
//! WATCH retry loop racing through two nodes of a 3-node cluster.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cmd::{bulk, err, ok, q};
use common::*;
use redis::Value;

fn queued() -> Value {
    Value::SimpleString("QUEUED".into())
}

/// The exact wire replies, read raw: the `redis` crate turns an EXEC array holding an error
/// element into an error as a whole.
#[tokio::test]
async fn exec_applies_the_queue_and_answers_every_reply_in_order() {
    let node = start(&[]);
    let commands = [
        "SET text abc",
        "MULTI",
        "SET a 1 EX 100",
        "INCR a",
        "GET a",
        "INCR text",
        "MGET a missing",
        "EXISTS a text missing",
        "TTL a",
        "GETRANGE text 1 -1",
        "STRLEN text",
        "INCRBY a notanumber",
        "PING",
        "TYPE a",
        "EXEC",
    ];
    let request: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
    let expected = [
        "+OK\r\n+OK\r\n",
        &"+QUEUED\r\n".repeat(12),
        "*12\r\n+OK\r\n:2\r\n$1\r\n2\r\n-ERR value is not an integer or out of range\r\n",
        "*2\r\n$1\r\n2\r\n$-1\r\n:2\r\n:TTL\r\n$2\r\nbc\r\n:3\r\n",
        "-ERR value is not an integer or out of range\r\n+PONG\r\n+string\r\n",
    ]
    .concat();
    let got = String::from_utf8(raw(node.resp, request.as_bytes(), expected.len()).await).unwrap();
    // The TTL is read at the transaction's log time: 100 s, or 99 on a slow machine.
    let got = got.replace(":100\r\n$2", ":TTL\r\n$2").replace(":99\r\n$2", ":TTL\r\n$2");
    assert_eq!(got, expected);

    let c = &mut client(node.resp).await;
    assert_eq!(ok(c, &["GET", "a"]).await, bulk("2"));
    // The redis crate's own transactions (MULTI ... EXEC in one pipeline).
    let (n, v): (i64, String) = redis::pipe().atomic().incr("a", 5).get("a").query_async(c).await.unwrap();
    assert_eq!((n, v.as_str()), (7, "7"));
    // An empty transaction.
    ok(c, &["MULTI"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Array(vec![]));
}

#[tokio::test]
async fn flushall_and_reads_only_transactions() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    ok(c, &["SET", "a", "1"]).await;
    let (flushed, gone, fresh): (String, Option<String>, i64) =
        redis::pipe().atomic().cmd("FLUSHALL").get("a").incr("fresh", 1).query_async(c).await.unwrap();
    assert_eq!((flushed.as_str(), gone, fresh), ("OK", None, 1));
    assert_eq!(ok(c, &["DBSIZE"]).await, Value::Int(1));
    let (value, ttl): (String, i64) =
        redis::pipe().atomic().get("fresh").ttl("fresh").query_async(c).await.unwrap();
    assert_eq!((value.as_str(), ttl), ("1", -1));
}

#[tokio::test]
async fn a_command_that_cannot_be_queued_aborts_the_transaction() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    assert!(err(c, &["EXEC"]).await.contains("EXEC without MULTI"));
    assert!(err(c, &["DISCARD"]).await.contains("DISCARD without MULTI"));
    ok(c, &["MULTI"]).await;
    assert!(err(c, &["MULTI"]).await.contains("MULTI calls can not be nested"));
    assert!(err(c, &["WATCH", "k"]).await.contains("WATCH inside MULTI is not allowed"));
    assert_eq!(ok(c, &["SET", "k", "1"]).await, queued());
    assert_eq!(ok(c, &["EXEC"]).await, Value::Array(vec![Value::Okay]), "those errors did not abort it");

    // Found from outside: subcommands were checked only when EXEC ran them, so these were
    // queued and EXEC applied the rest; `DISCARD x` left the transaction to run.
    for bad in [
        &["NOSUCHCOMMAND", "x"][..],
        &["SET", "k"],
        &["KEYS", "*"],
        &["CLIENT", "SETNAME"],
        &["CLIENT", "NOSUCH"],
        &["CONFIG", "GET"],
        &["COMMAND", "COUNT", "x"],
        &["DISCARD", "x"],
    ] {
        ok(c, &["MULTI"]).await;
        assert_eq!(ok(c, &["SET", "k", "2"]).await, queued());
        let e = err(c, bad).await;
        assert!(
            e.contains("unknown command")
                || e.contains("unknown subcommand")
                || e.contains("wrong number")
                || e.contains("not allowed inside a transaction"),
            "{bad:?}: {e}"
        );
        assert_eq!(ok(c, &["INCR", "k"]).await, queued(), "queuing goes on after the error");
        let e = err(c, &["EXEC"]).await;
        assert!(e.contains("Transaction discarded because of previous errors."), "{e}");
        assert_eq!(ok(c, &["GET", "k"]).await, bulk("1"), "nothing of an aborted transaction applied");
    }
    // `EXEC x` discards the transaction, as Redis's EXEC does when it fails its checks.
    ok(c, &["MULTI"]).await;
    assert_eq!(ok(c, &["INCR", "k"]).await, queued());
    let e = err(c, &["EXEC", "x"]).await;
    assert!(e.contains("Transaction discarded because of: wrong number of arguments"), "{e}");
    assert!(err(c, &["EXEC"]).await.contains("EXEC without MULTI"));
    assert_eq!(ok(c, &["GET", "k"]).await, bulk("1"), "the discarded INCR did not run");
    // The connection is out of MULTI again.
    assert_eq!(ok(c, &["SET", "k", "3"]).await, Value::Okay);
}

#[tokio::test]
async fn discard_drops_the_queue_and_the_watches() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    let other = &mut client(node.resp).await;
    ok(c, &["WATCH", "k"]).await;
    ok(c, &["MULTI"]).await;
    ok(c, &["SET", "k", "mine"]).await;
    assert_eq!(ok(c, &["DISCARD"]).await, Value::Okay);
    assert_eq!(ok(c, &["GET", "k"]).await, Value::Nil);
    ok(other, &["SET", "k", "theirs"]).await;
    // The watch went with DISCARD: this transaction applies.
    ok(c, &["MULTI"]).await;
    ok(c, &["SET", "k", "mine"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Array(vec![Value::Okay]));
    // UNWATCH and RESET forget watches too.
    ok(c, &["WATCH", "k"]).await;
    ok(other, &["SET", "k", "theirs"]).await;
    ok(c, &["UNWATCH"]).await;
    ok(c, &["MULTI"]).await;
    ok(c, &["GET", "k"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Array(vec![bulk("theirs")]));
}

#[tokio::test]
async fn a_key_changed_by_another_connection_aborts_exec() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    let other = &mut client(node.resp).await;
    ok(c, &["SET", "k", "1"]).await;
    // Unchanged: applies.
    ok(c, &["WATCH", "k", "absent"]).await;
    ok(c, &["MULTI"]).await;
    ok(c, &["INCR", "k"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Array(vec![Value::Int(2)]));
    // Written by another connection (the same value counts): nothing applies, null array.
    ok(c, &["WATCH", "k"]).await;
    ok(other, &["SET", "k", "2"]).await;
    ok(c, &["MULTI"]).await;
    ok(c, &["INCR", "k"]).await;
    ok(c, &["SET", "side", "effect"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Nil);
    assert_eq!(ok(c, &["MGET", "k", "side"]).await, Value::Array(vec![bulk("2"), Value::Nil]));
    // Absent when watched, created and deleted again meanwhile: changed.
    ok(c, &["WATCH", "ghost"]).await;
    ok(other, &["SET", "ghost", "boo"]).await;
    ok(other, &["DEL", "ghost"]).await;
    ok(c, &["MULTI"]).await;
    ok(c, &["SET", "ghost", "mine"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Nil);
    // Expired since it was watched: changed.
    ok(c, &["SET", "short", "v", "PX", "150"]).await;
    ok(c, &["WATCH", "short"]).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    ok(c, &["MULTI"]).await;
    ok(c, &["SET", "after", "x"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Nil);
    assert_eq!(ok(c, &["GET", "after"]).await, Value::Nil);
    // FLUSHALL changes a live watched key.
    ok(c, &["SET", "k", "1"]).await;
    ok(c, &["WATCH", "k"]).await;
    ok(other, &["FLUSHALL"]).await;
    ok(c, &["MULTI"]).await;
    ok(c, &["SET", "k", "mine"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Nil);
}

/// Increments `key` `times` times through `addr` with WATCH/GET/MULTI/SET/EXEC, retrying each
/// increment until its EXEC applies; answers the number of aborted EXECs.
async fn increment_with_watch(addr: SocketAddr, key: &str, times: usize) -> usize {
    let c = &mut client(addr).await;
    let mut aborted = 0;
    for _ in 0..times {
        loop {
            ok(c, &["WATCH", key]).await;
            let current: Option<i64> = q(c, &["GET", key]).await.unwrap();
            let next = (current.unwrap_or(0) + 1).to_string();
            ok(c, &["MULTI"]).await;
            assert_eq!(ok(c, &["SET", key, &next]).await, queued());
            match ok(c, &["EXEC"]).await {
                Value::Array(replies) if replies == [Value::Okay] => break,
                Value::Nil => aborted += 1,
                other => panic!("EXEC answered {other:?}"),
            }
        }
    }
    aborted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_retry_loop_through_two_nodes_loses_no_increment() {
    let nodes = start_cluster(3, &[]);
    leader_of(&nodes).await;
    const EACH: usize = 40;
    let (a, b) = (nodes[0].resp, nodes[1].resp);
    let first = tokio::spawn(async move { increment_with_watch(a, "counter", EACH).await });
    let second = tokio::spawn(async move { increment_with_watch(b, "counter", EACH).await });
    let aborted = first.await.unwrap() + second.await.unwrap();
    for node in &nodes {
        let c = &mut client(node.resp).await;
        let value: i64 = q(c, &["GET", "counter"]).await.unwrap();
        assert_eq!(value, 2 * EACH as i64, "every successful EXEC counted once ({aborted} aborted)");
    }
    eprintln!("{} increments through two nodes, {aborted} EXECs aborted by a conflict", 2 * EACH);
}

#[tokio::test]
async fn transactions_over_the_size_limit_are_refused_whole() {
    let node = start(&["--max-value-bytes", "1024", "--max-key-bytes", "64"]);
    let c = &mut client(node.resp).await;
    let value = "x".repeat(600);
    ok(c, &["MULTI"]).await;
    assert_eq!(ok(c, &["SET", "a", &value]).await, queued());
    let e = err(c, &["SET", "b", &value]).await;
    assert!(e.contains("transaction too large"), "{e}");
    assert!(err(c, &["EXEC"]).await.contains("Transaction discarded because of previous errors."));
    assert_eq!(ok(c, &["GET", "a"]).await, Value::Nil);
    // A value over the limit inside a transaction is an error element (redis-rs raises it).
    ok(c, &["MULTI"]).await;
    ok(c, &["SET", "big", &"y".repeat(1025)]).await;
    let e = err(c, &["EXEC"]).await;
    assert!(e.contains("value is 1025 bytes, the limit is 1024"), "{e}");
    assert_eq!(ok(c, &["EXISTS", "big"]).await, Value::Int(0));
}

/// Found from outside: WATCH looked each key up among those already watched, so one WATCH
/// of 100,000 keys held a runtime worker for seconds to minutes (the node stopped answering
/// and lost its Raft leadership). Many keys are watched as fast as a few; more than a
/// transaction may carry is refused at WATCH, which EXEC would refuse anyway.
#[tokio::test]
async fn a_watch_of_many_keys_is_answered_and_decided() {
    let node = start(&["--max-value-bytes", "1048576", "--max-key-bytes", "64"]);
    let c = &mut client(node.resp).await;
    let other = &mut client(node.resp).await;
    let keys: Vec<String> = (0..40_000).map(|i| format!("w{i:07}")).collect();
    let mut watch = redis::cmd("WATCH");
    watch.arg(&keys);
    let () = watch.query_async(c).await.unwrap();
    // Watched twice over: still one watch each.
    let () = watch.query_async(c).await.unwrap();
    ok(other, &["SET", "w0039999", "changed"]).await;
    ok(c, &["MULTI"]).await;
    ok(c, &["SET", "mine", "1"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Nil, "the last key watched changed");
    let mut watch = redis::cmd("WATCH");
    watch.arg(&keys);
    let () = watch.query_async(c).await.unwrap();
    ok(c, &["MULTI"]).await;
    ok(c, &["SET", "mine", "1"]).await;
    assert_eq!(ok(c, &["EXEC"]).await, Value::Array(vec![Value::Okay]));
    // 40,000 keys of 8 bytes count 960,000 bytes; 4,000 more pass the limit of 1,048,640.
    let mut watch = redis::cmd("WATCH");
    watch.arg(&keys);
    let () = watch.query_async(c).await.unwrap();
    let mut more = redis::cmd("WATCH");
    more.arg((0..4_000).map(|i| format!("x{i:07}")).collect::<Vec<_>>());
    let e = more.query_async::<()>(c).await.unwrap_err().to_string();
    assert!(e.contains("more than a transaction may carry"), "{e}");
    ok(c, &["UNWATCH"]).await;
    let () = more.query_async(c).await.unwrap();
}

#[tokio::test]
async fn resp3_answers_a_watch_conflict_with_null() {
    let node = start(&[]);
    let mut stream = tokio::net::TcpStream::connect(node.resp).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let other = &mut client(node.resp).await;
    stream.write_all(b"HELLO 3\r\n").await.unwrap();
    let got = read_some(&mut stream, 1).await;
    assert!(got.starts_with(b"%"), "{}", String::from_utf8_lossy(&got));
    stream.write_all(b"WATCH k\r\n").await.unwrap();
    assert_eq!(read_some(&mut stream, 5).await, b"+OK\r\n");
    ok(other, &["SET", "k", "v"]).await;
    stream.write_all(b"MULTI\r\nGET k\r\nEXEC\r\n").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"+QUEUED\r\n_\r\n") {
        let more = read_some(&mut stream, 1).await;
        assert!(!more.is_empty(), "closed after {}", String::from_utf8_lossy(&got));
        got.extend(more);
    }
}

/// MGET sees a write of several keys whole or not at all, as in Redis: writers set `{p}a` and
/// `{p}b` together (MULTI/EXEC, and MSET), and no MGET of the two answers one old value and one
/// new. Found from outside: a few torn answers in ten thousand, with no fault at all, while
/// apply wrote the keys one after the other and MGET read them one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_never_sees_half_of_a_transaction_or_an_mset() {
    let node = start(&[]);
    let addr = node.resp;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, tag) in [(0, "{p}"), (1, "{p}"), (2, "{q}"), (3, "{q}")] {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let c = &mut client(addr).await;
            let (a, b) = (format!("{tag}a"), format!("{tag}b"));
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let v = format!("{w}-{n}");
                if tag == "{p}" {
                    let mut pipe = redis::pipe();
                    pipe.atomic().set(&a, &v).set(&b, &v);
                    let () = pipe.query_async(c).await.unwrap();
                } else {
                    ok(c, &["MSET", &a, &v, &b, &v]).await;
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for tag in ["{p}", "{q}", "{p}", "{q}"] {
        readers.push(tokio::spawn(async move {
            let c = &mut client(addr).await;
            let (a, b) = (format!("{tag}a"), format!("{tag}b"));
            let mut torn = Vec::new();
            for _ in 0..6_000 {
                let (x, y): (Option<String>, Option<String>) = q(c, &["MGET", &a, &b]).await.unwrap();
                if x != y {
                    torn.push((x, y));
                }
            }
            torn
        }));
    }
    let mut torn = Vec::new();
    for reader in readers {
        torn.extend(reader.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(torn.is_empty(), "{} torn MGET answers, e.g. {:?}", torn.len(), &torn[..torn.len().min(3)]);
}

/// Each argument is a slice of the connection's input buffer, and one kept past its request (a
/// queued command's, a watched key) kept the whole buffer: found in review, a transaction
/// queued one command per round trip held a fresh 16 KiB buffer per 3-byte key, about 2.5 GiB
/// per connection within the queue's limit (which counts the arguments alone).
#[tokio::test]
async fn queued_commands_and_watched_keys_hold_only_their_own_bytes() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    ok(c, &["SET", "warm", "up"]).await;
    let before = rss_mib(node.child.id());
    for i in 0..10_000 {
        ok(c, &["WATCH", &format!("w{i}")]).await;
    }
    ok(c, &["MULTI"]).await;
    for i in 0..10_000 {
        assert_eq!(ok(c, &["SET", &format!("k{i}"), "v"]).await, queued());
    }
    // About 20,000 buffers of 16 KiB before the fix (a page or two of each touched): 80 MiB
    // and more; the arguments themselves are under 1 MiB.
    let grown = rss_mib(node.child.id()).saturating_sub(before);
    assert!(grown < 30, "resident memory grew by {grown} MiB for 20,000 small arguments");
    assert_eq!(ok(c, &["DISCARD"]).await, Value::Okay);
}
