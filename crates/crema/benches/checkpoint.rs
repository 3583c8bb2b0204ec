//! Checkpoint costs on a large cache: how long the group loop is held to start the
//! copy-on-write capture, how long the walk, encoding, LZ4, write and fsync take off the loop,
//! and how long a restart takes to read, check and restore the checkpoint.
//!
//! Run: `cargo bench -p crema --bench checkpoint -- [entries]` (default 1,000,000 entries of
//! 16-byte keys and 100-byte values).

use std::time::Instant;

use crema::cache::storage::StorageLimits;
use crema::checkpoint::CheckpointStore;
use crema::consensus::command::{CacheCommand, StampedCommand};
use crema::{CacheStateMachine, CacheStorage};
use raft::eraftpb::ConfState;

fn machine() -> CacheStateMachine {
    CacheStateMachine::new(CacheStorage::new(StorageLimits {
        max_capacity: 100_000_000,
        max_memory_bytes: None,
        time_to_idle: None,
    }))
}

fn main() {
    let entries: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut sm = machine();
    let value = bytes::Bytes::from(vec![b'v'; 100]);
    for i in 0..entries {
        let put = CacheCommand::Put {
            key: format!("key-{i:012}").into(),
            value: value.clone(),
            expires_at_ms: None,
        };
        sm.apply(i + 1, &StampedCommand::new(1, put));
    }
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path()).unwrap();
    let conf = ConfState { voters: vec![1, 2, 3], ..Default::default() };

    let started = Instant::now();
    let finish = sm.capture_later().expect("no capture running");
    let capture = started.elapsed();
    let started = Instant::now();
    let captured = finish().expect("nothing aborted the capture");
    let walk = started.elapsed();
    let started = Instant::now();
    let data = captured.encode();
    let encode = started.elapsed();
    let started = Instant::now();
    let path = store.write(entries, 1, &conf, &data, true, 0).unwrap();
    let write = started.elapsed();
    let file_bytes = std::fs::metadata(&path).unwrap().len();

    let started = Instant::now();
    let loaded = store.load_newest_valid().unwrap().unwrap();
    let read = started.elapsed();
    let mut restored = machine();
    let started = Instant::now();
    let count = restored.restore(loaded.meta.index, &loaded.data).unwrap();
    let restore = started.elapsed();
    assert_eq!(count as u64, entries);
    println!(
        "entries={entries} payload={} MiB file={} MiB (lz4) | in-loop capture start {:?} | off-loop walk {:?} + encode {:?} + compress/write/fsync {:?} | restart: read+check+decompress {:?} + restore {:?} = {:?}",
        data.len() >> 20,
        file_bytes >> 20,
        capture,
        walk,
        encode,
        write,
        read,
        restore,
        read + restore
    );
}
