//! The members a restarted memory node's meta replica starts with.
//!
//! A memory node keeps nothing and cannot tell a restart from a first start. The meta shard's
//! members may have changed since the first map (shard 0 moved, a node replaced), and a replica
//! started with the first ones would wait for answers from voters that left (recovery needs
//! `N - q + 1` of the voters it knows: `consensus::recovery`) and refuse a leader that joined
//! later, for good. So, before its meta replica starts, the node opens its transport and
//! listens to its seeds' handshakes: when one reports a meta shard that has committed entries
//! and is not recovering itself, the cluster runs, and the node asks those seeds for the meta
//! shard's members, as its leader has them after a read-index round, else as a holder applied
//! them (no leader: the meta shard may be waiting for this very node). The meta replica then
//! starts with those members and recovers as before; or empty, for the leader to add, when the
//! group no longer counts this node. When every seed has spoken and none runs a meta shard
//! that committed anything (a first start, or the whole cluster restarting), or after half an
//! election timeout (seeds not up yet), it starts with the first map's members, as before.
//!
//! A durable node that finds its data dir empty asks too (a first start, or a lost disk): when
//! the cluster runs, it starts as a memory node does; else from the first map (`cache::start`).
//!
//! Data shards are started later, the same way, by placement (`Placement::start_replica`).

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::dispatch::Dispatcher;
use super::remote::{Asker, Targets};
use super::replica::Conf;
use super::split::META_SHARD;
use crate::config::CacheConfig;
use crate::transport::envelope::{RemoteAnswer, RemoteRead};
use crate::transport::Transport;
use crate::types::NodeId;

/// How often the seeds' handshakes are looked at while waiting for them.
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// The meta shard's members as the running cluster has them; `None` when no seed runs a meta
/// shard that committed anything, or none said with whom. The transport must be open, with the
/// dispatcher attached, so that the handshakes and answers arrive.
pub(super) async fn meta_members_now(
    config: &CacheConfig,
    transport: &Transport,
    dispatcher: &Dispatcher,
) -> Option<Conf> {
    let raft = &config.raft;
    let seeds: Vec<NodeId> = config.seed_nodes.iter().map(|(id, _)| *id).collect();
    // A `--join` node waits longer: it can do nothing before a running peer answers, and one
    // that hears none cannot tell a first start from a restart as a member (its replicas then
    // vote only once they hold state: `GroupSettings::votes_only_with_state`).
    let patience = Instant::now()
        + if config.join {
            (raft.election_timeout() * 5).max(Duration::from_secs(2))
        } else {
            raft.election_timeout() / 2
        };
    let running = loop {
        let heard: Vec<_> = seeds.iter().map(|id| (*id, dispatcher.positions_of(*id))).collect();
        let running: Vec<NodeId> = (heard.iter())
            .filter(|(_, positions)| {
                positions.iter().flatten().any(|p| p.shard == META_SHARD && p.commit > 0 && !p.recovering)
            })
            .map(|(id, _)| *id)
            .collect();
        if !running.is_empty() {
            break running;
        }
        if heard.iter().all(|(_, positions)| positions.is_some()) || Instant::now() >= patience {
            return None;
        }
        tokio::time::sleep(LOOK_EVERY).await;
    };
    for linearizable in [true, false] {
        let asker = Asker {
            me: config.node_id,
            transport,
            reads: &dispatcher.remote_reads,
            timeout: if linearizable { config.request_timeout } else { raft.election_timeout() },
            tick: raft.tick_interval(),
            patience: raft.election_timeout(),
        };
        let asked = asker.ask(Targets::among(running.clone()), META_SHARD, RemoteRead::Members, linearizable);
        if let Ok(RemoteAnswer::Members { voters, learners }) = asked.await {
            info!(
                ?voters,
                ?learners,
                linearizable,
                "the meta shard's members, as the running cluster has them"
            );
            return Some((voters, learners));
        }
    }
    warn!(seeds = ?running, "seeds run the meta shard but none said with whom: it starts with the first map's members");
    None
}
