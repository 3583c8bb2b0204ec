//! `CLIENT LIST` and `CLIENT KILL` over every client of a node (they once showed and reached
//! the calling connection only): listed with what each set (name, library, last command), and
//! closed by address, id, user or age, the caller spared unless it asks otherwise.

mod common;

use common::cmd::{err, ok, q};
use common::*;
use redis::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_shows_every_client_and_client_kill_closes_them() {
    let node = start(&[]);
    let admin = &mut client(node.resp).await;
    let admin_id: i64 = q(admin, &["CLIENT", "ID"]).await.unwrap();

    // Two other clients: one named through the redis crate, one over a raw socket.
    let named = &mut client(node.resp).await;
    ok(named, &["CLIENT", "SETNAME", "worker-7"]).await;
    ok(named, &["CLIENT", "SETINFO", "LIB-NAME", "mylib"]).await;
    ok(named, &["SET", "k", "v"]).await;
    let named_id: i64 = q(named, &["CLIENT", "ID"]).await.unwrap();
    let mut raw = TcpStream::connect(node.resp).await.unwrap();
    raw.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_some(&mut raw, 7).await, b"+PONG\r\n");
    let raw_addr = raw.local_addr().unwrap().to_string();

    let list: String = q(admin, &["CLIENT", "LIST"]).await.unwrap();
    assert_eq!(list.lines().count(), 3, "{list}");
    let line = list.lines().find(|l| l.starts_with(&format!("id={named_id} "))).unwrap();
    assert!(line.contains("name=worker-7") && line.contains("lib-name=mylib"), "{line}");
    assert!(line.contains("cmd=client") || line.contains("cmd=set"), "{line}");
    assert!(list.contains(&format!("addr={raw_addr} ")), "{list}");
    let only: String = q(admin, &["CLIENT", "LIST", "ID", &named_id.to_string()]).await.unwrap();
    assert_eq!(only.lines().count(), 1, "{only}");
    let none: String = q(admin, &["CLIENT", "LIST", "TYPE", "pubsub"]).await.unwrap();
    assert!(none.is_empty());
    assert!(err(admin, &["CLIENT", "LIST", "TYPE", "odd"]).await.contains("Unknown client type"));

    // By address (the old form): the raw client is closed.
    assert_eq!(ok(admin, &["CLIENT", "KILL", &raw_addr]).await, Value::Okay);
    assert!(closed_by_peer(&mut raw).await, "the killed client was closed");
    assert!(err(admin, &["CLIENT", "KILL", "127.0.0.1:1"]).await.contains("No such client"));
    // By id: one closed; the caller is spared unless SKIPME no.
    assert_eq!(q::<i64>(admin, &["CLIENT", "KILL", "ID", &named_id.to_string()]).await.unwrap(), 1);
    assert!(q::<String>(named, &["PING"]).await.is_err(), "the killed connection is gone");
    assert_eq!(
        q::<i64>(admin, &["CLIENT", "KILL", "USER", "default"]).await.unwrap(),
        0,
        "only the caller is left"
    );
    assert_eq!(q::<i64>(admin, &["CLIENT", "KILL", "MAXAGE", "100000"]).await.unwrap(), 0);
    let list: String = q(admin, &["CLIENT", "LIST"]).await.unwrap();
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.starts_with(&format!("id={admin_id} ")), "{list}");
    assert!(err(admin, &["CLIENT", "KILL", "ID", "0"]).await.contains("greater than 0"));
    assert!(err(admin, &["CLIENT", "KILL", "ID", "1", "SKIPME"]).await.contains("syntax error"));
    let killed_self = q::<i64>(admin, &["CLIENT", "KILL", "ID", &admin_id.to_string(), "SKIPME", "no"]).await;
    assert_eq!(killed_self.unwrap(), 1);
    assert!(q::<String>(admin, &["PING"]).await.is_err(), "the caller closed itself");
    let mut c = client(node.resp).await;
    assert_eq!(ok(&mut c, &["GET", "k"]).await, Value::BulkString(b"v".to_vec()), "the node serves on");
}
