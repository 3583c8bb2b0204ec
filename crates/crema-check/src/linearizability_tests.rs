//! Tests of the checker: hand-written histories with known answers, and random small histories
//! cross-checked against a brute-force oracle.

use proptest::prelude::*;

use super::*;

fn op(input: Input, output: Output, call: u64, ret: u64) -> Operation {
    Operation { key: 1, input, output, call, ret }
}

const BUDGET: u64 = 1_000_000;

#[test]
fn sequential_histories() {
    let h = [
        op(Input::Put(1), Output::Ok, 0, 1),
        op(Input::Get, Output::Value(Some(1)), 2, 3),
        op(Input::Delete, Output::Ok, 4, 5),
        op(Input::Get, Output::Value(None), 6, 7),
    ];
    assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    let stale = [op(Input::Put(1), Output::Ok, 0, 1), op(Input::Get, Output::Value(None), 2, 3)];
    assert_eq!(check(&stale, BUDGET), Verdict::Violation { key: 1 }, "a read after a write must see it");
}

#[test]
fn overlapping_operations_may_take_either_order() {
    // The read overlaps the write: old or new value are both fine.
    for seen in [None, Some(2)] {
        let h = [
            op(Input::Put(1), Output::Ok, 0, 1),
            op(Input::Put(2), Output::Ok, 2, 6),
            op(Input::Get, Output::Value(seen), 3, 4),
        ];
        assert_eq!(
            check(&h, BUDGET),
            if seen.is_some() { Verdict::Linearizable } else { Verdict::Violation { key: 1 } }
        );
    }
    let h = [
        op(Input::Put(1), Output::Ok, 0, 1),
        op(Input::Put(2), Output::Ok, 2, 6),
        op(Input::Get, Output::Value(Some(1)), 3, 4),
        op(Input::Get, Output::Value(Some(2)), 3, 5),
    ];
    assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    // But two sequential reads cannot see the new value and then the old one.
    let h = [
        op(Input::Put(1), Output::Ok, 0, 1),
        op(Input::Put(2), Output::Ok, 2, 10),
        op(Input::Get, Output::Value(Some(2)), 3, 4),
        op(Input::Get, Output::Value(Some(1)), 5, 6),
    ];
    assert_eq!(check(&h, BUDGET), Verdict::Violation { key: 1 });
}

#[test]
fn unknown_writes_may_or_may_not_have_happened() {
    for seen in [Some(1), Some(2)] {
        let h = [
            op(Input::Put(1), Output::Ok, 0, 1),
            op(Input::Put(2), Output::Unknown, 2, 0),
            op(Input::Get, Output::Value(seen), 10, 11),
        ];
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable, "{seen:?}");
    }
    // A value nobody wrote is never fine.
    let h = [op(Input::Put(2), Output::Unknown, 2, 0), op(Input::Get, Output::Value(Some(3)), 10, 11)];
    assert_eq!(check(&h, BUDGET), Verdict::Violation { key: 1 });
}

#[test]
fn an_evicting_register_may_lose_its_value_but_never_serves_a_stale_one() {
    let ev = |h: &[Operation]| check_with(Model::EvictingRegister, h, BUDGET);
    let nx =
        |new, swapped, call, ret| op(Input::Cas { expected: None, new }, Output::Swapped(swapped), call, ret);
    // Written, evicted (a miss), swapped in as absent: fine for a cache, not for a register.
    let h = [
        op(Input::Put(1), Output::Ok, 0, 1),
        op(Input::Get, Output::Value(None), 2, 3),
        nx(2, true, 4, 5),
        op(Input::Get, Output::Value(Some(2)), 6, 7),
    ];
    assert_eq!(ev(&h), Verdict::Linearizable);
    assert_eq!(check(&h, BUDGET), Verdict::Violation { key: 1 });
    // A swap of an absent value may follow a write with no miss seen in between.
    assert_eq!(ev(&[op(Input::Put(1), Output::Ok, 0, 1), nx(2, true, 2, 3)]), Verdict::Linearizable);
    // A hit must be the latest write: stale after an overwrite, ...
    let stale = [
        op(Input::Put(1), Output::Ok, 0, 1),
        op(Input::Put(2), Output::Ok, 2, 3),
        op(Input::Get, Output::Value(Some(1)), 4, 5),
    ];
    assert_eq!(ev(&stale), Verdict::Violation { key: 1 });
    // ... back after a delete, ...
    let resurrected = [
        op(Input::Put(1), Output::Ok, 0, 1),
        op(Input::Delete, Output::Ok, 2, 3),
        op(Input::Get, Output::Value(Some(1)), 4, 5),
    ];
    assert_eq!(ev(&resurrected), Verdict::Violation { key: 1 });
    // ... or back after a miss (an eviction is a delete every node applies).
    let back = [
        op(Input::Put(1), Output::Ok, 0, 1),
        op(Input::Get, Output::Value(None), 2, 3),
        op(Input::Get, Output::Value(Some(1)), 4, 5),
    ];
    assert_eq!(ev(&back), Verdict::Violation { key: 1 });
    // A swap that did not write saw a value, so a miss cannot have been the state then.
    let refused = [op(Input::Delete, Output::Ok, 0, 1), nx(3, false, 2, 3)];
    assert_eq!(ev(&refused), Verdict::Violation { key: 1 });
}

#[test]
fn compare_and_set_is_checked() {
    let cas = |expected, new, swapped, call, ret| {
        op(Input::Cas { expected, new }, Output::Swapped(swapped), call, ret)
    };
    let ok = [op(Input::Put(1), Output::Ok, 0, 1), cas(Some(1), 2, true, 2, 3), cas(Some(1), 3, false, 4, 5)];
    assert_eq!(check(&ok, BUDGET), Verdict::Linearizable);
    let both_won =
        [op(Input::Put(1), Output::Ok, 0, 1), cas(Some(1), 2, true, 2, 5), cas(Some(1), 3, true, 3, 6)];
    assert_eq!(check(&both_won, BUDGET), Verdict::Violation { key: 1 }, "two swaps from the same value");
}

#[test]
fn keys_are_independent_and_the_budget_gives_up() {
    let mut h = vec![op(Input::Put(1), Output::Ok, 0, 1)];
    h.push(Operation { key: 2, input: Input::Get, output: Output::Value(Some(9)), call: 0, ret: 1 });
    assert_eq!(check(&h, BUDGET), Verdict::Violation { key: 2 });
    let many: Vec<Operation> = (0..40).map(|i| op(Input::Put(i), Output::Unknown, i, 0)).collect();
    let mut with_read = many.clone();
    with_read.push(op(Input::Get, Output::Value(Some(1000)), 100, 101));
    assert_eq!(check(&with_read, 5), Verdict::GaveUp { key: 1 });
}

/// The oracle: try every order of the operations that respects real time; with `evicting`, the
/// register may also lose its value between any two operations.
fn brute_force(ops: &[Operation], evicting: bool) -> bool {
    fn search(ops: &[Operation], done: &mut Vec<bool>, state: Option<u64>, evicting: bool) -> bool {
        if done.iter().all(|d| *d) {
            return true;
        }
        if evicting && state.is_some() && search(ops, done, None, evicting) {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] {
                continue;
            }
            // `i` may go next only if no pending operation returned before `i` was called.
            let blocked = (0..ops.len()).any(|j| {
                !done[j]
                    && j != i
                    && ops[j].output != Output::Unknown
                    && ops[j].ret.max(ops[j].call) < ops[i].call
            });
            if blocked {
                continue;
            }
            // An unknown operation may also never happen.
            if ops[i].output == Output::Unknown {
                done[i] = true;
                if search(ops, done, state, evicting) {
                    return true;
                }
                done[i] = false;
            }
            if let Some(next) = step(Model::Register, state, &ops[i].input, &ops[i].output) {
                done[i] = true;
                if search(ops, done, next, evicting) {
                    return true;
                }
                done[i] = false;
            }
        }
        false
    }
    let ops: Vec<Operation> =
        ops.iter().filter(|o| !(o.input == Input::Get && o.output == Output::Unknown)).cloned().collect();
    search(&ops, &mut vec![false; ops.len()], None, evicting)
}

fn any_op() -> impl Strategy<Value = Operation> {
    let value = 1u64..4;
    let input = prop_oneof![
        value.clone().prop_map(Input::Put),
        Just(Input::Get),
        Just(Input::Delete),
        (prop::option::of(value.clone()), value.clone())
            .prop_map(|(expected, new)| Input::Cas { expected, new }),
    ];
    (input, prop::option::of(value), any::<bool>(), any::<u8>(), 0u64..20, 0u64..6).prop_map(
        |(input, read, flag, kind, call, len)| {
            let output = if kind % 7 == 0 {
                Output::Unknown
            } else {
                match &input {
                    Input::Put(_) | Input::Delete => Output::Ok,
                    Input::Get => Output::Value(read),
                    Input::Cas { .. } => Output::Swapped(flag),
                }
            };
            Operation { key: 1, input, output, call, ret: call + len }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn agrees_with_brute_force_on_small_histories(ops in prop::collection::vec(any_op(), 0..7)) {
        let expected = brute_force(&ops, false);
        let verdict = check(&ops, BUDGET);
        prop_assert_eq!(verdict == Verdict::Linearizable, expected, "{:?}", ops);
        prop_assert!(!matches!(verdict, Verdict::GaveUp { .. }), "gave up");
    }

    /// The evicting register's shortcut states ("v, unless evicted") against a search that
    /// tries an eviction between every two operations.
    #[test]
    fn the_evicting_model_agrees_with_brute_force(ops in prop::collection::vec(any_op(), 0..7)) {
        let expected = brute_force(&ops, true);
        let verdict = check_with(Model::EvictingRegister, &ops, BUDGET);
        prop_assert_eq!(verdict == Verdict::Linearizable, expected, "{:?}", ops);
    }
}

/// A long history that is linearizable by construction (each operation takes effect at a random
/// instant inside its interval) is accepted within a step budget: the memoised search scales.
#[test]
fn a_long_concurrent_history_is_checked_quickly() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // 5 clients, 4,000 operations, up to 5 overlapping at once.
    let mut ops: Vec<(u64, Operation)> = Vec::new();
    let mut clock = [0u64; 5];
    for i in 0..4000u64 {
        let client = (next() % 5) as usize;
        let call = clock[client] + next() % 3;
        let ret = call + 1 + next() % 10;
        clock[client] = ret + 1;
        let point = call + next() % (ret - call + 1);
        let input = match next() % 4 {
            0 => Input::Get,
            1 => Input::Delete,
            2 => Input::Cas { expected: Some(next() % 3), new: i + 10 },
            _ => Input::Put(i + 10),
        };
        ops.push((point * 10_000 + i, Operation { key: 1, input, output: Output::Ok, call, ret }));
    }
    // Apply in linearization order to fill in the outputs.
    ops.sort_by_key(|(p, _)| *p);
    let mut state = None;
    for (_, op) in &mut ops {
        op.output = match op.input {
            Input::Get => Output::Value(state),
            Input::Put(_) | Input::Delete => Output::Ok,
            Input::Cas { expected, .. } => Output::Swapped(state == expected),
        };
        state =
            step(Model::Register, state, &op.input, &op.output).expect("the model accepts its own outputs");
    }
    let history: Vec<Operation> = ops.into_iter().map(|(_, op)| op).collect();
    // The step budget, not a clock, bounds the work: without memoisation this would not finish.
    assert_eq!(check(&history, 10_000_000), Verdict::Linearizable);
}
