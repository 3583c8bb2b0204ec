//! `crema serve --shards 4`: three processes, every shard a Raft group on each, spoken to with
//! the `redis` crate. Keys route by hash slot; multi-key reads and deletes gather across
//! shards; MSET and transactions across shards answer Redis Cluster's `CROSSSLOT`.

mod common;

use common::cmd::q;
use common::shards::{all_shards_led, cluster_shards, slot_map};
use common::*;
use redis::AsyncCommands;

const CROSSSLOT: &str = "CROSSSLOT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_cluster_serves_redis_clients() {
    let nodes = start_cluster(3, &["--shards", "4"]);
    all_shards_led(nodes[0].resp).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(client(n.resp).await);
    }
    for i in 0..60usize {
        let key = format!("key:{i}");
        let _: () = clients[i % 3].set(&key, i).await.unwrap();
        let got: Option<usize> = clients[(i + 1) % 3].get(&key).await.unwrap();
        assert_eq!(got, Some(i), "{key} read through node {}", (i + 1) % 3);
    }
    for c in &mut clients {
        let size: i64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
        assert_eq!(size, 60);
        let keys: Vec<String> = c.keys("key:*").await.unwrap();
        assert_eq!(keys.len(), 60);
    }
    // CLUSTER COUNTKEYSINSLOT and GETKEYSINSLOT: the same answer from every node (sorted, so a
    // count takes the same keys), and Redis's errors.
    let tagged = ["{slot}:c", "{slot}:a", "{slot}:b"];
    for key in tagged {
        let _: () = clients[0].set(key, 1).await.unwrap();
    }
    let slot = crema::key_slot(b"{slot}").to_string();
    for c in &mut clients {
        assert_eq!(q::<i64>(c, &["CLUSTER", "COUNTKEYSINSLOT", &slot]).await.unwrap(), 3);
        let two: Vec<String> = q(c, &["CLUSTER", "GETKEYSINSLOT", &slot, "2"]).await.unwrap();
        assert_eq!(two, ["{slot}:a", "{slot}:b"]);
    }
    let errors = raw_until(
        nodes[1].resp,
        b"CLUSTER COUNTKEYSINSLOT 16384\r\nCLUSTER COUNTKEYSINSLOT -1\r\nCLUSTER COUNTKEYSINSLOT abc\r\n\
          CLUSTER GETKEYSINSLOT 0 -1\r\nCLUSTER GETKEYSINSLOT 16384 1\r\nCLUSTER GETKEYSINSLOT x 1\r\n",
        b"keys\r\n-ERR value is not an integer or out of range\r\n",
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&errors),
        "-ERR Invalid slot\r\n-ERR Invalid slot\r\n-ERR value is not an integer or out of range\r\n\
         -ERR Invalid slot or number of keys\r\n-ERR Invalid slot or number of keys\r\n\
         -ERR value is not an integer or out of range\r\n"
    );
    let c = &mut clients[1];
    let _: i64 = c.del(&tagged).await.unwrap();
    // Reads and deletes of many keys gather across shards.
    let got: Vec<Option<usize>> = c.mget(&["key:1", "key:2", "key:3", "nope"]).await.unwrap();
    assert_eq!(got, vec![Some(1), Some(2), Some(3), None]);
    let exists: i64 =
        redis::cmd("EXISTS").arg(&["key:1", "key:2", "key:3", "nope"]).query_async(c).await.unwrap();
    assert_eq!(exists, 3);
    let removed: i64 = c.del(&["key:1", "key:2", "key:3", "nope"]).await.unwrap();
    assert_eq!(removed, 3);

    // MSET across shards is refused and writes nothing; a hash tag puts the keys in one shard.
    let slot = |key: &str| crema::key_slot(key.as_bytes()) as u32 * 4 / 16384;
    assert_ne!(slot("a"), slot("b"), "a and b are in different shards");
    let refused: redis::RedisResult<()> = c.mset(&[("a", "1"), ("b", "2")]).await;
    let err = refused.unwrap_err();
    assert_eq!(err.code(), Some(CROSSSLOT), "{err}");
    let a: Option<String> = c.get("a").await.unwrap();
    assert_eq!(a, None);
    let _: () = c.mset(&[("{user:1}:name", "ann"), ("{user:1}:mail", "ann@example.com")]).await.unwrap();

    // A transaction in one shard commits; across shards it is refused and writes nothing.
    let (ok,): (i64,) =
        redis::pipe().atomic().set("{t}:x", 1).ignore().incr("{t}:y", 5).query_async(c).await.unwrap();
    assert_eq!(ok, 5);
    // Redis Cluster's way: the command whose key is elsewhere is refused when queued, and EXEC
    // then discards the transaction.
    let queued =
        raw_until(nodes[1].resp, b"MULTI\r\nSET a 1\r\nINCRBY b 5\r\nEXEC\r\n", b"errors.\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&queued),
        "+OK\r\n+QUEUED\r\n-CROSSSLOT Keys in request don't hash to the same slot\r\n\
         -EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    let across: redis::RedisResult<(i64,)> =
        redis::pipe().atomic().set("a", 1).ignore().incr("b", 5).query_async(c).await;
    assert!(across.is_err(), "the redis crate sees the refusal");
    let b: Option<String> = c.get("b").await.unwrap();
    assert_eq!(b, None);
    // FLUSHALL empties every shard, which no transaction can do atomically: refused when
    // queued, and nothing of the transaction runs.
    let flush =
        raw_until(nodes[1].resp, b"MULTI\r\nSET {t}:x 2\r\nFLUSHALL\r\nEXEC\r\n", b"errors.\r\n").await;
    let flush = String::from_utf8_lossy(&flush);
    assert!(
        flush.starts_with("+OK\r\n+QUEUED\r\n-ERR FLUSHALL inside a transaction is not allowed"),
        "{flush}"
    );
    assert!(flush.ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n"), "{flush}");
    let x: Option<String> = c.get("{t}:x").await.unwrap();
    assert_eq!(x.as_deref(), Some("1"));
    // WATCH keeps a transaction in one shard, as Redis Cluster's WATCH keeps it in one slot:
    // keys of two shards in one WATCH are refused at once (separate WATCHes are taken, as Redis
    // takes them, and EXEC refuses), and a queued command outside the watched keys' shard is
    // refused when queued.
    let watch = raw_until(
        nodes[1].resp,
        b"WATCH a b\r\nWATCH a\r\nWATCH b\r\nMULTI\r\nSET a 1\r\nEXEC\r\n",
        b"QUEUED\r\n-CROSSSLOT Keys in request don't hash to the same slot\r\n",
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&watch),
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n\
         -CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
    let watched = raw_until(nodes[1].resp, b"WATCH a\r\nMULTI\r\nSET b 1\r\nEXEC\r\n", b"errors.\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&watched),
        "+OK\r\n+OK\r\n-CROSSSLOT Keys in request don't hash to the same slot\r\n\
         -EXECABORT Transaction discarded because of previous errors.\r\n"
    );

    // WAIT counts, over every shard, the replicas known to hold what this node applied: one
    // other replica at least (a majority of three), never more than the two others.
    for n in &nodes {
        let mut c = client(n.resp).await;
        let _: () = c.set("waited", "1").await.unwrap();
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(2000).query_async(&mut c).await.unwrap();
        assert!((1..=2).contains(&acked), "WAIT answered {acked}");
    }

    // INFO lists every shard with a leader.
    let info: String = redis::cmd("INFO").arg("shards").query_async(c).await.unwrap();
    for shard in 0..4 {
        assert!(info.contains(&format!("shard{shard}:state=active,leader=")), "{info}");
    }

    // Every node is ready: every shard has a leader and is applied.
    for n in &nodes {
        let (status, body) = http_get(n.admin, "/ready").await;
        assert_eq!(status, 200, "{body}");
    }

    // FLUSHALL reaches every shard on every node.
    let _: () = redis::cmd("FLUSHALL").query_async(c).await.unwrap();
    for c in &mut clients {
        let size: i64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
        assert_eq!(size, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_cluster_and_redis_cli_dash_c_across_a_node_death() {
    let mut nodes = start_cluster(3, &["--shards", "4"]);
    all_shards_led(nodes[0].resp).await;
    same_primaries_everywhere(&nodes).await;
    // redis-cli -c follows -MOVED by itself.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-c", "-p", &nodes[1].resp.port().to_string()])
            .args(args)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Ok(out) = cli(&["SET", "cli:key", "from-cli"]) {
        assert_eq!(out, "OK");
        assert_eq!(cli(&["GET", "cli:key"]).unwrap(), "from-cli");
        // redis-cli's cluster manager finds cluster nodes (INFO's cluster_enabled) that agree on
        // one slot map covering every slot.
        let check = std::process::Command::new("redis-cli")
            .args(["--cluster", "check", &nodes[2].resp.to_string()])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success(), "{report}");
        for ok in ["All nodes agree about slots configuration", "All 16384 slots covered"] {
            assert!(report.contains(ok), "{ok}: {report}");
        }
    } else {
        eprintln!("SKIPPED redis-cli -c: redis-cli is not installed (.ci/run installs it)");
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let python = std::process::Command::new("python3").args(["-c", "import redis"]).output();
    if !python.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: python3 with the `redis` package is not installed (.ci/run installs it)");
        return;
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.resp.to_string()).collect();
    let mut script = std::process::Command::new("python3")
        .arg("py_cluster.py")
        .args(&addrs)
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(script.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::{BufRead, Write};
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "kill now", "the script's first phase failed");
    // SIGKILL the node leading the most shards.
    let mut c = client(nodes[0].resp).await;
    let slots = slot_map(&mut c).await;
    let led = |i: usize| -> i64 {
        slots.iter().filter(|s| s.2 .1 == i64::from(nodes[i].resp.port())).map(|s| s.1 + 1 - s.0).sum()
    };
    let victim = (0..3).max_by_key(|i| led(*i)).unwrap();
    let _ = nodes[victim].child.kill();
    let _ = nodes[victim].child.wait();
    script.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let output = script.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(
        output.status.success(),
        "py_cluster.py failed: {rest}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", rest.trim());
    let _ = &mut nodes;
}

/// The `redis` crate's own cluster client (`ClusterClient`, what `crema-bench resp --cluster`
/// runs): it reads `CLUSTER SLOTS`, sends each key to its slot's primary, and every write it
/// had acknowledged is there after the node leading the most shards is killed mid-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_crates_cluster_client_across_a_node_death() {
    let mut nodes = start_cluster(3, &["--shards", "4"]);
    all_shards_led(nodes[0].resp).await;
    // Every node names the same primaries before the client reads a slot map (a node learns
    // of a new leader after the leader does), and the counts are taken before that read: a
    // leader that moves after it must count as a move (found in CI: 50 writes, one shard's,
    // were forwarded with no leader change counted after the client connected).
    same_primaries_everywhere(&nodes).await;
    let forwarded = metric_sum(&nodes, "crema_forwarded_writes_total").await;
    let changes = metric_sum(&nodes, "crema_raft_leader_changes_total").await;
    let seeds: Vec<String> = nodes.iter().map(|n| format!("redis://{}/", n.resp)).collect();
    let cluster = redis::cluster::ClusterClient::builder(seeds)
        .response_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let mut cc = cluster.get_async_connection().await.unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("rs:{i}")).collect();
    for (i, key) in keys.iter().enumerate().take(200) {
        let _: () = cc.set(key, i).await.unwrap();
    }
    for (i, key) in keys.iter().enumerate().take(200) {
        let value: usize = cc.get(key).await.unwrap();
        assert_eq!(value, i, "{key}");
    }
    // The keys written cover every shard's slots.
    let slots = slot_map(&mut client(nodes[0].resp).await).await;
    for (start, end, _) in &slots {
        let covered =
            keys[..200].iter().any(|k| (*start..=*end).contains(&i64::from(crema::key_slot(k.as_bytes()))));
        assert!(covered, "no key in slots {start}-{end}");
    }
    // Keys with one hash tag go to one shard: atomic commands over them are served.
    let _: () = cc.mset(&[("{user:7}:name", "ann"), ("{user:7}:mail", "ann@example.com")]).await.unwrap();
    let both: Vec<String> = cc.mget(&["{user:7}:name", "{user:7}:mail"]).await.unwrap();
    assert_eq!(both, ["ann", "ann@example.com"]);
    // Every write went straight to its shard's leader: none was forwarded (a node that does
    // not lead a key's shard forwards a write sent there by a client not in cluster mode,
    // which the crate's data connections are not), unless a leader moved meanwhile.
    if metric_sum(&nodes, "crema_raft_leader_changes_total").await == changes {
        let now = metric_sum(&nodes, "crema_forwarded_writes_total").await;
        assert_eq!(
            now, forwarded,
            "writes forwarded: the client sent them to a node not leading their shard"
        );
    } else {
        eprintln!("a leader moved during the writes: their routing is not checked");
    }

    let led = |i: usize| -> i64 {
        slots.iter().filter(|s| s.2 .1 == i64::from(nodes[i].resp.port())).map(|s| s.1 + 1 - s.0).sum()
    };
    let victim = (0..3).max_by_key(|i| led(*i)).unwrap();
    let _ = nodes[victim].child.kill();
    let _ = nodes[victim].child.wait();
    // Each later write is sent until acknowledged, as an application would across a failover:
    // the client finds the new leaders from the survivors' slot maps (or is forwarded).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    for (i, key) in keys.iter().enumerate().skip(200) {
        loop {
            match cc.set::<_, _, ()>(key, i).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{key} still failing: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
    let mut survivor = client(nodes[(victim + 1) % 3].resp).await;
    for (i, key) in keys.iter().enumerate() {
        let value: Option<usize> = survivor.get(key).await.unwrap();
        assert_eq!(value, Some(i), "{key}: an acknowledged write is missing");
    }
}

/// Nodes whose RESP and peer ports both listen on every interface, configured with each
/// other's peer addresses only: each names the others by the host it reaches them at, and
/// itself by the address the client reached it at, so `CLUSTER SLOTS` and `CLUSTER NODES` give
/// a client addresses it can connect to (no `0.0.0.0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_every_interface_are_named_by_reachable_addresses() {
    let ports = free_addrs(6);
    let (raft, resp): (Vec<u16>, Vec<u16>) =
        (ports[..3].iter().map(|a| a.port()).collect(), ports[3..].iter().map(|a| a.port()).collect());
    let mut nodes = Vec::new();
    for i in 0..3 {
        let id = (i + 1).to_string();
        let own_raft = format!("0.0.0.0:{}", raft[i]);
        let own_resp = format!("0.0.0.0:{}", resp[i]);
        let peers: Vec<String> =
            (0..3).filter(|j| *j != i).map(|j| format!("{}=127.0.0.1:{}", j + 1, raft[j])).collect();
        let mut args =
            vec!["--node-id", &id, "--raft-addr", &own_raft, "--resp-addr", &own_resp, "--shards", "4"];
        args.extend(["--protected-mode", "no"]);
        for p in &peers {
            args.extend(["--peer", p.as_str()]);
        }
        args.extend(FAST);
        nodes.push(start(&args));
    }
    for node in &mut nodes {
        node.wait_ready(std::time::Duration::from_secs(30)).unwrap();
    }
    let local = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 1], resp[i]));
    all_shards_led(local(0)).await;
    let own: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", resp[i])).collect();
    let mut wanted = own.clone();
    wanted.sort();
    for (i, own) in own.iter().enumerate() {
        let mut c = client(local(i)).await;
        // Every member of every shard is named, by an address a client here can reach, and every
        // primary in the slot map too.
        wait_until(std::time::Duration::from_secs(10), "every member named in CLUSTER SHARDS", || {
            let wanted = wanted.clone();
            async move {
                let mut c = client(local(i)).await;
                let shards = cluster_shards(&mut c).await;
                let mut named: Vec<String> =
                    shards.iter().flat_map(|s| s.2.iter().map(|n| n.addr.clone())).collect();
                named.sort();
                named.dedup();
                let primaries = slot_map(&mut c).await;
                let reachable = primaries
                    .iter()
                    .all(|(_, _, (host, port, _))| wanted.contains(&format!("{host}:{port}")));
                shards.len() == 4 && shards.iter().all(|s| s.2.len() == 3) && named == wanted && reachable
            }
        })
        .await;
        let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.unwrap();
        assert!(!text.contains("0.0.0.0"), "{text}");
        assert!(text.lines().any(|l| l.contains("myself") && l.contains(own.as_str())), "{text}");
    }
}

/// Waits until every node's `CLUSTER SLOTS` names the same primaries: a node learns of a new
/// leader after the leader does, and clients (and `redis-cli --cluster check`) compare them.
async fn same_primaries_everywhere(nodes: &[Node]) {
    wait_until(std::time::Duration::from_secs(10), "every node names the same primaries", || async {
        let mut maps = Vec::new();
        for node in nodes {
            maps.push(slot_map(&mut client(node.resp).await).await);
        }
        maps.windows(2).all(|pair| pair[0] == pair[1])
    })
    .await;
}
