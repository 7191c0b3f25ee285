//! The kernel driver's broker: the connects its programs cannot finish in the kernel
//! come here. A program that sends a connect to the broker records, under the app
//! socket's cookie, where it was going; the broker finds that socket from the accepted
//! connection's addresses (sock_diag), takes its entry (nothing else may: a connection
//! without one is closed), makes the connection the user driver would have made, and
//! moves the bytes with the relay's pump:
//!
//! - LOOPBACK: to the app's own loopback listener, inside the app's namespace, else
//!   to a wildcard listener of its own on the host (`Table::own_rows`);
//! - EGRESS: through an egress gateway, with the gateway's handshake (or directly,
//!   should the cluster have lost its gateways since); a remote cluster's service
//!   through a federation gateway, the request naming the app and its labels.
//!
//! The app's connect has succeeded by then: a far end that refuses shows as a
//! connection closed at once (a documented difference from the user driver).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ax_core::kmap::{BrokerEntry, BrokerKind};
use ax_core::tunnel::{parse_answer, Request, MAX_ANSWER};
use ax_core::{AppId, Proto, Route};
use ax_sys::{netlink, ns};
use tracing::{debug, warn};

use crate::bounds::{Flow, Gate, Permit};
use crate::Daemon;

/// How long a gateway or the app's own listener has to answer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most broker connections being set up at once (a thread each, until the pump
/// carries them: finding the app's socket, dialling on).
pub const MAX_SETUPS: usize = 256;
/// Most connections of one app the pump carries for the broker at once: no app's
/// connects take every place.
pub const MAX_PER_APP: usize = crate::relay::MAX_CONNECTIONS / 32;

/// Serves the broker on `listener` on a thread of its own: each connection is set up on
/// a thread of its own (at most [`MAX_SETUPS`] at once), then carried by the relay's
/// pump (at most [`MAX_PER_APP`] of one app's). A connection beyond either is closed
/// at once: the app sees its connection end.
pub fn spawn(listener: TcpListener, daemon: Daemon) -> io::Result<()> {
    std::thread::Builder::new().name("ax-broker".into()).spawn(move || {
        let (gate, apps) = (Gate::new("broker", MAX_SETUPS), Arc::new(PerApp::new(MAX_PER_APP)));
        loop {
            let conn = match listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) => match gate.accept_failed(&e) {
                    Flow::Retry => continue,
                    Flow::Wait(d) => {
                        std::thread::sleep(d);
                        continue;
                    }
                    Flow::Stop => return,
                },
            };
            let Some(setup) = gate.admit(None) else { continue };
            let (daemon, apps) = (daemon.clone(), apps.clone());
            let serve = move || {
                let _setup = setup;
                if let Err(e) = serve(conn, &daemon, &apps) {
                    debug!("broker: {e}");
                }
            };
            if let Err(e) = std::thread::Builder::new().name("ax-broker-conn".into()).spawn(serve) {
                warn!("broker: cannot start a thread for a connection: {e}");
            }
        }
    })?;
    Ok(())
}

/// The broker's connections by app: a gate per app, at most `cap` carried at once.
struct PerApp {
    cap: usize,
    gates: Mutex<HashMap<AppId, Arc<Gate>>>,
}

impl PerApp {
    fn new(cap: usize) -> PerApp {
        PerApp { cap, gates: Mutex::default() }
    }

    /// A place for one more of `app`'s connections (held while the pump carries it),
    /// or None when it has `cap`.
    fn admit(&self, app: AppId) -> Option<Permit> {
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            // Apps with nothing open are forgotten (a gate is made again when needed).
            if gates.len() > 1024 {
                gates.retain(|_, g| Arc::strong_count(g) > 1 || g.open() > 0);
            }
            gates.entry(app).or_insert_with(|| Arc::new(Gate::new("broker (one app)", self.cap))).clone()
        };
        gate.admit(None)
    }
}

fn serve(conn: TcpStream, daemon: &Daemon, apps: &PerApp) -> io::Result<()> {
    let Some(kernel) = daemon.kernel() else { return Ok(()) };
    // The app's socket is the one whose local address is this connection's peer.
    let (peer, local) = (conn.peer_addr()?, conn.local_addr()?);
    let Some(app_sock) = netlink::tcp_socket(peer, local)? else {
        return Err(io::Error::other(format!("no socket of this host at {peer}: closed")));
    };
    let entry = kernel.driver.take_broker(app_sock.cookie).map_err(io::Error::other)?;
    let Some(entry) = entry else {
        return Err(io::Error::other(format!("{peer} was sent here by no program: closed")));
    };
    let Some(place) = apps.admit(AppId(entry.app)) else {
        return Err(io::Error::other(format!("app {} has {} brokered connections: closed", entry.app, apps.cap)));
    };
    let upstream = match entry.kind {
        BrokerKind::Loopback => loopback(daemon, &entry)?,
        BrokerKind::Egress => egress(daemon, &entry)?,
    };
    daemon.pump()?.carry(conn, upstream, place);
    Ok(())
}

/// A connection to the app's own listener at the port it asked for: in its namespace,
/// else its wildcard listener on the host.
fn loopback(daemon: &Daemon, entry: &BrokerEntry) -> io::Result<TcpStream> {
    let app = AppId(entry.app);
    let netns = daemon.app_netns(app).ok_or_else(|| io::Error::other(format!("app {app} is not served here")))?;
    let home = ns::current_netns()?;
    let port = entry.dest.port();
    // The address it asked for (0.0.0.0 is 127.0.0.1, as Linux takes it), then ::1
    // for a listener of IPv6 only.
    let asked = if entry.dest.ip().is_unspecified() { Ipv4Addr::LOCALHOST } else { *entry.dest.ip() };
    let tries = [SocketAddr::from((asked, port)), SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))];
    let private = ns::with_netns(&netns, &home, || first_answering(tries))?;
    // None there: a wildcard listener of the app's own on the host, as a host's
    // wildcard listener takes loopback connects.
    private.or_else(|_| {
        let own = ax_trap::Node::with_table(daemon, |t| t.own_rows(app, Proto::Tcp, SocketAddr::V4(entry.dest)));
        first_answering(own.into_iter().map(SocketAddr::V4))
    })
}

/// A connection to the first of `tries` that answers, or the last one's error
/// (ECONNREFUSED for none).
fn first_answering(tries: impl IntoIterator<Item = SocketAddr>) -> io::Result<TcpStream> {
    let mut last = io::Error::from_raw_os_error(libc::ECONNREFUSED);
    for to in tries {
        match TcpStream::connect_timeout(&to, DIAL_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A connection out to the app's destination, decided again as the user driver
/// decides it: through a gateway while the cluster has one, and to a remote cluster's
/// service through a federation gateway, asked with the app's address and labels.
fn egress(daemon: &Daemon, entry: &BrokerEntry) -> io::Result<TcpStream> {
    let (app, dest) = (AppId(entry.app), SocketAddr::V4(entry.dest));
    let (route, me) = ax_trap::Node::with_table(daemon, |t| {
        (t.route_connect(app, Proto::Tcp, dest), t.app(app).map(|a| (a.ip, a.labels.clone())))
    });
    match (route, me) {
        (Route::Egress { gateway, dest }, _) => through(gateway, &Request::Egress(dest)),
        (Route::Federated { via, service }, Some((client, labels))) => {
            // A gateway that is down is passed over (gossip has not said so yet).
            let request = Request::Federate { service, client, labels };
            let mut last = io::Error::from_raw_os_error(libc::ECONNREFUSED);
            for gateway in via {
                match through(gateway, &request) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        (Route::Direct(to), _) => TcpStream::connect_timeout(&to, DIAL_TIMEOUT),
        (other, _) => Err(io::Error::other(format!("{dest} is no longer outside ({other:?}): closed"))),
    }
}

/// A connection through the gateway (or forwarder) at `via`, which `request` was asked
/// of and which said yes.
fn through(via: SocketAddrV4, request: &Request) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(via), DIAL_TIMEOUT)?;
    s.set_read_timeout(Some(DIAL_TIMEOUT))?;
    s.write_all(&request.line())?;
    // Byte by byte: what follows the answer is the destination's.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < MAX_ANSWER {
        match s.read(&mut b)? {
            0 => return Err(io::Error::from_raw_os_error(libc::ECONNRESET)),
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    parse_answer(&line).map_err(io::Error::from_raw_os_error)?;
    s.set_read_timeout(None)?;
    Ok(s)
}

/// Where the daemon keeps the apps' namespaces for the broker.
#[derive(Default)]
pub struct Namespaces(std::sync::Mutex<std::collections::HashMap<AppId, Arc<File>>>);

impl Namespaces {
    pub fn insert(&self, app: AppId, netns: File) {
        self.lock().insert(app, Arc::new(netns));
    }

    pub fn remove(&self, app: AppId) {
        self.lock().remove(&app);
    }

    pub fn get(&self, app: AppId) -> Option<Arc<File>> {
        self.lock().get(&app).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<AppId, Arc<File>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_holds_at_most_its_share_of_the_brokers_connections() {
        const { assert!(MAX_PER_APP >= 1 && MAX_PER_APP < crate::relay::MAX_CONNECTIONS) };
        let apps = PerApp::new(2);
        let (a, b) = (AppId(1), AppId(2));
        let first = apps.admit(a).unwrap();
        let _second = apps.admit(a).unwrap();
        assert!(apps.admit(a).is_none(), "a third of the same app's");
        assert!(apps.admit(b).is_some(), "another app's are its own");
        drop(first);
        assert!(apps.admit(a).is_some(), "a place given back is taken again");
    }
}
