//! The kernel as a trap engine uses it, as one trait: the trapped call (wait for it,
//! check it is still pending, answer it, put a descriptor into its caller), the caller
//! (its descriptors and memory) and sockets. [`Linux`] is the real kernel for one app;
//! the engine's tests run against a recording double of the same trait, without root.
//!
//! Nothing here decides anything: the engine says what to do, this carries it out.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::bpf;
use crate::pidfd::Pidfd;
use crate::pool::Pool;
use crate::seccomp::{InFlight, Listener, Notification, Ready};
use crate::sock::{self, Received};
use crate::{ns, proc, tun};

/// An errno value (positive, as in `errno`).
pub type Errno = i32;

/// Which network namespace a new socket is made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Netns {
    /// The host's: the daemon's own.
    Host,
    /// The app's own (empty but for `lo`).
    App,
}

/// How a trapped call is answered, when no descriptor rides along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Value(i64),
    Fail(Errno),
    /// The kernel runs the call as the app made it.
    Proceed,
}

/// What to wait for on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Writable: how a pending connect reports that it finished.
    Writable,
    Readable,
}

/// The kernel, for the engine of one app.
pub trait Kernel: Send + Sync + 'static {
    /// A socket the engine holds: its copy of an app's descriptor, or one it made.
    type Fd: Send + 'static;

    /// Waits for the app's next trapped call; None once every process of the app is
    /// gone, an errno if the listener itself failed.
    fn next(&self) -> Result<Option<Notification>, Errno>;
    /// True while call `id` is still waiting for its answer.
    fn id_valid(&self, id: u64) -> bool;
    fn answer(&self, id: u64, reply: Reply) -> Result<(), Errno>;
    /// Installs `fd` in the caller of `id`, at descriptor `at` or the lowest free one;
    /// the call stays pending (see `Listener::add_fd` for why it is never answered in
    /// the same step).
    fn add_fd(&self, id: u64, fd: &Self::Fd, at: Option<RawFd>, cloexec: bool) -> Result<RawFd, Errno>;
    /// Records, for a daemon that would take over after this one died in the call last
    /// received, what it needs to finish that call (`ax_trap::resume` says what).
    fn note(&self, value: u64);
    /// The caller's descriptor holding the socket with this inode, if any.
    fn socket_fd(&self, tid: i32, inode: u64) -> Option<RawFd>;
    /// Every socket the caller holds, by inode, at its lowest descriptor.
    fn socket_fds(&self, tid: i32) -> std::collections::HashMap<u64, RawFd>;

    /// The soft limit on open files of thread `tid`'s process: `add_fd` at a number at
    /// or past it fails (EBADF).
    fn fd_limit(&self, tid: i32) -> Result<u64, Errno>;
    /// The caller's descriptor `fd` (thread `tid`, while call `id` is pending).
    fn get_fd(&self, tid: i32, id: u64, fd: RawFd) -> Result<Self::Fd, Errno>;
    /// Reads the caller's memory; EFAULT where the app's pointer is bad.
    fn read(&self, tid: i32, id: u64, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes the caller's memory; EFAULT where the app's pointer is bad.
    fn write(&self, tid: i32, id: u64, addr: u64, data: &[u8]) -> Result<(), Errno>;
    /// Whether the caller's descriptor `fd` has close-on-exec set.
    fn cloexec(&self, tid: i32, fd: RawFd) -> bool;
    /// Whether thread `tid` holds CAP_NET_BIND_SERVICE over the host's network
    /// namespace (in its effective set, in the daemon's user namespace).
    fn may_bind_privileged(&self, tid: i32) -> bool;

    fn socket(&self, ns: Netns, domain: i32, ty: i32, protocol: i32) -> Result<Self::Fd, Errno>;
    /// The echo device of the app's own namespace (see [`crate::tun`]), whose address
    /// is `own`: made where there is none if `make`, else None then.
    fn echo_device(&self, own: Ipv4Addr, make: bool) -> Result<Option<OwnedFd>, Errno>;
    /// Whether the socket lives in the host's network namespace.
    fn in_host_netns(&self, fd: &Self::Fd) -> Result<bool, Errno>;
    /// Sets the socket guard's marks on a host socket (see `ax_trap::guard`): what the
    /// kernel itself lets an app do with it, whatever the app races. Nothing where the
    /// host has no guard (no BPF).
    fn mark(&self, fd: &Self::Fd, marks: u32) -> Result<(), Errno>;
    /// Hands a kernel-driver app's socket to the kernel driver's programs with this
    /// state (`ax_core::kmap::SockState`, encoded); EPERM where the driver is not
    /// installed.
    fn mark_kernel(&self, fd: &Self::Fd, state: &[u8]) -> Result<(), Errno>;
    fn get_opt(&self, fd: &Self::Fd, level: i32, opt: i32, buf: &mut [u8]) -> Result<usize, Errno>;
    fn set_opt(&self, fd: &Self::Fd, level: i32, opt: i32, value: &[u8]) -> Result<(), Errno>;
    fn inode(&self, fd: &Self::Fd) -> Result<u64, Errno>;
    /// File status flags (O_NONBLOCK and the like).
    fn file_flags(&self, fd: &Self::Fd) -> Result<i32, Errno>;
    fn set_file_flags(&self, fd: &Self::Fd, flags: i32) -> Result<(), Errno>;
    fn local_addr(&self, fd: &Self::Fd) -> Result<Option<SocketAddr>, Errno>;
    fn peer_addr(&self, fd: &Self::Fd) -> Result<Option<SocketAddr>, Errno>;
    fn bind(&self, fd: &Self::Fd, addr: &SocketAddr) -> Result<(), Errno>;
    fn listen(&self, fd: &Self::Fd, backlog: i32) -> Result<(), Errno>;
    fn connect(&self, fd: &Self::Fd, addr: &SocketAddr) -> Result<(), Errno>;
    /// connect(AF_UNSPEC): dissolves an association, resets a refused attempt.
    fn disconnect(&self, fd: &Self::Fd) -> Result<(), Errno>;
    /// Waits up to `timeout_ms` (-1: forever, 0: not at all); false on a timeout.
    fn wait(&self, fd: &Self::Fd, what: Readiness, timeout_ms: i32) -> Result<bool, Errno>;
    fn send_msg(
        &self,
        fd: &Self::Fd,
        data: &[u8],
        control: &[u8],
        flags: i32,
        to: Option<&SocketAddr>,
    ) -> Result<usize, Errno>;
    fn recv_msg(&self, fd: &Self::Fd, buf: &mut [u8], control: &mut [u8], flags: i32) -> Result<Received, Errno>;
    /// Runs `f` on a helper thread that answers `call` later, while the engine serves
    /// the app's other calls. Until `f` returns, `call` stays recorded with `note` (see
    /// `note`) for a daemon that would take over after this one died; EAGAIN where it
    /// cannot be.
    fn spawn(&self, call: &Notification, note: u64, f: Box<dyn FnOnce() + Send>) -> Result<(), Errno>;

    fn get_int(&self, fd: &Self::Fd, level: i32, opt: i32) -> Result<i32, Errno> {
        let mut b = [0u8; 4];
        self.get_opt(fd, level, opt, &mut b)?;
        Ok(i32::from_ne_bytes(b))
    }

    fn set_int(&self, fd: &Self::Fd, level: i32, opt: i32, value: i32) -> Result<(), Errno> {
        self.set_opt(fd, level, opt, &value.to_ne_bytes())
    }
}

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A copy of `len` bytes of an app's memory, through process_vm_readv/writev, which
/// honour page protections as the kernel's own copy for the app would: whole, or EFAULT
/// (a partial copy included, as the kernel fails a copy that faults midway); ESRCH when
/// the thread is gone.
fn whole(copied: io::Result<usize>, len: usize) -> Result<(), Errno> {
    match copied {
        Ok(n) if n == len => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(libc::ESRCH),
        _ => Err(libc::EFAULT),
    }
}

/// How long a helper thread stays parked without work before it exits.
const HELPER_IDLE: Duration = Duration::from_secs(5);

/// The kernel for one app: its seccomp listener, its threads' pidfds (opened once per
/// thread, so a trapped call costs no open(2)), the two network namespaces its
/// sockets move between, and its helper threads (parked between calls, so a call that
/// waits costs a wake-up, not a new thread). Made from a thread in the host's namespace.
pub struct Linux {
    listener: Listener,
    helpers: Pool,
    tasks: Mutex<Tasks>,
    app_ns: File,
    host_ns: File,
    host_cookie: u64,
    /// Where the id of each call received is kept, for a daemon after a crash.
    in_flight: Arc<InFlight>,
    /// The socket guard's marks, one per socket; None where the guard could not be
    /// installed.
    marks: Option<Arc<bpf::Map>>,
    /// The kernel driver's socket states, for a kernel-driver app.
    kernel_marks: Option<Arc<bpf::Map>>,
}

impl Linux {
    /// The kernel for the app whose own network namespace is `app_ns` (its loopback
    /// sockets are made there), with at most `helpers` helper threads.
    pub fn new(
        listener: Listener,
        app_ns: File,
        in_flight: InFlight,
        marks: Option<Arc<bpf::Map>>,
        helpers: usize,
    ) -> io::Result<Linux> {
        listener.set_sync_wakeup()?;
        let probe = sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        Ok(Linux {
            listener,
            helpers: Pool::new("ax-later", helpers, HELPER_IDLE),
            tasks: Mutex::new(Tasks::default()),
            app_ns,
            host_ns: ns::current_netns()?,
            host_cookie: sock::netns_cookie(probe.as_fd())?,
            in_flight: Arc::new(in_flight),
            marks,
            kernel_marks: None,
        })
    }

    /// The kernel for a kernel-driver app, whose sockets get their states in `states`.
    pub fn with_kernel_marks(self, states: Arc<bpf::Map>) -> Linux {
        Linux { kernel_marks: Some(states), ..self }
    }

    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Kernel for Linux {
    type Fd = OwnedFd;

    fn next(&self) -> Result<Option<Notification>, Errno> {
        loop {
            match self.listener.wait().map_err(errno)? {
                Ready::Notification => {}
                Ready::Hangup => return Ok(None),
            }
            // ENOENT: the caller was killed between the wake-up and now.
            if let Ok(n) = self.in_flight.receive(&self.listener) {
                return Ok(Some(n));
            }
        }
    }

    fn id_valid(&self, id: u64) -> bool {
        self.listener.id_valid(id)
    }

    fn answer(&self, id: u64, reply: Reply) -> Result<(), Errno> {
        match reply {
            Reply::Value(v) => self.listener.reply(id, v),
            Reply::Fail(e) => self.listener.fail(id, e),
            Reply::Proceed => self.listener.proceed(id),
        }
        .map_err(errno)
    }

    fn add_fd(&self, id: u64, fd: &OwnedFd, at: Option<RawFd>, cloexec: bool) -> Result<RawFd, Errno> {
        self.listener.add_fd(id, fd.as_fd(), at, cloexec).map_err(errno)
    }

    fn note(&self, value: u64) {
        self.in_flight.note(value);
    }

    fn socket_fd(&self, tid: i32, inode: u64) -> Option<RawFd> {
        proc::socket_fd(tid, inode)
    }

    fn socket_fds(&self, tid: i32) -> std::collections::HashMap<u64, RawFd> {
        proc::socket_fds(tid)
    }

    fn fd_limit(&self, tid: i32) -> Result<u64, Errno> {
        proc::fd_limit_of(tid).map_err(errno)
    }

    fn get_fd(&self, tid: i32, id: u64, fd: RawFd) -> Result<OwnedFd, Errno> {
        self.tasks().get_fd(tid, id, &self.listener, fd)
    }

    /// By thread id: the engine checks the call is still pending after reading, so the
    /// thread was alive and blocked in it throughout, and its id meant no one else.
    fn read(&self, tid: i32, _id: u64, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if buf.is_empty() {
            return Ok(());
        }
        whole(proc::read_memory(tid, addr, buf), buf.len())
    }

    /// By thread id, right after the engine checked the call is still pending: the
    /// thread is blocked in it and can only leave it killed; its id could name another
    /// thread only if the kernel handed it out again, after a wrap of the whole pid
    /// space, between that check and this copy.
    fn write(&self, tid: i32, _id: u64, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if data.is_empty() {
            return Ok(());
        }
        whole(proc::write_memory(tid, addr, data), data.len())
    }

    fn cloexec(&self, tid: i32, fd: RawFd) -> bool {
        proc::fd_flags(tid, fd).is_some_and(|f| f & libc::O_CLOEXEC != 0)
    }

    fn may_bind_privileged(&self, tid: i32) -> bool {
        proc::may_bind_privileged(tid)
    }

    fn socket(&self, ns: Netns, domain: i32, ty: i32, protocol: i32) -> Result<OwnedFd, Errno> {
        match ns {
            Netns::Host => sock::socket(domain, ty, protocol).map_err(errno),
            Netns::App => ns::with_netns(&self.app_ns, &self.host_ns, || sock::socket(domain, ty, protocol))
                .map_err(errno)?
                .map_err(errno),
        }
    }

    fn echo_device(&self, own: Ipv4Addr, make: bool) -> Result<Option<OwnedFd>, Errno> {
        // The host's, read here in its namespace; only a device made now takes it.
        let ping_groups = if make { tun::read_sysctl(tun::PING_GROUPS).map_err(errno)? } else { String::new() };
        let attach = || -> io::Result<Option<OwnedFd>> {
            if !make && !ns::has_link(tun::ECHO_DEVICE)? {
                return Ok(None);
            }
            Ok(Some(tun::echo_device(tun::ECHO_DEVICE, own, &ping_groups)?.into()))
        };
        ns::with_netns(&self.app_ns, &self.host_ns, attach).map_err(errno)?.map_err(errno)
    }

    fn in_host_netns(&self, fd: &OwnedFd) -> Result<bool, Errno> {
        Ok(sock::netns_cookie(fd.as_fd()).map_err(errno)? == self.host_cookie)
    }

    fn mark(&self, fd: &OwnedFd, marks: u32) -> Result<(), Errno> {
        match &self.marks {
            Some(map) => map.update_socket(fd.as_fd(), marks).map_err(errno),
            None => Ok(()),
        }
    }

    fn mark_kernel(&self, fd: &OwnedFd, state: &[u8]) -> Result<(), Errno> {
        let states = self.kernel_marks.as_ref().ok_or(libc::EPERM)?;
        states.set_socket(fd.as_fd(), state).map_err(errno)
    }

    fn get_opt(&self, fd: &OwnedFd, level: i32, opt: i32, buf: &mut [u8]) -> Result<usize, Errno> {
        sock::get_opt(fd.as_fd(), level, opt, buf).map_err(errno)
    }

    fn set_opt(&self, fd: &OwnedFd, level: i32, opt: i32, value: &[u8]) -> Result<(), Errno> {
        sock::set_opt(fd.as_fd(), level, opt, value).map_err(errno)
    }

    fn inode(&self, fd: &OwnedFd) -> Result<u64, Errno> {
        sock::inode(fd.as_fd()).map_err(errno)
    }

    fn file_flags(&self, fd: &OwnedFd) -> Result<i32, Errno> {
        sock::file_flags(fd.as_fd()).map_err(errno)
    }

    fn set_file_flags(&self, fd: &OwnedFd, flags: i32) -> Result<(), Errno> {
        sock::set_file_flags(fd.as_fd(), flags).map_err(errno)
    }

    fn local_addr(&self, fd: &OwnedFd) -> Result<Option<SocketAddr>, Errno> {
        sock::local_addr(fd.as_fd()).map_err(errno)
    }

    fn peer_addr(&self, fd: &OwnedFd) -> Result<Option<SocketAddr>, Errno> {
        sock::peer_addr(fd.as_fd()).map_err(errno)
    }

    fn bind(&self, fd: &OwnedFd, addr: &SocketAddr) -> Result<(), Errno> {
        sock::bind(fd.as_fd(), addr).map_err(errno)
    }

    fn listen(&self, fd: &OwnedFd, backlog: i32) -> Result<(), Errno> {
        sock::listen(fd.as_fd(), backlog).map_err(errno)
    }

    fn connect(&self, fd: &OwnedFd, addr: &SocketAddr) -> Result<(), Errno> {
        sock::connect(fd.as_fd(), addr).map_err(errno)
    }

    fn disconnect(&self, fd: &OwnedFd) -> Result<(), Errno> {
        sock::disconnect(fd.as_fd()).map_err(errno)
    }

    fn wait(&self, fd: &OwnedFd, what: Readiness, timeout_ms: i32) -> Result<bool, Errno> {
        match what {
            Readiness::Writable => sock::wait_writable(fd.as_fd(), timeout_ms),
            Readiness::Readable => sock::wait_readable(fd.as_fd(), timeout_ms),
        }
        .map_err(errno)
    }

    fn send_msg(
        &self,
        fd: &OwnedFd,
        data: &[u8],
        control: &[u8],
        flags: i32,
        to: Option<&SocketAddr>,
    ) -> Result<usize, Errno> {
        sock::send_msg(fd.as_fd(), data, control, flags, to).map_err(errno)
    }

    fn recv_msg(&self, fd: &OwnedFd, buf: &mut [u8], control: &mut [u8], flags: i32) -> Result<Received, Errno> {
        sock::recv_msg(fd.as_fd(), buf, control, flags).map_err(errno)
    }

    fn spawn(&self, call: &Notification, note: u64, f: Box<dyn FnOnce() + Send>) -> Result<(), Errno> {
        let handed = self.in_flight.hand_over(call, note).ok_or(libc::EAGAIN)?;
        self.helpers
            .run(Box::new(move || {
                f();
                drop(handed);
            }))
            .map_err(errno)
    }
}

/// Past this many threads the cache starts over (threads come and go; this bounds the
/// fds held for ones that are gone).
const MAX_TASKS: usize = 64;

/// The trapped threads' pidfds, each opened while a notification from that thread is
/// pending and checked valid afterwards, so never on an impostor. A pidfd names its
/// thread for good: once the thread has exited, pidfd_getfd fails with ESRCH and the
/// entry is opened afresh (the thread id was reused).
#[derive(Default)]
struct Tasks {
    map: HashMap<i32, Pidfd>,
}

impl Tasks {
    fn entry(&mut self, tid: i32, id: u64, listener: &Listener, fresh: bool) -> Result<&Pidfd, Errno> {
        if fresh {
            self.map.remove(&tid);
        }
        if !self.map.contains_key(&tid) {
            if self.map.len() >= MAX_TASKS {
                self.map.clear();
            }
            let pidfd = Pidfd::open_thread(tid).map_err(errno)?;
            if !listener.id_valid(id) {
                return Err(libc::ESRCH);
            }
            self.map.insert(tid, pidfd);
        }
        Ok(&self.map[&tid])
    }

    fn get_fd(&mut self, tid: i32, id: u64, listener: &Listener, fd: RawFd) -> Result<OwnedFd, Errno> {
        match self.entry(tid, id, listener, false)?.get_fd(fd) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                self.entry(tid, id, listener, true)?.get_fd(fd).map_err(errno)
            }
            r => r.map_err(errno),
        }
    }
}
