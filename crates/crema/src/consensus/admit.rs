//! Which Raft messages from the network raft-rs gets to see. raft-rs trusts its input: it
//! panics on a proposal without entries, on a commit index past its log, on a read-index
//! request without a context, on a message it forwards or answers whose term is not what its
//! own messages carry (a term on a forwarded `MsgReadIndex` or `MsgTransferLeader`, none on a
//! vote request), on an append "after" an entry past its log with term 0 (it reads any index
//! past its log as term 0, so the append matches and commits past the log), and overflows on a
//! term of `u64::MAX` (and one term just under [`MAX_TERM`] leaves a group that can never
//! elect again: [`MAX_TERM_LEAP`]). Those are bugs for a
//! message a correct peer sends and attacks for one anybody can write to the peer port, so
//! every message is checked here first and dropped (and counted) when a correct peer could not
//! have sent it.
//!
//! Two layers: [`check_from_peer`] looks at the message alone (the dispatcher runs it before
//! the message reaches the group's mailbox); [`check_against_log`] compares it with this node's
//! Raft state (the group loop runs it before stepping). Pure functions, no I/O.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};
use raft::{Raft, StateRole, Storage};

use crate::types::NodeId;

/// Terms at or above this are refused: no cluster reaches them by elections (one per
/// nanosecond would take 292 years), and raft-rs adds one to a term when it campaigns.
pub const MAX_TERM: u64 = 1 << 63;

/// A message whose term lies this far or more past the receiving replica's term is refused: a
/// cluster does not hold four billion elections, and one message must not carry a group
/// within reach of [`MAX_TERM`] (where no election could ever be won again: raft-rs
/// campaigns at the term above).
pub const MAX_TERM_LEAP: u64 = 1 << 32;

/// Why a peer's message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The message names another sender than the peer this connection authenticated as.
    WrongSender,
    /// The message is addressed to another node.
    WrongReceiver,
    /// A type that only the local node makes (`MsgPropose`, `MsgHup`, `MsgBeat`, ...).
    LocalOnly,
    /// A term no real cluster reaches.
    AbsurdTerm,
    /// No term on a message raft-rs always sends with one, or a term on a read-index request
    /// (raft-rs forwards those without one: term 0 means "local" to it).
    WrongTermField,
    /// A read-index request or answer without exactly one context entry.
    MalformedReadIndex,
    /// Appended entries that do not follow the message's index, or whose terms go back.
    MalformedEntries,
    /// Appended entries that contradict what this node already committed.
    ConflictsWithCommitted,
    /// An append acknowledgement past this leader's log.
    AckPastLog,
    /// A snapshot whose configuration raft-rs cannot restore, or whose data does not decode.
    BadSnapshot,
    /// An append answer that asks the leader for a snapshot.
    SnapshotAsked,
    /// A leader-only message (`MsgTimeoutNow`) from a node that is not this node's leader.
    NotFromLeader,
    /// An append whose previous entry lies past this node's log with term 0: raft-rs takes any
    /// index past its log for term 0, so it would match and commit past the log (a panic).
    AppendPastLog,
    /// A term [`MAX_TERM_LEAP`] or more past this replica's.
    TermLeap,
    /// The sender is not in this node's configuration of the group (a stranger, or a removed
    /// member); accepted only while this node has no configuration yet (it is joining).
    NotAMember,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reject::WrongSender => "sender is not the connection's peer",
            Reject::WrongReceiver => "addressed to another node",
            Reject::LocalOnly => "a local-only message type",
            Reject::AbsurdTerm => "absurd term",
            Reject::WrongTermField => "term field not as raft-rs sends this type",
            Reject::MalformedReadIndex => "read index without exactly one context",
            Reject::MalformedEntries => "entries out of sequence",
            Reject::ConflictsWithCommitted => "entries contradict committed ones",
            Reject::AckPastLog => "acknowledges entries past the leader's log",
            Reject::BadSnapshot => "snapshot with a configuration raft-rs cannot restore or undecodable data",
            Reject::SnapshotAsked => "asks for a snapshot, which crema's nodes never do",
            Reject::NotFromLeader => "leader-only message from a non-leader",
            Reject::AppendPastLog => "append after an entry past this node's log with term 0",
            Reject::TermLeap => "term too far past this replica's",
            Reject::NotAMember => "sender is not a member of the group",
        })
    }
}

/// Checks what can be checked from the message alone, for a message that arrived from `peer`
/// on a connection to node `me`.
///
/// # Errors
/// The reason a correct peer could not have sent it.
pub(crate) fn check_from_peer(msg: &Message, peer: NodeId, me: NodeId) -> Result<(), Reject> {
    use MessageType::*;
    if msg.from != peer {
        return Err(Reject::WrongSender);
    }
    if msg.to != me {
        return Err(Reject::WrongReceiver);
    }
    if msg.term >= MAX_TERM || msg.log_term >= MAX_TERM {
        return Err(Reject::AbsurdTerm);
    }
    match msg.get_msg_type() {
        // A leader transfer is asked of the leader's own node; raft-rs would forward one that
        // reached a follower with its term set, and panic.
        MsgHup | MsgBeat | MsgPropose | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum
        | MsgTransferLeader => Err(Reject::LocalOnly),
        // A follower forwards its read-index requests with term 0, and forwards again one it
        // gets (to its leader): with a term set, raft-rs panics in that send.
        MsgReadIndex if msg.term != 0 => Err(Reject::WrongTermField),
        // Everything else raft-rs sends carries its term; a vote request without one would
        // be answered with term 0, which raft-rs refuses (panics) to send.
        kind if kind != MsgReadIndex && msg.term == 0 => Err(Reject::WrongTermField),
        MsgReadIndex | MsgReadIndexResp if msg.entries.len() != 1 => Err(Reject::MalformedReadIndex),
        // raft-rs's leader then waits for a snapshot at that index before it sends the follower
        // anything again; crema's nodes never ask for one (the leader decides).
        MsgAppendResponse if msg.request_snapshot != raft::INVALID_INDEX => Err(Reject::SnapshotAsked),
        MsgAppend => check_entries(msg),
        MsgSnapshot => {
            let snapshot = msg.get_snapshot();
            let meta = snapshot.get_metadata();
            if !conf_state_restores(meta.get_conf_state()) || meta.term >= MAX_TERM {
                return Err(Reject::BadSnapshot);
            }
            crate::consensus::state_machine::check_snapshot_data(&snapshot.data)
                .map_err(|_| Reject::BadSnapshot)
        }
        _ => Ok(()),
    }
}

/// Whether raft-rs can take `cs` as a snapshot's configuration: it rebuilds the configuration
/// from it and panics unless the result reads back the same. So: voters; node ids (never 0),
/// each once per list; learners that are no voters, incoming or outgoing; a joint state's
/// `learners_next` only outgoing voters that leave, and `auto_leave` only in a joint state.
pub(crate) fn conf_state_restores(cs: &raft::eraftpb::ConfState) -> bool {
    let (voters, learners) = (cs.get_voters(), cs.get_learners());
    let (outgoing, next) = (cs.get_voters_outgoing(), cs.get_learners_next());
    let once = |ids: &[u64]| {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.len() == ids.len() && !ids.contains(&raft::INVALID_ID)
    };
    let joint = !outgoing.is_empty();
    !voters.is_empty()
        && [voters, learners, outgoing, next].into_iter().all(once)
        && learners.iter().all(|l| !voters.contains(l) && !outgoing.contains(l))
        && next.iter().all(|n| outgoing.contains(n) && !voters.contains(n) && !learners.contains(n))
        && (joint || (next.is_empty() && !cs.auto_leave))
}

/// Entries of an append follow its index one by one, with terms that never go back, none past
/// the message's term or before the term of the entry they follow.
fn check_entries(msg: &Message) -> Result<(), Reject> {
    let mut previous_term = msg.log_term;
    for (i, entry) in msg.entries.iter().enumerate() {
        let in_sequence = msg.index.checked_add(i as u64 + 1) == Some(entry.index);
        if !in_sequence || entry.term < previous_term || entry.term > msg.term {
            return Err(Reject::MalformedEntries);
        }
        previous_term = entry.term;
    }
    Ok(())
}

/// What `check_against_log` did to a message it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// Unchanged.
    AsIs,
    /// A heartbeat's commit index lay past this node's log (a leader that still credits a
    /// restarted node with entries it lost): it was lowered to this node's own commit index,
    /// so the heartbeat still keeps this node a follower but commits nothing it cannot check.
    CommitLowered,
}

/// Checks a message against this node's Raft state, just before it is stepped; may lower a
/// heartbeat's commit index (see [`Admitted::CommitLowered`]).
///
/// # Errors
/// The reason the message cannot be stepped safely.
pub(crate) fn check_against_log<S: Storage>(
    raft: &Raft<S>,
    msg: &mut Message,
    vouched: bool,
) -> Result<Admitted, Reject> {
    use MessageType::*;
    let conf = raft.prs().conf();
    let joining = conf.voters().ids().iter().next().is_none();
    let member = conf.voters().contains(msg.from)
        || conf.learners().contains(&msg.from)
        || conf.learners_next().contains(&msg.from);
    // A leader of this replica's term or a later one that the agreed shard map names a member
    // (`vouched`) is heard before this replica's log counts it: a replica that missed a move
    // (paused or down while its group changed) counts the group's old members, and only the
    // new leader's log can tell it the new ones. Found from outside: such a replica refused
    // the new leader for good, never ready. Anyone else this replica does not count stays
    // refused: a linked node of another shard, or a stranger (raft-rs grants votes to anyone,
    // and follows any leader of a later term).
    let leader_kind = matches!(msg.get_msg_type(), MsgAppend | MsgHeartbeat | MsgSnapshot);
    let heard = joining || member || (vouched && leader_kind && msg.term >= raft.term);
    if !heard {
        return Err(Reject::NotAMember);
    }
    if msg.term >= raft.term.saturating_add(MAX_TERM_LEAP) {
        return Err(Reject::TermLeap);
    }
    let log = &raft.raft_log;
    match msg.get_msg_type() {
        // A leader of an earlier term: raft-rs answers it with this replica's term and appends
        // nothing, whatever its entries say.
        MsgAppend | MsgHeartbeat if msg.term < raft.term => Ok(Admitted::AsIs),
        MsgHeartbeat if msg.commit > log.last_index() => {
            msg.commit = log.committed;
            Ok(Admitted::CommitLowered)
        }
        MsgAppend if msg.index > log.last_index() && msg.log_term == 0 => Err(Reject::AppendPastLog),
        MsgAppend => {
            // raft-rs panics on an entry at or below the commit index that contradicts the log.
            let committed = log.committed;
            for entry in msg.entries.iter().take_while(|e| e.index <= committed) {
                if entry.index >= log.first_index() && log.term(entry.index).ok() != Some(entry.term) {
                    return Err(Reject::ConflictsWithCommitted);
                }
            }
            Ok(Admitted::AsIs)
        }
        MsgAppendResponse
            if !msg.reject && raft.state == StateRole::Leader && msg.index > log.last_index() =>
        {
            Err(Reject::AckPastLog)
        }
        MsgTimeoutNow if msg.from != raft.leader_id || msg.term != raft.term => Err(Reject::NotFromLeader),
        _ => Ok(Admitted::AsIs),
    }
}

/// Lets one warning through per [`WarnThrottle::EVERY`], so a peer that floods bad messages
/// cannot flood the log; the count of what was dropped meanwhile goes with the next warning.
#[derive(Debug, Default)]
pub struct WarnThrottle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnThrottle {
    /// At most one warning this often.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Notes one event at `now`; answers how many events the warning due now covers, or none
    /// when the last warning was less than `EVERY` ago.
    pub fn note(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().expect("throttle poisoned");
        state.1 += 1;
        if state.0.is_some_and(|last| now.duration_since(last) < Self::EVERY) {
            return None;
        }
        let count = std::mem::take(&mut state.1);
        state.0 = Some(now);
        Some(count)
    }
}

#[cfg(test)]
#[path = "admit_tests.rs"]
mod tests;
