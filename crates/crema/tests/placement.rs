//! Placement on real nodes over TCP: with a replica factor below the node count, each shard
//! lives on that many nodes (the meta shard on every node, the others as learners), the map is
//! agreed through the meta shard, and every node answers for every key, reads and writes,
//! whether it holds the key's shard or not.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{cluster_with, discovered, wait_until};
use crema::{ApplyOutput, CacheCommand, DistributedCache, MultiRaftCacheConfig};

const SHARDS: u32 = 8;

async fn placed(n: usize, replicas: usize) -> Vec<DistributedCache> {
    let nodes = cluster_with(n, |c| {
        discovered(c)
            .with_multiraft_config(MultiRaftCacheConfig {
                enabled: true,
                num_shards: SHARDS,
                ..Default::default()
            })
            .with_replica_factor(replicas)
    })
    .await;
    // Every shard has a leader its holders agree on.
    wait_until(Duration::from_secs(20), "a leader of every shard, known to its holders", || async {
        (0..SHARDS).all(|shard| {
            let holders: Vec<_> = nodes.iter().filter(|n| n.holds_shard(shard)).collect();
            let leader = holders.first().and_then(|n| n.shard_leader(shard));
            leader.is_some() && holders.iter().all(|n| n.shard_leader(shard) == leader)
        })
    })
    .await;
    nodes
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key:{i}"))
}

#[tokio::test]
async fn each_shard_lives_on_its_replicas_and_every_node_answers_for_every_key() {
    let nodes = placed(5, 3).await;
    // The map is agreed, the same on every node, and is the one the nodes started from.
    wait_until(Duration::from_secs(10), "the shard map on every node", || async {
        nodes.iter().all(|n| !n.shard_map().is_empty())
    })
    .await;
    let map = nodes[0].shard_map();
    assert!(nodes.iter().all(|n| n.shard_map() == map));
    assert_eq!(Some(map.clone()), nodes[0].config().initial_shard_map());
    let mut loads = [0usize; 5];
    for placement in map.shards() {
        let shard = placement.shard_id;
        assert_eq!(placement.members.len(), 3, "{placement:?}");
        for node in &nodes {
            let member = placement.members.contains(&node.node_id());
            loads[node.node_id() as usize - 1] += usize::from(member);
            // The meta shard is on every node; another shard only on its members.
            assert_eq!(
                node.holds_shard(shard),
                member || shard == 0,
                "node {} shard {shard}",
                node.node_id()
            );
        }
        let holder = nodes.iter().find(|n| placement.members.contains(&n.node_id())).unwrap();
        let status = holder.shard_status(shard).await.unwrap();
        assert_eq!(status.voters, placement.members, "shard {shard}'s voters are its placement");
        if shard == 0 {
            assert_eq!(status.learners.len(), 2, "the other nodes follow the meta shard as learners");
        } else {
            assert!(status.learners.is_empty());
        }
    }
    // 24 replicas over 5 nodes: 4 or 5 each.
    assert!(loads.iter().all(|l| (4..=5).contains(l)), "{loads:?}");

    // Every node writes keys of every shard, held or not.
    for i in 0..200 {
        nodes[i % 5].put(key(i), format!("v{i}")).await.unwrap();
    }
    for node in &nodes {
        for i in (0..200).step_by(7) {
            let want = Some(Bytes::from(format!("v{i}")));
            assert_eq!(node.consistent_get(&key(i)).await.unwrap(), want, "node {} key {i}", node.node_id());
        }
        assert_eq!(node.live_count(true).await.unwrap(), 200);
        let mut ones = node.live_keys(Some(b"key:1?"), true).await.unwrap();
        ones.sort();
        let want: Vec<Bytes> = (10..20).map(key).collect();
        assert_eq!(ones, want);
    }
    // A node that holds few shards: a write over every shard is split and counted whole.
    let keys: Vec<Bytes> = (0..50).map(key).collect();
    let deleted = nodes[4].execute(CacheCommand::DeleteMany { keys: keys.clone() }).await.unwrap();
    assert_eq!(deleted, ApplyOutput::Int(50));
    for node in &nodes {
        let entries = node.read_entries(&keys, true).await.unwrap();
        assert!(entries.iter().all(Option::is_none), "node {}", node.node_id());
        assert_eq!(node.live_count(true).await.unwrap(), 150);
        // The fast read sees a write acknowledged before on the node that made it.
    }
    nodes[3].put("mine", "here").await.unwrap();
    assert_eq!(nodes[3].get(b"mine").await, Some(Bytes::from("here")));
    assert!(nodes[3].contains(b"mine").await);
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn with_as_many_replicas_as_nodes_every_node_holds_every_shard() {
    let nodes = placed(3, 3).await;
    for node in &nodes {
        assert!((0..SHARDS).all(|s| node.holds_shard(s)));
        let status = node.shard_status(0).await.unwrap();
        assert_eq!((status.voters, status.learners), (vec![1, 2, 3], vec![]));
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Found from outside (cluster clients while shards moved): once a replica left its node
/// during a move away, reads through that node answered `Shutdown` (the read barrier of every
/// shard it held, WATCH's included), and a write forwarded from it waited for that replica to
/// apply what it never would, and timed out though applied; the node receiving the shard named
/// no member for its slot range until its new replica heard from the group. Requests through
/// the old holder are answered all along now, and the slot map always names the members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_a_node_a_shard_moves_away_from_are_answered_all_along() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let nodes = placed(4, 3).await;
    let map = nodes[0].shard_map();
    let moving = map.shards().iter().find(|p| p.shard_id != 0 && p.members.contains(&1)).unwrap().clone();
    let shard = moving.shard_id;
    if nodes[0].shard_leader(shard) == Some(1) {
        // A follower's paths: writes forwarded, reads after a read-index round.
        let other = *moving.members.iter().find(|m| **m != 1).unwrap();
        nodes[0].transfer_shard_leader(shard, other).await.unwrap();
        wait_until(Duration::from_secs(10), "another member leads", || async {
            nodes[0].shard_leader(shard).is_some_and(|l| l != 1)
        })
        .await;
    }
    let to = (1..=4).find(|n| !moving.members.contains(n)).unwrap();
    let router = nodes[0].router();
    let keys: Vec<Bytes> = (0..).map(key).filter(|k| router.shard_for_key(k) == shard).take(16).collect();
    for k in &keys {
        nodes[0].put(k.clone(), "0").await.unwrap();
    }
    let (first, receiver) = (&nodes[0], &nodes[to as usize - 1]);
    let done = AtomicBool::new(false);
    let mut failures: Vec<String> = Vec::new();
    let mut acked = vec![0u64; keys.len()];
    let reads = async {
        let mut failed = Vec::new();
        while !done.load(Ordering::Acquire) {
            for k in &keys {
                if let Err(e) = first.consistent_get(k).await {
                    failed.push(format!("consistent_get: {e}"));
                }
            }
            if let Err(e) = first.read_barrier().await {
                failed.push(format!("read_barrier: {e}"));
            }
            if let Err(e) = first.live_count(true).await {
                failed.push(format!("live_count: {e}"));
            }
            if let Err(e) = first.read_entries(&keys, true).await {
                failed.push(format!("read_entries: {e}"));
            }
        }
        failed
    };
    let writes = async {
        let mut failed = Vec::new();
        let mut round = 0u64;
        while !done.load(Ordering::Acquire) {
            round += 1;
            for (i, k) in keys.iter().enumerate() {
                let started = std::time::Instant::now();
                match first.put(k.clone(), round.to_string()).await {
                    Ok(()) => acked[i] = round,
                    Err(e) => failed.push(format!("put after {:?}: {e}", started.elapsed())),
                }
            }
        }
        failed
    };
    let mover = async {
        let mut unnamed = Vec::new();
        first.move_shard(shard, 1, to).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            // The receiver's slot map names the shard's members all along.
            let shards = receiver.cluster_shards().await.unwrap();
            let info = shards.iter().find(|i| i.shard_id == shard).unwrap();
            if info.members.is_empty() && info.leader.is_none() {
                unnamed.push(format!("{info:?}"));
            }
            let settled =
                first.shard_map().shard(shard).is_some_and(|p| p.state == crema::ShardState::Active);
            if settled && !first.holds_shard(shard) && first.shard_status(shard).await.is_err() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the move did not settle");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        done.store(true, Ordering::Release);
        unnamed
    };
    let (read_failures, write_failures, unnamed) = tokio::join!(reads, writes, mover);
    failures.extend(read_failures);
    failures.extend(write_failures);
    assert!(failures.is_empty(), "requests through node 1 failed: {failures:?}");
    assert!(unnamed.is_empty(), "node {to} named no member of shard {shard}: {unnamed:?}");
    for (k, want) in keys.iter().zip(&acked) {
        let got = first.consistent_get(k).await.unwrap();
        assert_eq!(got, Some(Bytes::from(want.to_string())), "{k:?}");
    }
    // The operator's move is counted and timed by the meta shard's leader, as its own are.
    let figures: Vec<_> = nodes.iter().map(|n| n.migrations()).collect();
    let started: u64 = figures.iter().map(|f| f.started).sum();
    let settled: u64 = figures.iter().map(|f| f.settled).sum();
    let timed: usize = figures.iter().map(|f| f.durations_seconds.len()).sum();
    assert!(settled >= 1 && started >= settled && timed as u64 == settled, "{figures:?}");
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Found from outside: a move to a node that had died was agreed and stayed under way for as
/// long as the node was away (for good, if it never came back), holding one of the two moves
/// the planner runs at once. It is refused now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_node_that_does_not_answer_is_refused() {
    let mut nodes = placed(4, 3).await;
    let gone = nodes.pop().unwrap();
    gone.shutdown().await;
    drop(gone);
    wait_until(Duration::from_secs(20), "node 4 declared down", || async {
        nodes[0].discovered_nodes().iter().any(|n| n.node_id == 4 && n.health == crema::NodeHealth::Down)
    })
    .await;
    let map = nodes[0].shard_map();
    let some = map.shards().iter().find(|p| p.shard_id != 0 && !p.members.contains(&4)).unwrap();
    let refused = nodes[0].move_shard(some.shard_id, some.members[0], 4).await.unwrap_err();
    assert!(refused.to_string().contains("node 4 does not answer"), "{refused}");
    assert_eq!(nodes[0].shard_map(), map, "nothing moves");
    for node in &nodes {
        node.shutdown().await;
    }
}

const ALL: crema::PeerManagementConfig = crema::PeerManagementConfig {
    auto_add_peers: true,
    auto_remove_peers: true,
    auto_add_voters: true,
    auto_remove_voters: true,
};

/// Node `id` of a cluster whose first nodes are at `addrs`, gossiping (memberlist) through
/// `seeds`; `join`: a node added to the running cluster.
async fn gossiping(
    id: u64,
    listener: std::net::TcpListener,
    addrs: &[std::net::SocketAddr],
    seeds: Vec<std::net::SocketAddr>,
    join: bool,
) -> DistributedCache {
    let addr = listener.local_addr().unwrap();
    let gossip = crema::MemberlistConfig {
        enabled: true,
        bind_addr: Some("127.0.0.1:0".parse().unwrap()),
        advertise_addr: None,
        seed_addrs: seeds,
        node_name: Some(format!("node-{id}")),
        peer_management: ALL,
    };
    let config = if join {
        crema::CacheConfig::new(id, addr).with_raft_config(common::fast_raft()).with_join(true)
    } else {
        common::node_config(id, addrs)
    };
    let config = config
        .with_request_timeout(Duration::from_secs(10))
        .with_cluster_discovery(crema::MemberlistDiscovery::new(id, addr, &gossip, &[]))
        .with_multiraft_config(MultiRaftCacheConfig {
            enabled: true,
            num_shards: SHARDS,
            ..Default::default()
        })
        .with_replica_factor(3);
    DistributedCache::new_with_listener(config, listener).await.expect("start node")
}

fn gossip_addr(node: &DistributedCache) -> std::net::SocketAddr {
    let me = node.discovered_nodes().into_iter().find(|n| n.node_id == node.node_id()).unwrap();
    me.gossip_addr.expect("gossip is bound")
}

/// Every shard settled on three members, all among `live`, and each member holding it.
fn settled_on(nodes: &[&DistributedCache], live: &[u64]) -> bool {
    let map = nodes[0].shard_map();
    !map.is_empty()
        && nodes.iter().all(|n| n.shard_map() == map)
        && map.shards().iter().all(|p| {
            p.state == crema::ShardState::Active
                && p.members.len() == 3
                && p.members.iter().all(|m| live.contains(m))
                && nodes.iter().all(|n| p.members.contains(&n.node_id()) <= n.holds_shard(p.shard_id))
                && nodes
                    .iter()
                    .filter(|n| p.members.contains(&n.node_id()))
                    .all(|n| n.shard_leader(p.shard_id).is_some_and(|l| p.members.contains(&l)))
        })
}

/// Waits up to 60 s for [`settled_on`]; on a timeout, prints what each node sees first.
async fn wait_settled(nodes: &[&DistributedCache], live: &[u64], what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !settled_on(nodes, live) {
        if std::time::Instant::now() > deadline {
            for n in nodes {
                println!("node {}: map {:?}", n.node_id(), n.shard_map());
                for s in 0..SHARDS {
                    let status =
                        n.shard_status(s).await.map(|g| (g.voters, g.learners, g.leader_id, g.applied_index));
                    println!("  shard {s}: holds {} status {status:?}", n.holds_shard(s));
                }
            }
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_leave_a_dead_node_and_reach_a_new_one_with_nothing_lost() {
    common::init_tracing();
    let bound = common::bind(5);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes = Vec::new();
    let mut seeds = Vec::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        let node = gossiping(i as u64 + 1, listener, &addrs, seeds.clone(), false).await;
        if seeds.is_empty() {
            seeds.push(gossip_addr(&node));
        }
        nodes.push(node);
    }
    let all: Vec<&DistributedCache> = nodes.iter().collect();
    wait_until(Duration::from_secs(30), "the first map, settled", || async {
        settled_on(&all, &[1, 2, 3, 4, 5])
    })
    .await;

    // Writers run through every move; what they were told is written must be there after.
    let nodes = std::sync::Arc::new(nodes);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3usize {
        let (nodes, acked, stop) = (nodes.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}:{i}");
                // Through nodes 1 to 3, which stay.
                if nodes[(w + i) % 3].put(key.clone(), format!("{i}")).await.is_ok() {
                    acked.lock().unwrap().push(key);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Node 5 stops: every shard it led has a leader again within a few election timeouts,
    // discovery declares it down, and its replicas are recreated on the others.
    let led_by_5: Vec<_> = (0..SHARDS).filter(|s| nodes[0].shard_leader(*s) == Some(5)).collect();
    assert!(!nodes[0].shard_map().shards_of(5).is_empty());
    let stopped = std::time::Instant::now();
    nodes[4].shutdown().await;
    let four: Vec<&DistributedCache> = nodes[..4].iter().collect();
    // When each shard had a leader again: one of the four that leads it. Taken shard by shard,
    // as the leader spreading and the moves below change leaders again meanwhile.
    let mut regained: std::collections::BTreeMap<u32, Duration> = std::collections::BTreeMap::new();
    wait_until(Duration::from_secs(10), "every shard led by one of the four", || {
        for s in 0..SHARDS {
            let leads = four.iter().any(|n| n.holds_shard(s) && n.shard_leader(s) == Some(n.node_id()));
            if leads {
                regained.entry(s).or_insert_with(|| stopped.elapsed());
            }
        }
        let all = regained.len() == SHARDS as usize;
        async move { all }
    })
    .await;
    // The shutdown's grace (one election timeout), then an election within two (the
    // randomized timeout), and when two followers campaign at once (a split vote, seen here
    // about once in twenty runs) one more round of up to two.
    let election = common::fast_raft().election_timeout();
    for s in &led_by_5 {
        let took = regained[s];
        assert!(took < 6 * election, "shard {s}, which node 5 led, had a leader again after {took:?}");
    }
    wait_settled(&four, &[1, 2, 3, 4], "node 5's replicas recreated on the four others").await;

    // A sixth node joins: it ends with a fair share of the replicas.
    let (listener, _) = common::bind(1).pop().unwrap();
    let sixth = gossiping(6, listener, &addrs, seeds.clone(), true).await;
    let mut five: Vec<&DistributedCache> = nodes[..4].iter().collect();
    five.push(&sixth);
    wait_until(Duration::from_secs(90), "the new node holds a fair share", || async {
        let map = five[0].shard_map();
        let loads = map.loads();
        let of = |n: u64| loads.get(&n).copied().unwrap_or(0);
        let counts: Vec<usize> = [1, 2, 3, 4, 6].iter().map(|n| of(*n)).collect();
        settled_on(&five, &[1, 2, 3, 4, 6])
            && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
    })
    .await;
    // And its share of the leaders: 8 shards over 5 nodes, one or two each.
    wait_until(Duration::from_secs(30), "leaders spread over the five, the new one too", || async {
        let leads: Vec<usize> = [1u64, 2, 3, 4, 6]
            .iter()
            .map(|id| {
                (0..SHARDS)
                    .filter(|s| {
                        five.iter().any(|n| {
                            n.node_id() == *id && n.holds_shard(*s) && n.shard_leader(*s) == Some(*id)
                        })
                    })
                    .count()
            })
            .collect();
        leads.iter().sum::<usize>() == SHARDS as usize
            && leads.iter().max().unwrap() - leads.iter().min().unwrap() <= 1
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the writers kept writing through the moves: {}", acked.len());
    // Every acknowledged write is there, read through every live node (the new one too).
    for node in &five {
        let entries = node
            .read_entries(&acked.iter().map(|k| Bytes::from(k.clone())).collect::<Vec<_>>(), true)
            .await
            .unwrap();
        let missing: Vec<_> =
            acked.iter().zip(&entries).filter(|(_, e)| e.is_none()).map(|(k, _)| k).collect();
        assert!(
            missing.is_empty(),
            "node {} misses {} acknowledged writes: {:?}",
            node.node_id(),
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    sixth.shutdown().await;
    for node in nodes.iter().take(4) {
        node.shutdown().await;
    }
}
