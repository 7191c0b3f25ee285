//! Gossip over plain UDP (no `--tls`): chitchat's own UDP transport, hearing only
//! datagrams sent from the gossip port. Every node gossips from its gossip port, and an
//! app under ax never gets that port (it is reserved on every node), so a datagram from
//! any other port comes from something that is not a node's daemon: dropped, counted,
//! and logged once a minute per source address. Nor does a node gossip with itself: a
//! datagram from one of this host's own addresses (loopback included) is a local
//! program's, whatever port it bound. This needs no cryptography and stops apps and
//! local users; a host that can send from the port (root elsewhere, spoofing) is stopped
//! by `--tls` only.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chitchat::transport::{Socket, Transport, UdpSocket};
use chitchat::{ChitchatMessage, Serializable};
use tracing::warn;

use crate::hush::Hush;

/// Chitchat's UDP transport hearing only the gossip port. Counts what it drops and what
/// it sends.
#[derive(Default)]
pub struct PortCheckedUdp {
    counts: Arc<Counts>,
    /// This host's own addresses: a node never gossips with itself, so gossip from one
    /// of them is a local user's, whatever port it binds.
    local: Arc<Vec<IpAddr>>,
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
        PortCheckedUdp { counts: Arc::default(), local: Arc::new(local) }
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
        let inner = UdpSocket::open(listen).await?;
        Ok(Box::new(Checked {
            inner,
            port: listen.port(),
            counts: self.counts.clone(),
            local: self.local.clone(),
            loopback_is_local: !listen.ip().is_loopback(),
        }))
    }
}

struct Checked {
    inner: UdpSocket,
    port: u16,
    counts: Arc<Counts>,
    local: Arc<Vec<IpAddr>>,
    loopback_is_local: bool,
}

impl Checked {
    /// Why a datagram from `from` is not a node's, if it is not.
    fn stranger(&self, from: SocketAddr) -> Option<&'static str> {
        let ip = addr_unmapped(from.ip());
        if from.port() != self.port {
            Some("not from the gossip port: an app, or another program on that host")
        } else if self.local.contains(&ip) || (self.loopback_is_local && ip.is_loopback()) {
            Some("from this host's own address: a local program, not a node")
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
        self.counts.sent.fetch_add(msg.serialized_len() as u64, Ordering::Relaxed);
        self.inner.send(to, msg).await
    }

    /// Cancellable, as chitchat needs: nothing is kept between the inner receives.
    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (from, msg) = self.inner.recv().await?;
            let Some(why) = self.stranger(from) else { return Ok((from, msg)) };
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
}
