//! The Ready's log writes (see `group`): in the loop where the store syncs nothing or the
//! runtime cannot hand a write over, else off the loop (`LogStore::take_write`), in order, with
//! the messages that must wait for them; and how the loop waits out a disk that refuses writes.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{blocking, Group, PersistJob};
use crate::consensus::persist::{write_until_done, WriteTicket};
use crate::consensus::storage::LogStore;

impl<S: LogStore> Group<S> {
    /// Writes the store's pending changes in the loop, durably where Raft needs them durable
    /// (see `LogStore::flush`), retrying as `write_until_done` does. Answers false if the node
    /// is stopping meanwhile (the group then halts).
    pub(super) fn persist(&mut self) -> bool {
        self.persist_with(false)
    }

    /// As `persist`, after the write in flight, and everything written so far is made durable,
    /// the commit index included (`LogStore::sync`): before a checkpoint, and when the node
    /// leaves the group.
    pub(super) fn persist_all(&mut self) -> bool {
        self.settle_persist() && self.persist_with(true)
    }

    pub(super) fn persist_with(&mut self, all: bool) -> bool {
        if self.writes_lost {
            return false;
        }
        if !all && !self.raw.store().has_unflushed() {
            return true;
        }
        if !all && self.persist_async && !self.raw.store().flush_syncs() {
            // Changes Raft does not need durable (a commit index, a compaction) wait in the
            // store for the next synced write, or for `persist_all`: written alone they cost a
            // database write per Ready of every group.
            return true;
        }
        let delay = self.disk_delay();
        let store = self.raw.mut_store();
        let written = write_until_done(
            &self.shared,
            &self.cancel,
            || {
                // Only a write that waits for the disk moves off the runtime worker: handing the
                // worker over costs a thread wake-up, more than an unsynced write takes.
                match (all, store.flush_syncs()) {
                    (true, _) => blocking(|| store.sync()),
                    (false, true) => blocking(|| {
                        std::thread::sleep(delay);
                        store.flush()
                    }),
                    (false, false) => store.flush(),
                }
            },
            |pause| blocking(|| std::thread::sleep(pause)),
        );
        if !written {
            self.halted = true;
            self.writes_lost = true;
        }
        written
    }

    /// The extra time a synced log write takes here: a slowed disk in fault-injection tests
    /// (`Faults::slow_disk`), else none.
    pub(super) fn disk_delay(&self) -> Duration {
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.settings.faults {
            return faults.disk_delay(self.settings.node_id);
        }
        Duration::ZERO
    }

    /// Whether this Ready's changes go to a write off the loop: always while one is in flight
    /// (they land after it), and when they need an fsync. Changes that need none wait in the
    /// store for the next write (see `persist_with`).
    pub(super) fn write_off_loop(&mut self) -> bool {
        !self.persist_jobs.is_empty() || self.raw.store().flush_syncs()
    }

    /// Hands what the store holds for the Readies in `unpersisted` not yet handed over to one
    /// write off the loop. With nothing to write (their changes needed no disk), they are
    /// persisted now, or, behind writes still in flight, once those land.
    pub(super) fn start_persist(&mut self) {
        let Some(&(number, _)) = self.unpersisted.back() else { return };
        if self.persist_jobs.back().is_some_and(|job| job.number >= number) {
            return;
        }
        let (tx, done) = oneshot::channel();
        match self.raw.mut_store().take_write() {
            Some(write) => {
                let ticket =
                    WriteTicket::new(self.shared.clone(), self.cancel.clone(), self.disk_delay(), tx);
                write.start(ticket);
            }
            None if self.persist_jobs.is_empty() => return self.persisted_through(number),
            None => {
                let _ = tx.send(true);
            }
        }
        self.persist_jobs.push_back(PersistJob { number, done });
    }

    /// The oldest write in flight landed (`written`) or was given up as the node stops.
    pub(super) fn on_persisted(&mut self, number: u64, written: bool) {
        self.persist_jobs.pop_front();
        if !written {
            self.lose_writes();
            return;
        }
        self.persisted_through(number);
        // Readies advanced while it ran: their changes go next.
        self.start_persist();
    }

    /// A write was given up (the node stops while the disk refuses it): the group halts, waits
    /// for the writes it handed over after it (given up too; until they are answered they hold
    /// the database) and writes nothing more.
    pub(super) fn lose_writes(&mut self) {
        self.halted = true;
        self.writes_lost = true;
        for job in std::mem::take(&mut self.persist_jobs) {
            let _ = blocking(|| job.done.blocking_recv());
        }
    }

    /// Tells raft-rs that the Readies up to `number` are durable and sends what they held.
    pub(super) fn persisted_through(&mut self, number: u64) {
        // A leader that applied its own removal has no progress of its own any more, which
        // raft-rs unwraps when told its entries are durable (found from outside: removing the
        // leader of a RocksDB cluster under writes panicked it, 3 times in 4). Its group stops;
        // what it sends after is nothing anyone waits for.
        let raft = &self.raw.raft;
        let removed_leader = raft.state == raft::StateRole::Leader && raft.prs().get(raft.id).is_none();
        if !removed_leader {
            self.raw.on_persist_ready(number);
        }
        let mut held = Vec::new();
        while self.unpersisted.front().is_some_and(|(n, _)| *n <= number) {
            let (_, msgs) = self.unpersisted.pop_front().expect("checked above");
            held.extend(msgs);
        }
        if !held.is_empty() {
            self.send(held);
        }
    }

    /// Waits for the write in flight, then writes in the loop what later Readies left in the
    /// store: afterwards everything raft-rs was handed is durable and announced. False if the
    /// node stops meanwhile (the group then halts).
    pub(super) fn settle_persist(&mut self) -> bool {
        if self.writes_lost {
            return false;
        }
        while let Some(job) = self.persist_jobs.pop_front() {
            let written = blocking(|| job.done.blocking_recv()).unwrap_or(false);
            if !written {
                self.lose_writes();
                return false;
            }
            self.persisted_through(job.number);
        }
        if let Some(&(last, _)) = self.unpersisted.back() {
            if !self.persist() {
                return false;
            }
            self.persisted_through(last);
        }
        true
    }
}
