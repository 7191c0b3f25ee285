//! The engine of one app: takes each trapped call from the kernel, decodes it
//! ([`crate::call`]), asks the plan ([`crate::plan`], over the daemon's table) what it
//! means, and carries that out through the [`Kernel`] seam, in the host's network
//! namespace.
//!
//! Every address is read from the app's memory once, into our own buffer, and the
//! notification is checked still valid before the daemon acts on it: an app racing its
//! own memory only changes what it asked for, never what the daemon does.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ax_core::addr::{self, Family, SockAddr};
use ax_core::kmap::SockState;
use ax_core::{limits, AppId, BoundSocket, Driver, Errno, Proto};
use ax_sys::kernel::{Kernel, Netns, Readiness, Reply};
use ax_sys::seccomp::Notification;
use tracing::{debug, info, warn};

use crate::call::{AddrIn, Call};
use crate::held::PrivateBound;
use crate::helper::{wait_for_call, Helpers, Hush, Waited};
use crate::policy::SocketGuard;
use crate::spare::{Made, Recipe, Spares};
use crate::stats::Stats;
use crate::Node;
use crate::{echo, fds, guard};
use ax_core::plan::{self, Attempt, Bind, Connect, Kind, Progress, Use};

/// How a trapped call is answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Value(i64),
    /// The kernel runs the call as made (only where that is safe).
    Proceed,
    /// A helper thread answers it later.
    Later,
    /// Already answered, by the call itself.
    Sent,
}

/// Answers the trapped calls of one app.
pub struct Engine<K: Kernel, N: Node> {
    pub(crate) app: AppId,
    pub(crate) k: Arc<K>,
    pub(crate) node: Arc<N>,
    pub(crate) helpers: Helpers,
    /// For the warnings an app can repeat at will: no more helpers, its share of the
    /// pool taken, the pool exhausted.
    pub(crate) hush_helpers: Hush,
    hush_share: Hush,
    hush_pool: Hush,
    hush_fds: Hush,
    /// Host sockets made ahead for the app's next `socket()` calls.
    pub(crate) spares: Spares<K::Fd>,
    /// The app's driver: under the kernel driver, its host sockets are the kernel
    /// driver's programs' to rule (not GUARDED: the guard leaves them alone).
    driver: Driver,
    /// Whether the socket guard polices what this engine lets continue natively.
    pub(crate) guard: SocketGuard,
    /// The app's processes live in the host's network namespace (`--new-netns=false`, or
    /// placed there under the kernel driver): a socket let through natively is a host
    /// socket no one rules.
    in_host_netns: bool,
    /// What the daemon's `/metrics` shows of this engine's calls.
    pub(crate) stats: Arc<Stats>,
    /// The sockets the daemon bound in the app's own namespace for it, by protocol and
    /// port: what a bind on the host must not conflict with (the kernel there sees only
    /// its own). Entries of closed sockets go when their port is bound again.
    pub(crate) private: Mutex<HashMap<(Proto, u16), Vec<PrivateBound>>>,
    /// The app's namespace is one ax did not make for it (`--new-netns=false`, or a
    /// container's where ax run may not make one): it may route anywhere, so every
    /// inet socket in it is ruled as a host socket is, never let connect where it is.
    shared_netns: bool,
    /// The app's echo responder ([`crate::echo`]), once its first ping or raw socket
    /// made its echo device.
    echo: Mutex<Option<echo::Responder>>,
    hush_echo: Hush,
}

impl<K: Kernel, N: Node> Engine<K, N> {
    pub fn new(app: AppId, k: Arc<K>, node: Arc<N>) -> Engine<K, N> {
        let hush = Hush::default;
        Engine {
            app,
            k,
            node,
            helpers: Helpers::default(),
            hush_helpers: hush(),
            hush_share: hush(),
            hush_pool: hush(),
            hush_fds: hush(),
            spares: Spares::default(),
            driver: Driver::User,
            guard: SocketGuard::Installed,
            in_host_netns: false,
            stats: Arc::default(),
            private: Mutex::default(),
            shared_netns: false,
            echo: Mutex::default(),
            hush_echo: hush(),
        }
    }

    /// The engine of an app of `driver`.
    pub fn with_driver(self, driver: Driver) -> Engine<K, N> {
        Engine { driver, ..self }
    }

    /// The engine of an app whose filter was made for `guard` ([`crate::policy::rules`]).
    pub fn with_guard(self, guard: SocketGuard) -> Engine<K, N> {
        Engine { guard, ..self }
    }

    /// The engine of an app whose processes live in the host's network namespace.
    pub fn in_host_netns(self, in_host_netns: bool) -> Engine<K, N> {
        Engine { in_host_netns, ..self }
    }

    /// The engine counting into `stats` (its daemon's, shared by every engine).
    pub fn with_stats(self, stats: Arc<Stats>) -> Engine<K, N> {
        Engine { stats, ..self }
    }

    /// The engine of an app that shares a namespace ax did not make for it.
    pub fn shared_netns(self, shared_netns: bool) -> Engine<K, N> {
        Engine { shared_netns, ..self }
    }

    /// Marks a host socket for the guard, and for a kernel-driver app hands it to the
    /// kernel driver's programs with `local` as what getsockname shows. The guard's
    /// GUARDED goes only on a user-driver app's sockets: on a kernel-driver app's the
    /// programs refuse what app threads may not do. A `fresh` socket has no marks yet:
    /// none are written for none.
    fn mark(&self, s: &K::Fd, marks: u32, local: Option<SocketAddrV4>, fresh: bool) -> Result<(), Errno> {
        match self.driver {
            Driver::User => self.k.mark(s, marks),
            Driver::Kernel => {
                let marks = marks & !guard::GUARDED;
                if marks != 0 || !fresh {
                    self.k.mark(s, marks)?;
                }
                self.k.mark_kernel(s, &SockState { app: self.app.0, peer: None, local, local_any: false }.encode())
            }
        }
    }

    /// Keeps a kernel-driver app's UDP socket's automatic port (at its first send) out
    /// of the node's pool (IP_LOCAL_PORT_RANGE): the programs refuse datagrams to a pool
    /// port that no entry decides (a row whose entries may not be written yet), and an
    /// answer to this socket must not be one of them. Where the kernel's ephemeral range
    /// lies wholly inside the pool, the socket keeps it (and answers to it are refused).
    fn off_the_pool(&self, s: &K::Fd) -> Result<(), Errno> {
        let Some(gap) = self.node.with_table(|t| t.pool().ranges().widest_gap(ephemeral_ports())) else {
            return Ok(());
        };
        let range = u32::from(*gap.start()) | (u32::from(*gap.end()) << 16);
        self.k.set_opt(s, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range.to_ne_bytes())
    }

    /// Serves until every process of the app is gone.
    pub fn run(&self) {
        // A daemon before this one may have left the app an echo device.
        self.echo(false);
        loop {
            match self.k.next() {
                Ok(Some(n)) => {
                    let started = Instant::now();
                    self.handle(&n);
                    self.stats.call(i64::from(n.nr), started.elapsed());
                }
                Ok(None) => return,
                Err(e) => {
                    warn!(app = %self.app, "the seccomp listener failed (errno {e}); the app's calls go unanswered");
                    return;
                }
            }
        }
    }

    /// Answers one trapped call.
    pub fn handle(&self, n: &Notification) {
        let result = match Call::decode(n) {
            Call::Socket { domain, ty, protocol } => self.socket(n, domain, ty, protocol),
            Call::Bind { fd, addr } => self.bind(n, fd, addr),
            Call::Listen { fd, backlog } => self.listen(n, fd, backlog),
            Call::Connect { fd, addr } => self.connect(n, fd, addr),
            Call::Name { fd, peer, addr, len_ptr } => self.name(n, fd, peer, addr, len_ptr),
            Call::SendTo(c) => self.sendto(n, c),
            Call::SendMsg { fd, msg, flags } => self.sendmsg(n, fd, msg, flags),
            Call::SendMmsg { fd, vec, vlen, flags } => self.sendmmsg(n, fd, vec, vlen, flags),
            Call::RecvFrom(c) => self.recvfrom(n, c),
            Call::RecvMsg { fd, msg, flags } => self.recvmsg(n, fd, msg, flags),
            Call::Other { .. } => Ok(Answer::Proceed),
        };
        self.deliver(n, result);
    }

    /// Answers `n` with `result`, unless it is answered already or later.
    pub(crate) fn deliver(&self, n: &Notification, result: Result<Answer, Errno>) {
        let reply = match result {
            Ok(Answer::Value(v)) => Reply::Value(v),
            Ok(Answer::Proceed) => Reply::Proceed,
            Err(e) => Reply::Fail(e),
            Ok(Answer::Later | Answer::Sent) => return,
        };
        // The caller may have died meanwhile (ENOENT); nothing is owed to anyone then.
        if let Err(e) = self.k.answer(n.id, reply) {
            debug!(app = %self.app, nr = n.nr, "answer not delivered: errno {e}");
        }
    }

    /// Answers with a host socket: the spare made for this recipe after the app's last
    /// such call, or one made now. Once the app has its answer, the next spare is made
    /// (see [`crate::spare`]).
    fn socket(&self, n: &Notification, domain: i32, ty: i32, protocol: i32) -> Result<Answer, Errno> {
        let Some((ty, cloexec)) = plan::socket(ty, protocol) else {
            // Raw, ICMP, SCTP, MPTCP and the like stay in the app's own (empty) namespace;
            // where the app lives in the host's, they would connect and send anywhere.
            if self.in_host_netns {
                return Err(libc::EPROTONOSUPPORT);
            }
            // What a ping or raw socket sends, the daemon answers: the device is there
            // before the socket is.
            if domain == libc::AF_INET && (ty & 0xf == libc::SOCK_RAW || protocol == libc::IPPROTO_ICMP) {
                self.echo(true);
            }
            return Ok(Answer::Proceed);
        };
        let recipe = Recipe { domain, ty, protocol };
        let s = match self.spares.take(recipe) {
            Some(s) => s,
            None => self.make(recipe)?,
        };
        // Should this daemon die before answering, the next one finds the socket in the
        // app by its inode, if it was installed (see crate::resume).
        self.k.note(s.inode);
        let fd = if Proto::from_sock_type(ty) == Some(Proto::Tcp) {
            self.k.add_fd(n.id, &s.fd, None, cloexec)?
        } else {
            self.add_datagram_fd(n, &s.fd, cloexec)?
        };
        // Answered here, so the next spare is made while the app goes on; our copy is
        // closed after the answer too.
        if let Err(e) = self.k.answer(n.id, Reply::Value(fd.into())) {
            debug!(app = %self.app, "socket() answer not delivered: errno {e}");
        }
        drop(s);
        if self.spares.wants(recipe) {
            match self.make(recipe) {
                Ok(spare) => self.spares.keep(recipe, spare),
                Err(e) => debug!(app = %self.app, ?recipe, "no spare socket made: errno {e}"),
            }
        }
        Ok(Answer::Sent)
    }

    /// Starts the app's echo responder unless it runs: on a device made now if `make`
    /// (the app's namespace has none), else only on one a daemon before this one made.
    /// Without one, the app's pings fail as they did before (no route).
    fn echo(&self, make: bool) {
        if self.in_host_netns {
            return;
        }
        let mut running = self.echo.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return;
        }
        let Some(own) = self.node.with_table(|t| t.app(self.app).map(|a| a.ip)) else { return };
        let device = match self.k.echo_device(own, make) {
            Ok(Some(device)) => device,
            Ok(None) => return,
            Err(e) => {
                if self.hush_echo.speak() {
                    warn!(app = %self.app, "no echo device for the app (errno {e}): its pings go unanswered");
                }
                return;
            }
        };
        match echo::start(device, self.app, own, Arc::clone(&self.node)) {
            Ok(r) => *running = Some(r),
            Err(e) => warn!(app = %self.app, "the echo responder did not start: {e}"),
        }
    }

    /// Makes a host socket by `recipe`, marked before the app can touch it: from then on
    /// only the daemon may say where it goes, and a TCP socket takes connections from
    /// members only unless exposed. A kernel-driver app's UDP socket picks its automatic
    /// port outside the pool. Its inode is taken now, not while the app waits for it.
    fn make(&self, recipe: Recipe) -> Result<Made<K::Fd>, Errno> {
        let s = self.k.socket(Netns::Host, recipe.domain, recipe.ty, recipe.protocol)?;
        let tcp = Proto::from_sock_type(recipe.ty) == Some(Proto::Tcp);
        let marks = if tcp { guard::GUARDED | guard::MEMBERS_ONLY } else { guard::GUARDED };
        self.mark(&s, marks, None, true)?;
        if !tcp && self.driver == Driver::Kernel {
            self.off_the_pool(&s)?;
        }
        Ok(Made { inode: self.k.inode(&s)?, fd: s })
    }

    /// Installs a new UDP socket at a free number in [`fds::DATAGRAM_FDS`], where the
    /// filter traps its sends and receives; returns the number. `ax run` gives
    /// apps a soft open-file limit past the range; only an app that lowered its own
    /// meets EBADF (a number past its limit), and then its limit is looked up. EMFILE, as
    /// for a full descriptor table, when the range holds no free number below the limit.
    fn add_datagram_fd(&self, n: &Notification, s: &K::Fd, cloexec: bool) -> Result<RawFd, Errno> {
        let mut limit = None;
        loop {
            let below = limit.unwrap_or(u64::MAX);
            let taken = |fd| match self.k.get_fd(n.pid, n.id, fd) {
                Ok(_) => Ok(true),
                Err(libc::EBADF) => Ok(false),
                Err(e) => Err(e),
            };
            let Some(at) = fds::datagram_slot(below, taken)? else {
                if self.hush_fds.speak() {
                    warn!(
                        app = %self.app,
                        "no free descriptor for a UDP socket in {}-{} below the app's open-file limit ({below}); socket() fails with EMFILE",
                        fds::DATAGRAM_FDS.start,
                        fds::DATAGRAM_FDS.end - 1
                    );
                }
                return Err(libc::EMFILE);
            };
            match self.k.add_fd(n.id, s, Some(at), cloexec) {
                Err(libc::EBADF) if limit.is_none() => limit = Some(self.k.fd_limit(n.pid)?),
                // The app lowered its limit again meanwhile.
                Err(libc::EBADF) => return Err(libc::EMFILE),
                r => return r,
            }
        }
    }

    /// Our copy of the app's descriptor `fd`, and what it is. Bind, connect and listen
    /// are carried out by the daemon on every inet socket, the app's own included:
    /// letting the kernel re-run them by descriptor number would let a racing dup2 put
    /// a host socket there.
    pub(crate) fn classify(&self, n: &Notification, fd: RawFd) -> Result<(K::Fd, Kind), Errno> {
        let s = self.k.get_fd(n.pid, n.id, fd)?;
        let Some(family) = self.k.get_int(&s, libc::SOL_SOCKET, libc::SO_DOMAIN).ok().and_then(Family::from_raw) else {
            return Ok((s, Kind::Other));
        };
        if !self.shared_netns && !self.k.in_host_netns(&s)? {
            return Ok((s, Kind::Private(family)));
        }
        let kind = match Proto::from_sock_type(self.k.get_int(&s, libc::SOL_SOCKET, libc::SO_TYPE)?) {
            Some(proto) => Kind::Host(family, proto),
            None => Kind::Private(family),
        };
        Ok((s, kind))
    }

    /// Copies a sockaddr out of the app, then makes sure the call is still pending
    /// before anything is done with it.
    pub(crate) fn read_addr(&self, n: &Notification, a: AddrIn, family: Family, usage: Use) -> Result<SockAddr, Errno> {
        let mut buf = vec![0u8; plan::addr_len(a.len)?];
        self.k.read(n.pid, n.id, a.ptr, &mut buf)?;
        if !self.k.id_valid(n.id) {
            return Err(libc::EINTR);
        }
        plan::address(&buf, family, usage)
    }

    fn bind(&self, n: &Notification, fd: RawFd, a: AddrIn) -> Result<Answer, Errno> {
        let (s, kind) = self.classify(n, fd)?;
        let (Kind::Host(family, _) | Kind::Private(family)) = kind else { return Ok(Answer::Proceed) };
        let addr = self.read_addr(n, a, family, Use::BindOrConnect)?;
        // Asked of the caller's thread while its call is pending, so of that thread.
        let privileged = || self.k.may_bind_privileged(n.pid) && self.k.id_valid(n.id);
        let v6only = matches!(kind, Kind::Host(Family::V6, _)) && self.v6only(&s);
        match self.node.with_table(|t| plan::bind(t, self.app, kind, addr, v6only, privileged))? {
            Bind::AsIs(want) => self.k.bind(&s, &want)?,
            Bind::Private(want) => {
                // Only a host socket moves (the plan's word), so `proto` is always had.
                let proto = match kind {
                    Kind::Host(_, proto) => Some(proto),
                    Kind::Private(_) | Kind::Other => None,
                };
                if let Some(proto) = proto {
                    self.no_conflict(n, &s, proto, want, false)?;
                }
                let fresh = self.privatize(n, fd, &s)?;
                self.k.bind(&fresh, &want)?;
                if let Some(proto) = proto {
                    self.bound_privately(proto, &fresh, want.ip())?;
                }
            }
            Bind::Host { family, proto, requested, service, exposed } => {
                self.no_conflict(n, &s, proto, requested, false)?;
                self.bind_host(&s, family, proto, requested, service, exposed)?;
            }
        }
        Ok(Answer::Value(0))
    }

    /// Binds the socket on the node address, at its exposed host port or else at a pool
    /// port, and records it. Returns the host port.
    fn bind_host(
        &self,
        s: &K::Fd,
        family: Family,
        proto: Proto,
        requested: SocketAddr,
        service: SocketAddrV4,
        exposed: Option<u16>,
    ) -> Result<u16, Errno> {
        if self.k.local_addr(s)?.is_some_and(|a| a.port() != 0) {
            return Err(libc::EINVAL);
        }
        let bound = BoundSocket { inode: self.k.inode(s)?, proto, family, requested, flags: self.k.file_flags(s)? };
        if let Some(port) = exposed {
            // No proxy: the app's own socket is bound on the exposed port, open to all.
            self.mark(s, guard::GUARDED, None, false)?;
            self.bind_at(s, bound, service, port)?;
            return Ok(port);
        }
        // The app's binds are made on this thread only: nothing of its own can take a
        // port between this count and the take below.
        let (held, capacity, ranges) =
            self.node.with_table(|t| (t.pool_ports_held(self.app), t.pool().capacity(), t.pool().ranges().clone()));
        let share = limits::pool_share(capacity);
        if held >= share {
            if self.hush_share.speak() {
                warn!(
                    app = %self.app,
                    "the app holds {held} of the {capacity} ports of --ports {ranges}, its share (a quarter, at least one); the bind of {service} fails with EADDRINUSE"
                );
            }
            return Err(libc::EADDRINUSE);
        }
        // A pool port serves apps and the cluster's members, nobody else.
        self.mark(s, guard::GUARDED | guard::MEMBERS_ONLY, None, false)?;
        for tries in 1.. {
            let Some(port) = self.node.with_table(|t| t.take_port()) else {
                if self.hush_pool.speak() {
                    warn!(
                        app = %self.app,
                        "port pool exhausted: all {capacity} ports of --ports {ranges} are in use; the bind of {service} fails with EADDRINUSE"
                    );
                }
                return Err(libc::EADDRINUSE);
            };
            let Err(e) = self.bind_at(s, bound, service, port) else { return Ok(port) };
            self.node.with_table(|t| t.give_back_port(port));
            if let Some(e) = plan::bind_retry(e, tries) {
                if e == libc::EADDRINUSE {
                    warn!(app = %self.app, "no free host port for {service} after {tries} busy ones; the bind fails with EADDRINUSE");
                }
                return Err(e);
            }
            debug!(app = %self.app, port, "pool port is busy on the host; trying the next");
        }
        unreachable!("the retry rule gives up after MAX_BIND_TRIES")
    }

    /// Binds on node:`port` and records the socket (a UDP one is a service row at once:
    /// there is no listen).
    fn bind_at(&self, s: &K::Fd, bound: BoundSocket, service: SocketAddrV4, port: u16) -> Result<(), Errno> {
        let node = self.node.with_table(|t| t.node().ip);
        if bound.proto == Proto::Udp && service.port() != 0 {
            self.room_for_a_row()?;
        }
        let host = addr::for_family(SocketAddr::V4(SocketAddrV4::new(node, port)), bound.family);
        self.k.bind(s, &host)?;
        let (shown, local_any) = self.node.with_table(|t| {
            let b = t.add_binding(self.app, bound, service, port);
            if bound.proto == Proto::Udp && service.port() != 0 {
                t.set_listening(bound.proto, port, b.inode, 0);
                info!(app = %self.app, %service, %host, "udp service row added");
            }
            (b.service, b.binds_wildcard())
        });
        if self.driver == Driver::Kernel {
            // What getsockname shows from now on.
            let state = SockState { app: self.app.0, peer: None, local: Some(shown), local_any };
            self.k.mark_kernel(s, &state.encode())?;
        }
        self.node.changed();
        debug!(app = %self.app, %service, %host, "bound");
        Ok(())
    }

    /// ENOBUFS when one more service row of this app would take more of the kernel
    /// driver's route entries than an app may (see `Table::kernel_room`): the kernel's
    /// word for a resource of its own that ran out, not EADDRINUSE, which would send a
    /// program on to try another port (and another row).
    fn room_for_a_row(&self) -> Result<(), Errno> {
        if self.node.with_table(|t| t.kernel_room(self.app)) {
            return Ok(());
        }
        if self.hush_pool.speak() {
            warn!(app = %self.app, "no room for another service row in the kernel driver's maps: ENOBUFS");
        }
        Err(libc::ENOBUFS)
    }

    fn listen(&self, n: &Notification, fd: RawFd, backlog: i32) -> Result<Answer, Errno> {
        let (s, kind) = self.classify(n, fd)?;
        let (family, proto) = match kind {
            Kind::Host(family, proto) => (family, proto),
            Kind::Private(_) => {
                if let Some((proto, at)) = self.bound_here(&s)? {
                    self.no_conflict(n, &s, proto, at, true)?;
                }
                self.k.listen(&s, backlog)?;
                return Ok(Answer::Value(0));
            }
            Kind::Other => return Ok(Answer::Proceed),
        };
        if proto == Proto::Udp {
            // As the kernel says, before anything is bound or recorded.
            return Err(libc::EOPNOTSUPP);
        }
        let local = self.k.local_addr(&s)?.ok_or(libc::EINVAL)?;
        let inode = self.k.inode(&s)?;
        if local.port() == 0 && family == Family::V6 && self.v6only(&s) {
            // A v6-only socket's automatic port is a v6-only `::` bind: the app's own
            // namespace's, as for bind().
            let fresh = self.privatize(n, fd, &s)?;
            self.k.listen(&fresh, backlog)?;
            self.bound_privately(proto, &fresh, local.ip())?;
            return Ok(Answer::Value(0));
        }
        self.room_for_a_row()?;
        let port = if local.port() == 0 {
            // listen() on an unbound socket binds it to a wildcard port, as the kernel does.
            let ip = self.node.with_table(|t| t.app(self.app).map(|a| a.ip)).ok_or(libc::EPERM)?;
            self.bind_host(&s, family, proto, local, SocketAddrV4::new(ip, 0), None)?
        } else {
            // The host port the socket was bound at (under the kernel driver,
            // getsockname shows the service address it stands for), and the address the
            // app bound it to, which a second listener at the port may conflict with.
            let bound = |t: &mut ax_core::Table| {
                t.bindings()
                    .find(|b| b.inode == inode && b.proto == proto)
                    .map(|b| (b.host.port(), SocketAddr::new(b.requested.ip(), b.service.port())))
            };
            match self.node.with_table(bound) {
                Some((host_port, requested)) => {
                    self.no_conflict(n, &s, proto, requested, true)?;
                    host_port
                }
                None => local.port(),
            }
        };
        self.k.listen(&s, backlog)?;
        let row = self.node.with_table(|t| t.set_listening(proto, port, inode, backlog).cloned());
        if let Some(b) = row {
            info!(app = %self.app, service = %b.service, host = %b.host, "service row added");
            self.node.changed();
        }
        Ok(Answer::Value(0))
    }

    fn connect(&self, n: &Notification, fd: RawFd, a: AddrIn) -> Result<Answer, Errno> {
        let (s, kind) = self.classify(n, fd)?;
        let (Kind::Host(family, _) | Kind::Private(family)) = kind else { return Ok(Answer::Proceed) };
        let addr = self.read_addr(n, a, family, Use::BindOrConnect)?;
        let progress = match kind {
            Kind::Host(_, Proto::Tcp) => Some(self.progress(&s)?),
            _ => None,
        };
        let listens_privately = || match addr {
            SockAddr::Inet(dest) => self.listens_privately(n, dest),
            _ => false,
        };
        let (plan, service) = self.node.with_table(|t| {
            let plan = plan::connect(t, self.app, kind, addr, progress, listens_privately);
            let service = match (&plan, kind, addr) {
                (
                    Ok(Connect::Refused | Connect::Closed { .. } | Connect::Targets { .. }),
                    Kind::Host(_, proto),
                    SockAddr::Inet(dest),
                ) => t.service_of_connect(proto, dest).map(|s| (proto, s)),
                _ => None,
            };
            (plan, service)
        });
        let plan = plan?;
        if let Some((proto, service)) = service {
            self.stats.connect(proto, service, !matches!(plan, Connect::Refused | Connect::Closed { .. }));
        }
        debug!(app = %self.app, ?addr, ?plan, "connect");
        match plan {
            Connect::Disconnect => {
                self.k.disconnect(&s)?;
                Ok(Answer::Value(0))
            }
            Connect::AsIs(dest) => self.connect_to(n, s, &[dest], None, family),
            Connect::Private(dest) => {
                let fresh = self.privatize(n, fd, &s)?;
                self.connect_to(n, fresh, &[dest], None, family)
            }
            Connect::Refused => Err(libc::ECONNREFUSED),
            Connect::Closed { closed, dest } => {
                self.k.connect(&s, &addr::for_family(SocketAddr::V4(closed), family))?;
                if let Some(SocketAddr::V4(local)) = self.k.local_addr(&s)?.map(addr::unmap) {
                    self.node.with_table(|t| t.record_peer(local, dest));
                }
                Ok(Answer::Value(0))
            }
            Connect::Targets { targets, source } => self.connect_to(n, s, &targets, source, family),
            Connect::Egress { gateway, dest } => {
                self.through_gateway(n, (fd, s), vec![gateway], ax_core::tunnel::Request::Egress(dest), dest, family)
            }
            Connect::Federated { via, service } => self.federate(n, (fd, s), via, service, family),
            Connect::InProgress if self.k.file_flags(&s)? & libc::O_NONBLOCK != 0 => Err(libc::EALREADY),
            // A blocking connect on a socket whose handshake is under way waits for it.
            Connect::InProgress => self.finish_later(n, s, libc::EALREADY),
        }
    }

    /// Where the TCP socket's own connection stands (tcp_info's first byte: its state).
    pub(crate) fn progress(&self, s: &K::Fd) -> Result<Progress, Errno> {
        let mut state = [0u8; 1];
        self.k.get_opt(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut state)?;
        Ok(Progress::from_tcp_state(state[0]))
    }

    /// Answers a blocking connect from a helper once the socket's handshake is over, or
    /// with `timed_out` once SO_SNDTIMEO has passed (EINPROGRESS for the connect that
    /// started it, EALREADY for a later one, as in the kernel).
    pub(crate) fn finish_later(&self, n: &Notification, s: K::Fd, timed_out: Errno) -> Result<Answer, Errno> {
        let (k, id) = (Arc::clone(&self.k), n.id);
        self.later(n, 0, move || {
            let timeout = timeout_ms(&*k, &s, libc::SO_SNDTIMEO);
            let result = match wait_for_call(&*k, &s, Readiness::Writable, timeout, id) {
                Ok(Waited::Ready) => settle(&*k, &s),
                Ok(Waited::TimedOut) => Err(timed_out),
                Ok(Waited::Abandoned) => return,
                Err(e) => Err(e),
            };
            let _ = k.answer(id, result.map_or_else(Reply::Fail, |()| Reply::Value(0)));
        })
    }

    /// Connects the app's socket to the first of `targets` that does not refuse. A
    /// blocking socket is connected without blocking this thread: if the handshake is
    /// not done at once, a helper thread answers the app when it is.
    fn connect_to(
        &self,
        n: &Notification,
        s: K::Fd,
        targets: &[SocketAddr],
        source: Option<Ipv4Addr>,
        family: Family,
    ) -> Result<Answer, Errno> {
        if let Some(source) = source {
            if self.k.local_addr(&s)?.is_none_or(|a| a.port() == 0) {
                self.k.bind(&s, &addr::for_family(SocketAddr::from((source, 0)), family))?;
            }
        }
        let flags = self.k.file_flags(&s)?;
        let blocking = flags & libc::O_NONBLOCK == 0;
        if blocking {
            // The next daemon puts them back, should this one die meanwhile.
            self.k.note(crate::resume::restore_flags(flags));
            self.k.set_file_flags(&s, flags | libc::O_NONBLOCK)?;
        }
        let mut outcome = Attempt::Done(Err(libc::ECONNREFUSED));
        for (i, target) in targets.iter().enumerate() {
            let more = i + 1 < targets.len();
            if i > 0 {
                // After a refused attempt the socket must be reset (AF_UNSPEC) before it
                // can connect again; otherwise Linux answers ECONNABORTED.
                let _ = self.k.disconnect(&s);
            }
            outcome = plan::attempt(self.k.connect(&s, &addr::for_family(*target, family)), more);
            if outcome == Attempt::Pending {
                outcome = match self.k.wait(&s, Readiness::Writable, 0) {
                    Ok(true) => plan::attempt(settle(&*self.k, &s), more),
                    Ok(false) => Attempt::Pending,
                    Err(e) => Attempt::Done(Err(e)),
                };
            }
            if outcome != Attempt::Next {
                break;
            }
        }
        if blocking {
            self.k.set_file_flags(&s, flags)?;
        }
        match outcome {
            Attempt::Done(r) => r.map(|()| Answer::Value(0)),
            Attempt::Pending if blocking => self.finish_later(n, s, libc::EINPROGRESS),
            Attempt::Pending => Err(libc::EINPROGRESS),
            // The last target never says Next (nothing remains after it).
            Attempt::Next => Err(libc::ECONNREFUSED),
        }
    }

    fn name(&self, n: &Notification, fd: RawFd, peer: bool, addr_ptr: u64, len_ptr: u64) -> Result<Answer, Errno> {
        let s = self.k.get_fd(n.pid, n.id, fd)?;
        let real = if peer { self.k.peer_addr(&s) } else { self.k.local_addr(&s) }?;
        let Some(real) = real else { return Ok(Answer::Proceed) };
        let Some(proto) = self.k.get_int(&s, libc::SOL_SOCKET, libc::SO_TYPE).ok().and_then(Proto::from_sock_type)
        else {
            return Ok(Answer::Proceed);
        };
        // Only to look up what the table remembers of a connection from it: one to an
        // egress gateway, or to the closed port (the broker's); without it, the row's.
        let remembered = matches!(real.port(), ax_core::EGRESS_PORT | ax_core::BROKER_PORT);
        let local = if peer && remembered { self.k.local_addr(&s).ok().flatten() } else { None };
        // A socket without a peer (getpeername: ENOTCONN) may show the wildcard it was
        // bound to.
        let unconnected = match peer {
            false if matches!(self.k.peer_addr(&s), Ok(None) | Err(libc::ENOTCONN)) => Some(self.k.inode(&s)?),
            _ => None,
        };
        let Some(shown) = self.node.with_table(|t| plan::name(t, self.app, proto, peer, real, local, unconnected))
        else {
            return Ok(Answer::Proceed);
        };
        let family = if real.is_ipv4() { Family::V4 } else { Family::V6 };
        put_name(&*self.k, n.pid, n.id, &addr::encode(shown, family), addr_ptr, len_ptr)?;
        Ok(Answer::Value(0))
    }

    /// Replaces the app's socket `fd` with a fresh one in the app's own namespace, with
    /// the same type and the options that matter, so a loopback bind or connect stays
    /// private to the app. Returns our copy of the new socket.
    pub(crate) fn privatize(&self, n: &Notification, fd: RawFd, old: &K::Fd) -> Result<K::Fd, Errno> {
        let fresh = replacement(&*self.k, old, Netns::App)?;
        self.k.set_file_flags(&fresh, self.k.file_flags(old)?)?;
        install(&*self.k, n, fd, &fresh)?;
        Ok(fresh)
    }
}

/// A fresh socket in `ns` of the app's socket `old`'s type, with the options that
/// matter carried over (not its file flags: the caller sets them when it hands it over).
pub(crate) fn replacement<K: Kernel>(k: &K, old: &K::Fd, ns: Netns) -> Result<K::Fd, Errno> {
    let get = |opt| k.get_int(old, libc::SOL_SOCKET, opt);
    let (domain, ty, protocol) = (get(libc::SO_DOMAIN)?, get(libc::SO_TYPE)?, get(libc::SO_PROTOCOL)?);
    let fresh = k.socket(ns, domain, ty, protocol)?;
    let mut buf = [0u8; 16];
    for &(level, opt, size) in CARRIED_OPTIONS {
        // Options that do not apply to this socket's family or type fail both ways.
        if let Ok(got) = k.get_opt(old, level, opt, &mut buf[..size]) {
            let _ = k.set_opt(&fresh, level, opt, &buf[..got.min(size)]);
        }
    }
    Ok(fresh)
}

/// Puts `fresh` in the place of the app's descriptor `fd` (call `n` pending), keeping
/// its close-on-exec flag.
pub(crate) fn install<K: Kernel>(k: &K, n: &Notification, fd: RawFd, fresh: &K::Fd) -> Result<(), Errno> {
    let cloexec = k.cloexec(n.pid, fd);
    k.add_fd(n.id, fresh, Some(fd), cloexec).map(|_| ())
}

/// The socket's pending error, as a result.
/// IP_LOCAL_PORT_RANGE (Linux 6.3; libc does not export it): a socket's own range for
/// its automatic port, low 16 bits the first, high 16 the last.
const IP_LOCAL_PORT_RANGE: i32 = 51;

/// The host's range of automatic ports (net.ipv4.ip_local_port_range of the daemon's
/// namespace, where host sockets live), read once; Linux's default if unreadable.
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    static RANGE: std::sync::OnceLock<std::ops::RangeInclusive<u16>> = std::sync::OnceLock::new();
    RANGE
        .get_or_init(|| {
            let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
            let mut ends = text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
            match (ends.next(), ends.next()) {
                (Some(lo), Some(hi)) if lo <= hi => lo..=hi,
                _ => 32768..=60999,
            }
        })
        .clone()
}

pub(crate) fn so_error<K: Kernel>(k: &K, s: &K::Fd) -> Result<(), Errno> {
    match k.get_int(s, libc::SOL_SOCKET, libc::SO_ERROR)? {
        0 => Ok(()),
        e => Err(e),
    }
}

/// The outcome of a handshake that is over, read from the socket's pending error. A
/// failed one leaves the socket reset (AF_UNSPEC), as the kernel's own blocking connect
/// does, so that the app's next connect starts afresh.
fn settle<K: Kernel>(k: &K, s: &K::Fd) -> Result<(), Errno> {
    let outcome = so_error(k, s);
    if outcome.is_err() {
        let _ = k.disconnect(s);
    }
    outcome
}

/// Puts the address `name` where the app asked for one, as the kernel's
/// move_addr_to_user does: the app's length is read (a negative one is EINVAL and
/// nothing is written), the full length is written back, then as many bytes as fit.
/// Call `id` must still be pending once the length has been read.
pub(crate) fn put_name<K: Kernel>(
    k: &K,
    tid: i32,
    id: u64,
    name: &[u8],
    addr_ptr: u64,
    len_ptr: u64,
) -> Result<(), Errno> {
    let mut len = [0u8; 4];
    k.read(tid, id, len_ptr, &mut len)?;
    let fits = plan::name_fits(i32::from_ne_bytes(len), name.len())?;
    if !k.id_valid(id) {
        return Err(libc::EINTR);
    }
    k.write(tid, id, len_ptr, &(name.len() as u32).to_ne_bytes())?;
    k.write(tid, id, addr_ptr, &name[..fits])
}

/// SO_RCVTIMEO or SO_SNDTIMEO in milliseconds, or -1 for none.
pub(crate) fn timeout_ms<K: Kernel>(k: &K, s: &K::Fd, opt: i32) -> i32 {
    let mut tv = [0u8; 16];
    match k.get_opt(s, libc::SOL_SOCKET, opt, &mut tv) {
        Ok(16) => timeval_ms(&tv),
        _ => -1,
    }
}

/// SO_RCVTIMEO or SO_SNDTIMEO (a struct timeval) in milliseconds, or -1 for none.
pub(crate) fn timeval_ms(tv: &[u8]) -> i32 {
    let Ok(tv) = <[u8; 16]>::try_from(tv) else { return -1 };
    let secs = i64::from_ne_bytes(tv[0..8].try_into().expect("8 bytes"));
    let usecs = i64::from_ne_bytes(tv[8..16].try_into().expect("8 bytes"));
    if secs == 0 && usecs == 0 {
        return -1;
    }
    // Any other value is a timeout, however short (the kernel rounds up too).
    secs.saturating_mul(1000).saturating_add(usecs.saturating_add(999) / 1000).clamp(1, i32::MAX as i64) as i32
}

/// Options an app commonly sets before bind or connect, carried to a replacement socket:
/// level, option, size.
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
