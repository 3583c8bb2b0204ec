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
//! SCAN is in `scan`; KEYS, SCAN and RANDOMKEY walk the keys on a blocking thread.

use crema::{CacheCommand, ExpireCondition, ReadCommand};

use super::write::{PreparedRead, PreparedWrite, Render};
use super::{parse_int, Call, CmdError, Kind};
use crate::resp::Reply;

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
        Kind::Scan => super::scan::run(call).await,
        Kind::RandomKey if call.holds_every_shard() => {
            // Uniform over the live keys (O(N), where Redis samples its hash table in O(1);
            // RANDOMKEY is rare in caches).
            let keys = call.live_keys(None).await?;
            let found = (!keys.is_empty()).then(|| keys[rand::random::<u64>() as usize % keys.len()].clone());
            Ok(found.map_or(Reply::Null, Reply::Bulk))
        }
        Kind::RandomKey => {
            // Shards held elsewhere: the first key at or after a random point of the scan
            // order, so that each holder sends one key, not all of its keys.
            let cache = &call.state.cache;
            let shards = call.primary_scope().unwrap_or_else(|| (0..cache.router().num_shards()).collect());
            let start = rand::random::<u64>() >> (64 - crema::cache::scan_order::CURSOR_BITS);
            let (mut found, _) = cache.scan_keys_in(&shards, start, 1, None, true).await?;
            if found.is_empty() {
                found = cache.scan_keys_in(&shards, 0, 1, None, true).await?.0;
            }
            Ok(found.into_iter().next().map_or(Reply::Null, |(_, key)| Reply::Bulk(key)))
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
