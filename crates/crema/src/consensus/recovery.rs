//! How a node that lost its Raft state (memory storage, restarted) takes part in its group
//! again without breaking Raft's guarantees. Pure: positions in, decisions out; the group loop
//! (`group.rs`) applies them.
//!
//! A memory node that restarts comes back with an empty log and no record of its votes. Raft's
//! safety rests on both: a leader counted this node's acknowledgements to commit entries it no
//! longer holds, and a candidate counted its vote in some term it no longer remembers. Two
//! phases keep it from undoing either (the argument, with the cases, is in
//! `docs/reliability.md`, "Restarting a memory node"):
//!
//! 1. **Waiting for peers.** The node steps no Raft message and does not campaign until enough
//!    other voters that kept their state have told it, in the peer handshake, where they stand
//!    (term and last log entry): `N - q + 1` of them for `N` voters and quorum `q` (2 of 2
//!    others with 3 voters, 3 of 4 with 5). Any majority that counted the node's lost vote or
//!    acknowledgement holds at least `q - 1` other nodes; with fewer than `q` voters recovering
//!    at once, at least one of those kept its state, and it is among the answers: the highest
//!    term among them is at least every term the node's previous life voted or acknowledged
//!    in, and the most up-to-date log among them holds every committed entry. Answers of peers
//!    that recover too do not count towards `N - q + 1`: they hold nothing they were credited
//!    with. When `q` or more voters recover (this node included), what only they held is lost
//!    anyway; if a peer that kept its state answered, the node waits until every voter
//!    answered, so the best log the survivors kept becomes the floor (and the survivors are
//!    not left with a history the others dropped); if none did (a new memory cluster, or one
//!    restarted whole), `N - q + 1` answers do. The node then moves to the highest term heard and records a vote for itself in
//!    it, so it can never vote twice in a term its previous life may have voted in.
//! 2. **Catching up.** It steps messages again (a leader sends it the log or a snapshot) but
//!    grants a vote only to a candidate whose log is at least as up to date as that most
//!    up-to-date answer, and does not campaign, until its own log is.
//!
//! A durable node that finds its data dir empty recovers the same way: it cannot tell a first
//! start from a lost disk. One exception lets a new cluster start with a node missing (phase 1
//! would wait for it): such a replica also leaves phase 1 once a quorum of the voters, itself
//! included, answered that they recover too and hold nothing past the bootstrap log
//! (`Recovery::first_start_possible`). None of them can hold a committed entry, so either the
//! cluster never ran or a majority lost its disks, which leaves nothing to protect. With one
//! disk lost, the others hold their logs and do not recover: the replica waits for the answers
//! it needs, and a lagging peer it could have elected rolls nothing back.
//!
//! The leader's side (forgetting what it knew of a peer's log when a new incarnation of that
//! peer connects) is in the group loop.

use std::collections::BTreeMap;

use crate::consensus::admit::MAX_TERM_LEAP;
use crate::consensus::storage::BOOTSTRAP_TERM;
use crate::transport::envelope::GroupPosition;
use crate::types::NodeId;

/// What a recovering node learned from its peers: it may not vote in `term` or below, and may
/// vote only for a log at least as up to date as `(last_term, last_index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Floor {
    pub term: u64,
    pub last_term: u64,
    pub last_index: u64,
}

/// Where a node stands in its recovery, as reported in its status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RecoveryState {
    /// Not recovering: the node votes and campaigns normally.
    #[default]
    Done,
    /// Restarted without its Raft state; waiting until `needed` other voters answered the
    /// handshake (`heard` did). It steps no Raft message meanwhile.
    WaitingForPeers {
        /// The voters that answered.
        heard: Vec<NodeId>,
        /// How many other voters must answer.
        needed: usize,
    },
    /// Learned its floor; catching up with a leader's log before it may vote for anyone whose
    /// log is behind `(last_term, last_index)` or campaign.
    CatchingUp {
        /// The term of the most up-to-date log its peers reported.
        last_term: u64,
        /// The index of the last entry of that log.
        last_index: u64,
    },
}

impl RecoveryState {
    /// True while the node may not vote or campaign.
    pub fn is_recovering(&self) -> bool {
        *self != RecoveryState::Done
    }
}

/// The recovery of one group on a node that restarted without its Raft state.
#[derive(Debug)]
pub(crate) struct Recovery {
    me: NodeId,
    heard: BTreeMap<NodeId, GroupPosition>,
    floor: Option<Floor>,
    /// The group's voters when the replica starts without them in its configuration (a member
    /// started again with an empty log, which learns its configuration from the log it is
    /// sent: see `cache::replica`); `None`: the configuration's.
    voters: Option<Vec<NodeId>>,
    /// See [`Self::first_start_possible`].
    first_start: bool,
}

impl Recovery {
    pub fn new(me: NodeId) -> Self {
        Self { me, heard: BTreeMap::new(), floor: None, voters: None, first_start: false }
    }

    /// The recovery of a replica that found no durable state: phase 1 also ends once a quorum
    /// of the voters, this node included, recover too and hold nothing past the bootstrap log
    /// (a first start; see the module header).
    pub fn first_start_possible(self) -> Self {
        Self { first_start: true, ..self }
    }

    /// A recovery that counts the answers of `voters`, whatever the replica's configuration.
    pub fn with_voters(me: NodeId, voters: Vec<NodeId>) -> Self {
        Self { voters: Some(voters), ..Self::new(me) }
    }

    /// The voters given at the start, if any (see [`Self::with_voters`]).
    pub fn voters(&self) -> Option<&[NodeId]> {
        self.voters.as_deref()
    }

    /// Counts the answers of `voters` from now on, as if given at the start, while phase 1
    /// lasts and none were: the group's voters as a running member answered them, for a
    /// replica whose configuration is its command line's (see `cache::meta_conf`). False when
    /// too late or already given.
    pub fn learn_voters(&mut self, voters: Vec<NodeId>) -> bool {
        if !self.waiting() || self.voters.is_some() || voters.is_empty() {
            return false;
        }
        self.voters = Some(voters);
        true
    }

    /// The majority of a group of `voters`.
    fn quorum(voters: usize) -> usize {
        voters / 2 + 1
    }

    /// Other voters that must answer before a node of a group of `voters` may leave phase 1:
    /// enough to share a node with every majority that excludes nobody but this node.
    pub fn needed(voters: usize) -> usize {
        let quorum = Self::quorum(voters);
        if quorum <= 1 {
            // A lone voter's majority is itself: nobody else counted it.
            return 0;
        }
        voters + 1 - quorum
    }

    /// True while phase 1 lasts (nothing is stepped).
    pub fn waiting(&self) -> bool {
        self.floor.is_none()
    }

    /// Notes `peer`'s answer (its newest one counts). Ignored once the floor is known.
    ///
    /// A position no cluster reaches (a term of [`MAX_TERM_LEAP`] or more, or a last entry of a
    /// later term than the sender's) is no answer: found from outside, a forged hello at a term
    /// near the largest became the floor, and every replica that later recovered from this
    /// one's answer took it too, where no election could be won again.
    pub fn hear(&mut self, peer: NodeId, position: GroupPosition) {
        if position.term >= MAX_TERM_LEAP || position.last_term > position.term {
            return;
        }
        if self.floor.is_none() && peer != self.me {
            self.heard.insert(peer, position);
        }
    }

    /// The voters among `voters` that answered.
    fn heard_voters<'a>(
        &'a self,
        voters: &'a [NodeId],
    ) -> impl Iterator<Item = (&'a NodeId, &'a GroupPosition)> {
        self.heard.iter().filter(|(id, _)| voters.contains(id))
    }

    /// Ends phase 1 when enough of `voters` answered: answers the floor (once).
    pub fn floor_if_ready(&mut self, voters: &[NodeId]) -> Option<Floor> {
        if self.floor.is_some() {
            return None;
        }
        let others = voters.iter().filter(|id| **id != self.me).count();
        let needed = Self::needed(others + 1);
        // Answers of peers that recover too vouch for nothing: they hold nothing they were
        // credited with. Found from outside: two of five memory nodes restarted together each
        // counted the other's answer with those of two lagging peers, and elected one of them
        // over the only holder of acknowledged writes.
        let heard = self.heard_voters(voters).count();
        let holding = self.heard_voters(voters).filter(|(_, p)| !p.recovering).count();
        let quorum = Self::quorum(others + 1);
        let majority_lost = heard - holding + 1 >= quorum;
        let ready = holding >= needed
            // A majority (this node included) lost its state: what only they held is gone.
            // When a peer that kept its state answered, every voter's answer is awaited, so the
            // best log left becomes the floor; when none did (a new memory cluster, or one
            // restarted whole), the answers needed are enough.
            || (majority_lost && (heard == others || (holding == 0 && heard >= needed)))
            || self.a_quorum_never_ran(quorum, voters);
        if !ready {
            return None;
        }
        let term = self.heard_voters(voters).map(|(_, p)| p.term).max().unwrap_or(0);
        let (last_term, last_index) =
            self.heard_voters(voters).map(|(_, p)| (p.last_term, p.last_index)).max().unwrap_or((0, 0));
        let floor = Floor { term, last_term, last_index };
        self.floor = Some(floor);
        Some(floor)
    }

    /// Whether `quorum` of the `voters`, this node included, hold nothing past the bootstrap
    /// log and recover themselves, for a replica that may be in a first start.
    fn a_quorum_never_ran(&self, quorum: usize, voters: &[NodeId]) -> bool {
        let never_ran =
            self.heard_voters(voters).filter(|(_, p)| p.recovering && p.last_term <= BOOTSTRAP_TERM).count();
        self.first_start && never_ran + 1 >= quorum
    }

    /// The voters that answered while recovering themselves, this node not included.
    pub fn recovering_peers(&self, voters: &[NodeId]) -> Vec<NodeId> {
        self.heard_voters(voters).filter(|(_, p)| p.recovering).map(|(id, _)| *id).collect()
    }

    /// The voters that answered while recovering, when they and this node (if a voter) are a
    /// majority of `voters` and the group had run (the floor's log holds an entry of an
    /// elected leader's term): what only they held is lost. None otherwise, a first start
    /// included. Found from outside: every fresh 5-node `--shards 16` cluster reported a loss,
    /// on a learner of the meta shard (it counted itself among the voters) and on replicas
    /// that heard a peer already past its first start (a new history's term, over the
    /// bootstrap log only).
    pub fn history_lost(&self, voters: &[NodeId], floor: &Floor) -> Option<Vec<NodeId>> {
        let restarted = self.recovering_peers(voters);
        let lost = restarted.len() + usize::from(voters.contains(&self.me));
        (lost >= Self::quorum(voters.len()) && floor.last_term > BOOTSTRAP_TERM).then_some(restarted)
    }

    /// Whether a candidate whose last entry is `(log_term, index)` may get this node's vote.
    pub fn may_vote_for(&self, log_term: u64, index: u64) -> bool {
        self.floor.is_some_and(|f| (log_term, index) >= (f.last_term, f.last_index))
    }

    /// Whether this node's own log, ending at `(last_term, last_index)`, has caught up.
    pub fn caught_up(&self, last_term: u64, last_index: u64) -> bool {
        self.may_vote_for(last_term, last_index)
    }

    /// Whether a leader of `term` settles the recovery once this node holds an entry that
    /// leader committed in its own term: `term` is at least the floor's, so no leader of a
    /// later term was elected before it (the answers behind the floor share a node with every
    /// majority), and a leader that committed an entry of its own term holds every entry
    /// committed before it (Raft's leader completeness), all of them now in this node's log
    /// too. Whatever this node acknowledged before it lost its state and that counted is there.
    ///
    /// Found from outside: without it, the floor was the only way out, and a forged answer
    /// (no cluster secret) naming a position nobody holds (index 10^15 at the real term) kept
    /// the replica from voting for good, and the group from electing once its leader died.
    pub fn settled_by_leader(&self, term: u64) -> bool {
        self.floor.is_some_and(|f| term >= f.term)
    }

    /// The state to report.
    pub fn state(&self, voters: &[NodeId]) -> RecoveryState {
        match self.floor {
            None => {
                let others = voters.iter().filter(|id| **id != self.me).count();
                RecoveryState::WaitingForPeers {
                    heard: self.heard_voters(voters).map(|(id, _)| *id).collect(),
                    needed: Self::needed(others + 1),
                }
            }
            Some(f) => RecoveryState::CatchingUp { last_term: f.last_term, last_index: f.last_index },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(term: u64, last_term: u64, last_index: u64) -> GroupPosition {
        GroupPosition { shard: 0, term, commit: 0, last_term, last_index, recovering: false }
    }

    #[test]
    fn enough_answers_share_a_node_with_every_majority_that_counted_this_one() {
        assert_eq!(Recovery::needed(1), 0);
        assert_eq!(Recovery::needed(2), 1);
        assert_eq!(Recovery::needed(3), 2);
        assert_eq!(Recovery::needed(4), 2);
        assert_eq!(Recovery::needed(5), 3);
        assert_eq!(Recovery::needed(7), 4);
        // Checked against the definition: with `voters` nodes, quorum q, every majority that
        // contains this node has q - 1 others, and `needed` others must meet all of them.
        for voters in 2..12usize {
            let q = voters / 2 + 1;
            let others = voters - 1;
            let needed = Recovery::needed(voters);
            assert!(needed <= others);
            assert!(needed + (q - 1) > others, "{voters} voters: {needed} answers can miss a majority");
            if needed > 0 {
                assert!((needed - 1) + (q - 1) <= others, "{voters} voters: {needed} is more than needed");
            }
        }
    }

    #[test]
    fn phase_one_ends_with_the_highest_term_and_the_most_up_to_date_log() {
        let voters = [1, 2, 3, 4, 5];
        let mut r = Recovery::new(1);
        r.hear(2, at(7, 6, 90));
        r.hear(9, at(99, 99, 999)); // not a voter: ignored
        r.hear(3, at(6, 5, 120));
        assert_eq!(r.floor_if_ready(&voters), None, "two of the three needed");
        assert!(!r.may_vote_for(100, 1000), "no vote before the floor is known");
        r.hear(4, at(5, 5, 10));
        let floor = r.floor_if_ready(&voters).expect("three answered");
        assert_eq!(
            floor,
            Floor { term: 7, last_term: 6, last_index: 90 },
            "term 6 beats a longer term-5 log"
        );
        assert_eq!(r.floor_if_ready(&voters), None, "answered once");
        assert!(!r.may_vote_for(5, 500));
        assert!(!r.may_vote_for(6, 89));
        assert!(r.may_vote_for(6, 90));
        assert!(r.may_vote_for(7, 1));
        assert!(r.caught_up(6, 95));
    }

    #[test]
    fn an_answer_no_cluster_reaches_is_no_answer() {
        let mut r = Recovery::new(1);
        r.hear(2, at((1 << 63) - 1, 5, 10));
        r.hear(2, at(MAX_TERM_LEAP, 5, 10));
        r.hear(3, at(4, 9, 10)); // a last entry of a later term than the sender's
        assert_eq!(r.floor_if_ready(&[1, 2, 3]), None, "nothing heard");
        r.hear(2, at(7, 6, 90));
        r.hear(3, at(6, 5, 120));
        assert_eq!(r.floor_if_ready(&[1, 2, 3]).map(|f| f.term), Some(7));
    }

    #[test]
    fn answers_of_peers_that_recover_too_vouch_for_nothing() {
        let five = [1, 2, 3, 4, 5];
        let recovering = |term, index| GroupPosition { recovering: true, ..at(term, term, index) };
        // Two of five restarted together (2 and 3), 1 and 5 lag behind 4, the only other holder
        // of the newest writes: 3 answers, but only two of them kept their state.
        let mut r = Recovery::new(2);
        r.hear(3, recovering(0, 0));
        r.hear(1, at(3, 3, 100));
        r.hear(5, at(3, 3, 100));
        assert_eq!(r.floor_if_ready(&five), None, "needs a third voter that kept its state");
        r.hear(4, at(3, 3, 400));
        assert_eq!(r.floor_if_ready(&five).map(|f| f.last_index), Some(400), "the holder's log is the floor");

        // A majority lost its state (three of five): everyone's answer is awaited, so the
        // survivors' logs count.
        let mut r = Recovery::new(1);
        r.hear(2, recovering(0, 0));
        r.hear(3, recovering(0, 0));
        r.hear(4, at(5, 5, 70));
        assert_eq!(r.floor_if_ready(&five), None);
        r.hear(5, at(5, 5, 90));
        assert_eq!(r.floor_if_ready(&five).map(|f| f.last_index), Some(90));

        // Every voter restarted (a memory cluster stopped whole, or a new one): they start
        // over together, one missing or not.
        let mut r = Recovery::new(1);
        for peer in [2, 3] {
            r.hear(peer, recovering(0, 0));
        }
        assert!(r.floor_if_ready(&[1, 2, 3]).is_some());
        let mut r = Recovery::new(1);
        for peer in [2, 3] {
            r.hear(peer, recovering(0, 0));
        }
        assert_eq!(r.floor_if_ready(&five), None, "two of the three needed");
        r.hear(4, recovering(0, 0));
        assert!(r.floor_if_ready(&five).is_some(), "node 5 missing");
    }

    #[test]
    fn a_loss_is_reported_only_by_a_voter_of_a_majority_that_lost_a_group_that_ran() {
        let three = [1, 2, 3];
        let recovering =
            |term, last_term, index| GroupPosition { recovering: true, ..at(term, last_term, index) };
        // 1 and 2 restarted together; 3 kept a log of term 4: what only 1 and 2 held is lost.
        let mut r = Recovery::new(1);
        r.hear(2, recovering(0, 0, 0));
        r.hear(3, at(4, 4, 50));
        let floor = r.floor_if_ready(&three).expect("every voter answered");
        assert_eq!(r.history_lost(&three, &floor), Some(vec![2]));
        // A learner (node 4) hearing the same: it is no voter, one restarted voter is no majority.
        let mut learner = Recovery::new(4);
        learner.hear(2, recovering(0, 0, 0));
        learner.hear(3, at(4, 4, 50));
        learner.hear(1, at(4, 4, 50));
        let floor = learner.floor_if_ready(&three).expect("every voter answered");
        assert_eq!(learner.history_lost(&three, &floor), None);
        // A first start: a peer already past it moved to a new history's term over the
        // bootstrap log only; nothing ran, nothing is lost.
        let mut first = Recovery::new(1).first_start_possible();
        first.hear(2, recovering(1_796_578_120, BOOTSTRAP_TERM, 3));
        first.hear(3, recovering(0, 0, 0));
        let floor = first.floor_if_ready(&three).expect("a quorum never ran");
        assert_eq!(first.history_lost(&three, &floor), None);
    }

    #[test]
    fn voters_learned_in_phase_one_count_and_only_then() {
        // Started with voters 1, 2, 3; the group's are 1, 2, 3, 4, and node 2 is down.
        let mut r = Recovery::new(3);
        r.hear(1, at(4, 4, 50));
        r.hear(4, at(4, 4, 50));
        assert!(r.floor_if_ready(&[1, 2, 3]).is_none(), "node 4 is no voter it knows");
        assert!(r.learn_voters(vec![1, 2, 3, 4]));
        assert!(!r.learn_voters(vec![1, 3]), "once only");
        let voters = r.voters().unwrap().to_vec();
        assert_eq!(r.floor_if_ready(&voters).map(|f| f.last_index), Some(50));
        // Too late once phase 1 ended: the floor stands.
        let mut late = Recovery::new(3);
        late.hear(1, at(4, 4, 50));
        late.hear(2, at(4, 4, 50));
        late.floor_if_ready(&[1, 2, 3]).unwrap();
        assert!(!late.learn_voters(vec![1, 2, 3, 4]));
        assert_eq!(late.voters(), None);
    }

    #[test]
    fn a_lone_voter_recovers_at_once_and_recovering_peers_are_named() {
        let mut alone = Recovery::new(1);
        assert!(alone.floor_if_ready(&[1]).is_some());
        let mut r = Recovery::new(1);
        r.hear(2, GroupPosition { recovering: true, ..at(1, 1, 3) });
        r.hear(3, at(4, 4, 50));
        assert_eq!(r.recovering_peers(&[1, 2, 3]), vec![2]);
        assert_eq!(r.state(&[1, 2, 3]), RecoveryState::WaitingForPeers { heard: vec![2, 3], needed: 2 });
        r.floor_if_ready(&[1, 2, 3]).unwrap();
        assert_eq!(r.state(&[1, 2, 3]), RecoveryState::CatchingUp { last_term: 4, last_index: 50 });
    }

    #[test]
    fn a_replica_that_found_no_state_ends_phase_one_with_a_quorum_that_never_ran() {
        let fresh = |index| GroupPosition { recovering: true, ..at(BOOTSTRAP_TERM, BOOTSTRAP_TERM, index) };
        // A first start of three with one node missing: the other found nothing either.
        let mut first = Recovery::new(1).first_start_possible();
        first.hear(2, fresh(3));
        assert_eq!(first.floor_if_ready(&[1, 2, 3]).map(|f| f.last_index), Some(3));
        // A memory node (no exception) waits for both others, whatever they say.
        let mut memory = Recovery::new(1);
        memory.hear(2, fresh(3));
        assert_eq!(memory.floor_if_ready(&[1, 2, 3]), None);
        // A lost disk: the peer that answered holds its log (it does not recover), and its
        // log may be behind the missing one's. Wait for the missing one.
        let mut lost = Recovery::new(1).first_start_possible();
        lost.hear(2, at(5, 5, 40));
        assert_eq!(lost.floor_if_ready(&[1, 2, 3]), None);
        // Nor does a peer that recovers but caught up with entries of a later term count, or a
        // peer that holds only the bootstrap log without recovering (it was down since the
        // start while the others ran: they hold what it does not).
        for peer in
            [GroupPosition { recovering: true, ..at(4, 4, 20) }, at(BOOTSTRAP_TERM, BOOTSTRAP_TERM, 3)]
        {
            let mut r = Recovery::new(1).first_start_possible();
            r.hear(2, peer);
            assert_eq!(r.floor_if_ready(&[1, 2, 3]), None, "{peer:?}");
        }
        // Of five voters, two others that never ran make a quorum with this one (three answers
        // are needed otherwise).
        let five = [1, 2, 3, 4, 5];
        let mut r = Recovery::new(1).first_start_possible();
        r.hear(4, fresh(5));
        assert_eq!(r.floor_if_ready(&five), None, "one of the two");
        r.hear(5, fresh(5));
        assert_eq!(r.floor_if_ready(&five).map(|f| f.last_index), Some(5), "a quorum never ran");
    }
}
