//! Keeps the socket tables true to the kernel: every 200 ms it lists the host's TCP
//! listeners (and, when there are bound-only rows, every TCP socket; and UDP sockets)
//! with sock_diag and drops rows whose socket two listings in a row did not show, so a
//! closed listener leaves the service table within half a second. The daemon never
//! holds an app's listener open itself.

use std::collections::HashSet;
use std::time::Duration;

use ax_core::Proto;
use ax_sys::netlink::{self as diag, TCP_LISTEN};
use tracing::warn;

use crate::state::{Command, Sweep};
use crate::Daemon;

pub const PERIOD: Duration = Duration::from_millis(200);
/// sock_diag's pseudo-state for bound, not listening TCP sockets (kernel 6.10+).
const TCP_BOUND_INACTIVE: u8 = 13;

/// Where the watcher learns which sockets the host has, by inode.
pub trait Sockets: Send + 'static {
    /// TCP listeners.
    fn tcp_listening(&self) -> std::io::Result<HashSet<u64>>;
    /// Every TCP socket; None where bound-only sockets cannot be listed.
    fn tcp_all(&self) -> Option<std::io::Result<HashSet<u64>>>;
    fn udp(&self) -> std::io::Result<HashSet<u64>>;
}

/// The kernel's socket list, through sock_diag.
pub struct Netlink {
    bound_only: bool,
}

impl Netlink {
    /// Checks once whether this kernel lists bound-only TCP sockets.
    pub fn probe() -> Netlink {
        let bound_only = lists_bound_only_sockets();
        if !bound_only {
            warn!(
                "this kernel's sock_diag does not list bound-only TCP sockets: their rows stay until their app exits"
            );
        }
        Netlink { bound_only }
    }
}

fn inodes(protocol: i32, states: u32) -> std::io::Result<HashSet<u64>> {
    Ok(diag::list(protocol as u8, states)?.into_iter().map(|s| s.inode).collect())
}

impl Sockets for Netlink {
    fn tcp_listening(&self) -> std::io::Result<HashSet<u64>> {
        inodes(libc::IPPROTO_TCP, 1 << TCP_LISTEN)
    }

    fn tcp_all(&self) -> Option<std::io::Result<HashSet<u64>>> {
        self.bound_only.then(|| inodes(libc::IPPROTO_TCP, u32::MAX))
    }

    fn udp(&self) -> std::io::Result<HashSet<u64>> {
        inodes(libc::IPPROTO_UDP, u32::MAX)
    }
}

/// Sweeps every [`PERIOD`] (tokio time). A sweep lists the host's sockets (thousands,
/// on a busy host) and waits its turn to apply: on a blocking thread, never on the few
/// async workers that serve REST, DNS and gossip.
pub fn spawn(daemon: Daemon, sockets: impl Sockets + Sync) -> tokio::task::JoinHandle<()> {
    let sockets = std::sync::Arc::new(sockets);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let (d, s) = (daemon.clone(), sockets.clone());
            match tokio::task::spawn_blocking(move || sweep(&d, &*s)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("cannot list the host's sockets: {e}"),
                Err(e) => warn!("the socket sweep failed: {e}"),
            }
        }
    })
}

fn sweep(daemon: &Daemon, sockets: &impl Sockets) -> std::io::Result<()> {
    let (mark, unlistened_tcp) = daemon.read(|s| (s.table.mark(), s.table.has_unlistened(Proto::Tcp)));
    let tcp_listening = sockets.tcp_listening()?;
    // Bound-only rows are judged against every TCP socket (one that bound and then
    // connected still holds its port), and only where the kernel lists bound-only ones.
    let tcp_bound = if unlistened_tcp { sockets.tcp_all().transpose()? } else { None };
    let udp = sockets.udp()?;
    daemon.submit(Command::Sweep(Sweep { mark, tcp_listening, tcp_bound, udp }));
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
