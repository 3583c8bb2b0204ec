//! The replicated command, [`CacheCommand`]: its validation before propose and its byte codec.
//!
//! Pure code: no clock, no I/O. Time enters a command only as an absolute expiry in unix
//! milliseconds, written by the proposing node, so every node applies the same bytes to the same
//! state. The encoding is one format-version byte followed by postcard; a version this build does
//! not know is a decode error (and, for a committed entry, a bug that halts the group).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::MAX_TTL;

/// Version byte leading every encoded command.
pub const COMMAND_FORMAT_VERSION: u8 = 1;

/// A change to the cache, replicated through the Raft log and applied on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheCommand {
    /// Insert or replace `key`. `expires_at_ms` is an absolute unix time in milliseconds.
    Put {
        /// The key (never empty).
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Absolute expiry (unix ms), or none for no expiry.
        expires_at_ms: Option<u64>,
    },
    /// Remove `key` if present.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Remove every entry.
    Clear,
}

/// Size limits a command is validated against before it is proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLimits {
    /// Largest key, bytes.
    pub max_key_bytes: usize,
    /// Largest value, bytes.
    pub max_value_bytes: usize,
}

/// Why a command was refused before propose, or could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandError {
    /// Keys must not be empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// The key is over `max_key_bytes`.
    #[error("key is {len} bytes, the limit is {max}")]
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is over `max_value_bytes`.
    #[error("value is {len} bytes, the limit is {max}")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A TTL of zero or above ten years.
    #[error("ttl {0:?} is out of range (1 ms to 10 years)")]
    TtlOutOfRange(Duration),
    /// The bytes are not a command of a version this build knows.
    #[error("cannot decode command: {0}")]
    Decode(String),
}

impl CacheCommand {
    /// A put without expiry.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        CacheCommand::Put { key: key.into(), value: value.into(), expires_at_ms: None }
    }

    /// A delete.
    pub fn delete(key: impl Into<Bytes>) -> Self {
        CacheCommand::Delete { key: key.into() }
    }

    /// Checks key and value against `limits`.
    pub fn validate(&self, limits: &CommandLimits) -> Result<(), CommandError> {
        match self {
            CacheCommand::Put { key, value, .. } => {
                validate_key(key, limits)?;
                if value.len() > limits.max_value_bytes {
                    return Err(CommandError::ValueTooLarge {
                        len: value.len(),
                        max: limits.max_value_bytes,
                    });
                }
                Ok(())
            }
            CacheCommand::Delete { key } => validate_key(key, limits),
            CacheCommand::Clear => Ok(()),
        }
    }

    /// Encodes the command: version byte + postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.push(COMMAND_FORMAT_VERSION);
        postcard::to_extend(self, out).expect("encoding into a Vec cannot fail")
    }

    /// Decodes bytes produced by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        match bytes.split_first() {
            Some((&COMMAND_FORMAT_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))
            }
            Some((v, _)) => Err(CommandError::Decode(format!("unknown format version {v}"))),
            None => Err(CommandError::Decode("empty command".into())),
        }
    }

    fn encoded_len_hint(&self) -> usize {
        match self {
            CacheCommand::Put { key, value, .. } => key.len() + value.len() + 24,
            CacheCommand::Delete { key } => key.len() + 8,
            CacheCommand::Clear => 2,
        }
    }
}

fn validate_key(key: &[u8], limits: &CommandLimits) -> Result<(), CommandError> {
    if key.is_empty() {
        return Err(CommandError::EmptyKey);
    }
    if key.len() > limits.max_key_bytes {
        return Err(CommandError::KeyTooLarge { len: key.len(), max: limits.max_key_bytes });
    }
    Ok(())
}

/// The absolute expiry (unix ms) of an entry written at `now_ms` with `ttl`.
pub fn expiry_from_ttl(now_ms: u64, ttl: Duration) -> Result<u64, CommandError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(CommandError::TtlOutOfRange(ttl));
    }
    // Round up so a 1.5 ms TTL does not become 1 ms.
    let ttl_ms = ttl.as_nanos().div_ceil(1_000_000) as u64;
    Ok(now_ms.saturating_add(ttl_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: CommandLimits = CommandLimits { max_key_bytes: 8, max_value_bytes: 16 };

    #[test]
    fn validation_refuses_bad_commands() {
        assert_eq!(CacheCommand::put("", "v").validate(&LIMITS), Err(CommandError::EmptyKey));
        assert_eq!(
            CacheCommand::put("123456789", "v").validate(&LIMITS),
            Err(CommandError::KeyTooLarge { len: 9, max: 8 })
        );
        assert_eq!(
            CacheCommand::put("k", vec![0u8; 17]).validate(&LIMITS),
            Err(CommandError::ValueTooLarge { len: 17, max: 16 })
        );
        assert_eq!(CacheCommand::delete("").validate(&LIMITS), Err(CommandError::EmptyKey));
        CacheCommand::put("k", vec![0u8; 16]).validate(&LIMITS).unwrap();
        CacheCommand::Clear.validate(&LIMITS).unwrap();
    }

    #[test]
    fn ttl_range_is_checked() {
        assert!(expiry_from_ttl(1_000, Duration::ZERO).is_err());
        assert!(expiry_from_ttl(1_000, MAX_TTL + Duration::from_millis(1)).is_err());
        assert_eq!(expiry_from_ttl(1_000, Duration::from_micros(1_500)).unwrap(), 1_002);
        assert_eq!(expiry_from_ttl(1_000, Duration::from_secs(1)).unwrap(), 2_000);
    }

    #[test]
    fn decode_refuses_unknown_versions_and_garbage() {
        let mut bytes = CacheCommand::Clear.encode();
        bytes[0] = 9;
        assert!(CacheCommand::decode(&bytes).unwrap_err().to_string().contains("version 9"));
        assert!(CacheCommand::decode(&[]).is_err());
        assert!(CacheCommand::decode(&[COMMAND_FORMAT_VERSION, 0xff, 0xff]).is_err());
    }

    fn any_command() -> impl Strategy<Value = CacheCommand> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop_oneof![
            (bytes(), bytes(), any::<Option<u64>>())
                .prop_map(|(key, value, expires_at_ms)| { CacheCommand::Put { key, value, expires_at_ms } }),
            bytes().prop_map(|key| CacheCommand::Delete { key }),
            Just(CacheCommand::Clear),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(cmd in any_command()) {
            prop_assert_eq!(CacheCommand::decode(&cmd.encode()).unwrap(), cmd);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = CacheCommand::decode(&bytes);
        }
    }
}
