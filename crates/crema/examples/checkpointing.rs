//! Checkpoints: one durable node (RocksDB) in a temporary directory takes checkpoints of its
//! cache as it is written to, is shut down, and starts again from its own disk: it loads the
//! newest checkpoint, replays the log after it, and has every write back.
//!
//! `cargo run -p crema --example checkpointing --features rocksdb` (with Debian's RocksDB:
//! `ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu` first, see the README).

use std::path::Path;
use std::time::Duration;

use crema::{CacheConfig, CheckpointConfig, CheckpointStore, DistributedCache, RaftStorageType};

const KEYS: usize = 5_000;

fn config(dir: &Path) -> Result<CacheConfig, Box<dyn std::error::Error>> {
    Ok(CacheConfig::new(1, "127.0.0.1:0".parse()?)
        .with_raft_storage_type(RaftStorageType::RocksDb)
        .with_data_dir(dir)
        .with_checkpoint_config(
            CheckpointConfig::new(dir.join("checkpoints"))
                .with_log_threshold(1_000) // no sooner than 1,000 entries apart
                .with_max_log_bytes(64 * 1024) // and at least every 64 KiB of commands
                .with_compression(true), // LZ4
        ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let dir = tempfile::tempdir()?;

    let cache = DistributedCache::new(config(dir.path())?).await?;
    for i in 0..KEYS {
        cache.put(format!("user:{i}"), format!("profile of user {i}")).await?;
    }
    let written = cache.raft_figures().checkpoints_written;
    println!("wrote {KEYS} keys; the node took {written} checkpoints meanwhile");
    cache.shutdown().await;
    drop(cache);

    // What is on disk now: the newest checkpoints (two are kept), each at one Raft index.
    let store = CheckpointStore::open(dir.path().join("checkpoints"))?;
    for (index, path) in store.list()? {
        let size = std::fs::metadata(&path)?.len();
        println!("checkpoint at index {index}: {} ({size} bytes)", path.display());
    }
    if let Some(newest) = store.load_newest_valid()? {
        println!(
            "newest valid: index {}, term {}, compressed {}",
            newest.meta.index, newest.meta.term, newest.meta.compressed
        );
    }

    // Started again on the same directory: checkpoint, then the log after it.
    let cache = DistributedCache::new(config(dir.path())?).await?;
    cache.wait_for_leader(Duration::from_secs(10)).await.ok_or("no leader after the restart")?;
    let back = cache.consistent_get(b"user:4999").await?;
    println!("after the restart: {} entries, user:4999 -> {back:?}", cache.entry_count());
    assert_eq!(cache.entry_count(), KEYS as u64, "every write is back");
    cache.shutdown().await;
    Ok(())
}
