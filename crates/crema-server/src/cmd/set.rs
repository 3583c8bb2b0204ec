//! Writing strings: SET with every option (NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL), SETNX,
//! SETEX, PSETEX, GETSET, MSET and MSETNX. Each is one replicated command; the conditions
//! (NX, XX, MSETNX) and the GET option are decided in apply.

use bytes::Bytes;
use crema::{CacheCommand, ExpiryUpdate, SetCondition};

use super::write::{PreparedWrite, Render};
use super::{expiry_option, Call, CmdError, Kind};

/// A parsed SET.
#[derive(Debug, PartialEq)]
struct SetArgs {
    expiry: ExpiryUpdate,
    condition: SetCondition,
    return_old: bool,
}

pub(super) fn prepare(kind: Kind, call: &Call<'_>) -> Result<PreparedWrite, CmdError> {
    let (key, value) = (call.arg(1).clone(), call.args.last().cloned().unwrap_or_default());
    let set = |expiry, condition, return_old| CacheCommand::Set {
        key: key.clone(),
        value: value.clone(),
        expiry,
        condition,
        return_old,
    };
    Ok(match kind {
        Kind::Set => {
            let args = parse_set(call)?;
            let command = CacheCommand::Set {
                key,
                value: call.arg(2).clone(),
                expiry: args.expiry,
                condition: args.condition,
                return_old: args.return_old,
            };
            PreparedWrite::new(command, Render::Set { return_old: args.return_old })
        }
        Kind::SetNx => {
            PreparedWrite::new(set(ExpiryUpdate::Persist, SetCondition::IfAbsent, false), Render::WrittenFlag)
        }
        Kind::SetEx | Kind::PSetEx => {
            let (option, name) = if kind == Kind::SetEx { ("EX", "setex") } else { ("PX", "psetex") };
            let at = expiry_option(option, call.arg(2), name)?;
            PreparedWrite::new(set(ExpiryUpdate::At(at), SetCondition::Always, false), Render::Ok)
        }
        Kind::GetSet => {
            PreparedWrite::new(set(ExpiryUpdate::Persist, SetCondition::Always, true), Render::OldValue)
        }
        Kind::MSet | Kind::MSetNx => {
            if call.args.len().is_multiple_of(2) {
                return Err(CmdError::Arity(if kind == Kind::MSet { "mset" } else { "msetnx" }.into()));
            }
            let pairs: Vec<(Bytes, Bytes)> =
                call.args[1..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
            let only_if_none_exist = kind == Kind::MSetNx;
            let render = if only_if_none_exist { Render::Int } else { Render::Ok };
            PreparedWrite::new(CacheCommand::PutMany { pairs, only_if_none_exist }, render)
        }
        _ => unreachable!("not a set command: {kind:?}"),
    })
}

fn parse_set(call: &Call<'_>) -> Result<SetArgs, CmdError> {
    let mut args =
        SetArgs { expiry: ExpiryUpdate::Persist, condition: SetCondition::Always, return_old: false };
    // As in Redis, an option may repeat (the last value wins); only conflicting ones are refused.
    let mut expiry_kind: Option<String> = None;
    let mut expiry_value = None;
    let mut i = 3;
    while i < call.args.len() {
        let option = call.option(i);
        let same_expiry = expiry_kind.as_ref().is_none_or(|k| *k == option);
        match option.as_str() {
            "NX" if args.condition != SetCondition::IfPresent => args.condition = SetCondition::IfAbsent,
            "XX" if args.condition != SetCondition::IfAbsent => args.condition = SetCondition::IfPresent,
            "GET" => args.return_old = true,
            "KEEPTTL" if same_expiry => {
                args.expiry = ExpiryUpdate::Keep;
                expiry_kind = Some(option);
            }
            // Only the last value is read, as in Redis: `PX GET PX 1000` is 1000 ms (the first
            // PX took `GET` as its value).
            "EX" | "PX" | "EXAT" | "PXAT" if same_expiry && i + 1 < call.args.len() => {
                expiry_kind = Some(option);
                expiry_value = Some(i + 1);
                i += 1;
            }
            _ => return Err(CmdError::Syntax),
        }
        i += 1;
    }
    if let (Some(option), Some(at)) = (expiry_kind.filter(|k| k != "KEEPTTL"), expiry_value) {
        args.expiry = ExpiryUpdate::At(expiry_option(&option, call.arg(at), "set")?);
    }
    Ok(args)
}
