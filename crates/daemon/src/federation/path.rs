//! The federation's data path on a gateway. A connection to a remote cluster's service
//! comes to one of our gateways' egress port as an `AXFD` request (from the client
//! app's node: its daemon writes it, with the app's address and labels), and the
//! gateway carries it on:
//!
//! - **egress**: it opens a session to the ingress (`--federation-gateway-port`) of a
//!   live gateway of the service's cluster, chosen at random, the others tried should
//!   one not answer, and asks it the same request;
//! - **ingress**: a gateway takes sessions from other clusters' gateways only (under
//!   `--tls`, a certificate from the CA naming a gateway the WAN shows; without, the
//!   addresses the WAN gossip hears), checks the client's labels against the service's
//!   rows in its own cluster ([`ax_core::Table::route_inbound`]: nothing else is
//!   reachable through it) and connects to a backend, which is shown the client's
//!   address under the kernel driver.
//!
//! A session carries one connection, its bytes unframed: splice(2) in the relays'
//! event loops where both sides are plain TCP; under `--tls` TLS 1.3 in user space (this
//! kernel offers no kTLS). Each session's answer line is the errno of the far end's
//! connect, so the client app's connect fails as a direct one would. Sessions are
//! opened ahead ([`WARM`] per remote gateway in use, handshakes done): a new connection
//! takes one and pays no TCP or TLS handshake across the WAN.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ax_api::ProxyView;
use ax_cluster::federation::RemoteGateway;
use ax_cluster::udp::Allowed;
use ax_core::tunnel::{parse_answer, Request, MAX_ANSWER, MAX_REQUEST};
use ax_core::{addr::unmap, Errno, Proto, Route};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use crate::bounds::{Burst, Gate, Permit};
use crate::tunnel::{self, answer, copy, read_line, step};
use crate::Daemon;

/// The ALPN protocol of sessions between gateways.
const ALPN: &[u8] = b"ax-federation";
/// The share of the ingress one address may hold at most (a quarter), so that one
/// remote gateway, hostile or stuck, cannot shut the other clusters out.
const PER_GATEWAY_SHARE: usize = 4;
/// Sessions kept open ahead per remote gateway that connections go to.
const WARM: usize = 4;
/// How long a session opened ahead is used: less than the ingress waits for its
/// request ([`REQUEST_WAIT`]), so that one taken is still served.
const WARM_AGE: Duration = Duration::from_secs(20);
/// How long the ingress waits for a session's request (sessions are opened ahead).
const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// A stream a connection is carried on: plain TCP or a TLS session over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A session to another cluster's gateway, its request answered.
pub enum Session {
    Plain(TcpStream),
    Tls(Box<dyn Stream>),
}

/// A remote gateway, as sessions opened ahead are kept: its ingress and its name.
type GatewayKey = (SocketAddrV4, String);

/// A gateway's side of the federation's data path.
pub struct Path {
    /// `--tls`: sessions are TLS 1.3 with certificates from the CA, both ways.
    tls: Option<(TlsConnector, TlsAcceptor)>,
    /// Without `--tls`: the addresses the ingress takes sessions from (those the WAN
    /// gossip hears).
    allowed: Option<Allowed>,
    /// The ingress's bound, and the sessions carried out's (their counts are what `ax
    /// get proxies` shows).
    ingress: Gate,
    egress: Gate,
    /// Sessions at the ingress still waiting for their request (opened ahead): not
    /// counted as carried.
    waiting: AtomicUsize,
    refused: Mutex<Burst>,
    /// Sessions opened ahead, by remote gateway (ingress and name), oldest first.
    warm: Mutex<HashMap<GatewayKey, VecDeque<(Session, Instant)>>>,
    /// Remote gateways whose warm sessions are being opened now.
    filling: Mutex<HashSet<GatewayKey>>,
}

impl Path {
    pub fn new(tls: Option<&Arc<ax_tls::Reloadable>>, allowed: Option<Allowed>, cap: usize) -> Path {
        let tls = tls.map(|t| {
            let connector = TlsConnector::from(Arc::new(t.client_config(&[ALPN])));
            (connector, TlsAcceptor::from(Arc::new(t.node_server_config(&[ALPN]))))
        });
        Path {
            tls,
            allowed,
            ingress: Gate::new("federation ingress", cap).per_peer((cap / PER_GATEWAY_SHARE).max(1)),
            egress: Gate::new("federation egress", cap),
            waiting: AtomicUsize::new(0),
            refused: Mutex::default(),
            warm: Mutex::default(),
            filling: Mutex::default(),
        }
    }

    /// Opens a session for `request` (an `AXFD`) to a gateway of the service's
    /// cluster and asks it there: the first gateway that answers, in random order. Its
    /// answer is final (a refusal there is the connect's); one that cannot be reached
    /// leaves the next to try. The permit holds the session's place under the egress's
    /// bound.
    pub async fn open(self: &Arc<Self>, daemon: &Daemon, request: &Request) -> Result<(Session, Permit), Errno> {
        let Request::Federate { service, .. } = request else { return Err(libc::ECONNREFUSED) };
        let mut gateways = daemon.read(|s| {
            let cluster = s.table.federated(Proto::Tcp, *service)?.cluster.clone();
            s.gateway.as_ref()?.remote.get(&cluster).cloned()
        });
        let Some(gateways) = gateways.as_mut().filter(|g| !g.is_empty()) else {
            debug!(%service, "federation: no gateway of the service's cluster");
            return Err(libc::ECONNREFUSED);
        };
        // A full egress refuses, as a server whose backlog is full would.
        let permit = self.egress.claim().ok_or(libc::ECONNREFUSED)?;
        // At random, so that sessions spread over the cluster's gateways.
        fastrand::shuffle(gateways);
        let mut last = libc::ECONNREFUSED;
        for g in gateways.iter() {
            loop {
                // One opened ahead first; one the far end closed since is passed over.
                let (mut session, ahead) = match self.take_warm(g) {
                    Some(s) => (s, true),
                    None => match self.session(g).await {
                        Ok(s) => (s, false),
                        Err(e) => {
                            debug!(gateway = %g.name, ingress = %g.ingress, errno = e, "federation: no session");
                            last = e;
                            break;
                        }
                    },
                };
                let asked = match &mut session {
                    Session::Plain(s) => ask(s, request, |s| Box::pin(tunnel::peek_line(s, MAX_ANSWER))).await,
                    Session::Tls(s) => ask(s, request, |s| Box::pin(read_line(s, MAX_ANSWER))).await,
                };
                match asked {
                    Ok(answer) => {
                        self.fill(g);
                        return answer.map(|()| (session, permit));
                    }
                    Err(_) if ahead => continue,
                    Err(e) => {
                        last = e;
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// A session opened ahead to `g` and still young enough, if one is there. Those
    /// too old are closed, for every gateway (one no connection goes to any more keeps
    /// none).
    fn take_warm(&self, g: &RemoteGateway) -> Option<Session> {
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        for ready in warm.values_mut() {
            ready.retain(|(_, at)| at.elapsed() < WARM_AGE);
        }
        warm.retain(|_, ready| !ready.is_empty());
        warm.get_mut(&(g.ingress, g.name.clone()))?.pop_front().map(|(session, _)| session)
    }

    /// Opens sessions ahead to `g` until [`WARM`] young ones wait (in the background;
    /// once at a time per gateway; it stops at the first that cannot be opened).
    fn fill(self: &Arc<Self>, g: &RemoteGateway) {
        let key = (g.ingress, g.name.clone());
        if !self.filling.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone()) {
            return;
        }
        let (path, g) = (self.clone(), g.clone());
        tokio::spawn(async move {
            loop {
                let young = {
                    let mut warm = path.warm.lock().unwrap_or_else(|p| p.into_inner());
                    let ready = warm.entry(key.clone()).or_default();
                    ready.retain(|(_, at)| at.elapsed() < WARM_AGE);
                    ready.len()
                };
                if young >= WARM {
                    break;
                }
                let Ok(session) = path.session(&g).await else { break };
                let mut warm = path.warm.lock().unwrap_or_else(|p| p.into_inner());
                warm.entry(key.clone()).or_default().push_back((session, Instant::now()));
            }
            path.filling.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
    }

    /// A session to `g`'s ingress; under `--tls`, its certificate must name `g`.
    async fn session(&self, g: &RemoteGateway) -> Result<Session, Errno> {
        let tcp = step(TcpStream::connect(g.ingress)).await?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, _)) = &self.tls else { return Ok(Session::Plain(tcp)) };
        let tls = step(connector.connect(ServerName::IpAddress(IpAddr::V4(*g.ingress.ip()).into()), tcp)).await?;
        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        if !cert.is_some_and(|c| ax_tls::names(c, &g.name)) {
            self.refuse(SocketAddr::V4(g.ingress), &format!("its certificate does not name gateway {}", g.name));
            return Err(libc::ECONNREFUSED);
        }
        Ok(Session::Tls(Box::new(tls)))
    }

    /// Without `--tls`: whether a session from `ip` may be another cluster's gateway's:
    /// an address the WAN gossip hears, none of our cluster's (its nodes, its gateways'
    /// WAN addresses), so that no host of ours passes for another cluster.
    fn hears(&self, daemon: &Daemon, ip: IpAddr) -> bool {
        let IpAddr::V4(v4) = ip else { return false };
        self.allowed.as_ref().is_some_and(|a| a.allows(ip))
            && !daemon.read(|s| {
                let me = s.table.node();
                let ours = s.nodes.iter().filter(|n| n.node.cluster == me.cluster);
                let gateways = ours.filter_map(|n| n.gateway.as_ref().map(|g| *g.ingress.ip()));
                let own = s.gateway.as_ref().map(|g| [g.config.ip, g.config.advertise]);
                s.table.is_node_address(v4) || gateways.chain(own.into_iter().flatten()).any(|g| g == v4)
            })
    }

    /// `ax get proxies`: the ingress (dialing any of the cluster's backends) and the
    /// egress, the node's egress port (dialing the other clusters' ingresses), with
    /// the sessions each carries now; numbered from `first_id`.
    pub fn views(&self, daemon: &Daemon, ingress: SocketAddrV4, first_id: u32) -> Vec<ProxyView> {
        let remote: Vec<String> = daemon.read(|s| {
            let g = s.gateway.as_ref().map(|g| g.remote.values().flatten().map(|r| r.ingress.to_string()));
            g.map(Iterator::collect).unwrap_or_default()
        });
        let any = vec!["0.0.0.0:0".to_string()];
        let egress = SocketAddrV4::new(daemon.node_ip(), ax_core::EGRESS_PORT);
        let view = |id, listener: SocketAddrV4, dialers: Vec<String>, sessions: usize| ProxyView {
            id,
            proto: Proto::Tcp,
            listener: listener.to_string(),
            dialers,
            sessions: Some(sessions as u64),
        };
        let carried_in = self.ingress.open().saturating_sub(self.waiting.load(Ordering::Relaxed));
        vec![
            view(first_id, ingress, any.clone(), carried_in),
            view(first_id + 1, egress, if remote.is_empty() { any } else { remote }, self.egress.open()),
        ]
    }

    /// Logs a refusal: the first of a burst, then at most one line per quiet period.
    fn refuse(&self, peer: SocketAddr, why: &str) {
        if let Some(n) = self.refused.lock().unwrap_or_else(|p| p.into_inner()).hit(Instant::now()) {
            warn!(%peer, refused = n, "federation: refused: {why}");
        }
    }
}

/// Answers the request `conn` made with what opening its session came to, then carries
/// the connection on the session.
pub async fn answer_and_carry(
    conn: &mut (impl AsyncRead + AsyncWrite + Unpin),
    opened: Result<(Session, Permit), Errno>,
) {
    if !answer(conn, &opened).await {
        return;
    }
    match opened {
        Ok((Session::Plain(mut s), _held)) => copy(conn, &mut s).await,
        Ok((Session::Tls(mut s), _held)) => copy(conn, &mut s).await,
        Err(_) => {}
    }
}

/// Writes `request` on `s` and reads the answer: the far end's word (Ok), or what
/// kept it from being heard (Err).
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &Request,
    answer: impl FnOnce(&mut S) -> LineRead<'_>,
) -> Result<Result<(), Errno>, Errno> {
    step(s.write_all(&request.line())).await?;
    Ok(parse_answer(&step(answer(s)).await?))
}

/// A line being read (by [`tunnel::peek_line`] on plain TCP, [`read_line`] on TLS).
type LineRead<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<u8>>> + Send + 'a>>;

/// Serves the ingress on `listener` (the gateway's `--federation-gateway-port`), on the
/// runtime this is called from.
pub fn spawn_ingress(listener: std::net::TcpListener, daemon: Daemon, path: Arc<Path>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let over = if path.tls.is_some() { "TLS" } else { "TCP, unauthenticated" };
    info!(at = %listener.local_addr()?, over, "federation gateway: serving the ingress");
    tokio::spawn(async move {
        let p = path.clone();
        let served = p.ingress.serve_async(&listener, std::future::pending(), |conn, permit| {
            tokio::spawn(ingress(daemon.clone(), path.clone(), conn, permit));
        });
        if let Err(e) = served.await {
            warn!("the federation ingress stopped: {e}");
        }
    });
    Ok(())
}

/// One session from another cluster's gateway.
async fn ingress(daemon: Daemon, path: Arc<Path>, conn: TcpStream, permit: Permit) {
    let Ok(peer) = conn.peer_addr() else { return };
    let _ = conn.set_nodelay(true);
    match &path.tls {
        None => {
            if !path.hears(&daemon, unmap(peer).ip()) {
                return path.refuse(peer, "a session from no other cluster's gateway the federation's gossip hears");
            }
            let mut conn = conn;
            let Some(request) = read_request(&path, tunnel::peek_line(&mut conn, MAX_REQUEST), peer).await else {
                return;
            };
            let out = inbound(&daemon, &request).await;
            if !answer(&mut conn, &out).await {
                return;
            }
            match out {
                Ok(Backend::Plain(b)) => {
                    let (Ok(a), Ok(b)) = (conn.into_std(), b.into_std()) else { return };
                    match daemon.pump() {
                        Ok(pump) => pump.carry(a, b, permit),
                        Err(e) => warn!("federation: cannot start the relay loops: {e}"),
                    }
                }
                Ok(Backend::Tunnel(mut b)) => copy(&mut conn, &mut b).await,
                Err(_) => {}
            }
        }
        Some((_, acceptor)) => {
            let mut tls = match step(acceptor.accept(conn)).await {
                Ok(t) => t,
                Err(_) => return path.ingress.handshake_failed(Some(peer), &"no certificate from the CA in time"),
            };
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let gateway = daemon.read(|s| {
                let g = s.gateway.as_ref()?;
                let known = g.remote.values().flatten();
                known.map(|r| &r.name).find(|name| cert.is_some_and(|c| ax_tls::names(c, name))).cloned()
            });
            if gateway.is_none() {
                return path.refuse(peer, "its certificate names no gateway of another cluster");
            }
            let Some(request) = read_request(&path, read_line(&mut tls, MAX_REQUEST), peer).await else { return };
            let out = inbound(&daemon, &request).await;
            if !answer(&mut tls, &out).await {
                return;
            }
            match out {
                Ok(Backend::Plain(mut b)) => copy(&mut tls, &mut b).await,
                Ok(Backend::Tunnel(mut b)) => copy(&mut tls, &mut b).await,
                Err(_) => {}
            }
            drop(permit);
        }
    }
}

/// Reads a session's request: an `AXFD`, nothing else (counted as waiting meanwhile).
async fn read_request(
    path: &Path,
    line: impl std::future::Future<Output = std::io::Result<Vec<u8>>>,
    peer: SocketAddr,
) -> Option<Request> {
    path.waiting.fetch_add(1, Ordering::Relaxed);
    let line = tokio::time::timeout(REQUEST_WAIT, line).await;
    path.waiting.fetch_sub(1, Ordering::Relaxed);
    let line = line.ok()?.ok()?;
    match Request::parse(&line) {
        Ok(r @ Request::Federate { .. }) => Some(r),
        Ok(other) => {
            path.refuse(peer, &format!("'{other}' asked of the federation port"));
            None
        }
        Err(e) => {
            path.refuse(peer, &e.to_string());
            None
        }
    }
}

/// A backend connection at the ingress: on this node's network, or through the tunnel
/// of the node it is on (`--tls`).
enum Backend {
    Plain(TcpStream),
    Tunnel(Box<dyn Stream>),
}

/// Connects a session's `request` to a backend of ours that its client's labels reach:
/// the first that answers, in the balancer's order.
async fn inbound(daemon: &Daemon, request: &Request) -> Result<Backend, Errno> {
    let Request::Federate { service, client, labels } = request else { return Err(libc::ECONNREFUSED) };
    let route = ax_trap::Node::with_table(daemon, |t| t.route_inbound(labels, *service));
    let Route::Backends(targets) = route else {
        debug!(%service, %client, "federation ingress: refused (no service of ours its labels reach)");
        return Err(libc::ECONNREFUSED);
    };
    let tunnel = daemon.tunnel_client();
    let mut last = libc::ECONNREFUSED;
    for t in targets {
        let made = match &tunnel {
            Some(c) if tunnel::Client::crosses(daemon, t.addr) => {
                let hop = Request::Relay { to: t.addr, client: Some(*client) };
                c.open(daemon, *t.addr.ip(), hop).await.map(|s| Backend::Tunnel(Box::new(s)))
            }
            _ => step(tunnel::dial(daemon, t.addr, Some(*client))).await.map(Backend::Plain),
        };
        match made {
            Ok(b) => return Ok(b),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(name: &str, at: &str) -> RemoteGateway {
        RemoteGateway { name: name.into(), cluster: "c1".into(), ingress: at.parse().unwrap() }
    }

    /// Sessions opened ahead are used young and closed old, for every gateway: one no
    /// connection goes to any more keeps none.
    #[tokio::test]
    async fn sessions_opened_ahead_are_used_young_and_closed_old() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let session = || async { Session::Plain(TcpStream::connect(at).await.unwrap()) };
        let path = Path::new(None, None, 8);
        let (a, b) = (gateway("a", "10.12.0.11:6660"), gateway("b", "10.12.0.13:6660"));
        let old = Instant::now().checked_sub(WARM_AGE + Duration::from_secs(1)).unwrap();
        let made = [(&a, session().await, old), (&b, session().await, old), (&b, session().await, Instant::now())];
        for (g, s, at) in made {
            path.warm.lock().unwrap().entry((g.ingress, g.name.clone())).or_default().push_back((s, at));
        }
        assert!(path.take_warm(&b).is_some(), "b's young one");
        assert!(path.take_warm(&b).is_none(), "b's old one was closed, not used");
        assert!(path.warm.lock().unwrap().is_empty(), "a's old one closed too");
    }
}
