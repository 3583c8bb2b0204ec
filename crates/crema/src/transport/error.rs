//! Failures of the peer transport.

use thiserror::Error;

use crate::types::NodeId;

/// Why talking to a peer failed.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A socket operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced a length over the limit; the connection is closed.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame did not hold a valid envelope (garbage, or a version this build does not know).
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The peer did not complete the handshake properly.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer's outgoing queue is full; the message was dropped.
    #[error("queue to node {0} is full")]
    QueueFull(NodeId),
    /// No address is known for the node.
    #[error("node {0} is not a known peer")]
    UnknownPeer(NodeId),
    /// The remote side failed the request for a reason it reported.
    #[error("remote: {0}")]
    Remote(String),
}
