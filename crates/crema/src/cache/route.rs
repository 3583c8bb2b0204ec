//! The write path: where a write goes, when it is sent again, and how long its caller waits.
//!
//! On the leader a write is proposed as it is: a proposal the leader loses before it commits is
//! answered `ProposalDropped` (it can no longer commit), so it is proposed again, safely. On a
//! follower the write is forwarded with a write session (`consensus::sessions`): every copy
//! carries the same sequence number and the state machine applies it once. That is what lets a
//! follower send the write again, at once, when the leader it went to is replaced, stops
//! answering for an election timeout, or answers that it no longer leads: the caller waits for
//! the next leader and a round trip, not for its whole request timeout.
//!
//! Without a leader, a write that was never sent anywhere gets a definite `NotLeader` (the
//! server's `-CLUSTERDOWN`: nothing was written) once this node has been without a leader for
//! an election timeout (at least 1 s) and has not heard from a quorum of voters within two; until then an
//! election may still be on its way, and the write waits for it. (A follower learns that its
//! leader is gone only when its own election timer fires; a node cut off from the majority
//! answers within one or two election timeouts after that.) A write already sent out may have
//! been applied, so it waits for a leader until its deadline and then answers `Timeout`
//! (outcome unknown). A write given up on is reported as such in the origin's next writes, so
//! a copy of it that commits later is refused (`consensus::sessions`).

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;

use super::shard::Shard;
use super::DistributedCache;
use crate::consensus::command::StampedCommand;
use crate::consensus::group::GroupHandle;
use crate::consensus::sessions::SessionStamp;
use crate::consensus::{Applied, ApplyError, ApplyOutput};
use crate::error::{Error, Result};
use crate::transport::envelope::{Envelope, WireError};
use crate::transport::forward::ForwardSlot;
use crate::types::NodeId;

/// Forwarded writes larger than this wait for room on the link to the leader (a small one
/// goes at once: it adds little, and waits behind nothing).
const FORWARD_WAITS_FOR_ROOM_BYTES: usize = 64 * 1024;

/// What one copy of a forwarded write came to.
enum Attempt {
    /// A definite answer for the caller.
    Answered(Result<Applied>),
    /// No answer that settles it: look for the leader and send the write again.
    Again,
}

impl DistributedCache {
    /// Proposes `stamped` to `shard`'s group here when this node leads it, else forwards it to
    /// its leader (sent again as leadership moves) until it is answered; see the module docs.
    pub(super) async fn route_write(
        &self,
        shard: &Shard,
        mut stamped: StampedCommand,
        deadline: Instant,
    ) -> Result<Applied> {
        let local = Bytes::from(stamped.encode());
        // Once the write went out with a session, every later copy (a proposal here too, if
        // this node becomes the leader) carries the same one.
        let mut forwarded: Option<(ForwardSlot<'_>, Bytes)> = None;
        // A forwarded write also ends at `forwarding_timeout` after it first went out.
        let mut deadline = deadline;
        // Copies of this write sent so far (see `forward_copy`).
        let mut copies = 0u32;
        let group = &shard.group;
        loop {
            if !self.holds_shard(shard.id) {
                // This replica left the node meanwhile (a move away): it may never hear of a
                // leader again, so the write goes to the shard's holders, as copies of the
                // same session.
                let sent = forwarded.is_some();
                let (slot, bytes) = forwarded.get_or_insert_with(|| {
                    deadline = deadline.min(Instant::now() + self.config.forwarding_timeout);
                    let slot = self.open_session(&mut stamped);
                    (slot, Bytes::from(stamped.encode()))
                });
                return self
                    .forward_to_holders(shard.id, (slot, bytes, &stamped.session), deadline, sent)
                    .await;
            }
            // Known at once on the hot path; only a wait for one watches the replica leave.
            let leader = match group.shared.leader_id() {
                Some(leader) => leader,
                None => tokio::select! {
                    leader = self.await_leader(group, deadline, forwarded.is_some()) => leader?,
                    () = self.replica_left(shard.id) => continue,
                },
            };
            if leader == self.config.node_id {
                let bytes = forwarded.as_ref().map_or_else(|| local.clone(), |(_, bytes)| bytes.clone());
                match group.propose(bytes).await {
                    Err(Error::ProposalDropped | Error::NotLeader { .. }) if Instant::now() < deadline => {
                        // Leadership moved between our look and the proposal; let it settle.
                        tokio::time::sleep(self.config.raft.tick_interval()).await;
                        continue;
                    }
                    // This copy is dropped, but one forwarded earlier may still commit: the
                    // outcome is unknown, not "nothing was written".
                    Err(Error::ProposalDropped | Error::NotLeader { .. }) if forwarded.is_some() => {
                        return Err(Error::Timeout(self.config.request_timeout));
                    }
                    // Nothing was written and the deadline has passed. `NotLeader` would reach
                    // the client as `-NOTLEADER host:port`, which tells it to write there
                    // itself, as only `forwarding false` does (found from outside: one write
                    // in 30,000 under overload with 200 ms timeouts): leadership moved, nothing
                    // was written.
                    Err(Error::NotLeader { .. }) if self.config.forwarding_enabled => {
                        return Err(Error::ProposalDropped);
                    }
                    // This replica's group stopped under the write (retired after a move
                    // away) while the node runs: the outcome is unknown, which is what a
                    // timeout says; `-SHUTDOWN` told the client the node was stopping.
                    Err(Error::Shutdown) if self.check_running().is_ok() => {
                        return Err(Error::Timeout(self.config.request_timeout));
                    }
                    other => {
                        if let (Some((slot, _)), Some(session), Ok(_)) =
                            (&forwarded, &stamped.session, &other)
                        {
                            slot.answered();
                            self.dispatcher.forwarder.reported(&session.abandoned);
                        }
                        return other.and_then(|applied| self.settled(applied));
                    }
                }
            }
            if !self.config.forwarding_enabled {
                return Err(Error::NotLeader { leader_hint: Some(leader) });
            }
            group.check_persisting()?;
            let (slot, bytes) = forwarded.get_or_insert_with(|| {
                deadline = deadline.min(Instant::now() + self.config.forwarding_timeout);
                let slot = self.open_session(&mut stamped);
                (slot, Bytes::from(stamped.encode()))
            });
            if let Attempt::Answered(result) =
                self.forward_copy(shard, slot, bytes, leader, deadline, &mut copies).await
            {
                let applied = result?;
                // Answered with a result: not given up on (an error leaves it given up on, so
                // a copy still in flight is refused).
                slot.answered();
                if let Some(session) = &stamped.session {
                    self.dispatcher.forwarder.reported(&session.abandoned);
                }
                // Answer once applied here too, so the caller reads its own write on this node;
                // or at once when this replica leaves meanwhile (a move away): the write is
                // applied, and this node reads the shard from its holders from then on.
                if let Err(e) = self.applied_here(shard, applied.index).await {
                    if !self.left_meanwhile(shard.id, &e) {
                        return Err(e);
                    }
                }
                return self.settled(applied);
            }
        }
    }

    /// Resolves once this node's replica of `shard` serves it no more (looked at every tick).
    async fn replica_left(&self, shard: crate::types::ShardId) {
        while self.holds_shard(shard) {
            tokio::time::sleep(self.config.raft.tick_interval()).await;
        }
    }

    /// Sends one copy of a forwarded write to `leader` and waits for its answer, for the
    /// leader to be replaced, or for an election timeout (doubled with each copy already
    /// sent, `copies`), whichever comes first. Found from outside: with 20 clients writing
    /// 8 MB values through one node, a write's answer took longer than an election timeout
    /// (it queued behind the others at the leader), and a copy sent every election timeout
    /// added 8 MB more to the queue each time: the leaders fell further behind and clients
    /// timed out.
    async fn forward_copy(
        &self,
        shard: &Shard,
        slot: &ForwardSlot<'_>,
        bytes: &Bytes,
        leader: NodeId,
        deadline: Instant,
        copies: &mut u32,
    ) -> Attempt {
        let tick = self.config.raft.tick_interval();
        // Past the deadline no copy goes out: the caller is answered now (found with a test:
        // the caller's own timeout is polled after this future, and a wait for `deadline`
        // that is over at once sent another copy, 128 of them until tokio's budget ran out,
        // for every forwarded write that timed out; with a forwarding timeout below the
        // request timeout, copies went out without a pause until the request's deadline).
        if Instant::now() >= deadline {
            return Attempt::Answered(Err(Error::Timeout(self.config.request_timeout)));
        }
        // A large write waits for room on the link rather than fill it: the leader's groups
        // replicate over the same link (see `Transport::room_for`). A link that stays full
        // may be one to a dead leader: the wait ends when another one is named.
        if bytes.len() > FORWARD_WAITS_FOR_ROOM_BYTES {
            tokio::select! {
                waited = tokio::time::timeout_at(deadline, self.transport.room_for(leader)) => {
                    if waited.is_err() {
                        return Attempt::Again;
                    }
                }
                _ = shard.group.shared.leader_moved_from(leader) => return Attempt::Again,
            }
        }
        let reply = slot.arm(leader);
        let frame = Envelope::Forward { shard: shard.id, request_id: slot.seq, command: bytes.clone() };
        if let Err(e) = self.transport.send(leader, frame.to_frame()) {
            debug!(leader, error = %e, "a forwarded write was not sent; trying again");
            tokio::time::sleep(tick).await;
            return Attempt::Again;
        }
        // The frame or its answer may be lost with a connection: resend after an election
        // timeout without news, and after twice as long the next time.
        let patience = self.config.raft.election_timeout() * (1 << (*copies).min(6));
        *copies += 1;
        let resend_at = (Instant::now() + patience).min(deadline);
        tokio::select! {
            reply = reply => match reply {
                Ok(Ok(applied)) => Attempt::Answered(Ok(applied)),
                Ok(Err(WireError::NotLeader(_) | WireError::ProposalDropped | WireError::Timeout(_)
                    | WireError::Shutdown)) => {
                    // That node no longer leads (or stops): the write goes to the next leader.
                    tokio::time::sleep(tick).await;
                    Attempt::Again
                }
                Ok(Err(e)) => Attempt::Answered(Err(e.into())),
                Err(_) => Attempt::Answered(Err(Error::Shutdown)),
            },
            _ = shard.group.shared.leader_moved_from(leader) => Attempt::Again,
            _ = tokio::time::sleep_until(resend_at) => Attempt::Again,
        }
    }

    /// Opens a forwarding slot for a write and stamps the write with this node's write session
    /// (see `consensus::sessions`): every copy sent carries it, so it is applied once.
    pub(super) fn open_session(&self, stamped: &mut StampedCommand) -> ForwardSlot<'_> {
        let forwarder = &self.dispatcher.forwarder;
        let slot = forwarder.open();
        let oldest_pending = forwarder.oldest_pending();
        stamped.session = Some(SessionStamp {
            origin: self.config.node_id,
            incarnation: self.transport.incarnation(),
            seq: slot.seq,
            oldest_pending,
            abandoned: forwarder.abandoned_since(oldest_pending),
        });
        slot
    }

    /// A copy answered with `SessionExpired` found its first answer gone: the outcome is
    /// unknown to this caller.
    pub(super) fn settled(&self, applied: Applied) -> Result<Applied> {
        match applied.output {
            ApplyOutput::Failed(ApplyError::SessionExpired) => {
                tracing::warn!(
                    index = applied.index,
                    "a forwarded write was refused as expired by its session; answered TIMEOUT"
                );
                Err(Error::Timeout(self.config.request_timeout))
            }
            _ => Ok(applied),
        }
    }

    /// `group`'s leader, once one is known. Without one: `NotLeader` (nothing was written) for
    /// a request never sent once this node cannot reach a quorum, `Timeout` at the deadline for
    /// one that was sent (it may have been applied).
    pub(super) async fn await_leader(
        &self,
        group: &GroupHandle,
        deadline: Instant,
        sent: bool,
    ) -> Result<NodeId> {
        loop {
            let look_again = (Instant::now() + self.config.raft.tick_interval()).min(deadline);
            if let Some(leader) = group.shared.wait_for_leader(look_again).await {
                return Ok(leader);
            }
            if sent && Instant::now() >= deadline {
                return Err(Error::Timeout(self.config.request_timeout));
            }
            if !sent && (Instant::now() >= deadline || !self.quorum_reachable(group)) {
                return Err(Error::NotLeader { leader_hint: None });
            }
        }
    }

    /// Resolves once this node knows no leader of `group` and cannot reach a quorum of it
    /// (looked at every tick).
    pub(super) async fn quorum_lost(&self, group: &GroupHandle) {
        loop {
            if group.shared.leader_id().is_none() && !self.quorum_reachable(group) {
                return;
            }
            tokio::time::sleep(self.config.raft.tick_interval()).await;
        }
    }

    /// Whether a leader may still appear: this node lost its leader less than an election
    /// timeout ago, or heard from enough voters within two (the longest randomized election
    /// timeout) to make a quorum with itself, or knows no voters yet (a joining node).
    pub(super) fn quorum_reachable(&self, group: &GroupHandle) -> bool {
        // At least a second, whatever the ticks: an overloaded node with very short election
        // timeouts (tests run 200 ms ones on 2 busy cores) must not call a slow election lost.
        let election = self.config.raft.election_timeout().max(Duration::from_secs(1));
        if group.shared.leaderless_for().is_none_or(|d| d < election) {
            return true;
        }
        // Heard within the longest randomized election timeout: a node that is still in touch
        // with its peers hears their campaign (or their hello at start) within it.
        let window = 2 * election;
        let voters = group.shared.voters();
        if voters.is_empty() {
            return true;
        }
        let me = self.config.node_id;
        let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != me).collect();
        let needed = (voters.len() / 2 + 1).saturating_sub(usize::from(voters.contains(&me)));
        self.dispatcher.heard_within(&others, window) >= needed
    }
}
