//! Log writes that run away from a group's loop, and how a write waits out a disk that refuses
//! it.
//!
//! A group hands the changes of its Readies to a [`LogWrite`](super::storage::LogWrite) with a
//! [`WriteTicket`]: the write reports through the ticket once it landed, or once it was given
//! up because the group stops. By default a write runs on a blocking thread of its own; RocksDB's
//! writes go to the node's one log writer instead (`rocks_writer`), which puts every group's
//! pending write in one synced batch.

use std::sync::Arc;
#[cfg(feature = "rocksdb")]
use std::sync::Weak;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::group::GroupShared;

/// How long a write the disk refused waits before it is tried again.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where an off-loop write reports to: its group (which waits for it), the group's stop token
/// (a write the disk refuses is given up once the group stops) and the extra time a slowed disk
/// takes in fault-injection tests.
pub struct WriteTicket {
    shared: Arc<GroupShared>,
    cancel: CancellationToken,
    delay: Duration,
    done: oneshot::Sender<bool>,
}

impl std::fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTicket").field("shard", &self.shared.shard).finish_non_exhaustive()
    }
}

impl WriteTicket {
    pub(crate) fn new(
        shared: Arc<GroupShared>,
        cancel: CancellationToken,
        delay: Duration,
        done: oneshot::Sender<bool>,
    ) -> Self {
        Self { shared, cancel, delay, done }
    }

    /// Tells the group the write landed (`written`) or was given up.
    pub(crate) fn finish(self, written: bool) {
        let _ = self.done.send(written);
    }

    /// Runs `write` on a blocking thread of its own, until it lands or the group stops.
    pub(crate) fn run_alone(self, mut write: impl FnMut() -> raft::Result<()> + Send + 'static) {
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(self.delay);
            let written = write_until_done(&self.shared, &self.cancel, &mut write, std::thread::sleep);
            // The write holds the database: let it go before the loop hears that it landed, so
            // a node stopped right after can be opened again at once (RocksDB's lock).
            drop(write);
            self.finish(written);
        });
    }
}

/// What the node's log writer (`rocks_writer`) asks of a write it holds.
#[cfg(feature = "rocksdb")]
impl WriteTicket {
    /// The extra time the write takes (a slowed disk in fault-injection tests).
    pub(crate) fn delay(&self) -> Duration {
        self.delay
    }

    /// True once the group stops: a write the disk refuses is then given up.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The disk refused the write: the group reports that it cannot persist (its leader steps
    /// down, see the group's tick) until [`Self::recovered`].
    pub(crate) fn failing(&self, error: &dyn std::fmt::Display) {
        note_failing(&self.shared, error);
    }

    /// The disk refused the write again, perhaps for another reason: the group says the latest.
    pub(crate) fn still_failing(&self, error: &dyn std::fmt::Display) {
        self.shared.note_persist_error(error.to_string());
    }

    /// True once the write's group reports that it cannot persist.
    pub(crate) fn reported_failing(&self) -> bool {
        self.shared.persist_failing()
    }

    /// The write landed after failing since `since`.
    pub(crate) fn recovered(&self, since: Instant) {
        note_recovered(&self.shared, since);
    }

    /// The group the write is of.
    pub(crate) fn group(&self) -> Weak<GroupShared> {
        Arc::downgrade(&self.shared)
    }

    /// True when the write is of `group`.
    pub(crate) fn is_of(&self, group: &Weak<GroupShared>) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.shared), group.as_ptr())
    }
}

/// Runs `write` until it succeeds. While the disk refuses it (full, failing) it tries again
/// every [`RETRY_PAUSE`], pausing with `pause`: the group's writes wait, clients time out,
/// nothing is acknowledged, and it goes on once the disk accepts the write. Answers false if the
/// node is stopping meanwhile (nothing that depended on the lost changes was acknowledged).
pub(crate) fn write_until_done(
    shared: &GroupShared,
    cancel: &CancellationToken,
    mut write: impl FnMut() -> raft::Result<()>,
    pause: impl Fn(Duration),
) -> bool {
    let mut failing_since: Option<Instant> = None;
    loop {
        match write() {
            Ok(()) => {
                if let Some(since) = failing_since {
                    note_recovered(shared, since);
                }
                return true;
            }
            Err(e) => {
                if failing_since.is_none() {
                    note_failing(shared, &e);
                    failing_since = Some(Instant::now());
                } else {
                    // The reason may change (the reserve, then the reopen's pause): say the latest.
                    shared.note_persist_error(e.to_string());
                }
                if cancel.is_cancelled() {
                    return false;
                }
                pause(RETRY_PAUSE);
            }
        }
    }
}

fn note_failing(shared: &GroupShared, error: &dyn std::fmt::Display) {
    error!(shard = shared.shard, %error, "cannot persist the raft log; writes wait until the disk accepts them");
    shared.note_persist_error(error.to_string());
    shared.set_persist_failing(true);
}

fn note_recovered(shared: &GroupShared, since: Instant) {
    info!(shard = shared.shard, stalled = ?since.elapsed(), "the raft log is persisted again");
    shared.set_persist_failing(false);
}
