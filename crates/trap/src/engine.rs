//! The engine of one app: waits on its seccomp listener and answers each trapped call
//! in the host's network namespace.
//!
//! Every address is read from the app's memory once, into our own buffer, and the
//! notification is checked still valid before the daemon acts on it: an app racing its
//! own memory only changes what it asked for, never what the daemon does.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use ax_core::addr::{self, Family, SockAddr};
use ax_core::{AppId, BindPlan, BoundSocket, Errno, Proto, Route};
use ax_sys::seccomp::{LastId, Listener, Notification, Ready};
use ax_sys::{ns, sock};
use tracing::{debug, info, warn};

use crate::task::Tasks;
use crate::Node;

/// The largest sockaddr the kernel accepts (sizeof(struct sockaddr_storage)).
const MAX_SOCKADDR: usize = 128;
/// How many busy host ports a bind skips before giving up.
const MAX_BIND_TRIES: usize = 256;

/// How a trapped call is answered.
#[derive(Debug)]
pub(crate) enum Answer {
    Value(i64),
    Fail(Errno),
    /// The kernel runs the call as made (only where that is safe).
    Proceed,
    /// Already answered (ADDFD with SEND).
    Sent,
    /// A helper thread answers once a blocking connect finishes.
    Later,
}

/// An app's socket, as the engine sees it.
pub(crate) enum Sock {
    /// TCP or UDP in the host's namespace: made by the daemon, virtualized.
    Host(OwnedFd, Family, Proto),
    /// Inet, in the app's own namespace (loopback sockets, raw sockets).
    Private(OwnedFd, Family),
    /// AF_UNIX and every other family: none of ax's business.
    Other,
}

/// The namespaces an engine moves sockets between.
struct Namespaces {
    app: File,
    host: File,
    host_cookie: u64,
}

/// Answers the trapped calls of one app.
pub struct Engine<N: Node> {
    pub(crate) app: AppId,
    pub(crate) node: Arc<N>,
    pub(crate) listener: Arc<Listener>,
    pub(crate) tasks: Tasks,
    ns: Namespaces,
    /// Where the id of each call received is kept, for a daemon after a crash.
    last_id: LastId,
}

pub(crate) fn errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl<N: Node> Engine<N> {
    /// An engine for `app`, whose first process is `pid`; call from a thread in the
    /// host's network namespace.
    pub fn new(app: AppId, node: Arc<N>, listener: Listener, pid: i32, last_id: LastId) -> std::io::Result<Engine<N>> {
        listener.set_sync_wakeup()?;
        let probe = sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        Ok(Engine {
            app,
            node,
            listener: Arc::new(listener),
            tasks: Tasks::default(),
            ns: Namespaces {
                app: ns::open_netns(pid)?,
                host: ns::current_netns()?,
                host_cookie: sock::netns_cookie(probe.as_fd())?,
            },
            last_id,
        })
    }

    /// Serves until every process of the app is gone.
    pub fn run(mut self) {
        loop {
            match self.listener.wait() {
                Ok(Ready::Notification) => {}
                Ok(Ready::Hangup) => return,
                Err(e) => {
                    warn!(app = %self.app, "seccomp listener failed: {e}");
                    return;
                }
            }
            // ENOENT: the caller was killed between the wake-up and now.
            if let Ok(n) = self.listener.recv() {
                self.last_id.set(n.id);
                self.dispatch(n);
            }
        }
    }

    fn dispatch(&mut self, n: Notification) {
        let result = match n.nr as i64 {
            libc::SYS_socket => self.socket(&n),
            libc::SYS_bind => self.bind(&n),
            libc::SYS_listen => self.listen(&n),
            libc::SYS_connect => self.connect(&n),
            libc::SYS_getsockname => self.name(&n, false),
            libc::SYS_getpeername => self.name(&n, true),
            libc::SYS_sendto => self.sendto(&n),
            libc::SYS_sendmsg => self.sendmsg(&n),
            libc::SYS_recvfrom => self.recvfrom(&n),
            libc::SYS_recvmsg => self.recvmsg(&n),
            _ => Ok(Answer::Proceed),
        };
        let sent = match result {
            Ok(Answer::Value(v)) => self.listener.reply(n.id, v),
            Ok(Answer::Fail(e)) | Err(e) => self.listener.fail(n.id, e),
            Ok(Answer::Proceed) => self.listener.proceed(n.id),
            Ok(Answer::Sent | Answer::Later) => Ok(()),
        };
        // The caller may have died meanwhile (ENOENT); nothing is owed to anyone then.
        if let Err(e) = sent {
            debug!(app = %self.app, nr = n.nr, "answer not delivered: {e}");
        }
    }

    fn socket(&mut self, n: &Notification) -> Result<Answer, Errno> {
        let (domain, ty, protocol) = (n.args[0] as i32, n.args[1] as i32, n.args[2] as i32);
        let plain = match Proto::from_sock_type(ty) {
            Some(Proto::Tcp) => protocol == 0 || protocol == libc::IPPROTO_TCP,
            Some(Proto::Udp) => protocol == 0 || protocol == libc::IPPROTO_UDP,
            None => false,
        };
        if !plain {
            // Raw, ICMP, SCTP and the like stay in the app's own (empty) namespace.
            return Ok(Answer::Proceed);
        }
        let s = sock::socket(domain, ty & !libc::SOCK_CLOEXEC, protocol).map_err(errno)?;
        let cloexec = ty & libc::SOCK_CLOEXEC != 0;
        self.listener.add_fd(n.id, s.as_fd(), None, cloexec, true).map_err(errno)?;
        Ok(Answer::Sent)
    }

    /// What the app's socket args[0] is. Bind, connect and listen are carried out by the
    /// daemon on every inet socket, the app's own included: letting the kernel re-run
    /// them by descriptor number would let a racing dup2 put a host socket there.
    pub(crate) fn classify(&mut self, n: &Notification) -> Result<Sock, Errno> {
        let s = self.tasks.get_fd(n.pid, n.id, &self.listener, n.args[0] as RawFd)?;
        let fd = s.as_fd();
        let Some(family) = sock::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok().and_then(Family::from_raw) else {
            return Ok(Sock::Other);
        };
        if sock::netns_cookie(fd).map_err(errno)? != self.ns.host_cookie {
            return Ok(Sock::Private(s, family));
        }
        match Proto::from_sock_type(sock::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(errno)?) {
            Some(proto) => Ok(Sock::Host(s, family, proto)),
            None => Ok(Sock::Private(s, family)),
        }
    }

    /// The app's socket args[0], when it is a TCP or UDP socket the daemon made.
    pub(crate) fn host_socket(&mut self, n: &Notification) -> Result<Option<(OwnedFd, Family, Proto)>, Errno> {
        Ok(match self.classify(n)? {
            Sock::Host(s, family, proto) => Some((s, family, proto)),
            Sock::Private(..) | Sock::Other => None,
        })
    }

    /// Copies the sockaddr at `ptr` (`len` bytes) out of the app, then makes sure the
    /// call is still pending before anything is done with it.
    pub(crate) fn read_addr(
        &mut self,
        n: &Notification,
        ptr: u64,
        len: u64,
        family: Family,
    ) -> Result<SockAddr, Errno> {
        let len = len as u32 as i32;
        if len < 0 || len as usize > MAX_SOCKADDR {
            return Err(libc::EINVAL);
        }
        let mut buf = vec![0u8; len as usize];
        self.tasks.read(n.pid, n.id, &self.listener, ptr, &mut buf)?;
        if !self.listener.id_valid(n.id) {
            return Err(libc::EINTR);
        }
        let a = addr::parse(&buf)?;
        match (family, a) {
            (Family::V4, SockAddr::Inet(SocketAddr::V6(_))) => Err(libc::EAFNOSUPPORT),
            // Too short for a sockaddr_in6, as the kernel says for bind and connect.
            (Family::V6, SockAddr::Inet(SocketAddr::V4(_)))
                if n.nr as i64 != libc::SYS_sendto && n.nr as i64 != libc::SYS_sendmsg =>
            {
                Err(libc::EINVAL)
            }
            _ => Ok(a),
        }
    }

    fn bind(&mut self, n: &Notification) -> Result<Answer, Errno> {
        let (s, family, proto) = match self.classify(n)? {
            Sock::Host(s, family, proto) => (s, family, proto),
            Sock::Private(s, family) => {
                let SockAddr::Inet(want) = self.read_addr(n, n.args[1], n.args[2], family)? else {
                    return Err(libc::EAFNOSUPPORT);
                };
                sock::bind(s.as_fd(), &want).map_err(errno)?;
                return Ok(Answer::Value(0));
            }
            Sock::Other => return Ok(Answer::Proceed),
        };
        let SockAddr::Inet(want) = self.read_addr(n, n.args[1], n.args[2], family)? else {
            return Err(libc::EAFNOSUPPORT);
        };
        let plan = self.node.with_table(|t| t.plan_bind(self.app, want))?;
        match plan {
            BindPlan::Private => {
                let fresh = self.privatize(n, s.as_fd())?;
                sock::bind(fresh.as_fd(), &want).map_err(errno)?;
            }
            BindPlan::Host { service, host_port } => {
                self.bind_host(s.as_fd(), family, proto, want, service, host_port)?;
            }
        }
        Ok(Answer::Value(0))
    }

    /// Binds the socket on the node address, at its exposed host port or else at a pool
    /// port, and records it.
    #[allow(clippy::too_many_arguments)]
    fn bind_host(
        &self,
        s: BorrowedFd<'_>,
        family: Family,
        proto: Proto,
        requested: SocketAddr,
        service: SocketAddrV4,
        exposed: Option<u16>,
    ) -> Result<u16, Errno> {
        if sock::local_addr(s).map_err(errno)?.is_some_and(|a| a.port() != 0) {
            return Err(libc::EINVAL);
        }
        if family == Family::V6 && sock::get_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0) != 0 {
            // A v6-only `::` socket is served on the node's IPv4 address like any other.
            sock::set_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0).map_err(errno)?;
        }
        let bound = BoundSocket {
            inode: sock::inode(s).map_err(errno)?,
            proto,
            family,
            requested,
            flags: sock::file_flags(s).map_err(errno)?,
        };
        if let Some(port) = exposed {
            // No proxy: the app's own socket is bound on the exposed port.
            self.bind_at(s, bound, service, port).map_err(errno)?;
            return Ok(port);
        }
        for _ in 0..MAX_BIND_TRIES {
            let Some(port) = self.node.with_table(|t| t.take_port()) else {
                let (capacity, ranges) = self.node.with_table(|t| (t.pool().capacity(), t.pool().ranges().clone()));
                warn!(
                    app = %self.app,
                    "port pool exhausted: all {capacity} ports of --ports {ranges} are in use; the bind of {service} fails with EADDRINUSE",
                );
                return Err(libc::EADDRINUSE);
            };
            match self.bind_at(s, bound, service, port) {
                Ok(()) => return Ok(port),
                Err(e) => {
                    self.node.with_table(|t| t.give_back_port(port));
                    if e.raw_os_error() != Some(libc::EADDRINUSE) {
                        return Err(errno(e));
                    }
                    debug!(app = %self.app, port, "pool port is busy on the host; trying the next");
                }
            }
        }
        warn!(app = %self.app, "no free host port for {service} after {MAX_BIND_TRIES} busy ones; the bind fails with EADDRINUSE");
        Err(libc::EADDRINUSE)
    }

    /// Binds on node:`port` and records the socket (a UDP one is a service row at once:
    /// there is no listen).
    fn bind_at(&self, s: BorrowedFd<'_>, bound: BoundSocket, service: SocketAddrV4, port: u16) -> std::io::Result<()> {
        let node = self.node.with_table(|t| t.node().ip);
        let host = addr::for_family(SocketAddr::V4(SocketAddrV4::new(node, port)), bound.family);
        sock::bind(s, &host)?;
        self.node.with_table(|t| {
            let b = t.add_binding(self.app, bound, service, port);
            if bound.proto == Proto::Udp && service.port() != 0 {
                t.set_listening(bound.proto, port, b.inode, 0);
                info!(app = %self.app, %service, %host, "udp service row added");
            }
        });
        self.node.changed();
        debug!(app = %self.app, %service, %host, "bound");
        Ok(())
    }

    fn listen(&mut self, n: &Notification) -> Result<Answer, Errno> {
        let backlog = n.args[1] as i32;
        let (s, family, proto) = match self.classify(n)? {
            Sock::Host(s, family, proto) => (s, family, proto),
            Sock::Private(s, _) => {
                sock::listen(s.as_fd(), backlog).map_err(errno)?;
                return Ok(Answer::Value(0));
            }
            Sock::Other => return Ok(Answer::Proceed),
        };
        let fd = s.as_fd();
        let local = sock::local_addr(fd).map_err(errno)?.ok_or(libc::EINVAL)?;
        let port = if local.port() == 0 {
            // listen() on an unbound socket binds it to a wildcard port, as the kernel does.
            let ip = self.node.with_table(|t| t.app(self.app).map(|a| a.ip)).ok_or(libc::EPERM)?;
            self.bind_host(fd, family, proto, local, SocketAddrV4::new(ip, 0), None)?
        } else {
            local.port()
        };
        sock::listen(fd, backlog).map_err(errno)?;
        let inode = sock::inode(fd).map_err(errno)?;
        let row = self.node.with_table(|t| t.set_listening(proto, port, inode, backlog).cloned());
        if let Some(b) = row {
            info!(app = %self.app, service = %b.service, host = %b.host, "service row added");
            self.node.changed();
        }
        Ok(Answer::Value(0))
    }

    fn connect(&mut self, n: &Notification) -> Result<Answer, Errno> {
        let (s, family, proto) = match self.classify(n)? {
            Sock::Host(s, family, proto) => (s, family, proto),
            Sock::Private(s, family) => {
                return match self.read_addr(n, n.args[1], n.args[2], family)? {
                    SockAddr::Inet(dest) => self.connect_to(n, s, &[(dest, None)], family),
                    SockAddr::Unspec => sock::disconnect(s.as_fd()).map(|()| Answer::Value(0)).map_err(errno),
                    SockAddr::Other(_) => Err(libc::EAFNOSUPPORT),
                };
            }
            Sock::Other => return Ok(Answer::Proceed),
        };
        let dest = match self.read_addr(n, n.args[1], n.args[2], family)? {
            SockAddr::Inet(a) => a,
            SockAddr::Unspec => {
                sock::disconnect(s.as_fd()).map_err(errno)?;
                return Ok(Answer::Value(0));
            }
            SockAddr::Other(_) => return Err(libc::EAFNOSUPPORT),
        };
        let route = self.node.with_table(|t| t.route_connect(self.app, proto, dest));
        debug!(app = %self.app, %dest, ?route, "connect");
        match route {
            Route::Private => {
                let fresh = self.privatize(n, s.as_fd())?;
                self.connect_to(n, fresh, &[(dest, None)], family)
            }
            Route::Refused => Err(libc::ECONNREFUSED),
            Route::Direct(a) => self.connect_to(n, s, &[(a, None)], family),
            Route::Egress { gateway, dest } => self.egress(n, s, gateway, dest, family),
            Route::Backends(targets) => {
                let targets: Vec<_> = targets.into_iter().map(|t| (SocketAddr::V4(t.addr), t.source)).collect();
                self.connect_to(n, s, &targets, family)
            }
        }
    }

    /// Connects the app's socket to the first of `targets` that does not refuse. A
    /// blocking socket is connected without blocking this thread: if the handshake is
    /// not done at once, a helper thread answers the app when it is.
    fn connect_to(
        &self,
        n: &Notification,
        s: OwnedFd,
        targets: &[(SocketAddr, Option<Ipv4Addr>)],
        family: Family,
    ) -> Result<Answer, Errno> {
        let fd = s.as_fd();
        // A vservice's --source-ip: the host address its external connections use.
        if let Some(source) = targets.iter().find_map(|t| t.1) {
            if sock::local_addr(fd).map_err(errno)?.is_none_or(|a| a.port() == 0) {
                sock::bind(fd, &addr::for_family(SocketAddr::from((source, 0)), family)).map_err(errno)?;
            }
        }
        let flags = sock::file_flags(fd).map_err(errno)?;
        let blocking = flags & libc::O_NONBLOCK == 0;
        if blocking {
            sock::set_file_flags(fd, flags | libc::O_NONBLOCK).map_err(errno)?;
        }
        let mut answer = Err(libc::ECONNREFUSED);
        for (i, (target, _)) in targets.iter().enumerate() {
            let more = i + 1 < targets.len();
            if i > 0 {
                // After a refused attempt the socket must be reset (AF_UNSPEC) before it
                // can connect again; otherwise Linux answers ECONNABORTED.
                let _ = sock::disconnect(fd);
            }
            answer = match sock::connect(fd, &addr::for_family(*target, family)).map_err(errno) {
                Ok(()) => Ok(Answer::Value(0)),
                Err(libc::EINPROGRESS) => match sock::wait_writable(fd, 0) {
                    Ok(true) => match so_error(fd) {
                        0 => Ok(Answer::Value(0)),
                        libc::ECONNREFUSED if more => continue,
                        e => Err(e),
                    },
                    Ok(false) if blocking => Ok(Answer::Later),
                    Ok(false) => Ok(Answer::Fail(libc::EINPROGRESS)),
                    Err(e) => Err(errno(e)),
                },
                Err(libc::ECONNREFUSED) if more => continue,
                Err(e) => Err(e),
            };
            break;
        }
        if blocking {
            sock::set_file_flags(fd, flags).map_err(errno)?;
        }
        if let Ok(Answer::Later) = answer {
            let listener = Arc::clone(&self.listener);
            let id = n.id;
            return later(move || {
                // A connect that outlives SO_SNDTIMEO reports EINPROGRESS, as in the kernel.
                let result = match sock::wait_writable(s.as_fd(), socket_timeout_ms(s.as_fd(), libc::SO_SNDTIMEO)) {
                    Ok(true) => so_error(s.as_fd()),
                    Ok(false) => libc::EINPROGRESS,
                    Err(e) => errno(e),
                };
                let _ = if result == 0 { listener.reply(id, 0) } else { listener.fail(id, result) };
            });
        }
        answer
    }

    fn name(&mut self, n: &Notification, peer: bool) -> Result<Answer, Errno> {
        let s = self.tasks.get_fd(n.pid, n.id, &self.listener, n.args[0] as RawFd)?;
        let fd = s.as_fd();
        let real = if peer { sock::peer_addr(fd) } else { sock::local_addr(fd) }.map_err(errno)?;
        let Some(real) = real else {
            return Ok(Answer::Proceed);
        };
        let proto = sock::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok().and_then(Proto::from_sock_type);
        let shown = proto.and_then(|p| {
            self.node.with_table(|t| {
                if peer && real.port() == ax_core::EGRESS_PORT {
                    let local = sock::local_addr(fd).ok().flatten()?;
                    return t.egress_peer(local).or_else(|| t.peer_name(p, real));
                }
                if peer {
                    t.peer_name(p, real)
                } else {
                    t.local_name(self.app, p, real)
                }
            })
        });
        let Some(shown) = shown.filter(|s| *s != addr::unmap(real)) else {
            return Ok(Answer::Proceed);
        };
        let family = if real.is_ipv4() { Family::V4 } else { Family::V6 };
        let bytes = addr::encode(shown, family);
        let (addr_ptr, len_ptr) = (n.args[1], n.args[2]);
        let mut len = [0u8; 4];
        self.tasks.read(n.pid, n.id, &self.listener, len_ptr, &mut len)?;
        let len = i32::from_ne_bytes(len);
        if len < 0 {
            return Err(libc::EINVAL);
        }
        if !self.listener.id_valid(n.id) {
            return Err(libc::EINTR);
        }
        let shown_len = bytes.len().min(len as usize);
        self.tasks.write(n.pid, n.id, &self.listener, addr_ptr, &bytes[..shown_len])?;
        self.tasks.write(n.pid, n.id, &self.listener, len_ptr, &(bytes.len() as u32).to_ne_bytes())?;
        Ok(Answer::Value(0))
    }

    /// Replaces the app's socket `fd` with a fresh one in the app's own namespace, with
    /// the same type and the options that matter, so a loopback bind or connect stays
    /// private to the app. Returns our copy of the new socket.
    pub(crate) fn privatize(&mut self, n: &Notification, old: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
        let get = |opt| sock::get_int(old, libc::SOL_SOCKET, opt).map_err(errno);
        let (domain, ty, protocol) = (get(libc::SO_DOMAIN)?, get(libc::SO_TYPE)?, get(libc::SO_PROTOCOL)?);
        let fresh = ns::with_netns(&self.ns.app, &self.ns.host, || sock::socket(domain, ty, protocol))
            .map_err(errno)?
            .map_err(errno)?;
        copy_options(old, fresh.as_fd());
        let flags = sock::file_flags(old).map_err(errno)?;
        sock::set_file_flags(fresh.as_fd(), flags).map_err(errno)?;
        let fd = n.args[0] as RawFd;
        let cloexec = fd_cloexec(n.pid, fd);
        self.listener.add_fd(n.id, fresh.as_fd(), Some(fd), cloexec, false).map_err(errno)?;
        Ok(fresh)
    }
}

/// Runs `f` on a helper thread that will answer a call later; EAGAIN for the app if
/// no thread can be had (the engine itself must never die of it).
pub(crate) fn later(f: impl FnOnce() + Send + 'static) -> Result<Answer, Errno> {
    std::thread::Builder::new().name("ax-later".into()).spawn(f).map(|_| Answer::Later).map_err(|e| {
        warn!("cannot start a helper thread: {e}");
        libc::EAGAIN
    })
}

/// SO_RCVTIMEO or SO_SNDTIMEO in milliseconds, or -1 for none.
pub(crate) fn socket_timeout_ms(fd: BorrowedFd<'_>, opt: i32) -> i32 {
    let mut tv = [0u8; 16];
    match sock::get_opt(fd, libc::SOL_SOCKET, opt, &mut tv) {
        Ok(16) => {
            let secs = i64::from_ne_bytes(tv[0..8].try_into().expect("8 bytes"));
            let usecs = i64::from_ne_bytes(tv[8..16].try_into().expect("8 bytes"));
            match secs * 1000 + usecs / 1000 {
                0 => -1,
                ms => ms.clamp(1, i32::MAX as i64) as i32,
            }
        }
        _ => -1,
    }
}

fn so_error(fd: BorrowedFd<'_>) -> Errno {
    sock::get_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or_else(errno)
}

/// Options an app commonly sets before bind or connect, carried to a replacement socket.
const CARRIED_OPTIONS: &[(i32, i32, usize)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, 4),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, 4),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, 4),
    (libc::SOL_SOCKET, libc::SO_LINGER, 8),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 4),
];

fn copy_options(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut buf = [0u8; 16];
    for &(level, opt, size) in CARRIED_OPTIONS {
        // Options that do not apply to this socket's family or type fail both ways.
        if let Ok(n) = sock::get_opt(from, level, opt, &mut buf[..size]) {
            let _ = sock::set_opt(to, level, opt, &buf[..n]);
        }
    }
}

/// Whether the app's descriptor has close-on-exec set (a per-descriptor flag that the
/// duplicate we hold does not share), from /proc.
fn fd_cloexec(tid: i32, fd: RawFd) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim().to_string();
            i32::from_str_radix(&flags, 8).ok()
        })
        .is_some_and(|f| f & libc::O_CLOEXEC != 0)
}
