//! The checkpoint file format, pure code over bytes. Little-endian throughout (version 2):
//!
//! ```text
//! offset  size  field
//! 0       4     magic "MCRS"
//! 4       2     format version (2)
//! 6       2     flags (bit 0: payload LZ4-compressed)
//! 8       8     Raft index the checkpoint captures
//! 16      8     Raft term of that index
//! 24      4     shard (Raft group) the checkpoint is of
//! 28      4     length of the conf state (n)
//! 32      n     conf state (Raft protobuf)
//! 32+n    8     length of the stored payload (m)
//! 40+n    m     payload: the state machine's snapshot (entries with key, value and absolute
//!               expiry; the member address book; the log time), LZ4 block-compressed when flagged
//! 40+n+m  4     CRC32 of every byte before it
//! ```
//!
//! Version 1 had no shard field (the conf state's length at offset 24); it is still read, as a
//! checkpoint of whichever shard's directory holds it. With a shard id in the header, a file
//! copied or restored into another shard's directory is refused instead of loaded as that
//! shard's state ([`super::CheckpointStore::load_newest_valid`]).
//!
//! A reader checks the length, then the magic and version, then the checksum: a wrong magic, a
//! version from the future, a flipped byte and a truncated file each get a clear error.

use protobuf::Message as _;
use raft::eraftpb::ConfState;
use thiserror::Error;

use crate::types::ShardId;

/// The magic bytes every checkpoint starts with.
pub const MAGIC: &[u8; 4] = b"MCRS";
/// The format version this build writes (it reads this one and version 1).
pub const FORMAT_VERSION: u16 = 2;
const FLAG_LZ4: u16 = 1;
/// The fixed part of the header: up to the conf state.
const FIXED_HEAD: usize = 32;
/// The fixed part of a version 1 header (no shard field).
const FIXED_HEAD_V1: usize = 28;
/// The bytes of a header up to and with the shard field (see [`shard_in_head`]).
pub const SHARD_HEAD: usize = 28;

/// The shard named by a header's first [`SHARD_HEAD`] bytes, without reading (or checking) the
/// rest: `None` unless they are a version 2 header.
pub fn shard_in_head(head: &[u8]) -> Option<ShardId> {
    let head = head.get(..SHARD_HEAD)?;
    let version = u16::from_le_bytes([head[4], head[5]]);
    (&head[..4] == MAGIC && version == FORMAT_VERSION).then(|| u32_at(head, 24))
}

/// What a checkpoint captures, besides its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// The Raft index of the state.
    pub index: u64,
    /// The term of that index.
    pub term: u64,
    /// The shard the checkpoint is of; `None` for a version 1 file, which did not say.
    pub shard: Option<ShardId>,
    /// The Raft configuration at that index.
    pub conf_state: ConfState,
    /// Whether the payload was stored compressed.
    pub compressed: bool,
}

/// Why bytes are not a usable checkpoint.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// Shorter than its own lengths say.
    #[error("checkpoint is truncated: {0}")]
    Truncated(&'static str),
    /// The checksum does not match: some byte changed.
    #[error("checkpoint checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// The CRC32 stored in the file.
        stored: u32,
        /// The CRC32 of the bytes read.
        computed: u32,
    },
    /// Not a checkpoint at all.
    #[error("not a crema checkpoint (bad magic)")]
    BadMagic,
    /// Written by a newer (or unknown) format version.
    #[error("checkpoint format version {0} is not supported (this build reads 1 to {FORMAT_VERSION})")]
    UnknownVersion(u16),
    /// The payload or conf state does not decode.
    #[error("checkpoint content is invalid: {0}")]
    Invalid(String),
}

/// The largest payload stored LZ4-compressed: the block format's size prefix has 32 bits.
/// Found in review: a larger payload's prefix wrapped, and the checkpoint, its CRC intact,
/// could never be read back (every later start of the node refused). A larger payload is
/// stored as it is.
pub const MOST_COMPRESSED_BYTES: usize = u32::MAX as usize;

/// Encodes a checkpoint of shard `shard`'s `payload` at `index`/`term`, LZ4-compressed when
/// `compress` and the payload is at most [`MOST_COMPRESSED_BYTES`].
pub fn encode(
    shard: ShardId,
    index: u64,
    term: u64,
    conf_state: &ConfState,
    payload: &[u8],
    compress: bool,
) -> Vec<u8> {
    encode_compressing_up_to(shard, (index, term), conf_state, payload, compress, MOST_COMPRESSED_BYTES)
}

fn encode_compressing_up_to(
    shard: ShardId,
    (index, term): (u64, u64),
    conf_state: &ConfState,
    payload: &[u8],
    compress: bool,
    most_compressed: usize,
) -> Vec<u8> {
    let compress = compress && payload.len() <= most_compressed;
    let conf = conf_state.write_to_bytes().expect("encoding a conf state cannot fail");
    let stored = if compress { lz4_flex::block::compress_prepend_size(payload) } else { payload.to_vec() };
    let mut out = Vec::with_capacity(FIXED_HEAD + conf.len() + 8 + stored.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(if compress { FLAG_LZ4 } else { 0 }).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(&shard.to_le_bytes());
    out.extend_from_slice(&(conf.len() as u32).to_le_bytes());
    out.extend_from_slice(&conf);
    out.extend_from_slice(&(stored.len() as u64).to_le_bytes());
    out.extend_from_slice(&stored);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes a checkpoint: its metadata and its (decompressed) payload.
///
/// # Errors
/// [`CheckpointError`] naming what is wrong; nothing is returned from a damaged file.
pub fn decode(bytes: &[u8]) -> Result<(CheckpointMeta, Vec<u8>), CheckpointError> {
    if bytes.len() < FIXED_HEAD_V1 + 8 + 4 {
        return Err(CheckpointError::Truncated("shorter than a header"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    if &body[..4] != MAGIC {
        return Err(CheckpointError::BadMagic);
    }
    let version = u16::from_le_bytes([body[4], body[5]]);
    let head = match version {
        1 => FIXED_HEAD_V1,
        FORMAT_VERSION => FIXED_HEAD,
        other => return Err(CheckpointError::UnknownVersion(other)),
    };
    if stored != computed {
        return Err(CheckpointError::BadChecksum { stored, computed });
    }
    if body.len() < head + 8 {
        return Err(CheckpointError::Truncated("shorter than a header"));
    }
    let flags = u16::from_le_bytes([body[6], body[7]]);
    let (index, term) = (u64_at(body, 8), u64_at(body, 16));
    let shard = (version >= 2).then(|| u32_at(body, 24));
    let conf_len = u32_at(body, head - 4) as usize;
    let conf_end =
        head.checked_add(conf_len).filter(|end| end.checked_add(8).is_some_and(|e| e <= body.len()));
    let conf_end = conf_end.ok_or(CheckpointError::Truncated("conf state"))?;
    let conf_state = ConfState::parse_from_bytes(&body[head..conf_end])
        .map_err(|e| CheckpointError::Invalid(e.to_string()))?;
    let payload_len = u64_at(body, conf_end) as usize;
    let payload = &body[conf_end + 8..];
    if payload.len() != payload_len {
        return Err(CheckpointError::Truncated("payload"));
    }
    let compressed = flags & FLAG_LZ4 != 0;
    let payload = if compressed {
        lz4_flex::block::decompress_size_prepended(payload)
            .map_err(|e| CheckpointError::Invalid(e.to_string()))?
    } else {
        payload.to_vec()
    };
    Ok((CheckpointMeta { index, term, shard, conf_state, compressed }, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conf() -> ConfState {
        ConfState { voters: vec![1, 2, 3], learners: vec![4], ..Default::default() }
    }

    /// A version 1 file, as builds before the shard field wrote it.
    fn encode_v1(index: u64, term: u64, payload: &[u8]) -> Vec<u8> {
        let conf = conf().write_to_bytes().unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&term.to_le_bytes());
        out.extend_from_slice(&(conf.len() as u32).to_le_bytes());
        out.extend_from_slice(&conf);
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn a_payload_too_large_for_the_size_prefix_is_stored_uncompressed() {
        let payload = vec![7u8; 100];
        let bytes = encode_compressing_up_to(4, (9, 2), &conf(), &payload, true, 99);
        let (meta, back) = decode(&bytes).unwrap();
        assert!(!meta.compressed);
        assert_eq!(back, payload);
        let bytes = encode_compressing_up_to(4, (9, 2), &conf(), &payload, true, 100);
        assert!(decode(&bytes).unwrap().0.compressed);
    }

    #[test]
    fn a_version_1_file_still_reads_and_says_no_shard() {
        let (meta, payload) = decode(&encode_v1(12, 3, b"old state")).unwrap();
        assert_eq!(
            meta,
            CheckpointMeta { index: 12, term: 3, shard: None, conf_state: conf(), compressed: false }
        );
        assert_eq!(payload, b"old state");
        let new = encode(7, 12, 3, &conf(), b"new state", false);
        assert_eq!(decode(&new).unwrap().0.shard, Some(7));
        assert_eq!(shard_in_head(&new), Some(7));
        assert_eq!(shard_in_head(&encode_v1(12, 3, b"old")), None, "version 1 does not say");
        assert_eq!(shard_in_head(&new[..10]), None, "too short to say");
    }

    #[test]
    fn each_kind_of_damage_has_its_error() {
        let good = encode(0, 42, 7, &conf(), b"payload bytes, payload bytes, payload bytes", true);
        assert_eq!(decode(&good).unwrap().1, b"payload bytes, payload bytes, payload bytes");
        let mut flipped = good.clone();
        flipped[40] ^= 0x01;
        assert!(matches!(decode(&flipped), Err(CheckpointError::BadChecksum { .. })));
        assert!(matches!(decode(&good[..good.len() - 1]), Err(CheckpointError::BadChecksum { .. })));
        assert!(matches!(decode(&good[..20]), Err(CheckpointError::Truncated(_))));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic), Err(CheckpointError::BadMagic));
        let mut future = good.clone();
        future[4] = 3;
        assert_eq!(decode(&future), Err(CheckpointError::UnknownVersion(3)));
    }

    proptest! {
        #[test]
        fn round_trips(shard in any::<u32>(), index in any::<u64>(), term in any::<u64>(), payload in prop::collection::vec(any::<u8>(), 0..2048), compress in any::<bool>()) {
            let bytes = encode(shard, index, term, &conf(), &payload, compress);
            let (meta, data) = decode(&bytes).unwrap();
            prop_assert_eq!(meta, CheckpointMeta { index, term, shard: Some(shard), conf_state: conf(), compressed: compress });
            prop_assert_eq!(data, payload);
        }

        /// Any single changed byte, and any truncation, is detected.
        #[test]
        fn any_corruption_is_detected(payload in prop::collection::vec(any::<u8>(), 1..512), at in any::<prop::sample::Index>(), delta in 1u8..=255, cut in any::<prop::sample::Index>()) {
            let bytes = encode(1, 9, 2, &conf(), &payload, true);
            let mut damaged = bytes.clone();
            let i = at.index(damaged.len());
            damaged[i] = damaged[i].wrapping_add(delta);
            prop_assert!(decode(&damaged).is_err());
            let keep = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..keep]).is_err());
        }
    }
}
