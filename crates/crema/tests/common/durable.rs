//! One durable node for the storage tests: its configuration and its start.

use std::path::Path;

use crema::{CacheConfig, CheckpointConfig, DistributedCache, RaftStorageType};

use super::fast_raft;

/// One node on RocksDB in `dir`, checkpointing every `threshold` log entries (no timer).
pub fn durable(dir: &Path, threshold: u64) -> CacheConfig {
    CacheConfig::new(1, "127.0.0.1:0".parse().unwrap())
        .with_raft_config(fast_raft())
        .with_raft_storage_type(RaftStorageType::RocksDb)
        .with_data_dir(dir)
        .with_checkpoint_config(
            CheckpointConfig::new(dir.join("checkpoints")).with_log_threshold(threshold).with_interval(None),
        )
}

/// Starts `config` on a port the OS picks.
pub async fn start(config: CacheConfig) -> DistributedCache {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    DistributedCache::new_with_listener(config, listener).await.unwrap()
}
