//! The node's egress port ([`ax_core::EGRESS_PORT`]): what daemons serve each other on
//! TCP, one request line and one answer line before the bytes (see [`ax_core::tunnel`]).
//!
//! - Without `--tls` only egress gateways serve it, in the clear: a member node's
//!   address (the socket guard drops everyone else's packets; checked again here) may ask
//!   for `AXEG <dest>`. The app's own socket carries the request and then its bytes.
//! - With `--tls` every node serves it, and it is two things by who connects:
//!   - another host: the *tunnel*, TLS 1.3 with client certificates from the cluster's
//!     CA, and the certificate must name the live member at the peer's address. It
//!     serves `AXEG` (an egress gateway only) and `AXRL <host addr> [<client>]`, a hop
//!     to one of this node's own rows, for relays on other nodes; the hop's SYN names
//!     the client (kernel driver), so the server sees who the relay carries.
//!   - this node's own address: the egress *forwarder*. The app's socket cannot carry
//!     TLS (no kTLS here), so the trap engine connects it to the forwarder, which opens a
//!     tunnel to a gateway and carries the bytes. Only sockets owned by root are served:
//!     the daemon made every app's, and apps cannot reach a daemon port themselves.
//!
//! Whatever the mode, a gateway refuses destinations that are the cluster's own
//! ([`ax_core::Table::egress_refusal`]); refusals are logged, at most once per burst.
//!
//! tokio-rustls rather than rustls on blocking threads: a TLS session is one state
//! machine that both directions need, which a blocking reader would hold while it waits.
//! Plain gateway connections move their bytes with splice(2) in the relays' event
//! loops (`relay::pump`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ax_core::addr::unmap;
use ax_core::tunnel::{answer_line, parse_answer, Request, MAX_ANSWER, MAX_REQUEST};
use ax_core::{Errno, Table, EGRESS_PORT};
use ax_trap::Node;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use crate::bounds::{Burst, Gate, Permit};
use crate::federation::path::{self, Session};
use crate::{peer, Daemon};

/// The ALPN protocol of the tunnel.
const ALPN: &[u8] = b"ax-tunnel";
/// How long a dial, a handshake, or a request or answer line may take.
const STEP: Duration = Duration::from_secs(10);
/// Connections at once from a host that is none of the cluster's nodes.
const STRANGER_CONNECTIONS: usize = 8;
/// Buffer per direction when bytes are copied through user space (TLS records are up
/// to 16 KiB; larger reads cut the calls per byte).
const COPY_BUFFER: usize = 256 * 1024;
/// What a tunnel's socket is read into at once: rustls asks for 4 KiB at a time, one
/// system call each without it.
const TLS_READ_BUFFER: usize = 256 * 1024;
/// How many bytes of TLS records a session may hold for its socket (rustls's default is
/// 64 KiB): with the copy's 256 KiB reads, one write system call then carries all the
/// records one read made, instead of four.
const TLS_WRITE_BUFFER: usize = COPY_BUFFER;

/// Opens tunnels to other nodes: for the forwarder, and for relays that cross nodes.
pub struct Client {
    connector: TlsConnector,
    runtime: tokio::runtime::Handle,
    /// Nodes whose certificate does not name them, logged once per burst.
    misnamed: Mutex<Burst>,
}

impl Client {
    /// A client on the runtime this is called from.
    pub fn new(tls: &Arc<ax_tls::Reloadable>) -> Client {
        Client {
            connector: TlsConnector::from(Arc::new(tls.client_config(&[ALPN]))),
            runtime: tokio::runtime::Handle::current(),
            misnamed: Mutex::default(),
        }
    }

    /// Opens a tunnel to the member at `node` and asks it `request`; the tunnel, once the
    /// member said OK. The member must show a certificate naming it.
    pub(crate) async fn open(&self, daemon: &Daemon, node: Ipv4Addr, request: Request) -> Result<Tunnel, Errno> {
        let tcp = step(TcpStream::connect((node, EGRESS_PORT))).await?;
        let _ = tcp.set_nodelay(true);
        let tcp = BufReader::with_capacity(TLS_READ_BUFFER, tcp);
        let mut tls = step(self.connector.connect(ServerName::IpAddress(node.into()), tcp)).await?;
        tls.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        if daemon.read(|s| member_named(&s.table, node.into(), cert)).is_none() {
            if let Some(n) = self.misnamed.lock().unwrap_or_else(|p| p.into_inner()).hit(Instant::now()) {
                warn!(%node, refused = n, "tunnel: the certificate shown at that address does not name its member");
            }
            return Err(libc::ECONNREFUSED);
        }
        step(tls.write_all(&request.line())).await?;
        parse_answer(&step(read_line(&mut tls, MAX_ANSWER)).await?)?;
        Ok(tls)
    }

    /// Carries `client` to `to`, a row's host address on another node, through that
    /// node's tunnel, on the runtime, holding `guard` until it ends; the hop asks that
    /// the server be `shown` the client as that address. When the hop cannot be made,
    /// `fallback` gets the client and the guard (for the next backend).
    pub fn spawn_relay<G: Send + 'static>(
        self: Arc<Self>,
        daemon: Daemon,
        client: std::net::TcpStream,
        shown: Option<Ipv4Addr>,
        to: SocketAddrV4,
        guard: G,
        fallback: impl FnOnce(std::net::TcpStream, G) + Send + 'static,
    ) {
        let runtime = self.runtime.clone();
        runtime.spawn(async move {
            let request = Request::Relay { to, client: shown };
            let mut tunnel = match self.open(&daemon, *to.ip(), request).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%to, errno = e, "relay: no hop");
                    return fallback(client, guard);
                }
            };
            let Ok(mut client) = client.set_nonblocking(true).and_then(|()| TcpStream::from_std(client)) else {
                return;
            };
            copy(&mut client, &mut tunnel).await;
            drop(guard);
        });
    }

    /// True when a connection to `to` crosses to another member node.
    pub fn crosses(daemon: &Daemon, to: SocketAddrV4) -> bool {
        daemon.read(|s| s.table.members_at(*to.ip()).next().is_some())
    }
}

/// A tunnel, from the end that opened it.
pub(crate) type Tunnel = tokio_rustls::client::TlsStream<BufReader<TcpStream>>;

/// The egress port's server.
struct Server {
    daemon: Daemon,
    node: Ipv4Addr,
    /// `--tls`: the tunnel's side, and the forwarder's way to gateways.
    tls: Option<(TlsAcceptor, Arc<Client>)>,
    refused: Mutex<Burst>,
    /// The port's bound, which also logs failed handshakes (once a minute).
    gate: Gate,
}

/// Serves the egress port on `listener`, on the runtime this is called from; under
/// `--tls` (`client` and `tls`) the tunnel and the forwarder.
pub fn spawn(
    listener: std::net::TcpListener,
    daemon: Daemon,
    tls: Option<(&Arc<ax_tls::Reloadable>, Arc<Client>)>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let at = listener.local_addr()?;
    match &tls {
        Some(_) => {
            info!(%at, gateway = daemon.read(|s| s.table.egress_gateway()), "serving the tunnel (TLS) and the egress forwarder")
        }
        None => info!(%at, "serving as egress gateway (no TLS: requests and bytes cross the network in the clear)"),
    }
    let tls = tls.map(|(t, client)| (TlsAcceptor::from(Arc::new(t.node_server_config(&[ALPN]))), client));
    let members = daemon.clone();
    let cap = daemon.pump()?.per_listener();
    let server = Arc::new(Server {
        node: daemon.node_ip(),
        daemon,
        tls,
        refused: Mutex::default(),
        // Anyone on the network reaches the port: a host that is none of the cluster's
        // nodes (whose connections carry their apps') holds a few connections at most,
        // so its idle ones cannot fill it.
        gate: Gate::new("egress port", cap).per_peer_except(STRANGER_CONNECTIONS, move |ip| {
            matches!(unmap(SocketAddr::new(ip, 0)).ip(), IpAddr::V4(ip) if members.read(|s| s.table.is_node_address(ip)))
        }),
    });
    tokio::spawn(async move {
        let s = server.clone();
        let served = s.gate.serve_async(&listener, std::future::pending(), |conn, permit| {
            tokio::spawn(server.clone().serve(conn, permit));
        });
        if let Err(e) = served.await {
            warn!("the egress port stopped: {e}");
        }
    });
    Ok(())
}

impl Server {
    async fn serve(self: Arc<Self>, conn: TcpStream, permit: Permit) {
        let Ok(peer) = conn.peer_addr() else { return };
        let _ = conn.set_nodelay(true);
        match &self.tls {
            None => self.plain(conn, peer, permit).await,
            Some((_, client)) if peer.ip() == IpAddr::V4(self.node) => self.forward(conn, peer, client).await,
            Some((acceptor, _)) => self.tunnel(acceptor, conn, peer).await,
        }
    }

    /// Without `--tls`: a gateway request from a member's address, on the connection of
    /// the app's socket itself (egress), or of the daemon's for one (federation).
    async fn plain(&self, mut conn: TcpStream, peer: SocketAddr, permit: Permit) {
        let member = matches!(unmap(peer).ip(), IpAddr::V4(ip) if self.daemon.read(|s| s.table.is_node_address(ip)));
        if !member {
            return self.refuse(peer, "not a node of this cluster");
        }
        let Some(request) = self.request(peek_line(&mut conn, MAX_REQUEST), peer).await else { return };
        let (out, permit) = match &request {
            Request::Egress(_) if !self.daemon.read(|s| s.table.egress_gateway()) => {
                return self.refuse(peer, "egress asked of a node that is no egress gateway");
            }
            Request::Egress(dest) => (self.egress(peer, *dest).await, permit),
            Request::Federate { .. } => {
                let Some(path) = self.daemon.federation() else {
                    return self.refuse(peer, "a federated connection asked of a node that is no federation gateway");
                };
                // The session's place stands for the connection's from here on; a
                // session in the clear is spliced, anything else answered and copied.
                match path.open(&self.daemon, &request).await {
                    Ok((Session::Plain(s), held)) => (Ok(s), held),
                    other => return path::answer_and_carry(&mut conn, other).await,
                }
            }
            Request::Relay { .. } => return self.refuse(peer, "a relay hop without --tls"),
        };
        if !answer(&mut conn, &out).await {
            return;
        }
        let Ok(out) = out else { return };
        debug!(%peer, %request, "gateway connection");
        // In the clear both ways: splice(2) in the relays' event loops.
        let (Ok(a), Ok(b)) = (conn.into_std(), out.into_std()) else { return };
        match self.daemon.pump() {
            Ok(pump) => pump.carry(a, b, permit),
            Err(e) => warn!("egress: cannot start the relay loops: {e}"),
        }
    }

    /// Under `--tls`, from this node's own address: the trap engine's (or the
    /// broker's) request for an app's connection, carried to a gateway through a
    /// tunnel; a federated one straight to the other cluster when this node is a
    /// gateway that leads there.
    async fn forward(&self, mut app: TcpStream, peer: SocketAddr, client: &Client) {
        let Ok(us) = app.local_addr() else { return };
        let owner = tokio::task::spawn_blocking(move || peer::owner(peer, us)).await.ok().flatten();
        if owner != Some(0) {
            return self.refuse(peer, "the egress forwarder serves apps' sockets only, and this one is not root's");
        }
        let Some(request) = self.request(peek_line(&mut app, MAX_REQUEST), peer).await else { return };
        let via: Vec<Ipv4Addr> = match &request {
            Request::Egress(_) => self.daemon.with_table(Table::pick_gateway).into_iter().collect(),
            Request::Federate { service, .. } => {
                let gateways = self.daemon.with_table(|t| t.federation_gateways(*service));
                match self.daemon.federation() {
                    Some(path) if gateways.first() == Some(&self.node) => {
                        return path::answer_and_carry(&mut app, path.open(&self.daemon, &request).await).await;
                    }
                    _ => gateways,
                }
            }
            Request::Relay { .. } => return self.refuse(peer, "the egress forwarder takes no relay hops"),
        };
        // The first gateway that answers (one that is down is passed over).
        let mut tunnel = Err(libc::ECONNREFUSED);
        for gw in via {
            tunnel = client.open(&self.daemon, gw, request.clone()).await;
            if tunnel.is_ok() {
                break;
            }
        }
        if let Err(e) = &tunnel {
            debug!(%request, errno = e, "a request through the forwarder refused");
        }
        if !answer(&mut app, &tunnel).await {
            return;
        }
        if let Ok(mut tunnel) = tunnel {
            copy(&mut app, &mut tunnel).await;
        }
    }

    /// Under `--tls`, from another host: a member's tunnel.
    async fn tunnel(&self, acceptor: &TlsAcceptor, conn: TcpStream, peer: SocketAddr) {
        let mut tls = match step(acceptor.accept(BufReader::with_capacity(TLS_READ_BUFFER, conn))).await {
            Ok(t) => t,
            Err(_) => {
                let why = "no handshake with a certificate from the cluster's CA in time";
                return self.gate.handshake_failed(Some(peer), &why);
            }
        };
        tls.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let Some(member) = self.daemon.read(|s| member_named(&s.table, peer.ip(), cert)) else {
            return self.refuse(peer, "its certificate names no live member at its address");
        };
        let Some(request) = self.request(read_line(&mut tls, MAX_REQUEST), peer).await else { return };
        let out = match &request {
            Request::Egress(_) if !self.daemon.read(|s| s.table.egress_gateway()) => {
                self.refuse(peer, "egress asked of a node that is no egress gateway");
                Err(libc::ECONNREFUSED)
            }
            Request::Egress(dest) => self.egress(peer, *dest).await,
            Request::Relay { to, .. } if !self.daemon.read(|s| s.table.relay_hop_allowed(*to)) => {
                self.refuse(peer, &format!("a relay hop to {to}, which is no row of this node"));
                Err(libc::ECONNREFUSED)
            }
            // The member is authenticated: its word on its client is taken, as its
            // SYN's is without --tls.
            Request::Relay { to, client } => step(dial(&self.daemon, *to, *client)).await,
            Request::Federate { .. } => match self.daemon.federation() {
                // Another node's client app, for a remote cluster: on through a session.
                Some(path) => return path::answer_and_carry(&mut tls, path.open(&self.daemon, &request).await).await,
                None => {
                    self.refuse(peer, "a federated connection asked of a node that is no federation gateway");
                    Err(libc::ECONNREFUSED)
                }
            },
        };
        if !answer(&mut tls, &out).await {
            return;
        }
        if let Ok(mut out) = out {
            debug!(%peer, %member, %request, "tunnel connection");
            let _ = out.set_nodelay(true);
            copy(&mut out, &mut tls).await;
        }
    }

    /// Takes the request `line` read; None (logged) when there is none.
    async fn request(
        &self,
        line: impl std::future::Future<Output = io::Result<Vec<u8>>>,
        peer: SocketAddr,
    ) -> Option<Request> {
        let line = step(line).await.ok()?;
        match Request::parse(&line) {
            Ok(r) => Some(r),
            Err(e) => {
                self.refuse(peer, &e.to_string());
                None
            }
        }
    }

    /// A gateway's connection out to `dest`, unless it is the cluster's own.
    async fn egress(&self, peer: SocketAddr, dest: SocketAddr) -> Result<TcpStream, Errno> {
        let host: Vec<IpAddr> =
            ax_sys::proc::interface_addrs().map(|a| a.into_iter().map(|a| a.addr).collect()).unwrap_or_default();
        if let Some(why) = self.daemon.read(|s| s.table.egress_refusal(dest, &host)) {
            self.refuse(peer, &format!("egress to {dest}: {why}"));
            return Err(libc::ECONNREFUSED);
        }
        let out = step(TcpStream::connect(dest)).await?;
        let _ = out.set_nodelay(true);
        Ok(out)
    }

    /// Logs a refusal: the first of a burst, then at most one line per quiet period.
    fn refuse(&self, peer: SocketAddr, why: &str) {
        if let Some(n) = self.refused.lock().unwrap_or_else(|p| p.into_inner()).hit(Instant::now()) {
            warn!(%peer, refused = n, "egress port: refused: {why}");
        }
    }
}

/// Connects to `to` for a `client` (a relay's, a federated connection's) whose address
/// the server is to see (under the kernel driver).
pub(crate) async fn dial(daemon: &Daemon, to: SocketAddrV4, client: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(client) = client {
        daemon.claim_client(std::os::fd::AsFd::as_fd(&sock), client);
    }
    let s = sock.connect(to.into()).await?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The name of the live member at `ip` that the (handshake-verified) certificate `cert`
/// names; None for anyone else.
fn member_named(table: &Table, ip: IpAddr, cert: Option<&CertificateDer<'_>>) -> Option<String> {
    let ip = unmap(SocketAddr::new(ip, 0)).ip();
    let (IpAddr::V4(ip), Some(cert)) = (ip, cert) else { return None };
    table.members_at(ip).find(|name| ax_tls::names(cert, name)).map(str::to_string)
}

/// Runs one step of a connection's setup within [`STEP`]; its error as an errno.
pub(crate) async fn step<T>(f: impl std::future::Future<Output = io::Result<T>>) -> Result<T, Errno> {
    match timeout(STEP, f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.raw_os_error().unwrap_or(libc::ECONNREFUSED)),
        Err(_) => Err(libc::ETIMEDOUT),
    }
}

/// Reads one line (without its newline) of at most `max` bytes, byte by byte: nothing
/// past the newline is taken.
pub(crate) async fn read_line(r: &mut (impl AsyncRead + Unpin), max: usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        match r.read_u8().await? {
            b'\n' => return Ok(line),
            _ if line.len() == max => return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long")),
            b => line.push(b),
        }
    }
}

/// Writes the answer line for `result` (the outcome of what was asked) within a
/// [`STEP`]; false when it could not be written.
pub(crate) fn answer<'c, T>(
    conn: &'c mut (impl AsyncWrite + Unpin),
    result: &Result<T, Errno>,
) -> impl std::future::Future<Output = bool> + 'c {
    // The line is made now: the future holds no borrow of `result` (which may not be
    // shared across threads).
    let line = answer_line(result.as_ref().map(|_| ()).map_err(|e| *e));
    async move { step(conn.write_all(&line)).await.is_ok() }
}

/// [`read_line`] on a plain TCP stream, in a few system calls rather than one per
/// byte: what has arrived is peeked at, and only the line is taken (nothing past its
/// newline).
pub(crate) async fn peek_line(s: &mut TcpStream, max: usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut buf = vec![0u8; max + 1];
    loop {
        let room = max + 1 - line.len();
        let n = s.peek(&mut buf[..room]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let end = buf[..n].iter().position(|b| *b == b'\n');
        let take = end.map_or(n, |i| i + 1);
        s.read_exact(&mut buf[..take]).await?;
        match end {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                return Ok(line);
            }
            None if line.len() + n > max => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            None => line.extend_from_slice(&buf[..n]),
        }
    }
}

/// Moves bytes both ways until both directions have ended (an end one way is passed on
/// as a shutdown of that direction: close_notify, then FIN, on the tunnel).
pub(crate) async fn copy(a: &mut (impl AsyncRead + AsyncWrite + Unpin), b: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
    let _ = tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER, COPY_BUFFER).await;
}

#[cfg(test)]
mod tests;
