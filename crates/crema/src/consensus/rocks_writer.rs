//! The node's log writer: one thread per RocksDB database that writes the off-loop log writes
//! of every group on the node (`LogStore::take_write`) together.
//!
//! Each group keeps one write in flight. Written each on a blocking thread of its own, the
//! writes of 16 shards met in RocksDB's write group, which does merge them into one WAL write and
//! one fsync, but paid for it in threads: every write woke a blocking thread, its writers waited
//! for each other in RocksDB's write queue (spinning, then sleeping on a futex), and each one
//! woke its group when done. With 16 shards a durable write cost four times the CPU it cost with
//! one (docs/performance.md). Here the writes go to one thread instead: whatever the groups
//! handed over while the previous batch was on disk goes in one `WriteBatch` and one write,
//! synced when any of them needs it (RocksDB's log is written in order, so the sync makes the
//! unsynced ones in the batch durable too). This is the "async write" stage of TiKV's raftstore
//! (its store writers), which no crate provides for raft-rs.
//!
//! The writes of one group land in the order it handed them over (one queue, one thread), so a
//! group hands each Ready's write over at once (`LogStore::pipelines_writes`) and it can go in
//! the next batch: had it waited for its previous write to land, the next batch would already
//! be on its way with the other groups' writes, and each of its writes would wait for two.
//!
//! A write the disk refuses is retried every `RETRY_PAUSE` for every group in the batch (each
//! reports that it cannot persist); a group that stops meanwhile gives its write up, and with it
//! every later write it handed over (written without the earlier one, its log would have a gap).
//! The thread
//! holds the database only while it writes a batch: it lets go of it before any group hears that
//! its write landed, and it ends when the database is dropped.

use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::Instant;

use rocksdb::{WriteBatch, WriteOptions};
use tracing::error;

use super::group::GroupShared;
use super::log_mark::MARK_KEY;
use super::node_db::{add_ops, ops_bytes, room_above_reserve, NodeDb, Op};
use super::persist::{WriteTicket, RETRY_PAUSE};

/// One group's write, handed to the node's log writer.
pub(super) struct Job {
    pub db: Arc<NodeDb>,
    pub ops: Vec<Op>,
    pub sync: bool,
    pub min_free_bytes: u64,
    pub ticket: WriteTicket,
}

/// The queue to the node's log writer thread, started with the first write.
#[derive(Default)]
pub(super) struct NodeWriter {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

impl NodeWriter {
    /// Hands `job` to the writer thread.
    pub fn submit(&self, job: Job) {
        let mut queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let sender = queue.get_or_insert_with(spawn);
        if let Err(mpsc::SendError(job)) = sender.send(job) {
            // The thread is gone only if it panicked, and then it aborted the process.
            job.ticket.finish(false);
        }
    }
}

fn spawn() -> mpsc::Sender<Job> {
    let (sender, queue) = mpsc::channel();
    std::thread::Builder::new()
        .name("crema-log-writer".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&queue)));
            if ran.is_err() {
                // Every group of the node waits for this thread: a node whose log cannot be
                // written must not go on answering on its ports.
                error!("the node's raft log writer panicked; stopping the process");
                std::process::abort();
            }
        })
        .expect("spawning the raft log writer thread");
    sender
}

/// Writes batches until the database (which holds the queue's sender) is dropped.
fn run(queue: &mpsc::Receiver<Job>) {
    let mut given_up = GivenUp::default();
    while let Ok(first) = queue.recv() {
        write_jobs(vec![first], queue, &mut given_up);
    }
}

/// The groups that gave up a write: their later writes are given up too.
#[derive(Default)]
struct GivenUp(Vec<Weak<GroupShared>>);

impl GivenUp {
    fn holds(&self, ticket: &WriteTicket) -> bool {
        self.0.iter().any(|group| ticket.is_of(group))
    }

    fn add(&mut self, ticket: &WriteTicket) {
        self.0.retain(|group| group.strong_count() > 0);
        self.0.push(ticket.group());
    }
}

/// Writes `jobs` and whatever else is queued as one batch until it lands. While the disk
/// refuses it, what arrives meanwhile joins the batch, and a group that stops gets its writes
/// back as given up.
fn write_jobs(mut jobs: Vec<Job>, queue: &mpsc::Receiver<Job>, given_up: &mut GivenUp) {
    let mut failing_since: Option<Instant> = None;
    loop {
        jobs.extend(queue.try_iter());
        let (gone, kept): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| given_up.holds(&j.ticket) || (failing_since.is_some() && j.ticket.cancelled()));
        for job in &gone {
            given_up.add(&job.ticket);
        }
        finish(gone, false);
        jobs = kept;
        if jobs.is_empty() {
            return;
        }
        let delay = jobs.iter().map(|j| j.ticket.delay()).max().unwrap_or_default();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let e = match write_batch(&jobs) {
            Ok(count) => {
                let rest = jobs.split_off(count);
                landed(std::mem::replace(&mut jobs, rest), &jobs, failing_since);
                if jobs.is_empty() {
                    return;
                }
                // The rest goes in the next batch, with the room left then.
                continue;
            }
            Err(e) => e,
        };
        if failing_since.is_none() {
            failing_since = Some(Instant::now());
        }
        for job in &jobs {
            if job.ticket.reported_failing() {
                job.ticket.still_failing(&e);
            } else {
                job.ticket.failing(&e);
            }
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// The `done` jobs landed: their groups hear it, and a group that reported it could not
/// persist, with no write among the `waiting` ones, persists again.
fn landed(done: Vec<Job>, waiting: &[Job], failing_since: Option<Instant>) {
    if let Some(since) = failing_since {
        for job in &done {
            let waits = waiting.iter().any(|w| w.ticket.is_of(&job.ticket.group()));
            if job.ticket.reported_failing() && !waits {
                job.ticket.recovered(since);
            }
        }
    }
    finish(done, true);
}

/// Tells the jobs' groups how their writes ended, after letting go of the database: a node
/// stopped right after can then open it again at once (RocksDB's lock).
fn finish(jobs: Vec<Job>, written: bool) {
    let tickets: Vec<WriteTicket> = jobs.into_iter().map(|job| job.ticket).collect();
    for ticket in tickets {
        ticket.finish(written);
    }
}

/// One attempt to write the jobs' changes in one batch: as many of them, from the first, as
/// fit in the disk's room above the reserve, and the first whatever it weighs while the disk
/// is above the reserve at all (a write refused for its size alone would wait for good: the
/// group cannot make it smaller). Answers how many it wrote. Found from outside: a backlog of
/// tens of MB went in one batch on a disk just above the reserve, and RocksDB ran out of space;
/// counting the whole backlog against the room instead kept writes that each fit from ever
/// being written.
fn write_batch(jobs: &[Job]) -> Result<usize, String> {
    let Some(first) = jobs.first() else { return Ok(0) };
    let node = &first.db;
    let min_free = jobs.iter().map(|j| j.min_free_bytes).max().unwrap_or(0);
    let room = room_above_reserve(node.path(), min_free).map_err(|e| e.to_string())?;
    let jobs = &jobs[..fitting(jobs.iter().map(|j| ops_bytes(&j.ops)), room)];
    node.may_reopen()?;
    let db = node.handle().map_err(|e| e.to_string())?;
    let mut batch = WriteBatch::default();
    for job in jobs {
        add_ops(&mut batch, &job.ops);
    }
    let mut options = WriteOptions::default();
    let sync = jobs.iter().any(|j| j.sync);
    options.set_sync(sync);
    // A synced batch carries its number, recorded beside the log once it landed (`log_mark`).
    let number = sync.then(|| node.mark.next_number());
    if let Some(number) = number {
        batch.put(MARK_KEY, number.to_be_bytes());
    }
    db.write_opt(batch, &options).map_err(|e| {
        node.forget(&db);
        e.to_string()
    })?;
    if let Some(number) = number {
        node.mark.synced(number);
    }
    Ok(jobs.len())
}

/// How many writes of the `sizes` given, from the first, go in a batch that takes at most
/// `room` bytes; at least one.
fn fitting(sizes: impl IntoIterator<Item = u64>, room: u64) -> usize {
    let mut taken = 0u64;
    let within = sizes
        .into_iter()
        .take_while(|size| {
            taken = taken.saturating_add(*size);
            taken <= room
        })
        .count();
    within.max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use raft::eraftpb::Entry;
    use tokio::sync::oneshot;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::consensus::rocks_storage::{open_db, RocksDbStorage};
    use crate::consensus::storage::LogStore;

    fn entry(index: u64) -> Entry {
        Entry { index, term: 1, data: format!("e{index}").into_bytes().into(), ..Default::default() }
    }

    struct Handed {
        shared: Arc<GroupShared>,
        cancel: CancellationToken,
        done: oneshot::Receiver<bool>,
    }

    /// Appends `entries` to `store` and hands the write to the node's writer.
    fn hand_over(store: &mut RocksDbStorage, entries: &[Entry], shared: &Arc<GroupShared>) -> Handed {
        store.append(entries).unwrap();
        let cancel = CancellationToken::new();
        let (tx, done) = oneshot::channel();
        let write = store.take_write().expect("entries are pending");
        write.start(WriteTicket::new(shared.clone(), cancel.clone(), Duration::ZERO, tx));
        Handed { shared: shared.clone(), cancel, done }
    }

    /// Every group's writes, handed over without waiting for the previous one to land, land in
    /// order and survive a reopen; the database can be opened again as soon as the last group
    /// heard that its write landed (the writer let go of it).
    #[test]
    fn writes_of_many_groups_land_in_order_and_the_database_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path()).unwrap();
            let mut stores: Vec<RocksDbStorage> =
                (0..8).map(|shard| RocksDbStorage::open(db.clone(), shard, &[1]).unwrap()).collect();
            drop(db);
            let shared: Vec<_> = (0..8).map(GroupShared::for_tests).collect();
            let mut handed = Vec::new();
            for round in 0..4u64 {
                for (shard, store) in stores.iter_mut().enumerate() {
                    let first = raft::Storage::last_index(store).unwrap() + 1;
                    let entries: Vec<Entry> = (first..first + 1 + round).map(entry).collect();
                    handed.push(hand_over(store, &entries, &shared[shard]));
                }
            }
            drop(stores);
            for h in handed {
                assert!(h.done.blocking_recv().unwrap(), "shard {} write landed", h.shared.shard);
            }
        }
        let db = open_db(dir.path()).expect("the writer let go of the database");
        for shard in 0..8 {
            let store = RocksDbStorage::open(db.clone(), shard, &[]).unwrap();
            // The bootstrap entry, then 1 + 2 + 3 + 4 entries.
            assert_eq!(raft::Storage::last_index(&store).unwrap(), 11, "shard {shard}");
            assert_eq!(raft::Storage::term(&store, 11).unwrap(), 1);
        }
    }

    /// While the disk refuses a batch, every group in it reports that it cannot persist; a
    /// group that stops gets its write back as given up, and so does every later write it had
    /// handed over, while the other group's write still waits. Nothing of the given-up writes
    /// is on disk.
    #[test]
    fn a_refused_batch_fails_for_every_group_and_a_stopping_group_gives_up_all_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let mut a = RocksDbStorage::open(db.clone(), 1, &[1]).unwrap();
        let mut b = RocksDbStorage::open(db.clone(), 2, &[1]).unwrap();
        a.flush().unwrap();
        b.flush().unwrap();
        let (mut a, mut b) = (a.with_min_free_bytes(u64::MAX), b.with_min_free_bytes(u64::MAX));
        let (ga, gb) = (GroupShared::for_tests(1), GroupShared::for_tests(2));
        let a1 = hand_over(&mut a, &[entry(2)], &ga);
        let mut b1 = hand_over(&mut b, &[entry(2)], &gb);
        let a2 = hand_over(&mut a, &[entry(3)], &ga);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(ga.persist_failing() && gb.persist_failing()) {
            assert!(std::time::Instant::now() < deadline, "both groups report the refused write");
            std::thread::sleep(Duration::from_millis(5));
        }
        let why = ga.persist_error().expect("the group says why");
        assert!(why.contains("below the reserve"), "{why}");
        a1.cancel.cancel();
        assert!(!a1.done.blocking_recv().unwrap(), "the stopping group's write is given up");
        assert!(!a2.done.blocking_recv().unwrap(), "and its later write with it");
        assert!(b1.done.try_recv().is_err(), "the other group's write still waits for the disk");
        b1.cancel.cancel();
        assert!(!b1.done.blocking_recv().unwrap());
        drop((a, b, db));
        let db = open_db(dir.path()).unwrap();
        for shard in [1, 2] {
            let store = RocksDbStorage::open(db.clone(), shard, &[]).unwrap();
            assert_eq!(
                raft::Storage::last_index(&store).unwrap(),
                1,
                "shard {shard}: only the bootstrap entry"
            );
        }
    }

    /// A batch takes the writes that fit in the room above the reserve, from the first, and
    /// the first one whatever it weighs.
    #[test]
    fn a_batch_takes_what_fits_above_the_reserve_and_at_least_one_write() {
        assert_eq!(fitting([10, 20, 30], u64::MAX), 3);
        assert_eq!(fitting([10, 20, 30], 60), 3);
        assert_eq!(fitting([10, 20, 30], 59), 2);
        assert_eq!(fitting([10, 20, 30], 30), 2);
        assert_eq!(fitting([10, 20, 30], 29), 1);
        assert_eq!(fitting([100, 1], 50), 1, "the first alone, though it is over the room");
    }

    /// A log of 2,000 entries the writer wrote in 100 synced batches, in a node that then
    /// stopped; its write-ahead log.
    fn stopped_node_with_a_log(dir: &std::path::Path) -> std::path::PathBuf {
        let db = open_db(dir).unwrap();
        let mut store = RocksDbStorage::open(db, 0, &[1]).unwrap();
        store.flush().unwrap();
        let shared = GroupShared::for_tests(0);
        for batch in 0..100u64 {
            let entries: Vec<Entry> = (2 + batch * 20..2 + (batch + 1) * 20).map(entry).collect();
            assert!(hand_over(&mut store, &entries, &shared).done.blocking_recv().unwrap());
        }
        drop(store);
        let mut wal: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        wal.sort();
        wal.pop().expect("the entries are in a write-ahead log")
    }

    /// Found from outside: one node's write-ahead log damaged while it was stopped (bytes
    /// flipped in the middle, the file truncated or deleted, and, past the first guard, its
    /// last 300 bytes cut) opened without a word, cut back to the last record before the
    /// damage or to the last flush; the node voted with the shorter log, elected a lagging
    /// peer, and its group lost acknowledged writes. Such a log is refused now, with what to
    /// do; an undamaged one opens whole.
    #[test]
    fn a_log_damaged_while_the_node_was_stopped_is_refused() {
        fn cut(wal: &std::path::Path, to: fn(u64) -> u64) {
            let len = std::fs::metadata(wal).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(wal).unwrap().set_len(to(len)).unwrap();
        }
        type Damage = fn(&std::path::Path);
        let damages: [(&str, Damage); 4] = [
            ("bytes flipped in the middle", |wal| {
                let mut bytes = std::fs::read(wal).unwrap();
                let at = bytes.len() / 10;
                for b in &mut bytes[at..at + 64] {
                    *b ^= 0xff;
                }
                std::fs::write(wal, bytes).unwrap();
            }),
            ("truncated to half", |wal| cut(wal, |len| len / 2)),
            ("its last 300 bytes cut", |wal| cut(wal, |len| len - 300)),
            ("deleted", |wal| std::fs::remove_file(wal).unwrap()),
        ];
        for (damage, apply) in damages {
            let dir = tempfile::tempdir().unwrap();
            apply(&stopped_node_with_a_log(dir.path()));
            let refused = open_db(dir.path()).map(|_| ()).expect_err(damage);
            assert!(refused.contains("cannot be trusted") && refused.contains("Move"), "{damage}: {refused}");
        }
        let dir = tempfile::tempdir().unwrap();
        stopped_node_with_a_log(dir.path());
        let store = RocksDbStorage::open(open_db(dir.path()).unwrap(), 0, &[]).unwrap();
        assert_eq!(raft::Storage::last_index(&store).unwrap(), 2001);
    }
}
