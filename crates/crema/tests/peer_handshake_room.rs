//! The peer port's room for handshakes under way (`transport::handshake`): a newcomer past it
//! closes the oldest, so connections that say nothing cannot keep a member from linking. In a
//! test binary of its own: it lowers the process's open-file limit, which sizes the room.

mod common;

use std::time::Duration;

use common::wire::{FakePeer, Position};
use common::*;
use crema::DistributedCache;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Found in review: past the room, newcomers were refused, so connections that said nothing,
/// each renewed before its handshake timeout, kept out every member whose link broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_say_nothing_do_not_keep_a_member_out() {
    init_tracing();
    // The room is an eighth of the open-file limit below 8,192 descriptors: 64 here.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(hard >= 512, "the test needs a hard open-file limit of 512 at least, not {hard}");
    setrlimit(Resource::RLIMIT_NOFILE, 512, hard).unwrap();
    let nodes = cluster(3).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    wait_leader(&refs, Duration::from_secs(5)).await;
    let target = nodes[0].local_addr();
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(target).await.unwrap());
    }
    // Well inside the 5 s handshake timeout of every silent one: a member still gets in.
    let started = std::time::Instant::now();
    let member = FakePeer::connect(target, nodes[1].node_id(), Position::default()).await;
    assert_eq!(member.id, nodes[1].node_id());
    assert!(started.elapsed() < Duration::from_secs(1), "the member waited {:?}", started.elapsed());
    // The oldest silent ones were closed to make room, long before their timeout.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), silent[0].read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the oldest is closed: {closed:?}");
    for n in &nodes {
        n.shutdown().await;
    }
}
