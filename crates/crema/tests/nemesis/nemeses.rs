//! The nemeses: each injects one kind of fault until its deadline.

use super::*;

// ----- nemeses -----

/// Scenario 1: a random partition every 1–3 s (majority/minority, isolate the leader, a bridge,
/// one-way cuts from the leader), each healed before the next.
pub(crate) async fn partitions(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    work: Arc<Workload>,
    rng: StdRng,
    deadline: Instant,
) {
    partitions_of(cluster, nemesis, work, rng, deadline, &[0, 1, 2, 3]).await;
}

pub(crate) async fn partitions_of(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    work: Arc<Workload>,
    mut rng: StdRng,
    deadline: Instant,
    kinds: &[u8],
) {
    loop {
        let mut ids = cluster.members();
        ids.shuffle(&mut rng);
        let leader = cluster.leader().filter(|l| ids.contains(l));
        let kind = *kinds.choose(&mut rng).unwrap();
        let mut minority = None;
        match (kind, leader) {
            // Majority and minority.
            (0, _) | (1, None) => {
                let cut = (ids.len() - 1) / 2;
                cluster.faults.partition(&[ids[..cut].to_vec(), ids[cut..].to_vec()]);
                minority = Some(ids[..cut].iter().copied().collect::<BTreeSet<_>>());
            }
            // The leader alone.
            (1, Some(leader)) => {
                let rest: Vec<_> = ids.iter().copied().filter(|i| *i != leader).collect();
                cluster.faults.partition(&[vec![leader], rest]);
                minority = Some(BTreeSet::from([leader]));
            }
            // A bridge: two sides that only one node links.
            (2, _) => {
                let half = ids.len() / 2;
                cluster.faults.cut_between(&ids[..half], &ids[half + 1..]);
            }
            // The leader's outgoing links cut, its incoming ones working.
            (_, leader) => {
                let from = leader.unwrap_or(ids[0]);
                for to in ids.iter().filter(|i| **i != from) {
                    cluster.faults.cut(from, *to);
                }
            }
        }
        nemesis.count();
        let from = work.history.now();
        let go_on = hold(Instant::now() + secs(&mut rng, 1.0, 3.0), deadline).await;
        let to = work.history.now();
        cluster.faults.heal();
        if let Some(side) = minority {
            nemesis.minorities.lock().unwrap().push((side, from, to));
        }
        if !go_on || !hold(Instant::now() + secs(&mut rng, 0.3, 1.0), deadline).await {
            return;
        }
    }
}

/// Scenario 2: crash the leader, restart it, again and again. With memory storage the next
/// crash waits until the restarted node has caught up (a memory node restarts empty: losing a
/// majority's memories at once loses data, which the README documents).
pub(crate) async fn kill_leader(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    _: Arc<Workload>,
    mut rng: StdRng,
    deadline: Instant,
) {
    loop {
        let Some(leader) = cluster.leader() else {
            if !hold(Instant::now() + Duration::from_millis(50), deadline).await {
                return;
            }
            continue;
        };
        cluster.crash(leader).await;
        nemesis.count();
        let down = hold(Instant::now() + secs(&mut rng, 0.2, 1.0), deadline).await;
        cluster.restart(leader, false).await;
        if !down {
            return;
        }
        if cluster.storage == Storage::Memory {
            caught_up(&cluster, leader, Duration::from_secs(10)).await;
        }
        if !hold(Instant::now() + secs(&mut rng, 1.0, 3.0), deadline).await {
            return;
        }
    }
}

/// Waits until `id` has applied, in every shard, what the others had committed when the wait
/// began.
pub(crate) async fn caught_up(cluster: &Cluster, id: NodeId, timeout: Duration) {
    let others: Vec<_> = cluster.running().into_iter().filter(|n| n.node_id() != id).collect();
    let mut targets = std::collections::BTreeMap::new();
    for shard in others.iter().flat_map(|n| n.shard_info()) {
        let target = targets.entry(shard.shard_id).or_insert(0);
        *target = shard.commit_index.max(*target);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let applied: std::collections::BTreeMap<_, _> = cluster
            .node(id)
            .map(|n| n.shard_info().into_iter().map(|s| (s.shard_id, s.applied_index)).collect())
            .unwrap_or_default();
        let behind =
            targets.iter().find(|(shard, target)| applied.get(*shard).copied().unwrap_or(0) < **target);
        let Some((shard, target)) = behind else { return };
        assert!(
            Instant::now() < deadline,
            "node {id} did not catch up to {target} in shard {shard} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sharded scenarios: crash any node (followers too), restart it, again and again; with memory
/// storage the next crash waits until the restarted node has caught up in every shard.
pub(crate) async fn kill_any_node(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    _: Arc<Workload>,
    mut rng: StdRng,
    deadline: Instant,
) {
    loop {
        let victim = *cluster.members().choose(&mut rng).expect("members");
        cluster.crash(victim).await;
        nemesis.count();
        let down = hold(Instant::now() + secs(&mut rng, 0.2, 1.0), deadline).await;
        cluster.restart(victim, false).await;
        if !down {
            return;
        }
        if cluster.storage == Storage::Memory {
            caught_up(&cluster, victim, Duration::from_secs(10)).await;
        }
        if !hold(Instant::now() + secs(&mut rng, 0.5, 2.0), deadline).await {
            return;
        }
    }
}

/// Sharded scenarios: pause any node's group loops (every shard replica on it, its pings too)
/// well past the election timeout, then resume it.
pub(crate) async fn pause_any_node(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    _: Arc<Workload>,
    mut rng: StdRng,
    deadline: Instant,
) {
    let pause = fast_raft().election_timeout() * 3;
    loop {
        let victim = *cluster.members().choose(&mut rng).expect("members");
        cluster.faults.pause(victim);
        nemesis.count();
        let go_on = hold(Instant::now() + pause, deadline).await;
        cluster.faults.resume(victim);
        if !go_on || !hold(Instant::now() + secs(&mut rng, 0.5, 1.5), deadline).await {
            return;
        }
    }
}

/// Sharded scenarios with placement (more nodes than replicas): move a random shard's replica
/// from one of its members to a node that holds none, again and again under load (each move
/// adds a learner, catches it up by snapshot, promotes it and removes the old member), waiting
/// for each to settle.
pub(crate) async fn churn_shards(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    _: Arc<Workload>,
    mut rng: StdRng,
    deadline: Instant,
) {
    loop {
        let ids = cluster.members();
        let Some(node) = ids.choose(&mut rng).and_then(|id| cluster.node(*id)) else { return };
        let map = node.shard_map();
        let moved = map.shards().choose(&mut rng).and_then(|p| {
            let from = *p.members.choose(&mut rng)?;
            let to = *ids.iter().filter(|n| !p.members.contains(n)).collect::<Vec<_>>().choose(&mut rng)?;
            Some((p.shard_id, from, *to))
        });
        if let Some((shard, from, to)) = moved {
            if node.move_shard(shard, from, to).await.is_ok() {
                nemesis.count();
                // Until it settles (or the scenario ends).
                loop {
                    let settled =
                        node.shard_map().shard(shard).is_some_and(|p| p.state == crema::ShardState::Active);
                    if settled || !hold(Instant::now() + Duration::from_millis(50), deadline).await {
                        break;
                    }
                }
            }
        }
        if !hold(Instant::now() + secs(&mut rng, 0.1, 0.5), deadline).await {
            return;
        }
    }
}

/// Scenario 3: every link drops 20%, duplicates 10% and delays 0–50 ms (reordering).
pub(crate) async fn flaky_links(
    _: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    _: Arc<Workload>,
    _: StdRng,
    deadline: Instant,
) {
    // Set by the test before the clients start; here only the time passes.
    nemesis.count();
    hold(deadline, deadline).await;
}

/// Scenario 4: pause the leader's group loop well past the election timeout, then resume it.
pub(crate) async fn pause_leader(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    _: Arc<Workload>,
    mut rng: StdRng,
    deadline: Instant,
) {
    let pause = fast_raft().election_timeout() * 3;
    loop {
        if let Some(leader) = cluster.leader() {
            cluster.faults.pause(leader);
            nemesis.count();
            let go_on = hold(Instant::now() + pause, deadline).await;
            cluster.faults.resume(leader);
            if !go_on {
                return;
            }
        }
        if !hold(Instant::now() + secs(&mut rng, 0.5, 1.5), deadline).await {
            return;
        }
    }
}

/// Scenario 5: add or remove a voter every 1–2 s while majority/minority partitions come and
/// go. A removed node is restarted empty and waits to be added again.
pub(crate) async fn membership(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    work: Arc<Workload>,
    mut rng: StdRng,
    deadline: Instant,
) {
    // The split in force (its minority and when it began), closed at the next heal.
    let mut split: Option<(BTreeSet<NodeId>, u64)> = None;
    loop {
        let go_on = hold(Instant::now() + secs(&mut rng, 1.0, 2.0), deadline).await;
        cluster.faults.heal();
        if let Some((side, from)) = split.take() {
            nemesis.minorities.lock().unwrap().push((side, from, work.history.now()));
        }
        if !go_on {
            return;
        }
        let Some(voters) = known_voters(&cluster).await else { continue };
        *cluster.members.write().unwrap() = voters.clone();
        let spares: Vec<NodeId> = cluster.ids().into_iter().filter(|i| !voters.contains(i)).collect();
        let add = voters.len() <= 3 || (voters.len() < 5 && rng.gen_bool(0.5));
        let via = cluster.node(*voters.choose(&mut rng).unwrap());
        let Some(via) = via else { continue };
        if add {
            let Some(&spare) = spares.choose(&mut rng) else { continue };
            let addr = cluster.addrs[spare as usize - 1];
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(3), via.add_peer(spare, addr)).await
            {
                nemesis.count();
                cluster.members.write().unwrap().push(spare);
            }
        } else {
            let gone = *voters.choose(&mut rng).unwrap();
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(3), via.remove_peer(gone)).await {
                nemesis.count();
                cluster.members.write().unwrap().retain(|m| *m != gone);
                cluster.crash(gone).await;
                cluster.restart(gone, true).await;
            }
        }
        // Partitions come and go: three rounds in four a majority/minority split until the
        // next change, the leader on the minority side in half of them (the case where a
        // deposed leader could still answer, and where a change in flight could be lost).
        if rng.gen_bool(0.75) {
            let mut ids = cluster.members();
            ids.shuffle(&mut rng);
            if let Some(at) = cluster.leader().and_then(|l| ids.iter().position(|i| *i == l)) {
                let to = if rng.gen_bool(0.5) { 0 } else { ids.len() - 1 };
                ids.swap(at, to);
            }
            let cut = (ids.len() - 1) / 2;
            cluster.faults.partition(&[ids[..cut].to_vec(), ids[cut..].to_vec()]);
            nemesis.count();
            split = Some((ids[..cut].iter().copied().collect(), work.history.now()));
        }
    }
}

/// The voters as the leader sees them, if a leader answers.
pub(crate) async fn known_voters(cluster: &Cluster) -> Option<Vec<NodeId>> {
    let leader = cluster.node(cluster.leader()?)?;
    let status = tokio::time::timeout(Duration::from_secs(1), leader.cluster_status()).await.ok()?.ok()?;
    Some(status.group.voters)
}

/// Scenario 6: cut a follower off until the leader's log no longer reaches back to it, heal,
/// and check it was caught up through a snapshot; repeat.
pub(crate) async fn snapshot_catch_up(
    cluster: Arc<Cluster>,
    nemesis: Arc<Nemesis>,
    _: Arc<Workload>,
    mut rng: StdRng,
    deadline: Instant,
) {
    let keep = SNAPSHOT_LOG;
    loop {
        let Some(leader) = cluster.leader() else {
            if !hold(Instant::now() + Duration::from_millis(50), deadline).await {
                return;
            }
            continue;
        };
        let followers: Vec<NodeId> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
        let follower = *followers.choose(&mut rng).unwrap();
        let (Some(f), Some(l)) = (cluster.node(follower), cluster.node(leader)) else { continue };
        let before = f.raft_figures();
        let others: Vec<_> = cluster.ids().into_iter().filter(|i| *i != follower).collect();
        cluster.faults.cut_between(&[follower], &others);
        nemesis.count();
        // Far enough behind that the log it needs is compacted away.
        let behind = Instant::now() + Duration::from_secs(20);
        // Clients stuck on the cut-off node write little: write filler through the leader too.
        let mut filler = 0u64;
        while l.raft_figures().applied_index < before.applied_index + 3 * keep {
            assert!(Instant::now() < behind, "writes stalled while node {follower} was cut off");
            filler += 1;
            if l.put("filler", filler.to_string()).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        cluster.faults.heal();
        let healed = Instant::now();
        while f.raft_figures().snapshots_installed == before.snapshots_installed {
            assert!(
                healed.elapsed() < Duration::from_secs(10),
                "node {follower} was not caught up through a snapshot"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !hold(Instant::now() + secs(&mut rng, 0.5, 1.5), deadline).await {
            return;
        }
    }
}

pub(crate) const SNAPSHOT_LOG: u64 = 64;
