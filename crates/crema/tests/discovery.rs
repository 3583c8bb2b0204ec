//! Cluster discovery on real nodes: SWIM gossip (foca) over UDP on 127.0.0.1, Raft over TCP.
//! Nodes that know one seed address find each other; the peer-management policy adds and
//! removes voters exactly when it says so; gossip with a cluster secret keeps strangers out.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{bind, fast_raft, wait_until};
use crema::{
    CacheConfig, ClusterSecret, DistributedCache, MemberlistConfig, MemberlistDiscovery, NodeHealth,
    PeerManagementConfig,
};

const ALL: PeerManagementConfig = PeerManagementConfig {
    auto_add_peers: true,
    auto_remove_peers: true,
    auto_add_voters: true,
    auto_remove_voters: true,
};
const LINKS: PeerManagementConfig = PeerManagementConfig {
    auto_add_peers: true,
    auto_remove_peers: false,
    auto_add_voters: false,
    auto_remove_voters: false,
};

/// Starts node `id` with gossip on an ephemeral UDP port, joining through `seeds`; `join`: it
/// waits to be added by the cluster instead of starting one.
async fn node(
    id: u64,
    join: bool,
    seeds: Vec<SocketAddr>,
    policy: PeerManagementConfig,
    secret: Option<&str>,
) -> DistributedCache {
    let (listener, addr) = bind(1).pop().unwrap();
    let gossip = MemberlistConfig {
        enabled: true,
        bind_addr: Some("127.0.0.1:0".parse().unwrap()),
        advertise_addr: None,
        seed_addrs: seeds,
        node_name: Some(format!("node-{id}")),
        peer_management: policy,
    };
    let mut config = CacheConfig::new(id, addr)
        .with_raft_config(fast_raft())
        .with_join(join)
        .with_cluster_discovery(MemberlistDiscovery::new(id, addr, &gossip, &[]));
    if let Some(secret) = secret {
        config.cluster_secret = Some(ClusterSecret::new(secret.as_bytes().to_vec()).unwrap());
    }
    DistributedCache::new_with_listener(config, listener).await.expect("start node")
}

fn gossip_addr(node: &DistributedCache) -> SocketAddr {
    let me = node.discovered_nodes().into_iter().find(|n| n.node_id == node.node_id()).unwrap();
    me.gossip_addr.expect("gossip is bound")
}

fn alive(node: &DistributedCache) -> Vec<u64> {
    let nodes = node.discovered_nodes();
    nodes.iter().filter(|n| n.health == NodeHealth::Alive).map(|n| n.node_id).collect()
}

async fn voters(node: &DistributedCache) -> Vec<u64> {
    let mut voters = node.cluster_status().await.unwrap().group.voters;
    voters.sort_unstable();
    voters
}

#[tokio::test]
async fn nodes_that_know_one_seed_find_each_other_and_the_policy_manages_voters() {
    let first = node(1, false, Vec::new(), ALL, None).await;
    first.wait_for_leader(Duration::from_secs(10)).await.expect("the first node leads");
    let seed = gossip_addr(&first);
    let second = node(2, true, vec![seed], LINKS, None).await;
    let third = node(3, true, vec![seed], LINKS, None).await;
    assert_eq!(first.discovery_kind(), Some("memberlist"));

    // Each knows only the first node's address, and all find all.
    let nodes = [&first, &second, &third];
    wait_until(Duration::from_secs(20), "every node sees the three alive", || async {
        nodes.iter().all(|n| alive(n) == vec![1, 2, 3])
    })
    .await;
    // The first node's policy adds the others: learners, then voters once caught up.
    wait_until(Duration::from_secs(30), "nodes 2 and 3 become voters", || async {
        voters(&first).await == vec![1, 2, 3]
    })
    .await;
    first.put("k", "v").await.unwrap();
    assert_eq!(third.consistent_get(b"k").await.unwrap(), Some(Bytes::from("v")));

    // A node that stops is declared down, and the policy removes it from the voters.
    third.shutdown().await;
    wait_until(Duration::from_secs(20), "node 3 declared down", || async {
        first.discovered_nodes().iter().any(|n| n.node_id == 3 && n.health == NodeHealth::Down)
    })
    .await;
    wait_until(Duration::from_secs(20), "node 3 removed from the voters", || async {
        voters(&first).await == vec![1, 2]
    })
    .await;
    second.put("after", "1").await.unwrap();
    assert_eq!(first.consistent_get(b"after").await.unwrap(), Some(Bytes::from("1")));
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn without_voter_policies_discovery_only_reports() {
    let first = node(1, false, Vec::new(), LINKS, None).await;
    first.wait_for_leader(Duration::from_secs(10)).await.expect("the first node leads");
    let second = node(2, true, vec![gossip_addr(&first)], LINKS, None).await;
    wait_until(Duration::from_secs(20), "both see each other", || async {
        alive(&first) == vec![1, 2] && alive(&second) == vec![1, 2]
    })
    .await;
    // The policy reconciles every second: three passes change nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(voters(&first).await, vec![1]);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn gossip_with_a_cluster_secret_keeps_strangers_out() {
    let secret = "a-cluster-secret-of-32-characters";
    let first = node(1, false, Vec::new(), LINKS, Some(secret)).await;
    let seed = gossip_addr(&first);
    let second = node(2, true, vec![seed], LINKS, Some(secret)).await;
    let stranger = node(3, true, vec![seed], LINKS, Some("another-secret-of-32-characters!!")).await;
    wait_until(Duration::from_secs(20), "the two with the secret see each other", || async {
        alive(&first) == vec![1, 2] && alive(&second) == vec![1, 2]
    })
    .await;
    // The stranger announces itself every two seconds; give it a few tries.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(alive(&first), vec![1, 2], "the stranger is not a member");
    assert_eq!(alive(&stranger), vec![3], "the stranger learned nothing");
    for n in [first, second, stranger] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn the_link_policies_add_and_remove_transport_peers_and_nothing_else() {
    let links = PeerManagementConfig { auto_add_peers: true, auto_remove_peers: true, ..Default::default() };
    let first = node(1, false, Vec::new(), links, None).await;
    first.wait_for_leader(Duration::from_secs(10)).await.expect("the first node leads");
    // Node 2 waits to be added, and its policy allows nothing.
    let second = node(2, true, vec![gossip_addr(&first)], PeerManagementConfig::default(), None).await;
    wait_until(Duration::from_secs(20), "both see each other", || async {
        alive(&first) == vec![1, 2] && alive(&second) == vec![1, 2]
    })
    .await;
    let second_addr = second.discovered_nodes().into_iter().find(|n| n.node_id == 2).unwrap().raft_addr;
    wait_until(Duration::from_secs(10), "node 1 links to node 2", || async {
        first.peer_addr(2) == Some(second_addr)
    })
    .await;
    assert_eq!(second.peer_addr(1), None, "without auto_add_peers node 2 links to nobody");
    assert_eq!(voters(&first).await, vec![1], "links are not membership");

    // Declared down, a node that is no member loses its link.
    second.shutdown().await;
    wait_until(Duration::from_secs(20), "node 2 declared down and unlinked", || async {
        first.discovered_nodes().iter().any(|n| n.node_id == 2 && n.health == NodeHealth::Down)
            && first.peer_addr(2).is_none()
    })
    .await;
    first.shutdown().await;
}

/// A node that stops tells the others (a SWIM leave): they have it down at once, without the
/// seconds of probes and suspicion a killed node takes, and it stays down. foca answers the
/// leave with a "defunct" notice, which once brought the stopping node back under a renewed
/// identity: the others saw it alive again and kept its replicas for those seconds.
#[tokio::test]
async fn a_node_that_stops_is_down_at_once_and_stays_down() {
    let first = node(1, false, Vec::new(), LINKS, None).await;
    let seed = gossip_addr(&first);
    let mut nodes = vec![first];
    // More members than a leave is sent to directly (three): the others learn it by gossip.
    for id in 2..=6 {
        nodes.push(node(id, true, vec![seed], LINKS, None).await);
    }
    wait_until(Duration::from_secs(30), "every node sees the six alive", || async {
        nodes.iter().all(|n| alive(n) == vec![1, 2, 3, 4, 5, 6])
    })
    .await;
    let last = nodes.pop().unwrap();
    last.shutdown().await;
    let down = |n: &DistributedCache| {
        n.discovered_nodes().iter().any(|d| d.node_id == 6 && d.health == NodeHealth::Down)
    };
    // Probing alone needs a probe period, an indirect probe and the suspicion timeout (over
    // four seconds with foca's LAN settings).
    wait_until(Duration::from_secs(3), "node 6 down on every other", || async { nodes.iter().all(&down) })
        .await;
    // Watched for longer than a rejoined identity takes to reach every member.
    let watch = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < watch {
        for n in &nodes {
            assert!(down(n), "node {} sees node 6 again: {:?}", n.node_id(), n.discovered_nodes());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_static_list_is_health_checked_by_the_nodes_pings() {
    let nodes = common::cluster_with(3, |c| {
        let list = crema::StaticClusterDiscovery::new(c.node_id, c.raft_addr, c.seed_nodes.clone())
            .with_down_after(Duration::from_secs(1));
        c.with_cluster_discovery(list)
    })
    .await;
    assert_eq!(nodes[0].discovery_kind(), Some("static"));
    wait_until(Duration::from_secs(20), "every node hears the two others", || async {
        nodes.iter().all(|n| alive(n) == vec![1, 2, 3])
    })
    .await;
    nodes[2].shutdown().await;
    wait_until(Duration::from_secs(10), "node 3 declared down by the two others", || async {
        nodes[..2]
            .iter()
            .all(|n| n.discovered_nodes().iter().any(|d| d.node_id == 3 && d.health == NodeHealth::Down))
    })
    .await;
    for n in &nodes[..2] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn garbage_on_the_gossip_port_changes_nothing() {
    use rand::{Rng, SeedableRng};
    for secret in [None, Some("a-cluster-secret-of-32-characters")] {
        let first = node(1, false, Vec::new(), LINKS, secret).await;
        let seed = gossip_addr(&first);
        let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..3000usize {
            let len = match i % 100 {
                0 => 0,
                1 => 65_000,
                _ => rng.gen_range(1..1500),
            };
            let mut packet: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if i % 3 == 0 && len > 4 {
                // Start like a postcard-encoded identity: a plausible socket address tag.
                packet[0] = 0;
                packet[1] = 127;
            }
            let _ = attacker.send_to(&packet, seed).await;
        }
        // The node still gossips: a newcomer finds it, and it still serves.
        let second = node(2, true, vec![seed], LINKS, secret).await;
        wait_until(Duration::from_secs(20), "the newcomer and the node see each other", || async {
            alive(&first) == vec![1, 2] && alive(&second) == vec![1, 2]
        })
        .await;
        first.put("still", "here").await.unwrap();
        assert!(first.end().is_none(), "the node is running");
        first.shutdown().await;
        second.shutdown().await;
    }
}

/// A discovery that announces `count` strangers (ids from 1,000, all at a port nobody listens
/// on), then declares the first of them down: what open gossip lets anyone do.
#[derive(Debug)]
struct Flood {
    me: crema::DiscoveredNode,
    count: u64,
}

impl crema::ClusterDiscovery for Flood {
    fn kind(&self) -> &'static str {
        "flood"
    }

    fn start(
        &self,
        ctx: crema::DiscoveryContext,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, crema::DiscoveryError> {
        for id in 1_000..1_000 + self.count {
            let stranger = crema::DiscoveredNode {
                node_id: id,
                raft_addr: "127.0.0.1:9".parse().unwrap(),
                gossip_addr: None,
                health: NodeHealth::Alive,
            };
            ctx.emit(crema::DiscoveryEvent::NodeUp(stranger));
        }
        // Handled after every announcement (one queue, in order).
        ctx.emit(crema::DiscoveryEvent::NodeDown(1_000));
        Ok(None)
    }

    fn nodes(&self) -> Vec<crema::DiscoveredNode> {
        vec![self.me.clone()]
    }

    fn peer_management(&self) -> PeerManagementConfig {
        PeerManagementConfig { auto_add_peers: true, auto_remove_peers: true, ..Default::default() }
    }
}

/// Found from outside: without a cluster secret, every node gossip announced got a link (a
/// socket, a queue, a task that dials), 20,000 of them for 20,000 announcements. A node links
/// 1,024 discovered nodes at most, and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_strangers_get_a_bounded_number_of_links() {
    let (listener, addr) = bind(1).pop().unwrap();
    let me =
        crema::DiscoveredNode { node_id: 1, raft_addr: addr, gossip_addr: None, health: NodeHealth::Alive };
    let config = CacheConfig::new(1, addr)
        .with_raft_config(fast_raft())
        .with_cluster_discovery(Flood { me, count: 3_000 });
    let node = DistributedCache::new_with_listener(config, listener).await.expect("start node");
    node.wait_for_leader(Duration::from_secs(10)).await.expect("the node leads itself");
    wait_until(Duration::from_secs(20), "every announcement handled", || async {
        node.peer_addr(1_000).is_none() && node.peer_addr(1_001).is_some()
    })
    .await;
    let linked = (1_000..4_000u64).filter(|id| node.peer_addr(*id).is_some()).count();
    // 1,024 links, one of them dropped when its node was declared down.
    assert_eq!(linked, 1_023, "links kept for announced nodes");
    assert!(node.peer_addr(3_999).is_none(), "the last announced is not linked");
    node.put("still", "serving").await.unwrap();
    assert_eq!(node.consistent_get(b"still").await.unwrap().as_deref(), Some(&b"serving"[..]));
    node.shutdown().await;
}

/// Found from outside: the first node of a gossip cluster (no peer, no seed: it founded the
/// cluster), started again with its first configuration and memory storage, founded a second
/// cluster beside the running one; its one-voter meta shard led the running nodes' replicas
/// into another history, they declared themselves diverged, and nothing healed. It listens to
/// gossip before founding one now, and rejoins the cluster that counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_node_started_again_alone_rejoins_its_cluster() {
    let (listener, addr) = bind(1).pop().unwrap();
    let gossip_at = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let first_config = || {
        let gossip = MemberlistConfig {
            enabled: true,
            bind_addr: Some(gossip_at),
            advertise_addr: None,
            seed_addrs: Vec::new(),
            node_name: Some("node-1".into()),
            peer_management: ALL,
        };
        CacheConfig::new(1, addr)
            .with_raft_config(fast_raft())
            .with_cluster_discovery(MemberlistDiscovery::new(1, addr, &gossip, &[]))
    };
    let first = DistributedCache::new_with_listener(first_config(), listener).await.unwrap();
    first.wait_for_leader(Duration::from_secs(10)).await.expect("the first node leads");
    let second = node(2, true, vec![gossip_at], LINKS, None).await;
    let third = node(3, true, vec![gossip_at], LINKS, None).await;
    wait_until(Duration::from_secs(30), "nodes 2 and 3 become voters", || async {
        voters(&first).await == vec![1, 2, 3]
    })
    .await;
    first.put("k", "v").await.unwrap();
    first.shutdown().await;

    let listener = common::rebind(addr).await;
    let again = DistributedCache::new_with_listener(first_config(), listener).await.unwrap();
    wait_until(Duration::from_secs(30), "node 1 follows the running cluster", || async {
        let raft = again.raft_figures();
        !raft.recovering && again.shard_leader(0).is_some_and(|l| l != 1)
    })
    .await;
    assert_eq!(again.consistent_get(b"k").await.unwrap(), Some(Bytes::from("v")));
    assert_eq!(voters(&second).await, vec![1, 2, 3]);
    for node in [&second, &third, &again] {
        assert_eq!(node.raft_figures().diverged_shard, None, "node {}", node.node_id());
    }
    second.put("after", "1").await.unwrap();
    assert_eq!(again.consistent_get(b"after").await.unwrap(), Some(Bytes::from("1")));
    for node in [second, third, again] {
        node.shutdown().await;
    }
}
