//! The robustness suite: Jepsen-style scenarios against a real in-process cluster (TCP on
//! 127.0.0.1), faults injected into the real message path through `crema::faults`, every
//! history checked for linearizability per key by `crema-check`.
//!
//! Each scenario is a test with a fixed default seed. `CREMA_NEMESIS_SEED` picks another seed
//! and `CREMA_NEMESIS_DURATION` (`90s`, `10m`, or plain seconds) another length of the fault
//! phase; the long run is documented in docs/reliability.md. A failure prints the seed.
//!
//! What every scenario asserts, after its faults stop:
//! - the whole history (with a quiet final read of every key on every node) is linearizable: a
//!   stale read, a lost acknowledged write, or a write that took effect after being refused all
//!   show up as a violation; "gave up" fails too;
//! - the cluster commits a write again within 5 s of the faults stopping;
//! - during a clean majority/minority partition, no node of the minority acknowledges a write
//!   invoked after the partition began.
//!
//! The mutant tests plant a known bug (`crema::faults::Mutant`) and assert that the same
//! scenario then fails (on one of a few seeds: see `MUTANT_ATTEMPTS`), so the suite cannot be
//! weakened without CI noticing.
#![cfg(feature = "fault-injection")]

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod nemeses;
mod scenario;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{count_panics, fast_raft, init_tracing};
use crema::faults::{Faults, LinkFaults, Mutant};
use crema::{
    ApplyOutput, CacheCommand, CacheConfig, DistributedCache, Error, ExpiryUpdate, NodeId, SetCondition,
};
use crema_check::history::Recorder;
use crema_check::linearizability::{check_with, Input, Model, Output, Verdict};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use harness::*;
use nemeses::*;
use scenario::*;

// ----- the scenarios -----
//
// Each `run_*` builds its cluster, plants `mutant` if given, and runs; the `scenario_*` tests
// assert it passes, the `mutant_*` tests that the planted bug is caught.

async fn start(
    size: usize,
    voters: usize,
    storage: Storage,
    s: &Scenario,
    mutant: Option<Mutant>,
    tweak: Tweak,
) -> Arc<Cluster> {
    let cluster = Cluster::start(size, voters, storage, s.seed, tweak).await;
    if let Some(mutant) = mutant {
        cluster.faults.plant(mutant);
    }
    cluster
}

async fn run_partitions(s: &Scenario, mutant: Option<Mutant>) -> Report {
    let cluster = start(5, 5, Storage::Memory, s, mutant, Box::new(|c| c)).await;
    run_scenario(s, cluster, partitions).await
}

async fn run_kill_leader(s: &Scenario, storage: Storage, mutant: Option<Mutant>) -> Report {
    let cluster = start(3, 3, storage, s, mutant, Box::new(|c| c)).await;
    run_scenario(s, cluster, kill_leader).await
}

async fn run_lossy_links(s: &Scenario, mutant: Option<Mutant>) -> Report {
    let cluster = start(3, 3, Storage::Memory, s, mutant, Box::new(|c| c)).await;
    wait_for_leader(&cluster, Duration::from_secs(10)).await;
    cluster.faults.set_every_link(LinkFaults {
        drop: 0.2,
        duplicate: 0.1,
        jitter: Duration::from_millis(50),
        ..Default::default()
    });
    run_scenario(s, cluster, flaky_links).await
}

async fn run_paused_leader(s: &Scenario, mutant: Option<Mutant>) -> Report {
    let cluster = start(3, 3, Storage::Memory, s, mutant, Box::new(|c| c)).await;
    run_scenario(s, cluster, pause_leader).await
}

async fn run_membership(s: &Scenario, mutant: Option<Mutant>) -> Report {
    let cluster = start(5, 3, Storage::Memory, s, mutant, Box::new(|c| c)).await;
    run_scenario(s, cluster, membership).await
}

async fn run_snapshot_catch_up(s: &Scenario, mutant: Option<Mutant>) -> Report {
    let small_log = |c: CacheConfig| {
        c.with_raft_config(crema::RaftConfig { max_log_entries: SNAPSHOT_LOG, ..fast_raft() })
    };
    let cluster = start(3, 3, Storage::Memory, s, mutant, Box::new(small_log)).await;
    run_scenario(s, cluster, snapshot_catch_up).await
}

/// A cache of 32 entries under 100 keys at a time: the leader's policy evicts all the while,
/// through the log, under partitions.
async fn run_eviction(s: &Scenario, mutant: Option<Mutant>) -> Report {
    let cluster = start(3, 3, Storage::Memory, s, mutant, Box::new(|c| c.with_max_capacity(32))).await;
    run_scenario(s, cluster, |c, n, w, r, d| async move {
        partitions_of(c, n, w, r, d, &[1]).await;
    })
    .await
}

fn eviction_scenario(name: &'static str, seed: u64) -> Scenario {
    let mut s = Scenario::new(name, seed);
    s.keys = Keys::Spread { width: 100 };
    s.model = Model::EvictingRegister;
    s.cas = false;
    s.converge = true;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_1_random_partitions() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("scenario_1_random_partitions", 101);
    assert_passed(&s, &run_partitions(&s, None).await);
}

#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_2_kill_the_leader_rocksdb() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("scenario_2_kill_the_leader_rocksdb", 102);
    assert_passed(&s, &run_kill_leader(&s, Storage::RocksDb, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_2_kill_the_leader_memory() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("scenario_2_kill_the_leader_memory", 112);
    assert_passed(&s, &run_kill_leader(&s, Storage::Memory, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_3_lossy_duplicating_reordering_links() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("scenario_3_lossy_duplicating_reordering_links", 103);
    assert_passed(&s, &run_lossy_links(&s, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_4_paused_leader() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("scenario_4_paused_leader", 104);
    assert_passed(&s, &run_paused_leader(&s, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_5_membership_changes_under_partitions() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("scenario_5_membership_changes_under_partitions", 105);
    assert_passed(&s, &run_membership(&s, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_6_follower_caught_up_by_snapshot() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("scenario_6_follower_caught_up_by_snapshot", 106);
    assert_passed(&s, &run_snapshot_catch_up(&s, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_7_eviction_never_serves_a_stale_hit() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = eviction_scenario("scenario_7_eviction_never_serves_a_stale_hit", 107);
    assert_passed(&s, &run_eviction(&s, None).await);
}

/// Found by this suite: while each node evicted on its own, a conditional write (`SET NX`, and
/// likewise INCR, APPEND, ...) on a key one node had evicted and another kept was decided
/// differently on the two, so their states diverged. Eviction now goes through the log; the
/// nodes must end identical and every swap must be explained by the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_7_conditional_writes_under_eviction() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut s = eviction_scenario("scenario_7_conditional_writes_under_eviction", 107);
    s.cas = true;
    assert_passed(&s, &run_eviction(&s, None).await);
}

/// Found by the 10-minute run of scenario 3 (seed 103): a forward frame delivered twice was
/// proposed twice, so a `SET NX` answered "not written" for the copy that found its own value.
/// With every frame sent twice, each increment through a follower must count once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forward_delivered_twice_is_applied_once() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("a_forward_delivered_twice_is_applied_once", 1);
    let cluster = start(3, 3, Storage::Memory, &s, None, Box::new(|c| c)).await;
    wait_for_leader(&cluster, Duration::from_secs(10)).await;
    let leader = cluster.leader().expect("a leader");
    let follower = cluster.node(cluster.ids().into_iter().find(|i| *i != leader).unwrap()).unwrap();
    cluster.faults.set_every_link(LinkFaults { duplicate: 1.0, ..Default::default() });
    for _ in 0..200 {
        let output = follower.execute(CacheCommand::IncrBy { key: Bytes::from("counter"), delta: 1 }).await;
        assert!(matches!(output, Ok(ApplyOutput::Int(_))), "{output:?}");
    }
    let value = cluster.node(leader).unwrap().consistent_get(b"counter").await.unwrap();
    assert_eq!(value, Some(Bytes::from("200")), "every increment applied exactly once");
    assert!(cluster.faults.counts().duplicated >= 400, "forwards and their replies were sent twice");
    cluster.shutdown().await;
}

// ----- sharded: the same checks against a Multi-Raft cluster -----

/// Shards in the sharded scenarios: enough that every node leads some and follows others.
const SHARDS: u32 = 8;

/// Multi-Raft with `SHARDS` shards; the configured peers are the discovery.
fn sharded(c: CacheConfig) -> CacheConfig {
    common::discovered(c).with_multiraft_config(crema::MultiRaftCacheConfig {
        enabled: true,
        num_shards: SHARDS,
        ..Default::default()
    })
}

/// Runs `nemesis` against `size` sharded nodes, memory storage, each shard on `replicas` of
/// them (all voters of it). The minority check (no node cut off with a minority acknowledges a
/// write) holds only when every shard is on every node (`replicas == size`): with fewer, two
/// nodes of five can hold two of a shard's three replicas and rightly commit its writes.
async fn run_sharded<F, Fut>(
    s: &Scenario,
    size: usize,
    replicas: usize,
    mutant: Option<Mutant>,
    nemesis: F,
) -> Report
where
    F: FnOnce(Arc<Cluster>, Arc<Nemesis>, Arc<Workload>, StdRng, Instant) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let tweak = Box::new(move |c| sharded(c).with_replica_factor(replicas));
    let cluster = start(size, size, Storage::Memory, s, mutant, tweak).await;
    run_scenario(s, cluster, nemesis).await
}

/// Keys spread over many shards at once (a client's operations land on different groups).
fn sharded_scenario(name: &'static str, seed: u64) -> Scenario {
    let mut s = Scenario::new(name, seed);
    s.keys = Keys::Spread { width: 24 };
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_8_sharded_random_partitions() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = sharded_scenario("scenario_8_sharded_random_partitions", 108);
    assert_passed(&s, &run_sharded(&s, 5, 5, None, partitions).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_8_sharded_kill_any_node_memory() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = sharded_scenario("scenario_8_sharded_kill_any_node_memory", 109);
    assert_passed(&s, &run_sharded(&s, 3, 3, None, kill_any_node).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_8_sharded_pause_any_node() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = sharded_scenario("scenario_8_sharded_pause_any_node", 110);
    assert_passed(&s, &run_sharded(&s, 3, 3, None, pause_any_node).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_8_sharded_replicas_move_under_load() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = sharded_scenario("scenario_8_sharded_replicas_move_under_load", 112);
    let report = run_sharded(&s, 5, 3, None, churn_shards).await;
    assert_passed(&s, &report);
    assert!(report.faults >= 3, "replicas moved {} times", report.faults);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutant_8_ack_before_commit_is_caught_in_a_sharded_cluster() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = sharded_scenario("mutant_8_ack_before_commit_is_caught_in_a_sharded_cluster", 111);
    assert_caught(s, async |s| run_sharded(s, 5, 5, Some(Mutant::AckBeforeCommit), partitions).await).await;
}

// ----- mutants: each scenario, with a bug planted, must fail -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutant_1_ack_before_commit_is_caught_under_partitions() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("mutant_1_ack_before_commit", 201);
    assert_caught(s, async |s| run_partitions(s, Some(Mutant::AckBeforeCommit)).await).await;
}

#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutant_2_ack_before_commit_is_caught_when_the_leader_is_killed() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("mutant_2_ack_before_commit", 202);
    assert_caught(s, async |s| run_kill_leader(s, Storage::RocksDb, Some(Mutant::AckBeforeCommit)).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutant_3_ack_before_commit_is_caught_on_lossy_links() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("mutant_3_ack_before_commit", 203);
    assert_caught(s, async |s| run_lossy_links(s, Some(Mutant::AckBeforeCommit)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutant_4_stale_leader_reads_are_caught_when_the_leader_pauses() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("mutant_4_stale_leader_reads", 204);
    assert_caught(s, async |s| run_paused_leader(s, Some(Mutant::StaleLeaderReads)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutant_5_stale_leader_reads_are_caught_under_membership_changes() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("mutant_5_stale_leader_reads", 205);
    assert_caught(s, async |s| run_membership(s, Some(Mutant::StaleLeaderReads)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutant_6_ack_before_commit_is_caught_during_snapshot_catch_up() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = Scenario::new("mutant_6_ack_before_commit", 206);
    assert_caught(s, async |s| run_snapshot_catch_up(s, Some(Mutant::AckBeforeCommit)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutant_7_ack_before_commit_is_caught_under_eviction() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let s = eviction_scenario("mutant_7_ack_before_commit", 207);
    assert_caught(s, async |s| run_eviction(s, Some(Mutant::AckBeforeCommit)).await).await;
}
