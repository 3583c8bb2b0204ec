//! A memory node restarted after its group's members changed: its command line names the
//! members of the cluster's start (or those of now), while the group's leader may be a node
//! added since. It must catch up from that leader, whichever members its command line names
//! (see `cache::meta_conf` and `consensus::recovery`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use crema::faults::Faults;
use crema::{CacheConfig, DistributedCache};

/// Starts node 3 again (memory storage: it comes back empty) with `seeds` as its command
/// line's peers, and waits until it has caught up from node 4, the leader: it knows node 4
/// leads, holds what node 4 acknowledged, and takes a write. Stops it again.
async fn restart_three(addrs: &[SocketAddr], seeds: &[usize], four: &DistributedCache) {
    let peers = seeds.iter().map(|&i| (i as u64 + 1, addrs[i])).collect();
    let config = node_config(3, addrs).with_seed_nodes(peers);
    let three = DistributedCache::new_with_listener(config, rebind(addrs[2]).await).await.unwrap();
    let what = format!("node 3, restarted with peers {seeds:?}, caught up from node 4");
    wait_until(Duration::from_secs(10), &what, || async {
        !three.raft_figures().recovering
            && three.leader_id() == Some(4)
            && three.get(b"while 4 leads").await.is_some()
    })
    .await;
    assert_eq!(three.raft_figures().diverged_shard, None);
    assert_eq!(three.wait_for_leader(Duration::from_secs(5)).await, Some(4), "ready");
    let key = format!("after a restart with {seeds:?}");
    three.put(key.clone(), "v").await.unwrap();
    four.read_barrier().await.unwrap();
    assert!(four.get(key.as_bytes()).await.is_some());
    three.shutdown().await;
}

/// Nodes 1 to 3 of a memory cluster of one shard (as `first`), node 4 added later and leading,
/// a key written while it leads; their addresses. `tweak` adjusts each config.
async fn four_led_by_the_added_node(
    tweak: impl Fn(CacheConfig) -> CacheConfig,
) -> (Vec<DistributedCache>, DistributedCache, Vec<SocketAddr>) {
    let bound = bind(4);
    let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut listeners = bound.into_iter().map(|(l, _)| l);
    let mut first = Vec::new();
    for id in 1..=3 {
        let config = tweak(node_config(id, &addrs[..3]));
        first.push(DistributedCache::new_with_listener(config, listeners.next().unwrap()).await.unwrap());
    }
    let refs: Vec<&DistributedCache> = first.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    let config = tweak(node_config(4, &addrs).with_join(true));
    let four = DistributedCache::new_with_listener(config, listeners.next().unwrap()).await.unwrap();
    first[leader].add_peer(4, addrs[3]).await.unwrap();
    first[leader].put("before", "v").await.unwrap();
    wait_until(Duration::from_secs(5), "node 4 caught up", || async { four.get(b"before").await.is_some() })
        .await;
    first[leader].transfer_shard_leader(0, 4).await.unwrap();
    wait_until(Duration::from_secs(5), "node 4 leads", || async { four.is_leader() }).await;
    four.put("while 4 leads", "v").await.unwrap();
    (first, four, addrs)
}

/// Found from outside: a memory node restarted while its group was led by a node added after
/// the cluster's start refused that leader for good (recovering, never ready) when restarted
/// with its first command line; restarted with the members of now among its peers, it built
/// their bootstrap log, which the leader's contradicts, and declared itself diverged. One
/// shard here; several shards take the same path for the meta shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_node_restarted_while_a_node_added_later_leads_catches_up_from_it() {
    init_tracing();
    let (mut first, four, addrs) = four_led_by_the_added_node(|c| c).await;
    first.pop().unwrap().shutdown().await;
    // Its first command line: nodes 1 and 2.
    restart_three(&addrs, &[0, 1], &four).await;
    // The members of now, node 4 among them.
    restart_three(&addrs, &[0, 1, 3], &four).await;
    // Removed while it was away, and started again with its first command line: it says so
    // and stops, instead of waiting to recover as a member.
    four.remove_peer(3).await.unwrap();
    let config = node_config(3, &addrs[..3]);
    let refused = DistributedCache::new_with_listener(config, rebind(addrs[2]).await).await;
    let Err(why) = refused else { panic!("a removed node does not start") };
    let why = why.to_string();
    assert!(why.contains("node 3 was removed from the cluster"), "{why}");
    for node in first {
        node.shutdown().await;
    }
    four.shutdown().await;
}

/// Node 3 stops, and starts again with its first command line while every frame it sends is
/// lost (its asks unanswered: it starts with its first members); then the links heal.
async fn restart_three_unanswered(addrs: &[SocketAddr], faults: &Arc<Faults>) -> DistributedCache {
    for to in [1, 2, 4] {
        faults.cut(3, to);
    }
    let config =
        node_config(3, &addrs[..3]).with_request_timeout(Duration::from_secs(1)).with_faults(faults.clone());
    let three = DistributedCache::new_with_listener(config, rebind(addrs[2]).await).await.unwrap();
    assert_eq!(three.voters().await.unwrap(), vec![1, 2, 3], "started with its first members");
    faults.heal();
    three
}

/// As below, with its first voters all up: its recovery ends with their answers, and it takes
/// the leader its log does not name yet once a running member said who the members are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_with_its_first_members_takes_the_leader_they_do_not_name() {
    init_tracing();
    let faults = Arc::new(Faults::new(7));
    let (mut first, four, addrs) = four_led_by_the_added_node(|c| c.with_faults(faults.clone())).await;
    first.pop().unwrap().shutdown().await;
    let three = restart_three_unanswered(&addrs, &faults).await;
    wait_until(Duration::from_secs(15), "node 3 caught up from node 4", || async {
        !three.raft_figures().recovering
            && three.leader_id() == Some(4)
            && three.get(b"while 4 leads").await.is_some()
    })
    .await;
    assert_eq!(three.voters().await.unwrap(), vec![1, 2, 3, 4], "the group's voters of now");
    three.shutdown().await;
    for node in first {
        node.shutdown().await;
    }
    four.shutdown().await;
}

/// When no seed says how the group stands before the meta replica starts (their answers lost
/// here; late on a loaded machine, found from outside), the replica starts with its command
/// line's members, and keeps asking while it recovers: once a running member answers, its
/// recovery counts the group's voters of now and it takes their leader, a node its first
/// members do not name. Found from outside: it refused that leader for over five minutes, and
/// with one of its first voters down it waited for that voter for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_with_its_first_members_learns_the_group_of_now_from_a_running_member() {
    init_tracing();
    let faults = Arc::new(Faults::new(7));
    let (mut first, four, addrs) = four_led_by_the_added_node(|c| c.with_faults(faults.clone())).await;
    // Node 3 and node 2 stop; node 3 starts again, its asks unanswered.
    first.pop().unwrap().shutdown().await;
    first.pop().unwrap().shutdown().await;
    let three = restart_three_unanswered(&addrs, &faults).await;
    // It waits for nodes 1 and 2 of its first members no more: nodes 1 and 4 answer, and it
    // catches up from node 4 (with node 2 down, the group may then elect again: any leader).
    wait_until(Duration::from_secs(15), "node 3 caught up", || async {
        !three.raft_figures().recovering
            && three.leader_id().is_some()
            && three.get(b"while 4 leads").await.is_some()
    })
    .await;
    assert_eq!(three.voters().await.unwrap(), vec![1, 2, 3, 4], "the group's voters of now");
    three.put("after", "v").await.unwrap();
    four.read_barrier().await.unwrap();
    assert!(four.get(b"after").await.is_some());
    three.shutdown().await;
    first.pop().unwrap().shutdown().await;
    four.shutdown().await;
}

/// A member started again empty (it asked who the members are, and its log will name them)
/// takes no stranger's connection while it waits for them. Found from outside: a stranger
/// flooding the peer port of a restarting memory node (no cluster secret) was taken for its
/// leader within 2 ms, its entries committed, its term pushed on the whole cluster, and the
/// node then declared itself diverged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_started_again_empty_takes_no_stranger() {
    use common::wire::{at, envelope, FakePeer, Wire};
    use tokio::io::AsyncWriteExt;
    init_tracing();
    let (mut first, four, addrs) = four_led_by_the_added_node(|c| c).await;
    // Only node 1 stays up: node 3, started again, learns the members from it and waits in
    // its recovery for a second voter that kept its state.
    four.shutdown().await;
    first.pop().unwrap().shutdown().await;
    first.pop().unwrap().shutdown().await;
    let config = node_config(3, &addrs[..3]).with_request_timeout(Duration::from_secs(1));
    let three = DistributedCache::new_with_listener(config, rebind(addrs[2]).await).await.unwrap();
    assert!(three.raft_figures().recovering);
    assert!(three.voters().await.unwrap().is_empty(), "started empty, to learn its members from its log");
    // A stranger that says it runs the group is refused.
    let mut stranger = tokio::net::TcpStream::connect(addrs[2]).await.unwrap();
    let hello =
        Wire::Hello { node_id: 9, incarnation: 1, groups: vec![at(5, 5, 40)], client_addr: None, shards: 1 };
    stranger.write_all(&envelope(&hello)).await.unwrap();
    FakePeer::expect_closed(&mut stranger).await;
    // Nodes 2 and 4 back (they restart empty too): every voter answered, the group goes on
    // from node 1's state.
    let two = DistributedCache::new_with_listener(node_config(2, &addrs[..3]), rebind(addrs[1]).await);
    let four =
        DistributedCache::new_with_listener(node_config(4, &addrs).with_join(true), rebind(addrs[3]).await);
    let (two, four) = (two.await.unwrap(), four.await.unwrap());
    wait_until(Duration::from_secs(20), "node 3 recovered", || async {
        !three.raft_figures().recovering && three.get(b"while 4 leads").await.is_some()
    })
    .await;
    for node in [three, two, four].into_iter().chain(first) {
        node.shutdown().await;
    }
}
