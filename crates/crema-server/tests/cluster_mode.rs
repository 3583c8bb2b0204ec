//! Redis Cluster's answers on a sharded crema (`--shards 4`, three processes): which
//! connections get `-MOVED` and `-CROSSSLOT` (those that asked for the slot map, or every one
//! with `--cluster-redirects always`), what KEYS, SCAN and DBSIZE cover then, and the slot map
//! of a node that does not know the shard map yet.

mod common;

use common::shards::{all_shards_led, slot_map};
use common::*;
use redis::AsyncCommands;

/// `--cluster-redirects always`: every connection is answered as by Redis Cluster, without
/// asking for the slot map first. Found from outside: cluster clients (valkey-py, coredis,
/// iovalkey, valkey-glide) read the map on one connection and send commands on others, which
/// were forwarded without a word, so after a leadership moved they kept sending its keys to
/// the old leader (300 writes: 92 forwarded, no -MOVED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_redirected_with_cluster_redirects_always() {
    let nodes = start_cluster(3, &["--shards", "4", "--cluster-redirects", "always"]);
    all_shards_led(nodes[0].resp).await;
    let slots = slot_map(&mut client(nodes[0].resp).await).await;
    let leads = |id: u64| slots.iter().filter(|s| s.2 .2 == format!("{id:040x}")).count();
    let at = (0..3).min_by_key(|i| leads(*i as u64 + 1)).unwrap();
    let me = format!("{:040x}", at + 1);
    let range_of = |key: &str| {
        let slot = i64::from(crema::key_slot(key.as_bytes()));
        let range = slots.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)).unwrap();
        (slot, range.2 .2 == me, format!("{}:{}", range.2 .0, range.2 .1))
    };
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let elsewhere = keys.iter().find(|k| !range_of(k).1).expect("a shard led by another node");
    // A connection that never asked for the slot map.
    let mut plain = client(nodes[at].resp).await;
    let moved = plain.set::<_, _, ()>(elsewhere, "v").await.unwrap_err();
    assert_eq!(moved.code(), Some("MOVED"), "{moved}");
    let (slot, _, addr) = range_of(elsewhere);
    assert_eq!(moved.redirect_node(), Some((addr.as_str(), slot as u16)), "{moved}");
    if let Some(mine) = keys.iter().find(|k| range_of(k).1) {
        let _: () = plain.set(mine, "here").await.unwrap();
    }
    let cross = plain.mget::<_, Vec<Option<String>>>(&["a", "b"]).await.unwrap_err();
    assert_eq!(cross.code(), Some("CROSSSLOT"), "{cross}");
    // The leader it names serves the key.
    let leader = nodes.iter().find(|n| n.resp.to_string() == addr).expect("the leader is a node");
    let _: () = client(leader.resp).await.set(elsewhere, "v").await.unwrap();

    // Each node answers KEYS, SCAN and DBSIZE for the shards it leads, as a Redis Cluster
    // primary for its slots: asked in turn, the nodes give each key once (a cluster client's
    // DBSIZE is the sum, its SCAN the union).
    let seeds: Vec<String> = nodes.iter().map(|n| format!("redis://{}/", n.resp)).collect();
    let cluster = redis::cluster::ClusterClient::builder(seeds).build().unwrap();
    let mut cc = cluster.get_async_connection().await.unwrap();
    // (FLUSHALL, keyless, empties every shard from any node.)
    let _: () = redis::cmd("FLUSHALL").query_async(&mut client(nodes[0].resp).await).await.unwrap();
    for i in 0..100 {
        let _: () = cc.set(format!("scoped:{i}"), i).await.unwrap();
    }
    let (mut sizes, mut listed, mut scanned) = (0, Vec::new(), Vec::new());
    for node in &nodes {
        let mut c = client(node.resp).await;
        sizes += redis::cmd("DBSIZE").query_async::<i64>(&mut c).await.unwrap();
        listed.extend(redis::cmd("KEYS").arg("scoped:*").query_async::<Vec<String>>(&mut c).await.unwrap());
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(7).query_async(&mut c).await.unwrap();
            scanned.extend(page);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    let wanted: Vec<String> = {
        let mut all: Vec<String> = (0..100).map(|i| format!("scoped:{i}")).collect();
        all.sort();
        all
    };
    listed.sort();
    scanned.sort();
    assert_eq!(sizes, 100, "DBSIZE summed over the nodes");
    assert_eq!(listed, wanted, "KEYS over the nodes: each key once");
    assert_eq!(scanned, wanted, "SCAN over the nodes: each key once");
    // So do CLUSTER COUNTKEYSINSLOT and GETKEYSINSLOT: the slot's primary alone counts its keys.
    let slot = crema::key_slot(b"scoped:7").to_string();
    let mut counts = Vec::new();
    for node in &nodes {
        let mut c = client(node.resp).await;
        let count: i64 =
            redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(&slot).query_async(&mut c).await.unwrap();
        let keys: Vec<String> =
            redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(&slot).arg(10).query_async(&mut c).await.unwrap();
        assert_eq!(count as usize, keys.len());
        counts.push(count);
    }
    counts.sort_unstable();
    assert_eq!(counts, [0, 0, 1], "one node answers for the slot of scoped:7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_asked_for_the_slot_map_is_redirected() {
    let nodes = start_cluster(3, &["--shards", "4"]);
    all_shards_led(nodes[0].resp).await;
    let mut c = client(nodes[0].resp).await;
    let slots = slot_map(&mut c).await;
    // Talk to the node that leads the fewest shards: some shard is led by another node.
    let leads = |id: u64| slots.iter().filter(|s| s.2 .2 == format!("{id:040x}")).count();
    let at = (0..3).min_by_key(|i| leads(*i as u64 + 1)).unwrap();
    let me = format!("{:040x}", at + 1);
    // A key of a shard this node leads (if any), and one of a shard another node leads.
    let leads_here = |key: &str| {
        let slot = i64::from(crema::key_slot(key.as_bytes()));
        let range = slots.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)).unwrap();
        (slot, range.2 .2 == me, format!("{}:{}", range.2 .0, range.2 .1))
    };
    let (mine, elsewhere) = {
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        let mine = keys.iter().find(|k| leads_here(k).1).cloned();
        let other = keys.iter().find(|k| !leads_here(k).1).cloned().expect("a shard led by another node");
        (mine, other)
    };
    // A plain connection is served whatever the key (forwarded to the leader).
    let mut plain = client(nodes[at].resp).await;
    let _: () = plain.set(&elsewhere, "v").await.unwrap();
    // A connection that asked for the slot map gets -MOVED for the other shard's key, and is
    // served for a key of a shard this node leads.
    let (slot, _, addr) = leads_here(&elsewhere);
    // (A multiplexed connection of the redis crate is one TCP connection.)
    let mut cm = client(nodes[at].resp).await;
    let before: Option<String> = cm.get(&elsewhere).await.unwrap();
    assert_eq!(before.as_deref(), Some("v"), "not redirected before asking for the slot map");
    let nodes_text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut cm).await.unwrap();
    assert!(nodes_text.contains("myself,master"), "{nodes_text}");
    assert_eq!(nodes_text.lines().count(), 3, "{nodes_text}");
    let moved = cm.get::<_, Option<String>>(&elsewhere).await.unwrap_err();
    assert_eq!(moved.code(), Some("MOVED"), "{moved}");
    assert_eq!(moved.redirect_node(), Some((addr.as_str(), slot as u16)), "{moved}");
    if let Some(mine) = mine {
        let _: () = cm.set(&mine, "here").await.unwrap();
    }
    // Keys of two shards in one command: CROSSSLOT in cluster mode.
    let cross = cm.mget::<_, Vec<Option<String>>>(&["a", "b"]).await.unwrap_err();
    assert_eq!(cross.code(), Some("CROSSSLOT"), "{cross}");
    // INFO errorstats counts the node's error replies by their first word, as Redis does.
    let errors: String = redis::cmd("INFO").arg("errorstats").query_async(&mut cm).await.unwrap();
    for expected in ["errorstat_MOVED:count=1\r\n", "errorstat_CROSSSLOT:count=1\r\n"] {
        assert!(errors.contains(expected), "{expected} missing from {errors}");
    }
    let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap();
    assert!(info.contains("cluster_state:ok") && info.contains("cluster_size:"), "{info}");
}

/// A node that does not know the shard map yet (here: started to join a cluster that does not
/// answer) answers `CLUSTER SLOTS` and `CLUSTER SHARDS` with `-CLUSTERDOWN`, on which cluster
/// clients ask their next startup node. Found from outside: a restarted node answered, for up
/// to 400 ms after its RESP port opened, one slot range without a primary, and redis-py's
/// `RedisCluster` failed on it with an `IndexError`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_shard_map_answers_clusterdown_for_the_slot_map() {
    let silent = free_addrs(1)[0];
    let peer = format!("1={silent}");
    let mut args = vec!["--node-id", "2", "--shards", "4", "--join", "true", "--peer", peer.as_str()];
    args.extend(FAST);
    let node = start(&args);
    let mut c = client(node.resp).await;
    for sub in ["SLOTS", "SHARDS"] {
        let answer: redis::RedisResult<redis::Value> =
            redis::cmd("CLUSTER").arg(sub).query_async(&mut c).await;
        let err = answer.expect_err(sub);
        assert_eq!(err.code(), Some("CLUSTERDOWN"), "CLUSTER {sub}: {err}");
    }
    // What needs no map is answered all the same.
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg("foo").query_async(&mut c).await.unwrap();
    assert_eq!(slot, 12182);
}

/// A node that knows its shards' members but has not heard their leaders since it started
/// (here: the only one of three durable nodes started again) answers `-CLUSTERDOWN` for the
/// slot map instead of a guess. Found from outside: a restarted node named one node the primary
/// of 9 of 16 ranges another node led, and cluster clients that read that map routed them wrong.
#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_knows_no_leader_since_it_started_answers_clusterdown_for_the_slot_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut raft = free_addrs(6);
    let resp = raft.split_off(3);
    let args = |i: usize| -> Vec<String> {
        let data = dir.path().join(format!("node{}", i + 1)).to_str().unwrap().to_owned();
        let extra = ["--shards", "4", "--storage", "rocksdb", "--data-dir", &data].map(String::from);
        member_args(i, &raft, &resp, &extra)
    };
    let start_node = |i: usize| {
        let args = args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The port of a node just killed may be held for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match try_start(&args) {
                Ok(node) => return node,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("start of node {} retried: {e}", i + 1);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let mut nodes: Vec<Node> = (0..3).map(start_node).collect();
    for node in &mut nodes {
        node.wait_ready(std::time::Duration::from_secs(30)).unwrap();
    }
    all_shards_led(nodes[0].resp).await;
    slot_map(&mut client(nodes[0].resp).await).await;
    drop(nodes); // SIGKILL, all three.

    // Node 1 alone: its shards' members are on its disk, and no shard can elect a leader.
    let alone = start_node(0);
    let mut c = client(alone.resp).await;
    for _ in 0..10 {
        let answer: redis::RedisResult<redis::Value> =
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await;
        let err = answer.expect_err("no slot map from a node that knows no leader");
        assert_eq!(err.code(), Some("CLUSTERDOWN"), "{err}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Node 2 back: the shards elect leaders, and node 1 gives the slot map again.
    let _second = start_node(1);
    wait_until(std::time::Duration::from_secs(30), "a slot map from node 1 again", || async {
        let mut c = client(alone.resp).await;
        let answer: redis::RedisResult<Vec<redis::Value>> =
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await;
        answer.is_ok_and(|ranges| !ranges.is_empty())
    })
    .await;
}
