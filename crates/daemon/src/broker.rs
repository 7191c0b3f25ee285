//! The kernel driver's broker: the connects its programs cannot finish in the kernel
//! come here. A program that sends a connect to the broker records, under the app
//! socket's cookie, where it was going; the broker finds that socket from the accepted
//! connection's addresses (sock_diag), takes its entry (nothing else may: a connection
//! without one is closed), makes the connection the user driver would have made, and
//! moves the bytes with the relay's pump:
//!
//! - LOOPBACK: to the app's own loopback listener, inside the app's namespace;
//! - EGRESS: through an egress gateway, with the gateway's handshake (or directly,
//!   should the cluster have lost its gateways since).
//!
//! The app's connect has succeeded by then: a far end that refuses shows as a
//! connection closed at once (a documented difference from the user driver).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ax_core::kmap::{BrokerEntry, BrokerKind};
use ax_core::tunnel::{parse_answer, Request, MAX_ANSWER};
use ax_core::{AppId, Proto, Route};
use ax_sys::{netlink, ns};
use tracing::{debug, warn};

use crate::bounds::Gate;
use crate::Daemon;

/// How long a gateway or the app's own listener has to answer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections the broker carries at once (each holds two threads until the
/// relay's epoll pump carries them), and most of one app's: no app's connects take
/// every place.
pub const MAX_CONNECTIONS: usize = crate::relay::MAX_CONNECTIONS;
pub const MAX_PER_APP: usize = MAX_CONNECTIONS / 8;

/// Serves the broker on `listener` on a thread of its own, one thread per connection,
/// at most [`MAX_CONNECTIONS`] at once and [`MAX_PER_APP`] of one app's (a connection
/// beyond either is closed at once: the app sees its connection end).
pub fn spawn(listener: TcpListener, daemon: Daemon) -> io::Result<()> {
    std::thread::Builder::new().name("ax-broker".into()).spawn(move || {
        let apps = Arc::new(PerApp::new(MAX_PER_APP));
        Gate::new("broker", MAX_CONNECTIONS).serve_blocking(&listener, |conn, permit| {
            let (daemon, apps) = (daemon.clone(), apps.clone());
            let serve = move || {
                let _permit = permit;
                if let Err(e) = serve(conn, &daemon, &apps) {
                    debug!("broker: {e}");
                }
            };
            if let Err(e) = std::thread::Builder::new().name("ax-broker-conn".into()).spawn(serve) {
                warn!("broker: cannot start a thread for a connection: {e}");
            }
        });
    })?;
    Ok(())
}

/// Connections carried by app, at most `cap` of one app's at once.
struct PerApp {
    cap: usize,
    open: Mutex<HashMap<AppId, usize>>,
}

/// One connection's place among its app's, given back when dropped.
struct AppPermit<'a> {
    of: &'a PerApp,
    app: AppId,
}

impl PerApp {
    fn new(cap: usize) -> PerApp {
        PerApp { cap, open: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AppId, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more of `app`'s connections, or None when it has `cap`.
    fn admit(&self, app: AppId) -> Option<AppPermit<'_>> {
        let mut open = self.lock();
        let n = open.entry(app).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AppPermit { of: self, app })
    }
}

impl Drop for AppPermit<'_> {
    fn drop(&mut self) {
        let mut open = self.of.lock();
        if let Some(n) = open.get_mut(&self.app) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.app);
            }
        }
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
    let Some(_place) = apps.admit(AppId(entry.app)) else {
        return Err(io::Error::other(format!("app {} has {} brokered connections: closed", entry.app, apps.cap)));
    };
    let upstream = match entry.kind {
        BrokerKind::Loopback => loopback(daemon, &entry)?,
        BrokerKind::Egress => egress(daemon, &entry)?,
    };
    crate::relay::carry(conn, upstream);
    Ok(())
}

/// A connection to the app's own listener at the port it asked for, in its namespace.
fn loopback(daemon: &Daemon, entry: &BrokerEntry) -> io::Result<TcpStream> {
    let app = AppId(entry.app);
    let netns = daemon.app_netns(app).ok_or_else(|| io::Error::other(format!("app {app} is not served here")))?;
    let home = ns::current_netns()?;
    let port = entry.dest.port();
    // The address it asked for (0.0.0.0 is 127.0.0.1, as Linux takes it), then ::1
    // for a listener of IPv6 only.
    let asked = if entry.dest.ip().is_unspecified() { Ipv4Addr::LOCALHOST } else { *entry.dest.ip() };
    let tries = [SocketAddr::from((asked, port)), SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))];
    ns::with_netns(&netns, &home, || {
        let mut last = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        for to in tries {
            match TcpStream::connect_timeout(&to, DIAL_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    })?
}

/// A connection out to the app's destination, decided again as the user driver
/// decides it (through a gateway while the cluster has one).
fn egress(daemon: &Daemon, entry: &BrokerEntry) -> io::Result<TcpStream> {
    let dest = SocketAddr::V4(entry.dest);
    let route = ax_trap::Node::with_table(daemon, |t| t.route_connect(AppId(entry.app), Proto::Tcp, dest));
    match route {
        Route::Egress { gateway, dest } => {
            let mut s = TcpStream::connect_timeout(&SocketAddr::V4(gateway), DIAL_TIMEOUT)?;
            s.set_read_timeout(Some(DIAL_TIMEOUT))?;
            s.write_all(&Request::Egress(dest).line())?;
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
        Route::Direct(to) => TcpStream::connect_timeout(&to, DIAL_TIMEOUT),
        other => Err(io::Error::other(format!("{dest} is no longer outside ({other:?}): closed"))),
    }
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
        const { assert!(MAX_PER_APP >= 1 && MAX_PER_APP < MAX_CONNECTIONS) };
        let apps = PerApp::new(2);
        let (a, b) = (AppId(1), AppId(2));
        let first = apps.admit(a).unwrap();
        let _second = apps.admit(a).unwrap();
        assert!(apps.admit(a).is_none(), "a third of the same app's");
        let other = apps.admit(b);
        assert!(other.is_some(), "another app's are its own");
        drop(first);
        assert!(apps.admit(a).is_some(), "a place given back is taken again");
        drop(other);
        assert!(!apps.lock().contains_key(&b), "an app with none open is forgotten");
    }
}
