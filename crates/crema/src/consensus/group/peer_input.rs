//! What the group loop does with peer input besides stepping it (see `group`): the checks a
//! message passes first (`admit`), a peer's handshake, and this node's own recovery after a
//! restart without its Raft state (`recovery`).
//!
//! On the leader, a handshake from a new incarnation of a peer makes it forget what it knew
//! of that peer's log: a memory node that restarted holds none of the entries the leader
//! credited it with, and a heartbeat carrying that old commit index would ask it to commit
//! entries it does not have. The peer's progress goes back to probing from its old match
//! index with nothing matched, so the peer's first answer (a rejection with its real last
//! index, or an acceptance from a durable node that kept its log) sets it right, and nothing
//! this node commits counts on entries the peer lost.

use std::sync::atomic::Ordering;
use std::time::Instant;

use raft::eraftpb::{ConfChange, ConfChangeType, Message};
use raft::StateRole;
use tracing::{error, info, warn};

use super::Group;
use crate::consensus::admit::Reject;
use crate::consensus::recovery::RecoveryState;
use crate::consensus::storage::LogStore;
use crate::error::{Error, Result};
use crate::transport::envelope::GroupPosition;
use crate::types::NodeId;

/// The term a group that starts a new history moves to: the clock in seconds when no voter
/// heard holds anything past the bootstrap log (a new cluster, or one whose voters all lost
/// their state), else 0. No earlier history of the group is likely to have reached it (that
/// takes more elections than seconds went by), so a node that kept an earlier history, and
/// comes back, sees the new history's leaders as later ones whose entries contradict its
/// own, and is marked diverged (`Group::note_diverged`), instead of taking entries of a term
/// both histories used for its own and serving its history on, ready. Found from outside: a
/// new cluster started at low terms again after two faults at once, and the node that kept
/// the old history stayed ready, serving it. Below `MAX_TERM_LEAP`, which admits any leap
/// from a group's first terms, until 2106.
fn new_history_term(floor: &crate::consensus::recovery::Floor) -> u64 {
    if floor.last_term > crate::consensus::storage::BOOTSTRAP_TERM {
        return 0;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_secs().min(crate::consensus::admit::MAX_TERM_LEAP - 1)
}

/// A recovery still waiting for peers after this many election timeouts is reported.
const STUCK_AFTER_ELECTIONS: u32 = 10;

impl<S: LogStore> Group<S> {
    pub(super) fn on_hello(&mut self, peer: NodeId, restarted: bool, position: GroupPosition) {
        if restarted {
            self.forget_progress(peer);
            // A follower that started again may have room for the snapshot it refused.
            self.raw.mut_store().forget_snapshot_pace(peer);
        }
        if let Some(recovery) = self.recovery.as_mut() {
            recovery.hear(peer, position);
            self.leave_phase_one();
        }
    }

    /// As leader, forgets what was known of `peer`'s log (see the module header).
    fn forget_progress(&mut self, peer: NodeId) {
        if self.raw.raft.state != StateRole::Leader || peer == self.settings.node_id {
            return;
        }
        let Some(pr) = self.raw.raft.mut_prs().get_mut(peer) else { return };
        let matched = pr.matched;
        pr.become_probe();
        pr.matched = 0;
        pr.next_idx = matched + 1;
        // Nor the commit it knew or was told: the new incarnation learns it again
        // (`tell_commit_when_idle`), and hibernation waits until it reports it.
        pr.committed_index = 0;
        self.commit_told.1.remove(&peer);
        info!(
            shard = self.shared.shard,
            peer,
            matched,
            "a new incarnation of the peer connected: its log is probed again, nothing of it counted"
        );
    }

    /// The voters a recovery counts: those it was given, else the configuration's.
    fn voters(&self) -> Vec<NodeId> {
        if let Some(voters) = self.recovery.as_ref().and_then(|r| r.voters()) {
            return voters.to_vec();
        }
        self.raw.raft.prs().conf().voters().ids().iter().collect()
    }

    /// Ends phase 1 of the recovery once enough voters answered: moves to the highest term
    /// they reported and records a vote for itself in it (see `recovery`).
    fn leave_phase_one(&mut self) {
        let voters = self.voters();
        let Some(recovery) = self.recovery.as_mut() else { return };
        let Some(floor) = recovery.floor_if_ready(&voters) else { return };
        let lost = recovery.history_lost(&voters, &floor);
        let me = self.settings.node_id;
        let raft = &mut self.raw.raft;
        // Read the clock once: two readings may fall on both sides of a second.
        let term = floor.term.max(new_history_term(&floor));
        if term > raft.term {
            raft.become_follower(term, raft::INVALID_ID);
        }
        if raft.term == floor.term && raft.vote == raft::INVALID_ID {
            raft.vote = me;
        }
        // Published now, not with the Ready that persists it: the recovery may end below
        // (`check_caught_up`), and whoever sees it ended must see the term it ended in.
        self.shared.term.store(raft.term, Ordering::Release);
        let shard = self.shared.shard;
        if let Some(restarted) = lost {
            error!(
                shard,
                restarted = ?restarted,
                "a majority of the voters lost their Raft state at once (restarted with memory storage, or on empty data dirs): writes that only they held are lost \
                 (none when a voter that kept its state led the group when they stopped); \
                 the group goes on from the state of the others. If none of the others holds the data, restart the \
                 survivors with --force-new-cluster (docs/reliability.md, \"Restarting a memory node\")"
            );
        }
        info!(
            shard,
            term = floor.term,
            last_term = floor.last_term,
            last_index = floor.last_index,
            "recovering: peers answered; catching up before voting"
        );
        self.check_caught_up();
    }

    /// Ends the recovery once this node's log is as up to date as its floor, or once it holds
    /// an entry its leader committed in the leader's own term (see
    /// [`Recovery::settled_by_leader`]).
    pub(super) fn check_caught_up(&mut self) {
        let raft = &self.raw.raft;
        let log = &raft.raft_log;
        let (last_term, last_index) = (log.last_term(), log.last_index());
        let Some(recovery) = self.recovery.as_ref().filter(|r| !r.waiting()) else { return };
        let leader = raft.leader_id;
        let committed_own_term = leader != raft::INVALID_ID
            && leader != raft.id
            && log.committed > 0
            && log.term(log.committed).is_ok_and(|t| t == raft.term);
        let by_leader = committed_own_term && recovery.settled_by_leader(raft.term);
        if by_leader || recovery.caught_up(last_term, last_index) {
            let committed = log.committed;
            self.recovery = None;
            self.shared.recovering.store(false, Ordering::Release);
            info!(
                shard = self.shared.shard,
                last_term, last_index, committed, leader, by_leader, "recovered: caught up, votes again"
            );
        }
    }

    /// Publishes the log's last entry for the handshake, and ends a recovery that caught up.
    pub(super) fn publish_log_position(&mut self) {
        let log = &self.raw.raft.raft_log;
        self.shared.last_term.store(log.last_term(), Ordering::Release);
        self.shared.last_index.store(log.last_index(), Ordering::Release);
        if self.recovery.is_some() {
            self.check_caught_up();
        }
    }

    pub(super) fn recovery_state(&self) -> RecoveryState {
        self.recovery.as_ref().map_or(RecoveryState::Done, |r| r.state(&self.voters()))
    }

    /// Reports, once, a recovery that has waited for peers for long: the cluster cannot elect
    /// a leader that counts on this node, and an operator has to know why.
    pub(super) fn warn_if_stuck(&mut self) {
        let Some(recovery) = self.recovery.as_ref() else { return };
        let patience = self.settings.raft.election_timeout() * STUCK_AFTER_ELECTIONS;
        if self.warned_stuck || !recovery.waiting() || self.started.elapsed() < patience {
            return;
        }
        self.warned_stuck = true;
        let voters = self.voters();
        let RecoveryState::WaitingForPeers { heard, needed } = recovery.state(&voters) else { return };
        let missing: Vec<NodeId> =
            voters.iter().copied().filter(|id| *id != self.settings.node_id && !heard.contains(id)).collect();
        error!(
            shard = self.shared.shard,
            heard = ?heard,
            needed,
            missing = ?missing,
            "this node started without its Raft state (memory storage, or an empty data dir: a first start and a \
             restart look alike) and cannot take part safely yet: it must hear from {needed} other voters and \
             heard from {}; it does not vote until then. Start the missing nodes (in a new cluster they may not \
             have started yet). If they are lost for good, the cluster's data is lost with them: restart one survivor with --force-new-cluster \
             and add the others back with --join (docs/reliability.md, \"Restarting a memory node\")",
            heard.len()
        );
    }

    /// The group's members as a running member answered them, for a replica that recovers
    /// with its command line's (`cache::meta_conf`, when the cluster did not answer before the
    /// replica started): phase 1 counts those voters' answers, and their leader's messages
    /// are heard before the replayed log names it, as a shard map vouches for a data shard's
    /// members. Found from outside: a memory node whose seeds answered late started with its
    /// first members, refused the group's leader (a node added since) for over five minutes,
    /// or, with one of the first voters down, waited for it for good.
    pub(super) fn learn_members(&mut self, voters: Vec<NodeId>, learners: Vec<NodeId>) {
        let Some(recovery) = self.recovery.as_mut() else { return };
        let counted = recovery.learn_voters(voters.clone());
        let mut members = voters;
        members.extend(learners);
        members.sort_unstable();
        members.dedup();
        self.shared.set_map_members(&members);
        info!(
            shard = self.shared.shard,
            ?members,
            counted,
            "recovering: the group's members learned from a running member"
        );
        self.leave_phase_one();
    }

    /// The way out when a majority of the voters is gone for good (etcd's
    /// `--force-new-cluster`): without consensus, this node removes every other member from its
    /// own configuration, keeps its state, and campaigns as the only voter. What the others
    /// held and this node did not is lost; the others must be restarted empty (`--join`) and
    /// added back. Answers the members removed.
    pub(super) fn force_new_cluster(&mut self) -> Result<Vec<NodeId>> {
        let me = self.settings.node_id;
        let conf = self.raw.raft.prs().conf();
        let voters = conf.voters().ids();
        if !voters.contains(me) {
            return Err(Error::Raft(raft::Error::ConfChangeError(
                "this node is not a voter: force a new cluster on a node that was one".into(),
            )));
        }
        let mut others: Vec<NodeId> =
            voters.iter().chain(conf.learners().iter().copied()).filter(|id| *id != me).collect();
        others.sort_unstable();
        others.dedup();
        for id in &others {
            let change =
                ConfChange { change_type: ConfChangeType::RemoveNode, node_id: *id, ..Default::default() };
            let cs = self.raw.apply_conf_change(&change).map_err(Error::Raft)?;
            self.raw.mut_store().set_conf_state(cs).map_err(Error::Raft)?;
        }
        if !self.persist_all() {
            return Err(Error::Shutdown);
        }
        self.recovery = None;
        self.shared.recovering.store(false, Ordering::Release);
        self.publish_voters();
        self.campaign_when_applied = true;
        error!(
            shard = self.shared.shard,
            removed = ?others,
            "forced a new cluster: this node is now the only voter and keeps its state; restart the others \
             empty with --join and add them back"
        );
        Ok(others)
    }

    /// A leader of this replica's term or later sent entries that contradict this replica's
    /// committed ones. Raft never lets that happen while every voter keeps what it
    /// acknowledged; it does when a majority lost its state at once (the others went on
    /// without what only this replica kept), or a node lost its disk while another had never
    /// started. This replica's history is not its group's any more: it stops serving (reads
    /// and writes go to the other holders, and the node is not ready), and says how to bring
    /// it back.
    pub(super) fn note_diverged(&mut self, msg: &Message) {
        if self.shared.diverged.swap(true, Ordering::AcqRel) {
            return;
        }
        let log = &self.raw.raft.raft_log;
        error!(
            shard = self.shared.shard,
            leader = msg.from,
            term = msg.term,
            committed = log.committed,
            "this replica committed entries its group's leader contradicts: the group went on without part of \
             this replica's history (a majority of the voters lost its state at once, or a disk was lost while \
             another voter had never started), and what only this replica holds is lost to the cluster. It \
             serves nothing from now on and the node is not ready. Bring it back empty: with memory storage \
             restart the node; with RocksDB stop it, empty its data dir and start it again (docs/reliability.md)"
        );
    }

    /// Counts a peer message the checks dropped (or corrected) and warns, paced.
    pub(super) fn note_rejected(&mut self, msg: &Message, reason: Reject) {
        self.shared.messages_rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.reject_warnings.note(Instant::now()) {
            warn!(
                shard = self.shared.shard,
                from = msg.from,
                kind = ?msg.get_msg_type(),
                term = msg.term,
                %reason,
                count,
                "peer message refused"
            );
        }
    }
}
