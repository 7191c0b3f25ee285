//! Keeps the socket tables true to the kernel: every 200 ms it lists the host's TCP
//! listeners (and, when there are bound-only rows, every TCP socket; and UDP sockets)
//! with sock_diag and drops rows whose socket two listings in a row did not show, so a
//! closed listener leaves the service table within half a second. The daemon never
//! holds an app's listener open itself.

use std::collections::HashSet;
use std::time::Duration;

use ax_core::Proto;
use ax_sys::netlink::{self as diag, TCP_LISTEN};
use tracing::{info, warn};

use crate::Daemon;

const PERIOD: Duration = Duration::from_millis(200);
/// sock_diag's pseudo-state for bound, not listening TCP sockets (kernel 6.10+).
const TCP_BOUND_INACTIVE: u8 = 13;

pub fn spawn(daemon: Daemon) -> std::io::Result<()> {
    let bound_only = lists_bound_only_sockets();
    if !bound_only {
        warn!("this kernel's sock_diag does not list bound-only TCP sockets: their rows stay until their app exits");
    }
    std::thread::Builder::new().name("watch".into()).spawn(move || loop {
        std::thread::sleep(PERIOD);
        if let Err(e) = sweep(&daemon, bound_only) {
            warn!("cannot list the host's sockets: {e}");
        }
    })?;
    Ok(())
}

fn sweep(daemon: &Daemon, bound_only: bool) -> std::io::Result<()> {
    let (mark, unlistened_tcp) = {
        let t = daemon.table();
        (t.mark(), t.has_unlistened(Proto::Tcp))
    };
    let inodes = |protocol: i32, states: u32| -> std::io::Result<HashSet<u64>> {
        Ok(diag::list(protocol as u8, states)?.into_iter().map(|s| s.inode).collect())
    };
    let listening = inodes(libc::IPPROTO_TCP, 1 << TCP_LISTEN)?;
    // Bound-only rows are judged against every TCP socket (one that bound and then
    // connected still holds its port), and only where the kernel lists bound-only ones.
    let bound = if unlistened_tcp && bound_only { Some(inodes(libc::IPPROTO_TCP, u32::MAX)?) } else { None };
    let udp = inodes(libc::IPPROTO_UDP, u32::MAX)?;
    let mut t = daemon.table();
    let mut gone = t.sweep(Proto::Tcp, &listening, bound.as_ref(), mark);
    gone.extend(t.sweep(Proto::Udp, &udp, Some(&udp), mark));
    drop(t);
    if !gone.is_empty() {
        crate::state::save(daemon);
    }
    for b in gone.iter().filter(|b| b.listening) {
        info!(app = %b.app, service = %b.service, host = %b.host, "service row removed: its socket was closed");
    }
    Ok(())
}

/// Whether sock_diag lists a socket that is bound but neither listening nor connected.
fn lists_bound_only_sockets() -> bool {
    let Ok(probe) = ax_sys::sock::socket(libc::AF_INET, libc::SOCK_STREAM, 0) else { return false };
    let fd = std::os::fd::AsFd::as_fd(&probe);
    if ax_sys::sock::bind(fd, &"127.0.0.1:0".parse().expect("literal")).is_err() {
        return false;
    }
    let Ok(inode) = ax_sys::sock::inode(fd) else { return false };
    diag::list(libc::IPPROTO_TCP as u8, 1 << TCP_BOUND_INACTIVE).is_ok_and(|l| l.iter().any(|s| s.inode == inode))
}
