//! The command table: every command's name, arity, flags and key positions, as Redis describes
//! them in `src/commands/*.json`. `COMMAND INFO` answers from it, the dispatcher checks arity and
//! authentication with it, and a shard router can find a command's keys with it.

use bytes::Bytes;
use crema::acl::KeyAccess;

/// Which command a table row is (the dispatcher matches on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Kind {
    Ping,
    Echo,
    Hello,
    Auth,
    Select,
    Quit,
    Reset,
    Client,
    ReadOnly,
    ReadWrite,
    Asking,
    Command,
    Config,
    Info,
    DbSize,
    Time,
    LastSave,
    Wait,
    FlushDb,
    FlushAll,
    Lolwut,
    Role,
    Get,
    MGet,
    StrLen,
    GetRange,
    Lcs,
    GetDel,
    GetEx,
    Set,
    SetNx,
    SetEx,
    PSetEx,
    GetSet,
    MSet,
    MSetNx,
    Incr,
    IncrBy,
    Decr,
    DecrBy,
    IncrByFloat,
    Append,
    SetRange,
    Del,
    Unlink,
    Exists,
    Touch,
    Rename,
    RenameNx,
    Copy,
    Object,
    Memory,
    Type,
    Keys,
    Scan,
    RandomKey,
    Expire,
    PExpire,
    ExpireAt,
    PExpireAt,
    Persist,
    Ttl,
    PTtl,
    ExpireTime,
    PExpireTime,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Acl,
    Cluster,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// Lower-case name.
    pub name: &'static str,
    /// Argument count including the name; negative means "at least |arity|".
    pub arity: i32,
    /// Redis's flags (`write`, `readonly`, `fast`, `no-auth`, ...).
    pub flags: &'static [&'static str],
    /// Position of the first key argument (0: no keys).
    pub first_key: i32,
    /// Position of the last key (-1: the last argument).
    pub last_key: i32,
    /// Step between keys.
    pub step: i32,
    /// The command.
    pub kind: Kind,
    /// Its ACL categories (without `@`); see also [`CommandSpec::categories_of`].
    pub categories: &'static [&'static str],
}

impl CommandSpec {
    /// Whether the command changes data (it goes through Raft).
    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }

    /// Whether it may run before `AUTH`.
    pub fn no_auth(&self) -> bool {
        self.flags.contains(&"no-auth")
    }

    /// The ACL categories of a call whose first argument is `sub`: a container command's
    /// subcommands may have their own (`ACL SETUSER` is `@admin`, `ACL WHOAMI` is not).
    pub fn categories_of(&self, sub: Option<&[u8]>) -> &'static [&'static str] {
        let sub = sub.map(|s| s.to_ascii_lowercase());
        match (self.kind, sub.as_deref()) {
            (Kind::Acl, Some(b"cat" | b"whoami" | b"genpass" | b"help")) => S,
            (Kind::Acl, _) => ADM,
            (Kind::Client, Some(b"list" | b"no-evict" | b"kill")) => {
                &["admin", "slow", "dangerous", "connection"]
            }
            (
                Kind::Cluster,
                Some(
                    b"keyslot" | b"help" | b"info" | b"myid" | b"nodes" | b"shards" | b"slots"
                    | b"countkeysinslot" | b"getkeysinslot",
                ),
            ) => S,
            (Kind::Cluster, _) => ADM,
            _ => self.categories,
        }
    }

    /// Whether the command's subcommand names the rule target `name|sub`.
    pub fn has_subcommands(&self) -> bool {
        matches!(
            self.kind,
            Kind::Acl
                | Kind::Client
                | Kind::Config
                | Kind::Command
                | Kind::Cluster
                | Kind::Object
                | Kind::Memory
        )
    }

    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        arity_ok(self.arity, argc)
    }

    /// The positions of the key arguments in a call with `argc` arguments.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let argc = argc as i32;
        let last = if self.last_key < 0 { argc + self.last_key } else { self.last_key.min(argc - 1) };
        let (first, step) = (self.first_key, self.step.max(1));
        (first..=last).step_by(step as usize).filter(move |_| first > 0).map(|p| p as usize)
    }

    /// Whether the subcommand of a `CLIENT`, `CONFIG` or `COMMAND` call exists here and has
    /// its arity (Redis's), as a transaction checks when it queues one: found from outside,
    /// `CLIENT SETNAME` without a name was queued, and `EXEC` ran the rest of the transaction
    /// where Redis discards all of it. Other commands: `Ok` (their own checks run).
    ///
    /// # Errors
    /// An unknown subcommand, or a wrong number of arguments for it.
    pub fn check_subcommand(&self, args: &[Bytes]) -> Result<(), super::CmdError> {
        let subs: &[(&str, i32)] = match self.kind {
            Kind::Client => &[
                ("setname", 3),
                ("getname", 2),
                ("id", 2),
                ("info", 2),
                ("list", -2),
                ("kill", -3),
                ("setinfo", 4),
                ("no-evict", 3),
                ("no-touch", 3),
            ],
            Kind::Config => &[("get", -3), ("set", -4), ("resetstat", 2)],
            Kind::Command => {
                &[("count", 2), ("list", -2), ("info", -2), ("docs", -2), ("getkeys", -3), ("help", 2)]
            }
            _ => return Ok(()),
        };
        let Some(sub) = args.get(1) else { return Ok(()) };
        let lower = String::from_utf8_lossy(sub).to_ascii_lowercase();
        match subs.iter().find(|(name, _)| *name == lower) {
            Some((_, arity)) if arity_ok(*arity, args.len()) => Ok(()),
            Some(_) => Err(super::CmdError::Arity(format!("{}|{lower}", self.name))),
            None => Err(super::CmdError::Invalid(format!(
                "unknown subcommand '{}'. Try {} HELP.",
                String::from_utf8_lossy(sub),
                self.name.to_uppercase()
            ))),
        }
    }

    /// What the call `args` does to its key at `position` (one of [`Self::key_positions`]),
    /// as Redis's key specifications say for ACL checks: a write that also returns or copies
    /// the value it finds (`GETSET`, `GETDEL`, `GETEX`, `SET ... GET`, the `INCR` family, the
    /// source of `RENAME`) reads it too, and `COPY` only reads its source. Found from outside:
    /// every key of a write was checked for writing alone, so a user with only `%W~secret:*`
    /// read `secret:a` through `GETSET secret:a x`. `None`: the command neither reads the value
    /// nor writes it (`EXISTS`, `TYPE`, `STRLEN`, `TOUCH`, `WATCH`, `OBJECT`, `MEMORY USAGE`),
    /// and any pattern that matches the key allows it, as in Redis.
    pub fn key_access(&self, args: &[Bytes], position: usize) -> Option<KeyAccess> {
        let source = position == self.first_key as usize;
        let both = match self.kind {
            Kind::GetDel | Kind::GetEx | Kind::GetSet => true,
            Kind::Incr | Kind::IncrBy | Kind::Decr | Kind::DecrBy | Kind::IncrByFloat => true,
            Kind::Set => args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"get")),
            Kind::Rename | Kind::RenameNx => source,
            Kind::Copy if source => return Some(KeyAccess::Read),
            Kind::Exists
            | Kind::Type
            | Kind::StrLen
            | Kind::Touch
            | Kind::Watch
            | Kind::Object
            | Kind::Memory => return None,
            _ => false,
        };
        Some(match (both, self.is_write()) {
            (true, _) => KeyAccess::ReadWrite,
            (false, true) => KeyAccess::Write,
            (false, false) => KeyAccess::Read,
        })
    }
}

/// Whether `argc` arguments (the name included) fit `arity` (negative: at least `-arity`).
fn arity_ok(arity: i32, argc: usize) -> bool {
    let argc = i32::try_from(argc).unwrap_or(i32::MAX);
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WD: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const C: &[&str] = &["fast", "stale", "loading"];
const NA: &[&str] = &["no-auth", "fast", "stale", "loading"];
const A: &[&str] = &["admin", "stale", "loading"];
/// MULTI, DISCARD, WATCH, UNWATCH (Redis 7's flags).
const TX: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];

macro_rules! row {
    ($name:literal, $arity:expr, $flags:expr, $first:expr, $last:expr, $step:expr, $kind:ident, $acl:expr) => {
        CommandSpec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first_key: $first,
            last_key: $last,
            step: $step,
            kind: Kind::$kind,
            categories: $acl,
        }
    };
}

// ACL categories, as Redis 7 gives them in `src/commands/*.json`.
const FC: &[&str] = &["fast", "connection"];
const SC: &[&str] = &["slow", "connection"];
const ADM: &[&str] = &["admin", "slow", "dangerous"];
const SD: &[&str] = &["slow", "dangerous"];
const AFD: &[&str] = &["admin", "fast", "dangerous"];
const F: &[&str] = &["fast"];
const S: &[&str] = &["slow"];
const RF_: &[&str] = &["read", "fast"];
const RSF: &[&str] = &["read", "string", "fast"];
const RSS: &[&str] = &["read", "string", "slow"];
const RS: &[&str] = &["read", "slow"];
const WSF: &[&str] = &["write", "string", "fast"];
const WSS: &[&str] = &["write", "string", "slow"];
const KRF: &[&str] = &["keyspace", "read", "fast"];
const KRS: &[&str] = &["keyspace", "read", "slow"];
const KRSD: &[&str] = &["keyspace", "read", "slow", "dangerous"];
const KWF: &[&str] = &["keyspace", "write", "fast"];
const KWS: &[&str] = &["keyspace", "write", "slow"];
const KWSD: &[&str] = &["keyspace", "write", "slow", "dangerous"];
const FT: &[&str] = &["fast", "transaction"];
const ST: &[&str] = &["slow", "transaction"];

/// Every ACL category Redis defines (`ACL CAT`); rules may name any of them, even those no
/// crema command is in yet.
pub const CATEGORIES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// Every command this server knows.
pub static COMMANDS: &[CommandSpec] = &[
    row!("ping", -1, C, 0, 0, 0, Ping, FC),
    row!("echo", 2, C, 0, 0, 0, Echo, FC),
    row!("hello", -1, NA, 0, 0, 0, Hello, FC),
    row!("auth", -2, NA, 0, 0, 0, Auth, FC),
    row!("select", 2, C, 0, 0, 0, Select, FC),
    row!("quit", -1, NA, 0, 0, 0, Quit, FC),
    row!("reset", 1, NA, 0, 0, 0, Reset, FC),
    row!("client", -2, C, 0, 0, 0, Client, SC),
    row!("readonly", 1, C, 0, 0, 0, ReadOnly, FC),
    row!("readwrite", 1, C, 0, 0, 0, ReadWrite, FC),
    row!("asking", 1, C, 0, 0, 0, Asking, FC),
    row!("command", -1, &["stale", "loading"], 0, 0, 0, Command, SC),
    row!("config", -2, A, 0, 0, 0, Config, ADM),
    row!("info", -1, &["stale", "loading"], 0, 0, 0, Info, SD),
    row!("dbsize", 1, RF, 0, 0, 0, DbSize, KRF),
    row!("time", 1, C, 0, 0, 0, Time, F),
    row!("lastsave", 1, &["loading", "stale", "fast"], 0, 0, 0, LastSave, AFD),
    row!("wait", 3, &[], 0, 0, 0, Wait, SC),
    row!("flushdb", -1, &["write"], 0, 0, 0, FlushDb, KWSD),
    row!("flushall", -1, &["write"], 0, 0, 0, FlushAll, KWSD),
    row!("lolwut", -1, &["readonly", "fast"], 0, 0, 0, Lolwut, RF_),
    row!("role", 1, &["noscript", "loading", "stale", "fast"], 0, 0, 0, Role, AFD),
    row!("get", 2, RF, 1, 1, 1, Get, RSF),
    row!("mget", -2, RF, 1, -1, 1, MGet, RSF),
    row!("strlen", 2, RF, 1, 1, 1, StrLen, RSF),
    row!("getrange", 4, R, 1, 1, 1, GetRange, RSS),
    row!("substr", 4, R, 1, 1, 1, GetRange, RSS),
    row!("lcs", -3, R, 1, 2, 1, Lcs, RSS),
    row!("getdel", 2, WD, 1, 1, 1, GetDel, WSF),
    row!("getex", -2, WD, 1, 1, 1, GetEx, WSF),
    row!("set", -3, W, 1, 1, 1, Set, WSS),
    row!("setnx", 3, WF, 1, 1, 1, SetNx, WSF),
    row!("setex", 4, W, 1, 1, 1, SetEx, WSS),
    row!("psetex", 4, W, 1, 1, 1, PSetEx, WSS),
    row!("getset", 3, WF, 1, 1, 1, GetSet, WSF),
    row!("mset", -3, W, 1, -1, 2, MSet, WSS),
    row!("msetnx", -3, W, 1, -1, 2, MSetNx, WSS),
    row!("incr", 2, WF, 1, 1, 1, Incr, WSF),
    row!("incrby", 3, WF, 1, 1, 1, IncrBy, WSF),
    row!("decr", 2, WF, 1, 1, 1, Decr, WSF),
    row!("decrby", 3, WF, 1, 1, 1, DecrBy, WSF),
    row!("incrbyfloat", 3, WF, 1, 1, 1, IncrByFloat, WSF),
    row!("append", 3, WF, 1, 1, 1, Append, WSF),
    row!("setrange", 4, W, 1, 1, 1, SetRange, WSS),
    row!("del", -2, &["write"], 1, -1, 1, Del, KWS),
    row!("unlink", -2, WD, 1, -1, 1, Unlink, KWF),
    row!("exists", -2, RF, 1, -1, 1, Exists, KRF),
    row!("touch", -2, RF, 1, -1, 1, Touch, KRF),
    row!("rename", 3, &["write"], 1, 2, 1, Rename, KWS),
    row!("renamenx", 3, WD, 1, 2, 1, RenameNx, KWF),
    row!("copy", -3, W, 1, 2, 1, Copy, KWS),
    row!("object", -2, R, 2, 2, 1, Object, KRS),
    row!("memory", -2, R, 2, 2, 1, Memory, RS),
    row!("type", 2, RF, 1, 1, 1, Type, KRF),
    row!("keys", 2, R, 0, 0, 0, Keys, KRSD),
    row!("scan", -2, R, 0, 0, 0, Scan, KRS),
    row!("randomkey", 1, R, 0, 0, 0, RandomKey, KRS),
    row!("expire", -3, WD, 1, 1, 1, Expire, KWF),
    row!("pexpire", -3, WD, 1, 1, 1, PExpire, KWF),
    row!("expireat", -3, WD, 1, 1, 1, ExpireAt, KWF),
    row!("pexpireat", -3, WD, 1, 1, 1, PExpireAt, KWF),
    row!("persist", 2, WD, 1, 1, 1, Persist, KWF),
    row!("ttl", 2, RF, 1, 1, 1, Ttl, KRF),
    row!("pttl", 2, RF, 1, 1, 1, PTtl, KRF),
    row!("expiretime", 2, RF, 1, 1, 1, ExpireTime, KRF),
    row!("pexpiretime", 2, RF, 1, 1, 1, PExpireTime, KRF),
    row!("multi", 1, TX, 0, 0, 0, Multi, FT),
    row!("exec", 1, &["noscript", "loading", "stale", "skip_slowlog"], 0, 0, 0, Exec, ST),
    row!("discard", 1, TX, 0, 0, 0, Discard, FT),
    row!("watch", -2, TX, 1, -1, 1, Watch, FT),
    row!("unwatch", 1, TX, 0, 0, 0, Unwatch, FT),
    row!("acl", -2, &["noscript", "loading", "stale"], 0, 0, 0, Acl, S),
    row!("cluster", -2, &["stale"], 0, 0, 0, Cluster, S),
];

/// The row of `name` (any case), if the command exists.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    lookup_index(name).map(|i| &COMMANDS[i])
}

/// The position of `name` (any case) in [`COMMANDS`].
pub fn lookup_index(name: &[u8]) -> Option<usize> {
    // Names are at most 11 bytes: lower-case on the stack, then a linear scan of ~60 rows, which
    // measures faster than hashing for a table this small.
    let mut lower = [0u8; 16];
    let lower = lower.get_mut(..name.len())?;
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    COMMANDS.iter().position(|c| c.name.as_bytes() == lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_rejects_unknown() {
        assert_eq!(lookup(b"GeT").unwrap().kind, Kind::Get);
        assert!(lookup(b"nosuch").is_none());
        assert!(lookup(b"a-name-longer-than-sixteen-bytes").is_none());
    }

    #[test]
    fn arity_and_keys() {
        let mset = lookup(b"mset").unwrap();
        assert!(!mset.arity_ok(2) && mset.arity_ok(3) && mset.arity_ok(5));
        assert_eq!(mset.key_positions(5).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(lookup(b"del").unwrap().key_positions(4).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(lookup(b"ping").unwrap().key_positions(2).count(), 0);
        assert!(lookup(b"get").unwrap().arity_ok(2) && !lookup(b"get").unwrap().arity_ok(3));
    }

    #[test]
    fn names_are_unique_and_lower_case() {
        let mut names: Vec<_> = COMMANDS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
        assert!(COMMANDS.iter().all(|c| c.name == c.name.to_lowercase()));
    }
}
