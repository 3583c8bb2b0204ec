//! The shard replicas this node holds now. With placement (see `crate::multiraft::placement`)
//! a node holds some shards only, and replicas come and go while it runs, so every part of the
//! node that walks the shards (routing, the dispatcher, the balancer, the keep-alive, reports)
//! looks them up here at the time it needs them.

use std::sync::RwLock;

use super::shard::Shard;
use crate::consensus::group::GroupHandle;
use crate::types::ShardId;

/// Slot `i` holds shard `i`'s replica when this node has one.
pub(crate) struct ShardTable {
    slots: Box<[RwLock<Option<Shard>>]>,
}

impl ShardTable {
    /// A table for `num_shards` shards, holding none.
    pub fn new(num_shards: u32) -> Self {
        Self { slots: (0..num_shards).map(|_| RwLock::new(None)).collect() }
    }

    /// The number of shards of the cluster (held here or not).
    pub fn num_shards(&self) -> u32 {
        self.slots.len() as u32
    }

    fn slot(&self, id: ShardId) -> Option<&RwLock<Option<Shard>>> {
        self.slots.get(id as usize)
    }

    /// Shard `id`'s replica, if this node holds one.
    pub fn get(&self, id: ShardId) -> Option<Shard> {
        self.with(id, Shard::clone)
    }

    /// Calls `f` with shard `id`'s replica without cloning it.
    pub fn with<T>(&self, id: ShardId, f: impl FnOnce(&Shard) -> T) -> Option<T> {
        self.slot(id)?.read().expect("shard slot poisoned").as_ref().map(f)
    }

    /// Whether this node holds a replica of shard `id`.
    pub fn holds(&self, id: ShardId) -> bool {
        self.with(id, |_| ()).is_some()
    }

    /// Adds a replica (replacing one of the same shard).
    pub fn insert(&self, shard: Shard) {
        if let Some(slot) = self.slot(shard.id) {
            *slot.write().expect("shard slot poisoned") = Some(shard);
        }
    }

    /// Takes shard `id`'s replica out.
    pub fn remove(&self, id: ShardId) -> Option<Shard> {
        self.slot(id)?.write().expect("shard slot poisoned").take()
    }

    /// Every replica held now, in shard order.
    pub fn held(&self) -> Vec<Shard> {
        self.slots.iter().filter_map(|s| s.read().expect("shard slot poisoned").clone()).collect()
    }

    /// The groups of every replica held now, in shard order.
    pub fn groups(&self) -> Vec<GroupHandle> {
        self.slots
            .iter()
            .filter_map(|s| s.read().expect("shard slot poisoned").as_ref().map(|s| s.group.clone()))
            .collect()
    }
}
