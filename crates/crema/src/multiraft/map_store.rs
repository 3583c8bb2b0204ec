//! The agreed shard map: [`PlacementChange`]s committed in the meta shard, applied into a
//! [`ShardMapStore`] that every node's meta replica keeps, so every node sees the same map at
//! the same log index. Snapshots of the meta shard carry it.
//!
//! Every change names the epoch it was planned against and is refused (output `Int(0)`,
//! nothing changed) when the shard's epoch moved meanwhile: a planner that lost the meta
//! leadership, or a shard leader that settles a move twice, changes nothing.

use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::consensus::ApplyOutput;
use crate::multiraft::placement::{ShardMap, ShardPlacement};
use crate::multiraft::{ShardState, MAX_SHARDS};
use crate::types::{NodeId, ShardId};

/// The most voting replicas a shard's placement may name (a move adds one to the replica
/// factor for a while).
pub const MAX_PLACED_REPLICAS: usize = 16;

/// A change of the shard map, committed in the meta shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementChange {
    /// The first map of the cluster; applied only while none is agreed (output `Int(1)`), else
    /// refused (`Int(0)`).
    Init(ShardMap),
    /// Starts moving `shard_id` to `members` (state `Transferring`, epoch raised) if its epoch
    /// is still `epoch`; while it moves already, aims the move at `members` instead (the
    /// planner replaces a member that died on the way).
    Move {
        /// The shard.
        shard_id: ShardId,
        /// The epoch the move was planned against.
        epoch: u64,
        /// Its members once moved, sorted.
        members: Vec<NodeId>,
    },
    /// The shard's group has its planned members as voters: state `Active`, epoch raised, if
    /// its epoch is still `epoch`.
    Settle {
        /// The shard.
        shard_id: ShardId,
        /// The epoch of the move that ended.
        epoch: u64,
    },
}

impl PlacementChange {
    /// Whether the change is within the limits every node applies (an oversize one is refused
    /// before it is proposed, and changes nothing if a hand-made entry holds one).
    pub fn within_limits(&self) -> bool {
        let members_ok = |m: &[NodeId]| {
            !m.is_empty()
                && m.len() <= MAX_PLACED_REPLICAS
                && m.windows(2).all(|w| w[0] < w[1])
                && !m.contains(&0)
        };
        match self {
            PlacementChange::Init(map) => {
                let shards = map.shards();
                !shards.is_empty()
                    && shards.len() <= MAX_SHARDS as usize
                    && shards
                        .iter()
                        .enumerate()
                        .all(|(i, s)| s.shard_id as usize == i && members_ok(&s.members))
            }
            PlacementChange::Move { members, .. } => members_ok(members),
            PlacementChange::Settle { .. } => true,
        }
    }

    /// A size hint for the encoding.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        match self {
            PlacementChange::Init(map) => {
                map.shards().iter().map(|s| 16 + 9 * s.members.len()).sum::<usize>() + 8
            }
            PlacementChange::Move { members, .. } => 24 + 9 * members.len(),
            PlacementChange::Settle { .. } => 24,
        }
    }
}

/// The shard map as the meta shard applied it.
#[derive(Debug)]
pub struct ShardMapStore {
    map: RwLock<ShardMap>,
    /// Raised by every applied change or restore; the node's placement tasks wait on it.
    changes: watch::Sender<u64>,
}

impl Default for ShardMapStore {
    fn default() -> Self {
        Self { map: RwLock::default(), changes: watch::channel(0).0 }
    }
}

impl ShardMapStore {
    /// The map now (empty until one is agreed).
    pub fn map(&self) -> ShardMap {
        self.map.read().expect("shard map poisoned").clone()
    }

    /// The placement of one shard.
    pub fn placement(&self, shard: ShardId) -> Option<ShardPlacement> {
        self.map.read().expect("shard map poisoned").shard(shard).cloned()
    }

    /// Calls `f` with the placement of one shard, without copying it (the read path asks).
    pub fn with_placement<T>(&self, shard: ShardId, f: impl FnOnce(&ShardPlacement) -> T) -> Option<T> {
        self.map.read().expect("shard map poisoned").shard(shard).map(f)
    }

    /// Wakes on every change of the map.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Applies a committed change: `Int(1)` when it changed the map, `Int(0)` when it was
    /// refused (stale epoch, unknown shard, a map already agreed, over the limits).
    pub(crate) fn apply(&self, change: &PlacementChange) -> ApplyOutput {
        if !change.within_limits() {
            return ApplyOutput::Int(0);
        }
        let mut map = self.map.write().expect("shard map poisoned");
        let applied = match change {
            PlacementChange::Init(new) if map.is_empty() => {
                *map = new.clone();
                true
            }
            PlacementChange::Init(_) => false,
            PlacementChange::Move { shard_id, epoch, members } => match map.shard_mut(*shard_id) {
                Some(s) if s.epoch == *epoch => {
                    s.members.clone_from(members);
                    s.state = ShardState::Transferring;
                    s.epoch += 1;
                    true
                }
                _ => false,
            },
            PlacementChange::Settle { shard_id, epoch } => match map.shard_mut(*shard_id) {
                Some(s) if s.epoch == *epoch && s.state == ShardState::Transferring => {
                    s.state = ShardState::Active;
                    s.epoch += 1;
                    true
                }
                _ => false,
            },
        };
        drop(map);
        if applied {
            self.changes.send_modify(|g| *g += 1);
        }
        ApplyOutput::Int(i64::from(applied))
    }

    /// The map as snapshots carry it.
    pub(crate) fn data(&self) -> ShardMap {
        self.map()
    }

    /// Replaces the map with a snapshot's.
    pub(crate) fn restore(&self, map: ShardMap) {
        *self.map.write().expect("shard map poisoned") = map;
        self.changes.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_only_against_the_current_epoch() {
        let store = ShardMapStore::default();
        let mut seen = store.subscribe();
        let map = ShardMap::initial(4, &[1, 2, 3, 4], 3);
        assert_eq!(store.apply(&PlacementChange::Init(map.clone())), ApplyOutput::Int(1));
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        // A second first map changes nothing.
        assert_eq!(
            store.apply(&PlacementChange::Init(ShardMap::initial(4, &[7, 8, 9], 3))),
            ApplyOutput::Int(0)
        );
        assert_eq!(store.map(), map);
        assert!(!seen.has_changed().unwrap());

        let before = store.placement(2).unwrap();
        let to = vec![1, 2, 4];
        let moving = PlacementChange::Move { shard_id: 2, epoch: before.epoch, members: to.clone() };
        assert_eq!(store.apply(&moving), ApplyOutput::Int(1));
        let after = store.placement(2).unwrap();
        assert_eq!(
            (after.members.clone(), after.state, after.epoch),
            (to.clone(), ShardState::Transferring, 2)
        );
        // Planned against the old epoch: refused.
        assert_eq!(store.apply(&moving), ApplyOutput::Int(0));
        // Against the moving epoch: the move is aimed elsewhere (a member died on the way).
        let again = PlacementChange::Move { shard_id: 2, epoch: 2, members: vec![1, 2, 3] };
        assert_eq!(store.apply(&again), ApplyOutput::Int(1));
        let aimed = store.placement(2).unwrap();
        assert_eq!((aimed.members, aimed.state, aimed.epoch), (vec![1, 2, 3], ShardState::Transferring, 3));
        assert_eq!(store.apply(&PlacementChange::Settle { shard_id: 2, epoch: 2 }), ApplyOutput::Int(0));
        assert_eq!(store.apply(&PlacementChange::Settle { shard_id: 2, epoch: 3 }), ApplyOutput::Int(1));
        assert_eq!(store.placement(2).unwrap().state, ShardState::Active);
        assert_eq!(store.apply(&PlacementChange::Settle { shard_id: 2, epoch: 4 }), ApplyOutput::Int(0));
        assert_eq!(store.apply(&PlacementChange::Settle { shard_id: 9, epoch: 4 }), ApplyOutput::Int(0));
    }

    #[test]
    fn changes_outside_the_limits_are_refused() {
        let store = ShardMapStore::default();
        let bad = [
            PlacementChange::Init(ShardMap::default()),
            PlacementChange::Init(ShardMap::from_placements(vec![ShardPlacement {
                shard_id: 1,
                members: vec![1],
                state: ShardState::Active,
                epoch: 1,
            }])),
            PlacementChange::Move { shard_id: 0, epoch: 1, members: vec![] },
            PlacementChange::Move { shard_id: 0, epoch: 1, members: vec![2, 1] },
            PlacementChange::Move { shard_id: 0, epoch: 1, members: vec![0, 1] },
            PlacementChange::Move { shard_id: 0, epoch: 1, members: (1..=17).collect() },
        ];
        for change in bad {
            assert!(!change.within_limits(), "{change:?}");
            assert_eq!(store.apply(&change), ApplyOutput::Int(0));
        }
        assert!(store.map().is_empty());
    }
}
