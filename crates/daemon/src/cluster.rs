//! The daemon's part in the cluster: gossip on the node interface (`--gossip-port`:
//! QUIC with `--tls`, else UDP) starting from `--neighbors`; every round it publishes
//! this node's rows and apps and takes in the other live nodes', so every table routes
//! to every node's services. A node that goes silent is dropped by the failure detector
//! within a few seconds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ax_cluster::gossip::{Gossip, GossipConfig};
use ax_cluster::quic::{QuicError, QuicTransport, Trust};
use ax_cluster::state::discovery_seeds;
use ax_cluster::udp::PortCheckedUdp;
use ax_cluster::wire::SelfId;
use chitchat::transport::Transport;
use tracing::info;

use crate::state::{Answer, Command, GossipView};
use crate::Daemon;

/// A gossip round (the cluster's, and a federation gateway's WAN gossip).
pub(crate) const ROUND: Duration = Duration::from_millis(250);
/// Rounds between greetings of every seed while no other node is known.
const PROBE_ROUNDS: u64 = 8;
/// Rounds to listen for a node already using our name before serving.
const NAME_CHECK_ROUNDS: usize = 8;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub gossip_port: u16,
    pub neighbors: Vec<Ipv4Addr>,
    /// `--gossip-auto-discover`: also seed with every address of the node's subnet
    /// (its prefix length, filled in by the daemon).
    pub auto_discover: Option<u8>,
}

/// Why this node cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Seeds(ax_cluster::state::SubnetTooLarge),
    #[error("cannot gossip on {listen} ({reason}): is the port free? (pick another with --gossip-port)")]
    Bind { listen: SocketAddr, reason: String },
    #[error("the node name '{name}' is already used by the node at {at}: give this one another with --node-name")]
    NameTaken { name: String, at: SocketAddr },
    #[error(transparent)]
    Quic(#[from] QuicError),
}

/// How gossip travels: over QUIC with the certificates of `--tls` (a node counts once
/// its certificate proved its name), or over UDP heard from the gossip port only.
pub struct GossipTransport {
    pub transport: Box<dyn Transport>,
    pub trust: Option<Trust>,
    /// Told this node's chitchat id before gossip starts: deltas about it are refused.
    pub me: SelfId,
}

impl GossipTransport {
    /// `local`: this host's addresses (without `--tls`, gossip from them is refused).
    pub fn new(tls: Option<&Arc<ax_tls::Reloadable>>, local: Vec<IpAddr>) -> Result<GossipTransport, ClusterError> {
        Ok(match tls {
            Some(tls) => {
                let quic = QuicTransport::new(tls)?;
                GossipTransport { trust: Some(quic.trust()), me: quic.self_id(), transport: Box::new(quic) }
            }
            None => {
                let udp = PortCheckedUdp::new(local);
                GossipTransport { me: udp.self_id(), transport: Box::new(udp), trust: None }
            }
        })
    }
}

/// Joins the cluster over `transport`; refuses to start when another live node has our
/// name. The rounds go on in the task returned.
pub async fn start(
    daemon: Daemon,
    config: &ClusterConfig,
    transport: GossipTransport,
) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    let me = daemon.read(|s| s.me());
    let listen = SocketAddr::from((me.ip, config.gossip_port));
    let mut seeds: Vec<String> =
        config.neighbors.iter().filter(|ip| **ip != me.ip).map(|ip| format!("{ip}:{}", config.gossip_port)).collect();
    if let Some(prefix) = config.auto_discover {
        seeds.extend(discovery_seeds(me.ip, prefix, config.gossip_port).map_err(ClusterError::Seeds)?);
    }
    let generation = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let tls = transport.trust.is_some();
    let config = GossipConfig::new(me.clone(), listen, seeds.clone(), generation);
    let _ = transport.me.set(config.chitchat_id());
    let mut gossip = Gossip::start(config, transport.transport.as_ref(), transport.trust)
        .await
        .map_err(|e| ClusterError::Bind { listen, reason: format!("{e:#}") })?;
    info!(%listen, cluster = %me.cluster, neighbors = ?seeds, over = if tls { "QUIC" } else { "UDP" }, "gossiping");
    if !seeds.is_empty() {
        for _ in 0..NAME_CHECK_ROUNDS {
            sync(&daemon, &mut gossip).await;
            if let Some(at) = gossip.name_taken().await {
                gossip.shutdown().await;
                return Err(ClusterError::NameTaken { name: me.name, at });
            }
            tokio::time::sleep(ROUND).await;
        }
    }
    Ok(tokio::spawn(async move {
        for round in 0u64.. {
            sync(&daemon, &mut gossip).await;
            // Alone: greet the seeds again now and then (they may have started later).
            if round % PROBE_ROUNDS == 0 && daemon.read(|s| s.table.remote().nodes.is_empty()) {
                gossip.probe();
            }
            tokio::time::sleep(ROUND).await;
        }
    }))
}

/// One round: take in theirs (one command: the vservices converged, the relays owed),
/// publish ours.
async fn sync(daemon: &Daemon, gossip: &mut Gossip) {
    let (remote, nodes, vservices) = gossip.view().await;
    let view = GossipView { remote, nodes, vservices, now: tokio::time::Instant::now() };
    // Relays bind sockets: off the async workers.
    let d = daemon.clone();
    let answer = tokio::task::spawn_blocking(move || d.submit(Command::Gossip(view))).await;
    if let Ok(Answer::Publish(published)) = answer {
        gossip.publish(&published).await;
    }
}
