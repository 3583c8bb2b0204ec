//! What a group's loop publishes for its handles to read without a round trip: role, leader,
//! term, commit and applied indexes, membership, counters, and the notifications that wake
//! whoever waits on them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::consensus::Role;
use crate::transport::envelope::GroupPosition;
use crate::types::{NodeId, ShardId};

/// State the loop publishes for handles to read without a round trip.
pub(crate) struct GroupShared {
    pub shard: ShardId,
    pub(super) role: AtomicU8,
    pub(super) leader: AtomicU64,
    pub(super) term: AtomicU64,
    pub(super) commit: AtomicU64,
    /// The term in which this node leads and has committed an entry of its own (so its commit
    /// index covers everything committed before), in a configuration that is not joint; 0
    /// otherwise. What a node-level read round needs (see `cache::read_rounds`).
    pub(super) read_term: AtomicU64,
    /// The group's configuration is joint (a membership change in two steps is under way).
    pub(super) joint: AtomicBool,
    pub(super) applied: watch::Sender<u64>,
    /// True while this node recovers from a restart without its Raft state (see `recovery`).
    pub(super) recovering: AtomicBool,
    /// The term and index of the last entry in the log (for the peer handshake).
    pub(super) last_term: AtomicU64,
    pub(super) last_index: AtomicU64,
    /// Committed entries that did not decode (or were of an unknown version), applied as no-ops.
    pub(super) apply_rejected: AtomicU64,
    /// Peer messages dropped (or, for a heartbeat's commit index, corrected) before raft-rs saw
    /// them, by this loop's checks against the log.
    pub(super) messages_rejected: AtomicU64,
    pub(super) leader_changed: Notify,
    /// When this node last lost its leader (or started without one).
    pub(super) leaderless_since: Mutex<Instant>,
    /// How many times the known leader changed (to a node or to none).
    pub(super) leader_changes: AtomicU64,
    /// Snapshots received from a leader and installed.
    pub(super) snapshots_installed: AtomicU64,
    /// Snapshots from a leader refused for want of disk space (see `Group::room_for_snapshot`).
    pub(super) snapshots_refused: AtomicU64,
    /// Checkpoints of this node's own state written (durable storage only).
    pub(super) checkpoints_written: AtomicU64,
    /// The term of the last entry applied here.
    pub(super) applied_term: AtomicU64,
    /// True while the raft log cannot be persisted (disk full): the group waits.
    pub(super) persist_failing: AtomicBool,
    /// Why, the last time it failed.
    persist_error: Mutex<String>,
    /// This node applied its own removal: its group has stopped.
    pub(super) removed: AtomicBool,
    /// A leader of this replica's term or a later one sent entries that contradict entries this
    /// replica committed: its history is not the group's (see `Group::note_diverged`).
    pub(super) diverged: AtomicBool,
    /// This node is the group's only voter: as leader it has applied every acknowledged write
    /// (a write is acknowledged only by its proposer, after applying it), so reads need no
    /// Read-Index round.
    pub(super) sole_voter: AtomicBool,
    /// The group's voters, as this node last applied them.
    pub(super) voters: std::sync::RwLock<Vec<NodeId>>,
    /// The shard's members as the agreed shard map names them (placement sets them): a
    /// leader among them is heard even before this replica's log counts it (see
    /// `admit::check_against_log`).
    map_members: std::sync::RwLock<Vec<NodeId>>,
    /// The group's learners, as this node last applied them.
    pub(super) learners: std::sync::RwLock<Vec<NodeId>>,
    /// Proposal batches this node appended as leader (one `MsgPropose` each).
    pub(super) proposal_batches: AtomicU64,
    /// Entries in those batches.
    pub(super) proposed_entries: AtomicU64,
    /// Writes this node held as leader whose callers gave up before they were proposed: left
    /// out of the log (see `propose_batch`).
    pub(super) writes_given_up: AtomicU64,
    /// Raft messages handed to the transport (snapshot pieces not included).
    pub(super) messages_sent: AtomicU64,
    /// Writes the leader took from the mailbox and holds until a batch in flight commits.
    pub(super) held_writes: AtomicUsize,
    /// Read-index rounds this node started (a round retried after a lost answer counts again).
    pub(super) read_rounds: AtomicU64,
    /// Linearizable reads waiting for the next round while one is in flight.
    pub(super) held_reads: AtomicUsize,
    /// True while the group hibernates (ticks no clock; see `hibernate`).
    pub(super) hibernating: AtomicBool,
    /// Wakes a hibernating group (see [`GroupShared::wake`]).
    pub(super) wake: Notify,
    /// Set with `wake` when the group's leader is no longer heard from.
    pub(super) wake_urgent: AtomicBool,
    /// The loop has ended: its last write to the store is done.
    pub(super) ended: AtomicBool,
}

impl GroupShared {
    /// A group's published state before its loop runs (tests of what a loop reports to).
    #[cfg(test)]
    pub(crate) fn for_tests(shard: ShardId) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::new(shard))
    }

    /// Test-only: this node leads in `term` with `commit` committed (an entry of `term` among
    /// it), `voters` voting.
    #[cfg(test)]
    pub(crate) fn lead_for_tests(&self, term: u64, commit: u64, voters: Vec<NodeId>) {
        self.term.store(term, Ordering::Release);
        self.commit.store(commit, Ordering::Release);
        self.read_term.store(term, Ordering::Release);
        self.role.store(Role::Leader as u8, Ordering::Release);
        *self.voters.write().expect("voters poisoned") = voters;
    }

    /// Test-only: this node moved on to `term` (it voted there, or campaigns).
    #[cfg(test)]
    pub(crate) fn move_to_term_for_tests(&self, term: u64) {
        self.term.store(term, Ordering::Release);
        self.read_term.store(0, Ordering::Release);
        self.role.store(Role::Follower as u8, Ordering::Release);
    }

    /// Test-only: this node recovers from a restart without its Raft state.
    #[cfg(test)]
    pub(crate) fn recover_for_tests(&self) {
        self.recovering.store(true, Ordering::Release);
    }

    pub(super) fn new(shard: ShardId) -> Self {
        Self {
            shard,
            role: AtomicU8::new(Role::Follower as u8),
            leader: AtomicU64::new(0),
            term: AtomicU64::new(0),
            commit: AtomicU64::new(0),
            read_term: AtomicU64::new(0),
            joint: AtomicBool::new(false),
            applied: watch::Sender::new(0),
            recovering: AtomicBool::new(false),
            diverged: AtomicBool::new(false),
            last_term: AtomicU64::new(0),
            last_index: AtomicU64::new(0),
            apply_rejected: AtomicU64::new(0),
            messages_rejected: AtomicU64::new(0),
            leader_changed: Notify::new(),
            leaderless_since: Mutex::new(Instant::now()),
            leader_changes: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            snapshots_refused: AtomicU64::new(0),
            checkpoints_written: AtomicU64::new(0),
            applied_term: AtomicU64::new(0),
            persist_failing: AtomicBool::new(false),
            persist_error: Mutex::new(String::new()),
            removed: AtomicBool::new(false),
            sole_voter: AtomicBool::new(false),
            voters: std::sync::RwLock::default(),
            map_members: std::sync::RwLock::default(),
            learners: std::sync::RwLock::default(),
            proposal_batches: AtomicU64::new(0),
            writes_given_up: AtomicU64::new(0),
            proposed_entries: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            held_writes: AtomicUsize::new(0),
            read_rounds: AtomicU64::new(0),
            held_reads: AtomicUsize::new(0),
            hibernating: AtomicBool::new(false),
            wake: Notify::new(),
            wake_urgent: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        }
    }

    /// Whether the group hibernates on this node (ticks no clock until a message or a request
    /// arrives; see `hibernate`).
    pub fn is_hibernating(&self) -> bool {
        self.hibernating.load(Ordering::Acquire)
    }

    /// Wakes the group if it hibernates. `leader_silent`: its leader's node is no longer heard
    /// from, so a follower counts the silence as an election timeout spent.
    pub fn wake(&self, leader_silent: bool) {
        if leader_silent {
            self.wake_urgent.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Proposal batches appended as leader, and the entries in them.
    pub fn proposals(&self) -> (u64, u64) {
        (self.proposal_batches.load(Ordering::Relaxed), self.proposed_entries.load(Ordering::Relaxed))
    }

    /// Raft messages sent to peers.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Ordering::Relaxed)
    }

    /// Writes held for the next batch (see `UNCOMMITTED_BATCHES`).
    pub fn held_writes(&self) -> usize {
        self.held_writes.load(Ordering::Relaxed)
    }

    /// Read-index rounds started (see `READ_ROUNDS_IN_FLIGHT`).
    pub fn read_rounds(&self) -> u64 {
        self.read_rounds.load(Ordering::Relaxed)
    }

    /// Reads waiting for the next read-index round.
    pub fn held_reads(&self) -> usize {
        self.held_reads.load(Ordering::Relaxed)
    }

    pub fn is_leader(&self) -> bool {
        self.role.load(Ordering::Acquire) == Role::Leader as u8
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        Some(self.leader.load(Ordering::Acquire)).filter(|id| *id != 0)
    }

    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    pub fn commit(&self) -> u64 {
        self.commit.load(Ordering::Acquire)
    }

    /// `(term, commit index)` for a read index, while this node leads in `term` and has
    /// committed an entry of it (see `read_term`); the caller still has to confirm that a quorum
    /// is in `term` after this call (see `cache::read_rounds`).
    pub fn read_capture(&self) -> Option<(u64, u64)> {
        // `read_term` before `commit`: the loop stores the commit index first.
        let term = self.read_term.load(Ordering::Acquire);
        if term == 0 || !self.is_leader() {
            return None;
        }
        let commit = self.commit();
        (self.term() == term).then_some((term, commit))
    }

    /// Whether this replica vouches that it is still in `term`: it has not voted or campaigned
    /// in a later one (the loop publishes a new term before it sends anything of it), and it is
    /// not recovering from a restart without its state (it could have voted in an earlier
    /// life).
    pub fn confirms_term(&self, term: u64) -> bool {
        term != 0 && !self.recovering() && !self.removed() && self.term() == term
    }

    /// True when this node leads, is the only voter (see `sole_voter`) and has applied an entry
    /// of its own term: everything committed before it (by an earlier run of this node, from
    /// its durable log) is then applied too.
    pub fn leads_alone(&self) -> bool {
        let term = self.term();
        self.sole_voter.load(Ordering::Acquire)
            && self.is_leader()
            && term > 0
            && self.applied_term.load(Ordering::Acquire) == term
    }

    /// The group's voters, as this node last applied them.
    pub fn voters(&self) -> Vec<NodeId> {
        self.voters.read().expect("voters poisoned").clone()
    }

    /// Records the shard's members as the agreed shard map names them.
    pub fn set_map_members(&self, members: &[NodeId]) {
        let mut held = self.map_members.write().expect("map members poisoned");
        if held.as_slice() != members {
            *held = members.to_vec();
        }
    }

    /// Whether the agreed shard map names `id` a member of this shard.
    pub fn map_names(&self, id: NodeId) -> bool {
        self.map_members.read().expect("map members poisoned").contains(&id)
    }

    /// Whether this replica was told its group's members (by the shard map, or as a member
    /// started again: see `Group::unlisted`).
    pub fn members_listed(&self) -> bool {
        !self.map_members.read().expect("map members poisoned").is_empty()
    }

    /// Whether `id` is one of the group's voters, as this node last applied them.
    pub fn has_voter(&self, id: NodeId) -> bool {
        self.voters.read().expect("voters poisoned").contains(&id)
    }

    /// The group's learners, as this node last applied them (sorted).
    pub fn learners(&self) -> Vec<NodeId> {
        self.learners.read().expect("learners poisoned").clone()
    }

    /// How long this node has known no leader (none while it knows one).
    pub fn leaderless_for(&self) -> Option<Duration> {
        match self.leader_id() {
            Some(_) => None,
            None => Some(self.leaderless_since.lock().expect("leaderless poisoned").elapsed()),
        }
    }

    /// Completes at the next change of the known leader (this node's own leadership included).
    pub fn leader_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.leader_changed.notified()
    }

    /// Waits until the known leader is another than `leader` (none included).
    pub async fn leader_moved_from(&self, leader: NodeId) {
        loop {
            let changed = self.leader_changed.notified();
            if self.leader_id() != Some(leader) {
                return;
            }
            changed.await;
        }
    }

    /// Whether this node was removed from the group (its loop has stopped), or its leader
    /// said so (`mark_removed`).
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// The group's leader says this node is no longer a member, though this replica never
    /// applied its removal: it is treated as removed (and retired by the node).
    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Whether this replica is fresh: no member known, nothing applied (a replica just started
    /// to join its group).
    pub fn is_fresh(&self) -> bool {
        self.voters().is_empty() && self.learners().is_empty() && self.applied() == 0 && !self.removed()
    }

    pub fn persist_failing(&self) -> bool {
        self.persist_failing.load(Ordering::Acquire)
    }

    /// Why the raft log cannot be persisted, while it cannot (see [`Self::persist_failing`]).
    pub fn persist_error(&self) -> Option<String> {
        self.persist_failing().then(|| self.persist_error.lock().expect("persist error poisoned").clone())
    }

    /// Whether this replica answers for its shard (reads here, writes through it, and peers'
    /// reads): it was not removed from its group, its history agrees with its group's
    /// ([`Self::diverged`]), and it is not a follower that cannot persist its log (disk full)
    /// while other voters can answer. Such a follower cannot append what its leader sends, so
    /// a read waiting for it to catch up would wait for the disk: found from outside, a GET
    /// through a node with a full disk answered only at the request timeout. The shard's
    /// other members answer instead; a leader with a full disk refuses writes itself, and
    /// hands its leadership over.
    pub fn serves(&self) -> bool {
        let cannot_follow = self.persist_failing() && !self.is_leader() && self.voters().len() > 1;
        !(self.removed() || self.diverged() || cannot_follow)
    }

    /// Records why the raft log cannot be persisted (see [`Self::persist_error`]).
    pub(crate) fn note_persist_error(&self, error: String) {
        *self.persist_error.lock().expect("persist error poisoned") = error;
    }

    pub(crate) fn set_persist_failing(&self, failing: bool) {
        self.persist_failing.store(failing, Ordering::Release);
    }

    /// Writes held here whose callers gave up before they were proposed (left out of the log).
    pub fn writes_given_up(&self) -> u64 {
        self.writes_given_up.load(Ordering::Relaxed)
    }

    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed.load(Ordering::Relaxed)
    }

    /// Snapshots from a leader this replica refused for want of disk space.
    pub fn snapshots_refused(&self) -> u64 {
        self.snapshots_refused.load(Ordering::Relaxed)
    }

    pub fn checkpoints_written(&self) -> u64 {
        self.checkpoints_written.load(Ordering::Relaxed)
    }

    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// True while this node recovers from a restart without its Raft state.
    pub fn recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    /// True once this replica's committed log was found to contradict its group's leader: it
    /// holds a history the group does not, and serves nothing.
    pub fn diverged(&self) -> bool {
        self.diverged.load(Ordering::Acquire)
    }

    /// Committed entries applied as no-ops because they did not decode.
    pub fn apply_rejected(&self) -> u64 {
        self.apply_rejected.load(Ordering::Relaxed)
    }

    /// Peer messages the loop's checks dropped or corrected.
    pub fn messages_rejected(&self) -> u64 {
        self.messages_rejected.load(Ordering::Relaxed)
    }

    /// Where this group stands here, for the peer handshake.
    pub fn position(&self) -> GroupPosition {
        GroupPosition {
            shard: self.shard,
            term: self.term(),
            commit: self.commit(),
            last_term: self.last_term.load(Ordering::Acquire),
            last_index: self.last_index.load(Ordering::Acquire),
            recovering: self.recovering(),
        }
    }

    /// Waits until some leader is known (or `deadline`); answers it.
    pub async fn wait_for_leader(&self, deadline: tokio::time::Instant) -> Option<NodeId> {
        loop {
            let changed = self.leader_changed.notified();
            if let Some(leader) = self.leader_id() {
                return Some(leader);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.leader_id();
            }
        }
    }
}
