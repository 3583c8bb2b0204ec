//! [`Recorder`]: collects what concurrent clients did, for the linearizability checker.
//!
//! A client calls [`Recorder::invoke`] before it sends an operation and completes the returned
//! [`Pending`] with what it saw. A `Pending` dropped without completing (the client gave up, a
//! task was cancelled) is recorded as of unknown outcome: it may have taken effect. Times are
//! microseconds from the recorder's creation on one monotonic clock.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::linearizability::{Input, Operation, Output};

/// A shared history of operations (clone it into every client).
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self { start: Instant::now(), ops: Arc::default() }
    }
}

/// An operation under way.
pub struct Pending {
    recorder: Recorder,
    key: u64,
    input: Input,
    call: u64,
    done: bool,
}

impl Recorder {
    /// A new, empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Microseconds since the recorder was made: the clock of every recorded call and return.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records that an operation on `key` is being sent.
    pub fn invoke(&self, key: u64, input: Input) -> Pending {
        Pending { recorder: self.clone(), key, input, call: self.now(), done: false }
    }

    /// Everything recorded so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.ops.lock().expect("history poisoned").clone()
    }

    fn push(&self, op: Operation) {
        self.ops.lock().expect("history poisoned").push(op);
    }
}

impl Pending {
    /// Records what the client saw. `Output::Unknown` for a timeout or a lost connection: the
    /// operation may or may not have taken effect. (Never record such an error as a failure.)
    pub fn complete(mut self, output: Output) {
        self.finish(output);
    }

    /// The operation certainly did not take effect (the node refused it before proposing, or it
    /// was a read): it is left out of the history.
    pub fn failed(mut self) {
        self.done = true;
    }

    fn finish(&mut self, output: Output) {
        if self.done {
            return;
        }
        self.done = true;
        let ret = self.recorder.now();
        let op = Operation { key: self.key, input: self.input.clone(), output, call: self.call, ret };
        self.recorder.push(op);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Output::Unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::{check, Verdict};

    #[test]
    fn completed_and_abandoned_operations_are_recorded() {
        let history = Recorder::new();
        let write = history.invoke(7, Input::Put(1));
        let read = history.invoke(7, Input::Get);
        write.complete(Output::Ok);
        drop(history.invoke(7, Input::Put(2))); // a client that gave up: unknown outcome
        history.invoke(7, Input::Put(3)).failed(); // refused: not recorded
        read.complete(Output::Value(Some(1)));
        let ops = history.operations();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[1].output, Output::Unknown);
        assert!(ops.iter().all(|o| o.call <= o.ret));
        assert_eq!(check(&ops, 1000), Verdict::Linearizable);
    }

    #[test]
    fn threads_record_into_one_history() {
        let history = Recorder::new();
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let history = history.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        history.invoke(t, Input::Put(i)).complete(Output::Ok);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let ops = history.operations();
        assert_eq!(ops.len(), 400);
        assert_eq!(check(&ops, 100_000), Verdict::Linearizable);
    }
}
