//! The sockets apps bound, each on a host port of the node address, and the service
//! rows they make once they listen; the pool those host ports come from; and the sweep
//! that drops rows whose socket the kernel no longer has. Which app may reach a row is
//! decided in [`super::routing`], not here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};

use crate::addr::{self, Family};
use crate::ids::AppId;
use crate::ports::PortPool;

use super::Proto;

/// A socket an app bound to a virtual address, and where it really is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    pub id: String,
    pub app: AppId,
    pub inode: u64,
    pub proto: Proto,
    pub family: Family,
    /// The address the app passed to bind, as it passed it.
    pub requested: SocketAddr,
    /// File status flags of the socket when it was bound (O_NONBLOCK and the like).
    pub flags: i32,
    /// The address clients use: the app's own address for a wildcard bind.
    pub service: SocketAddrV4,
    /// Node address and pool port.
    pub host: SocketAddrV4,
    pub listening: bool,
    pub backlog: i32,
    /// The table's change count when this row last changed (see [`super::Table::mark`]).
    pub changed: u64,
    /// Listings of the kernel's sockets in a row that did not show this one.
    pub missed: u8,
}

impl Binding {
    /// True when the app bound a wildcard address (`0.0.0.0`, `::`, `::ffff:0.0.0.0`).
    pub fn binds_wildcard(&self) -> bool {
        addr::unmap(self.requested).ip().is_unspecified()
    }
}

/// How many listings in a row must miss a socket before its row goes.
pub const SWEEP_MISSES: u8 = 2;

/// The facts about a socket being bound that the table records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundSocket {
    pub inode: u64,
    pub proto: Proto,
    pub family: Family,
    pub requested: SocketAddr,
    pub flags: i32,
}

/// The bound sockets by protocol and host port, and the pool. A pool port is taken
/// exactly while a row holds it or a bind in flight has it; every way a row goes gives
/// its port back.
#[derive(Debug)]
pub(super) struct Services {
    bindings: BTreeMap<(Proto, u16), Binding>,
    pool: PortPool,
    /// Counts changes to rows, for [`Services::sweep`]'s mark.
    changes: u64,
    /// The listening rows' host ports by service: one lookup per service, however
    /// many rows the table has.
    by_service: HashMap<(Proto, SocketAddrV4), BTreeSet<u16>>,
}

impl Services {
    pub(super) fn new(pool: PortPool) -> Services {
        Services { bindings: BTreeMap::new(), pool, changes: 0, by_service: HashMap::new() }
    }

    pub(super) fn pool(&self) -> &PortPool {
        &self.pool
    }

    pub(super) fn take_port(&mut self) -> Option<u16> {
        self.pool.take()
    }

    pub(super) fn give_back_port(&mut self, port: u16) {
        self.pool.give_back(port);
    }

    /// Records a socket bound at `host`. A bind to port 0 is reported as the host port.
    pub(super) fn add(
        &mut self,
        id: String,
        app: AppId,
        socket: BoundSocket,
        service: SocketAddrV4,
        host: SocketAddrV4,
    ) -> Binding {
        let service = if service.port() == 0 { SocketAddrV4::new(*service.ip(), host.port()) } else { service };
        let b = Binding {
            id,
            app,
            inode: socket.inode,
            proto: socket.proto,
            family: socket.family,
            requested: socket.requested,
            flags: socket.flags,
            service,
            host,
            listening: false,
            backlog: 0,
            changed: self.next_change(),
            missed: 0,
        };
        self.bindings.insert((socket.proto, host.port()), b.clone());
        b
    }

    /// Takes back rows an earlier daemon recorded, for apps `known` says are back too;
    /// their pool ports are then not handed out again.
    pub(super) fn restore(&mut self, bindings: Vec<Binding>, known: impl Fn(AppId) -> bool) {
        for mut b in bindings.into_iter().filter(|b| known(b.app)) {
            self.pool.reserve(b.host.port());
            b.changed = self.next_change();
            if b.listening {
                self.by_service.entry((b.proto, b.service)).or_default().insert(b.host.port());
            }
            self.bindings.insert((b.proto, b.host.port()), b);
        }
    }

    pub(super) fn get(&self, proto: Proto, host_port: u16) -> Option<&Binding> {
        self.bindings.get(&(proto, host_port))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// Listening sockets: the rows of the service table.
    pub(super) fn rows(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values().filter(|b| b.listening)
    }

    /// The rows serving `service` over `proto`.
    pub(super) fn rows_at(&self, proto: Proto, service: SocketAddrV4) -> impl Iterator<Item = &Binding> {
        let ports = self.by_service.get(&(proto, service)).into_iter().flatten();
        ports.filter_map(move |p| self.bindings.get(&(proto, *p)))
    }

    /// The row at `host`, if one listens there.
    pub(super) fn row_at_host(&self, proto: Proto, host: SocketAddrV4) -> Option<&Binding> {
        self.get(proto, host.port()).filter(|b| b.listening && b.host == host)
    }

    /// The service of the row at `host`, if one listens there.
    pub(super) fn service_of_host(&self, proto: Proto, host: SocketAddrV4) -> Option<SocketAddrV4> {
        self.row_at_host(proto, host).map(|b| b.service)
    }

    /// True when `app` holds a socket on `host_port` (of either protocol).
    pub(super) fn holds(&self, app: AppId, host_port: u16) -> bool {
        self.bindings.values().any(|b| b.app == app && b.host.port() == host_port)
    }

    pub(super) fn pool_ports_held(&self, app: AppId) -> usize {
        self.bindings.values().filter(|b| b.app == app && self.pool.ranges().contains(b.host.port())).count()
    }

    /// Marks the socket at `host_port` (whose inode must match) as listening.
    pub(super) fn set_listening(&mut self, proto: Proto, host_port: u16, inode: u64, backlog: i32) -> Option<&Binding> {
        let changed = self.next_change();
        let b = self.bindings.get_mut(&(proto, host_port)).filter(|b| b.inode == inode)?;
        b.changed = changed;
        b.listening = true;
        b.backlog = backlog;
        self.by_service.entry((proto, b.service)).or_default().insert(host_port);
        Some(b)
    }

    /// Removes every socket `app` bound.
    pub(super) fn remove_app(&mut self, app: AppId) -> Vec<Binding> {
        let keys: Vec<_> = self.bindings.iter().filter(|(_, b)| b.app == app).map(|(k, _)| *k).collect();
        keys.into_iter().filter_map(|k| self.remove(k)).collect()
    }

    fn remove(&mut self, key: (Proto, u16)) -> Option<Binding> {
        let b = self.bindings.remove(&key)?;
        if let Some(ports) = self.by_service.get_mut(&(b.proto, b.service)) {
            ports.remove(&key.1);
            if ports.is_empty() {
                self.by_service.remove(&(b.proto, b.service));
            }
        }
        self.pool.give_back(key.1);
        Some(b)
    }

    /// See [`super::Table::sweep`].
    pub(super) fn sweep(
        &mut self,
        proto: Proto,
        listening: &HashSet<u64>,
        bound: Option<&HashSet<u64>>,
        mark: u64,
    ) -> Vec<Binding> {
        let mut dead = Vec::new();
        for (k, b) in self.bindings.iter_mut().filter(|(k, b)| k.0 == proto && b.changed <= mark) {
            let live = match (b.listening, bound) {
                (true, _) => listening,
                (false, Some(bound)) => bound,
                (false, None) => continue,
            };
            if live.contains(&b.inode) {
                b.missed = 0;
            } else {
                b.missed += 1;
                if b.missed >= SWEEP_MISSES {
                    dead.push(*k);
                }
            }
        }
        dead.into_iter().filter_map(|k| self.remove(k)).collect()
    }

    pub(super) fn has_unlistened(&self, proto: Proto) -> bool {
        self.bindings.values().any(|b| b.proto == proto && !b.listening)
    }

    pub(super) fn mark(&self) -> u64 {
        self.changes
    }

    fn next_change(&mut self) -> u64 {
        self.changes += 1;
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortRanges;
    use crate::table::testing::{app, bound, sa, serve, table};
    use crate::table::Route;
    use std::net::Ipv4Addr;

    const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const A: AppId = AppId(0xf000_0001);
    const B: AppId = AppId(0xf000_0002);

    fn services() -> Services {
        Services::new(PortPool::new(PortRanges::parse("40000-40002").unwrap()))
    }

    fn socket(inode: u64, proto: Proto) -> BoundSocket {
        BoundSocket { inode, proto, family: Family::V4, requested: "0.0.0.0:53".parse().unwrap(), flags: 0 }
    }

    /// Binds like the trap engine does: a pool port, then the row.
    fn bind(s: &mut Services, app: AppId, inode: u64, proto: Proto) -> u16 {
        let port = s.take_port().unwrap();
        let service = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 53);
        s.add(format!("b{inode}"), app, socket(inode, proto), service, SocketAddrV4::new(NODE, port));
        port
    }

    #[test]
    fn pool_ports_come_back_on_every_way_a_row_goes() {
        let mut s = services();
        // A bind that failed on the host gives its port back itself.
        let p = s.take_port().unwrap();
        s.give_back_port(p);
        assert_eq!(s.pool().in_use(), 0);
        // The app goes: its rows of both protocols go with it.
        bind(&mut s, A, 1, Proto::Tcp);
        bind(&mut s, A, 2, Proto::Udp);
        let other = bind(&mut s, B, 3, Proto::Tcp);
        assert_eq!(s.take_port(), None, "the pool is exhausted");
        assert_eq!((s.pool_ports_held(A), s.pool_ports_held(B)), (2, 1));
        // A socket on an exposed port (outside the pool) is not counted.
        s.add("x".into(), A, socket(9, Proto::Tcp), SocketAddrV4::new(NODE, 80), SocketAddrV4::new(NODE, 8080));
        assert_eq!(s.pool_ports_held(A), 2);
        assert_eq!(s.remove_app(A).len(), 3);
        assert_eq!((s.pool_ports_held(A), s.pool_ports_held(B)), (0, 1));
        assert_eq!(s.pool().in_use(), 1);
        // The sweep drops the last one.
        for _ in 0..SWEEP_MISSES {
            s.sweep(Proto::Tcp, &HashSet::new(), Some(&HashSet::new()), s.mark());
        }
        assert!(s.get(Proto::Tcp, other).is_none());
        assert_eq!(s.pool().in_use(), 0);
        assert_eq!(s.pool_ports_held(B), 0);
        // A restored row takes its port again; one of an app not back does not.
        let mut old = services();
        let kept = bind(&mut old, B, 4, Proto::Tcp);
        bind(&mut old, A, 5, Proto::Tcp);
        let mut fresh = services();
        fresh.restore(old.iter().cloned().collect(), |app| app == B);
        assert_eq!(fresh.iter().map(|b| b.host.port()).collect::<Vec<_>>(), [kept]);
        assert_eq!(fresh.pool().in_use(), 1);
        assert_eq!((fresh.take_port(), fresh.take_port(), fresh.take_port()), (Some(40001), Some(40002), None));
    }

    #[test]
    fn udp_rows_are_swept_only_by_udp_listings() {
        let mut s = services();
        let udp = bind(&mut s, A, 1, Proto::Udp);
        let tcp = bind(&mut s, A, 2, Proto::Tcp);
        let none = HashSet::new();
        // A UDP socket never listens: it is judged against the bound listing, and
        // without one it is not judged at all.
        assert!(s.has_unlistened(Proto::Udp));
        for _ in 0..3 {
            assert!(s.sweep(Proto::Udp, &none, None, s.mark()).is_empty());
        }
        let bound = HashSet::from([1]);
        assert!(s.sweep(Proto::Udp, &none, Some(&bound), s.mark()).is_empty());
        assert!(s.sweep(Proto::Udp, &none, Some(&none), s.mark()).is_empty(), "one miss is not enough");
        let gone = s.sweep(Proto::Udp, &none, Some(&none), s.mark());
        assert_eq!(gone.iter().map(|b| b.host.port()).collect::<Vec<_>>(), [udp]);
        // The TCP row on its own port was never judged by the UDP listings.
        assert_eq!(s.get(Proto::Tcp, tcp).unwrap().missed, 0);
        assert_eq!(s.pool().in_use(), 1);
    }

    #[test]
    fn a_port_zero_bind_shows_the_host_port_and_rows_need_listening() {
        let mut s = services();
        let port = s.take_port().unwrap();
        let service = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 0);
        let host = SocketAddrV4::new(NODE, port);
        let b = s.add("b".into(), A, socket(7, Proto::Tcp), service, host);
        assert_eq!(b.service.port(), port);
        assert_eq!(s.rows().count(), 0);
        assert_eq!(s.service_of_host(Proto::Tcp, host), None, "not listening yet");
        let before = s.mark();
        assert!(s.set_listening(Proto::Tcp, port, 8, 1).is_none(), "another socket's inode");
        assert!(s.set_listening(Proto::Udp, port, 7, 1).is_none(), "another protocol");
        assert_eq!(s.set_listening(Proto::Tcp, port, 7, 16).unwrap().backlog, 16);
        assert!(s.mark() > before);
        assert_eq!(s.rows_at(Proto::Tcp, b.service).count(), 1);
        assert_eq!(s.service_of_host(Proto::Tcp, host), Some(b.service));
        // The same port on another node address is not this row.
        assert_eq!(s.service_of_host(Proto::Tcp, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port)), None);
        assert!(s.holds(A, port) && !s.holds(B, port));
    }

    #[test]
    fn closed_listener_and_exited_app_leave() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        serve(&mut t, s, "0.0.0.0:80", 1);
        serve(&mut t, s, "0.0.0.0:81", 2);
        let live = HashSet::from([2]);
        assert!(t.sweep(Proto::Tcp, &live, None, t.mark()).is_empty(), "one miss is not enough");
        let gone = t.sweep(Proto::Tcp, &live, None, t.mark());
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].service, "198.18.0.1:80".parse().unwrap());
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.0.1:80")), Route::Refused);
        let (_, gone) = t.remove_app(s).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(t.services().count(), 0);
        assert_eq!(t.pool().in_use(), 0);
        // With its app gone the address is no longer virtual: it would go direct.
        assert!(!t.is_virtual("198.18.0.1".parse().unwrap()));
    }

    #[test]
    fn sweep_spares_rows_newer_than_its_listing() {
        let mut t = table();
        let s = app(&mut t, None, "zone=default");
        let mark = t.mark();
        // Bound and listening after the kernel was asked: not in `live`, yet alive.
        serve(&mut t, s, "0.0.0.0:80", 1);
        let none = HashSet::new();
        assert!(t.sweep(Proto::Tcp, &none, Some(&none), mark).is_empty());
        assert!(t.sweep(Proto::Tcp, &none, Some(&none), mark).is_empty());
        t.sweep(Proto::Tcp, &none, Some(&none), t.mark());
        assert_eq!(t.sweep(Proto::Tcp, &none, Some(&none), t.mark()).len(), 1);
    }

    #[test]
    fn a_listening_row_needs_a_listener_and_a_seen_socket_is_forgiven() {
        let mut t = table();
        let s = app(&mut t, None, "zone=default");
        serve(&mut t, s, "0.0.0.0:80", 1);
        let bound = HashSet::from([1]);
        let none = HashSet::new();
        // Listed as bound-only (shut down): not a listener any more.
        t.sweep(Proto::Tcp, &none, Some(&bound), t.mark());
        // Seen again as a listener: the miss is forgiven.
        t.sweep(Proto::Tcp, &bound, Some(&bound), t.mark());
        assert!(t.sweep(Proto::Tcp, &none, Some(&bound), t.mark()).is_empty());
        assert_eq!(t.sweep(Proto::Tcp, &none, Some(&bound), t.mark()).len(), 1);
        assert!(!t.has_unlistened(Proto::Tcp));
    }

    #[test]
    fn listen_needs_the_same_socket() {
        let mut t = table();
        let s = app(&mut t, None, "zone=default");
        let port = t.take_port().unwrap();
        t.add_binding(s, bound(9, "0.0.0.0:0"), SocketAddrV4::new(NODE, 0), port);
        assert_eq!(t.binding(Proto::Tcp, port).unwrap().service.port(), port);
        assert!(t.set_listening(Proto::Tcp, port, 10, 5).is_none());
        assert!(t.set_listening(Proto::Tcp, port, 9, 5).is_some());
    }
}
