//! Opening durable storage at start-up and recovering the state machine from it (feature
//! `rocksdb`): the newest valid checkpoint is restored, then Raft replays the committed log after
//! it (raft-rs hands those entries back as committed entries once the group starts).

use std::time::Instant;

use raft::eraftpb::Snapshot;
use raft::Storage as _;
use tracing::info;

use crate::checkpoint::CheckpointManager;
use crate::config::CacheConfig;
use crate::consensus::rocks_storage::{open_db, RocksDbStorage};
use crate::consensus::state_machine::CacheStateMachine;
use crate::consensus::storage::LogStore;
use crate::error::{Error, Result};
use crate::types::DEFAULT_SHARD;

/// Opens `<data_dir>/raft` and the checkpoints, restores `sm` from the newest valid checkpoint
/// and makes the log agree with it.
///
/// # Errors
/// `Storage` when the database cannot be opened or when no valid checkpoint covers the part of
/// the log that was compacted (the node's disk lost data; wipe it and rejoin).
pub(crate) fn open_durable(
    config: &CacheConfig,
    sm: &mut CacheStateMachine,
) -> Result<(RocksDbStorage, CheckpointManager)> {
    let started = Instant::now();
    let dir = config.data_dir.as_ref().expect("validated: RocksDB storage has a data dir");
    crate::private_files::ensure_private_dir(dir)?;
    let raft_dir = dir.join("raft");
    crate::private_files::ensure_private_dir(&raft_dir)?;
    let db =
        open_db(&raft_dir).map_err(|e| Error::Storage(format!("opening {}: {e}", raft_dir.display())))?;
    let voters = if config.join { Vec::new() } else { config.initial_voters() };
    let mut store =
        RocksDbStorage::open(db, DEFAULT_SHARD, &voters)?.with_min_free_bytes(config.min_free_disk_bytes);
    let checkpoint_config = config.checkpoint_config().expect("durable storage has checkpoint settings");
    crate::private_files::ensure_private_dir(&checkpoint_config.dir)?;
    let mut checkpoints = CheckpointManager::open(checkpoint_config.clone())?;
    let (first, last) = (store.first_index()?, store.last_index()?);
    match checkpoints.load_newest_valid()? {
        Some(cp) => {
            let index = cp.meta.index;
            if index + 1 < first {
                return Err(Error::Storage(format!(
                    "the newest valid checkpoint ({index}) is older than the log, which starts at {first}: \
                     entries between are lost; wipe {} and let the node rejoin",
                    dir.display()
                )));
            }
            sm.restore(index, &cp.data).map_err(|e| Error::Storage(format!("checkpoint {index}: {e}")))?;
            if index > last {
                // The checkpoint was written (a received snapshot) but the log was not yet moved
                // past it when the node stopped: do it now.
                let mut snapshot = Snapshot::default();
                let meta = snapshot.mut_metadata();
                meta.index = index;
                meta.term = cp.meta.term;
                meta.set_conf_state(cp.meta.conf_state.clone());
                store.apply_snapshot(&snapshot)?;
            } else if store.hard_state().commit < index {
                // Applied means committed; the lazily written commit index may lag.
                store.set_commit(index)?;
            }
            store.flush()?;
        }
        None if first > 1 => {
            return Err(Error::Storage(format!(
                "the log starts at {first} but {} holds no valid checkpoint: wipe {} and let the node rejoin",
                checkpoint_config.dir.display(),
                dir.display()
            )));
        }
        None => {}
    }
    info!(
        checkpoint = sm.applied_index(),
        log_first = store.first_index()?,
        log_last = store.last_index()?,
        commit = store.hard_state().commit,
        term = store.hard_state().term,
        elapsed = ?started.elapsed(),
        "durable state recovered; the committed log after the checkpoint is replayed next"
    );
    Ok((store, checkpoints))
}
