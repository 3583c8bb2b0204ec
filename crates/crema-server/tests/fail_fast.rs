//! Fail fast, with real processes: a Raft group loop that panics (a bug, injected through the
//! test-only `POST /debug/panic-group`) ends its process at once with status 70 and one clear
//! log line, instead of leaving a node that answers on its ports with a dead group; the rest of
//! the cluster elects a new leader and keeps every acknowledged write.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_group_loop_ends_its_process_and_the_cluster_goes_on() {
    let mut nodes = start_cluster(3, &[]);
    let leader = leader_of(&nodes).await;
    let mut c = client(nodes[leader].resp).await;
    for i in 0..20 {
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
    }
    let (status, _) = http_post(nodes[leader].admin, "/debug/panic-group").await;
    assert_eq!(status, 200);
    let exit = wait_exit(&mut nodes[leader], Duration::from_secs(10));
    assert_eq!(exit.code(), Some(70), "{exit:?}");
    let survivors: Vec<std::net::SocketAddr> =
        nodes.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, n)| n.resp).collect();
    let new_leader = leader_among(&survivors).await;
    let mut c = client(survivors[new_leader]).await;
    let _: () = c.set("after", "1").await.unwrap();
    for addr in &survivors {
        let mut c = client(*addr).await;
        for i in 0..20 {
            let v: Option<i64> = c.get(format!("k{i}")).await.unwrap();
            assert_eq!(v, Some(i), "k{i} on {addr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_is_explained_in_one_log_line() {
    let mut node = start_capturing_log(FAST);
    let mut c = client(node.resp).await;
    wait_until(Duration::from_secs(5), "serving", || {
        let mut c = c.clone();
        async move { c.set::<_, _, ()>("k", "v").await.is_ok() }
    })
    .await;
    let (status, _) = http_get(node.admin, "/health").await;
    assert_eq!(status, 200);
    let (status, _) = http_post(node.admin, "/debug/panic-group").await;
    assert_eq!(status, 200);
    let exit = wait_exit(&mut node, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(70), "{exit:?}");
    let mut log = String::new();
    node.child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("crema panicked")).collect();
    assert_eq!(lines.len(), 1, "one line says why the process exits:\n{log}");
    assert!(lines[0].contains("fault injection: the group loop of shard 0 panics"), "{}", lines[0]);
    assert!(lines[0].contains("status 70"), "{}", lines[0]);
    // The connection a client held is closed with the process.
    assert!(c.get::<_, Option<String>>("k").await.is_err());
}
