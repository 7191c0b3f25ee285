//! Gossip over plain UDP (no `--tls`): chitchat's messages one per datagram, hearing
//! only datagrams sent from the gossip port, and only what [`wire::check`] lets through. Every node gossips from its gossip port, and an
//! app under ax never gets that port (it is reserved on every node), so a datagram from
//! any other port comes from something that is not a node's daemon: dropped, counted,
//! and logged once a minute per source address. Nor does a node gossip with itself: a
//! datagram from one of this host's own addresses (loopback included) is a local
//! program's, whatever port it bound. This needs no cryptography and stops apps and
//! local users; a host that can send from the port (root elsewhere, spoofing) is stopped
//! by `--tls` only.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::hush::Hush;
use crate::wire::{self, SelfId};

/// The largest UDP payload.
const DATAGRAM: usize = 65_507;

/// Chitchat's UDP transport hearing only the gossip port. Counts what it drops and what
/// it sends.
#[derive(Default)]
pub struct PortCheckedUdp {
    counts: Arc<Counts>,
    /// This host's own addresses: a node never gossips with itself, so gossip from one
    /// of them is a local user's, whatever port it binds.
    local: Arc<Vec<IpAddr>>,
    me: SelfId,
    /// When set, only these addresses are heard (a federation gateway without TLS).
    allowed: Option<Allowed>,
}

/// The addresses a transport hears from, shared with whoever learns more of them (a
/// federation gateway's neighbors, then the gateways learned from them).
#[derive(Debug, Clone, Default)]
pub struct Allowed(Arc<RwLock<BTreeSet<IpAddr>>>);

impl Allowed {
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> Allowed {
        Allowed(Arc::new(RwLock::new(ips.into_iter().collect())))
    }

    /// Hears `ips` too.
    pub fn extend(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let mut set = self.0.write().unwrap_or_else(|e| e.into_inner());
        set.extend(ips);
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(&ip)
    }
}

#[derive(Debug, Default)]
struct Counts {
    dropped: AtomicU64,
    sent: AtomicU64,
    hush: Hush<IpAddr>,
}

impl PortCheckedUdp {
    /// Also drops gossip from `local` (this host's addresses), and from loopback when
    /// listening elsewhere.
    pub fn new(local: Vec<IpAddr>) -> PortCheckedUdp {
        PortCheckedUdp { counts: Arc::default(), local: Arc::new(local), me: SelfId::default(), allowed: None }
    }

    /// Hears only the addresses in `allowed` (as they are when each datagram comes).
    pub fn only_from(self, allowed: Allowed) -> PortCheckedUdp {
        PortCheckedUdp { allowed: Some(allowed), ..self }
    }

    /// Where to say which node this transport serves, before gossip starts on it (a
    /// delta about that node is then refused).
    pub fn self_id(&self) -> SelfId {
        self.me.clone()
    }

    /// Datagrams dropped so far for their source port.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Gossip bytes sent so far (UDP payloads).
    pub fn bytes_sent(&self) -> u64 {
        self.counts.sent.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl Transport for PortCheckedUdp {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("failed to bind to {listen}/UDP for gossip: {e}"))?;
        Ok(Box::new(Checked {
            socket,
            buf: vec![0; DATAGRAM],
            me: self.me.clone(),
            port: listen.port(),
            counts: self.counts.clone(),
            local: self.local.clone(),
            loopback_is_local: !listen.ip().is_loopback(),
            allowed: self.allowed.clone(),
        }))
    }
}

struct Checked {
    socket: UdpSocket,
    buf: Vec<u8>,
    me: SelfId,
    port: u16,
    counts: Arc<Counts>,
    local: Arc<Vec<IpAddr>>,
    loopback_is_local: bool,
    allowed: Option<Allowed>,
}

impl Checked {
    /// Why a datagram from `from` is not a node's, if it is not.
    fn stranger(&self, from: SocketAddr) -> Option<&'static str> {
        let ip = addr_unmapped(from.ip());
        if from.port() != self.port {
            Some("not from the gossip port: an app, or another program on that host")
        } else if self.local.contains(&ip) || (self.loopback_is_local && ip.is_loopback()) {
            Some("from this host's own address: a local program, not a node")
        } else if self.allowed.as_ref().is_some_and(|a| !a.allows(ip)) {
            Some("not a federation neighbor, nor a gateway learned from one")
        } else {
            None
        }
    }
}

fn addr_unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[async_trait::async_trait]
impl Socket for Checked {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let bytes = msg.serialize_to_vec();
        self.counts.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Err(e) = self.socket.send_to(&bytes, to).await {
            // As chitchat's own: a datagram that cannot go is gossip lost, not an end.
            debug!(%to, "gossip datagram not sent: {e}");
        }
        Ok(())
    }

    /// Cancellable, as chitchat needs: nothing is kept between receives.
    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(got) => got,
                Err(e) => {
                    debug!("gossip receive failed: {e}");
                    continue;
                }
            };
            let bytes = &self.buf[..len];
            let why = match self.stranger(from) {
                Some(why) => why.to_string(),
                None => match wire::check(bytes, self.me.get()) {
                    Ok(()) => match ChitchatMessage::deserialize(&mut &bytes[..]) {
                        Ok(msg) => return Ok((from, msg)),
                        Err(e) => format!("not a gossip message: {e}"),
                    },
                    Err(why) => why.to_string(),
                },
            };
            let dropped = self.counts.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if self.counts.hush.speak(from.ip()).is_some() {
                warn!(%from, dropped, port = self.port, "gossip dropped: {why} (logged once a minute per address)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn syn() -> ChitchatMessage {
        ChitchatMessage::Syn { cluster_id: "c".into(), digest: Default::default() }
    }

    /// A node at 127.0.0.1:P hears 127.0.0.2:P and drops the same message sent from
    /// 127.0.0.2:P+1 (an app's port on that node).
    #[tokio::test]
    async fn only_the_gossip_port_is_heard() {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let transport = PortCheckedUdp::new(vec!["127.0.0.3".parse().unwrap()]);
        let me: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut socket = transport.open(me).await.unwrap();
        let app = tokio::net::UdpSocket::bind(("127.0.0.2", 0)).await.unwrap();
        let node = tokio::net::UdpSocket::bind(("127.0.0.2", port)).await.unwrap();
        let bytes = syn().serialize_to_vec();
        app.send_to(&bytes, me).await.unwrap();
        app.send_to(&bytes, me).await.unwrap();
        // This host's own address, on the gossip port: a local user's program.
        let local = tokio::net::UdpSocket::bind(("127.0.0.3", port)).await.unwrap();
        local.send_to(&bytes, me).await.unwrap();
        node.send_to(&bytes, me).await.unwrap();
        let (from, msg) = tokio::time::timeout(Duration::from_secs(30), socket.recv()).await.unwrap().unwrap();
        assert_eq!(from, node.local_addr().unwrap());
        assert_eq!(msg, syn());
        assert_eq!(transport.dropped(), 3);
        socket.send(from, syn()).await.unwrap();
        assert_eq!(transport.bytes_sent(), bytes.len() as u64);
    }

    /// A transport hearing only its allowed addresses drops a stranger on the right
    /// port, and hears it once it is allowed.
    #[tokio::test]
    async fn only_allowed_addresses_are_heard_when_asked() {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let allowed = Allowed::new(["127.0.0.2".parse().unwrap()]);
        let transport = PortCheckedUdp::new(vec![]).only_from(allowed.clone());
        let me: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut socket = transport.open(me).await.unwrap();
        let neighbor = tokio::net::UdpSocket::bind(("127.0.0.2", port)).await.unwrap();
        let stranger = tokio::net::UdpSocket::bind(("127.0.0.4", port)).await.unwrap();
        let bytes = syn().serialize_to_vec();
        stranger.send_to(&bytes, me).await.unwrap();
        neighbor.send_to(&bytes, me).await.unwrap();
        let (from, _) = tokio::time::timeout(Duration::from_secs(30), socket.recv()).await.unwrap().unwrap();
        assert_eq!(from, neighbor.local_addr().unwrap());
        assert_eq!(transport.dropped(), 1);
        allowed.extend(["127.0.0.4".parse().unwrap()]);
        stranger.send_to(&bytes, me).await.unwrap();
        let (from, _) = tokio::time::timeout(Duration::from_secs(30), socket.recv()).await.unwrap().unwrap();
        assert_eq!(from, stranger.local_addr().unwrap());
    }

    fn published(name: &str, ip: &str, port: u16) -> crate::state::Published {
        use crate::state::{NodeRecord, Published, RowRecord};
        let ip = ip.parse().unwrap();
        Published {
            node: NodeRecord { name: name.into(), cluster: "appswitch".into(), ip, egress_gateway: false },
            rows: vec![RowRecord {
                app: "f0000001".into(),
                proto: ax_core::Proto::Tcp,
                service: "198.18.0.1:80".parse().unwrap(),
                host: std::net::SocketAddrV4::new(ip, port),
                labels: "zone=default".parse().unwrap(),
            }],
            apps: vec![],
            vservices: vec![],
            federation: Default::default(),
        }
    }

    /// From a gossip port, a stranger sends node a: a delta rewriting a's own state at
    /// version 2^64-2, a delta that trips chitchat's version assertion, and a message
    /// inflating to megabytes. All are dropped unread: a publishes on, and b hears it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_that_would_rewrite_or_stop_a_node_are_dropped() {
        use crate::gossip::{Gossip, GossipConfig};
        use crate::wire::craft::{ack, ops, Op};

        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addr = |i: u8| SocketAddr::from(([127, 0, 0, i], port));
        let mut nodes = Vec::new();
        for (i, name) in [(1u8, "a"), (2, "b")] {
            let transport = PortCheckedUdp::new(vec![]);
            let p = published(name, &format!("127.0.0.{i}"), 40000);
            let seeds = if i == 1 { vec![] } else { vec![addr(1).to_string()] };
            let mut config = GossipConfig::new(p.node.clone(), addr(i), seeds, 1);
            config.interval = Duration::from_millis(100);
            transport.self_id().set(config.chitchat_id()).unwrap();
            let mut g = Gossip::start(config, &transport, None).await.unwrap();
            g.publish(&p).await;
            nodes.push((g, transport));
        }
        let a_id = chitchat::ChitchatId::new("a".to_string(), 1, addr(1));
        let x_id = chitchat::ChitchatId::new("x".to_string(), 1, addr(9));
        let padding = zstd::bulk::compress(&[0u8; 65_535], 19).unwrap();
        let attacks = [
            ack(&[(2, ops(&[Op::Node(&a_id), Op::Kv("node", u64::MAX - 1)]))]),
            ack(&[(2, ops(&[Op::Node(&x_id), Op::Kv("node", 1000), Op::Max(5)]))]),
            ack(&vec![(1, padding); 40]),
        ];
        let stranger = tokio::net::UdpSocket::bind(addr(3)).await.unwrap();
        for bytes in &attacks {
            stranger.send_to(bytes, addr(1)).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while nodes[0].1.dropped() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "dropped {}", nodes[0].1.dropped());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nodes[0].0.publish(&published("a", "127.0.0.1", 40001)).await;
        loop {
            let rows = nodes[1].0.view().await.0.rows;
            if rows.iter().any(|r| r.node == "a" && r.host.port() == 40001) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "b does not hear a's new row: {rows:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (g, _) in nodes {
            g.shutdown().await;
        }
    }
}
