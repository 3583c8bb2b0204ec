//! The command table: every command's name, arity, flags and key positions, as Redis describes
//! them in `src/commands/*.json`. `COMMAND INFO` answers from it, the dispatcher checks arity and
//! authentication with it, and a shard router can find a command's keys with it.

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
    Command,
    Config,
    Info,
    DbSize,
    Time,
    Wait,
    FlushDb,
    FlushAll,
    Lolwut,
    Get,
    MGet,
    StrLen,
    GetRange,
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

    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i32;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// The positions of the key arguments in a call with `argc` arguments.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let argc = argc as i32;
        let last = if self.last_key < 0 { argc + self.last_key } else { self.last_key.min(argc - 1) };
        let (first, step) = (self.first_key, self.step.max(1));
        (first..=last).step_by(step as usize).filter(move |_| first > 0).map(|p| p as usize)
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
    ($name:literal, $arity:expr, $flags:expr, $first:expr, $last:expr, $step:expr, $kind:ident) => {
        CommandSpec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first_key: $first,
            last_key: $last,
            step: $step,
            kind: Kind::$kind,
        }
    };
}

/// Every command this server knows.
pub static COMMANDS: &[CommandSpec] = &[
    row!("ping", -1, C, 0, 0, 0, Ping),
    row!("echo", 2, C, 0, 0, 0, Echo),
    row!("hello", -1, NA, 0, 0, 0, Hello),
    row!("auth", -2, NA, 0, 0, 0, Auth),
    row!("select", 2, C, 0, 0, 0, Select),
    row!("quit", -1, NA, 0, 0, 0, Quit),
    row!("reset", 1, NA, 0, 0, 0, Reset),
    row!("client", -2, C, 0, 0, 0, Client),
    row!("readonly", 1, C, 0, 0, 0, ReadOnly),
    row!("readwrite", 1, C, 0, 0, 0, ReadWrite),
    row!("command", -1, &["stale", "loading"], 0, 0, 0, Command),
    row!("config", -2, A, 0, 0, 0, Config),
    row!("info", -1, &["stale", "loading"], 0, 0, 0, Info),
    row!("dbsize", 1, RF, 0, 0, 0, DbSize),
    row!("time", 1, C, 0, 0, 0, Time),
    row!("wait", 3, &[], 0, 0, 0, Wait),
    row!("flushdb", -1, &["write"], 0, 0, 0, FlushDb),
    row!("flushall", -1, &["write"], 0, 0, 0, FlushAll),
    row!("lolwut", -1, &["readonly", "fast"], 0, 0, 0, Lolwut),
    row!("get", 2, RF, 1, 1, 1, Get),
    row!("mget", -2, RF, 1, -1, 1, MGet),
    row!("strlen", 2, RF, 1, 1, 1, StrLen),
    row!("getrange", 4, R, 1, 1, 1, GetRange),
    row!("substr", 4, R, 1, 1, 1, GetRange),
    row!("getdel", 2, WD, 1, 1, 1, GetDel),
    row!("getex", -2, WD, 1, 1, 1, GetEx),
    row!("set", -3, W, 1, 1, 1, Set),
    row!("setnx", 3, WF, 1, 1, 1, SetNx),
    row!("setex", 4, W, 1, 1, 1, SetEx),
    row!("psetex", 4, W, 1, 1, 1, PSetEx),
    row!("getset", 3, WF, 1, 1, 1, GetSet),
    row!("mset", -3, W, 1, -1, 2, MSet),
    row!("msetnx", -3, W, 1, -1, 2, MSetNx),
    row!("incr", 2, WF, 1, 1, 1, Incr),
    row!("incrby", 3, WF, 1, 1, 1, IncrBy),
    row!("decr", 2, WF, 1, 1, 1, Decr),
    row!("decrby", 3, WF, 1, 1, 1, DecrBy),
    row!("incrbyfloat", 3, WF, 1, 1, 1, IncrByFloat),
    row!("append", 3, WF, 1, 1, 1, Append),
    row!("setrange", 4, W, 1, 1, 1, SetRange),
    row!("del", -2, &["write"], 1, -1, 1, Del),
    row!("unlink", -2, WD, 1, -1, 1, Unlink),
    row!("exists", -2, RF, 1, -1, 1, Exists),
    row!("type", 2, RF, 1, 1, 1, Type),
    row!("keys", 2, R, 0, 0, 0, Keys),
    row!("scan", -2, R, 0, 0, 0, Scan),
    row!("randomkey", 1, R, 0, 0, 0, RandomKey),
    row!("expire", -3, WD, 1, 1, 1, Expire),
    row!("pexpire", -3, WD, 1, 1, 1, PExpire),
    row!("expireat", -3, WD, 1, 1, 1, ExpireAt),
    row!("pexpireat", -3, WD, 1, 1, 1, PExpireAt),
    row!("persist", 2, WD, 1, 1, 1, Persist),
    row!("ttl", 2, RF, 1, 1, 1, Ttl),
    row!("pttl", 2, RF, 1, 1, 1, PTtl),
    row!("expiretime", 2, RF, 1, 1, 1, ExpireTime),
    row!("pexpiretime", 2, RF, 1, 1, 1, PExpireTime),
    row!("multi", 1, TX, 0, 0, 0, Multi),
    row!("exec", 1, &["noscript", "loading", "stale", "skip_slowlog"], 0, 0, 0, Exec),
    row!("discard", 1, TX, 0, 0, 0, Discard),
    row!("watch", -2, TX, 1, -1, 1, Watch),
    row!("unwatch", 1, TX, 0, 0, 0, Unwatch),
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
