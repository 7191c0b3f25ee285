//! The daemon's part in the cluster: gossip on the node interface (UDP, `--gossip-port`)
//! starting from `--neighbors`; every round it publishes this node's rows and apps and
//! takes in the other live nodes', so every table routes to every node's services. A
//! node that goes silent is dropped by the failure detector within a few seconds.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use ax_cluster::gossip::{Gossip, GossipConfig, NodeStatus};
use ax_cluster::state::{discovery_seeds, AppRecord, NodeRecord, Published, RowRecord};
use chitchat::transport::UdpTransport;
use tracing::info;

use crate::relay::{self, Dial};
use crate::Daemon;

const ROUND: Duration = Duration::from_millis(250);
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

/// Joins the cluster; refuses to start when another live node has our name.
pub async fn start(daemon: Daemon, config: &ClusterConfig) -> Result<()> {
    let node = daemon.table().node().clone();
    let egress_gateway = daemon.table().egress_gateway();
    let me = NodeRecord { name: node.name.clone(), cluster: node.cluster.clone(), ip: node.ip, egress_gateway };
    let listen = SocketAddr::from((node.ip, config.gossip_port));
    let mut seeds: Vec<String> =
        config.neighbors.iter().filter(|ip| **ip != node.ip).map(|ip| format!("{ip}:{}", config.gossip_port)).collect();
    if let Some(prefix) = config.auto_discover {
        seeds.extend(discovery_seeds(node.ip, prefix, config.gossip_port).map_err(anyhow::Error::msg)?);
    }
    let generation = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut gossip = Gossip::start(GossipConfig::new(me.clone(), listen, seeds.clone(), generation), &UdpTransport)
        .await
        .with_context(|| format!("cannot gossip on {listen}: is the port free? (pick another with --gossip-port)"))?;
    info!(%listen, cluster = %node.cluster, neighbors = ?seeds, "gossiping");
    if !seeds.is_empty() {
        for _ in 0..NAME_CHECK_ROUNDS {
            sync(&daemon, &mut gossip, &me).await;
            if let Some(at) = gossip.name_taken().await {
                gossip.shutdown().await;
                bail!(
                    "the node name '{}' is already used by the node at {at}: give this one another with --node-name",
                    me.name
                );
            }
            tokio::time::sleep(ROUND).await;
        }
    }
    tokio::spawn(async move {
        for round in 0u64.. {
            sync(&daemon, &mut gossip, &me).await;
            // Alone: greet the seeds again now and then (they may have started later).
            if round % PROBE_ROUNDS == 0 && daemon.table().remote().nodes.is_empty() {
                gossip.probe();
            }
            tokio::time::sleep(ROUND).await;
        }
    });
    Ok(())
}

/// One round: publish ours, take in theirs.
async fn sync(daemon: &Daemon, gossip: &mut Gossip, me: &NodeRecord) {
    let published = {
        let t = daemon.table();
        Published {
            node: me.clone(),
            rows: t
                .services()
                .map(|b| RowRecord {
                    app: b.app.to_string(),
                    proto: b.proto.name().into(),
                    service: b.service,
                    host: b.host,
                    labels: t.app(b.app).map(|a| a.labels.to_string()).unwrap_or_default(),
                })
                .collect(),
            apps: t
                .apps()
                .map(|a| AppRecord { id: a.id.to_string(), name: a.name.clone(), ip: a.ip, expose: a.expose.clone() })
                .collect(),
            vservices: Vec::new(),
        }
    };
    let published = Published { vservices: crate::vservices::records(daemon), ..published };
    gossip.publish(&published).await;
    let (remote, mut nodes, vservices) = gossip.view().await;
    daemon.table().set_remote(remote);
    // Relays bind sockets: off the async workers.
    let d = daemon.clone();
    let _ = tokio::task::spawn_blocking(move || {
        crate::vservices::converge(&d, vservices);
        relay_exposes(&d);
    })
    .await;
    nodes.insert(0, NodeStatus { node: me.clone(), live: true, apps: published.apps.len() });
    *daemon.nodes.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
}

/// Runs the relays this node owes to `--expose` of apps on other nodes (`0.0.0.0`, or
/// this node's address), and stops those no longer owed.
pub fn relay_exposes(daemon: &Daemon) {
    use ax_core::vservice::ExposeAt;
    let mut owed: std::collections::BTreeMap<String, (u16, Dial)> = Default::default();
    {
        let t = daemon.table();
        let me = t.node().ip;
        let remote = t.remote();
        for app in &remote.apps {
            for e in app.expose.iter().filter(|e| e.at == ExposeAt::Every || e.at == ExposeAt::Node(me)) {
                let row = remote.rows.iter().find(|r| r.app == app.id && r.service.port() == e.internal);
                if let Some(row) = row {
                    owed.insert(format!("expose/{}/{}", app.id, e.host_port), (e.host_port, Dial::Fixed(row.host)));
                }
            }
        }
    }
    let running = relay::running(daemon, "expose/");
    for (owner, dial) in &running {
        if owed.get(owner).map(|o| o.1) != Some(*dial) {
            relay::stop(daemon, owner);
        }
    }
    for (owner, (port, dial)) in owed {
        if running.get(&owner) != Some(&dial) {
            let Dial::Fixed(to) = dial else { continue };
            if let Err(e) = relay::start(daemon, &owner, port, dial, vec![to.to_string()]) {
                tracing::warn!(%owner, port, "cannot relay an exposed port: {e}");
            }
        }
    }
}
