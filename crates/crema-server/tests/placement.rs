//! `crema serve --shards 16 --replicas 3` on five processes: each shard's group runs on three
//! of them (the meta shard also on the other two, as learners), and every node answers plain
//! Redis clients for every key, whether it holds the key's shard or not: writes, reads of one
//! and many keys, KEYS, SCAN, DBSIZE, WATCH and transactions. `CLUSTER SLOTS` names every
//! shard's three members from any node.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use redis::AsyncCommands;

const SHARDS: u64 = 16;

/// Each node's `/cluster` shards it holds: shard -> (leader, members).
async fn held(nodes: &[Node]) -> Vec<BTreeMap<u64, (Option<u64>, Vec<u64>)>> {
    let mut out = Vec::new();
    for n in nodes {
        let (_, body) = http_get(n.admin, "/cluster").await;
        let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let shards = view["shards"].as_array().cloned().unwrap_or_default();
        let mine = shards
            .iter()
            .filter(|s| s["held"].as_bool() == Some(true))
            .map(|s| {
                let members = s["members"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap()).collect();
                (s["id"].as_u64().unwrap(), (s["leader"].as_u64(), members))
            })
            .collect();
        out.push(mine);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_hold_three_replicas_of_each_shard_and_answer_for_every_key() {
    let nodes = start_cluster(5, &["--shards", "16", "--replicas", "3"]);
    // Every shard: three voting members, held by exactly them, with a leader they agree on.
    wait_until(Duration::from_secs(30), "every shard placed on three nodes with a leader", || async {
        let held = held(&nodes).await;
        (0..SHARDS).all(|shard| {
            let holders: Vec<_> = held.iter().filter_map(|h| h.get(&shard)).collect();
            let expected = if shard == 0 { 5 } else { 3 };
            holders.len() == expected
                && holders.iter().all(|(leader, members)| members.len() == 3 && leader.is_some())
                && holders.iter().all(|h| h.0 == holders[0].0)
        })
    })
    .await;
    // Leaders spread: 16 shards over 5 nodes, 3 or 4 each (each node counts the shards it does
    // not hold by the leaders its peers announce).
    wait_until(Duration::from_secs(30), "leaders spread, within one per node", || async {
        let mut leads = BTreeMap::new();
        for h in held(&nodes).await {
            for (shard, (leader, _)) in h {
                leads.insert(shard, leader);
            }
        }
        let counts: Vec<usize> = (1..=5).map(|n| leads.values().filter(|l| **l == Some(n)).count()).collect();
        leads.len() == SHARDS as usize
            && counts.iter().sum::<usize>() == SHARDS as usize
            && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
    })
    .await;
    let held = held(&nodes).await;
    let mut replicas = BTreeMap::new();
    for (i, h) in held.iter().enumerate() {
        let id = i as u64 + 1;
        for (shard, (_, members)) in h {
            assert!(
                *shard == 0 || members.contains(&id),
                "node {id} holds shard {shard} without being a member"
            );
            *replicas.entry(id).or_insert(0) += usize::from(members.contains(&id));
        }
    }
    // 48 replicas over 5 nodes: 9 or 10 each.
    assert!(replicas.values().all(|r| (9..=10).contains(r)), "{replicas:?}");

    // Plain clients on every node write and read keys of every shard.
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(client(n.resp).await);
    }
    for i in 0..100usize {
        let _: () = clients[i % 5].set(format!("key:{i}"), i).await.unwrap();
        let got: Option<usize> = clients[(i + 2) % 5].get(format!("key:{i}")).await.unwrap();
        assert_eq!(got, Some(i), "key:{i} read through node {}", (i + 2) % 5 + 1);
    }
    for c in &mut clients {
        let size: i64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
        assert_eq!(size, 100);
        let keys: Vec<String> = c.keys("key:1*").await.unwrap();
        assert_eq!(keys.len(), 11, "key:1 and key:10..19");
        let wanted: Vec<String> = (0..6).map(|i| format!("key:{i}")).collect();
        let got: Vec<Option<usize>> = c.mget(&wanted).await.unwrap();
        assert_eq!(got, (0..6).map(Some).collect::<Vec<_>>());
        let exists: i64 = redis::cmd("EXISTS").arg(&wanted).arg("nope").query_async(c).await.unwrap();
        assert_eq!(exists, 6);
        let len: i64 = redis::cmd("STRLEN").arg("key:42").query_async(c).await.unwrap();
        assert_eq!(len, 2);
        // SCAN walks every key once, wherever its shard lives.
        let mut seen = BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(17).query_async(c).await.unwrap();
            seen.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen.len(), 100);
        let mut matched = BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("key:1*")
                .arg("COUNT")
                .arg(5)
                .query_async(c)
                .await
                .unwrap();
            matched.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(matched.len(), 11, "key:1 and key:10..19");
        let random: String = redis::cmd("RANDOMKEY").query_async(c).await.unwrap();
        assert!(seen.contains(&random), "RANDOMKEY answered {random}");
    }

    // Found from outside: a node that holds none of a shard fetched all of its keys for a
    // SCAN (a copy per connection scanning, and nothing at all once they passed a peer frame).
    // Holders send the next keys in scan order now, within a frame: 20 MiB of key names in
    // one shard are scanned through a node that does not hold it.
    let tag = "{big}";
    let big_shard = crema::key_slot(tag.as_bytes()) as u64 * SHARDS / 16384;
    let outside = (0..5).find(|n| !held[*n].contains_key(&big_shard)).expect("a node without the shard");
    let pad = "p".repeat(60_000);
    // Writes and pages of megabytes: clients that wait longer than the crate's 500 ms (a
    // loaded machine took more, found in a run beside other clusters).
    let writer = &mut patient_client(nodes[(outside + 1) % 5].resp).await;
    for batch in 0..35 {
        let mut mset = redis::cmd("MSET");
        for i in batch * 10..(batch + 1) * 10 {
            mset.arg(format!("{tag}:{i}:{pad}")).arg(i);
        }
        let () = mset.query_async(writer).await.unwrap();
    }
    let c = &mut patient_client(nodes[outside].resp).await;
    let (mut big, mut cursor) = (0, 0u64);
    loop {
        let (next, page): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(100).query_async(c).await.unwrap();
        big += page.iter().filter(|k| k.starts_with(tag)).count();
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(big, 350, "every key of a shard larger than a frame, scanned from outside it");
    let _: String = redis::cmd("RANDOMKEY").query_async(c).await.unwrap();

    // A transaction on a key of a shard the node does not hold: WATCH reads it where it is,
    // EXEC commits, and a write by another client in between aborts the next one.
    let (at, key) = (0..5)
        .flat_map(|n| (0..100).map(move |i| (n, format!("key:{i}"))))
        .find(|(n, k)| {
            let shard = crema::key_slot(k.as_bytes()) as u64 * SHARDS / 16384;
            !held[*n].contains_key(&shard)
        })
        .expect("some node does not hold some key's shard");
    let mut watcher = client(nodes[at].resp).await;
    let _: () = redis::cmd("WATCH").arg(&key).query_async(&mut watcher).await.unwrap();
    let (n,): (i64,) = redis::pipe().atomic().incr(&key, 1).query_async(&mut watcher).await.unwrap();
    let start: i64 = key[4..].parse().unwrap();
    assert_eq!(n, start + 1);
    let _: () = redis::cmd("WATCH").arg(&key).query_async(&mut watcher).await.unwrap();
    let _: () = clients[(at + 1) % 5].set(&key, 0).await.unwrap();
    let aborted: Option<(i64,)> =
        redis::pipe().atomic().incr(&key, 1).query_async(&mut watcher).await.unwrap();
    assert_eq!(aborted, None, "the watched key changed: EXEC aborts");

    // Any node's shard map names three members for every shard, its leader the primary.
    let shards = common::shards::cluster_shards(&mut clients[4]).await;
    assert_eq!(shards.len(), SHARDS as usize);
    for (first, last, nodes) in &shards {
        let roles: Vec<&str> = nodes.iter().map(|n| n.role.as_str()).collect();
        assert_eq!(roles, ["master", "replica", "replica"], "slots {first}-{last}: {nodes:?}");
    }

    // FLUSHALL reaches every shard.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut clients[3]).await.unwrap();
    for c in &mut clients {
        let size: i64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
        assert_eq!(size, 0);
    }
}

/// Every shard as `/cluster` on `admin` lists it: (id, state, members).
async fn shard_map(admin: std::net::SocketAddr) -> Vec<(u64, String, Vec<u64>)> {
    let (_, body) = http_get(admin, "/cluster").await;
    let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let shards = view["shards"].as_array().cloned().unwrap_or_default();
    shards
        .iter()
        .map(|s| {
            let members = s["members"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap()).collect();
            (s["id"].as_u64().unwrap(), s["state"].as_str().unwrap().to_owned(), members)
        })
        .collect()
}

/// Every shard active on three of `live`, each holding it, and replicas per node within one.
async fn settled_on(nodes: &[&Node], live: &[u64]) -> bool {
    let map = shard_map(nodes[0].admin).await;
    if map.len() != SHARDS as usize {
        return false;
    }
    let placed = map.iter().all(|(_, state, members)| {
        state == "active" && members.len() == 3 && members.iter().all(|m| live.contains(m))
    });
    let counts: Vec<usize> = live.iter().map(|n| map.iter().filter(|s| s.2.contains(n)).count()).collect();
    let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1;
    let mut holding = true;
    for (node, held) in nodes.iter().zip(held_by(nodes).await) {
        let id = node_id(node).await;
        holding &= map.iter().all(|(shard, _, members)| !members.contains(&id) || held.contains_key(shard));
    }
    placed && spread && holding
}

async fn held_by(nodes: &[&Node]) -> Vec<BTreeMap<u64, (Option<u64>, Vec<u64>)>> {
    let mut out = Vec::new();
    for n in nodes {
        out.extend(held(std::slice::from_ref(*n)).await);
    }
    out
}

/// How `node`'s gossip sees node `id` (`alive`, `suspect`, `down`), from its `/cluster`.
async fn gossip_health(node: &Node, id: u64) -> String {
    let (_, body) = http_get(node.admin, "/cluster").await;
    let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
    let of = nodes.iter().find(|n| n["node_id"].as_u64() == Some(id));
    of.and_then(|n| n["health"].as_str()).unwrap_or("unknown").to_owned()
}

async fn node_id(node: &Node) -> u64 {
    let (_, body) = http_get(node.admin, "/cluster").await;
    let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    view["node_id"].as_u64().unwrap_or(0)
}

fn crema(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crema")).args(args).output().unwrap();
    assert!(out.status.success(), "crema {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_replicas_move_and_a_new_node_takes_its_share_with_nothing_lost() {
    let gossip: Vec<String> = free_udp_addrs(6).iter().map(ToString::to_string).collect();
    let policy = ["--auto-add-voters", "yes", "--auto-remove-voters", "yes"];
    let mut nodes = start_cluster_with(5, |i| {
        let mut args: Vec<String> = ["--shards", "16", "--replicas", "3", "--gossip-addr", &gossip[i]]
            .iter()
            .chain(&policy)
            .map(|s| s.to_string())
            .collect();
        if i > 0 {
            args.extend(["--gossip-seed".to_owned(), gossip[0].clone()]);
        }
        args
    });
    wait_until(Duration::from_secs(30), "the first map settled", || async {
        settled_on(&nodes.iter().collect::<Vec<_>>(), &[1, 2, 3, 4, 5]).await
    })
    .await;

    // Writers through nodes 1 to 3 run through everything below.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, node) in nodes.iter().take(3).enumerate() {
        let (addr, stop) = (node.resp, stop.clone());
        writers.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let mut acked = Vec::new();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}:{i}");
                let set: redis::RedisResult<()> = c.set(&key, i).await;
                match set {
                    Ok(()) => acked.push(key),
                    // A broken connection fails at once without yielding: without a pause this
                    // loop would never let the runtime stop (a failing test would hang).
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
                i += 1;
            }
            acked
        }));
    }

    // SIGKILL node 5: gossip suspects it (it answers no probe), then declares it down, and
    // its replicas are recreated on the others.
    let _ = nodes[4].child.kill();
    let _ = nodes[4].child.wait();
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.last().map(String::as_str) != Some("down") {
        assert!(std::time::Instant::now() < deadline, "node 5 not declared down by gossip: {seen:?}");
        let health = gossip_health(&nodes[0], 5).await;
        if seen.last() != Some(&health) {
            seen.push(health);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.iter().rev().take(2).collect::<Vec<_>>(), ["down", "suspect"], "node 1 saw {seen:?}");
    wait_until(Duration::from_secs(60), "node 5's replicas recreated on the four others", || async {
        settled_on(&nodes[..4].iter().collect::<Vec<_>>(), &[1, 2, 3, 4]).await
    })
    .await;

    // A sixth node joins through gossip: it ends with its share.
    let own = free_addrs(2);
    let (raft6, resp6) = (own[0].to_string(), own[1].to_string());
    let sixth = start(&[
        "--node-id",
        "6",
        "--join",
        "true",
        "--raft-addr",
        &raft6,
        "--resp-addr",
        &resp6,
        "--shards",
        "16",
        "--replicas",
        "3",
        "--gossip-addr",
        &gossip[5],
        "--gossip-seed",
        &gossip[0],
        "--auto-add-voters",
        "yes",
        "--auto-remove-voters",
        "yes",
        "--tick-interval-ms",
        "20",
    ]);
    let mut live: Vec<&Node> = nodes[..4].iter().collect();
    live.push(&sixth);
    wait_until(Duration::from_secs(90), "the sixth node holds its share", || async {
        settled_on(&live, &[1, 2, 3, 4, 6]).await
    })
    .await;

    // By hand: move a shard to node 6 from one of its members, then rebalance evens it out.
    let map = shard_map(nodes[0].admin).await;
    let (shard, _, members) = map.iter().find(|(_, _, m)| !m.contains(&6)).unwrap().clone();
    let admin = nodes[0].admin.to_string();
    let (s, from) = (shard.to_string(), members[0].to_string());
    let out =
        crema(&["cluster", "move-shard", "--admin", &admin, "--shard", &s, "--from", &from, "--to", "6"]);
    assert!(out.contains(&format!("shard {shard} moves from node {from} to node 6")), "{out}");
    wait_until(Duration::from_secs(30), "the moved shard settles on node 6", || async {
        shard_map(nodes[0].admin)
            .await
            .iter()
            .any(|(id, state, m)| *id == shard && state == "active" && m.contains(&6))
    })
    .await;
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(["cluster", "move-shard", "--admin", &admin, "--shard", &s, "--from", "6", "--to", "6"])
        .output()
        .unwrap();
    assert!(!again.status.success(), "a move to a node that holds the shard is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"), "{again:?}");
    let out = crema(&["cluster", "rebalance", "--admin", &admin]);
    assert!(out.contains("move(s) started") || out.contains("balanced"), "{out}");
    wait_until(Duration::from_secs(60), "rebalanced", || async { settled_on(&live, &[1, 2, 3, 4, 6]).await })
        .await;

    // Node 6 was configured on no other node, and was given no other node's RESP address: each
    // side learned the other's from the peer handshake, so cluster-aware clients are sent to
    // node 6 by node 1 and to node 1 by node 6.
    for (asked, named) in [(nodes[0].resp, sixth.resp), (sixth.resp, nodes[0].resp)] {
        let mut c = client(asked).await;
        let view: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.unwrap();
        // `<id> <host:port>@<cluster port> <flags> ...`
        let named_here = view.lines().any(|line| {
            line.split_whitespace().nth(1).and_then(|a| a.split('@').next())
                == Some(named.to_string().as_str())
        });
        assert!(named_here, "CLUSTER NODES on {asked} names no {named}:\n{view}");
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 100, "the writers kept writing: {}", acked.len());
    // Every acknowledged write is there, read through node 1 and through the new node.
    for addr in [nodes[0].resp, sixth.resp] {
        let mut c = client(addr).await;
        for chunk in acked.chunks(500) {
            let got: Vec<Option<String>> = c.mget(chunk).await.unwrap();
            let missing: Vec<_> =
                chunk.iter().zip(&got).filter(|(_, v)| v.is_none()).map(|(k, _)| k).collect();
            assert!(
                missing.is_empty(),
                "{} acknowledged writes missing through {addr}: {missing:?}",
                missing.len()
            );
        }
    }
    // The moves are counted and timed.
    let mut settled = 0u64;
    for n in &live {
        let (_, metrics) = http_get(n.admin, "/metrics").await;
        let count = metrics.lines().find_map(|l| l.strip_prefix("crema_migration_duration_seconds_count "));
        settled += count.and_then(|c| c.trim().parse().ok()).unwrap_or(0);
    }
    assert!(settled > 0, "crema_migration_duration_seconds counts the moves");
    let _ = &mut nodes;
}

/// A key whose shard (of 16, by Redis Cluster's slot) is `shard`.
fn key_in(shard: u64, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}{i}"))
        .find(|k| u64::from(crema::key_slot(k.as_bytes())) * SHARDS / 16384 == shard)
        .expect("some key")
}

/// Found from outside: a pipeline of writes across shards, one of which had no leader, was
/// answered `-CLUSTERDOWN ... try again` for every write, those applied on the healthy shard
/// too, and clients that retry CLUSTERDOWN (ioredis does) applied an INCR twice. Each shard's
/// writes are answered on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_across_shards_is_answered_per_shard_when_one_has_no_leader() {
    use tokio::io::AsyncWriteExt;
    let mut nodes = start_cluster(5, &["--shards", "16", "--replicas", "3"]);
    wait_until(Duration::from_secs(30), "every shard placed on three nodes with a leader", || async {
        let held = held(&nodes).await;
        (1..SHARDS).all(|shard| {
            let holders: Vec<_> = held.iter().filter_map(|h| h.get(&shard)).collect();
            holders.len() == 3
                && holders.iter().all(|(leader, members)| members.len() == 3 && leader.is_some())
        })
    })
    .await;
    // Two nodes that are both members of shard A, and a shard B holding at most one of them.
    let members: BTreeMap<u64, Vec<u64>> =
        held(&nodes).await.into_iter().flatten().map(|(shard, (_, members))| (shard, members)).collect();
    let (a, x, y, b) = (1..SHARDS)
        .flat_map(|a| {
            let m = &members[&a];
            [(m[0], m[1]), (m[0], m[2]), (m[1], m[2])].map(|(x, y)| (a, x, y))
        })
        .find_map(|(a, x, y)| {
            let b = (1..SHARDS).find(|b| !(members[b].contains(&x) && members[b].contains(&y)))?;
            Some((a, x, y, b))
        })
        .expect("16 shards of 3 over 5 nodes have such a pair");
    for id in [x, y] {
        nodes[id as usize - 1].child.kill().unwrap();
    }
    let through = (1..=5).find(|id| *id != x && *id != y).unwrap();
    let (ka, kb) = (key_in(a, "a"), key_in(b, "b"));
    let mut c = client(nodes[through as usize - 1].resp).await;
    // Shard B has a leader (again, if it led there): a lone INCR gets its answer.
    wait_until(Duration::from_secs(30), "shard B answers", || {
        let mut c = c.clone();
        let kb = kb.clone();
        async move { redis::cmd("INCR").arg(&kb).query_async::<i64>(&mut c).await.is_ok() }
    })
    .await;
    let before: i64 = c.get(&kb).await.unwrap();
    let mut raw = tokio::net::TcpStream::connect(nodes[through as usize - 1].resp).await.unwrap();
    raw.write_all(format!("INCR {kb}\r\nINCR {ka}\r\nINCR {kb}\r\n").as_bytes()).await.unwrap();
    // The pipeline is answered once its slowest shard is (at the request timeout, 5 s).
    let mut replies = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while replies.matches("\r\n").count() < 3 {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut raw, &mut buf)).await {
            Ok(Ok(n)) if n > 0 => replies.push_str(&String::from_utf8_lossy(&buf[..n])),
            other => panic!("{other:?} after {replies:?}"),
        }
    }
    let lines: Vec<&str> = replies.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3, "{replies}");
    assert_eq!(lines[0], format!(":{}", before + 1), "{replies}");
    assert!(lines[1].starts_with("-CLUSTERDOWN") || lines[1].starts_with("-TIMEOUT"), "{replies}");
    assert_eq!(lines[2], format!(":{}", before + 2), "{replies}");
    assert_eq!(c.get::<_, i64>(&kb).await.unwrap(), before + 2);
}
