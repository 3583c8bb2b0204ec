//! Shard-leader hints as gossip carries them (foca's custom broadcasts): each node keeps the
//! newest hint of each shard and passes on the ones it had not seen. Hints for a shard id no
//! cluster has are refused (found in review: a stranger's packets grew the map without bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};

use super::memberlist::GossipId;
use super::ShardLeaderHint;
use crate::types::{NodeId, ShardId};

/// A hint's broadcast key: a newer epoch of the same shard replaces an older one.
#[derive(Debug, Clone, Copy)]
pub(super) struct HintKey {
    shard: ShardId,
    epoch: u64,
}

impl Invalidates for HintKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.shard == other.shard && self.epoch > other.epoch
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable shard leader hint: {0}")]
pub(super) struct HintError(String);

/// Keeps the newest hint of each shard; hands on the ones from others.
pub(super) struct Hints {
    pub newest: HashMap<ShardId, (NodeId, u64)>,
    /// Hints from others not yet handed to the node (the agent drains it).
    pub received: Arc<Mutex<Vec<ShardLeaderHint>>>,
}

impl BroadcastHandler<GossipId> for Hints {
    type Key = HintKey;
    type Error = HintError;

    fn receive_item(&mut self, data: &[u8], sender: Option<&GossipId>) -> Result<Option<HintKey>, HintError> {
        let hint: ShardLeaderHint = postcard::from_bytes(data).map_err(|e| HintError(e.to_string()))?;
        if hint.shard >= crate::multiraft::MAX_SHARDS {
            return Err(HintError(format!("shard {} does not exist in any cluster", hint.shard)));
        }
        let highest = self.newest.values().map(|(_, epoch)| *epoch).max().unwrap_or(0);
        if !crate::multiraft::coordinator::epoch_in_reach(hint.epoch, highest) {
            return Err(HintError(format!("epoch {} is past any term a shard reaches", hint.epoch)));
        }
        if self.newest.get(&hint.shard).is_some_and(|(_, epoch)| *epoch >= hint.epoch) {
            return Ok(None);
        }
        self.newest.insert(hint.shard, (hint.leader, hint.epoch));
        if sender.is_some() {
            self.received.lock().expect("hints poisoned").push(hint);
        }
        Ok(Some(HintKey { shard: hint.shard, epoch: hint.epoch }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_hint_of_a_shard_that_exists_is_kept() {
        let mut hints = Hints { newest: HashMap::new(), received: Arc::default() };
        let encode =
            |shard, epoch| postcard::to_stdvec(&ShardLeaderHint { shard, leader: 2, epoch }).unwrap();
        assert!(hints.receive_item(&encode(crate::multiraft::MAX_SHARDS, 1), None).is_err());
        assert!(hints.receive_item(&encode(u32::MAX, 1), None).is_err());
        assert!(hints.receive_item(&encode(3, 5), None).unwrap().is_some());
        assert!(hints.receive_item(&encode(3, 4), None).unwrap().is_none(), "an older epoch");
        assert_eq!(hints.newest.len(), 1);
        // Just below 2^63, or any leap past every term known and a group's first terms.
        assert!(hints.receive_item(&encode(4, (1 << 62) + 200), None).is_err());
        assert!(hints.receive_item(&encode(4, 1 << 33), None).is_err());
        assert!(
            hints.receive_item(&encode(4, 1_796_640_713), None).unwrap().is_some(),
            "a clock-started term"
        );
    }
}
