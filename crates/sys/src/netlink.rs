//! Netlink. sock_diag: the kernel's list of sockets in the calling thread's network
//! namespace, which the daemon uses to notice listeners that their app has closed,
//! without holding them open itself (a held listener would accept connections no app
//! serves). The routes by which this namespace reaches networks directly (scope link).
//! And single rtnetlink requests with an acknowledgement.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use crate::cvt;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const HDR: usize = 16;
const REQ: usize = 56;
const MSG: usize = 72;

/// TCP states as sock_diag numbers them.
pub const TCP_LISTEN: u8 = 10;

/// One socket as sock_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    pub inode: u64,
    pub local: SocketAddr,
    pub state: u8,
    /// The socket's cookie (what `bpf_get_socket_cookie` gives for it).
    pub cookie: u64,
}

/// Lists sockets of `protocol` (IPPROTO_TCP or IPPROTO_UDP) in the states of the
/// bit mask `states` (bit n for state n), both address families.
pub fn list(protocol: u8, states: u32) -> io::Result<Vec<DiagSocket>> {
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) })?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        dump(&sock, family, protocol, states, &mut out)?;
    }
    Ok(out)
}

/// The TCP socket of this host namespace whose local address is `local` and whose peer
/// is `peer` (an IPv4 pair is looked for among IPv4 sockets, then among IPv6 ones as
/// v4-mapped); None when there is none.
pub fn tcp_socket(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<DiagSocket>> {
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) })?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mapped = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    };
    let mut tries = vec![(local, peer)];
    if local.is_ipv4() {
        tries.push((mapped(local), mapped(peer)));
    }
    for (local, peer) in tries {
        let req = exact(local, peer);
        // SAFETY: `req` is readable for its length; a null address sends to the kernel.
        cvt(unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) })?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: `buf` is writable for its length.
        let n = cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })? as usize;
        let mut out = Vec::new();
        match parse(&buf[..n], &mut out) {
            Ok(_) if !out.is_empty() => return Ok(out.pop()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Length of struct rtmsg.
const RTMSG: usize = 12;

/// An IPv4 route out of an interface with no gateway (scope link): a network this
/// namespace reaches directly, as an address's own prefix or a route added by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRoute {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub interface: String,
}

/// The IPv4 link-scope unicast routes of the calling thread's network namespace, of
/// every routing table.
pub fn link_routes() -> io::Result<Vec<LinkRoute>> {
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) })?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut req = [0u8; HDR + RTMSG];
    req[0..4].copy_from_slice(&((HDR + RTMSG) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[HDR] = libc::AF_INET as u8;
    let mut found = Vec::new();
    dump_replies(&sock, &req, |b| {
        walk(b, &mut |ty, m| {
            if ty == libc::RTM_NEWROUTE {
                found.extend(link_route(m));
            }
        })
    })?;
    Ok(found
        .into_iter()
        .map(|(dst, prefix, index)| LinkRoute { dst, prefix, interface: interface_name(index) })
        .collect())
}

/// An rtmsg's destination, prefix length and output interface index, if it is an IPv4
/// link-scope unicast route.
fn link_route(m: &[u8]) -> Option<(Ipv4Addr, u8, u32)> {
    let link = m.len() >= RTMSG
        && i32::from(m[0]) == libc::AF_INET
        && m[6] == libc::RT_SCOPE_LINK
        && m[7] == libc::RTN_UNICAST;
    if !link {
        return None;
    }
    let (mut dst, mut oif) = (Ipv4Addr::UNSPECIFIED, None);
    let mut a = &m[RTMSG..];
    while a.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([a[0], a[1]]));
        let ty = u16::from_ne_bytes([a[2], a[3]]);
        if len < 4 || len > a.len() {
            break;
        }
        let v = &a[4..len];
        match (ty, <[u8; 4]>::try_from(v)) {
            (libc::RTA_DST, Ok(b)) => dst = Ipv4Addr::from(b),
            (libc::RTA_OIF, Ok(b)) => oif = Some(u32::from_ne_bytes(b)),
            _ => {}
        }
        a = &a[((len + 3) & !3).min(a.len())..];
    }
    Some((dst, m[1], oif?))
}

/// The name of interface `index`; "interface N" if it went away meanwhile.
fn interface_name(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` is IF_NAMESIZE bytes, as if_indextoname requires; on success it
    // holds a NUL-terminated name.
    let named = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if named.is_null() {
        return format!("interface {index}");
    }
    // SAFETY: if_indextoname succeeded: `buf` holds a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// A sock_diag request for the one TCP socket `local` ↔ `peer` (both of one family).
fn exact(local: SocketAddr, peer: SocketAddr) -> [u8; HDR + REQ] {
    let family = if local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let mut b = request(family, libc::IPPROTO_TCP as u8, !0);
    b[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    let id = HDR + 8;
    b[id..id + 2].copy_from_slice(&local.port().to_be_bytes());
    b[id + 2..id + 4].copy_from_slice(&peer.port().to_be_bytes());
    let ip = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let (src, dst) = (ip(local), ip(peer));
    b[id + 4..id + 4 + src.len()].copy_from_slice(&src);
    b[id + 20..id + 20 + dst.len()].copy_from_slice(&dst);
    // INET_DIAG_NOCOOKIE: any socket with that pair.
    b[id + 40..id + 48].copy_from_slice(&[0xff; 8]);
    b
}

/// Sends one netlink request of `protocol` and waits for its acknowledgement.
pub(crate) fn request_ack(protocol: i32, msg: &[u8]) -> io::Result<()> {
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd = cvt(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `msg` is readable for its length; a null address sends to the kernel.
    cvt(unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) })?;
    let mut buf = vec![0u8; 8192];
    // SAFETY: `buf` is writable for its length.
    let n = cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })? as usize;
    parse(&buf[..n], &mut Vec::new()).map(|_| ())
}

fn request(family: u8, protocol: u8, states: u32) -> [u8; HDR + REQ] {
    let mut b = [0u8; HDR + REQ];
    b[0..4].copy_from_slice(&((HDR + REQ) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    b[8..12].copy_from_slice(&1u32.to_ne_bytes());
    b[HDR] = family;
    b[HDR + 1] = protocol;
    b[HDR + 4..HDR + 8].copy_from_slice(&states.to_ne_bytes());
    b
}

fn dump(sock: &OwnedFd, family: u8, protocol: u8, states: u32, out: &mut Vec<DiagSocket>) -> io::Result<()> {
    dump_replies(sock, &request(family, protocol, states), |b| parse(b, out))
}

/// Sends dump request `req` and hands each datagram of replies to `datagram` until it
/// says the dump is done.
fn dump_replies(sock: &OwnedFd, req: &[u8], mut datagram: impl FnMut(&[u8]) -> io::Result<bool>) -> io::Result<()> {
    // SAFETY: `req` is readable for its length; a null address sends to the kernel.
    cvt(unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) })?;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })? as usize;
        if datagram(&buf[..n])? {
            return Ok(());
        }
    }
}

/// Parses one datagram of sock_diag replies; true once the dump is done.
fn parse(b: &[u8], out: &mut Vec<DiagSocket>) -> io::Result<bool> {
    walk(b, &mut |ty, m| {
        if ty == SOCK_DIAG_BY_FAMILY && m.len() >= MSG {
            out.push(decode(&m[..MSG]));
        }
    })
}

/// Walks one datagram of netlink messages, handing each one's type and payload to
/// `each`; true once the dump is done (or the request acknowledged).
fn walk(mut b: &[u8], each: &mut impl FnMut(u16, &[u8])) -> io::Result<bool> {
    while b.len() >= HDR {
        let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(b[4..6].try_into().expect("2 bytes"));
        if len < HDR || len > b.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "netlink: truncated message"));
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = b.get(HDR..HDR + 4).map_or(0, |e| i32::from_ne_bytes(e.try_into().expect("4 bytes")));
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                return Ok(true);
            }
            _ => each(ty, &b[HDR..len]),
        }
        let step = (len + 3) & !3;
        b = &b[step.min(b.len())..];
    }
    Ok(false)
}

fn decode(m: &[u8]) -> DiagSocket {
    let port = u16::from_be_bytes([m[4], m[5]]);
    let ip = if m[0] as i32 == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(m[8], m[9], m[10], m[11]))
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&m[8..24]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    DiagSocket {
        inode: u32::from_ne_bytes(m[68..72].try_into().expect("4 bytes")) as u64,
        local: SocketAddr::new(ip, port),
        state: m[1],
        cookie: u64::from(u32::from_ne_bytes(m[44..48].try_into().expect("4 bytes")))
            | u64::from(u32::from_ne_bytes(m[48..52].try_into().expect("4 bytes"))) << 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ino = crate::sock::inode(std::os::fd::AsFd::as_fd(&l)).unwrap();
        let all = list(libc::IPPROTO_TCP as u8, 1 << TCP_LISTEN).unwrap();
        let me = all.iter().find(|s| s.inode == ino).expect("listener listed");
        assert_eq!(me.local.port(), port);
        assert_eq!(me.state, TCP_LISTEN);
        drop(l);
        let all = list(libc::IPPROTO_TCP as u8, 1 << TCP_LISTEN).unwrap();
        assert!(all.iter().all(|s| s.inode != ino), "closed listener still listed");
    }

    #[test]
    fn finds_a_connection_by_its_addresses_with_its_cookie() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let (local, peer) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let found = tcp_socket(local, peer).unwrap().expect("the client's socket");
        assert_eq!(found.inode, crate::sock::inode(std::os::fd::AsFd::as_fd(&c)).unwrap());
        assert_ne!(found.cookie, 0);
        // The other end is another socket, with another cookie.
        let other = tcp_socket(s.local_addr().unwrap(), s.peer_addr().unwrap()).unwrap().unwrap();
        assert_ne!(other.cookie, found.cookie);
        assert_eq!(tcp_socket(local, "127.0.0.1:1".parse().unwrap()).unwrap(), None);
    }

    /// An rtmsg with attributes, as the kernel writes one.
    fn rtmsg(scope: u8, ty: u8, prefix: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![libc::AF_INET as u8, prefix, 0, 0, libc::RT_TABLE_MAIN, 2, scope, ty, 0, 0, 0, 0];
        for (t, v) in attrs {
            m.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&t.to_ne_bytes());
            m.extend_from_slice(v);
            m.resize(m.len().next_multiple_of(4), 0);
        }
        m
    }

    #[test]
    fn only_link_scope_unicast_routes_are_read_with_their_interface() {
        let oif = 7u32.to_ne_bytes();
        let dst = [198, 19, 200, 0];
        let link = rtmsg(libc::RT_SCOPE_LINK, libc::RTN_UNICAST, 24, &[(libc::RTA_DST, &dst), (libc::RTA_OIF, &oif)]);
        assert_eq!(link_route(&link), Some((Ipv4Addr::new(198, 19, 200, 0), 24, 7)));
        // A default route out of a point-to-point link has no RTA_DST.
        let default = rtmsg(libc::RT_SCOPE_LINK, libc::RTN_UNICAST, 0, &[(libc::RTA_OIF, &oif)]);
        assert_eq!(link_route(&default), Some((Ipv4Addr::UNSPECIFIED, 0, 7)));
        let via =
            rtmsg(libc::RT_SCOPE_UNIVERSE, libc::RTN_UNICAST, 24, &[(libc::RTA_DST, &dst), (libc::RTA_OIF, &oif)]);
        let local = rtmsg(libc::RT_SCOPE_HOST, libc::RTN_LOCAL, 32, &[(libc::RTA_DST, &dst), (libc::RTA_OIF, &oif)]);
        let no_oif = rtmsg(libc::RT_SCOPE_LINK, libc::RTN_UNICAST, 24, &[(libc::RTA_DST, &dst)]);
        let mut short = link.clone();
        short.truncate(RTMSG - 1);
        for m in [via, local, no_oif, short] {
            assert_eq!(link_route(&m), None, "{m:?}");
        }
        // An attribute that claims more than is there ends the walk.
        let mut bad = rtmsg(libc::RT_SCOPE_LINK, libc::RTN_UNICAST, 24, &[(libc::RTA_OIF, &oif)]);
        bad[RTMSG..RTMSG + 2].copy_from_slice(&100u16.to_ne_bytes());
        assert_eq!(link_route(&bad), None);
    }

    #[test]
    fn this_namespaces_link_routes_name_their_interfaces() {
        // Every prefix route of an interface address is a link route of that interface.
        let routes = link_routes().unwrap();
        for a in crate::proc::interface_addrs().unwrap() {
            let std::net::IpAddr::V4(ip) = a.addr else { continue };
            if a.loopback || !a.up || a.prefix >= 31 {
                continue;
            }
            let net = Ipv4Addr::from(u32::from(ip) & (u32::MAX << (32 - a.prefix)));
            let want = LinkRoute { dst: net, prefix: a.prefix, interface: a.name.clone() };
            assert!(routes.contains(&want), "{want:?} not in {routes:?}");
        }
    }

    #[test]
    fn rejects_truncated_reply() {
        let mut b = vec![0u8; HDR];
        b[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(parse(&b, &mut Vec::new()).is_err());
    }
}
