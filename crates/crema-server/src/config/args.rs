//! `crema serve`'s flags ([`ServeArgs`]): each also reads `CREMA_<NAME>` from the environment,
//! and [`ServeArgs::resolve`] lays them over the config file and the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use crema::NodeId;

use super::{ServeConfig, StorageKind};
use crate::cmd::{ReadMode, Redirects};

/// `crema serve` flags. Each also reads `CREMA_<NAME>` from the environment; a flag wins over
/// the variable, the variable over the config file, the file over the default.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (keys as the flag names with `_`).
    #[arg(long, env = "CREMA_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id, unique in the cluster [default: 1].
    #[arg(long, env = "CREMA_NODE_ID")]
    pub node_id: Option<NodeId>,
    /// Address Redis clients connect to [default: 127.0.0.1:6380].
    #[arg(long, env = "CREMA_RESP_ADDR")]
    pub resp_addr: Option<SocketAddr>,
    /// Address other nodes connect to [default: 127.0.0.1:9000].
    #[arg(long, env = "CREMA_RAFT_ADDR")]
    pub raft_addr: Option<SocketAddr>,
    /// Admin HTTP address: /metrics, /health, /ready, /cluster [default: 127.0.0.1:9090].
    #[arg(long, env = "CREMA_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Another member, `id=raft_addr` or `id=raft_addr,resp_addr`; repeat for each. Every node
    /// of a new cluster lists all the others.
    #[arg(long = "peer", visible_alias = "seed", env = "CREMA_PEERS", value_delimiter = ';')]
    pub peers: Vec<String>,
    /// Start empty and wait to be added with `crema cluster add-node` on the leader.
    #[arg(long, env = "CREMA_JOIN")]
    pub join: Option<bool>,
    /// Start as the only voter of a new cluster, keeping this node's state (etcd's
    /// --force-new-cluster): the way out when a majority of the voters is lost for good. The
    /// other members are dropped without consensus; restart them empty with --join true and
    /// add them back with `crema cluster add-node`.
    #[arg(long, env = "CREMA_FORCE_NEW_CLUSTER")]
    pub force_new_cluster: Option<bool>,
    /// Require AUTH with this password.
    #[arg(long, env = "CREMA_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A file holding the password (one line): not in the process list, unlike --password.
    #[arg(long, env = "CREMA_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// ACL users in Redis's ACL file format (`user <name> <rules...>` per line): loaded into the
    /// cluster at start when it has no ACL users yet; `ACL LOAD` reloads it, `ACL SAVE` writes it.
    #[arg(long, env = "CREMA_ACLFILE")]
    pub aclfile: Option<PathBuf>,
    /// With a password: seconds a client has to authenticate before it is disconnected (a
    /// tenth of --max-clients may wait unauthenticated at once) [default: 10].
    #[arg(long, env = "CREMA_AUTH_TIMEOUT_SECS")]
    pub auth_timeout_secs: Option<u64>,
    /// Authenticate peers with this secret, the same on every node (at least 16 bytes, e.g.
    /// `openssl rand -hex 32`). It shows in the process list: prefer --cluster-secret-file.
    #[arg(long, env = "CREMA_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (one line).
    #[arg(long, env = "CREMA_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// TLS on the RESP port: the certificate (PEM) clients verify (`redis-cli --tls`, `rediss://`).
    #[arg(long, env = "CREMA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The RESP port's private key (PEM).
    #[arg(long, env = "CREMA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM) on the RESP port.
    #[arg(long, env = "CREMA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS on the peer port: this node's certificate (PEM), signed by --peer-tls-ca. A
    /// certificate naming `crema://node/N` lets only node N speak as N.
    #[arg(long, env = "CREMA_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "CREMA_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, env = "CREMA_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// The admin port's bearer token: changes (membership) need it, and reads (/metrics,
    /// /cluster) too unless --admin-open-metrics. Without one, changes only from this machine.
    /// Shows in the process list: prefer --admin-token-file.
    #[arg(long, env = "CREMA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (one line).
    #[arg(long, env = "CREMA_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve /metrics and /cluster without the admin token (for a scraper).
    #[arg(long, env = "CREMA_ADMIN_OPEN_METRICS")]
    pub admin_open_metrics: Option<bool>,
    /// Refuse to start with a port other machines can reach that nobody authenticates on:
    /// yes or no [default: yes].
    #[arg(long, env = "CREMA_PROTECTED_MODE", value_parser = parse_yes_no)]
    pub protected_mode: Option<bool>,
    /// Default read mode of connections: linearizable or local [default: linearizable].
    #[arg(long, env = "CREMA_READ_MODE", value_parser = parse_read_mode)]
    pub read_mode: Option<ReadMode>,
    /// Which connections get Redis Cluster's -MOVED and -CROSSSLOT instead of being forwarded:
    /// slot-map (those that asked for the slot map) or always (every one, as Redis Cluster,
    /// and KEYS, SCAN and DBSIZE cover the shards the node leads; for clients that are all
    /// cluster-aware) [default: slot-map].
    #[arg(long, env = "CREMA_CLUSTER_REDIRECTS", value_enum)]
    pub cluster_redirects: Option<Redirects>,
    /// Shards (Raft groups) the keys are split into by Redis Cluster's hash slots; every node
    /// of a cluster needs the same number [default: 1].
    #[arg(long, env = "CREMA_SHARDS")]
    pub shards: Option<u32>,
    /// Voting replicas of each shard: with more nodes than this, each shard lives on this many
    /// of them, spread evenly (the others reach it through them); every node of a cluster
    /// needs the same number [default: 3].
    #[arg(long, env = "CREMA_REPLICAS")]
    pub replicas: Option<usize>,
    /// UDP address SWIM gossip listens on (cluster discovery); off when not given.
    #[arg(long, env = "CREMA_GOSSIP_ADDR")]
    pub gossip_addr: Option<SocketAddr>,
    /// The gossip address other nodes reach this one at, when not --gossip-addr.
    #[arg(long, env = "CREMA_GOSSIP_ADVERTISE_ADDR")]
    pub gossip_advertise_addr: Option<SocketAddr>,
    /// Gossip address of a node to join through; repeat for each.
    #[arg(long = "gossip-seed", env = "CREMA_GOSSIP_SEEDS", value_delimiter = ';')]
    pub gossip_seeds: Vec<SocketAddr>,
    /// Discovered nodes become transport peers: yes or no [default: yes].
    #[arg(long, env = "CREMA_AUTO_ADD_PEERS", value_parser = parse_yes_no)]
    pub auto_add_peers: Option<bool>,
    /// Nodes discovery declares down lose their link unless still members: yes or no
    /// [default: no].
    #[arg(long, env = "CREMA_AUTO_REMOVE_PEERS", value_parser = parse_yes_no)]
    pub auto_remove_peers: Option<bool>,
    /// The leader adds discovered nodes as voters (learner first): yes or no [default: no].
    #[arg(long, env = "CREMA_AUTO_ADD_VOTERS", value_parser = parse_yes_no)]
    pub auto_add_voters: Option<bool>,
    /// The leader removes voters discovery declares down: yes or no [default: no].
    #[arg(long, env = "CREMA_AUTO_REMOVE_VOTERS", value_parser = parse_yes_no)]
    pub auto_remove_voters: Option<bool>,
    /// Most entries in the local cache, split evenly over the shards (each shard holds at most
    /// its share; keys beyond it are evicted). Entries, not bytes: it does not bound memory
    /// (a million 8 MiB values is 8 TiB); --max-memory-bytes does [default: 1000000].
    #[arg(long, env = "CREMA_MAX_CAPACITY")]
    pub max_capacity: Option<u64>,
    /// Most bytes of keys and values in the local cache (replaces --max-capacity). A soft bound:
    /// writes that commit while the leader's evictions are on their way go over it for that
    /// long, and the process needs more than it (copies in flight, the Raft log, buffers).
    #[arg(long, env = "CREMA_MAX_MEMORY_BYTES")]
    pub max_memory_bytes: Option<u64>,
    /// TTL in milliseconds for library `put`s that set none.
    #[arg(long, env = "CREMA_DEFAULT_TTL_MS")]
    pub default_ttl_ms: Option<u64>,
    /// Largest key in bytes [default: 65536].
    #[arg(long, env = "CREMA_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Largest value in bytes [default: 8388608].
    #[arg(long, env = "CREMA_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Forward follower writes to the leader; false answers -NOTLEADER [default: true].
    #[arg(long, env = "CREMA_FORWARDING")]
    pub forwarding: Option<bool>,
    /// How long a write or linearizable read may wait, ms [default: 5000].
    #[arg(long, env = "CREMA_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Raft tick in ms [default: 100].
    #[arg(long, env = "CREMA_TICK_INTERVAL_MS")]
    pub tick_interval_ms: Option<u64>,
    /// Election timeout in ticks [default: 10].
    #[arg(long, env = "CREMA_ELECTION_TICK")]
    pub election_tick: Option<usize>,
    /// Heartbeat interval in ticks [default: 3].
    #[arg(long, env = "CREMA_HEARTBEAT_TICK")]
    pub heartbeat_tick: Option<usize>,
    /// Most RESP clients at once; lowered, with a warning, to what the open-file limit holds
    /// beside the node's own needs [default: 10000].
    #[arg(long, env = "CREMA_MAX_CLIENTS")]
    pub max_clients: Option<usize>,
    /// Threads that serve RESP clients, apart from the Raft groups' (whose threads are one per
    /// core, or TOKIO_WORKER_THREADS); 0 picks half the cores, at least one [default: 0].
    #[arg(long, env = "CREMA_CLIENT_THREADS")]
    pub client_threads: Option<usize>,
    /// Close clients idle this many seconds; 0 never [default: 0].
    #[arg(long, env = "CREMA_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// TCP keepalive on client connections, seconds: a client gone without a word (crashed
    /// host, dropped NAT entry) is closed about this long after its last packet, plus three
    /// probes a third of it apart; 0 off (Redis's tcp-keepalive) [default: 300].
    #[arg(long, env = "CREMA_TCP_KEEPALIVE_SECS")]
    pub tcp_keepalive_secs: Option<u64>,
    /// Largest bulk string in a request, bytes [default: 16777216].
    #[arg(long, env = "CREMA_MAX_BULK_BYTES")]
    pub max_bulk_bytes: Option<usize>,
    /// Most arguments in one request [default: 1048576].
    #[arg(long, env = "CREMA_MAX_ARGS")]
    pub max_args: Option<usize>,
    /// Longest inline command, bytes [default: 65536].
    #[arg(long, env = "CREMA_MAX_INLINE_BYTES")]
    pub max_inline_bytes: Option<usize>,
    /// Most unparsed request bytes per client [default: 67108864].
    #[arg(long, env = "CREMA_MAX_QUERY_BUFFER_BYTES")]
    pub max_query_buffer_bytes: Option<usize>,
    /// Most unparsed request bytes of all clients together: past it the clients with the
    /// largest buffers are closed (0: no cap) [default: 268435456].
    #[arg(long, env = "CREMA_MAX_TOTAL_QUERY_BUFFER_BYTES")]
    pub max_total_query_buffer_bytes: Option<usize>,
    /// Reply bytes buffered per client before writing [default: 1048576].
    #[arg(long, env = "CREMA_MAX_OUTPUT_BUFFER_BYTES")]
    pub max_output_buffer_bytes: Option<usize>,
    /// A started request must complete within this many ms [default: 30000].
    #[arg(long, env = "CREMA_SLOW_REQUEST_TIMEOUT_MS")]
    pub slow_request_timeout_ms: Option<u64>,
    /// A client whose replies wait must take some of them every this many ms [default: 30000].
    #[arg(long, env = "CREMA_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Where the Raft log lives: memory, or rocksdb (durable; needs --data-dir and a build with
    /// the `rocksdb` feature) [default: memory].
    #[arg(long, env = "CREMA_STORAGE", value_enum)]
    pub storage: Option<StorageKind>,
    /// Data directory for rocksdb storage (created if missing).
    #[arg(long, env = "CREMA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Checkpoint no sooner than this many applied entries after the last, then once the log
    /// since it is as large as the last checkpoint [default: 10000].
    #[arg(long, env = "CREMA_CHECKPOINT_LOG_THRESHOLD")]
    pub checkpoint_log_threshold: Option<u64>,
    /// Checkpoint once this many bytes of commands were applied since the last, however large
    /// the cache; 0: every checkpoint-log-threshold entries [default: 67108864].
    #[arg(long, env = "CREMA_CHECKPOINT_MAX_LOG_BYTES")]
    pub checkpoint_max_log_bytes: Option<u64>,
    /// Checkpoint after this many seconds if anything changed; 0: by threshold only [default: 300].
    #[arg(long, env = "CREMA_CHECKPOINT_INTERVAL_SECS")]
    pub checkpoint_interval_secs: Option<u64>,
    /// With rocksdb: refuse writes, checkpoints and received snapshots that would leave the data
    /// disk less free; 0 turns the reserve off, and a disk that fills up may then abort the node
    /// inside RocksDB [default: 67108864].
    #[arg(long, env = "CREMA_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
}

fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        other => Err(format!("'{other}' is not yes or no")),
    }
}

fn parse_read_mode(s: &str) -> Result<ReadMode, String> {
    match s {
        "linearizable" => Ok(ReadMode::Linearizable),
        "local" => Ok(ReadMode::Local),
        other => Err(format!("'{other}' is not a read mode (linearizable, local)")),
    }
}

macro_rules! overlay {
    ($config:ident, $args:ident, $($field:ident),*) => {
        $( if let Some(v) = $args.$field.clone() { $config.$field = v; } )*
    };
}

impl ServeArgs {
    /// The settings: defaults, then the config file, then environment and flags.
    ///
    /// # Errors
    /// An unreadable config file or invalid settings.
    pub fn resolve(&self) -> anyhow::Result<ServeConfig> {
        let mut c = match &self.config {
            Some(path) => ServeConfig::from_file(path)?,
            None => ServeConfig::default(),
        };
        let a = self;
        overlay!(c, a, node_id, resp_addr, raft_addr, admin_addr, join, read_mode, max_capacity);
        overlay!(c, a, force_new_cluster, protected_mode, admin_open_metrics, auth_timeout_secs);
        if a.admin_token.is_some() || a.admin_token_file.is_some() {
            c.admin_token = a.admin_token.clone();
            c.admin_token_file = a.admin_token_file.clone();
        }
        overlay!(c, a, max_key_bytes, max_value_bytes, forwarding, request_timeout_ms, tick_interval_ms);
        overlay!(
            c,
            a,
            election_tick,
            heartbeat_tick,
            max_clients,
            client_threads,
            idle_timeout_secs,
            tcp_keepalive_secs,
            max_bulk_bytes,
            max_args
        );
        overlay!(c, a, max_inline_bytes, max_query_buffer_bytes, max_output_buffer_bytes);
        overlay!(c, a, max_total_query_buffer_bytes, shards, replicas, cluster_redirects);
        overlay!(c, a, auto_add_peers, auto_remove_peers, auto_add_voters, auto_remove_voters);
        if a.gossip_addr.is_some() {
            c.gossip_addr = a.gossip_addr;
        }
        if a.gossip_advertise_addr.is_some() {
            c.gossip_advertise_addr = a.gossip_advertise_addr;
        }
        if !a.gossip_seeds.is_empty() {
            c.gossip_seeds = a.gossip_seeds.clone();
        }
        overlay!(c, a, slow_request_timeout_ms, write_timeout_ms, storage, checkpoint_log_threshold);
        overlay!(c, a, checkpoint_max_log_bytes, checkpoint_interval_secs, min_free_disk_bytes);
        if a.data_dir.is_some() {
            c.data_dir = a.data_dir.clone();
        }
        if a.aclfile.is_some() {
            c.aclfile = a.aclfile.clone();
        }
        if a.password.is_some() || a.password_file.is_some() {
            c.password = a.password.clone();
            c.password_file = a.password_file.clone();
        }
        for (field, value) in [
            (&mut c.peer_tls_cert, &a.peer_tls_cert),
            (&mut c.peer_tls_key, &a.peer_tls_key),
            (&mut c.peer_tls_ca, &a.peer_tls_ca),
            (&mut c.tls_cert, &a.tls_cert),
            (&mut c.tls_key, &a.tls_key),
            (&mut c.tls_ca, &a.tls_ca),
        ] {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        if a.cluster_secret.is_some() || a.cluster_secret_file.is_some() {
            // One source wins whole: a flag's file replaces a file's secret and back.
            c.cluster_secret = a.cluster_secret.clone();
            c.cluster_secret_file = a.cluster_secret_file.clone();
        }
        if a.max_memory_bytes.is_some() {
            c.max_memory_bytes = a.max_memory_bytes;
        }
        if a.default_ttl_ms.is_some() {
            c.default_ttl_ms = a.default_ttl_ms;
        }
        if !a.peers.is_empty() {
            c.peers = a.peers.clone();
        }
        c.validate()?;
        Ok(c)
    }
}
