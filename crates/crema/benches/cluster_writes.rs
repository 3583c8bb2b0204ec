//! End-to-end write throughput and latency of a 3-node cluster in one process over loopback TCP:
//! 16-byte keys, 100-byte values, N concurrent writers spread over the three nodes (so two
//! thirds of the writes are forwarded), each waiting for its acknowledgement.
//!
//! Run: `cargo bench -p crema --bench cluster_writes -- [writers] [seconds] [nodes] [memory|rocksdb]`
//! (default: 64 writers, then 1 writer, 10 s each, 3 nodes, memory storage). `rocksdb` needs
//! `--features rocksdb` and keeps each node's log in a temporary directory with synced writes.
//! Prints throughput and latency percentiles (HdrHistogram).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crema::{CacheConfig, DistributedCache};
use hdrhistogram::Histogram;

async fn start_cluster(size: usize, data: Option<&std::path::Path>) -> Vec<Arc<DistributedCache>> {
    let listeners: Vec<TcpListener> = (0..size).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let seeds = (1..=size as u64).filter(|p| *p != id).map(|p| (p, addrs[p as usize - 1])).collect();
        let mut config = CacheConfig::new(id, addrs[i]).with_seed_nodes(seeds).with_max_capacity(10_000_000);
        if let Some(dir) = data {
            config = config
                .with_raft_storage_type(crema::RaftStorageType::RocksDb)
                .with_data_dir(dir.join(format!("node{id}")));
        }
        nodes.push(Arc::new(DistributedCache::new_with_listener(config, listener).await.unwrap()));
    }
    // Wait for a leader: the first write waits for the election.
    nodes[0].put("warmup", "x").await.unwrap();
    nodes
}

async fn run(nodes: &[Arc<DistributedCache>], writers: usize, seconds: u64) {
    let value = bytes::Bytes::from(vec![b'v'; 100]);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let node = nodes[w % nodes.len()].clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < until {
                let key = format!("w{w:04}-{:010}", i % 100_000); // 16 bytes
                let start = Instant::now();
                match node.put(key, value.clone()).await {
                    Ok(()) => hist.record(start.elapsed().as_micros() as u64).unwrap(),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        hist.add(h).unwrap();
        errors += e;
    }
    let secs = seconds as f64;
    println!(
        "nodes={} writers={writers:3} acked={:8} errors={errors} throughput={:9.0}/s p50={}us p90={}us p99={}us p999={}us max={}us",
        nodes.len(),
        hist.len(),
        hist.len() as f64 / secs,
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.90),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let writers: Option<usize> = args.first().and_then(|a| a.parse().ok());
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let size: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let durable = args.get(3).is_some_and(|a| a == "rocksdb");
    let dir = std::env::temp_dir().join(format!("crema-bench-{}", std::process::id()));
    println!("storage: {}", if durable { "rocksdb (synced writes)" } else { "memory" });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let nodes = start_cluster(size, durable.then_some(dir.as_path())).await;
        match writers {
            Some(w) => run(&nodes, w, seconds).await,
            None => {
                run(&nodes, 64, seconds).await;
                run(&nodes, 1, seconds).await;
            }
        }
        for n in &nodes {
            n.shutdown().await;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
