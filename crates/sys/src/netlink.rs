//! Netlink. sock_diag: the kernel's list of sockets in the calling thread's network
//! namespace, which the daemon uses to notice listeners that their app has closed,
//! without holding them open itself (a held listener would accept connections no app
//! serves). And single rtnetlink requests with an acknowledgement.

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
    let req = request(family, protocol, states);
    // SAFETY: `req` is readable for its length; a null address sends to the kernel.
    cvt(unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) })?;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })? as usize;
        if parse(&buf[..n], out)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of replies; true once the dump is done.
fn parse(mut b: &[u8], out: &mut Vec<DiagSocket>) -> io::Result<bool> {
    while b.len() >= HDR {
        let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(b[4..6].try_into().expect("2 bytes"));
        if len < HDR || len > b.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "sock_diag: truncated message"));
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
            SOCK_DIAG_BY_FAMILY if len >= HDR + MSG => out.push(decode(&b[HDR..HDR + MSG])),
            _ => {}
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

    #[test]
    fn rejects_truncated_reply() {
        let mut b = vec![0u8; HDR];
        b[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(parse(&b, &mut Vec::new()).is_err());
    }
}
