//! A shard's background work on this node: reclaiming expired entries, and (while this node
//! leads the shard) proposing the evictions its policy chooses.

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::storage::{unix_now_ms, CacheStorage};
use crate::consensus::command::{CacheCommand, StampedCommand};
use crate::consensus::group::GroupHandle;

/// Most keys one `Evict` command carries.
const EVICT_BATCH: usize = 1024;

/// Most bytes of keys in one eviction entry (keys may be up to `max_key_bytes` each).
const EVICT_BATCH_BYTES: usize = 1024 * 1024;
/// The leader's evictor tends its policy this often while victims come, backing off to
/// `POLICY_PAUSE_MAX` while none do (hundreds of idle shards must cost nothing).
const POLICY_PAUSE_MIN: Duration = Duration::from_millis(100);
const POLICY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The leader's evictor (see `cache::storage`): while this node leads it keeps the eviction
/// policy and proposes the keys the policy drops as `Evict` commands, one at a time; when it
/// stops leading it drops the policy, which the next leader rebuilds from its own entries.
/// Nothing runs for an unbounded cache.
pub(super) async fn evict(storage: CacheStorage, group: GroupHandle, cancel: CancellationToken) {
    let Some(wake) = storage.eviction_wake() else {
        // An unbounded cache has nothing to evict; the task still lives as long as the node,
        // since the supervisor reads an essential task that ends on its own as a failure.
        cancel.cancelled().await;
        return;
    };
    let mut leading = false;
    let mut pause = POLICY_PAUSE_MIN;
    loop {
        // Registered before leadership is read, so a change in between is not missed.
        let changed = group.shared.leader_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if group.shared.is_leader() == leading {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => pause = POLICY_PAUSE_MIN,
                _ = &mut changed => {}
                // The policy's own pending work is done on this beat, while leading: often
                // while victims come, seldom when idle (a follower has no policy to tend).
                _ = tokio::time::sleep(pause), if leading => pause = (pause * 2).min(POLICY_PAUSE_MAX),
            }
        }
        if group.shared.is_leader() != leading {
            pause = POLICY_PAUSE_MIN;
            leading = !leading;
            if leading {
                let filling = storage.clone();
                let started = std::time::Instant::now();
                let Ok(held) = tokio::task::spawn_blocking(move || filling.activate_policy()).await else {
                    return;
                };
                tracing::debug!(
                    held,
                    took_ms = started.elapsed().as_millis() as u64,
                    "eviction policy filled"
                );
            } else {
                storage.deactivate_policy();
            }
        }
        if !leading {
            continue;
        }
        storage.run_policy_tasks();
        loop {
            let keys = storage.take_victims(EVICT_BATCH, EVICT_BATCH_BYTES);
            if keys.is_empty() {
                break;
            }
            pause = POLICY_PAUSE_MIN;
            let command = StampedCommand::new(unix_now_ms(), CacheCommand::Evict { keys: keys.clone() });
            let proposed = tokio::select! {
                _ = cancel.cancelled() => return,
                proposed = group.propose(Bytes::from(command.encode())) => proposed,
            };
            if let Err(e) = proposed {
                // Still leading: try again on the next tick. Deposed: the policy is dropped.
                tracing::debug!(error = %e, keys = keys.len(), "eviction not committed");
                storage.return_victims(keys);
                break;
            }
        }
    }
}

/// Reclaims expired entries in the background: every second, or less often when a pass takes
/// long (a pass walks every entry, so it is spaced to at most ~5% of one core).
pub(super) async fn sweep_expired(storage: CacheStorage, cancel: CancellationToken) {
    let mut pause = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        if !storage.may_expire() {
            // Nothing can have expired: no blocking-pool trip (idle shards must cost nothing).
            continue;
        }
        let started = std::time::Instant::now();
        let purging = storage.clone();
        let Ok(purged) = tokio::task::spawn_blocking(move || purging.purge_expired()).await else {
            return;
        };
        let took = started.elapsed();
        pause = (took * 20).max(Duration::from_secs(1));
        if purged > 0 {
            tracing::debug!(purged, took_ms = took.as_millis() as u64, "expired entries reclaimed");
        }
    }
}
