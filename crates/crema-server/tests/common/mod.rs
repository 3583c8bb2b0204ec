//! Helpers for driving real `crema serve` processes: start one (ports picked by the OS), read
//! the addresses it prints, talk to it with the `redis` crate or raw bytes, kill it on drop.

#![allow(dead_code)]

pub mod cmd;
pub mod netns;
pub mod shards;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running `crema serve` process, killed (SIGKILL) when dropped.
pub struct Node {
    pub child: Child,
    pub resp: SocketAddr,
    pub raft: SocketAddr,
    pub admin: SocketAddr,
    /// The rest of the node's stdout (its `crema ready` line comes there).
    pub stdout: Option<BufReader<ChildStdout>>,
}

impl Node {
    /// Waits up to `timeout` for the node's `crema ready` line (a leader is known); answers it.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String, String> {
        let mut stdout = self.stdout.take().ok_or("stdout already gone")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = stdout.read_line(&mut line);
            let _ = tx.send((read, line, stdout));
        });
        match rx.recv_timeout(timeout) {
            Ok((Ok(_), line, stdout)) if line.starts_with("crema ready") => {
                self.stdout = Some(stdout);
                Ok(line)
            }
            Ok((read, line, _)) => Err(format!("no ready line: {read:?} {line:?}")),
            Err(_) => Err(format!("no ready line within {timeout:?}")),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fast Raft timing so elections in tests take tens of milliseconds.
pub const FAST: &[&str] = &["--tick-interval-ms", "20"];

/// `crema serve` on ports the OS picks, for tests that run the binary themselves.
pub const SERVE_ANY_PORTS: &[&str] =
    &["serve", "--resp-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"];

/// Starts `crema serve` with `args` (plus port-0 addresses unless given) and waits for its
/// "crema listening" line, and for a node without peers its "crema ready" line too (it leads).
pub fn start(args: &[&str]) -> Node {
    let mut node = try_start(args).unwrap_or_else(|e| panic!("{e}"));
    if !args.iter().any(|a| *a == "--peer" || *a == "--join") {
        node.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    }
    node
}

/// Like [`start`], with the node's log (RUST_LOG=info) piped into `node.child.stderr`.
pub fn start_capturing_log(args: &[&str]) -> Node {
    spawn(args, true).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`start`], but answers why when the node did not start (a fixed port taken meanwhile).
pub fn try_start(args: &[&str]) -> Result<Node, String> {
    spawn(args, false)
}

/// Like [`start`], run through `wrapper` (a program and its arguments, the `crema` binary
/// and `args` after them: `prlimit --nofile=256:256`, say).
pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Node {
    let mut node = spawn_wrapped(wrapper, args, false).unwrap_or_else(|e| panic!("{e}"));
    node.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    node
}

fn spawn(args: &[&str], capture_log: bool) -> Result<Node, String> {
    spawn_wrapped(&[], args, capture_log)
}

fn spawn_wrapped(wrapper: &[&str], args: &[&str], capture_log: bool) -> Result<Node, String> {
    let mut all: Vec<String> = vec!["serve".into()];
    for (flag, default) in
        [("--resp-addr", "127.0.0.1:0"), ("--raft-addr", "127.0.0.1:0"), ("--admin-addr", "127.0.0.1:0")]
    {
        if !args.contains(&flag) {
            all.extend([flag.to_owned(), default.to_owned()]);
        }
    }
    all.extend(args.iter().map(|s| s.to_string()));
    let log = std::env::var_os("CREMA_TEST_LOG").is_some();
    let stderr = match (capture_log, log) {
        (true, _) => Stdio::piped(),
        (false, true) => Stdio::inherit(),
        (false, false) => Stdio::null(),
    };
    let (program, before): (&str, Vec<&str>) = match wrapper.split_first() {
        Some((program, rest)) => {
            (program, rest.iter().copied().chain([env!("CARGO_BIN_EXE_crema")]).collect())
        }
        None => (env!("CARGO_BIN_EXE_crema"), Vec::new()),
    };
    let mut child = Command::new(program)
        .args(&before)
        .args(&all)
        .env("RUST_LOG", if log || capture_log { "info,raft=warn" } else { "error" })
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting crema");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading the listening line");
    if !line.starts_with("crema listening") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("crema did not start: {line:?} (args {all:?})"));
    }
    let field = |name: &str| -> SocketAddr {
        let start = line.find(&format!("{name}=")).expect("field in ready line") + name.len() + 1;
        line[start..].split_whitespace().next().unwrap().parse().unwrap()
    };
    Ok(Node { resp: field("resp"), raft: field("raft"), admin: field("admin"), child, stdout: Some(stdout) })
}

/// Free 127.0.0.1 ports, for nodes that keep theirs across restarts. They are taken below the
/// kernel's ephemeral range (32768 and up on Linux), from which every `:0` bind and every
/// outgoing connection gets its port: found in CI, a node killed and started again found its
/// port taken by another test's node meanwhile. A port is handed out once per test process
/// ([`claim_port`]): bound then released, it could otherwise go to a test running at the same
/// time, whose node then cannot bind it (found in CI, one chance in thousands per start).
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    use rand::Rng;
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    while held.len() < n {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if !claim_port(port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Whether `port` was not handed out before in this test process; claims it if so.
fn claim_port(port: u16) -> bool {
    static CLAIMED: std::sync::Mutex<Option<std::collections::HashSet<u16>>> = std::sync::Mutex::new(None);
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let claimed = claimed.get_or_insert_with(Default::default);
    assert!(claimed.len() < 10_000, "a test process used up the ports 20000..32000");
    claimed.insert(port)
}

/// `n` distinct free UDP addresses on 127.0.0.1 (for gossip).
pub fn free_udp_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<std::net::UdpSocket> =
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// The arguments of node `i` (id `i + 1`) of a cluster whose nodes listen at `raft` and `resp`
/// (every node's), each listing the others as peers: `extra`, then the test tick (`FAST`).
pub fn member_args(i: usize, raft: &[SocketAddr], resp: &[SocketAddr], extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--node-id".into(),
        (i + 1).to_string(),
        "--raft-addr".into(),
        raft[i].to_string(),
        "--resp-addr".into(),
        resp[i].to_string(),
    ];
    args.extend(extra.iter().cloned());
    for j in (0..raft.len()).filter(|j| *j != i) {
        args.extend(["--peer".into(), format!("{}={},{}", j + 1, raft[j], resp[j])]);
    }
    args.extend(FAST.iter().map(|s| s.to_string()));
    args
}

/// Starts an `n`-node cluster of processes on fixed ports; each lists the others as peers
/// (with their RESP addresses, for `-NOTLEADER`). Ports are picked free, but another process can
/// take one before the node binds it: then the whole cluster is started again on new ports.
pub fn start_cluster(n: usize, extra: &[&str]) -> Vec<Node> {
    start_cluster_with(n, |_| extra.iter().map(|s| s.to_string()).collect())
}

/// Like [`start_cluster`], with `extra(i)` added to node `i`'s arguments.
pub fn start_cluster_with(n: usize, extra: impl Fn(usize) -> Vec<String>) -> Vec<Node> {
    let mut last_error = String::new();
    for _ in 0..5 {
        match try_start_cluster(n, &extra) {
            Ok(nodes) => return nodes,
            Err(e) => last_error = e,
        }
    }
    panic!("the cluster did not start in 5 attempts: {last_error}");
}

fn try_start_cluster(n: usize, extra: &impl Fn(usize) -> Vec<String>) -> Result<Vec<Node>, String> {
    // One call: the ports are distinct (two calls could hand out one port twice).
    let mut raft = free_addrs(2 * n);
    let resp = raft.split_off(n);
    (0..n)
        .map(|i| {
            let id = (i + 1).to_string();
            let (own_raft, own_resp) = (raft[i].to_string(), resp[i].to_string());
            let peers: Vec<String> =
                (0..n).filter(|j| *j != i).map(|j| format!("{}={},{}", j + 1, raft[j], resp[j])).collect();
            let mut args: Vec<&str> =
                vec!["--node-id", &id, "--raft-addr", &own_raft, "--resp-addr", &own_resp];
            for p in &peers {
                args.extend(["--peer", p.as_str()]);
            }
            args.extend(FAST);
            let own = extra(i);
            args.extend(own.iter().map(String::as_str));
            try_start(&args)
        })
        .collect::<Result<Vec<Node>, String>>()
        .and_then(|mut nodes| {
            for node in &mut nodes {
                node.wait_ready(Duration::from_secs(30))?;
            }
            Ok(nodes)
        })
}

/// The index in `nodes` of the leader, once one is elected (asked with `INFO raft`).
pub async fn leader_of(nodes: &[Node]) -> usize {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.resp).collect();
    leader_among(&addrs).await
}

/// The index in `addrs` of the node that leads, once one does.
pub async fn leader_among(addrs: &[SocketAddr]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (i, addr) in addrs.iter().enumerate() {
            let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let info: redis::RedisResult<String> =
                    redis::cmd("INFO").arg("raft").query_async(&mut c).await;
                if info.is_ok_and(|i| i.contains("raft_role:Leader")) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A multiplexed `redis` crate connection to `addr`.
pub async fn client(addr: SocketAddr) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    client.get_multiplexed_async_connection().await.expect("connecting with the redis crate")
}

/// [`client`] that waits up to 10 s for an answer instead of the crate's 500 ms: for writes of
/// megabytes, which a loaded machine may take longer than that to replicate.
pub async fn patient_client(addr: SocketAddr) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connecting with the redis crate")
}

/// Sends raw bytes and reads what arrives until `expect` bytes came or the peer closed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], expect: usize) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_some(&mut stream, expect).await
}

/// Sends raw bytes and reads until the answer ends with `suffix`, the peer closed, or 5 s passed.
pub async fn raw_until(addr: SocketAddr, bytes: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !out.ends_with(suffix) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Reads until `expect` bytes arrived, the peer closed, or 5 s passed.
pub async fn read_some(stream: &mut TcpStream, expect: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while out.len() < expect {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Whether the peer has closed `stream` (reads EOF or a reset within 5 s, ignoring data).
pub async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes (then panics with `what`).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// POST with an empty body over HTTP/1.1 to an admin address: (status, body).
pub async fn http_post(addr: SocketAddr, path: &str) -> (u16, String) {
    let request =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let raw = raw(addr, request.as_bytes(), usize::MAX).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// Waits up to `timeout` for `node`'s process to exit; answers its status.
pub fn wait_exit(node: &mut Node, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = node.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET over HTTP/1.1 to an admin address: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let raw = raw(addr, request.as_bytes(), usize::MAX).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// The replies that promise nothing was written: no leader to take the write (`NOTLEADER`,
/// `CLUSTERDOWN`) or a proposal that can no longer commit (`TRYAGAIN`); `TIMEOUT` and a lost
/// connection leave the outcome unknown.
pub fn nothing_written(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("NOTLEADER" | "CLUSTERDOWN" | "TRYAGAIN"))
}

/// Resident memory of a process, in MiB (Linux).
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// A well-behaved client still gets answers.
pub async fn still_serves(node: &Node) {
    use redis::AsyncCommands as _;
    let mut c = client(node.resp).await;
    let _: () = c.set("canary", "alive").await.unwrap();
    let got: String = c.get("canary").await.unwrap();
    assert_eq!(got, "alive");
}

/// Waits until `INFO clients` (asked on a new connection, which counts) reports `n` clients.
pub async fn wait_for_clients(node: &Node, n: usize, what: &str) {
    let expected = format!("connected_clients:{n}\r");
    wait_until(Duration::from_secs(10), what, || {
        let (addr, expected) = (node.resp, expected.clone());
        async move {
            let mut c = client(addr).await;
            let info: String = redis::cmd("INFO").arg("clients").query_async(&mut c).await.unwrap();
            info.contains(&expected)
        }
    })
    .await;
}

/// The next `n` replies on `stream`, each whole (error lines and bulk strings only).
pub async fn read_replies(stream: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    while replies.len() < n {
        let complete = buf.windows(2).position(|w| w == b"\r\n").and_then(|line_end| match buf[0] {
            b'$' => {
                let len: i64 = std::str::from_utf8(&buf[1..line_end]).ok()?.parse().ok()?;
                let end = if len < 0 { line_end + 2 } else { line_end + 2 + len as usize + 2 };
                (buf.len() >= end).then_some(end)
            }
            _ => Some(line_end + 2),
        });
        match complete {
            Some(end) => replies.push(buf.drain(..end).collect()),
            None => buf.extend(read_some(stream, 1).await),
        }
    }
    replies
}

/// The sum over `nodes` of one unlabelled series of their `/metrics` (which must name it).
pub async fn metric_sum(nodes: &[Node], name: &str) -> u64 {
    let mut sum = 0;
    for node in nodes {
        let (status, body) = http_get(node.admin, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        let value = body.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name)).then(|| words.next()?.parse::<f64>().ok()).flatten()
        });
        sum += value.unwrap_or_else(|| panic!("{name} missing from /metrics")) as u64;
    }
    sum
}
