//! What to do with an app's socket call, as pure functions of the call's facts and the
//! table: which sockets ax makes, which errno a bad address earns, where a bind or a
//! connect goes, when a refused backend is skipped, which backend a datagram goes to,
//! and what getsockname and getpeername show. The user driver's engine carries these
//! out through its kernel seam; the kernel driver writes the same answers into its
//! maps. Nothing here does I/O.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::addr::{self, Family, SockAddr};
use crate::{AppId, BindPlan, Errno, Proto, Route, Table, EGRESS_PORT};

/// The largest sockaddr the kernel accepts (sizeof(struct sockaddr_storage)).
pub const MAX_SOCKADDR: u32 = 128;

/// What an app's socket is, as far as ax is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP in the host's namespace: made by the daemon, virtualized.
    Host(Family, Proto),
    /// Inet, in the app's own namespace (loopback sockets, raw sockets).
    Private(Family),
    /// AF_UNIX and every other family: none of ax's business.
    Other,
}

/// A host socket for socket(): its type without SOCK_CLOEXEC, and whether the app's
/// descriptor gets close-on-exec. None: not ax's (raw, ICMP, SCTP...), run natively in
/// the app's own namespace.
pub fn socket(ty: i32, protocol: i32) -> Option<(i32, bool)> {
    let plain = match Proto::from_sock_type(ty) {
        Some(Proto::Tcp) => protocol == 0 || protocol == libc::IPPROTO_TCP,
        Some(Proto::Udp) => protocol == 0 || protocol == libc::IPPROTO_UDP,
        None => false,
    };
    plain.then_some((ty & !libc::SOCK_CLOEXEC, ty & libc::SOCK_CLOEXEC != 0))
}

/// How many bytes of a sockaddr to read, as the kernel checks `len`.
pub fn addr_len(len: u32) -> Result<usize, Errno> {
    if len as i32 >= 0 && len <= MAX_SOCKADDR {
        Ok(len as usize)
    } else {
        Err(libc::EINVAL)
    }
}

/// What the call will do with an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    BindOrConnect,
    Send,
}

/// An address the app passed, as the kernel would take it on a socket of `family`: an
/// IPv6 address on an IPv4 socket is EAFNOSUPPORT; an IPv4 one on an IPv6 socket is too
/// short a sockaddr_in6 (EINVAL) for bind and connect, while sends accept it.
pub fn address(bytes: &[u8], family: Family, usage: Use) -> Result<SockAddr, Errno> {
    let a = addr::parse(bytes)?;
    match (family, a, usage) {
        (Family::V4, SockAddr::Inet(SocketAddr::V6(_)), _) => Err(libc::EAFNOSUPPORT),
        (Family::V6, SockAddr::Inet(SocketAddr::V4(_)), Use::BindOrConnect) => Err(libc::EINVAL),
        _ => Ok(a),
    }
}

/// How to carry out a bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// Bind the socket as it is, where it is (the app's own sockets).
    AsIs(SocketAddr),
    /// Move the socket into the app's namespace, then bind it there (loopback).
    Private(SocketAddr),
    /// On the node address: at `exposed` if given, else at a pool port; the app sees
    /// `service`.
    Host { family: Family, proto: Proto, requested: SocketAddr, service: SocketAddrV4, exposed: Option<u16> },
}

/// How to carry out a bind by `app`; `privileged` says whether the calling thread holds
/// CAP_NET_BIND_SERVICE, asked only when the port needs it. The daemon carries out
/// every bind itself, loopback ones in the app's namespace included, so the kernel's
/// privileged-port check is made here for all of them. `v6only`: the socket has
/// IPV6_V6ONLY set. Such a socket takes no IPv4 address (a v4-mapped one is EINVAL, as
/// in the kernel), and its `::` is served in the app's own namespace: the app's
/// addresses are IPv4 ones, so nothing but the app itself (over `::1`) could reach it
/// on a host either, and IPv4 clients are refused.
pub fn bind(
    table: &Table,
    app: AppId,
    kind: Kind,
    addr: SockAddr,
    v6only: bool,
    privileged: impl FnOnce() -> bool,
) -> Result<Bind, Errno> {
    let SockAddr::Inet(want) = addr else { return Err(libc::EAFNOSUPPORT) };
    let private_v6 = match want {
        SocketAddr::V6(v6) if v6only && v6.ip().to_ipv4_mapped().is_some() => return Err(libc::EINVAL),
        SocketAddr::V6(v6) => v6only && v6.ip().is_unspecified(),
        SocketAddr::V4(_) => false,
    };
    match kind {
        Kind::Private(_) | Kind::Other => {
            if table.is_privileged_port(want.port()) && !privileged() {
                return Err(libc::EACCES);
            }
            Ok(Bind::AsIs(want))
        }
        Kind::Host(..) if private_v6 => {
            table.app(app).ok_or(libc::EPERM)?;
            if table.is_privileged_port(want.port()) && !privileged() {
                return Err(libc::EACCES);
            }
            Ok(Bind::Private(want))
        }
        Kind::Host(family, proto) => Ok(match table.plan_bind(app, want, privileged)? {
            BindPlan::Private => Bind::Private(want),
            BindPlan::Host { service, host_port } => {
                Bind::Host { family, proto, requested: want, service, exposed: host_port }
            }
        }),
    }
}

/// How many busy host ports a bind skips before giving up.
pub const MAX_BIND_TRIES: usize = 256;

/// After a host bind at a pool port failed with `e`: try the next port (the port was
/// busy on the host, and tries remain), or fail the app's bind with this errno.
pub fn bind_retry(e: Errno, tries: usize) -> Option<Errno> {
    if e == libc::EADDRINUSE && tries < MAX_BIND_TRIES {
        None
    } else {
        Some(e)
    }
}

/// How to carry out a connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// connect(AF_UNSPEC): dissolve the association.
    Disconnect,
    /// Connect the socket where it is (the app's own sockets).
    AsIs(SocketAddr),
    /// Move the socket into the app's namespace and connect it there (loopback).
    Private(SocketAddr),
    Refused,
    /// A datagram socket to a destination it may not reach: connected, as a host's
    /// UDP connect always is, to the node's closed port ([`closed_port`]), so its sends
    /// go nowhere and fail afterwards with ECONNREFUSED, as sends to a host's closed
    /// port do; getpeername shows `dest`.
    Closed {
        closed: SocketAddrV4,
        dest: SocketAddr,
    },
    /// Try these in order; the first that does not refuse wins. `source`: the host
    /// address to connect from (a vservice's --source-ip).
    Targets {
        targets: Vec<SocketAddr>,
        source: Option<Ipv4Addr>,
    },
    /// Through an egress gateway of the cluster.
    Egress {
        gateway: SocketAddrV4,
        dest: SocketAddr,
    },
    /// To a remote cluster's `service`, through the first of `via` that answers (see
    /// [`Route::Federated`]).
    Federated {
        via: Vec<SocketAddrV4>,
        service: SocketAddrV4,
    },
    /// The socket's own handshake is under way: EALREADY for a non-blocking socket; a
    /// blocking one waits for its outcome, as in the kernel.
    InProgress,
}

/// The kernel's TCP states that matter to a connect (include/net/tcp_states.h), as
/// the first byte of `struct tcp_info` gives them.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// Where a host TCP socket's own connection stands when the app calls connect().
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Closed: free to connect (a failed attempt included).
    Idle,
    /// A handshake is under way (a non-blocking connect the app was told is in progress).
    Connecting,
    /// Connected, listening or closing: nothing more to connect.
    Busy,
}

impl Progress {
    /// From tcp_info's state byte.
    pub fn from_tcp_state(state: u8) -> Progress {
        match state {
            TCP_CLOSE => Progress::Idle,
            TCP_SYN_SENT | TCP_SYN_RECV => Progress::Connecting,
            _ => Progress::Busy,
        }
    }
}

/// `progress`: for a host TCP socket, where its connection stands (None for others:
/// a datagram socket may connect again at will, as in the kernel). A socket that is
/// connected or connecting is answered as the kernel would, before any route is
/// looked up: EISCONN, or the handshake's own outcome ([`Connect::InProgress`]);
/// nothing about the new address is decided or done. A TCP connect to the loopback
/// reaches the app's own wildcard listener on the host ([`Table::own_rows`]) unless
/// `listens_privately` (asked only then) says a listener of its namespace takes it,
/// as a host's more specific listener would.
pub fn connect(
    table: &mut Table,
    app: AppId,
    kind: Kind,
    addr: SockAddr,
    progress: Option<Progress>,
    listens_privately: impl FnOnce() -> bool,
) -> Result<Connect, Errno> {
    let dest = match addr {
        SockAddr::Inet(a) => a,
        SockAddr::Unspec => return Ok(Connect::Disconnect),
        SockAddr::Other(_) => return Err(libc::EAFNOSUPPORT),
    };
    let proto = match kind {
        Kind::Host(_, proto) => proto,
        Kind::Private(_) | Kind::Other => return Ok(Connect::AsIs(dest)),
    };
    match progress {
        Some(Progress::Busy) => return Err(libc::EISCONN),
        Some(Progress::Connecting) => return Ok(Connect::InProgress),
        Some(Progress::Idle) | None => {}
    }
    Ok(match table.route_connect(app, proto, dest) {
        Route::Private => match table.own_rows(app, proto, dest) {
            own if own.is_empty() || listens_privately() => Connect::Private(dest),
            own => Connect::Targets { targets: own.into_iter().map(SocketAddr::V4).collect(), source: None },
        },
        Route::Refused if proto == Proto::Udp => Connect::Closed { closed: closed_port(table), dest },
        Route::Refused => Connect::Refused,
        Route::Direct(a) => Connect::Targets { targets: vec![a], source: None },
        Route::Egress { gateway, dest } => Connect::Egress { gateway, dest },
        Route::Federated { via, service } => Connect::Federated { via, service },
        Route::Backends(targets) => Connect::Targets {
            source: targets.iter().find_map(|t| t.source),
            targets: targets.into_iter().map(|t| SocketAddr::V4(t.addr)).collect(),
        },
    })
}

/// The node's closed datagram port: the broker's TCP port, which no one may bind on
/// the node address for UDP (a daemon port, privileged), so the host's own stack
/// answers every datagram there with port unreachable.
pub fn closed_port(table: &Table) -> SocketAddrV4 {
    SocketAddrV4::new(table.node().ip, crate::BROKER_PORT)
}

/// What one connect attempt came to, and what follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Answer the app with this (0 or an errno).
    Done(Result<(), Errno>),
    /// The target refused and another remains: reset the socket and try the next.
    Next,
    /// The handshake is under way.
    Pending,
}

/// Reads the outcome of one connect attempt (`result` of connect(2), or the socket's
/// SO_ERROR once a pending one finished), `more` saying whether targets remain.
pub fn attempt(result: Result<(), Errno>, more: bool) -> Attempt {
    match result {
        Ok(()) => Attempt::Done(Ok(())),
        Err(libc::EINPROGRESS) => Attempt::Pending,
        Err(libc::ECONNREFUSED) if more => Attempt::Next,
        Err(e) => Attempt::Done(Err(e)),
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// From the app's own namespace (loopback).
    Private,
    To(SocketAddr),
    /// To one of these backends, the same one for every datagram of a socket
    /// ([`pinned`]), so replies make sense.
    Backends(Vec<SocketAddrV4>),
}

pub fn datagram(table: &mut Table, app: AppId, dest: SocketAddr) -> Result<Datagram, Errno> {
    match table.route_connect(app, Proto::Udp, dest) {
        Route::Private => Ok(Datagram::Private),
        // Federation carries TCP only (decided so already).
        Route::Refused | Route::Federated { .. } => Err(libc::ECONNREFUSED),
        Route::Direct(a) | Route::Egress { dest: a, .. } => Ok(Datagram::To(a)),
        Route::Backends(targets) if !targets.is_empty() => {
            let mut backends: Vec<SocketAddrV4> = targets.into_iter().map(|t| t.addr).collect();
            backends.sort();
            Ok(Datagram::Backends(backends))
        }
        Route::Backends(_) => Err(libc::ECONNREFUSED),
    }
}

/// Control messages the daemon passes on when it sends a datagram for an app on a host
/// socket, by level and type: the segment size, TOS, TTL, traffic class and hop limit,
/// which change nothing about where a datagram goes.
const PASSED_CONTROL: &[(i32, i32)] = &[
    (libc::SOL_UDP, libc::UDP_SEGMENT),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT),
];
const CMSG_HDR: usize = 16;

/// The control bytes of an app's datagram send (a `struct cmsghdr` sequence, 64-bit
/// layout) that the daemon may send with on a host socket. The rest (source routes,
/// marks, source addresses and interfaces: IP_RETOPTS, SO_MARK, IP_PKTINFO...) would be
/// the daemon's privilege used on the app's word, and are dropped. A malformed header
/// is EINVAL, as the kernel says.
pub fn host_control(control: &[u8]) -> Result<Vec<u8>, Errno> {
    let mut kept = Vec::new();
    let mut off = 0;
    // Less than a header left: the kernel sees no more messages.
    while control.len() - off >= CMSG_HDR {
        let word = |at: usize| u64::from_ne_bytes(control[at..at + 8].try_into().expect("8 bytes"));
        let len = word(off);
        if len < CMSG_HDR as u64 || len > (control.len() - off) as u64 {
            return Err(libc::EINVAL);
        }
        let level = i32::from_ne_bytes(control[off + 8..off + 12].try_into().expect("4 bytes"));
        let kind = i32::from_ne_bytes(control[off + 12..off + 16].try_into().expect("4 bytes"));
        let end = (off + (len as usize).next_multiple_of(8)).min(control.len());
        if PASSED_CONTROL.contains(&(level, kind)) {
            kept.extend_from_slice(&control[off..end]);
        }
        off = end;
    }
    Ok(kept)
}

/// The backend of `backends` (sorted, not empty) that the socket with this inode talks to.
pub fn pinned(backends: &[SocketAddrV4], inode: u64) -> SocketAddrV4 {
    backends[(inode % backends.len() as u64) as usize]
}

/// The flags of an app's datagram send that the daemon sends with, on the app's host
/// socket: those that change only how this one send waits or is framed. The rest are
/// dropped, MSG_ZEROCOPY first (the kernel would keep sending from the daemon's
/// buffer after the call, while the daemon reuses it for other apps' data).
pub fn send_flags(flags: i32) -> i32 {
    flags & (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | libc::MSG_CONFIRM | libc::MSG_MORE | libc::MSG_EOR)
}

/// What getsockname (`peer` false) or getpeername shows for a socket of `proto` whose
/// real address is `real` (and local address `local`, for getpeername); None: the
/// real address, as the kernel says it. `unconnected`: for getsockname, the inode of
/// the socket when it has no peer (a wildcard bind shows the wildcard until then).
pub fn name(
    table: &Table,
    app: AppId,
    proto: Proto,
    peer: bool,
    real: SocketAddr,
    local: Option<SocketAddr>,
    unconnected: Option<u64>,
) -> Option<SocketAddr> {
    let shown = if !peer {
        table.local_name(app, proto, real, unconnected)
    } else if real.port() == EGRESS_PORT || addr::unmap(real) == SocketAddr::V4(closed_port(table)) {
        // Through an egress gateway, or to the closed port: the destination the app
        // asked for.
        local.and_then(|l| table.remembered_peer(l)).or_else(|| table.peer_name(proto, real))
    } else {
        table.peer_name(proto, real)
    };
    shown.filter(|s| *s != addr::unmap(real))
}

/// How many bytes of a `full`-byte address fit the app's buffer of `len` bytes, as the
/// kernel's move_addr_to_user reads it: a negative length (as an int: any above 2^31
/// as the app's unsigned socklen_t) is EINVAL; a longer one gets the whole address.
pub fn name_fits(len: i32, full: usize) -> Result<usize, Errno> {
    usize::try_from(len).map(|len| len.min(full)).map_err(|_| libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_keeps_only_the_flags_of_how_it_waits_and_is_framed() {
        let kept = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | libc::MSG_CONFIRM | libc::MSG_MORE | libc::MSG_EOR;
        assert_eq!(send_flags(kept), kept);
        for dropped in [libc::MSG_ZEROCOPY, libc::MSG_DONTROUTE, libc::MSG_OOB, libc::MSG_TRUNC, libc::MSG_FASTOPEN] {
            assert_eq!(send_flags(dropped | libc::MSG_DONTWAIT), libc::MSG_DONTWAIT, "{dropped:#x}");
        }
        assert_eq!(send_flags(-1), kept);
    }

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut c = ((16 + data.len()) as u64).to_ne_bytes().to_vec();
        c.extend(level.to_ne_bytes());
        c.extend(kind.to_ne_bytes());
        c.extend(data);
        c.resize(c.len().next_multiple_of(8), 0);
        c
    }

    #[test]
    fn a_hosts_send_keeps_the_harmless_control_messages_only() {
        let tos = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0x10]);
        let gso = cmsg(libc::SOL_UDP, libc::UDP_SEGMENT, &1200u16.to_ne_bytes());
        let route = cmsg(libc::IPPROTO_IP, libc::IP_RETOPTS, &[0x83, 7, 4, 10, 0, 0, 9, 0]);
        let mark = cmsg(libc::SOL_SOCKET, libc::SO_MARK, &7u32.to_ne_bytes());
        let pktinfo = cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &[0; 12]);
        let all = [route.clone(), tos.clone(), mark, gso.clone(), pktinfo].concat();
        assert_eq!(host_control(&all), Ok([tos.clone(), gso].concat()));
        assert_eq!(host_control(&route), Ok(vec![]));
        assert_eq!(host_control(&[]), Ok(vec![]));
        // A tail shorter than a header is no message; a header that lies is EINVAL.
        assert_eq!(host_control(&[tos.clone(), vec![0; 8]].concat()), Ok(tos.clone()));
        let mut short = tos.clone();
        short[0..8].copy_from_slice(&8u64.to_ne_bytes());
        assert_eq!(host_control(&short), Err(libc::EINVAL));
        let mut long = tos;
        long[0..8].copy_from_slice(&4096u64.to_ne_bytes());
        assert_eq!(host_control(&long), Err(libc::EINVAL));
    }

    #[test]
    fn only_plain_tcp_and_udp_become_host_sockets() {
        assert_eq!(socket(libc::SOCK_STREAM, 0), Some((libc::SOCK_STREAM, false)));
        assert_eq!(socket(libc::SOCK_STREAM | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP), Some((libc::SOCK_STREAM, true)));
        let nb = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK;
        assert_eq!(socket(nb, libc::IPPROTO_UDP), Some((nb, false)));
        assert_eq!(socket(libc::SOCK_DGRAM, libc::IPPROTO_ICMP), None);
        assert_eq!(socket(libc::SOCK_RAW, libc::IPPROTO_RAW), None);
        assert_eq!(socket(libc::SOCK_STREAM, libc::IPPROTO_SCTP), None);
    }

    #[test]
    fn sockaddr_lengths_are_checked_like_the_kernel() {
        assert_eq!(addr_len(16), Ok(16));
        assert_eq!(addr_len(128), Ok(128));
        assert_eq!(addr_len(129), Err(libc::EINVAL));
        assert_eq!(addr_len(-1i32 as u32), Err(libc::EINVAL));
    }

    #[test]
    fn address_families_must_fit_the_socket_except_for_sends() {
        let v4 = addr::encode("10.0.0.1:80".parse().unwrap(), Family::V4);
        let v6 = addr::encode("[2001:db8::1]:80".parse().unwrap(), Family::V6);
        assert_eq!(address(&v6, Family::V4, Use::BindOrConnect), Err(libc::EAFNOSUPPORT));
        assert_eq!(address(&v6, Family::V4, Use::Send), Err(libc::EAFNOSUPPORT));
        assert_eq!(address(&v4, Family::V6, Use::BindOrConnect), Err(libc::EINVAL));
        assert!(matches!(address(&v4, Family::V6, Use::Send), Ok(SockAddr::Inet(SocketAddr::V4(_)))));
        assert!(matches!(address(&v4[..15], Family::V4, Use::Send), Err(libc::EINVAL)));
    }

    #[test]
    fn every_bind_the_daemon_makes_checks_the_privilege_loopback_ones_too() {
        let mut t = crate::table::testing::table();
        let a = crate::table::testing::app(&mut t, None, "zone=default");
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        for kind in [Kind::Private(Family::V4), Kind::Host(Family::V4, Proto::Tcp)] {
            assert_eq!(bind(&t, a, kind, SockAddr::Inet(lo), false, || false), Err(libc::EACCES), "{kind:?}");
        }
        assert_eq!(bind(&t, a, Kind::Private(Family::V4), SockAddr::Inet(lo), false, || true), Ok(Bind::AsIs(lo)));
        let host = Kind::Host(Family::V4, Proto::Tcp);
        assert_eq!(bind(&t, a, host, SockAddr::Inet(lo), false, || true), Ok(Bind::Private(lo)));
    }

    #[test]
    fn a_v6only_socket_binds_its_wildcard_privately_and_no_ipv4_address() {
        let mut t = crate::table::testing::table();
        let a = crate::table::testing::app(&mut t, Some("198.18.0.1"), "zone=default");
        let host = Kind::Host(Family::V6, Proto::Tcp);
        let at = |s: &str| SockAddr::Inet(s.parse().unwrap());
        let any: SocketAddr = "[::]:8000".parse().unwrap();
        assert_eq!(bind(&t, a, host, at("[::]:8000"), true, || true), Ok(Bind::Private(any)));
        assert_eq!(bind(&t, a, host, at("[::]:80"), true, || false), Err(libc::EACCES));
        assert_eq!(bind(&t, a, host, at("[::ffff:198.18.0.1]:8000"), true, || true), Err(libc::EINVAL));
        assert_eq!(bind(&t, a, host, at("[::ffff:0.0.0.0]:8000"), true, || true), Err(libc::EINVAL));
        // Without IPV6_V6ONLY, `::` is every address: the node's, as a service.
        assert!(matches!(bind(&t, a, host, at("[::]:8000"), false, || true), Ok(Bind::Host { .. })));
        // An app the table does not know binds nothing.
        assert_eq!(bind(&t, AppId(0xdead), host, at("[::]:8000"), true, || true), Err(libc::EPERM));
    }

    #[test]
    fn a_bind_retries_only_busy_ports_and_only_so_often() {
        assert_eq!(bind_retry(libc::EADDRINUSE, 1), None);
        assert_eq!(bind_retry(libc::EADDRINUSE, MAX_BIND_TRIES - 1), None);
        assert_eq!(bind_retry(libc::EADDRINUSE, MAX_BIND_TRIES), Some(libc::EADDRINUSE));
        assert_eq!(bind_retry(libc::EACCES, 1), Some(libc::EACCES));
    }

    #[test]
    fn only_a_refusal_with_targets_left_moves_on() {
        assert_eq!(attempt(Ok(()), true), Attempt::Done(Ok(())));
        assert_eq!(attempt(Err(libc::ECONNREFUSED), true), Attempt::Next);
        assert_eq!(attempt(Err(libc::ECONNREFUSED), false), Attempt::Done(Err(libc::ECONNREFUSED)));
        assert_eq!(attempt(Err(libc::ETIMEDOUT), true), Attempt::Done(Err(libc::ETIMEDOUT)));
        assert_eq!(attempt(Err(libc::EINPROGRESS), false), Attempt::Pending);
    }

    #[test]
    fn a_socket_stays_with_its_backend_and_sockets_spread() {
        let b: Vec<SocketAddrV4> = (1..=3).map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 40000)).collect();
        assert_eq!(pinned(&b, 7), pinned(&b, 7));
        let chosen: std::collections::BTreeSet<_> = (0..3).map(|inode| pinned(&b, inode)).collect();
        assert_eq!(chosen.len(), 3);
        assert_eq!(pinned(&b[..1], u64::MAX), b[0]);
    }

    #[test]
    fn names_fit_the_apps_buffer_as_the_kernel_reads_its_length() {
        assert_eq!(name_fits(16, 16), Ok(16));
        assert_eq!(name_fits(2, 16), Ok(2));
        assert_eq!(name_fits(0, 28), Ok(0));
        assert_eq!(name_fits(i32::MAX, 28), Ok(28));
        assert_eq!(name_fits(-1, 16), Err(libc::EINVAL));
        assert_eq!(name_fits(0x8000_0000u32 as i32, 16), Err(libc::EINVAL));
    }

    #[test]
    fn tcp_states_read_as_a_connects_progress() {
        assert_eq!(Progress::from_tcp_state(TCP_CLOSE), Progress::Idle);
        assert_eq!(Progress::from_tcp_state(TCP_SYN_SENT), Progress::Connecting);
        assert_eq!(Progress::from_tcp_state(TCP_SYN_RECV), Progress::Connecting);
        assert_eq!(Progress::from_tcp_state(TCP_ESTABLISHED), Progress::Busy);
        assert_eq!(Progress::from_tcp_state(TCP_LISTEN), Progress::Busy);
        // FIN_WAIT1 and the other closing states: still nothing to connect.
        assert_eq!(Progress::from_tcp_state(4), Progress::Busy);
    }

    #[test]
    fn a_connected_or_connecting_tcp_socket_is_answered_before_any_route() {
        let mut t = crate::table::testing::table();
        let app = crate::table::testing::app(&mut t, None, "zone=default");
        let tcp = Kind::Host(Family::V4, Proto::Tcp);
        let to = |s: &str| SockAddr::Inet(s.parse().unwrap());
        // Loopback would replace the socket, an unserved virtual address refuse: the
        // kernel says EISCONN first.
        assert_eq!(connect(&mut t, app, tcp, to("127.0.0.1:80"), Some(Progress::Busy), || false), Err(libc::EISCONN));
        assert_eq!(connect(&mut t, app, tcp, to("198.18.0.9:80"), Some(Progress::Busy), || false), Err(libc::EISCONN));
        assert_eq!(
            connect(&mut t, app, tcp, to("192.0.2.1:80"), Some(Progress::Connecting), || false),
            Ok(Connect::InProgress)
        );
        assert_eq!(
            connect(&mut t, app, tcp, to("127.0.0.1:80"), Some(Progress::Idle), || false),
            Ok(Connect::Private("127.0.0.1:80".parse().unwrap()))
        );
        // AF_UNSPEC dissolves whatever there is.
        assert_eq!(
            connect(&mut t, app, tcp, SockAddr::Unspec, Some(Progress::Busy), || false),
            Ok(Connect::Disconnect)
        );
        // A datagram socket connects again at will.
        let udp = Kind::Host(Family::V4, Proto::Udp);
        assert!(matches!(connect(&mut t, app, udp, to("192.0.2.1:53"), None, || false), Ok(Connect::Targets { .. })));
    }

    #[test]
    fn a_refused_udp_connect_goes_to_the_closed_port_and_a_tcp_one_is_refused() {
        let mut t = crate::table::testing::table();
        let app = crate::table::testing::app(&mut t, Some("198.18.0.1"), "role=a");
        let other = crate::table::testing::app(&mut t, Some("198.18.0.2"), "role=b");
        crate::table::testing::serve(&mut t, other, "0.0.0.0:80", 1);
        let to = |s: &str| SockAddr::Inet(s.parse().unwrap());
        let (udp, tcp) = (Kind::Host(Family::V4, Proto::Udp), Kind::Host(Family::V4, Proto::Tcp));
        let closed = SocketAddrV4::new(crate::table::testing::NODE, crate::BROKER_PORT);
        // An unserved port, and a service whose labels the app does not share.
        for dest in ["198.18.0.2:1025", "198.18.0.2:80"] {
            assert_eq!(
                connect(&mut t, app, udp, to(dest), None, || false),
                Ok(Connect::Closed { closed, dest: dest.parse().unwrap() })
            );
            assert_eq!(connect(&mut t, app, tcp, to(dest), Some(Progress::Idle), || false), Ok(Connect::Refused));
        }
        // The app's getpeername of it shows the destination the table remembers.
        let local: SocketAddrV4 = "10.0.0.1:33000".parse().unwrap();
        t.record_peer(local, "198.18.0.2:1025".parse().unwrap());
        let shown = name(&t, app, Proto::Udp, true, SocketAddr::V4(closed), Some(SocketAddr::V4(local)), None);
        assert_eq!(shown, Some("198.18.0.2:1025".parse().unwrap()));
    }

    #[test]
    fn a_loopback_connect_reaches_the_apps_own_wildcard_listener_unless_a_private_one_takes_it() {
        let mut t = crate::table::testing::table();
        let app = crate::table::testing::app(&mut t, Some("198.18.0.1"), "zone=default");
        let port = crate::table::testing::serve(&mut t, app, "0.0.0.0:8001", 1);
        let tcp = Kind::Host(Family::V4, Proto::Tcp);
        let to = |s: &str| SockAddr::Inet(s.parse().unwrap());
        let own = Connect::Targets { targets: vec![SocketAddr::from(([10, 0, 0, 1], port))], source: None };
        assert_eq!(connect(&mut t, app, tcp, to("127.0.0.1:8001"), Some(Progress::Idle), || false), Ok(own));
        let lo = "127.0.0.1:8001".parse().unwrap();
        assert_eq!(
            connect(&mut t, app, tcp, to("127.0.0.1:8001"), Some(Progress::Idle), || true),
            Ok(Connect::Private(lo))
        );
        // No listener of its own at the port: its namespace, which is asked nothing.
        let other = "127.0.0.1:8002".parse().unwrap();
        let asked = |_| panic!("asked for nothing");
        assert_eq!(
            connect(&mut t, app, tcp, to("127.0.0.1:8002"), Some(Progress::Idle), || asked(())),
            Ok(Connect::Private(other))
        );
        // Another app's loopback is its own.
        let b = crate::table::testing::app(&mut t, Some("198.18.0.2"), "zone=default");
        assert_eq!(
            connect(&mut t, b, tcp, to("127.0.0.1:8001"), Some(Progress::Idle), || false),
            Ok(Connect::Private(lo))
        );
    }
}
