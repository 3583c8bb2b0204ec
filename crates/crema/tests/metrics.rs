//! The seed's metrics API on real nodes: `cache.metrics()` names the cache's, the Raft groups',
//! the shards' and the discovery's figures as the seed lists them, counts every write through
//! the API, and carries an application's own metrics next to them.

mod common;

use std::time::Duration;

use common::{sharded_cluster, wait_until};
use crema::metrics::{Counter, Gauge, MetricsRegistry};

const SHARDS: u32 = 4;

fn shard(metrics: &MetricsRegistry, name: &str, shard: u32) -> f64 {
    metrics
        .value_with(name, &format!("shard=\"{shard}\""))
        .unwrap_or_else(|| panic!("{name} of shard {shard}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_names_what_the_seed_lists_and_counts_every_write() {
    common::init_tracing();
    let nodes = sharded_cluster(3, SHARDS).await;
    let before = nodes[0].metrics();
    assert_eq!(before.value_with("crema_raft_proposals_total", "result=\"ok\""), Some(0.0));

    for i in 0..40 {
        nodes[0].put(format!("key:{i}"), format!("v{i}")).await.unwrap();
    }
    let too_long = vec![b'k'; nodes[0].config().max_key_bytes + 1];
    assert!(nodes[0].put(too_long, "v").await.is_err());
    for i in 0..40 {
        assert!(nodes[1].consistent_get(format!("key:{i}").as_bytes()).await.unwrap().is_some());
    }
    assert!(nodes[1].get(b"missing").await.is_none());

    let one = nodes[0].metrics();
    assert_eq!(one.value_with("crema_raft_proposals_total", "result=\"ok\""), Some(40.0));
    assert_eq!(one.value_with("crema_raft_proposals_total", "result=\"error\""), Some(1.0));
    assert_eq!(one.value("crema_raft_proposal_latency_seconds_count"), Some(40.0));
    // Writes through node 1 count there only.
    assert_eq!(nodes[1].metrics().value_with("crema_raft_proposals_total", "result=\"ok\""), Some(0.0));

    for node in &nodes {
        // Every write applied everywhere (the last put answered once node 1 applied it).
        wait_until(Duration::from_secs(10), "all 40 entries on the node", || async {
            node.metrics().value("crema_cache_entries") == Some(40.0)
        })
        .await;
        let metrics = node.metrics();
        let per_shard: f64 = (0..SHARDS).map(|s| shard(&metrics, "crema_shard_entries", s)).sum();
        assert_eq!(per_shard, 40.0, "node {}", node.node_id());
        let leads = (0..SHARDS).filter(|s| node.shard_leader(*s) == Some(node.node_id())).count();
        let said: f64 = (0..SHARDS).map(|s| shard(&metrics, "crema_shard_is_leader", s)).sum();
        assert_eq!(said, leads as f64, "node {}", node.node_id());
        for s in 0..SHARDS {
            assert!(
                shard(&metrics, "crema_shard_leader_changes_total", s) >= 1.0,
                "shard {s} elected a leader"
            );
        }
        assert!(metrics.value("crema_raft_leader_changes_total").is_some_and(|v| v >= 1.0));
        assert!(metrics.value("crema_cache_size_bytes").is_some_and(|v| v > 0.0));
        assert!(metrics.render().contains("# TYPE crema_migration_duration_seconds histogram"));
        wait_until(Duration::from_secs(10), "every node alive in the discovery", || async {
            node.metrics().value_with("crema_memberlist_nodes", "state=\"alive\"") == Some(3.0)
        })
        .await;
    }
    let reads = nodes[1].metrics();
    assert!(reads.value("crema_cache_hits_total").is_some_and(|v| v >= 40.0));
    assert!(reads.value("crema_cache_misses_total").is_some_and(|v| v >= 1.0));

    // An application's own metrics, next to the cache's in one exposition.
    let mut metrics = nodes[2].metrics();
    let logins = Counter::<u64>::default();
    let sessions = Gauge::<i64>::default();
    metrics.register("app_logins", "Logins served", logins.clone());
    metrics.register("app_sessions", "Sessions open", sessions.clone());
    logins.inc_by(2);
    sessions.set(7);
    assert_eq!(metrics.value("crema_app_logins_total"), Some(2.0));
    assert_eq!(metrics.value("crema_app_sessions"), Some(7.0));
    let text = metrics.render();
    assert!(text.ends_with("# EOF\n"), "one exposition, ended once");
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(text.contains("crema_cache_entries 40"));

    for node in nodes {
        node.shutdown().await;
    }
}

/// The seed's `Shard`: each replica of the node, with its slot range, its leader and its own
/// local cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_local_shard_is_a_handle_on_its_own_replica() {
    let nodes = sharded_cluster(3, SHARDS).await;
    for i in 0..40 {
        nodes[0].put(format!("key:{i}"), format!("v{i}")).await.unwrap();
    }
    for i in 0..40 {
        // Linearizable: node 2 has applied the key's write once it answers.
        assert!(nodes[1].consistent_get(format!("key:{i}").as_bytes()).await.unwrap().is_some());
    }
    let coordinator = nodes[1].multiraft_coordinator().expect("sharded");
    let shards: Vec<crema::Shard> = coordinator.local_shards();
    assert_eq!(
        shards.iter().map(crema::Shard::shard_id).collect::<Vec<_>>(),
        (0..SHARDS).collect::<Vec<_>>()
    );
    let mut held = 0;
    for shard in &shards {
        assert_eq!(shard.leader(), nodes[1].shard_leader(shard.shard_id()));
        assert_eq!(shard.is_leader(), shard.leader() == Some(2));
        assert_eq!(shard.members(), vec![1, 2, 3]);
        held += shard.entry_count();
        for i in 0..40 {
            let key = format!("key:{i}");
            let mine = coordinator.shard_for_key(key.as_bytes()) == shard.shard_id();
            assert_eq!(shard.owns(key.as_bytes()), mine, "{key}");
            assert_eq!(shard.get(key.as_bytes()).is_some(), mine, "{key} in shard {}", shard.shard_id());
        }
    }
    assert_eq!(held, 40);
    let first = coordinator.shard(0).expect("every node holds shard 0");
    assert_eq!(first.range().first_slot(), 0);
    assert!(coordinator.shard(SHARDS).is_none());
    for node in nodes {
        node.shutdown().await;
    }
    assert!(first.is_stopped(), "a handle outlives its node and says so");
}
