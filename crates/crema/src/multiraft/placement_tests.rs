use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn live(nodes: &[NodeId]) -> BTreeSet<NodeId> {
    nodes.iter().copied().collect()
}

/// Agrees `moves` and settles them at once, as the cluster does one after the other.
fn settle(map: &mut ShardMap, moves: &[Move]) {
    for m in moves {
        let s = map.shard_mut(m.shard_id).expect("a planned shard exists");
        s.members = m.apply_to(&s.members);
        s.epoch += 1;
    }
}

/// Plans and settles until nothing is left to do; the number of rounds it took.
fn converge(map: &mut ShardMap, alive: &BTreeSet<NodeId>, policy: &PlacementPolicy) -> usize {
    for round in 0..10_000 {
        let moves = plan(map, alive, policy);
        if moves.is_empty() {
            return round;
        }
        settle(map, &moves);
    }
    panic!("placement did not settle: {map:?}");
}

fn spread(map: &ShardMap, alive: &BTreeSet<NodeId>) -> (usize, usize) {
    let loads = map.loads();
    let of = |n: &NodeId| loads.get(n).copied().unwrap_or(0);
    (alive.iter().map(of).min().unwrap_or(0), alive.iter().map(of).max().unwrap_or(0))
}

#[test]
fn the_initial_map_deals_replicas_evenly() {
    let map = ShardMap::initial(16, &[5, 1, 2, 3, 4], 3);
    assert_eq!(map.shards().len(), 16);
    for s in map.shards() {
        assert_eq!(s.members.len(), 3, "{s:?}");
        assert!(s.members.windows(2).all(|w| w[0] < w[1]), "sorted and distinct: {s:?}");
        assert_eq!(s.state, ShardState::Active);
    }
    // 48 replicas over 5 nodes: 9 or 10 each.
    assert_eq!(spread(&map, &live(&[1, 2, 3, 4, 5])), (9, 10));
    assert_eq!(map.shard(0).unwrap().members, vec![1, 2, 3]);
    assert_eq!(map.shard(1).unwrap().members, vec![1, 4, 5]);
    // Every node computes the same map, whatever the order it lists the nodes in.
    assert_eq!(map, ShardMap::initial(16, &[1, 2, 3, 4, 5], 3));
}

#[test]
fn a_replica_factor_below_the_maps_is_refused_and_one_above_it_grows_it() {
    let map = ShardMap::initial(16, &[1, 2, 3, 4, 5], 3);
    assert_eq!(map.replica_count(), Some(3));
    assert!(map.check_replica_factor(3).is_ok());
    let refused = map.check_replica_factor(1).unwrap_err();
    assert!(refused.contains("--replicas 3"), "{refused}");
    // Placed on two nodes with a factor of three: a third node gets replicas.
    let small = ShardMap::initial(4, &[1, 2], 3);
    assert!(small.check_replica_factor(3).is_ok());
}

#[test]
fn fewer_nodes_than_replicas_put_every_shard_everywhere() {
    let map = ShardMap::initial(4, &[1, 2], 3);
    assert!(map.shards().iter().all(|s| s.members == vec![1, 2]));
    assert!(plan(&map, &live(&[1, 2]), &PlacementPolicy::default()).is_empty());
}

#[test]
fn a_dead_node_is_replaced_by_the_least_loaded_live_one() {
    let mut map = ShardMap::initial(6, &[1, 2, 3, 4], 3);
    let alive = live(&[1, 2, 3, 4]);
    assert!(plan(&map, &alive, &PlacementPolicy::default()).is_empty(), "a settled map stays");
    let alive = live(&[1, 2, 3]);
    let policy = PlacementPolicy { max_moves: 100, ..Default::default() };
    let moves = plan(&map, &alive, &policy);
    assert!(!moves.is_empty());
    assert!(moves.iter().all(|m| m.remove == Some(4) && m.add.is_some_and(|a| a != 4)));
    converge(&mut map, &alive, &policy);
    assert!(map.shards().iter().all(|s| s.members == vec![1, 2, 3]));
}

#[test]
fn a_dead_nodes_meta_replica_is_replaced_only_after_its_others() {
    let mut map = ShardMap::initial(16, &[1, 2, 3, 4, 5], 3);
    assert!(map.shard(0).unwrap().members.contains(&1));
    let alive = live(&[2, 3, 4, 5]);
    // Two moves at a time, as `crema cluster rebalance` starts them.
    let policy = PlacementPolicy { max_moves: 2, ..Default::default() };
    for _ in 0..100 {
        let moves = plan(&map, &alive, &policy);
        if moves.is_empty() {
            break;
        }
        for m in moves.iter().filter(|m| m.shard_id == 0 && m.remove == Some(1)) {
            let elsewhere = map.shards_of(1);
            assert_eq!(elsewhere, vec![0], "node 1 left the meta shard while placed in {elsewhere:?}: {m:?}");
        }
        settle(&mut map, &moves);
    }
    assert!(map.shards_of(1).is_empty(), "node 1 still placed: {map:?}");
}

#[test]
fn a_shard_without_a_majority_alive_is_left_alone() {
    let map = ShardMap::initial(3, &[1, 2, 3], 3);
    assert!(
        plan(&map, &live(&[1, 4, 5]), &PlacementPolicy { max_moves: 100, ..Default::default() }).is_empty()
    );
}

#[test]
fn without_replace_dead_a_dead_member_stays() {
    let map = ShardMap::initial(6, &[1, 2, 3, 4], 3);
    let policy = PlacementPolicy { replace_dead: false, max_moves: 100, ..Default::default() };
    let moves = plan(&map, &live(&[1, 2, 3]), &policy);
    assert!(moves.iter().all(|m| m.remove != Some(4)), "{moves:?}");
}

#[test]
fn a_new_node_gets_its_fair_share() {
    let mut map = ShardMap::initial(16, &[1, 2, 3, 4, 5], 3);
    let alive = live(&[1, 2, 3, 4, 5, 6]);
    let policy = PlacementPolicy { max_moves: 1, ..Default::default() };
    let moves = plan(&map, &alive, &policy);
    assert_eq!(moves.len(), 1, "one move at a time: {moves:?}");
    assert_eq!(moves[0].add, Some(6));
    let rounds = converge(&mut map, &alive, &policy);
    // 48 replicas over 6 nodes: 8 each, the new node's 8 each taken in one move.
    assert_eq!(spread(&map, &alive), (8, 8));
    assert_eq!(rounds, 8);
}

#[test]
fn moving_shards_count_against_the_budget() {
    let mut map = ShardMap::initial(16, &[1, 2, 3], 3);
    map.shard_mut(3).unwrap().state = ShardState::Transferring;
    map.shard_mut(4).unwrap().state = ShardState::Transferring;
    let alive = live(&[1, 2, 3, 4]);
    assert!(plan(&map, &alive, &PlacementPolicy { max_moves: 2, ..Default::default() }).is_empty());
    let moves = plan(&map, &alive, &PlacementPolicy { max_moves: 3, ..Default::default() });
    assert_eq!(moves.len(), 1);
    assert!(moves[0].shard_id != 3 && moves[0].shard_id != 4, "a moving shard is not moved again");
}

#[test]
fn a_lower_replica_factor_trims_the_most_loaded_members() {
    let mut map = ShardMap::initial(4, &[1, 2, 3], 3);
    let alive = live(&[1, 2, 3]);
    let policy = PlacementPolicy { replica_factor: 2, max_moves: 100, ..Default::default() };
    converge(&mut map, &alive, &policy);
    assert!(map.shards().iter().all(|s| s.members.len() == 2));
    let (low, high) = spread(&map, &alive);
    assert!(high - low <= 1, "{map:?}");
}

proptest! {
    /// Whatever the start, the nodes that join, the one that dies (when every shard keeps a
    /// majority without it) and the budget: planning again after every settled move ends,
    /// with every shard on min(R, live) live nodes (a dead member stays only when no live
    /// node can replace it) and loads within one.
    #[test]
    fn placement_settles_balanced(
        shards in 1u32..40,
        start in proptest::collection::btree_set(1u64..12, 1..8),
        joined in proptest::collection::btree_set(100u64..106, 0..3),
        kill in any::<proptest::sample::Index>(),
        r in 1usize..5,
        max_moves in 1usize..4,
    ) {
        let start: Vec<NodeId> = start.into_iter().collect();
        let mut map = ShardMap::initial(shards, &start, r);
        let mut alive: BTreeSet<NodeId> = start.iter().copied().chain(joined).collect();
        if r.min(start.len()) >= 3 {
            alive.remove(&start[kill.index(start.len())]);
        }
        let policy = PlacementPolicy { replica_factor: r, replace_dead: true, max_moves };
        converge(&mut map, &alive, &policy);
        for s in map.shards() {
            let live_members = s.members.iter().filter(|m| alive.contains(m)).count();
            prop_assert_eq!(live_members, r.min(alive.len()), "{:?}", s);
            // A dead member stays only while no live node could take its place.
            prop_assert!(live_members == s.members.len() || alive.len() < r, "{:?}", s);
        }
        let (low, high) = spread(&map, &alive);
        prop_assert!(high - low <= 1, "loads {:?}", map.loads());
    }

    /// A move never leaves a shard without a live member it had.
    #[test]
    fn a_move_keeps_a_live_member(
        shards in 1u32..20,
        start in proptest::collection::btree_set(1u64..8, 1..6),
        alive in proptest::collection::btree_set(1u64..8, 1..6),
    ) {
        let start: Vec<NodeId> = start.into_iter().collect();
        let map = ShardMap::initial(shards, &start, 3);
        for m in plan(&map, &alive, &PlacementPolicy { max_moves: 100, ..Default::default() }) {
            let before = &map.shard(m.shard_id).unwrap().members;
            let had_live = before.iter().any(|n| alive.contains(n));
            let after = m.apply_to(before);
            prop_assert!(!had_live || after.iter().any(|n| alive.contains(n) && before.contains(n)), "{:?} {:?}", m, before);
        }
    }
}

#[test]
fn a_move_whose_target_died_is_aimed_at_a_live_node() {
    let mut map = ShardMap::initial(4, &[1, 2, 3, 4], 3);
    // Shard 1 moves from node 1 to node 5, which dies on the way.
    let shard = map.shard_mut(1).unwrap();
    let before = shard.members.clone();
    shard.members = Move { shard_id: 1, add: Some(5), remove: Some(before[0]) }.apply_to(&before);
    shard.state = ShardState::Transferring;
    let alive = live(&[1, 2, 3, 4]);
    let replace = PlacementPolicy { replace_dead: true, max_moves: 0, ..PlacementPolicy::default() };
    let moves = plan(&map, &alive, &replace);
    assert_eq!(moves.len(), 1, "whatever the budget: {moves:?}");
    assert_eq!((moves[0].shard_id, moves[0].remove), (1, Some(5)));
    assert!(moves[0].add.is_some_and(|n| alive.contains(&n) && !map.shard(1).unwrap().members.contains(&n)));
    let wait = PlacementPolicy { replace_dead: false, ..PlacementPolicy::default() };
    assert!(plan(&map, &alive, &wait).iter().all(|m| m.shard_id != 1), "without replace_dead it waits");
}
