//! The group loop driven in-process: 64 concurrent writers propose `SET` commands (16-byte
//! keys, 100-byte values, 100,000 keys) straight to the leaders of N Raft groups, each key
//! routed to its group by `ShardRouter` (the hash slot's range). Each proposal is answered once
//! its group's leader has applied it: propose → replicate → persist (memory log) → commit →
//! apply. 1 node (no network) and 3 nodes (loopback TCP, one connection per node pair shared by
//! every group), with 1, 4 and 16 groups. The reported time is per acknowledged write, with the
//! 64 writers in flight together, so elements/s is the write throughput.
//!
//! Run: `cargo bench -p crema --features bench-internals --bench group_loop`
//! (`-- '3 nodes'` for one configuration).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crema::bench_support::GroupBench;
use crema::consensus::command::StampedCommand;
use crema::{CacheCommand, ShardRouter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const WRITERS: u64 = 64;
const KEYS: u64 = 100_000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("group_loop");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    let value = Bytes::from(vec![b'v'; 100]);
    for nodes in [1usize, 3] {
        for groups in [1usize, 4, 16] {
            let router = ShardRouter::new(groups as u32).unwrap();
            // Started on first use: criterion does not call the routine of a benchmark that a
            // command-line filter excludes, and then no cluster is started for it.
            let mut cluster: Option<Arc<GroupBench>> = None;
            let mut round = 0u64;
            group.bench_function(
                BenchmarkId::new(format!("{nodes} nodes"), format!("{groups} groups")),
                |b| {
                    let cluster = cluster.get_or_insert_with(|| {
                        Arc::new(rt.block_on(async {
                            let cluster = GroupBench::start(nodes, groups).await.unwrap();
                            cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
                            cluster
                        }))
                    });
                    b.iter_custom(|iters| {
                        round += 1;
                        rt.block_on(run(cluster, router, &value, iters, round))
                    })
                },
            );
            if let Some(cluster) = cluster {
                let cluster = Arc::into_inner(cluster).expect("writers are done");
                rt.block_on(cluster.shutdown());
            }
        }
    }
    group.finish();
}

/// `iters` acknowledged writes by `WRITERS` concurrent writers; the time they took.
async fn run(
    cluster: &Arc<GroupBench>,
    router: ShardRouter,
    value: &Bytes,
    iters: u64,
    round: u64,
) -> Duration {
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let count = iters / WRITERS + u64::from(w < iters % WRITERS);
        let cluster = cluster.clone();
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..count {
                let n = (round * 1_000_003 + w * 7_919 + i * WRITERS) % KEYS;
                let key = Bytes::from(format!("k{n:015}"));
                let shard = router.shard_for_key(&key);
                let command = StampedCommand::new(1_700_000_000_000, CacheCommand::put(key, value.clone()));
                // A write that fails (leadership moved) is retried: every counted write is acknowledged.
                loop {
                    match cluster.propose(shard, command.encode().into()).await {
                        Ok(_) => break,
                        Err(e) if e.is_retryable() => tokio::task::yield_now().await,
                        Err(e) => panic!("write failed: {e}"),
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    start.elapsed()
}

criterion_group!(benches, bench);
criterion_main!(benches);
