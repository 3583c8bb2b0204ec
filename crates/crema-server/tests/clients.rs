//! Real client libraries against a real `crema serve`: the scripts in `tests/clients/` run
//! redis-py (`pipeline()`, a WATCH retry loop, Django's `set_many` with a timeout) and node-redis
//! (`multi().exec()`, WATCH with an isolated connection, `scanIterator`, and `createCluster`
//! against a sharded cluster), and redis-py's ACL helpers (`py_acl.py`). `.ci/run` installs both libraries,
//! pinned; a test is skipped, saying so, only when the interpreter or the library is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Whether `program args` runs and exits 0 (the interpreter and the library are there).
fn available(program: &str, args: &[&str], dir: &Path) -> bool {
    Command::new(program).args(args).current_dir(dir).output().is_ok_and(|o| o.status.success())
}

/// Runs `program args` against a fresh node and fails with its output unless it exits 0.
fn run_script(program: &str, args: &[&str], dir: &Path) {
    let node = start(&[]);
    let addr = node.resp.to_string();
    let output = Command::new(program)
        .args(args)
        .arg(&addr)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} {args:?} failed ({})\n{stdout}\n{stderr}", output.status);
    eprintln!("{program} {args:?}: {}", stdout.trim());
}

#[test]
fn redis_py_pipelines_watch_loops_and_django_set_many() {
    let dir = clients_dir();
    if !available("python3", &["-c", "import redis"], &dir) {
        eprintln!("SKIPPED: python3 with the `redis` package is not installed (.ci/run installs it)");
        return;
    }
    run_script("python3", &["py_transactions.py"], &dir);
}

#[test]
fn redis_py_acl_helpers_and_refusals() {
    let dir = clients_dir();
    if !available("python3", &["-c", "import redis"], &dir) {
        eprintln!("SKIPPED: python3 with the `redis` package is not installed (.ci/run installs it)");
        return;
    }
    run_script("python3", &["py_acl.py"], &dir);
}

/// The node-redis scripts' directory, or `None` (saying why) when node or node-redis is missing.
fn node_redis_dir() -> Option<PathBuf> {
    let dir = clients_dir().join("node");
    if !dir.join("node_modules/redis/package.json").exists() || !available("node", &["--version"], &dir) {
        eprintln!(
            "SKIPPED: node or node-redis is not installed (`npm ci` in {}, as .ci/run does)",
            dir.display()
        );
        return None;
    }
    Some(dir)
}

#[test]
fn node_redis_multi_exec_and_watch() {
    if let Some(dir) = node_redis_dir() {
        run_script("node", &["transactions.mjs"], &dir);
    }
}

#[test]
fn node_redis_scan_iterator_returns_every_key() {
    if let Some(dir) = node_redis_dir() {
        run_script("node", &["scan.mjs"], &dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redis_create_cluster_against_shards() {
    let Some(dir) = node_redis_dir() else { return };
    let nodes = start_cluster(3, &["--shards", "4"]);
    wait_until(std::time::Duration::from_secs(30), "every shard led", || async {
        let mut c = client(nodes[0].resp).await;
        let info: String = redis::cmd("INFO").arg("shards").query_async(&mut c).await.unwrap_or_default();
        info.matches("state=active,leader=").count() == 4
    })
    .await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.resp.to_string()).collect();
    let output = Command::new("node").arg("cluster.mjs").args(&addrs).current_dir(&dir).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "node cluster.mjs failed ({})\n{stdout}\n{stderr}", output.status);
    eprintln!("{}", stdout.trim());
}
