//! The envelope every peer frame carries: a version byte, then one postcard-encoded [`Envelope`].
//!
//! Raft messages travel as their protobuf bytes inside `Envelope::Raft`, tagged with the shard
//! (Raft group) they belong to, so every group shares one connection per node pair.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::TransportError;
use super::frame::LENGTH_PREFIX_BYTES;
use crate::consensus::command::CommandError;
use crate::consensus::Applied;
use crate::error::Error;
use crate::types::{NodeId, ShardId};

/// Version of the envelope format; a peer sending another version is disconnected. Version 2:
/// the hello carries the sender's incarnation and each group's log position. Version 3: node
/// pings and hibernation notices. Version 4: reads for nodes that hold no replica of a shard.
/// Version 5: node-level read rounds (`ReadCheck`, `ReadIndexAsk` and their answers) and
/// commit notices. Version 6: the hello carries the sender's client address. Version 7: the
/// hello carries the shard count. Version 8: commands in format 3 and 4, whose transactions
/// bound what their APPENDs and SETRANGEs copy (`consensus::command`), and the answer that
/// bound gives: a node of version 7 would apply such an entry as a no-op, so the two refuse
/// each other's connections.
pub const ENVELOPE_VERSION: u8 = 8;

/// One Raft group's position on the sender of a hello: what a restarted memory node needs to
/// learn before it may vote again (see `consensus::recovery`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPosition {
    /// The group.
    pub shard: ShardId,
    /// The sender's current term in the group.
    pub term: u64,
    /// The highest commit index the sender knows.
    pub commit: u64,
    /// The term of the sender's last log entry.
    pub last_term: u64,
    /// The index of the sender's last log entry.
    pub last_index: u64,
    /// True while the sender itself is recovering (a memory node that restarted and holds
    /// nothing it can vouch for yet).
    pub recovering: bool,
}

/// One message between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Envelope {
    /// First frame each way on a new connection.
    Hello {
        /// The sender's id.
        node_id: NodeId,
        /// A random number the sender drew when its process started: a new one means the peer
        /// restarted (and, with memory storage, lost its log and its votes).
        incarnation: u64,
        /// Where each of the sender's groups stands.
        groups: Vec<GroupPosition>,
        /// Where the sender's clients connect (its RESP address), if it says.
        client_addr: Option<SocketAddr>,
        /// How many shards the sender's keys are split into (0 in a probe's hello): nodes that
        /// split them differently would route one key to different groups, so the handshake
        /// is refused.
        shards: u32,
    },
    /// A Raft message (protobuf bytes) for group `shard`.
    Raft {
        /// Target group.
        shard: ShardId,
        /// `eraftpb::Message` protobuf bytes.
        message: Bytes,
    },
    /// A write forwarded by a follower to the leader.
    Forward {
        /// Target group.
        shard: ShardId,
        /// Matches the reply to the request on the forwarding node.
        request_id: u64,
        /// An encoded `CacheCommand`.
        command: Bytes,
    },
    /// The leader's answer to a `Forward`.
    ForwardReply {
        /// The forwarded request's id.
        request_id: u64,
        /// Where it was applied, or why not.
        result: Result<Applied, WireError>,
    },
    /// One piece of a Raft snapshot message, whose data is too large for one frame. The first
    /// piece carries the message without its data; the receiver appends the pieces in order
    /// and steps the whole message once `total_len` bytes arrived.
    SnapshotChunk {
        /// Target group.
        shard: ShardId,
        /// Identifies one transfer; a piece of another transfer restarts assembly.
        transfer: u64,
        /// On the first piece: the `eraftpb::Message` protobuf bytes with empty snapshot data.
        header: Option<Bytes>,
        /// Bytes of snapshot data in the whole transfer.
        total_len: u64,
        /// Where this piece starts in the data.
        offset: u64,
        /// The piece.
        data: Bytes,
    },
    /// Peer authentication, first frame of the accepting side: its challenge (see
    /// `transport::auth`).
    AuthChallenge {
        /// Random bytes the other side must prove the secret over.
        challenge: [u8; super::auth::CHALLENGE_BYTES],
    },
    /// Peer authentication: a side's proof that it knows the secret, with (from the dialing
    /// side) its own challenge.
    AuthProof {
        /// The dialing side's challenge (zero from the accepting side).
        challenge: [u8; super::auth::CHALLENGE_BYTES],
        /// HMAC-SHA256 over both challenges.
        proof: Vec<u8>,
    },
    /// The sender is alive: sent to every peer a few times per election timeout, whatever
    /// else is sent, so a node knows which peers it still hears while its groups hibernate.
    Ping,
    /// The leader of group `shard` stops ticking (nothing to replicate, every member matched):
    /// the receiver's replica may stop too (see `consensus::group::hibernate`).
    Hibernate {
        /// The group.
        shard: ShardId,
        /// The leader's term.
        term: u64,
        /// The leader's commit index, which is also its last index.
        commit: u64,
    },
    /// A read of group `shard` for a node that holds no replica of it (see `cache::remote`).
    Read {
        /// The group.
        shard: ShardId,
        /// Matches the reply to the request on the asking node.
        request_id: u64,
        /// Read after a Read-Index round of the group (else from the replica as it is).
        linearizable: bool,
        /// What to read.
        read: RemoteRead,
    },
    /// The shards the sender leads, each with its term there: routing hints for the nodes that
    /// do not hold them (a newer term wins; see `cache::keepalive`).
    Leaders {
        /// (shard, term) of every shard the sender leads.
        led: Vec<(ShardId, u64)>,
    },
    /// The answer to a `Read`.
    ReadReply {
        /// The read's id.
        request_id: u64,
        /// What was read, or why not.
        result: Result<RemoteAnswer, WireError>,
    },
    /// The leader of group `shard` tells a follower how far it may commit: the leader's commit
    /// index, at most what that follower is known to hold (as a heartbeat's). No answer is
    /// expected; it replaces the empty append (and its answer) an idle leader sent to tell a
    /// commit (see `consensus::group::tell_commit_when_idle`).
    Commit {
        /// The group.
        shard: ShardId,
        /// The leader's term.
        term: u64,
        /// The commit index the follower may take.
        commit: u64,
    },
    /// A leader's read round (see `cache::read_rounds`): does the receiver still follow each of
    /// these shards in the given term?
    ReadCheck {
        /// Matches the answer to the round.
        round: u64,
        /// (shard, the sender's term as its leader).
        shards: Vec<(ShardId, u64)>,
    },
    /// The answer to a `ReadCheck`: the shards whose replica here is still in the asked term.
    ReadCheckAck {
        /// The round asked about.
        round: u64,
        /// The shards confirmed.
        confirmed: Vec<ShardId>,
    },
    /// A follower asks the leader of these shards for a read index of each (see
    /// `cache::read_rounds`).
    ReadIndexAsk {
        /// Matches the answer to the ask.
        ask: u64,
        /// The shards.
        shards: Vec<ShardId>,
    },
    /// The answer to a `ReadIndexAsk`: a read index of each shard the sender could vouch for,
    /// usable while the asker's replica is still in the term named; any other shard of the ask
    /// goes through its group's own Read-Index.
    ReadIndexAnswer {
        /// The ask answered.
        ask: u64,
        /// (shard, the leader's term, read index).
        indices: Vec<(ShardId, u64, u64)>,
    },
}

/// What a node that holds no replica of a shard asks of one that does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteRead {
    /// The live entries of `keys`, all of the shard. Answer: `Entries`.
    Entries {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// The shard's live keys, those matching `pattern` (a Redis glob) when given. Answer:
    /// `Keys`.
    Keys {
        /// The pattern.
        pattern: Option<Bytes>,
    },
    /// How many live entries the shard holds. Answer: `Count`.
    Count,
    /// What `WATCH` remembers of `keys`: the index the replica applied, read before the keys,
    /// and whether each is live. Answer: `Watched`.
    Watch {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// The shard's voters and learners as the replica asked knows them. Answer: `Members`.
    Members,
    /// Whether the node asked holds a replica of the shard and whether it is fresh (nothing
    /// applied, no member known): the shard's leader adds a node as a learner only then.
    /// `not_member`: the asking leader's group does not count the node; a replica there that
    /// is not fresh is stale (it never applied its removal) and is retired. Answer: `Replica`.
    Replica {
        /// The asker leads the shard and its group does not count the node asked.
        not_member: bool,
    },
    /// The shard's next live keys in scan order (`cache::scan_order`): those at or after
    /// `cursor` matching `pattern`, at most `keep` (and all sharing the last one's hash), cut
    /// to fit a peer frame. Answer: `ScanPage`.
    Scan {
        /// Where the scan stands.
        cursor: u64,
        /// How many keys the asker would keep (at most `scan_order::MAX_SCAN_KEEP` are sent).
        keep: u32,
        /// The pattern.
        pattern: Option<Bytes>,
    },
}

/// The answer to a [`RemoteRead`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteAnswer {
    /// Per key, in order: its value and absolute expiry (unix ms), none where absent.
    Entries(Vec<Option<(Bytes, Option<u64>)>>),
    /// Live keys.
    Keys(Vec<Bytes>),
    /// Live entries.
    Count(u64),
    /// The applied index, and per key whether it is live.
    Watched(u64, Vec<bool>),
    /// Whether the node holds a replica of the shard, and whether it is fresh.
    Replica {
        /// It holds one.
        held: bool,
        /// That replica is fresh.
        fresh: bool,
    },
    /// A replica's view of its group's members.
    Members {
        /// Voters.
        voters: Vec<NodeId>,
        /// Learners.
        learners: Vec<NodeId>,
    },
    /// Keys in scan order, and whether the shard holds more matching keys past them.
    ScanPage {
        /// The keys, sorted by their scan hash.
        keys: Vec<Bytes>,
        /// Keys were left out.
        more: bool,
    },
}

/// An [`Error`] as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireError {
    /// See [`Error::NotLeader`].
    NotLeader(Option<NodeId>),
    /// See [`Error::ProposalDropped`].
    ProposalDropped,
    /// See [`Error::Timeout`] (milliseconds).
    Timeout(u64),
    /// See [`Error::InvalidCommand`].
    Invalid(CommandError),
    /// See [`Error::Shutdown`].
    Shutdown,
    /// Anything else, as text.
    Other(String),
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e {
            Error::NotLeader { leader_hint } => WireError::NotLeader(*leader_hint),
            Error::ProposalDropped | Error::Raft(raft::Error::ProposalDropped) => WireError::ProposalDropped,
            Error::Timeout(d) => WireError::Timeout(d.as_millis() as u64),
            Error::InvalidCommand(c) => WireError::Invalid(c.clone()),
            Error::Shutdown => WireError::Shutdown,
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotLeader(leader_hint) => Error::NotLeader { leader_hint },
            WireError::ProposalDropped => Error::ProposalDropped,
            WireError::Timeout(ms) => Error::Timeout(std::time::Duration::from_millis(ms)),
            WireError::Invalid(c) => Error::InvalidCommand(c),
            // The leader is shutting down: to this caller that is a failed remote request.
            WireError::Shutdown => Error::Transport(TransportError::Remote("leader shutting down".into())),
            WireError::Other(msg) => Error::Transport(TransportError::Remote(msg)),
        }
    }
}

impl Envelope {
    /// Encodes a whole frame: length prefix, version byte, postcard body.
    pub fn to_frame(&self) -> Bytes {
        let mut out = Vec::with_capacity(64 + self.payload_len_hint());
        out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
        out.push(ENVELOPE_VERSION);
        let mut out = postcard::to_extend(self, out).expect("encoding into a Vec cannot fail");
        let len = (out.len() - LENGTH_PREFIX_BYTES) as u32;
        out[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
        Bytes::from(out)
    }

    /// Decodes a frame payload (without its length prefix).
    ///
    /// # Errors
    /// [`TransportError::Decode`] for an unknown version or bytes that are not an envelope.
    pub fn from_payload(payload: &[u8]) -> Result<Self, TransportError> {
        match payload.split_first() {
            Some((&ENVELOPE_VERSION, body)) => {
                postcard::from_bytes(body).map_err(|e| TransportError::Decode(e.to_string()))
            }
            Some((v, _)) => Err(TransportError::Decode(format!("unknown envelope version {v}"))),
            None => Err(TransportError::Decode("empty frame".into())),
        }
    }

    fn payload_len_hint(&self) -> usize {
        match self {
            Envelope::Raft { message, .. } => message.len(),
            Envelope::Forward { command, .. } => command.len(),
            Envelope::SnapshotChunk { data, header, .. } => {
                data.len() + header.as_ref().map_or(0, |h| h.len())
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::state_machine::ApplyOutput;
    use crate::transport::frame::decode_frame;
    use bytes::BytesMut;

    fn round_trip(e: Envelope) {
        let mut buf = BytesMut::from(&e.to_frame()[..]);
        let payload = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(Envelope::from_payload(&payload).unwrap(), e);
    }

    #[test]
    fn every_kind_round_trips() {
        let position =
            GroupPosition { shard: 0, term: 3, commit: 9, last_term: 3, last_index: 10, recovering: false };
        round_trip(Envelope::Hello {
            node_id: 7,
            incarnation: 42,
            groups: vec![position],
            client_addr: Some("127.0.0.1:6380".parse().unwrap()),
            shards: 16,
        });
        round_trip(Envelope::Raft { shard: 2, message: Bytes::from_static(b"\x08\x01") });
        round_trip(Envelope::Forward { shard: 0, request_id: 9, command: Bytes::from("c") });
        round_trip(Envelope::SnapshotChunk {
            shard: 1,
            transfer: 5,
            header: Some(Bytes::from_static(b"hdr")),
            total_len: 10,
            offset: 0,
            data: Bytes::from_static(b"01234"),
        });
        round_trip(Envelope::ForwardReply {
            request_id: 9,
            result: Ok(Applied { index: 4, output: ApplyOutput::Removed(true) }),
        });
        round_trip(Envelope::AuthChallenge { challenge: [7; 32] });
        round_trip(Envelope::AuthProof { challenge: [1; 32], proof: vec![9; 32] });
        round_trip(Envelope::Ping);
        round_trip(Envelope::Hibernate { shard: 3, term: 7, commit: 70 });
        round_trip(Envelope::Commit { shard: 3, term: 7, commit: 71 });
        round_trip(Envelope::ReadCheck { round: 4, shards: vec![(1, 7), (5, 2)] });
        round_trip(Envelope::ReadCheckAck { round: 4, confirmed: vec![5] });
        round_trip(Envelope::ReadIndexAsk { ask: 9, shards: vec![3] });
        round_trip(Envelope::ReadIndexAnswer { ask: 9, indices: vec![(3, 7, 120)] });
        round_trip(Envelope::ForwardReply {
            request_id: 1,
            result: Err(WireError::Invalid(CommandError::EmptyKey)),
        });
    }

    #[test]
    fn garbage_and_unknown_versions_are_refused() {
        assert!(Envelope::from_payload(&[]).is_err());
        assert!(Envelope::from_payload(&[ENVELOPE_VERSION + 1, 0]).is_err());
        assert!(Envelope::from_payload(&[ENVELOPE_VERSION, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn errors_keep_their_meaning_across_the_wire() {
        let e: Error = WireError::from(&Error::NotLeader { leader_hint: Some(2) }).into();
        assert_eq!(e.leader_hint(), Some(2));
        let e: Error = WireError::from(&Error::ProposalDropped).into();
        assert!(matches!(e, Error::ProposalDropped));
    }
}
