//! [`MemberlistDiscovery`]: SWIM gossip on its own UDP port, with the `foca` crate.
//!
//! foca is sans-io: it says what to send and which timers to set, and this module's one tokio
//! task does it (a UDP socket, a timer per request, `AccumulatingRuntime` drained after every
//! call). A member's identity carries its node id, its peer (Raft) address and a `bump` (the
//! start time in milliseconds), so a restarted node wins over its former self. A node starts
//! by announcing itself to the seed addresses (whose identities it does not know yet), again
//! every two seconds until it knows a member.
//!
//! Shard leaders travel as foca custom broadcasts (`shard:leader:epoch`, epoch = term): a
//! newer epoch of a shard invalidates an older one still being spread, and a received hint is
//! spread on only when it is newer than what this node knew.
//!
//! With a cluster secret every packet carries a stamp (its sender, the sender's boot and a
//! sequence number, see `replay`) and `HMAC-SHA256(secret, label ‖ packet ‖ stamp)`; packets
//! without a valid tag are dropped, so a process without the secret can neither join nor
//! spread anything, and a recorded packet sent again is dropped as a replay. When the peer
//! port is authenticated and there is no secret (mutual TLS alone), gossip refuses to start:
//! UDP has no TLS here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, Timer};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::hints::Hints;
use super::identities::Identities;
use super::replay::{ReplayGuard, Stamp, Stamper, STAMP_BYTES};
use super::{
    ClusterDiscovery, DiscoveredNode, DiscoveryContext, DiscoveryError, DiscoveryEvent, NodeHealth,
    PeerManagementConfig, ShardLeaderHint,
};
use crate::transport::auth::ClusterSecret;
use crate::types::NodeId;

/// The label of gossip packet tags.
const TAG_LABEL: &[u8] = b"crema-gossip-v2";
const TAG_BYTES: usize = 32;
/// The largest gossip packet on the wire, stamp and tag included (IPv4 and IPv6 carry it on a
/// 1500-byte link without fragments); foca's own part is what is left.
const MAX_PACKET: usize = 1400;
/// How often a node that knows no member announces itself to the seeds again.
const REANNOUNCE: Duration = Duration::from_secs(2);
/// How long a node with seeds knows no member before it says so.
const ALONE_WARNING: Duration = Duration::from_secs(10);
/// How often a node announces itself to members it holds down (three of them).
const ANNOUNCE_TO_DOWN_EVERY: Duration = Duration::from_secs(2);
/// How long a gossip node with no peer to ask listens before it founds a cluster (see
/// `cache::start`): the running cluster's nodes announce themselves to it within two rounds of
/// [`ANNOUNCE_TO_DOWN_EVERY`], or sooner while they still probe it.
pub(crate) const LISTEN_BEFORE_FOUNDING: Duration = Duration::from_secs(5);
/// How many gossip messages of each member carry one membership update (a node down, a node
/// leaving). foca derives it from the cluster size given, which a node started with one seed
/// address cannot know (it says three): two copies per member, of which a leave's own three
/// messages carried only two, and a node left out learned of the leave seconds later, by
/// probing. Six copies (foca's figure for about thirty members) reach every member of the
/// clusters crema runs; an update is a few dozen bytes.
const MAX_TRANSMISSIONS: std::num::NonZeroU8 = std::num::NonZeroU8::new(6).expect("6 is not 0");

/// Gossip discovery settings (the seed's `MemberlistConfig`, field for field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberlistConfig {
    /// Gossip runs only when true. Default false.
    pub enabled: bool,
    /// The UDP address gossip listens on. Needed when enabled.
    pub bind_addr: Option<SocketAddr>,
    /// The address other nodes reach this one at, when not `bind_addr` (behind NAT, or bound
    /// to 0.0.0.0).
    pub advertise_addr: Option<SocketAddr>,
    /// Gossip addresses of a few nodes to join through; empty for the first node.
    pub seed_addrs: Vec<SocketAddr>,
    /// A name for logs; default `node-<id>`.
    pub node_name: Option<String>,
    /// What discovery may change on its own.
    pub peer_management: PeerManagementConfig,
}

/// A member as gossip knows it (see the module header).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(super) struct GossipId {
    pub(super) gossip: SocketAddr,
    pub(super) node_id: NodeId,
    pub(super) raft: SocketAddr,
    pub(super) bump: u64,
}

impl Identity for GossipId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { bump: self.bump.wrapping_add(1).max(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

impl GossipId {
    /// A seed whose identity is not known yet: only its address is used (to announce to).
    fn seed(addr: SocketAddr) -> Self {
        Self { gossip: addr, node_id: 0, raft: addr, bump: 0 }
    }

    fn node(&self, health: NodeHealth) -> DiscoveredNode {
        DiscoveredNode { node_id: self.node_id, raft_addr: self.raft, gossip_addr: Some(self.gossip), health }
    }
}

/// Gossip discovery (see the module header).
#[derive(Debug)]
pub struct MemberlistDiscovery {
    node_id: NodeId,
    raft_addr: SocketAddr,
    config: MemberlistConfig,
    members: Arc<Mutex<BTreeMap<NodeId, DiscoveredNode>>>,
    commands: Mutex<Option<mpsc::UnboundedSender<Vec<ShardLeaderHint>>>>,
}

impl MemberlistDiscovery {
    /// Gossip discovery for node `node_id` whose peer port is `raft_addr`. `raft_peers`, the
    /// Raft peers the node is configured with, are listed as known (not yet alive) until
    /// gossip finds them.
    pub fn new(
        node_id: NodeId,
        raft_addr: SocketAddr,
        config: &MemberlistConfig,
        raft_peers: &[(NodeId, SocketAddr)],
    ) -> Self {
        let mut members = BTreeMap::new();
        let me = DiscoveredNode {
            node_id,
            raft_addr,
            gossip_addr: config.advertise_addr.or(config.bind_addr),
            health: NodeHealth::Alive,
        };
        members.insert(node_id, me);
        for (id, addr) in raft_peers.iter().filter(|(id, _)| *id != node_id) {
            members.insert(
                *id,
                DiscoveredNode {
                    node_id: *id,
                    raft_addr: *addr,
                    gossip_addr: None,
                    health: NodeHealth::Suspect,
                },
            );
        }
        Self {
            node_id,
            raft_addr,
            config: config.clone(),
            members: Arc::new(Mutex::new(members)),
            commands: Mutex::new(None),
        }
    }

    fn error(message: impl Into<String>) -> DiscoveryError {
        DiscoveryError { kind: "memberlist", message: message.into() }
    }
}

impl ClusterDiscovery for MemberlistDiscovery {
    fn kind(&self) -> &'static str {
        "memberlist"
    }

    fn start(&self, ctx: DiscoveryContext) -> Result<Option<tokio::task::JoinHandle<()>>, DiscoveryError> {
        if !self.config.enabled {
            info!(node = self.node_id, "memberlist discovery is disabled");
            return Ok(None);
        }
        let bind = self.config.bind_addr.ok_or_else(|| Self::error("enabled without a bind_addr"))?;
        if ctx.peers_authenticated() && ctx.secret().is_none() {
            return Err(Self::error(
                "the peer port is authenticated and gossip can only be with the cluster secret: set one",
            ));
        }
        let std_socket =
            std::net::UdpSocket::bind(bind).map_err(|e| Self::error(format!("bind {bind}: {e}")))?;
        std_socket.set_nonblocking(true).map_err(|e| Self::error(e.to_string()))?;
        let socket = UdpSocket::from_std(std_socket).map_err(|e| Self::error(e.to_string()))?;
        let local = socket.local_addr().map_err(|e| Self::error(e.to_string()))?;
        let advertise = self.config.advertise_addr.unwrap_or(local);
        if advertise.ip().is_unspecified() {
            return Err(Self::error(format!(
                "bound to {local}: set advertise_addr to an address peers reach"
            )));
        }
        let bump = crate::cache::storage::unix_now_ms().max(1);
        let identity = GossipId { gossip: advertise, node_id: self.node_id, raft: self.raft_addr, bump };
        self.members.lock().expect("members poisoned").insert(self.node_id, identity.node(NodeHealth::Alive));
        let cluster_size = NonZeroU32::new(self.config.seed_addrs.len() as u32 + 1)
            .unwrap_or(NonZeroU32::MIN)
            .max(NonZeroU32::new(3).expect("3 is not 0"));
        let seed: [u8; 32] = rand::random();
        let rng = <rand_010::rngs::StdRng as rand_010::SeedableRng>::from_seed(seed);
        let received = Arc::new(Mutex::new(Vec::new()));
        let hints = Hints { newest: HashMap::new(), received: received.clone() };
        let foca = Foca::with_custom_broadcast(
            identity,
            Config {
                max_packet_size: std::num::NonZeroUsize::new(MAX_PACKET - STAMP_BYTES - TAG_BYTES)
                    .expect("a packet leaves room for foca"),
                max_transmissions: MAX_TRANSMISSIONS,
                // After a partition heals, each side holds the other down until one of them
                // tells the other (which then rejoins under a renewed identity): foca's
                // default, every 65 s, kept nodes down for 40 s after a heal, found from
                // outside, and moves to them were refused meanwhile.
                periodic_announce_to_down_members: Some(foca::PeriodicParams {
                    frequency: ANNOUNCE_TO_DOWN_EVERY,
                    num_members: std::num::NonZeroUsize::new(3).expect("3 is not 0"),
                }),
                ..Config::new_lan(cluster_size)
            },
            rng,
            foca::PostcardCodec,
            hints,
        );
        let (commands, command_rx) = mpsc::unbounded_channel();
        *self.commands.lock().expect("commands poisoned") = Some(commands);
        let agent = Agent {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket,
            signing: ctx.secret().cloned().map(|secret| Signing {
                secret,
                stamper: Stamper::new(self.node_id, bump),
                guard: ReplayGuard::default(),
            }),
            seeds: self.config.seed_addrs.iter().copied().filter(|a| *a != advertise).collect(),
            members: self.members.clone(),
            received,
            name: self.config.node_name.clone().unwrap_or_else(|| format!("node-{}", self.node_id)),
            ctx,
            leaving: false,
            identities: Identities::default(),
            dropped: Default::default(),
            alone_since: None,
        };
        info!(node = self.node_id, %advertise, seeds = ?self.config.seed_addrs, "memberlist gossip started");
        Ok(Some(tokio::spawn(agent.run(command_rx))))
    }

    fn nodes(&self) -> Vec<DiscoveredNode> {
        self.members.lock().expect("members poisoned").values().cloned().collect()
    }

    fn peer_management(&self) -> PeerManagementConfig {
        self.config.peer_management
    }

    fn broadcast_shard_leaders(&self, hints: &[ShardLeaderHint]) {
        if let Some(commands) = self.commands.lock().expect("commands poisoned").as_ref() {
            let _ = commands.send(hints.to_vec());
        }
    }
}

/// Signed gossip: the cluster secret, this node's stamps, and what it heard of the others'.
struct Signing {
    secret: ClusterSecret,
    stamper: Stamper,
    guard: ReplayGuard,
}

/// The gossip task's state.
struct Agent {
    foca: Foca<GossipId, foca::PostcardCodec, rand_010::rngs::StdRng, Hints>,
    runtime: AccumulatingRuntime<GossipId>,
    socket: UdpSocket,
    /// With a cluster secret: how packets are signed and replays refused.
    signing: Option<Signing>,
    seeds: Vec<SocketAddr>,
    members: Arc<Mutex<BTreeMap<NodeId, DiscoveredNode>>>,
    /// Hints from others, filled by the broadcast handler.
    received: Arc<Mutex<Vec<ShardLeaderHint>>>,
    name: String,
    ctx: DiscoveryContext,
    /// This node left the cluster (it stops): foca goes defunct on leaving, which must not
    /// bring it back under a renewed identity.
    leaving: bool,
    /// What gossip said of each identity of each node (see [`Identities`]).
    identities: Identities,
    /// Dropped packets are reported at most every ten seconds: without it, a node with the
    /// wrong cluster secret (or none) waited, unready, with nothing said above debug (found
    /// from outside).
    dropped: crate::consensus::admit::WarnThrottle,
    /// Since when this node has known no member while it has seeds, and whether that was
    /// reported.
    alone_since: Option<(std::time::Instant, bool)>,
}

impl Agent {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Vec<ShardLeaderHint>>) {
        let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer<GossipId>>();
        self.announce_to_seeds();
        self.drain(&timer_tx).await;
        let mut reannounce = tokio::time::interval(REANNOUNCE);
        let mut buf = vec![0u8; MAX_PACKET + 1];
        let cancel = self.ctx.cancel_token().clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.on_packet(&buf[..len], from),
                    Err(e) => debug!(error = %e, "gossip receive failed"),
                },
                Some(timer) = timers.recv() => {
                    if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                        debug!(error = %e, "gossip timer");
                    }
                }
                Some(hints) = commands.recv() => {
                    for hint in hints {
                        let data = postcard::to_stdvec(&hint).expect("encoding a hint cannot fail");
                        if let Err(e) = self.foca.add_broadcast(&data) {
                            debug!(error = %e, "shard leader hint not broadcast");
                        }
                    }
                }
                _ = reannounce.tick() => {
                    if self.foca.iter_members().next().is_none() {
                        self.announce_to_seeds();
                        self.warn_if_alone();
                    } else {
                        self.alone_since = None;
                    }
                }
            }
            self.drain(&timer_tx).await;
        }
        // Tell the others this node leaves, so they do not wait for it to be suspected.
        self.leaving = true;
        let _ = self.foca.leave_cluster(&mut self.runtime);
        self.drain(&timer_tx).await;
    }

    fn announce_to_seeds(&mut self) {
        for seed in self.seeds.clone() {
            if let Err(e) = self.foca.announce(GossipId::seed(seed), &mut self.runtime) {
                debug!(%seed, error = %e, "gossip announce failed");
            }
        }
    }

    /// Once this node has known no member for [`ALONE_WARNING`] while it has seeds to announce
    /// itself to, says so (once per such stretch).
    fn warn_if_alone(&mut self) {
        if self.seeds.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let (since, warned) = self.alone_since.get_or_insert((now, false));
        if !*warned && now.duration_since(*since) >= ALONE_WARNING {
            *warned = true;
            warn!(
                seeds = ?self.seeds,
                waited = ?now.duration_since(*since),
                "gossip: no member answered this node's seeds; check --gossip-seed and that every node has the \
                 same cluster secret (a node with another one, or none, is not heard)"
            );
        }
    }

    fn on_packet(&mut self, packet: &[u8], from: SocketAddr) {
        let data = match &mut self.signing {
            None => packet,
            Some(signing) => {
                let Some(split) = packet.len().checked_sub(TAG_BYTES) else {
                    return self.note_dropped(from, "too short for a signed packet");
                };
                let (signed, tag) = packet.split_at(split);
                if !signing.secret.check_tag(TAG_LABEL, signed, tag) {
                    return self.note_dropped(from, "no valid tag: another cluster secret, or none");
                }
                let Some((data, stamp)) = Stamp::split(signed) else {
                    return debug!(%from, "signed gossip packet without a stamp: dropped");
                };
                if !signing.guard.admit(stamp, std::time::Instant::now()) {
                    return debug!(%from, node = stamp.node, seq = stamp.seq, "replayed gossip packet: dropped");
                }
                data
            }
        };
        match self.foca.handle_data(data, &mut self.runtime) {
            Ok(()) => {}
            // Bytes that are no gossip this node reads: reported (a tagged packet of a node with
            // a cluster secret, where this one has none, is one).
            Err(foca::Error::MalformedPacket | foca::Error::Decode(_)) => {
                let why = if self.signing.is_none() {
                    "not gossip this node reads (a node with a cluster secret, where this one has none?)"
                } else {
                    "not gossip this node reads"
                };
                self.note_dropped(from, why);
            }
            Err(e) => debug!(%from, error = %e, "gossip packet refused"),
        }
    }

    /// Counts a dropped packet; warns at most every ten seconds, naming the last sender.
    fn note_dropped(&self, from: SocketAddr, why: &str) {
        debug!(%from, why, "gossip packet dropped");
        if let Some(count) = self.dropped.note(std::time::Instant::now()) {
            warn!(%from, why, dropped_since_last_warning = count, "gossip packets dropped");
        }
    }

    /// Does what foca asked for: packets, timers, notifications.
    async fn drain(&mut self, timers: &mpsc::UnboundedSender<Timer<GossipId>>) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.send(&to, data).await;
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let timers = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer);
            });
        }
        while let Some(notification) = self.runtime.to_notify() {
            self.on_notification(notification);
        }
        self.sync_suspicion();
        let received = std::mem::take(&mut *self.received.lock().expect("hints poisoned"));
        for hint in received {
            self.ctx.emit(DiscoveryEvent::ShardLeader(hint));
        }
    }

    async fn send(&mut self, to: &GossipId, data: Bytes) {
        let packet = match &mut self.signing {
            None => data.to_vec(),
            Some(signing) => {
                let mut packet = data.to_vec();
                packet.extend_from_slice(&signing.stamper.next().encode());
                let tag = signing.secret.tag(TAG_LABEL, &packet);
                packet.extend_from_slice(&tag);
                packet
            }
        };
        if let Err(e) = self.socket.send_to(&packet, to.gossip).await {
            debug!(to = %to.gossip, error = %e, "gossip send failed");
        }
    }

    fn on_notification(&mut self, notification: OwnedNotification<GossipId>) {
        match notification {
            OwnedNotification::MemberUp(id) | OwnedNotification::Rejoin(id) => {
                self.member(&id, NodeHealth::Alive)
            }
            OwnedNotification::MemberDown(id) => self.member(&id, NodeHealth::Down),
            OwnedNotification::Rename(old, id) => {
                self.member(&id, NodeHealth::Alive);
                if self.signing.is_some() && old.node_id == id.node_id {
                    // Signed, the newer identity on the address is the node itself, started
                    // again: the process behind the old one is gone (found from outside: node
                    // 3 killed 4 s after it restarted was shown alive for 25 s more, its old
                    // identity held alive for `DROPPED_GRACE`). Unsigned, it may be a forgery
                    // in the node's name, and the old identity waits out the grace.
                    self.member(&old, NodeHealth::Down);
                }
            }
            // foca's own answer to `leave_cluster`: this node stops, and stays gone. Rejoining
            // here had the others see a fresh identity alive, and wait for SWIM to suspect it
            // (seconds) before they moved its replicas.
            OwnedNotification::Defunct if self.leaving => {
                debug!(name = %self.name, "left the gossip cluster")
            }
            OwnedNotification::Defunct => {
                // The others declared this node down: come back under a renewed identity.
                warn!(name = %self.name, "gossip declared this node down: rejoining");
                if let Some(renewed) = self.foca.identity().renew() {
                    let _ = self.foca.change_identity(renewed, &mut self.runtime);
                }
                self.announce_to_seeds();
            }
            OwnedNotification::Active | OwnedNotification::Idle => {}
        }
    }

    /// foca notifies a member up and down, not its suspicion (it missed a probe and is not
    /// declared down yet): a member it suspects shows as `Suspect` until it refutes (`Alive`
    /// again) or is declared down. Nothing acts on suspicion; it is only reported (`/cluster`,
    /// `crema_memberlist_nodes`).
    ///
    /// And an identity foca stopped holding without declaring it down is down once it stays
    /// away ([`Identities::dropped`]).
    fn sync_suspicion(&mut self) {
        let held: HashSet<&GossipId> = self.foca.iter_membership_state().map(|m| m.id()).collect();
        let dropped = self.identities.dropped(&held, std::time::Instant::now());
        for id in dropped {
            info!(name = %self.name, node = id.node_id, gossip = %id.gossip, "gossip: an identity dropped for another on its address stayed away: down");
            self.member(&id, NodeHealth::Down);
        }
        let mut members = self.members.lock().expect("members poisoned");
        for member in self.foca.iter_membership_state() {
            let id = member.id();
            let Some(known) = members.get_mut(&id.node_id) else { continue };
            if known.gossip_addr != Some(id.gossip) || known.raft_addr != id.raft {
                continue; // another identity of that node id
            }
            let health = match (member.state(), known.health) {
                (foca::State::Suspect, NodeHealth::Alive) => NodeHealth::Suspect,
                (foca::State::Alive, NodeHealth::Suspect) => NodeHealth::Alive,
                _ => continue,
            };
            debug!(name = %self.name, node = id.node_id, ?health, "gossip: suspicion");
            known.health = health;
        }
    }

    fn member(&mut self, id: &GossipId, health: NodeHealth) {
        let own = self.foca.identity().node_id;
        let Some((speaks, health_now)) = self.identities.note(own, id, health) else {
            debug!(name = %self.name, node = id.node_id, gossip = %id.gossip, ?health, "gossip: news of this node, or of a seed: ignored");
            return;
        };
        let node = speaks.node(health_now);
        {
            let mut members = self.members.lock().expect("members poisoned");
            if members.get(&id.node_id) == Some(&node) {
                debug!(name = %self.name, node = id.node_id, gossip = %id.gossip, ?health, "gossip: news of another identity of a node: no change");
                return;
            }
            members.insert(id.node_id, node.clone());
        }
        info!(name = %self.name, node = id.node_id, gossip = %speaks.gossip, health = ?health_now, "gossip: member");
        self.ctx.emit(match health_now {
            NodeHealth::Down => DiscoveryEvent::NodeDown(id.node_id),
            _ => DiscoveryEvent::NodeUp(node),
        });
    }
}
