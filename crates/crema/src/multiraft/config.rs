//! [`MultiRaftCacheConfig`]: how many shards a [`crate::DistributedCache`] splits its keys into,
//! in the seed's names and defaults.

use crate::config::ConfigError;
use crate::multiraft::router::MAX_SHARDS;

/// Multi-Raft settings of a node ([`crate::CacheConfig::with_multiraft_config`]).
///
/// With `enabled`, the key space is split into `num_shards` shards by Redis Cluster's hash
/// slots (see [`crate::multiraft::ShardRouter`]), each shard its own Raft group; every node of
/// the cluster must be started with the same `num_shards`. Disabled (the default), a node runs
/// one group that owns every slot.
///
/// ```
/// use crema::{CacheConfig, MultiRaftCacheConfig};
///
/// let config = CacheConfig::new(1, "127.0.0.1:9000".parse().unwrap())
///     .with_multiraft_config(MultiRaftCacheConfig { enabled: true, num_shards: 4, ..Default::default() });
/// assert_eq!(config.shard_count(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiRaftCacheConfig {
    /// Split the key space into shards (default false: one group).
    pub enabled: bool,
    /// How many shards (default 16; 1 to 16,384). Fixed when the cluster is created.
    pub num_shards: u32,
    /// Most entries one shard's cache holds (default 100,000); a node's `max_capacity`, when
    /// smaller, is split evenly between its shards instead.
    pub shard_capacity: u64,
    /// Start every shard's group when the node starts (default true). Only `true` is
    /// supported: shards are not created later yet.
    pub auto_init_shards: bool,
    /// How long shard-leader changes are gathered before they are gossiped (default 200 ms).
    pub leader_broadcast_debounce_ms: u64,
}

impl Default for MultiRaftCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            num_shards: 16,
            shard_capacity: 100_000,
            auto_init_shards: true,
            leader_broadcast_debounce_ms: 200,
        }
    }
}

impl MultiRaftCacheConfig {
    /// The number of Raft groups a node runs: `num_shards` when enabled, else 1.
    pub fn shard_count(&self) -> u32 {
        if self.enabled {
            self.num_shards
        } else {
            1
        }
    }

    /// Checks the settings (only when enabled); the error names the bad one.
    ///
    /// # Errors
    /// `num_shards` out of range, a zero `shard_capacity`, `auto_init_shards` off.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let invalid = |why: String| Err(ConfigError::Invalid(why));
        if self.num_shards == 0 || self.num_shards > MAX_SHARDS {
            return invalid(format!(
                "num_shards must be between 1 and {MAX_SHARDS}, got {}",
                self.num_shards
            ));
        }
        if self.shard_capacity == 0 {
            return invalid("shard_capacity must be at least 1".into());
        }
        if !self.auto_init_shards {
            return invalid(
                "auto_init_shards = false is not supported: every shard starts with the node".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds_and_mean_one_group() {
        let config = MultiRaftCacheConfig::default();
        assert_eq!(
            (config.enabled, config.num_shards, config.shard_capacity, config.auto_init_shards),
            (false, 16, 100_000, true)
        );
        assert_eq!(config.leader_broadcast_debounce_ms, 200);
        assert_eq!(config.shard_count(), 1);
        assert_eq!(MultiRaftCacheConfig { enabled: true, ..config }.shard_count(), 16);
    }

    #[test]
    fn bad_settings_are_named() {
        let on = MultiRaftCacheConfig { enabled: true, ..Default::default() };
        for (config, needle) in [
            (MultiRaftCacheConfig { num_shards: 0, ..on }, "num_shards"),
            (MultiRaftCacheConfig { num_shards: MAX_SHARDS + 1, ..on }, "num_shards"),
            (MultiRaftCacheConfig { shard_capacity: 0, ..on }, "shard_capacity"),
            (MultiRaftCacheConfig { auto_init_shards: false, ..on }, "auto_init_shards"),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should name {needle}");
        }
        // Disabled settings are not looked at.
        MultiRaftCacheConfig { num_shards: 0, ..Default::default() }.validate().unwrap();
    }
}
