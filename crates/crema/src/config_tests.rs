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
        (base().with_request_timeout(Duration::ZERO), "request_timeout"),
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
