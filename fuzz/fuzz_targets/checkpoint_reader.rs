//! Checkpoint files: any bytes are refused with an error or read back, and what reads back
//! restores into a state machine or is refused, never a panic.
#![no_main]

use crema::cache::storage::StorageLimits;
use crema::checkpoint::format::decode;
use crema::{CacheStateMachine, CacheStorage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((meta, payload)) = decode(data) {
        let storage = CacheStorage::new(StorageLimits {
            max_capacity: 1000,
            max_memory_bytes: None,
            time_to_idle: None,
        });
        let _ = CacheStateMachine::new(storage).restore(meta.index, &payload);
    }
});
