//! A recording double of the kernel for the engine's tests: sockets with just enough
//! behaviour (bind, connect, listen, options, datagrams), an app with a descriptor
//! table and memory, and the trapped calls' answers, every operation logged. Scripted
//! faults (busy host ports, refusing or slow destinations, stale calls) let each path
//! of the engine be walked without root. Memory regions carry protections, a connect
//! follows the kernel's socket states, the descriptors the engine holds are counted,
//! and a hook runs at every wait, so a test can change the world while a helper waits.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ax_sys::kernel::{Errno, Kernel, Netns, Readiness, Reply};
use ax_sys::seccomp::Notification;
use ax_sys::sock::Received;

/// A socket the engine holds: an index into the fake's socket list, counted in
/// [`Fake::held`] until dropped (as a real descriptor would be closed).
#[derive(Debug)]
pub struct FakeFd {
    pub i: usize,
    /// Counted out when dropped.
    _held: Held,
}

#[derive(Debug)]
struct Held(Arc<AtomicUsize>);

impl FakeFd {
    fn new(i: usize, held: &Arc<AtomicUsize>) -> FakeFd {
        held.fetch_add(1, Ordering::SeqCst);
        FakeFd { i, _held: Held(Arc::clone(held)) }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a stream socket's own connection stands (the kernel's sk_state, in short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tcp {
    Closed,
    SynSent,
    Established,
}

/// What the app may do with a region of its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    ReadWrite,
    ReadOnly,
    /// PROT_NONE.
    Nothing,
}

#[derive(Debug, Clone)]
pub struct Sock {
    pub domain: i32,
    pub ty: i32,
    pub protocol: i32,
    pub ns: Netns,
    pub inode: u64,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub flags: i32,
    pub opts: HashMap<(i32, i32), Vec<u8>>,
    pub listening: Option<i32>,
    pub so_error: i32,
    /// Stream sockets: the connection's state, and whether connect() has reported it
    /// done (the kernel's SS_CONNECTED; SS_CONNECTING while `tcp` moves on its own).
    pub tcp: Tcp,
    pub connected: bool,
    /// Datagrams sent: bytes, control bytes, destination.
    pub sent: Vec<(Vec<u8>, Vec<u8>, Option<SocketAddr>)>,
    /// Datagrams waiting to be received: bytes and source.
    pub inbox: VecDeque<(Vec<u8>, SocketAddr)>,
    /// The socket guard's marks.
    pub marks: u32,
    /// The kernel driver's state of the socket (encoded), when it has one.
    pub kernel: Option<Vec<u8>>,
}

/// One thing the engine asked of the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Socket(Netns, i32, i32, i32),
    AddFd {
        id: u64,
        sock: usize,
        at: Option<RawFd>,
        cloexec: bool,
    },
    /// What the engine noted for a daemon taking over (see crate::resume).
    Note(u64),
    Bind(usize, SocketAddr),
    Listen(usize, i32),
    Connect(usize, SocketAddr),
    Disconnect(usize),
    Send(usize, Option<SocketAddr>),
    Write(u64, Vec<u8>),
    /// A wait on a socket, with its timeout.
    Wait(usize, i32),
    /// A look at the app's open-file limit.
    FdLimit,
    /// The guard's marks set on a socket.
    Mark(usize, u32),
    /// The kernel driver's state set on a socket.
    MarkKernel(usize),
    /// A socket's inode looked up.
    Inode(usize),
    /// A call answered.
    Answer(u64),
}

/// Changes the world while the engine waits (see [`State::on_wait`]).
pub type OnWait = Box<dyn FnMut(&mut State) + Send>;

#[derive(Default)]
pub struct State {
    pub socks: Vec<Sock>,
    /// The app's descriptor table.
    pub fds: BTreeMap<RawFd, usize>,
    pub cloexec: HashSet<RawFd>,
    /// The app's memory: regions by start address.
    pub mem: BTreeMap<u64, (Vec<u8>, Prot)>,
    next_region: u64,
    /// Calls no longer pending (the caller died or was interrupted).
    pub stale: HashSet<u64>,
    /// Calls that go stale the moment the engine has read the app's memory for them.
    pub stale_after_read: HashSet<u64>,
    pub answers: Vec<(u64, Reply)>,
    pub log: Vec<Op>,
    /// Host ports already taken by something outside ax.
    pub busy: HashSet<u16>,
    /// Destinations that refuse connections.
    pub refusing: HashSet<SocketAddr>,
    /// Destinations whose handshake takes time: connect says EINPROGRESS and the
    /// socket is not writable at once.
    pub slow: HashSet<SocketAddr>,
    /// Destinations whose handshake never finishes.
    pub silent: HashSet<SocketAddr>,
    /// What a destination says once a socket connected to it (a gateway's answer
    /// line): in that socket's inbox.
    pub says: HashMap<SocketAddr, Vec<u8>>,
    /// Destinations whose handshake takes time and then fails: refused, found out by a
    /// wait that is allowed to last.
    pub refusing_late: HashSet<SocketAddr>,
    /// Runs at every wait, before its outcome is decided.
    pub on_wait: Option<OnWait>,
    /// Work handed to helper threads, run by the test with [`Fake::run_later`].
    pub later: Vec<Box<dyn FnOnce() + Send>>,
    /// The calls helper threads hold (id, note), as a next daemon would find them.
    pub handed: Vec<(u64, u64)>,
    /// No helper thread can be had.
    pub no_threads: bool,
    /// The app's soft limit on open files: no descriptor at or past it.
    pub fd_limit: u64,
    /// The app's threads lack CAP_NET_BIND_SERVICE (as under `--user nobody`).
    pub unprivileged: bool,
    pub notifications: VecDeque<Notification>,
    /// The far end of the app's echo device, once made (a datagram socket pair stands
    /// in for the tun: one packet per message); `echo_made` counts the devices made.
    pub echo_wire: Option<UnixDatagram>,
    pub echo_made: usize,
    /// The device cannot be made (no /dev/net/tun).
    pub no_tun: bool,
    next_port: u16,
    waits: usize,
}

#[derive(Default)]
pub struct Fake {
    state: Mutex<State>,
    held: Arc<AtomicUsize>,
}

const REGION_BASE: u64 = 0x10_0000;
/// A descriptor number the app has, that is not a socket (a pipe, say).
pub const NOT_A_SOCKET: RawFd = 99;
/// More waits than any test needs: a helper looping for ever fails its test instead.
const MAX_WAITS: usize = 10_000;

impl Fake {
    pub fn new() -> Fake {
        let f = Fake::default();
        {
            let mut s = f.state();
            s.next_region = REGION_BASE;
            s.next_port = 32768;
            s.fd_limit = 1024;
            let pipe = s.new_sock(libc::AF_UNIX, libc::SOCK_STREAM, 0, Netns::App);
            s.fds.insert(NOT_A_SOCKET, pipe);
        }
        f
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `bytes` in the app's memory; returns their address.
    pub fn put(&self, bytes: &[u8]) -> u64 {
        self.put_with(bytes, Prot::ReadWrite)
    }

    /// Puts `bytes` in a region of the app's memory the app may only use as `prot` says.
    pub fn put_with(&self, bytes: &[u8], prot: Prot) -> u64 {
        let mut s = self.state();
        let at = s.next_region;
        s.next_region += (bytes.len() as u64).max(1).next_multiple_of(0x1000) + 0x1000;
        s.mem.insert(at, (bytes.to_vec(), prot));
        at
    }

    /// `len` bytes of the app's memory at `at`, whatever its protection.
    pub fn peek(&self, at: u64, len: usize) -> Vec<u8> {
        let s = self.state();
        let (start, off) = s.region(at, len).expect("mapped");
        s.mem[&start].0[off..off + len].to_vec()
    }

    /// How many sockets the engine holds at the moment (its own copies and makings).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Gives the app a socket made outside the engine (in its own namespace, say) at `fd`.
    pub fn give(&self, fd: RawFd, domain: i32, ty: i32, ns: Netns) -> usize {
        let mut s = self.state();
        let i = s.new_sock(domain, ty, 0, ns);
        s.fds.insert(fd, i);
        i
    }

    /// The socket behind the app's descriptor `fd`.
    pub fn sock(&self, fd: RawFd) -> Sock {
        let s = self.state();
        s.socks[s.fds[&fd]].clone()
    }

    pub fn answer_to(&self, id: u64) -> Option<Reply> {
        self.state().answers.iter().rev().find(|a| a.0 == id).map(|a| a.1)
    }

    /// Runs the work handed to helper threads, as the threads would; their calls are
    /// no longer held once they are done.
    pub fn run_later(&self) {
        let work = std::mem::take(&mut self.state().later);
        for w in work {
            w();
        }
        self.state().handed.clear();
    }

    pub fn ops(&self) -> Vec<Op> {
        self.state().log.clone()
    }
}

impl State {
    fn new_sock(&mut self, domain: i32, ty: i32, protocol: i32, ns: Netns) -> usize {
        let inode = 1000 + self.socks.len() as u64;
        self.socks.push(Sock {
            domain,
            ty: ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC),
            protocol,
            ns,
            inode,
            local: None,
            peer: None,
            flags: if ty & libc::SOCK_NONBLOCK != 0 { libc::O_NONBLOCK | libc::O_RDWR } else { libc::O_RDWR },
            opts: HashMap::new(),
            listening: None,
            so_error: 0,
            tcp: Tcp::Closed,
            connected: false,
            sent: Vec::new(),
            inbox: VecDeque::new(),
            marks: 0,
            kernel: None,
        });
        self.socks.len() - 1
    }

    /// The region holding `len` bytes at `at`, and the offset in it.
    fn region(&self, at: u64, len: usize) -> Result<(u64, usize), Errno> {
        let (start, (bytes, _)) = self.mem.range(..=at).next_back().ok_or(libc::EFAULT)?;
        let off = (at - start) as usize;
        if off.checked_add(len).is_some_and(|end| end <= bytes.len()) {
            Ok((*start, off))
        } else {
            Err(libc::EFAULT)
        }
    }

    /// Like [`State::region`], for an access the region's protection must allow.
    fn access(&self, at: u64, len: usize, write: bool) -> Result<(u64, usize), Errno> {
        let (start, off) = self.region(at, len)?;
        match (self.mem[&start].1, write) {
            (Prot::ReadWrite, _) | (Prot::ReadOnly, false) => Ok((start, off)),
            _ => Err(libc::EFAULT),
        }
    }

    fn pending(&self, id: u64) -> Result<(), Errno> {
        if self.stale.contains(&id) {
            Err(libc::ENOENT)
        } else {
            Ok(())
        }
    }

    fn ephemeral(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }
}

fn unspecified(domain: i32) -> IpAddr {
    if domain == libc::AF_INET6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

impl Kernel for Fake {
    type Fd = FakeFd;

    fn next(&self) -> Result<Option<Notification>, Errno> {
        Ok(self.state().notifications.pop_front())
    }

    fn id_valid(&self, id: u64) -> bool {
        self.state().pending(id).is_ok()
    }

    fn answer(&self, id: u64, reply: Reply) -> Result<(), Errno> {
        let mut s = self.state();
        s.pending(id)?;
        s.answers.push((id, reply));
        s.log.push(Op::Answer(id));
        Ok(())
    }

    fn add_fd(&self, id: u64, fd: &FakeFd, at: Option<RawFd>, cloexec: bool) -> Result<RawFd, Errno> {
        let mut s = self.state();
        s.pending(id)?;
        let n = at.unwrap_or_else(|| (3..).find(|n| !s.fds.contains_key(n)).expect("a free descriptor"));
        if n as u64 >= s.fd_limit {
            return Err(libc::EBADF);
        }
        s.fds.insert(n, fd.i);
        if cloexec {
            s.cloexec.insert(n);
        } else {
            s.cloexec.remove(&n);
        }
        s.log.push(Op::AddFd { id, sock: fd.i, at, cloexec });
        Ok(n)
    }

    fn note(&self, value: u64) {
        self.state().log.push(Op::Note(value));
    }

    fn socket_fd(&self, _tid: i32, inode: u64) -> Option<RawFd> {
        let s = self.state();
        s.fds.iter().find(|(_, i)| s.socks[**i].inode == inode).map(|(fd, _)| *fd)
    }

    fn socket_fds(&self, _tid: i32) -> HashMap<u64, RawFd> {
        let s = self.state();
        let mut found = HashMap::new();
        for (fd, i) in &s.fds {
            found.entry(s.socks[*i].inode).or_insert(*fd);
        }
        found
    }

    fn fd_limit(&self, _tid: i32) -> Result<u64, Errno> {
        let mut s = self.state();
        s.log.push(Op::FdLimit);
        Ok(s.fd_limit)
    }

    fn get_fd(&self, _tid: i32, id: u64, fd: RawFd) -> Result<FakeFd, Errno> {
        let s = self.state();
        if s.pending(id).is_err() {
            return Err(libc::ESRCH);
        }
        s.fds.get(&fd).map(|i| FakeFd::new(*i, &self.held)).ok_or(libc::EBADF)
    }

    /// Nothing is touched for nothing: a zero-length copy succeeds at any address.
    fn read(&self, _tid: i32, id: u64, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut s = self.state();
        if !buf.is_empty() {
            let (start, off) = s.access(addr, buf.len(), false)?;
            buf.copy_from_slice(&s.mem[&start].0[off..off + buf.len()]);
        }
        if s.stale_after_read.remove(&id) {
            s.stale.insert(id);
        }
        Ok(())
    }

    fn write(&self, _tid: i32, _id: u64, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let mut s = self.state();
        if data.is_empty() {
            return Ok(());
        }
        let (start, off) = s.access(addr, data.len(), true)?;
        s.mem.get_mut(&start).expect("found").0[off..off + data.len()].copy_from_slice(data);
        s.log.push(Op::Write(addr, data.to_vec()));
        Ok(())
    }

    fn cloexec(&self, _tid: i32, fd: RawFd) -> bool {
        self.state().cloexec.contains(&fd)
    }

    fn may_bind_privileged(&self, _tid: i32) -> bool {
        !self.state().unprivileged
    }

    fn socket(&self, ns: Netns, domain: i32, ty: i32, protocol: i32) -> Result<FakeFd, Errno> {
        let mut s = self.state();
        s.log.push(Op::Socket(ns, domain, ty, protocol));
        Ok(FakeFd::new(s.new_sock(domain, ty, protocol, ns), &self.held))
    }

    fn echo_device(&self, _own: Ipv4Addr, make: bool) -> Result<Option<OwnedFd>, Errno> {
        let mut s = self.state();
        if s.no_tun {
            return Err(libc::ENOENT);
        }
        if !make && s.echo_wire.is_none() {
            return Ok(None);
        }
        let (ours, wire) = UnixDatagram::pair().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        s.echo_wire = Some(wire);
        s.echo_made += 1;
        Ok(Some(ours.into()))
    }

    fn in_host_netns(&self, fd: &FakeFd) -> Result<bool, Errno> {
        Ok(self.state().socks[fd.i].ns == Netns::Host)
    }

    fn mark(&self, fd: &FakeFd, marks: u32) -> Result<(), Errno> {
        let mut s = self.state();
        s.socks[fd.i].marks = marks;
        s.log.push(Op::Mark(fd.i, marks));
        Ok(())
    }

    fn mark_kernel(&self, fd: &FakeFd, state: &[u8]) -> Result<(), Errno> {
        let mut s = self.state();
        s.socks[fd.i].kernel = Some(state.to_vec());
        s.log.push(Op::MarkKernel(fd.i));
        Ok(())
    }

    fn get_opt(&self, fd: &FakeFd, level: i32, opt: i32, buf: &mut [u8]) -> Result<usize, Errno> {
        let mut s = self.state();
        let sock = &mut s.socks[fd.i];
        let int = match (level, opt) {
            (libc::SOL_SOCKET, libc::SO_DOMAIN) => Some(sock.domain),
            (libc::SOL_SOCKET, libc::SO_TYPE) => Some(sock.ty),
            (libc::SOL_SOCKET, libc::SO_PROTOCOL) => Some(sock.protocol),
            // Reading the pending error clears it, as in the kernel.
            (libc::SOL_SOCKET, libc::SO_ERROR) => Some(std::mem::take(&mut sock.so_error)),
            (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => Some(i32::from(sock.listening.is_some())),
            _ => None,
        };
        if sock.domain == libc::AF_UNIX && level != libc::SOL_SOCKET {
            return Err(libc::EOPNOTSUPP);
        }
        if level == libc::IPPROTO_IPV6 && sock.domain != libc::AF_INET6 {
            return Err(libc::ENOPROTOOPT);
        }
        if level == libc::IPPROTO_TCP && sock.ty != libc::SOCK_STREAM {
            return Err(libc::ENOPROTOOPT);
        }
        let value = match int {
            Some(v) => v.to_ne_bytes().to_vec(),
            // struct tcp_info starts with the state, as the kernel numbers it.
            None if (level, opt) == (libc::IPPROTO_TCP, libc::TCP_INFO) => {
                use ax_core::plan::{TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_SENT};
                vec![match (sock.listening, sock.tcp) {
                    (Some(_), _) => TCP_LISTEN,
                    (None, Tcp::Closed) => TCP_CLOSE,
                    (None, Tcp::SynSent) => TCP_SYN_SENT,
                    (None, Tcp::Established) => TCP_ESTABLISHED,
                }]
            }
            None => sock.opts.get(&(level, opt)).cloned().unwrap_or_else(|| vec![0; buf.len()]),
        };
        let n = value.len().min(buf.len());
        buf[..n].copy_from_slice(&value[..n]);
        Ok(n)
    }

    fn set_opt(&self, fd: &FakeFd, level: i32, opt: i32, value: &[u8]) -> Result<(), Errno> {
        let mut s = self.state();
        let sock = &mut s.socks[fd.i];
        if level == libc::IPPROTO_IPV6 && sock.domain != libc::AF_INET6 {
            return Err(libc::ENOPROTOOPT);
        }
        sock.opts.insert((level, opt), value.to_vec());
        Ok(())
    }

    fn inode(&self, fd: &FakeFd) -> Result<u64, Errno> {
        let mut s = self.state();
        s.log.push(Op::Inode(fd.i));
        Ok(s.socks[fd.i].inode)
    }

    fn file_flags(&self, fd: &FakeFd) -> Result<i32, Errno> {
        Ok(self.state().socks[fd.i].flags)
    }

    fn set_file_flags(&self, fd: &FakeFd, flags: i32) -> Result<(), Errno> {
        self.state().socks[fd.i].flags = flags;
        Ok(())
    }

    fn local_addr(&self, fd: &FakeFd) -> Result<Option<SocketAddr>, Errno> {
        let s = self.state();
        let sock = &s.socks[fd.i];
        if sock.domain != libc::AF_INET && sock.domain != libc::AF_INET6 {
            return Ok(None);
        }
        // The kernel driver's getsockname program shows a bound socket's service address
        // (to every thread, the daemon's included).
        // (the wildcard, for a wildcard bind without a peer).
        let state = sock.kernel.as_deref().and_then(|b| ax_core::kmap::SockState::decode(b).ok());
        if let Some((service, any)) = state.and_then(|k| Some((k.local?, k.local_any))) {
            let ip = if any && sock.peer.is_none() { Ipv4Addr::UNSPECIFIED } else { *service.ip() };
            return Ok(Some(SocketAddr::from((ip, service.port()))));
        }
        // An unbound inet socket reports the wildcard address and port 0.
        Ok(Some(sock.local.unwrap_or_else(|| SocketAddr::new(unspecified(sock.domain), 0))))
    }

    fn peer_addr(&self, fd: &FakeFd) -> Result<Option<SocketAddr>, Errno> {
        Ok(self.state().socks[fd.i].peer)
    }

    fn bind(&self, fd: &FakeFd, addr: &SocketAddr) -> Result<(), Errno> {
        let mut s = self.state();
        s.log.push(Op::Bind(fd.i, *addr));
        if s.socks[fd.i].local.is_some_and(|a| a.port() != 0) {
            return Err(libc::EINVAL);
        }
        if s.socks[fd.i].ns == Netns::Host && s.busy.contains(&addr.port()) {
            return Err(libc::EADDRINUSE);
        }
        let port = if addr.port() == 0 { s.ephemeral() } else { addr.port() };
        s.socks[fd.i].local = Some(SocketAddr::new(addr.ip(), port));
        Ok(())
    }

    fn listen(&self, fd: &FakeFd, backlog: i32) -> Result<(), Errno> {
        let mut s = self.state();
        s.log.push(Op::Listen(fd.i, backlog));
        if s.socks[fd.i].ty != libc::SOCK_STREAM {
            return Err(libc::EOPNOTSUPP);
        }
        if s.socks[fd.i].local.is_none() {
            let port = s.ephemeral();
            let ip = unspecified(s.socks[fd.i].domain);
            s.socks[fd.i].local = Some(SocketAddr::new(ip, port));
        }
        s.socks[fd.i].listening = Some(backlog);
        Ok(())
    }

    /// A datagram socket (re)connects at will; a stream socket follows the kernel's
    /// __inet_stream_connect: EISCONN once connected, EALREADY while a handshake is
    /// under way, the outcome once it is over (and then a fresh start).
    fn connect(&self, fd: &FakeFd, addr: &SocketAddr) -> Result<(), Errno> {
        let mut s = self.state();
        s.log.push(Op::Connect(fd.i, *addr));
        let plain = ax_core::addr::unmap(*addr);
        let sock = &s.socks[fd.i];
        let stream = sock.ty == libc::SOCK_STREAM;
        if stream && sock.connected {
            return Err(libc::EISCONN);
        }
        if stream && sock.peer.is_some() {
            // Connecting: the handshake says how it went.
            let sock = &mut s.socks[fd.i];
            return match sock.tcp {
                Tcp::SynSent => Err(libc::EALREADY),
                Tcp::Established => {
                    sock.connected = true;
                    Ok(())
                }
                Tcp::Closed => {
                    sock.peer = None;
                    Err(match std::mem::take(&mut sock.so_error) {
                        0 => libc::ECONNABORTED,
                        e => e,
                    })
                }
            };
        }
        if stream && sock.listening.is_some() {
            return Err(libc::EISCONN);
        }
        if stream && s.refusing.contains(&plain) {
            return Err(libc::ECONNREFUSED);
        }
        if s.socks[fd.i].local.is_none_or(|a| a.port() == 0) {
            let port = s.ephemeral();
            let ip = s.socks[fd.i].local.map_or(unspecified(s.socks[fd.i].domain), |a| a.ip());
            s.socks[fd.i].local = Some(SocketAddr::new(ip, port));
        }
        let pending = s.slow.contains(&plain) || s.silent.contains(&plain) || s.refusing_late.contains(&plain);
        let sock = &mut s.socks[fd.i];
        sock.peer = Some(*addr);
        if !stream {
            return Ok(());
        }
        if pending && sock.flags & libc::O_NONBLOCK != 0 {
            sock.tcp = Tcp::SynSent;
            return Err(libc::EINPROGRESS);
        }
        sock.tcp = Tcp::Established;
        sock.connected = true;
        if let Some(said) = s.says.get(&plain).cloned() {
            s.socks[fd.i].inbox.push_back((said, plain));
        }
        Ok(())
    }

    fn disconnect(&self, fd: &FakeFd) -> Result<(), Errno> {
        let mut s = self.state();
        s.log.push(Op::Disconnect(fd.i));
        let sock = &mut s.socks[fd.i];
        sock.peer = None;
        sock.tcp = Tcp::Closed;
        sock.connected = false;
        Ok(())
    }

    /// A handshake under way ends at the first wait allowed to last (a slow or
    /// late-refusing destination), or never (a silent one).
    fn wait(&self, fd: &FakeFd, what: Readiness, timeout_ms: i32) -> Result<bool, Errno> {
        let mut s = self.state();
        s.log.push(Op::Wait(fd.i, timeout_ms));
        s.waits += 1;
        assert!(s.waits < MAX_WAITS, "a helper waits for ever: its call never ends nor goes stale");
        if let Some(mut hook) = s.on_wait.take() {
            hook(&mut s);
            s.on_wait = Some(hook);
        }
        let to = s.socks[fd.i].peer.map(ax_core::addr::unmap);
        let (silent, refused) =
            (to.is_some_and(|a| s.silent.contains(&a)), to.is_some_and(|a| s.refusing_late.contains(&a)));
        let sock = &mut s.socks[fd.i];
        Ok(match what {
            Readiness::Readable => !sock.inbox.is_empty(),
            Readiness::Writable if sock.tcp != Tcp::SynSent => true,
            Readiness::Writable if silent || timeout_ms == 0 => false,
            Readiness::Writable => {
                if refused {
                    sock.tcp = Tcp::Closed;
                    sock.so_error = libc::ECONNREFUSED;
                } else {
                    sock.tcp = Tcp::Established;
                }
                true
            }
        })
    }

    fn send_msg(
        &self,
        fd: &FakeFd,
        data: &[u8],
        control: &[u8],
        _flags: i32,
        to: Option<&SocketAddr>,
    ) -> Result<usize, Errno> {
        let mut s = self.state();
        s.log.push(Op::Send(fd.i, to.copied()));
        s.socks[fd.i].sent.push((data.to_vec(), control.to_vec(), to.copied()));
        Ok(data.len())
    }

    fn recv_msg(&self, fd: &FakeFd, buf: &mut [u8], _control: &mut [u8], _flags: i32) -> Result<Received, Errno> {
        let mut s = self.state();
        let sock = &mut s.socks[fd.i];
        let (mut data, from) = sock.inbox.pop_front().ok_or(libc::EAGAIN)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        if sock.ty == libc::SOCK_STREAM {
            // A stream keeps what was not read.
            let rest = data.split_off(n);
            if !rest.is_empty() {
                sock.inbox.push_front((rest, from));
            }
            return Ok(Received { len: n, from: None, control_len: 0, flags: 0 });
        }
        Ok(Received { len: data.len(), from: Some(from), control_len: 0, flags: 0 })
    }

    fn spawn(&self, call: &Notification, note: u64, f: Box<dyn FnOnce() + Send>) -> Result<(), Errno> {
        let mut s = self.state();
        if s.no_threads {
            return Err(libc::EAGAIN);
        }
        s.later.push(f);
        s.handed.push((call.id, note));
        Ok(())
    }
}
