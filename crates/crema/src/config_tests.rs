use super::*;

fn base() -> CacheConfig {
    CacheConfig::new(1, "127.0.0.1:9000".parse().unwrap())
}

#[test]
fn defaults_match_the_seed() {
    let raft = RaftConfig::default();
    assert_eq!((raft.election_tick, raft.heartbeat_tick, raft.tick_interval_ms), (10, 3, 100));
    assert_eq!((raft.max_size_per_msg, raft.max_inflight_msgs), (1 << 20, 256));
    assert!(raft.pre_vote);
    base().validate().unwrap();
}

#[test]
fn bad_settings_are_named() {
    let cases: Vec<(CacheConfig, &str)> = vec![
        (CacheConfig::new(0, "127.0.0.1:1".parse().unwrap()), "node_id"),
        (base().with_max_capacity(0), "max_capacity"),
        (base().with_max_memory(0), "max_memory_bytes"),
        (base().with_default_ttl(Duration::ZERO), "default_ttl"),
        (base().with_raft_config(RaftConfig { heartbeat_tick: 10, ..Default::default() }), "heartbeat_tick"),
        (base().with_max_value_size(MAX_FRAME_BYTES), "max_value_bytes"),
        (base().with_seed_nodes(vec![(0, "127.0.0.1:2".parse().unwrap())]), "id 0"),
        (base().with_seed_nodes(vec![(2, base().raft_addr)]), "this node's own address"),
        (
            base().with_seed_nodes(vec![
                (2, "127.0.0.1:2".parse().unwrap()),
                (2, "127.0.0.1:3".parse().unwrap()),
            ]),
            "listed twice",
        ),
        (
            base().with_seed_nodes(vec![
                (2, "127.0.0.1:2".parse().unwrap()),
                (3, "127.0.0.1:2".parse().unwrap()),
            ]),
            "the same address",
        ),
        (base().with_request_timeout(Duration::ZERO), "request_timeout"),
        (base().with_replica_factor(0), "replica_factor"),
        (base().with_replica_factor(16), "replica_factor"),
    ];
    for (config, needle) in cases {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle}");
    }
}

#[test]
fn initial_voters_include_self_once() {
    let c = base().with_seed_nodes(vec![
        (3, "127.0.0.1:3".parse().unwrap()),
        (1, "127.0.0.1:9000".parse().unwrap()),
        (2, "127.0.0.1:2".parse().unwrap()),
    ]);
    assert_eq!(c.initial_voters(), vec![1, 2, 3]);
}

#[test]
fn the_first_conf_of_each_shard_follows_the_initial_map() {
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let seeds = [(2, addr(2)), (3, addr(3)), (4, addr(4)), (5, addr(5))];
    let sharded = |id: NodeId| {
        CacheConfig::new(id, addr(id as u16))
            .with_seed_nodes(seeds.iter().copied().filter(|(s, _)| *s != id).chain([(1, addr(1))]).collect())
            .with_multiraft_config(MultiRaftCacheConfig {
                enabled: true,
                num_shards: 4,
                ..Default::default()
            })
    };
    let map = sharded(1).initial_shard_map().unwrap();
    assert_eq!(Some(&map), sharded(5).initial_shard_map().as_ref(), "every node computes the same map");
    // The meta shard: its three voters, every other node a learner.
    assert_eq!(sharded(1).initial_conf(0), Some((vec![1, 2, 3], vec![4, 5])));
    assert_eq!(sharded(5).initial_conf(0), Some((vec![1, 2, 3], vec![4, 5])));
    // Shard 1 on nodes 4, 5 and 1; node 2 holds none of it at first.
    assert_eq!(sharded(4).initial_conf(1), Some((vec![1, 4, 5], vec![])));
    assert_eq!(sharded(2).initial_conf(1), None);
    // A joining node starts empty; one group means every node is a voter.
    assert_eq!(sharded(2).with_join(true).initial_conf(0), Some((vec![], vec![])));
    assert_eq!(sharded(2).with_join(true).initial_conf(1), None, "placement gives it shards later");
    assert_eq!(base().initial_shard_map(), None);
    assert_eq!(base().initial_conf(0), Some((vec![1], vec![])));
}
