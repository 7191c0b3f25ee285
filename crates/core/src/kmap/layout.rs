//! The byte layout of every key and value of the kernel driver's maps: the offsets the
//! BPF programs take (as constants), and the encoders and decoders the daemon uses.
//! Every address and port is in network byte order, as the kernel's `bpf_sock_addr`
//! holds them; every other integer is in the host's order, which is little-endian on
//! the hosts the kernel driver runs on (x86_64, aarch64). Padding is zero.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::table::Proto;

/// The class of route entries that hold class-independent answers.
pub const ANY_CLASS: u32 = 0xffff_ffff;

/// Most targets one route entry holds.
pub const MAX_TARGETS: usize = 32;
/// Most groups one route entry holds.
pub const MAX_GROUPS: usize = 8;

/// A value the kernel (or a program) wrote that does not read as what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what}: {got} bytes, not {want}")]
    Size { what: &'static str, got: usize, want: usize },
    #[error("{what}: unknown {field} {value}")]
    Field { what: &'static str, field: &'static str, value: u32 },
}

/// A route entry that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("a route entry holds 1 to {MAX_GROUPS} groups, not {0}")]
    Groups(usize),
    #[error("a route entry holds at most {MAX_TARGETS} targets, not {0}")]
    Targets(usize),
    #[error("a group of a route entry has no target")]
    EmptyGroup,
}

fn proto_byte(p: Proto) -> u8 {
    match p {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    }
}

fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

fn port_at(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn put_addr(b: &mut [u8], ip_off: usize, port_off: usize, a: SocketAddrV4) {
    b[ip_off..ip_off + 4].copy_from_slice(&a.ip().octets());
    b[port_off..port_off + 2].copy_from_slice(&a.port().to_be_bytes());
}

fn sized<const N: usize>(what: &'static str, b: &[u8]) -> Result<[u8; N], DecodeError> {
    b.try_into().map_err(|_| DecodeError::Size { what, got: b.len(), want: N })
}

/// `ax_ksock`: what the programs know of one socket the daemon made for a kernel-driver
/// app (socket local storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockState {
    /// The app's kernel id (never 0).
    pub app: u32,
    /// What getpeername shows: the address the app connected to.
    pub peer: Option<SocketAddrV4>,
    /// What getsockname shows for a socket the daemon bound: the service address.
    pub local: Option<SocketAddrV4>,
    /// The app bound `local`'s port on a wildcard address: getsockname shows the
    /// wildcard while the socket is not connected (closed or listening), as the kernel
    /// does; the connections it accepts (which inherit this state) show `local`.
    pub local_any: bool,
}

impl SockState {
    pub const SIZE: usize = 24;
    pub const APP_OFFSET: usize = 0;
    pub const FLAGS_OFFSET: usize = 4;
    pub const PEER_IP_OFFSET: usize = 8;
    pub const PEER_PORT_OFFSET: usize = 12;
    pub const LOCAL_IP_OFFSET: usize = 16;
    pub const LOCAL_PORT_OFFSET: usize = 20;
    /// `flags`: `peer` holds what getpeername shows.
    pub const PEER_SET: u32 = 1;
    /// `flags`: `local` holds what getsockname shows.
    pub const LOCAL_SET: u32 = 2;
    /// `flags`: `local_any`.
    pub const LOCAL_ANY: u32 = 4;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        let mut flags = 0;
        b[Self::APP_OFFSET..Self::APP_OFFSET + 4].copy_from_slice(&self.app.to_le_bytes());
        if let Some(p) = self.peer {
            flags |= Self::PEER_SET;
            put_addr(&mut b, Self::PEER_IP_OFFSET, Self::PEER_PORT_OFFSET, p);
        }
        if let Some(l) = self.local {
            flags |= Self::LOCAL_SET;
            put_addr(&mut b, Self::LOCAL_IP_OFFSET, Self::LOCAL_PORT_OFFSET, l);
        }
        if self.local_any {
            flags |= Self::LOCAL_ANY;
        }
        b[Self::FLAGS_OFFSET..Self::FLAGS_OFFSET + 4].copy_from_slice(&flags.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SockState, DecodeError> {
        let b = &sized::<{ Self::SIZE }>("socket state", b)?;
        let flags = u32_at(b, Self::FLAGS_OFFSET);
        if flags & !(Self::PEER_SET | Self::LOCAL_SET | Self::LOCAL_ANY) != 0 {
            return Err(DecodeError::Field { what: "socket state", field: "flags", value: flags });
        }
        let addr = |set, ip, port| (flags & set != 0).then(|| SocketAddrV4::new(ip_at(b, ip), port_at(b, port)));
        Ok(SockState {
            app: u32_at(b, Self::APP_OFFSET),
            peer: addr(Self::PEER_SET, Self::PEER_IP_OFFSET, Self::PEER_PORT_OFFSET),
            local: addr(Self::LOCAL_SET, Self::LOCAL_IP_OFFSET, Self::LOCAL_PORT_OFFSET),
            local_any: flags & Self::LOCAL_ANY != 0,
        })
    }
}

/// `ax_kapps` value: one kernel-driver app (the key is its kernel id, a u32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppEntry {
    /// The app's virtual address.
    pub ip: Ipv4Addr,
    /// Its label class: the routes it sees are the ones of this class.
    pub class: u32,
}

impl AppEntry {
    pub const SIZE: usize = 8;
    pub const IP_OFFSET: usize = 0;
    pub const CLASS_OFFSET: usize = 4;
    /// Most entries of `ax_kapps`.
    pub const MAX_ENTRIES: u32 = 4096;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[Self::IP_OFFSET..Self::IP_OFFSET + 4].copy_from_slice(&self.ip.octets());
        b[Self::CLASS_OFFSET..Self::CLASS_OFFSET + 4].copy_from_slice(&self.class.to_le_bytes());
        b
    }

    /// The key of an app's entry.
    pub fn key(app: u32) -> [u8; 4] {
        app.to_le_bytes()
    }
}

/// `ax_kroutes` key: a destination as one class of apps sees it (port 0: every port of
/// the address, for [`ANY_CLASS`] entries only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub class: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl RouteKey {
    pub const SIZE: usize = 12;
    pub const CLASS_OFFSET: usize = 0;
    pub const IP_OFFSET: usize = 4;
    pub const PORT_OFFSET: usize = 8;
    pub const PROTO_OFFSET: usize = 10;
    /// Most entries of `ax_kroutes` (allocated as written, not up front).
    pub const MAX_ENTRIES: u32 = 131_072;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[Self::CLASS_OFFSET..Self::CLASS_OFFSET + 4].copy_from_slice(&self.class.to_le_bytes());
        put_addr(&mut b, Self::IP_OFFSET, Self::PORT_OFFSET, SocketAddrV4::new(self.ip, self.port));
        b[Self::PROTO_OFFSET] = proto_byte(self.proto);
        b
    }
}

/// What a connect to a route entry's destination does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Verdict {
    /// ECONNREFUSED, and no packet leaves.
    Refuse = 0,
    /// To one of the entry's targets.
    Backends = 1,
    /// To the destination as it is.
    Pass = 2,
    /// To the daemon's broker, which carries the connection on.
    Broker = 3,
}

/// How a BACKENDS entry picks its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Lb {
    Random = 0,
    RoundRobin = 1,
}

/// `ax_kroutes` value. Build it with [`Route::refuse`], [`Route::pass`] or
/// [`Route::backends`], which keep it within what the layout holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    verdict: Verdict,
    lb: Lb,
    /// Connect from this address (a vservice's `source_ip`).
    source: Option<Ipv4Addr>,
    /// BACKENDS: groups in the balancer's order, each the targets it picks among.
    groups: Vec<Vec<SocketAddrV4>>,
}

impl Route {
    pub const SIZE: usize = 288;
    pub const VERDICT_OFFSET: usize = 0;
    pub const LB_OFFSET: usize = 1;
    pub const NGROUPS_OFFSET: usize = 2;
    /// The round-robin counter (u32), which the program increments atomically.
    pub const RR_OFFSET: usize = 4;
    pub const SOURCE_IP_OFFSET: usize = 8;
    /// `groups[8]`, each (start u8, len u8) into `targets`.
    pub const GROUPS_OFFSET: usize = 16;
    pub const GROUP_SIZE: usize = 2;
    /// `targets[32]`, each (ip be32, port be16, pad u16).
    pub const TARGETS_OFFSET: usize = 32;
    pub const TARGET_SIZE: usize = 8;
    /// Within a target.
    pub const TARGET_IP_OFFSET: usize = 0;
    pub const TARGET_PORT_OFFSET: usize = 4;

    pub fn refuse() -> Route {
        Route { verdict: Verdict::Refuse, lb: Lb::Random, source: None, groups: Vec::new() }
    }

    pub fn pass() -> Route {
        Route { verdict: Verdict::Pass, lb: Lb::Random, source: None, groups: Vec::new() }
    }

    pub fn broker() -> Route {
        Route { verdict: Verdict::Broker, lb: Lb::Random, source: None, groups: Vec::new() }
    }

    /// To one target of one group: the group by `lb`, the target within it at random.
    pub fn backends(lb: Lb, source: Option<Ipv4Addr>, groups: Vec<Vec<SocketAddrV4>>) -> Result<Route, RouteError> {
        if groups.is_empty() || groups.len() > MAX_GROUPS {
            return Err(RouteError::Groups(groups.len()));
        }
        if groups.iter().any(|g| g.is_empty()) {
            return Err(RouteError::EmptyGroup);
        }
        let n = groups.iter().map(Vec::len).sum();
        if n > MAX_TARGETS {
            return Err(RouteError::Targets(n));
        }
        Ok(Route { verdict: Verdict::Backends, lb, source, groups })
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    pub fn lb(&self) -> Lb {
        self.lb
    }

    pub fn source(&self) -> Option<Ipv4Addr> {
        self.source
    }

    pub fn groups(&self) -> &[Vec<SocketAddrV4>] {
        &self.groups
    }

    /// Every address a connect through this entry may reach.
    pub fn targets(&self) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.groups.iter().flatten().copied()
    }

    /// The target every datagram of the socket whose cookie is `cookie` goes to (the
    /// sendmsg programs' choice; a BACKENDS entry): group `cookie % ngroups`, in it
    /// target `cookie / ngroups % len`. One socket keeps one backend, so replies make
    /// sense, and sockets spread over the groups and their targets.
    pub fn pinned(&self, cookie: u64) -> Option<SocketAddrV4> {
        let n = self.groups.len() as u64;
        let group = self.groups.get(usize::try_from(cookie.checked_rem(n)?).ok()?)?;
        group.get(((cookie / n) % group.len() as u64) as usize).copied()
    }

    /// The entry with its round-robin counter at 0.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[Self::VERDICT_OFFSET] = self.verdict as u8;
        b[Self::LB_OFFSET] = self.lb as u8;
        // Both bounded by the constructors (8 and 32).
        b[Self::NGROUPS_OFFSET] = self.groups.len() as u8;
        if let Some(ip) = self.source {
            b[Self::SOURCE_IP_OFFSET..Self::SOURCE_IP_OFFSET + 4].copy_from_slice(&ip.octets());
        }
        let mut start = 0;
        for (g, group) in self.groups.iter().enumerate() {
            let at = Self::GROUPS_OFFSET + g * Self::GROUP_SIZE;
            b[at] = start as u8;
            b[at + 1] = group.len() as u8;
            for (i, t) in group.iter().enumerate() {
                let at = Self::TARGETS_OFFSET + (start + i) * Self::TARGET_SIZE;
                put_addr(&mut b, at + Self::TARGET_IP_OFFSET, at + Self::TARGET_PORT_OFFSET, *t);
            }
            start += group.len();
        }
        b
    }
}

/// `ax_kconf`'s one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub node_ip: Ipv4Addr,
    /// Where BROKER connects go.
    pub broker: SocketAddrV4,
    /// Outside TCP destinations go through the broker (and from there through an egress
    /// gateway).
    pub egress: bool,
    /// The route entries hold everything the table wants. False (as in a config never
    /// written): a connect that no entry of its own (class or every class, exact port)
    /// decides is refused, since a missing entry may be a refusal that did not fit.
    pub complete: bool,
    /// This node's pool of host ports, at most [`Config::POOL_RANGES`] inclusive
    /// ranges (a pool of more is cut to that many, the last spanning the rest): a
    /// connect to one of them at the node address without an entry of its own is
    /// refused, so a row is never reachable before its entries are written.
    pub pool: [(u16, u16); Config::POOL_RANGES],
}

impl Config {
    pub const SIZE: usize = 32;
    pub const NODE_IP_OFFSET: usize = 0;
    pub const BROKER_IP_OFFSET: usize = 4;
    pub const BROKER_PORT_OFFSET: usize = 8;
    pub const EGRESS_OFFSET: usize = 10;
    pub const COMPLETE_OFFSET: usize = 11;
    /// `pool[4]`, each (first u16, last u16) in the host's order; (0, 0) is unused
    /// (port 0 is never a destination).
    pub const POOL_OFFSET: usize = 16;
    pub const POOL_RANGE_SIZE: usize = 4;
    pub const POOL_RANGES: usize = 4;

    /// A config over `pool`, with the maps complete.
    pub fn new(node_ip: Ipv4Addr, broker: SocketAddrV4, egress: bool, pool: &crate::ports::PortRanges) -> Config {
        let mut ranges = [(0, 0); Config::POOL_RANGES];
        for (i, r) in pool.ranges().enumerate() {
            let slot = i.min(Config::POOL_RANGES - 1);
            let first = if i < Config::POOL_RANGES { *r.start() } else { ranges[slot].0 };
            ranges[slot] = (first, *r.end());
        }
        Config { node_ip, broker, egress, complete: true, pool: ranges }
    }

    /// True when `port` is in this node's pool (as the programs test it).
    pub fn in_pool(&self, port: u16) -> bool {
        port != 0 && self.pool.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[Self::NODE_IP_OFFSET..Self::NODE_IP_OFFSET + 4].copy_from_slice(&self.node_ip.octets());
        put_addr(&mut b, Self::BROKER_IP_OFFSET, Self::BROKER_PORT_OFFSET, self.broker);
        b[Self::EGRESS_OFFSET] = u8::from(self.egress);
        b[Self::COMPLETE_OFFSET] = u8::from(self.complete);
        for (i, (lo, hi)) in self.pool.iter().enumerate() {
            let at = Self::POOL_OFFSET + i * Self::POOL_RANGE_SIZE;
            b[at..at + 2].copy_from_slice(&lo.to_le_bytes());
            b[at + 2..at + 4].copy_from_slice(&hi.to_le_bytes());
        }
        b
    }
}

/// `ax_kprivate` key: the app has a private (loopback) listener on `port` in its own
/// namespace. The value is a u32 1 ([`PrivateKey::VALUE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrivateKey {
    pub app: u32,
    pub port: u16,
    pub proto: Proto,
}

impl PrivateKey {
    pub const SIZE: usize = 8;
    pub const APP_OFFSET: usize = 0;
    pub const PORT_OFFSET: usize = 4;
    pub const PROTO_OFFSET: usize = 6;
    pub const MAX_ENTRIES: u32 = 16384;
    pub const VALUE: [u8; 4] = 1u32.to_le_bytes();

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[Self::APP_OFFSET..Self::APP_OFFSET + 4].copy_from_slice(&self.app.to_le_bytes());
        b[Self::PORT_OFFSET..Self::PORT_OFFSET + 2].copy_from_slice(&self.port.to_be_bytes());
        b[Self::PROTO_OFFSET] = proto_byte(self.proto);
        b
    }
}

/// `ax_kpeers`: a UDP row's host address (the key) and its service address (the
/// value), both this 8-byte layout: the recvmsg programs show a datagram from a row's
/// host address as coming from its service, as the user driver's receive does
/// (`Table::peer_name`).
pub struct Peer;

impl Peer {
    pub const SIZE: usize = 8;
    pub const IP_OFFSET: usize = 0;
    pub const PORT_OFFSET: usize = 4;
    pub const MAX_ENTRIES: u32 = 131_072;

    pub fn encode(a: SocketAddrV4) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_addr(&mut b, Self::IP_OFFSET, Self::PORT_OFFSET, a);
        b
    }
}

/// What the broker does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BrokerKind {
    /// To the app's own loopback listener.
    Loopback = 1,
    /// Out through the egress gateway.
    Egress = 2,
}

/// `ax_kbroker` value (the key is the app socket's cookie, a u64): where a connect the
/// program sent to the broker was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerEntry {
    pub app: u32,
    pub dest: SocketAddrV4,
    pub kind: BrokerKind,
}

impl BrokerEntry {
    pub const SIZE: usize = 12;
    pub const APP_OFFSET: usize = 0;
    pub const DEST_IP_OFFSET: usize = 4;
    pub const DEST_PORT_OFFSET: usize = 8;
    pub const KIND_OFFSET: usize = 10;
    pub const MAX_ENTRIES: u32 = 16384;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[Self::APP_OFFSET..Self::APP_OFFSET + 4].copy_from_slice(&self.app.to_le_bytes());
        put_addr(&mut b, Self::DEST_IP_OFFSET, Self::DEST_PORT_OFFSET, self.dest);
        b[Self::KIND_OFFSET] = self.kind as u8;
        b
    }

    pub fn decode(b: &[u8]) -> Result<BrokerEntry, DecodeError> {
        let b = &sized::<{ Self::SIZE }>("broker entry", b)?;
        let kind = match b[Self::KIND_OFFSET] {
            1 => BrokerKind::Loopback,
            2 => BrokerKind::Egress,
            k => return Err(DecodeError::Field { what: "broker entry", field: "kind", value: k.into() }),
        };
        Ok(BrokerEntry {
            app: u32_at(b, Self::APP_OFFSET),
            dest: SocketAddrV4::new(ip_at(b, Self::DEST_IP_OFFSET), port_at(b, Self::DEST_PORT_OFFSET)),
            kind,
        })
    }
}

/// `ax_kconnects` and `ax_kconnports` (one value per CPU each): the connects the
/// connect programs decided by a route entry, allowed (BACKENDS) and denied (REFUSE),
/// under the entry's address, port and protocol, or, for an entry of every port of an
/// address (port 0), under the port the app named. The key is 8 bytes, the value two
/// u64s (native order), allowed then denied.
pub struct ConnectCount;

impl ConnectCount {
    pub const KEY_SIZE: usize = 8;
    pub const IP_OFFSET: usize = 0;
    pub const PORT_OFFSET: usize = 4;
    pub const PROTO_OFFSET: usize = 6;
    pub const VALUE_SIZE: usize = 16;
    pub const ALLOWED_OFFSET: usize = 0;
    pub const DENIED_OFFSET: usize = 8;
    /// Keys each map counts at once (least recently counted ones make room for new
    /// ones; the maps hold a value per CPU, allocated up front).
    pub const MAX_ENTRIES: u32 = 4096;

    pub fn decode_key(b: &[u8]) -> Result<(Proto, SocketAddrV4), DecodeError> {
        let b = &sized::<{ Self::KEY_SIZE }>("connect count key", b)?;
        let proto = match i32::from(b[Self::PROTO_OFFSET]) {
            libc::IPPROTO_TCP => Proto::Tcp,
            libc::IPPROTO_UDP => Proto::Udp,
            p => return Err(DecodeError::Field { what: "connect count key", field: "protocol", value: p as u32 }),
        };
        Ok((proto, SocketAddrV4::new(ip_at(b, Self::IP_OFFSET), port_at(b, Self::PORT_OFFSET))))
    }

    /// One CPU's value: (allowed, denied).
    pub fn decode_value(b: &[u8]) -> Result<(u64, u64), DecodeError> {
        let b = &sized::<{ Self::VALUE_SIZE }>("connect count", b)?;
        let at = |off: usize| u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"));
        Ok((at(Self::ALLOWED_OFFSET), at(Self::DENIED_OFFSET)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::kmap) fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    pub(in crate::kmap) fn config() -> Config {
        let pool = crate::ports::PortRanges::parse("40000-40999").unwrap();
        Config::new("10.0.0.1".parse().unwrap(), v4("10.0.0.1:40100"), true, &pool)
    }

    #[test]
    fn sock_state_is_laid_out_as_the_programs_read_it() {
        let s = SockState { app: 0xf000_0001, peer: Some(v4("198.18.0.1:80")), local: None, local_any: false };
        let b = s.encode();
        assert_eq!(&b[0..4], &[0x01, 0, 0, 0xf0]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[8..12], &[198, 18, 0, 1]);
        assert_eq!(&b[12..14], &[0, 80]);
        assert!(b[14..].iter().all(|x| *x == 0));
        assert_eq!(SockState::decode(&b), Ok(s));
        let bound = SockState { app: 7, peer: None, local: Some(v4("198.18.0.2:8080")), local_any: false };
        let b = bound.encode();
        assert_eq!(&b[4..8], &[2, 0, 0, 0]);
        assert_eq!(&b[16..22], &[198, 18, 0, 2, 0x1f, 0x90]);
        assert_eq!(SockState::decode(&b), Ok(bound));
        let fresh = SockState { app: 7, peer: None, local: None, local_any: false };
        assert_eq!(SockState::decode(&fresh.encode()), Ok(fresh));
        let wildcard = SockState { local_any: true, ..bound };
        let b = wildcard.encode();
        assert_eq!(&b[4..8], &[6, 0, 0, 0]);
        assert_eq!(SockState::decode(&b), Ok(wildcard));
    }

    #[test]
    fn decoding_refuses_what_no_writer_writes() {
        let mut b = SockState { app: 7, peer: None, local: None, local_any: false }.encode();
        b[4] = 8;
        assert!(matches!(SockState::decode(&b), Err(DecodeError::Field { field: "flags", value: 8, .. })));
        assert!(matches!(SockState::decode(&b[..20]), Err(DecodeError::Size { got: 20, want: 24, .. })));
        let mut e = BrokerEntry { app: 1, dest: v4("127.0.0.1:5000"), kind: BrokerKind::Loopback }.encode();
        e[10] = 3;
        assert!(matches!(BrokerEntry::decode(&e), Err(DecodeError::Field { field: "kind", value: 3, .. })));
        assert!(BrokerEntry::decode(&[0; 13]).is_err());
    }

    #[test]
    fn broker_entries_round_trip() {
        for kind in [BrokerKind::Loopback, BrokerKind::Egress] {
            let e = BrokerEntry { app: 0xabcd_0123, dest: v4("192.0.2.1:443"), kind };
            let b = e.encode();
            assert_eq!(&b[4..10], &[192, 0, 2, 1, 0x01, 0xbb]);
            assert_eq!(b[10], kind as u8);
            assert_eq!(b[11], 0);
            assert_eq!(BrokerEntry::decode(&b), Ok(e));
        }
    }

    #[test]
    fn keys_apps_config_and_private_entries() {
        let k = RouteKey { class: ANY_CLASS, ip: "198.18.0.1".parse().unwrap(), port: 80, proto: Proto::Udp };
        assert_eq!(k.encode(), [0xff, 0xff, 0xff, 0xff, 198, 18, 0, 1, 0, 80, 17, 0]);
        let k = RouteKey { class: 3, ip: "10.0.0.1".parse().unwrap(), port: 0, proto: Proto::Tcp };
        assert_eq!(k.encode(), [3, 0, 0, 0, 10, 0, 0, 1, 0, 0, 6, 0]);
        let a = AppEntry { ip: "198.18.0.9".parse().unwrap(), class: 0x0102 };
        assert_eq!(a.encode(), [198, 18, 0, 9, 2, 1, 0, 0]);
        assert_eq!(AppEntry::key(0xf000_0001), [1, 0, 0, 0xf0]);
        let c = config().encode();
        assert_eq!(c[..16], [10, 0, 0, 1, 10, 0, 0, 1, 0x9c, 0xa4, 1, 1, 0, 0, 0, 0]);
        // The pool 40000-40999 in the host's order, the other ranges unused.
        assert_eq!(c[16..], [0x40, 0x9c, 0x27, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let incomplete = Config { complete: false, ..config() };
        assert_eq!(incomplete.encode()[Config::COMPLETE_OFFSET], 0);
        let p = PrivateKey { app: 2, port: 6379, proto: Proto::Tcp };
        assert_eq!(p.encode(), [2, 0, 0, 0, 0x18, 0xeb, 6, 0]);
        assert_eq!(PrivateKey::VALUE, [1, 0, 0, 0]);
    }

    #[test]
    fn routes_are_laid_out_as_groups_into_targets() {
        let r = Route::backends(
            Lb::RoundRobin,
            Some("192.0.2.99".parse().unwrap()),
            vec![vec![v4("10.0.0.1:40000"), v4("10.0.0.2:40001")], vec![v4("10.0.0.3:40002")]],
        )
        .unwrap();
        let b = r.encode();
        assert_eq!(&b[0..4], &[1, 1, 2, 0]);
        assert_eq!(&b[4..8], &[0; 4], "the round-robin counter starts at 0");
        assert_eq!(&b[8..12], &[192, 0, 2, 99]);
        assert_eq!(&b[16..20], &[0, 2, 2, 1]);
        assert!(b[20..32].iter().all(|x| *x == 0));
        assert_eq!(&b[32..40], &[10, 0, 0, 1, 0x9c, 0x40, 0, 0]);
        assert_eq!(&b[40..48], &[10, 0, 0, 2, 0x9c, 0x41, 0, 0]);
        assert_eq!(&b[48..56], &[10, 0, 0, 3, 0x9c, 0x42, 0, 0]);
        assert!(b[56..].iter().all(|x| *x == 0));
        assert_eq!(&Route::refuse().encode()[..4], &[0, 0, 0, 0]);
        assert_eq!(&Route::pass().encode()[..4], &[2, 0, 0, 0]);
        assert_eq!(&Route::broker().encode()[..4], &[3, 0, 0, 0]);
        assert!(Route::pass().encode()[4..].iter().all(|x| *x == 0));
    }

    #[test]
    fn a_route_holds_only_what_the_layout_holds() {
        let t = |n: usize| (0..n).map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), i as u16 + 1)).collect();
        assert_eq!(Route::backends(Lb::Random, None, vec![]), Err(RouteError::Groups(0)));
        assert_eq!(Route::backends(Lb::Random, None, vec![vec![]]), Err(RouteError::EmptyGroup));
        assert_eq!(Route::backends(Lb::Random, None, vec![t(33)]), Err(RouteError::Targets(33)));
        assert_eq!(Route::backends(Lb::Random, None, vec![t(1); 9]), Err(RouteError::Groups(9)));
        let full = Route::backends(Lb::Random, None, vec![t(4); 8]).unwrap();
        assert_eq!(full.targets().count(), 32);
        let b = full.encode();
        assert_eq!(&b[16 + 7 * 2..16 + 8 * 2], &[28, 4]);
        assert_eq!(&b[280..286], &[10, 0, 0, 1, 0, 4]);
    }

    #[test]
    fn a_datagram_socket_is_pinned_to_one_target_and_sockets_spread_over_all() {
        let (a, b, c) = (v4("10.0.0.1:1"), v4("10.0.0.1:2"), v4("10.0.0.2:1"));
        let r = Route::backends(Lb::RoundRobin, None, vec![vec![a, b], vec![c]]).unwrap();
        // Group cookie % 2, then target cookie / 2 % len.
        let got: Vec<SocketAddrV4> = (0..4).map(|cookie| r.pinned(cookie).unwrap()).collect();
        assert_eq!(got, [a, c, b, c]);
        assert_eq!(r.pinned(u64::MAX), Some(c));
        assert_eq!(Route::refuse().pinned(3), None);
    }

    #[test]
    fn connect_counts_read_as_the_connect_programs_write_them() {
        // 198.18.0.1:80 (port big-endian), TCP, padding.
        let key = [198, 18, 0, 1, 0, 80, 6, 0];
        assert_eq!(ConnectCount::decode_key(&key), Ok((Proto::Tcp, v4("198.18.0.1:80"))));
        assert_eq!(ConnectCount::decode_key(&[198, 18, 0, 1, 0, 53, 17, 0]), Ok((Proto::Udp, v4("198.18.0.1:53"))));
        assert!(ConnectCount::decode_key(&[198, 18, 0, 1, 0, 80, 1, 0]).is_err());
        assert!(ConnectCount::decode_key(&key[..7]).is_err());
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&7u64.to_ne_bytes());
        value[8..].copy_from_slice(&2u64.to_ne_bytes());
        assert_eq!(ConnectCount::decode_value(&value), Ok((7, 2)));
        assert!(ConnectCount::decode_value(&value[..8]).is_err());
    }
}
