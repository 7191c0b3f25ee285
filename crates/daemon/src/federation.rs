//! The daemon as a federation gateway (`--federation-gateway-*`): the control plane.
//! A gateway runs a second gossip on its WAN address among every cluster's gateways,
//! publishing its gateway record and its cluster's export summary there, and takes
//! back the other clusters' services, which it re-publishes into its own cluster (see
//! `ax_cluster::federation` for what is taken and what is refused). The sessions that
//! carry connections between clusters (ingress on `--federation-gateway-port`, egress
//! from the cluster's nodes) are [`path`]'s.
//!
//! Trust: under `--tls` the WAN gossip runs over the cluster's QUIC transport (a
//! gateway counts once its certificate from the CA proved its name, its state only as
//! it sealed it); without, it is unauthenticated (said at start) and heard only from
//! the `--federation-gateway-neighbors`, the gateways learned from them, and our own
//! cluster's gateways (as our cluster's gossip names them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ax_cluster::federation::{self, Clash, GatewayRecord, Import, Refusal, RemoteGateway, ServiceRow};
use ax_cluster::gossip::{Gossip, GossipConfig, NodeStatus};
use ax_cluster::quic::QuicTransport;
use ax_cluster::state::{NodeRecord, Published};
use ax_cluster::udp::{Allowed, PortCheckedUdp};
use ax_core::{RemoteService, Table};
use tracing::{error, info, warn};

pub mod path;

use crate::cluster::{ClusterError, GossipTransport, ROUND};
use crate::state::{Answer, Command, State};
use crate::Daemon;

/// `--federation-gateway-*`, resolved: this node is a federation gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// `--federation-gateway-ip`: where the WAN gossip listens (and sessions will).
    pub ip: Ipv4Addr,
    /// `--federation-gateway-advertise-ip`: where the other gateways reach this one
    /// (behind NAT); `ip` without it.
    pub advertise: Ipv4Addr,
    /// `--federation-gateway-port`: ingress sessions from other clusters' gateways.
    pub port: u16,
    /// `--federation-gateway-gossip-port`.
    pub gossip_port: u16,
    /// `--federation-gateway-neighbors`: other clusters' gateways to contact first.
    pub neighbors: Vec<Ipv4Addr>,
}

impl FederationConfig {
    /// What this gateway publishes of itself.
    pub fn record(&self) -> GatewayRecord {
        GatewayRecord { ingress: SocketAddrV4::new(self.advertise, self.port) }
    }
}

/// What a gateway holds between rounds, in the daemon's state.
#[derive(Debug)]
pub struct Gateway {
    pub config: FederationConfig,
    /// The remote services re-published into our cluster (last WAN round).
    pub imports: Vec<Import>,
    /// The other clusters' live gateways that count, by cluster: where sessions to
    /// each cluster go (last WAN round).
    pub remote: BTreeMap<String, Vec<RemoteGateway>>,
    /// The other clusters' gateways, as the WAN shows them (for `ax get nodes`).
    pub wan_nodes: Vec<NodeStatus>,
    /// Clashes and refusals of the last round: each is logged when it appears.
    pub(crate) clashes: BTreeSet<Clash>,
    refused: BTreeSet<Refusal>,
}

impl Gateway {
    pub fn new(config: FederationConfig) -> Gateway {
        Gateway {
            config,
            imports: Vec::new(),
            remote: BTreeMap::new(),
            wan_nodes: Vec::new(),
            clashes: BTreeSet::new(),
            refused: BTreeSet::new(),
        }
    }

    /// The ingresses this gateway knows of: its own (where it listens, and where it is
    /// reached) and the other clusters' gateways'.
    pub fn ingresses(&self) -> impl Iterator<Item = SocketAddrV4> + '_ {
        let own = [SocketAddrV4::new(self.config.ip, self.config.port), self.config.record().ingress];
        own.into_iter().chain(self.remote.values().flatten().map(|r| r.ingress))
    }

    /// Our imports as the table takes them: reached through this node.
    pub fn own_imports(&self, node: Ipv4Addr) -> impl Iterator<Item = RemoteService> + '_ {
        self.imports.iter().map(move |i| RemoteService {
            cluster: i.cluster.clone(),
            gateway: node,
            proto: i.export.proto,
            service: i.export.service,
            name: i.export.name.clone(),
            labels: i.export.labels.clone(),
        })
    }
}

/// One WAN round's view: the other gateways that count, and every gateway known.
#[derive(Debug)]
pub struct WanView {
    pub members: Vec<Published>,
    pub nodes: Vec<NodeStatus>,
}

/// This cluster's export summary, from the table (this node's rows and the cluster's).
pub fn exports(t: &Table) -> Vec<federation::Export> {
    let local = t
        .services()
        .filter_map(|b| t.app(b.app).map(|a| ServiceRow { proto: b.proto, service: b.service, labels: &a.labels }));
    let remote = t.remote().rows.iter().map(|r| ServiceRow { proto: r.proto, service: r.service, labels: &r.labels });
    // Names by address, ours first (one pass, not one per service).
    let mut names: HashMap<Ipv4Addr, &str> = HashMap::new();
    let apps = t.apps().map(|a| (a.ip, &a.name)).chain(t.remote().apps.iter().map(|a| (a.ip, &a.name)));
    for (ip, name) in apps {
        if let Some(n) = name {
            names.entry(ip).or_insert(n);
        }
    }
    let name_of = |ip: Ipv4Addr| names.get(&ip).map(|n| n.to_string());
    federation::summarize(local.chain(remote), |ip| t.is_node_address(ip), name_of)
}

impl State {
    /// Takes in a WAN round (a gateway only): decides what to import, logs clashes and
    /// refusals as they appear, and answers what to publish on the WAN.
    pub(crate) fn wan_round(&mut self, view: WanView) -> Answer {
        let me = self.me();
        let exports = exports(&self.table);
        // Our cluster's gateways as its gossip shows them (this one included), the
        // dead too: one that died is still on the WAN until the WAN's failure
        // detector says so, and is no impostor meanwhile.
        let mut our_gateways: BTreeMap<String, GatewayRecord> = self
            .nodes
            .iter()
            .filter(|n| n.node.cluster == me.cluster)
            .filter_map(|n| n.gateway.clone().map(|g| (n.node.name.clone(), g)))
            .collect();
        let table = &self.table;
        let Some(g) = &mut self.gateway else { return Answer::Done };
        our_gateways.insert(me.name.clone(), g.config.record());
        let got = federation::federate(&me.cluster, &our_gateways, &view.members, |ip| table.is_cluster_address(ip));
        let clashes: BTreeSet<Clash> = got.clashes.into_iter().collect();
        for c in clashes.difference(&g.clashes) {
            error!("{c}");
        }
        let refused: BTreeSet<Refusal> = got.refused.into_iter().collect();
        for r in refused.difference(&g.refused) {
            warn!("a remote service is refused: {r}");
        }
        if g.imports != got.imports {
            info!(services = got.imports.len(), clusters = got.gateways.len(), "remote clusters' services changed");
        }
        (g.clashes, g.refused, g.imports, g.remote) = (clashes, refused, got.imports, got.gateways);
        g.wan_nodes = view.nodes.into_iter().filter(|n| n.node.cluster != me.cluster).collect();
        let node = NodeRecord { ip: g.config.advertise, ..me };
        Answer::Publish(Box::new(Published::wan(node, g.config.record(), exports)))
    }
}

/// How the WAN gossip travels: QUIC under `--tls` (as in the cluster), else UDP heard
/// only from the neighbors and the gateways learned from them.
pub fn transport(
    tls: Option<&Arc<ax_tls::Reloadable>>,
    local: Vec<IpAddr>,
    neighbors: &[Ipv4Addr],
) -> Result<(GossipTransport, Option<Allowed>), ClusterError> {
    Ok(match tls {
        Some(tls) => {
            let quic = QuicTransport::new(tls)?;
            (GossipTransport { trust: Some(quic.trust()), me: quic.self_id(), transport: Box::new(quic) }, None)
        }
        None => {
            warn!("the federation's wide-area link is unauthenticated: without --tls, WAN gossip is taken only from --federation-gateway-neighbors, the gateways learned from them and this cluster's other gateways, and anyone who can send from those addresses can publish services to this cluster (see the README, Federation)");
            let allowed = Allowed::new(neighbors.iter().map(|ip| IpAddr::V4(*ip)));
            let udp = PortCheckedUdp::new(local).only_from(allowed.clone());
            (GossipTransport { me: udp.self_id(), transport: Box::new(udp), trust: None }, Some(allowed))
        }
    })
}

/// Starts the WAN gossip of a gateway; the rounds go on in the task returned.
pub async fn start(
    daemon: Daemon,
    config: FederationConfig,
    (transport, allowed): (GossipTransport, Option<Allowed>),
) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    let me = daemon.read(|s| s.me());
    let listen = SocketAddr::from((config.ip, config.gossip_port));
    let advertise = SocketAddr::from((config.advertise, config.gossip_port));
    let seeds: Vec<String> = config
        .neighbors
        .iter()
        .filter(|ip| **ip != config.ip && **ip != config.advertise)
        .map(|ip| format!("{ip}:{}", config.gossip_port))
        .collect();
    let generation = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let wan_me = NodeRecord { ip: config.advertise, ..me.clone() };
    let gossip_config = GossipConfig::federation(wan_me, listen, advertise, seeds.clone(), generation);
    let _ = transport.me.set(gossip_config.chitchat_id());
    let tls = transport.trust.is_some();
    let mut gossip = Gossip::start(gossip_config, transport.transport.as_ref(), transport.trust)
        .await
        .map_err(|e| ClusterError::Bind { listen, reason: format!("{e:#}") })?;
    info!(%listen, %advertise, cluster = %me.cluster, neighbors = ?seeds, over = if tls { "QUIC" } else { "UDP" }, "federation gateway: gossiping on the WAN");
    Ok(tokio::spawn(async move {
        for round in 0u64.. {
            let (members, nodes) = gossip.federation_view().await;
            // Our cluster's other gateways, as its gossip names them (at the gossip port
            // of ours: one WAN gossip port for the federation).
            let fellows: Vec<SocketAddr> = daemon.read(|s| {
                let others = s.nodes.iter().skip(1).filter(|n| n.live && n.node.cluster == me.cluster);
                others
                    .filter_map(|n| n.gateway.as_ref())
                    .map(|g| (*g.ingress.ip(), config.gossip_port).into())
                    .collect()
            });
            if let Some(allowed) = &allowed {
                // Heard too: the gateways learned from the neighbors, and our own
                // cluster's (through whom the others learn of a gateway that no
                // neighbor list names).
                allowed.extend(nodes.iter().map(|n| IpAddr::V4(n.node.ip)).chain(fellows.iter().map(|a| a.ip())));
            }
            if round % 8 == 0 {
                // A fellow not on the WAN yet may know nobody there who hears it.
                let known = |a: &SocketAddr| nodes.iter().any(|n| n.live && IpAddr::V4(n.node.ip) == a.ip());
                gossip.greet(fellows.iter().filter(|a| !known(a)).copied());
            }
            let d = daemon.clone();
            let view = WanView { members, nodes };
            let answer = tokio::task::spawn_blocking(move || d.submit(Command::Wan(view))).await;
            if let Ok(Answer::Publish(published)) = answer {
                gossip.publish(&published).await;
            }
            if round % 8 == 0 && daemon.read(|s| s.gateway.as_ref().is_some_and(|g| g.wan_nodes.is_empty())) {
                gossip.probe();
            }
            tokio::time::sleep(ROUND).await;
        }
    }))
}
