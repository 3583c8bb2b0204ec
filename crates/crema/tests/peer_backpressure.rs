//! A peer that asks and never reads (no cluster secret: a process may claim a member's id).
//! Found from outside: 200 reads of 30 large keys each, 42 KB sent, made the answering node
//! queue 2.9 GB of answers for it, and the node's writer, stuck in a write the peer never
//! took, never took the real member's newer connection: the two nodes could not talk, and once
//! the third died the group could not elect. The queue is bounded in bytes now, and a write
//! that takes longer than its deadline gives the connection up.

mod common;

use std::time::Duration;

use common::wire::{frame, FakePeer, Position, VERSION};
use common::*;
use crema::DistributedCache;

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `Envelope::Read { shard: 0, request_id, linearizable: false, read: Entries { keys } }`, by
/// hand (postcard: the variant's index, then its fields).
fn read_entries(request_id: u64, keys: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = vec![VERSION];
    varint(9, &mut payload); // Envelope::Read
    varint(0, &mut payload); // shard
    varint(request_id, &mut payload);
    payload.push(0); // linearizable: false
    varint(0, &mut payload); // RemoteRead::Entries
    varint(keys.len() as u64, &mut payload);
    for key in keys {
        varint(key.len() as u64, &mut payload);
        payload.extend_from_slice(key);
    }
    frame(&payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_gets_a_bounded_queue_and_loses_its_connection() {
    init_tracing();
    let mut nodes: Vec<Option<DistributedCache>> = cluster(3).await.into_iter().map(Some).collect();
    let refs: Vec<&DistributedCache> = nodes.iter().flatten().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    let keys: Vec<Vec<u8>> = (0..30).map(|i| format!("big{i}").into_bytes()).collect();
    for key in &keys {
        refs[leader].put(key.clone(), vec![b'v'; 500_000]).await.unwrap();
    }
    let node1 = refs[0];
    wait_until(Duration::from_secs(5), "node 1 applied the keys", || async {
        node1.storage().get(b"big29").is_some()
    })
    .await;
    let before = rss_mib();

    // Claims node 3 toward node 1, asks for 15 MB 200 times, and never reads an answer.
    let mut fake = FakePeer::connect(node1.local_addr(), 3, Position::default()).await;
    for i in 0..200 {
        if !fake.send_raw(&read_entries(i, &keys)).await {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_mib().saturating_sub(before);
    assert!(grown < 1024, "node 1 queued {grown} MiB of answers for a peer that reads nothing");

    // Node 2 goes: nodes 1 and 3 must talk again to elect and take writes.
    nodes[1].take().unwrap().shutdown().await;
    let (one, three) = (nodes[0].as_ref().unwrap(), nodes[2].as_ref().unwrap());
    wait_until(Duration::from_secs(40), "nodes 1 and 3 elect and take a write", || async {
        one.put("after", "1").await.is_ok()
    })
    .await;
    assert!(three.consistent_get(b"after").await.unwrap().is_some());
    drop(fake);
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
}
