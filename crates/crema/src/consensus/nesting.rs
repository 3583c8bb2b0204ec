//! A bound on how deeply decoded commands and outputs nest. `CacheCommand::Batch` holds
//! commands, a transaction holds writes, `ApplyOutput::Batch` and `Exec` hold outputs: serde
//! decodes them by recursion, and postcard sets no depth limit, so a peer's frame of 16 MiB
//! nesting a batch in a batch millions of times would overflow the decoding thread's stack and
//! abort the process (found in review) before `validate` could refuse the nesting. Honest
//! commands and outputs nest one level; decoding refuses more than [`MAX_DEPTH`].
//!
//! Written by hand: serde's derive has no depth option, and postcard none either.

use std::cell::Cell;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Nested levels a decoded command or output may have.
pub const MAX_DEPTH: u32 = 16;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Leaves a level when dropped, also when decoding failed inside it.
struct Level;

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Decodes a value that may nest its own kind (`#[serde(deserialize_with = "...")]` on the
/// field that recurses), one level deeper than its container.
pub(crate) fn nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let depth = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    let _level = Level;
    if depth > MAX_DEPTH {
        return Err(D::Error::custom(format!("nested more than {MAX_DEPTH} levels deep")));
    }
    T::deserialize(deserializer)
}
