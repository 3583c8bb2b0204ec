//! Commands about keys rather than values: DEL, UNLINK, EXISTS, TOUCH, TYPE, KEYS, SCAN,
//! RANDOMKEY, RENAME, RENAMENX, COPY, the EXPIRE family, PERSIST, TTL, PTTL, EXPIRETIME,
//! PEXPIRETIME.
//!
//! RENAME, RENAMENX and COPY are one write of both keys, applied whole in their shard (in a
//! sharded cluster both keys must share a slot's shard, as Redis Cluster asks of them; a
//! `{hash tag}` does it). TOUCH answers as EXISTS: the eviction policy is not told of the
//! access, as reads of other nodes' clients are not either.
//!
//! EXISTS, TOUCH, TYPE and the TTL family are prepared as data ([`prepare_read`]): a transaction
//! evaluates them in apply, and outside one they are evaluated against the local cache, with
//! the same rendering.
//!
//! SCAN's cursor is a position in the 64-bit hash space of keys (xxh3): each call walks the local
//! cache and returns the keys with the smallest hashes at or after the cursor. That keeps Redis's
//! guarantee (a key present for the whole scan is returned at least once) without a stable
//! iteration order, at the cost of one pass over the cache per call.

use std::collections::BinaryHeap;

use bytes::Bytes;
use crema::{CacheCommand, ExpireCondition, ReadCommand};
use xxhash_rust::xxh3::xxh3_64;

use super::write::{PreparedRead, PreparedWrite, Render};
use super::{parse_int, Call, CmdError, Kind};
use crate::resp::Reply;
use crema::glob::glob_match;

/// DEL, UNLINK, the EXPIRE family and PERSIST.
pub(super) fn prepare(kind: Kind, call: &Call<'_>) -> Result<PreparedWrite, CmdError> {
    let command = match kind {
        Kind::Del | Kind::Unlink => CacheCommand::DeleteMany { keys: call.args[1..].to_vec() },
        Kind::Persist => CacheCommand::Persist { key: call.arg(1).clone() },
        Kind::Rename | Kind::RenameNx | Kind::Copy => return copy(kind, call),
        _ => expire(kind, call)?,
    };
    Ok(PreparedWrite::new(command, Render::Int))
}

/// RENAME, RENAMENX and COPY (`COPY source destination [DB destination-db] [REPLACE]`).
fn copy(kind: Kind, call: &Call<'_>) -> Result<PreparedWrite, CmdError> {
    let (from, to) = (call.arg(1).clone(), call.arg(2).clone());
    let (replace, remove_source, render) = match kind {
        Kind::Rename => (true, true, Render::Ok),
        Kind::RenameNx => (false, true, Render::Int),
        _ => {
            let mut replace = false;
            let mut i = 3;
            while i < call.args.len() {
                match call.option(i).as_str() {
                    "REPLACE" => replace = true,
                    "DB" if i + 1 < call.args.len() => {
                        // One database, as SELECT allows.
                        if parse_int(call.arg(i + 1))? != 0 {
                            return Err(CmdError::Invalid("DB index is out of range".into()));
                        }
                        i += 1;
                    }
                    _ => return Err(CmdError::Syntax),
                }
                i += 1;
            }
            if from == to {
                return Err(CmdError::Invalid("source and destination objects are the same".into()));
            }
            (replace, false, Render::Int)
        }
    };
    Ok(PreparedWrite::new(CacheCommand::Copy { from, to, replace, remove_source }, render))
}

pub(super) async fn run(kind: Kind, call: &mut Call<'_>) -> Result<Reply, CmdError> {
    match kind {
        Kind::Exists
        | Kind::Touch
        | Kind::Type
        | Kind::Ttl
        | Kind::PTtl
        | Kind::ExpireTime
        | Kind::PExpireTime => {
            let PreparedRead { read, render } = prepare_read(kind, call);
            let keys = if matches!(kind, Kind::Exists | Kind::Touch) { 1..call.args.len() } else { 1..2 };
            let view = call.read_view(keys).await?;
            render.reply(read.read(&view, crema::unix_now_ms()))
        }
        Kind::Keys => {
            let pattern = call.arg(1).clone();
            let keys = call.live_keys(Some(&pattern)).await?;
            Ok(Reply::Array(keys.into_iter().map(Reply::Bulk).collect()))
        }
        Kind::Scan => scan(call).await,
        Kind::RandomKey => {
            // Uniform over the live keys (O(N), where Redis samples its hash table in O(1);
            // RANDOMKEY is rare in caches).
            let keys = call.live_keys(None).await?;
            let found = (!keys.is_empty()).then(|| keys[rand::random::<u64>() as usize % keys.len()].clone());
            Ok(found.map_or(Reply::Null, Reply::Bulk))
        }
        _ => unreachable!("not a keyspace command: {kind:?}"),
    }
}

/// EXISTS, TOUCH, TYPE and the TTL family as data: what each key holds, without its value.
pub(super) fn prepare_read(kind: Kind, call: &Call<'_>) -> PreparedRead {
    let many = matches!(kind, Kind::Exists | Kind::Touch);
    let keys = if many { call.args[1..].to_vec() } else { vec![call.arg(1).clone()] };
    let render = match kind {
        Kind::Exists | Kind::Touch => Render::Exists,
        Kind::Type => Render::Type,
        _ => Render::Ttl(kind),
    };
    PreparedRead { read: ReadCommand::Meta { keys }, render }
}

/// The TTL family's answer for a key expiring at `at_ms`, read at `now_ms`.
pub(super) fn ttl_reply(kind: Kind, at_ms: u64, now_ms: u64) -> i64 {
    let remaining = at_ms.saturating_sub(now_ms) as i64;
    match kind {
        // Redis rounds the remaining seconds to the nearest.
        Kind::Ttl => (remaining + 500) / 1000,
        Kind::PTtl => remaining,
        Kind::ExpireTime => (at_ms / 1000) as i64,
        _ => at_ms as i64,
    }
}

fn expire(kind: Kind, call: &Call<'_>) -> Result<CacheCommand, CmdError> {
    let amount = parse_int(call.arg(2))?;
    let name = call.option(0).to_ascii_lowercase();
    let now = crema::unix_now_ms() as i64;
    let at = match kind {
        Kind::Expire => amount.checked_mul(1000).and_then(|ms| ms.checked_add(now)),
        Kind::PExpire => amount.checked_add(now),
        Kind::ExpireAt => amount.checked_mul(1000),
        _ => Some(amount),
    }
    .ok_or(CmdError::InvalidExpire(name))?;
    // Options may repeat, as in Redis; only some combinations are refused.
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for i in 3..call.args.len() {
        match call.option(i).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => {
                return Err(CmdError::Invalid(format!(
                    "Unsupported option {}",
                    String::from_utf8_lossy(call.arg(i))
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(CmdError::Invalid(
            "NX and XX, GT or LT options at the same time are not compatible".into(),
        ));
    }
    if gt && lt {
        return Err(CmdError::Invalid("GT and LT options at the same time are not compatible".into()));
    }
    // XX GT is GT (a key without an expiry is never "later"); XX LT needs its own condition,
    // since LT alone takes a key without an expiry as infinite.
    let condition = match (nx, xx, gt, lt) {
        (true, ..) => ExpireCondition::IfNone,
        (_, _, true, _) => ExpireCondition::IfLater,
        (_, true, _, true) => ExpireCondition::IfSomeEarlier,
        (_, _, _, true) => ExpireCondition::IfEarlier,
        (_, true, ..) => ExpireCondition::IfSome,
        _ => ExpireCondition::Always,
    };
    Ok(CacheCommand::Expire { key: call.arg(1).clone(), expires_at_ms: at.max(0) as u64, condition })
}

async fn scan(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let cursor: u64 = std::str::from_utf8(call.arg(1))
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CmdError::Invalid("invalid cursor".into()))?;
    let (mut pattern, mut count, mut strings_only) = (None, 10usize, true);
    let mut i = 2;
    while i < call.args.len() {
        let value = call.args.get(i + 1).ok_or(CmdError::Syntax)?;
        match call.option(i).as_str() {
            "MATCH" => pattern = Some(value.clone()),
            "COUNT" => {
                count = usize::try_from(parse_int(value)?).ok().filter(|c| *c > 0).ok_or(CmdError::Syntax)?;
            }
            "TYPE" => strings_only = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(CmdError::Syntax),
        }
        i += 2;
    }
    if !strings_only {
        call.read_barrier().await?;
        return Ok(Reply::Array(vec![Reply::bulk("0"), Reply::Array(Vec::new())]));
    }
    let (pattern, count) = (pattern.as_deref(), count.min(100_000));
    let (next, keys) = if call.holds_every_shard() {
        call.read_barrier().await?;
        let storage = call.storage();
        scan_page(|visit| storage.for_each_live_key(|k, _| visit(k)), cursor, count, pattern)
    } else {
        // Shards held elsewhere send their matching keys; the page is cut from them all.
        let keys = call.live_keys(pattern).await?;
        scan_page(|visit| keys.iter().for_each(|k| _ = visit(k)), cursor, count, None)
    };
    Ok(Reply::Array(vec![
        Reply::Bulk(Bytes::from(next.to_string())),
        Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
    ]))
}

/// Of the keys `walk` visits, those matching `pattern` with the `count` smallest hashes at or
/// after `cursor` (all keys sharing the last hash included) and the cursor after them, 0 when
/// the scan is complete.
fn scan_page(
    walk: impl FnOnce(&mut dyn FnMut(&Bytes) -> bool),
    cursor: u64,
    count: usize,
    pattern: Option<&[u8]>,
) -> (u64, Vec<Bytes>) {
    let mut best: BinaryHeap<(u64, Bytes)> = BinaryHeap::new();
    let mut more = false;
    walk(&mut |key| {
        let hash = xxh3_64(key);
        if hash < cursor || pattern.is_some_and(|p| !glob_match(p, key)) {
            return true;
        }
        best.push((hash, key.clone()));
        if best.len() > count {
            more = true;
            let dropped = best.pop().expect("heap is not empty");
            // Keep keys that share the largest kept hash, so none is skipped by the next cursor.
            if best.peek().is_some_and(|(top, _)| *top == dropped.0) {
                best.push(dropped);
            }
        }
        true
    });
    let mut page: Vec<(u64, Bytes)> = best.into_vec();
    page.sort_unstable();
    let next = match page.last() {
        Some((last, _)) if more => last.checked_add(1).unwrap_or(0),
        _ => 0,
    };
    (next, page.into_iter().map(|(_, k)| k).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_like_redis() {
        assert_eq!(ttl_reply(Kind::Ttl, 10_499, 0), 10);
        assert_eq!(ttl_reply(Kind::Ttl, 10_500, 0), 11);
        assert_eq!(ttl_reply(Kind::PTtl, 10_500, 500), 10_000);
        assert_eq!(ttl_reply(Kind::ExpireTime, 10_500, 0), 10);
        assert_eq!(ttl_reply(Kind::PExpireTime, 10_500, 0), 10_500);
    }
}
