//! Writes sent through a memory node from the moment it restarts: four `crema serve` processes
//! with `--shards 8 --replicas 3` on 127.0.0.1 (a node holds some shards: a restarted one
//! starts its replicas once it has read the shard map), one SIGKILLed and started again each
//! round while clients write unique keys through it as soon as its RESP port opens, before it
//! is ready and after.
//!
//! Found from outside: a write that arrived before the restarted node had started its replica
//! of the key's shard went to the shard's other holders; the leader balancer then handed that
//! shard's leadership to the restarted node as soon as it caught up, the holders named it the
//! leader, and the write waited for its whole forwarding timeout and answered `-TIMEOUT`
//! (never applied): 11 writes in 12 restarts of a 5-node release cluster, where the balancer
//! had begun the hand-over while the node was still dead. This debug-build test did not hit
//! that window in four runs without the fixes (it needs a write to reach the old leader while
//! its hand-over is pending); it stands guard over what the fix is for: every write through a
//! restarting node is answered, none waits for good, and every acknowledged one is there.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const NODES: usize = 4;
const ROUNDS: usize = 6;
const WRITERS: usize = 6;

/// Node `i`'s arguments; `raft` and `resp` are every node's addresses.
fn args(i: usize, raft: &[std::net::SocketAddr], resp: &[std::net::SocketAddr]) -> Vec<String> {
    // Long against anything a restart takes: a write that waits this long waits for good.
    let extra = ["--shards", "8", "--replicas", "3", "--request-timeout-ms", "20000"];
    member_args(i, raft, resp, &extra.map(String::from))
}

fn start_node(args: &[String]) -> Node {
    start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// What one write through the restarting node came to.
struct Outcome {
    key: String,
    before_ready: bool,
    answer: Result<(), String>,
}

/// Writes unique keys through `addr` until `stop`, connecting again until the port answers.
async fn writer(
    addr: std::net::SocketAddr,
    name: String,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut conn = None;
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        let Some(c) = conn.as_mut() else {
            match redis::Client::open(format!("redis://{addr}"))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
            {
                Ok(c) => conn = Some(c),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
            continue;
        };
        n += 1;
        let key = format!("{name}:{n}");
        let before_ready = !ready.load(Ordering::Acquire);
        let answer: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg("v").query_async(c).await;
        if answer.as_ref().is_err_and(|e| e.is_io_error() || e.is_connection_dropped()) {
            conn = None;
            continue;
        }
        outcomes.push(Outcome { key, before_ready, answer: answer.map_err(|e| e.to_string()) });
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_node_restarting_under_load_are_all_answered() {
    let mut addrs = free_addrs(2 * NODES);
    let resp = addrs.split_off(NODES);
    let raft = addrs;
    let mut nodes: Vec<Option<Node>> = (0..NODES).map(|i| Some(start_node(&args(i, &raft, &resp)))).collect();
    for node in nodes.iter_mut().flatten() {
        node.wait_ready(Duration::from_secs(30)).unwrap();
    }
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let i = round % NODES;
        nodes[i] = None; // SIGKILL
                         // Down for a while, as a crashed process is: its peers' leaders look at it meanwhile.
        tokio::time::sleep(Duration::from_millis(200 * (round as u64 % 5 + 1))).await;
        let mut node = start_node(&args(i, &raft, &resp));
        let (ready, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(resp[i], format!("r{round}w{w}"), ready.clone(), stop.clone())))
            .collect();
        let ready_line = tokio::task::spawn_blocking(move || {
            let line = node.wait_ready(Duration::from_secs(60));
            (node, line)
        });
        let (node, line) = ready_line.await.unwrap();
        line.unwrap();
        ready.store(true, Ordering::Release);
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Release);
        for w in writers {
            outcomes.extend(w.await.unwrap());
        }
        nodes[i] = Some(node);
    }
    // A write a restarting node cannot place yet may be refused with nothing written
    // (`-TRYAGAIN`, `-CLUSTERDOWN`); a `-TIMEOUT` (or any other error) is what was found.
    let failed: Vec<(&str, bool, &str)> = outcomes
        .iter()
        .filter_map(|o| match &o.answer {
            Err(e) if !(e.contains("TRYAGAIN") || e.contains("CLUSTERDOWN")) => {
                Some((o.key.as_str(), o.before_ready, e.as_str()))
            }
            _ => None,
        })
        .collect();
    let early = outcomes.iter().filter(|o| o.before_ready).count();
    assert!(
        failed.is_empty(),
        "{} of {} writes failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(early > 0, "no write went through a node before it was ready: the test shows nothing");
    // Every acknowledged write is there, read through another node.
    let mut c = client(resp[1]).await;
    for o in outcomes.iter().filter(|o| o.answer.is_ok()) {
        let value: Option<String> = redis::cmd("GET").arg(&o.key).query_async(&mut c).await.unwrap();
        assert_eq!(value.as_deref(), Some("v"), "{} acknowledged, then missing", o.key);
    }
}
