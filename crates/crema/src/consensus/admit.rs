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
    /// A heartbeat whose commit index lay past this node's log (corrected, not dropped).
    CommitPastLog,
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
            Reject::CommitPastLog => "heartbeat commit index past this node's log (lowered)",
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
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn msg(kind: MessageType) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 2;
        m.to = 1;
        m.term = 5;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    /// Node 1's replica of a group of three, at `term`, with an empty log.
    fn replica_at(term: u64) -> Raft<raft::storage::MemStorage> {
        let storage = raft::storage::MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        let config = raft::Config { id: 1, ..Default::default() };
        let logger = crate::consensus::logger::raft_logger(1, 0);
        let mut raft = Raft::new(&config, storage, &logger).expect("a valid config");
        raft.term = term;
        raft
    }

    /// Found from outside, claiming a member's id on the peer port: one append "after" an
    /// entry far past the log with term 0 (raft-rs reads any index past its log as term 0, so
    /// it matched and committed past the log: a panic), and one answer at a term just under
    /// `MAX_TERM` (every replica took it, and no election could be won after it).
    #[test]
    fn an_append_after_an_entry_past_the_log_and_a_leap_of_terms_are_refused() {
        let raft = replica_at(5);
        let mut append = msg(MessageType::MsgAppend);
        (append.index, append.log_term, append.commit) = (1_000_000_000_000, 0, 1_000_000_000_000);
        assert_eq!(check_against_log(&raft, &mut append, false), Err(Reject::AppendPastLog));
        // A leader probing a follower that lags names the term of its entry there: raft-rs
        // answers that with a rejection and the follower's last index.
        append.log_term = 4;
        assert_eq!(check_against_log(&raft, &mut append, false), Ok(Admitted::AsIs));
        let mut answer = msg(MessageType::MsgHeartbeatResponse);
        answer.term = MAX_TERM - 1;
        assert_eq!(check_from_peer(&answer, 2, 1), Ok(()), "not absurd on its own");
        assert_eq!(check_against_log(&raft, &mut answer, false), Err(Reject::TermLeap));
        answer.term = 5 + MAX_TERM_LEAP - 1;
        assert_eq!(check_against_log(&raft, &mut answer, false), Ok(Admitted::AsIs));
        answer.term = 5 + MAX_TERM_LEAP;
        assert_eq!(check_against_log(&raft, &mut answer, false), Err(Reject::TermLeap));
    }

    /// A replica whose group changed while it was away counts the old members: the appends and
    /// heartbeats of a new leader the shard map names reach it; its votes and answers, and
    /// anything from a node the map does not name, do not.
    #[test]
    fn a_leader_this_replica_does_not_count_yet_is_heard() {
        let raft = replica_at(5);
        let from_new = |kind, term| {
            let mut m = msg(kind);
            (m.from, m.term) = (4, term);
            m
        };
        for kind in [MessageType::MsgAppend, MessageType::MsgHeartbeat] {
            assert_eq!(
                check_against_log(&raft, &mut from_new(kind, 6), true),
                Ok(Admitted::AsIs),
                "{kind:?}"
            );
            assert_eq!(
                check_against_log(&raft, &mut from_new(kind, 5), true),
                Ok(Admitted::AsIs),
                "{kind:?}"
            );
            assert_eq!(
                check_against_log(&raft, &mut from_new(kind, 4), true),
                Err(Reject::NotAMember),
                "{kind:?}"
            );
            // Not named by the shard map: a node of another shard, or a stranger.
            assert_eq!(
                check_against_log(&raft, &mut from_new(kind, 6), false),
                Err(Reject::NotAMember),
                "{kind:?}"
            );
        }
        for kind in [
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVote,
            MessageType::MsgAppendResponse,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgTimeoutNow,
        ] {
            assert_eq!(
                check_against_log(&raft, &mut from_new(kind, 6), true),
                Err(Reject::NotAMember),
                "{kind:?}"
            );
        }
    }

    /// An append of a leader of an earlier term is raft-rs's to answer (with this replica's
    /// term), not a contradiction of the log to warn about: raft-rs appends nothing from it.
    #[test]
    fn an_append_of_an_earlier_term_is_left_to_raft_rs() {
        let mut raft = replica_at(5);
        raft.raft_log.append(&[entry(1, 5), entry(2, 5)]);
        raft.raft_log.commit_to(2);
        let mut stale = msg(MessageType::MsgAppend);
        (stale.term, stale.index, stale.log_term) = (4, 0, 0);
        stale.set_entries(vec![entry(1, 4), entry(2, 4)].into());
        assert_eq!(check_against_log(&raft, &mut stale, false), Ok(Admitted::AsIs));
        stale.term = 5;
        assert_eq!(check_against_log(&raft, &mut stale, false), Err(Reject::ConflictsWithCommitted));
    }

    #[test]
    fn only_what_a_peer_may_send_passes() {
        assert_eq!(check_from_peer(&msg(MessageType::MsgHeartbeat), 2, 1), Ok(()));
        assert_eq!(check_from_peer(&msg(MessageType::MsgHeartbeat), 3, 1), Err(Reject::WrongSender));
        assert_eq!(check_from_peer(&msg(MessageType::MsgHeartbeat), 2, 4), Err(Reject::WrongReceiver));
        for local in [
            MessageType::MsgPropose,
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
            MessageType::MsgTransferLeader,
        ] {
            assert_eq!(check_from_peer(&msg(local), 2, 1), Err(Reject::LocalOnly), "{local:?}");
        }
        let mut huge = msg(MessageType::MsgHeartbeat);
        huge.term = u64::MAX;
        assert_eq!(check_from_peer(&huge, 2, 1), Err(Reject::AbsurdTerm));
        huge.term = MAX_TERM - 1;
        assert_eq!(check_from_peer(&huge, 2, 1), Ok(()));
        let mut read = msg(MessageType::MsgReadIndex);
        read.term = 0;
        assert_eq!(check_from_peer(&read, 2, 1), Err(Reject::MalformedReadIndex));
        read.set_entries(vec![Entry::default()].into());
        assert_eq!(check_from_peer(&read, 2, 1), Ok(()));
        read.term = 5;
        assert_eq!(
            check_from_peer(&read, 2, 1),
            Err(Reject::WrongTermField),
            "raft-rs forwards these without a term"
        );
        for kind in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote, MessageType::MsgHeartbeat] {
            let mut no_term = msg(kind);
            no_term.term = 0;
            assert_eq!(check_from_peer(&no_term, 2, 1), Err(Reject::WrongTermField), "{kind:?}");
        }
    }

    #[test]
    fn appended_entries_must_follow_the_index_with_terms_that_never_go_back() {
        let mut m = msg(MessageType::MsgAppend);
        m.index = 10;
        m.log_term = 3;
        m.set_entries(vec![entry(11, 3), entry(12, 5)].into());
        assert_eq!(check_from_peer(&m, 2, 1), Ok(()));
        for bad in [
            vec![entry(12, 3)],               // gap
            vec![entry(11, 3), entry(11, 3)], // repeated index
            vec![entry(11, 2)],               // before the previous entry's term
            vec![entry(11, 6)],               // past the message's term
            vec![entry(11, 4), entry(12, 3)], // terms go back
        ] {
            m.set_entries(bad.clone().into());
            assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::MalformedEntries), "{bad:?}");
        }
        m.index = u64::MAX;
        m.set_entries(vec![entry(0, 3)].into());
        assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::MalformedEntries), "index overflow");
    }

    #[test]
    fn warnings_are_paced_and_count_what_they_cover() {
        let t = WarnThrottle::default();
        let start = Instant::now();
        assert_eq!(t.note(start), Some(1));
        assert_eq!(t.note(start + Duration::from_secs(1)), None);
        assert_eq!(t.note(start + Duration::from_secs(2)), None);
        assert_eq!(t.note(start + WarnThrottle::EVERY), Some(3));
    }

    #[test]
    fn a_snapshot_needs_voters_and_data_that_decodes() {
        let mut m = msg(MessageType::MsgSnapshot);
        assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::BadSnapshot), "no voters");
        m.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2];
        assert_eq!(check_from_peer(&m, 2, 1), Ok(()), "empty data is an empty state");
        m.mut_snapshot().data = vec![1, 0xff, 0xff].into();
        assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::BadSnapshot));
        // Found from outside: node 1 both voter and learner stopped the node in raft-rs.
        m.mut_snapshot().data = Default::default();
        m.mut_snapshot().mut_metadata().mut_conf_state().learners = vec![1];
        assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::BadSnapshot));
    }

    /// Every configuration `conf_state_restores` lets through is restored by raft-rs as it is
    /// (no panic), over every way of placing nodes 1-3 in the four lists, with and without
    /// `auto_leave`; those found from outside are refused.
    #[test]
    fn a_snapshot_configuration_let_through_is_one_raft_rs_restores() {
        use raft::eraftpb::{ConfState, Snapshot};
        let quiet = slog::Logger::root(slog::Discard, slog::o!());
        let mut accepted = 0;
        for placing in 0..(16u32.pow(3) * 2) {
            let mut cs = ConfState { auto_leave: placing >= 16u32.pow(3), ..Default::default() };
            for id in 1..=3u64 {
                let lists = (placing % 16u32.pow(3)) / 16u32.pow(id as u32 - 1) % 16;
                let put = |bit: u32, list: &mut Vec<u64>| {
                    if lists & bit != 0 {
                        list.push(id);
                    }
                };
                put(1, &mut cs.voters);
                put(2, &mut cs.learners);
                put(4, &mut cs.voters_outgoing);
                put(8, &mut cs.learners_next);
            }
            if !conf_state_restores(&cs) {
                continue;
            }
            accepted += 1;
            let storage = raft::storage::MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
            let config = raft::Config { id: 1, ..Default::default() };
            let mut raft = Raft::new(&config, storage, &quiet).expect("a valid config");
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = 100;
            snapshot.mut_metadata().term = 1;
            snapshot.mut_metadata().set_conf_state(cs.clone());
            let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raft.restore(snapshot)));
            assert!(restored.is_ok(), "raft-rs panicked restoring {cs:?}");
        }
        assert!(accepted > 100, "only {accepted} configurations accepted");
        for bad in [
            ConfState { voters: vec![1, 2, 3], learners: vec![2], ..Default::default() },
            ConfState {
                voters: vec![1, 2],
                voters_outgoing: vec![1, 3],
                learners_next: vec![1],
                ..Default::default()
            },
            ConfState { voters: vec![1, 1], ..Default::default() },
            ConfState { voters: vec![0, 1], ..Default::default() },
            ConfState { voters: vec![1], auto_leave: true, ..Default::default() },
        ] {
            assert!(!conf_state_restores(&bad), "{bad:?}");
        }
    }

    /// Found from outside: two forged answers asking for a snapshot (one per follower) left the
    /// leader waiting for snapshots its store never makes, and sending no follower an append.
    #[test]
    fn an_answer_asking_for_a_snapshot_is_refused() {
        let mut answer = msg(MessageType::MsgAppendResponse);
        (answer.reject, answer.index) = (true, 1 << 40);
        assert_eq!(check_from_peer(&answer, 2, 1), Ok(()));
        answer.request_snapshot = 7;
        assert_eq!(check_from_peer(&answer, 2, 1), Err(Reject::SnapshotAsked));
    }
}
