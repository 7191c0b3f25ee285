//! The egress gateway (`--egress-gateway`): carries connections from apps on other
//! nodes of the cluster to destinations outside the service table, so those
//! destinations see the gateway's address. Only nodes of the cluster may use it.
//!
//! Protocol, one line each way before the bytes: `AXEG <ip:port>` from the asking
//! node, `OK` or `ERR <errno>` from the gateway.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::bounds::Gate;
use crate::{relay, Daemon};

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves on `listener` (the node's [`ax_core::EGRESS_PORT`]).
pub fn spawn(listener: TcpListener, daemon: Daemon) -> std::io::Result<()> {
    info!(at = %listener.local_addr()?, "serving as egress gateway");
    std::thread::Builder::new().name("egress".into()).spawn(move || {
        let gate = Gate::new("egress gateway", relay::MAX_CONNECTIONS);
        gate.serve_blocking(&listener, |conn, permit| {
            let d = daemon.clone();
            let spawned = std::thread::Builder::new().name("egress-conn".into()).spawn(move || {
                serve(&d, conn);
                drop(permit);
            });
            if let Err(e) = spawned {
                warn!("egress: cannot start a thread: {e}");
            }
        });
    })?;
    Ok(())
}

fn serve(daemon: &Daemon, mut conn: TcpStream) {
    let Ok(peer) = conn.peer_addr() else { return };
    let member = daemon.read(|s| s.table.remote().nodes.iter().any(|(_, ip)| IpAddr::V4(*ip) == peer.ip()));
    if !member {
        warn!(%peer, "egress refused: not a node of this cluster");
        return;
    }
    let _ = conn.set_read_timeout(Some(DIAL_TIMEOUT));
    let Some(dest) = read_request(&mut conn) else {
        debug!(%peer, "egress: unreadable request");
        return;
    };
    let _ = conn.set_read_timeout(None);
    match TcpStream::connect_timeout(&dest, DIAL_TIMEOUT) {
        Ok(out) => {
            if conn.write_all(b"OK\n").is_ok() {
                debug!(%peer, %dest, "egress connection");
                relay::carry(conn, out);
            }
        }
        Err(e) => {
            let code = e.raw_os_error().unwrap_or(libc::ECONNREFUSED);
            let _ = conn.write_all(format!("ERR {code}\n").as_bytes());
        }
    }
}

/// Reads `AXEG <ip:port>\n` one byte at a time (nothing after it is ours to take).
fn read_request(conn: &mut TcpStream) -> Option<SocketAddr> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 128 {
        if conn.read(&mut b).ok()? == 0 {
            return None;
        }
        if b[0] == b'\n' {
            return std::str::from_utf8(&line).ok()?.strip_prefix("AXEG ")?.parse().ok();
        }
        line.push(b[0]);
    }
    None
}
