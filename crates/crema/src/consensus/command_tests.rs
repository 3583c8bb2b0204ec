use super::*;
use proptest::prelude::*;

const LIMITS: CommandLimits = CommandLimits { max_key_bytes: 8, max_value_bytes: 16 };

#[test]
fn validation_refuses_bad_commands() {
    assert_eq!(CacheCommand::put("", "v").validate(&LIMITS), Err(CommandError::EmptyKey));
    assert_eq!(
        CacheCommand::put("123456789", "v").validate(&LIMITS),
        Err(CommandError::KeyTooLarge { len: 9, max: 8 })
    );
    assert_eq!(
        CacheCommand::put("k", vec![0u8; 17]).validate(&LIMITS),
        Err(CommandError::ValueTooLarge { len: 17, max: 16 })
    );
    assert_eq!(CacheCommand::delete("").validate(&LIMITS), Err(CommandError::EmptyKey));
    CacheCommand::put("k", vec![0u8; 16]).validate(&LIMITS).unwrap();
    CacheCommand::Clear.validate(&LIMITS).unwrap();
}

#[test]
fn multi_key_and_float_commands_are_validated() {
    assert_eq!(CacheCommand::DeleteMany { keys: vec![] }.validate(&LIMITS), Err(CommandError::NoKeys));
    let pairs = vec![(Bytes::from("a"), Bytes::from("1")), (Bytes::from(""), Bytes::from("2"))];
    let mset = CacheCommand::PutMany { pairs, only_if_none_exist: false };
    assert_eq!(mset.validate(&LIMITS), Err(CommandError::EmptyKey));
    let nan = CacheCommand::IncrByFloat { key: "k".into(), delta: f64::NAN };
    assert_eq!(nan.validate(&LIMITS), Err(CommandError::NotFinite));
    let append = CacheCommand::Append { key: "k".into(), value: vec![0u8; 17].into(), max_len: 100 };
    assert_eq!(append.validate(&LIMITS), Err(CommandError::ValueTooLarge { len: 17, max: 16 }));
    // The limit a value may grow to is the proposer's: a peer may not name a larger one.
    let grows =
        CacheCommand::SetRange { key: "k".into(), offset: 1 << 40, value: "x".into(), max_len: u64::MAX };
    assert!(matches!(grows.validate(&LIMITS), Err(CommandError::ValueTooLarge { max: 16, .. })));
    let append = CacheCommand::Append { key: "k".into(), value: "x".into(), max_len: 17 };
    assert!(matches!(append.validate(&LIMITS), Err(CommandError::ValueTooLarge { len: 17, max: 16 })));
    assert_eq!(CacheCommand::Batch(vec![]).validate(&LIMITS), Err(CommandError::BadBatch));
    let nested = CacheCommand::Batch(vec![CacheCommand::Batch(vec![CacheCommand::Clear])]);
    assert_eq!(nested.validate(&LIMITS), Err(CommandError::BadBatch));
    let bad_inside = CacheCommand::Batch(vec![CacheCommand::Clear, CacheCommand::delete("")]);
    assert_eq!(bad_inside.validate(&LIMITS), Err(CommandError::EmptyKey));
}

#[test]
fn ttl_range_is_checked() {
    assert!(expiry_from_ttl(1_000, Duration::ZERO).is_err());
    assert!(expiry_from_ttl(1_000, MAX_TTL + Duration::from_millis(1)).is_err());
    assert_eq!(expiry_from_ttl(1_000, Duration::from_micros(1_500)).unwrap(), 1_002);
    assert_eq!(expiry_from_ttl(1_000, Duration::from_secs(1)).unwrap(), 2_000);
}

#[test]
fn decode_refuses_unknown_versions_and_garbage() {
    let mut bytes = StampedCommand::new(5, CacheCommand::Clear).encode();
    bytes[0] = 9;
    assert!(StampedCommand::decode(&bytes).unwrap_err().to_string().contains("version 9"));
    assert!(StampedCommand::decode(&[]).is_err());
    assert!(StampedCommand::decode(&[COMMAND_FORMAT_VERSION, 0xff, 0xff]).is_err());
}

pub(crate) fn any_command() -> impl Strategy<Value = CacheCommand> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from);
    let expiry = prop_oneof![
        Just(ExpiryUpdate::Keep),
        Just(ExpiryUpdate::Persist),
        any::<u64>().prop_map(ExpiryUpdate::At)
    ];
    let cond =
        prop_oneof![Just(SetCondition::Always), Just(SetCondition::IfAbsent), Just(SetCondition::IfPresent)];
    prop_oneof![
        (bytes(), bytes(), any::<Option<u64>>()).prop_map(|(key, value, expires_at_ms)| CacheCommand::Put {
            key,
            value,
            expires_at_ms
        }),
        bytes().prop_map(|key| CacheCommand::Delete { key }),
        Just(CacheCommand::Clear),
        (bytes(), bytes(), expiry, cond, any::<bool>()).prop_map(
            |(key, value, expiry, condition, return_old)| {
                CacheCommand::Set { key, value, expiry, condition, return_old }
            }
        ),
        (bytes(), any::<i64>()).prop_map(|(key, delta)| CacheCommand::IncrBy { key, delta }),
        (bytes(), -1e9f64..1e9).prop_map(|(key, delta)| CacheCommand::IncrByFloat { key, delta }),
        (bytes(), -(1i64 << 60)..(1i64 << 60)).prop_map(|(key, delta)| {
            let delta = LongDouble::parse(delta.to_string().as_bytes()).expect("an integer parses");
            CacheCommand::IncrByLongDouble { key, delta }
        }),
        proptest::collection::vec((bytes(), bytes()), 0..4)
            .prop_map(|pairs| CacheCommand::PutMany { pairs, only_if_none_exist: true }),
        (bytes(), any::<u64>(), bytes()).prop_map(|(key, offset, value)| CacheCommand::SetRange {
            key,
            offset,
            value,
            max_len: 1 << 20
        }),
        proptest::collection::vec(bytes(), 0..4).prop_map(|keys| CacheCommand::Evict { keys }),
        any_transaction(),
        any_acl_change(),
        any_placement_change(),
    ]
}

fn any_placement_change() -> impl Strategy<Value = CacheCommand> {
    use crate::multiraft::{PlacementChange, ShardMap};
    let nodes =
        proptest::collection::btree_set(1u64..20, 1..6).prop_map(|n| n.into_iter().collect::<Vec<_>>());
    prop_oneof![
        (1u32..20, nodes.clone())
            .prop_map(|(shards, nodes)| PlacementChange::Init(ShardMap::initial(shards, &nodes, 3))),
        (any::<u32>(), any::<u64>(), nodes).prop_map(|(shard_id, epoch, members)| PlacementChange::Move {
            shard_id,
            epoch,
            members
        }),
        (any::<u32>(), any::<u64>())
            .prop_map(|(shard_id, epoch)| PlacementChange::Settle { shard_id, epoch }),
    ]
    .prop_map(CacheCommand::Placement)
}

fn any_acl_change() -> impl Strategy<Value = CacheCommand> {
    let name = prop_oneof![Just("a".to_owned()), Just("b".to_owned())];
    let rule = prop_oneof![
        Just("on"),
        Just("off"),
        Just(">pw"),
        Just("<pw"),
        Just("+get"),
        Just("-@all"),
        Just("~k:*"),
        Just("reset")
    ];
    prop_oneof![
        (name.clone(), proptest::collection::vec(rule, 0..4)).prop_map(|(name, rules)| {
            let rules: Vec<Bytes> =
                rules.into_iter().map(|r: &'static str| Bytes::from_static(r.as_bytes())).collect();
            CacheCommand::Acl(AclChange::set_user(&name, &rules).expect("valid rules"))
        }),
        proptest::collection::vec(name, 0..3)
            .prop_map(|names| CacheCommand::Acl(AclChange::DelUsers { names })),
    ]
}

fn any_transaction() -> impl Strategy<Value = CacheCommand> {
    use crate::consensus::transaction::{ReadCommand, TxStep, WatchedKey};
    let bytes = || proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from);
    let watch = (bytes(), any::<u64>(), any::<bool>()).prop_map(|(key, seen_index, live)| WatchedKey {
        key,
        seen_index,
        live,
    });
    let step = prop_oneof![
        proptest::collection::vec(bytes(), 1..3).prop_map(|keys| TxStep::Read(ReadCommand::Values { keys })),
        proptest::collection::vec(bytes(), 1..3).prop_map(|keys| TxStep::Read(ReadCommand::Meta { keys })),
        (bytes(), any::<i64>()).prop_map(|(key, delta)| TxStep::Write(CacheCommand::IncrBy { key, delta })),
        Just(TxStep::Write(CacheCommand::Clear)),
    ];
    (proptest::collection::vec(watch, 0..3), proptest::collection::vec(step, 0..4), any::<u64>()).prop_map(
        |(watches, steps, max_reply_bytes)| {
            CacheCommand::Transaction(Transaction { watches, steps, max_reply_bytes })
        },
    )
}

proptest! {
    #[test]
    fn encode_decode_round_trips(
        now_ms in any::<u64>(),
        cmd in any_command(),
        session in proptest::option::of(any::<(u64, u64, u64, u64)>()),
    ) {
        let mut stamped = StampedCommand::new(now_ms, cmd);
        stamped.session = session.map(|(origin, incarnation, seq, oldest_pending)| {
            SessionStamp { origin, incarnation, seq, oldest_pending, abandoned: vec![seq / 3] }
        });
        let bytes = stamped.encode();
        prop_assert_eq!(bytes[0], if stamped.session.is_some() { 4 } else { 3 });
        prop_assert_eq!(StampedCommand::decode(&bytes).unwrap(), stamped.clone());
        // As an earlier build wrote it: it decodes, and applies without the copy bound.
        stamped.bounded_copies = false;
        let bytes = stamped.encode();
        prop_assert_eq!(bytes[0], if stamped.session.is_some() { 2 } else { 1 });
        prop_assert_eq!(StampedCommand::decode(&bytes).unwrap(), stamped);
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = StampedCommand::decode(&bytes);
    }
}

#[test]
fn commands_of_many_keys_must_fit_in_one_raft_entry() {
    let limits = CommandLimits { max_key_bytes: 64, max_value_bytes: 8 << 20 };
    let value = Bytes::from(vec![b'v'; 8 << 20]);
    let two = CacheCommand::PutMany {
        pairs: vec![(Bytes::from("a"), value.clone()), (Bytes::from("b"), value.clone())],
        only_if_none_exist: false,
    };
    let max = crate::config::MAX_COMMAND_BYTES;
    assert!(matches!(two.validate(&limits), Err(CommandError::CommandTooLarge { max: m, .. }) if m == max));
    let one =
        CacheCommand::PutMany { pairs: vec![(Bytes::from("a"), value.clone())], only_if_none_exist: false };
    assert_eq!(one.validate(&limits), Ok(()));
    let keys: Vec<Bytes> = (0..400_000u32).map(|i| Bytes::from(format!("{i:060}"))).collect();
    assert!(matches!(
        CacheCommand::DeleteMany { keys }.validate(&limits),
        Err(CommandError::CommandTooLarge { .. })
    ));
    let batch =
        CacheCommand::Batch(vec![CacheCommand::put("a", value.clone()), CacheCommand::put("b", value)]);
    assert!(matches!(batch.validate(&limits), Err(CommandError::CommandTooLarge { .. })));
}

/// A command nesting batches a million levels deep (what a 16 MiB frame can hold) is refused
/// when decoded, instead of overflowing the decoding thread's stack (found in review).
#[test]
fn commands_and_outputs_nested_without_end_are_refused_when_decoded() {
    fn deep(one: &[u8], levels: usize) -> Vec<u8> {
        // `one` encodes a container holding one leaf: its first two bytes open a level.
        let mut bytes = Vec::with_capacity(levels * 2 + one.len());
        for _ in 0..levels {
            bytes.extend_from_slice(&one[..2]);
        }
        bytes.extend_from_slice(&one[2..]);
        bytes
    }
    let one = postcard::to_stdvec(&CacheCommand::Batch(vec![CacheCommand::Clear])).unwrap();
    assert!(postcard::from_bytes::<CacheCommand>(&deep(&one, 1_000_000)).is_err());
    let honest = CacheCommand::Batch(vec![CacheCommand::Batch(vec![CacheCommand::Clear])]);
    let bytes = postcard::to_stdvec(&honest).unwrap();
    assert_eq!(postcard::from_bytes::<CacheCommand>(&bytes).unwrap(), honest);
    assert!(
        postcard::from_bytes::<CacheCommand>(&deep(&one, 15)).is_ok(),
        "15 levels decode (validate refuses them)"
    );

    use crate::consensus::apply::ApplyOutput;
    let one = postcard::to_stdvec(&ApplyOutput::Batch(vec![ApplyOutput::Done])).unwrap();
    assert!(postcard::from_bytes::<ApplyOutput>(&deep(&one, 1_000_000)).is_err());
    let honest = ApplyOutput::Exec(Some(vec![ApplyOutput::Batch(vec![ApplyOutput::Int(1)])]));
    let bytes = postcard::to_stdvec(&honest).unwrap();
    assert_eq!(postcard::from_bytes::<ApplyOutput>(&bytes).unwrap(), honest);
}
