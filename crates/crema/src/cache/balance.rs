//! Spreading shard leaders over the nodes: every node that leads at least two shards more than
//! some voter of one of them hands one of those shards' leadership to the voter leading fewest
//! (raft-rs's leader transfer), one transfer per look. Each node decides for itself from its own
//! view of the leaders, so the cluster converges to leads that differ by at most one per node
//! without anyone coordinating. With placement a node holds some shards only: the others
//! count with the members the shard map names and the leaders their hints name (see
//! `cache::keepalive`). A transfer that does not complete (the target is behind or
//! recovering) leaves the leader where it was; the next look tries again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::dispatch::Dispatcher;
use super::table::ShardTable;
use crate::multiraft::coordinator::CoordinatorState;
use crate::multiraft::ShardMapStore;
use crate::types::{NodeId, ShardId};

/// One shard as a node sees it: its id, its leader, its voters.
pub(crate) type ShardView = (ShardId, Option<NodeId>, Vec<NodeId>);

/// The transfer `me` should start, if any: (shard, new leader). Only a voter `reachable` says
/// this node hears from is a target: found from outside, leaderships were handed to a voter
/// that had died (not yet declared down), over and over, and writes stalled meanwhile. None
/// while some shard's leader is unknown here: counted for nobody, it made the others look
/// idler than they were, and a node that had been cut off handed its leaderships away and
/// was handed them back, every two seconds for minutes (found from outside).
pub(crate) fn plan_transfer(
    me: NodeId,
    shards: &[ShardView],
    reachable: &dyn Fn(NodeId) -> bool,
) -> Option<(ShardId, NodeId)> {
    if shards.iter().any(|(_, leader, _)| leader.is_none()) {
        return None;
    }
    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (_, leader, voters) in shards {
        for voter in voters {
            leads.entry(*voter).or_insert(0);
        }
        if let Some(leader) = leader {
            *leads.entry(*leader).or_insert(0) += 1;
        }
    }
    let mine = leads.get(&me).copied().unwrap_or(0);
    shards
        .iter()
        .filter(|(_, leader, _)| *leader == Some(me))
        .filter_map(|(shard, _, voters)| {
            let target =
                voters.iter().filter(|v| **v != me && reachable(**v)).min_by_key(|v| (leads[v], **v))?;
            (leads[target] + 2 <= mine).then_some((*shard, *target, leads[target]))
        })
        .min_by_key(|(shard, _, target_leads)| (*target_leads, *shard))
        .map(|(shard, target, _)| (shard, target))
}

/// Every `interval`, starts the transfer [`plan_transfer`] picks for this node, to a voter
/// heard from within `window`.
pub(super) async fn balance_leaders(
    me: NodeId,
    table: Arc<ShardTable>,
    (map, hints, dispatcher): (Arc<ShardMapStore>, Arc<CoordinatorState>, Arc<Dispatcher>),
    (interval, window): (Duration, Duration),
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let groups = table.groups();
        let shard_map = map.map();
        // Only voters the map keeps are targets: a move's leaving voter (a meta replica being
        // demoted, say) would take the leadership on its way out, as a leader without a vote.
        let kept = |shard: ShardId, voters: Vec<NodeId>| match shard_map.shard(shard) {
            Some(placement) => voters.into_iter().filter(|v| placement.members.contains(v)).collect(),
            None => voters,
        };
        let mut view: Vec<ShardView> = groups
            .iter()
            .filter(|g| !g.shared.removed())
            .map(|g| (g.shared.shard, g.shared.leader_id(), kept(g.shared.shard, g.shared.voters())))
            .collect();
        for placement in shard_map.shards().iter().filter(|p| !table.holds(p.shard_id)) {
            let leader = hints.hinted_leader(placement.shard_id).filter(|l| placement.members.contains(l));
            view.push((placement.shard_id, leader, placement.members.clone()));
        }
        // Heard from within `window`, two of the node's pings (found from outside: with the
        // look's interval, two election timeouts, leaderships were handed to nodes killed up
        // to 2 s before, 48 transfers in 276, and the shard took no writes until the transfer
        // gave up). A live node missing one look only keeps its leaderships a while longer.
        let reachable = |node: NodeId| dispatcher.heard_within(&[node], window) == 1;
        if let Some((shard, to)) = plan_transfer(me, &view, &reachable) {
            let group = groups.iter().find(|g| g.shared.shard == shard).expect("planned from these groups");
            match group.transfer_leader(to).await {
                Ok(()) => debug!(shard, to, "leadership handed over to spread the leaders"),
                Err(e) => debug!(shard, to, error = %e, "leader transfer not started"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(leaders: &[Option<NodeId>]) -> Vec<ShardView> {
        leaders.iter().enumerate().map(|(i, l)| (i as ShardId, *l, vec![1, 2, 3])).collect()
    }

    #[test]
    fn the_busiest_leader_hands_one_shard_to_the_idlest_voter() {
        // Node 1 leads 4, node 2 leads 1, node 3 none: node 1 gives one to node 3.
        let view = shards(&[Some(1), Some(1), Some(1), Some(1), Some(2)]);
        assert_eq!(plan_transfer(1, &view, &|_| true), Some((0, 3)));
        assert_eq!(plan_transfer(2, &view, &|_| true), None, "node 2 does not lead more than others");
        assert_eq!(plan_transfer(3, &view, &|_| true), None);
    }

    #[test]
    fn balanced_leads_stay_and_nothing_moves_while_a_leader_is_unknown() {
        assert_eq!(
            plan_transfer(1, &shards(&[Some(1), Some(1), Some(2), Some(3), Some(2)]), &|_| true),
            None
        );
        assert_eq!(plan_transfer(1, &shards(&[Some(1), Some(1), Some(1)]), &|_| true), Some((0, 2)));
        assert_eq!(
            plan_transfer(1, &shards(&[Some(1), Some(1), Some(1), None]), &|_| true),
            None,
            "the unknown one may be led by anyone"
        );
    }

    #[test]
    fn only_voters_of_the_shard_are_targets() {
        // Shard 0's voters are 1 and 2 only; node 3 leads nothing but is not a voter of it.
        let view = vec![(0, Some(1), vec![1, 2]), (1, Some(1), vec![1, 3]), (2, Some(2), vec![1, 2])];
        assert_eq!(plan_transfer(1, &view, &|_| true), Some((1, 3)));
    }

    #[test]
    fn a_voter_not_heard_from_is_no_target() {
        // Node 3 leads nothing, but this node has not heard from it: node 2 gets one instead.
        let view = shards(&[Some(1), Some(1), Some(1), Some(1), Some(2)]);
        assert_eq!(plan_transfer(1, &view, &|n| n != 3), Some((0, 2)));
        assert_eq!(plan_transfer(1, &view, &|n| n == 1), None, "nobody to hand it to");
    }

    #[test]
    fn repeated_plans_converge_to_within_one() {
        // Simulate: each step, every node applies its plan on the shared view.
        let mut leaders: Vec<Option<NodeId>> = vec![Some(1); 16];
        for _ in 0..64 {
            for me in 1..=3 {
                let view = shards(&leaders);
                if let Some((shard, to)) = plan_transfer(me, &view, &|_| true) {
                    leaders[shard as usize] = Some(to);
                }
            }
        }
        let count = |n| leaders.iter().filter(|l| **l == Some(n)).count();
        let counts = [count(1), count(2), count(3)];
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "{counts:?}");
    }
}
