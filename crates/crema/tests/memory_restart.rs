//! Memory nodes that restart: they come back with an empty log and no record of their votes,
//! and must neither be credited with entries they lost nor vote twice in a term (see
//! `consensus::recovery` and docs/reliability.md, "Restarting a memory node").

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::wire::{append, at, lone_node_three, raft_msg, FakePeer, Position};
use common::*;
use crema::{DistributedCache, RecoveryState};
use raft::eraftpb::{Message, MessageType};

fn vote_request(from: u64, term: u64, log_term: u64, index: u64) -> Message {
    let mut m = raft_msg(MessageType::MsgRequestVote, from, 3, term);
    m.log_term = log_term;
    m.index = index;
    m
}

/// The case of a node that voted and crashed before anything was committed: node 1 won term 2
/// with node 3's vote; node 3 restarts knowing nothing. Until both others answered it steps
/// nothing; then it holds a vote for itself in term 2 (the highest term reported), so it cannot
/// vote for node 2 in term 2, and in later terms it votes only for a log at least as up to date
/// as the best one reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_steps_nothing_until_enough_voters_answered_and_never_votes_twice_in_a_term() {
    init_tracing();
    let node = lone_node_three().await;
    let addr = node.local_addr();
    // Node 2 never saw term 2 (partitioned when node 1 won it).
    let mut two = FakePeer::connect(addr, 2, at(1, 1, 3)).await;
    wait_until(Duration::from_secs(5), "node 2's answer noted", || async {
        node.cluster_status().await.unwrap().group.recovery
            == RecoveryState::WaitingForPeers { heard: vec![2], needed: 2 }
    })
    .await;
    assert!(node.raft_figures().recovering);
    // Waiting: nothing is stepped, so this vote request in term 2 gets no answer.
    two.send(&vote_request(2, 2, 1, 3)).await;

    let _one = FakePeer::connect(addr, 1, at(2, 2, 4)).await;
    // The recovery state is answered by the group loop; the term figure is published when
    // the loop handles the Ready its move to term 2 made, which may come just after.
    wait_until(Duration::from_secs(5), "floor learned and moved to the highest term reported", || async {
        node.cluster_status().await.unwrap().group.recovery
            == RecoveryState::CatchingUp { last_term: 2, last_index: 4 }
            && node.raft_figures().term == 2
    })
    .await;

    // Term 2 again: refused (it holds a vote for itself there).
    two.send(&vote_request(2, 2, 2, 4)).await;
    // Term 3, a log behind the best reported one: not answered at all.
    two.send(&vote_request(2, 3, 1, 3)).await;
    // Term 3, a log as up to date: granted.
    two.send(&vote_request(2, 3, 2, 4)).await;
    let first = two.next_raft().await;
    assert_eq!(
        (first.get_msg_type(), first.term, first.reject),
        (MessageType::MsgRequestVoteResponse, 2, true)
    );
    let second = two.next_raft().await;
    assert_eq!(
        (second.get_msg_type(), second.term, second.reject),
        (MessageType::MsgRequestVoteResponse, 3, false),
        "the only answers are to the term-2 request (refused) and the up-to-date one (granted)"
    );
    assert!(node.raft_figures().recovering, "still catching up: its own log is empty");
    node.shutdown().await;
}

/// All nodes of a new memory cluster start in recovery; they answer each other at once and
/// elect a leader as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_memory_cluster_recovers_at_once_and_elects() {
    init_tracing();
    let nodes = cluster(3).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    nodes[leader].put("k", "v").await.unwrap();
    for n in &nodes {
        assert!(!n.raft_figures().recovering);
        assert_eq!(n.cluster_status().await.unwrap().group.recovery, RecoveryState::Done);
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

/// Restarts node `index` of `nodes` (memory storage: it comes back empty, same id and address).
async fn restart(nodes: &mut [Option<DistributedCache>], addrs: &[SocketAddr], index: usize) {
    if let Some(old) = nodes[index].take() {
        old.shutdown().await;
    }
    let listener = common::rebind(addrs[index]).await;
    let config = node_config(index as u64 + 1, addrs);
    nodes[index] = Some(DistributedCache::new_with_listener(config, listener).await.unwrap());
}

async fn start(n: usize) -> (Vec<Option<DistributedCache>>, Vec<SocketAddr>) {
    let bound = bind(n);
    let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes = Vec::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        let config = node_config(i as u64 + 1, &addrs);
        nodes.push(Some(DistributedCache::new_with_listener(config, listener).await.unwrap()));
    }
    (nodes, addrs)
}

/// The race that once panicked a restarted follower (the leader's first heartbeat carried a
/// commit index from the follower's previous life) and then lost acknowledged writes: followers
/// and the leader restarted again and again while a writer increments a counter through every
/// node. No node panics, every acknowledged increment is counted, and every restarted node
/// catches up and leaves its recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_memory_nodes_under_writes_loses_nothing_and_panics_nothing() {
    init_tracing();
    let panics = count_panics();
    let (mut nodes, addrs) = start(3).await;
    {
        let refs: Vec<&DistributedCache> = nodes.iter().flatten().collect();
        wait_leader(&refs, Duration::from_secs(5)).await;
    }
    let nodes_shared: Arc<tokio::sync::RwLock<Vec<Option<DistributedCache>>>> =
        Arc::new(tokio::sync::RwLock::new(std::mem::take(&mut nodes)));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (nodes, acknowledged, stop) = (nodes_shared.clone(), acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let guard = nodes.read().await;
                let Some(node) = guard[i % 3].as_ref() else { continue };
                let incr = crema::CacheCommand::IncrBy { key: "counter".into(), delta: 1 };
                match node.execute(incr).await {
                    Ok(crema::ApplyOutput::Int(_)) => {
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => panic!("INCR answered {other:?}"),
                    Err(_) => {} // unknown outcome or refused: not counted either way
                }
            }
        })
    };
    for round in 0..6 {
        let victim = {
            let guard = nodes_shared.read().await;
            let refs: Vec<&DistributedCache> = guard.iter().flatten().collect();
            let leader = wait_leader(&refs, Duration::from_secs(10)).await;
            // Followers mostly; the leader every third round.
            let leader_index = refs[leader].node_id() as usize - 1;
            if round % 3 == 2 {
                leader_index
            } else {
                (leader_index + 1 + round % 2) % 3
            }
        };
        let mut guard = nodes_shared.write().await;
        restart(&mut guard, &addrs, victim).await;
        drop(guard);
        wait_until(Duration::from_secs(20), "the restarted node recovered", || async {
            let guard = nodes_shared.read().await;
            let node = guard[victim].as_ref().unwrap();
            !node.raft_figures().recovering && node.leader_id().is_some()
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let guard = nodes_shared.read().await;
    let acked = acknowledged.load(Ordering::SeqCst);
    assert!(acked > 0, "some increments were acknowledged");
    for node in guard.iter().flatten() {
        let value = node.consistent_get(b"counter").await.unwrap().expect("the counter exists");
        let value: u64 = std::str::from_utf8(&value).unwrap().parse().unwrap();
        // Increments with an unknown outcome may have been applied too, never fewer.
        assert!(value >= acked, "node {}: counter {value} < {acked} acknowledged increments", node.node_id());
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a node panicked");
    for node in guard.iter().flatten() {
        node.shutdown().await;
    }
}

/// Two of three memory nodes restart at once while the third keeps the data: they cannot vote
/// for each other's empty logs, vote for the third, and catch up from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_restarted_catches_up_from_the_node_that_kept_the_data() {
    init_tracing();
    let (mut nodes, addrs) = start(3).await;
    let leader = {
        let refs: Vec<&DistributedCache> = nodes.iter().flatten().collect();
        wait_leader(&refs, Duration::from_secs(5)).await
    };
    for i in 0..100 {
        nodes[leader].as_ref().unwrap().put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    // Every node applied everything (the survivor must hold it all).
    wait_until(Duration::from_secs(5), "all applied", || async {
        nodes.iter().flatten().all(|n| n.storage().get(b"k99").is_some())
    })
    .await;
    let keeper = (leader + 1) % 3;
    let restarted: Vec<usize> = (0..3).filter(|i| *i != keeper).collect();
    for &i in &restarted {
        nodes[i].take().unwrap().shutdown().await;
    }
    for &i in &restarted {
        restart(&mut nodes, &addrs, i).await;
    }
    let refs: Vec<&DistributedCache> = nodes.iter().flatten().collect();
    let new_leader = wait_leader(&refs, Duration::from_secs(10)).await;
    assert_eq!(new_leader, keeper, "only the node that kept the data can be elected");
    for &i in &restarted {
        let node = nodes[i].as_ref().unwrap();
        wait_until(Duration::from_secs(10), "caught up", || async { node.storage().get(b"k99").is_some() })
            .await;
        for k in 0..100 {
            assert_eq!(node.get(format!("k{k}").as_bytes()).await, Some(format!("v{k}").into()));
        }
    }
    for n in nodes.iter().flatten() {
        n.shutdown().await;
    }
}

/// A memory node that restarts while another voter is down cannot tell whether the missing one
/// counted its lost vote: it waits (and says so), and the cluster has no leader, rather than
/// risk two leaders in one term. Once the missing node is back, everything resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_missing_a_voter_waits_until_it_answers() {
    init_tracing();
    let (mut nodes, addrs) = start(3).await;
    let leader = {
        let refs: Vec<&DistributedCache> = nodes.iter().flatten().collect();
        wait_leader(&refs, Duration::from_secs(5)).await
    };
    nodes[leader].as_ref().unwrap().put("k", "v").await.unwrap();
    let down = (leader + 1) % 3;
    let restarted = (leader + 2) % 3;
    nodes[down].take().unwrap().shutdown().await;
    restart(&mut nodes, &addrs, restarted).await;
    {
        let node = nodes[restarted].as_ref().unwrap();
        wait_until(Duration::from_secs(5), "waiting for the missing voter", || async {
            matches!(
                node.cluster_status().await.unwrap().group.recovery,
                RecoveryState::WaitingForPeers { ref heard, needed: 2 } if heard.len() == 1
            )
        })
        .await;
        assert!(node.leader_id().is_none() || node.leader_id() == Some(leader as u64 + 1));
    }
    restart(&mut nodes, &addrs, down).await;
    let refs: Vec<&DistributedCache> = nodes.iter().flatten().collect();
    wait_leader(&refs, Duration::from_secs(10)).await;
    let node = nodes[restarted].as_ref().unwrap();
    wait_until(Duration::from_secs(10), "the restarted node caught up", || async {
        node.get(b"k").await.is_some() && !node.raft_figures().recovering
    })
    .await;
    for n in nodes.iter().flatten() {
        n.shutdown().await;
    }
}

/// Two of three nodes are lost for good: the survivor cannot elect a leader (no quorum), until
/// the operator forces a new cluster on it. It keeps its data, leads alone, and a replacement
/// started empty with `join` is added back and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_of_a_lost_majority_forces_a_new_cluster_and_keeps_its_data() {
    init_tracing();
    let (mut nodes, addrs) = start(3).await;
    let leader = {
        let refs: Vec<&DistributedCache> = nodes.iter().flatten().collect();
        wait_leader(&refs, Duration::from_secs(5)).await
    };
    for i in 0..50 {
        nodes[leader].as_ref().unwrap().put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    let survivor = (leader + 1) % 3;
    wait_until(Duration::from_secs(5), "the survivor applied everything", || async {
        nodes[survivor].as_ref().unwrap().storage().get(b"k49").is_some()
    })
    .await;
    for i in (0..3).filter(|i| *i != survivor) {
        nodes[i].take().unwrap().shutdown().await;
    }
    let node = nodes[survivor].as_ref().unwrap();
    wait_until(Duration::from_secs(10), "no leader without a quorum", || async {
        node.leader_id().is_none()
    })
    .await;
    assert!(node.put("refused", "x").await.is_err(), "no write without a quorum");

    let removed = node.force_new_cluster().await.unwrap();
    let mut expected: Vec<u64> = (1..=3).filter(|id| *id != node.node_id()).collect();
    expected.sort_unstable();
    assert_eq!(removed, expected);
    wait_until(Duration::from_secs(5), "leads alone", || async { node.is_leader() }).await;
    assert_eq!(node.voters().await.unwrap(), vec![node.node_id()]);
    node.put("after", "1").await.unwrap();
    for i in 0..50 {
        assert_eq!(
            node.consistent_get(format!("k{i}").as_bytes()).await.unwrap(),
            Some(format!("v{i}").into())
        );
    }

    // A replacement for one lost node, started empty, joins and catches up.
    let back = (survivor + 1) % 3;
    let listener = common::rebind(addrs[back]).await;
    let config = node_config(back as u64 + 1, &addrs).with_join(true);
    let joined = DistributedCache::new_with_listener(config, listener).await.unwrap();
    node.add_peer(joined.node_id(), addrs[back]).await.unwrap();
    wait_until(Duration::from_secs(10), "the new member caught up", || async {
        joined.get(b"k49").await.is_some() && joined.get(b"after").await.is_some()
    })
    .await;
    node.put("with-two", "2").await.unwrap();
    joined.shutdown().await;
    node.shutdown().await;
}

/// A leader of a later term whose entries contradict what this replica committed: the group
/// went on without part of its history (a majority of the voters lost its state at once).
/// The replica is marked diverged and serves nothing; before, it stayed ready and answered
/// linearizable reads from the history the group had dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_committed_log_its_leader_contradicts_serves_nothing() {
    init_tracing();
    let node = lone_node_three().await;
    let addr = node.local_addr();
    // Both peers kept their state (the bootstrap log): node 3 recovers at once.
    let mut one = FakePeer::connect(addr, 1, at(1, 1, 3)).await;
    let _two = FakePeer::connect(addr, 2, at(1, 1, 3)).await;
    wait_until(Duration::from_secs(5), "recovered", || async { !node.raft_figures().recovering }).await;
    // Node 1 leads the next term and commits two entries on node 3 (which moved to a term of
    // its own choosing: nobody held more than the bootstrap log, a new history).
    let t = node.raft_figures().term + 1;
    one.send(&append(1, t, 3, 1, &[(4, t), (5, t)], 5)).await;
    wait_until(Duration::from_secs(5), "entries 4 and 5 committed", || async {
        node.raft_figures().commit_index == 5
    })
    .await;
    assert!(node.holds_shard(0) && node.raft_figures().diverged_shard.is_none());
    // A leader of a later term whose entries 4 and 5 are of another term.
    one.send(&append(1, t + 1, 3, 1, &[(4, t + 1), (5, t + 1)], 5)).await;
    wait_until(Duration::from_secs(5), "the replica marked diverged", || async {
        node.raft_figures().diverged_shard == Some(0)
    })
    .await;
    assert_eq!(node.raft_figures().diverged_shards, 1);
    assert!(!node.holds_shard(0), "it serves nothing");
    assert_eq!(node.shard_info()[0].state, crema::ShardState::Stopped, "and says so");
    assert_eq!(node.raft_figures().commit_index, 5, "and appended nothing of the contradicting leader");
    node.shutdown().await;
}

/// Without a cluster secret a process may claim a member's id. Found from outside: two forged
/// answers naming a log position nobody holds (index 10^15 at the group's real term) became the
/// floor of a restarted memory node, which then never voted again, and the group could not
/// elect once its leader died. A leader of the floor's term that commits an entry of its own
/// term settles the recovery: this node then holds everything committed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_floor_no_log_reaches_is_settled_by_the_leaders_own_commit() {
    init_tracing();
    let node = lone_node_three().await;
    let addr = node.local_addr();
    let forged = 1_000_000_000_000_000;
    let mut one = FakePeer::connect(addr, 1, at(5, 5, forged)).await;
    let _two = FakePeer::connect(addr, 2, at(5, 5, forged)).await;
    wait_until(Duration::from_secs(5), "the forged floor taken", || async {
        node.cluster_status().await.unwrap().group.recovery
            == RecoveryState::CatchingUp { last_term: 5, last_index: forged }
    })
    .await;
    // Node 1 leads term 5: entries up to index 5, the last of its own term, committed.
    one.send(&append(1, 5, 3, 1, &[(4, 4), (5, 5)], 4)).await;
    wait_until(Duration::from_secs(5), "entries appended", || async {
        node.raft_figures().commit_index == 4
    })
    .await;
    assert!(node.raft_figures().recovering, "index 4 is of an earlier term: not settled yet");
    one.send(&append(1, 5, 5, 5, &[], 5)).await;
    wait_until(Duration::from_secs(5), "recovered by the leader's own commit", || async {
        !node.raft_figures().recovering
    })
    .await;
    assert_eq!(node.cluster_status().await.unwrap().group.recovery, RecoveryState::Done);
    node.shutdown().await;
}

/// Found from outside: two of three memory nodes restarted at once; each took a heartbeat the
/// old leader had queued for it before it stepped down (it had lost its quorum) for a live
/// leader, and, recovering, did not tick: inside that leader's lease for good, it refused the
/// pre-votes of the survivor (the only holder of the data), and no one led again. A leader
/// not heard from for an election timeout loses its lease now, ticks or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovering_node_stops_deferring_to_a_leader_it_no_longer_hears() {
    init_tracing();
    let node = lone_node_three().await;
    let addr = node.local_addr();
    // Node 1 kept the data; node 2 restarted too.
    let mut one = FakePeer::connect(addr, 1, at(5, 5, 40)).await;
    let _two = FakePeer::connect(addr, 2, Position { recovering: true, ..at(0, 0, 0) }).await;
    wait_until(Duration::from_secs(5), "the floor learned", || async {
        node.cluster_status().await.unwrap().group.recovery
            == RecoveryState::CatchingUp { last_term: 5, last_index: 40 }
    })
    .await;
    // The heartbeat node 1 sent while it led, delivered late: node 1 is taken for the leader.
    let mut heartbeat = raft_msg(MessageType::MsgHeartbeat, 1, 3, 5);
    heartbeat.commit = 0;
    one.send(&heartbeat).await;
    wait_until(Duration::from_secs(5), "node 1 named leader", || async { node.shard_leader(0) == Some(1) })
        .await;
    // Node 1 stepped down and is silent: after two election timeouts (50 ticks of 100 ms each)
    // this node names no leader, its lease long gone.
    wait_until(Duration::from_secs(20), "the silent leader forgotten", || async {
        node.shard_leader(0).is_none()
    })
    .await;
    // Node 1 asks for pre-votes with its log (the best one reported).
    let mut ask = raft_msg(MessageType::MsgRequestPreVote, 1, 3, 6);
    (ask.log_term, ask.index) = (5, 40);
    one.send(&ask).await;
    let granted = loop {
        let m = one.next_raft().await;
        if m.get_msg_type() == MessageType::MsgRequestPreVoteResponse {
            break m;
        }
    };
    assert!(!granted.reject, "the pre-vote of the holder of the best log is granted");
    node.shutdown().await;
}
