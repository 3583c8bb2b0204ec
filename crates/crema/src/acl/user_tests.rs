use super::*;

fn user(rules: &[&str]) -> User {
    let mut user = User::new();
    for rule in rules {
        user.apply(&Rule::parse(rule.as_bytes()).unwrap()).unwrap();
    }
    user
}

#[test]
fn a_new_user_can_do_nothing() {
    let u = User::new();
    assert!(!u.accepts(b""));
    assert!(!u.permits_command("get", None, &["read", "string", "fast"]));
    assert!(!u.permits_key(b"k", false));
    assert_eq!(u.describe(), "off -@all");
}

#[test]
fn passwords_are_kept_hashed_and_checked() {
    let u = user(&["on", ">s3cret"]);
    assert!(u.accepts(b"s3cret") && !u.accepts(b"other"));
    assert_eq!(u.passwords.iter().next(), Some(&hash_password(b"s3cret")));
    let hex = hash_hex(&hash_password(b"two"));
    let u = user(&["on", ">s3cret", &format!("#{hex}"), "<s3cret"]);
    assert!(!u.accepts(b"s3cret") && u.accepts(b"two"));
    assert!(!user(&[">s3cret"]).accepts(b"s3cret"), "an off user never logs in");
    assert!(user(&["on", "nopass"]).accepts(b"anything"));
    assert!(!user(&["on", "nopass", "resetpass"]).accepts(b"anything"));
    let mut u = user(&["on"]);
    assert_eq!(u.apply(&Rule::parse(b"<never-set").unwrap()), Err("no such password"));
}

#[test]
fn bad_rules_are_refused_with_redis_words() {
    for bad in ["#abc", "!zz", "%X~k", "(~k +get)", "+", "-@", "bogus"] {
        assert!(Rule::parse(bad.as_bytes()).is_err(), "{bad}");
    }
    let e = Rule::parse(b"frobnicate").unwrap_err();
    assert_eq!(e.to_string(), "Error in ACL SETUSER modifier 'frobnicate': Syntax error");
    // The clear password never shows in an error.
    assert!(!Rule::parse(b"(").unwrap_err().to_string().contains("secret"));
}

#[test]
fn the_last_matching_command_rule_decides() {
    let read = ["read", "string", "fast"];
    let flush = ["keyspace", "write", "slow", "dangerous"];
    let u = user(&["+@all", "-@dangerous"]);
    assert!(u.permits_command("get", None, &read));
    assert!(!u.permits_command("flushall", None, &flush));
    let u = user(&["+@all", "-@dangerous", "+flushall"]);
    assert!(u.permits_command("flushall", None, &flush));
    let u = user(&["+@read", "-get"]);
    assert!(!u.permits_command("get", None, &read) && u.permits_command("strlen", None, &read));
    let u = user(&["+@read", "-get", "+@read"]);
    assert!(u.permits_command("get", None, &read), "a later +@read allows get again");
    let u = user(&["+@all", "nocommands"]);
    assert!(!u.permits_command("get", None, &read));
    let u = user(&["+config|get"]);
    assert!(u.permits_command("config", Some("get"), &["admin"]));
    assert!(!u.permits_command("config", Some("set"), &["admin"]));
}

#[test]
fn key_patterns_grant_read_write_or_both() {
    let u = user(&["~user:*", "%R~public:*", "%W~inbox:*"]);
    assert!(u.permits_key(b"user:1", false) && u.permits_key(b"user:1", true));
    assert!(u.permits_key(b"public:x", false) && !u.permits_key(b"public:x", true));
    assert!(!u.permits_key(b"inbox:x", false) && u.permits_key(b"inbox:x", true));
    assert!(!u.permits_key(b"admin:1", false));
    assert!(!user(&["~user:*", "resetkeys"]).permits_key(b"user:1", false));
    assert!(user(&["allkeys"]).permits_key(b"anything", true));
}

#[test]
fn describe_rebuilds_the_same_user() {
    let cases: &[&[&str]] = &[
        &["on", ">p", "~user:*", "%R~pub:*", "&chan", "+@read", "-strlen", "+set"],
        &["on", "nopass", "allkeys", "allchannels", "allcommands", "-@dangerous"],
        &["off"],
        &["on", "#0000000000000000000000000000000000000000000000000000000000000001", "+get"],
    ];
    for rules in cases {
        let u = user(rules);
        let line = u.describe();
        let again = user(&line.split(' ').collect::<Vec<_>>());
        assert_eq!(again, u, "{rules:?} -> {line}");
    }
    assert_eq!(User::everything([]).describe(), "on nopass ~* &* +@all");
    assert!(User::everything([]).is_unrestricted() && !user(&["+@all"]).is_unrestricted());
}

#[test]
fn repeated_rules_do_not_grow_the_user() {
    let mut u = User::new();
    for _ in 0..100 {
        for rule in ["+get", "-get", "+@read", "~k:*", "&c"] {
            u.apply(&Rule::parse(rule.as_bytes()).unwrap()).unwrap();
        }
    }
    assert_eq!((u.commands.len(), u.keys.len(), u.channels.len()), (2, 1, 1));
}

#[test]
fn user_names() {
    assert!(valid_user_name("alice") && valid_user_name("svc:app-1"));
    assert!(!valid_user_name("") && !valid_user_name("a b") && !valid_user_name("a\nb"));
    assert!(!valid_user_name(&"x".repeat(129)));
}
