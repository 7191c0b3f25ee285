//! The app's sockets that meet at a port, as the kernel would see them on one host: the
//! bind and listen conflicts among them (the rules are `ax_core::conflict`'s), and
//! whether a listener in the app's namespace takes a loopback connect before one of its
//! wildcard listeners on the host. The engine records what it binds in the app's
//! namespace here; the host's are the table's bindings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ax_core::addr;
use ax_core::conflict::{self, Held};
use ax_core::{Errno, Proto};
use ax_sys::kernel::Kernel;
use ax_sys::seccomp::Notification;

use crate::{Engine, Node};

/// A socket bound in the app's own namespace: its inode and the address it was bound to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrivateBound {
    pub(crate) inode: u64,
    pub(crate) addr: IpAddr,
}

impl<K: Kernel, N: Node> Engine<K, N> {
    /// Whether an IPv6 socket has IPV6_V6ONLY set.
    pub(crate) fn v6only(&self, s: &K::Fd) -> bool {
        self.k.get_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).is_ok_and(|v| v != 0)
    }

    /// Records a socket bound in the app's namespace at `ip` (its port now the kernel's
    /// answer): for bind conflicts with host sockets, and for the kernel driver, which
    /// sends the app's connects to this port into its namespace.
    pub(crate) fn bound_privately(&self, proto: Proto, fresh: &K::Fd, ip: IpAddr) -> Result<(), Errno> {
        let Some(local) = self.k.local_addr(fresh)? else { return Ok(()) };
        let entry = PrivateBound { inode: self.k.inode(fresh)?, addr: ip };
        self.private.lock().unwrap_or_else(|p| p.into_inner()).entry((proto, local.port())).or_default().push(entry);
        self.node.with_table(|t| t.add_private_bind(self.app, proto, local.port()));
        self.node.changed();
        Ok(())
    }

    /// EADDRINUSE when binding (`listening` false) or listening on the app's socket `s`
    /// at `at` conflicts with another socket of the app at that port, as the kernel
    /// decides it ([`conflict`]): the app's sockets each have a host port (or live in
    /// its namespace), so the kernel never sees two of them meet. An automatic port
    /// (0) never conflicts.
    pub(crate) fn no_conflict(
        &self,
        n: &Notification,
        s: &K::Fd,
        proto: Proto,
        at: SocketAddr,
        listening: bool,
    ) -> Result<(), Errno> {
        if at.port() == 0 {
            return Ok(());
        }
        let inode = self.k.inode(s)?;
        let new = Held { listening, ..self.held(s, at.ip())? };
        conflict::check(&new, &self.held_at(n, proto, at.port(), inode)?)
    }

    /// What the kernel weighs of the socket `s` bound at `addr`.
    pub(crate) fn held(&self, s: &K::Fd, addr: IpAddr) -> Result<Held, Errno> {
        let on = |level, opt| self.k.get_int(s, level, opt).map(|v| v != 0);
        Ok(Held {
            addr,
            v6only: addr.is_ipv6() && self.v6only(s),
            reuse_addr: on(libc::SOL_SOCKET, libc::SO_REUSEADDR)?,
            reuse_port: on(libc::SOL_SOCKET, libc::SO_REUSEPORT)?,
            listening: on(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)?,
        })
    }

    /// The app's other sockets at `port` (host binds and binds in its namespace), as
    /// they are now, but the one with inode `except`. Only sockets the caller's process
    /// still holds count: a socket it closed is gone, even before the sweep drops its
    /// row (and one held only by another process of the app is missed).
    pub(crate) fn held_at(&self, n: &Notification, proto: Proto, port: u16, except: u64) -> Result<Vec<Held>, Errno> {
        let app = self.app;
        let mut bound: Vec<(u64, IpAddr)> = self.node.with_table(|t| {
            t.bindings()
                .filter(|b| b.app == app && b.proto == proto && b.service.port() == port && b.inode != except)
                .map(|b| (b.inode, b.requested.ip()))
                .collect()
        });
        let mut private = self.private.lock().unwrap_or_else(|p| p.into_inner());
        if bound.is_empty() && !private.contains_key(&(proto, port)) {
            return Ok(Vec::new());
        }
        // One look at the caller's descriptors, however many sockets there are.
        let fds = self.k.socket_fds(n.pid);
        if let Some(here) = private.get_mut(&(proto, port)) {
            // Entries of sockets the app closed go now: the map holds no more than the
            // sockets the app holds, and a port bound once.
            here.retain(|p| fds.contains_key(&p.inode));
            bound.extend(here.iter().filter(|p| p.inode != except).map(|p| (p.inode, p.addr)));
            if here.is_empty() {
                private.remove(&(proto, port));
            }
        }
        drop(private);
        let mut held = Vec::new();
        for (inode, addr) in bound {
            let Some(&fd) = fds.get(&inode) else { continue };
            let s = match self.k.get_fd(n.pid, n.id, fd) {
                Ok(s) => s,
                Err(libc::EBADF) => continue,
                Err(e) => return Err(e),
            };
            // Moved meanwhile (the app raced its own descriptors): not the socket looked for.
            if self.k.inode(&s)? == inode {
                held.push(self.held(&s, addr)?);
            }
        }
        Ok(held)
    }

    /// Whether a TCP listener in the app's namespace takes a connect to the loopback
    /// `dest` (127.0.0.1 for `0.0.0.0`; `::1` or a v6-only `::` for `::1` and `::`), as
    /// it would on a host before any wildcard listener. Reads the app's descriptors
    /// only where the daemon bound a socket at that port there.
    pub(crate) fn listens_privately(&self, n: &Notification, dest: SocketAddr) -> bool {
        let dest = addr::unmap(dest);
        let takes = |at: IpAddr| match dest.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => at == IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(ip) => at == IpAddr::V4(ip),
            IpAddr::V6(_) => at.is_ipv6() && (at.is_loopback() || at.is_unspecified()),
        };
        let candidates: Vec<u64> = {
            let private = self.private.lock().unwrap_or_else(|p| p.into_inner());
            let here = private.get(&(Proto::Tcp, dest.port())).into_iter().flatten();
            here.filter(|p| takes(p.addr)).map(|p| p.inode).collect()
        };
        if candidates.is_empty() {
            return false;
        }
        let fds = self.k.socket_fds(n.pid);
        candidates.iter().filter_map(|inode| fds.get(inode)).any(|fd| {
            self.k
                .get_fd(n.pid, n.id, *fd)
                .is_ok_and(|s| self.k.get_int(&s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).is_ok_and(|on| on != 0))
        })
    }

    /// For a socket the daemon bound in the app's namespace: its protocol and the
    /// address it was bound at.
    pub(crate) fn bound_here(&self, s: &K::Fd) -> Result<Option<(Proto, SocketAddr)>, Errno> {
        let inode = self.k.inode(s)?;
        let private = self.private.lock().unwrap_or_else(|p| p.into_inner());
        let found = private.iter().find_map(|((proto, port), here)| {
            here.iter().find(|p| p.inode == inode).map(|p| (*proto, SocketAddr::new(p.addr, *port)))
        });
        Ok(found)
    }
}
