//! Starting a group: its settings, its raft-rs configuration, the state it publishes from the
//! start, its mailboxes and its task.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::{RawNode, ReadOnlyOption};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointManager;
use crate::config::RaftConfig;
use crate::consensus::admit::WarnThrottle;
use crate::consensus::logger::raft_logger;
use crate::consensus::pending::{Proposals, ReadBatches};
use crate::consensus::recovery::Recovery;
use crate::consensus::state_machine::CacheStateMachine;
use crate::consensus::storage::LogStore;
use crate::error::Result;
use crate::transport::Transport;
use crate::types::{NodeId, ShardId};

use super::{Group, GroupHandle, GroupShared};

/// Settings of one group.
pub(crate) struct GroupSettings {
    pub node_id: NodeId,
    pub shard: ShardId,
    pub raft: RaftConfig,
    pub mailbox_capacity: usize,
    pub read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// With durable storage: checkpoints are taken here and the log is compacted behind them.
    pub checkpoints: Option<CheckpointManager>,
    /// The node starts without the Raft state of its previous life (memory storage, or a
    /// durable node that found its data dir empty; one of several voters): it recovers first
    /// (see `recovery`).
    pub recover: bool,
    /// The replica found no durable state: a first start is possible, and its recovery ends
    /// with a quorum that never ran too (`Recovery::first_start_possible`).
    pub first_start_possible: bool,
    /// The voters whose answers the recovery counts, when the replica starts with an empty
    /// configuration (a member started again: see `cache::replica`); empty: the configuration's.
    pub recovery_voters: Vec<NodeId>,
    /// The replica started empty while the node ran, to join its running group (placement),
    /// or as the member a group counts after its memory node restarted: the log it replays may
    /// hold the removal of an earlier replica of this node, followed by the addition of this
    /// one (see `Group::removal_floor`).
    pub fresh: bool,
    /// Grants no vote while its log is empty: a `--join` node that could not learn whether
    /// the cluster already counts it (no peer answered at its start). Were it a member started
    /// again without its state, a vote from its empty log could elect a peer that lacks
    /// acknowledged writes; a new node needs none of its votes before it holds the group's
    /// state, unless added as a voter while empty to a group that then loses its leader.
    pub votes_only_with_state: bool,
    #[cfg(feature = "fault-injection")]
    pub faults: Option<Arc<crate::faults::Faults>>,
}

/// Starts a group's task over `store` and `sm`; answers its handle and the task to await.
pub(crate) fn spawn_group<S: LogStore>(
    settings: GroupSettings,
    store: S,
    sm: CacheStateMachine,
    transport: Arc<Transport>,
    cancel: CancellationToken,
) -> Result<(GroupHandle, tokio::task::JoinHandle<()>)> {
    let applied = sm.applied_index();
    let cfg = raft::Config {
        id: settings.node_id,
        election_tick: settings.raft.election_tick,
        heartbeat_tick: settings.raft.heartbeat_tick,
        max_size_per_msg: settings.raft.max_size_per_msg,
        max_inflight_msgs: settings.raft.max_inflight_msgs,
        pre_vote: settings.raft.pre_vote,
        check_quorum: settings.raft.check_quorum,
        read_only_option: ReadOnlyOption::Safe,
        applied,
        // See `tell_commit_when_idle`.
        skip_bcast_commit: true,
        ..Default::default()
    };
    cfg.validate()?;
    let mut store = store;
    // Off-loop writes need a blocking thread to hand the write to and block_in_place to wait
    // for one; a current-thread runtime (some tests) writes in the loop.
    let persist_async = store.writes_off_loop()
        && matches!(
            tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
            Ok(tokio::runtime::RuntimeFlavor::MultiThread)
        );
    store.set_snapshot_source(Box::new(sm.snapshot_source()));
    store.set_applied(applied);
    let raw = RawNode::new(&cfg, store, &raft_logger(settings.node_id, settings.shard))?;
    let voters = raw.raft.prs().conf().voters().ids();
    // The only voter (of a new group, or restarted from disk) leads at once instead of after an
    // election timeout, as soon as it applied the committed log (raft-rs refuses to campaign
    // with a conf change, such as a bootstrap entry, still to apply).
    let campaign_when_applied = voters.len() == 1 && voters.contains(settings.node_id);
    let mut settings = settings;
    let checkpoints = settings.checkpoints.take();
    let recovery = settings.recover.then(|| {
        let recovery = match settings.recovery_voters.as_slice() {
            [] => Recovery::new(settings.node_id),
            voters => Recovery::with_voters(settings.node_id, voters.to_vec()),
        };
        if settings.first_start_possible {
            recovery.first_start_possible()
        } else {
            recovery
        }
    });
    let (client_tx, client_rx) = mpsc::channel(settings.mailbox_capacity);
    let (raft_tx, raft_rx) = mpsc::channel(settings.mailbox_capacity);
    let shared = Arc::new(GroupShared::new(settings.shard));
    // A member started again empty knows its group's voters: they, and only they, are heard
    // before its log names them (`Group::unlisted`), as a shard map's members are.
    if !settings.recovery_voters.is_empty() {
        shared.set_map_members(&settings.recovery_voters);
    }
    shared.applied.send_replace(applied);
    shared.term.store(raw.raft.term, Ordering::Release);
    shared.commit.store(raw.raft.raft_log.committed, Ordering::Release);
    shared.recovering.store(recovery.is_some(), Ordering::Release);
    shared.last_term.store(raw.raft.raft_log.last_term(), Ordering::Release);
    shared.last_index.store(raw.raft.raft_log.last_index(), Ordering::Release);
    let reports = raft_tx.clone();
    let handle = GroupHandle {
        shared: shared.clone(),
        client_tx,
        raft_tx,
        #[cfg(feature = "fault-injection")]
        faults: settings.faults.clone(),
    };
    let group = Group {
        raw,
        sm,
        shared,
        transport,
        proposals: Proposals::default(),
        gathered: Vec::new(),
        in_flight: std::collections::VecDeque::new(),
        reads: ReadBatches::default(),
        client_rx,
        raft_rx,
        settings,
        recovery,
        started: Instant::now(),
        warned_stuck: false,
        reject_warnings: WarnThrottle::default(),
        campaign_when_applied,
        checkpoints,
        checkpoint_job: None,
        snapshot_transfers: 0,
        cancel: cancel.clone(),
        halted: false,
        removed: false,
        persist_async,
        writes_lost: false,
        commit_told: (0, std::collections::HashMap::new()),
        persist_jobs: std::collections::VecDeque::new(),
        unpersisted: std::collections::VecDeque::new(),
        hibernating: false,
        quiet_ticks: 0,
        reports,
        removal_floor: None,
        catch_up_leader: None,
    };
    group.publish_voters();
    let task = tokio::spawn(group.run(cancel));
    Ok((handle, task))
}
