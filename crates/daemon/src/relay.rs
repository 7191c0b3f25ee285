//! L4 relays, for where bytes must be carried because no app's socket can be handed
//! over: a vservice's `--external` port, or an `--expose` on a node other than the
//! app's. Each relay listens on a node port, dials a backend per connection (as the
//! vservice's balancer says, or the exposed app's host address; under `--tls`, one on
//! another node through that node's tunnel), and moves bytes both ways
//! with splice(2) through a pipe (no copy to user space), half-close aware (an EOF one
//! way is passed on as a shutdown of that direction), with the kernel's own
//! back-pressure (a blocked splice waits for the slower side).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use ax_api::ProxyView;
use ax_core::{Route, Target};
use ax_sys::sock;
use ax_trap::Node;
use tracing::{debug, info, warn};

use crate::bounds::Gate;
use crate::{tunnel, Daemon};

const CHUNK: usize = 256 * 1024;
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections a relay (or the egress gateway) carries at once: each takes two threads
/// and six descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

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
    listener: Arc<TcpListener>,
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
                listener: r.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                dialers: r.dialers.clone(),
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
        let listener = Arc::new(match listener {
            Some(l) => l,
            None => TcpListener::bind((daemon.node_ip(), key.port))?,
        });
        self.next += 1;
        let id = self.next;
        info!(id, listener = %listener.local_addr()?, owner = %key.owner, "relay started");
        let (l, d, dial) = (listener.clone(), daemon.clone(), spec.dial);
        std::thread::Builder::new().name("relay".into()).spawn(move || {
            // Ends when stop() shuts the listener down.
            Gate::new("relay", MAX_CONNECTIONS).serve_blocking(&*l, |client, permit| {
                let d = d.clone();
                let spawned = std::thread::Builder::new().name("relay-conn".into()).spawn(move || {
                    serve(&d, client, dial);
                    drop(permit);
                });
                if let Err(e) = spawned {
                    warn!("relay {id}: cannot start a thread: {e}");
                }
            });
            debug!(id, "relay stopped");
        })?;
        self.running.insert(id, Relay { listener, key, dialers: spec.dialers });
        Ok(())
    }

    /// Stops the relay `key`.
    pub fn stop(&mut self, key: &RelayKey) {
        let ids: Vec<u32> = self.running.iter().filter(|(_, r)| r.key == *key).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(r) = self.running.remove(&id) {
                // Wakes the accept loop with an error, which ends it.
                let _ = sock::shutdown(r.listener.as_fd(), libc::SHUT_RDWR);
                info!(id, owner = %key.owner, "relay stopped");
            }
        }
    }
}

/// One client: dial a backend (skipping ones that refuse), then move bytes both ways
/// until both directions have ended.
fn serve(daemon: &Daemon, client: TcpStream, to: Dial) {
    let targets = match to {
        Dial::Vservice { vip, vport } => match daemon.with_table(|t| t.vservice_route(vip, vport, None)) {
            Some(Route::Backends(targets)) => targets,
            _ => return,
        },
        Dial::Fixed(addr) => vec![Target { addr, source: None }],
    };
    let mut client = client;
    for t in targets {
        // Under --tls, a backend on another node is reached through its tunnel.
        match daemon.tunnel().filter(|_| tunnel::Client::crosses(daemon, t.addr)) {
            Some(tunnel) => match tunnel.relay(daemon, client, t.addr) {
                Ok(()) => return,
                Err(back) => client = back,
            },
            None => {
                if let Some(backend) = dial(t.addr, t.source) {
                    return carry(client, backend);
                }
            }
        }
    }
    debug!(?to, "relay: no backend answered");
}

/// Moves bytes both ways between two connections until both directions have ended.
pub fn carry(a: TcpStream, b: TcpStream) {
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    let up = std::thread::Builder::new().name("relay-up".into()).spawn(move || pump(&a2, &b2));
    pump(&b, &a);
    if let Ok(h) = up {
        let _ = h.join();
    }
}

fn dial(addr: SocketAddrV4, source: Option<Ipv4Addr>) -> Option<TcpStream> {
    let target = SocketAddr::V4(addr);
    match source {
        None => TcpStream::connect_timeout(&target, DIAL_TIMEOUT).ok(),
        Some(src) => {
            let s = sock::socket(libc::AF_INET, libc::SOCK_STREAM, 0).ok()?;
            sock::bind(s.as_fd(), &SocketAddr::from((src, 0))).ok()?;
            sock::connect(s.as_fd(), &target).ok()?;
            Some(TcpStream::from(s))
        }
    }
}

/// Moves bytes from `from` to `to` until `from` ends, then shuts `to` for writing.
fn pump(from: &TcpStream, to: &TcpStream) {
    if let Ok((r, w)) = sock::pipe() {
        // A larger pipe moves more per splice (the default is 64 KiB); best effort.
        let _ = sock::set_pipe_size(w.as_fd(), CHUNK);
        loop {
            match sock::splice(from.as_fd(), w.as_fd(), CHUNK) {
                Ok(0) | Err(_) => break,
                Ok(mut n) => {
                    while n > 0 {
                        match sock::splice(r.as_fd(), to.as_fd(), n) {
                            Ok(0) | Err(_) => {
                                let _ = sock::shutdown(from.as_fd(), libc::SHUT_RD);
                                return;
                            }
                            Ok(m) => n -= m,
                        }
                    }
                }
            }
        }
    }
    let _ = sock::shutdown(to.as_fd(), libc::SHUT_WR);
}
