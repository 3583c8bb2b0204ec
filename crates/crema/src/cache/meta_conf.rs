//! The members a restarted memory node's meta replica starts with.
//!
//! A memory node keeps nothing and cannot tell a restart from a first start. The meta shard's
//! members may have changed since the first map (shard 0 moved, a node replaced), and a replica
//! started with the first ones would wait for answers from voters that left (recovery needs
//! `N - q + 1` of the voters it knows: `consensus::recovery`) and refuse a leader that joined
//! later, for good. So, before its meta replica starts, the node opens its transport and
//! listens to its seeds' handshakes: when one reports a meta shard that has committed entries
//! past the bootstrap log and is not recovering itself, the cluster runs, and the node asks
//! those seeds for the meta shard's members, as its leader has them after a read-index round,
//! else as a holder applied them (no leader: the meta shard may be waiting for this very
//! node). The meta replica then
//! starts with those members and recovers as before; or empty, for the leader to add, when the
//! group no longer counts this node. When every seed has spoken and none runs a meta shard
//! that committed anything (a first start, or the whole cluster restarting), or after half an
//! election timeout (seeds not up yet), it starts with the first map's members, as before.
//! It keeps looking while that replica recovers ([`keep_asking`]): should a seed run the meta
//! shard after all (its handshake came late: found from outside on a loaded machine), the
//! replica learns the members from it (`GroupHandle::learn_members`): its recovery counts
//! their answers, and their leader is heard before the replayed log names it, a node added
//! since the first map perhaps. With one shard, the meta shard is the only one, and a node
//! asks the same way.
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
        let running = running_seeds(config, dispatcher);
        if !running.is_empty() {
            break running;
        }
        let heard = config.seed_nodes.iter().all(|(id, _)| dispatcher.positions_of(*id).is_some());
        if heard || Instant::now() >= patience {
            return None;
        }
        tokio::time::sleep(LOOK_EVERY).await;
    };
    let members = ask_members(config, transport, dispatcher, &running).await;
    if members.is_none() {
        warn!(seeds = ?running, "seeds run the meta shard but none said with whom: it starts with the first map's members");
    }
    members
}

/// The seeds whose handshake reports a meta shard that committed entries and is not
/// recovering, past the bootstrap log (a leader was elected: a new cluster whose first nodes
/// have not elected yet has nothing to tell, and a read there would wait for a leader. Found
/// in CI: the third node of a new one-shard cluster asked for 5 s, and the test's wait for a
/// leader ran out).
fn running_seeds(config: &CacheConfig, dispatcher: &Dispatcher) -> Vec<NodeId> {
    use crate::consensus::storage::BOOTSTRAP_TERM;
    (config.seed_nodes.iter())
        .map(|(id, _)| *id)
        .filter(|id| {
            let positions = dispatcher.positions_of(*id);
            positions.iter().flatten().any(|p| {
                p.shard == META_SHARD && p.commit > 0 && !p.recovering && p.last_term > BOOTSTRAP_TERM
            })
        })
        .collect()
}

/// Asks `running` for the meta shard's members: as its leader has them after a read-index
/// round, else as a holder applied them.
async fn ask_members(
    config: &CacheConfig,
    transport: &Transport,
    dispatcher: &Dispatcher,
    running: &[NodeId],
) -> Option<Conf> {
    let raft = &config.raft;
    for linearizable in [true, false] {
        let asker = Asker {
            me: config.node_id,
            transport,
            reads: &dispatcher.remote_reads,
            timeout: if linearizable { config.request_timeout } else { raft.election_timeout() },
            tick: raft.tick_interval(),
            patience: raft.election_timeout(),
        };
        let asked =
            asker.ask(Targets::among(running.to_vec()), META_SHARD, RemoteRead::Members, linearizable);
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
    None
}

/// Keeps looking, while the meta replica `meta` recovers, for a seed that runs the meta shard,
/// after the replica started with the first map's members because none answered in time
/// ([`meta_members_now`]); tells the replica the members it answers, and links to those this
/// node does not know (the group's leader may be one). Then waits for `cancel`: it runs as one
/// of the node's essential tasks.
pub(super) async fn keep_asking(
    config: CacheConfig,
    transport: std::sync::Arc<Transport>,
    dispatcher: std::sync::Arc<Dispatcher>,
    meta: crate::consensus::group::GroupHandle,
    cancel: tokio_util::sync::CancellationToken,
) {
    let every = config.raft.election_timeout() / 2;
    while meta.shared.recovering() && !cancel.is_cancelled() {
        let running = running_seeds(&config, &dispatcher);
        if !running.is_empty() {
            if let Some((voters, learners)) = ask_members(&config, &transport, &dispatcher, &running).await {
                for id in voters.iter().chain(&learners) {
                    transport.add_peer(*id, None);
                }
                let _ = meta.learn_members(voters, learners).await;
                break;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    cancel.cancelled().await;
}
