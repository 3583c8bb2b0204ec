//! A 3-node cluster of `crema serve` processes over real TCP: writes through any node,
//! linearizable reads through any node, racing INCRs through every node, `-NOTLEADER` when
//! forwarding is off, and a SIGKILLed leader.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use common::*;
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_linearizably_through_any_other() {
    let nodes = start_cluster(3, &[]);
    leader_of(&nodes).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(client(n.resp).await);
    }
    for i in 0..60usize {
        let key = format!("key:{i}");
        let _: () = clients[i % 3].set(&key, i).await.unwrap();
        // The very next read, on another node, in the default (linearizable) mode.
        let got: Option<usize> = clients[(i + 1) % 3].get(&key).await.unwrap();
        assert_eq!(got, Some(i), "{key} read through node {}", (i + 1) % 3);
    }
    let sizes: Vec<i64> = {
        let mut v = Vec::new();
        for c in &mut clients {
            v.push(redis::cmd("DBSIZE").query_async(c).await.unwrap());
        }
        v
    };
    assert_eq!(sizes, [60, 60, 60]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_incrs_through_every_node_lose_nothing() {
    let nodes = start_cluster(3, &[]);
    leader_of(&nodes).await;
    let acknowledged = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for client_no in 0..8 {
        let addr = nodes[client_no % 3].resp;
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            for _ in 0..50 {
                let r: redis::RedisResult<i64> = c.incr("hits", 1).await;
                if r.is_ok() {
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    assert_eq!(acknowledged, 400, "a healthy cluster acknowledges every INCR");
    // A pipeline of INCRs on a follower travels to the leader as one batch, in order.
    let mut c = client(nodes[(leader_of(&nodes).await + 1) % 3].resp).await;
    let mut pipe = redis::pipe();
    for _ in 0..100 {
        pipe.cmd("INCR").arg("hits");
    }
    let counts: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(counts, (401..=500).collect::<Vec<i64>>());
    let acknowledged = acknowledged + 100;
    for n in &nodes {
        let mut c = client(n.resp).await;
        let value: i64 = c.get("hits").await.unwrap();
        assert_eq!(value, acknowledged, "node at {}", n.resp);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_forwarding_a_follower_names_the_leader() {
    let nodes = start_cluster(3, &["--forwarding", "false"]);
    let leader = leader_of(&nodes).await;
    let follower = (leader + 1) % 3;
    let mut c = client(nodes[follower].resp).await;
    let err = c.set::<_, _, ()>("k", "v").await.unwrap_err();
    let leader_addr = nodes[leader].resp.to_string();
    assert_eq!((err.code(), err.detail()), (Some("NOTLEADER"), Some(leader_addr.as_str())), "{err:?}");
    let mut l = client(nodes[leader].resp).await;
    let _: () = l.set("k", "v").await.unwrap();
    let got: Option<String> = c.get("k").await.unwrap();
    assert_eq!(got.as_deref(), Some("v"), "reads still work on the follower");
}

/// ROLE, as Sentinel-aware clients and operators read it: the leader is a master listing both
/// followers by their client address, each follower a connected slave of the leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_names_the_leader_and_its_replicas_by_client_address() {
    type Master = (String, i64, Vec<(String, String, String)>);
    let nodes = start_cluster(3, &[]);
    let leader = leader_of(&nodes).await;
    let mut l = client(nodes[leader].resp).await;
    let (_, before, _): Master = redis::cmd("ROLE").query_async(&mut l).await.unwrap();
    let _: () = l.set("k", "v").await.unwrap();
    let (kind, offset, replicas): Master = redis::cmd("ROLE").query_async(&mut l).await.unwrap();
    assert_eq!(kind, "master");
    assert!(offset > before, "the write moves the leader's offset: {before}, then {offset}");
    let mut listed: Vec<String> = replicas.iter().map(|(host, port, _)| format!("{host}:{port}")).collect();
    listed.sort();
    let mut followers: Vec<String> =
        (0..3).filter(|i| *i != leader).map(|i| nodes[i].resp.to_string()).collect();
    followers.sort();
    assert_eq!(listed, followers, "{replicas:?}");
    for (_, _, reached) in &replicas {
        assert!(reached.parse::<u64>().is_ok(), "{replicas:?}");
    }
    let leader_addr = nodes[leader].resp.to_string();
    for i in (0..3).filter(|i| *i != leader) {
        let addr = nodes[i].resp;
        // A follower names the leader once it has heard from it.
        let what = "the follower is a connected slave of the leader";
        wait_until(std::time::Duration::from_secs(10), what, || {
            let leader_addr = leader_addr.clone();
            async move {
                let mut f = client(addr).await;
                let role: (String, String, u16, String, i64) =
                    redis::cmd("ROLE").query_async(&mut f).await.unwrap();
                role.0 == "slave" && role.3 == "connected" && format!("{}:{}", role.1, role.2) == leader_addr
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_keeps_every_acknowledged_write() {
    let mut nodes = start_cluster(3, &[]);
    let leader = leader_of(&nodes).await;
    let survivor = (leader + 1) % 3;
    let mut c = client(nodes[survivor].resp).await;
    for i in 0..20 {
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
    }
    let mut killed = nodes.remove(leader);
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    leader_of(&nodes).await;
    for i in 0..20 {
        let got: Option<i64> = c.get(format!("k{i}")).await.unwrap();
        assert_eq!(got, Some(i));
    }
    let n: i64 = c.incr("after", 1).await.unwrap();
    assert_eq!(n, 1, "the two survivors still commit writes");
}
