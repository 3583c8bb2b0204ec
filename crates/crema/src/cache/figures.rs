//! What a node reports of itself: [`RaftFigures`] (cheap, read without asking the groups) and
//! [`ClusterStatus`] (from every group's task).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{ClusterStatus, DistributedCache};
use crate::error::Result;
use crate::multiraft::{ShardInfo, ShardRange, ShardState};
use crate::types::{NodeId, ShardId};

impl DistributedCache {
    /// This node's replica of `shard`, if it holds one.
    pub(crate) fn replica(&self, shard: ShardId) -> Option<super::shard::Shard> {
        self.shards.get(shard)
    }

    /// Every replica this node holds.
    pub(crate) fn replicas(&self) -> Vec<super::shard::Shard> {
        self.shards.held()
    }

    /// Leader changes of shard `shard`'s group seen by this node (0 for a shard it does not hold).
    pub fn shard_leader_changes(&self, shard: ShardId) -> u64 {
        self.shards.with(shard, |s| s.group.shared.leader_changes()).unwrap_or(0)
    }

    /// Every shard replica on this node, from what its group last published (no round trip to
    /// the groups; see [`Self::cluster_status`] for their full status).
    pub fn shard_info(&self) -> Vec<ShardInfo> {
        let total = self.shards.num_shards();
        let stopped = self.end().is_some();
        let held = self.shards.held();
        let live = held.iter().filter(|s| !s.group.shared.removed());
        live.map(|shard| {
            let shared = &shard.group.shared;
            let range = ShardRange { shard_id: shard.id, total_shards: total };
            let leader = shared.leader_id();
            // A diverged replica serves nothing (`GroupShared::diverged`): `Stopped`.
            let stopped = stopped || shared.diverged();
            let state = self.placed_state(shard.id, ShardState::of(stopped, shared.recovering(), leader));
            ShardInfo {
                shard_id: shard.id,
                state,
                leader,
                members: shared.voters(),
                learners: shared.learners(),
                entry_count: shard.storage.entry_count(),
                size_bytes: shard.storage.weighted_size(),
                term: shared.term(),
                commit_index: shared.commit(),
                applied_index: shared.applied(),
                hibernating: shared.is_hibernating(),
                first_slot: range.first_slot(),
                last_slot: range.last_slot(),
            }
        })
        .collect()
    }

    /// Why this node cannot persist the Raft log of one of its shards (the disk's or RocksDB's
    /// words), while it cannot (see [`RaftFigures::persist_failing`]).
    pub fn persist_error(&self) -> Option<String> {
        self.shards.held().iter().find_map(|shard| shard.group.shared.persist_error())
    }

    /// Cheap figures of the Raft groups (no round trip to their tasks): term, commit and
    /// applied index of shard 0's group; counts (leader changes, messages, ...) summed over
    /// every shard.
    pub fn raft_figures(&self) -> RaftFigures {
        let meta = &self.meta().group.shared;
        let mut figures = RaftFigures {
            term: meta.term(),
            commit_index: meta.commit(),
            applied_index: meta.applied(),
            peer_messages_rejected: self.dispatcher.rejected(),
            node_read_rounds: self.dispatcher.reads.rounds(),
            node_read_asks: self.dispatcher.reads.asks(),
            held_reads: self.dispatcher.reads.held(),
            peer_handshakes_refused: self.transport.handshakes_refused(),
            peer_frames_dropped: self.transport.frames_dropped(),
            forwarded_writes: self.dispatcher.forwarder.opened(),
            ..RaftFigures::default()
        };
        for shard in &self.shards.held() {
            let shared = &shard.group.shared;
            let f = &mut figures;
            f.leader_changes += shared.leader_changes();
            f.snapshots_installed += shared.snapshots_installed();
            f.snapshots_refused += shared.snapshots_refused();
            f.checkpoints_written += shared.checkpoints_written();
            f.persist_failing |= shared.persist_failing();
            f.proposal_batches += shared.proposals().0;
            f.proposed_entries += shared.proposals().1;
            f.writes_given_up += shared.writes_given_up();
            f.messages_sent += shared.messages_sent();
            f.queued_requests += shard.group.queued_requests();
            f.held_writes += shared.held_writes();
            f.read_rounds += shared.read_rounds();
            f.held_reads += shared.held_reads();
            f.apply_rejected += shared.apply_rejected();
            f.peer_messages_rejected += shared.messages_rejected();
            f.recovering |= shared.recovering();
            if shared.diverged() {
                f.diverged_shards += 1;
                f.diverged_shard.get_or_insert(shard.id);
            }
            f.hibernating_shards += usize::from(shared.is_hibernating());
        }
        figures
    }

    /// The full status of this node's replica of shard `shard` (from its group's task).
    ///
    /// # Errors
    /// `Shutdown` once stopped, or for a shard this node does not hold.
    pub async fn shard_status(&self, shard: ShardId) -> Result<crate::GroupStatus> {
        let shard = self.shards.get(shard).ok_or(crate::Error::Shutdown)?;
        shard.group.status().await
    }

    /// A serving replica's state, `Transferring` while the shard map moves the shard.
    fn placed_state(&self, shard: ShardId, state: ShardState) -> ShardState {
        let moving = self.shard_map.placement(shard).is_some_and(|p| p.state == ShardState::Transferring);
        if state == ShardState::Active && moving {
            ShardState::Transferring
        } else {
            state
        }
    }

    /// Every shard of the cluster, in shard order: this node's replicas as
    /// [`Self::cluster_status`] reports them and, for a shard it holds none of, the members
    /// the shard map names, the leader gossip last named and no figures (zero).
    ///
    /// # Errors
    /// `Shutdown` once stopped.
    pub async fn cluster_shards(&self) -> Result<Vec<ShardInfo>> {
        let mut held = self.cluster_status().await?.shards.into_iter().peekable();
        let map = self.shard_map.map();
        let total = self.shards.num_shards();
        let mut out = Vec::with_capacity(total as usize);
        for shard in 0..total {
            let placement = map.shard(shard);
            let hinted =
                |members: &[NodeId]| self.coordinator.hinted_leader(shard).filter(|l| members.contains(l));
            if let Some(mut info) = held.next_if(|s| s.shard_id == shard) {
                // A replica that has not heard from its group yet (one a move just started here)
                // knows no members and no leader: the map's members and the hinted leader stand
                // in, so every slot range keeps a primary (cluster clients refuse a slot map
                // with a range that has none).
                // A replica that knows its group names the leader it knows, none included:
                // found from outside, a node whose peers died named itself, from its own old
                // hint, the leader of the shards it had led, for 45 s and more.
                if info.members.is_empty() {
                    if let Some(placement) = placement {
                        info.members = placement.members.clone();
                    }
                    if info.leader.is_none() {
                        info.leader = hinted(&info.members);
                    }
                }
                out.push(info);
                continue;
            }
            let Some(placement) = placement else { continue };
            let range = ShardRange { shard_id: shard, total_shards: total };
            out.push(ShardInfo {
                shard_id: shard,
                state: placement.state,
                leader: hinted(&placement.members),
                members: placement.members.clone(),
                learners: Vec::new(),
                entry_count: 0,
                size_bytes: 0,
                term: 0,
                commit_index: 0,
                applied_index: 0,
                hibernating: false,
                first_slot: range.first_slot(),
                last_slot: range.last_slot(),
            });
        }
        Ok(out)
    }

    /// Role, term, indexes, members and cache figures of this node.
    ///
    /// # Errors
    /// `Shutdown` once stopped.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let held = self.shards.held();
        let mut shards = Vec::with_capacity(held.len());
        // A replica removed from its shard is gone from this node: not reported.
        for shard in held.iter().filter(|s| !s.group.shared.removed()) {
            let status = shard.group.status().await?;
            let mut info = ShardInfo::from_status(
                &status,
                shard.storage.entry_count(),
                shard.storage.weighted_size(),
                self.shards.num_shards(),
                self.end().is_some(),
            );
            info.state = self.placed_state(shard.id, info.state);
            shards.push(info);
        }
        let group = self.meta().group.status().await?;
        let mut members: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
        for id in group.voters.iter().chain(&group.learners) {
            if let Some(addr) = self.transport.peer_addr(*id) {
                members.insert(*id, addr);
            }
        }
        Ok(ClusterStatus {
            node_id: self.config.node_id,
            raft_addr: self.transport.local_addr(),
            group,
            members,
            entry_count: self.keyspace.entry_count(),
            stats: self.keyspace.stats(),
            shards,
        })
    }
}

/// Raft figures read without a round trip to the group task; see
/// [`DistributedCache::raft_figures`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftFigures {
    /// The current term.
    pub term: u64,
    /// The highest committed index known here.
    pub commit_index: u64,
    /// The highest index applied here.
    pub applied_index: u64,
    /// Leader changes seen by this node since it started.
    pub leader_changes: u64,
    /// Snapshots received from a leader and installed since this node started.
    pub snapshots_installed: u64,
    /// Snapshots from a leader refused because they would not fit this node's disk (they are
    /// sent again; see `CheckpointConfig::min_free_bytes`).
    pub snapshots_refused: u64,
    /// Checkpoints of this node's own state written since it started (durable storage; a
    /// received snapshot, written as a checkpoint too, counts in `snapshots_installed`).
    pub checkpoints_written: u64,
    /// True while the Raft log cannot be written (disk full): writes wait and time out.
    pub persist_failing: bool,
    /// Proposal batches this node appended as leader: every write the group loop took from
    /// its mailbox in one pass goes into one batch (one append message per follower).
    pub proposal_batches: u64,
    /// Log entries in those batches (writes proposed here as leader).
    pub proposed_entries: u64,
    /// Writes this node held as leader (waiting for a batch in flight to commit) whose callers
    /// gave up before they were proposed: left out of the log, so a write answered `TIMEOUT`
    /// under overload is not applied long after.
    pub writes_given_up: u64,
    /// Raft messages this node sent to its peers (appends, heartbeats, votes, responses).
    pub messages_sent: u64,
    /// Writes this node forwarded since it started: written through it for a shard another
    /// node leads (or that it holds no replica of), each counted once however often it was
    /// sent. A cluster client with an up-to-date slot map makes none.
    pub forwarded_writes: u64,
    /// Requests (writes, reads, admin calls) waiting in the group's mailbox right now.
    pub queued_requests: usize,
    /// Writes the leader took from its mailbox and holds for its next batch, while as many
    /// batches as it keeps in flight are still uncommitted.
    pub held_writes: usize,
    /// Read-index rounds this node started: linearizable reads gathered in one loop pass, or
    /// held while a round was in flight, share one (a round retried after a lost answer counts
    /// again).
    pub read_rounds: u64,
    /// Linearizable reads waiting for the next round while this node's round is in flight (a
    /// node-level round or ask, or a group's own round).
    pub held_reads: usize,
    /// Node-level read rounds this node started as leader: one check of every shard it leads
    /// with reads waiting, its own and its followers' (see `docs/multiraft.md`). A read it
    /// could not confirm goes through its group's own round (`read_rounds`).
    pub node_read_rounds: u64,
    /// Node-level asks this node sent as follower: the reads of every shard one other node
    /// leads, in one message (answered at once when the two nodes are a quorum of a shard's
    /// voters, else after that node's next round).
    pub node_read_asks: u64,
    /// Committed entries that did not decode (garbage, or a command version this build does
    /// not know), applied as no-ops on every node.
    pub apply_rejected: u64,
    /// Raft messages from peers dropped (or, for a heartbeat's commit index, corrected)
    /// because a correct peer could not have sent them.
    pub peer_messages_rejected: u64,
    /// Incoming peer connections closed in the handshake: no proof of the cluster secret, or
    /// an id that is not a member of the cluster.
    pub peer_handshakes_refused: u64,
    /// Frames this node did not send a peer because its queue to that peer was full (a peer
    /// not reading, or more to send than the link carries): Raft sends lost appends again.
    pub peer_frames_dropped: u64,
    /// True while this node recovers from a restart without its Raft state (memory storage):
    /// it does not vote until it has caught up (see [`crate::consensus::RecoveryState`]).
    pub recovering: bool,
    /// Shard replicas on this node that committed entries their group's leader contradicts:
    /// such a replica serves nothing, and the node is not ready, until it is brought back
    /// empty (see `docs/reliability.md`).
    pub diverged_shards: usize,
    /// The first of those shards.
    pub diverged_shard: Option<crate::ShardId>,
    /// Shard replicas on this node that hibernate right now: idle, their groups tick no clock
    /// (see [`crate::RaftConfig::hibernate`]).
    pub hibernating_shards: usize,
}
