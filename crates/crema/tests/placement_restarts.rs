//! Restarts of nodes of a placed cluster (a replica factor below the node count): a durable
//! node opens the replicas it holds now, and a memory node starts the replicas the map gives it
//! with their groups' members as they are now, after moves away and back.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{discovered, wait_until};
use crema::{DistributedCache, MultiRaftCacheConfig};

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key:{i}"))
}

/// Node `id`'s config in a cluster at `addrs`: six shards, three replicas each.
fn six_shards(id: u64, addrs: &[std::net::SocketAddr]) -> crema::CacheConfig {
    discovered(common::node_config(id, addrs))
        .with_multiraft_config(MultiRaftCacheConfig { enabled: true, num_shards: 6, ..Default::default() })
        .with_replica_factor(3)
}

/// Starts four nodes on `bound` with `config`, waits until each has the first map and every
/// shard a leader its holders know, and writes keys 0 to 99 (`v0` ...) through them in turn.
async fn four_nodes_with_keys(
    bound: Vec<(std::net::TcpListener, std::net::SocketAddr)>,
    config: &impl Fn(u64) -> crema::CacheConfig,
) -> Vec<DistributedCache> {
    let mut nodes = Vec::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        nodes.push(DistributedCache::new_with_listener(config(i as u64 + 1), listener).await.unwrap());
    }
    let all: Vec<&DistributedCache> = nodes.iter().collect();
    wait_until(Duration::from_secs(30), "the first map on every node, every shard led", || async {
        all.iter().all(|n| !n.shard_map().is_empty())
            && (1..6).all(|s| all.iter().filter(|n| n.holds_shard(s)).all(|n| n.shard_leader(s).is_some()))
    })
    .await;
    for i in 0..100 {
        nodes[i % 4].put(key(i), format!("v{i}")).await.unwrap();
    }
    nodes
}

/// A durable node restarted on its data directory after shards moved to and from it opens the
/// replicas it holds now (not those the first map gave it), and has their data.
#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_node_restarts_with_the_replicas_it_holds_now() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let bound = common::bind(4);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let config = |id: u64| {
        six_shards(id, &addrs)
            .with_raft_storage_type(crema::RaftStorageType::RocksDb)
            .with_data_dir(dirs[id as usize - 1].path())
    };
    let mut nodes = four_nodes_with_keys(bound, &config).await;
    // One shard moves to node 4, one away from it.
    let map = nodes[0].shard_map();
    let to_four = map.shards().iter().find(|p| p.shard_id != 0 && !p.members.contains(&4)).unwrap().clone();
    let from_four = map.shards().iter().find(|p| p.shard_id != 0 && p.members.contains(&4)).unwrap().clone();
    nodes[0].move_shard(to_four.shard_id, to_four.members[0], 4).await.unwrap();
    let stay = [1, 2, 3].into_iter().find(|n| !from_four.members.contains(n)).unwrap();
    wait_until(Duration::from_secs(30), "the first move settles", || async {
        nodes[0].shard_map().shard(to_four.shard_id).is_some_and(|p| p.state == crema::ShardState::Active)
    })
    .await;
    nodes[0].move_shard(from_four.shard_id, 4, stay).await.unwrap();
    wait_until(Duration::from_secs(30), "both moves settled, node 4 holding what the map says", || async {
        let map = nodes[3].shard_map();
        let mut placed = map.shards().iter().all(|p| p.state == crema::ShardState::Active);
        for s in 1..6 {
            let member = map.shard(s).unwrap().members.contains(&4);
            // A replica moved away is retired (its state deleted), not only routed around.
            placed &=
                nodes[3].holds_shard(s) == member && (member || nodes[3].shard_status(s).await.is_err());
        }
        placed
    })
    .await;
    for i in 100..150 {
        nodes[i % 4].put(key(i), format!("v{i}")).await.unwrap();
    }
    // Node 4 stops and starts again on its data directory.
    let fourth = nodes.pop().unwrap();
    fourth.shutdown().await;
    drop(fourth);
    let listener = common::rebind(addrs[3]).await;
    let fourth = DistributedCache::new_with_listener(config(4), listener).await.unwrap();
    assert!(fourth.holds_shard(to_four.shard_id), "the shard moved to it is opened again");
    // The shard moved away is not served: had the node stopped before its state was deleted,
    // the replica replays its removal from its own log and is retired again.
    wait_until(Duration::from_secs(10), "the shard moved away is not held", || async {
        !fourth.holds_shard(from_four.shard_id) && fourth.shard_status(from_four.shard_id).await.is_err()
    })
    .await;
    for i in 0..150 {
        let want = Some(Bytes::from(format!("v{i}")));
        assert_eq!(fourth.consistent_get(&key(i)).await.unwrap(), want, "key {i} through the restarted node");
    }
    fourth.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Stops node `index` (node `index + 1`) and starts it again with `config`, memory storage:
/// it comes back with nothing.
async fn restart_memory_node(nodes: &mut Vec<DistributedCache>, index: usize, config: &crema::CacheConfig) {
    let old = nodes.remove(index);
    let addr = old.local_addr();
    old.shutdown().await;
    drop(old);
    let listener = common::rebind(addr).await;
    nodes.insert(index, DistributedCache::new_with_listener(config.clone(), listener).await.unwrap());
}

/// Waits until `node` holds `shard` as a member that recovered and caught up, in a group whose
/// voters include `with` and not `without`.
async fn rejoined(node: &DistributedCache, shard: u32, with: &[u64], without: u64) {
    wait_until(Duration::from_secs(30), "the restarted node back in the shard's group", || async {
        node.holds_shard(shard)
            && node.shard_status(shard).await.is_ok_and(|s| {
                s.recovery == crema::RecoveryState::Done
                    && with.iter().all(|w| s.voters.contains(w))
                    && !s.voters.contains(&without)
                    && s.leader_id.is_some()
                    && s.applied_index >= s.commit_index
            })
    })
    .await;
}

/// A memory node that restarts after a shard it holds changed members (another member moved
/// away, a new one leads it) takes its place in that shard's group again: it starts the
/// replica as the group has it now, not as the first map had it (a replica with the first
/// members would refuse the new leader and wait for the node that left, for good), and holds
/// no replica of a shard the map no longer gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_node_restarts_into_the_groups_as_they_are_now() {
    let bound = common::bind(4);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let config = |id: u64| six_shards(id, &addrs);
    let mut nodes = four_nodes_with_keys(bound, &config).await;
    // A shard without node 4 moves one replica to it, and node 4 takes its leadership.
    let map = nodes[0].shard_map();
    let moved = map.shards().iter().find(|p| p.shard_id != 0 && !p.members.contains(&4)).unwrap().clone();
    let (gone, stays) = (moved.members[0], moved.members[1]);
    nodes[0].move_shard(moved.shard_id, gone, 4).await.unwrap();
    wait_until(Duration::from_secs(30), "the move settles", || async {
        nodes[0].shard_map().shard(moved.shard_id).is_some_and(|p| p.state == crema::ShardState::Active)
            && nodes[3].shard_status(moved.shard_id).await.is_ok_and(|s| s.voters.contains(&4))
    })
    .await;
    wait_until(Duration::from_secs(30), "node 4 leads the moved shard", || async {
        if nodes[3].shard_leader(moved.shard_id) == Some(4) {
            return true;
        }
        if let Some(leader) = nodes[3].shard_leader(moved.shard_id) {
            let _ = nodes[leader as usize - 1].transfer_shard_leader(moved.shard_id, 4).await;
        }
        false
    })
    .await;
    for i in 100..150 {
        nodes[i % 4].put(key(i), format!("v{i}")).await.unwrap();
    }
    // A member that stayed restarts, memory storage: it remembers nothing.
    let index = stays as usize - 1;
    restart_memory_node(&mut nodes, index, &config(stays)).await;
    let back = &nodes[index];
    rejoined(back, moved.shard_id, &[4], gone).await;
    let map = back.shard_map();
    for p in map.shards() {
        assert_eq!(
            back.holds_shard(p.shard_id),
            p.members.contains(&stays),
            "shard {}: as the map says",
            p.shard_id
        );
    }
    for i in 150..200 {
        back.put(key(i), format!("v{i}")).await.unwrap();
    }
    for i in 0..200 {
        let want = Some(Bytes::from(format!("v{i}")));
        assert_eq!(back.consistent_get(&key(i)).await.unwrap(), want, "key {i} through the restarted node");
    }

    // Found from outside: a shard moved away from the node and back holds the node's removal
    // in its log, which the replica started again replayed and obeyed, retired, started
    // again, and so on, for good.
    let map = nodes[0].shard_map();
    let round = map
        .shards()
        .iter()
        .find(|p| p.shard_id != 0 && p.shard_id != moved.shard_id && p.members.contains(&stays))
        .unwrap()
        .clone();
    let other = (1..=4).find(|n| !round.members.contains(n)).unwrap();
    for (from, to) in [(stays, other), (other, stays)] {
        move_and_settle(&nodes[0], round.shard_id, from, to).await;
    }
    restart_memory_node(&mut nodes, index, &config(stays)).await;
    let back = &nodes[index];
    assert!(back.wait_for_leader(Duration::from_secs(30)).await.is_some(), "ready again");
    assert!(back.holds_its_replicas(), "ready means holding every replica the map gives it");
    rejoined(back, round.shard_id, &[stays], other).await;
    for i in 0..200 {
        let want = Some(Bytes::from(format!("v{i}")));
        assert_eq!(back.consistent_get(&key(i)).await.unwrap(), want, "key {i} after the second restart");
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Moves shard `shard` from node `from` to node `to` through `via` and waits until the move
/// settled.
async fn move_and_settle(via: &DistributedCache, shard: u32, from: u64, to: u64) {
    via.move_shard(shard, from, to).await.unwrap();
    wait_until(Duration::from_secs(30), "the move settles", || async {
        via.shard_map()
            .shard(shard)
            .is_some_and(|p| p.state == crema::ShardState::Active && p.members.contains(&to))
    })
    .await;
}

/// A memory node restarts after the meta shard's voters changed and one of the first ones
/// left for good: the replica it started with the first map's members waited for that node's
/// answer (its recovery needs both other voters it knows), for good, and the node never served
/// again. It now starts its meta replica with the members the running cluster has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_node_restarts_into_the_meta_shard_as_it_is_now() {
    let bound = common::bind(4);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let config = |id: u64| six_shards(id, &addrs);
    let mut nodes = four_nodes_with_keys(bound, &config).await;
    let first = nodes[0].shard_map().shard(0).unwrap().members.clone();
    let (restarted, leaves) = (first[0], first[2]);
    let outside = (1..=4).find(|n| !first.contains(n)).unwrap();
    // The meta shard's voter that will leave is replaced, and every data shard moves off it
    // (a shard it held with the restarted node would have lost two of its three members).
    move_and_settle(&nodes[0], 0, leaves, outside).await;
    for s in 1..6 {
        let members = nodes[0].shard_map().shard(s).unwrap().members.clone();
        if members.contains(&leaves) {
            let to = (1..=4).find(|n| !members.contains(n)).unwrap();
            move_and_settle(&nodes[0], s, leaves, to).await;
        }
    }
    let index = |nodes: &[DistributedCache], id: u64| nodes.iter().position(|n| n.node_id() == id).unwrap();
    let meta_moved = || async {
        let status = nodes[index(&nodes, outside)].shard_status(0).await;
        status.is_ok_and(|s| s.voters.contains(&outside) && !s.voters.contains(&leaves))
    };
    wait_until(Duration::from_secs(30), "the meta shard's new voters", meta_moved).await;
    let gone = nodes.remove(index(&nodes, leaves));
    gone.shutdown().await;
    drop(gone);
    for i in 100..150 {
        nodes[i % 3].put(key(i), format!("v{i}")).await.unwrap();
    }
    // The restarted node knew the meta shard's voters as the first map had them, with the
    // node that left among them.
    let at = index(&nodes, restarted);
    restart_memory_node(&mut nodes, at, &config(restarted)).await;
    let back = &nodes[at];
    assert!(back.wait_for_leader(Duration::from_secs(30)).await.is_some(), "ready again");
    assert!(back.holds_its_replicas(), "ready means holding every replica the map gives it");
    rejoined(back, 0, &[outside], leaves).await;
    for i in 150..200 {
        back.put(key(i), format!("v{i}")).await.unwrap();
    }
    for i in 0..200 {
        let want = Some(Bytes::from(format!("v{i}")));
        assert_eq!(back.consistent_get(&key(i)).await.unwrap(), want, "key {i} through the restarted node");
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Found from outside: a durable node down while a shard moved away from it came back with
/// that replica, which never learned of its removal: it campaigned in vain for good, and the
/// node never said it was ready (`/ready`, `wait_for_leader`), also after another restart. The
/// replica is routed around, the node is ready, and once the shard's group confirms it no
/// longer counts the node, the replica is retired.
#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_node_down_while_a_shard_moved_away_retires_that_replica() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let bound = common::bind(4);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let config = |id: u64| {
        six_shards(id, &addrs)
            .with_raft_storage_type(crema::RaftStorageType::RocksDb)
            .with_data_dir(dirs[id as usize - 1].path())
    };
    common::init_tracing();
    let mut nodes = four_nodes_with_keys(bound, &config).await;
    let map = nodes[0].shard_map();
    let away = map.shards().iter().find(|p| p.shard_id != 0 && p.members.contains(&4)).unwrap().clone();
    let to = (1..=4).find(|n| !away.members.contains(n)).unwrap();
    // Node 4 stops; the shard moves from it to the node that held none of it.
    let fourth = nodes.pop().unwrap();
    fourth.shutdown().await;
    drop(fourth);
    move_and_settle(&nodes[0], away.shard_id, 4, to).await;
    for i in 100..150 {
        nodes[i % 3].put(key(i), format!("v{i}")).await.unwrap();
    }
    let listener = common::rebind(addrs[3]).await;
    let fourth = DistributedCache::new_with_listener(config(4), listener).await.unwrap();
    assert!(fourth.wait_for_leader(Duration::from_secs(30)).await.is_some(), "ready");
    assert!(
        !fourth.holds_shard(away.shard_id),
        "the replica moved away is routed around: {:?} {:?}",
        fourth.shard_map().shard(away.shard_id),
        fourth.shard_status(away.shard_id).await
    );
    wait_until(Duration::from_secs(30), "the replica moved away retired", || async {
        fourth.shard_status(away.shard_id).await.is_err()
    })
    .await;
    for i in 0..150 {
        let want = Some(Bytes::from(format!("v{i}")));
        assert_eq!(fourth.consistent_get(&key(i)).await.unwrap(), want, "key {i} through the restarted node");
    }
    fourth.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
}

/// A memory node restarted while a shard moves away from it (the map no longer names it, its
/// group still counts it as a voter) starts that replica again, as the voter its group counts,
/// until the move removes it. Found from outside: it came back without it, the group of four
/// voters then had three running, and one more kill left the shard without a quorum for 10 s,
/// twice, while `/cluster` listed two of its three members alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_node_restarted_while_a_shard_moves_away_takes_its_place_until_removed() {
    let bound = common::bind(4);
    let addrs: Vec<std::net::SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let config = |id: u64| six_shards(id, &addrs);
    let mut nodes = four_nodes_with_keys(bound, &config).await;
    let map = nodes[0].shard_map();
    let moving = map.shards().iter().find(|p| p.shard_id != 0 && !p.members.contains(&4)).unwrap().clone();
    let (leaving, stays) = (moving.members[0], moving.members[1]);
    let other = moving.members[2];
    // The shard moves from `leaving` to node 4, which stops at once: its replica never catches
    // up, so the move stays under way, and the group keeps `leaving` as a voter.
    nodes[0].move_shard(moving.shard_id, leaving, 4).await.unwrap();
    let fourth = nodes.pop().unwrap();
    fourth.shutdown().await;
    drop(fourth);
    assert!(nodes[0]
        .shard_map()
        .shard(moving.shard_id)
        .is_some_and(|p| p.state == crema::ShardState::Transferring));
    // The leaving node restarts with nothing (memory storage).
    let index = leaving as usize - 1;
    restart_memory_node(&mut nodes, index, &config(leaving)).await;
    let back = &nodes[index];
    wait_until(Duration::from_secs(30), "the leaving node's replica back, recovered", || async {
        back.holds_shard(moving.shard_id)
            && back.shard_status(moving.shard_id).await.is_ok_and(|s| {
                s.recovery == crema::RecoveryState::Done
                    && s.voters.contains(&leaving)
                    && s.applied_index >= s.commit_index
            })
    })
    .await;
    // With it, the shard keeps a quorum when another member stops.
    let gone = nodes.remove(stays as usize - 1);
    gone.shutdown().await;
    drop(gone);
    let via = nodes.iter().find(|n| n.node_id() == other).unwrap();
    let key_of_shard =
        (0..10_000).map(key).find(|k| via.router().shard_for_key(k) == moving.shard_id).unwrap();
    wait_until(
        Duration::from_secs(30),
        "a write to the shard with one of its first members stopped and the other back",
        || async { via.put(key_of_shard.clone(), "written").await.is_ok() },
    )
    .await;
    // Node 4 comes back: the move completes, and the leaving node's replica is retired.
    let fourth =
        DistributedCache::new_with_listener(config(4), common::rebind(addrs[3]).await).await.unwrap();
    let back = nodes.iter().find(|n| n.node_id() == leaving).unwrap();
    wait_until(Duration::from_secs(60), "the move settles and the leaving replica retires", || async {
        via.shard_map().shard(moving.shard_id).is_some_and(|p| p.state == crema::ShardState::Active)
            && !back.holds_shard(moving.shard_id)
    })
    .await;
    assert_eq!(fourth.consistent_get(&key_of_shard).await.unwrap(), Some(Bytes::from("written")));
    fourth.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
}
