//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, never enabled by a
//! server build): the crate-private decoders of what peers send, reachable from outside.
//!
//! Each function runs bytes through the same decoding path a node uses and must never panic,
//! whatever the bytes; errors are the expected answer to garbage.

mod group_harness;

pub use group_harness::peer_group;

use bytes::BytesMut;
use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::config::MAX_FRAME_BYTES;
use crate::transport::envelope::Envelope;
use crate::transport::frame::decode_frame;
use crate::transport::snapshot_assembly::{Piece, SnapshotAssembler};

/// Feeds `bytes`, as they arrived on a peer connection, through the frame decoder, the envelope
/// decoder, the Raft message decoder and snapshot assembly. Answers how many envelopes decoded.
pub fn peer_stream(bytes: &[u8]) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut assembler = SnapshotAssembler::default();
    let mut decoded = 0;
    while let Ok(Some(payload)) = decode_frame(&mut buf, MAX_FRAME_BYTES) {
        let Ok(envelope) = Envelope::from_payload(&payload) else { continue };
        decoded += 1;
        match envelope {
            Envelope::Raft { message, .. } => {
                let _ = Message::parse_from_bytes(&message);
            }
            Envelope::SnapshotChunk { shard, transfer, header, total_len, offset, data } => {
                let piece = Piece { transfer, header, total_len, offset, data };
                let _ = assembler.accept(2, shard, piece, std::time::Instant::now());
            }
            Envelope::Hello { .. }
            | Envelope::Forward { .. }
            | Envelope::ForwardReply { .. }
            | Envelope::AuthChallenge { .. }
            | Envelope::AuthProof { .. }
            | Envelope::Ping
            | Envelope::Hibernate { .. }
            | Envelope::Commit { .. }
            | Envelope::Read { .. }
            | Envelope::Leaders { .. }
            | Envelope::ReadReply { .. }
            | Envelope::ReadCheck { .. }
            | Envelope::ReadCheckAck { .. }
            | Envelope::ReadIndexAsk { .. }
            | Envelope::ReadIndexAnswer { .. } => {}
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_valid_frames_decode_without_panicking() {
        assert_eq!(peer_stream(&[]), 0);
        assert_eq!(peer_stream(&[0xff; 64]), 0, "an oversized length prefix stops decoding");
        let hello =
            Envelope::Hello { node_id: 1, incarnation: 7, groups: Vec::new(), client_addr: None, shards: 1 }
                .to_frame();
        let mut two = hello.to_vec();
        two.extend_from_slice(&hello);
        assert_eq!(peer_stream(&two), 2);
    }
}

/// Regenerates the seed corpus of the fuzz targets from real encodings:
/// `cargo test -p crema --features fuzzing --lib -- --ignored write_fuzz_seeds`.
#[cfg(test)]
mod seeds {
    use std::path::PathBuf;

    use bytes::Bytes;
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, Message, MessageType};

    use crate::cache::storage::{CacheStorage, StorageLimits};
    use crate::consensus::command::{CacheCommand, ExpiryUpdate, SetCondition, StampedCommand};
    use crate::consensus::state_machine::CacheStateMachine;
    use crate::consensus::{Applied, ApplyOutput};
    use crate::transport::envelope::Envelope;

    fn write(target: &str, name: &str, bytes: &[u8]) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn commands() -> Vec<CacheCommand> {
        let k = || Bytes::from_static(b"user:1");
        vec![
            CacheCommand::Put {
                key: k(),
                value: Bytes::from_static(b"Alice"),
                expires_at_ms: Some(1_900_000_000_000),
            },
            CacheCommand::Set {
                key: k(),
                value: Bytes::from_static(b"Bob"),
                expiry: ExpiryUpdate::At(1_900_000_000_000),
                condition: SetCondition::IfAbsent,
                return_old: true,
            },
            CacheCommand::IncrBy { key: k(), delta: -7 },
            CacheCommand::IncrByFloat { key: k(), delta: 2.5 },
            CacheCommand::IncrByLongDouble {
                key: k(),
                delta: crate::LongDouble::parse(b"0.1").expect("0.1 parses"),
            },
            CacheCommand::DeleteMany { keys: vec![k(), Bytes::from_static(b"other")] },
            CacheCommand::Batch(vec![CacheCommand::Delete { key: k() }, CacheCommand::Clear]),
        ]
    }

    #[test]
    #[ignore = "writes the fuzz seed corpus; run by hand"]
    fn write_fuzz_seeds() {
        for (i, command) in commands().into_iter().enumerate() {
            write(
                "command_codec",
                &format!("seed-{i}"),
                &StampedCommand::new(1_700_000_000_000, command).encode(),
            );
        }

        let entry = Entry {
            index: 7,
            term: 2,
            data: StampedCommand::new(1, commands().remove(0)).encode().into(),
            ..Default::default()
        };
        let append = Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 2,
            index: 6,
            log_term: 2,
            commit: 6,
            entries: vec![entry].into(),
            ..Default::default()
        };
        let header =
            Message { msg_type: MessageType::MsgSnapshot, to: 2, from: 1, term: 2, ..Default::default() };
        let mut forwarded = StampedCommand::new(1, commands().remove(2));
        forwarded.session = Some(crate::consensus::sessions::SessionStamp {
            origin: 1,
            incarnation: 7,
            seq: 9,
            oldest_pending: 8,
            abandoned: vec![8],
        });
        write("command_codec", "seed-session", &forwarded.encode());
        let command = Bytes::from(forwarded.encode());
        let frames = [
            Envelope::Hello {
                node_id: 1,
                incarnation: 7,
                groups: vec![crate::transport::envelope::GroupPosition {
                    shard: 0,
                    term: 2,
                    commit: 6,
                    last_term: 2,
                    last_index: 6,
                    recovering: false,
                }],
                client_addr: Some("127.0.0.1:6380".parse().unwrap()),
                shards: 1,
            },
            Envelope::Raft { shard: 0, message: append.write_to_bytes().unwrap().into() },
            Envelope::Forward { shard: 0, request_id: 9, command },
            Envelope::ForwardReply {
                request_id: 9,
                result: Ok(Applied { index: 8, output: ApplyOutput::Int(3) }),
            },
            Envelope::SnapshotChunk {
                shard: 0,
                transfer: 1,
                header: Some(header.write_to_bytes().unwrap().into()),
                total_len: 8,
                offset: 0,
                data: Bytes::from_static(b"abcd"),
            },
            Envelope::SnapshotChunk {
                shard: 0,
                transfer: 1,
                header: None,
                total_len: 8,
                offset: 4,
                data: Bytes::from_static(b"efgh"),
            },
        ];
        let mut stream = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let bytes = frame.to_frame();
            write("peer_stream", &format!("seed-{i}"), &bytes);
            stream.extend_from_slice(&bytes);
        }
        write("peer_stream", "seed-all", &stream);

        let storage = CacheStorage::new(StorageLimits {
            max_capacity: 1000,
            max_memory_bytes: None,
            time_to_idle: None,
        });
        let mut sm = CacheStateMachine::new(storage);
        for (i, command) in commands().into_iter().take(4).enumerate() {
            sm.apply(i as u64 + 1, &StampedCommand::new(1_700_000_000_000, command));
        }
        let payload = (sm.snapshot_source())();
        let conf = raft::eraftpb::ConfState { voters: vec![1, 2, 3], ..Default::default() };
        for compress in [true, false] {
            let file = crate::checkpoint::format::encode(0, 4, 2, &conf, &payload, compress);
            write("checkpoint_reader", &format!("seed-lz4-{compress}"), &file);
        }
    }
}
