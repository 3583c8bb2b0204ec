//! The follower side of forwarding: a table of writes sent to the leader and awaiting its reply.
//!
//! A request gets an id, its frame goes out on the leader's link, and the reply (matched by id)
//! completes it. A request that outlives its timeout fails with `Timeout` (outcome unknown: the
//! leader may still apply it) and its slot is freed; a late reply is then ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::envelope::{Envelope, WireError};
use super::Transport;
use crate::consensus::Applied;
use crate::error::{Error, Result};
use crate::types::{NodeId, ShardId};

type Reply = std::result::Result<Applied, WireError>;

/// Forwarded requests awaiting the leader's answer.
#[derive(Default)]
pub(crate) struct Forwarder {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

struct Slot<'a> {
    forwarder: &'a Forwarder,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.forwarder.pending.lock().expect("pending poisoned").remove(&self.id);
    }
}

impl Forwarder {
    /// Sends `command` to `leader` for group `shard` and waits for where it was applied.
    pub async fn forward(
        &self,
        transport: &Transport,
        leader: NodeId,
        shard: ShardId,
        command: Bytes,
        timeout: Duration,
    ) -> Result<Applied> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending poisoned").insert(request_id, tx);
        let _slot = Slot { forwarder: self, id: request_id };
        transport.send(leader, Envelope::Forward { shard, request_id, command }.to_frame())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply.map_err(Error::from),
            Ok(Err(_)) => Err(Error::Shutdown),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Completes request `request_id` with the leader's reply (ignored if it already timed out).
    pub fn complete(&self, request_id: u64, reply: Reply) {
        if let Some(tx) = self.pending.lock().expect("pending poisoned").remove(&request_id) {
            let _ = tx.send(reply);
        }
    }
}
