//! L4 relays, for where bytes must be carried because no app's socket can be handed
//! over: a vservice's `--external` port, or an `--expose` on a node other than the
//! app's. Each relay listens on a node port; the [`pump`]'s event loops accept its
//! clients, dial a backend per connection (as the vservice's balancer says, or the
//! exposed app's host address; under `--tls`, one on another node through that node's
//! tunnel, in user space) and move bytes both ways with splice(2) through a pipe per
//! direction (no copy to user space), half-close aware, with back-pressure (a side is
//! read only while its pipe has room). No thread per connection.

mod flow;
pub mod pump;
mod splice;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;

use ax_api::ProxyView;
use ax_core::clientid::shown_client;
use ax_core::{Route, Target};
use ax_sys::sock;
use ax_trap::Node;
use tracing::{debug, info};

use crate::bounds::Gate;
use crate::{tunnel, Daemon};
use pump::{Client, Held, Hop, Listening, Serve};

/// Connections one relay (or the egress gateway) carries at once, at most: fewer when
/// the daemon's descriptor budget is smaller ([`pump::bounds`]); one client address a
/// quarter of a relay's.
pub const MAX_CONNECTIONS: usize = 32 * 1024;

/// What a relay connects its clients to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// A vservice's backends, as its balancer orders them.
    Vservice { vip: Ipv4Addr, vport: u16 },
    /// One address (an exposed app's socket on its node).
    Fixed(SocketAddrV4),
}

/// Which relay: who asked for it (a vservice's name, `expose/<app>/<port>`) and the
/// node port it listens on. Relays leave with their owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelayKey {
    pub owner: String,
    pub port: u16,
}

impl RelayKey {
    /// The relay for an `--expose` of `app` on `port` of this node.
    pub fn expose(app: &str, port: u16) -> RelayKey {
        RelayKey { owner: format!("expose/{app}/{port}"), port }
    }
}

/// How a relay runs: what it dials, and what `ax get proxies` shows it dialing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySpec {
    pub dial: Dial,
    pub dialers: Vec<String>,
}

impl RelaySpec {
    /// A relay to one host address (an exposed app's).
    pub fn fixed(to: SocketAddrV4) -> RelaySpec {
        RelaySpec { dial: Dial::Fixed(to), dialers: vec![to.to_string()] }
    }
}

/// One running relay.
struct Relay {
    listener: Arc<Listening>,
    key: RelayKey,
    dialers: Vec<String>,
}

/// The relays running on this node, by id: what carries out the state's relay changes.
#[derive(Default)]
pub struct Relays {
    next: u32,
    running: BTreeMap<u32, Relay>,
}

impl Relays {
    pub fn views(&self) -> Vec<ProxyView> {
        self.running
            .iter()
            .map(|(id, r)| ProxyView {
                id: *id,
                proto: ax_core::Proto::Tcp,
                listener: r.listener.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                dialers: r.dialers.clone(),
                sessions: None,
            })
            .collect()
    }

    /// Starts a relay on `listener` (bound by the caller) or on node:`key.port`.
    pub fn start(
        &mut self,
        daemon: &Daemon,
        key: RelayKey,
        spec: RelaySpec,
        listener: Option<TcpListener>,
    ) -> std::io::Result<()> {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind((daemon.node_ip(), key.port))?,
        };
        // Its clients' SYNs are kept (and read at once as each is accepted): a client
        // app's names the app, which the backend's server is then shown.
        sock::set_int(listener.as_fd(), libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, 1)?;
        let pump = daemon.pump()?;
        self.next += 1;
        let id = self.next;
        info!(id, listener = %listener.local_addr()?, owner = %key.owner, "relay started");
        let serve = Arc::new(Dialer { daemon: daemon.clone(), dial: spec.dial });
        // Anyone who reaches the node port is a client: one address holds a share of
        // the relay at most, so it cannot shut others out.
        let gate = Gate::new("relay", pump.per_listener()).per_peer(pump.per_source());
        let l = Arc::new(Listening { id, listener, gate, serve });
        pump.listen(l.clone())?;
        self.running.insert(id, Relay { listener: l, key, dialers: spec.dialers });
        Ok(())
    }

    /// Stops the relay `key`: no new connections; those it carries go on.
    pub fn stop(&mut self, daemon: &Daemon, key: &RelayKey) {
        let ids: Vec<u32> = self.running.iter().filter(|(_, r)| r.key == *key).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(r) = self.running.remove(&id) {
                // Frees the port at once (a relay started again binds it next).
                let _ = sock::shutdown(r.listener.listener.as_fd(), libc::SHUT_RDWR);
                if let Ok(pump) = daemon.pump() {
                    pump.unlisten(id);
                }
                info!(id, owner = %key.owner, "relay stopped");
            }
        }
    }
}

/// Where a relay's clients go.
struct Dialer {
    daemon: Daemon,
    dial: Dial,
}

impl Serve for Dialer {
    /// The backends as the balancer orders them now; under `--tls` one on another node
    /// is reached through its tunnel.
    fn hops(&self) -> Vec<Hop> {
        let d = &self.daemon;
        let targets = match self.dial {
            Dial::Vservice { vip, vport } => match d.with_table(|t| t.vservice_route(vip, vport, None)) {
                Some(Route::Backends(targets)) => targets,
                _ => return Vec::new(),
            },
            Dial::Fixed(addr) => vec![Target { addr, source: None }],
        };
        let tls = d.tunnel().is_some();
        targets
            .into_iter()
            .map(|t| if tls && tunnel::Client::crosses(d, t.addr) { Hop::Tunnel(t.addr) } else { Hop::Direct(t) })
            .collect()
    }

    /// The client's address, or the client app its SYN names ([`relay_client`]).
    fn shown(&self, client: &TcpStream) -> Option<Ipv4Addr> {
        relay_client(&self.daemon, client)
    }

    /// The backend's server sees the relay's client (kernel driver).
    fn dialing(&self, dial: std::os::fd::BorrowedFd<'_>, shown: Ipv4Addr) {
        self.daemon.claim_client(dial, shown);
    }

    fn tunnel(self: Arc<Self>, client: Client, to: SocketAddrV4, rest: Vec<Hop>, held: Held) {
        let Some(t) = self.daemon.tunnel_client() else { return };
        let shown = client.shown;
        t.spawn_relay(self.daemon.clone(), client.stream, shown, to, held, move |stream, held| {
            debug!(%to, "relay: no hop; the next backend");
            if let Ok(pump) = self.daemon.pump() {
                pump.dial(Client { stream, shown }, rest, held, self.clone());
            }
        });
    }
}

/// Who a relay's client is to be shown as to the backend's server
/// ([`ax_core::clientid::shown_client`], from the SYN the relay's listener kept).
fn relay_client(daemon: &Daemon, client: &TcpStream) -> Option<Ipv4Addr> {
    let std::net::SocketAddr::V4(peer) = ax_core::addr::unmap(client.peer_addr().ok()?) else { return None };
    let mut syn = [0u8; SAVED_SYN_MAX];
    let kept = sock::get_opt(client.as_fd(), libc::IPPROTO_TCP, libc::TCP_SAVED_SYN, &mut syn).ok();
    shown_client(*peer.ip(), kept.map(|n| &syn[..n]), |ip| daemon.read(|s| s.table.is_node_address(ip)))
}

/// The longest SYN a listener keeps: an IPv4 header and a TCP header, options and all.
const SAVED_SYN_MAX: usize = 120;
