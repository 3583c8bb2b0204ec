//! Multi-Raft: three nodes in this process on 127.0.0.1:9100-9102, 16 shards, each its own Raft
//! group with its own leader, finding each other by gossip (UDP 9200-9202; nodes 2 and 3 know
//! only node 1's address). Writes are routed to their key's shard; the coordinator reports which
//! shard a key is in, who leads each shard and the node's figures.
//!
//! `cargo run --example multiraft`

use std::net::SocketAddr;
use std::time::Duration;

use crema::{
    CacheConfig, DistributedCache, MemberlistConfig, MemberlistDiscovery, MultiRaftCacheConfig, NodeId,
    PeerManagementConfig,
};

fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100 + id as u16 - 1))
}

fn gossip_addr(id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9200 + id as u16 - 1))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let seeds: Vec<_> = (1..=3).filter(|p| *p != id).map(|p| (p, addr(p))).collect();
        let memberlist_config = MemberlistConfig {
            enabled: true,
            bind_addr: Some(gossip_addr(id)),
            advertise_addr: None,
            seed_addrs: if id == 1 { Vec::new() } else { vec![gossip_addr(1)] },
            node_name: Some(format!("node-{id}")),
            peer_management: PeerManagementConfig { auto_add_peers: true, ..Default::default() },
        };
        let discovery = MemberlistDiscovery::new(id, addr(id), &memberlist_config, &seeds);
        let config = CacheConfig::new(id, addr(id))
            .with_seed_nodes(seeds)
            .with_cluster_discovery(discovery)
            .with_max_capacity(100_000)
            .with_multiraft_config(MultiRaftCacheConfig {
                enabled: true,
                num_shards: 16,          // 16 independent Raft groups
                shard_capacity: 100_000, // at most this many entries per shard
                auto_init_shards: true,  // every shard starts with the node
                leader_broadcast_debounce_ms: 200,
            });
        nodes.push(DistributedCache::new(config).await?);
    }
    for node in &nodes {
        node.wait_for_leader(Duration::from_secs(10)).await.ok_or("no leader of every shard")?;
    }

    // Operations are routed to their key's shard, from any node.
    for i in 0..1_000 {
        nodes[i % 3].put(format!("user:{i}"), format!("name {i}")).await?;
    }
    let read = nodes[2].consistent_get(b"user:123").await?;
    println!("user:123 = {:?}", read.map(|v| String::from_utf8_lossy(&v).into_owned()));

    // Gossip: every node finds every other (node 2 and 3 through node 1).
    for _ in 0..100 {
        if nodes.iter().all(|n| {
            n.discovered_nodes().iter().filter(|d| d.health == crema::NodeHealth::Alive).count() == 3
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in nodes[1].discovered_nodes() {
        println!("node 2 sees node {} ({:?}) gossip={:?}", n.node_id, n.health, n.gossip_addr);
    }

    if let Some(coordinator) = nodes[0].multiraft_coordinator() {
        let shard = coordinator.shard_for_key(b"user:123");
        println!("key 'user:123' is in shard {shard} (slot {})", crema::key_slot(b"user:123"));
        let mut leaders: Vec<_> = coordinator.shard_leaders().into_iter().collect();
        leaders.sort();
        println!("shard leaders: {leaders:?}");
        let stats = coordinator.stats();
        println!("total shards: {}", stats.total_shards);
        println!("active shards: {}", stats.active_shards);
        println!("local leader shards: {}", stats.local_leader_shards);
        println!("total entries: {}", stats.total_entries);
        println!("operations/sec: {:.2}", stats.operations_per_sec);
    }
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}
