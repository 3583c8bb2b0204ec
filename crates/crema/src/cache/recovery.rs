//! Opening durable storage at start-up and recovering the state machine from it (feature
//! `rocksdb`): the newest valid checkpoint is restored, then Raft replays the committed log after
//! it (raft-rs hands those entries back as committed entries once the group starts).

use std::sync::Arc;
use std::time::Instant;

use raft::eraftpb::Snapshot;
use raft::Storage as _;
use tracing::info;

use crate::checkpoint::CheckpointManager;
use crate::config::CacheConfig;
use crate::consensus::rocks_storage::{open_db, NodeDb, RocksDbStorage};
use crate::consensus::state_machine::CacheStateMachine;
use crate::consensus::storage::LogStore;
use crate::error::{Error, Result};
use crate::types::{NodeId, ShardId};

/// Opens the node's database, `<data_dir>/raft`, which every shard's group shares.
///
/// # Errors
/// `Storage` when it cannot be opened.
pub(crate) fn open_node_db(config: &CacheConfig) -> Result<Arc<NodeDb>> {
    let dir = config.data_dir.as_ref().expect("validated: RocksDB storage has a data dir");
    crate::private_files::ensure_private_dir(dir)?;
    check_recorded(dir, SHARDS_FILE, "shards", u64::from(config.shard_count()))?;
    check_recorded(dir, NODE_FILE, "node-id", config.node_id)?;
    let raft_dir = dir.join("raft");
    crate::private_files::ensure_private_dir(&raft_dir)?;
    open_db(&raft_dir).map_err(|e| Error::Storage(format!("opening {}: {e}", raft_dir.display())))
}

/// The file in the data dir that records how many shards the cluster splits its keys into.
const SHARDS_FILE: &str = "shards";
/// The file in the data dir that records the id of the node it belongs to.
const NODE_FILE: &str = "node";

/// Refuses a data dir that records another value of `flag` than `value` (recording it in one
/// that has none): a data dir belongs to one node of one cluster. Found from outside: a durable
/// node restarted with another `--shards` started, was refused by every peer and answered
/// nothing, for good; two nodes restarted on each other's data dirs ran as if nothing was
/// amiss, each with the other's votes and log.
fn check_recorded(dir: &std::path::Path, file: &str, flag: &str, value: u64) -> Result<()> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(stored) if stored == value => Ok(()),
            Ok(stored) => Err(Error::Storage(format!(
                "{} was written with --{flag} {stored}, and this node was started with --{flag} \
                 {value}: a data dir belongs to one node of one cluster (start it with --{flag} \
                 {stored}, or give this node an empty data dir)",
                dir.display()
            ))),
            Err(_) => Err(Error::Storage(format!("{} does not hold a number", path.display()))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(&path, format!("{value}\n"))
            .map_err(|e| Error::Storage(format!("writing {}: {e}", path.display()))),
        Err(e) => Err(Error::Storage(format!("reading {}: {e}", path.display()))),
    }
}

/// Opens shard `shard`'s log in the node's database `db` and its checkpoints, restores `sm`
/// from the newest valid checkpoint and makes the log agree with it.
///
/// # Errors
/// `Storage` when the database cannot be opened or when no valid checkpoint covers the part of
/// the log that was compacted (the node's disk lost data: it must be removed and added back empty).
pub(crate) fn open_durable(
    config: &CacheConfig,
    shard: ShardId,
    db: Arc<NodeDb>,
    sm: &mut CacheStateMachine,
    (voters, learners): &(Vec<NodeId>, Vec<NodeId>),
) -> Result<(RocksDbStorage, CheckpointManager)> {
    let started = Instant::now();
    let mut store = RocksDbStorage::open_bootstrapped(db, shard, voters, learners)?
        .with_min_free_bytes(config.min_free_disk_bytes);
    let checkpoint_config =
        config.shard_checkpoint_config(shard).expect("durable storage has checkpoint settings");
    if let Some(parent) = checkpoint_config.dir.parent().filter(|_| config.shard_count() > 1) {
        crate::private_files::ensure_private_dir(parent)?;
    }
    crate::private_files::ensure_private_dir(&checkpoint_config.dir)?;
    let mut checkpoints = CheckpointManager::open(checkpoint_config.clone())?;
    let (first, last) = (store.first_index()?, store.last_index()?);
    match checkpoints.load_newest_valid()? {
        Some(cp) => {
            let index = cp.meta.index;
            if index + 1 < first {
                return Err(Error::Storage(format!(
                    "the newest valid checkpoint ({index}) is older than the log, which starts at {first}: \
                     entries between are lost. Move {} (the node's raft log) and {} away and start the node \
                     again: with no log it recovers as a node that lost its disk does, from the peers that kept \
                     theirs, before it votes; what only this node held is lost",
                    store.db_path().display(),
                    checkpoint_config.dir.display()
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
                "the log starts at {first} but {} holds no valid checkpoint (restarted as it is, this replica would \
                 vote with an empty state). Move {} (the node's raft log) and {} away and start the node again: with \
                 no log it recovers as a node that lost its disk does, from the peers that kept theirs, before it \
                 votes; what only this node held is lost",
                checkpoint_config.dir.display(),
                store.db_path().display(),
                checkpoint_config.dir.display()
            )));
        }
        None => {}
    }
    info!(
        shard,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_keeps_the_shard_count_and_node_id_it_was_written_with() {
        let dir = tempfile::tempdir().unwrap();
        check_recorded(dir.path(), SHARDS_FILE, "shards", 16).expect("a new data dir takes the count");
        check_recorded(dir.path(), SHARDS_FILE, "shards", 16).expect("the same count again");
        let refused = check_recorded(dir.path(), SHARDS_FILE, "shards", 64).unwrap_err().to_string();
        assert!(refused.contains("--shards 16, and this node was started with --shards 64"), "{refused}");
        check_recorded(dir.path(), NODE_FILE, "node-id", 2).unwrap();
        assert!(check_recorded(dir.path(), NODE_FILE, "node-id", 3).is_err(), "another node's dir");
        std::fs::write(dir.path().join(SHARDS_FILE), "sixteen").unwrap();
        assert!(
            check_recorded(dir.path(), SHARDS_FILE, "shards", 16).is_err(),
            "an unreadable count is no count"
        );
    }
}
