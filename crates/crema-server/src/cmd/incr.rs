//! Changing a value in place: INCR, INCRBY, DECR, DECRBY, INCRBYFLOAT, APPEND, SETRANGE. Each is
//! one replicated command computed in apply from the value the log has at that point, so racing
//! clients on any nodes never lose an update.

use crema::{ApplyError, CacheCommand, LongDouble, ParseLongDoubleError};

use super::write::{PreparedWrite, Render};
use super::{parse_int, Call, CmdError, Kind};

pub(super) fn prepare(kind: Kind, call: &Call<'_>) -> Result<PreparedWrite, CmdError> {
    let key = call.arg(1).clone();
    let command = match kind {
        Kind::Incr => CacheCommand::IncrBy { key, delta: 1 },
        Kind::Decr => CacheCommand::IncrBy { key, delta: -1 },
        Kind::IncrBy => CacheCommand::IncrBy { key, delta: parse_int(call.arg(2))? },
        Kind::DecrBy => {
            let delta = parse_int(call.arg(2))?;
            let delta = delta.checked_neg().ok_or(CmdError::Invalid("decrement would overflow".into()))?;
            CacheCommand::IncrBy { key, delta }
        }
        Kind::IncrByFloat => {
            let delta = match LongDouble::parse(call.arg(2)) {
                Ok(delta) => delta,
                Err(ParseLongDoubleError::Invalid) => return Err(CmdError::NotFloat),
                // Redis adds it and then refuses the infinite sum: refuse it before proposing.
                Err(ParseLongDoubleError::Infinite) => {
                    return Err(CmdError::Apply(ApplyError::NanOrInfinity))
                }
            };
            CacheCommand::IncrByLongDouble { key, delta }
        }
        Kind::Append => {
            CacheCommand::Append { key, value: call.arg(2).clone(), max_len: call.max_value_bytes() }
        }
        Kind::SetRange => {
            let offset = parse_int(call.arg(2))?;
            let offset =
                u64::try_from(offset).map_err(|_| CmdError::Invalid("offset is out of range".into()))?;
            CacheCommand::SetRange {
                key,
                offset,
                value: call.arg(3).clone(),
                max_len: call.max_value_bytes(),
            }
        }
        _ => unreachable!("not an in-place command: {kind:?}"),
    };
    let render = if kind == Kind::IncrByFloat { Render::Value } else { Render::Int };
    Ok(PreparedWrite::new(command, render))
}
