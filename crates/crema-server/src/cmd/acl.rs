//! `ACL`: SETUSER, DELUSER, GETUSER, LIST, USERS, WHOAMI, CAT, LOG, DRYRUN, GENPASS, LOAD, SAVE
//! and HELP, in Redis's shapes. Changes (SETUSER, DELUSER, LOAD) go through Raft as
//! `CacheCommand::Acl`, so every node agrees on the users; reads answer from this node's applied
//! users after a read barrier (Read-Index), so a change acknowledged anywhere is seen.

use bytes::Bytes;
use crema::acl::{hash_hex, AclChange, CommandTarget, Rule};
use crema::{ApplyOutput, CacheCommand};
use rand::RngCore;

use super::table::{lookup, CATEGORIES, COMMANDS};
use super::{parse_int, Call, CmdError};
use crate::acl::{file, refusal, Refusal, DEFAULT_USER};
use crate::resp::Reply;

pub(super) async fn run(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let sub = call.option(1);
    let argc = call.args.len();
    match (sub.as_str(), argc) {
        ("SETUSER", 3..) => set_user(call).await,
        ("DELUSER", 3..) => del_user(call).await,
        ("GETUSER", 3) => {
            call.read_barrier().await?;
            Ok(get_user(call, &text(call.arg(2))))
        }
        ("LIST", 2) => {
            call.read_barrier().await?;
            let access = &call.state.acl;
            let lines = access
                .user_names()
                .into_iter()
                .filter_map(|n| access.user(&n).map(|u| Reply::bulk(format!("user {n} {}", u.describe()))))
                .collect();
            Ok(Reply::Array(lines))
        }
        ("USERS", 2) => {
            call.read_barrier().await?;
            Ok(Reply::Array(call.state.acl.user_names().into_iter().map(Reply::bulk).collect()))
        }
        ("WHOAMI", 2) => {
            Ok(Reply::bulk(call.session.user.as_ref().map_or(DEFAULT_USER.to_owned(), |u| u.name.clone())))
        }
        ("CAT", 2) => Ok(Reply::Array(CATEGORIES.iter().map(|c| Reply::bulk(*c)).collect())),
        ("CAT", 3) => category(call),
        ("LOG", 2 | 3) => log(call),
        ("DRYRUN", 4..) => dry_run(call).await,
        ("GENPASS", 2 | 3) => gen_pass(call),
        ("LOAD", 2) => load(call).await,
        ("SAVE", 2) => save(call).await,
        ("HELP", 2) => Ok(Reply::Array(HELP.iter().map(|l| Reply::Simple(l)).collect())),
        (
            "SETUSER" | "DELUSER" | "GETUSER" | "LIST" | "USERS" | "WHOAMI" | "CAT" | "LOG" | "DRYRUN"
            | "GENPASS" | "LOAD" | "SAVE" | "HELP",
            _,
        ) => Err(CmdError::Arity(format!("acl|{}", sub.to_ascii_lowercase()))),
        _ => Err(CmdError::Invalid(format!(
            "unknown subcommand '{}'. Try ACL HELP.",
            String::from_utf8_lossy(call.arg(1))
        ))),
    }
}

const HELP: &[&str] = &[
    "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CAT [<category>]",
    "DELUSER <username> [<username> ...]",
    "DRYRUN <username> <command> [<arg> ...]",
    "GETUSER <username>",
    "LIST",
    "USERS",
    "SETUSER <username> <attribs> ...",
    "SAVE",
    "LOAD",
    "LOG [<count> | RESET]",
    "GENPASS [<bits>]",
    "WHOAMI",
    "HELP",
];

fn text(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

/// Redis 7's commands that crema does not have. Rules may name them, as in Redis (found from
/// outside: `-debug -shutdown`, a common hardening in ACL files, was refused, and an ACL file
/// with it kept the node from starting); they match no command here.
const REDIS_ONLY: &[&str] = &[
    "dump",
    "migrate",
    "move",
    "restore",
    "sort",
    "sort_ro",
    "waitaof",
    "blmove",
    "blmpop",
    "blpop",
    "brpop",
    "brpoplpush",
    "lindex",
    "linsert",
    "llen",
    "lmove",
    "lmpop",
    "lpop",
    "lpos",
    "lpush",
    "lpushx",
    "lrange",
    "lrem",
    "lset",
    "ltrim",
    "rpop",
    "rpoplpush",
    "rpush",
    "rpushx",
    "sadd",
    "scard",
    "sdiff",
    "sdiffstore",
    "sinter",
    "sintercard",
    "sinterstore",
    "sismember",
    "smembers",
    "smismember",
    "smove",
    "spop",
    "srandmember",
    "srem",
    "sscan",
    "sunion",
    "sunionstore",
    "bzmpop",
    "bzpopmax",
    "bzpopmin",
    "zadd",
    "zcard",
    "zcount",
    "zdiff",
    "zdiffstore",
    "zincrby",
    "zinter",
    "zintercard",
    "zinterstore",
    "zlexcount",
    "zmpop",
    "zmscore",
    "zpopmax",
    "zpopmin",
    "zrandmember",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrangestore",
    "zrank",
    "zrem",
    "zremrangebylex",
    "zremrangebyrank",
    "zremrangebyscore",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
    "zunion",
    "zunionstore",
    "hdel",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hlen",
    "hmget",
    "hmset",
    "hrandfield",
    "hscan",
    "hset",
    "hsetnx",
    "hstrlen",
    "hvals",
    "xack",
    "xadd",
    "xautoclaim",
    "xclaim",
    "xdel",
    "xgroup",
    "xinfo",
    "xlen",
    "xpending",
    "xrange",
    "xread",
    "xreadgroup",
    "xrevrange",
    "xsetid",
    "xtrim",
    "bitcount",
    "bitfield",
    "bitfield_ro",
    "bitop",
    "bitpos",
    "getbit",
    "setbit",
    "pfadd",
    "pfcount",
    "pfdebug",
    "pfmerge",
    "pfselftest",
    "geoadd",
    "geodist",
    "geohash",
    "geopos",
    "georadius",
    "georadius_ro",
    "georadiusbymember",
    "georadiusbymember_ro",
    "geosearch",
    "geosearchstore",
    "psubscribe",
    "publish",
    "pubsub",
    "punsubscribe",
    "spublish",
    "ssubscribe",
    "subscribe",
    "sunsubscribe",
    "unsubscribe",
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
    "function",
    "script",
    "bgrewriteaof",
    "bgsave",
    "debug",
    "failover",
    "latency",
    "module",
    "monitor",
    "psync",
    "replconf",
    "replicaof",
    "save",
    "shutdown",
    "slaveof",
    "slowlog",
    "swapdb",
    "sync",
];

/// Checks that every command and category a rule names exists (Redis refuses unknown ones).
pub(crate) fn check_names(rules: &[Bytes]) -> Result<(), CmdError> {
    for rule in rules {
        let parsed = Rule::parse(rule).map_err(|e| CmdError::Invalid(e.to_string()))?;
        let known = match &parsed {
            Rule::Commands(_, CommandTarget::Category(c)) => CATEGORIES.contains(&c.as_str()),
            Rule::Commands(_, CommandTarget::Command(c)) => {
                let name = c.split('|').next().unwrap_or_default();
                // A first argument after `|` only where this node can tell it (a subcommand):
                // `-get|secret` would otherwise deny nothing here.
                lookup(name.as_bytes()).is_some_and(|spec| !c.contains('|') || spec.has_subcommands())
                    || REDIS_ONLY.contains(&name.to_ascii_lowercase().as_str())
            }
            _ => true,
        };
        if !known {
            return Err(CmdError::Invalid(format!(
                "Error in ACL SETUSER modifier '{}': Unknown command or category name in ACL",
                text(rule)
            )));
        }
    }
    Ok(())
}

async fn propose(call: &Call<'_>, change: AclChange) -> Result<ApplyOutput, CmdError> {
    match call.execute_raw(CacheCommand::Acl(change)).await? {
        ApplyOutput::Failed(e) => Err(e.into()),
        output => Ok(output),
    }
}

async fn set_user(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let name = text(call.arg(2));
    let given = &call.args[3..];
    check_names(given)?;
    // The first change to `default` starts from what this node enforces (`--password`).
    let mut rules = if name == DEFAULT_USER { call.state.acl.default_base_rules() } else { Vec::new() };
    rules.extend_from_slice(given);
    let change = AclChange::set_user(&name, &rules).map_err(|e| CmdError::Invalid(e.to_string()))?;
    propose(call, change).await?;
    Ok(Reply::OK)
}

async fn del_user(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let names: Vec<String> = call.args[2..].iter().map(text).collect();
    if names.iter().any(|n| n == DEFAULT_USER) {
        return Err(CmdError::Invalid("The 'default' user cannot be removed".into()));
    }
    match propose(call, AclChange::DelUsers { names }).await? {
        ApplyOutput::Int(n) => Ok(Reply::Integer(n)),
        other => Err(CmdError::Invalid(format!("unexpected output {other:?}"))),
    }
}

fn get_user(call: &Call<'_>, name: &str) -> Reply {
    let Some(user) = call.state.acl.user(name) else { return Reply::Null };
    let field = |name: &'static str, value: Reply| (Reply::bulk(name), value);
    Reply::Map(vec![
        field("flags", Reply::Array(user.flags().into_iter().map(Reply::bulk).collect())),
        field("passwords", Reply::Array(user.passwords.iter().map(|h| Reply::bulk(hash_hex(h))).collect())),
        field("commands", Reply::bulk(user.describe_commands())),
        field("keys", Reply::bulk(user.describe_keys())),
        field("channels", Reply::bulk(user.describe_channels())),
        field("selectors", Reply::Array(Vec::new())),
    ])
}

fn category(call: &Call<'_>) -> Result<Reply, CmdError> {
    let wanted = call.arg(2).to_ascii_lowercase();
    let wanted = String::from_utf8_lossy(&wanted).into_owned();
    if !CATEGORIES.contains(&wanted.as_str()) {
        return Err(CmdError::Invalid(format!("Unknown category '{wanted}'")));
    }
    let names =
        COMMANDS.iter().filter(|c| c.categories.contains(&wanted.as_str())).map(|c| Reply::bulk(c.name));
    Ok(Reply::Array(names.collect()))
}

fn log(call: &Call<'_>) -> Result<Reply, CmdError> {
    let log = &call.state.acl.log;
    match call.args.get(2) {
        None => Ok(log.reply(10)),
        Some(arg) if arg.eq_ignore_ascii_case(b"reset") => {
            log.reset();
            Ok(Reply::OK)
        }
        Some(arg) => match parse_int(arg) {
            Ok(n) if n >= 0 => Ok(log.reply(n as usize)),
            Ok(_) => Err(CmdError::Invalid("value is out of range, must be positive".into())),
            Err(_) => Err(CmdError::Invalid("value is not an integer or out of range".into())),
        },
    }
}

async fn dry_run(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    call.read_barrier().await?;
    let name = text(call.arg(2));
    let Some(user) = call.state.acl.user(&name) else {
        return Err(CmdError::Invalid(format!("User '{name}' not found")));
    };
    let args = call.args[3..].to_vec();
    let Some(spec) = lookup(&args[0]) else {
        return Err(CmdError::Invalid(format!("Command '{}' not found", text(&args[0]))));
    };
    if !spec.arity_ok(args.len()) {
        return Err(CmdError::Arity(spec.name.to_owned()));
    }
    Ok(match refusal(&user, spec, &args) {
        None => Reply::OK,
        Some(Refusal::Command(_)) => {
            Reply::bulk(format!("User {name} has no permissions to run the '{}' command", spec.name))
        }
        Some(Refusal::Key(key)) => {
            Reply::bulk(format!("User {name} has no permissions to access the '{}' key", text(&key)))
        }
    })
}

fn gen_pass(call: &Call<'_>) -> Result<Reply, CmdError> {
    let bits = match call.args.get(2) {
        None => 256,
        Some(arg) => match parse_int(arg) {
            Ok(b @ 1..=4096) => b as usize,
            _ => return Err(CmdError::Invalid("ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096".into())),
        },
    };
    let mut bytes = vec![0u8; bits.div_ceil(8)];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Reply::bulk(hex[..bits.div_ceil(4)].to_owned()))
}

fn acl_file(call: &Call<'_>) -> Result<std::path::PathBuf, CmdError> {
    call.state.acl.file.clone().ok_or_else(|| {
        CmdError::Invalid("This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in order to store users in the Redis configuration.".into())
    })
}

async fn load(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let path = acl_file(call)?;
    let users = file::load(&path).map_err(CmdError::Invalid)?;
    for (_, rules) in &users {
        check_names(rules)?;
    }
    let change = AclChange::replace(&users, false).map_err(|e| CmdError::Invalid(e.to_string()))?;
    propose(call, change).await?;
    Ok(Reply::OK)
}

async fn save(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let path = acl_file(call)?;
    call.read_barrier().await?;
    let text = file::render(&call.state.acl);
    file::save(&path, &text).map_err(|e| CmdError::Invalid(format!("There was an error trying to save the ACLs. Please check the server logs for more information ({e})")))?;
    Ok(Reply::OK)
}
