//! socket(), bind() and listen().

use super::*;

#[test]
fn inet_sockets_are_made_in_the_host_namespace_and_sent_in() {
    let r = Rig::new();
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK);
    let ops = r.k.ops();
    assert_eq!(ops[0], Op::Socket(Netns::Host, libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0));
    assert!(matches!(ops[3], Op::Note(_)));
    assert!(matches!(ops[4], Op::AddFd { at: None, cloexec: true, .. }));
    let s = r.k.sock(fd);
    assert_eq!(s.ns, Netns::Host);
    assert_ne!(s.flags & libc::O_NONBLOCK, 0);
    let fd6 = r.socket(libc::AF_INET6, libc::SOCK_DGRAM);
    assert_eq!(r.k.sock(fd6).domain, libc::AF_INET6);
    assert!(!r.k.state().cloexec.contains(&fd6));
    // Guarded before the app has it: only the daemon may say where they go.
    let members_only = guard::GUARDED | guard::MEMBERS_ONLY;
    assert_eq!((r.k.sock(fd).marks, r.k.sock(fd6).marks), (members_only, guard::GUARDED));
}

/// Inet sockets the daemon does not make: raw, ICMP, SCTP, MPTCP and the like.
const NOT_MADE: [(i32, i32); 6] = [
    (libc::SOCK_RAW, libc::IPPROTO_ICMP),
    (libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
    (libc::SOCK_STREAM, libc::IPPROTO_SCTP),
    (libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
    (libc::SOCK_SEQPACKET, 0),
    (libc::SOCK_STREAM, libc::IPPROTO_UDP),
];

#[test]
fn raw_icmp_and_sctp_sockets_stay_in_the_apps_namespace() {
    let r = Rig::new();
    for (ty, proto) in NOT_MADE {
        assert_eq!(
            r.trap(libc::SYS_socket, [libc::AF_INET as u64, ty as u64, proto as u64, 0, 0, 0]),
            Some(Reply::Proceed)
        );
    }
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Socket(..) | Op::AddFd { .. })), "nothing was made");
}

#[test]
fn an_app_in_the_host_namespace_gets_no_socket_the_daemon_does_not_make() {
    // Let through, they would be host sockets no one rules: connected, sent from anywhere.
    let r = Rig::new();
    let r = Rig { engine: r.engine.in_host_netns(true), ..r };
    for domain in [libc::AF_INET, libc::AF_INET6] {
        for (ty, proto) in NOT_MADE {
            let args = [domain as u64, ty as u64, proto as u64, 0, 0, 0];
            assert_eq!(r.trap(libc::SYS_socket, args), fail(libc::EPROTONOSUPPORT), "{domain} {ty} {proto}");
        }
    }
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Socket(..) | Op::AddFd { .. })), "nothing was made");
    // TCP and UDP sockets are still made, in the host's namespace, as for every app.
    let fd = r.socket(libc::AF_INET, libc::SOCK_DGRAM);
    assert_eq!(r.k.sock(fd).ns, Netns::Host);
}

#[test]
fn a_socket_for_a_caller_that_died_is_not_handed_to_anyone() {
    let r = Rig::new();
    r.k.state().stale.insert(500);
    let before = r.k.state().fds.len();
    assert_eq!(r.trap_as(500, libc::SYS_socket, [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0]), None);
    assert_eq!(r.k.state().fds.len(), before);
}

/// The engine's index of the socket at the app's descriptor `fd`.
fn made(r: &Rig, fd: RawFd) -> usize {
    r.k.state().fds[&fd]
}

/// The socket last made (the engine's spare, right after a socket() was answered).
fn last_made(r: &Rig) -> usize {
    r.k.state().socks.len() - 1
}

#[test]
fn the_next_socket_is_the_spare_made_after_the_last_answer() {
    let r = Rig::new();
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK;
    let first = r.socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC);
    let made_at_call = Op::Socket(Netns::Host, libc::AF_INET, ty, 0);
    let at_call = made(&r, first);
    let spare = last_made(&r);
    let marks = guard::GUARDED | guard::MEMBERS_ONLY;
    let inode = |i: usize| r.k.state().socks[i].inode;
    assert_ne!(spare, at_call);
    let making = |i: usize| [Op::Mark(i, marks), Op::Inode(i)];
    let mut want = vec![made_at_call.clone()];
    want.extend(making(at_call));
    want.extend([Op::Note(inode(at_call)), Op::AddFd { id: 1, sock: at_call, at: None, cloexec: true }, Op::Answer(1)]);
    // Made once the socket is the app's: marked as one made at the call, its inode taken.
    want.push(made_at_call.clone());
    want.extend(making(spare));
    assert_eq!(r.k.ops(), want);
    // CLOEXEC is the descriptor's, given at install: the spare serves a call without it.
    // The app waits only for the note and the install: the spare's marks and inode were
    // had before the call.
    let before = r.k.ops().len();
    let second = r.socket(libc::AF_INET, ty);
    assert_eq!(made(&r, second), spare);
    assert!(!r.k.state().cloexec.contains(&second));
    assert_ne!(r.k.sock(second).flags & libc::O_NONBLOCK, 0);
    let next = last_made(&r);
    let mut want =
        vec![Op::Note(inode(spare)), Op::AddFd { id: 2, sock: spare, at: None, cloexec: false }, Op::Answer(2)];
    want.push(made_at_call);
    want.extend(making(next));
    assert_eq!(r.k.ops()[before..], want, "and the next spare made");
    assert_eq!(r.engine.spares.len(), 1);
}

#[test]
fn a_kernel_driver_apps_fresh_udp_socket_gets_no_empty_guard_mark() {
    let r = Rig::with(NewApp {
        ip: Some("198.18.0.1".parse().unwrap()),
        labels: Labels::parse("zone=default").unwrap(),
        driver: ax_core::Driver::Kernel,
        expose: vec![Expose { internal: 8000, at: ExposeAt::ThisNode, host_port: 9999 }],
        ..NewApp::default()
    });
    let udp = r.socket(libc::AF_INET, libc::SOCK_DGRAM);
    let (i, spare) = (made(&r, udp), last_made(&r));
    let ops = r.k.ops();
    // No guard marks: nothing written (none is none), the programs' state all the same.
    assert!(!ops.iter().any(|o| matches!(o, Op::Mark(..))), "{ops:?}");
    assert!(ops.contains(&Op::MarkKernel(i)) && ops.contains(&Op::MarkKernel(spare)), "{ops:?}");
    // A socket that may hold marks has them written, none included: an exposed bind
    // takes MEMBERS_ONLY off a TCP socket.
    let tcp = r.tcp();
    assert_eq!(r.k.sock(tcp).marks, guard::MEMBERS_ONLY);
    assert_eq!(r.bind(tcp, "0.0.0.0:8000"), OK);
    assert_eq!(r.k.sock(tcp).marks, 0);
    assert_eq!(r.k.ops().iter().rev().find(|o| matches!(o, Op::Mark(..))), Some(&Op::Mark(made(&r, tcp), 0)));
}

#[test]
fn a_spare_goes_only_to_a_call_of_its_exact_recipe() {
    let r = Rig::new();
    r.tcp();
    let spare = last_made(&r);
    let other = |domain: i32, ty: i32, protocol: i32| {
        let args = [domain as u64, ty as u64, protocol as u64, 0, 0, 0];
        let Some(Reply::Value(fd)) = r.trap(libc::SYS_socket, args) else { panic!("socket") };
        let s = r.k.sock(fd as RawFd);
        let nonblock = if s.flags & libc::O_NONBLOCK != 0 { libc::SOCK_NONBLOCK } else { 0 };
        assert_eq!((s.domain, s.ty | nonblock, s.protocol), (domain, ty, protocol));
        made(&r, fd as RawFd)
    };
    for (domain, ty, protocol) in [
        (libc::AF_INET6, libc::SOCK_STREAM, 0),
        (libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0),
        (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP),
        (libc::AF_INET, libc::SOCK_DGRAM, 0),
    ] {
        assert_ne!(other(domain, ty, protocol), spare, "{domain} {ty} {protocol}");
    }
    assert_eq!(made(&r, r.tcp()), spare, "still there for its own recipe");
    // One spare per recipe, a bound on all.
    assert_eq!(r.engine.spares.len(), crate::spare::MAX_SPARES);
}

#[test]
fn a_spare_meant_for_a_caller_that_died_is_closed_and_never_handed_out() {
    let r = Rig::new();
    r.tcp();
    let spare = last_made(&r);
    r.k.state().stale.insert(500);
    assert_eq!(r.trap_as(500, libc::SYS_socket, [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0]), None);
    assert_eq!(r.k.held(), 0, "the spare is closed, and none made for a call not answered");
    let next = made(&r, r.tcp());
    assert!(next > spare, "a socket made afresh");
    assert!(!r.k.state().fds.values().any(|&i| i == spare));
}

#[test]
fn calls_the_engine_has_no_business_with_proceed() {
    let r = Rig::new();
    assert_eq!(r.trap(libc::SYS_accept4, [3, 0, 0, 0, 0, 0]), Some(Reply::Proceed));
}

// bind()

#[test]
fn privileged_ports_need_the_capability_wherever_the_bind_lands() {
    let r = Rig::new();
    r.k.state().unprivileged = true;
    let (tcp, udp) = (r.tcp(), r.udp());
    for (fd, addr) in [(tcp, "0.0.0.0:80"), (udp, "0.0.0.0:53"), (tcp, "127.0.0.1:80")] {
        assert_eq!(r.bind(fd, addr), fail(libc::EACCES), "{addr}");
    }
    assert!(r.k.ops().iter().all(|op| !matches!(op, Op::Bind(..))), "nothing was bound");
    assert_eq!(r.table(|t| t.bindings().count()), 0);
    assert_eq!(r.bind(tcp, "0.0.0.0:8080"), OK);
    // With the capability (root), port 80 is the app's.
    r.k.state().unprivileged = false;
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:80"), OK);
}

#[test]
fn a_privilege_read_for_a_call_gone_stale_grants_nothing() {
    let r = Rig::new();
    let fd = r.tcp();
    let (p, l) = r.addr("0.0.0.0:80");
    // The call goes stale once its address is read: its thread (and its tid) may be
    // someone else's by the time its capabilities are read.
    r.k.state().stale_after_read.insert(900);
    assert_eq!(r.trap_as(900, libc::SYS_bind, [fd as u64, p, l, 0, 0, 0]), None);
    assert!(r.k.ops().iter().all(|op| !matches!(op, Op::Bind(..))));
}

#[test]
fn the_daemons_ports_on_the_node_address_are_in_use_for_apps() {
    // An app without --ip has the node's address: 53 there is the daemon's DNS.
    let r = Rig::new();
    let udp = r.udp();
    assert_eq!(r.bind(udp, "0.0.0.0:53"), fail(libc::EADDRINUSE));
    let udp6 = r.socket(libc::AF_INET6, libc::SOCK_DGRAM);
    assert_eq!(r.bind(udp6, "[::]:53"), fail(libc::EADDRINUSE));
    let tcp = r.tcp();
    for port in [53, 6661, 6664, 7946] {
        assert_eq!(r.bind(tcp, &format!("0.0.0.0:{port}")), fail(libc::EADDRINUSE), "{port}");
    }
    assert!(r.k.ops().iter().all(|op| !matches!(op, Op::Bind(..))), "nothing was bound");
    assert_eq!(r.table(|t| t.bindings().count()), 0);
    // An app on an address of its own binds 53 like any port: its service is its own.
    let other = r.other(Some("198.18.0.1"), "zone=default");
    let fd = other.udp();
    assert_eq!(other.bind(fd, "0.0.0.0:53"), OK);
}

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
    assert_eq!(r.k.sock(fd).marks, guard::GUARDED | guard::MEMBERS_ONLY);
    assert_eq!(r.changes(), 1, "saved before the app is answered");
    // getsockname shows what the app asked for: the wildcard, at its port.
    assert_eq!(r.shown(fd, false), Some(sa("0.0.0.0:80")));
}

#[test]
fn a_bind_to_port_zero_reports_the_host_port_as_the_service_port() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.5".parse().unwrap()), ..NewApp::default() });
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:0"), OK);
    assert_eq!(r.table(|t| t.binding(Proto::Tcp, 40000).unwrap().service), "198.18.0.5:40000".parse().unwrap());
    assert_eq!(r.shown(fd, false), Some(sa("0.0.0.0:40000")));
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
    // Five apps with their share each (a quarter of ten ports: two) take the pool.
    let apps: Vec<Rig> = (0..5).map(|_| r.other(None, "zone=default")).collect();
    for a in &apps {
        for _ in 0..2 {
            assert_eq!(a.bind(a.tcp(), "0.0.0.0:0"), OK);
        }
    }
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:0"), fail(libc::EADDRINUSE));
    // A loopback bind needs no pool port.
    assert_eq!(r.bind(fd, "127.0.0.1:8080"), OK);
}

#[test]
fn an_app_holds_at_most_its_share_of_the_pool_until_its_sockets_go() {
    let r = Rig::new();
    let (a, b) = (r.tcp(), r.tcp());
    assert_eq!(r.bind(a, "0.0.0.0:80"), OK);
    // listen() on an unbound socket takes a pool port too.
    assert_eq!(r.listen(b), OK);
    let third = r.tcp();
    assert_eq!(r.bind(third, "0.0.0.0:82"), fail(libc::EADDRINUSE));
    assert_eq!(r.listen(third), fail(libc::EADDRINUSE));
    assert_eq!(r.table(|t| (t.pool().in_use(), t.pool_ports_held(r.app))), (2, 2), "nothing taken past the share");
    // Another app is served meanwhile.
    let other = r.other(None, "zone=default");
    assert_eq!(other.bind(other.tcp(), "0.0.0.0:80"), OK);
    // A socket of the app goes (the kernel no longer lists it): its port is the app's again.
    let gone = r.k.sock(a).inode;
    let listening: std::collections::HashSet<u64> = [r.k.sock(b).inode].into();
    let bound: std::collections::HashSet<u64> =
        r.table(|t| t.bindings().map(|b| b.inode).filter(|i| *i != gone).collect());
    for _ in 0..ax_core::table::SWEEP_MISSES {
        let mark = r.table(|t| t.mark());
        r.table(|t| t.sweep(Proto::Tcp, &listening, Some(&bound), mark));
    }
    assert_eq!(r.table(|t| t.pool_ports_held(r.app)), 1);
    assert_eq!(r.bind(third, "0.0.0.0:82"), OK);
    // The app goes: every port it held is free again.
    r.table(|t| t.remove_app(r.app));
    assert_eq!(r.table(|t| (t.pool().in_use(), t.pool_ports_held(r.app))), (1, 0));
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
    assert!(r.k.ops().contains(&Op::AddFd { id: 2, sock: r.k.state().fds[&fd], at: Some(fd), cloexec: true }));
    assert_eq!(r.table(|t| t.bindings().count()), 0, "private: no row");
    assert_eq!(r.shown(fd, false), None, "the kernel tells the truth there");
    // Recorded for the kernel driver, which sends the app's loopback connects there.
    let private: Vec<(ax_core::Proto, u16)> = r.table(|t| t.private_binds().map(|p| (p.proto, p.port)).collect());
    assert_eq!(private, [(ax_core::Proto::Tcp, 6379)]);
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
fn a_dual_stack_bind_binds_the_mapped_node_address() {
    let r = Rig::new();
    let fd = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    assert_eq!(r.bind(fd, "[::]:80"), OK);
    assert_eq!(r.k.sock(fd).local, Some(sa("[::ffff:10.0.0.1]:40000")));
    assert_eq!(r.table(|t| t.binding(Proto::Tcp, 40000).unwrap().family), Family::V6);
    assert_eq!(r.shown(fd, false), Some(sa("[::]:80")));
}

#[test]
fn a_v6only_wildcard_bind_stays_in_the_apps_namespace() {
    let r = Rig::new();
    let fd = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    set(&r, fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    assert_eq!(r.bind(fd, "[::]:80"), OK);
    let s = r.k.sock(fd);
    assert_eq!((s.ns, s.local), (Netns::App, Some(sa("[::]:80"))));
    assert_eq!(s.opts[&(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)], 1i32.to_ne_bytes(), "still v6-only");
    assert_eq!(r.table(|t| t.bindings().count()), 0, "no row: IPv4 clients are refused");
    assert_eq!(r.shown(fd, false), None, "the kernel of its namespace answers");
    // A v4-mapped address is no v6-only socket's, as the kernel says.
    let mapped = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    set(&r, mapped, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    assert_eq!(r.bind(mapped, "[::ffff:10.0.0.1]:81"), fail(libc::EINVAL));
    // listen() without a bind picks a v6-only automatic port there too.
    let auto = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    set(&r, auto, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    assert_eq!(r.listen(auto), OK);
    let s = r.k.sock(auto);
    assert_eq!((s.ns, s.listening), (Netns::App, Some(128)));
    assert_eq!(r.table(|t| t.bindings().count()), 0);
}

/// Sets the app's socket `fd`'s option to 1, as the app's setsockopt would.
fn set(r: &Rig, fd: RawFd, level: i32, opt: i32) {
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].opts.insert((level, opt), 1i32.to_ne_bytes().to_vec());
}

/// An app on 198.18.0.1 (holding at most two ports of the test pool at once).
fn on_own_address() -> Rig {
    Rig::with(NewApp { ip: Some("198.18.0.1".parse().unwrap()), ..NewApp::default() })
}

#[test]
fn a_port_the_app_holds_is_eaddrinuse() {
    let r = on_own_address();
    let first = r.tcp();
    assert_eq!(r.bind(first, "0.0.0.0:80"), OK);
    let binds = |r: &Rig| r.k.ops().iter().filter(|o| matches!(o, Op::Bind(..))).count();
    let before = binds(&r);
    for (domain, at) in [(libc::AF_INET, "0.0.0.0:80"), (libc::AF_INET, "198.18.0.1:80"), (libc::AF_INET6, "[::]:80")] {
        let fd = r.socket(domain, libc::SOCK_STREAM);
        assert_eq!(r.bind(fd, at), fail(libc::EADDRINUSE), "{at}");
    }
    assert_eq!(binds(&r), before, "nothing bound");
    assert_eq!(r.table(|t| t.pool().in_use()), 1);
    // Another port, and the same port of another app, are free.
    assert_eq!(r.bind(r.tcp(), "0.0.0.0:81"), OK);
    let other = r.other(Some("198.18.0.1"), "zone=default");
    assert_eq!(other.bind(other.tcp(), "0.0.0.0:80"), OK);
    // UDP: the same rules; a socket of the other protocol is no matter.
    let r = on_own_address();
    let (u, v) = (r.udp(), r.udp());
    assert_eq!(r.bind(r.tcp(), "0.0.0.0:80"), OK);
    assert_eq!((r.bind(u, "0.0.0.0:80"), r.bind(v, "0.0.0.0:80")), (OK, fail(libc::EADDRINUSE)));
}

#[test]
fn so_reuseaddr_on_both_holds_while_neither_listens() {
    let r = on_own_address();
    let (a, b) = (r.tcp(), r.tcp());
    set(&r, a, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    set(&r, b, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    assert_eq!((r.bind(a, "0.0.0.0:90"), r.bind(b, "0.0.0.0:90")), (OK, OK));
    assert_eq!((r.listen(a), r.listen(b)), (OK, fail(libc::EADDRINUSE)));
    assert_eq!(r.k.sock(b).listening, None);
    assert_eq!(r.table(|t| t.services().count()), 1);
}

#[test]
fn so_reuseport_on_both_makes_listeners_side_by_side() {
    let r = on_own_address();
    let (c, d) = (r.tcp(), r.tcp());
    set(&r, c, libc::SOL_SOCKET, libc::SO_REUSEPORT);
    assert_eq!((r.bind(c, "0.0.0.0:91"), r.listen(c)), (OK, OK));
    assert_eq!(r.bind(d, "0.0.0.0:91"), fail(libc::EADDRINUSE), "on one only");
    set(&r, d, libc::SOL_SOCKET, libc::SO_REUSEPORT);
    assert_eq!((r.bind(d, "0.0.0.0:91"), r.listen(d)), (OK, OK));
    assert_eq!(r.table(|t| t.services().count()), 2);
}

#[test]
fn a_socket_the_app_closed_no_longer_holds_its_port() {
    let r = Rig::new();
    let first = r.tcp();
    assert_eq!((r.bind(first, "0.0.0.0:80"), r.listen(first)), (OK, OK));
    // Closed: its row stays until the sweep, but the port is the app's again.
    r.k.state().fds.remove(&first);
    assert_eq!(r.table(|t| t.services().count()), 1);
    let again = r.tcp();
    assert_eq!((r.bind(again, "0.0.0.0:80"), r.listen(again)), (OK, OK));
}

#[test]
fn binds_in_the_apps_namespace_and_on_the_host_conflict_as_on_one_host() {
    let r = on_own_address();
    let v6only = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    set(&r, v6only, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    assert_eq!(r.bind(v6only, "[::]:8000"), OK);
    // `::` meets `::` (this one dual-stack), but not 0.0.0.0.
    let dual = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    assert_eq!(r.bind(dual, "[::]:8000"), fail(libc::EADDRINUSE));
    assert_eq!(r.bind(r.tcp(), "0.0.0.0:8000"), OK);
    // A loopback socket meets the wildcard, both ways.
    assert_eq!(r.bind(r.tcp(), "127.0.0.1:8000"), fail(libc::EADDRINUSE));
    let lo = r.tcp();
    assert_eq!(r.bind(lo, "127.0.0.1:8001"), OK);
    assert_eq!(r.bind(r.tcp(), "0.0.0.0:8001"), fail(libc::EADDRINUSE));
    // Gone from the app, the loopback socket holds nothing.
    r.k.state().fds.remove(&lo);
    assert_eq!(r.bind(r.tcp(), "0.0.0.0:8001"), OK);
}

#[test]
fn a_second_listener_beside_a_loopback_one_is_refused_as_the_kernel_would() {
    let r = on_own_address();
    let (a, b) = (r.tcp(), r.tcp());
    set(&r, a, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    set(&r, b, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    assert_eq!((r.bind(a, "0.0.0.0:8002"), r.bind(b, "127.0.0.1:8002")), (OK, OK));
    assert_eq!((r.listen(a), r.listen(b)), (OK, fail(libc::EADDRINUSE)));
    let (c, d) = (r.tcp(), r.tcp());
    set(&r, c, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    set(&r, d, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    assert_eq!((r.bind(c, "127.0.0.1:8003"), r.bind(d, "0.0.0.0:8003")), (OK, OK));
    assert_eq!((r.listen(c), r.listen(d)), (OK, fail(libc::EADDRINUSE)));
}

#[test]
fn a_wildcard_listener_shows_the_wildcard_and_what_it_accepts_the_virtual_address() {
    let r = on_own_address();
    let l = r.tcp();
    assert_eq!((r.bind(l, "0.0.0.0:80"), r.listen(l)), (OK, OK));
    assert_eq!(r.shown(l, false), Some(sa("0.0.0.0:80")));
    // A connection it accepted: the listener's host port, with a peer.
    let accepted = 30;
    let i = r.k.give(accepted, libc::AF_INET, libc::SOCK_STREAM, Netns::Host);
    r.k.state().socks[i].local = Some(host(40000));
    r.k.state().socks[i].peer = Some(sa("10.0.0.1:33000"));
    assert_eq!(r.shown(accepted, false), Some(sa("198.18.0.1:80")));
    // A socket bound to the wildcard that then connects shows its own address.
    let c = r.tcp();
    assert_eq!((r.bind(c, "0.0.0.0:5000"), r.connect(c, "192.0.2.1:80")), (OK, OK));
    assert_eq!(r.shown(c, false), Some(sa("198.18.0.1:5000")));
    // Bound to the app's own address: that address.
    let r = on_own_address();
    let own = r.tcp();
    assert_eq!(r.bind(own, "198.18.0.1:81"), OK);
    assert_eq!(r.shown(own, false), Some(sa("198.18.0.1:81")));
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
    // A second socket at the port, as a prefork server binds it (SO_REUSEPORT).
    set(&r, a, libc::SOL_SOCKET, libc::SO_REUSEPORT);
    set(&r, b, libc::SOL_SOCKET, libc::SO_REUSEPORT);
    assert_eq!(r.bind(b, "[::]:8000"), OK);
    assert_eq!(r.k.sock(b).local, Some(sa("[::ffff:10.0.0.1]:40000")));
    assert_eq!(r.table(|t| t.pool().in_use()), 1, "the exposed port is not the pool's");
    // The exposed port is open to all; the pool port to members only.
    assert_eq!(r.k.sock(a).marks, guard::GUARDED);
    assert_eq!(r.k.sock(b).marks, guard::GUARDED | guard::MEMBERS_ONLY);
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

#[test]
fn a_kernel_driver_apps_sockets_are_the_programs_not_the_guards() {
    use ax_core::kmap::SockState;
    let r = Rig::with(NewApp {
        ip: Some("198.18.0.1".parse().unwrap()),
        labels: Labels::parse("zone=default").unwrap(),
        driver: ax_core::Driver::Kernel,
        ..NewApp::default()
    });
    let state = |fd| r.k.sock(fd).kernel.map(|b| SockState::decode(&b).unwrap());
    let tcp = r.tcp();
    assert_eq!(r.k.sock(tcp).marks, guard::MEMBERS_ONLY, "not GUARDED: app threads may connect");
    assert_eq!(state(tcp), Some(SockState { app: r.app.0, peer: None, local: None, local_any: false }));
    let udp = r.socket(libc::AF_INET, libc::SOCK_DGRAM);
    assert_eq!(r.k.sock(udp).marks, 0);
    assert!(state(udp).is_some());
    // The spare made ahead is this app's, marked as one made at the call.
    let spared = r.tcp();
    assert_eq!(r.k.ops().iter().filter(|o| matches!(o, Op::Socket(..))).count(), 5, "two made at calls, three spares");
    assert_eq!(r.k.sock(spared).marks, guard::MEMBERS_ONLY);
    assert_eq!(state(spared), Some(SockState { app: r.app.0, peer: None, local: None, local_any: false }));
    // A bind records what getsockname shows: the service address, and for a wildcard
    // bind the wildcard while the socket has no peer.
    assert_eq!(r.bind(tcp, "0.0.0.0:80"), OK);
    assert_eq!(r.k.sock(tcp).marks, guard::MEMBERS_ONLY);
    let bound = state(tcp).unwrap();
    assert_eq!((bound.local, bound.local_any), (Some("198.18.0.1:80".parse().unwrap()), true));
    let own = r.tcp();
    assert_eq!(r.bind(own, "198.18.0.1:81"), OK);
    assert!(!state(own).unwrap().local_any);
    // Its listen makes the row at the host port, though getsockname shows the service.
    assert_eq!(r.listen(tcp), OK);
    let rows: Vec<(u16, u16)> = r.table(|t| t.services().map(|b| (b.service.port(), b.host.port())).collect());
    assert_eq!(rows, [(80, 40000)]);
    // A user-driver app's sockets stay guarded, with no state for the programs.
    let u = Rig::new();
    let fd = u.tcp();
    assert_eq!(u.k.sock(fd).marks, guard::GUARDED | guard::MEMBERS_ONLY);
    assert_eq!(u.k.sock(fd).kernel, None);
}

#[test]
fn a_row_that_would_take_more_than_an_apps_share_of_the_kernel_routes_fails_with_enobufs() {
    let kernel = |labels: &str| NewApp {
        labels: Labels::parse(labels).unwrap(),
        driver: ax_core::Driver::Kernel,
        ..NewApp::default()
    };
    let r = Rig::with(kernel("zone=default"));
    // 4097 label classes: a row costs up to 2 entries per class, an app may have
    // ROUTES_PER_APP of them: room for one row, not two.
    r.table(|t| {
        for i in 0..4096 {
            t.add_app(kernel(&format!("n=a{i}"))).unwrap();
        }
    });
    assert_eq!(ax_core::ROUTES_PER_APP, 16_384);
    let (a, b) = (r.tcp(), r.tcp());
    assert_eq!(r.listen(a), OK);
    let udp = r.socket(libc::AF_INET, libc::SOCK_DGRAM);
    assert_eq!(r.bind(udp, "0.0.0.0:5353"), fail(libc::ENOBUFS), "a UDP bind to a port is a row at once");
    assert_eq!(r.bind(b, "0.0.0.0:81"), OK, "a bind is no row");
    assert_eq!(r.listen(b), fail(libc::ENOBUFS));
    assert_eq!(r.k.sock(b).listening, None, "the kernel's listen never ran");
    assert_eq!(r.table(|t| t.services().count()), 1);
}
