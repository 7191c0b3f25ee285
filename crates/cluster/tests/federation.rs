//! The federation's WAN gossip in one process: 10 clusters' gateways, 100 services
//! each, over chitchat's channel transport (its real codec), tokio time paused.
//! Asserts that every gateway imports every other cluster's services, and prints the
//! bytes each gateway sends a second once converged (the WAN carries services, not
//! rows: the figure does not grow with the clusters' nodes).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ax_cluster::federation::{federate, Export, GatewayRecord};
use ax_cluster::gossip::{Gossip, GossipConfig};
use ax_cluster::state::{NodeRecord, Published};
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::{ChitchatMessage, Serializable};
use tokio::task::JoinSet;
use tokio::time::Instant;

const CLUSTERS: usize = 10;
const SERVICES: usize = 100;

fn wan_ip(c: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 12, 0, 10 + c as u8)
}

fn addr(c: usize) -> SocketAddr {
    SocketAddr::from((wan_ip(c), 7947))
}

fn cluster(c: usize) -> String {
    format!("c{c}")
}

/// Cluster `c`'s gateway as it publishes itself on the WAN.
fn gateway(c: usize) -> Published {
    let exports = (0..SERVICES)
        .map(|s| Export {
            proto: ax_core::Proto::Tcp,
            service: SocketAddrV4::new(Ipv4Addr::new(198, 18, c as u8, s as u8 + 1), 8000),
            name: Some(format!("svc{s}")),
            labels: vec!["zone=default".parse().unwrap()],
        })
        .collect();
    let node = NodeRecord { name: format!("gw{c}"), cluster: cluster(c), ip: wan_ip(c), egress_gateway: false };
    Published::wan(node, GatewayRecord { ingress: SocketAddrV4::new(wan_ip(c), 6660) }, exports)
}

/// Counts the bytes each gateway sends (chitchat's encoding, as on the wire).
#[derive(Clone)]
struct Counting {
    inner: ChannelTransport,
    sent: Arc<BTreeMap<SocketAddr, AtomicU64>>,
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    sent: Arc<BTreeMap<SocketAddr, AtomicU64>>,
    me: SocketAddr,
}

#[async_trait::async_trait]
impl Transport for Counting {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen).await?;
        Ok(Box::new(CountingSocket { inner, sent: Arc::clone(&self.sent), me: listen }))
    }
}

#[async_trait::async_trait]
impl Socket for CountingSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.sent[&self.me].fetch_add(msg.serialized_len() as u64, Ordering::Relaxed);
        self.inner.send(to, msg).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inner.recv().await
    }
}

/// How many remote services gateway `c` imports now.
async fn imported(c: usize, g: &Gossip) -> usize {
    let (members, _) = g.federation_view().await;
    let ours = BTreeMap::from([(format!("gw{c}"), gateway(c).federation.gateway.unwrap())]);
    federate(&cluster(c), &ours, &members, |_| false).imports.len()
}

#[tokio::test(start_paused = true)]
async fn ten_clusters_of_a_hundred_services_converge_over_the_wan() {
    let sent: BTreeMap<SocketAddr, AtomicU64> = (0..CLUSTERS).map(|c| (addr(c), AtomicU64::new(0))).collect();
    let transport = Counting { inner: ChannelTransport::with_mtu(65_507), sent: Arc::new(sent) };
    let mut starting = JoinSet::new();
    for c in 0..CLUSTERS {
        let transport = transport.clone();
        starting.spawn(async move {
            // Each gateway knows one neighbor: the first.
            let seeds = if c == 0 { vec![] } else { vec![addr(0).to_string()] };
            let config = GossipConfig::federation(gateway(c).node, addr(c), addr(c), seeds, 1);
            let mut g = Gossip::start(config, &transport, None).await.unwrap();
            g.publish(&gateway(c)).await;
            (c, g)
        });
    }
    let mut gateways = starting.join_all().await;
    gateways.sort_by_key(|(c, _)| *c);
    let start = Instant::now();
    let want = (CLUSTERS - 1) * SERVICES;
    loop {
        let mut done = true;
        for (c, g) in &gateways {
            if imported(*c, g).await != want {
                done = false;
                break;
            }
        }
        if done {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no convergence after 60 s of simulated time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before: Vec<u64> = (0..CLUSTERS).map(|c| transport.sent[&addr(c)].load(Ordering::Relaxed)).collect();
    eprintln!(
        "{CLUSTERS} clusters x {SERVICES} services: every gateway imports the other {want} in {:?} of simulated time, \
         having sent {} bytes on average",
        start.elapsed(),
        before.iter().sum::<u64>() / CLUSTERS as u64
    );
    // Once converged: the bytes each gateway sends over 10 s.
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let rates: Vec<u64> = (0..CLUSTERS)
        .map(|c| (transport.sent[&addr(c)].load(Ordering::Relaxed) - before[c]) / window.as_secs())
        .collect();
    let mean = rates.iter().sum::<u64>() / CLUSTERS as u64;
    eprintln!("converged, bytes sent per gateway per second: mean {mean}, each {rates:?}");
    for (c, g) in &gateways {
        assert_eq!(imported(*c, g).await, want, "gateway {c} still imports everything");
    }
    for (_, g) in gateways {
        g.shutdown().await;
    }
}

/// A gateway joins late with its 100 services; a gateway leaves: its cluster's
/// services leave every other gateway's imports.
#[tokio::test(start_paused = true)]
async fn a_gateway_that_stops_takes_its_services_with_it() {
    let transport = ChannelTransport::with_mtu(65_507);
    let mut gateways = Vec::new();
    for c in 0..3 {
        let seeds = if c == 0 { vec![] } else { vec![addr(0).to_string()] };
        let config = GossipConfig::federation(gateway(c).node, addr(c), addr(c), seeds, 1);
        let mut g = Gossip::start(config, &transport, None).await.unwrap();
        g.publish(&gateway(c)).await;
        gateways.push(g);
    }
    let start = Instant::now();
    while imported(0, &gateways[0]).await != 2 * SERVICES || imported(1, &gateways[1]).await != 2 * SERVICES {
        assert!(start.elapsed() < Duration::from_secs(60), "no convergence");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = gateways.pop().unwrap();
    gone.shutdown().await;
    let start = Instant::now();
    while imported(0, &gateways[0]).await != SERVICES || imported(1, &gateways[1]).await != SERVICES {
        assert!(start.elapsed() < Duration::from_secs(30), "the stopped gateway's services stay");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("a stopped gateway's services left the others' imports in {:?}", start.elapsed());
}

/// A gateway behind NAT: it listens on a private address and is reached at its public
/// one (the transport here opens its socket at the public address: as a router's
/// DNAT and SNAT would, every message to the public address reaches it and every
/// message from it comes from there). Advertising the public address
/// (`--federation-gateway-advertise-ip`), it is heard and its services imported.
#[tokio::test(start_paused = true)]
async fn a_gateway_behind_nat_is_reached_at_its_advertised_address() {
    #[derive(Clone)]
    struct Nat {
        inner: ChannelTransport,
        private: SocketAddr,
        public: SocketAddr,
    }
    #[async_trait::async_trait]
    impl Transport for Nat {
        async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
            self.inner.open(if listen == self.private { self.public } else { listen }).await
        }
    }
    let private = SocketAddr::from(([192, 168, 0, 10], 7947));
    let public = addr(1);
    let transport = Nat { inner: ChannelTransport::with_mtu(65_507), private, public };
    let config = GossipConfig::federation(gateway(0).node, addr(0), addr(0), vec![], 1);
    let mut g0 = Gossip::start(config, &transport, None).await.unwrap();
    g0.publish(&gateway(0)).await;
    // Gateway 1's record names its public address; it listens on the private one.
    let config = GossipConfig::federation(gateway(1).node, private, public, vec![addr(0).to_string()], 1);
    let mut g1 = Gossip::start(config, &transport, None).await.unwrap();
    g1.publish(&gateway(1)).await;
    let start = Instant::now();
    while imported(0, &g0).await != SERVICES || imported(1, &g1).await != SERVICES {
        assert!(start.elapsed() < Duration::from_secs(30), "no convergence through the NAT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (members, _) = g0.federation_view().await;
    assert_eq!(members[0].federation.gateway.as_ref().unwrap().ingress, SocketAddrV4::new(wan_ip(1), 6660));
}
