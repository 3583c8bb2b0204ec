//! [`CacheConfig::validate`]: every setting checked before a node starts, so a configuration
//! that cannot work fails with a [`ConfigError`] naming the setting instead of a node that
//! starts and misbehaves.

use super::{
    invalid, CacheConfig, ConfigError, RaftStorageType, FRAME_OVERHEAD_BYTES, MAX_FRAME_BYTES, MAX_TTL,
};

impl CacheConfig {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id must not be 0 (Raft reserves it)"));
        }
        if self.max_capacity == 0 {
            return Err(invalid("max_capacity must be at least 1"));
        }
        if self.max_memory_bytes == Some(0) {
            return Err(invalid("max_memory_bytes must be at least 1"));
        }
        for (name, ttl) in [("default_ttl", self.default_ttl), ("default_tti", self.default_tti)] {
            if let Some(d) = ttl {
                if d.is_zero() || d > MAX_TTL {
                    return Err(invalid(format!("{name} must be between 1 ms and 10 years")));
                }
            }
        }
        self.raft.validate()?;
        for (id, addr) in &self.seed_nodes {
            if *id == 0 {
                return Err(invalid(format!("seed node {addr} has id 0")));
            }
            if *id == self.node_id && *addr != self.raft_addr {
                return Err(invalid(format!(
                    "seed node {id} has this node's id but another address ({addr})"
                )));
            }
            // Found from outside: a peer listed at this node's own address was taken, and the
            // node waited for itself as that peer, for good.
            if *id != self.node_id && *addr == self.raft_addr {
                return Err(invalid(format!("seed node {id} has this node's own address ({addr})")));
            }
            for (other, other_addr) in &self.seed_nodes {
                if other == id && other_addr != addr {
                    return Err(invalid(format!(
                        "seed node {id} is listed twice, at {addr} and {other_addr}"
                    )));
                }
                if other != id && other_addr == addr {
                    return Err(invalid(format!(
                        "seed nodes {id} and {other} have the same address ({addr})"
                    )));
                }
            }
        }
        if self.forwarding_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(invalid("forwarding_timeout and request_timeout must be above 0"));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > 1024 * 1024 {
            return Err(invalid("max_key_bytes must be in 1..=1 MiB"));
        }
        let max_value = MAX_FRAME_BYTES - FRAME_OVERHEAD_BYTES - self.max_key_bytes;
        if self.max_value_bytes > max_value {
            return Err(invalid(format!(
                "max_value_bytes must be at most {max_value} (a value must fit in one 16 MiB frame)"
            )));
        }
        if self.mailbox_capacity == 0 || self.peer_queue_capacity == 0 {
            return Err(invalid("mailbox_capacity and peer_queue_capacity must be at least 1"));
        }
        if let Some(certified) = self.peer_tls.as_ref().and_then(crate::PeerTls::own_id) {
            if certified != self.node_id {
                return Err(invalid(format!(
                    "the peer TLS certificate is node {certified}'s, and this node is node {}",
                    self.node_id
                )));
            }
        }
        self.multiraft.validate()?;
        let most = crate::multiraft::map_store::MAX_PLACED_REPLICAS - 1;
        if self.replica_factor == 0 || self.replica_factor > most {
            return Err(invalid(format!(
                "replica_factor must be between 1 and {most}, got {}",
                self.replica_factor
            )));
        }
        if self.multiraft.enabled && self.cluster_discovery.is_none() {
            return Err(invalid(
                "Multi-Raft needs a cluster discovery (with_cluster_discovery): MemberlistDiscovery, \
                 StaticClusterDiscovery, or NoOpClusterDiscovery to manage membership by hand",
            ));
        }
        if self.raft_storage == RaftStorageType::RocksDb {
            if !cfg!(feature = "rocksdb") {
                return Err(invalid("RocksDB storage needs crema built with the `rocksdb` feature"));
            }
            if self.data_dir.is_none() {
                return Err(invalid("RocksDB storage needs a data directory (with_data_dir)"));
            }
        }
        Ok(())
    }
}
