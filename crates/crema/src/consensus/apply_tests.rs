//! Tests of [`apply_command`]: each command's edge cases, and a property test of the common
//! commands against a `BTreeMap` model.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::cache::storage::StorageLimits;

const T: u64 = 1_000_000;

fn storage() -> CacheStorage {
    CacheStorage::new(StorageLimits { max_capacity: 1_000_000, max_memory_bytes: None, time_to_idle: None })
}

/// The change record the tests apply with (its contents are tested in `transaction_tests`).
static VERSIONS: std::sync::LazyLock<KeyVersions> = std::sync::LazyLock::new(KeyVersions::default);

fn apply_at_t(s: &CacheStorage, command: &CacheCommand) -> ApplyOutput {
    apply_command(&Target::new(s, &VERSIONS, 1, T), command)
}

fn run(s: &CacheStorage, command: CacheCommand) -> ApplyOutput {
    apply_at_t(s, &command)
}

fn value(s: &CacheStorage, key: &str) -> Option<StoredValue> {
    s.entry_at(key.as_bytes(), T)
}

fn set(
    key: &str,
    value: &str,
    expiry: ExpiryUpdate,
    condition: SetCondition,
    return_old: bool,
) -> CacheCommand {
    CacheCommand::Set {
        key: key.to_owned().into(),
        value: value.to_owned().into(),
        expiry,
        condition,
        return_old,
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

#[test]
fn set_conditions_and_get_option() {
    let s = storage();
    let nx = |v| set("k", v, ExpiryUpdate::Persist, SetCondition::IfAbsent, true);
    assert_eq!(run(&s, nx("1")), ApplyOutput::Written { written: true, old: None });
    assert_eq!(run(&s, nx("2")), ApplyOutput::Written { written: false, old: Some(b("1")) });
    let xx = set("missing", "v", ExpiryUpdate::Persist, SetCondition::IfPresent, false);
    assert_eq!(run(&s, xx), ApplyOutput::Written { written: false, old: None });
    assert!(value(&s, "missing").is_none());
    let xx = set("k", "3", ExpiryUpdate::At(T + 500), SetCondition::IfPresent, false);
    assert_eq!(run(&s, xx), ApplyOutput::Written { written: true, old: None });
    assert_eq!(value(&s, "k").unwrap(), StoredValue { value: b("3"), expires_at_ms: Some(T + 500) });
}

#[test]
fn set_keepttl_keeps_and_plain_set_clears_the_expiry() {
    let s = storage();
    run(&s, set("k", "1", ExpiryUpdate::At(T + 500), SetCondition::Always, false));
    run(&s, set("k", "2", ExpiryUpdate::Keep, SetCondition::Always, false));
    assert_eq!(value(&s, "k").unwrap().expires_at_ms, Some(T + 500));
    run(&s, set("k", "3", ExpiryUpdate::Persist, SetCondition::Always, false));
    assert_eq!(value(&s, "k").unwrap(), StoredValue { value: b("3"), expires_at_ms: None });
}

#[test]
fn a_write_with_a_past_expiry_leaves_no_key() {
    let s = storage();
    run(&s, CacheCommand::put("k", "1"));
    assert_eq!(
        run(&s, set("k", "2", ExpiryUpdate::At(T), SetCondition::Always, false)),
        ApplyOutput::Written { written: true, old: None }
    );
    assert!(value(&s, "k").is_none());
    let expire =
        CacheCommand::Expire { key: b("gone"), expires_at_ms: T - 1, condition: ExpireCondition::Always };
    assert_eq!(run(&s, expire), ApplyOutput::Int(0), "absent key");
}

#[test]
fn incr_follows_redis_integer_rules() {
    let s = storage();
    let incr = |delta| CacheCommand::IncrBy { key: b("n"), delta };
    assert_eq!(run(&s, incr(5)), ApplyOutput::Int(5));
    assert_eq!(run(&s, incr(-7)), ApplyOutput::Int(-2));
    for bad in ["abc", "01", "+1", " 1", "1 ", "-0", "", "1.5", "99999999999999999999"] {
        run(&s, CacheCommand::put("n", bad));
        assert_eq!(run(&s, incr(1)), ApplyOutput::Failed(ApplyError::NotInteger), "{bad:?}");
        assert_eq!(value(&s, "n").unwrap().value, b(bad), "a failed INCR changes nothing");
    }
    run(&s, CacheCommand::put("n", i64::MAX.to_string()));
    assert_eq!(run(&s, incr(1)), ApplyOutput::Failed(ApplyError::Overflow));
    run(&s, CacheCommand::put("n", i64::MIN.to_string()));
    assert_eq!(run(&s, incr(-1)), ApplyOutput::Failed(ApplyError::Overflow));
    assert_eq!(run(&s, incr(0)), ApplyOutput::Int(i64::MIN));
}

#[test]
fn incr_keeps_the_expiry() {
    let s = storage();
    run(&s, CacheCommand::Put { key: b("n"), value: b("1"), expires_at_ms: Some(T + 100) });
    run(&s, CacheCommand::IncrBy { key: b("n"), delta: 1 });
    assert_eq!(value(&s, "n").unwrap(), StoredValue { value: b("2"), expires_at_ms: Some(T + 100) });
}

#[test]
fn incr_by_float_formats_like_redis() {
    let s = storage();
    let incr = |delta| CacheCommand::IncrByFloat { key: b("f"), delta };
    run(&s, CacheCommand::put("f", "10.50"));
    assert_eq!(run(&s, incr(0.1)), ApplyOutput::Value(Some(b("10.6"))));
    run(&s, CacheCommand::put("f", "5.0e3"));
    assert_eq!(run(&s, incr(2.0e2)), ApplyOutput::Value(Some(b("5200"))));
    run(&s, CacheCommand::put("f", "3"));
    assert_eq!(run(&s, incr(-3.0)), ApplyOutput::Value(Some(b("0"))));
    run(&s, CacheCommand::put("f", "x"));
    assert_eq!(run(&s, incr(1.0)), ApplyOutput::Failed(ApplyError::NotFloat));
    run(&s, CacheCommand::put("f", f64::MAX.to_string()));
    assert_eq!(run(&s, incr(f64::MAX)), ApplyOutput::Failed(ApplyError::NanOrInfinity));
}

#[test]
fn append_and_setrange_grow_within_the_limit() {
    let s = storage();
    let append = |v: &str| CacheCommand::Append { key: b("a"), value: b(v), max_len: 8 };
    assert_eq!(run(&s, append("hello")), ApplyOutput::Int(5));
    assert_eq!(run(&s, append("abc")), ApplyOutput::Int(8));
    assert_eq!(run(&s, append("x")), ApplyOutput::Failed(ApplyError::TooLarge));
    assert_eq!(value(&s, "a").unwrap().value, b("helloabc"));

    let range = |offset, v: &str| CacheCommand::SetRange { key: b("r"), offset, value: b(v), max_len: 8 };
    assert_eq!(run(&s, range(0, "")), ApplyOutput::Int(0));
    assert!(value(&s, "r").is_none(), "an empty SETRANGE does not create the key");
    assert_eq!(run(&s, range(3, "ab")), ApplyOutput::Int(5));
    assert_eq!(value(&s, "r").unwrap().value, Bytes::from_static(b"\0\0\0ab"));
    assert_eq!(run(&s, range(1, "Z")), ApplyOutput::Int(5));
    assert_eq!(value(&s, "r").unwrap().value, Bytes::from_static(b"\0Z\0ab"));
    assert_eq!(run(&s, range(7, "ab")), ApplyOutput::Failed(ApplyError::TooLarge));
    assert_eq!(run(&s, range(u64::MAX, "a")), ApplyOutput::Failed(ApplyError::TooLarge));
    // An entry naming a limit no proposer could (a hostile leader's) cannot make apply
    // allocate past the largest command.
    let huge = CacheCommand::SetRange { key: b("h"), offset: 1 << 40, value: b("x"), max_len: u64::MAX };
    assert_eq!(run(&s, huge), ApplyOutput::Failed(ApplyError::TooLarge));
}

#[test]
fn getdel_getex_persist() {
    let s = storage();
    run(&s, CacheCommand::put("k", "v"));
    assert_eq!(run(&s, CacheCommand::GetDel { key: b("k") }), ApplyOutput::Value(Some(b("v"))));
    assert_eq!(run(&s, CacheCommand::GetDel { key: b("k") }), ApplyOutput::Value(None));

    run(&s, CacheCommand::put("k", "v"));
    let getex = |expiry| CacheCommand::GetEx { key: b("k"), expiry };
    assert_eq!(run(&s, getex(ExpiryUpdate::At(T + 9))), ApplyOutput::Value(Some(b("v"))));
    assert_eq!(value(&s, "k").unwrap().expires_at_ms, Some(T + 9));
    assert_eq!(run(&s, CacheCommand::Persist { key: b("k") }), ApplyOutput::Int(1));
    assert_eq!(run(&s, CacheCommand::Persist { key: b("k") }), ApplyOutput::Int(0));
    assert_eq!(value(&s, "k").unwrap().expires_at_ms, None);
    run(&s, getex(ExpiryUpdate::At(T - 5)));
    assert!(value(&s, "k").is_none(), "GETEX with a past time deletes");
}

#[test]
fn copy_and_rename() {
    let s = storage();
    let copy = |from: &str, to: &str, replace, remove_source| CacheCommand::Copy {
        from: from.to_owned().into(),
        to: to.to_owned().into(),
        replace,
        remove_source,
    };
    run(&s, CacheCommand::Put { key: b("a"), value: b("1"), expires_at_ms: Some(T + 50) });
    assert_eq!(run(&s, copy("a", "b", false, false)), ApplyOutput::Int(1));
    assert_eq!(value(&s, "b"), Some(StoredValue { value: b("1"), expires_at_ms: Some(T + 50) }));
    run(&s, CacheCommand::put("a", "2"));
    assert_eq!(run(&s, copy("a", "b", false, false)), ApplyOutput::Int(0), "b is live");
    assert_eq!(run(&s, copy("a", "b", true, true)), ApplyOutput::Int(1), "RENAME");
    assert_eq!((value(&s, "a"), value(&s, "b").map(|v| v.value)), (None, Some(b("2"))));
    assert_eq!(value(&s, "b").unwrap().expires_at_ms, None, "the source's expiry (none) with it");
    assert_eq!(run(&s, copy("a", "c", true, true)), ApplyOutput::Failed(ApplyError::NoSuchKey));
    assert_eq!(run(&s, copy("a", "c", true, false)), ApplyOutput::Int(0), "COPY of nothing");
    assert_eq!(run(&s, copy("b", "b", true, true)), ApplyOutput::Int(1), "RENAME b b");
    assert_eq!(run(&s, copy("b", "b", false, true)), ApplyOutput::Int(0), "RENAMENX b b");
    assert_eq!(value(&s, "b").map(|v| v.value), Some(b("2")));
    // An expired source is absent.
    run(&s, CacheCommand::Put { key: b("old"), value: b("x"), expires_at_ms: Some(T - 1) });
    assert_eq!(run(&s, copy("old", "d", true, true)), ApplyOutput::Failed(ApplyError::NoSuchKey));
}

#[test]
fn expire_conditions() {
    let s = storage();
    let expire = |at, condition| CacheCommand::Expire { key: b("k"), expires_at_ms: at, condition };
    run(&s, CacheCommand::put("k", "v"));
    assert_eq!(run(&s, expire(T + 100, ExpireCondition::IfSome)), ApplyOutput::Int(0));
    assert_eq!(
        run(&s, expire(T + 100, ExpireCondition::IfSomeEarlier)),
        ApplyOutput::Int(0),
        "XX LT, no TTL"
    );
    assert_eq!(run(&s, expire(T + 100, ExpireCondition::IfLater)), ApplyOutput::Int(0), "no TTL is infinite");
    assert_eq!(run(&s, expire(T + 100, ExpireCondition::IfNone)), ApplyOutput::Int(1));
    assert_eq!(run(&s, expire(T + 200, ExpireCondition::IfNone)), ApplyOutput::Int(0));
    assert_eq!(run(&s, expire(T + 50, ExpireCondition::IfLater)), ApplyOutput::Int(0));
    assert_eq!(run(&s, expire(T + 200, ExpireCondition::IfLater)), ApplyOutput::Int(1));
    assert_eq!(run(&s, expire(T + 300, ExpireCondition::IfEarlier)), ApplyOutput::Int(0));
    assert_eq!(run(&s, expire(T + 150, ExpireCondition::IfEarlier)), ApplyOutput::Int(1));
    assert_eq!(run(&s, expire(T + 160, ExpireCondition::IfSomeEarlier)), ApplyOutput::Int(0));
    assert_eq!(value(&s, "k").unwrap().expires_at_ms, Some(T + 150));
    assert_eq!(run(&s, expire(T, ExpireCondition::Always)), ApplyOutput::Int(1));
    assert!(value(&s, "k").is_none());
}

#[test]
fn multi_key_commands() {
    let s = storage();
    let pairs = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (b(k), b(v))).collect::<Vec<_>>();
    let mset = CacheCommand::PutMany {
        pairs: pairs(&[("a", "1"), ("b", "2"), ("a", "3")]),
        only_if_none_exist: false,
    };
    assert_eq!(run(&s, mset), ApplyOutput::Int(1));
    assert_eq!(value(&s, "a").unwrap().value, b("3"), "the last value of a repeated key wins");
    let msetnx = |kv| CacheCommand::PutMany { pairs: pairs(kv), only_if_none_exist: true };
    assert_eq!(run(&s, msetnx(&[("c", "1"), ("a", "9")])), ApplyOutput::Int(0));
    assert!(value(&s, "c").is_none(), "MSETNX writes nothing when any key exists");
    assert_eq!(run(&s, msetnx(&[("c", "1"), ("d", "2")])), ApplyOutput::Int(1));
    let del = CacheCommand::DeleteMany { keys: vec![b("a"), b("a"), b("c"), b("zz")] };
    assert_eq!(run(&s, del), ApplyOutput::Int(2));
}

fn command() -> impl Strategy<Value = CacheCommand> {
    let key = || prop::sample::select(vec!["a", "b", "c"]).prop_map(b);
    let val = || prop::sample::select(vec!["1", "-4", "x", "10"]).prop_map(b);
    let cond =
        prop_oneof![Just(SetCondition::Always), Just(SetCondition::IfAbsent), Just(SetCondition::IfPresent)];
    prop_oneof![
        (key(), val()).prop_map(|(k, v)| CacheCommand::put(k, v)),
        key().prop_map(|key| CacheCommand::Delete { key }),
        (key(), val(), cond, any::<bool>()).prop_map(|(key, value, condition, return_old)| {
            CacheCommand::Set { key, value, expiry: ExpiryUpdate::Persist, condition, return_old }
        }),
        (key(), -3i64..3).prop_map(|(key, delta)| CacheCommand::IncrBy { key, delta }),
        (key(), val()).prop_map(|(key, value)| CacheCommand::Append { key, value, max_len: 1 << 20 }),
        key().prop_map(|key| CacheCommand::GetDel { key }),
        prop::collection::vec(key(), 1..3).prop_map(|keys| CacheCommand::DeleteMany { keys }),
        prop::collection::vec(key(), 1..3).prop_map(|keys| CacheCommand::Evict { keys }),
    ]
}

/// The model: what each command should do to a plain map, written independently of apply.
fn model_apply(model: &mut BTreeMap<Bytes, Bytes>, command: &CacheCommand) -> ApplyOutput {
    match command.clone() {
        CacheCommand::Put { key, value, .. } => {
            model.insert(key, value);
            ApplyOutput::Done
        }
        CacheCommand::Delete { key } => ApplyOutput::Removed(model.remove(&key).is_some()),
        CacheCommand::Set { key, value, condition, return_old, .. } => {
            let old = model.get(&key).cloned();
            let written = match condition {
                SetCondition::Always => true,
                SetCondition::IfAbsent => old.is_none(),
                SetCondition::IfPresent => old.is_some(),
            };
            if written {
                model.insert(key, value);
            }
            ApplyOutput::Written { written, old: if return_old { old } else { None } }
        }
        CacheCommand::IncrBy { key, delta } => {
            let old = model.get(&key).map(|v| std::str::from_utf8(v).unwrap().parse::<i64>());
            match old {
                Some(Err(_)) => ApplyOutput::Failed(ApplyError::NotInteger),
                Some(Ok(n)) if n.to_string().as_bytes() != model[&key].as_ref() => {
                    ApplyOutput::Failed(ApplyError::NotInteger)
                }
                old => {
                    let n = old.map_or(0, |r| r.unwrap()) + delta;
                    model.insert(key, Bytes::from(n.to_string()));
                    ApplyOutput::Int(n)
                }
            }
        }
        CacheCommand::Append { key, value, .. } => {
            let mut v = model.get(&key).map(|v| v.to_vec()).unwrap_or_default();
            v.extend_from_slice(&value);
            let len = v.len() as i64;
            model.insert(key, v.into());
            ApplyOutput::Int(len)
        }
        CacheCommand::GetDel { key } => ApplyOutput::Value(model.remove(&key)),
        CacheCommand::DeleteMany { keys } | CacheCommand::Evict { keys } => {
            ApplyOutput::Int(keys.iter().filter(|k| model.remove(*k).is_some()).count() as i64)
        }
        other => unreachable!("not generated: {other:?}"),
    }
}

proptest! {
    #[test]
    fn matches_a_btreemap_model(commands in prop::collection::vec(command(), 0..64)) {
        let s = storage();
        let mut model = BTreeMap::new();
        for command in &commands {
            let expected = model_apply(&mut model, command);
            prop_assert_eq!(apply_at_t(&s, command), expected, "{:?}", command);
        }
        for key in ["a", "b", "c"] {
            prop_assert_eq!(value(&s, key).map(|v| v.value), model.get(key.as_bytes()).cloned());
        }
    }
}

#[test]
fn a_batch_applies_in_order_and_answers_each_command() {
    let s = storage();
    let batch = CacheCommand::Batch(vec![
        CacheCommand::put("k", "x"),
        CacheCommand::IncrBy { key: b("k"), delta: 1 },
        CacheCommand::put("k", "1"),
        CacheCommand::IncrBy { key: b("k"), delta: 1 },
        CacheCommand::GetDel { key: b("k") },
    ]);
    assert_eq!(
        run(&s, batch),
        ApplyOutput::Batch(vec![
            ApplyOutput::Done,
            ApplyOutput::Failed(ApplyError::NotInteger),
            ApplyOutput::Done,
            ApplyOutput::Int(2),
            ApplyOutput::Value(Some(b("2"))),
        ])
    );
    assert!(value(&s, "k").is_none());
}

/// Integers are refused by length before their text is read (INCR on an 8 MiB value scanned
/// all of it): the longest canonical i64 still parses. (`parse_f64` serves only the legacy
/// `IncrByFloat` of earlier logs, which must replay as it did; `LongDouble` bounds its own.)
#[test]
fn numbers_are_judged_by_length_first() {
    assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
    assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_i64(b"-09223372036854775808"), None);
    assert_eq!(parse_i64(&[b'1'; 8 << 20]), None);
}
