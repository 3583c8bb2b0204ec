//! Multi-Raft on real nodes over TCP: every shard its own Raft group on every node, keys routed
//! by hash slot, writes across shards split or refused, and each shard served on after a node
//! dies.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{cluster_with, wait_until};
use crema::{ApplyOutput, CacheCommand, CommandError, DistributedCache, Error};

const SHARDS: u32 = 4;

async fn sharded(n: usize) -> Vec<DistributedCache> {
    common::sharded_cluster(n, SHARDS).await
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key:{i}"))
}

#[tokio::test]
async fn every_key_lives_in_its_shard_on_every_node() {
    let nodes = sharded(3).await;
    assert!(nodes.iter().all(|n| n.router().num_shards() == SHARDS));
    for i in 0..200 {
        nodes[i % 3].put(key(i), format!("v{i}")).await.unwrap();
    }
    for node in &nodes {
        for i in 0..200 {
            let k = key(i);
            assert_eq!(node.consistent_get(&k).await.unwrap(), Some(Bytes::from(format!("v{i}"))));
            let shard = node.router().shard_for_key(&k) as usize;
            for (s, cache) in node.storage().shards().iter().enumerate() {
                assert_eq!(cache.contains(&k), s == shard, "node {} shard {s} key {i}", node.node_id());
            }
        }
        assert_eq!(node.storage().live_count(), 200);
        assert!(node.storage().shards().iter().all(|s| s.live_count() > 0), "200 keys reach every shard");
        let status = node.cluster_status().await.unwrap();
        assert_eq!(status.shards.len(), SHARDS as usize);
        let entries: u64 = status.shards.iter().map(|s| s.entry_count).sum();
        assert_eq!(entries, 200);
        for (i, shard) in status.shards.iter().enumerate() {
            assert_eq!(shard.shard_id, i as u32);
            assert_eq!(shard.members, vec![1, 2, 3]);
        }
        // The status names the leader the node knows (looked at again if the leader balancer
        // moved one between the two looks).
        wait_until(Duration::from_secs(10), "the status names the leaders the node knows", || async {
            let status = node.cluster_status().await.unwrap();
            status.shards.iter().all(|s| s.leader.is_some() && s.leader == node.shard_leader(s.shard_id))
        })
        .await;
        // Slot ranges tile the 16,384 slots.
        assert_eq!(status.shards[0].first_slot, 0);
        assert_eq!(status.shards.last().unwrap().last_slot, 16_383);
        assert!(status.shards.windows(2).all(|w| w[1].first_slot == w[0].last_slot + 1));
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn writes_across_shards_are_split_or_refused() {
    let nodes = sharded(3).await;
    let node = &nodes[1];
    let (a, b) = (Bytes::from("a"), Bytes::from("b"));
    assert_ne!(node.router().shard_for_key(&a), node.router().shard_for_key(&b), "a and b in two shards");

    // MSET across shards is refused, nothing written; with a hash tag it is one shard.
    let mset = CacheCommand::PutMany {
        pairs: vec![(a.clone(), "1".into()), (b.clone(), "2".into())],
        only_if_none_exist: false,
    };
    match node.execute(mset).await {
        Err(Error::InvalidCommand(CommandError::CrossSlot)) => {}
        other => panic!("expected CROSSSLOT, got {other:?}"),
    }
    assert_eq!(node.consistent_get(&a).await.unwrap(), None);
    let tagged = CacheCommand::PutMany {
        pairs: vec![(Bytes::from("{u1}:a"), "1".into()), (Bytes::from("{u1}:b"), "2".into())],
        only_if_none_exist: false,
    };
    assert_eq!(node.execute(tagged).await.unwrap(), ApplyOutput::Int(1));

    // A pipelined batch across shards: each answer in the client's order.
    let batch = CacheCommand::Batch(vec![
        CacheCommand::put(a.clone(), "1"),
        CacheCommand::put(b.clone(), "2"),
        CacheCommand::IncrBy { key: Bytes::from("n"), delta: 5 },
        CacheCommand::DeleteMany { keys: vec![a.clone(), b.clone(), Bytes::from("missing")] },
        CacheCommand::IncrBy { key: Bytes::from("n"), delta: 1 },
    ]);
    assert_eq!(
        node.execute(batch).await.unwrap(),
        ApplyOutput::Batch(vec![
            ApplyOutput::Done,
            ApplyOutput::Done,
            ApplyOutput::Int(5),
            ApplyOutput::Int(2),
            ApplyOutput::Int(6),
        ])
    );
    // DEL across shards counts every shard's removals.
    for i in 0..20 {
        node.put(key(i), "x").await.unwrap();
    }
    let keys: Vec<Bytes> = (0..25).map(key).collect();
    assert_eq!(node.execute(CacheCommand::DeleteMany { keys }).await.unwrap(), ApplyOutput::Int(20));

    // CLEAR reaches every shard on every node.
    for i in 0..20 {
        node.put(key(i), "x").await.unwrap();
    }
    nodes[2].clear().await.unwrap();
    for n in &nodes {
        n.read_barrier().await.unwrap();
        assert_eq!(n.storage().live_count(), 0, "node {} is empty", n.node_id());
    }

    // A node that holds replicas cannot leave a sharded cluster, and is told which to move.
    let leader = nodes.iter().find(|n| n.is_leader()).unwrap();
    match leader.remove_peer(3).await {
        Err(Error::Membership(why)) => {
            assert!(why.contains("node 3 still holds replicas of shards [0, 1, 2, 3]"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn every_shard_is_served_on_after_a_node_dies() {
    let nodes = sharded(3).await;
    for i in 0..100 {
        nodes[i % 3].put(key(i), "before").await.unwrap();
    }
    // Stop the node that leads the most shards.
    let leads =
        |n: &DistributedCache| (0..SHARDS).filter(|s| n.shard_leader(*s) == Some(n.node_id())).count();
    let victim = (0..3).max_by_key(|i| leads(&nodes[*i])).unwrap();
    assert!(leads(&nodes[victim]) > 0);
    nodes[victim].shutdown().await;
    let survivors: Vec<&DistributedCache> =
        nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, n)| n).collect();
    let victim_id = nodes[victim].node_id();
    wait_until(Duration::from_secs(20), "every shard led by a survivor", || async {
        (0..SHARDS).all(|s| {
            let leader = survivors[0].shard_leader(s);
            leader.is_some_and(|l| l != victim_id) && survivors.iter().all(|n| n.shard_leader(s) == leader)
        })
    })
    .await;
    for (j, node) in survivors.iter().enumerate() {
        for i in 0..100 {
            assert_eq!(node.consistent_get(&key(i)).await.unwrap(), Some(Bytes::from("before")), "key {i}");
        }
        for i in 100..150 {
            node.put(key(i + j * 100), "after").await.unwrap();
        }
    }
    for node in &survivors {
        node.read_barrier().await.unwrap();
        assert_eq!(node.storage().live_count(), 200);
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn the_coordinator_reports_shards_leaders_and_hints() {
    let nodes = sharded(3).await;
    for i in 0..100 {
        nodes[i % 3].put(key(i), "v").await.unwrap();
    }
    let mut led = 0;
    for node in &nodes {
        let coordinator = node.multiraft_coordinator().expect("Multi-Raft is on");
        assert_eq!(coordinator.shard_for_key(b"key:7"), node.router().shard_for_key(b"key:7"));
        let stats = coordinator.stats();
        assert_eq!((stats.total_shards, stats.active_shards), (SHARDS, SHARDS));
        led += stats.local_leader_shards;
        node.read_barrier().await.unwrap();
        assert_eq!(coordinator.stats().total_entries, 100);
        let infos = coordinator.shard_info();
        assert_eq!(infos.len(), SHARDS as usize);
        assert!(infos.iter().all(|s| s.members == vec![1, 2, 3] && s.learners.is_empty()));
        let leaders = coordinator.shard_leaders();
        assert!((0..SHARDS).all(|s| leaders[&s] == node.shard_leader(s) && leaders[&s].is_some()));
    }
    assert_eq!(led, SHARDS, "every shard has exactly one leader");

    let coordinator = nodes[0].multiraft_coordinator().unwrap();
    assert!(coordinator.stats().operations_per_sec >= 0.0);
    let busy = nodes[1].multiraft_coordinator().unwrap();
    let _ = busy.stats();
    for i in 0..50 {
        busy.put(key(i), "again").await.unwrap();
    }
    assert!(busy.stats().operations_per_sec > 0.0, "50 writes since the last look");
    // Hints: the newer epoch wins; a failed node's hints are forgotten. A node keeps its own
    // leaderships as hints with their terms as epochs, so epochs here count from what it holds.
    let held = |shard| coordinator.leader_hint(shard).map_or(0, |(_, epoch)| epoch);
    let (e1, e2) = (held(1), held(2));
    assert_eq!(coordinator.set_shard_leader(2, 3), e2 + 1);
    assert_eq!(coordinator.set_shard_leader(2, 1), e2 + 2);
    assert!(!coordinator.set_shard_leader_if_newer(2, 3, e2 + 2), "not newer");
    assert!(coordinator.set_shard_leader_if_newer(2, 3, e2 + 100));
    assert!(coordinator.set_shard_leader_if_newer(1, 3, e1 + 100));
    assert_eq!(coordinator.leader_hint(2), Some((Some(3), e2 + 100)));
    // Node 3's own announcements of what it leads are hints too: those go with them.
    let invalidated = coordinator.invalidate_leader_for_node(3);
    assert!(invalidated.contains(&1) && invalidated.contains(&2), "{invalidated:?}");
    for shard in 0..SHARDS {
        assert!(coordinator.leader_hint(shard).is_none_or(|(leader, _)| leader != Some(3)), "shard {shard}");
    }
    assert_eq!(coordinator.leader_hint(2), Some((None, e2 + 100)), "forgotten, its epoch kept");
    // Heard again in the same epoch (it was cut off, not dead, and still leads): taken again.
    assert!(coordinator.set_shard_leader_if_newer(2, 3, e2 + 100));
    assert_eq!(coordinator.leader_hint(2), Some((Some(3), e2 + 100)));
    // An epoch no term reaches (a forged hint) is refused.
    assert!(!coordinator.set_shard_leader_if_newer(2, 1, u64::MAX));
    // The node's own leaderships become hints, with their terms, within the broadcast debounce.
    wait_until(Duration::from_secs(10), "node 1's leaderships are its hints", || async {
        (3..SHARDS).all(|shard| {
            nodes[0].shard_leader(shard) != Some(1)
                || coordinator.leader_hint(shard).and_then(|(leader, _)| leader) == Some(1)
        })
    })
    .await;
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn the_builder_starts_a_sharded_node_and_checks_its_replica_factor() {
    let refused = crema::MultiRaftBuilder::new(1).num_shards(4).replica_factor(0).build_and_init().await;
    match refused {
        Err(Error::Config(e)) => assert!(e.to_string().contains("replica_factor"), "{e}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let coordinator = crema::MultiRaftBuilder::new(1)
        .num_shards(8)
        .replica_factor(3)
        .shard_capacity(1_000)
        .default_ttl(Duration::from_secs(60))
        .build_and_init()
        .await
        .unwrap();
    coordinator.put("a", "1").await.unwrap();
    assert_eq!(coordinator.get(b"a").await.unwrap(), Some(Bytes::from("1")));
    assert!(coordinator.node().storage().get_entry(b"a").unwrap().expires_at_ms.is_some(), "default TTL");
    assert!(coordinator.delete(b"a").await.unwrap());
    assert_eq!(coordinator.stats().local_leader_shards, 8);
    coordinator.node().shutdown().await;
    // One group: no coordinator.
    let single = common::cluster(1).await;
    assert!(single[0].multiraft_coordinator().is_none());
    single[0].shutdown().await;
}

#[tokio::test]
async fn leaders_spread_over_the_nodes_by_themselves() {
    const MANY: u32 = 12;
    let nodes = cluster_with(3, |c| common::sharded_config(c, MANY)).await;
    let leads = |id: u64| (0..MANY).filter(|s| nodes[0].shard_leader(*s) == Some(id)).count();
    let balanced = || {
        let counts = [leads(1), leads(2), leads(3)];
        counts.iter().sum::<usize>() == MANY as usize
            && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
    };
    wait_until(Duration::from_secs(20), "leads within one of each other", || async { balanced() }).await;
    // Pile the leaderships on node 1: the nodes spread them again.
    for shard in 0..MANY {
        if let Some(leader) = nodes[0].shard_leader(shard).filter(|l| *l != 1) {
            let _ = nodes[leader as usize - 1].transfer_shard_leader(shard, 1).await;
        }
    }
    wait_until(Duration::from_secs(10), "node 1 leads most shards", || async { leads(1) >= 8 }).await;
    wait_until(Duration::from_secs(30), "leads spread again", || async { balanced() }).await;
    // A transfer asked of a node that does not lead the shard names the leader.
    let leader = nodes[0].shard_leader(0).unwrap();
    let other = (1..=3).find(|n| *n != leader).unwrap();
    match nodes[other as usize - 1].transfer_shard_leader(0, leader).await {
        Err(Error::NotLeader { leader_hint }) => assert_eq!(leader_hint, Some(leader)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Found from outside: nodes started with different `--shards` formed one cluster that routed
/// a key to different groups (half the writes timed out, acknowledged keys could not be read
/// through the other nodes), and a node given a shard map of more shards than it has panicked.
/// The handshake carries the shard count now: a peer that splits the keys differently is
/// refused, loudly, and the others go on without it. (Durable nodes: memory ones would wait
/// for every other voter's answer at a start, which may be a restart.)
#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_split_the_keys_differently_refuse_each_other() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let bound = common::bind(3);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes = Vec::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        let id = i as u64 + 1;
        let num_shards = if id == 3 { 8 } else { 4 };
        let config = common::sharded_config(common::node_config(id, &addrs), num_shards)
            .with_raft_storage_type(crema::RaftStorageType::RocksDb)
            .with_data_dir(dirs[i].path());
        nodes.push(DistributedCache::new_with_listener(config, listener).await.unwrap());
    }
    let (one, three) = (&nodes[0], &nodes[2]);
    wait_until(
        Duration::from_secs(20),
        "the node with 8 shards refused, and refused by the others",
        || async {
            one.raft_figures().peer_handshakes_refused > 0 && three.raft_figures().peer_handshakes_refused > 0
        },
    )
    .await;
    // Nodes 1 and 2 are a quorum of every shard: they serve on.
    wait_until(Duration::from_secs(20), "every shard led by node 1 or 2", || async {
        (0..4).all(|s| one.shard_leader(s).is_some_and(|l| l != 3))
    })
    .await;
    for i in 0..20 {
        one.put(key(i), "v").await.unwrap();
        assert_eq!(nodes[1].consistent_get(&key(i)).await.unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(three.shard_leader(0), None, "node 3 never joined their groups");
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Found from outside: a node whose two peers died named itself, for 45 s and more, the leader
/// of the shards it had led, in `cluster_shards` (`/cluster`, `crema status`, `CLUSTER
/// NODES`), while its groups knew no leader (INFO and the metrics said none): a replica with
/// no leader took the node's own old routing hint. Only a replica that has not heard from its
/// group yet takes a hint now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_without_a_quorum_names_no_leader_for_its_shards() {
    let mut nodes = sharded(3).await;
    let survivor = nodes.remove(0);
    let led = (0..SHARDS).filter(|s| survivor.shard_leader(*s) == Some(1)).count();
    for node in nodes {
        node.shutdown().await;
    }
    wait_until(Duration::from_secs(20), "no shard leader known on the survivor", || async {
        (0..SHARDS).all(|s| survivor.shard_leader(s).is_none())
    })
    .await;
    let shards = survivor.cluster_shards().await.unwrap();
    assert_eq!(shards.len(), SHARDS as usize);
    let named: Vec<_> =
        shards.iter().filter(|s| s.leader.is_some()).map(|s| (s.shard_id, s.leader)).collect();
    assert!(named.is_empty(), "it led {led} shards; still named: {named:?}");
    survivor.shutdown().await;
}
