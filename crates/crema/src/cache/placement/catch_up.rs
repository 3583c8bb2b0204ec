//! When a learner has the log and may be promoted to voter (see `cache::placement`).

use crate::consensus::GroupStatus;
use crate::types::NodeId;

/// A learner within this many entries of the commit index is promoted: under load a learner
/// is rarely exactly at the commit index (appends in flight), and a voter that is some entries
/// behind catches up within a few round trips; waiting for an exact match could wait forever
/// on a busy shard.
const CAUGHT_UP_SLACK: u64 = 1024;

/// Whether member `id` of the group whose leader reported `status` has the log: through the
/// group's latest configuration (the entry that made it a learner, or a later one), and within
/// [`CAUGHT_UP_SLACK`] entries of the commit. Nothing acknowledged is never caught up, however
/// short the log: a replica that does not take the leader's messages (a restarted memory node
/// still recovering, or one with a stale view of the group) was promoted at once on a log
/// shorter than the slack, and a voter that cannot vote left the shard one failure from
/// losing its quorum. Nor is a replica that took the first appends and refused the rest (found
/// from outside: a fresh replica replaying the group's first members refused its leader's
/// messages from then on, within the slack of a 1,500-entry log, and was promoted): it never
/// acknowledged its own addition.
pub(super) fn caught_up(status: &GroupStatus, id: NodeId) -> bool {
    status.replica_progress.iter().any(|(p, matched)| {
        *p == id
            && *matched > 0
            && *matched >= status.conf_index
            && matched + CAUGHT_UP_SLACK >= status.commit_index
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{RecoveryState, Role};

    /// A leader's status: commit 2,000, the learner 4 added at `conf_index`, with `matched`.
    fn status(conf_index: u64, matched: u64) -> GroupStatus {
        GroupStatus {
            shard: 1,
            node_id: 1,
            role: Role::Leader,
            term: 2,
            leader_id: Some(1),
            commit_index: 2_000,
            applied_index: 2_000,
            first_index: 1,
            last_index: 2_000,
            log_bytes: 0,
            voters: vec![1, 2, 3],
            learners: vec![4],
            recovery: RecoveryState::Done,
            pending_proposals: 0,
            replica_progress: vec![(2, 2_000), (3, 2_000), (4, matched)],
            conf_index,
            hibernating: false,
        }
    }

    #[test]
    fn a_learner_within_the_slack_that_holds_its_own_addition_is_caught_up() {
        assert!(caught_up(&status(1_990, 1_995), 4));
        assert!(caught_up(&status(900, 2_000 - CAUGHT_UP_SLACK + 1), 4));
    }

    #[test]
    fn a_learner_below_its_own_addition_is_not_caught_up_however_close() {
        // It took appends up to 1,980 and refused the rest: the entry that made it a learner
        // (1,990) never reached it.
        assert!(!caught_up(&status(1_990, 1_980), 4));
    }

    #[test]
    fn nothing_acknowledged_or_far_behind_is_not_caught_up() {
        assert!(!caught_up(&status(0, 0), 4));
        assert!(!caught_up(&status(10, 2_000 - CAUGHT_UP_SLACK - 1), 4));
        assert!(!caught_up(&status(10, 2_000), 5), "not a member");
    }
}
