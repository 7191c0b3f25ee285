//! Chitchat, run for ax: one instance per daemon, on a transport it is given (QUIC or
//! UDP on the node interface in the daemon, channels in simulations), and a second on a
//! federation gateway's WAN address, among every cluster's gateways (its own chitchat
//! cluster id, [`FEDERATION_ID`]). The daemon publishes its [`Published`] state every
//! round and reads the others' back.
//!
//! Who counts: a live node (chitchat's node id is the node name) whose address proved
//! that name at a handshake with this node (with TLS: [`Identities`]; without, anyone),
//! the first address to hold a name keeping it while it lives; of what it publishes,
//! only what it sealed (with TLS: [`crate::signed`]) and [`admit`] keeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ax_core::Remote;
use chitchat::transport::Transport;
use chitchat::{spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tracing::warn;

use crate::federation::{GatewayRecord, FEDERATION_ID};
use crate::hush::Hush;
use crate::quic::{Identities, Trust};
use crate::signed::{Sealed, Sealer, Seals, SEAL_KEY};
use crate::state::{admit, remote_view, NodeRecord, Published, VsRecord};

/// How often a node not proven yet is greeted directly (to make the handshake that
/// proves it).
const GREET_EVERY: Duration = Duration::from_secs(1);
/// Of the generations one address claims for a name, only this many of the newest are
/// looked at.
const GENERATIONS: usize = 4;
/// At most this many greetings a round. The addresses come from gossip, so anyone who
/// can put node ids in it could otherwise have every node dial any number of addresses
/// (those already greeted wait their turn, so all are greeted in time).
const GREETS_PER_ROUND: usize = 32;

/// How the gossip runs. Simulated cold starts with one seed (`--example convergence`):
/// 10 nodes converge in 1.3-1.5 s, 100 in 1.5-1.7 s, 300 in 1.5-1.8 s; once converged each
/// node sends 9 KB, 88 KB and 268 KB a second. Those bytes are chitchat's digests (about 45
/// bytes per node known, in two of the three messages of each of about three exchanges
/// per node per round): they grow with the cluster and shrink only with a longer
/// interval. A silent node leaves 120 simulated nodes' views in 2.4-3.1 s (≤ 5 s asked).
#[derive(Debug, Clone)]
pub struct GossipConfig {
    pub me: NodeRecord,
    /// The chitchat cluster id: the cluster's name in a cluster, [`FEDERATION_ID`] on
    /// the WAN (nodes of another id are never merged).
    pub cluster_id: String,
    pub listen: SocketAddr,
    /// The address the others reach this node's gossip at: `listen`, but for a
    /// federation gateway behind NAT.
    pub advertise: SocketAddr,
    /// `ip:port` of the nodes to contact first.
    pub seeds: Vec<String>,
    /// 300 ms: a sixth fewer bytes than 250 ms, for 0.2 s more to converge at 10
    /// nodes. A silent node leaves the views as fast as it did at 250 ms, thanks to the
    /// failure detector's prior of one round instead of two (see `start`).
    pub interval: Duration,
    /// Tells a restarted daemon from its earlier self (start time in ms).
    pub generation: u64,
    /// The failure detector's phi threshold: lower declares silent nodes dead sooner,
    /// too low declares live ones dead in large clusters (where a node's heartbeat
    /// reaches the others less regularly). 6 measured here: no live node declared dead
    /// at 300 simulated nodes, with or without 20% of messages lost, where 4 flapped
    /// (in lockstep rounds) and never converged.
    pub phi_threshold: f64,
}

impl GossipConfig {
    pub fn new(me: NodeRecord, listen: SocketAddr, seeds: Vec<String>, generation: u64) -> GossipConfig {
        let cluster_id = me.cluster.clone();
        GossipConfig {
            me,
            cluster_id,
            listen,
            advertise: listen,
            seeds,
            interval: Duration::from_millis(300),
            generation,
            phi_threshold: 6.0,
        }
    }

    /// A federation gateway's WAN gossip: among every cluster's gateways, reached at
    /// `advertise` (`me.ip` must be its address: a node's record names the address it
    /// gossips from).
    pub fn federation(
        me: NodeRecord,
        listen: SocketAddr,
        advertise: SocketAddr,
        seeds: Vec<String>,
        generation: u64,
    ) -> GossipConfig {
        GossipConfig { cluster_id: FEDERATION_ID.into(), advertise, ..GossipConfig::new(me, listen, seeds, generation) }
    }

    /// This node's chitchat id: its name, generation and gossip address.
    pub fn chitchat_id(&self) -> ChitchatId {
        ChitchatId::new(self.me.name.clone(), self.generation, self.advertise)
    }
}

/// A node as the gossip sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: NodeRecord,
    pub live: bool,
    pub apps: usize,
    /// With TLS: why the node's current gossip state does not count (it counts as last
    /// sealed), if it does not.
    pub problem: Option<String>,
    /// Its federation gateway record, if it is one.
    pub gateway: Option<GatewayRecord>,
}

/// Chitchat would not start (its own error, as text: chitchat reports with anyhow).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

pub struct Gossip {
    handle: ChitchatHandle,
    me: NodeRecord,
    published: BTreeMap<String, String>,
    /// What was published last, to skip the keys' encoding when nothing changed.
    last: Option<Published>,
    seeds: Vec<SocketAddr>,
    /// None: every node is taken at its word (no TLS, simulations).
    trust: Option<Trusted>,
    /// The address holding each name, first come.
    holders: Mutex<BTreeMap<String, SocketAddr>>,
    greetings: Hush<SocketAddr>,
    /// Warnings about a node's claims or records, each kind hushed on its own.
    warnings: Hush<(SocketAddr, Warning)>,
}

/// With TLS: who proved what at handshakes, our seal, and the others'.
struct Trusted {
    identities: Arc<Identities>,
    sealer: Sealer,
    seals: Seals,
}

/// What a warning about a peer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Warning {
    /// A second node claims a held name.
    Claim,
    /// Records left out of what a node publishes.
    Records,
    /// All a node publishes ignored.
    Ignored,
    /// A node's current state not sealed by it.
    Unsealed,
}

/// The live nodes that count, and the addresses to greet.
struct Members {
    ids: Vec<ChitchatId>,
    unproven: Vec<SocketAddr>,
}

impl Gossip {
    /// Gossips over `transport`; with `trust` (QUIC), a node counts only once its
    /// certificate proved its name, and its state only as it sealed it.
    pub async fn start(
        config: GossipConfig,
        transport: &dyn Transport,
        trust: Option<Trust>,
    ) -> Result<Gossip, StartError> {
        let id = config.chitchat_id();
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            sampling_window_size: 100,
            max_interval: Duration::from_secs(2),
            // The mean heartbeat gap assumed before any is measured (weighs as five
            // gaps). One round, as they come once converged: at two rounds, a node cut
            // off just after a cold start took up to 4.1 s to leave 120 nodes' views.
            initial_interval: config.interval,
            dead_node_grace_period: Duration::from_secs(3600),
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds,
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let seeds: Vec<SocketAddr> = chitchat_config.seed_nodes.iter().filter_map(|s| s.parse().ok()).collect();
        // A node that joins starts its rounds at a random point of the interval, as
        // memberlist staggers its tickers. Nodes started in the same instant (a rebooted
        // rack; every simulation) would otherwise gossip in lockstep: all syns at once,
        // a burst at the seed overflowing its queue, and news passed on only at the
        // next round. Out of step, 300 simulated nodes converge in 1.5-1.8 s, not 4.1.
        // A node without seeds (the first) starts at once: it has nobody to be in step
        // with, and a lone daemon's start is not delayed.
        if !seeds.is_empty() {
            tokio::time::sleep(config.interval.mul_f64(fastrand::f64())).await;
        }
        let handle =
            spawn_chitchat(chitchat_config, Vec::new(), transport).await.map_err(|e| StartError(format!("{e:#}")))?;
        let gossip = Gossip {
            handle,
            me: config.me,
            published: BTreeMap::new(),
            last: None,
            seeds,
            trust: trust.map(|t| Trusted {
                identities: t.identities,
                sealer: Sealer::new(t.tls.clone()),
                seals: Seals::new(t.tls),
            }),
            holders: Mutex::default(),
            greetings: Hush::every(GREET_EVERY),
            warnings: Hush::default(),
        };
        gossip.probe();
        Ok(gossip)
    }

    /// Greets every seed at once (chitchat alone gossips with a few at random each
    /// round, which is slow to find the live ones among a whole subnet's addresses).
    pub fn probe(&self) {
        self.greet(self.seeds.iter().copied());
    }

    /// Greets `addrs` directly (a federation gateway its cluster's other gateways, which
    /// its cluster's gossip names and no seed list may).
    pub fn greet(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for addr in addrs {
            let _ = self.handle.gossip(addr);
        }
    }

    /// Publishes `p`: only the keys that changed are set, and gone ones deleted; with
    /// TLS, sealed (the seal set last: a peer holding it holds what it covers), and
    /// sealed again now and then though nothing changed.
    pub async fn publish(&mut self, p: &Published) {
        // Most rounds nothing changed: compare the records, not their JSON.
        if self.last.as_ref() == Some(p) && self.trust.as_ref().is_none_or(|t| !t.sealer.due()) {
            return;
        }
        self.last = Some(p.clone());
        let mut next = p.to_keys();
        if let Some(t) = &mut self.trust {
            if let Err(e) = t.sealer.seal(self.handle.chitchat_id(), &mut next) {
                warn!("cannot seal this node's gossip state (the others will not count it): {e}");
            }
        }
        let prev = std::mem::take(&mut self.published);
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                // Deletions, changes, then the seal: each at a version past what it covers.
                for k in prev.keys().filter(|k| !next.contains_key(*k)) {
                    state.delete(k);
                }
                let (seal, rest): (Vec<_>, Vec<_>) = next.iter().partition(|(k, _)| *k == SEAL_KEY);
                for (k, v) in rest.into_iter().chain(seal) {
                    if prev.get(k) != Some(v) {
                        state.set(k, v);
                    }
                }
            })
            .await;
        self.published = next;
    }

    /// Whether the address of `id` proved its name (always, without TLS).
    fn proven(&self, id: &ChitchatId) -> bool {
        self.trust.as_ref().is_none_or(|t| t.identities.proves(id.gossip_advertise_addr, &id.node_id))
    }

    /// `id`'s state as it counts: with TLS, as last sealed (a problem with its current
    /// key-values logged); without, as it stands.
    fn sealed(&self, c: &Chitchat, id: &ChitchatId, now_ms: u64) -> Sealed {
        let Some(node) = c.node_state(id) else { return Sealed::default() };
        let Some(t) = &self.trust else {
            return Sealed { state: Published::from_keys(node.key_values()), fresh: true, problem: None };
        };
        let sealed = t.seals.state(id, node, now_ms);
        if let Some(problem) = &sealed.problem {
            let addr = id.gossip_advertise_addr;
            if let Some(hushed) = self.warnings.speak((addr, Warning::Unsealed)) {
                warn!(node = %id.node_id, %addr, hushed, "this node's gossip state is not as it sealed it, and counts as last sealed: {problem}");
            }
        }
        sealed
    }

    /// Whether `id` has a state that counts (always, without TLS: read later).
    fn counts(&self, c: &Chitchat, id: &ChitchatId, now_ms: u64) -> bool {
        self.trust.is_none() || self.sealed(c, id, now_ms).live().is_some()
    }

    /// The other live nodes that count: proven, holding their name (the first address
    /// seen to hold a name keeps it while it lives), the newest generation of each.
    fn members(&self, c: &Chitchat, now_ms: u64) -> Members {
        let my_name = &self.handle.chitchat_id().node_id;
        let mut unproven = Vec::new();
        let mut claims: BTreeMap<&str, Vec<&ChitchatId>> = BTreeMap::new();
        for id in c.live_nodes().filter(|id| &id.node_id != my_name) {
            if self.proven(id) {
                claims.entry(&id.node_id).or_default().push(id);
            } else {
                unproven.push(id.gossip_advertise_addr);
            }
        }
        // Of each address's claims to a name, the newest few generations (a relay can
        // announce any number of them): the newest whose state counts is the node.
        for ids in claims.values_mut() {
            ids.sort_by_key(|id| (id.gossip_advertise_addr, std::cmp::Reverse(id.generation_id)));
            let mut per_addr: BTreeMap<SocketAddr, usize> = BTreeMap::new();
            ids.retain(|id| {
                let n = per_addr.entry(id.gossip_advertise_addr).or_default();
                *n += 1;
                *n <= GENERATIONS
            });
        }
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        // A holder keeps its name while one of its generations counts (with TLS: sealed
        // and fresh; liveness alone is heartbeats anyone can relay).
        holders.retain(|name, at| {
            claims
                .get(name.as_str())
                .is_some_and(|ids| ids.iter().any(|id| id.gossip_advertise_addr == *at && self.counts(c, id, now_ms)))
        });
        let mut ids = Vec::new();
        for (name, claimants) in claims {
            // A new name goes to its oldest claimant (the first started).
            let first = claimants.iter().min_by_key(|id| id.generation_id).expect("a claim has a claimant");
            let holder = *holders.entry(name.to_string()).or_insert(first.gossip_advertise_addr);
            for id in claimants.iter().filter(|id| id.gossip_advertise_addr != holder) {
                if let Some(hushed) = self.warnings.speak((id.gossip_advertise_addr, Warning::Claim)) {
                    warn!(name, holder = %holder, refused = %id.gossip_advertise_addr, hushed, "a second node claims a node name: the first holder keeps it");
                }
            }
            // Newest first: the first whose state counts (a generation made up by a
            // relay has no seal).
            let mut held = claimants.into_iter().filter(|id| id.gossip_advertise_addr == holder);
            ids.extend(held.find(|id| self.counts(c, id, now_ms)).cloned());
        }
        Members { ids, unproven }
    }

    /// The live nodes that count, greeting the unproven ones (a direct message makes
    /// the handshake that proves them).
    async fn members_now(&self) -> Members {
        let now_ms = now_ms();
        let members = self.handle.with_chitchat(|c| self.members(c, now_ms)).await;
        // Nodes gossip from the gossip port: any other is no node's.
        let port = self.handle.chitchat_id().gossip_advertise_addr.port();
        let greet = members.unproven.iter().filter(|a| a.port() == port);
        for addr in greet.filter(|a| self.greetings.speak(**a).is_some()).take(GREETS_PER_ROUND) {
            let _ = self.handle.gossip(*addr);
        }
        members
    }

    /// What `id` publishes (`p`, as it counts), as far as [`admit`] keeps it (refusals
    /// logged).
    fn read(&self, id: &ChitchatId, p: Published, now_ms: u64) -> Option<Published> {
        let addr = id.gossip_advertise_addr;
        match admit(&id.node_id, addr.ip(), p, now_ms) {
            Ok((p, left)) => {
                if left.any() {
                    if let Some(hushed) = self.warnings.speak((addr, Warning::Records)) {
                        warn!(node = %id.node_id, %addr, rows = left.rows, vservices = left.vservices, hushed, "records left out: rows for another host, or vservice versions from the future");
                    }
                }
                Some(p)
            }
            Err(e) => {
                if let Some(hushed) = self.warnings.speak((addr, Warning::Ignored)) {
                    warn!(node = %id.node_id, %addr, hushed, "what this node publishes is ignored: {e}");
                }
                None
            }
        }
    }

    /// What the live nodes that count publish, and every node known with its liveness.
    fn counted(&self, c: &Chitchat, members: &Members, now_ms: u64) -> (Vec<Published>, Vec<NodeStatus>) {
        let mut published = Vec::new();
        let mut nodes = Vec::new();
        for id in &members.ids {
            let sealed = self.sealed(c, id, now_ms);
            let problem = sealed.problem.as_ref().map(ToString::to_string);
            if let Some(p) = sealed.live().and_then(|p| self.read(id, p, now_ms)) {
                let gateway = p.federation.gateway.clone();
                nodes.push(NodeStatus { node: p.node.clone(), live: true, apps: p.apps.len(), problem, gateway });
                published.push(p);
            }
        }
        // A dead node is listed as it was last taken (sealed long ago or not;
        // nothing is checked for it).
        for id in c.dead_nodes().filter(|id| self.proven(id)) {
            let last = match &self.trust {
                Some(t) => t.seals.last(id),
                None => c.node_state(id).and_then(|n| Published::from_keys(n.key_values())),
            };
            if let Some(p) = last.and_then(|p| self.read(id, p, now_ms)) {
                if !nodes.iter().any(|n| n.node.name == p.node.name) {
                    let (node, apps, gateway) = (p.node.clone(), p.apps.len(), p.federation.gateway.clone());
                    nodes.push(NodeStatus { node, live: false, apps, problem: None, gateway });
                }
            }
        }
        if let Some(t) = &self.trust {
            t.seals.retain(|id| c.node_state(id).is_some());
        }
        (published, nodes)
    }

    /// The other live nodes' rows and apps, every node known with its liveness, and the
    /// vservice records they publish.
    pub async fn view(&self) -> (Remote, Vec<NodeStatus>, Vec<VsRecord>) {
        let members = self.members_now().await;
        let now_ms = now_ms();
        self.handle
            .with_chitchat(|c| {
                let (published, nodes) = self.counted(c, &members, now_ms);
                let vservices = published
                    .iter()
                    .filter(|p| p.node.cluster == self.me.cluster)
                    .flat_map(|p| p.vservices.clone())
                    .collect();
                (remote_view(&self.me, &published), nodes, vservices)
            })
            .await
    }

    /// On the WAN: what the other live gateways that count publish (of every cluster),
    /// and every gateway known with its liveness.
    pub async fn federation_view(&self) -> (Vec<Published>, Vec<NodeStatus>) {
        let members = self.members_now().await;
        let now_ms = now_ms();
        self.handle.with_chitchat(|c| self.counted(c, &members, now_ms)).await
    }

    /// How many other live nodes that count publish at least one row (cheap without
    /// TLS: nothing is parsed).
    pub async fn peers_with_rows(&self) -> usize {
        let members = self.members_now().await;
        let now_ms = now_ms();
        self.handle
            .with_chitchat(|c| {
                let has_rows = |id: &ChitchatId| match &self.trust {
                    Some(_) => self.sealed(c, id, now_ms).live().is_some_and(|p| !p.rows.is_empty()),
                    None => c.node_state(id).is_some_and(|s| s.key_values().any(|(k, _)| k.starts_with("row/"))),
                };
                members.ids.iter().filter(|id| has_rows(id)).count()
            })
            .await
    }

    /// Another live node proven to hold our name, at another address, if any.
    pub async fn name_taken(&self) -> Option<SocketAddr> {
        let my_id = self.handle.chitchat_id().clone();
        self.handle
            .with_chitchat(|c| {
                c.live_nodes()
                    .find(|id| {
                        id.node_id == my_id.node_id
                            && id.gossip_advertise_addr != my_id.gossip_advertise_addr
                            && self.proven(id)
                    })
                    .map(|id| id.gossip_advertise_addr)
            })
            .await
    }

    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}

/// Now on the wall clock, in ms.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
