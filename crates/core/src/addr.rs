//! Socket addresses as apps pass them: decoding the bytes of a `struct sockaddr` read
//! from an app's memory, encoding answers for its socket's family, and the v4-mapped
//! IPv6 forms that dual-stack programs use.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::Errno;

const SIN_LEN: usize = 16;
/// The kernel accepts a sockaddr_in6 without its scope id (RFC 2133 length).
const SIN6_MIN_LEN: usize = 24;
const SIN6_LEN: usize = 28;

/// The address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn from_raw(domain: i32) -> Option<Family> {
        match domain {
            libc::AF_INET => Some(Family::V4),
            libc::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }
}

/// What a sockaddr passed by an app says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockAddr {
    Inet(SocketAddr),
    /// AF_UNSPEC: "disconnect" for connect(2) on datagram sockets.
    Unspec,
    /// AF_UNIX or any other family ax does not virtualize.
    Other(u16),
}

/// Decodes `bytes` (exactly the length the app passed) as the kernel would: too short
/// for its family is EINVAL.
pub fn parse(bytes: &[u8]) -> Result<SockAddr, Errno> {
    if bytes.len() < 2 {
        return Err(libc::EINVAL);
    }
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]);
    match family as i32 {
        libc::AF_INET => {
            if bytes.len() < SIN_LEN {
                return Err(libc::EINVAL);
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            Ok(SockAddr::Inet(SocketAddr::V4(SocketAddrV4::new(ip, port))))
        }
        libc::AF_INET6 => {
            if bytes.len() < SIN6_MIN_LEN {
                return Err(libc::EINVAL);
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let flow = u32::from_ne_bytes(bytes[4..8].try_into().expect("4 bytes"));
            let mut o = [0u8; 16];
            o.copy_from_slice(&bytes[8..24]);
            let scope = if bytes.len() >= SIN6_LEN {
                u32::from_ne_bytes(bytes[24..28].try_into().expect("4 bytes"))
            } else {
                0
            };
            Ok(SockAddr::Inet(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), port, flow, scope))))
        }
        libc::AF_UNSPEC => Ok(SockAddr::Unspec),
        other => Ok(SockAddr::Other(other as u16)),
    }
}

/// Encodes `addr` as the sockaddr a socket of `family` reports: an IPv6 socket sees
/// IPv4 peers as `::ffff:a.b.c.d`.
pub fn encode(addr: SocketAddr, family: Family) -> Vec<u8> {
    match (family, addr) {
        (Family::V4, a) => {
            let v4 = match unmap(a) {
                SocketAddr::V4(v4) => v4,
                SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port()),
            };
            let mut b = vec![0u8; SIN_LEN];
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&v4.port().to_be_bytes());
            b[4..8].copy_from_slice(&v4.ip().octets());
            b
        }
        (Family::V6, a) => {
            let v6 = to_v6(a);
            let mut b = vec![0u8; SIN6_LEN];
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&v6.port().to_be_bytes());
            b[4..8].copy_from_slice(&v6.flowinfo().to_ne_bytes());
            b[8..24].copy_from_slice(&v6.ip().octets());
            b[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            b
        }
    }
}

/// `::ffff:a.b.c.d` becomes `a.b.c.d`, and `::` becomes `0.0.0.0` (a dual-stack
/// wildcard); anything else is unchanged.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => {
            if let Some(v4) = v6.ip().to_ipv4_mapped() {
                SocketAddr::V4(SocketAddrV4::new(v4, v6.port()))
            } else if v6.ip().is_unspecified() {
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, v6.port()))
            } else {
                addr
            }
        }
        v4 => v4,
    }
}

/// The form of `addr` that a socket of `family` can use in bind/connect.
pub fn for_family(addr: SocketAddr, family: Family) -> SocketAddr {
    match family {
        Family::V4 => unmap(addr),
        Family::V6 => SocketAddr::V6(to_v6(addr)),
    }
}

fn to_v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V6(v6) => v6,
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
    }
}

/// True for addresses that name the app's own host: 127.0.0.0/8 and ::1, in either form.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn new(ip: Ipv4Addr, prefix: u8) -> Subnet {
        let prefix = prefix.min(32);
        Subnet { base: Ipv4Addr::from(u32::from(ip) & Self::mask(prefix)), prefix }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.base)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// Number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The `i`-th address of the network.
    pub fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base).wrapping_add(i))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Ranges that made-up app addresses come from, in order of preference: never routed
/// on the Internet, and the first that overlaps none of the host's networks is used.
pub const MADE_UP_RANGES: [Subnet; 3] = [
    Subnet { base: Ipv4Addr::new(198, 19, 0, 0), prefix: 16 },
    Subnet { base: Ipv4Addr::new(100, 127, 0, 0), prefix: 16 },
    Subnet { base: Ipv4Addr::new(172, 31, 254, 0), prefix: 23 },
];

/// The first of [`MADE_UP_RANGES`] that overlaps none of `host_networks`.
pub fn made_up_range(host_networks: &[Subnet]) -> Option<Subnet> {
    MADE_UP_RANGES.into_iter().find(|r| host_networks.iter().all(|n| !n.overlaps(r)))
}

/// Why an address cannot be an app's or a vservice's virtual address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    #[error("--ip {0} is not an IPv4 address")]
    NotIpv4(String),
    #[error("--ip {ip} is {why}: give a unicast IPv4 address")]
    NotUnicast { ip: Ipv4Addr, why: &'static str },
}

/// Why `ip` names no single host that ax could give an address or send clients to:
/// unspecified, loopback (each app's own), multicast or broadcast. None for unicast.
pub fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address (127.0.0.0/8 stays private to each app)")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else {
        None
    }
}

/// Checks that `ip` can serve as an app's virtual address: a unicast IPv4 address
/// that is not the host's loopback.
pub fn check_app_ip(ip: Ipv4Addr) -> Result<(), IpError> {
    match not_unicast(ip) {
        Some(why) => Err(IpError::NotUnicast { ip, why }),
        None => Ok(()),
    }
}

/// A virtual address (`--ip` of an app or a vservice), checked by [`check_app_ip`];
/// in JSON, the address as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VirtualIp(Ipv4Addr);

impl VirtualIp {
    pub fn new(ip: Ipv4Addr) -> Result<VirtualIp, IpError> {
        check_app_ip(ip).map(|()| VirtualIp(ip))
    }

    pub fn get(self) -> Ipv4Addr {
        self.0
    }
}

impl std::str::FromStr for VirtualIp {
    type Err = IpError;
    fn from_str(s: &str) -> Result<VirtualIp, IpError> {
        VirtualIp::new(s.parse().map_err(|_| IpError::NotIpv4(s.into()))?)
    }
}

impl fmt::Display for VirtualIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

crate::vservice::as_text!(VirtualIp);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_inet_is_einval() {
        let mut b = vec![0u8; 15];
        b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        assert_eq!(parse(&b), Err(libc::EINVAL));
        assert_eq!(parse(&[2]), Err(libc::EINVAL));
    }

    #[test]
    fn rfc2133_length_v6_is_accepted() {
        let a: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let b = encode(a, Family::V6);
        assert_eq!(parse(&b[..24]), Ok(SockAddr::Inet(a)));
        assert_eq!(parse(&b[..23]), Err(libc::EINVAL));
    }

    #[test]
    fn unix_and_unspec_pass_through() {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(parse(&b), Ok(SockAddr::Other(libc::AF_UNIX as u16)));
        assert_eq!(parse(&[0, 0, 0, 0]), Ok(SockAddr::Unspec));
    }

    #[test]
    fn mapped_and_wildcard_unmap() {
        let m: SocketAddr = "[::ffff:198.18.0.1]:80".parse().unwrap();
        assert_eq!(unmap(m), "198.18.0.1:80".parse().unwrap());
        let w: SocketAddr = "[::]:80".parse().unwrap();
        assert_eq!(unmap(w), "0.0.0.0:80".parse().unwrap());
        assert!(is_loopback("::ffff:127.0.0.5".parse().unwrap()));
        assert!(!is_loopback("198.18.0.1".parse().unwrap()));
    }

    #[test]
    fn made_up_ranges_avoid_the_hosts_networks() {
        let n = |s: &str, p| Subnet::new(s.parse().unwrap(), p);
        assert_eq!(made_up_range(&[n("10.0.0.1", 24)]), Some(MADE_UP_RANGES[0]));
        assert_eq!(made_up_range(&[n("198.18.0.1", 15)]), Some(MADE_UP_RANGES[1]));
        assert_eq!(made_up_range(&[n("0.0.0.0", 0)]), None);
        assert!(n("198.19.3.4", 16).contains("198.19.200.1".parse().unwrap()));
        assert_eq!(n("198.19.3.4", 16).to_string(), "198.19.0.0/16");
        assert_eq!(n("1.2.3.4", 32).size(), 1);
    }

    #[test]
    fn app_ips() {
        assert!(check_app_ip("198.18.0.1".parse().unwrap()).is_ok());
        for bad in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"] {
            let e = check_app_ip(bad.parse().unwrap()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--ip {bad} is")), "{e}");
            assert!(e.ends_with(": give a unicast IPv4 address"), "{e}");
            assert_eq!(bad.parse::<VirtualIp>().unwrap_err().to_string(), e);
        }
        assert_eq!(
            check_app_ip("127.0.0.9".parse().unwrap()).unwrap_err().to_string(),
            "--ip 127.0.0.9 is a loopback address (127.0.0.0/8 stays private to each app): give a unicast IPv4 address"
        );
        // Private and shared ranges are fine: ax's own made-up ranges are among them.
        assert!(check_app_ip(MADE_UP_RANGES[1].nth(1)).is_ok());
        assert_eq!("300.1.1.1".parse::<VirtualIp>(), Err(IpError::NotIpv4("300.1.1.1".into())));
        let ip: VirtualIp = "198.18.0.1".parse().unwrap();
        assert_eq!(serde_json::to_string(&ip).unwrap(), "\"198.18.0.1\"");
        assert_eq!(serde_json::from_str::<VirtualIp>("\"198.18.0.1\"").unwrap(), ip);
        assert!(serde_json::from_str::<VirtualIp>("\"0.0.0.0\"").is_err());
    }

    proptest! {
        #[test]
        fn roundtrip_v4(ip in any::<u32>(), port in any::<u16>()) {
            let a = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port));
            prop_assert_eq!(parse(&encode(a, Family::V4)), Ok(SockAddr::Inet(a)));
            // An IPv6 socket reports the same peer v4-mapped, which unmaps back.
            let SockAddr::Inet(m) = parse(&encode(a, Family::V6)).unwrap() else { unreachable!() };
            prop_assert_eq!(unmap(m), a);
        }

        #[test]
        fn roundtrip_v6(o in any::<[u8; 16]>(), port in any::<u16>(), flow in any::<u32>(), scope in any::<u32>()) {
            let a = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), port, flow, scope));
            prop_assert_eq!(parse(&encode(a, Family::V6)), Ok(SockAddr::Inet(a)));
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..140)) {
            let _ = parse(&b);
        }
    }
}
