//! The filter run by a model of the classic BPF it is made of.

use super::*;

/// Runs the subset of classic BPF that [`compile`] emits.
fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let ins = prog[pc];
        pc += 1;
        match ins.code {
            BPF_LD_W_ABS => acc = u32::from_ne_bytes(data[ins.k as usize..ins.k as usize + 4].try_into().unwrap()),
            BPF_JEQ_K => pc += if acc == ins.k { ins.jt } else { ins.jf } as usize,
            BPF_JGE_K => pc += if acc >= ins.k { ins.jt } else { ins.jf } as usize,
            BPF_JSET_K => pc += if acc & ins.k != 0 { ins.jt } else { ins.jf } as usize,
            BPF_AND_K => acc &= ins.k,
            BPF_RET_K => return ins.k,
            other => panic!("unexpected opcode {other}"),
        }
    }
}

fn verdict(nr: i64, arg0: u64) -> u32 {
    run(&compile(RULES), AUDIT_ARCH, nr as u32, [arg0, 0, 0, 0, 0, 0])
}

const LO: u64 = DATAGRAM_FDS.start as u64;
const HI: u64 = DATAGRAM_FDS.end as u64;
const NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

#[test]
fn datagram_sends_and_receives_are_trapped_only_with_an_address() {
    let with = |nr: i64, arg4: u64| run(&compile(RULES), AUDIT_ARCH, nr as u32, [HI - 1, 0, 0, 0, arg4, 0]);
    for nr in [libc::SYS_sendto, libc::SYS_recvfrom] {
        assert_eq!(with(nr, 0), ALLOW);
        assert_eq!(with(nr, 0x7fff_0000_1000), NOTIFY);
        assert_eq!(with(nr, 0x1000), NOTIFY);
        assert_eq!(with(nr, 1 << 40), NOTIFY);
    }
    assert_eq!(with(libc::SYS_sendmsg, 0), NOTIFY);
    assert_eq!(with(libc::SYS_recvmsg, 0), NOTIFY);
}

#[test]
fn sends_and_receives_are_trapped_only_in_the_datagram_range() {
    let call = |nr: i64, fd: u64| run(&compile(RULES), AUDIT_ARCH, nr as u32, [fd, 0x1000, 8, 0, 0x2000, 16]);
    // The kernel reads the descriptor as an int: the high half does not count, and a
    // negative one is EBADF for the kernel to say.
    let edges = [
        (0, ALLOW),
        (3, ALLOW),
        (LO - 1, ALLOW),
        (LO, NOTIFY),
        (LO + 1, NOTIFY),
        (HI - 1, NOTIFY),
        (HI, ALLOW),
        (HI + 1, ALLOW),
        (u32::MAX as u64, ALLOW),
        (u64::MAX, ALLOW),
        (i32::MIN as u32 as u64, ALLOW),
        ((1 << 32) | LO, NOTIFY),
        ((1 << 32) | (HI - 1), NOTIFY),
        (0xffff_ffff_0000_0000 | 3, ALLOW),
        ((1 << 32) | HI, ALLOW),
        (0x8000_0000_0000_0000 | LO, NOTIFY),
    ];
    for nr in [libc::SYS_sendto, libc::SYS_sendmsg, libc::SYS_recvfrom, libc::SYS_recvmsg] {
        for (fd, want) in edges {
            assert_eq!(call(nr, fd), want, "syscall {nr} on descriptor {fd:#x}");
        }
    }
    // Batches and the rest of the data path are never trapped, in the range or not.
    for nr in [libc::SYS_sendmmsg, libc::SYS_recvmmsg, libc::SYS_read, libc::SYS_write, libc::SYS_close] {
        for (fd, _) in edges {
            assert_eq!(call(nr, fd), ALLOW, "syscall {nr} on descriptor {fd:#x}");
        }
    }
    // Calls that name a destination or show an address are trapped on every number.
    for nr in [libc::SYS_connect, libc::SYS_bind, libc::SYS_getsockname, libc::SYS_getpeername] {
        for (fd, _) in edges {
            assert_eq!(call(nr, fd), NOTIFY, "syscall {nr} on descriptor {fd:#x}");
        }
    }
}

#[test]
fn fast_open_is_refused_on_every_descriptor_before_the_range_is_looked_at() {
    let eopnotsupp = libc::SECCOMP_RET_ERRNO | libc::EOPNOTSUPP as u32;
    let fo = libc::MSG_FASTOPEN as u64;
    let call = |nr: i64, args: [u64; 6]| run(&compile(RULES), AUDIT_ARCH, nr as u32, args);
    for fd in [3, LO - 1, LO, HI - 1, HI, u64::MAX] {
        assert_eq!(call(libc::SYS_sendto, [fd, 0, 1, fo, 0x1000, 16]), eopnotsupp, "sendto on {fd}");
        assert_eq!(call(libc::SYS_sendto, [fd, 0, 1, fo, 0, 0]), eopnotsupp, "sendto on {fd}");
        assert_eq!(call(libc::SYS_sendmsg, [fd, 0x1000, fo, 0, 0, 0]), eopnotsupp, "sendmsg on {fd}");
        assert_eq!(call(libc::SYS_sendmmsg, [fd, 0x1000, 1, fo, 0, 0]), eopnotsupp, "sendmmsg on {fd}");
    }
    let first = |nr: i64| RULES.iter().position(|r| r.nr == nr).unwrap();
    for nr in [libc::SYS_sendto, libc::SYS_sendmsg] {
        assert!(matches!(RULES[first(nr)].action, Action::Errno(libc::EOPNOTSUPP)), "syscall {nr}");
    }
}

#[test]
fn inet_sockets_are_trapped_and_unix_ones_are_not() {
    assert_eq!(verdict(libc::SYS_socket, libc::AF_INET as u64), libc::SECCOMP_RET_USER_NOTIF);
    assert_eq!(verdict(libc::SYS_socket, libc::AF_INET6 as u64), libc::SECCOMP_RET_USER_NOTIF);
    assert_eq!(verdict(libc::SYS_socket, libc::AF_UNIX as u64), libc::SECCOMP_RET_ALLOW);
    assert_eq!(verdict(libc::SYS_socket, libc::AF_NETLINK as u64), libc::SECCOMP_RET_ALLOW);
    // Only the low 32 bits of the int argument count, as the kernel reads it.
    assert_eq!(verdict(libc::SYS_socket, (1 << 32) | libc::AF_INET as u64), libc::SECCOMP_RET_USER_NOTIF);
}

#[test]
fn the_data_path_is_never_trapped() {
    for nr in [
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_close,
        libc::SYS_poll,
        libc::SYS_epoll_wait,
    ] {
        assert_eq!(verdict(nr, 0), libc::SECCOMP_RET_ALLOW, "syscall {nr}");
    }
    for nr in [libc::SYS_bind, libc::SYS_listen, libc::SYS_connect, libc::SYS_getsockname, libc::SYS_getpeername] {
        assert_eq!(verdict(nr, 3), libc::SECCOMP_RET_USER_NOTIF, "syscall {nr}");
    }
}

#[test]
fn io_uring_and_foreign_abis_get_enosys() {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    assert_eq!(verdict(libc::SYS_io_uring_setup, 0), enosys);
    assert_eq!(run(&compile(RULES), 0x4000_0003, libc::SYS_socket as u32, [2, 0, 0, 0, 0, 0]), enosys);
    assert_eq!(verdict(X32_SYSCALL_BIT as i64 | libc::SYS_socket, 2), enosys);
}

#[test]
fn tcp_fast_open_and_source_routes_are_refused_from_the_registers() {
    let eopnotsupp = libc::SECCOMP_RET_ERRNO | libc::EOPNOTSUPP as u32;
    let call = |nr: i64, args: [u64; 6]| run(&compile(RULES), AUDIT_ARCH, nr as u32, args);
    let fo = libc::MSG_FASTOPEN as u64;
    // sendto(fd, buf, len, flags, addr, addrlen): with or without an address.
    assert_eq!(call(libc::SYS_sendto, [3, 0, 1, fo, 0x1000, 16]), eopnotsupp);
    assert_eq!(call(libc::SYS_sendto, [3, 0, 1, fo | libc::MSG_NOSIGNAL as u64, 0, 0]), eopnotsupp);
    assert_eq!(call(libc::SYS_sendto, [LO, 0, 1, libc::MSG_NOSIGNAL as u64, 0x1000, 16]), NOTIFY);
    assert_eq!(call(libc::SYS_sendto, [3, 0, 1, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
    // sendmsg(fd, msg, flags) and sendmmsg(fd, vec, vlen, flags)
    assert_eq!(call(libc::SYS_sendmsg, [3, 0x1000, fo, 0, 0, 0]), eopnotsupp);
    assert_eq!(call(libc::SYS_sendmsg, [LO, 0x1000, 0, 0, 0, 0]), NOTIFY);
    assert_eq!(call(libc::SYS_sendmmsg, [3, 0x1000, 2, fo, 0, 0]), eopnotsupp);
    assert_eq!(call(libc::SYS_sendmmsg, [3, 0x1000, 2, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
    // Only the low 32 bits of the flags count.
    assert_eq!(call(libc::SYS_sendmmsg, [3, 0x1000, 2, fo << 32, 0, 0]), libc::SECCOMP_RET_ALLOW);
    // setsockopt(fd, level, name, ...): TCP_FASTOPEN_CONNECT only.
    let tcp = libc::IPPROTO_TCP as u64;
    assert_eq!(call(libc::SYS_setsockopt, [3, tcp, libc::TCP_FASTOPEN_CONNECT as u64, 0, 4, 0]), eopnotsupp);
    assert_eq!(call(libc::SYS_setsockopt, [3, tcp, libc::TCP_NODELAY as u64, 0, 4, 0]), libc::SECCOMP_RET_ALLOW);
    // Source routes, which the daemon's own connects and sends would follow.
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let ip = libc::IPPROTO_IP as u64;
    let ip6 = libc::IPPROTO_IPV6 as u64;
    assert_eq!(call(libc::SYS_setsockopt, [3, ip, libc::IP_OPTIONS as u64, 0, 8, 0]), eperm);
    assert_eq!(call(libc::SYS_setsockopt, [3, ip6, libc::IPV6_RTHDR as u64, 0, 8, 0]), eperm);
    assert_eq!(call(libc::SYS_setsockopt, [3, ip6, IPV6_2292RTHDR as u64, 0, 8, 0]), eperm);
    assert_eq!(call(libc::SYS_setsockopt, [3, ip6, IPV6_2292PKTOPTIONS as u64, 0, 8, 0]), eperm);
    assert_eq!(call(libc::SYS_setsockopt, [3, ip, libc::IP_TOS as u64, 0, 4, 0]), libc::SECCOMP_RET_ALLOW);
    assert_eq!(call(libc::SYS_setsockopt, [3, ip6, libc::IP_OPTIONS as u64, 0, 8, 0]), libc::SECCOMP_RET_ALLOW);
    let sol = libc::SOL_SOCKET as u64;
    assert_eq!(
        call(libc::SYS_setsockopt, [3, sol, libc::TCP_FASTOPEN_CONNECT as u64, 0, 4, 0]),
        libc::SECCOMP_RET_ALLOW
    );
}

#[test]
fn the_kernel_driver_traps_only_socket_bind_and_listen() {
    use ax_core::Driver;
    let call = |driver, nr: i64, args: [u64; 6]| {
        run(&compile(&rules(driver, SocketGuard::Installed, Placement::OwnNetns)), AUDIT_ARCH, nr as u32, args)
    };
    let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
    let fd = [3, 0x1000, 16, 0, 0x2000, 0];
    // A datagram socket's descriptor, in the range its sends and receives trap in
    // under the user driver.
    let dgram = [800, 0x1000, 16, 0, 0x2000, 0];
    for (nr, args) in [
        (libc::SYS_connect, fd),
        (libc::SYS_getsockname, fd),
        (libc::SYS_getpeername, fd),
        (libc::SYS_sendto, dgram),
        (libc::SYS_sendmsg, dgram),
        (libc::SYS_recvfrom, dgram),
        (libc::SYS_recvmsg, dgram),
    ] {
        assert_eq!(call(Driver::User, nr, args), libc::SECCOMP_RET_USER_NOTIF, "{nr}");
        assert_eq!(call(Driver::Kernel, nr, args), libc::SECCOMP_RET_ALLOW, "{nr}");
    }
    for (nr, args) in [(libc::SYS_socket, inet), (libc::SYS_bind, fd), (libc::SYS_listen, fd)] {
        assert_eq!(call(Driver::Kernel, nr, args), call(Driver::User, nr, args), "{nr}");
        assert_eq!(call(Driver::Kernel, nr, args), libc::SECCOMP_RET_USER_NOTIF, "{nr}");
    }
    // What the user driver refuses outright, the kernel driver refuses too: fast
    // open on a datagram socket's sends among it.
    let fastopen = [800, 0x1000, 16, libc::MSG_FASTOPEN as u64, 0x2000, 0];
    assert_eq!(call(Driver::Kernel, libc::SYS_sendto, fastopen), libc::SECCOMP_RET_ERRNO | libc::EOPNOTSUPP as u32);
    let refused: Vec<Rule> = RULES.iter().filter(|r| r.action != Action::Notify).copied().collect();
    let kernel = rules(Driver::Kernel, SocketGuard::Installed, Placement::OwnNetns);
    assert!(refused.iter().all(|r| kernel.iter().any(|k| k.nr == r.nr && k.action == r.action)));
    assert_eq!(rules(Driver::User, SocketGuard::Installed, Placement::OwnNetns).len(), RULES.len());
    assert_eq!(kernel.len(), RULES.len() - 7);
}

#[test]
fn without_the_guard_every_send_and_receive_that_names_an_address_is_trapped_on_every_descriptor() {
    let unguarded = compile(&rules(ax_core::Driver::User, SocketGuard::Absent, Placement::OwnNetns));
    let call = |nr: i64, args: [u64; 6]| run(&unguarded, AUDIT_ARCH, nr as u32, args);
    let guarded = |nr: i64, args: [u64; 6]| run(&compile(RULES), AUDIT_ARCH, nr as u32, args);
    for fd in [0, 3, LO - 1, LO, HI - 1, HI, 1 << 20, u32::MAX as u64] {
        // With an address (or a msghdr that may hold one): trapped, in the range or not.
        for nr in [libc::SYS_sendto, libc::SYS_recvfrom] {
            assert_eq!(call(nr, [fd, 0x1000, 8, 0, 0x2000, 16]), NOTIFY, "syscall {nr} on {fd:#x}");
            // The address is a register: without one the kernel has none to use.
            assert_eq!(call(nr, [fd, 0x1000, 8, 0, 0, 0]), ALLOW, "syscall {nr} on {fd:#x}");
        }
        for nr in [libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_sendmmsg] {
            assert_eq!(call(nr, [fd, 0x1000, 1, 0, 0, 0]), NOTIFY, "syscall {nr} on {fd:#x}");
        }
        // recvmmsg names no destination; reads and writes none either.
        for nr in [libc::SYS_recvmmsg, libc::SYS_read, libc::SYS_write, libc::SYS_accept4] {
            assert_eq!(call(nr, [fd, 0x1000, 1, 0, 0, 0]), ALLOW, "syscall {nr} on {fd:#x}");
        }
        // What the guarded filter traps or refuses, the unguarded one does too.
        for nr in [
            libc::SYS_socket,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_connect,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_io_uring_setup,
        ] {
            let args = [fd, 0x1000, 16, 0, 0x2000, 16];
            assert_eq!(call(nr, args), guarded(nr, args), "syscall {nr} on {fd:#x}");
        }
    }
    // Fast open and source routes are refused as before, batches included.
    let fo = libc::MSG_FASTOPEN as u64;
    let eopnotsupp = libc::SECCOMP_RET_ERRNO | libc::EOPNOTSUPP as u32;
    assert_eq!(call(libc::SYS_sendmmsg, [3, 0x1000, 2, fo, 0, 0]), eopnotsupp);
    assert_eq!(call(libc::SYS_sendmsg, [3, 0x1000, fo, 0, 0, 0]), eopnotsupp);
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let ip = libc::IPPROTO_IP as u64;
    assert_eq!(call(libc::SYS_setsockopt, [3, ip, libc::IP_OPTIONS as u64, 0, 8, 0]), eperm);
}

#[test]
fn the_unguarded_rules_are_derived_from_the_guarded_ones() {
    let unguarded = rules(ax_core::Driver::User, SocketGuard::Absent, Placement::OwnNetns);
    // Nothing of the range is left, and only sendmmsg's trap is added.
    assert!(unguarded.iter().all(|r| !matches!(r.when, When::DatagramFd(_))));
    assert_eq!(unguarded.len(), RULES.len() + 1);
    let added: Vec<&Rule> =
        unguarded.iter().filter(|u| !RULES.iter().any(|r| r.nr == u.nr && r.why == u.why)).collect();
    assert_eq!(added.len(), 1);
    assert_eq!((added[0].nr, added[0].action), (libc::SYS_sendmmsg, Action::Notify));
    // The order holds: the fast-open refusals still come before the traps.
    let at = |nr: i64, action: Action| unguarded.iter().position(|r| r.nr == nr && r.action == action).unwrap();
    for nr in [libc::SYS_sendto, libc::SYS_sendmsg, libc::SYS_sendmmsg] {
        assert!(at(nr, Action::Errno(libc::EOPNOTSUPP)) < at(nr, Action::Notify), "syscall {nr}");
    }
    // A rule changed in RULES changes its unguarded form: each comes from one.
    for u in &unguarded {
        let from = RULES.iter().find(|r| r.nr == u.nr && r.why == u.why);
        assert!(from.is_some() || u.nr == libc::SYS_sendmmsg, "{u:?} comes from no rule");
    }
    assert_eq!(rules(ax_core::Driver::User, SocketGuard::Installed, Placement::OwnNetns).len(), RULES.len());
}

#[test]
fn a_host_placement_app_makes_tcp_sockets_untrapped_and_nothing_else_changes() {
    use ax_core::Driver;
    let host = compile(&rules(Driver::Kernel, SocketGuard::Installed, Placement::Host));
    let own = compile(&rules(Driver::Kernel, SocketGuard::Installed, Placement::OwnNetns));
    let socket = |prog: &[sock_filter], domain: i32, ty: i32, proto: i32| {
        run(prog, AUDIT_ARCH, libc::SYS_socket as u32, [domain as u64, ty as u64, proto as u64, 0, 0, 0])
    };
    let flags = [0, libc::SOCK_NONBLOCK, libc::SOCK_CLOEXEC, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC];
    for domain in [libc::AF_INET, libc::AF_INET6] {
        for f in flags {
            for proto in [0, libc::IPPROTO_TCP] {
                assert_eq!(socket(&host, domain, libc::SOCK_STREAM | f, proto), ALLOW, "{domain} {f:#x} {proto}");
                assert_eq!(socket(&own, domain, libc::SOCK_STREAM | f, proto), NOTIFY);
            }
            // Every other inet socket is still the daemon's to make (or refuse).
            for (ty, proto) in [
                (libc::SOCK_DGRAM, 0),
                (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
                (libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
                (libc::SOCK_RAW, libc::IPPROTO_TCP),
                (libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
                (libc::SOCK_STREAM, libc::IPPROTO_SCTP),
                (libc::SOCK_STREAM, libc::IPPROTO_UDP),
                (libc::SOCK_SEQPACKET, 0),
            ] {
                assert_eq!(socket(&host, domain, ty | f, proto), NOTIFY, "{domain} {ty:#x} {f:#x} {proto}");
            }
        }
        // The high half of a register does not count, as the kernel reads ints; a
        // type with bits past the mask other than the flags is the kernel's to refuse.
        let high = (1u64 << 32) | libc::SOCK_STREAM as u64;
        assert_eq!(run(&host, AUDIT_ARCH, libc::SYS_socket as u32, [domain as u64, high, 0, 0, 0, 0]), ALLOW);
    }
    // Unix and netlink sockets as for any app; no other family at all.
    for domain in [libc::AF_UNIX, libc::AF_NETLINK, libc::AF_ALG] {
        assert_eq!(socket(&host, domain, libc::SOCK_DGRAM, 0), ALLOW);
    }
    let eafnosupport = libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32;
    for domain in [libc::AF_PACKET, libc::AF_VSOCK, libc::AF_TIPC, libc::AF_RDS, libc::AF_RXRPC, 43, 46, -1, 1 << 20] {
        assert_eq!(socket(&host, domain, libc::SOCK_STREAM, 0), eafnosupport, "{domain}");
        assert_eq!(socket(&own, domain, libc::SOCK_STREAM, 0), ALLOW, "{domain}: its own namespace is empty");
    }
    let pair = |prog: &[sock_filter], domain: i32| {
        run(prog, AUDIT_ARCH, libc::SYS_socketpair as u32, [domain as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0])
    };
    assert_eq!(pair(&host, libc::AF_UNIX), ALLOW);
    assert_eq!(pair(&host, libc::AF_TIPC), eafnosupport);
    assert_eq!(pair(&own, libc::AF_TIPC), ALLOW);
    for nr in [libc::SYS_bind, libc::SYS_listen, libc::SYS_connect, libc::SYS_sendmsg, libc::SYS_io_uring_setup] {
        let args = [3, 0x1000, 16, 0, 0x2000, 16];
        assert_eq!(run(&host, AUDIT_ARCH, nr as u32, args), run(&own, AUDIT_ARCH, nr as u32, args), "{nr}");
    }
    let placed = rules(Driver::Kernel, SocketGuard::Installed, Placement::Host);
    let own_rules = rules(Driver::Kernel, SocketGuard::Installed, Placement::OwnNetns);
    assert_eq!(placed.len(), own_rules.len() + HOST_FIRST.len() + HOST_LAST.len());
}

#[test]
fn every_rule_says_why() {
    assert!(RULES.iter().all(|r| r.why.len() > 20));
}
