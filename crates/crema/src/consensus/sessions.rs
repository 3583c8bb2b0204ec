//! Write sessions: a forwarded write is applied at most once, however often it is sent.
//!
//! A follower forwards a client's write to the leader. When that leader dies, the write may or
//! may not have been committed, and the follower cannot tell. It resends the write to the next
//! leader, and the state machine makes the resend safe, as the Raft thesis's client sessions do
//! (§6.3): every forwarded write carries a [`SessionStamp`] (its origin node, the origin
//! process's incarnation and a sequence number), and the state machine keeps, per session, the
//! output of every write it applied that the origin may still be waiting for. A copy of a
//! write already applied is answered with the first copy's output and changes nothing.
//!
//! The window is bounded the thesis's way: each stamp also carries the lowest sequence number
//! its origin still waits for (`oldest_pending`); outputs below it are dropped, and a copy that
//! arrives below it is refused (`ApplyError::SessionExpired`) without being applied, since
//! nobody waits for its answer any more. Hard caps (outputs and bytes per session, sessions in
//! all) hold the memory when an origin sends without ever moving its floor.
//!
//! An origin that gives up on a write (its caller was answered `Timeout`) lists it as
//! *abandoned* in the stamps of its next writes, until one of them is applied: from then on a
//! copy of the abandoned write that commits late (it sat in a connection's buffer during a
//! partition, say) is refused instead of applied, so a write whose caller was told it timed out
//! cannot reappear seconds later over the writes made since.
//!
//! A new incarnation of an origin means the previous process is gone (a node id belongs to one
//! process at a time): its sessions are closed, and a stale copy of one of their writes that
//! still commits later is refused rather than applied, since whoever sent it can no longer
//! receive the answer and an earlier copy may already have been applied.
//!
//! This is replicated state like the cache itself: decided in apply, alike on every node, and
//! carried by snapshots (`state_machine`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::consensus::apply::{ApplyError, ApplyOutput};
use crate::types::NodeId;

/// Outputs one session keeps at most; past it the oldest go (and their copies are refused).
pub const MAX_ANSWERS_PER_SESSION: usize = 16_384;

/// Bytes of outputs (values read by the writes) one session keeps at most.
pub const MAX_ANSWER_BYTES_PER_SESSION: usize = 32 << 20;

/// Open sessions at most; past it the least recently used one is closed.
pub const MAX_OPEN_SESSIONS: usize = 1024;

/// Closed sessions remembered; past it the oldest is forgotten.
pub const MAX_CLOSED_SESSIONS: usize = 4096;

/// Abandoned writes one stamp lists at most, and one session keeps at most.
pub const MAX_ABANDONED: usize = 1024;

/// Who sent a forwarded write and where it stands in its sender's sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStamp {
    /// The node the client's write arrived at.
    pub origin: NodeId,
    /// That node's process (a random number drawn at start).
    pub incarnation: u64,
    /// The write's number in the process's sequence; every copy of the write carries the same.
    pub seq: u64,
    /// The lowest sequence number the origin still waited for when it made the write (at most
    /// `seq`): the outputs of earlier writes are no longer needed.
    pub oldest_pending: u64,
    /// Writes of the origin above `oldest_pending` that it gave up on (at most
    /// [`MAX_ABANDONED`]): a copy of one is refused from now on.
    pub abandoned: Vec<u64>,
}

impl SessionStamp {
    fn key(&self) -> (NodeId, u64) {
        (self.origin, self.incarnation)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Copies of writes below this number are refused.
    floor: u64,
    /// Outputs of applied writes at or above the floor, by sequence number.
    answers: BTreeMap<u64, ApplyOutput>,
    /// Writes at or above the floor that their origin gave up on before they were applied.
    abandoned: BTreeSet<u64>,
    /// What `answers` weighs (see [`weight`]); recomputed on restore.
    #[serde(skip)]
    bytes: usize,
    /// The log index of the session's last write (which session is least recently used).
    last_index: u64,
}

impl Session {
    fn raise_floor(&mut self, floor: u64) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        self.abandoned = self.abandoned.split_off(&floor);
        let kept = self.answers.split_off(&floor);
        for output in std::mem::replace(&mut self.answers, kept).values() {
            self.bytes -= weight(output);
        }
    }

    fn record(&mut self, seq: u64, output: &ApplyOutput) {
        self.bytes += weight(output);
        if let Some(previous) = self.answers.insert(seq, output.clone()) {
            self.bytes -= weight(&previous);
        }
        while self.answers.len() > MAX_ANSWERS_PER_SESSION || self.bytes > MAX_ANSWER_BYTES_PER_SESSION {
            let Some((&oldest, _)) = self.answers.first_key_value() else { break };
            // The last number there is (only a lying peer stamps it): no later write follows
            // it, and `oldest + 1` would wrap to a floor that drops nothing, for ever (found in
            // review).
            let Some(next) = oldest.checked_add(1) else {
                if let Some(output) = self.answers.remove(&oldest) {
                    self.bytes -= weight(&output);
                }
                self.floor = u64::MAX;
                continue;
            };
            self.raise_floor(next);
        }
    }
}

/// The write sessions of one Raft group's state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    open: BTreeMap<(NodeId, u64), Session>,
    closed: BTreeSet<(NodeId, u64)>,
    /// `closed` in the order the sessions were closed (the oldest is forgotten first).
    closed_order: VecDeque<(NodeId, u64)>,
}

/// [`Sessions`] as a snapshot carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsData {
    open: Vec<((NodeId, u64), Session)>,
    closed: Vec<(NodeId, u64)>,
}

impl Sessions {
    /// Applies the write stamped `stamp`, committed at `index`: runs `apply` if this is the
    /// write's first copy and keeps its output; answers a later copy with that output without
    /// running anything; refuses a copy nobody can still be waiting for.
    pub fn apply(
        &mut self,
        stamp: &SessionStamp,
        index: u64,
        apply: impl FnOnce() -> ApplyOutput,
    ) -> ApplyOutput {
        let key = stamp.key();
        if self.closed.contains(&key) {
            return ApplyOutput::Failed(ApplyError::SessionExpired);
        }
        if !self.open.contains_key(&key) {
            self.open_session(key);
        }
        let session = self.open.get_mut(&key).expect("opened above");
        session.last_index = index;
        for &seq in stamp.abandoned.iter().take(MAX_ABANDONED) {
            if seq >= session.floor && seq != stamp.seq && !session.answers.contains_key(&seq) {
                session.abandoned.insert(seq);
            }
        }
        while session.abandoned.len() > MAX_ABANDONED {
            session.abandoned.pop_first();
        }
        if let Some(output) = session.answers.get(&stamp.seq) {
            return output.clone();
        }
        if stamp.seq < session.floor || session.abandoned.contains(&stamp.seq) {
            return ApplyOutput::Failed(ApplyError::SessionExpired);
        }
        let output = apply();
        session.raise_floor(stamp.oldest_pending.min(stamp.seq));
        session.record(stamp.seq, &output);
        output
    }

    /// Opens the session `key`: a new incarnation closes its origin's earlier ones, and the
    /// least recently used session is closed when there are too many.
    fn open_session(&mut self, key: (NodeId, u64)) {
        let earlier: Vec<_> = self.open.range((key.0, 0)..=(key.0, u64::MAX)).map(|(k, _)| *k).collect();
        for old in earlier {
            self.close(old);
        }
        if self.open.len() >= MAX_OPEN_SESSIONS {
            let lru = self.open.iter().min_by_key(|(k, s)| (s.last_index, **k)).map(|(k, _)| *k);
            if let Some(lru) = lru {
                self.close(lru);
            }
        }
        self.open.insert(key, Session::default());
    }

    fn close(&mut self, key: (NodeId, u64)) {
        self.open.remove(&key);
        if self.closed.insert(key) {
            self.closed_order.push_back(key);
        }
        while self.closed_order.len() > MAX_CLOSED_SESSIONS {
            if let Some(oldest) = self.closed_order.pop_front() {
                self.closed.remove(&oldest);
            }
        }
    }

    /// Open sessions.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Outputs kept over all sessions.
    pub fn answers_kept(&self) -> usize {
        self.open.values().map(|s| s.answers.len()).sum()
    }

    /// The sessions as a snapshot carries them.
    pub fn data(&self) -> SessionsData {
        SessionsData {
            open: self.open.iter().map(|(k, s)| (*k, s.clone())).collect(),
            closed: self.closed_order.iter().copied().collect(),
        }
    }

    /// Sessions restored from snapshot data.
    ///
    /// # Errors
    /// Data that breaks the caps or disagrees with itself (corrupt or hostile).
    pub fn from_data(data: SessionsData) -> Result<Self, String> {
        if data.open.len() > MAX_OPEN_SESSIONS || data.closed.len() > MAX_CLOSED_SESSIONS {
            return Err(format!(
                "{} open and {} closed sessions: too many",
                data.open.len(),
                data.closed.len()
            ));
        }
        let mut sessions = Sessions::default();
        for (key, mut session) in data.open {
            let bytes: usize = session.answers.values().map(weight).sum();
            if session.answers.len() > MAX_ANSWERS_PER_SESSION
                || bytes > MAX_ANSWER_BYTES_PER_SESSION
                || session.abandoned.len() > MAX_ABANDONED
                || session.answers.keys().next().is_some_and(|&first| first < session.floor)
                || session.abandoned.first().is_some_and(|&first| first < session.floor)
            {
                return Err(format!("session {key:?} does not hold together"));
            }
            session.bytes = bytes;
            if sessions.open.insert(key, session).is_some() {
                return Err(format!("session {key:?} twice"));
            }
        }
        for key in data.closed {
            if !sessions.closed.insert(key) || sessions.open.contains_key(&key) {
                return Err(format!("closed session {key:?} twice or also open"));
            }
            sessions.closed_order.push_back(key);
        }
        Ok(sessions)
    }
}

/// What keeping `output` costs, roughly: a fixed part and the bytes of the values it holds
/// (also an upper bound of its encoding's size).
pub(crate) fn weight(output: &ApplyOutput) -> usize {
    const FIXED: usize = 48;
    let bytes = |v: &Option<bytes::Bytes>| v.as_ref().map_or(0, |b| b.len());
    FIXED
        + match output {
            ApplyOutput::Value(v) => bytes(v),
            ApplyOutput::Written { old, .. } => bytes(old),
            ApplyOutput::Batch(outputs) => outputs.iter().map(weight).sum(),
            ApplyOutput::Exec(Some(outputs)) => outputs.iter().map(weight).sum(),
            ApplyOutput::Values(values) => values.iter().map(|v| FIXED + bytes(v)).sum(),
            ApplyOutput::Meta { keys, .. } => keys.len() * FIXED,
            ApplyOutput::Done
            | ApplyOutput::Removed(_)
            | ApplyOutput::Int(_)
            | ApplyOutput::Failed(_)
            | ApplyOutput::Exec(None) => 0,
        }
}

#[cfg(test)]
#[path = "sessions_tests.rs"]
mod tests;
