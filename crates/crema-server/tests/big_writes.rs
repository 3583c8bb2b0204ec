//! Many clients writing multi-MB values at once, against real `crema serve` processes: the
//! leader keeps its leadership, no follower falls behind the compacted log (no snapshots),
//! every write is answered, and small writes through a follower go on meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;

/// Found from outside: 20 clients writing 8 MB values through the leader of a 3-node memory
/// cluster cost 2-9 elections in 20-30 s, followers were sent snapshots of the whole cache
/// (64-160 MB) one after the other, and writes timed out. A pass put every gathered write in
/// one batch (160 MB, two batches in flight), which overflowed the peer queues; the log was
/// compacted past followers a few writes behind; heartbeats waited behind the appends.
/// Measured on 2 cores, debug build, 20 clients writing 8 MB values for 5 s with election
/// timeouts of 1-2 s (the default's): with the fixes taken out, all of 3 runs failed (an
/// election, writes timing out); with them, none of 4 (45-46 writes, no snapshot). With
/// 200-400 ms (10 ticks) one run in 3 still saw an election: the group loops handling 8 MB
/// appends on 2 busy cores keep heartbeats waiting that long (docs/reliability.md).
/// `scripts/big-writes.py` runs the same load on release builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_multi_mb_writes_keep_the_leader_and_need_no_snapshots() {
    // 20 ms ticks (see `common::FAST`), 50 to an election: 1-2 s, the default's.
    let nodes = start_cluster(3, &["--election-tick", "50"]);
    let leader = leader_of(&nodes).await;
    let mut c = patient_client(nodes[leader].resp).await;
    let _: () = c.set("warm", "up").await.unwrap();
    let term = |info: String| -> u64 {
        let line = info.lines().find_map(|l| l.strip_prefix("term:")).expect("term in INFO raft");
        line.trim().parse().unwrap()
    };
    let before = term(redis::cmd("INFO").arg("raft").query_async(&mut c).await.unwrap());
    let snapshots_before = metric_sum(&nodes, "crema_raft_snapshots_installed_total").await;
    let stop = Instant::now() + Duration::from_secs(5);
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let addr = nodes[leader].resp;
            tokio::spawn(async move {
                let mut c = patient_client(addr).await;
                let mut n = 0u8;
                while Instant::now() < stop {
                    n = n.wrapping_add(1);
                    let value = vec![n; 8 << 20];
                    let written: redis::RedisResult<()> = c.set(format!("big:{i}"), value).await;
                    written.unwrap_or_else(|e| panic!("writer {i}, write {n}: {e}"));
                }
                (i, n)
            })
        })
        .collect();
    let mut small = patient_client(nodes[(leader + 1) % 3].resp).await;
    let mut probes = 0u64;
    while Instant::now() < stop {
        probes += 1;
        let _: () = small.set("probe", probes).await.unwrap();
    }
    let mut last = Vec::new();
    for writer in writers {
        last.push(writer.await.unwrap());
    }
    let after = term(redis::cmd("INFO").arg("raft").query_async(&mut c).await.unwrap());
    let snapshots = metric_sum(&nodes, "crema_raft_snapshots_installed_total").await - snapshots_before;
    let writes: u64 = last.iter().map(|(_, n)| u64::from(*n)).sum();
    eprintln!("{writes} writes of 8 MB, {probes} small writes through a follower, {snapshots} snapshots");
    assert_eq!(after, before, "an election took place under the writes");
    assert_eq!(snapshots, 0, "followers fell behind the compacted log");
    // Every node holds every writer's last value.
    for node in &nodes {
        let mut c = patient_client(node.resp).await;
        let _: String = redis::cmd("GET").arg("warm").query_async(&mut c).await.unwrap();
        wait_until(Duration::from_secs(10), "every node applied the last writes", || {
            let (c, last) = (c.clone(), last.clone());
            async move {
                let mut c = c;
                for (i, n) in &last {
                    let value: Option<Vec<u8>> = c.get(format!("big:{i}")).await.unwrap();
                    if value.is_none_or(|v| v.len() != 8 << 20 || v[0] != *n) {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }
}
