//! `CLUSTER`: Redis Cluster's view of crema, so cluster-aware clients (redis-py's
//! `RedisCluster`, node-redis `createCluster`, `redis-cli -c`) route by themselves.
//!
//! Each shard is one slot range whose primary is the shard's Raft leader. A node leads some
//! shards and follows others, which Redis Cluster's one role per node cannot say: every node is
//! a master, of the slots of the shards it leads (`CLUSTER NODES`, `SLOTS`, `REPLICAS`), and
//! only `CLUSTER SHARDS`, whose entries are per shard, names the other members, as replicas of
//! that shard. Found from outside: with the other members listed as replicas in `CLUSTER
//! SLOTS`, valkey-glide filed each node under the first range that named it and sent the
//! commands of every range that node led to that range's primary (215 of 300 writes forwarded),
//! and redis-py's and valkey-py's `get_primaries()` missed the nodes last listed as a replica.
//! Node ids are the crema node id as 40 hex digits.
//!
//! A connection that asked for the slot map (`CLUSTER SLOTS`, `SHARDS` or `NODES`) speaks
//! cluster mode: a command on a key whose shard another node leads gets `-MOVED slot host:port`
//! ([`redirect`]), and keys in several shards get `-CROSSSLOT`. Other connections are served as
//! before (a write is forwarded to the leader, a read reads through a read barrier).

use bytes::Bytes;
use crema::{NodeId, ShardInfo};

use super::error::LeaderAddr;
use super::ReadMode;
use super::{Call, CmdError, CommandSpec, Session};
use crate::resp::Reply;
use crate::server::ServerState;

/// Redis Cluster's hash slots.
const SLOTS: usize = crema::multiraft::SLOTS as usize;

/// A node's Redis Cluster id: its crema id as 40 hex digits.
pub fn cluster_node_id(id: NodeId) -> String {
    format!("{id:040x}")
}

pub(super) async fn run(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let subcommand = call.option(1);
    let argc = call.args.len();
    match (subcommand.as_str(), argc) {
        ("KEYSLOT", 3) => Ok(Reply::Integer(i64::from(crema::key_slot(call.arg(2))))),
        ("MYID", 2) => Ok(Reply::bulk(cluster_node_id(call.state.cache.node_id()))),
        ("SLOTS", 2) => {
            call.session.cluster_mode = true;
            let shards = mapped(call.state, call.session, shards(call.state).await?)?;
            Ok(slots(call.state, call.session, &shards))
        }
        ("SHARDS", 2) => {
            call.session.cluster_mode = true;
            let shards = mapped(call.state, call.session, shards(call.state).await?)?;
            Ok(shards_reply(call.state, call.session, &shards))
        }
        ("NODES", 2) => {
            call.session.cluster_mode = true;
            Ok(Reply::Verbatim(nodes(call.state, call.session, &shards(call.state).await?).into()))
        }
        ("INFO", 2) => Ok(Reply::Verbatim(info(call.state, &shards(call.state).await?).into())),
        ("COUNTKEYSINSLOT", 3) => {
            let slot = super::parse_int(call.arg(2))?;
            let slot = valid_slot(slot).ok_or_else(|| CmdError::Invalid("Invalid slot".into()))?;
            Ok(Reply::Integer(keys_in_slot(call, slot).await?.len() as i64))
        }
        ("GETKEYSINSLOT", 4) => {
            let (slot, count) = (super::parse_int(call.arg(2))?, super::parse_int(call.arg(3))?);
            let (Some(slot), Ok(count)) = (valid_slot(slot), usize::try_from(count)) else {
                return Err(CmdError::Invalid("Invalid slot or number of keys".into()));
            };
            let keys = keys_in_slot(call, slot).await?.into_iter().take(count);
            Ok(Reply::Array(keys.map(Reply::Bulk).collect()))
        }
        // Every node is a master (of the slots of the shards it leads, `nodes` below): none is
        // listed as another's replica, and none is reported failing by a master but itself.
        // Found from outside: redis-py's and valkey-py's `cluster_replicas()` failed on them.
        ("REPLICAS" | "SLAVES", 3) => {
            known_node(call.state, call.arg(2), &shards(call.state).await?)?;
            Ok(Reply::Array(Vec::new()))
        }
        ("COUNT-FAILURE-REPORTS", 3) => {
            known_node(call.state, call.arg(2), &shards(call.state).await?)?;
            Ok(Reply::Integer(0))
        }
        ("HELP", 2) => Ok(Reply::Array(HELP.iter().map(|line| Reply::Simple(line)).collect())),
        (
            "KEYSLOT"
            | "MYID"
            | "SLOTS"
            | "SHARDS"
            | "NODES"
            | "INFO"
            | "COUNTKEYSINSLOT"
            | "GETKEYSINSLOT"
            | "REPLICAS"
            | "SLAVES"
            | "COUNT-FAILURE-REPORTS"
            | "HELP",
            _,
        ) => Err(CmdError::Arity(format!("cluster|{}", subcommand.to_ascii_lowercase()))),
        _ => Err(CmdError::Invalid(format!(
            "unknown subcommand '{}'. Try CLUSTER HELP.",
            String::from_utf8_lossy(call.arg(1))
        ))),
    }
}

const HELP: &[&str] = &[
    "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "COUNT-FAILURE-REPORTS <node-id>",
    "    Return number of failure reports for <node-id> (always 0: no master reports another).",
    "COUNTKEYSINSLOT <slot>",
    "    Return the number of keys in <slot>.",
    "GETKEYSINSLOT <slot> <count>",
    "    Return key names stored by this node in a slot.",
    "INFO",
    "    Return information about the cluster.",
    "KEYSLOT <key>",
    "    Return the hash slot for <key>.",
    "MYID",
    "    Return the node id.",
    "NODES",
    "    Return cluster configuration seen by node.",
    "REPLICAS <node-id>",
    "    Return <node-id> replicas (none: every node is a master of the slots it leads).",
    "SHARDS",
    "    Return information about slot range mappings and the nodes associated with them.",
    "SLAVES <node-id>",
    "    Return <node-id> replicas.",
    "SLOTS",
    "    Return information about slots range mappings. Each range is made of:",
    "    start, end, and the master's IP address, port and id (the shard's leader)",
    "HELP",
    "    Print this help.",
];

/// Refuses a node id that `CLUSTER NODES` does not list, as Redis does.
fn known_node(state: &ServerState, id: &[u8], shards: &[ShardInfo]) -> Result<(), CmdError> {
    let me = state.cache.node_id();
    let listed = shards.iter().flat_map(|s| s.members.iter().copied()).chain([me]);
    let text = String::from_utf8_lossy(id);
    match listed.into_iter().find(|n| cluster_node_id(*n).eq_ignore_ascii_case(&text)) {
        Some(_) => Ok(()),
        None => Err(CmdError::Invalid(format!("Unknown node {text}"))),
    }
}

/// `slot` if it is one of the 16,384 (the slot errors are Redis's own words).
fn valid_slot(slot: i64) -> Option<u16> {
    u16::try_from(slot).ok().filter(|slot| usize::from(*slot) < SLOTS)
}

/// The live keys of `slot`, sorted. Under `--cluster-redirects always` a node answers for the
/// slots of the shards it leads only (none elsewhere), as a Redis Cluster node answers for
/// its own slots and KEYS does there (`Call::primary_scope`): found from outside, every node
/// counted a slot's keys, one that held no replica of its shard too.
async fn keys_in_slot(call: &mut Call<'_>, slot: u16) -> Result<Vec<bytes::Bytes>, CmdError> {
    let shard = call.state.cache.router().shard_for_slot(slot);
    if call.primary_scope().is_some_and(|led| !led.contains(&shard)) {
        return Ok(Vec::new());
    }
    let mut keys: Vec<_> =
        call.shard_keys(shard).await?.into_iter().filter(|k| crema::key_slot(k) == slot).collect();
    keys.sort_unstable();
    Ok(keys)
}

async fn shards(state: &ServerState) -> Result<Vec<ShardInfo>, CmdError> {
    Ok(state.cache.cluster_shards().await?)
}

/// `shards` when they map every slot to a node a client can reach, else `-CLUSTERDOWN`: a
/// node that starts (again) knows its own replicas before it has the shard map and its
/// peers' addresses. Found from outside: for up to 400 ms after its RESP port opened, a
/// restarted node answered `CLUSTER SLOTS` with one range and no primary, on which redis-py's
/// `RedisCluster` failed (`IndexError`) instead of asking its next startup node, which it
/// does on an error reply.
fn mapped(
    state: &ServerState,
    session: &Session,
    shards: Vec<ShardInfo>,
) -> Result<Vec<ShardInfo>, CmdError> {
    let covered: usize =
        shards.iter().map(|s| usize::from(s.last_slot) + 1 - usize::from(s.first_slot)).sum();
    let unplaced = shards.iter().find(|s| members(state, session, s, &[]).is_empty());
    if !state.cache.has_been_ready() {
        return Err(CmdError::ClusterDown(
            "this node has not heard the leaders of its shards since it started (ask another node)".into(),
        ));
    }
    match unplaced {
        _ if covered < SLOTS => Err(CmdError::ClusterDown(format!(
            "this node knows the holders of {covered} of {SLOTS} slots (it is starting; ask another node)"
        ))),
        Some(shard) => Err(CmdError::ClusterDown(format!(
            "no reachable member of shard {} is known here (it is starting; ask another node)",
            shard.shard_id
        ))),
        None => Ok(shards),
    }
}

/// The nodes discovery declared down: `CLUSTER NODES` flags them `fail`, `CLUSTER SHARDS`
/// says `health fail`, and `CLUSTER SLOTS` does not offer one as the primary of a range whose
/// shard has no leader.
fn down_nodes(state: &ServerState) -> Vec<NodeId> {
    let nodes = state.cache.discovered_nodes();
    nodes.into_iter().filter(|n| n.health == crema::NodeHealth::Down).map(|n| n.node_id).collect()
}

/// The shard's members, its leader first (the slot range's primary; else the first member, so
/// that every range has one: a client sent to a member that does not lead gets `-MOVED`), with
/// their client address; members declared down are left out unless one is the primary.
fn members(
    state: &ServerState,
    session: &Session,
    shard: &ShardInfo,
    down: &[NodeId],
) -> Vec<(NodeId, String)> {
    let mut ids: Vec<NodeId> = shard.leader.into_iter().collect();
    ids.extend(shard.members.iter().copied().filter(|m| Some(*m) != shard.leader && !down.contains(m)));
    ids.into_iter().filter_map(|id| addr_for(state, session, id).map(|addr| (id, addr))).collect()
}

/// Node `id`'s client address as this connection is told it. This node's own, when its RESP
/// port listens on every interface, is the address the client reached it at (a wildcard is
/// nowhere a client can connect to); the others' are as `ServerState::client_addr_of` knows
/// them.
fn addr_for(state: &ServerState, session: &Session, id: NodeId) -> Option<String> {
    match session.local_addr {
        Some(local) if id == state.cache.node_id() && state.resp_addr.ip().is_unspecified() => {
            Some(std::net::SocketAddr::new(local.ip(), state.resp_addr.port()).to_string())
        }
        _ => state.client_addr_of(id),
    }
}

/// `host:port` split for the replies that give them apart (an IPv6 host without brackets).
pub(super) fn host_port(addr: &str) -> (String, i64) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (host.trim_matches(['[', ']']).to_owned(), port.parse().unwrap_or(0)),
        None => (addr.to_owned(), 0),
    }
}

/// `CLUSTER SLOTS`: each range with its primary alone (see the module's header), touching
/// ranges of one primary merged and each node given Redis 7's fourth element (its networking
/// metadata: none), as Redis answers. Found from outside: node-redis's `masters` listed a
/// node once per shard it led.
fn slots(state: &ServerState, session: &Session, shards: &[ShardInfo]) -> Reply {
    let down = down_nodes(state);
    let ranges = merged(shards.iter().map(|shard| {
        // A shard with no known leader whose other members are all down still names one (as
        // `mapped` checked it can): clients refuse a range without a primary.
        let mut listed = members(state, session, shard, &down);
        if listed.is_empty() {
            listed = members(state, session, shard, &[]);
        }
        (shard.first_slot, shard.last_slot, listed.into_iter().next())
    }));
    let entries = ranges.into_iter().map(|(first, last, primary)| {
        let mut entry = vec![Reply::Integer(first.into()), Reply::Integer(last.into())];
        if let Some((id, addr)) = primary {
            let (host, port) = host_port(&addr);
            entry.push(Reply::Array(vec![
                Reply::bulk(host),
                Reply::Integer(port),
                Reply::bulk(cluster_node_id(id)),
                Reply::Map(Vec::new()),
            ]));
        }
        Reply::Array(entry)
    });
    Reply::Array(entries.collect())
}

fn shards_reply(state: &ServerState, session: &Session, shards: &[ShardInfo]) -> Reply {
    let down = down_nodes(state);
    // A RESP port with TLS is a `tls-port` to Redis Cluster's clients, as Redis names it.
    let port_key = if state.settings.tls.is_some() { "tls-port" } else { "port" };
    let entries = shards.iter().map(|shard| {
        // Down replicas too, with `health fail`, as Redis Cluster lists them here.
        let nodes = members(state, session, shard, &[]).into_iter().map(|(id, addr)| {
            let (host, port) = host_port(&addr);
            let role = if Some(id) == shard.leader { "master" } else { "replica" };
            Reply::Map(vec![
                (Reply::bulk("id"), Reply::bulk(cluster_node_id(id))),
                (Reply::bulk(port_key), Reply::Integer(port)),
                (Reply::bulk("ip"), Reply::bulk(host.clone())),
                (Reply::bulk("endpoint"), Reply::bulk(host)),
                (Reply::bulk("role"), Reply::bulk(role)),
                (Reply::bulk("replication-offset"), Reply::Integer(shard.applied_index as i64)),
                (Reply::bulk("health"), Reply::bulk(if down.contains(&id) { "fail" } else { "online" })),
            ])
        });
        let range = vec![Reply::Integer(shard.first_slot.into()), Reply::Integer(shard.last_slot.into())];
        Reply::Map(vec![
            (Reply::bulk("slots"), Reply::Array(range)),
            (Reply::bulk("nodes"), Reply::Array(nodes.collect())),
        ])
    });
    Reply::Array(entries.collect())
}

/// Every member of any shard, as `CLUSTER NODES` lines: each a master with the slot ranges of
/// the shards it leads.
fn nodes(state: &ServerState, session: &Session, shards: &[ShardInfo]) -> String {
    let me = state.cache.node_id();
    let mut ids: Vec<NodeId> = shards.iter().flat_map(|s| s.members.iter().copied()).collect();
    ids.push(me);
    ids.sort_unstable();
    ids.dedup();
    let epoch = shards.iter().map(|s| s.term).max().unwrap_or(0);
    let down = down_nodes(state);
    let mut out = String::new();
    for id in ids {
        let Some(addr) = addr_for(state, session, id) else { continue };
        let failed = id != me && down.contains(&id);
        let flags = match (id == me, failed) {
            (true, _) => "myself,master",
            (false, true) => "master,fail",
            (false, false) => "master",
        };
        let link = if failed { "disconnected" } else { "connected" };
        let led = shards.iter().filter(|s| s.leader == Some(id)).map(|s| (s.first_slot, s.last_slot, ()));
        let led: Vec<String> = merged(led)
            .into_iter()
            .map(
                |(first, last, ())| if first == last { first.to_string() } else { format!("{first}-{last}") },
            )
            .collect();
        let (_, port) = host_port(&addr);
        out.push_str(&format!(
            "{} {addr}@{} {flags} - 0 0 {epoch} {link}{}{}\n",
            cluster_node_id(id),
            port + 10_000,
            if led.is_empty() { "" } else { " " },
            led.join(" ")
        ));
    }
    out
}

/// Slot ranges `(first, last, owner)` in slot order, touching ones of the same owner merged.
fn merged<T: PartialEq>(ranges: impl Iterator<Item = (u16, u16, T)>) -> Vec<(u16, u16, T)> {
    let mut out: Vec<(u16, u16, T)> = Vec::new();
    for (first, last, owner) in ranges {
        match out.last_mut() {
            Some((_, held_last, held))
                if usize::from(*held_last) + 1 == usize::from(first) && *held == owner =>
            {
                *held_last = last
            }
            _ => out.push((first, last, owner)),
        }
    }
    out
}

fn info(state: &ServerState, shards: &[ShardInfo]) -> String {
    let led: usize = shards
        .iter()
        .filter(|s| s.leader.is_some())
        .map(|s| usize::from(s.last_slot - s.first_slot) + 1)
        .sum();
    let state_word = if led == SLOTS { "ok" } else { "fail" };
    let mut known: Vec<NodeId> = shards.iter().flat_map(|s| s.members.iter().copied()).collect();
    known.sort_unstable();
    known.dedup();
    let mut primaries: Vec<NodeId> = shards.iter().filter_map(|s| s.leader).collect();
    primaries.sort_unstable();
    primaries.dedup();
    let epoch = shards.iter().map(|s| s.term).max().unwrap_or(0);
    let me = state.cache.node_id();
    let my_epoch = shards.iter().filter(|s| s.leader == Some(me)).map(|s| s.term).max().unwrap_or(0);
    format!(
        "cluster_enabled:1\r\ncluster_state:{state_word}\r\ncluster_slots_assigned:{}\r\ncluster_slots_ok:{led}\r\n\
         cluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\n\
         cluster_current_epoch:{epoch}\r\ncluster_my_epoch:{my_epoch}\r\ncluster_shards:{}\r\n",
        SLOTS,
        SLOTS - led,
        known.len(),
        primaries.len(),
        shards.len(),
    )
}

/// The shard of `args`' keys and the slot of the first (none for a command without keys);
/// `CrossSlot` when the keys are in several shards.
pub(super) fn key_shard(
    state: &ServerState,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Result<Option<(crema::ShardId, u16)>, CmdError> {
    let router = state.cache.router();
    let mut target: Option<(crema::ShardId, u16)> = None;
    for position in spec.key_positions(args.len()) {
        let slot = crema::key_slot(&args[position]);
        let shard = router.shard_for_slot(slot);
        match target {
            Some((seen, _)) if seen != shard => return Err(CmdError::CrossSlot),
            Some(_) => {}
            None => target = Some((shard, slot)),
        }
    }
    Ok(target)
}

/// For a connection in cluster mode: `-CROSSSLOT` when `args`' keys are in several shards, and
/// `-MOVED slot host:port` when their shard's leader is another node whose address is known.
pub(super) fn redirect(
    state: &ServerState,
    session: &Session,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Result<(), CmdError> {
    // READONLY: reads are served here, as a Redis replica serves them after READONLY.
    if !session.cluster_mode || (session.read_mode == ReadMode::Local && !spec.is_write()) {
        return Ok(());
    }
    let Some((shard, slot)) = key_shard(state, spec, args)? else { return Ok(()) };
    let me = state.cache.node_id();
    match state.cache.shard_leader(shard) {
        Some(leader) if leader != me => match state.client_addr_of(leader) {
            Some(addr) => Err(CmdError::Moved { slot, addr }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}
