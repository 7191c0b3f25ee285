//! The engine against the recording double of the kernel: every trapped call's
//! decisions and how they are carried out, bad pointers, short lengths and calls that
//! go stale midway included. No root, no real sockets. This file holds the rig; the
//! calls are tested by kind in the files beside it.

mod bind;
mod connect;
mod datagram;
mod echo;
mod helpers;
mod memory;
mod resume;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ax_core::addr::{self, Family};
use ax_core::vservice::{Backend, Expose, ExposeAt, LbType, PortMap, Vservice};
use ax_core::{AppId, Labels, NewApp, Origin, PortPool, PortRanges, Proto, Remote, Table, EGRESS_PORT};
use ax_sys::kernel::{Netns, Reply};
use ax_sys::seccomp::Notification;

use crate::fake::{Fake, Op, NOT_A_SOCKET};
use crate::{guard, Engine, Node};

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
        let ports = ax_core::DaemonPorts::new(true, 7946, 6664, 1024);
        let info = ax_core::NodeInfo { name: "n1".into(), cluster: "c".into(), ip: NODE, ports };
        *node.table.lock().unwrap() = Some(Table::new(info, pool(), 7));
        let driver = new.driver;
        let app = node.with_table(|t| t.add_app(new)).unwrap().id;
        let k = Arc::new(Fake::new());
        let engine = Engine::new(app, k.clone(), node.clone()).with_driver(driver);
        Rig { engine, k, node, app, ids: AtomicU64::new(1) }
    }

    /// The rig of an app whose host has no socket guard (no BPF).
    fn unguarded(self) -> Rig {
        Rig { engine: self.engine.with_guard(crate::policy::SocketGuard::Absent), ..self }
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

    /// Call `nr`, which a daemon that died received and never answered (having noted
    /// `note`), finished by this one; returns the answer given, and the call's id.
    fn resume(&self, nr: i64, args: [u64; 6], note: u64) -> (Option<Reply>, u64) {
        let id = self.next_id();
        self.engine.resume(&Notification { id, pid: 100, nr: nr as i32, arch: 0, args }, note);
        (self.k.answer_to(id), id)
    }

    fn trap(&self, nr: i64, args: [u64; 6]) -> Option<Reply> {
        self.trap_as(self.next_id(), nr, args)
    }

    /// The sockets the engine holds for calls under way (its spares aside).
    fn held(&self) -> usize {
        self.k.held() - self.engine.spares.len()
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

    /// A blocking connect that a helper thread will answer: its call id.
    fn connect_later(&self, fd: RawFd, a: &str) -> u64 {
        let id = self.next_id();
        let (p, l) = self.addr(a);
        assert_eq!(self.trap_as(id, libc::SYS_connect, [fd as u64, p, l, 0, 0, 0]), None, "answered later");
        id
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
