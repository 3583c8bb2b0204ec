//! Crashes with real processes and real disks: a 3-node cluster of `crema serve --storage
//! rocksdb` under continuous writes from 8 clients, one node SIGKILLed and restarted every few
//! seconds for a minute, then all three at once. Every acknowledged write must be present with
//! its last value on every node. The chaos schedule comes from a seed printed at the start
//! (`CREMA_CHAOS_SEED` replays it; `CREMA_CHAOS_SECS` changes the duration).
#![cfg(feature = "rocksdb")]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use tokio::sync::watch;

const CLIENTS: usize = 8;
const KEYS_PER_CLIENT: u64 = 20;

/// One SET as the client saw it: which node it went to, when it was sent and answered (ms
/// since the test began) and how it ended (`None` when acknowledged).
#[derive(Debug, Clone)]
struct Write {
    seq: u64,
    node: usize,
    sent_ms: u128,
    done_ms: u128,
    error: Option<String>,
}

/// Every write to one key, in the order the client made them. A key may hold its last
/// acknowledged value, or any write after it whose outcome is unknown (the client saw an error,
/// but the write may have been applied).
#[derive(Debug, Default, Clone)]
struct KeyHistory {
    writes: Vec<Write>,
}

impl KeyHistory {
    /// Index of the last acknowledged write.
    fn last_acked(&self) -> Option<usize> {
        self.writes.iter().rposition(|w| w.error.is_none())
    }

    fn allows(&self, value: Option<u64>) -> bool {
        let from = self.last_acked();
        match value {
            None => from.is_none(),
            Some(v) => self.writes[from.unwrap_or(0)..].iter().any(|w| w.seq == v),
        }
    }

    /// The writes from the one that put `value` (or the last acknowledged one, if earlier) to
    /// the end, for a failure message: shows whether a stale value was an unknown write.
    fn explain(&self, value: Option<u64>) -> String {
        let from_value = value.and_then(|v| self.writes.iter().position(|w| w.seq == v));
        let from = match (from_value, self.last_acked()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        let lines: Vec<String> = self.writes[from..]
            .iter()
            .map(|w| {
                let outcome = w.error.as_deref().unwrap_or("acknowledged");
                format!("  {} to node {} at {}-{} ms: {outcome}", w.seq, w.node + 1, w.sent_ms, w.done_ms)
            })
            .collect();
        lines.join("\n")
    }
}

type History = Arc<Mutex<BTreeMap<String, KeyHistory>>>;

struct Cluster {
    dir: tempfile::TempDir,
    raft: Vec<SocketAddr>,
    resp: Vec<SocketAddr>,
    nodes: Vec<Option<Node>>,
    /// More arguments for every node.
    extra: &'static [&'static str],
}

impl Cluster {
    fn new(extra: &'static [&'static str]) -> Self {
        // One call: the six ports are distinct (two calls could hand out one port twice).
        let mut addrs = free_addrs(6);
        let resp = addrs.split_off(3);
        let raft = addrs;
        let mut cluster =
            Self { dir: tempfile::tempdir().unwrap(), raft, resp, nodes: vec![None, None, None], extra };
        for i in 0..3 {
            cluster.start(i);
        }
        cluster
    }

    fn start(&mut self, i: usize) {
        let data: PathBuf = self.dir.path().join(format!("node{}", i + 1));
        let (id, raft, resp) = ((i + 1).to_string(), self.raft[i].to_string(), self.resp[i].to_string());
        let peers: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("{}={},{}", j + 1, self.raft[j], self.resp[j]))
            .collect();
        let data = data.to_str().unwrap().to_owned();
        let mut args =
            vec!["--node-id", &id, "--raft-addr", &raft, "--resp-addr", &resp, "--storage", "rocksdb"];
        args.extend([
            "--data-dir",
            &data,
            "--checkpoint-log-threshold",
            "2000",
            "--request-timeout-ms",
            "2000",
        ]);
        for p in &peers {
            args.extend(["--peer", p.as_str()]);
        }
        args.extend(FAST);
        args.extend(self.extra);
        // A client's outgoing connection may hold the stopped node's port for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match try_start(&args) {
                Ok(node) => break self.nodes[i] = Some(node),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart of node {} retried: {e}", i + 1);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.child.kill().unwrap(); // SIGKILL
            node.child.wait().unwrap();
        }
    }
}

/// The writers' connections wait 5 s for an answer, past the nodes' 2 s request timeout, so a
/// write the cluster is still working on is answered by the node (applied, or `-TIMEOUT`) and
/// not abandoned by the client. redis-rs's default of 500 ms abandoned writes that the node then
/// retried with the new leader after an election and applied after the client's next writes
/// to the same key: an outcome that is linearizable (an abandoned write may take effect at any
/// later time) but that the history below rules out.
fn writer_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
}

/// One client: writes increasing values to its own keys through `resp[first]`, moving to the
/// next node whenever a request fails; records what was acknowledged and what is unknown.
async fn writer(
    client_no: usize,
    resp: Vec<SocketAddr>,
    history: History,
    began: Instant,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut node = client_no % resp.len();
    let mut conn = None;
    let mut seq = 0u64;
    let mut acked = 0;
    while !*stop.borrow() {
        if conn.is_none() {
            let client = redis::Client::open(format!("redis://{}/", resp[node])).unwrap();
            match client.get_multiplexed_async_connection_with_config(&writer_config()).await {
                Ok(c) => conn = Some(c),
                _ => {
                    node = (node + 1) % resp.len();
                    tokio::select! { _ = tokio::time::sleep(Duration::from_millis(50)) => {}, _ = stop.changed() => {} }
                    continue;
                }
            }
        }
        seq += 1;
        let key = format!("c{client_no}:{}", seq % KEYS_PER_CLIENT);
        let c = conn.as_mut().expect("connected above");
        let sent_ms = began.elapsed().as_millis();
        let error = c.set::<_, _, ()>(&key, seq).await.err().map(|e| e.to_string());
        let failed = error.is_some();
        let write = Write { seq, node, sent_ms, done_ms: began.elapsed().as_millis(), error };
        history.lock().unwrap().entry(key).or_default().writes.push(write);
        if failed {
            conn = None;
            node = (node + 1) % resp.len();
        } else {
            acked += 1;
        }
    }
    acked
}

/// A linearizable GET, retried for up to 10 s while the node (just restarted) catches up, as a
/// client would on `-TIMEOUT`, `-CLUSTERDOWN` or no answer.
async fn get_retrying(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<Option<u64>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.get(key).await {
            Err(e)
                if Instant::now() < deadline
                    && (e.is_timeout() || matches!(e.code(), Some("TIMEOUT" | "CLUSTERDOWN"))) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Reads every key through every node (linearizable) and checks it against the history;
/// answers what node 1 read, to compare after a full restart.
async fn verify(cluster: &Cluster, history: &BTreeMap<String, KeyHistory>) -> BTreeMap<String, Option<u64>> {
    leader_among(&cluster.resp).await;
    let mut seen = BTreeMap::new();
    for (i, addr) in cluster.resp.iter().enumerate() {
        let mut c = client(*addr).await;
        for (key, h) in history {
            let value = match get_retrying(&mut c, key).await {
                Ok(v) => v,
                Err(e) => {
                    let mut probe = client(*addr).await;
                    let info: String =
                        redis::cmd("INFO").arg("raft").query_async(&mut probe).await.unwrap_or_default();
                    panic!("GET {key} on node {}: {e}\n{info}", i + 1);
                }
            };
            assert!(
                h.allows(value),
                "node {} has {key} = {value:?}; its writes:\n{}",
                i + 1,
                h.explain(value)
            );
            if i == 0 {
                seen.insert(key.clone(), value);
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write() {
    chaos(&[], 60).await;
}

/// The same with 4 shards (Multi-Raft): every shard's log in each node's one database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_with_shards() {
    chaos(&["--shards", "4"], 20).await;
}

/// Kills one node after another under load for `default_secs` (or `CREMA_CHAOS_SECS`), then
/// all three at once, and checks every acknowledged write each time.
async fn chaos(extra: &'static [&'static str], default_secs: u64) {
    // One chaos cluster at a time: two would share the two cores and each other's ports.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _serial = SERIAL.lock().await;
    let seed: u64 =
        std::env::var("CREMA_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
    let secs: u64 =
        std::env::var("CREMA_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_secs);
    println!("chaos seed {seed} ({secs} s); rerun with CREMA_CHAOS_SEED={seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    let began = Instant::now();
    let mut cluster = Cluster::new(extra);
    let history: History = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let writers: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(writer(c, cluster.resp.clone(), history.clone(), began, stop_rx.clone())))
        .collect();

    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(1500 + next() % 2000)).await;
        let victim = (next() % 3) as usize;
        cluster.kill(victim);
        kills += 1;
        println!("node {} killed at {} ms", victim + 1, began.elapsed().as_millis());
        tokio::time::sleep(Duration::from_millis(200 + next() % 800)).await;
        cluster.start(victim);
        println!("node {} restarted at {} ms", victim + 1, began.elapsed().as_millis());
    }
    stop_tx.send(true).unwrap();
    let mut acknowledged = 0;
    for w in writers {
        acknowledged += w.await.unwrap();
    }
    let history = history.lock().unwrap().clone();
    println!("{kills} kills, {acknowledged} acknowledged writes over {} keys", history.len());
    assert!(acknowledged > 1000, "the cluster kept serving through the kills ({acknowledged} writes)");
    let before = verify(&cluster, &history).await;

    // All three at once.
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.start(i);
    }
    let after = verify(&cluster, &history).await;
    assert_eq!(before, after, "a full crash and restart changes nothing");
}
