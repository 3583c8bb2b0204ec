//! `CLIENT LIST` and `CLIENT KILL` over every client of a node (they once showed and reached
//! the calling connection only): listed with what each set (name, library, last command), and
//! closed by address, id, user or age, the caller spared unless it asks otherwise.

mod common;

use common::cmd::{err, ok, q};
use common::*;
use redis::Value;
use std::time::Duration;
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

/// The id `CLIENT LIST` gives the client at `addr`, once it is listed.
async fn id_of(admin: &mut redis::aio::MultiplexedConnection, addr: &str) -> String {
    let listed = format!("addr={addr} ");
    let started = std::time::Instant::now();
    let list = loop {
        let list: String = q(admin, &["CLIENT", "LIST"]).await.unwrap();
        if list.contains(&listed) {
            break list;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{addr} not listed: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let line = list.lines().find(|l| l.contains(&listed)).expect("listed");
    line.split(' ').next().unwrap().trim_start_matches("id=").to_owned()
}

/// Found from outside: `CLIENT KILL` was looked at only when a connection went back to
/// reading, so a client whose replies waited (reading slowly, or not at all) was served on
/// until the write timeout, and one that killed itself ran the rest of its pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_stops_at_once_whatever_it_has_sent() {
    let node = start(&["--write-timeout-ms", "120000"]);
    let admin = &mut client(node.resp).await;
    let big = vec![b'v'; 1 << 20];
    let () = redis::cmd("SET").arg("big").arg(&big).query_async(admin).await.unwrap();

    // A client that asks for 2 GB of replies and reads none.
    let mut victim = TcpStream::connect(node.resp).await.unwrap();
    let addr = victim.local_addr().unwrap().to_string();
    victim.write_all(&b"GET big\r\n".repeat(2000)).await.unwrap();
    kill_and_see_it_leave(admin, &addr).await;

    // A client that kills itself gets the reply, and nothing after it runs.
    let mut own = TcpStream::connect(node.resp).await.unwrap();
    let addr = own.local_addr().unwrap().to_string();
    own.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_some(&mut own, 7).await, b"+PONG\r\n");
    let id = id_of(admin, &addr).await;
    let pipeline = format!("CLIENT KILL ID {id} SKIPME no\r\nSET afterkill 1\r\nINCR afterkill\r\n");
    own.write_all(pipeline.as_bytes()).await.unwrap();
    assert_eq!(read_some(&mut own, 100).await, b":1\r\n", "its reply, then the close");
    assert_eq!(ok(admin, &["GET", "afterkill"]).await, Value::Nil);
}

/// Found from outside: a client that kept pipelining while it read its replies slowly kept a
/// node that had been told to stop (its port already closed) running for as long as it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_whose_client_never_stops_sending() {
    use tokio::io::AsyncReadExt;
    let mut node = start(&["--write-timeout-ms", "120000"]);
    let admin = &mut client(node.resp).await;
    let () = redis::cmd("SET").arg("big").arg(vec![b'v'; 64 << 10]).query_async(admin).await.unwrap();
    let stream = TcpStream::connect(node.resp).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender =
        tokio::spawn(async move { while writer.write_all(&b"GET big\r\n".repeat(100)).await.is_ok() {} });
    let slow_reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut taken = 0usize;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return taken,
                Ok(n) => taken += n,
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    // The client is busy: its replies flow.
    wait_until(std::time::Duration::from_secs(10), "the client's replies flow", || async {
        let info: String = q(&mut admin.clone(), &["INFO", "stats"]).await.unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("keyspace_hits:"))
            .is_some_and(|n| n.trim().parse::<u64>().unwrap() > 1000)
    })
    .await;
    stops_on_sigterm(&mut node, std::time::Duration::from_secs(20)).await;
    assert!(slow_reader.await.unwrap() > 0, "the client was served before the stop");
    sender.abort();
}

/// Found from outside: a KEYS walk over many keys ran on to its end after its client was
/// killed (the connection answered the kill only once the command was done), and walks on
/// blocking threads held a node told to stop until they ended (45 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_keys_ends_with_its_client_and_with_the_node() {
    const KEYS: usize = 50_000;
    let mut node = start(&[]);
    let admin = &mut client(node.resp).await;
    for chunk in 0..KEYS / 1000 {
        let mut mset = redis::cmd("MSET");
        for i in chunk * 1000..(chunk + 1) * 1000 {
            mset.arg(format!("key:{i}")).arg("v");
        }
        let () = mset.query_async(admin).await.unwrap();
    }
    // A pattern each key costs a million steps to refuse: the walk takes far longer than the
    // waits below (tens of seconds for a release build, minutes for a debug one).
    let pattern = format!("{}z", "*".repeat(1_000_000));
    // Runs KEYS on a new connection, right after a SET of `marker` in the same batch: once
    // the marker is readable, the KEYS is running.
    let (watcher, resp) = (admin.clone(), node.resp);
    let start_keys = |marker: &'static str| {
        let pattern = pattern.clone();
        let admin = watcher.clone();
        async move {
            let mut stream = TcpStream::connect(resp).await.unwrap();
            let addr = stream.local_addr().unwrap().to_string();
            let request =
                format!("SET {marker} 1\r\n*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len());
            stream.write_all(request.as_bytes()).await.unwrap();
            wait_until(std::time::Duration::from_secs(10), "the KEYS starts", || {
                let mut admin = admin.clone();
                async move { q::<Option<String>>(&mut admin, &["GET", marker]).await.unwrap().is_some() }
            })
            .await;
            (stream, addr)
        }
    };

    let (_victim, addr) = start_keys("marker1").await;
    kill_and_see_it_leave(admin, &addr).await;
    // A client that hangs up ends its KEYS too, once it has run a second (found from outside:
    // abandoned KEYS queued for their turn by the thousand).
    let (hung_up, addr) = start_keys("marker4").await;
    drop(hung_up);
    leaves_the_list(admin, &addr, "the client that hung up leaves the list").await;

    // Two walks running (one more than the node has cores to spare), and the node told to stop.
    let _first = start_keys("marker2").await;
    let _second = start_keys("marker3").await;
    // The connections get SHUTDOWN_GRACE (10 s) to finish, then are dropped with their walks.
    stops_on_sigterm(&mut node, std::time::Duration::from_secs(25)).await;
}

/// `CLIENT KILL`s the client at `addr` through `admin`, and waits up to 5 s for it to leave the
/// client list.
async fn kill_and_see_it_leave(admin: &mut redis::aio::MultiplexedConnection, addr: &str) {
    let id = id_of(admin, addr).await;
    assert_eq!(q::<i64>(admin, &["CLIENT", "KILL", "ID", &id]).await.unwrap(), 1);
    leaves_the_list(admin, addr, "the killed client leaves the list").await;
}

/// Waits up to 5 s for the client at `addr` to leave `admin`'s client list.
async fn leaves_the_list(admin: &mut redis::aio::MultiplexedConnection, addr: &str, what: &str) {
    wait_until(std::time::Duration::from_secs(5), what, || {
        let mut admin = admin.clone();
        let addr = format!("addr={addr} ");
        async move { !q::<String>(&mut admin, &["CLIENT", "LIST"]).await.unwrap().contains(&addr) }
    })
    .await;
}

/// Sends `node` SIGTERM and waits up to `within` for it to exit, successfully.
async fn stops_on_sigterm(node: &mut Node, within: std::time::Duration) {
    let status = std::process::Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status();
    assert!(status.unwrap().success());
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = node.child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < within, "serve did not stop on SIGTERM within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "serve exited with {exit}");
}

/// A WAIT that cannot be met (more replicas than a single node has, no timeout) ends when its
/// client hangs up, as Redis frees a blocked client: found from outside, 50 such clients stayed
/// connected, polling, for good. What a client pipelines behind a WAIT is answered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_wait_ends_when_its_client_hangs_up() {
    let node = start(&[]);
    let admin = client(node.resp).await;
    let connected = || async {
        let info: String = q(&mut admin.clone(), &["INFO", "clients"]).await.unwrap();
        let line =
            info.lines().find_map(|l| l.strip_prefix("connected_clients:")).expect("connected_clients");
        line.trim().parse::<usize>().unwrap()
    };
    let mut waiting = Vec::new();
    for _ in 0..50 {
        let mut raw = TcpStream::connect(node.resp).await.unwrap();
        raw.write_all(b"*3\r\n$4\r\nWAIT\r\n$1\r\n5\r\n$1\r\n0\r\n").await.unwrap();
        waiting.push(raw);
    }
    wait_until(Duration::from_secs(5), "50 WAITs running", || async { connected().await == 51 }).await;
    drop(waiting);
    wait_until(Duration::from_secs(5), "the WAITs of closed clients to end", || async {
        connected().await == 1
    })
    .await;
    // A WAIT with a timeout, and a PING sent behind it: answered in order once WAIT returns.
    let mut raw = TcpStream::connect(node.resp).await.unwrap();
    raw.write_all(b"WAIT 5 300\r\n").await.unwrap();
    // Most likely while WAIT runs; sent with it, the answer would be the same.
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_some(&mut raw, 11).await, b":0\r\n+PONG\r\n");
}
