//! Gossip discovery between `crema serve` processes (`--gossip-addr`, `--gossip-seed`): nodes
//! that know one seed find each other, a killed node is declared down, and Redis Cluster's view
//! (`CLUSTER NODES`, `CLUSTER SLOTS`) follows; signed gossip with a cluster secret does the same.

mod common;

use common::shards::{all_shards_led, cluster_shards};
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
    kill_node_3_and_wait_until_the_others_see_it_down(&mut nodes).await;
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
    // NODES and in CLUSTER SHARDS, and the primary of no range in CLUSTER SLOTS.
    let dead = format!("{:040x}", 3);
    let listed: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.unwrap();
    let line = listed.lines().find(|l| l.starts_with(&dead)).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains(" master,fail ") && line.contains(" disconnected"), "{line}");
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await.unwrap();
    let (mut next, mut covered) = (0, 0);
    for range in &slots {
        let (start, end): (i64, i64) = (
            redis::from_redis_value(range[0].clone()).unwrap(),
            redis::from_redis_value(range[1].clone()).unwrap(),
        );
        assert_eq!(start, next, "ranges in order, none left out: {slots:?}");
        (next, covered) = (end + 1, covered + end + 1 - start);
    }
    assert_eq!(covered, 16384, "every slot in a range");
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
    let shards = cluster_shards(&mut c).await;
    let listed: Vec<_> = shards.iter().flat_map(|s| s.2.iter()).filter(|n| n.id == dead).collect();
    assert!(!listed.is_empty(), "node 3 holds replicas of the shards: {shards:?}");
    assert!(listed.iter().all(|n| n.health == "fail" && n.role == "replica"), "{listed:?}");
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
    let _ = nodes[2].child.kill();
    let _ = nodes[2].child.wait();
    start_node_3_again(&mut nodes, with_gossip(2, &gossip[3]));
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

/// Starts node 3 (`nodes[2]`, killed) again on its peer and client addresses, with `extra`
/// arguments.
fn start_node_3_again(nodes: &mut [Node], extra: Vec<String>) {
    let (raft, resp) = (nodes[2].raft.to_string(), nodes[2].resp.to_string());
    let peers: Vec<String> =
        (0..2).map(|j| format!("{}={},{}", j + 1, nodes[j].raft, nodes[j].resp)).collect();
    let mut args: Vec<String> =
        ["--node-id", "3", "--raft-addr", &raft, "--resp-addr", &resp].map(String::from).into();
    for p in &peers {
        args.extend(["--peer".to_owned(), p.clone()]);
    }
    args.extend(FAST.iter().map(|s| s.to_string()));
    args.extend(extra);
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
}

/// Found from outside: with signed gossip, node 3 killed a few seconds after it was started
/// again on its gossip address was shown alive by the others for 25 s more. Its new identity
/// replaced the old one on that address, and the old one (dropped by SWIM without being
/// declared down) counted as alive for `DROPPED_GRACE` (30 s), after the new one was declared
/// down. Signed, the newer identity of a node on its own address is that node: the old one is
/// down as soon as it is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_soon_after_it_started_again_is_declared_down_with_signed_gossip() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-long-enough-cluster-secret\n").unwrap();
    let secret = secret.to_str().unwrap().to_owned();
    let gossip: Vec<String> = free_udp_addrs(3).iter().map(ToString::to_string).collect();
    let with_gossip = |i: usize| {
        let mut args = vec![
            "--shards".to_owned(),
            "4".to_owned(),
            "--gossip-addr".to_owned(),
            gossip[i].clone(),
            "--cluster-secret-file".to_owned(),
            secret.clone(),
        ];
        if i > 0 {
            args.extend(["--gossip-seed".to_owned(), gossip[0].clone()]);
        }
        args
    };
    let mut nodes = start_cluster_with(3, with_gossip);
    all_shards_led(nodes[0].resp).await;
    let sees_three_alive =
        |admin| async move { gossip_view(admin).await.iter().filter(|(_, h)| h == "alive").count() == 3 };
    for n in &nodes {
        wait_until(std::time::Duration::from_secs(20), "every node sees the three alive", || {
            sees_three_alive(n.admin)
        })
        .await;
    }
    // Killed, and started again on the same gossip address at once: node 1 never declares the
    // old identity down, the new one replaces it.
    let _ = nodes[2].child.kill();
    let _ = nodes[2].child.wait();
    start_node_3_again(&mut nodes, with_gossip(2));
    // Node 3 sees the others alive once node 1 has answered its announcement, that is once
    // node 1 holds the new identity.
    wait_until(std::time::Duration::from_secs(20), "node 3 sees the three alive again", || {
        sees_three_alive(nodes[2].admin)
    })
    .await;
    kill_node_3_and_wait_until_the_others_see_it_down(&mut nodes).await;
}

/// SIGKILLs node 3 (`nodes[2]`: no goodbye) and waits until nodes 1 and 2 declare it down,
/// within seconds.
async fn kill_node_3_and_wait_until_the_others_see_it_down(nodes: &mut [Node]) {
    let _ = nodes[2].child.kill();
    let _ = nodes[2].child.wait();
    for n in &nodes[..2] {
        wait_until(std::time::Duration::from_secs(15), "node 3 declared down", || async {
            gossip_view(n.admin).await.contains(&(3, "down".to_owned()))
        })
        .await;
    }
}
