//! A linearizability checker for key-value histories, each key a register with put, get, delete
//! and compare-and-set: the Wing–Gong search with Lowe's memoisation, as Porcupine does it,
//! checked one key at a time (linearizability is compositional).
//!
//! Written by hand: the crates that check linearizability on crates.io either search without
//! memoisation (exponential past a few hundred operations) or model other objects.
//!
//! Two models: [`Model::Register`], a plain register, and [`Model::EvictingRegister`] for a
//! cache that may drop a key at any moment (eviction through the log): a read may find nothing,
//! and a compare-and-set on an absent value may swap however recently the key was written, but
//! a value read must be the latest one written.
//!
//! An operation whose outcome is unknown (a timeout) has no return time: it may take effect at
//! any point after its call, or never, and its output is not checked. A search that exceeds its
//! step budget answers [`Verdict::GaveUp`], which callers must treat as a failure.

use std::collections::{BTreeMap, HashSet};

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// Write a value.
    Put(u64),
    /// Read the value.
    Get,
    /// Remove the value.
    Delete,
    /// Write `new` if the value is `expected` (none: absent).
    Cas {
        /// The value the write requires.
        expected: Option<u64>,
        /// The value written.
        new: u64,
    },
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// A put or delete was acknowledged.
    Ok,
    /// A read answered this value (none: absent).
    Value(Option<u64>),
    /// A compare-and-set answered whether it wrote.
    Swapped(bool),
    /// No answer (timeout): it may or may not have taken effect.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The key.
    pub key: u64,
    /// What was asked.
    pub input: Input,
    /// What was seen.
    pub output: Output,
    /// When it was called (any monotonic unit).
    pub call: u64,
    /// When it returned; ignored when the output is `Unknown`.
    pub ret: u64,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable,
    /// This key's history is not.
    Violation {
        /// The key.
        key: u64,
    },
    /// The search for this key ran out of steps: treat it as a failure.
    GaveUp {
        /// The key.
        key: u64,
    },
}

/// What the history is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Model {
    /// A register: a value stays until it is overwritten or deleted.
    #[default]
    Register,
    /// A register that may lose its value at any moment (a cache that evicts). A state of
    /// `Some(v)` means "v, unless it was evicted since": a read of nothing and a swap of an
    /// absent value always fit (and leave the register empty or written); a read of a value
    /// must see the latest write.
    EvictingRegister,
}

/// Applies `op` to register state `state`: whether the output fits, and the state after.
fn step(model: Model, state: Option<u64>, input: &Input, output: &Output) -> Option<Option<u64>> {
    let unknown = *output == Output::Unknown;
    if model == Model::EvictingRegister && state.is_some() {
        match (input, output) {
            // Evicted since: the read missed, the swap of an absent value wrote.
            (Input::Get, Output::Value(None)) => return Some(None),
            // A swap of an absent value of unknown outcome is taken here as "evicted, then
            // swapped"; "not taken effect" is covered by linearizing it last.
            (Input::Cas { expected: None, new }, Output::Swapped(true) | Output::Unknown) => {
                return Some(Some(*new))
            }
            // A swap of this very value that did not write: it was evicted first.
            (Input::Cas { expected, .. }, Output::Swapped(false)) if *expected == state => return Some(None),
            _ => {}
        }
    }
    match input {
        Input::Put(v) => (unknown || *output == Output::Ok).then_some(Some(*v)),
        Input::Delete => (unknown || *output == Output::Ok).then_some(None),
        Input::Get => (unknown || *output == Output::Value(state)).then_some(state),
        Input::Cas { expected, new } => {
            let swaps = state == *expected;
            match output {
                Output::Unknown => Some(if swaps { Some(*new) } else { state }),
                Output::Swapped(true) if swaps => Some(Some(*new)),
                Output::Swapped(false) if !swaps => Some(state),
                _ => None,
            }
        }
    }
}

/// Checks a history against a register, key by key, with at most `budget` search steps per key.
pub fn check(history: &[Operation], budget: u64) -> Verdict {
    check_with(Model::Register, history, budget)
}

/// Checks a history against `model`, key by key, with at most `budget` search steps per key.
pub fn check_with(model: Model, history: &[Operation], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        // A read of unknown outcome observed nothing.
        if !(op.input == Input::Get && op.output == Output::Unknown) {
            by_key.entry(op.key).or_default().push(op);
        }
    }
    for (key, ops) in by_key {
        match check_key(model, &ops, budget) {
            Some(true) => {}
            Some(false) => return Verdict::Violation { key },
            None => return Verdict::GaveUp { key },
        }
    }
    Verdict::Linearizable
}

const NONE: usize = usize::MAX;

/// One event of the doubly linked list the search walks: a call or a return.
#[derive(Clone, Copy)]
struct Event {
    prev: usize,
    next: usize,
    op: usize,
    is_call: bool,
    /// For a call: its return event.
    matching: usize,
}

/// Some(linearizable) or None when the budget ran out.
fn check_key(model: Model, ops: &[&Operation], budget: u64) -> Option<bool> {
    // Events sorted by time; at equal times calls come first (the operations overlap).
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        times.push((op.call, false, i));
        let ret = if op.output == Output::Unknown { u64::MAX } else { op.ret.max(op.call) };
        times.push((ret, true, i));
    }
    times.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    // Index 0 is the head sentinel.
    let mut events = vec![Event { prev: NONE, next: NONE, op: NONE, is_call: false, matching: NONE }];
    let mut call_of = vec![NONE; ops.len()];
    for &(_, is_ret, i) in &times {
        let at = events.len();
        events.push(Event { prev: at - 1, next: NONE, op: i, is_call: !is_ret, matching: NONE });
        events[at - 1].next = at;
        if is_ret {
            events[call_of[i]].matching = at;
        } else {
            call_of[i] = at;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state: Option<u64> = None;
    let mut entry = events[0].next;
    let mut steps = 0u64;
    while events[0].next != NONE {
        steps += 1;
        if steps > budget {
            return None;
        }
        if entry != NONE && events[entry].is_call {
            let e = events[entry];
            let op = ops[e.op];
            if let Some(next_state) = step(model, state, &op.input, &op.output) {
                let mut with = linearized.clone();
                with[e.op / 64] |= 1 << (e.op % 64);
                if seen.insert((with.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = with;
                    lift(&mut events, entry);
                    entry = events[0].next;
                    continue;
                }
            }
            entry = e.next;
            continue;
        }
        // A return whose call was not linearized (or, as a guard, the end of the list; every
        // call's return follows it, so a walk meets a return first): undo the last choice.
        let Some((call, previous)) = stack.pop() else { return Some(false) };
        state = previous;
        let op = events[call].op;
        linearized[op / 64] &= !(1 << (op % 64));
        unlift(&mut events, call);
        entry = events[call].next;
    }
    Some(true)
}

/// Takes a call and its return out of the list (their own links are kept for `unlift`).
fn lift(events: &mut [Event], call: usize) {
    let ret = events[call].matching;
    for at in [call, ret] {
        let Event { prev, next, .. } = events[at];
        events[prev].next = next;
        if next != NONE {
            events[next].prev = prev;
        }
    }
}

/// Puts back what `lift` took out, in reverse order.
fn unlift(events: &mut [Event], call: usize) {
    let ret = events[call].matching;
    for at in [ret, call] {
        let Event { prev, next, .. } = events[at];
        events[prev].next = at;
        if next != NONE {
            events[next].prev = at;
        }
    }
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
