//! Bytes from a peer connection: frames, envelopes, Raft messages and snapshot pieces decode
//! or are refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    crema::fuzzing::peer_stream(data);
});
