//! Process-level faults: three `crema serve --storage rocksdb` processes, each in its own
//! network namespace joined by a bridge, under clients whose every operation is recorded and
//! checked for linearizability per key (`crema-check`). The nemesis SIGKILLs a node and restarts
//! it, SIGSTOPs the leader past its election timeout and SIGCONTs it, and partitions the nodes
//! with nftables rules inside their namespaces (dropping packets to and from the other side),
//! every 1–3 s. Clients in the root namespace reach every node throughout, as in Jepsen.
//!
//! The whole schedule runs twice: one shard with peers authenticated by the cluster secret, then
//! four shards (four Raft groups in each node's one database) with peers on mutual TLS.
//!
//! Needs root (network namespaces, nftables); `.ci/run` installs `nftables` and runs as root.
//! Without root the test says so and checks nothing. `CREMA_PROCESS_FAULTS_SECS` sets the fault
//! phase (default 20 s), `CREMA_PROCESS_FAULTS_SEED` the schedule.
#![cfg(feature = "rocksdb")]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{is_root, must, node_ip, run, Network};
use common::nothing_written;
use crema_check::history::Recorder;
use crema_check::linearizability::{check, Input, Output, Verdict};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;

const NODES: usize = 3;
const CLIENTS: usize = 6;
const OPS_PER_KEY: u64 = 200;
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The three processes.
struct Cluster {
    net: Network,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Child>>,
    stopped: Vec<bool>,
    /// How peers authenticate, and how many shards: flags every node gets.
    peer_args: Vec<String>,
}

impl Cluster {
    fn resp(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.net.ip(i), 6380))
    }

    fn start(&mut self, i: usize) {
        let ip = |j: usize| self.net.ip(j);
        let id = (i + 1).to_string();
        let data = self.dir.path().join(format!("node{}", i + 1)).to_str().unwrap().to_owned();
        let mut args: Vec<String> = [
            "netns",
            "exec",
            &self.net.ns(i),
            env!("CARGO_BIN_EXE_crema"),
            "serve",
            "--node-id",
            &id,
            "--raft-addr",
            &format!("{}:9000", ip(i)),
            "--resp-addr",
            &format!("{}:6380", ip(i)),
            "--admin-addr",
            &format!("{}:9090", ip(i)),
            "--storage",
            "rocksdb",
            "--data-dir",
            &data,
            "--request-timeout-ms",
            "2000",
            "--tick-interval-ms",
            "20",
            // The RESP and admin ports are on a private test network: protected mode off for
            // them (peers authenticate, see `peer_args`).
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.peer_args.iter().map(|a| a.replace("{N}", &id)));
        for j in (0..NODES).filter(|j| *j != i) {
            args.extend(["--peer".into(), format!("{}={}:9000,{}:6380", j + 1, ip(j), ip(j))]);
        }
        let mut child = Command::new("ip")
            .args(&args)
            .env(
                "RUST_LOG",
                if std::env::var_os("CREMA_TEST_LOG").is_some() { "info,raft=warn" } else { "error" },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting crema in its namespace");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
            .unwrap();
        assert!(line.starts_with("crema listening"), "node {} did not start: {line:?}", i + 1);
        self.nodes[i] = Some(child);
        self.stopped[i] = false;
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    fn signal(&mut self, i: usize, signal: &str) {
        if let Some(child) = &self.nodes[i] {
            must("kill", &[signal, &child.id().to_string()]);
            self.stopped[i] = signal == "-STOP";
        }
    }

    /// The node that says it leads, if one does.
    async fn leader(&self) -> Option<usize> {
        for i in (0..NODES).filter(|i| self.nodes[*i].is_some() && !self.stopped[*i]) {
            let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_millis(500), connect(self.resp(i))).await
            else {
                continue;
            };
            let info: Result<Result<String, _>, _> = tokio::time::timeout(
                Duration::from_millis(500),
                redis::cmd("INFO").arg("raft").query_async(&mut c),
            )
            .await;
            if matches!(info, Ok(Ok(ref text)) if text.contains("raft_role:Leader")) {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.signal(i, "-CONT");
            self.kill(i);
        }
    }
}

async fn connect(addr: SocketAddr) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(format!("redis://{addr}/"))?.get_multiplexed_async_connection().await
}

struct Work {
    history: Recorder,
    ops: AtomicU64,
    stop: AtomicBool,
    max_key: AtomicU64,
}

async fn client(addrs: Vec<SocketAddr>, work: Arc<Work>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conns: Vec<Option<MultiplexedConnection>> = vec![None; addrs.len()];
    while !work.stop.load(Ordering::Relaxed) {
        let i = rng.gen_range(0..addrs.len());
        if conns[i].is_none() {
            match tokio::time::timeout(Duration::from_millis(500), connect(addrs[i])).await {
                Ok(Ok(c)) => conns[i] = Some(c),
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let conn = conns[i].as_mut().unwrap();
        let n = work.ops.fetch_add(1, Ordering::Relaxed);
        let key = n / OPS_PER_KEY;
        work.max_key.fetch_max(key, Ordering::Relaxed);
        let value = n + 1;
        let roll: f64 = rng.gen();
        let input = match roll {
            r if r < 0.45 => Input::Put(value),
            r if r < 0.90 => Input::Get,
            r if r < 0.95 => Input::Delete,
            _ => Input::Cas { expected: None, new: value },
        };
        let name = format!("k{key}");
        let cmd = match input {
            Input::Put(v) => redis::cmd("SET").arg(&name).arg(v).to_owned(),
            Input::Get => redis::cmd("GET").arg(&name).to_owned(),
            Input::Delete => redis::cmd("DEL").arg(&name).to_owned(),
            Input::Cas { new, .. } => redis::cmd("SET").arg(&name).arg(new).arg("NX").to_owned(),
        };
        let pending = work.history.invoke(key, input.clone());
        let reply: Result<redis::RedisResult<redis::Value>, _> =
            tokio::time::timeout(OP_TIMEOUT, cmd.query_async(conn)).await;
        match reply {
            Ok(Ok(value)) => pending.complete(output(&input, value)),
            // Refused with nothing written (README: error replies); reads change nothing. Were a
            // refused write applied after all, the checker would find it.
            Ok(Err(e)) if input == Input::Get || nothing_written(&e) => pending.failed(),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() {
                    conns[i] = None;
                }
                pending.complete(Output::Unknown);
            }
            Err(_) => {
                conns[i] = None; // a stopped node: do not queue behind it
                pending.complete(Output::Unknown);
            }
        }
    }
}

fn output(input: &Input, value: redis::Value) -> Output {
    use redis::Value;
    match (input, value) {
        (Input::Get, Value::Nil) => Output::Value(None),
        (Input::Get, Value::BulkString(b)) => {
            Output::Value(Some(std::str::from_utf8(&b).unwrap().parse().expect("a value we wrote")))
        }
        (Input::Cas { .. }, Value::Nil) => Output::Swapped(false),
        (Input::Cas { .. }, _) => Output::Swapped(true),
        (_, _) => Output::Ok,
    }
}

/// The same faults twice, in turn (the machine has two cores): peers authenticated with the
/// cluster secret, then with mutual TLS (certificates from `crema certs init` naming each
/// node), so the TLS transport's reconnects under kills, pauses and partitions are exercised.
/// The second run splits the keys over four shards: a SIGKILL then interrupts the node's one
/// log writer in the middle of several groups' batches, and the faults (aimed at shard 0's
/// leader) leave the other shards' leaders to move or stay as they will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stop_and_partition_real_processes() {
    if !is_root() || run("nft", &["--version"]).is_err() {
        eprintln!("SKIPPED: needs root and nftables (network namespaces); .ci/run provides both");
        return;
    }
    let seed = std::env::var("CREMA_PROCESS_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(301);
    let secs = std::env::var("CREMA_PROCESS_FAULTS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let secret = ["--cluster-secret", "process-faults-cluster-secret"];
    nemesis(secret.iter().map(|s| s.to_string()).collect(), seed, secs).await;

    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().join("certs");
    let mut init = vec!["certs".to_owned(), "init".into(), "--dir".into(), dir.display().to_string()];
    init.extend(["--nodes".into(), NODES.to_string()]);
    for i in 0..NODES {
        init.extend(["--host".into(), node_ip(i).to_string()]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_crema")).args(&init).output().unwrap();
    assert!(out.status.success(), "crema certs init: {}", String::from_utf8_lossy(&out.stderr));
    let file = |name: &str| dir.join(name).display().to_string();
    let mtls_and_shards = vec![
        "--peer-tls-cert".to_owned(),
        file("node-{N}.crt"),
        "--peer-tls-key".into(),
        file("node-{N}.key"),
        "--peer-tls-ca".into(),
        file("ca.crt"),
        "--shards".into(),
        "4".into(),
    ];
    // The same seed: the same schedule of faults, so the two runs can be compared.
    nemesis(mtls_and_shards, seed, secs).await;
}

async fn nemesis(peer_args: Vec<String>, seed: u64, secs: u64) {
    println!("process faults with {peer_args:?}");
    let net = Network::setup(NODES);
    let mut cluster = Cluster {
        net,
        dir: tempfile::tempdir().unwrap(),
        nodes: (0..NODES).map(|_| None).collect(),
        stopped: vec![false; NODES],
        peer_args,
    };
    for i in 0..NODES {
        cluster.start(i);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.leader().await.is_none() {
        assert!(Instant::now() < deadline, "no leader among the processes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let addrs: Vec<SocketAddr> = (0..NODES).map(|i| cluster.resp(i)).collect();
    let work = Arc::new(Work {
        history: Recorder::new(),
        ops: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        max_key: AtomicU64::new(0),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(addrs.clone(), work.clone(), seed + c as u64 + 1)))
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    let faults = Arc::new(Mutex::new(Vec::<String>::new()));
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs_f64(rng.gen_range(1.0..3.0))).await;
        let leader = cluster.leader().await;
        let mut ids: Vec<usize> = (0..NODES).collect();
        ids.shuffle(&mut rng);
        let hold = Duration::from_secs_f64(rng.gen_range(1.0..2.5));
        let fault = match rng.gen_range(0..3) {
            0 => {
                let victim = leader.unwrap_or(ids[0]);
                cluster.kill(victim);
                tokio::time::sleep(hold).await;
                cluster.start(victim);
                format!("SIGKILL node {} and restart after {hold:?}", victim + 1)
            }
            1 => {
                let victim = leader.unwrap_or(ids[0]);
                cluster.signal(victim, "-STOP");
                tokio::time::sleep(hold).await;
                cluster.signal(victim, "-CONT");
                format!("SIGSTOP node {} for {hold:?}", victim + 1)
            }
            _ => {
                let alone = leader.unwrap_or(ids[0]);
                let rest: Vec<usize> = (0..NODES).filter(|i| *i != alone).collect();
                cluster.net.partition(&[alone], &rest);
                tokio::time::sleep(hold).await;
                cluster.net.heal();
                format!(
                    "partition node {} from {:?} for {hold:?}",
                    alone + 1,
                    rest.iter().map(|i| i + 1).collect::<Vec<_>>()
                )
            }
        };
        faults.lock().unwrap().push(fault);
    }

    // Quiet: everything healed and running; the cluster must commit again.
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(10);
    'commit: loop {
        for &addr in &addrs {
            if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_millis(500), connect(addr)).await {
                let set: Result<redis::RedisResult<()>, _> = tokio::time::timeout(
                    Duration::from_secs(2),
                    redis::cmd("SET").arg("probe").arg(1).query_async(&mut c),
                )
                .await;
                if matches!(set, Ok(Ok(()))) {
                    break 'commit;
                }
            }
        }
        assert!(Instant::now() < deadline, "no write committed within 10 s of the faults stopping");
    }
    let recovered = healed.elapsed();
    work.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // Final reads of every key on every node; a node still catching up may refuse for a moment.
    for &addr in &addrs {
        let mut c = connect(addr).await.expect("connecting for the final reads");
        for key in 0..=work.max_key.load(Ordering::Relaxed) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pending = work.history.invoke(key, Input::Get);
                match redis::cmd("GET").arg(format!("k{key}")).query_async(&mut c).await {
                    Ok(value) => break pending.complete(output(&Input::Get, value)),
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("final read of k{key} on {addr}: {e}; retrying");
                        pending.failed();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("the final read of k{key} on {addr} failed: {e}"),
                }
            }
        }
    }
    let ops = work.history.operations();
    let verdict = check(&ops, 20_000_000);
    let faults = faults.lock().unwrap();
    println!(
        "process faults: seed {seed}, {secs} s: {} operations checked ({} of unknown outcome), {} faults \
         ({:?}), recovered in {recovered:?}; verdict {verdict:?}",
        ops.len(),
        ops.iter().filter(|o| o.output == Output::Unknown).count(),
        faults.len(),
        faults,
    );
    if let Verdict::Violation { key } | Verdict::GaveUp { key } = verdict {
        let mut of_key: Vec<_> = ops.iter().filter(|o| o.key == key).collect();
        of_key.sort_by_key(|o| o.call);
        for op in of_key.iter().take(400) {
            println!("  {:>10} {:>10} {:?} -> {:?}", op.call, op.ret, op.input, op.output);
        }
    }
    assert_eq!(verdict, Verdict::Linearizable, "rerun with CREMA_PROCESS_FAULTS_SEED={seed}");
    assert!(ops.len() > 100, "the clients got almost nothing done: {} operations", ops.len());
}
