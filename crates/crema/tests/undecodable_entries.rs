//! Apply is infallible: a committed entry that does not decode (garbage, or a command version
//! this build does not know) is applied as a counted no-op on every node, also when a restarted
//! node replays it from disk. Once, one such entry panicked every node at apply, and again at
//! every restart.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use crema::{DistributedCache, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_committed_entry_is_a_counted_no_op_on_every_node() {
    init_tracing();
    let panics = count_panics();
    let nodes = cluster(3).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    nodes[leader].put("before", "1").await.unwrap();
    let garbage = Bytes::from_static(&[0xff, 0x00, 0x13, 0x37]);
    let unknown_version = Bytes::from_static(&[200, 1, 2, 3]);
    for bytes in [garbage, unknown_version] {
        let result = nodes[leader].propose_unchecked(bytes).await;
        assert!(matches!(result, Err(Error::InvalidCommand(_))), "{result:?}");
    }
    nodes[leader].put("after", "2").await.unwrap();
    wait_until(Duration::from_secs(5), "every node applied both as no-ops", || async {
        nodes.iter().all(|n| n.raft_figures().apply_rejected == 2 && n.storage().get(b"after").is_some())
    })
    .await;
    // A follower does not forward what does not decode: it never reaches the log.
    let follower = &nodes[(leader + 1) % 3];
    let result = follower.propose_unchecked(Bytes::from_static(&[9, 9, 9])).await;
    assert!(matches!(result, Err(Error::InvalidCommand(_))), "{result:?}");
    for n in &nodes {
        assert_eq!(n.raft_figures().apply_rejected, 2);
        assert_eq!(n.consistent_get(b"before").await.unwrap().as_deref(), Some(&b"1"[..]));
    }
    assert_eq!(panics.load(std::sync::atomic::Ordering::SeqCst), 0);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_durable_node_replays_an_undecodable_entry_as_a_no_op() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        crema::CacheConfig::new(1, "127.0.0.1:0".parse().unwrap())
            .with_raft_storage_type(crema::RaftStorageType::RocksDb)
            .with_data_dir(dir.path())
            .with_raft_config(fast_raft())
    };
    let start = || async {
        DistributedCache::new_with_listener(config(), std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .await
            .unwrap()
    };
    let node = start().await;
    wait_until(Duration::from_secs(5), "leads", || async { node.is_leader() }).await;
    node.put("a", "1").await.unwrap();
    let result = node.propose_unchecked(Bytes::from_static(&[0xff, 0xfe])).await;
    assert!(matches!(result, Err(Error::InvalidCommand(_))), "{result:?}");
    node.put("b", "2").await.unwrap();
    node.shutdown().await;
    let node = start().await;
    wait_until(Duration::from_secs(5), "replayed", || async { node.storage().get(b"b").is_some() }).await;
    assert_eq!(node.raft_figures().apply_rejected, 1, "replayed as a no-op again");
    assert_eq!(node.consistent_get(b"a").await.unwrap().as_deref(), Some(&b"1"[..]));
    node.shutdown().await;
}
