//! A shard moved away and back: the returning node's fresh replica replays the group's log from
//! its first entry, whose first members include that node's earlier replica but not the node
//! leading the group now. It must still follow that leader, catch up, and let the move settle.
//!
//! Found from outside (5 nodes, 16 shards, memory storage): a shard moved from its leader A to
//! B, whose leadership went to B, then back to A; A's fresh replica refused every message of B
//! as a non-member's once it had replayed the first members, was promoted anyway, and the move
//! never settled (clients of B could not write to the shard for minutes).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{cluster_with, sharded_config, wait_until};
use crema::{DistributedCache, NodeId, ShardState};

const SHARDS: u32 = 4;

/// Waits until `shard`'s move has settled on `members`: the map says so on every node, every
/// member holds the shard, and its leader names exactly those voters.
async fn settled(nodes: &[DistributedCache], shard: u32, members: &[NodeId], what: &str) {
    let mut want = members.to_vec();
    want.sort_unstable();
    wait_until(Duration::from_secs(40), what, || async {
        let placed = nodes.iter().all(|n| {
            n.shard_map().shard(shard).is_some_and(|p| p.state == ShardState::Active && p.members == want)
        });
        let held = want.iter().all(|m| nodes[*m as usize - 1].holds_shard(shard));
        let Some(leader) = nodes[0].shard_leader(shard) else { return false };
        let voters = match nodes[leader as usize - 1].shard_status(shard).await {
            Ok(status) => status.voters == want && status.learners.is_empty(),
            Err(_) => false,
        };
        placed && held && voters
    })
    .await;
}

/// Hands `shard`'s leadership to `to` (asked of its leader) and waits until its holders agree.
async fn lead(nodes: &[DistributedCache], shard: u32, to: NodeId) {
    // (The node asked may not have heard the leader yet: found in CI, just after a move.)
    wait_until(Duration::from_secs(20), "the node asked to lead knows a leader", || async {
        nodes[to as usize - 1].shard_leader(shard).is_some()
    })
    .await;
    let current = nodes[to as usize - 1].shard_leader(shard).expect("a leader");
    if current != to {
        nodes[current as usize - 1].transfer_shard_leader(shard, to).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "the shard led by the node asked to", || async {
        nodes.iter().filter(|n| n.holds_shard(shard)).all(|n| n.shard_leader(shard) == Some(to))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_moved_away_and_back_follows_its_leader_and_settles() {
    let nodes = cluster_with(4, |c| sharded_config(c, SHARDS).with_replica_factor(3)).await;
    wait_until(Duration::from_secs(30), "the first map, every shard led", || async {
        nodes.iter().all(|n| !n.shard_map().is_empty())
            && (0..SHARDS)
                .all(|s| nodes.iter().filter(|n| n.holds_shard(s)).all(|n| n.shard_leader(s).is_some()))
    })
    .await;
    let map = nodes[0].shard_map();
    let placement = map.shards().iter().find(|p| p.shard_id != 0).unwrap().clone();
    let shard = placement.shard_id;
    let a = placement.members[0];
    let b = (1..=4).find(|n| !placement.members.contains(n)).unwrap();
    lead(&nodes, shard, a).await;

    // A log longer than one append (1 MiB), none of it compacted: a fresh replica is caught up
    // entry by entry from the first one, not with a snapshot.
    let router = nodes[0].router();
    let keys: Vec<Bytes> = (0..)
        .map(|i| Bytes::from(format!("k{i}")))
        .filter(|k| router.shard_for_key(k) == shard)
        .take(1500)
        .collect();
    let value = Bytes::from(vec![b'v'; 2048]);
    let leader = &nodes[a as usize - 1];
    for chunk in keys.chunks(50) {
        let writes = chunk.iter().map(|k| leader.put(k.clone(), value.clone()));
        for written in futures_util::future::join_all(writes).await {
            written.unwrap();
        }
    }

    // Away from A to B, with B leading afterwards.
    nodes[0].move_shard(shard, a, b).await.unwrap();
    let away: Vec<NodeId> = placement.members.iter().map(|m| if *m == a { b } else { *m }).collect();
    settled(&nodes, shard, &away, "the move from A to B settled").await;
    lead(&nodes, shard, b).await;

    // And back: A's fresh replica replays a log whose first members are A's old replica and
    // the others, not B, which leads.
    nodes[0].move_shard(shard, b, a).await.unwrap();
    settled(&nodes, shard, &placement.members, "the move back from B to A settled").await;
    let back = &nodes[a as usize - 1];
    wait_until(Duration::from_secs(20), "A's replica holds every write", || async {
        keys.iter().all(|k| back.storage().get(k).as_ref() == Some(&value))
    })
    .await;
    // The shard takes writes through every node.
    for node in &nodes {
        node.put(keys[0].clone(), "after").await.unwrap();
    }
    for node in &nodes {
        node.shutdown().await;
    }
}
