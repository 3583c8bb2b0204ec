//! Hostile and broken clients against a real `crema serve`: huge and negative lengths, random
//! bytes, slow-drip requests, clients that never read, ten thousand connections. Each gets a
//! clear error or a closed connection; memory stays bounded; other clients are unaffected.

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn error_then_close(node: &Node, bytes: &[u8], expected: &str) {
    let mut stream = TcpStream::connect(node.resp).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let reply = read_some(&mut stream, 1).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("-ERR Protocol error") && text.contains(expected), "{text:?} for {bytes:?}");
    assert!(closed_by_peer(&mut stream).await, "connection closed after {expected}");
}

#[tokio::test]
async fn impossible_lengths_get_an_error_and_a_closed_connection() {
    let node = start(&[]);
    error_then_close(&node, b"*1\r\n$4611686018427387904\r\n", "bulk length 4611686018427387904 is over")
        .await;
    error_then_close(&node, b"*1\r\n$-5\r\n", "invalid bulk length").await;
    error_then_close(&node, b"*1073741824\r\n", "multibulk length 1073741824 is over").await;
    error_then_close(&node, b"*2\r\n$3\r\nGET\r\n+x\r\n", "expected '$'").await;
    error_then_close(&node, b"*1\r\n$3\r\nGETxx", "not terminated by CRLF").await;
    error_then_close(&node, b"*abc\r\n", "invalid length").await;
    error_then_close(&node, b"SET \"unbalanced\r\n", "unbalanced quotes").await;
    // Lengths Redis 7.0 refuses too (checked against redis-server): a sign other than `-`, a
    // leading zero, `-0`.
    error_then_close(&node, b"*1\r\n$+4\r\nPING\r\n", "invalid length '+4'").await;
    error_then_close(&node, b"*01\r\n$4\r\nPING\r\n", "invalid length '01'").await;
    error_then_close(&node, b"*-0\r\n", "invalid length '-0'").await;
    // `*0` and `*-1` carry no command: skipped, and the connection goes on.
    let reply = raw_until(node.resp, b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", b"+PONG\r\n").await;
    assert_eq!(reply, b"+PONG\r\n");
    still_serves(&node).await;
}

#[tokio::test]
async fn oversized_keys_and_values_are_refused_and_the_connection_stays() {
    let node = start(&["--max-key-bytes", "16", "--max-value-bytes", "1000", "--max-bulk-bytes", "4096"]);
    let mut c = client(node.resp).await;
    let err = c.set::<_, _, ()>("k".repeat(17), "v").await.unwrap_err();
    assert!(err.to_string().contains("key is 17 bytes, the limit is 16"), "{err}");
    let err = c.set::<_, _, ()>("k", "v".repeat(1001)).await.unwrap_err();
    assert!(err.to_string().contains("value is 1001 bytes, the limit is 1000"), "{err}");
    let err = c.set::<_, _, ()>("", "v").await.unwrap_err();
    assert!(err.to_string().contains("key must not be empty"), "{err}");
    assert_eq!(c.get::<_, Option<String>>("k").await.unwrap(), None, "nothing was written");
    // Over the bulk limit the request itself is refused and the connection closed.
    let mut big = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\n".to_vec();
    big.extend(vec![b'x'; 5000]);
    big.extend(b"\r\n");
    error_then_close(&node, &big, "bulk length 5000 is over the limit of 4096").await;
    still_serves(&node).await;
}

#[tokio::test]
async fn random_bytes_never_take_the_node_down() {
    let node = start(&[]);
    // A fixed-seed xorshift: reproducible garbage without another dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let len = (next() % 512) as usize + 1;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            bytes[0] = b'*'; // half of them look like arrays, to reach deeper into the parser
        }
        let mut stream = TcpStream::connect(node.resp).await.unwrap();
        let _ = stream.write_all(&bytes).await;
        drop(stream);
    }
    still_serves(&node).await;
}

#[tokio::test]
async fn a_slow_drip_request_is_cut_off_and_others_are_served() {
    let node = start(&["--slow-request-timeout-ms", "300"]);
    let mut slow = TcpStream::connect(node.resp).await.unwrap();
    slow.write_all(b"*2\r\n$3\r\nGET\r\n$10\r\nab").await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in b"cdefghij".iter().cycle().take(50) {
        still_serves(&node).await;
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !closed {
        closed = closed_by_peer(&mut slow).await;
    }
    assert!(closed, "the slow client was not disconnected");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Found from outside: the slow-request clock ran from when the input was last empty, so a
/// client streaming a long pipeline at a steady pace (each read ending inside a request) was
/// cut off although every request arrived in time. It runs per request now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_of_requests_outlives_the_slow_request_timeout() {
    use tokio::io::AsyncReadExt;
    let node = start(&["--slow-request-timeout-ms", "500"]);
    let request = format!("SET streamed {}\r\n", "x".repeat(4000));
    let requests = 200;
    let stream: Vec<u8> = request.repeat(requests).into_bytes();
    let (mut reader, mut writer) = TcpStream::connect(node.resp).await.unwrap().into_split();
    let replies = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 5 * requests {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    // 1,500 bytes every 10 ms: 3 s in all, six times the timeout, no request slower than 30 ms.
    for piece in stream.chunks(1500) {
        writer.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = replies.await.unwrap();
    assert_eq!(
        got,
        b"+OK\r\n".repeat(requests),
        "{}",
        String::from_utf8_lossy(&got[got.len().saturating_sub(200)..])
    );
    still_serves(&node).await;
}

/// Found from outside: the parser keeps 32 bytes per argument of a request not yet whole, five
/// times what an empty argument takes on the wire, and the query-buffer limits did not count
/// them (40 clients sending a million empty arguments each held 1.6 GB, the tracked total
/// 250 MB).
#[tokio::test]
async fn the_parsers_state_counts_against_the_query_buffer_limit() {
    let node = start(&["--max-query-buffer-bytes", "1048576"]);
    let mut stream = TcpStream::connect(node.resp).await.unwrap();
    // 600 KB on the wire, under the limit; 100,000 arguments parsed hold more than the limit.
    let mut request = b"*1048576\r\n".to_vec();
    request.extend(b"$0\r\n\r\n".repeat(100_000));
    let _ = stream.write_all(&request).await;
    let said = read_some(&mut stream, 100).await;
    let said = String::from_utf8_lossy(&said);
    assert!(said.starts_with("-ERR Protocol error: query buffer limit reached"), "{said}");
    assert!(closed_by_peer(&mut stream).await);
    still_serves(&node).await;
}

#[tokio::test]
async fn idle_connections_close_when_asked() {
    let node = start(&["--idle-timeout-secs", "1"]);
    let mut idle = TcpStream::connect(node.resp).await.unwrap();
    assert!(closed_by_peer(&mut idle).await, "an idle client is closed after the idle timeout");
    still_serves(&node).await;
}

/// `connected_clients` and `rejected_connections` from INFO asked on `c`.
async fn client_counts(c: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO").query_async(c).await.unwrap();
    let field = |name: &str| -> u64 {
        let line = info.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in INFO"));
        line[name.len()..].trim().parse().unwrap()
    };
    (field("connected_clients:"), field("rejected_connections:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_meet_max_clients_and_others_are_unaffected() {
    const LIMIT: u64 = 300;
    const WAVE: u64 = 500;
    const CHUNK: u64 = 50;
    let limit = LIMIT.to_string();
    let node = start(&["--max-clients", &limit]);
    let mut steady = client(node.resp).await;
    let mut refused = 0;
    // 20 waves of 500 held at once: 10,000 connections, within a default 1,024 open-file limit.
    // Each wave connects in chunks of 50 and waits until the server has taken each chunk (as a
    // client or refused): connections made all at once overflow the listen queue, and the ones
    // retried after it are accepted out of order, so which of them are over the limit is
    // not the order they connected in.
    for _wave in 0..20 {
        let (_, rejected_before) = client_counts(&mut steady).await;
        let mut held = Vec::new();
        for chunk in 1..=WAVE / CHUNK {
            for _ in 0..CHUNK {
                match TcpStream::connect(node.resp).await {
                    Ok(s) => held.push(s),
                    Err(e) => panic!("connect failed: {e}"),
                }
            }
            wait_until(Duration::from_secs(10), "the server has taken the chunk", || {
                let mut steady = steady.clone();
                async move {
                    let (connected, rejected) = client_counts(&mut steady).await;
                    (connected - 1) + (rejected - rejected_before) == chunk * CHUNK
                }
            })
            .await;
        }
        let (connected, rejected) = client_counts(&mut steady).await;
        assert_eq!(connected, LIMIT, "the steady client and {} of the wave are served", LIMIT - 1);
        assert_eq!(rejected - rejected_before, WAVE - (LIMIT - 1), "the rest are refused");
        let _: () = steady.set("steady", "ok").await.unwrap();
        // The last chunk came after the limit was reached: each of them must be told so.
        for s in held.iter_mut().rev().take(CHUNK as usize) {
            let reply = read_some(s, 1).await;
            if reply.starts_with(b"-ERR max number of clients reached") {
                refused += 1;
            }
        }
        drop(held);
        wait_until(Duration::from_secs(10), "the wave's connections are released", || {
            let mut steady = steady.clone();
            async move { client_counts(&mut steady).await.0 == 1 }
        })
        .await;
    }
    assert_eq!(refused, 1000, "every sampled over-limit connection is refused with an error");
    assert!(rss_mib(node.child.id()) < 512, "RSS {} MiB", rss_mib(node.child.id()));
    let got: String = steady.get("steady").await.unwrap();
    assert_eq!(got, "ok");
}

/// The attack: many clients each sending most of a 16 MiB bulk, never the end, to grow the
/// node's memory. With the query buffers of all clients capped at 32 MiB, the largest are closed
/// with an error as the total passes the cap; memory stays bounded and others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_bulks_past_the_total_cap_evict_the_largest_buffers() {
    let node = start(&["--max-total-query-buffer-bytes", "33554432"]);
    let before = rss_mib(node.child.id());
    let mut senders = Vec::new();
    for i in 0..10u32 {
        let mut stream = TcpStream::connect(node.resp).await.unwrap();
        let header = format!("*3\r\n$3\r\nSET\r\n$2\r\nk{i}\r\n$16777216\r\n");
        stream.write_all(header.as_bytes()).await.unwrap();
        // 12 MiB of the 16: ten of these would hold 120 MiB.
        let chunk = vec![b'x'; 1024 * 1024];
        let mut sent = 0;
        while sent < 12 {
            match stream.write_all(&chunk).await {
                Ok(()) => sent += 1,
                Err(_) => break, // evicted already
            }
        }
        senders.push(stream);
    }
    let mut evicted = 0;
    for stream in &mut senders {
        let said = read_some(stream, 512).await;
        if String::from_utf8_lossy(&said).contains("client evicted") {
            evicted += 1;
        }
    }
    assert!(evicted >= 7, "only {evicted} of 10 clients were evicted (at most 2 fit under 32 MiB)");
    let metrics = http_get(node.admin, "/metrics").await.1;
    assert!(!metrics.contains("crema_resp_evicted_clients_total 0"), "{metrics}");
    let grown = rss_mib(node.child.id()).saturating_sub(before);
    assert!(grown < 90, "memory grew by {grown} MiB");
    still_serves(&node).await;
}

/// MULTI queues count with the query buffers (found from outside: 300 connections with full
/// queues took a node to 3.4 GB, counted nowhere): past the cap on all of them, the largest are
/// closed with an error, `CLIENT LIST` shows who holds what, and the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_queues_past_the_total_cap_evict_the_largest() {
    let node = start(&["--max-total-query-buffer-bytes", "33554432"]);
    let value = vec![b'x'; 1024 * 1024];
    let mut clients = Vec::new();
    for i in 0..10u32 {
        let mut stream = TcpStream::connect(node.resp).await.unwrap();
        let mut request = b"MULTI\r\n".to_vec();
        for j in 0..7 {
            let key = format!("q{i}:{j}");
            request.extend(
                format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n", key.len(), value.len()).as_bytes(),
            );
            request.extend(&value);
            request.extend(b"\r\n");
        }
        // 7 MiB queued each: four fit under 32 MiB.
        let _ = stream.write_all(&request).await;
        let answered = read_some(&mut stream, 5 + 7 * 9).await;
        clients.push((stream, answered));
    }
    let admin = &mut client(node.resp).await;
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(admin).await.unwrap();
    let queued: Vec<&str> = list.lines().filter(|l| l.contains(" multi=7 ")).collect();
    assert!((1..=4).contains(&queued.len()), "{list}");
    for line in &queued {
        let mem = line.split(' ').find_map(|f| f.strip_prefix("multi-mem=")).unwrap();
        assert!(mem.parse::<usize>().unwrap() > 7 << 20, "{line}");
        assert!(line.contains(" flags=x "), "{line}");
    }
    let (mut evicted, mut committed) = (0, 0);
    for (stream, answered) in &mut clients {
        let _ = stream.write_all(b"EXEC\r\n").await;
        let said = [answered.clone(), read_some(stream, 4 + 7 * 5).await].concat();
        let said = String::from_utf8_lossy(&said);
        if said.contains("client evicted") {
            evicted += 1;
        } else if said.ends_with(&"+OK\r\n".repeat(7)) {
            committed += 1;
        }
    }
    assert_eq!(
        (evicted + committed, committed),
        (10, queued.len()),
        "{evicted} evicted, {committed} committed"
    );
    still_serves(&node).await;
}

/// A command is one Raft entry, and an entry must fit in one peer frame: found from outside,
/// one MSET of two 8 MiB values (each within the value limit) sent to the leader was proposed,
/// never reached a follower, and every later write of its group timed out until the leader was
/// killed; sent to a follower, its forward frame made the leader drop the link, again and
/// again. It is refused now, with what to do, and the group goes on; a pipeline of many
/// writes and a large one is split so that each proposal fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_too_large_for_one_raft_entry_is_refused_and_the_group_goes_on() {
    let nodes = start_cluster(3, &[]);
    let leader = leader_of(&nodes).await;
    let big = vec![b'v'; 8 << 20];
    for i in [leader, (leader + 1) % 3] {
        let mut c = patient_client(nodes[i].resp).await;
        let err = redis::cmd("MSET")
            .arg("a")
            .arg(&big)
            .arg("b")
            .arg(&big)
            .query_async::<()>(&mut c)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("send its keys in several commands"), "node {}: {err}", i + 1);
        for (j, node) in nodes.iter().enumerate() {
            let mut c = patient_client(node.resp).await;
            let _: () = c.set(format!("after {i} via {j}"), "ok").await.unwrap();
        }
    }
    // Through a follower, pipelined: a megabyte of small writes, an 8 MiB one, one more.
    let follower = (leader + 2) % 3;
    let mut c = patient_client(nodes[follower].resp).await;
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.set(format!("small{i}"), vec![b's'; 10_000]).ignore();
    }
    pipe.set("large", &big).ignore().set("last", "1").ignore();
    let () = pipe.query_async(&mut c).await.unwrap();
    let mut c = patient_client(nodes[leader].resp).await;
    let large: Vec<u8> = c.get("large").await.unwrap();
    assert_eq!(large.len(), big.len());
    let last: String = c.get("last").await.unwrap();
    assert_eq!(last, "1");
    // A reply has its limit too: one 8 MiB value named 70 times would be 560 MiB to encode.
    let err = redis::cmd("MGET").arg(vec!["large"; 70]).query_async::<()>(&mut c).await.unwrap_err();
    assert!(err.to_string().contains("MGET reply of"), "{err}");
    let twice: Vec<Vec<u8>> = redis::cmd("MGET").arg(vec!["large"; 2]).query_async(&mut c).await.unwrap();
    assert_eq!(twice.len(), 2);
    assert_eq!(
        c.exists::<_, u64>(&(0..100).map(|i| format!("small{i}")).collect::<Vec<_>>()).await.unwrap(),
        100
    );
    // Their outputs too: three GETDELs of 8 MiB values pipelined through a follower would be
    // one entry whose reply does not fit in a frame back (found from outside: they applied and
    // answered an error, the values gone). They are proposed one after the other instead, and
    // each answers its value.
    for k in ["g1", "g2", "g3"] {
        let _: () = c.set(k, &big).await.unwrap();
    }
    // Through a follower (found again: leadership may have moved under the load).
    let follower = (leader_of(&nodes).await + 1) % 3;
    let mut f = TcpStream::connect(nodes[follower].resp).await.unwrap();
    f.write_all(b"GETDEL g1\r\nGETDEL g2\r\nGETDEL g3\r\n").await.unwrap();
    let replies = read_replies(&mut f, 3).await;
    let shown: Vec<String> =
        replies.iter().map(|r| String::from_utf8_lossy(&r[..r.len().min(200)]).into()).collect();
    assert!(replies.iter().all(|r| r.len() == big.len() + 12 && r.starts_with(b"$8388608\r\n")), "{shown:?}");
    assert_eq!(c.exists::<_, u64>(&["g1", "g2", "g3"]).await.unwrap(), 0);
    for node in &nodes {
        still_serves(node).await;
    }
}

/// The usual soft limit of 1,024 open files is spent by strangers' connections alone (found
/// from outside: 1,100 idle connections to the peer port made the RESP port fail to accept and
/// checkpoints fail): a node raises its soft limit to the hard one at start.
#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    use std::io::BufRead;
    let hard = std::process::Command::new("sh").args(["-c", "ulimit -Hn"]).output().unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_owned();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_crema"))
        .args(SERVE_ANY_PORTS)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("crema listening"), "{line}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    let (soft, limit_hard) = (fields[3], fields[4]);
    assert_eq!(soft, limit_hard, "{open_files}");
    if hard != "unlimited" {
        assert_eq!(soft, hard, "{open_files}");
    }
}

/// Found from outside: under an open-file limit of 128, 250 idle clients took the descriptors
/// RocksDB needed for its next log file, and the node refused every write until they left.
/// As Redis lowers `maxclients`, a node lets in only as many clients as its limit holds beside
/// its own needs (half of it, under a small limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_is_lowered_to_fit_the_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let node =
        start_wrapped(&["prlimit", "--nofile=256:256", "--"], &["--storage", "rocksdb", "--data-dir", data]);
    let mut c = client(node.resp).await;
    let max: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("maxclients").query_async(&mut c).await.unwrap();
    assert_eq!(max, vec!["maxclients".to_owned(), "128".to_owned()]);
    // Past the limit, clients are told so and closed, and the node keeps its descriptors.
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut stream = TcpStream::connect(node.resp).await.unwrap();
        stream.write_all(b"PING\r\n").await.unwrap();
        let reply = read_some(&mut stream, 1).await;
        if reply.starts_with(b"-ERR max number of clients reached") {
            refused += 1;
        } else {
            assert_eq!(reply, b"+PONG\r\n");
            idle.push(stream);
        }
    }
    assert_eq!(idle.len(), 127, "128 clients in all, this one's first connection included");
    assert_eq!(refused, 300 - 127);
    let value = vec![b'v'; 64 << 10];
    for i in 0..64 {
        let _: () = c.set(format!("k{i}"), &value).await.unwrap();
    }
    let back: Vec<u8> = c.get("k63").await.unwrap();
    assert_eq!(back, value);
}
