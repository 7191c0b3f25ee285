//! The DNS server on UDP and TCP. It takes its bound sockets and answers until the
//! runtime stops. Our names are answered at once; other queries are relayed byte for
//! byte to the first upstream server that answers in time.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, warn};

use crate::wire::{self, WireError};
use crate::zone::{Decision, Names, Zone};

/// How long an upstream server gets before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Our own answers change as apps come and go.
const TTL: u32 = 5;
const MAX_UDP: usize = 4096;

pub struct Dns {
    pub zone: Zone,
    pub names: Arc<dyn Names>,
    pub upstreams: Vec<SocketAddr>,
    pub strangers: Strangers,
}

/// How often dropped queries are logged, at most.
const STRANGERS_LOG_EVERY: Duration = Duration::from_secs(60);

/// Queries from sources the names refuse ([`Names::may_ask`]): dropped without an
/// answer (no REFUSED either: an answer to a forged source would make the server a
/// reflector, and silence tells a prober nothing), counted, and logged at most once a
/// minute so a flood cannot fill the log.
#[derive(Debug, Default)]
pub struct Strangers {
    dropped: AtomicU64,
    logged: Mutex<Option<Instant>>,
}

impl Strangers {
    fn note(&self, from: SocketAddr, how: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.is_none_or(|at| at.elapsed() >= STRANGERS_LOG_EVERY) {
            *logged = Some(Instant::now());
            warn!(%from, dropped, "a DNS {how} from neither this node nor a member of its cluster was dropped (logged at most once a minute)");
        }
    }

    /// How many queries (and TCP connections) were dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Reply {
    Now(Vec<u8>),
    Forward,
    Drop,
}

impl Dns {
    fn local(&self, raw: &[u8]) -> Reply {
        match wire::parse_query(raw) {
            Ok(q) => match self.zone.decide(&q, self.names.as_ref()) {
                Decision::Answer { rcode, addrs } => Reply::Now(wire::answer(&q, raw, rcode, &addrs, TTL)),
                Decision::Forward => Reply::Forward,
            },
            Err(WireError::Bad { id, rcode }) => Reply::Now(wire::error(id, rcode)),
            Err(WireError::Short) => Reply::Drop,
        }
    }

    fn servfail(raw: &[u8]) -> Option<Vec<u8>> {
        wire::id(raw).map(|id| wire::error(id, wire::RCODE_SERVFAIL))
    }

    async fn forward_udp(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let id = wire::id(raw)?;
        for up in &self.upstreams {
            let local: SocketAddr =
                if up.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
            let Ok(sock) = UdpSocket::bind(local).await else { continue };
            if sock.connect(up).await.is_err() || sock.send(raw).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; MAX_UDP];
            let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                if wire::id(&buf[..n]) == Some(id) {
                    buf.truncate(n);
                    return Some(buf);
                }
            }
            debug!(upstream = %up, "no answer in time");
        }
        Self::servfail(raw)
    }

    async fn forward_tcp(&self, raw: &[u8]) -> Option<Vec<u8>> {
        for up in &self.upstreams {
            let exchange = async {
                let mut s = TcpStream::connect(up).await?;
                s.write_all(&(raw.len() as u16).to_be_bytes()).await?;
                s.write_all(raw).await?;
                let len = s.read_u16().await? as usize;
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            };
            if let Ok(Ok(reply)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
                return Some(reply);
            }
        }
        Self::servfail(raw)
    }
}

/// Serves DNS on UDP on the calling thread, forever. Our own names are answered right
/// here, with plain blocking calls (one wake-up per query, as a single-threaded
/// server has); forwarded queries go to tasks on `rt`.
pub fn serve_udp(udp: std::net::UdpSocket, dns: Arc<Dns>, rt: tokio::runtime::Handle) {
    let udp = Arc::new(udp);
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf) else { continue };
        if !dns.names.may_ask(from.ip()) {
            dns.strangers.note(from, "query");
            continue;
        }
        let raw = &buf[..n];
        match dns.local(raw) {
            Reply::Now(reply) => {
                let _ = udp.send_to(&reply, from);
            }
            Reply::Forward => {
                let (dns, udp, raw) = (dns.clone(), udp.clone(), raw.to_vec());
                rt.spawn(async move {
                    if let Some(reply) = dns.forward_udp(&raw).await {
                        let _ = udp.send_to(&reply, from);
                    }
                });
            }
            Reply::Drop => {}
        }
    }
}

/// Serves one DNS connection over TCP: queries one after another until the client
/// stops or idles for 10 s. A connection from an address that may not ask is closed
/// unanswered. (The accept loop, with its bounds, is the caller's.)
pub async fn serve_tcp_conn(mut conn: TcpStream, dns: Arc<Dns>) {
    let Ok(from) = conn.peer_addr() else { return };
    if !dns.names.may_ask(from.ip()) {
        dns.strangers.note(from, "connection");
        return;
    }
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(Duration::from_secs(10), conn.read_u16()).await else { return };
        let mut raw = vec![0u8; len as usize];
        if conn.read_exact(&mut raw).await.is_err() {
            return;
        }
        let reply = match dns.local(&raw) {
            Reply::Now(r) => Some(r),
            Reply::Forward => dns.forward_tcp(&raw).await,
            Reply::Drop => None,
        };
        let Some(reply) = reply else { return };
        if conn.write_all(&(reply.len() as u16).to_be_bytes()).await.is_err() || conn.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{query_bytes, TYPE_A};
    use tokio::net::TcpListener;

    /// The tests' accept loop (the daemon's has its bounds).
    async fn serve_tcp(tcp: TcpListener, dns: Arc<Dns>) {
        while let Ok((conn, _)) = tcp.accept().await {
            tokio::spawn(serve_tcp_conn(conn, dns.clone()));
        }
    }

    /// One name, `web`; only 127.0.0.1 may ask.
    struct One;
    impl Names for One {
        fn addresses(&self, label: &str) -> Option<Vec<Ipv4Addr>> {
            (label == "web").then(|| vec![Ipv4Addr::new(198, 18, 0, 1)])
        }

        fn federated(&self, _: &str) -> std::collections::BTreeMap<String, Vec<Ipv4Addr>> {
            Default::default()
        }

        fn cluster(&self) -> String {
            "appswitch".into()
        }

        fn may_ask(&self, from: std::net::IpAddr) -> bool {
            from == Ipv4Addr::LOCALHOST
        }
    }

    fn dns(upstreams: Vec<SocketAddr>) -> Dns {
        Dns {
            zone: Zone::new("appswitch.local").unwrap(),
            names: Arc::new(One),
            upstreams,
            strangers: Strangers::default(),
        }
    }

    /// A stand-in upstream on loopback that answers every query with one A record.
    async fn upstream() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut b).await {
                let q = wire::parse_query(&b[..n]).unwrap();
                let _ = s.send_to(&wire::answer(&q, &b[..n], 0, &[Ipv4Addr::new(203, 0, 113, 7)], 60), from).await;
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_ours_and_forwards_the_rest_over_udp_and_tcp() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ua, ta) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let dns = Arc::new(dns(vec![upstream().await]));
        let (rt, udp_dns) = (tokio::runtime::Handle::current(), dns.clone());
        std::thread::spawn(move || serve_udp(udp, udp_dns, rt));
        tokio::spawn(serve_tcp(tcp, dns));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut b = [0u8; 512];
        for (name, want) in [("web.appswitch.local", [198, 18, 0, 1]), ("example.org", [203, 0, 113, 7])] {
            client.send_to(&query_bytes(9, name, TYPE_A), ua).await.unwrap();
            let n = client.recv(&mut b).await.unwrap();
            assert_eq!(&b[n - 4..n], &want, "{name}");
        }
        client.send_to(&query_bytes(9, "nope.appswitch.local", TYPE_A), ua).await.unwrap();
        let n = client.recv(&mut b).await.unwrap();
        assert_eq!(b[3] & 0xf, wire::RCODE_NXDOMAIN);
        assert!(n >= 12);

        let mut s = TcpStream::connect(ta).await.unwrap();
        let q = query_bytes(3, "web", TYPE_A);
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&q).await.unwrap();
        let len = s.read_u16().await.unwrap() as usize;
        let mut r = vec![0u8; len];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(&r[len - 4..], &[198, 18, 0, 1]);
    }

    #[tokio::test]
    async fn no_upstream_is_servfail() {
        let r = dns(vec![]).forward_udp(&query_bytes(5, "example.org", TYPE_A)).await.unwrap();
        assert_eq!((r[1], r[3] & 0xf), (5, wire::RCODE_SERVFAIL));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_from_strangers_get_no_answer_over_udp_or_tcp() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ua, ta) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let dns = Arc::new(dns(vec![]));
        let (rt, udp_dns) = (tokio::runtime::Handle::current(), dns.clone());
        std::thread::spawn(move || serve_udp(udp, udp_dns, rt));
        tokio::spawn(serve_tcp(tcp, dns.clone()));

        // 127.0.0.2 may not ask; 127.0.0.1 may. The stranger's query is sent first and
        // the server takes queries in order: once the member has its answer, an
        // answer to the stranger would be waiting already.
        let stranger = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let member = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(&query_bytes(7, "web", TYPE_A), ua).unwrap();
        member.send_to(&query_bytes(8, "web", TYPE_A), ua).unwrap();
        let mut b = [0u8; 512];
        let n = member.recv(&mut b).unwrap();
        assert_eq!(&b[n - 4..n], &[198, 18, 0, 1]);
        stranger.set_nonblocking(true).unwrap();
        assert_eq!(stranger.recv(&mut b).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(dns.strangers.dropped(), 1);

        // Over TCP the stranger's connection is closed unread.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = sock.connect(ta).await.unwrap();
        let q = query_bytes(3, "web", TYPE_A);
        let _ = s.write_all(&(q.len() as u16).to_be_bytes()).await;
        let _ = s.write_all(&q).await;
        let mut r = Vec::new();
        let got = s.read_to_end(&mut r).await;
        assert!(got.is_err() || r.is_empty(), "{r:?}");
        assert_eq!(dns.strangers.dropped(), 2);
    }
}
