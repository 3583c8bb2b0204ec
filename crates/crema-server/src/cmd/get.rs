//! Reading strings: GET, MGET, STRLEN, GETRANGE (SUBSTR), LCS, and the two reads that also write,
//! GETDEL and GETEX (replicated, so they are decided in apply like every write).
//!
//! Each read is also prepared as data ([`prepare_read`]) for a transaction to evaluate in apply;
//! STRLEN and GETRANGE are answered that way outside a transaction too (against the local
//! cache). GET and MGET, the hot path, read the cache directly and count hits and misses;
//! both paths make the reply with [`value_reply`].

use bytes::Bytes;
use crema::{CacheCommand, ExpiryUpdate, ReadCommand};

use super::lcs::LcsQuery;
use super::write::{PreparedRead, PreparedWrite, Render};
use super::{expiry_option, parse_int, value_reply, Call, CmdError, Kind};
use crate::resp::Reply;

/// The most bytes of values one MGET answers. The values are shared with the cache until the
/// reply is encoded, which copies them: found in review, one MGET naming an 8 MiB key a million
/// times would have encoded 8 TiB (Redis answers it, and runs out of memory the same way).
const MAX_MGET_REPLY_BYTES: usize = 512 << 20;

pub(super) async fn run(kind: Kind, call: &mut Call<'_>) -> Result<Reply, CmdError> {
    match kind {
        // Without options GETEX is a plain read.
        Kind::Get | Kind::GetEx => {
            let view = call.read_view(1..2).await?;
            Ok(value_reply(view.get(call.arg(1))))
        }
        Kind::MGet => {
            let view = call.read_view(1..call.args.len()).await?;
            let values = view.get_many(&call.args[1..]);
            let bytes: usize = values.iter().map(|v| v.as_ref().map_or(0, Bytes::len)).sum();
            if bytes > MAX_MGET_REPLY_BYTES {
                return Err(CmdError::Invalid(format!(
                    "MGET reply of {bytes} bytes is over the limit of {MAX_MGET_REPLY_BYTES}: ask for fewer keys at once"
                )));
            }
            Ok(Reply::Array(values.into_iter().map(value_reply).collect()))
        }
        Kind::Lcs => {
            let query = LcsQuery::parse(&call.args[3..])?;
            let view = call.read_view(1..3).await?;
            let (a, b) =
                (view.get(call.arg(1)).unwrap_or_default(), view.get(call.arg(2)).unwrap_or_default());
            query.answer(a, b).await
        }
        Kind::StrLen | Kind::GetRange => {
            let PreparedRead { read, render } = prepare_read(kind, call)?;
            let view = call.read_view(1..2).await?;
            render.reply(read.read(&view, crema::unix_now_ms()))
        }
        _ => unreachable!("not a get command: {kind:?}"),
    }
}

/// GET, MGET, STRLEN, GETRANGE and GETEX without options, as data.
pub(super) fn prepare_read(kind: Kind, call: &Call<'_>) -> Result<PreparedRead, CmdError> {
    let key = || vec![call.arg(1).clone()];
    let (read, render) = match kind {
        Kind::Get | Kind::GetEx => (ReadCommand::Values { keys: key() }, Render::Value),
        Kind::MGet => (ReadCommand::Values { keys: call.args[1..].to_vec() }, Render::Values),
        Kind::StrLen => (ReadCommand::Meta { keys: key() }, Render::StrLen),
        Kind::Lcs => (
            ReadCommand::Values { keys: call.args[1..3].to_vec() },
            Render::Lcs(LcsQuery::parse(&call.args[3..])?),
        ),
        Kind::GetRange => {
            let (start, end) = (parse_int(call.arg(2))?, parse_int(call.arg(3))?);
            (ReadCommand::Values { keys: key() }, Render::Range { start, end })
        }
        _ => unreachable!("not a read of strings: {kind:?}"),
    };
    Ok(PreparedRead { read, render })
}

/// GETDEL, and GETEX with an expiry option; `None` for a GETEX without one (a read).
pub(super) fn prepare(kind: Kind, call: &Call<'_>) -> Result<Option<PreparedWrite>, CmdError> {
    let key = call.arg(1).clone();
    match kind {
        Kind::GetDel => Ok(Some(PreparedWrite::new(CacheCommand::GetDel { key }, Render::Value))),
        _ => Ok(get_ex_expiry(call)?
            .map(|expiry| PreparedWrite::new(CacheCommand::GetEx { key, expiry }, Render::Value))),
    }
}

/// Whether `error`, from preparing `kind`, is one Redis only gives for a key that exists: GETEX
/// looks the key up before it reads its expiry, so `GETEX missing EX 0` (or `EX abc`) answers
/// nil, and only an existing key gets the error.
pub(super) fn expiry_checked_after_lookup(kind: Kind, error: &CmdError) -> bool {
    kind == Kind::GetEx && matches!(error, CmdError::NotInteger | CmdError::InvalidExpire(_))
}

/// Nil when the key of a GETEX whose expiry is bad does not exist, else `error`. A read at the
/// connection's consistency: the answer is what the command would have seen at that point, and
/// it changes nothing either way.
pub(super) async fn missing_or(call: &mut Call<'_>, error: CmdError) -> Result<Reply, CmdError> {
    let view = call.read_view(1..2).await?;
    match view.get(call.arg(1)) {
        None => Ok(Reply::Null),
        Some(_) => Err(error),
    }
}

fn get_ex_expiry(call: &Call<'_>) -> Result<Option<ExpiryUpdate>, CmdError> {
    let mut expiry = ExpiryUpdate::Keep;
    // As in Redis, an option may repeat (the last value wins); only conflicting ones are refused.
    let mut kind: Option<String> = None;
    let mut i = 2;
    while i < call.args.len() {
        let option = call.option(i);
        let same = kind.as_ref().is_none_or(|k| *k == option);
        match option.as_str() {
            "PERSIST" if same => expiry = ExpiryUpdate::Persist,
            "EX" | "PX" | "EXAT" | "PXAT" if same && i + 1 < call.args.len() => {
                expiry = ExpiryUpdate::At(expiry_option(&option, call.arg(i + 1), "getex")?);
                i += 1;
            }
            _ => return Err(CmdError::Syntax),
        }
        kind = Some(option);
        i += 1;
    }
    Ok((expiry != ExpiryUpdate::Keep).then_some(expiry))
}

/// Redis's GETRANGE: inclusive `start..=end`, negative positions count from the end.
pub(super) fn substring(value: &Bytes, start: i64, end: i64) -> Bytes {
    let len = value.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return Bytes::new();
    }
    let start = if start < 0 { (len + start).max(0) } else { start };
    let end = if end < 0 { (len + end).max(0) } else { end.min(len - 1) };
    if start > end || start >= len {
        return Bytes::new();
    }
    value.slice(start as usize..=end as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_matches_redis() {
        let v = Bytes::from("This is a string");
        let s = |a, b| String::from_utf8(substring(&v, a, b).to_vec()).unwrap();
        assert_eq!(s(0, 3), "This");
        assert_eq!(s(-3, -1), "ing");
        assert_eq!(s(0, -1), "This is a string");
        assert_eq!(s(10, 100), "string");
        assert_eq!(s(5, 2), "");
        assert_eq!(s(-1, -5), "");
        assert_eq!(s(100, 200), "");
        assert_eq!(s(-100, 2), "Thi");
        assert_eq!(substring(&Bytes::new(), 0, -1), Bytes::new());
    }
}
