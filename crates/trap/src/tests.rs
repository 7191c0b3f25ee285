//! The engine against the recording double of the kernel: every trapped call's
//! decisions and how they are carried out, bad pointers, short lengths and calls that
//! go stale midway included. No root, no real sockets.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ax_core::addr::{self, Family};
use ax_core::vservice::{Backend, Expose, ExposeAt, LbType, PortMap, Vservice};
use ax_core::{AppId, Labels, NewApp, PortPool, PortRanges, Proto, Remote, Table, EGRESS_PORT};
use ax_sys::kernel::{Netns, Reply};
use ax_sys::seccomp::Notification;

use crate::fake::{Fake, Op, NOT_A_SOCKET};
use crate::{Engine, Node};

const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const OK: Option<Reply> = Some(Reply::Value(0));

fn fail(e: i32) -> Option<Reply> {
    Some(Reply::Fail(e))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[derive(Default)]
struct TestNode {
    table: Mutex<Option<Table>>,
    changes: AtomicUsize,
}

impl Node for TestNode {
    fn with_table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        f(self.table.lock().unwrap().as_mut().unwrap())
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }
}

/// One app's engine over the fake kernel, with the daemon's table beside it.
struct Rig {
    k: Arc<Fake>,
    node: Arc<TestNode>,
    engine: Engine<Fake, TestNode>,
    app: AppId,
    ids: AtomicU64,
}

fn pool() -> PortPool {
    PortPool::new(PortRanges::parse("40000-40009").unwrap())
}

impl Rig {
    fn new() -> Rig {
        Rig::with(NewApp { labels: Labels::parse("zone=default").unwrap(), ..NewApp::default() })
    }

    fn with(new: NewApp) -> Rig {
        let node = Arc::new(TestNode::default());
        let info = ax_core::NodeInfo { name: "n1".into(), cluster: "c".into(), ip: NODE };
        *node.table.lock().unwrap() = Some(Table::new(info, pool(), 7));
        let app = node.with_table(|t| t.add_app(new)).unwrap().id;
        let k = Arc::new(Fake::new());
        Rig { engine: Engine::new(app, k.clone(), node.clone()), k, node, app, ids: AtomicU64::new(1) }
    }

    /// Another app of the same node, with its own engine over the same kernel.
    fn other(&self, ip: Option<&str>, labels: &str) -> Rig {
        let new =
            NewApp { ip: ip.map(|s| s.parse().unwrap()), labels: Labels::parse(labels).unwrap(), ..NewApp::default() };
        let app = self.node.with_table(|t| t.add_app(new)).unwrap().id;
        Rig {
            engine: Engine::new(app, self.k.clone(), self.node.clone()),
            k: self.k.clone(),
            node: self.node.clone(),
            app,
            ids: AtomicU64::new(self.ids.load(Ordering::SeqCst) + 10_000),
        }
    }

    fn table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        self.node.with_table(f)
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::SeqCst)
    }

    /// Traps call `nr` as call `id`; returns the answer given.
    fn trap_as(&self, id: u64, nr: i64, args: [u64; 6]) -> Option<Reply> {
        self.engine.handle(&Notification { id, pid: 100, nr: nr as i32, arch: 0, args });
        self.k.answer_to(id)
    }

    fn trap(&self, nr: i64, args: [u64; 6]) -> Option<Reply> {
        self.trap_as(self.next_id(), nr, args)
    }

    fn socket(&self, domain: i32, ty: i32) -> RawFd {
        match self.trap(libc::SYS_socket, [domain as u64, ty as u64, 0, 0, 0, 0]) {
            Some(Reply::Value(fd)) => fd as RawFd,
            other => panic!("socket: {other:?}"),
        }
    }

    fn tcp(&self) -> RawFd {
        self.socket(libc::AF_INET, libc::SOCK_STREAM)
    }

    fn udp(&self) -> RawFd {
        self.socket(libc::AF_INET, libc::SOCK_DGRAM)
    }

    /// A sockaddr in the app's memory, in the family of `a`.
    fn addr(&self, a: &str) -> (u64, u64) {
        let a = sa(a);
        let bytes = addr::encode(a, if a.is_ipv4() { Family::V4 } else { Family::V6 });
        (self.k.put(&bytes), bytes.len() as u64)
    }

    fn bind(&self, fd: RawFd, a: &str) -> Option<Reply> {
        let (p, l) = self.addr(a);
        self.trap(libc::SYS_bind, [fd as u64, p, l, 0, 0, 0])
    }

    fn connect(&self, fd: RawFd, a: &str) -> Option<Reply> {
        let (p, l) = self.addr(a);
        self.trap(libc::SYS_connect, [fd as u64, p, l, 0, 0, 0])
    }

    fn listen(&self, fd: RawFd) -> Option<Reply> {
        self.trap(libc::SYS_listen, [fd as u64, 128, 0, 0, 0, 0])
    }

    /// A TCP server on `service`, listening: returns its host address.
    fn serve(&self, service: &str) -> SocketAddrV4 {
        let fd = self.tcp();
        assert_eq!(self.bind(fd, service), OK);
        assert_eq!(self.listen(fd), OK);
        match self.k.sock(fd).local {
            Some(SocketAddr::V4(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    /// getsockname or getpeername with a buffer of `len` bytes: the answer, and what
    /// was written (address bytes, reported length).
    fn name(&self, fd: RawFd, peer: bool, len: i32) -> (Option<Reply>, Vec<u8>, u32) {
        let buf = self.k.put(&[0u8; 28]);
        let lenp = self.k.put(&len.to_ne_bytes());
        let nr = if peer { libc::SYS_getpeername } else { libc::SYS_getsockname };
        let r = self.trap(nr, [fd as u64, buf, lenp, 0, 0, 0]);
        let got = u32::from_ne_bytes(self.k.peek(lenp, 4).try_into().unwrap());
        (r, self.k.peek(buf, 28), got)
    }

    /// The address getsockname/getpeername showed, if the daemon answered.
    fn shown(&self, fd: RawFd, peer: bool) -> Option<SocketAddr> {
        let (r, bytes, len) = self.name(fd, peer, 28);
        match r {
            Some(Reply::Value(0)) => match addr::parse(&bytes[..len as usize]).unwrap() {
                addr::SockAddr::Inet(a) => Some(a),
                other => panic!("{other:?}"),
            },
            Some(Reply::Proceed) => None,
            other => panic!("{other:?}"),
        }
    }

    fn changes(&self) -> usize {
        self.node.changes.load(Ordering::SeqCst)
    }
}

fn host(port: u16) -> SocketAddr {
    SocketAddr::from((NODE, port))
}

// socket()

#[test]
fn inet_sockets_are_made_in_the_host_namespace_and_sent_in() {
    let r = Rig::new();
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK);
    let ops = r.k.ops();
    assert_eq!(ops[0], Op::Socket(Netns::Host, libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0));
    assert!(matches!(ops[1], Op::AddFd { at: None, cloexec: true, send: true, .. }));
    let s = r.k.sock(fd);
    assert_eq!(s.ns, Netns::Host);
    assert_ne!(s.flags & libc::O_NONBLOCK, 0);
    let fd6 = r.socket(libc::AF_INET6, libc::SOCK_DGRAM);
    assert_eq!(r.k.sock(fd6).domain, libc::AF_INET6);
    assert!(!r.k.state().cloexec.contains(&fd6));
}

#[test]
fn raw_icmp_and_sctp_sockets_stay_in_the_apps_namespace() {
    let r = Rig::new();
    for (ty, proto) in [
        (libc::SOCK_RAW, libc::IPPROTO_ICMP),
        (libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        (libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        (libc::SOCK_SEQPACKET, 0),
        (libc::SOCK_STREAM, libc::IPPROTO_UDP),
    ] {
        assert_eq!(
            r.trap(libc::SYS_socket, [libc::AF_INET as u64, ty as u64, proto as u64, 0, 0, 0]),
            Some(Reply::Proceed)
        );
    }
    assert!(r.k.ops().is_empty(), "nothing was made");
}

#[test]
fn a_socket_for_a_caller_that_died_is_not_handed_to_anyone() {
    let r = Rig::new();
    r.k.state().stale.insert(500);
    let before = r.k.state().fds.len();
    assert_eq!(r.trap_as(500, libc::SYS_socket, [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0]), None);
    assert_eq!(r.k.state().fds.len(), before);
}

#[test]
fn calls_the_engine_has_no_business_with_proceed() {
    let r = Rig::new();
    assert_eq!(r.trap(libc::SYS_accept4, [3, 0, 0, 0, 0, 0]), Some(Reply::Proceed));
}

// bind()

#[test]
fn a_wildcard_bind_takes_a_pool_port_on_the_node_and_records_the_service() {
    let r = Rig::new();
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:80"), OK);
    assert_eq!(r.k.sock(fd).local, Some(host(40000)));
    let b = r.table(|t| t.binding(Proto::Tcp, 40000).cloned()).unwrap();
    assert_eq!(b.service, SocketAddrV4::new(NODE, 80));
    assert_eq!(b.requested, sa("0.0.0.0:80"));
    assert_eq!((b.inode, b.app), (r.k.sock(fd).inode, r.app));
    assert!(!b.listening);
    assert_eq!(r.changes(), 1, "saved before the app is answered");
    // getsockname shows what the app asked for, on its own address.
    assert_eq!(r.shown(fd, false), Some(sa("10.0.0.1:80")));
}

#[test]
fn a_bind_to_port_zero_reports_the_host_port_as_the_service_port() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.5".parse().unwrap()), ..NewApp::default() });
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:0"), OK);
    assert_eq!(r.table(|t| t.binding(Proto::Tcp, 40000).unwrap().service), "198.18.0.5:40000".parse().unwrap());
    assert_eq!(r.shown(fd, false), Some(sa("198.18.0.5:40000")));
}

#[test]
fn a_busy_host_port_is_skipped_and_given_back() {
    let r = Rig::new();
    r.k.state().busy.extend([40000, 40001]);
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:80"), OK);
    assert_eq!(r.k.sock(fd).local, Some(host(40002)));
    assert_eq!(r.table(|t| t.pool().in_use()), 1, "the busy ports went back to the pool");
    let binds = r.k.ops().iter().filter(|o| matches!(o, Op::Bind(..))).count();
    assert_eq!(binds, 3);
}

#[test]
fn every_pool_port_busy_on_the_host_fails_with_eaddrinuse_and_keeps_none() {
    let r = Rig::new();
    r.k.state().busy.extend(40000..=40009);
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:80"), fail(libc::EADDRINUSE));
    assert_eq!(r.table(|t| t.pool().in_use()), 0);
    assert_eq!(r.table(|t| t.bindings().count()), 0);
    assert_eq!(r.changes(), 0);
}

#[test]
fn an_exhausted_pool_fails_the_bind_and_the_next_app_is_still_served() {
    let r = Rig::new();
    for _ in 0..10 {
        let fd = r.tcp();
        assert_eq!(r.bind(fd, "0.0.0.0:0"), OK);
    }
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:0"), fail(libc::EADDRINUSE));
    // A loopback bind needs no pool port.
    assert_eq!(r.bind(fd, "127.0.0.1:8080"), OK);
}

#[test]
fn a_loopback_bind_moves_the_socket_into_the_apps_namespace_with_its_options() {
    let r = Rig::new();
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK);
    let old = r.k.state().fds[&fd];
    r.k.state().socks[old].opts.insert((libc::SOL_SOCKET, libc::SO_REUSEADDR), 1i32.to_ne_bytes().to_vec());
    assert_eq!(r.bind(fd, "127.0.0.1:6379"), OK);
    let s = r.k.sock(fd);
    assert_eq!(s.ns, Netns::App, "the app's descriptor now names a socket of its own namespace");
    assert_eq!(s.local, Some(sa("127.0.0.1:6379")));
    assert_eq!(s.opts[&(libc::SOL_SOCKET, libc::SO_REUSEADDR)], 1i32.to_ne_bytes());
    assert_ne!(s.flags & libc::O_NONBLOCK, 0);
    assert!(r.k.ops().contains(&Op::AddFd {
        id: 2,
        sock: r.k.state().fds[&fd],
        at: Some(fd),
        cloexec: true,
        send: false
    }));
    assert_eq!(r.table(|t| t.bindings().count()), 0, "private: no row");
    assert_eq!(r.shown(fd, false), None, "the kernel tells the truth there");
}

#[test]
fn a_second_bind_is_einval_as_in_the_kernel() {
    let r = Rig::new();
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:80"), OK);
    assert_eq!(r.bind(fd, "0.0.0.0:81"), fail(libc::EINVAL));
    assert_eq!(r.table(|t| t.pool().in_use()), 1);
}

#[test]
fn a_dual_stack_bind_clears_v6only_and_binds_the_mapped_node_address() {
    let r = Rig::new();
    let fd = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].opts.insert((libc::IPPROTO_IPV6, libc::IPV6_V6ONLY), 1i32.to_ne_bytes().to_vec());
    assert_eq!(r.bind(fd, "[::]:80"), OK);
    let s = r.k.sock(fd);
    assert_eq!(s.opts[&(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)], 0i32.to_ne_bytes());
    assert_eq!(s.local, Some(sa("[::ffff:10.0.0.1]:40000")));
    assert_eq!(r.table(|t| t.binding(Proto::Tcp, 40000).unwrap().family), Family::V6);
    assert_eq!(r.shown(fd, false), Some(sa("[::ffff:10.0.0.1]:80")));
}

#[test]
fn a_mismatched_address_family_gets_the_kernels_errno() {
    let r = Rig::new();
    let v4 = r.tcp();
    assert_eq!(r.bind(v4, "[::]:80"), fail(libc::EAFNOSUPPORT));
    let v6 = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    assert_eq!(r.bind(v6, "0.0.0.0:80"), fail(libc::EINVAL));
    assert_eq!(r.connect(v6, "10.9.9.9:80"), fail(libc::EINVAL));
    assert_eq!(r.table(|t| t.bindings().count()), 0);
}

#[test]
fn an_address_the_app_does_not_have_is_eaddrnotavail() {
    let r = Rig::new();
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "192.0.2.1:80"), fail(libc::EADDRNOTAVAIL));
}

#[test]
fn bad_lengths_and_pointers_get_einval_and_efault() {
    let r = Rig::new();
    let fd = r.tcp();
    let (p, _) = r.addr("0.0.0.0:80");
    for (len, errno) in [(129u64, libc::EINVAL), (u32::MAX as u64, libc::EINVAL), (1, libc::EINVAL), (0, libc::EINVAL)]
    {
        assert_eq!(r.trap(libc::SYS_bind, [fd as u64, p, len, 0, 0, 0]), fail(errno), "len {len}");
    }
    assert_eq!(r.trap(libc::SYS_bind, [fd as u64, 0, 16, 0, 0, 0]), fail(libc::EFAULT));
    // A sockaddr that runs past the end of the app's mapping.
    assert_eq!(r.trap(libc::SYS_bind, [fd as u64, p + 0xff8, 16, 0, 0, 0]), fail(libc::EFAULT));
    assert_eq!(r.table(|t| t.pool().in_use()), 0);
}

#[test]
fn unspec_and_unix_addresses_cannot_be_bound_on_inet_sockets() {
    let r = Rig::new();
    let fd = r.tcp();
    let p = r.k.put(&[0u8; 16]);
    assert_eq!(r.trap(libc::SYS_bind, [fd as u64, p, 16, 0, 0, 0]), fail(libc::EAFNOSUPPORT));
    let mut unix = vec![0u8; 16];
    unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    let p = r.k.put(&unix);
    assert_eq!(r.trap(libc::SYS_bind, [fd as u64, p, 16, 0, 0, 0]), fail(libc::EAFNOSUPPORT));
}

#[test]
fn unix_sockets_and_bad_descriptors_are_not_the_engines() {
    let r = Rig::new();
    assert_eq!(r.bind(NOT_A_SOCKET, "0.0.0.0:80"), Some(Reply::Proceed));
    assert_eq!(r.listen(NOT_A_SOCKET), Some(Reply::Proceed));
    assert_eq!(r.connect(NOT_A_SOCKET, "10.0.0.2:80"), Some(Reply::Proceed));
    assert_eq!(r.bind(77, "0.0.0.0:80"), fail(libc::EBADF));
    assert_eq!(r.connect(77, "10.0.0.2:80"), fail(libc::EBADF));
    assert_eq!(r.name(77, false, 16).0, fail(libc::EBADF));
}

#[test]
fn the_apps_own_inet_sockets_are_bound_by_the_daemon_where_they_are() {
    let r = Rig::new();
    r.k.give(20, libc::AF_INET, libc::SOCK_STREAM, Netns::App);
    assert_eq!(r.bind(20, "0.0.0.0:80"), OK);
    assert_eq!(r.k.sock(20).local, Some(sa("0.0.0.0:80")));
    assert_eq!(r.table(|t| t.bindings().count()), 0);
    assert_eq!(r.listen(20), OK);
    assert_eq!(r.k.sock(20).listening, Some(128));
}

#[test]
fn a_call_gone_stale_while_its_address_was_read_does_nothing() {
    let r = Rig::new();
    let fd = r.tcp();
    let (p, l) = r.addr("0.0.0.0:80");
    r.k.state().stale_after_read.insert(900);
    assert_eq!(r.trap_as(900, libc::SYS_bind, [fd as u64, p, l, 0, 0, 0]), None);
    assert_eq!(r.table(|t| t.bindings().count()), 0);
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Bind(..))));
    // The same race on connect: no connection is made.
    let (p, l) = r.addr("192.0.2.1:80");
    r.k.state().stale_after_read.insert(901);
    assert_eq!(r.trap_as(901, libc::SYS_connect, [fd as u64, p, l, 0, 0, 0]), None);
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Connect(..))));
}

#[test]
fn an_exposed_port_is_bound_as_it_is_once() {
    let expose = vec![Expose { internal: 8000, at: ExposeAt::ThisNode, host_port: 9999 }];
    let r = Rig::with(NewApp { expose, ..NewApp::default() });
    let a = r.tcp();
    assert_eq!(r.bind(a, "0.0.0.0:8000"), OK);
    assert_eq!(r.k.sock(a).local, Some(host(9999)));
    let b = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    assert_eq!(r.bind(b, "[::]:8000"), OK);
    assert_eq!(r.k.sock(b).local, Some(sa("[::ffff:10.0.0.1]:40000")));
    assert_eq!(r.table(|t| t.pool().in_use()), 1, "the exposed port is not the pool's");
}

#[test]
fn a_udp_bind_to_a_port_is_a_service_row_at_once() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.9".parse().unwrap()), ..NewApp::default() });
    let fd = r.udp();
    assert_eq!(r.bind(fd, "0.0.0.0:53"), OK);
    let row = r.table(|t| t.services().next().cloned()).unwrap();
    assert_eq!((row.proto, row.service), (Proto::Udp, "198.18.0.9:53".parse().unwrap()));
    let eph = r.udp();
    assert_eq!(r.bind(eph, "0.0.0.0:0"), OK);
    assert_eq!(r.table(|t| t.services().count()), 1, "an ephemeral UDP port serves nothing");
}

// listen()

#[test]
fn listen_makes_the_bound_socket_a_service_row() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.7".parse().unwrap()), ..NewApp::default() });
    let fd = r.tcp();
    r.bind(fd, "0.0.0.0:80");
    assert_eq!(r.trap(libc::SYS_listen, [fd as u64, 511, 0, 0, 0, 0]), OK);
    let row = r.table(|t| t.services().next().cloned()).unwrap();
    assert_eq!((row.service, row.backlog), ("198.18.0.7:80".parse().unwrap(), 511));
    assert_eq!(r.k.sock(fd).listening, Some(511));
    assert_eq!(r.changes(), 2);
}

#[test]
fn listen_on_an_unbound_socket_binds_a_pool_port_first() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.7".parse().unwrap()), ..NewApp::default() });
    let fd = r.tcp();
    assert_eq!(r.listen(fd), OK);
    assert_eq!(r.k.sock(fd).local, Some(host(40000)));
    let row = r.table(|t| t.services().next().cloned()).unwrap();
    assert_eq!(row.service, "198.18.0.7:40000".parse().unwrap());
}

#[test]
fn listen_on_a_udp_socket_is_eopnotsupp_and_binds_nothing() {
    let r = Rig::new();
    let fd = r.udp();
    assert_eq!(r.listen(fd), fail(libc::EOPNOTSUPP));
    assert_eq!(r.table(|t| t.pool().in_use()), 0);
}

#[test]
fn listen_on_a_loopback_socket_adds_no_row() {
    let r = Rig::new();
    let fd = r.tcp();
    r.bind(fd, "127.0.0.1:9000");
    assert_eq!(r.listen(fd), OK);
    assert_eq!(r.k.sock(fd).listening, Some(128));
    assert_eq!(r.table(|t| t.services().count()), 0);
}

// connect()

#[test]
fn a_connect_to_a_served_address_goes_to_its_host_port() {
    let r = Rig::new();
    let server = r.other(Some("198.18.0.1"), "zone=default");
    let at = server.serve("0.0.0.0:80");
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "198.18.0.1:80"), OK);
    assert_eq!(r.k.sock(fd).peer, Some(SocketAddr::V4(at)));
    assert_eq!(r.shown(fd, true), Some(sa("198.18.0.1:80")), "getpeername shows the service");
}

#[test]
fn labels_that_do_not_meet_refuse_without_a_packet() {
    let r = Rig::with(NewApp { labels: Labels::parse("role=test").unwrap(), ..NewApp::default() });
    let server = r.other(Some("198.18.0.1"), "role=prod");
    let at = server.serve("0.0.0.0:80");
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "198.18.0.1:80"), fail(libc::ECONNREFUSED));
    // Naming the pool port on the node address is the same service: refused too.
    assert_eq!(r.connect(fd, &at.to_string()), fail(libc::ECONNREFUSED));
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Connect(s, _) if *s == r.k.state().fds[&fd])));
}

#[test]
fn a_virtual_address_nobody_serves_is_refused() {
    let r = Rig::new();
    let _idle = r.other(Some("198.18.0.1"), "zone=default");
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "198.18.0.1:80"), fail(libc::ECONNREFUSED));
}

#[test]
fn outside_addresses_are_connected_directly() {
    let r = Rig::new();
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "192.0.2.1:443"), OK);
    assert_eq!(r.k.sock(fd).peer, Some(sa("192.0.2.1:443")));
    assert_eq!(r.shown(fd, true), None, "the real peer, as the kernel says it");
}

#[test]
fn loopback_connects_stay_in_the_apps_namespace() {
    let r = Rig::new();
    for dest in ["127.0.0.1:6379", "0.0.0.0:6379"] {
        let fd = r.tcp();
        assert_eq!(r.connect(fd, dest), OK);
        let s = r.k.sock(fd);
        assert_eq!((s.ns, s.peer), (Netns::App, Some(sa(dest))));
    }
}

#[test]
fn a_refusing_backend_is_skipped_after_a_reset() {
    let r = Rig::new();
    let a = r.other(Some("198.18.0.1"), "zone=default").serve("0.0.0.0:80");
    let b = r.other(Some("198.18.0.1"), "zone=default").serve("0.0.0.0:80");
    r.k.state().refusing.insert(SocketAddr::V4(a));
    let mut retried = 0;
    for _ in 0..8 {
        let fd = r.tcp();
        assert_eq!(r.connect(fd, "198.18.0.1:80"), OK);
        assert_eq!(r.k.sock(fd).peer, Some(SocketAddr::V4(b)));
        let sock = r.k.state().fds[&fd];
        let ops: Vec<Op> =
            r.k.ops()
                .into_iter()
                .filter(|o| matches!(o, Op::Connect(s, _) | Op::Disconnect(s) if *s == sock))
                .collect();
        let (a, b) = (SocketAddr::V4(a), SocketAddr::V4(b));
        if ops.len() == 1 {
            assert_eq!(ops, [Op::Connect(sock, b)]);
        } else {
            assert_eq!(ops, [Op::Connect(sock, a), Op::Disconnect(sock), Op::Connect(sock, b)], "reset in between");
            retried += 1;
        }
    }
    assert!(retried > 0, "the balancer put the refusing backend first at least once in 8");
    r.k.state().refusing.insert(SocketAddr::V4(b));
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "198.18.0.1:80"), fail(libc::ECONNREFUSED));
}

#[test]
fn a_nonblocking_connect_says_einprogress_and_keeps_its_flags() {
    let r = Rig::new();
    r.k.state().slow.insert(sa("192.0.2.1:80"));
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::EINPROGRESS));
    assert_ne!(r.k.sock(fd).flags & libc::O_NONBLOCK, 0);
    assert!(r.k.state().later.is_empty());
}

#[test]
fn a_blocking_connect_is_answered_later_without_blocking_the_engine() {
    let r = Rig::new();
    r.k.state().slow.insert(sa("192.0.2.1:80"));
    let fd = r.tcp();
    let id = r.next_id();
    let (p, l) = r.addr("192.0.2.1:80");
    assert_eq!(r.trap_as(id, libc::SYS_connect, [fd as u64, p, l, 0, 0, 0]), None);
    assert_eq!(r.k.sock(fd).flags & libc::O_NONBLOCK, 0, "the app's socket is blocking again");
    // Meanwhile another call of the app is served.
    assert_eq!(r.bind(r.tcp(), "0.0.0.0:0"), OK);
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), OK);
}

#[test]
fn a_blocking_connect_that_outlives_its_send_timeout_reports_einprogress() {
    let r = Rig::new();
    r.k.state().silent.insert(sa("192.0.2.1:80"));
    let fd = r.tcp();
    let i = r.k.state().fds[&fd];
    let mut tv = [0u8; 16];
    tv[..8].copy_from_slice(&1i64.to_ne_bytes());
    r.k.state().socks[i].opts.insert((libc::SOL_SOCKET, libc::SO_SNDTIMEO), tv.to_vec());
    let id = r.next_id();
    let (p, l) = r.addr("192.0.2.1:80");
    assert_eq!(r.trap_as(id, libc::SYS_connect, [fd as u64, p, l, 0, 0, 0]), None);
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), fail(libc::EINPROGRESS));
}

#[test]
fn no_helper_thread_means_eagain_not_a_dead_engine() {
    let r = Rig::new();
    r.k.state().slow.insert(sa("192.0.2.1:80"));
    r.k.state().no_threads = true;
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::EAGAIN));
    assert_eq!(r.connect(r.tcp(), "192.0.2.2:80"), OK);
}

#[test]
fn connect_af_unspec_dissolves_the_association() {
    let r = Rig::new();
    let fd = r.udp();
    assert_eq!(r.connect(fd, "192.0.2.1:53"), OK);
    let p = r.k.put(&[0u8; 16]);
    assert_eq!(r.trap(libc::SYS_connect, [fd as u64, p, 16, 0, 0, 0]), OK);
    assert_eq!(r.k.sock(fd).peer, None);
}

#[test]
fn a_v6_socket_reaches_a_virtual_v4_service_by_its_mapped_address() {
    let r = Rig::new();
    let at = r.other(Some("198.18.0.1"), "zone=default").serve("0.0.0.0:80");
    let fd = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    assert_eq!(r.connect(fd, "[::ffff:198.18.0.1]:80"), OK);
    assert_eq!(r.k.sock(fd).peer, Some(addr::for_family(SocketAddr::V4(at), Family::V6)));
    assert_eq!(r.shown(fd, true), Some(sa("[::ffff:198.18.0.1]:80")));
}

fn vservice(name: &str, ip: &str, lb: LbType, backends: &[Backend]) -> Vservice {
    Vservice {
        name: name.into(),
        ip: ip.parse().unwrap(),
        ports: vec![PortMap { vport: 80, app_port: 8000 }],
        backends: backends.to_vec(),
        lb,
        source_ip: None,
        external: false,
        app_backends: Default::default(),
    }
}

#[test]
fn a_round_robin_vservice_alternates_its_backends() {
    let r = Rig::new();
    let a = r.other(Some("198.18.1.1"), "zone=default").serve("0.0.0.0:8000");
    let b = r.other(Some("198.18.1.2"), "zone=default").serve("0.0.0.0:8000");
    let backends = [Backend::Ip("198.18.1.1".parse().unwrap()), Backend::Ip("198.18.1.2".parse().unwrap())];
    r.table(|t| t.add_vservice(vservice("web", "198.18.2.1", LbType::RoundRobin, &backends))).unwrap();
    let peers: Vec<SocketAddr> = (0..4)
        .map(|_| {
            let fd = r.tcp();
            assert_eq!(r.connect(fd, "198.18.2.1:80"), OK);
            r.k.sock(fd).peer.unwrap()
        })
        .collect();
    let (a, b) = (SocketAddr::V4(a), SocketAddr::V4(b));
    assert!(peers == [a, b, a, b] || peers == [b, a, b, a], "{peers:?}");
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "198.18.2.1:81"), fail(libc::ECONNREFUSED), "an unmapped port");
}

#[test]
fn an_external_backend_is_reached_from_the_vservices_source_address() {
    let r = Rig::new();
    let mut v = vservice("ext", "198.18.2.3", LbType::Random, &[Backend::IpPort("192.0.2.7:9000".parse().unwrap())]);
    v.source_ip = Some(NODE);
    r.table(|t| t.add_vservice(v)).unwrap();
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "198.18.2.3:80"), OK);
    let s = r.k.sock(fd);
    assert_eq!(s.peer, Some(sa("192.0.2.7:9000")));
    assert_eq!(s.local.map(|a| a.ip()), Some(NODE.into()));
    assert!(r.k.ops().contains(&Op::Bind(r.k.state().fds[&fd], host(0))));
}

#[test]
fn the_apps_own_inet_sockets_connect_where_they_are() {
    let r = Rig::new();
    r.other(Some("198.18.0.1"), "zone=default").serve("0.0.0.0:80");
    r.k.give(21, libc::AF_INET, libc::SOCK_STREAM, Netns::App);
    assert_eq!(r.connect(21, "198.18.0.1:80"), OK);
    assert_eq!(r.k.sock(21).peer, Some(sa("198.18.0.1:80")), "not routed: that namespace has only lo");
}

fn gateway_rig() -> (Rig, SocketAddrV4) {
    let r = Rig::new();
    let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
    r.table(|t| t.set_remote(Remote { nodes: vec![("g".into(), gw)], egress: vec![gw], ..Remote::default() }));
    (r, SocketAddrV4::new(gw, EGRESS_PORT))
}

#[test]
fn an_egress_connect_asks_the_gateway_and_shows_the_real_destination() {
    let (r, gw) = gateway_rig();
    let fd = r.tcp();
    let id = r.next_id();
    let (p, l) = r.addr("192.0.2.1:443");
    assert_eq!(r.trap_as(id, libc::SYS_connect, [fd as u64, p, l, 0, 0, 0]), None);
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"OK\nHTTP".to_vec(), SocketAddr::V4(gw)));
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), OK);
    let s = r.k.sock(fd);
    assert_eq!(s.peer, Some(SocketAddr::V4(gw)));
    assert_eq!(s.sent[0].0, b"AXEG 192.0.2.1:443\n");
    assert_eq!(s.inbox[0].0, b"HTTP", "nothing past the answer line is taken from the app");
    assert_eq!(s.flags & libc::O_NONBLOCK, 0);
    assert_eq!(r.shown(fd, true), Some(sa("192.0.2.1:443")));
}

#[test]
fn a_gateway_that_cannot_reach_the_destination_fails_the_connect_with_its_errno() {
    let (r, gw) = gateway_rig();
    let fd = r.tcp();
    let id = r.next_id();
    let (p, l) = r.addr("192.0.2.1:443");
    r.trap_as(id, libc::SYS_connect, [fd as u64, p, l, 0, 0, 0]);
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"ERR 113\n".to_vec(), SocketAddr::V4(gw)));
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), fail(libc::EHOSTUNREACH));
    // A gateway that closes without answering.
    let fd = r.tcp();
    let id = r.next_id();
    let (p, l) = r.addr("192.0.2.1:443");
    r.trap_as(id, libc::SYS_connect, [fd as u64, p, l, 0, 0, 0]);
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((Vec::new(), SocketAddr::V4(gw)));
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), fail(libc::ECONNRESET));
}

// getsockname() and getpeername()

#[test]
fn a_short_name_buffer_gets_what_fits_and_the_full_length() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.5".parse().unwrap()), ..NewApp::default() });
    let fd = r.tcp();
    r.bind(fd, "0.0.0.0:80");
    let (reply, bytes, len) = r.name(fd, false, 4);
    assert_eq!(reply, OK);
    assert_eq!(len, 16);
    let full = addr::encode(sa("198.18.0.5:80"), Family::V4);
    assert_eq!(&bytes[..4], &full[..4]);
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "nothing past the app's length is written");
}

#[test]
fn a_negative_name_length_is_einval_and_a_bad_pointer_efault() {
    let r = Rig::new();
    let fd = r.tcp();
    r.bind(fd, "0.0.0.0:80");
    assert_eq!(r.name(fd, false, -1).0, fail(libc::EINVAL));
    assert_eq!(r.trap(libc::SYS_getsockname, [fd as u64, 0x10, 0x20, 0, 0, 0]), fail(libc::EFAULT));
    let lenp = r.k.put(&16i32.to_ne_bytes());
    assert_eq!(r.trap(libc::SYS_getsockname, [fd as u64, 0x10, lenp, 0, 0, 0]), fail(libc::EFAULT));
}

#[test]
fn a_name_call_gone_stale_writes_nothing() {
    let r = Rig::new();
    let fd = r.tcp();
    r.bind(fd, "0.0.0.0:80");
    let buf = r.k.put(&[0u8; 16]);
    let lenp = r.k.put(&16i32.to_ne_bytes());
    r.k.state().stale_after_read.insert(700);
    assert_eq!(r.trap_as(700, libc::SYS_getsockname, [fd as u64, buf, lenp, 0, 0, 0]), None);
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Write(..))));
}

#[test]
fn unbound_unconnected_and_unix_sockets_get_the_kernels_answer() {
    let r = Rig::new();
    let fd = r.tcp();
    assert_eq!(r.shown(fd, false), None);
    assert_eq!(r.shown(fd, true), None);
    assert_eq!(r.shown(NOT_A_SOCKET, false), None);
}

#[test]
fn an_outside_connection_shows_the_apps_own_address_as_its_local_one() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.5".parse().unwrap()), ..NewApp::default() });
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "192.0.2.1:443"), OK);
    // The fake picked an ephemeral port on the wildcard address; a real kernel picks
    // the node address: that is the case to show.
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].local = Some(host(33000));
    assert_eq!(r.shown(fd, false), Some(sa("198.18.0.5:33000")));
}

// Datagrams

/// A UDP server app on `service`: its host address.
fn udp_server(r: &Rig, ip: &str, labels: &str, service: &str) -> SocketAddrV4 {
    let s = r.other(Some(ip), labels);
    let fd = s.udp();
    assert_eq!(s.bind(fd, service), OK);
    match s.k.sock(fd).local {
        Some(SocketAddr::V4(a)) => a,
        other => panic!("{other:?}"),
    }
}

fn sendto(r: &Rig, fd: RawFd, data: &[u8], to: &str, flags: i32) -> Option<Reply> {
    let buf = r.k.put(data);
    let (p, l) = r.addr(to);
    r.trap(libc::SYS_sendto, [fd as u64, buf, data.len() as u64, flags as u64, p, l])
}

#[test]
fn a_datagram_to_a_virtual_address_goes_to_its_backend() {
    let r = Rig::new();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    assert_eq!(sendto(&r, fd, b"query", "198.18.0.53:53", 0), Some(Reply::Value(5)));
    let s = r.k.sock(fd);
    assert_eq!(s.sent, vec![(b"query".to_vec(), Vec::new(), Some(SocketAddr::V4(at)))]);
}

#[test]
fn datagrams_obey_labels_and_loopback_stays_private() {
    let r = Rig::with(NewApp { labels: Labels::parse("role=test").unwrap(), ..NewApp::default() });
    udp_server(&r, "198.18.0.53", "role=prod", "0.0.0.0:53");
    let fd = r.udp();
    assert_eq!(sendto(&r, fd, b"q", "198.18.0.53:53", 0), fail(libc::ECONNREFUSED));
    assert!(r.k.sock(fd).sent.is_empty());
    assert_eq!(sendto(&r, fd, b"q", "192.0.2.9:53", 0), Some(Reply::Value(1)));
    assert_eq!(r.k.sock(fd).sent[0].2, Some(sa("192.0.2.9:53")));
    let lo = r.udp();
    assert_eq!(sendto(&r, lo, b"q", "127.0.0.1:53", 0), Some(Reply::Value(1)));
    let s = r.k.sock(lo);
    assert_eq!((s.ns, s.sent[0].2), (Netns::App, Some(sa("127.0.0.1:53"))));
}

#[test]
fn one_socket_keeps_talking_to_one_backend() {
    let r = Rig::new();
    udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    for _ in 0..3 {
        let fd = r.udp();
        for _ in 0..5 {
            sendto(&r, fd, b"q", "198.18.0.53:53", 0);
        }
        let sent = r.k.sock(fd).sent;
        assert!(sent.iter().all(|s| s.2 == sent[0].2), "{sent:?}");
    }
}

#[test]
fn tcp_sends_run_natively_but_fast_open_is_refused() {
    let r = Rig::new();
    let fd = r.tcp();
    assert_eq!(sendto(&r, fd, b"x", "192.0.2.1:80", 0), Some(Reply::Proceed));
    assert_eq!(sendto(&r, fd, b"x", "192.0.2.1:80", libc::MSG_FASTOPEN), fail(libc::EOPNOTSUPP));
    assert!(r.k.sock(fd).peer.is_none(), "no connection was made");
}

#[test]
fn oversized_datagrams_are_emsgsize() {
    let r = Rig::new();
    let fd = r.udp();
    let (p, l) = r.addr("192.0.2.1:53");
    let big = crate::datagram::MAX_PAYLOAD as u64 + 1;
    assert_eq!(r.trap(libc::SYS_sendto, [fd as u64, p, big, 0, p, l]), fail(libc::EMSGSIZE));
    assert_eq!(sendto(&r, fd, b"x", "192.0.2.1:53", 0), Some(Reply::Value(1)));
}

/// A msghdr in the app's memory: name, iovecs over `parts`, control bytes.
fn msghdr(r: &Rig, name: Option<&str>, parts: &[&[u8]], control: &[u8], iov_cap: usize) -> u64 {
    let (name_ptr, name_len) = match name {
        Some(a) => r.addr(a),
        None => (0, 0),
    };
    let mut iov = Vec::new();
    for p in parts {
        let mut b = p.to_vec();
        b.resize(iov_cap.max(p.len()), 0);
        iov.extend(r.k.put(&b).to_ne_bytes());
        iov.extend((iov_cap.max(p.len()) as u64).to_ne_bytes());
    }
    let iov_ptr = r.k.put(&iov);
    let control_ptr = r.k.put(&control.iter().copied().chain(std::iter::repeat_n(0, 64)).collect::<Vec<u8>>());
    let mut h = Vec::new();
    h.extend(name_ptr.to_ne_bytes());
    h.extend((name_len as u32).to_ne_bytes());
    h.extend([0u8; 4]);
    h.extend(iov_ptr.to_ne_bytes());
    h.extend((parts.len() as u64).to_ne_bytes());
    h.extend(control_ptr.to_ne_bytes());
    h.extend((control.len() as u64).to_ne_bytes());
    h.extend([0u8; 8]);
    r.k.put(&h)
}

#[test]
fn sendmsg_gathers_the_iovecs_and_passes_the_control_data() {
    let r = Rig::new();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    let h = msghdr(&r, Some("198.18.0.53:53"), &[b"ab", b"cde"], b"ctl!", 0);
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, h, 0, 0, 0, 0]), Some(Reply::Value(5)));
    assert_eq!(r.k.sock(fd).sent, vec![(b"abcde".to_vec(), b"ctl!".to_vec(), Some(SocketAddr::V4(at)))]);
    let no_name = msghdr(&r, None, &[b"x"], b"", 0);
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, no_name, 0, 0, 0, 0]), Some(Reply::Proceed));
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, 0x8, 0, 0, 0, 0]), fail(libc::EFAULT));
}

#[test]
fn too_many_iovecs_are_emsgsize() {
    let r = Rig::new();
    let fd = r.udp();
    let h = msghdr(&r, Some("192.0.2.1:53"), &[b"x"], b"", 0);
    let mut raw = r.k.peek(h, 56);
    raw[24..32].copy_from_slice(&1025u64.to_ne_bytes());
    let h = r.k.put(&raw);
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, h, 0, 0, 0, 0]), fail(libc::EMSGSIZE));
}

fn recvfrom(r: &Rig, id: u64, fd: RawFd, flags: i32, srclen: u32) -> (Option<Reply>, u64, u64, u64) {
    let buf = r.k.put(&[0u8; 64]);
    let src = r.k.put(&[0u8; 28]);
    let lenp = r.k.put(&srclen.to_ne_bytes());
    let reply = r.trap_as(id, libc::SYS_recvfrom, [fd as u64, buf, 64, flags as u64, src, lenp]);
    (reply, buf, src, lenp)
}

#[test]
fn a_reply_from_a_backend_shows_the_virtual_address_it_was_sent_to() {
    let r = Rig::new();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"answer".to_vec(), SocketAddr::V4(at)));
    let (reply, buf, src, lenp) = recvfrom(&r, r.next_id(), fd, 0, 16);
    assert_eq!(reply, Some(Reply::Value(6)));
    assert_eq!(r.k.peek(buf, 6), b"answer");
    assert_eq!(r.k.peek(src, 16), addr::encode(sa("198.18.0.53:53"), Family::V4));
    assert_eq!(u32::from_ne_bytes(r.k.peek(lenp, 4).try_into().unwrap()), 16);
}

#[test]
fn a_short_source_buffer_is_filled_as_far_as_it_goes() {
    let r = Rig::new();
    let fd = r.udp();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"x".to_vec(), sa("192.0.2.1:53")));
    let (reply, _, src, lenp) = recvfrom(&r, r.next_id(), fd, 0, 6);
    assert_eq!(reply, Some(Reply::Value(1)));
    assert_eq!(r.k.peek(src, 8)[6..], [0, 0]);
    assert_eq!(u32::from_ne_bytes(r.k.peek(lenp, 4).try_into().unwrap()), 16);
}

#[test]
fn an_empty_nonblocking_receive_is_eagain() {
    let r = Rig::new();
    let fd = r.socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK);
    assert_eq!(recvfrom(&r, r.next_id(), fd, 0, 16).0, fail(libc::EAGAIN));
    let fd = r.udp();
    assert_eq!(recvfrom(&r, r.next_id(), fd, libc::MSG_DONTWAIT, 16).0, fail(libc::EAGAIN));
}

#[test]
fn a_blocking_receive_is_answered_when_a_datagram_arrives() {
    let r = Rig::new();
    let fd = r.udp();
    let id = r.next_id();
    let (reply, buf, _, _) = recvfrom(&r, id, fd, 0, 16);
    assert_eq!(reply, None, "answered later");
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"late".to_vec(), sa("192.0.2.1:53")));
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), Some(Reply::Value(4)));
    assert_eq!(r.k.peek(buf, 4), b"late");
}

#[test]
fn a_receive_whose_caller_is_gone_writes_nothing() {
    let r = Rig::new();
    let fd = r.udp();
    let id = r.next_id();
    recvfrom(&r, id, fd, 0, 16);
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"late".to_vec(), sa("192.0.2.1:53")));
    r.k.state().stale.insert(id);
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), None);
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Write(..))));
}

#[test]
fn recvmsg_scatters_the_datagram_and_fills_in_the_header() {
    let r = Rig::new();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"abcdef".to_vec(), SocketAddr::V4(at)));
    let h = msghdr(&r, Some("0.0.0.0:0"), &[b"", b""], b"", 4);
    assert_eq!(r.trap(libc::SYS_recvmsg, [fd as u64, h, 0, 0, 0, 0]), Some(Reply::Value(6)));
    let raw = r.k.peek(h, 56);
    let name = u64::from_ne_bytes(raw[0..8].try_into().unwrap());
    let iov = u64::from_ne_bytes(raw[16..24].try_into().unwrap());
    let iovs = r.k.peek(iov, 32);
    let first = u64::from_ne_bytes(iovs[0..8].try_into().unwrap());
    let second = u64::from_ne_bytes(iovs[16..24].try_into().unwrap());
    assert_eq!(r.k.peek(first, 4), b"abcd");
    assert_eq!(r.k.peek(second, 2), b"ef");
    assert_eq!(r.k.peek(name, 16), addr::encode(sa("198.18.0.53:53"), Family::V4));
    assert_eq!(u32::from_ne_bytes(raw[8..12].try_into().unwrap()), 16);
}

#[test]
fn receives_without_an_address_or_from_the_error_queue_run_natively() {
    let r = Rig::new();
    let fd = r.udp();
    let h = msghdr(&r, None, &[b""], b"", 4);
    assert_eq!(r.trap(libc::SYS_recvmsg, [fd as u64, h, 0, 0, 0, 0]), Some(Reply::Proceed));
    let h = msghdr(&r, Some("0.0.0.0:0"), &[b""], b"", 4);
    assert_eq!(r.trap(libc::SYS_recvmsg, [fd as u64, h, libc::MSG_ERRQUEUE as u64, 0, 0, 0]), Some(Reply::Proceed));
    assert_eq!(recvfrom(&r, r.next_id(), fd, libc::MSG_ERRQUEUE, 16).0, Some(Reply::Proceed));
    let tcp = r.tcp();
    assert_eq!(recvfrom(&r, r.next_id(), tcp, 0, 16).0, Some(Reply::Proceed));
}

// Socket options

#[test]
fn timevals_read_as_milliseconds() {
    let tv = |s: i64, us: i64| [s.to_ne_bytes(), us.to_ne_bytes()].concat();
    assert_eq!(crate::engine::timeval_ms(&tv(0, 0)), -1, "zero means no timeout");
    assert_eq!(crate::engine::timeval_ms(&tv(1, 500_000)), 1500);
    assert_eq!(crate::engine::timeval_ms(&tv(0, 10)), 1, "under a millisecond still times out");
    assert_eq!(crate::engine::timeval_ms(&tv(i64::MAX, 0)), i32::MAX);
    assert_eq!(crate::engine::timeval_ms(&[0u8; 8]), -1);
}

// The loop

#[test]
fn the_engine_serves_until_the_app_is_gone() {
    let r = Rig::new();
    let n = |id, nr: i64, a0: u64| Notification { id, pid: 100, nr: nr as i32, arch: 0, args: [a0, 1, 0, 0, 0, 0] };
    r.k.state().notifications.extend([
        n(1, libc::SYS_socket, libc::AF_INET as u64),
        n(2, libc::SYS_accept4, 0),
        n(3, libc::SYS_socket, libc::AF_INET as u64),
    ]);
    r.engine.run();
    let answers = r.k.state().answers.clone();
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[1], (2, Reply::Proceed));
}
