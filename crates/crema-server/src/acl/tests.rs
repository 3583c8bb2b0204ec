use super::*;
use crate::cmd::{lookup, ReadMode};
use crema::acl::AclChange;
use crema::cache::storage::{CacheStorage, StorageLimits};
use crema::consensus::command::StampedCommand;
use crema::{CacheCommand, CacheStateMachine};

/// A state machine to apply changes into, and the server's view of its users.
fn access(password: Option<&str>) -> (CacheStateMachine, Access) {
    let limits = StorageLimits { max_capacity: 100, max_memory_bytes: None, time_to_idle: None };
    let sm = CacheStateMachine::new(CacheStorage::new(limits));
    let access = Access::new(sm.acl().clone(), password, None);
    (sm, access)
}

fn apply(sm: &mut CacheStateMachine, change: AclChange) {
    let index = sm.applied_index() + 1;
    sm.apply(index, &StampedCommand::new(1, CacheCommand::Acl(change)));
}

fn args(words: &[&str]) -> Vec<Bytes> {
    words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
}

fn session(user: Option<SessionUser>) -> Session {
    Session::new(1, "127.0.0.1:1".parse().unwrap(), user, ReadMode::Linearizable)
}

fn check(access: &Access, session: &mut Session, words: &[&str]) -> Result<(), CmdError> {
    let spec = lookup(words[0].as_bytes()).unwrap();
    access.check(session, spec, &args(words), true)
}

#[test]
fn the_default_user_follows_the_password_flag_until_the_cluster_has_one() {
    assert!(access(None).1.starting_user().is_some(), "no password: everyone starts logged in");
    let (mut sm, a) = access(Some("pw"));
    assert!(a.starting_user().is_none());
    assert!(a.login(DEFAULT_USER, b"pw").is_some() && a.login(DEFAULT_USER, b"no").is_none());
    // A first ACL SETUSER default builds on the password this node enforces.
    let base = a.default_base_rules();
    let change = AclChange::set_user(DEFAULT_USER, &[base, args(&["~cache:*"])].concat()).unwrap();
    apply(&mut sm, change);
    let user = a.user(DEFAULT_USER).unwrap();
    assert!(user.accepts(b"pw") && user.permits_key(b"anything", true), "{}", user.describe());
    assert!(a.default_base_rules().is_empty(), "later changes build on the replicated record");
    assert_eq!(a.user_names(), vec!["default".to_owned()]);
}

#[test]
fn checks_use_categories_subcommands_and_keys_and_are_logged() {
    let (mut sm, a) = access(None);
    let rules = args(&["on", "nopass", "~app:*", "+@all", "-@admin", "+acl|whoami"]);
    apply(&mut sm, AclChange::set_user("app", &rules).unwrap());
    let mut s = session(a.login("app", b""));
    assert!(check(&a, &mut s, &["GET", "app:1"]).is_ok());
    assert!(matches!(check(&a, &mut s, &["GET", "other"]), Err(CmdError::NoPermKey)));
    assert!(check(&a, &mut s, &["ACL", "WHOAMI"]).is_ok());
    let refused = check(&a, &mut s, &["ACL", "SETUSER", "x"]).unwrap_err();
    assert_eq!(refused.to_string(), "User app has no permissions to run the 'acl|setuser' command");
    assert!(matches!(check(&a, &mut s, &["CONFIG", "GET", "x"]), Err(CmdError::NoPermCommand { .. })));
    assert!(check(&a, &mut s, &["AUTH", "x"]).is_ok(), "a user may always log in again");
    let log = format!("{:?}", a.log.reply(10));
    assert!(log.contains("acl|setuser") && log.contains("other"), "{log}");
}

#[test]
fn a_deleted_or_disabled_user_ends_its_sessions() {
    let (mut sm, a) = access(None);
    apply(&mut sm, AclChange::set_user("app", &args(&["on", "nopass", "allkeys", "+@all"])).unwrap());
    let mut s = session(a.login("app", b""));
    assert!(check(&a, &mut s, &["GET", "k"]).is_ok());
    apply(&mut sm, AclChange::set_user("app", &args(&["off"])).unwrap());
    assert!(matches!(check(&a, &mut s, &["GET", "k"]), Err(CmdError::UserGone)));
    assert!(s.quit, "the connection closes after the reply");
}

/// Found from outside: every key of a write was checked for writing alone, so a user with only
/// `%W~secret:*` read the values through the writes that return or copy them.
#[test]
fn a_write_that_returns_or_copies_a_value_needs_read_access_too() {
    let (mut sm, a) = access(None);
    let rules = args(&["on", "nopass", "%W~secret:*", "%R~pub:*", "~app:*", "+@all"]);
    apply(&mut sm, AclChange::set_user("wo", &rules).unwrap());
    let mut s = session(a.login("wo", b""));
    let refused = |s: &mut Session, words: &[&str]| matches!(check(&a, s, words), Err(CmdError::NoPermKey));
    // Writes alone: a write pattern is enough.
    for words in [
        &["SET", "secret:a", "v"][..],
        &["SET", "secret:a", "v", "EX", "10"],
        &["SETNX", "secret:a", "v"],
        &["MSET", "secret:a", "v", "secret:b", "w"],
        &["APPEND", "secret:a", "v"],
        &["SETRANGE", "secret:a", "0", "v"],
        &["DEL", "secret:a"],
        &["EXPIRE", "secret:a", "10"],
        &["COPY", "pub:x", "app:y"],
        &["COPY", "app:x", "secret:y"],
        &["RENAME", "app:x", "secret:y"],
    ] {
        assert!(check(&a, &mut s, words).is_ok(), "{words:?}");
    }
    // Writes that hand the value back, or copy it: read access too.
    for words in [
        &["GET", "secret:a"][..],
        &["GETSET", "secret:a", "x"],
        &["GETDEL", "secret:a"],
        &["GETEX", "secret:a"],
        &["SET", "secret:a", "v", "GET"],
        &["SET", "secret:a", "v", "NX", "get"],
        &["INCR", "secret:n"],
        &["INCRBY", "secret:n", "1"],
        &["DECR", "secret:n"],
        &["DECRBY", "secret:n", "1"],
        &["INCRBYFLOAT", "secret:n", "1.5"],
        &["COPY", "secret:a", "app:b"],
        &["RENAME", "secret:a", "app:b"],
        &["RENAMENX", "secret:a", "app:b"],
        // A read-only pattern grants no write, the source of a COPY included.
        &["COPY", "app:x", "pub:y"],
        &["RENAME", "pub:x", "app:y"],
        &["GETSET", "pub:x", "v"],
    ] {
        assert!(refused(&mut s, words), "{words:?} must need read and write access");
    }
    // Neither reading nor writing the value: any pattern that matches will do, as in Redis.
    for words in [
        &["EXISTS", "secret:a"][..],
        &["TYPE", "secret:a"],
        &["STRLEN", "secret:a"],
        &["TOUCH", "secret:a"],
        &["WATCH", "secret:a"],
        &["OBJECT", "ENCODING", "secret:a"],
        &["MEMORY", "USAGE", "secret:a"],
        &["EXISTS", "pub:a"],
    ] {
        assert!(check(&a, &mut s, words).is_ok(), "{words:?}");
    }
    assert!(refused(&mut s, &["EXISTS", "other:a"]), "a key no pattern matches");
    assert!(refused(&mut s, &["TTL", "secret:a"]), "TTL reads (Redis's RO and ACCESS)");
    assert!(check(&a, &mut s, &["GETSET", "app:a", "x"]).is_ok(), "`~` grants both");
    assert!(check(&a, &mut s, &["INCR", "app:n"]).is_ok());
}
