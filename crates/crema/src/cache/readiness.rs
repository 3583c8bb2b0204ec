//! Whether a node is ready to serve its shards (what [`DistributedCache::wait_for_leader`]
//! waits for, and the server's `/ready` reports): with several shards, it knows the agreed
//! shard map, confirmed once after it started as new as the meta shard's leader's; it holds a
//! replica of every shard that map gives it; and every replica it serves knows a leader.
//!
//! The confirmation is a read barrier on the meta shard: every node follows the meta shard,
//! so it then has applied every map change committed before the barrier began. Found from
//! outside: a durable node restarted after a shard moved away from it while it was down said
//! ready with the map its own log held, before its meta replica had replayed the move, and
//! served (routed reads to) the replica its group had removed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::DistributedCache;
use crate::types::NodeId;

impl DistributedCache {
    /// With several shards: whether this node knows the agreed map and holds a replica of every
    /// shard it gives the node (a memory node starts them once it read the map: see
    /// `cache::start`). Always true with one shard.
    pub fn holds_its_replicas(&self) -> bool {
        if self.keyspace.router().num_shards() == 1 {
            return true;
        }
        let (me, map) = (self.config.node_id, self.shard_map.map());
        !map.is_empty()
            && (map.shards().iter())
                .filter(|p| p.members.contains(&me))
                .all(|p| self.shards.get(p.shard_id).is_some())
    }

    /// Whether this node's shard map was confirmed as new as the meta shard leader's since
    /// the node started ([`Self::confirm_shard_map`]). Always true with one shard.
    pub fn shard_map_confirmed(&self) -> bool {
        self.keyspace.router().num_shards() == 1 || self.map_confirmed.load(Ordering::Acquire)
    }

    /// Confirms, once after this node started, that its shard map is as new as the meta
    /// shard's leader's (a read barrier on the meta shard, waited for up to `timeout`): true
    /// once confirmed, then without asking again. Always true with one shard.
    pub async fn confirm_shard_map(&self, timeout: Duration) -> bool {
        if self.shard_map_confirmed() {
            return true;
        }
        match tokio::time::timeout(timeout, self.shard_barrier(self.meta())).await {
            Ok(Ok(())) => {
                self.map_confirmed.store(true, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Waits up to `timeout` until this node is ready (see the module header: with several
    /// shards, its map confirmed, every replica the map gives it started, and a leader known
    /// of every shard it serves); answers shard 0's leader (none at the timeout).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        if self.keyspace.router().num_shards() > 1 {
            // Placement starts the replicas as it reads the map, and routes around (then
            // retires) one the settled map no longer names, which may never know a leader (its
            // group removed it while this node was away): looked at every tick.
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if self.confirm_shard_map(left).await && self.placed_and_led() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(self.config.raft.tick_interval()).await;
            }
        }
        let leader = self.meta().group.shared.wait_for_leader(deadline).await;
        if leader.is_some() {
            // Ready now: latched here, where readiness is waited for, and not only when
            // `has_been_ready` happens to be asked while every shard knows its leader (found in
            // CI: asked first while the leader balancer moved a leadership, a node ready
            // seconds before answered CLUSTERDOWN, and a cluster client could not connect).
            self.ready_once.store(true, Ordering::Release);
        }
        leader
    }

    /// Whether this node has been ready (see the module header) at some point since it
    /// started: its map confirmed, its replicas started, and each knowing a leader. A node
    /// starting again knows its shards' members before it hears their leaders, and until then
    /// could name only a guess as each slot range's primary: found from outside, a restarted
    /// node's `CLUSTER SLOTS` named one node the primary of 9 of 16 ranges another led, for
    /// 0.1 s after it first answered, and cluster clients that read it routed those ranges
    /// wrong. Not ready again later: a shard without a leader then (its majority lost) must
    /// not take the slot map of every other shard with it.
    pub fn has_been_ready(&self) -> bool {
        if self.ready_once.load(Ordering::Acquire) {
            return true;
        }
        let ready = self.shard_map_confirmed()
            && (self.keyspace.router().num_shards() == 1 || self.placed_and_led())
            && self.meta().group.shared.leader_id().is_some();
        if ready {
            self.ready_once.store(true, Ordering::Release);
        }
        ready
    }

    /// Whether this node holds every replica the map gives it, and each data shard it serves
    /// knows a leader.
    fn placed_and_led(&self) -> bool {
        let served = self.shards.held().into_iter().skip(1).filter(|s| self.holds_shard(s.id));
        self.holds_its_replicas() && served.into_iter().all(|s| s.group.shared.leader_id().is_some())
    }
}
