//! Tests of [`Transaction`]: atomic application, reads at apply time, `WATCH` decisions (writes,
//! deletes, expiry, eviction, clear, delete-then-recreate), the reply bound and validation.

use super::*;
use crate::cache::storage::{CacheStorage, StorageLimits};
use crate::consensus::command::StampedCommand;
use crate::consensus::state_machine::CacheStateMachine;

const NOW: u64 = 1_700_000_000_000;

/// A state machine and the next log index.
struct Log {
    sm: CacheStateMachine,
    index: u64,
}

impl Log {
    fn new() -> Self {
        let limits = StorageLimits { max_capacity: 1_000_000, max_memory_bytes: None, time_to_idle: None };
        Self { sm: CacheStateMachine::new(CacheStorage::new(limits)), index: 0 }
    }

    fn apply_at(&mut self, now_ms: u64, command: CacheCommand) -> ApplyOutput {
        self.index += 1;
        self.sm.apply(self.index, &StampedCommand::new(now_ms, command))
    }

    fn apply(&mut self, command: CacheCommand) -> ApplyOutput {
        self.apply_at(NOW, command)
    }

    /// What `WATCH key` records on this node at `now_ms`.
    fn watch(&self, key: &str, now_ms: u64) -> WatchedKey {
        let live = self.sm.storage().entry_at(key.as_bytes(), now_ms).is_some();
        WatchedKey { key: b(key), seen_index: self.sm.applied_index(), live }
    }

    fn value(&self, key: &str) -> Option<Bytes> {
        self.sm.storage().entry_at(key.as_bytes(), self.sm.log_time_ms()).map(|e| e.value)
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

fn exec(watches: Vec<WatchedKey>, steps: Vec<TxStep>) -> CacheCommand {
    CacheCommand::Transaction(Transaction { watches, steps, max_reply_bytes: 1 << 20 })
}

fn write(command: CacheCommand) -> TxStep {
    TxStep::Write(command)
}

fn get(keys: &[&str]) -> TxStep {
    TxStep::Read(ReadCommand::Values { keys: keys.iter().map(|k| b(k)).collect() })
}

fn incr(key: &str) -> TxStep {
    write(CacheCommand::IncrBy { key: b(key), delta: 1 })
}

#[test]
fn steps_apply_in_order_and_reads_see_the_earlier_steps() {
    let mut log = Log::new();
    log.apply(CacheCommand::put("text", "abc"));
    let tx = exec(
        vec![],
        vec![
            write(CacheCommand::put("n", "1")),
            incr("n"),
            get(&["n", "missing"]),
            incr("text"),
            TxStep::Read(ReadCommand::Meta { keys: vec![b("text"), b("missing")] }),
            write(CacheCommand::Clear),
            get(&["n"]),
        ],
    );
    let out = log.apply(tx);
    assert_eq!(
        out,
        ApplyOutput::Exec(Some(vec![
            ApplyOutput::Done,
            ApplyOutput::Int(2),
            ApplyOutput::Values(vec![Some(b("2")), None]),
            ApplyOutput::Failed(ApplyError::NotInteger),
            ApplyOutput::Meta { at_ms: NOW, keys: vec![Some(KeyMeta { len: 3, expires_at_ms: None }), None] },
            ApplyOutput::Done,
            ApplyOutput::Values(vec![None]),
        ]))
    );
    assert_eq!(log.value("n"), None, "the clear inside the transaction applied");
}

#[test]
fn a_read_only_transaction_reads_at_its_log_time() {
    let mut log = Log::new();
    let expiring = CacheCommand::Put { key: b("k"), value: b("v"), expires_at_ms: Some(NOW + 10) };
    log.apply(expiring);
    let meta = TxStep::Read(ReadCommand::Meta { keys: vec![b("k")] });
    let live = log.apply_at(NOW + 5, exec(vec![], vec![get(&["k"]), meta.clone()]));
    let meta_live = ApplyOutput::Meta {
        at_ms: NOW + 5,
        keys: vec![Some(KeyMeta { len: 1, expires_at_ms: Some(NOW + 10) })],
    };
    assert_eq!(live, ApplyOutput::Exec(Some(vec![ApplyOutput::Values(vec![Some(b("v"))]), meta_live])));
    let gone = log.apply_at(NOW + 10, exec(vec![], vec![get(&["k"]), meta]));
    let meta_gone = ApplyOutput::Meta { at_ms: NOW + 10, keys: vec![None] };
    assert_eq!(gone, ApplyOutput::Exec(Some(vec![ApplyOutput::Values(vec![None]), meta_gone])));
}

#[test]
fn an_unchanged_watched_key_lets_the_transaction_apply() {
    let mut log = Log::new();
    log.apply(CacheCommand::put("counter", "1"));
    let watched = log.watch("counter", NOW);
    let absent = log.watch("absent", NOW);
    log.apply(CacheCommand::put("elsewhere", "x"));
    let out = log.apply(exec(vec![watched, absent], vec![incr("counter")]));
    assert_eq!(out, ApplyOutput::Exec(Some(vec![ApplyOutput::Int(2)])));
}

#[test]
fn a_watched_key_written_since_aborts_and_nothing_is_applied() {
    let mut log = Log::new();
    log.apply(CacheCommand::put("counter", "1"));
    let watched = log.watch("counter", NOW);
    log.apply(CacheCommand::put("counter", "1"));
    let out = log.apply(exec(vec![watched], vec![incr("counter"), write(CacheCommand::put("other", "x"))]));
    assert_eq!(out, ApplyOutput::Exec(None));
    assert_eq!(log.value("counter"), Some(b("1")));
    assert_eq!(log.value("other"), None, "no step of an aborted transaction applies");
}

#[test]
fn a_failed_conditional_write_is_not_a_change() {
    let mut log = Log::new();
    log.apply(CacheCommand::put("k", "1"));
    let watched = log.watch("k", NOW);
    let nx = CacheCommand::Set {
        key: b("k"),
        value: b("2"),
        expiry: crate::ExpiryUpdate::Persist,
        condition: crate::SetCondition::IfAbsent,
        return_old: false,
    };
    log.apply(nx);
    log.apply(CacheCommand::delete("never-there"));
    log.apply(CacheCommand::GetEx { key: b("k"), expiry: crate::ExpiryUpdate::Persist });
    log.apply(CacheCommand::Persist { key: b("k") });
    assert_eq!(log.apply(exec(vec![watched], vec![])), ApplyOutput::Exec(Some(vec![])));
}

#[test]
fn an_absent_key_created_and_deleted_again_counts_as_changed() {
    let mut log = Log::new();
    let watched = log.watch("k", NOW);
    log.apply(CacheCommand::put("k", "v"));
    log.apply(CacheCommand::delete("k"));
    assert_eq!(log.value("k"), None, "absent again, as when watched");
    assert_eq!(log.apply(exec(vec![watched], vec![get(&["k"])])), ApplyOutput::Exec(None));
}

#[test]
fn a_watched_key_that_expired_since_counts_as_changed() {
    let mut log = Log::new();
    log.apply(CacheCommand::Put { key: b("k"), value: b("v"), expires_at_ms: Some(NOW + 100) });
    let watched = log.watch("k", NOW);
    assert!(watched.live);
    // Still live at the transaction's log time: applies.
    assert_eq!(log.apply_at(NOW + 99, exec(vec![watched.clone()], vec![])), ApplyOutput::Exec(Some(vec![])));
    // Expired at the transaction's log time, with no command in between: aborts.
    assert_eq!(log.apply_at(NOW + 100, exec(vec![watched], vec![])), ApplyOutput::Exec(None));
}

#[test]
fn a_key_already_expired_when_watched_stays_unchanged_until_written() {
    let mut log = Log::new();
    log.apply(CacheCommand::Put { key: b("k"), value: b("v"), expires_at_ms: Some(NOW + 1) });
    let watched = log.watch("k", NOW + 5);
    assert!(!watched.live);
    // Purged on this node or not, the decision is the same.
    log.sm.storage().advance_log_time(NOW + 5);
    log.sm.storage().purge_expired();
    assert_eq!(log.apply_at(NOW + 6, exec(vec![watched.clone()], vec![])), ApplyOutput::Exec(Some(vec![])));
    log.apply_at(NOW + 7, CacheCommand::put("k", "new"));
    assert_eq!(log.apply_at(NOW + 8, exec(vec![watched], vec![])), ApplyOutput::Exec(None));
}

#[test]
fn an_evicted_watched_key_counts_as_changed() {
    let mut log = Log::new();
    log.apply(CacheCommand::put("k", "v"));
    let watched = log.watch("k", NOW);
    log.apply(CacheCommand::Evict { keys: vec![b("k")] });
    assert_eq!(log.apply(exec(vec![watched], vec![])), ApplyOutput::Exec(None));
}

#[test]
fn a_clear_changes_live_watched_keys_only() {
    let mut log = Log::new();
    log.apply(CacheCommand::put("k", "v"));
    let live = log.watch("k", NOW);
    let absent = log.watch("absent", NOW);
    log.apply(CacheCommand::Clear);
    assert_eq!(log.apply(exec(vec![absent.clone()], vec![])), ApplyOutput::Exec(Some(vec![])));
    assert_eq!(log.apply(exec(vec![live], vec![])), ApplyOutput::Exec(None));
    log.apply(CacheCommand::put("absent", "now here"));
    log.apply(CacheCommand::Clear);
    assert_eq!(log.apply(exec(vec![absent], vec![])), ApplyOutput::Exec(None), "created, then cleared");
}

#[test]
fn a_write_inside_an_applied_transaction_is_a_change_for_later_watchers() {
    let mut log = Log::new();
    let watched = log.watch("k", NOW);
    assert_eq!(log.apply(exec(vec![], vec![incr("k")])), ApplyOutput::Exec(Some(vec![ApplyOutput::Int(1)])));
    assert_eq!(log.apply(exec(vec![watched], vec![incr("k")])), ApplyOutput::Exec(None));
    assert_eq!(log.value("k"), Some(b("1")));
}

#[test]
fn reads_past_the_reply_bound_answer_an_error_and_writes_still_apply() {
    let mut log = Log::new();
    log.apply(CacheCommand::put("big", vec![b'x'; 1000]));
    let steps = vec![get(&["big"]), get(&["big"]), write(CacheCommand::put("k", "v")), incr("n")];
    let tx = Transaction { watches: vec![], steps, max_reply_bytes: 1500 };
    let out = log.apply(CacheCommand::Transaction(tx));
    let ApplyOutput::Exec(Some(outputs)) = out else { panic!("{out:?}") };
    assert!(matches!(outputs[0], ApplyOutput::Values(_)));
    assert_eq!(outputs[1], ApplyOutput::Failed(ApplyError::ReplyTooLarge));
    assert_eq!(outputs[2..], [ApplyOutput::Done, ApplyOutput::Int(1)]);
    assert_eq!(log.value("k"), Some(b("v")));
}

#[test]
fn validation_refuses_nesting_empty_reads_and_oversized_transactions() {
    let limits = CommandLimits { max_key_bytes: 16, max_value_bytes: 64 };
    // The reply limit travels in the command: a proposer may not name one past its limits.
    let over = exec(vec![], vec![write(CacheCommand::put("k", "v"))]);
    assert!(matches!(
        over.validate(&limits),
        Err(CommandError::TransactionTooLarge { len: 1_048_576, max: 80 })
    ));
    let exec =
        |watches, steps| CacheCommand::Transaction(Transaction { watches, steps, max_reply_bytes: 80 });
    let nested = exec(vec![], vec![write(CacheCommand::Batch(vec![CacheCommand::Clear]))]);
    assert_eq!(nested.validate(&limits), Err(CommandError::BadTransaction));
    let evict = exec(vec![], vec![write(CacheCommand::Evict { keys: vec![b("k")] })]);
    assert_eq!(evict.validate(&limits), Err(CommandError::BadTransaction));
    let no_keys = exec(vec![], vec![TxStep::Read(ReadCommand::Meta { keys: vec![] })]);
    assert_eq!(no_keys.validate(&limits), Err(CommandError::NoKeys));
    let empty_watch = exec(vec![WatchedKey { key: b(""), seen_index: 1, live: true }], vec![]);
    assert_eq!(empty_watch.validate(&limits), Err(CommandError::EmptyKey));
    let in_batch = CacheCommand::Batch(vec![exec(vec![], vec![])]);
    assert_eq!(in_batch.validate(&limits), Err(CommandError::BadBatch));
    exec(vec![], vec![write(CacheCommand::put("k", vec![0u8; 64]))]).validate(&limits).unwrap();
    let big = exec(vec![], vec![write(CacheCommand::put("k", vec![0u8; 64])), incr("nn"), incr("nn")]);
    assert!(matches!(big.validate(&limits), Err(CommandError::TransactionTooLarge { max: 80, .. })));
}
