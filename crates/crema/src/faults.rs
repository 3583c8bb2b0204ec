//! Fault injection for robustness tests: cargo feature `fault-injection`, never enabled by the
//! server's build or by `full`.
//!
//! One [`Faults`] is shared by every node of an in-process test cluster (each node's
//! [`CacheConfig::with_faults`](crate::CacheConfig::with_faults)). It acts on the real message
//! path: every frame a node's transport sends to a peer (Raft messages, snapshot pieces,
//! forwarded writes and their answers) asks [`Faults`] first whether to drop it, send it twice
//! or hold it back (delay plus jitter, which reorders), and links can be cut one way or between
//! groups of nodes. A node's Raft group loop can be paused (as if the process were stopped) and
//! resumed. A node's durable log writes can be slowed ([`Faults::slow_disk`]), as a busy disk
//! would. Crashing and restarting a node is the test's job: shut it down and start it again
//! on the same address and data directory.
//!
//! [`Mutant`]s are bugs planted on purpose behind this switch, so tests can show that the
//! robustness suite notices them.
//!
//! Written here rather than taken from a crate: the faults have to sit inside crema's own
//! transport and group loop, which no network simulator reaches.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::types::NodeId;

/// Faults on one directed link (`from` → `to`). The default delivers everything at once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFaults {
    /// Probability that a frame is dropped.
    pub drop: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Fixed delay of every frame.
    pub delay: Duration,
    /// Extra delay, uniform in `0..=jitter` per frame: frames overtake each other.
    pub jitter: Duration,
    /// Nothing gets through.
    pub cut: bool,
}

impl LinkFaults {
    /// A link that loses everything.
    pub fn cut() -> Self {
        Self { cut: true, ..Self::default() }
    }
}

/// A bug planted on purpose, to show that the robustness suite catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutant {
    /// A node that believes it leads answers linearizable reads from its own state without
    /// confirming its leadership with a quorum: a deposed leader serves stale reads.
    StaleLeaderReads,
    /// The leader acknowledges a write as soon as it is proposed, before it commits: a write
    /// lost with a leader change was acknowledged anyway.
    AckBeforeCommit,
}

/// How many frames the faults touched so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Frames dropped (cut links included).
    pub dropped: u64,
    /// Frames sent twice.
    pub duplicated: u64,
    /// Frames held back.
    pub delayed: u64,
}

/// What the transport does with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Lose it.
    Drop,
    /// Send `copies` copies after `delay` (none: at once).
    Send { copies: usize, delay: Option<Duration> },
}

#[derive(Default)]
struct Links {
    every: LinkFaults,
    own: HashMap<(NodeId, NodeId), LinkFaults>,
}

/// The fault switchboard of a test cluster. See the module documentation.
pub struct Faults {
    links: Mutex<Links>,
    rng: Mutex<StdRng>,
    paused: watch::Sender<BTreeSet<NodeId>>,
    mutants: Mutex<HashSet<Mutant>>,
    disk_delays: Mutex<HashMap<NodeId, Duration>>,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").field("counts", &self.counts()).finish_non_exhaustive()
    }
}

impl Faults {
    /// No faults yet; random choices (drops, jitter) follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            links: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            paused: watch::Sender::new(BTreeSet::new()),
            mutants: Mutex::default(),
            disk_delays: Mutex::default(),
            dropped: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().expect("fault table poisoned")
    }

    /// Faults on the link `from` → `to` (only that direction).
    pub fn set_link(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.links().own.insert((from, to), faults);
    }

    /// Faults on every link that has none of its own.
    pub fn set_every_link(&self, faults: LinkFaults) {
        self.links().every = faults;
    }

    /// Cuts `from` → `to`; the other direction still works.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.set_link(from, to, LinkFaults::cut());
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn cut_between(&self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    /// Splits the nodes into `sides` that cannot reach each other; links within a side work.
    pub fn partition(&self, sides: &[Vec<NodeId>]) {
        for (i, a) in sides.iter().enumerate() {
            for b in &sides[i + 1..] {
                self.cut_between(a, b);
            }
        }
    }

    /// Removes every link fault (paused nodes stay paused, mutants stay planted).
    pub fn heal(&self) {
        *self.links() = Links::default();
    }

    /// Stops `node`'s Raft group loop where it stands, as if the process were stopped: it ticks
    /// no clock, answers nothing and reads no mailbox until [`Self::resume`].
    pub fn pause(&self, node: NodeId) {
        self.paused.send_modify(|p| {
            p.insert(node);
        });
    }

    /// Lets `node`'s group loop go on.
    pub fn resume(&self, node: NodeId) {
        self.paused.send_modify(|p| {
            p.remove(&node);
        });
    }

    /// Resumes every paused node.
    pub fn resume_all(&self) {
        self.paused.send_modify(BTreeSet::clear);
    }

    /// Every Raft log write `node` makes off its group loop (durable storage; see
    /// `consensus::group`) takes `delay` longer; `Duration::ZERO` puts the disk back.
    pub fn slow_disk(&self, node: NodeId, delay: Duration) {
        self.disk_delays.lock().expect("disk delays poisoned").insert(node, delay);
    }

    /// The extra time each of `node`'s log writes takes.
    pub fn disk_delay(&self, node: NodeId) -> Duration {
        self.disk_delays.lock().expect("disk delays poisoned").get(&node).copied().unwrap_or_default()
    }

    /// Plants `mutant` in every node sharing these faults.
    pub fn plant(&self, mutant: Mutant) {
        self.mutants.lock().expect("mutants poisoned").insert(mutant);
    }

    /// Whether `mutant` is planted.
    pub fn planted(&self, mutant: Mutant) -> bool {
        self.mutants.lock().expect("mutants poisoned").contains(&mutant)
    }

    /// What the faults did so far.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
        }
    }

    /// Decides the fate of one frame on `from` → `to`.
    pub(crate) fn delivery(&self, from: NodeId, to: NodeId) -> Delivery {
        let link = {
            let links = self.links();
            links.own.get(&(from, to)).copied().unwrap_or(links.every)
        };
        if link == LinkFaults::default() {
            return Delivery::Send { copies: 1, delay: None };
        }
        if link.cut {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Delivery::Drop;
        }
        let mut rng = self.rng.lock().expect("fault rng poisoned");
        if link.drop > 0.0 && rng.gen_bool(link.drop.min(1.0)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Delivery::Drop;
        }
        let copies = if link.duplicate > 0.0 && rng.gen_bool(link.duplicate.min(1.0)) {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        let jitter =
            if link.jitter.is_zero() { Duration::ZERO } else { rng.gen_range(Duration::ZERO..=link.jitter) };
        let delay = link.delay + jitter;
        if delay.is_zero() {
            return Delivery::Send { copies, delay: None };
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        Delivery::Send { copies, delay: Some(delay) }
    }

    /// Returns once `node` is not paused (at once when it is not).
    pub(crate) async fn wait_while_paused(&self, node: NodeId) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !p.contains(&node)).await;
    }

    /// Whether `node` is paused now.
    pub(crate) fn is_paused(&self, node: NodeId) -> bool {
        self.paused.borrow().contains(&node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_their_own_faults_then_the_common_ones() {
        let faults = Faults::new(1);
        assert_eq!(faults.delivery(1, 2), Delivery::Send { copies: 1, delay: None });
        faults.partition(&[vec![1, 2], vec![3]]);
        assert_eq!(faults.delivery(1, 3), Delivery::Drop);
        assert_eq!(faults.delivery(3, 2), Delivery::Drop);
        assert_eq!(faults.delivery(1, 2), Delivery::Send { copies: 1, delay: None }, "same side");
        faults.heal();
        faults.cut(1, 2);
        assert_eq!(faults.delivery(1, 2), Delivery::Drop);
        assert_eq!(faults.delivery(2, 1), Delivery::Send { copies: 1, delay: None }, "one way only");
        assert_eq!(faults.counts().dropped, 3);
    }

    #[test]
    fn drop_duplicate_and_jitter_follow_their_probabilities() {
        let faults = Faults::new(7);
        let jitter = Duration::from_millis(50);
        faults.set_every_link(LinkFaults { drop: 0.2, duplicate: 0.1, jitter, ..Default::default() });
        let n = 20_000;
        let (mut dropped, mut doubled, mut max_delay) = (0, 0, Duration::ZERO);
        for _ in 0..n {
            match faults.delivery(1, 2) {
                Delivery::Drop => dropped += 1,
                Delivery::Send { copies, delay } => {
                    doubled += usize::from(copies == 2);
                    max_delay = max_delay.max(delay.unwrap_or_default());
                }
            }
        }
        let rate = |k: usize| k as f64 / n as f64;
        assert!((rate(dropped) - 0.2).abs() < 0.02, "drop rate {}", rate(dropped));
        assert!((rate(doubled) - 0.08).abs() < 0.02, "duplicate rate {}", rate(doubled));
        assert!(max_delay <= jitter && max_delay > jitter / 2);
        assert_eq!(faults.counts().dropped, dropped as u64);
    }

    #[tokio::test]
    async fn a_paused_node_waits_until_resumed() {
        let faults = std::sync::Arc::new(Faults::new(1));
        faults.wait_while_paused(3).await; // not paused: at once
        faults.pause(3);
        assert!(faults.is_paused(3) && !faults.is_paused(2));
        let waiter = tokio::spawn({
            let faults = faults.clone();
            async move { faults.wait_while_paused(3).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        faults.resume(3);
        waiter.await.unwrap();
    }
}
