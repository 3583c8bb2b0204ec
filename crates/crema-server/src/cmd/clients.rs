//! `CLIENT LIST` and `CLIENT KILL` over the node's registry of connections
//! (`server::registry`): every client connected to this node (not the cluster's, as in Redis
//! Cluster, where each node lists its own), with Redis 7's fields and filters.

use std::net::SocketAddr;

use bytes::Bytes;

use super::{Call, CmdError};
use crate::resp::Reply;
use crate::server::registry::ClientEntry;

/// What one `CLIENT LIST` line shows.
pub(crate) struct LineFields<'a> {
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: Option<SocketAddr>,
    pub name: Option<&'a Bytes>,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub multi: crate::server::registry::MultiFields,
    pub command: &'a str,
    pub user: &'a str,
    pub resp: u8,
    pub local_reads: bool,
    pub lib: (Option<&'a Bytes>, Option<&'a Bytes>),
}

/// One `CLIENT LIST` / `CLIENT INFO` line: every field Redis 7 prints, as client libraries
/// parse them (redis-py reads the numeric ones as integers); buffer sizes crema does not track
/// per client show as 0.
pub(crate) fn line(f: &LineFields<'_>) -> String {
    let text = |b: Option<&Bytes>| b.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    format!(
        "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 multi={} \
         qbuf=0 qbuf-free=0 argv-mem=0 multi-mem={} rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem={} events=r \
         cmd={} user={} redir=-1 resp={} read-mode={} lib-name={} lib-ver={}",
        f.id,
        f.addr,
        f.local_addr.map(|a| a.to_string()).unwrap_or_default(),
        text(f.name),
        f.age_secs,
        f.idle_secs,
        if f.multi.queued >= 0 { "x" } else { "N" },
        f.multi.queued,
        f.multi.queued_bytes,
        f.multi.held_bytes,
        f.command,
        f.user,
        f.resp,
        if f.local_reads { "local" } else { "linearizable" },
        text(f.lib.0),
        text(f.lib.1),
    )
}

/// The line of another connection, as of its last batch of requests.
fn entry_line(entry: &ClientEntry) -> String {
    let shown = entry.shown();
    line(&LineFields {
        id: entry.id,
        addr: entry.addr,
        local_addr: entry.local_addr,
        name: shown.name.as_ref(),
        age_secs: entry.created.elapsed().as_secs(),
        idle_secs: shown.active.map_or(entry.created, |t| t).elapsed().as_secs(),
        multi: shown.multi,
        command: if shown.last_command.is_empty() { "NULL" } else { shown.last_command },
        user: if shown.user.is_empty() { "default" } else { &shown.user },
        resp: shown.resp.max(2),
        local_reads: shown.local_reads,
        lib: (shown.lib.0.as_ref(), shown.lib.1.as_ref()),
    })
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]`.
pub(super) fn list(call: &Call<'_>) -> Result<Reply, CmdError> {
    // A set: found in review, a million ids checked against each of thousands of clients
    // held the connections' thread for seconds.
    let mut ids: Option<std::collections::HashSet<u64>> = None;
    let mut normal = true;
    let mut i = 2;
    while i < call.args.len() {
        match call.option(i).as_str() {
            "TYPE" if i + 1 < call.args.len() => {
                normal = match call.option(i + 1).as_str() {
                    "NORMAL" => true,
                    "MASTER" | "REPLICA" | "SLAVE" | "PUBSUB" => false,
                    other => {
                        return Err(CmdError::Invalid(format!(
                            "Unknown client type '{}'",
                            other.to_lowercase()
                        )))
                    }
                };
                i += 2;
            }
            "ID" if i + 1 < call.args.len() => {
                let listed = call.args[i + 1..]
                    .iter()
                    .map(|a| {
                        std::str::from_utf8(a).ok().and_then(|s| s.parse::<u64>().ok()).filter(|id| *id > 0)
                    })
                    .collect::<Option<std::collections::HashSet<u64>>>()
                    .ok_or_else(|| CmdError::Invalid("Invalid client ID".into()))?;
                ids = Some(listed);
                i = call.args.len();
            }
            _ => return Err(CmdError::Syntax),
        }
    }
    let mut out = String::new();
    if normal {
        for entry in call.state.clients.registry.all() {
            if ids.as_ref().is_some_and(|ids| !ids.contains(&entry.id)) {
                continue;
            }
            // The caller's own line is its session's, as it is now.
            let line = if entry.id == call.session.id {
                super::connection::client_line(call.session)
            } else {
                entry_line(&entry)
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(Reply::Verbatim(Bytes::from(out)))
}

/// `CLIENT KILL addr:port` (answers OK or an error), or `CLIENT KILL <filter> <value> ...` with
/// ID, ADDR, LADDR, USER, TYPE, MAXAGE and SKIPME (answers how many were closed; the caller is
/// skipped unless `SKIPME no`). A killed client is closed before its next request is read.
pub(super) fn kill(call: &Call<'_>) -> Result<Reply, CmdError> {
    let me = call.session.id;
    let clients = call.state.clients.registry.all();
    if call.args.len() == 3 {
        let addr = String::from_utf8_lossy(call.arg(2));
        let entry = clients.iter().find(|e| e.addr.to_string() == addr);
        return match entry {
            Some(entry) => {
                entry.kill.cancel();
                Ok(Reply::OK)
            }
            None => Err(CmdError::Invalid("No such client".into())),
        };
    }
    if !call.args.len().is_multiple_of(2) {
        return Err(CmdError::Syntax);
    }
    let (mut id, mut addr, mut laddr, mut user, mut max_age) = (None, None, None, None, None);
    let (mut skip_me, mut normal) = (true, true);
    for pair in call.args[2..].chunks(2) {
        let value = String::from_utf8_lossy(&pair[1]).into_owned();
        match pair[0].to_ascii_uppercase().as_slice() {
            b"ID" => {
                id = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|id| *id > 0)
                        .ok_or_else(|| CmdError::Invalid("client-id should be greater than 0".into()))?,
                )
            }
            b"ADDR" => addr = Some(value),
            b"LADDR" => laddr = Some(value),
            b"USER" => user = Some(value),
            b"MAXAGE" => max_age = Some(value.parse::<u64>().map_err(|_| CmdError::Syntax)?),
            b"SKIPME" => {
                skip_me = match value.to_ascii_lowercase().as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(CmdError::Syntax),
                }
            }
            b"TYPE" => {
                normal = match value.to_ascii_lowercase().as_str() {
                    "normal" => true,
                    "master" | "replica" | "slave" | "pubsub" => false,
                    other => return Err(CmdError::Invalid(format!("Unknown client type '{other}'"))),
                }
            }
            _ => return Err(CmdError::Syntax),
        }
    }
    let mut killed = 0;
    for entry in clients.iter().filter(|_| normal) {
        let matches = id.is_none_or(|id| entry.id == id)
            && addr.as_ref().is_none_or(|a| entry.addr.to_string() == *a)
            && laddr.as_ref().is_none_or(|a| entry.local_addr.is_some_and(|l| l.to_string() == *a))
            && user.as_ref().is_none_or(|u| {
                let shown = entry.shown().user;
                (if shown.is_empty() { "default" } else { shown.as_str() }) == u
            })
            && max_age.is_none_or(|age| entry.created.elapsed().as_secs() >= age)
            && !(skip_me && entry.id == me);
        if matches {
            entry.kill.cancel();
            killed += 1;
        }
    }
    Ok(Reply::Integer(killed))
}
