use super::*;

fn rules(rules: &[&str]) -> Vec<Bytes> {
    rules.iter().map(|r| Bytes::copy_from_slice(r.as_bytes())).collect()
}

#[test]
fn set_user_hashes_clear_passwords_before_they_reach_the_log() {
    let change = AclChange::set_user("alice", &rules(&["on", ">hunter2", "<old", "+get"])).unwrap();
    let AclChange::SetUser { rules: sent, .. } = &change else { unreachable!() };
    assert_eq!(sent[1], format!("#{}", hash_hex(&hash_password(b"hunter2"))));
    assert_eq!(sent[2], format!("!{}", hash_hex(&hash_password(b"old"))));
    let encoded =
        crate::consensus::command::StampedCommand::new(1, crate::CacheCommand::Acl(change)).encode();
    assert!(!encoded.windows(7).any(|w| w == b"hunter2"));
}

#[test]
fn set_user_refuses_bad_names_and_rules_before_proposing() {
    assert_eq!(AclChange::set_user("a b", &[]), Err(AclChangeError::BadName));
    assert!(matches!(AclChange::set_user("a", &rules(&["bogus"])), Err(AclChangeError::Rule(_))));
    let many = vec![Bytes::from_static(b"+get"); MAX_RULES + 1];
    assert_eq!(AclChange::set_user("a", &many), Err(AclChangeError::TooLarge));
}

#[test]
fn apply_builds_users_in_order_and_counts_generations() {
    let store = AclStore::default();
    let g0 = store.generation();
    let set = |name: &str, r: &[&str]| store.apply(&AclChange::set_user(name, &rules(r)).unwrap());
    assert_eq!(set("alice", &["on", ">pw", "~a:*"]), ApplyOutput::Done);
    assert_eq!(set("alice", &["+get"]), ApplyOutput::Done);
    let alice = store.user("alice").unwrap();
    assert!(alice.accepts(b"pw") && alice.permits_key(b"a:1", false));
    assert!(alice.permits_command("get", None, &[]));
    assert!(store.generation() > g0);
    assert_eq!(set("bob", &["on"]), ApplyOutput::Done);
    let del = AclChange::DelUsers { names: vec!["bob".into(), "nobody".into()] };
    assert_eq!(store.apply(&del), ApplyOutput::Int(1));
    assert_eq!(store.users().len(), 1);
}

#[test]
fn a_bad_entry_changes_nothing() {
    let store = AclStore::default();
    store.apply(&AclChange::set_user("alice", &rules(&["on", "+get"])).unwrap());
    let before = store.user("alice").unwrap();
    // Hand-made: one good rule, then one that does not parse, then removing an absent password.
    for bad in [
        rules(&["-get", "bogus"]),
        rules(&["-get", "!0000000000000000000000000000000000000000000000000000000000000000"]),
    ] {
        let change = AclChange::SetUser { name: "alice".into(), rules: bad };
        assert_eq!(store.apply(&change), ApplyOutput::Failed(ApplyError::AclRule));
    }
    assert_eq!(store.user("alice").unwrap(), before);
    let bad_name = AclChange::SetUser { name: "has space".into(), rules: vec![] };
    assert_eq!(store.apply(&bad_name), ApplyOutput::Failed(ApplyError::AclRule));
}

#[test]
fn replace_loads_a_file_once_when_asked() {
    let store = AclStore::default();
    let users = vec![
        ("default".to_owned(), rules(&["on", "nopass", "+@all", "~*"])),
        ("ro".to_owned(), rules(&["on", "+@read"])),
    ];
    assert_eq!(store.apply(&AclChange::replace(&users, true).unwrap()), ApplyOutput::Int(2));
    let other = vec![("x".to_owned(), rules(&["on"]))];
    assert_eq!(store.apply(&AclChange::replace(&other, true).unwrap()), ApplyOutput::Int(-1));
    assert!(store.user("ro").is_some());
    assert_eq!(store.apply(&AclChange::replace(&other, false).unwrap()), ApplyOutput::Int(1));
    assert!(store.user("ro").is_none() && store.user("x").is_some());
}

#[test]
fn snapshot_data_round_trips() {
    let store = AclStore::default();
    store.apply(&AclChange::set_user("alice", &rules(&["on", ">pw", "~a:*", "+@read"])).unwrap());
    let copy = AclStore::default();
    let g = copy.generation();
    copy.restore(store.data());
    assert_eq!(copy.user("alice"), store.user("alice"));
    assert!(copy.generation() > g);
}
