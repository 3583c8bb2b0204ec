//! The default mode under a process-level nemesis: three `crema serve` processes with memory
//! storage on 127.0.0.1, clients on every node doing SET, GET, DEL and SET NX (every operation
//! recorded and checked for linearizability per key with `crema-check`) and INCR on counters
//! (each counter must end between its acknowledged increments and those plus the ones of
//! unknown outcome). The nemesis SIGKILLs a random node, the leader or a follower, and
//! restarts it with the same flags (it comes back empty and recovers, see docs/reliability.md),
//! or SIGSTOPs the leader past its election timeout and SIGCONTs it. Memory storage survives one
//! lost node at a time, so the next fault waits until the restarted node has caught up (with
//! shards: every shard's replica on it). Every node's log is kept; none may hold a panic. Both
//! nemeses run against one group and against a cluster of 8 shards (`--shards 8`): there every
//! restart brings back eight empty replicas at once, each recovering from its shard's leader,
//! and the paused node is shard 0's leader, among the leaders of other shards.
//!
//! `CREMA_MEMORY_NEMESIS_SECS` sets the fault phase (default 30 s), `CREMA_MEMORY_NEMESIS_SEED`
//! the schedule; `CREMA_MEMORY_NEMESIS_SOAK=1` runs each nemesis for 10 minutes in all, over
//! seeds 1..=10 (60 s each: a fresh cluster per seed, so more schedules start from scratch).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_addrs, nothing_written};
use crema_check::history::Recorder;
use crema_check::linearizability::{check, Input, Output, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;

const NODES: usize = 3;
const CLIENTS: usize = 6;
const COUNTERS: usize = 4;
const OPS_PER_KEY: u64 = 200;
const OP_TIMEOUT: Duration = Duration::from_secs(3);

struct Cluster {
    /// `--shards` of every node (1: one group).
    shards: usize,
    raft: Vec<SocketAddr>,
    resp: Vec<SocketAddr>,
    admin: Vec<SocketAddr>,
    logs: tempfile::TempDir,
    nodes: Vec<Option<Child>>,
    starts: Vec<usize>,
}

impl Cluster {
    fn start(&mut self, i: usize) {
        let id = (i + 1).to_string();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--node-id".into(),
            id,
            "--raft-addr".into(),
            self.raft[i].to_string(),
            "--resp-addr".into(),
            self.resp[i].to_string(),
            "--admin-addr".into(),
            self.admin[i].to_string(),
            "--request-timeout-ms".into(),
            "2000".into(),
            "--tick-interval-ms".into(),
            "20".into(),
        ];
        if self.shards > 1 {
            args.extend(["--shards".into(), self.shards.to_string()]);
        }
        for j in (0..NODES).filter(|j| *j != i) {
            args.extend(["--peer".into(), format!("{}={},{}", j + 1, self.raft[j], self.resp[j])]);
        }
        self.starts[i] += 1;
        let log = self.logs.path().join(format!("node{}-{}.log", i + 1, self.starts[i]));
        let mut child = Command::new(env!("CARGO_BIN_EXE_crema"))
            .args(&args)
            .env("RUST_LOG", "warn,raft=error")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting crema");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
            .unwrap();
        if !line.starts_with("crema listening") {
            let _ = child.wait();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("node {} did not start: {line:?}; its log:\n{said}", i + 1);
        }
        self.nodes[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = &self.nodes[i] {
            let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
            assert!(status.success());
        }
    }

    /// `INFO raft` of node `i`, if it answers.
    async fn raft_info(&self, i: usize) -> Option<String> {
        self.info(i, "raft").await
    }

    /// `INFO <section>` of node `i`, if it answers.
    async fn info(&self, i: usize, section: &str) -> Option<String> {
        let mut c =
            tokio::time::timeout(Duration::from_millis(500), connect(self.resp[i])).await.ok()?.ok()?;
        tokio::time::timeout(Duration::from_millis(500), redis::cmd("INFO").arg(section).query_async(&mut c))
            .await
            .ok()?
            .ok()
    }

    /// Whether every shard replica of node `i` knows its leader, has left its recovery
    /// (`state=initializing` until then) and applied what it knows is committed.
    async fn shards_caught_up(&self, i: usize) -> bool {
        let Some(info) = self.info(i, "shards").await else { return false };
        let lines: Vec<&str> = info
            .lines()
            .filter(|l| {
                l.strip_prefix("shard").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect();
        let field = |line: &str, name: &str| -> Option<String> {
            line.split([':', ',']).find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_owned))
        };
        let num = |line: &str, name: &str| field(line, name).and_then(|v| v.parse::<u64>().ok());
        lines.len() == self.shards && lines.iter().all(|l| {
            field(l, "state").as_deref() == Some("active")
                && num(l, "leader").is_some_and(|leader| leader != 0)
                && matches!((num(l, "applied_index"), num(l, "commit_index")), (Some(a), Some(c)) if a >= c)
        })
    }

    async fn leader(&self) -> Option<usize> {
        for i in (0..NODES).filter(|i| self.nodes[*i].is_some()) {
            if self.raft_info(i).await.is_some_and(|text| text.contains("raft_role:Leader")) {
                return Some(i);
            }
        }
        None
    }

    /// Waits until node `i` has left its recovery and applied what it knows is committed.
    async fn caught_up(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.shards > 1 {
                if self.shards_caught_up(i).await {
                    return;
                }
            } else if let Some(info) = self.raft_info(i).await {
                let field = |name: &str| -> Option<u64> {
                    info.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")))
                        .and_then(|v| v.trim().parse().ok())
                };
                let led = field("leader_id").is_some_and(|l| l != 0);
                if led && field("recovering") == Some(0) && field("applied_index") >= field("commit_index") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node {} did not catch up within {within:?}", i + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lines of every node log that tell of a panic.
    fn panics(&self) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("panicked")) {
                found.push(format!("{}: {line}", path.display()));
            }
        }
        found
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
    /// Per counter: increments acknowledged, and those of unknown outcome.
    incr_acked: Vec<AtomicU64>,
    incr_unknown: Vec<AtomicU64>,
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
        if rng.gen_bool(0.2) {
            let counter = rng.gen_range(0..COUNTERS);
            let reply: Result<redis::RedisResult<i64>, _> = tokio::time::timeout(
                OP_TIMEOUT,
                redis::cmd("INCR").arg(format!("counter{counter}")).query_async(conn),
            )
            .await;
            match reply {
                Ok(Ok(_)) => work.incr_acked[counter].fetch_add(1, Ordering::SeqCst),
                // Nothing written: counted as neither acknowledged nor unknown, so an increment
                // applied after all makes the final count too high.
                Ok(Err(e)) if nothing_written(&e) => 0,
                Ok(Err(e)) => {
                    if e.is_io_error() || e.is_connection_dropped() {
                        conns[i] = None;
                    }
                    work.incr_unknown[counter].fetch_add(1, Ordering::SeqCst)
                }
                Err(_) => {
                    conns[i] = None;
                    work.incr_unknown[counter].fetch_add(1, Ordering::SeqCst)
                }
            };
            continue;
        }
        let n = work.ops.fetch_add(1, Ordering::Relaxed);
        let key = n / OPS_PER_KEY;
        work.max_key.fetch_max(key, Ordering::Relaxed);
        let value = n + 1;
        let input = match rng.gen::<f64>() {
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
                conns[i] = None;
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Nemesis {
    /// SIGKILL a random node and restart it with the same flags.
    Kill,
    /// SIGSTOP the leader past its election timeout, then SIGCONT it.
    PauseLeader,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

async fn run(nemesis: Nemesis, shards: usize, seed: u64, secs: u64) {
    let mut cluster = Cluster {
        shards,
        raft: free_addrs(NODES),
        resp: free_addrs(NODES),
        admin: free_addrs(NODES),
        logs: tempfile::tempdir().unwrap(),
        nodes: (0..NODES).map(|_| None).collect(),
        starts: vec![0; NODES],
    };
    for i in 0..NODES {
        cluster.start(i);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.leader().await.is_none() {
        assert!(Instant::now() < deadline, "no leader among the processes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let work = Arc::new(Work {
        history: Recorder::new(),
        ops: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        max_key: AtomicU64::new(0),
        incr_acked: (0..COUNTERS).map(|_| AtomicU64::new(0)).collect(),
        incr_unknown: (0..COUNTERS).map(|_| AtomicU64::new(0)).collect(),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(cluster.resp.clone(), work.clone(), seed * 100 + c as u64)))
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    let faults = Arc::new(Mutex::new(Vec::<String>::new()));
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs_f64(rng.gen_range(1.0..2.5))).await;
        let leader = cluster.leader().await;
        let fault = match nemesis {
            Nemesis::Kill => {
                let victim = rng.gen_range(0..NODES);
                let role = if Some(victim) == leader { "leader" } else { "follower" };
                cluster.kill(victim);
                tokio::time::sleep(Duration::from_secs_f64(rng.gen_range(0.2..1.5))).await;
                cluster.start(victim);
                cluster.caught_up(victim, Duration::from_secs(20)).await;
                format!("SIGKILL node {} ({role})", victim + 1)
            }
            Nemesis::PauseLeader => {
                let Some(victim) = leader else { continue };
                cluster.signal(victim, "-STOP");
                tokio::time::sleep(Duration::from_secs_f64(rng.gen_range(0.5..2.0))).await;
                cluster.signal(victim, "-CONT");
                format!("SIGSTOP node {}", victim + 1)
            }
        };
        faults.lock().unwrap().push(fault);
    }

    // Quiet: every node running; the cluster must commit again.
    let deadline = Instant::now() + Duration::from_secs(15);
    'commit: loop {
        for &addr in &cluster.resp {
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
        assert!(Instant::now() < deadline, "no write committed within 15 s of the faults stopping");
    }
    work.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    for i in 0..NODES {
        cluster.caught_up(i, Duration::from_secs(20)).await;
    }
    // Final reads of every key and counter on every node.
    for &addr in &cluster.resp {
        let mut c = connect(addr).await.expect("connecting for the final reads");
        for key in 0..=work.max_key.load(Ordering::Relaxed) {
            let pending = work.history.invoke(key, Input::Get);
            let value =
                redis::cmd("GET").arg(format!("k{key}")).query_async(&mut c).await.expect("final read");
            pending.complete(output(&Input::Get, value));
        }
        for counter in 0..COUNTERS {
            let value: Option<u64> = redis::cmd("GET")
                .arg(format!("counter{counter}"))
                .query_async(&mut c)
                .await
                .expect("final read");
            let value = value.unwrap_or(0);
            let acked = work.incr_acked[counter].load(Ordering::SeqCst);
            let unknown = work.incr_unknown[counter].load(Ordering::SeqCst);
            assert!(
                (acked..=acked + unknown).contains(&value),
                "counter{counter} on {addr} is {value}: {acked} increments acknowledged, {unknown} unknown \
                 (seed {seed})"
            );
        }
    }
    let ops = work.history.operations();
    let verdict = check(&ops, 20_000_000);
    let faults = faults.lock().unwrap();
    let increments: u64 = work.incr_acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    println!(
        "memory nemesis {nemesis:?}, {shards} shard(s): seed {seed}, {secs} s: {} operations checked ({} of unknown outcome), \
         {increments} increments acknowledged, {} faults ({:?}); verdict {verdict:?}",
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
    assert_eq!(verdict, Verdict::Linearizable, "rerun with CREMA_MEMORY_NEMESIS_SEED={seed}");
    assert!(ops.len() > 100, "the clients got almost nothing done: {} operations", ops.len());
    assert!(increments > 0, "no increment was acknowledged");
    let panics = cluster.panics();
    assert!(panics.is_empty(), "node logs hold panics:\n{}", panics.join("\n"));
}

async fn run_all(nemesis: Nemesis, shards: usize, default_seed: u64) {
    if std::env::var_os("CREMA_MEMORY_NEMESIS_SOAK").is_some() {
        for seed in 1..=10 {
            run(nemesis, shards, seed, 60).await;
        }
        return;
    }
    let seed = env_u64("CREMA_MEMORY_NEMESIS_SEED", default_seed);
    run(nemesis, shards, seed, env_u64("CREMA_MEMORY_NEMESIS_SECS", 30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_nodes_killed_at_random_lose_nothing() {
    run_all(Nemesis::Kill, 1, 18).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_nodes_of_a_sharded_cluster_killed_at_random_lose_nothing() {
    run_all(Nemesis::Kill, 8, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_leader_paused_loses_nothing() {
    run_all(Nemesis::PauseLeader, 1, 19).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_leaders_of_a_sharded_cluster_paused_lose_nothing() {
    run_all(Nemesis::PauseLeader, 8, 21).await;
}
