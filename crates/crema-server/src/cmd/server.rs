//! Commands about the node: COMMAND, CONFIG, INFO, DBSIZE, TIME, LASTSAVE, WAIT, ROLE, FLUSHDB, FLUSHALL,
//! LOLWUT.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crema::{CacheCommand, Role};

use super::write::{PreparedWrite, Render};
use super::{parse_int, Call, CmdError, CommandSpec, Kind, COMMANDS};
use crate::resp::Reply;

pub(super) async fn run(kind: Kind, call: &mut Call<'_>) -> Result<Reply, CmdError> {
    match kind {
        Kind::Command => command(call),
        Kind::Config => config(call),
        Kind::Info => info(call).await,
        Kind::DbSize => Ok(Reply::Integer(call.live_count().await? as i64)),
        Kind::Time => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Ok(Reply::Array(vec![
                Reply::Bulk(Bytes::from(now.as_secs().to_string())),
                Reply::Bulk(Bytes::from(now.subsec_micros().to_string())),
            ]))
        }
        // crema saves nothing as Redis does (checkpoints are per shard, see INFO): the time
        // the node started, which is what Redis answers before its first save.
        Kind::LastSave => Ok(Reply::Integer(call.state.started_unix_secs)),
        Kind::Wait => wait(call).await,
        Kind::Role => role(call).await,
        Kind::Lolwut => Ok(Reply::Verbatim(Bytes::from(format!(
            "crema {}: Raft underneath, Redis on top. Espresso, not decaf.\n",
            env!("CARGO_PKG_VERSION")
        )))),
        _ => unreachable!("not a server command: {kind:?}"),
    }
}

/// FLUSHDB and FLUSHALL, with their optional SYNC or ASYNC (both clear at once).
pub(super) fn prepare_flush(call: &Call<'_>) -> Result<PreparedWrite, CmdError> {
    match call.args.get(1).map(|_| call.option(1)) {
        None => {}
        Some(mode) if call.args.len() == 2 && (mode == "SYNC" || mode == "ASYNC") => {}
        Some(_) => return Err(CmdError::Syntax),
    }
    Ok(PreparedWrite::new(CacheCommand::Clear, Render::Ok))
}

fn command_info(spec: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(spec.arity.into()),
        Reply::Array(spec.flags.iter().map(|f| Reply::Simple(f)).collect()),
        Reply::Integer(spec.first_key.into()),
        Reply::Integer(spec.last_key.into()),
        Reply::Integer(spec.step.into()),
        Reply::Array(spec.categories.iter().map(|c| Reply::bulk(format!("@{c}"))).collect()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// The most command names one `COMMAND INFO` or `COMMAND DOCS` takes. Each answer is built
/// whole before it is written: found in review, a million names (a 9 MB request) built about
/// 0.9 GB of reply, held until a client that reads slowly took it.
const MAX_NAMED_COMMANDS: usize = 1024;

fn command(call: &Call<'_>) -> Result<Reply, CmdError> {
    let named = |from: usize| call.args[from..].iter().map(|n| super::lookup(n));
    let sub = call.args.get(1).map(|_| call.option(1));
    if matches!(sub.as_deref(), Some("INFO" | "DOCS")) && call.args.len() > 2 + MAX_NAMED_COMMANDS {
        return Err(CmdError::Invalid(format!(
            "COMMAND INFO and COMMAND DOCS take at most {MAX_NAMED_COMMANDS} command names"
        )));
    }
    match sub.as_deref() {
        None => Ok(Reply::Array(COMMANDS.iter().map(command_info).collect())),
        Some("COUNT") if call.args.len() == 2 => Ok(Reply::Integer(COMMANDS.len() as i64)),
        Some("LIST") => {
            // `FILTERBY MODULE name | ACLCAT category | PATTERN glob`, as Redis 7.
            let keep: Box<dyn Fn(&CommandSpec) -> bool> = match call.args.len() {
                2 => Box::new(|_| true),
                5 if call.option(2) == "FILTERBY" => {
                    let value = call.arg(4).to_ascii_lowercase();
                    match call.option(3).as_str() {
                        "MODULE" => Box::new(|_| false),
                        "ACLCAT" => Box::new(move |c| c.categories.iter().any(|cat| cat.as_bytes() == value)),
                        "PATTERN" => Box::new(move |c| crema::glob::glob_match(&value, c.name.as_bytes())),
                        _ => return Err(CmdError::Syntax),
                    }
                }
                _ => return Err(CmdError::Syntax),
            };
            Ok(Reply::Array(COMMANDS.iter().filter(|c| keep(c)).map(|c| Reply::bulk(c.name)).collect()))
        }
        Some("HELP") if call.args.len() == 2 => Ok(Reply::Array(
            [
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return details about all commands.",
                "COUNT",
                "    Return the total number of commands.",
                "LIST [FILTERBY (MODULE <module-name>|ACLCAT <category>|PATTERN <pattern>)]",
                "    Return a list of all commands, optionally filtered.",
                "INFO [<command-name> ...]",
                "    Return details about the given commands, or all of them.",
                "DOCS [<command-name> ...]",
                "    Return documentation details about the given commands, or all of them.",
                "GETKEYS <full-command>",
                "    Return the keys from a full Redis command.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(Reply::Simple)
            .collect(),
        )),
        // The keys of a whole command, as the table places them (cluster clients ask it for a
        // command they do not know; found from outside: it was refused as unknown).
        Some("GETKEYS") if call.args.len() >= 3 => {
            let full = &call.args[2..];
            let Some(spec) = super::lookup(&full[0]) else {
                return Err(CmdError::Invalid("Invalid command specified".into()));
            };
            if !spec.arity_ok(full.len()) {
                return Err(CmdError::Invalid("Invalid number of arguments specified for command".into()));
            }
            let keys: Vec<Reply> =
                spec.key_positions(full.len()).map(|p| Reply::bulk(full[p].clone())).collect();
            if keys.is_empty() {
                return Err(CmdError::Invalid("The command has no key arguments".into()));
            }
            Ok(Reply::Array(keys))
        }
        Some(sub @ ("COUNT" | "HELP" | "GETKEYS")) => {
            Err(CmdError::Arity(format!("command|{}", sub.to_ascii_lowercase())))
        }
        Some("INFO") => Ok(Reply::Array(if call.args.len() == 2 {
            COMMANDS.iter().map(command_info).collect()
        } else {
            named(2).map(|s| s.map_or(Reply::Null, command_info)).collect()
        })),
        Some("DOCS") => {
            let specs: Vec<&CommandSpec> =
                if call.args.len() == 2 { COMMANDS.iter().collect() } else { named(2).flatten().collect() };
            Ok(Reply::Map(
                specs
                    .into_iter()
                    .map(|s| {
                        let doc = Reply::Map(vec![
                            (
                                Reply::bulk("summary"),
                                Reply::bulk(format!("the Redis {} command", s.name.to_uppercase())),
                            ),
                            (Reply::bulk("since"), Reply::bulk("1.0.0")),
                            (
                                Reply::bulk("group"),
                                Reply::bulk(if s.first_key > 0 { "string" } else { "server" }),
                            ),
                        ]);
                        (Reply::bulk(s.name), doc)
                    })
                    .collect(),
            ))
        }
        Some(_) => Err(CmdError::Invalid(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(call.arg(1))
        ))),
    }
}

fn config(call: &Call<'_>) -> Result<Reply, CmdError> {
    match call.option(1).as_str() {
        "GET" if call.args.len() >= 3 => {
            let params = config_params(call);
            let mut out = Vec::new();
            for (name, value) in &params {
                if call.args[2..].iter().any(|p| crema::glob::glob_match(&p.to_ascii_lowercase(), name.as_bytes())) {
                    out.push((Reply::bulk(*name), Reply::bulk(value.clone())));
                }
            }
            Ok(Reply::Map(out))
        }
        "RESETSTAT" => {
            call.state.stats_baseline.reset(call.state);
            Ok(Reply::OK)
        }
        "GET" => Err(CmdError::Invalid("wrong number of arguments for 'config|get' command".into())),
        "SET" => Err(CmdError::Invalid(
            "CONFIG SET is not supported: crema settings are fixed at start (flags, config file, CREMA_* variables)"
                .into(),
        )),
        _ => Err(CmdError::Invalid(format!(
            "unknown subcommand or wrong number of arguments for '{}'",
            String::from_utf8_lossy(call.arg(1))
        ))),
    }
}

/// Settings a client library may ask for, with harmless truthful answers.
fn config_params(call: &Call<'_>) -> Vec<(&'static str, String)> {
    let s = &call.state.settings;
    let cache = call.state.cache.config();
    vec![
        ("maxmemory", cache.max_memory_bytes.unwrap_or(0).to_string()),
        ("maxmemory-policy", "allkeys-lfu".into()),
        ("maxclients", s.max_clients.to_string()),
        ("timeout", s.idle_timeout.as_secs().to_string()),
        ("tcp-keepalive", s.tcp_keepalive.as_secs().to_string()),
        ("databases", "1".into()),
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("port", call.state.resp_addr.port().to_string()),
        ("bind", call.state.resp_addr.ip().to_string()),
        ("proto-max-bulk-len", s.limits.max_bulk_bytes.to_string()),
        // As INFO says (`cluster_enabled:1`): every node answers Redis Cluster's commands.
        ("cluster-enabled", "yes".into()),
        // No keyspace notifications (no pub/sub): libraries that look find them off.
        ("notify-keyspace-events", String::new()),
    ]
}

async fn wait(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let wanted = parse_int(call.arg(1))?;
    let timeout_ms = parse_int(call.arg(2))
        .map_err(|_| CmdError::Invalid("timeout is not an integer or out of range".into()))?;
    if timeout_ms < 0 {
        return Err(CmdError::Invalid("timeout is negative".into()));
    }
    let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    // What this node has applied in every shard now: everything the connection wrote is in it.
    // With several shards the answer is the fewest replicas over them all.
    let cache = &call.state.cache;
    let targets: Vec<(crema::ShardId, u64)> =
        cache.shard_info().iter().map(|s| (s.shard_id, s.applied_index)).collect();
    // Asked often at first (replicas usually acknowledge within a round trip), then less: a
    // WAIT for more replicas than there are asks every shard's group until its timeout.
    let mut pause = Duration::from_millis(5);
    loop {
        let (mut acked, mut leads_all) = (i64::MAX, true);
        for (shard, target) in &targets {
            let status = cache.shard_status(*shard).await?;
            acked = acked.min(acknowledged_replicas(&status, *target));
            leads_all &= status.role == Role::Leader;
        }
        let acked = if acked == i64::MAX { 0 } else { acked };
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if acked >= wanted || expired || !leads_all {
            return Ok(Reply::Integer(acked));
        }
        let pause_until = Instant::now() + pause;
        tokio::time::sleep_until(deadline.map_or(pause_until, |d| d.min(pause_until)).into()).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// ROLE as Redis answers it, about the group `INFO replication` describes (shard 0's with
/// Multi-Raft, whose leader is the cluster's): its leader is a master listing each replica whose
/// client address it knows, with how far its log reaches; a follower is a slave of the leader it
/// knows (`connected`), or of none yet (`connect`, no address). Offsets are Raft log indexes.
async fn role(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let group = call.state.cache.shard_status(0).await?;
    let offset = Reply::Integer(group.applied_index as i64);
    let host_port = |id| {
        let addr = crate::cmd::error::LeaderAddr::client_addr_of(call.state, id)?;
        Some(super::cluster::host_port(&addr))
    };
    if group.role == Role::Leader {
        let replicas = group
            .replica_progress
            .iter()
            .filter_map(|(id, matched)| {
                let (host, port) = host_port(*id)?;
                Some(Reply::Array(vec![
                    Reply::bulk(host),
                    Reply::bulk(port.to_string()),
                    Reply::bulk(matched.to_string()),
                ]))
            })
            .collect();
        return Ok(Reply::Array(vec![Reply::bulk("master"), offset, Reply::Array(replicas)]));
    }
    let leader = group.leader_id.and_then(host_port);
    let state = if leader.is_some() { "connected" } else { "connect" };
    let (host, port) = leader.unwrap_or_default();
    Ok(Reply::Array(vec![
        Reply::bulk("slave"),
        Reply::bulk(host),
        Reply::Integer(port),
        Reply::bulk(state),
        offset,
    ]))
}

/// Replicas known to hold a shard's log up to `target`. On its leader that is read from each
/// replica's progress; a follower knows only that a majority holds anything it applied.
fn acknowledged_replicas(group: &crema::GroupStatus, target: u64) -> i64 {
    if group.role == Role::Leader {
        group.replica_progress.iter().filter(|(_, matched)| *matched >= target).count() as i64
    } else {
        (group.voters.len() / 2) as i64
    }
}

async fn info(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let wanted: Vec<String> =
        call.args[1..].iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
    let all =
        wanted.is_empty() || wanted.iter().any(|w| matches!(w.as_str(), "all" | "everything" | "default"));
    let status = call.state.cache.cluster_status().await?;
    let mut out = String::new();
    for (name, section) in crate::info::SECTIONS {
        if all || wanted.iter().any(|w| w == name) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            let _ = writeln!(out, "# {}\r", capitalise(name));
            section(call.state, &status, &mut out);
        }
    }
    Ok(Reply::Verbatim(Bytes::from(out)))
}

fn capitalise(name: &str) -> String {
    let mut c = name.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}
