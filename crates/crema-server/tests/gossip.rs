//! Gossip discovery between `crema serve` processes (`--gossip-addr`, `--gossip-seed`): nodes
//! that know one seed find each other, a killed node is declared down, and Redis Cluster's view
//! (`CLUSTER NODES`, `CLUSTER SLOTS`) follows; signed gossip with a cluster secret does the same.

mod common;

use common::shards::all_shards_led;
use common::*;

/// `(node id, health)` of every node `/cluster` on `admin` lists.
async fn gossip_view(admin: std::net::SocketAddr) -> Vec<(u64, String)> {
    let (status, body) = http_get(admin, "/cluster").await;
    if status != 200 {
        return Vec::new();
    }
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
    nodes.iter().map(|n| (n["node_id"].as_u64().unwrap(), n["health"].as_str().unwrap().to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_finds_every_node_from_one_seed_and_declares_a_killed_one_down() {
    gossip_from_one_seed(None).await;
}

/// The same with a cluster secret: every gossip packet is signed and stamped (numbered against
/// replays), and the nodes find each other and declare the dead one down as without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_gossip_finds_every_node_and_declares_a_killed_one_down() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-long-enough-cluster-secret\n").unwrap();
    gossip_from_one_seed(Some(secret.to_str().unwrap())).await;
}

async fn gossip_from_one_seed(secret_file: Option<&str>) {
    let gossip: Vec<String> = free_udp_addrs(3).iter().map(ToString::to_string).collect();
    let mut nodes = start_cluster_with(3, |i| {
        let mut args =
            vec!["--shards".to_owned(), "4".to_owned(), "--gossip-addr".to_owned(), gossip[i].clone()];
        if let Some(file) = secret_file {
            args.extend(["--cluster-secret-file".to_owned(), file.to_owned()]);
        }
        if i > 0 {
            // Nodes 2 and 3 know only node 1's gossip address.
            args.extend(["--gossip-seed".to_owned(), gossip[0].clone()]);
        }
        args
    });
    all_shards_led(nodes[0].resp).await;
    let alive = |view: &[(u64, String)]| view.iter().filter(|(_, h)| h == "alive").count();
    for n in &nodes {
        wait_until(std::time::Duration::from_secs(20), "every node sees the three alive", || async {
            alive(&gossip_view(n.admin).await) == 3
        })
        .await;
    }
    let (_, body) = http_get(nodes[1].admin, "/cluster").await;
    assert!(body.contains("\"discovery\":\"memberlist\""), "{body}");

    // SIGKILL: no goodbye. The others declare it down within seconds, and keep serving.
    let _ = nodes[2].child.kill();
    let _ = nodes[2].child.wait();
    for n in &nodes[..2] {
        wait_until(std::time::Duration::from_secs(15), "node 3 declared down", || async {
            gossip_view(n.admin).await.contains(&(3, "down".to_owned()))
        })
        .await;
    }
    // The dashboard shows the same: every shard with its leader, node 3 down.
    let (status, page) = http_get(nodes[0].admin, "/").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<h1>crema node 1</h1>"), "{page}");
    assert!(
        page.contains("<h2>Shards (4)</h2>") && page.contains("<h2>Nodes (discovery: memberlist)</h2>"),
        "{page}"
    );
    assert_eq!(page.matches("<td class=\"l\">down</td>").count(), 1, "{page}");
    assert_eq!(page.matches("<tr><td>").count(), 3 + 4, "three nodes and four shards: {page}");
    // Node 2 may be suspected for a moment on a loaded machine: the counts settle.
    wait_until(std::time::Duration::from_secs(15), "the metrics count two alive and one down", || async {
        let (_, metrics) = http_get(nodes[0].admin, "/metrics").await;
        metrics.contains("crema_memberlist_nodes{state=\"alive\"} 2")
            && metrics.contains("crema_memberlist_nodes{state=\"down\"} 1")
    })
    .await;
    let mut c = client(nodes[0].resp).await;
    for i in 0..20 {
        let _: () = redis::AsyncCommands::set(&mut c, format!("after:{i}"), i).await.unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(["status", "--admin", &nodes[0].admin.to_string()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("discovery   memberlist"), "{status}");
    assert!(status.lines().any(|l| l.contains("node 3") && l.contains("down")), "{status}");

    // Redis Cluster's view of a failed node: flagged `fail` (and its link down) in CLUSTER
    // NODES, and no longer offered as a replica in CLUSTER SLOTS.
    let dead = format!("{:040x}", 3);
    let listed: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.unwrap();
    let line = listed.lines().find(|l| l.starts_with(&dead)).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains(" master,fail ") && line.contains(" disconnected"), "{line}");
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await.unwrap();
    assert_eq!(slots.len(), 4, "one range per shard");
    for range in &slots {
        let ids: Vec<String> = range[2..]
            .iter()
            .map(|node| match node {
                redis::Value::Array(fields) => redis::from_redis_value(fields[2].clone()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(!ids.is_empty() && !ids.contains(&dead), "{ids:?}");
    }
}

/// Found from outside: a node started again on another gossip address (a rescheduled pod) is a
/// new identity to SWIM, and its old one, declared down seconds later, marked the live node
/// down on every node (itself included) for good; with `--auto-remove-voters` the leader
/// removed it. Only news of a node's newest identity counts now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_again_on_another_gossip_address_is_not_taken_for_down() {
    let gossip: Vec<String> = free_udp_addrs(4).iter().map(ToString::to_string).collect();
    let with_gossip = |i: usize, at: &str| {
        let mut args = vec!["--shards".to_owned(), "4".to_owned(), "--gossip-addr".to_owned(), at.to_owned()];
        if i > 0 {
            args.extend(["--gossip-seed".to_owned(), gossip[0].clone()]);
        }
        args
    };
    let mut nodes = start_cluster_with(3, |i| with_gossip(i, &gossip[i]));
    all_shards_led(nodes[0].resp).await;
    for n in &nodes {
        wait_until(std::time::Duration::from_secs(20), "every node sees the three alive", || async {
            gossip_view(n.admin).await.iter().filter(|(_, h)| h == "alive").count() == 3
        })
        .await;
    }
    // Node 3 again, on its own peer and client addresses, gossiping from another one.
    let (raft, resp) = (nodes[2].raft.to_string(), nodes[2].resp.to_string());
    let _ = nodes[2].child.kill();
    let _ = nodes[2].child.wait();
    let peers: Vec<String> =
        (0..2).map(|j| format!("{}={},{}", j + 1, nodes[j].raft, nodes[j].resp)).collect();
    let mut args: Vec<String> =
        ["--node-id", "3", "--raft-addr", &raft, "--resp-addr", &resp].map(String::from).into();
    for p in &peers {
        args.extend(["--peer".to_owned(), p.clone()]);
    }
    args.extend(FAST.iter().map(|s| s.to_string()));
    args.extend(with_gossip(2, &gossip[3]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    nodes[2] = loop {
        match try_start(&args) {
            Ok(node) => break node,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("restart retried: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    };
    // The old identity is declared down within seconds (under 15 s above); the node, alive
    // all along, must never be shown down meanwhile.
    let watched = std::time::Instant::now();
    while watched.elapsed() < std::time::Duration::from_secs(15) {
        for n in &nodes {
            let view = gossip_view(n.admin).await;
            assert!(
                !view.contains(&(3, "down".to_owned())),
                "node 3 shown down by node at {}: {view:?}",
                n.admin
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    wait_until(std::time::Duration::from_secs(15), "node 3 alive on every node", || async {
        let mut all = true;
        for n in &nodes {
            all &= gossip_view(n.admin).await.contains(&(3, "alive".to_owned()));
        }
        all
    })
    .await;
}
