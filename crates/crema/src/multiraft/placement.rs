//! Placement: which nodes hold a voting replica of which shard (the [`ShardMap`]), and the
//! moves that bring the map to `replica_factor` live replicas per shard, spread evenly over the
//! live nodes.
//!
//! Pure, with no I/O: the meta shard's leader gives [`plan`] the agreed map and the nodes
//! discovery reports alive, and proposes the [`Move`]s it answers through the meta shard (see
//! `crate::cache`); every node then sees the same map, and each shard's leader carries a move
//! out by membership changes. Written by hand because the rule is crema's own: what TiKV's PD
//! does with scores and schedulers, reduced to counting replicas.
//!
//! The rules, in order, for shards not already moving, at most `max_moves` shards moving at
//! once (moves cost a snapshot each, and client traffic comes first), after one for shards that
//! move: a move whose new members include a node that is no longer alive is aimed at the live
//! non-member holding the fewest replicas instead (when `replace_dead`; it does not count
//! against `max_moves`, being one already):
//! 1. **Repair.** Only a shard with a majority of its members alive can change (its leader
//!    carries the move out); a member that is not alive is replaced by the live non-member holding the
//!    fewest replicas (when `replace_dead`; in the meta shard only once the map places that node
//!    in no other shard); a shard with fewer than `replica_factor` members
//!    gets one more; a shard with more loses its most loaded member.
//! 2. **Balance.** On shards whose members are all alive: while the most loaded live node holds at least two replicas more than the
//!    least loaded one, a replica moves from the first to the second. Each such move lowers the
//!    sum of squared loads, so planning again after every move settles ends.
//!
//! Ties go to the lower node id and the lower shard id, so the plan is a function of its input.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::multiraft::ShardState;
use crate::types::{NodeId, ShardId};

/// The meta shard: its group's members are the cluster's nodes.
const META_SHARD: ShardId = 0;

/// Where one shard's voting replicas are meant to live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The shard.
    pub shard_id: ShardId,
    /// The nodes meant to hold its voting replicas, sorted.
    pub members: Vec<NodeId>,
    /// `Active` when nothing is moving, `Transferring` from the moment a move is agreed until
    /// the shard's group has exactly `members` as voters.
    pub state: ShardState,
    /// Raised by every change of this shard's placement: a change proposed against an older
    /// epoch is refused, so two planners cannot both move one shard.
    pub epoch: u64,
}

/// The placement of every shard, as agreed through the meta shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    shards: Vec<ShardPlacement>,
}

/// One change of a shard's members: `add` joins (as a learner first, promoted once caught up),
/// then `remove` leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The shard.
    pub shard_id: ShardId,
    /// The node that gains a replica.
    pub add: Option<NodeId>,
    /// The node that loses one.
    pub remove: Option<NodeId>,
}

impl Move {
    /// `members` after this move, sorted.
    pub fn apply_to(&self, members: &[NodeId]) -> Vec<NodeId> {
        let mut out: BTreeSet<NodeId> = members.iter().copied().collect();
        if let Some(node) = self.remove {
            out.remove(&node);
        }
        if let Some(node) = self.add {
            out.insert(node);
        }
        out.into_iter().collect()
    }
}

/// What [`plan`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementPolicy {
    /// Voting replicas each shard wants.
    pub replica_factor: usize,
    /// Replace the replicas of nodes that are not alive (discovery's `auto_remove_voters`).
    pub replace_dead: bool,
    /// Shards moving at once, cluster-wide.
    pub max_moves: usize,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        Self { replica_factor: 3, replace_dead: true, max_moves: 2 }
    }
}

impl ShardMap {
    /// The first placement of `num_shards` shards on `nodes`: replica slots are dealt to the
    /// nodes in turn (shard 0 on the first `replica_factor` nodes, shard 1 on the next ones,
    /// wrapping around), so each node holds as many replicas as any other, give or take one.
    /// Every node computes the same map from the same node list.
    pub fn initial(num_shards: u32, nodes: &[NodeId], replica_factor: usize) -> Self {
        let nodes: Vec<NodeId> = nodes.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        let per_shard = replica_factor.clamp(1, nodes.len().max(1));
        let mut next = 0usize;
        let shards = (0..num_shards)
            .map(|shard_id| {
                let mut members: Vec<NodeId> = (0..per_shard)
                    .filter_map(|k| nodes.get((next + k) % nodes.len().max(1)).copied())
                    .collect();
                next = (next + per_shard) % nodes.len().max(1);
                members.sort_unstable();
                ShardPlacement { shard_id, members, state: ShardState::Active, epoch: 1 }
            })
            .collect();
        Self { shards }
    }

    /// A map of these placements (tests and decoding), in shard order.
    pub fn from_placements(mut shards: Vec<ShardPlacement>) -> Self {
        shards.sort_by_key(|s| s.shard_id);
        Self { shards }
    }

    /// Whether no shard is placed (the map was never agreed).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Every shard's placement, in shard order.
    pub fn shards(&self) -> &[ShardPlacement] {
        &self.shards
    }

    /// The placement of `shard`.
    pub fn shard(&self, shard: ShardId) -> Option<&ShardPlacement> {
        self.shards.get(shard as usize).filter(|s| s.shard_id == shard)
    }

    /// The placement of `shard`, to change.
    pub(crate) fn shard_mut(&mut self, shard: ShardId) -> Option<&mut ShardPlacement> {
        self.shards.get_mut(shard as usize).filter(|s| s.shard_id == shard)
    }

    /// How many members the map gives a shard: the most any shard has (the replica factor
    /// the cluster was started with, where it has as many nodes); none for an empty map.
    pub fn replica_count(&self) -> Option<usize> {
        self.shards.iter().map(|s| s.members.len()).max()
    }

    /// Refuses to plan for `replica_factor` replicas a map that places more: every node of a
    /// cluster needs the same `--replicas`. Found from outside: a node restarted with
    /// `--replicas 1` planned moves that left shards with one member, and correctly configured
    /// nodes planned them back. (A map with fewer is one placed on fewer nodes than the
    /// factor, which grows as nodes come.)
    ///
    /// # Errors
    /// The message to give the operator.
    pub fn check_replica_factor(&self, replica_factor: usize) -> Result<(), String> {
        match self.replica_count() {
            Some(placed) if placed > replica_factor => Err(format!(
                "the shard map places {placed} replicas of each shard, and this node was started \
                 with --replicas {replica_factor}: every node of a cluster needs the same count \
                 (restart it with --replicas {placed})"
            )),
            _ => Ok(()),
        }
    }

    /// The shards `node` is meant to hold, in order.
    pub fn shards_of(&self, node: NodeId) -> Vec<ShardId> {
        self.shards.iter().filter(|s| s.members.contains(&node)).map(|s| s.shard_id).collect()
    }

    /// Replicas per node, for the nodes named in the map.
    pub fn loads(&self) -> BTreeMap<NodeId, usize> {
        let mut loads = BTreeMap::new();
        for s in &self.shards {
            for m in &s.members {
                *loads.entry(*m).or_insert(0) += 1;
            }
        }
        loads
    }
}

/// The moves that bring `map` closer to `policy` with `live` the nodes alive now (see the
/// module docs). Empty when the map is where it should be, or while `max_moves` shards move.
pub fn plan(map: &ShardMap, live: &BTreeSet<NodeId>, policy: &PlacementPolicy) -> Vec<Move> {
    let moving = map.shards.iter().filter(|s| s.state != ShardState::Active).count();
    let mut budget = policy.max_moves.saturating_sub(moving);
    let mut loads: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, 0)).collect();
    for s in &map.shards {
        for m in s.members.iter().filter(|m| live.contains(m)) {
            *loads.entry(*m).or_insert(0) += 1;
        }
    }
    let want = policy.replica_factor.max(1);
    let mut moves = Vec::new();
    let mut moved = BTreeSet::new();
    // The live node outside `members` holding the fewest replicas.
    let least_loaded = |loads: &BTreeMap<NodeId, usize>, members: &[NodeId]| {
        loads.iter().filter(|(n, _)| !members.contains(n)).min_by_key(|(n, l)| (**l, **n)).map(|(n, _)| *n)
    };
    // 0. A move under way whose new members include one that died: aimed at a live node
    //    instead (it would otherwise wait for that node for good, holding a move's place).
    for s in map.shards.iter().filter(|s| s.state == ShardState::Transferring && has_quorum(s, live)) {
        let dead = s.members.iter().copied().find(|m| !live.contains(m));
        if let (Some(dead), Some(add), true) = (dead, least_loaded(&loads, &s.members), policy.replace_dead) {
            let m = Move { shard_id: s.shard_id, add: Some(add), remove: Some(dead) };
            note(&mut loads, &m);
            moved.insert(s.shard_id);
            moves.push(m);
        }
    }
    for s in map.shards.iter().filter(|s| s.state == ShardState::Active && has_quorum(s, live)) {
        if budget == 0 {
            return moves;
        }
        let dead = s.members.iter().copied().find(|m| !live.contains(m));
        // The meta shard's replica of a dead node goes last: leaving the meta shard removes the
        // node from the cluster (it must be added again to come back), and a node removed while
        // the map still places it in other shards left those a replica short for good (found
        // from outside: a rebalance moved shard 0 first, and the node, restarted, refused to
        // start while 8 shards still counted it).
        if s.shard_id == META_SHARD
            && dead.is_some_and(|d| {
                map.shards.iter().any(|o| o.shard_id != META_SHARD && o.members.contains(&d))
            })
        {
            continue;
        }
        let add = least_loaded(&loads, &s.members);
        let planned = match (dead, add) {
            (Some(dead), Some(add)) if policy.replace_dead => {
                Some(Move { shard_id: s.shard_id, add: Some(add), remove: Some(dead) })
            }
            (_, Some(add)) if s.members.len() < want => {
                Some(Move { shard_id: s.shard_id, add: Some(add), remove: None })
            }
            _ if s.members.len() > want => {
                // Drop a member that is not alive first, else the most loaded one.
                let remove = dead.or_else(|| {
                    s.members.iter().copied().max_by_key(|m| (loads.get(m).copied().unwrap_or(0), *m))
                });
                remove.map(|r| Move { shard_id: s.shard_id, add: None, remove: Some(r) })
            }
            _ => None,
        };
        if let Some(m) = planned {
            note(&mut loads, &m);
            moved.insert(s.shard_id);
            moves.push(m);
            budget -= 1;
        }
    }
    while budget > 0 {
        let Some(m) = balancing_move(map, &loads, &moved) else { break };
        note(&mut loads, &m);
        moved.insert(m.shard_id);
        moves.push(m);
        budget -= 1;
    }
    moves
}

/// Whether a majority of the shard's members is alive: only then can its leader carry a move
/// out (a shard without one keeps its map until enough of its nodes come back).
fn has_quorum(s: &ShardPlacement, live: &BTreeSet<NodeId>) -> bool {
    2 * s.members.iter().filter(|m| live.contains(m)).count() > s.members.len()
}

/// Counts `m` in `loads`.
fn note(loads: &mut BTreeMap<NodeId, usize>, m: &Move) {
    if let Some(l) = m.add.and_then(|n| loads.get_mut(&n)) {
        *l += 1;
    }
    if let Some(l) = m.remove.and_then(|n| loads.get_mut(&n)) {
        *l = l.saturating_sub(1);
    }
}

/// A move from a live node holding at least two replicas more than another to that other, on
/// a shard not moving yet.
fn balancing_move(
    map: &ShardMap,
    loads: &BTreeMap<NodeId, usize>,
    moved: &BTreeSet<ShardId>,
) -> Option<Move> {
    let mut by_load: Vec<(usize, NodeId)> = loads.iter().map(|(n, l)| (*l, *n)).collect();
    by_load.sort_unstable();
    for &(high, from) in by_load.iter().rev() {
        for &(low, to) in &by_load {
            if high < low + 2 {
                break;
            }
            let shard = map.shards.iter().find(|s| {
                s.state == ShardState::Active
                    && !moved.contains(&s.shard_id)
                    && s.members.iter().all(|m| loads.contains_key(m))
                    && s.members.contains(&from)
                    && !s.members.contains(&to)
            });
            if let Some(s) = shard {
                return Some(Move { shard_id: s.shard_id, add: Some(to), remove: Some(from) });
            }
        }
    }
    None
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
