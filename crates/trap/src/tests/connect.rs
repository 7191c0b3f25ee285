//! connect(), getsockname() and getpeername().

use super::*;

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
fn a_loopback_connect_reaches_the_apps_own_wildcard_listener() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.1".parse().unwrap()), ..NewApp::default() });
    let host = r.serve("0.0.0.0:8001");
    for dest in ["127.0.0.1:8001", "0.0.0.0:8001"] {
        let fd = r.tcp();
        assert_eq!(r.connect(fd, dest), OK);
        let s = r.k.sock(fd);
        assert_eq!((s.ns, s.peer), (Netns::Host, Some(SocketAddr::V4(host))), "{dest}");
    }
    // A 0.0.0.0 listener takes no IPv6 connection: ::1 stays in the namespace.
    let v6 = r.socket(libc::AF_INET6, libc::SOCK_STREAM);
    assert_eq!(r.connect(v6, "[::1]:8001"), OK);
    assert_eq!(r.k.sock(v6).ns, Netns::App);
    // Another app's loopback is its own: its namespace, never this app's row.
    let other = r.other(Some("198.18.0.2"), "zone=default");
    let fd = other.tcp();
    assert_eq!(other.connect(fd, "127.0.0.1:8001"), OK);
    assert_eq!(other.k.sock(fd).ns, Netns::App);
}

#[test]
fn a_listener_in_the_apps_namespace_takes_loopback_connects_before_a_wildcard_one() {
    let r = Rig::with(NewApp { ip: Some("198.18.0.1".parse().unwrap()), ..NewApp::default() });
    let reuse = |fd: RawFd| {
        let i = r.k.state().fds[&fd];
        r.k.state().socks[i].opts.insert((libc::SOL_SOCKET, libc::SO_REUSEPORT), 1i32.to_ne_bytes().to_vec());
    };
    let (wild, lo) = (r.tcp(), r.tcp());
    reuse(wild);
    reuse(lo);
    assert_eq!((r.bind(wild, "0.0.0.0:8001"), r.listen(wild)), (OK, OK));
    assert_eq!(r.bind(lo, "127.0.0.1:8001"), OK);
    // Bound, not listening: the wildcard one takes it.
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "127.0.0.1:8001"), OK);
    assert_eq!(r.k.sock(fd).ns, Netns::Host);
    assert_eq!(r.listen(lo), OK);
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "127.0.0.1:8001"), OK);
    assert_eq!(r.k.sock(fd).ns, Netns::App);
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
    let id = r.connect_later(fd, "192.0.2.1:80");
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
    let id = r.connect_later(fd, "192.0.2.1:80");
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
        allow_external: false,
        app_backends: Default::default(),
    }
}

#[test]
fn a_round_robin_vservice_alternates_its_backends() {
    let r = Rig::new();
    let a = r.other(Some("198.18.1.1"), "zone=default").serve("0.0.0.0:8000");
    let b = r.other(Some("198.18.1.2"), "zone=default").serve("0.0.0.0:8000");
    let backends = [Backend::Ip("198.18.1.1".parse().unwrap()), Backend::Ip("198.18.1.2".parse().unwrap())];
    r.table(|t| t.add_vservice(vservice("web", "198.18.2.1", LbType::RoundRobin, &backends), Origin::Request)).unwrap();
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
    v.allow_external = true;
    r.table(|t| t.add_vservice(v, Origin::Request)).unwrap();
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

#[test]
fn in_a_shared_namespace_the_apps_own_sockets_are_ruled_as_host_sockets() {
    // A container's namespace (ax run could make none) routes out: a socket in it that
    // connected where it is would reach what the daemon never chose.
    let r = Rig::new();
    let r = Rig { engine: r.engine.in_host_netns(true).shared_netns(true), ..r };
    r.other(Some("198.18.0.1"), "zone=other").serve("0.0.0.0:80");
    r.k.give(21, libc::AF_INET, libc::SOCK_STREAM, Netns::App);
    assert_eq!(r.connect(21, "198.18.0.1:80"), fail(libc::ECONNREFUSED), "labels rule it");
    assert_eq!(r.k.sock(21).peer, None);
    r.k.give(22, libc::AF_INET, libc::SOCK_DGRAM, Netns::App);
    assert_eq!(r.connect(22, "127.0.0.1:53"), OK);
    assert_eq!(r.k.sock(22).peer, Some(sa("127.0.0.1:53")), "its loopback is still its own");
    assert_eq!(r.k.sock(22).ns, Netns::App);
}

fn gateway_rig() -> (Rig, SocketAddrV4) {
    let r = Rig::new();
    let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
    r.table(|t| t.set_remote(Remote { nodes: vec![("g".into(), gw)], egress: vec![gw], ..Remote::default() }));
    (r, SocketAddrV4::new(gw, EGRESS_PORT))
}

/// The handshake is the daemon's, on a socket of its own that takes the app's
/// socket's place once the gateway said yes: the app's own socket never carried a byte.
#[test]
fn an_egress_connect_asks_the_gateway_and_shows_the_real_destination() {
    let (r, gw) = gateway_rig();
    r.k.state().says.insert(SocketAddr::V4(gw), b"OK\nHTTP".to_vec());
    let fd = r.tcp();
    let old = r.k.state().fds[&fd];
    let id = r.connect_later(fd, "192.0.2.1:443");
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), OK);
    assert_ne!(r.k.state().fds[&fd], old, "a fresh socket in its place");
    let untouched = { r.k.state().socks[old].sent.is_empty() && r.k.state().socks[old].peer.is_none() };
    assert!(untouched, "the app's socket was never used");
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
    r.k.state().says.insert(SocketAddr::V4(gw), b"ERR 113\n".to_vec());
    let fd = r.tcp();
    let old = r.k.state().fds[&fd];
    let id = r.connect_later(fd, "192.0.2.1:443");
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), fail(libc::EHOSTUNREACH));
    assert_eq!(r.k.state().fds[&fd], old, "the app keeps its own socket, unconnected");
    assert_eq!(r.k.sock(fd).peer, None);
    // A gateway that closes without answering.
    r.k.state().says.insert(SocketAddr::V4(gw), Vec::new());
    let fd = r.tcp();
    let id = r.connect_later(fd, "192.0.2.1:443");
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

// connect() on a socket that is connected or connecting, as the kernel answers it

#[test]
fn a_second_connect_on_a_connected_socket_is_eisconn_and_changes_nothing() {
    let r = Rig::new();
    r.k.state().slow.insert(sa("192.0.2.1:80"));
    // Connected by a helper (the case that answered 0: the daemon's own non-blocking
    // connect leaves the kernel's socket "connecting" until connect is called again).
    let fd = r.tcp();
    let id = r.connect_later(fd, "192.0.2.1:80");
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), OK);
    let sock = r.k.state().fds[&fd];
    for dest in ["192.0.2.1:80", "192.0.2.2:80", "127.0.0.1:80", "198.18.0.9:80"] {
        assert_eq!(r.connect(fd, dest), fail(libc::EISCONN), "{dest}");
    }
    assert_eq!(r.k.state().fds[&fd], sock, "the socket was not replaced (loopback)");
    assert_eq!(r.k.sock(fd).peer, Some(sa("192.0.2.1:80")));
    // Connected at once, and a listener: the same.
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "192.0.2.3:80"), OK);
    assert_eq!(r.connect(fd, "192.0.2.3:80"), fail(libc::EISCONN));
    let fd = r.tcp();
    assert_eq!(r.bind(fd, "0.0.0.0:80"), OK);
    assert_eq!(r.listen(fd), OK);
    assert_eq!(r.connect(fd, "192.0.2.3:80"), fail(libc::EISCONN));
}

#[test]
fn a_connect_while_a_nonblocking_one_is_under_way_is_ealready_then_eisconn() {
    let r = Rig::new();
    r.k.state().slow.insert(sa("192.0.2.1:80"));
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::EINPROGRESS));
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::EALREADY));
    assert_eq!(r.connect(fd, "127.0.0.1:80"), fail(libc::EALREADY));
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].tcp = crate::fake::Tcp::Established;
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::EISCONN));
}

#[test]
fn a_blocking_connect_on_a_socket_under_way_waits_for_its_outcome() {
    let r = Rig::new();
    r.k.state().slow.insert(sa("192.0.2.1:80"));
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::EINPROGRESS));
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].flags &= !libc::O_NONBLOCK;
    let id = r.connect_later(fd, "192.0.2.1:80");
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), OK);
    // One that outlives SO_SNDTIMEO says EALREADY, as the kernel does.
    r.k.state().silent.insert(sa("192.0.2.2:80"));
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    assert_eq!(r.connect(fd, "192.0.2.2:80"), fail(libc::EINPROGRESS));
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].flags &= !libc::O_NONBLOCK;
    let mut tv = [0u8; 16];
    tv[8..].copy_from_slice(&300_000i64.to_ne_bytes());
    r.k.state().socks[i].opts.insert((libc::SOL_SOCKET, libc::SO_SNDTIMEO), tv.to_vec());
    let id = r.connect_later(fd, "192.0.2.1:80");
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), fail(libc::EALREADY));
}

#[test]
fn after_a_failed_nonblocking_connect_the_next_ones_go_as_in_the_kernel() {
    let r = Rig::new();
    r.k.state().refusing_late.insert(sa("192.0.2.1:80"));
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::EINPROGRESS));
    // The app polls (natively) and the handshake fails.
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].tcp = crate::fake::Tcp::Closed;
    r.k.state().socks[i].so_error = libc::ECONNREFUSED;
    // The next connect reports the failure and resets the socket; the one after starts afresh.
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::ECONNREFUSED));
    assert_eq!(r.connect(fd, "192.0.2.1:80"), fail(libc::EINPROGRESS));
}

#[test]
fn a_blocking_connect_refused_late_leaves_the_socket_free_to_connect_again() {
    let r = Rig::new();
    r.k.state().refusing_late.insert(sa("192.0.2.1:80"));
    let fd = r.tcp();
    let id = r.connect_later(fd, "192.0.2.1:80");
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), fail(libc::ECONNREFUSED));
    assert_eq!(r.k.sock(fd).peer, None, "reset, as the kernel's blocking connect leaves it");
    assert_eq!(r.connect(fd, "192.0.2.2:80"), OK);
    assert_eq!(r.k.sock(fd).peer, Some(sa("192.0.2.2:80")));
}

#[test]
fn a_connected_udp_socket_may_connect_again() {
    let r = Rig::new();
    let fd = r.udp();
    assert_eq!(r.connect(fd, "192.0.2.1:53"), OK);
    assert_eq!(r.connect(fd, "192.0.2.2:53"), OK);
    assert_eq!(r.k.sock(fd).peer, Some(sa("192.0.2.2:53")));
}

#[test]
fn connects_to_services_are_counted_allowed_or_denied_and_nothing_else_is() {
    let r = Rig::with(NewApp { labels: Labels::parse("role=test").unwrap(), ..NewApp::default() });
    let open = r.other(Some("198.18.0.1"), "role=test").serve("0.0.0.0:80");
    let closed = r.other(Some("198.18.0.2"), "role=prod").serve("0.0.0.0:80");
    assert_eq!(r.connect(r.tcp(), "198.18.0.1:80"), OK);
    assert_eq!(r.connect(r.tcp(), &open.to_string()), OK, "the host port is the same service");
    assert_eq!(r.connect(r.tcp(), "198.18.0.2:80"), fail(libc::ECONNREFUSED));
    assert_eq!(r.connect(r.tcp(), &closed.to_string()), fail(libc::ECONNREFUSED));
    // Not services: an outside address, one nobody serves, the app's loopback.
    assert_eq!(r.connect(r.tcp(), "192.0.2.1:443"), OK);
    assert_eq!(r.connect(r.tcp(), "198.18.0.1:81"), fail(libc::ECONNREFUSED));
    assert_eq!(r.connect(r.tcp(), "127.0.0.1:80"), OK);
    let mut got = r.engine.stats.connects();
    got.sort();
    let tally = |allowed, denied| crate::stats::Tally { allowed, denied };
    assert_eq!(
        got,
        vec![
            (Some((Proto::Tcp, "198.18.0.1:80".parse().unwrap())), tally(2, 0)),
            (Some((Proto::Tcp, "198.18.0.2:80".parse().unwrap())), tally(0, 2)),
        ]
    );
}
