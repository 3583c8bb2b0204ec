//! The node's side of the transport: what to do with each envelope a peer sends.
//!
//! Raft messages are checked (`consensus::admit`: a message a correct peer could not have sent
//! is dropped, counted and warned about, paced) and go to their group's mailbox; a forwarded
//! write is checked (decoded and validated: a peer must never get garbage into the log; it
//! must carry the sender's write session) and proposed, its answer going back to the sender
//! from the group loop; forward replies complete the follower's waiting request. Handshakes go to every group (a restarted peer, a recovering
//! node's floor), and each peer's newest incarnation is remembered: what an older incarnation
//! of it still sends (on a connection not yet torn down) is dropped, and when each was last heard
//! from (whether this node can still reach a quorum).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::read_rounds::NodeReads;
use super::remote::{serve_read, RemoteReads};
use super::table::ShardTable;
use crate::cache::split::META_SHARD;
use crate::consensus::admit::{self, Reject, WarnThrottle};
use crate::consensus::command::{CommandError, CommandLimits, StampedCommand};
use crate::consensus::group::GroupHandle;
use crate::error::Error;
use crate::multiraft::coordinator::CoordinatorState;
use crate::transport::envelope::{Envelope, GroupPosition};
use crate::transport::forward::{ForwardTicket, Forwarder};
use crate::transport::snapshot_assembly::{Piece, SnapshotAssembler};
use crate::transport::{Inbound, Transport};
use crate::types::{NodeId, ShardId};

/// What the dispatcher knows of one peer.
struct PeerState {
    incarnation: u64,
    positions: Vec<GroupPosition>,
    heard: Instant,
    /// Where the peer said its clients connect.
    client_addr: Option<SocketAddr>,
}

/// Whether a client address a peer told could be dialed: not a wildcard (the transport has put
/// the host this node reaches the peer at in its place), not port 0 (what a client would be
/// sent to by `CLUSTER SLOTS` or `-MOVED`).
fn reachable(addr: SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0
}

/// Routes inbound envelopes to groups and the forwarder.
pub(crate) struct Dispatcher {
    node_id: NodeId,
    table: OnceLock<Arc<ShardTable>>,
    pub forwarder: Forwarder,
    /// Reads this node sent to the holders of shards it does not hold (see `cache::remote`).
    pub remote_reads: RemoteReads,
    /// Shard leader hints: what peers say they lead (see `cache::keepalive`).
    pub hints: Arc<CoordinatorState>,
    /// Linearizable reads, checked for every shard at once (see `cache::read_rounds`).
    pub reads: NodeReads,
    /// A peer heard from within this window is asked in read rounds.
    live_window: Duration,
    /// How long a peer's read may take here.
    read_timeout: Duration,
    /// How long after a forwarded copy arrives its sender has given up on it for certain (see
    /// `ForwardTicket::given_up_at`).
    forward_patience: Duration,
    pub tasks: TaskTracker,
    pub limits: CommandLimits,
    snapshots: Mutex<SnapshotAssembler>,
    /// Each peer's newest incarnation, what its last handshake reported and when it was last
    /// heard from.
    peers: Mutex<HashMap<NodeId, PeerState>>,
    /// Peer messages dropped here (see `consensus::admit::check_from_peer`).
    rejected: AtomicU64,
    reject_warnings: WarnThrottle,
}

impl Dispatcher {
    /// `election_timeout` paces the read rounds: a round unanswered for half of it is given
    /// up, and a peer not heard from for a whole one is not asked. `forward_patience` is the
    /// lesser of the request and forwarding timeouts (see `ForwardTicket::given_up_at`).
    pub fn new(
        node_id: NodeId,
        limits: CommandLimits,
        read_timeout: Duration,
        forward_patience: Duration,
        election_timeout: Duration,
        #[cfg(feature = "fault-injection")] faults: Option<Arc<crate::faults::Faults>>,
    ) -> Self {
        let reads = NodeReads::new(node_id, election_timeout / 2);
        #[cfg(feature = "fault-injection")]
        let reads = reads.with_faults(faults);
        Self {
            reads,
            live_window: election_timeout,
            node_id,
            table: OnceLock::new(),
            forwarder: Forwarder::default(),
            remote_reads: RemoteReads::default(),
            hints: Arc::default(),
            read_timeout,
            forward_patience,
            tasks: TaskTracker::new(),
            limits,
            snapshots: Mutex::default(),
            peers: Mutex::default(),
            rejected: AtomicU64::new(0),
            reject_warnings: WarnThrottle::default(),
        }
    }

    /// Hands the node's replicas to the dispatcher, and to their groups the handshakes that
    /// arrived before they existed (a recovering group needs every one).
    pub fn attach(&self, table: Arc<ShardTable>) {
        let table = self.table.get_or_init(|| table);
        for group in table.groups() {
            self.introduce(&group);
        }
    }

    /// Tells a group that joined the node after its peers connected what their handshakes
    /// said.
    pub fn introduce(&self, group: &GroupHandle) {
        let peers: Vec<_> = (self.peers.lock().expect("peers poisoned").iter())
            .map(|(peer, state)| (*peer, state.positions.clone()))
            .collect();
        for (peer, positions) in peers {
            group.hello(peer, false, position_of(&positions, group));
        }
    }

    /// Where peer `peer` said, in its last handshake, it stands in each group it holds (none
    /// before it connected).
    pub(super) fn positions_of(&self, peer: NodeId) -> Option<Vec<GroupPosition>> {
        self.peers.lock().expect("peers poisoned").get(&peer).map(|p| p.positions.clone())
    }

    /// The groups of the replicas held now (none before `attach`).
    fn groups(&self) -> Vec<GroupHandle> {
        self.table.get().map(|t| t.groups()).unwrap_or_default()
    }

    /// Peer messages dropped by the dispatcher's checks.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    fn reject(&self, from: NodeId, shard: ShardId, reason: Reject) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.reject_warnings.note(Instant::now()) {
            warn!(from, shard, %reason, count, "peer message refused");
        }
    }

    /// The newest incarnation `peer` has shown, if it connected.
    #[cfg(feature = "fuzzing")]
    pub fn current_incarnation(&self, peer: NodeId) -> Option<u64> {
        self.peers.lock().expect("peers poisoned").get(&peer).map(|p| p.incarnation)
    }

    /// Whether `incarnation` is the newest `from` has shown; if so, `from` was heard from now.
    fn is_current(&self, from: NodeId, incarnation: u64) -> bool {
        let mut peers = self.peers.lock().expect("peers poisoned");
        match peers.get_mut(&from) {
            Some(peer) if peer.incarnation == incarnation => {
                peer.heard = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// How many of `nodes` this node heard from (any message) within `window`.
    pub fn heard_within(&self, nodes: &[NodeId], window: Duration) -> usize {
        let peers = self.peers.lock().expect("peers poisoned");
        nodes.iter().filter(|n| peers.get(n).is_some_and(|p| p.heard.elapsed() < window)).count()
    }

    /// Where `id` said its clients connect, in its latest handshake.
    pub fn client_addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.peers.lock().expect("peers poisoned").get(&id).and_then(|p| p.client_addr)
    }

    /// The peers a read round asks (see `cache::read_rounds`).
    pub fn live_peers(&self) -> super::read_rounds::Live {
        self.heard_peers(self.live_window)
    }

    /// Drops snapshot transfers abandoned for long (see [`SnapshotAssembler::expire`]).
    pub fn expire_snapshots(&self) {
        self.snapshots.lock().expect("snapshot assembler poisoned").expire(Instant::now());
    }

    /// The peers this node heard from (any message, pings included) within `window`.
    pub fn heard_peers(&self, window: Duration) -> std::collections::HashSet<NodeId> {
        let peers = self.peers.lock().expect("peers poisoned");
        peers.iter().filter(|(_, p)| p.heard.elapsed() < window).map(|(id, _)| *id).collect()
    }

    /// A decoded Raft message from `from` for `shard`: checked, then stepped.
    fn step(&self, from: NodeId, shard: ShardId, msg: Message) {
        if let Err(reason) = admit::check_from_peer(&msg, from, self.node_id) {
            return self.reject(from, shard, reason);
        }
        if self.with_group(shard, |group| group.step(msg)).is_none() {
            debug!(from, shard, "raft message for a shard not held here dropped");
        }
    }

    /// Calls `f` with shard `shard`'s group, if this node holds a replica of it.
    fn with_group<T>(&self, shard: ShardId, f: impl FnOnce(&GroupHandle) -> T) -> Option<T> {
        self.table.get()?.with(shard, |s| f(&s.group))
    }

    fn on_forward(
        &self,
        transport: &Arc<Transport>,
        from: NodeId,
        shard: ShardId,
        request_id: u64,
        command: Bytes,
    ) {
        // A forwarded write must carry its sender's write session: that is what makes a resent
        // copy harmless (see `consensus::sessions`).
        // In this build's format: one of an earlier build's (which no node of this envelope
        // version writes) would bring a transaction without the copy bound into the log.
        let checked = StampedCommand::decode(&command).and_then(|c| match &c.session {
            Some(_) if !c.bounded_copies => {
                Err(CommandError::Decode("a forwarded write must be in command format 4".into()))
            }
            Some(session) if session.origin == from && session.seq == request_id => {
                c.command.validate(&self.limits).map(|()| c)
            }
            _ => Err(CommandError::Decode(format!(
                "a forwarded write must carry node {from}'s write session numbered {request_id}"
            ))),
        });
        let now = crate::cache::storage::unix_now_ms();
        let (checked, command) = match checked {
            Ok(mut c) if c.now_ms > now.saturating_add(FORWARDED_STAMP_LEAD_MS) => {
                debug!(
                    from,
                    ahead_ms = c.now_ms - now,
                    "a forwarded write stamped ahead of this clock restamped"
                );
                c.now_ms = now;
                (Ok(()), Bytes::from(c.encode()))
            }
            checked => (checked.map(|_| ()), command),
        };
        let ticket = ForwardTicket {
            transport: transport.clone(),
            to: from,
            request_id,
            given_up_at: std::time::Instant::now() + self.forward_patience,
        };
        match (checked, self.table.get().and_then(|t| t.get(shard))) {
            (Err(e), _) => ticket.answer(Err(e.into())),
            // Nothing proposed, and no leader known here: the sender tries the next node
            // (found from outside: answered as a transport error, it reached a client as one).
            (Ok(()), None) => ticket.answer(Err(Error::NotLeader { leader_hint: None })),
            (Ok(()), Some(held)) => held.group.propose_forwarded(command, ticket, &self.tasks),
        }
    }
}

/// How far ahead of the leader's clock a forwarded write's stamp may be; one further ahead is
/// stamped with the leader's clock. Apply's log time is the largest stamp it saw and never goes
/// back: found in review, a write forwarded through a node whose clock ran ahead (or a forged
/// frame) moved every replica's log time, and every key with a shorter TTL counted as expired
/// in conditional writes (INCR began again at 1, SET NX was granted twice) and was purged, for
/// as long as that clock was ahead. The leader's own clock stays the cluster's time.
const FORWARDED_STAMP_LEAD_MS: u64 = 1_000;

/// The position `positions` report for `group`'s shard (nothing known when absent).
fn position_of(positions: &[GroupPosition], group: &GroupHandle) -> GroupPosition {
    let shard = group.shared.shard;
    positions
        .iter()
        .find(|p| p.shard == shard)
        .copied()
        // A peer that says nothing of the shard holds no replica of it now (its replica starts
        // later, or it holds none): it can vouch for nothing, as a recovering replica.
        .unwrap_or(GroupPosition { shard, recovering: true, ..Default::default() })
}

impl Inbound for Dispatcher {
    fn on_envelope(&self, transport: &Arc<Transport>, from: NodeId, incarnation: u64, envelope: Envelope) {
        if !self.is_current(from, incarnation) {
            debug!(from, incarnation, "envelope from an earlier incarnation of the peer dropped");
            return;
        }
        match envelope {
            Envelope::Raft { shard, message } => match Message::parse_from_bytes(&message) {
                Ok(msg) => self.step(from, shard, msg),
                Err(e) => warn!(from, shard, error = %e, "undecodable raft message dropped"),
            },
            Envelope::Forward { shard, request_id, command } => {
                self.on_forward(transport, from, shard, request_id, command);
            }
            Envelope::ForwardReply { request_id, result } => {
                self.forwarder.complete(from, request_id, result)
            }
            Envelope::Read { shard, request_id, linearizable, read } => {
                let Some(table) = self.table.get().cloned() else { return };
                self.tasks.spawn(serve_read(
                    table,
                    transport.clone(),
                    (from, request_id),
                    (shard, linearizable, read),
                    self.read_timeout,
                    crate::config::MAX_FRAME_BYTES,
                ));
            }
            Envelope::ReadReply { request_id, result } => self.remote_reads.complete(request_id, result),
            Envelope::ReadCheck { round, shards } => {
                let Some(table) = self.table.get() else { return };
                self.reads.on_check(table, transport, from, round, &shards);
            }
            Envelope::ReadCheckAck { round, confirmed } => {
                self.reads.on_check_ack(transport, &self.live_peers(), from, round, &confirmed);
            }
            Envelope::ReadIndexAsk { ask, shards } => {
                let Some(table) = self.table.get() else { return };
                self.reads.on_ask(table, transport, &self.live_peers(), from, ask, &shards);
            }
            Envelope::ReadIndexAnswer { ask, indices } => {
                let Some(table) = self.table.get() else { return };
                self.reads.on_answer(table, transport, from, ask, &indices);
            }
            Envelope::Leaders { led } => {
                // Only shards the cluster has: a peer naming others must not grow the hints.
                let shards = self.table.get().map_or(0, |t| t.num_shards());
                for (shard, term) in led.into_iter().filter(|(shard, _)| *shard < shards) {
                    self.hints.hint_if_newer(shard, from, term);
                }
            }
            Envelope::SnapshotChunk { shard, transfer, header, total_len, offset, data } => {
                // Only for a replica held here: found from outside, transfers for shards that
                // do not exist, left unfinished, held gigabytes (its leader sends it again once
                // the replica is here).
                if self.with_group(shard, |_| ()).is_none() {
                    debug!(from, shard, "snapshot piece for a shard not held here dropped");
                    return;
                }
                let piece = Piece { transfer, header, total_len, offset, data };
                let assembled = self.snapshots.lock().expect("snapshot assembler poisoned").accept(
                    from,
                    shard,
                    piece,
                    Instant::now(),
                );
                match assembled {
                    Ok(Some(msg)) => {
                        info!(from, shard, bytes = msg.get_snapshot().data.len(), "snapshot received");
                        self.step(from, shard, msg);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(from, shard, error = %e, "snapshot transfer dropped"),
                }
            }
            Envelope::Commit { shard, term, commit } => {
                if self.with_group(shard, |group| group.commit_notice(from, term, commit)).is_none() {
                    debug!(from, shard, "commit notice for a shard not held here dropped");
                }
            }
            Envelope::Hibernate { shard, term, commit } => {
                if self.with_group(shard, |group| group.hibernate_notice(from, term, commit)).is_none() {
                    debug!(from, shard, "hibernation notice for a shard not held here dropped");
                }
            }
            // A ping's whole meaning is that `from` was heard from (`is_current` noted it).
            Envelope::Ping => {}
            Envelope::Hello { .. } | Envelope::AuthChallenge { .. } | Envelope::AuthProof { .. } => {}
        }
    }

    fn on_hello(
        &self,
        from: NodeId,
        incarnation: u64,
        positions: Vec<GroupPosition>,
        client_addr: Option<SocketAddr>,
    ) {
        let client_addr = client_addr.filter(|a| reachable(*a));
        let state =
            PeerState { incarnation, positions: positions.clone(), heard: Instant::now(), client_addr };
        let previous = self.peers.lock().expect("peers poisoned").insert(from, state).map(|p| p.incarnation);
        let restarted = previous.is_some_and(|i| i != incarnation);
        if restarted {
            info!(peer = from, incarnation, "the peer restarted (a new incarnation)");
        }
        for group in &self.groups() {
            group.hello(from, restarted, position_of(&positions, group));
        }
    }

    fn is_joining(&self) -> bool {
        // A table without groups: a restarted memory node asking where its meta shard stands
        // (`cache::meta_conf`), not a node that waits to be added.
        // A replica started again empty knows its group's members (`Group::unlisted`): the
        // node is no stranger's to join.
        self.table.get().is_some_and(|t| {
            let groups = t.groups();
            !groups.is_empty()
                && groups.iter().all(|g| g.shared.voters().is_empty() && !g.shared.members_listed())
        })
    }

    fn local_positions(&self) -> Vec<GroupPosition> {
        let Some(table) = self.table.get() else { return Vec::new() };
        let groups = table.groups();
        if groups.is_empty() {
            // Attached before its meta replica starts (see `is_joining`): the node holds
            // nothing it can vouch for, and says so as a recovering replica would.
            return vec![GroupPosition { shard: META_SHARD, recovering: true, ..Default::default() }];
        }
        groups.iter().map(|g| g.shared.position()).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_address_nobody_can_dial_is_not_kept() {
        let ok = |s: &str| super::reachable(s.parse().unwrap());
        assert!(ok("127.0.0.1:6380") && ok("[::1]:6380") && ok("10.1.2.3:1"));
        assert!(!ok("0.0.0.0:6380") && !ok("[::]:6380") && !ok("127.0.0.1:0"));
    }
}
