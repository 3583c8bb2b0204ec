//! `crema serve` settings: [`ServeConfig`] (plain data, `Default`, `validate`) read from a TOML
//! file, then overridden by `CREMA_*` environment variables, then by command-line flags
//! ([`ServeArgs`]). That is the one precedence: flag > environment > file > default. What a
//! checked config builds (the library's `CacheConfig`, the servers' settings) is in `build.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use crema::{CacheConfig, CheckpointConfig, NodeId, RaftConfig};
use serde::{Deserialize, Serialize};

mod args;
mod build;

pub use args::ServeArgs;

use crate::cmd::{ReadMode, Redirects};
use crate::server::RespSettings;

/// Every setting of a node. Field names are the TOML keys; the environment variable of a field
/// is `CREMA_` + its name in upper case (`CREMA_RESP_ADDR`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// This node's id (unique in the cluster, not 0).
    pub node_id: NodeId,
    /// Where Redis clients connect.
    pub resp_addr: SocketAddr,
    /// Where other nodes connect (Raft traffic).
    pub raft_addr: SocketAddr,
    /// Admin HTTP: /metrics, /health, /ready, /cluster.
    pub admin_addr: SocketAddr,
    /// The other members: `id=raft_addr` or `id=raft_addr,resp_addr`. In a file also as
    /// `peer` or `seed`, the flag's names (found from outside: the help says keys are the flag
    /// names).
    #[serde(alias = "peer", alias = "seed")]
    pub peers: Vec<String>,
    /// Start empty, to be added to a running cluster with `crema cluster add-node`.
    pub join: bool,
    /// Start as the only voter of a new cluster keeping this node's state (etcd's
    /// `--force-new-cluster`): when a majority of the voters is lost for good.
    pub force_new_cluster: bool,
    /// Password of the `default` user (AUTH); none: no authentication.
    pub password: Option<String>,
    /// A file holding the `default` user's password (one line; a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// ACL users in Redis's ACL file format, loaded into the cluster at start when it has none
    /// (see `crate::acl::file`).
    pub aclfile: Option<PathBuf>,
    /// With a password: seconds a client has to authenticate before it is disconnected.
    pub auth_timeout_secs: u64,
    /// The secret every node of the cluster shares; peers prove it before anything else is
    /// said on the peer port (at least 16 bytes). Prefer `cluster_secret_file`.
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (one line; a trailing newline is ignored).
    pub cluster_secret_file: Option<PathBuf>,
    /// TLS on the RESP port: the certificate (PEM) clients verify.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// With it, clients must present a certificate this CA signed (PEM).
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate for the peer port (PEM; mutual TLS with the three `peer_tls_*`).
    pub peer_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub peer_tls_key: Option<PathBuf>,
    /// The cluster CA that signs every node's certificate (PEM).
    pub peer_tls_ca: Option<PathBuf>,
    /// Bearer token the admin port requires for changes (and reads, unless
    /// `admin_open_metrics`). None: changes only from this machine. Prefer the file.
    pub admin_token: Option<String>,
    /// A file holding the admin token (one line).
    pub admin_token_file: Option<PathBuf>,
    /// `/metrics` and `/cluster` readable without the admin token.
    pub admin_open_metrics: bool,
    /// Refuse to start with a port reachable from other machines that nobody authenticates
    /// on (Redis's protected mode; see [`ServeConfig::check_protected`]).
    pub protected_mode: bool,
    /// How connections read by default: `linearizable` or `local`.
    pub read_mode: ReadMode,
    /// Which connections get `-MOVED`/`-CROSSSLOT` (see [`Redirects`]).
    pub cluster_redirects: Redirects,
    /// Shards (Raft groups) the keys are split into (1: one group, no Multi-Raft).
    pub shards: u32,
    /// Voting replicas of each shard (placement: with more nodes, each shard on this many).
    pub replicas: usize,
    /// Where SWIM gossip (discovery) listens, UDP; none: no gossip (with several shards, the
    /// `peers` list is the cluster, health-checked by the nodes' pings).
    pub gossip_addr: Option<SocketAddr>,
    /// The gossip address other nodes reach this one at, when not `gossip_addr`.
    pub gossip_advertise_addr: Option<SocketAddr>,
    /// Gossip addresses of nodes to join through (in a file also `gossip_seed`, the flag's name).
    #[serde(alias = "gossip_seed")]
    pub gossip_seeds: Vec<SocketAddr>,
    /// Discovered nodes become transport peers (links; Raft membership unchanged).
    pub auto_add_peers: bool,
    /// Nodes declared down lose their link, unless still members.
    pub auto_remove_peers: bool,
    /// The leader adds discovered nodes as voters (learner first).
    pub auto_add_voters: bool,
    /// The leader removes voters declared down.
    pub auto_remove_voters: bool,
    /// Most entries in the local cache (when `max_memory_bytes` is not set), every shard
    /// together.
    pub max_capacity: u64,
    /// Most bytes of keys and values in the local cache.
    pub max_memory_bytes: Option<u64>,
    /// TTL of writes that set none, in milliseconds (SET without EX keeps no TTL in Redis; this
    /// applies to the library API's `put`).
    pub default_ttl_ms: Option<u64>,
    /// Largest key, bytes.
    pub max_key_bytes: usize,
    /// Largest value, bytes.
    pub max_value_bytes: usize,
    /// Forward writes from followers to the leader (else `-NOTLEADER host:port`).
    pub forwarding: bool,
    /// How long a write or linearizable read may wait, milliseconds.
    pub request_timeout_ms: u64,
    /// Raft tick, milliseconds.
    pub tick_interval_ms: u64,
    /// Election timeout, in ticks.
    pub election_tick: usize,
    /// Heartbeat interval, in ticks.
    pub heartbeat_tick: usize,
    /// Most RESP clients at once.
    pub max_clients: usize,
    /// Threads serving RESP clients (see `node`); 0 picks half the cores, at least one.
    pub client_threads: usize,
    /// Close idle clients after this many seconds; 0 never closes them.
    pub idle_timeout_secs: u64,
    /// TCP keepalive on client connections, seconds; 0 off.
    pub tcp_keepalive_secs: u64,
    /// Largest bulk string in a request, bytes.
    pub max_bulk_bytes: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline command line, bytes.
    pub max_inline_bytes: usize,
    /// Most unparsed request bytes buffered per client.
    pub max_query_buffer_bytes: usize,
    /// Most unparsed request bytes of all clients together; past it the clients with the
    /// largest buffers are closed (Redis's client eviction). 0: no cap.
    pub max_total_query_buffer_bytes: usize,
    /// Reply bytes buffered per client before writing them out.
    pub max_output_buffer_bytes: usize,
    /// A started request must arrive completely within this many milliseconds.
    pub slow_request_timeout_ms: u64,
    /// A client must take its replies within this many milliseconds.
    pub write_timeout_ms: u64,
    /// Where the Raft log lives: `memory` or `rocksdb` (built with the `rocksdb` feature).
    pub storage: StorageKind,
    /// The data directory (required with `rocksdb`): the log in `raft/`, checkpoints in
    /// `checkpoints/`.
    pub data_dir: Option<PathBuf>,
    /// Take a checkpoint no sooner than this many applied entries after the last (then once the
    /// log since it is as large as the cache's last checkpoint).
    pub checkpoint_log_threshold: u64,
    /// Take a checkpoint once this many bytes of commands were applied since the last, however
    /// large the cache; 0: every `checkpoint_log_threshold` entries.
    pub checkpoint_max_log_bytes: u64,
    /// Take a checkpoint after this many seconds if anything changed; 0: by log threshold only.
    pub checkpoint_interval_secs: u64,
    /// With rocksdb: refuse writes while the data disk has less than this many bytes free.
    pub min_free_disk_bytes: u64,
}

/// A secret kept in a file: its first line, without the line end.
fn read_secret_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// `--storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// In memory (the default): a restarted node catches up from its peers.
    #[default]
    Memory,
    /// RocksDB and checkpoints in `data_dir`: a restarted node has every acknowledged write.
    Rocksdb,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let cache = CacheConfig::new(1, "127.0.0.1:9000".parse().expect("valid address"));
        let raft = RaftConfig::default();
        let resp = RespSettings::default();
        let checkpoint = CheckpointConfig::new("checkpoints");
        Self {
            node_id: 1,
            resp_addr: "127.0.0.1:6380".parse().expect("valid address"),
            raft_addr: cache.raft_addr,
            admin_addr: "127.0.0.1:9090".parse().expect("valid address"),
            peers: Vec::new(),
            join: false,
            force_new_cluster: false,
            password: None,
            password_file: None,
            aclfile: None,
            auth_timeout_secs: 10,
            cluster_secret: None,
            cluster_secret_file: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            peer_tls_cert: None,
            peer_tls_key: None,
            peer_tls_ca: None,
            admin_token: None,
            admin_token_file: None,
            admin_open_metrics: false,
            protected_mode: true,
            read_mode: ReadMode::Linearizable,
            cluster_redirects: Redirects::SlotMap,
            shards: 1,
            replicas: 3,
            gossip_addr: None,
            gossip_advertise_addr: None,
            gossip_seeds: Vec::new(),
            auto_add_peers: true,
            auto_remove_peers: false,
            auto_add_voters: false,
            auto_remove_voters: false,
            max_capacity: 1_000_000,
            max_memory_bytes: None,
            default_ttl_ms: None,
            max_key_bytes: cache.max_key_bytes,
            max_value_bytes: cache.max_value_bytes,
            forwarding: true,
            request_timeout_ms: cache.request_timeout.as_millis() as u64,
            tick_interval_ms: raft.tick_interval_ms,
            election_tick: raft.election_tick,
            heartbeat_tick: raft.heartbeat_tick,
            max_clients: resp.max_clients,
            client_threads: 0,
            idle_timeout_secs: 0,
            tcp_keepalive_secs: 300,
            max_bulk_bytes: resp.limits.max_bulk_bytes,
            max_args: resp.limits.max_args,
            max_inline_bytes: resp.limits.max_inline_bytes,
            max_query_buffer_bytes: resp.max_query_buffer_bytes,
            max_total_query_buffer_bytes: resp.max_total_query_buffer_bytes,
            max_output_buffer_bytes: resp.max_output_buffer_bytes,
            slow_request_timeout_ms: resp.request_timeout.as_millis() as u64,
            write_timeout_ms: resp.write_timeout.as_millis() as u64,
            storage: StorageKind::Memory,
            data_dir: None,
            checkpoint_log_threshold: checkpoint.log_threshold,
            checkpoint_max_log_bytes: checkpoint.max_log_bytes,
            checkpoint_interval_secs: checkpoint.interval.map_or(0, |i| i.as_secs()),
            min_free_disk_bytes: cache.min_free_disk_bytes,
        }
    }
}

/// One `--peer`: a member's id, Raft address and, optionally, its RESP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its id.
    pub id: NodeId,
    /// Its Raft address.
    pub raft_addr: SocketAddr,
    /// Its RESP address, for `-NOTLEADER` replies.
    pub resp_addr: Option<SocketAddr>,
}

impl std::str::FromStr for Peer {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (id, addrs) = s.split_once('=').context("expected id=raft_addr[,resp_addr]")?;
        let id: NodeId = id.trim().parse().with_context(|| format!("bad node id in '{s}'"))?;
        let (raft, resp) = match addrs.split_once(',') {
            Some((raft, resp)) => (raft, Some(resp)),
            None => (addrs, None),
        };
        let raft_addr = raft.trim().parse().with_context(|| format!("bad raft address in '{s}'"))?;
        let resp_addr = resp
            .map(|r| r.trim().parse())
            .transpose()
            .with_context(|| format!("bad RESP address in '{s}'"))?;
        Ok(Peer { id, raft_addr, resp_addr })
    }
}

impl ServeConfig {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid config (unknown keys included).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The threads that serve RESP clients: `client_threads`, or half the cores (at least one)
    /// when it is 0.
    pub fn client_threads(&self) -> usize {
        match self.client_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
            n => n,
        }
    }

    /// The parsed peers.
    ///
    /// # Errors
    /// A peer that does not parse.
    pub fn parsed_peers(&self) -> anyhow::Result<Vec<Peer>> {
        self.peers.iter().map(|p| p.parse()).collect()
    }

    /// Checks the settings; the error names the first bad one.
    ///
    /// # Errors
    /// As described.
    pub fn validate(&self) -> anyhow::Result<()> {
        let peers = self.parsed_peers()?;
        if peers.iter().any(|p| p.id == self.node_id) {
            bail!("peers must not include this node ({})", self.node_id);
        }
        if self.max_clients == 0 {
            bail!("max_clients must be at least 1");
        }
        if self.client_threads > 1024 {
            bail!("client_threads must be at most 1024 (0 picks half the cores)");
        }
        if self.max_bulk_bytes < self.max_value_bytes.min(1024) {
            bail!("max_bulk_bytes is too small");
        }
        if self.password.is_some() && self.password_file.is_some() {
            bail!("give the password once: password or password_file, not both");
        }
        if self.admin_token.is_some() && self.admin_token_file.is_some() {
            bail!("give the admin token once: admin_token or admin_token_file, not both");
        }
        if self.cluster_secret.is_some() && self.cluster_secret_file.is_some() {
            bail!("give the cluster secret once: cluster_secret or cluster_secret_file, not both");
        }
        self.cache_config()?.validate().context("invalid cache settings")?;
        self.acl_users()?;
        self.admin_auth()?;
        self.check_protected()
    }

    /// Protected mode (on by default, as in Redis): a port bound to an address other machines
    /// can reach must authenticate whoever connects. The peer port needs the cluster secret,
    /// the RESP port a password, and the admin port (which has no authentication yet) must
    /// stay on loopback. `protected_mode = false` (`--protected-mode no`) turns the check off,
    /// for a network the operator trusts.
    ///
    /// # Errors
    /// The first exposed port, with the flag that fixes it.
    pub fn check_protected(&self) -> anyhow::Result<()> {
        if !self.protected_mode {
            return Ok(());
        }
        let exposed = |addr: SocketAddr| !addr.ip().is_loopback();
        let way_out = "or bind it to 127.0.0.1, or start with --protected-mode no on a network you trust";
        let peers_authenticated = self.cluster_secret.is_some()
            || self.cluster_secret_file.is_some()
            || self.peer_tls_cert.is_some();
        if exposed(self.raft_addr) && !peers_authenticated {
            bail!(
                "protected mode: the peer port {} can be reached from other machines and peers are not \
                 authenticated: set --peer-tls-cert/--peer-tls-key/--peer-tls-ca (mutual TLS) or \
                 --cluster-secret-file (the same secret on every node), {way_out}",
                self.raft_addr
            );
        }
        let clients_authenticated = self.password.is_some()
            || self.password_file.is_some()
            || self.tls_ca.is_some()
            || self.acl_default_needs_password();
        if exposed(self.resp_addr) && !clients_authenticated {
            bail!(
                "protected mode: the RESP port {} can be reached from other machines and clients are not \
                 authenticated: set --password-file (or client certificates: --tls-ca), {way_out}",
                self.resp_addr
            );
        }
        if let Some(gossip) = self.gossip_addr.filter(|a| exposed(*a)) {
            if self.cluster_secret.is_none() && self.cluster_secret_file.is_none() {
                bail!(
                    "protected mode: the gossip port {gossip} can be reached from other machines and gossip \
                     is not authenticated: set --cluster-secret-file (gossip packets are signed with it), {way_out}"
                );
            }
        }
        if exposed(self.admin_addr) && self.admin_token.is_none() && self.admin_token_file.is_none() {
            bail!(
                "protected mode: the admin port {} can be reached from other machines and has no admin token: \
                 set --admin-token-file, {way_out}",
                self.admin_addr
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_and_without_a_resp_address() {
        let p: Peer = "2=127.0.0.1:9001".parse().unwrap();
        assert_eq!((p.id, p.resp_addr), (2, None));
        let p: Peer = "3=127.0.0.1:9002,127.0.0.1:6382".parse().unwrap();
        assert_eq!(p.resp_addr, Some("127.0.0.1:6382".parse().unwrap()));
        assert!("x=127.0.0.1:9001".parse::<Peer>().is_err());
        assert!("2:127.0.0.1:9001".parse::<Peer>().is_err());
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crema.toml");
        std::fs::write(
            &path,
            "node_id = 2\nresp_addr = \"127.0.0.1:7000\"\nmax_clients = 5\npeers = [\"1=127.0.0.1:9100\"]\n",
        )
        .unwrap();
        let args = ServeArgs { config: Some(path.clone()), max_clients: Some(7), ..Default::default() };
        let c = args.resolve().unwrap();
        assert_eq!(
            (c.node_id, c.resp_addr.port(), c.max_clients),
            (2, 7000, 7),
            "flag beats file, file beats default"
        );
        assert_eq!(c.raft_addr.port(), 9000);
        // Keys as the flags are named work too (found from outside: `peer` and `gossip_seed`
        // were refused, where the help says keys are the flag names with `_`).
        std::fs::write(&path, "peer = [\"1=127.0.0.1:9100\"]\ngossip_seed = [\"127.0.0.1:7946\"]\n").unwrap();
        let c = ServeConfig::from_file(&path).unwrap();
        assert_eq!((c.peers.len(), c.gossip_seeds.len()), (1, 1));
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let err = ServeConfig::from_file(&path).unwrap_err();
        assert!(format!("{err:#}").contains("no_such_setting"), "{err:#}");
    }

    #[test]
    fn the_example_config_in_docs_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/crema.toml.example");
        let c = ServeConfig::from_file(&path).unwrap();
        c.validate().unwrap();
        assert_eq!(c.parsed_peers().unwrap().len(), 2);
    }

    #[test]
    fn protected_mode_refuses_exposed_ports_without_authentication() {
        let open = |addr: &str| ServeConfig { resp_addr: addr.parse().unwrap(), ..Default::default() };
        let err = open("0.0.0.0:6380").validate().unwrap_err().to_string();
        assert!(err.contains("RESP port 0.0.0.0:6380") && err.contains("--password-file"), "{err}");
        let c = ServeConfig { password: Some("p".into()), ..open("0.0.0.0:6380") };
        c.validate().unwrap();
        let c = ServeConfig { raft_addr: "10.0.0.1:9000".parse().unwrap(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("--cluster-secret-file"));
        let c = ServeConfig { cluster_secret: Some("0123456789abcdef".into()), ..c };
        c.validate().unwrap();
        let c = ServeConfig { admin_addr: "[::]:9090".parse().unwrap(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("--admin-token-file"));
        ServeConfig { admin_token: Some("0123456789abcdef".into()), ..c.clone() }.validate().unwrap();
        ServeConfig { protected_mode: false, ..c }.validate().unwrap();
        ServeConfig { resp_addr: "[::1]:6380".parse().unwrap(), ..Default::default() }.validate().unwrap();
    }

    #[test]
    fn validation_names_the_problem() {
        let c = ServeConfig { peers: vec!["1=127.0.0.1:9000".into()], ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("must not include this node"));
        let c = ServeConfig { node_id: 0, ..Default::default() };
        assert!(c.validate().is_err());
        let c = ServeConfig { client_threads: 1025, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("client_threads"));
    }

    #[test]
    fn client_threads_default_to_half_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(ServeConfig::default().client_threads(), cores.div_ceil(2));
        assert!(ServeConfig::default().client_threads() >= 1);
        assert_eq!(ServeConfig { client_threads: 3, ..Default::default() }.client_threads(), 3);
    }
}
