//! A three-node cluster on 127.0.0.1:9000-9002.
//!
//! - `cargo run --example cluster -- 1` (and `-- 2`, `-- 3` in two more terminals): one node per
//!   terminal. Each writes a key every second and prints what it sees from the others.
//! - `cargo run --example cluster` with no argument: all three nodes in this process, a short
//!   demonstration of replication, forwarding and a linearizable read on a follower.

use std::net::SocketAddr;
use std::time::Duration;

use crema::{CacheConfig, DistributedCache, NodeId};

fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000 + id as u16 - 1))
}

fn config(id: NodeId) -> CacheConfig {
    let seeds = (1..=3).filter(|p| *p != id).map(|p| (p, addr(p))).collect();
    CacheConfig::new(id, addr(id)).with_seed_nodes(seeds)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    match std::env::args().nth(1) {
        Some(id) => run_one(id.parse()?).await,
        None => run_all().await,
    }
}

async fn run_one(id: NodeId) -> Result<(), Box<dyn std::error::Error>> {
    if !(1..=3).contains(&id) {
        return Err("node id must be 1, 2 or 3".into());
    }
    let cache = DistributedCache::new(config(id)).await?;
    println!("node {id} listening on {}; Ctrl-C to stop", cache.local_addr());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        match cache.put(format!("node{id}"), n.to_string()).await {
            Ok(()) => {}
            Err(e) => println!("write failed ({e}); retrying next second"),
        }
        let seen: Vec<String> = local_view(&cache).await;
        println!("leader {:?} | {}", cache.leader_id(), seen.join(" "));
    }
    cache.shutdown().await;
    Ok(())
}

async fn local_view(cache: &DistributedCache) -> Vec<String> {
    let mut seen = Vec::new();
    for p in 1..=3u64 {
        let value = cache.get(format!("node{p}").as_bytes()).await;
        let shown = value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_else(|| "-".into());
        seen.push(format!("node{p}={shown}"));
    }
    seen
}

async fn run_all() -> Result<(), Box<dyn std::error::Error>> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(DistributedCache::new(config(id)).await?);
    }
    // Writes wait for an election to finish, so this first put also waits for a leader.
    nodes[0].put("greeting", "hello from node 1").await?;
    let leader = nodes.iter().find(|n| n.is_leader()).map(|n| n.node_id());
    println!("leader: node {leader:?}");
    for n in &nodes {
        n.put(format!("written-on-{}", n.node_id()), "forwarded if not the leader").await?;
    }
    for n in &nodes {
        let read = n.consistent_get(b"written-on-3").await?;
        println!("node {} reads written-on-3 = {:?} (linearizable)", n.node_id(), read);
    }
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}
