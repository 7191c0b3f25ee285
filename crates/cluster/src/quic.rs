//! Gossip over QUIC (`--tls`): chitchat's messages, one per unidirectional stream, on
//! QUIC connections whose TLS 1.3 handshake both sides pass with a certificate from the
//! cluster's CA (quinn on rustls, the configurations of [`ax_tls::Reloadable`]). A peer
//! without one never completes a handshake, so nothing it sends is heard.
//!
//! One endpoint per node, on the gossip port: it accepts the peers' connections and
//! dials theirs, so a connection's remote address is the peer's gossip address either
//! way, and a message is reported with it, as over UDP. The certificate a peer showed is
//! kept by address ([`Identities`]); the gossip view counts a node only if the address
//! it gossips from showed a certificate naming it.
//!
//! Sending never waits on the network: a message goes out on a task of its own, a dial
//! too (while it lasts, a few messages wait and the rest are dropped, as UDP would; a
//! dial that failed is not tried again for a few seconds). Connections are bounded
//! ([`MAX_LINKS`]; the least recently used goes first) and close after [`IDLE`] unused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ax_tls::Reloadable;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::hush::Hush;
use crate::wire::{self, SelfId};

/// The application protocol both sides name in the handshake.
pub const ALPN: &[u8] = b"ax-gossip";
/// Chitchat's messages fit a UDP datagram; a longer stream is not one of them.
const MAX_MESSAGE: usize = 65_536;
/// Connections and dials at once. A node keeps one connection to each node it gossips
/// with, so clusters up to about this size keep theirs; past it, the least recently
/// used is closed (and made again when needed).
pub const MAX_LINKS: usize = 512;
/// A connection unused this long closes. At 4 rounds a second and 3 peers a round, a
/// node of a 300-node cluster talks to a given peer about every 25 s: a shorter time
/// would make most conversations begin with a handshake.
const IDLE: Duration = Duration::from_secs(30);
/// Dials in progress at once; messages needing another are dropped.
const MAX_DIALS: usize = 32;
/// Messages that wait for a dial; more are dropped (gossip repeats itself).
const QUEUED: usize = 4;
/// Messages being sent on one connection at once; more are dropped, so a peer that
/// reads slowly (or asks for replies faster than it reads them) holds at most this many
/// messages' memory and tasks here.
const SENDING: usize = 8;
/// After a failed dial, messages to that address are dropped for this long.
const REDIAL: Duration = Duration::from_secs(5);
/// Messages received and not yet taken by chitchat; more are dropped.
const INBOX: usize = 1024;
/// The gossip socket's receive buffer (the kernel caps it at net.core.rmem_max).
const RECV_BUFFER: usize = 4 << 20;
/// Concurrent streams (messages being read) per connection.
const STREAMS: u32 = 64;
/// Peers' certificates remembered; past this, the one seen longest ago is forgotten.
const IDENTITIES: usize = 4096;
/// How long a handshake, or a message's send, may take: a peer that stalls either
/// holds nothing longer (gossip rounds are 250 ms; a message this late is stale).
const STEP: Duration = Duration::from_secs(5);
/// How often the peers' certificates are checked again against the files in use.
const RECHECK: Duration = Duration::from_secs(30);
/// The name a dial asks for. Not checked: any certificate from the CA passes the
/// handshake, and the name it carries is checked against the name the peer gossips
/// under (see [`Identities::proves`]).
const SERVER_NAME: &str = "ax-node";

/// The TLS configuration cannot carry QUIC (it lacks TLS 1.3's AES-128-GCM suite).
#[derive(Debug, thiserror::Error)]
#[error("cannot gossip over QUIC with this TLS configuration: {0}")]
pub struct QuicError(#[from] NoInitialCipherSuite);

/// The certificates peers showed at handshakes with this node, by their address.
#[derive(Debug, Default)]
pub struct Identities {
    certs: Mutex<HashMap<SocketAddr, Proven>>,
}

#[derive(Debug)]
struct Proven {
    /// The chain shown, leaf first.
    chain: Vec<CertificateDer<'static>>,
    at: Instant,
    /// The last name asked about and the answer (the same name is asked every round).
    asked: Option<(String, bool)>,
}

impl Identities {
    /// Whether the peer at `addr` showed this node, at its last handshake, a
    /// certificate (from the CA) naming node `name`.
    pub fn proves(&self, addr: SocketAddr, name: &str) -> bool {
        let mut certs = lock(&self.certs);
        let Some(p) = certs.get_mut(&addr) else { return false };
        match &p.asked {
            Some((asked, answer)) if asked == name => *answer,
            _ => {
                let answer = ax_tls::names(&p.chain[0], name);
                p.asked = Some((name.to_string(), answer));
                answer
            }
        }
    }

    /// Forgets the peers whose chains the current files no longer accept (expired, or
    /// the CA replaced); their addresses.
    fn forget_unless(&self, accepted: impl Fn(&[CertificateDer<'static>]) -> bool) -> Vec<SocketAddr> {
        let mut certs = lock(&self.certs);
        let gone: Vec<SocketAddr> = certs.iter().filter(|(_, p)| !accepted(&p.chain)).map(|(a, _)| *a).collect();
        for a in &gone {
            certs.remove(a);
        }
        gone
    }

    fn record(&self, addr: SocketAddr, chain: Vec<CertificateDer<'static>>) {
        let mut certs = lock(&self.certs);
        if certs.len() >= IDENTITIES && !certs.contains_key(&addr) {
            if let Some(oldest) = certs.iter().min_by_key(|(_, p)| p.at).map(|(a, _)| *a) {
                certs.remove(&oldest);
            }
        }
        certs.insert(addr, Proven { chain, at: Instant::now(), asked: None });
    }
}

/// What gossip trusts under `--tls`: the certificates peers showed at handshakes (who
/// is at an address), and the files to seal this node's state and check the others'
/// with ([`crate::signed`]).
#[derive(Debug, Clone)]
pub struct Trust {
    pub identities: Arc<Identities>,
    pub tls: Arc<Reloadable>,
}

/// Chitchat's transport over QUIC, for one node.
pub struct QuicTransport {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    shared: Arc<Shared>,
    tls: Arc<Reloadable>,
}

impl QuicTransport {
    /// Presents this node's certificate and requires one from the CA of `tls`, at every
    /// handshake (a reload reaches the next handshake).
    pub fn new(tls: &Arc<Reloadable>) -> Result<QuicTransport, QuicError> {
        let mut transport = TransportConfig::default();
        transport
            .max_idle_timeout(Some(IdleTimeout::try_from(IDLE).expect("30 s is a QUIC idle timeout")))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(STREAMS))
            .stream_receive_window(VarInt::from_u32(MAX_MESSAGE as u32))
            .receive_window(VarInt::from_u32(4 * MAX_MESSAGE as u32));
        let transport = Arc::new(transport);
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls.node_server_config(&[ALPN]))?));
        server.transport_config(transport.clone());
        // A peer is known by its address: it may not move during a connection.
        server.migration(false);
        server.max_incoming(MAX_LINKS / 2);
        let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls.client_config(&[ALPN]))?));
        client.transport_config(transport);
        let shared = Arc::new(Shared {
            links: Mutex::new(HashMap::new()),
            identities: Arc::default(),
            me: SelfId::default(),
            refused: Hush::default(),
            closed_bytes: AtomicU64::new(0),
            failures: Hush::default(),
        });
        Ok(QuicTransport { server, client, shared, tls: tls.clone() })
    }

    /// Where to say which node this transport serves, before gossip starts on it (a
    /// delta about that node is then refused).
    pub fn self_id(&self) -> SelfId {
        self.shared.me.clone()
    }

    /// What gossip over this transport trusts (for [`crate::gossip::Gossip`]).
    pub fn trust(&self) -> Trust {
        Trust { identities: self.shared.identities.clone(), tls: self.tls.clone() }
    }

    /// Bytes sent so far in UDP datagrams (handshakes, messages, acknowledgements).
    pub fn bytes_sent(&self) -> u64 {
        let live: u64 = lock(&self.shared.links)
            .values()
            .filter_map(|l| match l {
                Link::Up { conn, .. } => Some(conn.stats().udp_tx.bytes),
                _ => None,
            })
            .sum();
        self.shared.closed_bytes.load(Ordering::Relaxed) + live
    }
}

#[async_trait::async_trait]
impl Transport for QuicTransport {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = std::net::UdpSocket::bind(listen)
            .map_err(|e| anyhow::anyhow!("failed to bind to {listen}/UDP for gossip: {e}"))?;
        // A message is tens of datagrams, and a node takes several at once: the default
        // buffer drops some, and a handshake whose packets are lost backs off for long.
        let state = quinn::udp::UdpSocketState::new((&socket).into())?;
        if let Err(e) = state.set_recv_buffer_size((&socket).into(), RECV_BUFFER) {
            debug!("cannot enlarge the gossip socket's receive buffer: {e}");
        }
        let runtime = quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for QUIC"))?;
        let mut endpoint = Endpoint::new(quinn::EndpointConfig::default(), Some(self.server.clone()), socket, runtime)?;
        endpoint.set_default_client_config(self.client.clone());
        let (tx, inbox) = mpsc::channel(INBOX);
        let node = Node { endpoint, shared: self.shared.clone(), inbox: tx, port: listen.port() };
        tokio::spawn(node.clone().accept());
        tokio::spawn(recheck(Arc::downgrade(&self.shared), self.tls.clone()));
        Ok(Box::new(QuicSocket { node, inbox }))
    }
}

struct Shared {
    links: Mutex<HashMap<SocketAddr, Link>>,
    identities: Arc<Identities>,
    /// This node (deltas about it are refused: [`wire`]).
    me: SelfId,
    /// Messages dropped by [`wire::check`], logged once a minute per peer.
    refused: Hush<SocketAddr>,
    /// UDP bytes sent on connections that have closed.
    closed_bytes: AtomicU64,
    failures: Hush<SocketAddr>,
}

enum Link {
    /// Messages waiting for the dial.
    Dialing(Vec<Vec<u8>>),
    Up {
        conn: Connection,
        used: Instant,
        /// Messages being sent on it.
        sending: Arc<AtomicUsize>,
    },
    Failed(Instant),
}

/// What every task of a node's transport shares.
#[derive(Clone)]
struct Node {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    inbox: mpsc::Sender<(SocketAddr, ChitchatMessage)>,
    port: u16,
}

impl Node {
    fn send(&self, to: SocketAddr, bytes: Vec<u8>) {
        let now = Instant::now();
        let mut links = lock(&self.shared.links);
        match links.get_mut(&to) {
            Some(Link::Up { conn, used, sending }) => {
                *used = now;
                write(conn, sending, bytes);
                return;
            }
            Some(Link::Dialing(queue)) => {
                if queue.len() < QUEUED {
                    queue.push(bytes);
                }
                return;
            }
            Some(Link::Failed(at)) if now.duration_since(*at) < REDIAL => return,
            _ => {}
        }
        // Dials go to addresses gossip names, which anyone in it can make up: a few at
        // a time, and never at the cost of a connection in use.
        let dialing = links.values().filter(|l| matches!(l, Link::Dialing(_))).count();
        if dialing >= MAX_DIALS || !make_room(&mut links, to, IDLE / 2) {
            debug!(%to, dialing, "gossip message dropped: no room for another dial");
            return;
        }
        links.insert(to, Link::Dialing(vec![bytes]));
        drop(links);
        tokio::spawn(self.clone().dial(to));
    }

    async fn dial(self, to: SocketAddr) {
        let made = match self.endpoint.connect(to, SERVER_NAME) {
            Ok(connecting) => match tokio::time::timeout(STEP, connecting).await {
                Ok(done) => done.inspect_err(|e| self.failed(to, e)).ok(),
                Err(_) => {
                    debug!(%to, "gossip dial not done within {STEP:?}: dropped");
                    None
                }
            },
            Err(e) => {
                debug!(%to, "cannot dial for gossip: {e}");
                None
            }
        };
        match made {
            Some(conn) => self.up(conn),
            None => {
                let mut links = lock(&self.shared.links);
                if matches!(links.get(&to), Some(Link::Dialing(_))) {
                    links.insert(to, Link::Failed(Instant::now()));
                }
            }
        }
    }

    /// Accepts the peers' connections: from their gossip port only (a node gossips from
    /// nowhere else).
    async fn accept(self) {
        while let Some(incoming) = self.endpoint.accept().await {
            let from = incoming.remote_address();
            if from.port() != self.port {
                if let Some(hushed) = self.shared.failures.speak(from) {
                    warn!(%from, hushed, "gossip handshake refused: not from the gossip port {}", self.port);
                }
                incoming.ignore();
                continue;
            }
            // An address not yet validated is sent a Retry first: a spoofed source never
            // gets past it, so it costs no handshake (no signature, no state).
            if !incoming.remote_address_validated() && incoming.may_retry() {
                let _ = incoming.retry();
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(STEP, incoming).await {
                    Ok(Ok(conn)) => node.up(conn),
                    Ok(Err(e)) => node.failed(from, &e),
                    Err(_) => debug!(%from, "gossip handshake not done within {STEP:?}: dropped"),
                }
            });
        }
    }

    /// A handshake passed: keeps the certificate shown, sends what waited, reads.
    fn up(&self, conn: Connection) {
        let peer = conn.remote_address();
        let Some(chain) = chain(&conn) else {
            // Cannot happen: both configurations require a certificate.
            conn.close(VarInt::from_u32(1), b"no certificate");
            return;
        };
        self.shared.identities.record(peer, chain);
        let (queued, sending) = {
            let mut links = lock(&self.shared.links);
            let queued = match links.remove(&peer) {
                Some(Link::Dialing(queued)) => queued,
                _ => Vec::new(),
            };
            if !make_room(&mut links, peer, Duration::ZERO) {
                drop(links);
                conn.close(VarInt::from_u32(2), b"too many connections");
                return;
            }
            let sending = Arc::new(AtomicUsize::new(0));
            links.insert(peer, Link::Up { conn: conn.clone(), used: Instant::now(), sending: sending.clone() });
            (queued, sending)
        };
        for bytes in queued {
            write(&conn, &sending, bytes);
        }
        tokio::spawn(self.clone().read(conn));
    }

    /// The peer's messages, a stream each, until the connection closes.
    async fn read(self, conn: Connection) {
        let from = conn.remote_address();
        while let Ok(mut stream) = conn.accept_uni().await {
            let (inbox, shared) = (self.inbox.clone(), self.shared.clone());
            tokio::spawn(async move {
                let bytes = match stream.read_to_end(MAX_MESSAGE).await {
                    Ok(bytes) => bytes,
                    Err(e) => return debug!(%from, "gossip message not read: {e}"),
                };
                if let Err(why) = wire::check(&bytes, shared.me.get()) {
                    if let Some(hushed) = shared.refused.speak(from) {
                        warn!(%from, hushed, "gossip message dropped: {why}");
                    }
                    return;
                }
                match ChitchatMessage::deserialize(&mut &bytes[..]) {
                    // Full: dropped, as a datagram would be.
                    Ok(msg) => drop(inbox.try_send((from, msg))),
                    Err(e) => debug!(%from, "gossip message not read: {e}"),
                }
            });
        }
        self.shared.closed_bytes.fetch_add(conn.stats().udp_tx.bytes, Ordering::Relaxed);
        let mut links = lock(&self.shared.links);
        if matches!(links.get(&from), Some(Link::Up { conn: c, .. }) if c.stable_id() == conn.stable_id()) {
            links.remove(&from);
        }
    }

    fn failed(&self, peer: SocketAddr, e: &ConnectionError) {
        match e {
            // Nobody there (yet): the seeds of a whole subnet, a node down.
            ConnectionError::TimedOut => debug!(%peer, "gossip dial failed: {e}"),
            _ => {
                if let Some(hushed) = self.shared.failures.speak(peer) {
                    warn!(
                        %peer,
                        hushed,
                        "gossip handshake failed: {e} (a peer needs a certificate from the cluster's CA; logged once a \
                         minute per address)"
                    );
                }
            }
        }
    }
}

/// Makes room in `links` for `peer`: forgets failed dials, then closes the least
/// recently used connection if it has been unused for `idle` at least. False when
/// there is none such.
fn make_room(links: &mut HashMap<SocketAddr, Link>, peer: SocketAddr, idle: Duration) -> bool {
    if links.len() < MAX_LINKS || links.contains_key(&peer) {
        return true;
    }
    links.retain(|_, l| !matches!(l, Link::Failed(_)));
    if links.len() < MAX_LINKS {
        return true;
    }
    let idlest = links
        .iter()
        .filter_map(|(a, l)| match l {
            Link::Up { used, .. } if used.elapsed() >= idle => Some((*used, *a)),
            _ => None,
        })
        .min();
    let Some((_, addr)) = idlest else { return false };
    if let Some(Link::Up { conn, .. }) = links.remove(&addr) {
        conn.close(VarInt::from_u32(0), b"idle");
    }
    true
}

/// Sends a message on a stream of its own, on a task of its own; dropped if [`SENDING`]
/// are being sent on `conn` already.
fn write(conn: &Connection, sending: &Arc<AtomicUsize>, bytes: Vec<u8>) {
    if sending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < SENDING).then_some(n + 1)).is_err() {
        debug!(peer = %conn.remote_address(), "gossip message dropped: {SENDING} being sent to this peer already");
        return;
    }
    let (conn, sending) = (conn.clone(), sending.clone());
    tokio::spawn(async move {
        let sent = async {
            let mut stream = conn.open_uni().await?;
            stream.write_all(&bytes).await?;
            stream.finish()?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(STEP, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(peer = %conn.remote_address(), "gossip message not sent: {e:#}"),
            Err(_) => debug!(peer = %conn.remote_address(), "gossip message not sent within {STEP:?}: dropped"),
        }
        sending.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Every [`RECHECK`], checks the chains peers showed against the files in use (a reload
/// may have replaced the CA; a certificate may have expired since): a peer no longer
/// accepted is forgotten, so it counts nowhere, and its connection is closed. Ends with
/// the transport.
async fn recheck(shared: std::sync::Weak<Shared>, tls: Arc<Reloadable>) {
    loop {
        tokio::time::sleep(RECHECK).await;
        let Some(shared) = shared.upgrade() else { return };
        let current = tls.current();
        let gone = shared.identities.forget_unless(|chain| current.check(chain).is_ok());
        let mut links = lock(&shared.links);
        for addr in gone {
            warn!(peer = %addr, "gossip: the certificate this peer showed is no longer accepted (expired, or another CA): disconnected");
            if let Some(Link::Up { conn, .. }) = links.remove(&addr) {
                conn.close(VarInt::from_u32(3), b"certificate no longer accepted");
            }
        }
    }
}

/// The certificate chain the peer showed (not empty).
fn chain(conn: &Connection) -> Option<Vec<CertificateDer<'static>>> {
    let chain = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    (!chain.is_empty()).then_some(*chain)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct QuicSocket {
    node: Node,
    inbox: mpsc::Receiver<(SocketAddr, ChitchatMessage)>,
}

#[async_trait::async_trait]
impl Socket for QuicSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.node.send(to, msg.serialize_to_vec());
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inbox.recv().await.ok_or_else(|| anyhow::anyhow!("the gossip endpoint closed"))
    }
}

impl Drop for QuicSocket {
    fn drop(&mut self) {
        self.node.endpoint.close(VarInt::from_u32(0), b"gossip stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn() -> ChitchatMessage {
        ChitchatMessage::Syn { cluster_id: "c".into(), digest: Default::default() }
    }

    #[test]
    fn a_peer_whose_certificate_the_files_no_longer_accept_is_forgotten() {
        let dir = std::env::temp_dir().join(format!("ax-quic-forget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = ax_tls::write_test_pki(&dir, &["a".into(), "b".into()]).unwrap();
        let other = ax_tls::write_test_pki(&dir.join("other"), &["c".into()]).unwrap();
        let tls = ax_tls::Tls::load(&pki.files("a"), Some("a")).unwrap();
        let pem = |f: ax_tls::Files| {
            use rustls::pki_types::pem::PemObject;
            vec![CertificateDer::from_pem_file(f.cert).unwrap()]
        };
        let ids = Identities::default();
        let (b, c): (SocketAddr, SocketAddr) = ("10.0.0.2:7946".parse().unwrap(), "10.0.0.3:7946".parse().unwrap());
        ids.record(b, pem(pki.files("b")));
        ids.record(c, pem(other.files("c")));
        assert!(ids.proves(b, "b") && ids.proves(c, "c"));
        assert_eq!(ids.forget_unless(|chain| tls.check(chain).is_ok()), vec![c]);
        assert!(ids.proves(b, "b"));
        assert!(!ids.proves(c, "c"), "forgotten: it counts nowhere");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Nodes a and b on 127.0.`net`.1 and .2, one port, with certificates from a test CA.
    struct Pair {
        dir: std::path::PathBuf,
        a: SocketAddr,
        b: SocketAddr,
        ta: QuicTransport,
        tb: QuicTransport,
        sa: Box<dyn Socket>,
        sb: Box<dyn Socket>,
    }

    impl Pair {
        async fn new(net: u8) -> Pair {
            let dir = std::env::temp_dir().join(format!("ax-quic-pair-{net}-{}", std::process::id()));
            let pki = ax_tls::write_test_pki(&dir, &["a".into(), "b".into()]).unwrap();
            let port = std::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, net, 1), 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let (a, b): (SocketAddr, SocketAddr) = (([127, 0, net, 1], port).into(), ([127, 0, net, 2], port).into());
            let transport = |n: &str| {
                let tls = ax_tls::Reloadable::new(ax_tls::Tls::load(&pki.files(n), None).unwrap(), None);
                QuicTransport::new(&tls).unwrap()
            };
            let (ta, tb) = (transport("a"), transport("b"));
            let (sa, sb) = (ta.open(a).await.unwrap(), tb.open(b).await.unwrap());
            Pair { dir, a, b, ta, tb, sa, sb }
        }
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_dialling_each_other_at_once_both_hear() {
        let mut p = Pair::new(5).await;
        let (a, b) = (p.a, p.b);
        for _ in 0..3 {
            p.sa.send(b, syn()).await.unwrap();
            p.sb.send(a, syn()).await.unwrap();
        }
        let t = Duration::from_secs(20);
        let (from, _) = tokio::time::timeout(t, p.sb.recv()).await.expect("b hears a").unwrap();
        assert_eq!(from, a);
        let (from, _) = tokio::time::timeout(t, p.sa.recv()).await.expect("a hears b").unwrap();
        assert_eq!(from, b);
        assert!(p.ta.trust().identities.proves(b, "b") && p.tb.trust().identities.proves(a, "a"));
    }

    /// Gossip names 200 addresses where nobody answers (what a member can announce): a
    /// node dials a few at a time, and its connection in use stays up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn addresses_nobody_answers_take_a_few_dials_and_no_connection_in_use() {
        let mut p = Pair::new(6).await;
        let (b, port) = (p.b, p.b.port());
        p.sa.send(b, syn()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), p.sb.recv()).await.expect("b hears a").unwrap();
        for i in 0..200u16 {
            p.sa.send(SocketAddr::from(([127, 0, 7, (i % 250) as u8 + 1], port + 1 + i / 250)), syn()).await.unwrap();
        }
        let links = |t: &QuicTransport| {
            let links = lock(&t.shared.links);
            let dialing = links.values().filter(|l| matches!(l, Link::Dialing(_))).count();
            (dialing, matches!(links.get(&b), Some(Link::Up { .. })))
        };
        let (dialing, up) = links(&p.ta);
        assert!(dialing <= MAX_DIALS, "{dialing} dials at once");
        assert!(up, "the connection to b stays");
        p.sa.send(b, syn()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), p.sb.recv()).await.expect("b still hears a").unwrap();
    }
}
