//! Raft messages and envelopes, as any peer could send them, delivered to a real three-node
//! cluster: no node panics or fails, the cluster keeps taking writes, and no node diverges.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    crema::fuzzing::peer_group(data);
});
