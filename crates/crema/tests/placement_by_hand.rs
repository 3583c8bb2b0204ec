//! Placement by hand: a node added to a sharded cluster by an operator (`add_peer`, what
//! `crema cluster add-node` calls), without discovery's policy to add it, follows the meta
//! shard and takes the replicas moved to it; removing one by hand is refused while it holds
//! replicas, and done once they moved away.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{discovered, wait_until};
use crema::{DistributedCache, MultiRaftCacheConfig};

const SHARDS: u32 = 4;

fn sharded(c: crema::CacheConfig) -> crema::CacheConfig {
    discovered(c)
        .with_multiraft_config(MultiRaftCacheConfig {
            enabled: true,
            num_shards: SHARDS,
            ..Default::default()
        })
        .with_replica_factor(3)
}

/// Starts a sharded cluster of the first `nodes` of `bound` and waits for its first map, every
/// shard led.
async fn start_sharded(
    bound: Vec<(std::net::TcpListener, std::net::SocketAddr)>,
    addrs: &[std::net::SocketAddr],
) -> Vec<DistributedCache> {
    let mut nodes = Vec::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        let config = sharded(common::node_config(i as u64 + 1, addrs));
        nodes.push(DistributedCache::new_with_listener(config, listener).await.unwrap());
    }
    let all: Vec<&DistributedCache> = nodes.iter().collect();
    wait_until(Duration::from_secs(30), "the first map, every shard led", || async {
        all.iter().all(|n| !n.shard_map().is_empty())
            && (0..SHARDS)
                .all(|s| all.iter().filter(|n| n.holds_shard(s)).all(|n| n.shard_leader(s).is_some()))
    })
    .await;
    nodes
}

/// Node 4, started with `--join` next to the nodes at `addrs`.
async fn joining_fourth(
    listener: std::net::TcpListener,
    addr4: std::net::SocketAddr,
    addrs: &[std::net::SocketAddr],
) -> DistributedCache {
    let seeds: Vec<(u64, std::net::SocketAddr)> =
        addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, *a)).collect();
    let config = crema::CacheConfig::new(4, addr4)
        .with_seed_nodes(seeds)
        .with_raft_config(common::fast_raft())
        .with_join(true);
    DistributedCache::new_with_listener(sharded(config), listener).await.unwrap()
}

/// Node `id` of the sharded cluster at `addrs` started again on its address (memory: empty).
async fn start_again(id: u64, addrs: &[std::net::SocketAddr]) -> crema::Result<DistributedCache> {
    let listener = common::rebind(addrs[id as usize - 1]).await;
    DistributedCache::new_with_listener(sharded(common::node_config(id, addrs)), listener).await
}

/// Removes node `id` from the meta shard through its leader of the moment (the nodes spread
/// leaders by themselves).
async fn remove_by_hand(nodes: &[&DistributedCache], id: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = nodes.iter().find(|n| n.shard_leader(0) == Some(n.node_id()));
        match leader.map(|l| l.remove_peer(id)) {
            Some(removal) => match removal.await {
                Ok(()) => return,
                Err(crema::Error::NotLeader { .. }) if std::time::Instant::now() < deadline => {}
                Err(e) => panic!("removing node {id}: {e}"),
            },
            None => assert!(std::time::Instant::now() < deadline, "no meta leader"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Found from outside: a node started with `--join` next to a sharded cluster whose discovery
/// does not add nodes by itself could not be added at all (`add-node` was refused), and stayed
/// not ready for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_by_hand_follows_the_map_and_takes_a_moved_shard() {
    common::init_tracing();
    let mut bound = common::bind(4);
    let (listener, addr4) = bound.pop().unwrap();
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let nodes = start_sharded(bound, &addrs).await;
    let fourth = joining_fourth(listener, addr4, &addrs).await;

    // Found from outside: adding a node that already was a member demoted it, unchecked (and
    // pointed its link at the address given). Refused now, at any address, the leader included.
    let meta_leader = nodes.iter().find(|n| n.shard_leader(0) == Some(n.node_id())).expect("a meta leader");
    let voters = meta_leader.voters().await.unwrap();
    let follower = nodes.iter().find(|n| n.node_id() != meta_leader.node_id()).unwrap();
    for (id, addr) in [
        (follower.node_id(), addr4),
        (follower.node_id(), follower.local_addr()),
        (meta_leader.node_id(), meta_leader.local_addr()),
    ] {
        let refused = meta_leader.add_peer(id, addr).await.unwrap_err().to_string();
        assert!(refused.contains("already a voter"), "re-adding node {id} at {addr}: {refused}");
    }
    assert_eq!(meta_leader.voters().await.unwrap(), voters);

    // Added through the meta shard's leader, it follows the map.
    meta_leader.add_peer(4, addr4).await.unwrap();
    wait_until(Duration::from_secs(20), "node 4 has the map", || async { !fourth.shard_map().is_empty() })
        .await;

    // A shard moved to it settles there, with the data written before.
    let placement = nodes[0].shard_map().shards().iter().find(|p| p.shard_id != 0).unwrap().clone();
    let key = (0..)
        .map(|i| Bytes::from(format!("k{i}")))
        .find(|k| nodes[0].router().shard_for_key(k) == placement.shard_id);
    let key = key.unwrap();
    nodes[0].put(key.clone(), "before").await.unwrap();
    nodes[0].move_shard(placement.shard_id, placement.members[0], 4).await.unwrap();
    wait_until(Duration::from_secs(30), "the move settles on node 4", || async {
        nodes[0]
            .shard_map()
            .shard(placement.shard_id)
            .is_some_and(|p| p.state == crema::ShardState::Active && p.members.contains(&4))
            && fourth.holds_shard(placement.shard_id)
    })
    .await;
    assert_eq!(fourth.consistent_get(&key).await.unwrap(), Some(Bytes::from("before")));

    // Leaving by hand is refused while it holds a replica, with what to do instead; once the
    // shard moved away (found from outside: refused even then), it leaves and stops.
    let refused = meta_leader.remove_peer(4).await.unwrap_err().to_string();
    let held = format!("still holds replicas of shards [{}]", placement.shard_id);
    assert!(refused.contains(&held) && refused.contains("move-shard"), "{refused}");
    let back = placement.members[0];
    nodes[0].move_shard(placement.shard_id, 4, back).await.unwrap();
    wait_until(Duration::from_secs(30), "the shard moves back off node 4", || async {
        nodes[0].shard_map().shard(placement.shard_id).is_some_and(|p| {
            p.state == crema::ShardState::Active && !p.members.contains(&4) && p.members.contains(&back)
        })
    })
    .await;
    remove_by_hand(&nodes.iter().collect::<Vec<_>>(), 4).await;
    let ended = tokio::time::timeout(Duration::from_secs(20), fourth.ended()).await;
    assert_eq!(ended.expect("node 4 stops once removed"), crema::NodeEnd::Removed);
    assert_eq!(nodes[0].consistent_get(&key).await.unwrap(), Some(Bytes::from("before")));
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Found from outside: a node that only follows the meta shard (a learner, which never
/// campaigns) went on naming the meta shard's last leader after that leader had lost its
/// quorum, and answered ready. A leader it does not hear from is forgotten; an idle cluster,
/// whose groups sleep, keeps it named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_the_meta_shard_forgets_a_leader_it_no_longer_hears() {
    common::init_tracing();
    let mut bound = common::bind(4);
    let (listener, addr4) = bound.pop().unwrap();
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes: Vec<Option<DistributedCache>> =
        start_sharded(bound, &addrs).await.into_iter().map(Some).collect();
    let fourth = joining_fourth(listener, addr4, &addrs).await;
    let all: Vec<&DistributedCache> = nodes.iter().flatten().collect();
    let meta_leader = all.iter().find(|n| n.shard_leader(0) == Some(n.node_id())).expect("a meta leader");
    meta_leader.add_peer(4, addr4).await.unwrap();
    wait_until(Duration::from_secs(20), "node 4 names the meta leader", || async {
        !fourth.shard_map().is_empty() && fourth.leader_id().is_some()
    })
    .await;

    // Idle for ten election timeouts (the groups go to sleep): the leader stays named.
    let timeout = common::fast_raft().election_timeout();
    let until = std::time::Instant::now() + 10 * timeout;
    while std::time::Instant::now() < until {
        let leader = fourth.leader_id().expect("an idle cluster's leader stays named");
        assert!(fourth.heard_from(leader));
        tokio::time::sleep(timeout / 4).await;
    }

    // Two of the three meta voters stop: no leader is left, and node 4 names none.
    let leader = fourth.leader_id().unwrap();
    let other = (1..=3).find(|id| *id != leader).unwrap();
    for id in [leader, other] {
        nodes[id as usize - 1].take().unwrap().shutdown().await;
    }
    wait_until(Duration::from_secs(10), "node 4 forgets the leader it no longer hears", || async {
        fourth.leader_id().is_none()
    })
    .await;
    fourth.shutdown().await;
    for node in nodes.iter().flatten() {
        node.shutdown().await;
    }
}

/// Found from outside: a memory node removed from a sharded cluster and started again with
/// its first command line stayed up for good, recovering, forwarding its clients' requests. It
/// refuses to start now, saying how to add it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_first_member_started_again_says_it_was_removed() {
    common::init_tracing();
    let bound = common::bind(4);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes = start_sharded(bound, &addrs).await;
    // Node 4's replicas move to the node of 1..3 that does not hold each shard, then it leaves.
    for shard in nodes[0].shard_map().shards_of(4) {
        let members = nodes[0].shard_map().shard(shard).unwrap().members.clone();
        let to = (1..=3).find(|n| !members.contains(n)).unwrap();
        nodes[0].move_shard(shard, 4, to).await.unwrap();
        wait_until(Duration::from_secs(30), "the move settles", || async {
            nodes[0]
                .shard_map()
                .shard(shard)
                .is_some_and(|p| p.state == crema::ShardState::Active && !p.members.contains(&4))
        })
        .await;
    }
    remove_by_hand(&nodes[..3].iter().collect::<Vec<_>>(), 4).await;
    let removed = nodes.pop().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), removed.ended()).await;
    assert_eq!(ended.expect("node 4 stops once removed"), crema::NodeEnd::Removed);
    removed.shutdown().await;

    let again = start_again(4, &addrs).await;
    let Err(refused) = again else { panic!("a removed node does not start again as a member") };
    let refused = refused.to_string();
    assert!(refused.contains("was removed") && refused.contains("--join"), "{refused}");
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Found from outside: once a node had been added (a learner of the meta shard), a memory node
/// restarted with the new node among its peers, as an operator lists it, built the bootstrap
/// log of the members as they are now, which the leader's log (the first members, the new one
/// added later) contradicts: its meta replica declared itself diverged and served nothing, for
/// good, and a second such restart cost the meta shard its quorum. It catches up now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_node_restarted_after_a_node_was_added_catches_up() {
    common::init_tracing();
    let mut bound = common::bind(4);
    let (listener, addr4) = bound.pop().unwrap();
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes = start_sharded(bound, &addrs).await;
    let fourth = joining_fourth(listener, addr4, &addrs).await;
    let meta_leader = nodes.iter().find(|n| n.shard_leader(0) == Some(n.node_id())).expect("a meta leader");
    meta_leader.add_peer(4, addr4).await.unwrap();
    wait_until(Duration::from_secs(20), "node 4 has the map", || async { !fourth.shard_map().is_empty() })
        .await;
    nodes[0].put(Bytes::from("before"), "restart").await.unwrap();

    // Node 1 restarts (memory: it keeps nothing), its peers now including node 4.
    let restarted = nodes.remove(0);
    restarted.shutdown().await;
    let all = [&addrs[..], &[addr4]].concat();
    let again = start_again(1, &all).await.expect("node 1 starts again");
    wait_until(Duration::from_secs(20), "node 1 caught up", || async {
        let raft = again.raft_figures();
        !raft.recovering && raft.diverged_shard.is_none() && again.shard_leader(0).is_some()
    })
    .await;
    assert_eq!(again.raft_figures().diverged_shard, None);
    assert_eq!(again.consistent_get(b"before").await.unwrap(), Some(Bytes::from("restart")));
    again.put(Bytes::from("after"), "ok").await.unwrap();
    for node in nodes.iter().chain([&again, &fourth]) {
        node.shutdown().await;
    }
}

/// Found from outside: every member of a shard that had moved (so not at its first placement)
/// restarted at once with memory storage: none of them could learn the group's members (no
/// leader, no holder), so the shard never started again; and since the restarted nodes asked
/// about their shards one after another, each look stopped at that shard, and the shards after
/// it, whose other members were up, never started either: those lost their quorum for good,
/// and no node was ready again. The shard now starts over, empty, with the members the map
/// names (its data is lost: memory storage, every replica gone), and the others at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_shard_whose_members_all_restarted_starts_again_and_holds_back_no_other() {
    common::init_tracing();
    let bound = common::bind(5);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes: Vec<Option<DistributedCache>> =
        start_sharded(bound, &addrs).await.into_iter().map(Some).collect();
    // A move that leaves at most one of the meta shard's voters (the first three nodes) among
    // the shard's members, so that restarting them all keeps the meta shard's quorum.
    let meta_voters = nodes[0].as_ref().unwrap().voters().await.unwrap();
    let map = nodes[0].as_ref().unwrap().shard_map();
    let mut moves = Vec::new();
    for p in map.shards().iter().filter(|p| p.shard_id != 0) {
        for from in &p.members {
            for to in (1..=5u64).filter(|to| !p.members.contains(to)) {
                let after = p.members.iter().filter(|m| *m != from).chain([&to]);
                if after.filter(|m| meta_voters.contains(m)).count() <= 1 {
                    moves.push((p.shard_id, *from, to));
                }
            }
        }
    }
    let (shard, from, to) = *moves.first().expect("a move that keeps the meta quorum");
    let first = nodes[0].as_ref().unwrap();
    first.move_shard(shard, from, to).await.unwrap();
    wait_until(Duration::from_secs(30), "the move settles", || async {
        first
            .shard_map()
            .shard(shard)
            .is_some_and(|p| p.state == crema::ShardState::Active && p.members.contains(&to))
    })
    .await;
    let members = first.shard_map().shard(shard).unwrap().members.clone();
    let key = (0..).map(|i| Bytes::from(format!("k{i}"))).find(|k| first.router().shard_for_key(k) == shard);
    first.put(key.unwrap(), "lost with its replicas").await.unwrap();

    // Every member of the moved shard stops (memory: nothing kept), then all start again.
    for id in &members {
        nodes[*id as usize - 1].take().unwrap().shutdown().await;
    }
    for id in &members {
        nodes[*id as usize - 1] = Some(start_again(*id, &addrs).await.expect("starts again"));
    }
    let all: Vec<&DistributedCache> = nodes.iter().map(|n| n.as_ref().unwrap()).collect();
    wait_until(Duration::from_secs(60), "every node holds its shards, every shard led", || async {
        let map = all[0].shard_map();
        map.shards().iter().all(|p| {
            p.members.iter().all(|m| all[*m as usize - 1].holds_shard(p.shard_id))
                && p.members.iter().all(|m| all[*m as usize - 1].shard_leader(p.shard_id).is_some())
        })
    })
    .await;
    // Every shard takes writes again, the one that lost every replica too.
    for s in 0..SHARDS {
        let key = (0..).map(|i| Bytes::from(format!("w{i}"))).find(|k| all[0].router().shard_for_key(k) == s);
        let key = key.unwrap();
        all[0].put(key.clone(), "after").await.unwrap();
        assert_eq!(all[0].consistent_get(&key).await.unwrap(), Some(Bytes::from("after")), "shard {s}");
    }
    for node in all {
        node.shutdown().await;
    }
}
