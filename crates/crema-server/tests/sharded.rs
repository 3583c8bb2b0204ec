//! `crema serve --shards 4`: three processes, every shard a Raft group on each, spoken to with
//! the `redis` crate. Keys route by hash slot; multi-key reads and deletes gather across
//! shards; MSET and transactions across shards answer Redis Cluster's `CROSSSLOT`.

mod common;

use common::*;
use redis::AsyncCommands;

const CROSSSLOT: &str = "CROSSSLOT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_cluster_serves_redis_clients() {
    let nodes = start_cluster(3, &["--shards", "4"]);
    leader_of(&nodes).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(client(n.resp).await);
    }
    for i in 0..60usize {
        let key = format!("key:{i}");
        let _: () = clients[i % 3].set(&key, i).await.unwrap();
        let got: Option<usize> = clients[(i + 1) % 3].get(&key).await.unwrap();
        assert_eq!(got, Some(i), "{key} read through node {}", (i + 1) % 3);
    }
    for c in &mut clients {
        let size: i64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
        assert_eq!(size, 60);
        let keys: Vec<String> = c.keys("key:*").await.unwrap();
        assert_eq!(keys.len(), 60);
    }
    let c = &mut clients[1];
    // Reads and deletes of many keys gather across shards.
    let got: Vec<Option<usize>> = c.mget(&["key:1", "key:2", "key:3", "nope"]).await.unwrap();
    assert_eq!(got, vec![Some(1), Some(2), Some(3), None]);
    let exists: i64 =
        redis::cmd("EXISTS").arg(&["key:1", "key:2", "key:3", "nope"]).query_async(c).await.unwrap();
    assert_eq!(exists, 3);
    let removed: i64 = c.del(&["key:1", "key:2", "key:3", "nope"]).await.unwrap();
    assert_eq!(removed, 3);

    // MSET across shards is refused and writes nothing; a hash tag puts the keys in one shard.
    let slot = |key: &str| crema::key_slot(key.as_bytes()) as u32 * 4 / 16384;
    assert_ne!(slot("a"), slot("b"), "a and b are in different shards");
    let refused: redis::RedisResult<()> = c.mset(&[("a", "1"), ("b", "2")]).await;
    let err = refused.unwrap_err();
    assert_eq!(err.code(), Some(CROSSSLOT), "{err}");
    let a: Option<String> = c.get("a").await.unwrap();
    assert_eq!(a, None);
    let _: () = c.mset(&[("{user:1}:name", "ann"), ("{user:1}:mail", "ann@example.com")]).await.unwrap();

    // A transaction in one shard commits; across shards it is refused and writes nothing.
    let (ok,): (i64,) =
        redis::pipe().atomic().set("{t}:x", 1).ignore().incr("{t}:y", 5).query_async(c).await.unwrap();
    assert_eq!(ok, 5);
    // Redis Cluster's way: the command whose key is elsewhere is refused when queued, and EXEC
    // then discards the transaction.
    let queued =
        raw_until(nodes[1].resp, b"MULTI\r\nSET a 1\r\nINCRBY b 5\r\nEXEC\r\n", b"errors.\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&queued),
        "+OK\r\n+QUEUED\r\n-CROSSSLOT Keys in request don't hash to the same slot\r\n\
         -EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    let across: redis::RedisResult<(i64,)> =
        redis::pipe().atomic().set("a", 1).ignore().incr("b", 5).query_async(c).await;
    assert!(across.is_err(), "the redis crate sees the refusal");
    let b: Option<String> = c.get("b").await.unwrap();
    assert_eq!(b, None);

    // INFO lists every shard with a leader.
    let info: String = redis::cmd("INFO").arg("shards").query_async(c).await.unwrap();
    for shard in 0..4 {
        assert!(info.contains(&format!("shard{shard}:state=active,leader=")), "{info}");
    }

    // FLUSHALL reaches every shard on every node.
    let _: () = redis::cmd("FLUSHALL").query_async(c).await.unwrap();
    for c in &mut clients {
        let size: i64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
        assert_eq!(size, 0);
    }
}
