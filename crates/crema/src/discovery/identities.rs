//! Which of a node's gossip identities speaks for it. foca treats a node started again (a new
//! `bump`, perhaps a new gossip address) as a new member, and declares the old identity down
//! seconds later; a node is therefore alive while any identity of its id is, and described by
//! the newest live one.
//!
//! Found from outside, twice: taking the old identity's `Down` for the node marked a node
//! started again on another gossip address down on every node for good (and
//! `--auto-remove-voters` removed it); then keeping only the highest `bump` ever heard let one
//! forged packet (no cluster secret) with a bump of 2^64-1 mark a live node down for good. No
//! identity outranks another here for long: a forged or stale one counts only while foca
//! holds it alive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::memberlist::GossipId;
use super::NodeHealth;
use crate::types::NodeId;

/// Identities remembered per node id (the down ones with the lowest bumps are forgotten first).
const MAX_PER_NODE: usize = 8;

/// How long an identity foca dropped without declaring it down counts as alive still (see
/// [`Identities::dropped`]).
pub(super) const DROPPED_GRACE: Duration = Duration::from_secs(30);

/// What gossip last said of each identity of each node id.
#[derive(Debug, Default)]
pub(super) struct Identities {
    by_node: HashMap<NodeId, BTreeMap<u64, (GossipId, NodeHealth)>>,
    /// Live identities foca does not hold, since when.
    missing: HashMap<GossipId, Instant>,
}

impl Identities {
    /// Records that `id` is `health`, and answers what it makes of its node: the newest
    /// identity not down (else the newest) and its health. `None` for news of this node
    /// (`own`) or of a node whose id is not known yet (a seed).
    pub fn note(&mut self, own: NodeId, id: &GossipId, health: NodeHealth) -> Option<(GossipId, NodeHealth)> {
        if id.node_id == 0 || id.node_id == own {
            return None;
        }
        let known = self.by_node.entry(id.node_id).or_default();
        known.insert(id.bump, (id.clone(), health));
        while known.len() > MAX_PER_NODE {
            let forget = known
                .iter()
                .find(|(_, (_, h))| *h == NodeHealth::Down)
                .or_else(|| known.iter().next())
                .map(|(bump, _)| *bump)
                .expect("more than MAX_PER_NODE identities");
            known.remove(&forget);
        }
        let live = known.values().rev().find(|(_, h)| *h != NodeHealth::Down);
        live.or_else(|| known.values().next_back()).cloned()
    }

    /// The identities last said to be alive or suspect that foca has not held (`held`: the
    /// identities it holds, down or not) for [`DROPPED_GRACE`] as of `now`: to be declared
    /// down. foca keeps one member per gossip address and drops the loser of a conflict (a
    /// `Rename`) without declaring it down. Found from outside: one bit-flipped packet of node 3
    /// (no cluster secret) named a node 7 on its address, and node 7 stayed alive in
    /// `/cluster` and the metrics for good. Not at once: the loser may be the real node, and a
    /// forged identity that won its address is probed, found silent and declared down by foca
    /// within seconds, after which the real one is held again; declaring it down at once would
    /// have let one forged packet mark a live node down (and `--auto-remove-voters` remove it).
    ///
    /// Sets, not lists: found in review, with thousands of identities (strangers' gossip
    /// without a cluster secret) each call compared every one with every other, on every
    /// gossip event.
    pub fn dropped(&mut self, held: &HashSet<&GossipId>, now: Instant) -> Vec<GossipId> {
        let live: HashSet<&GossipId> = self
            .by_node
            .values()
            .flat_map(BTreeMap::values)
            .filter(|(id, h)| *h != NodeHealth::Down && !held.contains(id))
            .map(|(id, _)| id)
            .collect();
        self.missing.retain(|id, _| live.contains(id));
        let mut due = Vec::new();
        for id in live {
            match self.missing.get(id) {
                Some(since) if now.duration_since(*since) >= DROPPED_GRACE => due.push(id.clone()),
                Some(_) => {}
                None => {
                    self.missing.insert(id.clone(), now);
                }
            }
        }
        for id in &due {
            self.missing.remove(id);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn id(node_id: NodeId, port: u16, bump: u64) -> GossipId {
        let gossip: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        GossipId { gossip, node_id, raft: gossip, bump }
    }

    #[test]
    fn a_node_is_alive_while_any_identity_is() {
        let mut ids = Identities::default();
        let (old, new) = (id(2, 7000, 10), id(2, 7001, 20));
        assert_eq!(ids.note(1, &old, NodeHealth::Alive), Some((old.clone(), NodeHealth::Alive)));
        // Started again elsewhere: the new identity speaks for it, and the old one's down is not the node's.
        assert_eq!(ids.note(1, &new, NodeHealth::Alive), Some((new.clone(), NodeHealth::Alive)));
        assert_eq!(ids.note(1, &old, NodeHealth::Down), Some((new.clone(), NodeHealth::Alive)));
        // A forged identity with the largest bump: it speaks while held alive, and its down
        // leaves the live one.
        let forged = id(2, 7999, u64::MAX);
        assert_eq!(ids.note(1, &forged, NodeHealth::Alive), Some((forged.clone(), NodeHealth::Alive)));
        assert_eq!(ids.note(1, &forged, NodeHealth::Down), Some((new.clone(), NodeHealth::Alive)));
        // Every identity down: the node is.
        assert_eq!(ids.note(1, &new, NodeHealth::Down), Some((forged.clone(), NodeHealth::Down)));
        // Started again with an older clock: alive again.
        let later = id(2, 7001, 5);
        assert_eq!(ids.note(1, &later, NodeHealth::Alive), Some((later, NodeHealth::Alive)));
        assert_eq!(ids.note(1, &id(1, 7002, 99), NodeHealth::Down), None, "news of this node itself");
        assert_eq!(ids.note(1, &id(0, 7003, 1), NodeHealth::Alive), None, "a seed not known yet");
    }

    #[test]
    fn few_identities_are_kept_per_node() {
        let mut ids = Identities::default();
        let live = id(3, 7000, 1);
        ids.note(1, &live, NodeHealth::Alive);
        for bump in 2..1000 {
            ids.note(1, &id(3, 7001, bump), NodeHealth::Down);
        }
        assert!(ids.by_node[&3].len() <= MAX_PER_NODE);
        assert_eq!(ids.note(1, &id(3, 7001, 1000), NodeHealth::Down), Some((live, NodeHealth::Alive)));
    }

    #[test]
    fn an_identity_dropped_for_another_on_its_address_is_down_only_once_it_stays_away() {
        let mut ids = Identities::default();
        let (real, forged) = (id(3, 7003, 10), id(7, 7003, 20));
        let t0 = Instant::now();
        ids.note(1, &real, NodeHealth::Alive);
        ids.note(1, &forged, NodeHealth::Alive);
        // foca holds the forged identity on node 3's address: node 3 is not down yet.
        assert!(ids.dropped(&HashSet::from([&forged]), t0).is_empty());
        // It is probed, found silent and declared down by foca; node 3 is held again in time.
        ids.note(1, &forged, NodeHealth::Down);
        assert!(ids.dropped(&HashSet::from([&real]), t0 + DROPPED_GRACE).is_empty(), "node 3 stays alive");
        // The other way round: the forged one won back nothing and is no longer held at all.
        let phantom = id(7, 7003, 30);
        ids.note(1, &phantom, NodeHealth::Alive);
        assert!(ids.dropped(&HashSet::from([&real]), t0 + DROPPED_GRACE).is_empty(), "not at once");
        let later = t0 + DROPPED_GRACE * 2;
        assert_eq!(
            ids.dropped(&HashSet::from([&real]), later),
            vec![phantom.clone()],
            "down once it stayed away"
        );
        ids.note(1, &phantom, NodeHealth::Down);
        assert!(ids.dropped(&HashSet::from([&real]), later + DROPPED_GRACE).is_empty(), "said once");
    }
}
