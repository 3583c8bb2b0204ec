//! What a checked [`ServeConfig`] builds: the library's [`CacheConfig`] (storage, Raft timing,
//! Multi-Raft, discovery), the admin API's authentication, the cluster secret, the RESP
//! server's settings and the ACL users.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use crema::{
    CacheConfig, CheckpointConfig, ClusterSecret, MemberlistConfig, MemberlistDiscovery,
    MultiRaftCacheConfig, NodeId, PeerManagementConfig, RaftConfig, RaftStorageType, StaticClusterDiscovery,
};

use super::{read_secret_file, ServeConfig, StorageKind};
use crate::admin::auth::AdminAuth;
use crate::resp::RequestLimits;
use crate::server::RespSettings;

impl ServeConfig {
    /// The cache (library) configuration.
    ///
    /// # Errors
    /// A peer that does not parse.
    pub fn cache_config(&self) -> anyhow::Result<CacheConfig> {
        let seeds = self.parsed_peers()?.into_iter().map(|p| (p.id, p.raft_addr)).collect();
        let raft = RaftConfig {
            tick_interval_ms: self.tick_interval_ms,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            ..RaftConfig::default()
        };
        let mut config = CacheConfig::new(self.node_id, self.raft_addr)
            .with_seed_nodes(seeds)
            .with_join(self.join)
            .with_force_new_cluster(self.force_new_cluster)
            .with_max_capacity(self.max_capacity)
            .with_raft_config(raft)
            .with_forwarding(self.forwarding)
            .with_request_timeout(Duration::from_millis(self.request_timeout_ms))
            .with_max_key_size(self.max_key_bytes)
            .with_max_value_size(self.max_value_bytes);
        if let Some(bytes) = self.max_memory_bytes {
            config = config.with_max_memory(bytes);
        }
        if self.shards != 1 {
            // The node's bounds are split between its shards; no separate per-shard cap.
            config = config.with_multiraft_config(MultiRaftCacheConfig {
                enabled: true,
                num_shards: self.shards,
                shard_capacity: u64::MAX,
                ..MultiRaftCacheConfig::default()
            });
            config = config.with_replica_factor(self.replicas);
        }
        if let Some(ms) = self.default_ttl_ms {
            config = config.with_default_ttl(Duration::from_millis(ms));
        }
        if self.storage == StorageKind::Rocksdb {
            config = config.with_raft_storage_type(RaftStorageType::RocksDb);
        }
        if let Some(dir) = &self.data_dir {
            let interval = (self.checkpoint_interval_secs > 0)
                .then(|| Duration::from_secs(self.checkpoint_interval_secs));
            let checkpoints = CheckpointConfig::new(dir.join("checkpoints"))
                .with_log_threshold(self.checkpoint_log_threshold)
                .with_max_log_bytes(self.checkpoint_max_log_bytes)
                .with_interval(interval);
            config = config.with_data_dir(dir).with_checkpoint_config(checkpoints);
        }
        config = config.with_min_free_disk_bytes(self.min_free_disk_bytes);
        if let Some(secret) = self.cluster_secret()? {
            config = config.with_cluster_secret(secret);
        }
        config = self.with_discovery(config)?;
        match (&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca) {
            (None, None, None) => {}
            (Some(cert), Some(key), Some(ca)) => {
                let tls = crema::PeerTls::from_files(cert, key, ca).map_err(anyhow::Error::msg)?;
                config = config.with_peer_tls(tls);
            }
            _ => bail!("give --peer-tls-cert, --peer-tls-key and --peer-tls-ca together"),
        }
        Ok(config)
    }

    /// `config` with this node's cluster discovery: gossip when `gossip_addr` is set; else,
    /// with several shards, the `peers` list (health-checked by the nodes' pings); else none.
    ///
    /// # Errors
    /// Gossip seeds without a gossip address; a peer that does not parse.
    fn with_discovery(&self, config: CacheConfig) -> anyhow::Result<CacheConfig> {
        let policy = PeerManagementConfig {
            auto_add_peers: self.auto_add_peers,
            auto_remove_peers: self.auto_remove_peers,
            auto_add_voters: self.auto_add_voters,
            auto_remove_voters: self.auto_remove_voters,
        };
        let peers: Vec<_> = self.parsed_peers()?.into_iter().map(|p| (p.id, p.raft_addr)).collect();
        Ok(match self.gossip_addr {
            Some(bind) => {
                let gossip = MemberlistConfig {
                    enabled: true,
                    bind_addr: Some(bind),
                    advertise_addr: self.gossip_advertise_addr,
                    seed_addrs: self.gossip_seeds.clone(),
                    node_name: None,
                    peer_management: policy,
                };
                config.with_cluster_discovery(MemberlistDiscovery::new(
                    self.node_id,
                    self.raft_addr,
                    &gossip,
                    &peers,
                ))
            }
            None if !self.gossip_seeds.is_empty() || self.gossip_advertise_addr.is_some() => {
                bail!("--gossip-seed and --gossip-advertise-addr need --gossip-addr")
            }
            None if self.shards != 1 => config.with_cluster_discovery(
                StaticClusterDiscovery::new(self.node_id, self.raft_addr, peers).with_peer_management(policy),
            ),
            None => config,
        })
    }

    /// The admin port's credentials.
    ///
    /// # Errors
    /// The token file cannot be read, or the token is empty.
    pub fn admin_auth(&self) -> anyhow::Result<AdminAuth> {
        let token = match (&self.admin_token, &self.admin_token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => Some(read_secret_file(path, "admin token")?),
            (None, None) => None,
        };
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            bail!("the admin token must be at least 16 characters (e.g. `openssl rand -hex 32`)");
        }
        Ok(AdminAuth {
            token,
            open_metrics: self.admin_open_metrics,
            users: None,
            resp_password: self.password.is_some() || self.password_file.is_some(),
        })
    }

    /// The cluster secret, from the setting or its file.
    ///
    /// # Errors
    /// The file cannot be read, or the secret is too short.
    pub fn cluster_secret(&self) -> anyhow::Result<Option<ClusterSecret>> {
        let text = match (&self.cluster_secret, &self.cluster_secret_file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) => read_secret_file(path, "cluster secret")?,
            (None, None) => return Ok(None),
        };
        ClusterSecret::new(text.into_bytes()).map(Some).map_err(anyhow::Error::msg)
    }

    /// The RESP server settings.
    ///
    /// # Errors
    /// A peer that does not parse.
    pub fn resp_settings(&self) -> anyhow::Result<RespSettings> {
        let client_addrs: BTreeMap<NodeId, String> = self
            .parsed_peers()?
            .into_iter()
            .filter_map(|p| p.resp_addr.map(|a| (p.id, a.to_string())))
            .collect();
        Ok(RespSettings {
            limits: RequestLimits {
                max_bulk_bytes: self.max_bulk_bytes,
                max_args: self.max_args,
                max_inline_bytes: self.max_inline_bytes,
            },
            max_query_buffer_bytes: self.max_query_buffer_bytes,
            max_total_query_buffer_bytes: self.max_total_query_buffer_bytes,
            max_output_buffer_bytes: self.max_output_buffer_bytes,
            max_clients: self.max_clients,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            tcp_keepalive: Duration::from_secs(self.tcp_keepalive_secs),
            request_timeout: Duration::from_millis(self.slow_request_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            auth_timeout: Duration::from_secs(self.auth_timeout_secs.max(1)),
            tls: match (&self.tls_cert, &self.tls_key) {
                (None, None) if self.tls_ca.is_none() => None,
                (Some(cert), Some(key)) => Some(
                    crate::server::tls::acceptor(cert, key, self.tls_ca.as_deref())
                        .map_err(anyhow::Error::msg)?,
                ),
                _ => bail!("give --tls-cert and --tls-key together (and --tls-ca only with them)"),
            },
            password: match (&self.password, &self.password_file) {
                (Some(password), _) => Some(password.clone()),
                (None, Some(path)) => Some(read_secret_file(path, "password")?),
                (None, None) => None,
            },
            acl_file: self.aclfile.clone(),
            read_mode: self.read_mode,
            cluster_redirects: self.cluster_redirects,
            client_addrs,
        })
    }

    /// The users of the ACL file, checked (none without one).
    ///
    /// # Errors
    /// The file cannot be read, or a line is bad (its number is given).
    pub fn acl_users(&self) -> anyhow::Result<Option<crate::acl::file::UserRules>> {
        let Some(path) = &self.aclfile else { return Ok(None) };
        let users = crate::acl::file::load(path).map_err(anyhow::Error::msg)?;
        for (name, rules) in &users {
            crate::cmd::acl::check_names(rules)
                .map_err(|e| anyhow::anyhow!("{}: user {name}: {e}", path.display()))?;
        }
        Ok(Some(users))
    }

    /// Whether the ACL file makes the `default` user need a password (or turns it off).
    pub(super) fn acl_default_needs_password(&self) -> bool {
        let Ok(Some(users)) = self.acl_users() else { return false };
        let Some((_, rules)) = users.iter().find(|(n, _)| n == crate::acl::DEFAULT_USER) else {
            return false;
        };
        // The file was checked: its rules build.
        crema::acl::User::new().with_rules(rules).is_some_and(|user| !user.enabled || !user.nopass)
    }
}
