//! The peer port secured the simple way, with real processes: three `crema serve` nodes that
//! share `--cluster-secret-file` serve as a cluster; a node started without the secret cannot
//! be added (it does not pass the handshake the leader checks an address with) and the
//! membership stays as it was; and protected mode refuses a node whose ports other machines can
//! reach without authentication, naming the flag to set.

mod common;

use std::process::Command;

use common::*;
use redis::AsyncCommands;

fn crema(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crema")).args(args).env("RUST_LOG", "error").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_a_secret_serves_and_refuses_a_node_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, "a-long-enough-cluster-secret\n").unwrap();
    let secret = secret.to_str().unwrap();
    let nodes = start_cluster(3, &["--cluster-secret-file", secret]);
    let leader = leader_of(&nodes).await;
    let mut c = client(nodes[leader].resp).await;
    let _: () = c.set("k", "v").await.unwrap();
    for node in &nodes {
        let mut c = client(node.resp).await;
        let v: Option<String> = c.get("k").await.unwrap();
        assert_eq!(v.as_deref(), Some("v"), "replicated between nodes that share the secret");
    }

    let stranger = start(&["--node-id", "4", "--join", "true"]);
    let admin = nodes[leader].admin.to_string();
    let raft = stranger.raft.to_string();
    let (ok, text) = crema(&["cluster", "add-node", "--admin", &admin, "--id", "4", "--addr", &raft]);
    assert!(!ok, "a node without the secret was added: {text}");
    assert!(text.contains("peer handshake"), "{text}");
    let (ok, status) = crema(&["status", "--admin", &admin]);
    assert!(ok && status.contains("voters      [1, 2, 3]"), "membership changed: {status}");
    let (_, metrics) = http_get(nodes[leader].admin, "/metrics").await;
    assert!(metrics.contains("crema_peer_handshakes_refused_total"), "{metrics}");
}

#[test]
fn protected_mode_refuses_exposed_ports_without_authentication() {
    for (args, flag) in [
        (&["--resp-addr", "0.0.0.0:0"][..], "--password-file"),
        (&["--raft-addr", "0.0.0.0:0"][..], "--cluster-secret-file"),
        (&["--admin-addr", "0.0.0.0:0"][..], "--admin-token-file"),
    ] {
        let mut all = vec!["serve"];
        for (flag, default) in
            [("--resp-addr", "127.0.0.1:0"), ("--raft-addr", "127.0.0.1:0"), ("--admin-addr", "127.0.0.1:0")]
        {
            if !args.contains(&flag) {
                all.extend([flag, default]);
            }
        }
        all.extend(args);
        let (ok, text) = crema(&all);
        assert!(!ok, "{args:?} started");
        assert!(text.contains("protected mode") && text.contains(flag), "{args:?}: {text}");
    }
    // With authentication on each exposed port, or protected mode off, the checks pass; the
    // node is not left running (validation is all this needs).
    let (ok, text) = crema(&["serve", "--resp-addr", "0.0.0.0:0", "--protected-mode", "maybe"]);
    assert!(!ok && text.contains("yes or no"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_mutual_tls_from_certs_init() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let d = dir.to_str().unwrap();
    let (ok, text) = crema(&["certs", "init", "--dir", d, "--nodes", "3"]);
    assert!(ok, "{text}");
    let mode = |name: &str| std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode("ca.key"), mode("node-2.key"), mode("client.key")), (0o600, 0o600, 0o600));
    assert_eq!((mode("ca.crt"), mode("node-2.crt")), (0o644, 0o644));
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let (ok, text) = crema(&["certs", "init", "--dir", d]);
    assert!(!ok && text.contains("already holds a CA key"), "never overwritten: {text}");

    // Ports are picked free, but a node's outgoing connection can take one before the next
    // node binds it: then the whole cluster starts again on new ports (as `start_cluster`).
    let start_all = || -> Result<Vec<Node>, String> {
        let raft = free_addrs(3);
        let resp = free_addrs(3);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let id = (i + 1).to_string();
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.clone(),
                "--raft-addr".into(),
                raft[i].to_string(),
                "--resp-addr".into(),
                resp[i].to_string(),
                "--peer-tls-cert".into(),
                format!("{d}/node-{id}.crt"),
                "--peer-tls-key".into(),
                format!("{d}/node-{id}.key"),
                "--peer-tls-ca".into(),
                format!("{d}/ca.crt"),
            ];
            for j in (0..3).filter(|j| *j != i) {
                args.extend(["--peer".into(), format!("{}={},{}", j + 1, raft[j], resp[j])]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(try_start(&args)?);
        }
        Ok(nodes)
    };
    let mut nodes = (0..5).find_map(|_| start_all().ok()).expect("the TLS cluster started in 5 attempts");
    for node in &mut nodes {
        node.wait_ready(std::time::Duration::from_secs(30)).unwrap();
    }
    let leader = leader_of(&nodes).await;
    let mut c = client(nodes[leader].resp).await;
    let _: () = c.set("k", "over tls").await.unwrap();
    for node in &nodes {
        let v: Option<String> = client(node.resp).await.get("k").await.unwrap();
        assert_eq!(v.as_deref(), Some("over tls"));
    }
    // A node with node 1's certificate started as node 2 is refused at start.
    let (ok, text) = crema(&[
        "serve",
        "--node-id",
        "2",
        "--peer-tls-cert",
        &format!("{d}/node-1.crt"),
        "--peer-tls-key",
        &format!("{d}/node-1.key"),
        "--peer-tls-ca",
        &format!("{d}/ca.crt"),
        "--resp-addr",
        "127.0.0.1:0",
        "--raft-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert!(!ok && text.contains("node 1's"), "{text}");
    // A node without TLS cannot be added.
    let plain = start(&["--node-id", "4", "--join", "true"]);
    let admin = nodes[leader].admin.to_string();
    let (ok, text) =
        crema(&["cluster", "add-node", "--admin", &admin, "--id", "4", "--addr", &plain.raft.to_string()]);
    assert!(!ok && text.contains("peer handshake"), "{text}");
}
