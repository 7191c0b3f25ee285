//! The table's vservices: which exist (names and addresses unique; an address is never
//! an app's or a node's), which backends they may have, and where a connect to one
//! goes: its backends' rows the client may reach, balanced at random or in rotation.
//! Parsing a vservice is [`crate::vservice`]'s; the rows themselves come from the table.
//!
//! A vservice is no way out of the labels or into the host: a backend on loopback, on
//! the unspecified address or on a port of the daemon is never dialled; a backend at a
//! row's host address is that row, its labels checked; and a backend outside the
//! service table is dialled only when the vservice allows outside backends. What a
//! backend is gets decided again at every connect, so the table changing after the
//! vservice was made changes nothing of this.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::addr;
use crate::labels::Labels;
use crate::vservice::{Backend, LbType, Rotation, Vservice};

use super::reserved::Reserved;
use super::routing::{reach, Balanced, Decision, Route, Target};
use super::{Proto, Table};

/// Why a vservice could not be added or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VserviceError {
    #[error("a vservice named '{0}' already exists")]
    NameTaken(String),
    #[error("vservice '{name}' already has the address {ip}")]
    AddressTaken { name: String, ip: Ipv4Addr },
    #[error("{ip} is {why}: pick a unicast address for the vservice")]
    NotUnicast { ip: Ipv4Addr, why: &'static str },
    #[error("{0} is the address of a node of the cluster: pick another for the vservice")]
    NodeAddress(Ipv4Addr),
    #[error("{0} is the address of an app: pick another for the vservice")]
    AppAddress(Ipv4Addr),
    #[error("backend {addr} is {why}: a vservice may not send its clients there")]
    Backend { addr: SocketAddrV4, why: &'static str },
    #[error("no vservice named '{0}'")]
    Missing(String),
}

impl VserviceError {
    /// True when the request clashes with what exists (a name or an address taken),
    /// rather than asking for something no vservice may be.
    pub fn is_conflict(&self) -> bool {
        matches!(self, VserviceError::NameTaken(_) | VserviceError::AddressTaken { .. })
    }
}

/// Whose word a vservice comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A request made here: every backend must be what it says, as the table shows
    /// it now.
    Request,
    /// A record from the cluster, checked where it was made: this node's view of the
    /// other nodes may lag behind gossip, so a backend this node does not know yet is
    /// taken as it comes (and decided at every connect, like any other).
    Cluster,
}

/// What a vservice backend address is, as the table shows it now.
#[derive(Debug)]
pub(super) enum Reach<'t> {
    /// Never to be dialled, and why.
    Refused(&'static str),
    /// Rows to choose from, with their app's labels: a row's host address (that row)
    /// or a service-table address (its rows; none while down).
    Rows(Vec<(SocketAddrV4, &'t Labels)>),
    /// Outside the service table.
    Outside,
}

/// The vservices by name, and the round-robin state of each.
#[derive(Debug, Default)]
pub(super) struct Vservices {
    by_name: BTreeMap<String, Vservice>,
    rotation: Rotation,
}

impl Table {
    /// Adds a vservice after checking its address (new, unicast, no node's or app's)
    /// and its backends (see the module's text); `origin` says how far. Returns the
    /// backends outside the service table that the vservice may not dial (no
    /// `allow_external`): none is dialled until an app or a row has its address (an app
    /// started just after the vservice, say), which every connect checks again.
    pub fn add_vservice(&mut self, v: Vservice, origin: Origin) -> Result<Vec<SocketAddrV4>, VserviceError> {
        self.vservices.check_unique(&v)?;
        if let Some(why) = addr::not_unicast(v.ip) {
            return Err(VserviceError::NotUnicast { ip: v.ip, why });
        }
        if self.is_node_address(v.ip) {
            return Err(VserviceError::NodeAddress(v.ip));
        }
        if self.apps.has_ip(v.ip) || self.remote.has_app_ip(v.ip) || self.remote.was_app_ip(v.ip) {
            return Err(VserviceError::AppAddress(v.ip));
        }
        let mut not_yet = Vec::new();
        for addr in backend_addrs(&v) {
            if self.check_backend(addr, origin)? && !v.allow_external {
                not_yet.push(addr);
            }
        }
        self.touch_vservice(&v);
        self.vservices.by_name.insert(v.name.clone(), v);
        self.generation += 1;
        Ok(not_yet)
    }

    /// Refuses a backend no vservice may have; true when it is outside the service table.
    fn check_backend(&self, addr: SocketAddrV4, origin: Origin) -> Result<bool, VserviceError> {
        let ip = *addr.ip();
        let seen_app = !self.is_node_address(ip) && (self.apps.has_ip(ip) || self.remote.has_app_ip(ip));
        match reach(&self.node, &self.apps, &self.services, &self.remote, addr, seen_app) {
            Reach::Refused(why) => Err(VserviceError::Backend { addr, why }),
            Reach::Rows(_) => Ok(false),
            Reach::Outside if origin == Origin::Request && self.reserved(addr, None) == Some(Reserved::Relayed) => {
                Err(VserviceError::Backend { addr, why: "a host port this node relays or exposes" })
            }
            Reach::Outside => Ok(true),
        }
    }

    pub fn remove_vservice(&mut self, name: &str) -> Result<Vservice, VserviceError> {
        self.generation += 1;
        let v = self.vservices.remove(name)?;
        self.touch_vservice(&v);
        Ok(v)
    }

    /// A vservice came or went: its address and ports.
    fn touch_vservice(&mut self, v: &Vservice) {
        self.kernel.touch_ip(v.ip);
        v.ports.iter().for_each(|m| self.kernel.touch_dest(Proto::Tcp, SocketAddrV4::new(v.ip, m.vport)));
    }

    pub fn vservices(&self) -> impl Iterator<Item = &Vservice> {
        self.vservices.iter()
    }
}

/// Every address a vservice's backends are dialled at: an address alone at each
/// mapped app port, an address and port as is.
fn backend_addrs(v: &Vservice) -> impl Iterator<Item = SocketAddrV4> + '_ {
    v.backends.iter().flat_map(move |b| {
        let at: Vec<SocketAddrV4> = match *b {
            Backend::Ip(ip) => v.ports.iter().map(|m| SocketAddrV4::new(ip, m.app_port)).collect(),
            Backend::IpPort(sa) => vec![sa],
        };
        at
    })
}

impl Vservices {
    /// Fails when `v`'s name or address is another vservice's.
    fn check_unique(&self, v: &Vservice) -> Result<(), VserviceError> {
        if self.by_name.contains_key(&v.name) {
            return Err(VserviceError::NameTaken(v.name.clone()));
        }
        if let Some(other) = self.by_name.values().find(|o| o.ip == v.ip) {
            return Err(VserviceError::AddressTaken { name: other.name.clone(), ip: v.ip });
        }
        Ok(())
    }

    pub(super) fn remove(&mut self, name: &str) -> Result<Vservice, VserviceError> {
        let v = self.by_name.remove(name).ok_or_else(|| VserviceError::Missing(name.into()))?;
        self.rotation.forget(name);
        Ok(v)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Vservice> {
        self.by_name.values()
    }

    pub(super) fn has_ip(&self, ip: Ipv4Addr) -> bool {
        self.by_name.values().any(|v| v.ip == ip)
    }

    /// The addresses of the vservices named `label` (without case).
    pub(super) fn named<'a>(&'a self, label: &'a str) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.by_name.values().filter(|v| v.name.eq_ignore_ascii_case(label)).map(|v| v.ip)
    }

    /// The choices of a connect to the vservice at `ip:port`, before any balancing;
    /// None when `ip` is no vservice's. `is_app_ip` says whether an address is an app's
    /// (here or on another node) and `reach` what a backend address is now (given
    /// whether its address was ever seen as an app's). See
    /// [`super::Table::vservice_route`].
    pub(super) fn decide<'r>(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        client: Option<&Labels>,
        is_app_ip: impl Fn(Ipv4Addr) -> bool,
        reach: impl Fn(SocketAddrV4, bool) -> Reach<'r>,
    ) -> Option<Decision> {
        let v = self.by_name.values_mut().find(|v| v.ip == ip)?;
        // A backend once seen as an app stays one: down while no app serves it, never
        // an outside host of the same address.
        for b in &v.backends {
            if is_app_ip(backend_ip(b)) {
                v.app_backends.insert(backend_ip(b));
            }
        }
        let v = &*v;
        let Some(map) = v.ports.iter().find(|m| m.vport == port) else {
            return Some(Decision::Final(Route::Refused));
        };
        let mut groups: Vec<Vec<Target>> = Vec::new();
        let mut denied = false;
        for b in &v.backends {
            let addr = match *b {
                Backend::Ip(ip) => SocketAddrV4::new(ip, map.app_port),
                Backend::IpPort(sa) => sa,
            };
            let rows = match reach(addr, v.app_backends.contains(addr.ip())) {
                Reach::Refused(_) => continue,
                Reach::Outside if v.allow_external => {
                    groups.push(vec![Target { addr, source: v.source_ip }]);
                    continue;
                }
                Reach::Outside => continue,
                Reach::Rows(rows) => rows,
            };
            let reachable: Vec<Target> = rows
                .iter()
                .filter(|(_, labels)| client.is_none_or(|c| labels.shares(c)))
                .map(|(host, _)| Target { addr: *host, source: None })
                .collect();
            denied |= !rows.is_empty() && reachable.is_empty();
            if !reachable.is_empty() {
                groups.push(reachable);
            }
        }
        if groups.is_empty() && denied {
            return Some(Decision::Final(Route::Refused));
        }
        let rotate = (v.lb == LbType::RoundRobin).then(|| (v.name.clone(), port));
        Some(Decision::Balanced(Balanced { groups, rotate }))
    }

    /// Orders `b`'s choices for one connect: each group shuffled, then the groups
    /// shuffled or rotated.
    pub(super) fn balance(&mut self, b: Balanced, rng: &mut fastrand::Rng) -> Route {
        let mut groups = b.groups;
        if groups.is_empty() {
            return Route::Backends(Vec::new());
        }
        for g in &mut groups {
            rng.shuffle(g);
        }
        match b.rotate {
            None => rng.shuffle(&mut groups),
            Some((name, port)) => {
                let start = self.rotation.next(&name, port, groups.len());
                groups.rotate_left(start);
            }
        }
        Route::Backends(groups.into_iter().flatten().collect())
    }
}

fn backend_ip(b: &Backend) -> Ipv4Addr {
    match *b {
        Backend::Ip(ip) => ip,
        Backend::IpPort(sa) => *sa.ip(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::{app, first, sa, serve, table, vservice, NODE};
    use crate::table::{Proto, Remote, RemoteApp, RemoteRow};
    use crate::vservice::{Expose, ExposeAt};

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn outside(name: &str, vip: &str, backends: &str) -> Vservice {
        Vservice { allow_external: true, ..vservice(name, vip, LbType::Random, backends) }
    }

    fn targets(route: Route) -> Vec<SocketAddrV4> {
        match route {
            Route::Backends(t) => t.into_iter().map(|t| t.addr).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unmapped_port_is_refused_and_no_vservice_is_none() {
        let mut t = table();
        t.add_vservice(outside("web", "198.18.2.1", "192.0.2.7"), Origin::Request).unwrap();
        let vip = ip("198.18.2.1");
        assert_eq!(t.vservice_route(vip, 81, None), Some(Route::Refused));
        assert_eq!(t.vservice_route(ip("198.18.2.2"), 80, None), None);
        // An outside backend is reached on the mapped app port, from no given source.
        let want = Route::Backends(vec![Target { addr: v4("192.0.2.7:8000"), source: None }]);
        assert_eq!(t.vservice_route(vip, 80, None), Some(want));
    }

    #[test]
    fn a_backend_seen_as_an_app_never_turns_into_an_outside_host() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.1.1"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        let p = serve(&mut t, a, "0.0.0.0:8000", 1);
        // Even with outside backends allowed.
        t.add_vservice(outside("web", "198.18.2.1", "198.18.1.1"), Origin::Request).unwrap();
        assert_eq!(first(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80"))), SocketAddrV4::new(NODE, p));
        // The app is gone (no rows, no longer an app address): down, not direct.
        t.remove_app(a);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80")), Route::Backends(vec![]));
    }

    #[test]
    fn round_robin_alternates_exactly_and_skips_the_down() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.1.1"), "zone=default");
        let b = app(&mut t, Some("198.18.1.2"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        let pa = serve(&mut t, a, "0.0.0.0:8000", 1);
        let pb = serve(&mut t, b, "0.0.0.0:8000", 2);
        let rr = vservice("web", "198.18.2.1", LbType::RoundRobin, "198.18.1.1,198.18.1.2");
        t.add_vservice(rr, Origin::Request).unwrap();
        let ports: Vec<u16> =
            (0..6).map(|_| first(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80"))).port()).collect();
        assert_eq!(ports, [pa, pb, pa, pb, pa, pb]);
        // An unmapped port of the vservice is refused; its name resolves.
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:81")), Route::Refused);
        assert_eq!(t.addresses_named("WEB"), Some(vec![ip("198.18.2.1")]));
        // b goes away: every connect goes to a.
        t.remove_app(b);
        for _ in 0..3 {
            assert_eq!(first(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80"))).port(), pa);
        }
        t.remove_app(a);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80")), Route::Backends(vec![]));
        t.remove_vservice("web").unwrap();
        assert!(!t.is_virtual(ip("198.18.2.1").into()));
        assert_eq!(t.remove_vservice("web").unwrap_err(), VserviceError::Missing("web".into()));
    }

    #[test]
    fn labels_hold_and_outside_backends_need_the_opt_in() {
        let mut t = table();
        let prod = app(&mut t, Some("198.18.1.1"), "role=prod");
        let c = app(&mut t, None, "role=test");
        serve(&mut t, prod, "0.0.0.0:8000", 1);
        t.add_vservice(vservice("p", "198.18.2.2", LbType::Random, "198.18.1.1"), Origin::Request).unwrap();
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.2:80")), Route::Refused);
        // Outside ax (an external port) there are no labels to check.
        assert_eq!(targets(t.vservice_route(ip("198.18.2.2"), 80, None).unwrap()).len(), 1);
        // Without the opt-in an outside backend is taken but never dialled...
        let not_yet = t.add_vservice(vservice("e", "198.18.2.3", LbType::Random, "198.18.1.7"), Origin::Request);
        assert_eq!(not_yet, Ok(vec![v4("198.18.1.7:8000")]));
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.3:80")), Route::Backends(vec![]));
        // ...until an app has its address; then its rows, with their labels, are.
        let late = app(&mut t, Some("198.18.1.7"), "role=test");
        let port = serve(&mut t, late, "0.0.0.0:8000", 7);
        let Route::Backends(b) = t.route_connect(c, Proto::Tcp, sa("198.18.2.3:80")) else { panic!() };
        assert_eq!(b, vec![Target { addr: SocketAddrV4::new(NODE, port), source: None }]);
        t.remove_vservice("e").unwrap();
        let mut ext = outside("e", "198.18.2.3", "192.0.2.8:9000,192.0.2.7");
        ext.source_ip = Some(NODE);
        t.add_vservice(ext, Origin::Request).unwrap();
        let Route::Backends(targets) = t.route_connect(c, Proto::Tcp, sa("198.18.2.3:80")) else { panic!() };
        let mut addrs: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
        addrs.sort();
        assert_eq!(addrs, ["192.0.2.7:8000", "192.0.2.8:9000"]);
        assert!(targets.iter().all(|t| t.source == Some(NODE)));
    }

    #[test]
    fn a_vservice_address_is_new_unicast_and_no_nodes_or_apps() {
        let mut t = table();
        app(&mut t, Some("198.18.1.1"), "zone=default");
        let remote_app = RemoteApp {
            node: "n2".into(),
            id: "f0000002".into(),
            name: None,
            ip: ip("198.18.1.5"),
            expose: vec![],
            labels: None,
        };
        t.set_remote(Remote {
            nodes: vec![("n2".into(), ip("10.0.0.2"))],
            apps: vec![remote_app],
            ..Remote::default()
        });
        t.add_vservice(vservice("web", "198.18.2.1", LbType::Random, "198.18.1.1"), Origin::Request).unwrap();
        let refusal = |t: &mut Table, name, vip| {
            let e = t.add_vservice(vservice(name, vip, LbType::Random, "198.18.1.1"), Origin::Request).unwrap_err();
            (e.is_conflict(), e.to_string())
        };
        assert_eq!(refusal(&mut t, "web", "198.18.2.9"), (true, "a vservice named 'web' already exists".into()));
        assert_eq!(
            refusal(&mut t, "x", "198.18.2.1"),
            (true, "vservice 'web' already has the address 198.18.2.1".into())
        );
        let app_ip = |ip| (false, format!("{ip} is the address of an app: pick another for the vservice"));
        assert_eq!(refusal(&mut t, "y", "198.18.1.1"), app_ip("198.18.1.1"));
        assert_eq!(refusal(&mut t, "y", "198.18.1.5"), app_ip("198.18.1.5"));
        let node = |ip| (false, format!("{ip} is the address of a node of the cluster: pick another for the vservice"));
        assert_eq!(refusal(&mut t, "z", "10.0.0.1"), node("10.0.0.1"));
        assert_eq!(refusal(&mut t, "z", "10.0.0.2"), node("10.0.0.2"));
        for (bad, why) in [
            ("127.0.0.1", "a loopback address (127.0.0.0/8 stays private to each app)"),
            ("0.0.0.0", "the unspecified address"),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
        ] {
            assert_eq!(
                refusal(&mut t, "u", bad),
                (false, format!("{bad} is {why}: pick a unicast address for the vservice"))
            );
        }
        assert_eq!(t.vservices().count(), 1);
        assert_eq!(t.remove_vservice("nope").unwrap_err().to_string(), "no vservice named 'nope'");
    }

    #[test]
    fn backends_on_loopback_or_the_daemons_ports_are_refused_even_when_outside_is_allowed() {
        let mut t = table();
        t.set_remote(Remote { nodes: vec![("n2".into(), ip("10.0.0.2"))], ..Remote::default() });
        // Another app exposes 8000 on host port 9999 of this node.
        let expose = vec![Expose { internal: 8000, at: ExposeAt::ThisNode, host_port: 9999 }];
        t.add_app(crate::table::NewApp { expose, ..Default::default() }).unwrap();
        t.add_vservice(Vservice { external: true, ..outside("pub", "198.18.2.9", "192.0.2.7") }, Origin::Request)
            .unwrap();
        let daemon = "a port of the ax daemon on a node address";
        let relayed = "a host port this node relays or exposes";
        for (backend, at, why) in [
            ("127.0.0.1:6664", "127.0.0.1:6664", "a loopback address (127.0.0.0/8 stays private to each app)"),
            ("0.0.0.0:22", "0.0.0.0:22", "the unspecified address"),
            ("224.0.0.9:5000", "224.0.0.9:5000", "a multicast address"),
            ("10.0.0.1:53", "10.0.0.1:53", daemon),
            ("10.0.0.1:6661", "10.0.0.1:6661", daemon),
            ("10.0.0.1:6664", "10.0.0.1:6664", daemon),
            ("10.0.0.2:7946", "10.0.0.2:7946", daemon),
            ("10.0.0.1:9999", "10.0.0.1:9999", relayed),
            // The external vservice's relay on this node.
            ("10.0.0.1:80", "10.0.0.1:80", relayed),
        ] {
            let mut v = outside("b", "198.18.2.1", backend);
            v.ports = crate::vservice::parse_ports("80:53").unwrap();
            let e = t.add_vservice(v, Origin::Request).unwrap_err();
            assert_eq!(e, VserviceError::Backend { addr: v4(at), why }, "{backend}");
            assert_eq!(e.to_string(), format!("backend {at} is {why}: a vservice may not send its clients there"));
        }
        // An address alone is refused at every app port that lands on the daemon.
        let plain = vservice("b", "198.18.2.1", LbType::Random, "10.0.0.1");
        assert_eq!(t.add_vservice(plain, Origin::Request), Ok(vec![v4("10.0.0.1:8000")]), "taken, not dialled");
        t.remove_vservice("b").unwrap();
        let mut v = outside("b", "198.18.2.1", "10.0.0.1");
        v.ports = crate::vservice::parse_ports("80:8000,5353:53").unwrap();
        assert_eq!(
            t.add_vservice(v, Origin::Request).unwrap_err(),
            VserviceError::Backend { addr: v4("10.0.0.1:53"), why: daemon }
        );
        // From the cluster too: such a record is not taken in.
        assert!(t.add_vservice(outside("b", "198.18.2.1", "127.0.0.1:80"), Origin::Cluster).is_err());
        assert_eq!(t.vservices().count(), 1);
    }

    #[test]
    fn a_backend_at_a_rows_host_address_is_that_row_and_its_labels_hold() {
        let mut t = table();
        let prod = app(&mut t, Some("198.18.1.1"), "role=prod");
        let test = app(&mut t, None, "role=test");
        let client_prod = app(&mut t, None, "role=prod");
        let p = serve(&mut t, prod, "0.0.0.0:8000", 1);
        let remote_row = RemoteRow {
            node: "n2".into(),
            app: "f0000002".into(),
            proto: Proto::Tcp,
            service: v4("198.18.1.7:8000"),
            host: v4("10.0.0.2:40005"),
            labels: Labels::parse("role=prod").unwrap(),
        };
        t.set_remote(Remote {
            nodes: vec![("n2".into(), ip("10.0.0.2"))],
            rows: vec![remote_row],
            ..Remote::default()
        });
        // No opt-in needed: a row is no outside host.
        let host = SocketAddrV4::new(NODE, p);
        t.add_vservice(vservice("here", "198.18.2.1", LbType::Random, &host.to_string()), Origin::Request).unwrap();
        t.add_vservice(vservice("there", "198.18.2.2", LbType::Random, "10.0.0.2:40005"), Origin::Request).unwrap();
        for (vip, row) in [("198.18.2.1:80", host), ("198.18.2.2:80", v4("10.0.0.2:40005"))] {
            assert_eq!(t.route_connect(test, Proto::Tcp, sa(vip)), Route::Refused, "{vip}");
            assert_eq!(targets(t.route_connect(client_prod, Proto::Tcp, sa(vip))), [row]);
        }
    }

    #[test]
    fn what_a_backend_is_is_decided_at_every_connect() {
        let mut t = table();
        let test = app(&mut t, None, "role=test");
        // Made while 198.18.7.7 is nobody's and NODE:40003 no row's: outside hosts.
        let v = outside("late", "198.18.2.1", "198.18.7.7:8000,10.0.0.1:40003");
        t.add_vservice(v, Origin::Request).unwrap();
        assert_eq!(targets(t.route_connect(test, Proto::Tcp, sa("198.18.2.1:80"))).len(), 2);
        // Both become role=prod rows: the role=test client reaches neither.
        let prod = app(&mut t, Some("198.18.7.7"), "role=prod");
        serve(&mut t, prod, "0.0.0.0:8000", 1);
        let other = app(&mut t, None, "role=prod");
        let mut p = 0;
        while p != 40003 {
            p = t.take_port().unwrap();
        }
        t.add_binding(other, crate::table::testing::bound(2, "0.0.0.0:9000"), v4("10.0.0.1:9000"), p);
        t.set_listening(Proto::Tcp, p, 2, 1);
        assert_eq!(t.route_connect(test, Proto::Tcp, sa("198.18.2.1:80")), Route::Refused);
        // A record from the cluster naming an outside host, without the opt-in: taken
        // in, and never dialled.
        t.add_vservice(vservice("c", "198.18.2.3", LbType::Random, "192.0.2.7"), Origin::Cluster).unwrap();
        assert_eq!(t.route_connect(test, Proto::Tcp, sa("198.18.2.3:80")), Route::Backends(vec![]));
    }
}
