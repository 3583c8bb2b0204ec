//! String commands against a real `crema serve` process, through the `redis` crate (what
//! applications use): SET and its options, the counters, APPEND and ranges, LCS.

mod common;

use std::time::Duration;

use common::cmd::{bulk, err, ok, q};
use common::*;
use redis::Value;

#[tokio::test]
async fn set_and_its_options() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    assert_eq!(ok(c, &["SET", "k", "v1"]).await, Value::Okay);
    assert_eq!(ok(c, &["GET", "k"]).await, bulk("v1"));
    assert_eq!(ok(c, &["SET", "k", "v2", "NX"]).await, Value::Nil, "NX on an existing key writes nothing");
    assert_eq!(ok(c, &["SET", "k", "v2", "XX"]).await, Value::Okay);
    assert_eq!(ok(c, &["SET", "new", "x", "XX"]).await, Value::Nil);
    assert_eq!(ok(c, &["GET", "new"]).await, Value::Nil);
    assert_eq!(ok(c, &["SET", "k", "v3", "GET"]).await, bulk("v2"));
    assert_eq!(ok(c, &["SET", "k", "v4", "NX", "GET"]).await, bulk("v3"), "NX+GET answers the old value");
    assert_eq!(ok(c, &["GET", "k"]).await, bulk("v3"), "and does not write");
    assert_eq!(ok(c, &["SET", "fresh", "1", "NX", "GET"]).await, Value::Nil);
    assert_eq!(ok(c, &["GET", "fresh"]).await, bulk("1"));
    assert!(err(c, &["SET", "k", "v", "NX", "XX"]).await.contains("syntax error"));
    assert!(err(c, &["SET", "k", "v", "EX", "10", "PX", "100"]).await.contains("syntax error"));
    assert!(err(c, &["SET", "k", "v", "EX"]).await.contains("syntax error"));
    assert!(err(c, &["SET", "k", "v", "EX", "0"]).await.contains("invalid expire time in 'set'"));
    assert!(err(c, &["SET", "k", "v", "EX", "-5"]).await.contains("invalid expire time"));
    assert!(err(c, &["SET", "k", "v", "EX", "ten"]).await.contains("not an integer"));
    assert!(err(c, &["SET", "k"]).await.contains("wrong number of arguments for 'set'"));

    // Expiry options and KEEPTTL.
    ok(c, &["SET", "t", "1", "EX", "100"]).await;
    let ttl: i64 = q(c, &["TTL", "t"]).await.unwrap();
    assert!((99..=100).contains(&ttl), "{ttl}");
    ok(c, &["SET", "t", "2", "KEEPTTL"]).await;
    assert!(q::<i64>(c, &["PTTL", "t"]).await.unwrap() > 90_000, "KEEPTTL keeps the TTL");
    ok(c, &["SET", "t", "3"]).await;
    assert_eq!(q::<i64>(c, &["TTL", "t"]).await.unwrap(), -1, "a plain SET clears the TTL");
    let at = (crema::unix_now_ms() + 60_000).to_string();
    ok(c, &["SET", "t", "4", "PXAT", &at]).await;
    assert_eq!(q::<i64>(c, &["PEXPIRETIME", "t"]).await.unwrap().to_string(), at);
    ok(c, &["SET", "t", "5", "EXAT", "1"]).await;
    assert_eq!(ok(c, &["GET", "t"]).await, Value::Nil, "an EXAT in the past leaves no key");
    // Repeated, only the last value counts (found different from Redis from outside).
    ok(c, &["SET", "t", "6", "PX", "GET", "PX", "100000"]).await;
    assert!(q::<i64>(c, &["PTTL", "t"]).await.unwrap() > 90_000);
    ok(c, &["SET", "t", "7", "EX", "-2147483648", "EX", "99999"]).await;
    assert!(q::<i64>(c, &["TTL", "t"]).await.unwrap() > 99_000);
    assert!(err(c, &["SET", "t", "8", "EX", "99", "EX", "0"]).await.contains("invalid expire time"));
    assert!(err(c, &["SET", "t", "8", "EX", "99", "PX", "99"]).await.contains("syntax error"));

    // The SET relatives.
    assert_eq!(q::<i64>(c, &["SETNX", "sn", "1"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(c, &["SETNX", "sn", "2"]).await.unwrap(), 0);
    assert_eq!(ok(c, &["SETEX", "se", "100", "v"]).await, Value::Okay);
    assert!(q::<i64>(c, &["TTL", "se"]).await.unwrap() > 98);
    assert_eq!(ok(c, &["PSETEX", "pse", "100000", "v"]).await, Value::Okay);
    assert!(err(c, &["SETEX", "se", "0", "v"]).await.contains("invalid expire time in 'setex'"));
    assert_eq!(ok(c, &["GETSET", "sn", "3"]).await, bulk("1"));
    assert_eq!(ok(c, &["GETSET", "none", "3"]).await, Value::Nil);
}

#[tokio::test]
async fn counters_are_exact_and_refuse_non_integers() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    assert_eq!(q::<i64>(c, &["INCR", "n"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(c, &["INCRBY", "n", "41"]).await.unwrap(), 42);
    assert_eq!(q::<i64>(c, &["DECR", "n"]).await.unwrap(), 41);
    assert_eq!(q::<i64>(c, &["DECRBY", "n", "50"]).await.unwrap(), -9);
    ok(c, &["SET", "text", "hello"]).await;
    assert!(err(c, &["INCR", "text"]).await.contains("value is not an integer or out of range"));
    ok(c, &["SET", "spaced", " 1"]).await;
    assert!(err(c, &["INCR", "spaced"]).await.contains("not an integer"));
    assert!(err(c, &["INCRBY", "n", "1.5"]).await.contains("not an integer"));
    ok(c, &["SET", "max", &i64::MAX.to_string()]).await;
    assert!(err(c, &["INCR", "max"]).await.contains("increment or decrement would overflow"));
    assert!(err(c, &["DECRBY", "n", &i64::MIN.to_string()]).await.contains("decrement would overflow"));
    assert_eq!(ok(c, &["GET", "max"]).await, bulk(&i64::MAX.to_string()), "a failed INCR changes nothing");

    assert_eq!(ok(c, &["INCRBYFLOAT", "f", "10.5"]).await, bulk("10.5"));
    assert_eq!(ok(c, &["INCRBYFLOAT", "f", "0.1"]).await, bulk("10.6"));
    assert_eq!(ok(c, &["INCRBYFLOAT", "f", "-5.6"]).await, bulk("5"));
    assert!(err(c, &["INCRBYFLOAT", "text", "1"]).await.contains("not a valid float"));
    assert!(err(c, &["INCRBYFLOAT", "f", "abc"]).await.contains("not a valid float"));
    assert!(err(c, &["INCRBYFLOAT", "f", "inf"]).await.contains("increment would produce NaN or Infinity"));
    // Redis computes in C long double and prints 17 decimal places, trimmed.
    assert_eq!(ok(c, &["INCRBYFLOAT", "g", "0.1"]).await, bulk("0.1"));
    assert_eq!(ok(c, &["INCRBYFLOAT", "g", "0.2"]).await, bulk("0.3"));
    assert_eq!(ok(c, &["INCRBYFLOAT", "h", "0x10"]).await, bulk("16"));
    let big = ok(c, &["INCRBYFLOAT", "h", "1e400"]).await;
    assert_eq!(ok(c, &["GET", "h"]).await, big);
    assert!(
        matches!(&big, Value::BulkString(b) if b.len() == 401 && b.starts_with(b"1000000000000000000028188"))
    );
    ok(c, &["SET", "huge", "1.1e4932"]).await;
    assert!(err(c, &["INCRBYFLOAT", "huge", "1e4932"])
        .await
        .contains("increment would produce NaN or Infinity"));
    assert!(err(c, &["INCRBYFLOAT", "f", "1e5000"]).await.contains("not a valid float"));

    ok(c, &["SET", "ttl", "1", "EX", "100"]).await;
    q::<i64>(c, &["INCR", "ttl"]).await.unwrap();
    assert!(q::<i64>(c, &["TTL", "ttl"]).await.unwrap() > 90, "INCR keeps the TTL");
}

#[tokio::test]
async fn append_ranges_and_lengths() {
    let node = start(&["--max-value-bytes", "64"]);
    let c = &mut client(node.resp).await;
    assert_eq!(q::<i64>(c, &["APPEND", "s", "Hello"]).await.unwrap(), 5);
    assert_eq!(q::<i64>(c, &["APPEND", "s", " World"]).await.unwrap(), 11);
    assert_eq!(q::<i64>(c, &["STRLEN", "s"]).await.unwrap(), 11);
    assert_eq!(q::<i64>(c, &["STRLEN", "nokey"]).await.unwrap(), 0);
    assert_eq!(ok(c, &["GETRANGE", "s", "0", "4"]).await, bulk("Hello"));
    assert_eq!(ok(c, &["GETRANGE", "s", "-5", "-1"]).await, bulk("World"));
    assert_eq!(ok(c, &["SUBSTR", "s", "6", "100"]).await, bulk("World"));
    assert_eq!(ok(c, &["GETRANGE", "nokey", "0", "-1"]).await, bulk(""));
    assert_eq!(q::<i64>(c, &["SETRANGE", "s", "6", "Redis"]).await.unwrap(), 11);
    assert_eq!(ok(c, &["GET", "s"]).await, bulk("Hello Redis"));
    assert_eq!(q::<i64>(c, &["SETRANGE", "pad", "3", "x"]).await.unwrap(), 4);
    assert_eq!(ok(c, &["GET", "pad"]).await, Value::BulkString(b"\0\0\0x".to_vec()));
    assert!(err(c, &["SETRANGE", "s", "-1", "x"]).await.contains("offset is out of range"));
    assert!(err(c, &["SETRANGE", "s", "64", "x"]).await.contains("string exceeds maximum allowed size"));
    let long = "x".repeat(60);
    assert!(err(c, &["APPEND", "s", &long]).await.contains("string exceeds maximum allowed size"));
    assert_eq!(q::<i64>(c, &["STRLEN", "s"]).await.unwrap(), 11, "a refused APPEND changes nothing");
}

/// LCS as Redis 7 answers it (found from outside: coredis's and valkey-glide's `lcs()` got
/// `unknown command`), in a transaction too; a table too large is refused; LASTSAVE answers.
#[tokio::test]
async fn lcs_and_lastsave() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    let _: () = q(c, &["MSET", "key1", "ohmytext", "key2", "mynewtext"]).await.unwrap();
    assert_eq!(ok(c, &["LCS", "key1", "key2"]).await, bulk("mytext"));
    assert_eq!(q::<i64>(c, &["LCS", "key1", "key2", "LEN"]).await.unwrap(), 6);
    let int = Value::Int;
    let pair = |a, b| Value::Array(vec![int(a), int(b)]);
    let idx = ok(c, &["LCS", "key1", "key2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"]).await;
    let one_match = Value::Array(vec![pair(4, 7), pair(5, 8), int(4)]);
    assert_eq!(
        idx,
        Value::Array(vec![bulk("matches"), Value::Array(vec![one_match]), bulk("len"), int(6)]),
        "{idx:?}"
    );
    assert_eq!(ok(c, &["LCS", "key1", "nokey"]).await, bulk(""));
    assert!(err(c, &["LCS", "key1", "key2", "LEN", "IDX"]).await.contains("please just use IDX"));
    assert!(err(c, &["LCS", "key1", "key2", "BOGUS"]).await.contains("syntax error"));
    assert!(err(c, &["LCS", "key1"]).await.contains("wrong number of arguments"));
    let _: () = q(c, &["SET", "big", &"x".repeat(10_000)]).await.unwrap();
    assert!(err(c, &["LCS", "big", "big"]).await.contains("Insufficient memory"));
    let (lcs, len): (String, i64) = redis::pipe()
        .atomic()
        .cmd("LCS")
        .arg("key1")
        .arg("key2")
        .cmd("LCS")
        .arg("key1")
        .arg("key2")
        .arg("LEN")
        .query_async(c)
        .await
        .unwrap();
    assert_eq!((lcs.as_str(), len), ("mytext", 6), "in MULTI/EXEC");
    // The node's start, the same at every call: the current time less its uptime.
    let saved = q::<i64>(c, &["LASTSAVE"]).await.unwrap();
    let info: String = q(c, &["INFO", "server"]).await.unwrap();
    let uptime: i64 =
        info.lines().find_map(|l| l.strip_prefix("uptime_in_seconds:")).unwrap().trim().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - uptime - 2..=now - uptime + 1).contains(&saved), "{saved} vs {now} - {uptime}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(q::<i64>(c, &["LASTSAVE"]).await.unwrap(), saved, "unchanged: nothing was saved");
}

/// LCS of large strings runs off the client runtime: found from outside, 50 clients asking LCS
/// of two 4 KB strings held every other client of the node 3.7 s per GET (here: 8 clients, 2 KB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_lcs_requests_do_not_hold_other_clients() {
    let node = start(&["--client-threads", "1"]);
    let c = &mut client(node.resp).await;
    let text = |seed: u64| -> String {
        (0..2048u64).map(|i| char::from(b'a' + ((i.wrapping_mul(seed) >> 3) % 26) as u8)).collect()
    };
    let _: () = q(c, &["MSET", "a", &text(2_654_435_761), "b", &text(40_503)]).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut askers = Vec::new();
    for _ in 0..8 {
        let (stop, addr) = (stop.clone(), node.resp);
        askers.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let mut done = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // (A debug build takes long over each: the client may give up on one.)
                if q::<i64>(&mut c, &["LCS", "a", "b", "LEN"]).await.is_ok() {
                    done += 1;
                }
            }
            done
        }));
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(ok(c, &["GET", "missing"]).await, Value::Nil);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for asker in askers {
        answered += asker.await.unwrap();
    }
    assert!(answered > 0, "the LCS requests were answered");
    assert!(slowest < Duration::from_secs(1), "a GET waited {slowest:?} behind LCS requests");
}

/// APPEND and SETRANGE copy the whole value when applied, and a Raft entry applies in one go on
/// every replica (found in review: 148,000 `APPEND big ""` in one transaction on an 8 MiB value
/// would have copied 1.2 TB, stalling the shard on every replica for minutes). Pipelined, they
/// are proposed in entries that each copy a bounded amount, and every one is answered; in one
/// transaction, those that would take it past 64 MiB of copies are refused, saying why, and the
/// others applied.
#[tokio::test]
async fn appends_to_a_large_value_copy_a_bounded_amount_per_entry() {
    let node = start(&[]);
    let c = &mut client(node.resp).await;
    let mib = 1 << 20;
    let _: () = q(c, &["SET", "big", &"v".repeat(mib)]).await.unwrap();
    let applied = |info: String| -> u64 {
        let line = info.lines().find(|l| l.starts_with("shard0:")).expect("shard 0 in INFO shards");
        let field = line.split([':', ',']).find_map(|kv| kv.strip_prefix("applied_index="));
        field.and_then(|v| v.parse().ok()).expect("an applied index")
    };
    let before = applied(q(c, &["INFO", "shards"]).await.unwrap());
    let mut pipe = redis::pipe();
    for _ in 0..100 {
        pipe.cmd("APPEND").arg("big").arg("x");
    }
    let lens: Vec<i64> = pipe.query_async(c).await.unwrap();
    assert_eq!(lens, (1..=100).map(|n| mib as i64 + n).collect::<Vec<_>>());
    // About 1 MiB copied each: 16 at most per entry (one entry for all of them without it).
    let entries = applied(q(c, &["INFO", "shards"]).await.unwrap()) - before;
    assert!(entries >= 100 / 16, "100 pipelined APPENDs to a 1 MiB value were {entries} entries");
    // The same after a COPY in the pipeline: the copy's value counts for the APPENDs to it.
    let before = applied(q(c, &["INFO", "shards"]).await.unwrap());
    let mut pipe = redis::pipe();
    pipe.cmd("COPY").arg("big").arg("copied").ignore();
    for _ in 0..100 {
        pipe.cmd("APPEND").arg("copied").arg("x");
    }
    let lens: Vec<i64> = pipe.query_async(c).await.unwrap();
    assert_eq!(lens.last(), Some(&(mib as i64 + 200)));
    let entries = applied(q(c, &["INFO", "shards"]).await.unwrap()) - before;
    assert!(entries >= 100 / 16, "a COPY and 100 APPENDs to the copy were {entries} entries");
    let mut tx = b"*1\r\n$5\r\nMULTI\r\n".to_vec();
    for _ in 0..80 {
        tx.extend_from_slice(b"*3\r\n$6\r\nAPPEND\r\n$3\r\nbig\r\n$1\r\ny\r\n");
    }
    tx.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
    let out = String::from_utf8(raw_until(node.resp, &tx, b"on its own\r\n").await).unwrap();
    let exec = &out[out.find("*80\r\n").expect("EXEC's array")..];
    let applied = exec.matches("\r\n:").count();
    let refused =
        exec.matches("\r\n-ERR not applied: with the APPENDs and SETRANGEs before it in its").count();
    assert_eq!((applied, refused), (63, 17), "{:?}", &exec[..300.min(exec.len())]);
    assert_eq!(q::<i64>(c, &["STRLEN", "big"]).await.unwrap(), mib as i64 + 163);
}
