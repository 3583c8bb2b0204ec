//! Clients that do not authenticate cannot starve the ones that do: with a password set, a
//! connection must authenticate within `--auth-timeout-secs`; at most a tenth of
//! `--max-clients` may wait unauthenticated, and a newcomer past that closes the oldest such
//! connection (so a real client always gets in); a connection that fails `AUTH` three times is
//! closed, even when the guesses are pipelined.

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PASSWORD: &str = "client-password";

/// Everything the node sends on `stream` until it closes it (5 s at most).
async fn until_closed(stream: &mut TcpStream) -> String {
    String::from_utf8_lossy(&read_some(stream, usize::MAX).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_timed_out_capped_and_evicted_and_guessing_is_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let node = start(&[
        "--password-file",
        file.to_str().unwrap(),
        "--max-clients",
        "20",
        "--auth-timeout-secs",
        "2",
    ]);

    // Two strangers fill the share of unauthenticated connections (20 / 10); a third closes
    // the oldest.
    let mut first = TcpStream::connect(node.resp).await.unwrap();
    let _second = TcpStream::connect(node.resp).await.unwrap();
    wait_until(Duration::from_secs(5), "both strangers were accepted", || async {
        http_get(node.admin, "/metrics").await.1.contains("crema_resp_connections_total 2")
    })
    .await;
    let _third = TcpStream::connect(node.resp).await.unwrap();
    let said = until_closed(&mut first).await;
    assert!(said.contains("newer clients need the room"), "{said:?}");

    // A real client gets in and works while strangers wait (it takes the oldest one's place).
    let url = format!("redis://:{PASSWORD}@{}/", node.resp);
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = c.set("k", "v").await.unwrap();
    let v: String = c.get("k").await.unwrap();
    assert_eq!(v, "v");

    // A stranger that says nothing is closed at the authentication deadline.
    let started = Instant::now();
    let mut idle = TcpStream::connect(node.resp).await.unwrap();
    let said = until_closed(&mut idle).await;
    assert!(said.contains("authentication not completed in time"), "{said:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500), "closed too early: {:?}", started.elapsed());

    // Pipelined guesses: three answered, then the connection closes.
    let mut guesser = TcpStream::connect(node.resp).await.unwrap();
    let mut guesses = Vec::new();
    for i in 0..10 {
        guesses.extend_from_slice(format!("AUTH guess{i}\r\n").as_bytes());
    }
    guesser.write_all(&guesses).await.unwrap();
    let said = until_closed(&mut guesser).await;
    assert_eq!(said.matches("WRONGPASS").count(), 3, "{said:?}");
    assert!(said.ends_with("-ERR too many failed AUTH attempts\r\n"), "{said:?}");

    let (_, metrics) = http_get(node.admin, "/metrics").await;
    assert!(metrics.contains("crema_resp_auth_failures_total 3"), "{metrics}");
    let closed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("crema_resp_auth_closed_connections_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(closed >= 3, "evicted, timed out and the guesser: {closed}\n{metrics}");
    let v: String = c.get("k").await.unwrap();
    assert_eq!(v, "v", "the real client was never disturbed");
}
