//! ACL users against real `crema serve` processes and the `redis` crate: users made on one
//! node log in on every other (the users are replicated through Raft), categories and key
//! patterns hold on every node, a user without `+@admin` cannot change users, a deleted user's
//! connections close, and the ACL file is loaded at start, saved and reloaded.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use redis::aio::MultiplexedConnection;
use redis::Value;

async fn login(addr: SocketAddr, user: &str, password: &str) -> redis::RedisResult<MultiplexedConnection> {
    let url = format!("redis://{user}:{password}@{addr}/");
    redis::Client::open(url)?.get_multiplexed_async_connection().await
}

async fn cmd(c: &mut MultiplexedConnection, args: &[&str]) -> redis::RedisResult<Value> {
    let mut command = redis::cmd(args[0]);
    for a in &args[1..] {
        command.arg(*a);
    }
    command.query_async(c).await
}

/// The error code and text of a refused command.
async fn refused(c: &mut MultiplexedConnection, args: &[&str]) -> String {
    match cmd(c, args).await {
        Ok(v) => panic!("{args:?} was allowed: {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_made_on_one_node_log_in_everywhere_and_their_rules_hold() {
    let nodes = start_cluster(3, &[]);
    let follower = (leader_of(&nodes).await + 1) % 3;
    // Made through a follower: the change is forwarded to the leader and replicated.
    let mut admin = client(nodes[follower].resp).await;
    for rules in [
        &["reader", "on", ">rpw", "~user:*", "+@read"][..],
        &["writer", "on", ">wpw", "~user:*", "%R~public:*", "+@all", "-@dangerous", "-@admin"][..],
    ] {
        let mut args = vec!["ACL", "SETUSER"];
        args.extend(rules);
        assert_eq!(cmd(&mut admin, &args).await.unwrap(), Value::Okay);
    }

    for node in &nodes {
        // At once on every node: a login this node refuses is retried after a read barrier.
        let mut reader = login(node.resp, "reader", "rpw").await.expect("reader logs in");
        let whoami = cmd(&mut reader, &["ACL", "WHOAMI"]).await;
        assert!(whoami.is_err(), "ACL WHOAMI is not in @read: {whoami:?}");
        assert_eq!(cmd(&mut reader, &["GET", "user:never"]).await.unwrap(), Value::Nil);
        assert_eq!(
            refused(&mut reader, &["SET", "user:1", "x"]).await,
            "NOPERM User reader has no permissions to run the 'set' command"
        );
        assert_eq!(refused(&mut reader, &["GET", "other:1"]).await, "NOPERM No permissions to access a key");
        assert!(refused(&mut reader, &["FLUSHALL"]).await.starts_with("NOPERM"));

        let mut writer = login(node.resp, "writer", "wpw").await.expect("writer logs in");
        assert_eq!(cmd(&mut writer, &["SET", "user:1", "x"]).await.unwrap(), Value::Okay);
        assert_eq!(cmd(&mut writer, &["GET", "public:news"]).await.unwrap(), Value::Nil);
        assert!(refused(&mut writer, &["SET", "public:news", "x"]).await.contains("access a key"));
        assert!(refused(&mut writer, &["MSET", "user:2", "a", "other:2", "b"])
            .await
            .contains("access a key"));
        assert!(refused(&mut writer, &["FLUSHALL"]).await.contains("'flushall'"));
        assert!(refused(&mut writer, &["KEYS", "*"]).await.contains("'keys'"), "KEYS is @dangerous");
        // Without @admin: no user changes.
        assert!(refused(&mut writer, &["ACL", "SETUSER", "writer", "+@all"]).await.contains("'acl|setuser'"));
        assert!(refused(&mut writer, &["ACL", "DELUSER", "reader"]).await.contains("'acl|deluser'"));
        // Transactions check at queue time, as Redis does.
        assert_eq!(cmd(&mut writer, &["MULTI"]).await.unwrap(), Value::Okay);
        assert!(refused(&mut writer, &["FLUSHALL"]).await.starts_with("NOPERM"));
        assert!(refused(&mut writer, &["EXEC"]).await.starts_with("EXECABORT"));

        assert!(login(node.resp, "reader", "wrong").await.is_err());
        assert!(login(node.resp, "nobody", "rpw").await.is_err());
    }
    // The refusals are in this node's ACL log, newest first.
    let mut local = client(nodes[2].resp).await;
    let log = format!("{:?}", cmd(&mut local, &["ACL", "LOG", "20"]).await.unwrap());
    for expected in ["\"auth\"", "\"command\"", "\"key\"", "\"flushall\"", "\"reader\""] {
        assert!(log.contains(expected), "{expected} not in {log}");
    }
    assert_eq!(cmd(&mut local, &["ACL", "LOG", "RESET"]).await.unwrap(), Value::Okay);
    assert_eq!(cmd(&mut local, &["ACL", "LOG"]).await.unwrap(), Value::Array(vec![]));
    // Passwords are kept as SHA-256 only.
    let list = format!("{:?}", cmd(&mut local, &["ACL", "LIST"]).await.unwrap());
    assert!(!list.contains("rpw") && list.contains("user reader on #"), "{list}");

    // Rules changed between MULTI and EXEC apply at EXEC, as in Redis 7 (found from outside:
    // the queued commands ran with the rules of the moment they were queued). Changed through
    // the node the transaction runs on: its answer comes once that node applied the change.
    let mut admin = client(nodes[0].resp).await;
    let rules = ["ACL", "SETUSER", "tx", "on", ">tpw", "~user:*", "+@all", "-@admin"];
    assert_eq!(cmd(&mut admin, &rules).await.unwrap(), Value::Okay);
    assert_eq!(cmd(&mut admin, &["SET", "user:{t}a", "before"]).await.unwrap(), Value::Okay);
    let mut tx = tokio::net::TcpStream::connect(nodes[0].resp).await.unwrap();
    let queued = say(&mut tx, b"AUTH tx tpw\r\nMULTI\r\nGET user:{t}a\r\nSET user:{t}b written\r\n", 4).await;
    assert_eq!(queued, "+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n");
    let narrowed = ["ACL", "SETUSER", "tx", "resetkeys", "%R~user:*"];
    assert_eq!(cmd(&mut admin, &narrowed).await.unwrap(), Value::Okay);
    let exec = say(&mut tx, b"EXEC\r\n", 4).await;
    assert!(
        exec.starts_with("*2\r\n$6\r\nbefore\r\n-NOPERM ACLs rules changed between the moment the transaction was accumulated and the EXEC call."),
        "{exec}"
    );
    assert_eq!(
        cmd(&mut admin, &["GET", "user:{t}b"]).await.unwrap(),
        Value::Nil,
        "the refused SET did not run"
    );
}

/// Sends `bytes` on `stream` and reads until `lines` lines (or 5 s).
async fn say(stream: &mut tokio::net::TcpStream, bytes: &[u8], lines: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while out.windows(2).filter(|w| w == b"\r\n").count() < lines {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_auth_default_password_and_deleted_users() {
    let nodes = start_cluster(3, &["--password", "first"]);
    let mut admin = login(nodes[0].resp, "default", "first").await.unwrap();
    cmd(&mut admin, &["ACL", "SETUSER", "app", "on", ">apw", "allkeys", "+@all"]).await.unwrap();

    // HELLO 3 AUTH on another node.
    let hello = raw_until(nodes[1].resp, b"HELLO 3 AUTH app apw\r\nACL WHOAMI\r\n", b"app\r\n").await;
    assert!(String::from_utf8_lossy(&hello).ends_with("app\r\n"), "{}", String::from_utf8_lossy(&hello));

    // The default user's password changes for the whole cluster once ACL sets it.
    cmd(&mut admin, &["ACL", "SETUSER", "default", ">second", "<first"]).await.unwrap();
    for node in &nodes {
        assert!(login(node.resp, "default", "second").await.is_ok());
        assert!(login(node.resp, "default", "first").await.is_err());
    }

    // Deleting a user closes its connections on every node.
    let mut app = login(nodes[2].resp, "app", "apw").await.unwrap();
    assert_eq!(cmd(&mut app, &["SET", "k", "v"]).await.unwrap(), Value::Okay);
    assert_eq!(cmd(&mut admin, &["ACL", "DELUSER", "app"]).await.unwrap(), Value::Int(1));
    let mut admin2 = login(nodes[2].resp, "default", "second").await.unwrap();
    assert_eq!(cmd(&mut admin2, &["ACL", "GETUSER", "app"]).await.unwrap(), Value::Nil);
    let after = cmd(&mut app, &["GET", "k"]).await;
    assert!(after.is_err(), "a deleted user's connection must not serve: {after:?}");
    assert!(login(nodes[2].resp, "app", "apw").await.is_err());
    assert!(refused(&mut admin, &["ACL", "DELUSER", "default"]).await.contains("cannot be removed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_file_is_loaded_saved_reloaded_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.acl");
    std::fs::write(
        &file,
        // Rules may name Redis commands this node does not have, as a hardened file does (found
        // from outside: the node refused to start on `-debug`).
        "# crema users\nuser default on >root ~* &* +@all -debug -SHUTDOWN\nuser alice on >apw ~a:* +@read\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let args =
        ["--aclfile", file.to_str().unwrap(), "--storage", "rocksdb", "--data-dir", data.to_str().unwrap()];
    let node = start(&args);
    // The file is proposed once the node leads: wait for its users.
    wait_until(Duration::from_secs(10), "the ACL file is loaded", || async {
        login(node.resp, "alice", "apw").await.is_ok()
    })
    .await;
    let mut root = login(node.resp, "default", "root").await.expect("the file's default password works");
    assert!(login(node.resp, "alice", "apw").await.is_ok());
    cmd(&mut root, &["ACL", "SETUSER", "bob", "on", ">bpw", "+get", "~*"]).await.unwrap();
    assert_eq!(cmd(&mut root, &["ACL", "SAVE"]).await.unwrap(), Value::Okay);
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains("user bob on #") && !saved.contains("bpw") && !saved.contains(">"), "{saved}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // Users survive a restart (replayed from the log), and the file is not loaded over them.
    std::fs::write(&file, "user default on >root ~* &* +@all\n").unwrap();
    drop(node);
    let node = start(&args);
    let mut root = login(node.resp, "default", "root").await.unwrap();
    assert!(login(node.resp, "bob", "bpw").await.is_ok(), "bob is still a user after the restart");
    // ACL LOAD replaces the users with the file's.
    assert_eq!(cmd(&mut root, &["ACL", "LOAD"]).await.unwrap(), Value::Okay);
    assert!(login(node.resp, "bob", "bpw").await.is_err());
    assert_eq!(
        cmd(&mut root, &["ACL", "USERS"]).await.unwrap(),
        Value::Array(vec![Value::BulkString(b"default".to_vec())])
    );

    // A bad file stops the node before it serves, naming the line.
    std::fs::write(&file, "user a on\nuser b on +nosuchcommand\n").unwrap();
    let bad = dir.path().join("bad-data");
    let err = try_start(&["--aclfile", file.to_str().unwrap(), "--data-dir", bad.to_str().unwrap()]).err();
    assert!(err.is_some(), "a node with a bad ACL file must not start");
}

/// A refused login's name is kept in the ACL log at most 1 KiB long: where the default user
/// needs no password, an `AUTH` may name a user of 16 MiB, and the log keeps 128 entries.
#[tokio::test]
async fn the_acl_log_keeps_at_most_a_kibibyte_of_a_refused_name() {
    let node = start(&[]);
    let mut c = client(node.resp).await;
    let long_name = "n".repeat(100_000);
    assert!(refused(&mut c, &["AUTH", &long_name, "guess"]).await.starts_with("WRONGPASS"));
    let log = format!("{:?}", cmd(&mut c, &["ACL", "LOG"]).await.unwrap());
    assert!(log.contains(&"n".repeat(1024)), "the name is shown");
    assert!(!log.contains(&"n".repeat(1025)), "and at most 1 KiB of it");
}
