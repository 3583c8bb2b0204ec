//! The admin HTTP port and the operator commands of the `crema` binary against running nodes:
//! /health, /ready, /metrics, /cluster, `crema status`, `crema metrics show`,
//! `crema cluster add-node` and `remove-node`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use redis::AsyncCommands;

fn crema(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crema")).args(args).env("RUST_LOG", "error").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn health_ready_metrics_and_cluster() {
    let node = start(FAST);
    let (status, body) = http_get(node.admin, "/health").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    wait_until(Duration::from_secs(5), "/ready", || async { http_get(node.admin, "/ready").await.0 == 200 })
        .await;

    let mut c = client(node.resp).await;
    let _: () = c.set("k", "v").await.unwrap();
    let _: Option<String> = c.get("k").await.unwrap();
    let _: Option<String> = c.get("missing").await.unwrap();
    // A transaction with an unknown command: ERR when queued, EXECABORT at EXEC.
    let _: () = redis::cmd("MULTI").query_async(&mut c).await.unwrap();
    let unknown = redis::cmd("NOSUCHCOMMAND").query_async::<()>(&mut c).await.unwrap_err();
    assert_eq!(unknown.code(), Some("ERR"), "{unknown}");
    let aborted = redis::cmd("EXEC").query_async::<()>(&mut c).await.unwrap_err();
    assert_eq!(aborted.code(), Some("EXECABORT"), "{aborted}");
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    for expected in [
        "total_error_replies:2\r\n",
        "# Errorstats\r\nerrorstat_ERR:count=1\r\nerrorstat_EXECABORT:count=1\r\n\r\n",
    ] {
        assert!(info.contains(expected), "{expected} missing from {info}");
    }
    // CONFIG RESETSTAT starts INFO's counters again (the RESETSTAT itself is the one command
    // counted); the Prometheus counters below keep going up.
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    for expected in [
        "total_commands_processed:1\r\n",
        "total_error_replies:0\r\n",
        "keyspace_hits:0\r\n",
        "keyspace_misses:0\r\n",
        "# Errorstats\r\n\r\n",
    ] {
        assert!(info.contains(expected), "{expected} missing after CONFIG RESETSTAT from {info}");
    }
    // An error inside EXEC's answer counts, as Redis counts it (the transaction is the second
    // proposal below).
    let _: () = redis::cmd("MULTI").query_async(&mut c).await.unwrap();
    let _: () = redis::cmd("INCR").arg("k").query_async(&mut c).await.unwrap();
    // (The redis crate reports the error inside EXEC's answer as the command's.)
    let inner = redis::cmd("EXEC").query_async::<Vec<redis::Value>>(&mut c).await.unwrap_err();
    assert!(inner.to_string().contains("not an integer"), "{inner}");
    let errors: String = redis::cmd("INFO").arg("errorstats").query_async(&mut c).await.unwrap();
    assert!(errors.contains("errorstat_ERR:count=1\r\n"), "{errors}");
    let (status, metrics) = http_get(node.admin, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "crema_cache_hits_total 1",
        "crema_cache_misses_total 1",
        "crema_cache_evictions_total 0",
        "crema_cache_entries 1",
        "crema_raft_is_leader 1",
        "crema_raft_leader_changes_total",
        "crema_raft_proposals_total{result=\"ok\"} 2",
        "crema_raft_proposal_latency_seconds_count 2",
        "crema_resp_commands_total{command=\"get\"} 2",
        "crema_resp_error_replies_total{prefix=\"EXECABORT\"} 1",
        "crema_resp_error_replies_total{prefix=\"MOVED\"} 0",
        "crema_resp_command_duration_seconds_bucket{",
        "crema_resp_connected_clients 1",
        "crema_process_resident_memory_bytes ",
        "crema_shard_entries{shard=\"0\"} 1",
        "crema_shard_is_leader{shard=\"0\"} 1",
        "crema_shard_leader_changes_total{shard=\"0\"} ",
    ] {
        assert!(metrics.contains(expected), "{expected} missing from:\n{metrics}");
    }
    // Every metric the README lists for `/metrics` is served under that name.
    let readme = include_str!("../../../README.md");
    let listed = &readme[readme.find("The admin port serves `/metrics`").unwrap()..];
    let listed = &listed[..listed.find("`/health`").unwrap()];
    let names: Vec<&str> =
        listed.split('`').filter(|w| w.starts_with("crema_") && !w.contains(' ')).collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let served = metrics.lines().filter_map(|l| l.split(['{', ' ']).next()).any(|sample| {
            sample == name || ["_bucket", "_count", "_sum"].iter().any(|s| sample == format!("{name}{s}"))
        });
        assert!(served, "the README lists {name}, /metrics does not serve it");
    }
    let (status, cluster) = http_get(node.admin, "/cluster").await;
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&cluster).unwrap();
    assert_eq!(view["role"], "Leader");
    assert_eq!(view["voters"], serde_json::json!([1]));
    assert_eq!(view["entries"], 1);
    assert_eq!(view["resp_addr"], node.resp.to_string());
    // One shard, every slot, led by this node.
    let shard = &view["shards"][0];
    assert_eq!((&shard["id"], &shard["state"], &shard["leader"]), (&0.into(), &"active".into(), &1.into()));
    assert_eq!(
        (&shard["members"], &shard["slots"], &shard["entries"]),
        (&serde_json::json!([1]), &"0-16383".into(), &1.into())
    );
    assert_eq!(view["shards"].as_array().unwrap().len(), 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(["status", "--admin", &node.admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shards      1"), "{text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("0 "))
        .unwrap_or_else(|| panic!("no shard row: {text}"));
    assert!(row.contains("active") && row.contains("0-16383"), "{row}");
}

#[tokio::test]
async fn a_bounded_node_evicts_to_its_capacity_and_reports_it() {
    let node = start(&["--tick-interval-ms", "20", "--max-capacity", "10"]);
    let mut c = client(node.resp).await;
    for i in 0..100 {
        let _: () = c.set(format!("key{i}"), "v").await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let size: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        let info: String = redis::cmd("INFO").arg("stats").query_async(&mut c).await.unwrap();
        let field = |name: &str| -> u64 {
            let prefix = format!("{name}:");
            let value = info.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
            value.unwrap_or_else(|| panic!("INFO stats has {name}")).trim().parse().unwrap()
        };
        let (evicted, processed) = (field("evicted_keys"), field("total_commands_processed"));
        assert!(processed >= 100, "the 100 SETs at least: {info}");
        if size <= 10 && size + evicted == 100 {
            let (_, metrics) = http_get(node.admin, "/metrics").await;
            assert!(metrics.contains(&format!("crema_cache_evictions_total {evicted}")), "{metrics}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not evicted to 10 entries: {size} left, {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_grow_and_shrink_the_cluster() {
    let first = start(FAST);
    wait_until(Duration::from_secs(5), "first node ready", || async {
        http_get(first.admin, "/ready").await.0 == 200
    })
    .await;
    let admin = first.admin.to_string();
    let (ok, out, err) = crema(&["status", "--admin", &admin]);
    assert!(ok, "{err}");
    assert!(out.contains("node        1 (Leader)") && out.contains("voters      [1]"), "{out}");
    assert!(out.contains("MiB resident"), "{out}");

    let (ok, out, _) = crema(&["metrics", "show", "--admin", &admin]);
    assert!(ok && out.contains("crema_raft_term"), "{out}");

    // A second node started empty, then added through the CLI.
    let first_raft = format!("1={}", first.raft);
    let mut args = vec!["--node-id", "2", "--join", "true", "--peer", &first_raft];
    args.extend(FAST);
    let second = start(&args);
    let raft2 = second.raft.to_string();
    let (ok, out, err) = crema(&["cluster", "add-node", "--admin", &admin, "--id", "2", "--addr", &raft2]);
    assert!(ok, "add-node failed: {out} {err}");
    let mut c1 = client(first.resp).await;
    let _: () = c1.set("replicated", "yes").await.unwrap();
    let mut c2 = client(second.resp).await;
    let got: Option<String> = c2.get("replicated").await.unwrap();
    assert_eq!(got.as_deref(), Some("yes"), "the new member reads the cluster's writes linearizably");
    let (_, out, _) = crema(&["status", "--admin", &admin]);
    assert!(out.contains("voters      [1, 2]"), "{out}");

    // Membership changes go to the leader; a follower says who leads.
    let (ok, _, err) = crema(&["cluster", "remove-node", "--admin", &second.admin.to_string(), "--id", "2"]);
    assert!(!ok && err.contains("not the leader: node 1"), "{err}");
    let (ok, out, err) = crema(&["cluster", "remove-node", "--admin", &admin, "--id", "2"]);
    assert!(ok, "remove-node failed: {out} {err}");
    let (_, out, _) = crema(&["status", "--admin", &admin]);
    assert!(out.contains("voters      [1]"), "{out}");
    let (ok, _, err) = crema(&["status", "--admin", "127.0.0.1:1"]);
    assert!(!ok && err.contains("connecting to 127.0.0.1:1"), "{err}");
}

#[test]
fn serve_help_explains_every_setting_and_bad_config_is_refused() {
    let (ok, out, _) = crema(&["serve", "--help"]);
    assert!(ok);
    for flag in [
        "--node-id",
        "--resp-addr",
        "--peer",
        "--config",
        "--password",
        "--max-clients",
        "--read-mode",
        "CREMA_RESP_ADDR",
    ] {
        assert!(out.contains(flag), "{flag} missing from serve --help");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "max_clientz = 3\n").unwrap();
    let (ok, _, err) = crema(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok && err.contains("max_clientz"), "{err}");
    let (ok, _, err) = crema(&["serve", "--peer", "1=127.0.0.1:9000"]);
    assert!(!ok && err.contains("must not include this node"), "{err}");
}

#[tokio::test]
async fn environment_variables_configure_serve() {
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(SERVE_ANY_PORTS)
        .env("CREMA_NODE_ID", "0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "node id 0 from the environment is refused");
}

#[tokio::test]
async fn sigterm_stops_serve_cleanly() {
    let mut node = start(FAST);
    let mut c = client(node.resp).await;
    let _: () = c.set("k", "v").await.unwrap();
    let status = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = node.child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "serve did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "serve exited with {exit}");
    assert!(tokio::net::TcpStream::connect(node.resp).await.is_err(), "the RESP port is closed");
}

/// A free port `p` such that `p`, `p + 1` and `p + 2` are all free (for `crema dev`'s
/// consecutive ports).
fn three_free_ports() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = first.local_addr().unwrap().port();
        if p > 65_000 {
            continue;
        }
        let rest: Vec<_> =
            (1..3).filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).ok()).collect();
        if rest.len() == 2 {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crema_dev_runs_a_local_cluster_until_interrupted() {
    use std::io::BufRead;
    let (resp, raft, admin) = (three_free_ports(), three_free_ports(), three_free_ports());
    let mut child = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(["dev", "--nodes", "3", "--shards", "4"])
        .args([
            "--resp-port",
            &resp.to_string(),
            "--raft-port",
            &raft.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        .args(["--tick-interval-ms", "20"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(header.starts_with("crema dev cluster of 3 nodes, 4 shards"), "{header}");
    for i in 0..3u16 {
        let line = lines.next().unwrap().unwrap();
        assert!(line.contains(&format!("redis-cli -p {}", resp + i)), "{line}");
    }
    let addr = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], resp + i));
    let mut first = client(addr(0)).await;
    let _: () = first.set("dev", "works").await.unwrap();
    let mut third = client(addr(2)).await;
    let got: Option<String> = third.get("dev").await.unwrap();
    assert_eq!(got.as_deref(), Some("works"));
    let shards: Vec<redis::Value> =
        redis::cmd("CLUSTER").arg("SHARDS").query_async(&mut third).await.unwrap();
    assert_eq!(shards.len(), 4, "{shards:?}");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "crema dev did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");
}

/// `crema dev --tls`: certificates written by `crema certs init` into --certs-dir, every node
/// with mutual TLS between nodes and TLS on RESP; `redis-cli --tls` works as printed.
#[tokio::test]
async fn crema_dev_with_tls() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let (resp, raft, admin) = (three_free_ports(), three_free_ports(), three_free_ports());
    let mut child = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(["dev", "--nodes", "3", "--tls", "--certs-dir", certs.to_str().unwrap()])
        .args(["--resp-port", &resp.to_string(), "--raft-port", &raft.to_string()])
        .args(["--admin-port", &admin.to_string(), "--tick-interval-ms", "20"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(header.starts_with("crema dev cluster of 3 nodes"), "{header}");
    let ca = certs.join("ca.crt");
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains(&format!("redis-cli --tls --cacert {} -p {resp}", ca.display())), "{first}");
    let cli = |port: u16, args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", ca.to_str().unwrap(), "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(cli(resp, &["SET", "dev", "secure"]), "OK");
    assert_eq!(cli(resp + 2, &["GET", "dev"]), "secure", "replicated over mutual TLS");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
}

/// Operator commands behave like Unix tools: a reader that goes away early (`crema status |
/// head -1`) is not an error, and a refused connection is one line on stderr, no backtrace.
#[tokio::test]
async fn cli_output_to_a_closed_pipe_and_refused_connections() {
    let node = start(FAST);
    let admin = node.admin.to_string();
    for args in [&["status", "--admin", &admin][..], &["metrics", "show", "--admin", &admin]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crema"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("panicked"), "{args:?}: {} {stderr}", out.status);
    }
    let nowhere = free_addrs(1)[0].to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(["status", "--admin", &nowhere])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("crema: ") && !stderr.contains("backtrace"), "{stderr}");
}
