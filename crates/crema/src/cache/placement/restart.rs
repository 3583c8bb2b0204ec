//! A node's replicas that the map gives it and it does not hold (see `cache::placement`):
//! started empty for a move to this node, or, on a memory node that restarted, as the member
//! its group may still count, to recover before it votes (`consensus::recovery`); and, on such
//! a node, the replicas of shards moving away from it that their groups still count.

use tracing::{error, info, warn};

use super::Placement;
use crate::multiraft::{ShardPlacement, ShardState};
use crate::transport::envelope::{RemoteAnswer, RemoteRead};
use crate::types::{NodeId, ShardId};

impl Placement {
    /// Starts this node's replicas of `shards`, which the map gives it and it does not hold:
    /// empty, for the shard's leader to add (a move to this node), or, on a memory node, as
    /// the member its group may already count (this node restarted: see `cache::start`), with
    /// the group's members, to recover before it votes (`consensus::recovery`).
    ///
    /// A memory node asks about each shard (a read-index round, a holder's), each ask up to the
    /// request timeout, all shards at once: found from outside, asked one after another, a
    /// shard no member answered for (all of them restarted) held back, look after look, every
    /// shard after it, and shards whose other members were up never started, for good.
    pub(super) async fn start_replicas(&self, shards: &[ShardId]) {
        if !self.starts_members {
            for &shard in shards {
                if let Err(e) = self.replicas.join(shard) {
                    warn!(shard, error = %e, "a replica the shard map gives this node did not start");
                }
            }
            return;
        }
        // The map read may be one the meta replica is still replaying (a restarted node goes
        // through the first map on its way): read it again once the replica applied what the
        // meta shard had committed.
        let Some(map) = self.current_map().await else { return };
        let starts = shards.iter().filter_map(|&shard| {
            let placement = map.shard(shard).filter(|p| p.members.contains(&self.node_id))?;
            Some(self.start_member(shard, placement))
        });
        futures_util::future::join_all(starts).await;
    }

    /// Starts this memory node's replica of `shard`, a member in the map (see
    /// `start_replicas`); when nobody answered, the next look tries again.
    async fn start_member(&self, shard: ShardId, placement: &ShardPlacement) {
        let first_members = (placement.members.clone(), Vec::new());
        let started = if self.initial.as_ref().and_then(|first| first.shard(shard)) == Some(placement) {
            // Unchanged since the first map (same epoch): so are its group's members.
            self.replicas.rejoin(shard, &first_members, true)
        } else {
            // As its leader has them; else (no leader: the restart of a member may be what it
            // waits for) as a holder has applied them.
            let members = match self.members_of(shard, true).await {
                Some(members) => Some(members),
                None => self.members_of(shard, false).await,
            };
            match members {
                Some(conf) if conf.0.contains(&self.node_id) || conf.1.contains(&self.node_id) => {
                    self.replicas.rejoin(shard, &conf, false)
                }
                // Not counted yet: a move to this node, whose leader adds it once it is here.
                Some(_) => self.replicas.join(shard),
                // Every member lost its replica (their memory nodes restarted at once): the
                // group starts over from the members the map names, as a first start does.
                // Only once its move settled: the group's voters were the map's members then,
                // while a moving group may count a node the map no longer names.
                None if placement.state == ShardState::Active
                    && self.no_member_holds(shard, &placement.members).await =>
                {
                    error!(
                        shard,
                        members = ?placement.members,
                        "none of the shard's members holds a replica of it (they restarted with memory storage \
                         at once): it starts again empty with them; what it held is lost"
                    );
                    self.replicas.rejoin(shard, &first_members, true)
                }
                None => return, // No holder answered: next look.
            }
        };
        if let Err(e) = started {
            warn!(shard, error = %e, "a replica the shard map gives this node did not start");
        }
    }

    /// Whether every other member of `shard` in `members` answered that it holds no replica of
    /// it (a member that is down, or holds one, keeps this node waiting).
    async fn no_member_holds(&self, shard: ShardId, members: &[NodeId]) -> bool {
        let asks = members.iter().filter(|id| **id != self.node_id).map(|&id| async move {
            let only = crate::cache::remote::Targets::only(id);
            let answer =
                self.asker().ask(only, shard, RemoteRead::Replica { not_member: false }, false).await;
            matches!(answer, Ok(RemoteAnswer::Replica { held: false, .. }))
        });
        futures_util::future::join_all(asks).await.into_iter().all(|empty| empty)
    }

    /// Starts this memory node's replicas of `shards`, which are moving away from it in the
    /// map (not members) and of which it holds none, where the shard's leader answers that its
    /// group still counts this node as a voter: the node restarted while the move was under
    /// way, and until the move removes it (its replica is then retired like any removed one),
    /// the group's quorum counts it. Found from outside: a memory node killed as the leader of
    /// a shard moving away from it came back without that replica while its group still had
    /// four voters (the move could not remove it without it), so the next kill of another
    /// member left the shard without a quorum for 10 s, twice, though `/cluster` listed two of
    /// its three members alive. Asked again at every look for two minutes after the start,
    /// then twice a minute (`may_ask_leaving`): an answer may come from a replica that does not
    /// know its group's members yet (no voters: not taken for an answer), and a group with no
    /// leader answers nothing.
    pub(super) async fn rejoin_leaving(&self, shards: &[ShardId]) {
        let starts = shards.iter().map(|&shard| async move {
            let Some(conf) = self.members_of(shard, true).await else { return };
            if !conf.0.contains(&self.node_id) {
                return;
            }
            info!(shard, voters = ?conf.0, "the shard moves away from this node, whose replica its group still counts: it starts again until the move removes it");
            if let Err(e) = self.replicas.rejoin(shard, &conf, false) {
                warn!(shard, error = %e, "a replica the shard's group still counts did not start");
            }
        });
        futures_util::future::join_all(starts).await;
    }

    /// Whether to ask about `shard`, moving away from this node, now (see `REJOIN_WINDOW`); if
    /// so, the ask is recorded.
    pub(super) fn may_ask_leaving(&self, shard: ShardId) -> bool {
        let mut asked = self.leaving_asked.lock().expect("leaving_asked poisoned");
        let now = std::time::Instant::now();
        let due = self.began.elapsed() < super::REJOIN_WINDOW
            || asked.get(&shard).is_none_or(|at| now.duration_since(*at) >= super::REJOIN_PACE);
        if due {
            asked.insert(shard, now);
        }
        due
    }
}
