//! Group commit seen from outside: writes that reach the leader together are proposed as one
//! batch, so they share one log append and one append message per follower instead of one of
//! each per write.
//!
//! The leader's group loop is held still (`crema::faults`, pause) while the writes queue up in
//! its mailbox; once it runs again it takes them all in one pass. And a leader with two batches
//! uncommitted holds the writes that come meanwhile for one batch after them (the followers'
//! answers are held back by a delay on their links). Linearizable reads are batched the same
//! way: a node with a read-index round in flight holds the reads asked meanwhile for one round.
#![cfg(feature = "fault-injection")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cluster_with, init_tracing, wait_leader, wait_until};
use crema::faults::{Faults, LinkFaults};
use crema::{CacheConfig, DistributedCache, RaftConfig};

const WRITES: u64 = 100;

/// Three nodes on `faults` with 20 ms ticks and `election_tick` of them, and their leader once
/// it has applied a first write.
async fn three_nodes(
    faults: &Arc<Faults>,
    election_tick: usize,
) -> (Vec<Arc<DistributedCache>>, Arc<DistributedCache>) {
    three_nodes_with(faults, election_tick, |c| c).await
}

/// As `three_nodes`, with `tweak` applied to each node's config.
async fn three_nodes_with(
    faults: &Arc<Faults>,
    election_tick: usize,
    tweak: impl Fn(CacheConfig) -> CacheConfig,
) -> (Vec<Arc<DistributedCache>>, Arc<DistributedCache>) {
    init_tracing();
    let raft = RaftConfig { tick_interval_ms: 20, election_tick, heartbeat_tick: 3, ..Default::default() };
    let nodes: Vec<Arc<DistributedCache>> =
        cluster_with(3, |c| tweak(c.with_faults(faults.clone()).with_raft_config(raft.clone())))
            .await
            .into_iter()
            .map(Arc::new)
            .collect();
    let refs: Vec<&DistributedCache> = nodes.iter().map(|n| n.as_ref()).collect();
    let leader = nodes[wait_leader(&refs, Duration::from_secs(10)).await].clone();
    leader.put("warm-up", "1").await.expect("a first write");
    (nodes, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_together_share_one_proposal_and_one_append_per_follower() {
    let faults = Arc::new(Faults::new(1));
    // An election timeout of 2-4 s: the leader, held for a moment, is not replaced meanwhile.
    let (nodes, leader) = three_nodes(&faults, 100).await;

    let before = leader.raft_figures();
    faults.pause(leader.node_id());
    // A loop waiting for its mailbox when paused still takes the first write that comes, with
    // whatever else is queued by then, before it stops: at most one batch of its own.
    let writers: Vec<_> = (0..WRITES)
        .map(|i| {
            let leader = leader.clone();
            tokio::spawn(async move { leader.put(format!("key-{i}"), format!("value-{i}")).await })
        })
        .collect();
    wait_until(Duration::from_secs(5), "every write queued at the paused leader", || async {
        let now = leader.raft_figures();
        now.queued_requests as u64 + (now.proposed_entries - before.proposed_entries) >= WRITES
    })
    .await;
    faults.resume(leader.node_id());
    for writer in writers {
        writer.await.expect("writer task").expect("write acknowledged");
    }

    let after = leader.raft_figures();
    let batches = after.proposal_batches - before.proposal_batches;
    let entries = after.proposed_entries - before.proposed_entries;
    let messages = after.messages_sent - before.messages_sent;
    assert_eq!(entries, WRITES, "one entry per write");
    assert!(batches <= 2, "{WRITES} queued writes went into {batches} proposal batches");
    // One append per follower for the batch, one commit update each, a heartbeat round or two;
    // proposing one by one sent at least one append per write to each follower (200).
    assert!(messages < 30, "{messages} raft messages sent for {WRITES} queued writes");
    for i in 0..WRITES {
        let value = leader.get(format!("key-{i}").as_bytes()).await;
        assert_eq!(value.as_deref(), Some(format!("value-{i}").as_bytes()), "key-{i} applied");
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_arriving_while_two_batches_are_uncommitted_wait_and_go_as_one() {
    let faults = Arc::new(Faults::new(2));
    // An election timeout of 5-10 s: answers held back for 1.5 s leave the leader in place.
    let (nodes, leader) = three_nodes(&faults, 250).await;

    let before = leader.raft_figures();
    let slow = LinkFaults { delay: Duration::from_millis(1500), ..Default::default() };
    for node in nodes.iter().filter(|n| n.node_id() != leader.node_id()) {
        faults.set_link(node.node_id(), leader.node_id(), slow);
    }
    let spawn_put = |key: String| {
        let leader = leader.clone();
        tokio::spawn(async move { leader.put(key, "v").await })
    };
    // Two writes, one after the other: two batches in flight, neither answered yet.
    let mut writers = Vec::new();
    for (i, key) in ["first", "second"].into_iter().enumerate() {
        writers.push(spawn_put(key.to_string()));
        wait_until(Duration::from_secs(5), "the write proposed", || async {
            leader.raft_figures().proposed_entries - before.proposed_entries == i as u64 + 1
        })
        .await;
    }
    const LATER: usize = 50;
    writers.extend((0..LATER).map(|i| spawn_put(format!("later-{i}"))));
    wait_until(Duration::from_secs(5), "the later writes held by the leader", || async {
        leader.raft_figures().held_writes == LATER
    })
    .await;
    let held = leader.raft_figures();
    assert_eq!(held.proposed_entries - before.proposed_entries, 2, "nothing proposed past two batches");
    assert_eq!(held.commit_index, before.commit_index, "both batches were still uncommitted");

    faults.heal();
    for writer in writers {
        writer.await.expect("writer task").expect("write acknowledged");
    }
    let after = leader.raft_figures();
    assert_eq!(after.proposed_entries - before.proposed_entries, LATER as u64 + 2);
    // The 50 held writes went out together once a batch committed (proposed one pass at a time
    // as they arrived, they made many more).
    assert!(
        after.proposal_batches - before.proposal_batches <= 3,
        "{} batches for two writes and {LATER} held ones",
        after.proposal_batches - before.proposal_batches
    );
    assert_eq!(after.held_writes, 0);
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_asked_while_a_read_round_is_in_flight_wait_and_share_the_next() {
    let faults = Arc::new(Faults::new(3));
    // An election timeout of 5-10 s (and a read retry after 2.5 s): a 1.5 s delay changes neither.
    let (nodes, leader) = three_nodes(&faults, 250).await;
    let follower = nodes.iter().find(|n| n.node_id() != leader.node_id()).expect("a follower").clone();
    assert_eq!(follower.consistent_get(b"warm-up").await.unwrap().as_deref(), Some(&b"1"[..]));

    let (before, leader_before) = (follower.raft_figures(), leader.raft_figures());
    // The leader's answers to this follower come 1.5 s late.
    let slow = LinkFaults { delay: Duration::from_millis(1500), ..Default::default() };
    faults.set_link(leader.node_id(), follower.node_id(), slow);
    let spawn_read = || {
        let follower = follower.clone();
        tokio::spawn(async move { follower.consistent_get(b"warm-up").await })
    };
    let mut readers = vec![spawn_read()];
    wait_until(Duration::from_secs(5), "the first read's ask sent", || async {
        follower.raft_figures().node_read_asks - before.node_read_asks == 1
    })
    .await;
    const LATER: usize = 50;
    readers.extend((0..LATER).map(|_| spawn_read()));
    wait_until(Duration::from_secs(5), "the later reads held by the follower", || async {
        follower.raft_figures().held_reads == LATER
    })
    .await;
    let asks = follower.raft_figures().node_read_asks - before.node_read_asks;
    assert_eq!(asks, 1, "one ask in flight to the leader, no more");

    faults.heal();
    for reader in readers {
        let value = reader.await.expect("reader task").expect("linearizable read answered");
        assert_eq!(value.as_deref(), Some(&b"1"[..]));
    }
    let after = follower.raft_figures();
    // The 50 held reads shared one ask once the first was answered (started one at a time as
    // they arrived, they made many). The leader and its asker are two of three voters: the
    // leader answered at once, with no round, and no group had to start a round of its own.
    assert_eq!(after.node_read_asks - before.node_read_asks, 2, "asks for one read and {LATER} held ones");
    assert_eq!(leader.raft_figures().node_read_rounds, leader_before.node_read_rounds);
    assert_eq!(after.read_rounds, before.read_rounds, "no read went through its group");
    assert_eq!(leader.raft_figures().read_rounds, leader_before.read_rounds);
    assert_eq!(after.held_reads, 0);
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Durable storage: a write is acknowledged only once a majority of the nodes has it on disk,
/// and a node's loop does not wait for its disk meanwhile. Two of the three disks are slowed
/// by a second: whichever majority acknowledges the write includes one of them. While the
/// write is out, a linearizable read on the leader (a heartbeat round, no disk) is answered.
#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_write_waits_for_a_majority_of_disks_and_the_loop_does_not() {
    const SLOW: Duration = Duration::from_secs(1);
    let faults = Arc::new(Faults::new(2));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (nodes, leader) = three_nodes_with(&faults, 100, |c| {
        let dir = dirs[c.node_id as usize - 1].path().to_owned();
        c.with_raft_storage_type(crema::RaftStorageType::RocksDb)
            .with_checkpoint_config(crema::CheckpointConfig::new(dir.join("checkpoints")).with_interval(None))
            .with_data_dir(dir)
    })
    .await;
    let slow_follower = nodes.iter().find(|n| n.node_id() != leader.node_id()).unwrap().node_id();
    faults.slow_disk(leader.node_id(), SLOW);
    faults.slow_disk(slow_follower, SLOW);

    let proposed = leader.raft_figures().proposed_entries;
    let started = tokio::time::Instant::now();
    let write = {
        let leader = leader.clone();
        tokio::spawn(async move { leader.put("durable", "yes").await })
    };
    wait_until(Duration::from_secs(5), "the write is proposed", || async {
        leader.raft_figures().proposed_entries > proposed
    })
    .await;
    assert_eq!(leader.consistent_get(b"warm-up").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert!(
        !write.is_finished(),
        "the write was acknowledged before a read on the leader was answered: before a majority \
         of disks could have it, or the leader's loop waited for its disk"
    );
    write.await.unwrap().expect("the write is acknowledged");
    assert!(
        started.elapsed() >= SLOW,
        "acknowledged after {:?}, before a majority of disks could have it",
        started.elapsed()
    );
    faults.slow_disk(leader.node_id(), Duration::ZERO);
    faults.slow_disk(slow_follower, Duration::ZERO);
    for node in &nodes {
        assert_eq!(node.consistent_get(b"durable").await.unwrap().as_deref(), Some(&b"yes"[..]));
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

/// An idle leader tells its followers each commit with a notice they do not answer: a follower
/// applies every write at once (not at the next heartbeat, seconds away here), and sends one
/// message per write (its append answer), where the empty append that used to carry the commit
/// drew a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_leader_tells_the_commit_with_a_notice_nobody_answers() {
    init_tracing();
    // Heartbeats every 4.8 s, elections after 5-10 s: none happens while the writes are told.
    let raft =
        RaftConfig { tick_interval_ms: 20, election_tick: 250, heartbeat_tick: 240, ..Default::default() };
    let nodes: Vec<Arc<DistributedCache>> =
        cluster_with(3, |c| c.with_raft_config(raft.clone())).await.into_iter().map(Arc::new).collect();
    let refs: Vec<&DistributedCache> = nodes.iter().map(|n| n.as_ref()).collect();
    let leader = nodes[wait_leader(&refs, Duration::from_secs(15)).await].clone();
    leader.put("warm-up", "1").await.expect("a first write");
    let follower = nodes.iter().find(|n| n.node_id() != leader.node_id()).expect("a follower").clone();
    wait_until(Duration::from_secs(10), "the follower applied the warm-up", || async {
        follower.get(b"warm-up").await.is_some()
    })
    .await;

    let before = follower.raft_figures();
    const WRITES: u64 = 3;
    for i in 0..WRITES {
        let key = format!("told-{i}");
        leader.put(key.clone(), "v").await.expect("write acknowledged");
        // Well inside the heartbeat interval: only a notice can have told the commit.
        wait_until(Duration::from_secs(3), "the follower applied the write", || async {
            follower.get(key.as_bytes()).await.is_some()
        })
        .await;
    }
    let sent = follower.raft_figures().messages_sent - before.messages_sent;
    // One append answer per write, and at most one heartbeat answer if a beat fell in between.
    assert!(sent <= WRITES + 1, "the follower sent {sent} messages for {WRITES} writes");
    for node in &nodes {
        node.shutdown().await;
    }
}
