//! Applying what the Ready commits (see `group`): snapshots installed, entries applied to the
//! state machine and their proposals answered, membership changes (this node's own removal
//! among them), log compaction and checkpoints.

use std::sync::atomic::Ordering;
use std::time::Instant;

use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{ProgressState, StateRole};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{blocking, Group};
use crate::consensus::command::StampedCommand;
use crate::consensus::persist::write_until_done;
use crate::consensus::state_machine::{ApplyOutput, SnapshotCapture};
use crate::consensus::storage::LogStore;
use crate::consensus::Applied;
use crate::error::{Error, Result};
use crate::types::{NodeId, DEFAULT_SHARD};

/// How long a group waits before it tries again to write a received snapshot its disk refused.
const SNAPSHOT_KEEP_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

impl<S: LogStore> Group<S> {
    pub(super) fn publish_voters(&self) {
        let joint = !self.raw.raft.prs().conf().to_conf_state().voters_outgoing.is_empty();
        self.shared.joint.store(joint, Ordering::Release);
        let voters = self.raw.raft.prs().conf().voters().ids();
        let alone = voters.len() == 1 && voters.contains(self.settings.node_id);
        self.shared.sole_voter.store(alone, Ordering::Release);
        let mut sorted: Vec<NodeId> = voters.iter().collect();
        sorted.sort_unstable();
        *self.shared.voters.write().expect("voters poisoned") = sorted;
        let mut learners: Vec<NodeId> = self.raw.raft.prs().conf().learners().iter().copied().collect();
        learners.sort_unstable();
        *self.shared.learners.write().expect("learners poisoned") = learners;
    }

    /// Installs a snapshot raft-rs took from the leader: restored into the state machine (which
    /// checks it), then made durable here as a checkpoint, and only then recorded in the log
    /// store. Answers false if the node stopped while the disk refused the checkpoint (the
    /// group then halts, and the log store never recorded the snapshot: a restart starts from
    /// the older checkpoint and log).
    pub(super) fn install_snapshot(&mut self, snapshot: &Snapshot) -> bool {
        let meta = snapshot.get_metadata();
        let started = Instant::now();
        let count = self.sm.restore(meta.index, &snapshot.data).unwrap_or_else(|e| {
            panic!("snapshot at index {} from the leader cannot be restored: {e}", meta.index)
        });
        // Kept only once restored: a snapshot that does not restore must not become the
        // newest checkpoint, which every later start would fail on.
        if !self.keep_snapshot(snapshot) {
            return false;
        }
        self.raw
            .mut_store()
            .apply_snapshot(snapshot)
            .unwrap_or_else(|e| panic!("installing snapshot metadata failed: {e}"));
        let members: Vec<_> =
            self.sm.members().lock().expect("members poisoned").clone().into_iter().collect();
        for (id, addr) in members {
            self.transport.add_peer(id, Some(addr));
        }
        // The members before the applied index: a peer's question answered once this replica
        // applied up to an index must read the members as of that index. Found from outside: a
        // restarted node asked a fresh replica whether the group still counted it, was told
        // "no" from the empty members of before the snapshot, and left the group a voter short.
        self.publish_voters();
        self.shared.applied.send_replace(meta.index);
        self.shared.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        info!(shard = self.shared.shard, index = meta.index, entries = count, elapsed = ?started.elapsed(), "installed snapshot");
        true
    }

    /// Writes a received snapshot as a checkpoint before the log store records it: after a
    /// restart the node starts from that state, not from the log the snapshot replaces (its
    /// log store drops that log with the next write). While the disk refuses it, the group
    /// waits here as it waits for its log (`persist`): it reports that it cannot persist,
    /// answers nothing, and goes on once the checkpoint is written. Found in review: the
    /// room a snapshot was let in with (`room_for_snapshot`) may be gone by the time it is
    /// written (several shards' snapshots at once, inodes, another writer), and a failed write
    /// ended the process.
    fn keep_snapshot(&mut self, snapshot: &Snapshot) -> bool {
        let Some(checkpoints) = self.checkpoints.as_mut() else { return true };
        let meta = snapshot.get_metadata();
        let (shard, index) = (self.shared.shard, meta.index);
        let written = write_until_done(
            &self.shared,
            &self.cancel,
            || {
                blocking(|| checkpoints.take(index, meta.term, meta.get_conf_state(), &snapshot.data)).map_err(|e| {
                    raft::Error::Io(std::io::Error::new(
                        e.kind(),
                        format!("the snapshot of shard {shard} at index {index} from the leader cannot be kept as a checkpoint: {e}"),
                    ))
                })
            },
            // Not as often as a log write: each try encodes the whole snapshot again.
            |pause| blocking(|| std::thread::sleep(pause.max(SNAPSHOT_KEEP_PAUSE))),
        );
        if !written {
            self.halted = true;
            self.writes_lost = true;
        }
        written
    }

    pub(super) fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let last_term = entries.last().map_or(0, |e| e.term);
        // Published before any proposal is answered: a client that saw its write applied
        // never reads an older commit index from this node (its figures, its read rounds).
        self.publish_progress();
        if let Some(checkpoints) = self.checkpoints.as_mut() {
            checkpoints.note_applied(entries.iter().map(|e| e.data.len() as u64).sum());
        }
        for entry in entries {
            let (index, term) = (entry.index, entry.term);
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.sm.advance_to(index);
                    Ok(ApplyOutput::Done)
                }
                EntryType::EntryNormal => match StampedCommand::decode(&entry.data) {
                    Ok(command) => Ok(self.sm.apply(index, &command)),
                    Err(e) => {
                        self.reject_entry(index, &e.to_string());
                        Err(Error::InvalidCommand(e))
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf_change(&entry),
            };
            if let Some(reply) = self.proposals.settle(index, term) {
                // Published before the answer: what the client asks next may read the applied
                // index (WATCH records it, and a write since counts as a change). Found in CI: a
                // WATCH right after a SET read the index before that SET (published only at the
                // end of the batch), and its EXEC was refused though nothing had changed.
                self.shared.applied.send_replace(index);
                reply.send(result.map(|output| Applied { index, output }));
            }
        }
        let applied = self.sm.applied_index();
        self.raw.mut_store().set_applied(applied);
        self.shared.applied_term.store(last_term, Ordering::Release);
        self.shared.applied.send_replace(applied);
    }

    /// A committed entry that does not decode (garbage, or a command version this build does
    /// not know) is applied as a no-op: every node decides alike, the group goes on, and the
    /// operator sees it in the log and in `crema_apply_rejected_total`.
    pub(super) fn reject_entry(&mut self, index: u64, error: &str) {
        self.sm.advance_to(index);
        self.shared.apply_rejected.fetch_add(1, Ordering::Relaxed);
        error!(
            shard = self.shared.shard,
            index, error, "committed entry cannot be decoded: applied as a no-op"
        );
    }

    pub(super) fn apply_conf_change(&mut self, entry: &Entry) -> Result<ApplyOutput> {
        self.sm.advance_to(entry.index);
        // What each follower holds, before a removal drops its progress (see `tell_removed`).
        let matched: Vec<(NodeId, u64)> = if self.raw.raft.state == StateRole::Leader {
            self.raw.raft.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect()
        } else {
            Vec::new()
        };
        let decoded = if entry.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&entry.data)
                .map(|cc| (self.raw.apply_conf_change(&cc), vec![(cc.change_type, cc.node_id, cc.context)]))
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data).map(|cc| {
                let changes =
                    cc.changes.iter().map(|c| (c.change_type, c.node_id, cc.context.clone())).collect();
                (self.raw.apply_conf_change(&cc), changes)
            })
        };
        let (applied, changes) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                self.reject_entry(entry.index, &e.to_string());
                return Err(Error::Raft(raft::Error::ConfChangeError(format!(
                    "undecodable conf change: {e}"
                ))));
            }
        };
        let cs = match applied {
            Ok(cs) => cs,
            Err(e) => {
                // Deterministic: every node refuses the same change at the same index.
                warn!(shard = self.shared.shard, index = entry.index, error = %e, "conf change refused");
                return Err(Error::Raft(e));
            }
        };
        for (kind, id, context) in changes {
            if kind == ConfChangeType::RemoveNode {
                self.tell_removed(id, entry.index, &matched);
            }
            self.apply_membership(kind, id, &context, entry.index);
        }
        self.raw
            .mut_store()
            .set_conf_state(cs)
            .unwrap_or_else(|e| panic!("persisting conf state failed: {e}"));
        self.publish_voters();
        Ok(ApplyOutput::Done)
    }

    /// The leader no longer replicates to a node it removed, so that node might never learn
    /// that its removal committed. If it holds the removal entry, one heartbeat committing it
    /// (at this term, from this leader, as raft-rs would send) makes it apply it and stop.
    pub(super) fn tell_removed(&mut self, id: NodeId, index: u64, matched: &[(NodeId, u64)]) {
        let holds_it = matched.iter().any(|(m, at)| *m == id && *at >= index);
        if id == self.settings.node_id || !holds_it {
            return;
        }
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        heartbeat.from = self.settings.node_id;
        heartbeat.to = id;
        heartbeat.term = self.raw.raft.term;
        heartbeat.commit = index;
        self.send(vec![heartbeat]);
    }

    pub(super) fn apply_membership(&mut self, kind: ConfChangeType, id: NodeId, context: &[u8], index: u64) {
        match kind {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let addr = std::str::from_utf8(context).ok().and_then(|s| s.parse().ok());
                if let Some(addr) = addr {
                    self.sm.members().lock().expect("members poisoned").insert(id, addr);
                }
                self.transport.add_peer(id, addr);
                info!(shard = self.shared.shard, node = id, ?addr, ?kind, "member added");
            }
            ConfChangeType::RemoveNode => {
                self.sm.members().lock().expect("members poisoned").remove(&id);
                let replayed = self.settings.fresh && self.removal_floor.is_none_or(|floor| index < floor);
                if id == self.settings.node_id && replayed {
                    // An earlier replica of this node was removed; this one was added since.
                    info!(
                        shard = self.shared.shard,
                        index, "the removal of an earlier replica of this node, replayed"
                    );
                } else if id == self.settings.node_id {
                    self.removed = true;
                    if self.shared.shard == DEFAULT_SHARD {
                        warn!(
                            shard = self.shared.shard,
                            "this node was removed from the group: its Raft group stops (restart it empty to add it again)"
                        );
                    } else {
                        // The node and its other shards go on; the node retires the replica
                        // (`cache::replica`), which drops its data once no read can be using
                        // it: a read that passed its barrier here still reads a whole state.
                        warn!(
                            shard = self.shared.shard,
                            "this replica was removed from its shard: its group stops"
                        );
                    }
                } else if self.shared.shard != DEFAULT_SHARD {
                    // Peer links follow the node's membership (shard 0's), not one shard's.
                    info!(shard = self.shared.shard, node = id, "member removed");
                } else {
                    // After a moment, so that what was just sent to it (`tell_removed`) leaves.
                    // Not if it was added back meanwhile.
                    let (transport, grace) = (self.transport.clone(), self.settings.raft.election_timeout());
                    let members = self.sm.members().clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        if !members.lock().expect("members poisoned").contains_key(&id) {
                            transport.remove_peer(id);
                        }
                    });
                    info!(shard = self.shared.shard, node = id, "member removed");
                }
            }
        }
    }

    /// Keeps at most `max_log_entries` applied entries, compacting in steps of a quarter of
    /// that, and applied entries of at most `max_log_bytes`, compacting to half of that. A
    /// leader keeps what a follower still needs, while that stays within twice both limits
    /// (see `followers_floor`).
    pub(super) fn compact_log(&mut self) {
        let keep = self.settings.raft.max_log_entries;
        let applied = self.sm.applied_index();
        let mut limit = applied + 1 - keep.min(applied);
        let budget = self.settings.raft.max_log_bytes;
        let store = self.raw.store();
        let heavy = store.retained_bytes() > budget;
        if heavy {
            limit = limit.max(store.first_index_within(budget / 2, applied + 1));
        }
        if let Some(floor) = self.followers_floor() {
            let most = (applied + 1 - (2 * keep).min(applied))
                .max(store.first_index_within(2 * budget, applied + 1));
            limit = limit.min(floor.max(most));
        }
        if self.checkpoints.is_some() {
            self.checkpoint_if_due(applied);
            let checkpoints = self.checkpoints.as_ref().expect("checked above");
            limit = limit.min(checkpoints.compact_limit());
        }
        let first = self.raw.raft.raft_log.first_index();
        if (heavy || applied + 1 >= first + keep + keep / 4) && limit > first {
            let store = self.raw.mut_store();
            store.compact(limit).unwrap_or_else(|e| panic!("compacting the log failed: {e}"));
        }
    }

    /// As leader, the first entry its followers still need (past the match of the furthest
    /// behind, or past the snapshot it is being sent). Compacting past it sends that follower
    /// a snapshot of the whole cache: found from outside, a follower a few 8 MB writes behind
    /// was sent snapshots of 160 MB, one after the other, each taking longer than the writes
    /// that made the next one due. Every follower counts, heard from lately or not (raft-rs
    /// forgets who was active at every election timeout, and a new leader knows no match at
    /// first): `compact_log` bounds what this keeps, so a dead follower costs at most twice
    /// the log's limits.
    fn followers_floor(&self) -> Option<u64> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let me = self.settings.node_id;
        raft.prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, pr)| match pr.state {
                ProgressState::Snapshot => pr.pending_snapshot + 1,
                _ => pr.matched + 1,
            })
            .min()
    }

    /// Takes a checkpoint of the state at `applied` when one is due: the state is captured here
    /// (one pass over the cache), then compressed, written and fsynced on a blocking thread so
    /// writes go on meanwhile. A failed write (disk full) is logged and tried again at the next
    /// due point; the log is not compacted past the older checkpoints until one succeeds.
    pub(super) fn checkpoint_if_due(&mut self, applied: u64) {
        let shard = self.shared.shard;
        let Some(checkpoints) = self.checkpoints.as_mut() else { return };
        if let Some(job) = self.checkpoint_job.as_mut() {
            match job.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Ok((index, bytes))) => {
                    self.shared.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = checkpoints.completed(index, bytes) {
                        warn!(shard, error = %e, "listing checkpoints failed");
                    }
                }
                Ok(Err(e)) => warn!(shard, error = %e, "checkpoint failed; will retry"),
                Err(oneshot::error::TryRecvError::Closed) => warn!(shard, "checkpoint job lost"),
            }
            self.checkpoint_job = None;
        }
        if !checkpoints.due(applied) {
            return;
        }
        // The commit index must be durable at least up to the checkpoint before it exists.
        if !self.persist_all() {
            return;
        }
        let Some(checkpoints) = self.checkpoints.as_mut() else { return };
        let term = self.raw.raft.raft_log.term(applied).unwrap_or(0);
        let conf = self.raw.raft.prs().conf().to_conf_state();
        // Copy-on-write: only a flag is set here; the walk over the cache runs with the job.
        let Some(finish) = self.sm.capture_later() else { return };
        let job = checkpoints.job(applied, term, conf, move || {
            finish()
                .map(SnapshotCapture::encode)
                .ok_or_else(|| std::io::Error::other("a clear aborted the capture"))
        });
        checkpoints.started(applied);
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(job().map(|bytes| (applied, bytes)));
        });
        self.checkpoint_job = Some(rx);
    }
}
