//! A single-node cache: put, local and linearizable reads, TTL, delete, graceful shutdown.
//!
//! Run with `cargo run --example basic`.

use std::time::Duration;

use crema::{CacheConfig, DistributedCache};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();

    // Port 0: let the OS pick a free port, so the example never collides with a running node.
    let config = CacheConfig::new(1, "127.0.0.1:0".parse()?)
        .with_max_capacity(100_000)
        .with_default_ttl(Duration::from_secs(3600));
    let cache = DistributedCache::new(config).await?;

    cache.put("user:123", "Alice").await?;
    println!("get            -> {:?}", cache.get(b"user:123").await);
    println!("consistent_get -> {:?}", cache.consistent_get(b"user:123").await?);

    cache.put_with_ttl("session:9", "token", Duration::from_millis(300)).await?;
    println!("session before -> {:?}", cache.get(b"session:9").await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!("session after  -> {:?} (expired)", cache.get(b"session:9").await);

    println!("deleted        -> {}", cache.delete("user:123").await?);
    let status = cache.cluster_status().await?;
    println!(
        "node {} is {:?} in term {}, applied index {}",
        status.node_id, status.group.role, status.group.term, status.group.applied_index
    );
    cache.shutdown().await;
    Ok(())
}
