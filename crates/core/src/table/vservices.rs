//! The table's vservices: which exist (names and addresses unique, never an app's or
//! the node's), and where a connect to one goes: its backends' rows the client may
//! reach, balanced at random or in rotation. Parsing a vservice is
//! [`crate::vservice`]'s; the rows themselves come from the table.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::labels::Labels;
use crate::vservice::{Backend, LbType, Rotation, Vservice};

use super::routing::{Route, Target};

/// Why a vservice could not be added or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VserviceError {
    #[error("a vservice named '{0}' already exists")]
    NameTaken(String),
    #[error("vservice '{name}' already has the address {ip}")]
    AddressTaken { name: String, ip: Ipv4Addr },
    #[error("{0} is the address of an app or of this node: pick another for the vservice")]
    NotVirtual(Ipv4Addr),
    #[error("no vservice named '{0}'")]
    Missing(String),
}

/// The vservices by name, and the round-robin state of each.
#[derive(Debug, Default)]
pub(super) struct Vservices {
    by_name: BTreeMap<String, Vservice>,
    rotation: Rotation,
}

impl Vservices {
    /// Adds `v`; `taken` says whether an address is an app's or the node's.
    pub(super) fn add(&mut self, v: Vservice, taken: impl Fn(Ipv4Addr) -> bool) -> Result<(), VserviceError> {
        if self.by_name.contains_key(&v.name) {
            return Err(VserviceError::NameTaken(v.name));
        }
        if let Some(other) = self.by_name.values().find(|o| o.ip == v.ip) {
            return Err(VserviceError::AddressTaken { name: other.name.clone(), ip: v.ip });
        }
        if taken(v.ip) {
            return Err(VserviceError::NotVirtual(v.ip));
        }
        self.by_name.insert(v.name.clone(), v);
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

    /// Where a connect to the vservice at `ip:port` goes; None when `ip` is no
    /// vservice's. `is_app_ip` says whether an address is an app's (here or on another
    /// node) and `rows_at` gives the rows serving an address: their host address and
    /// their app's labels. See [`super::Table::vservice_route`].
    pub(super) fn route<'r>(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        client: Option<&Labels>,
        is_app_ip: impl Fn(Ipv4Addr) -> bool,
        rows_at: impl Fn(SocketAddrV4) -> Vec<(SocketAddrV4, &'r Labels)>,
        rng: &mut fastrand::Rng,
    ) -> Option<Route> {
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
            return Some(Route::Refused);
        };
        let mut groups: Vec<Vec<Target>> = Vec::new();
        let mut denied = false;
        for b in &v.backends {
            let addr = match *b {
                Backend::Ip(ip) => SocketAddrV4::new(ip, map.app_port),
                Backend::IpPort(sa) => sa,
            };
            if !v.app_backends.contains(addr.ip()) {
                groups.push(vec![Target { addr, source: v.source_ip }]);
                continue;
            }
            let rows = rows_at(addr);
            let mut reachable: Vec<Target> = rows
                .iter()
                .filter(|(_, labels)| client.is_none_or(|c| labels.shares(c)))
                .map(|(host, _)| Target { addr: *host, source: None })
                .collect();
            denied |= !rows.is_empty() && reachable.is_empty();
            if !reachable.is_empty() {
                rng.shuffle(&mut reachable);
                groups.push(reachable);
            }
        }
        if groups.is_empty() {
            return Some(if denied { Route::Refused } else { Route::Backends(Vec::new()) });
        }
        match v.lb {
            LbType::Random => rng.shuffle(&mut groups),
            LbType::RoundRobin => {
                let start = self.rotation.next(&v.name, port, groups.len());
                groups.rotate_left(start);
            }
        }
        Some(Route::Backends(groups.into_iter().flatten().collect()))
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
    use crate::table::{Proto, Table};

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn an_unmapped_port_is_refused_and_no_vservice_is_none() {
        let mut vs = Vservices::default();
        let mut rng = fastrand::Rng::with_seed(1);
        vs.add(vservice("web", "198.18.2.1", LbType::Random, "192.0.2.7"), |_| false).unwrap();
        let vip = "198.18.2.1".parse().unwrap();
        let mut route = |ip, port| vs.route(ip, port, None, |_| false, |_| Vec::new(), &mut rng);
        assert_eq!(route(vip, 81), Some(Route::Refused));
        assert_eq!(route("198.18.2.2".parse().unwrap(), 80), None);
        // An outside backend is reached on the mapped app port, from no given source.
        assert_eq!(route(vip, 80), Some(Route::Backends(vec![Target { addr: v4("192.0.2.7:8000"), source: None }])));
    }

    #[test]
    fn a_backend_seen_as_an_app_never_turns_into_an_outside_host() {
        let mut vs = Vservices::default();
        let mut rng = fastrand::Rng::with_seed(1);
        vs.add(vservice("web", "198.18.2.1", LbType::RoundRobin, "198.18.1.1"), |_| false).unwrap();
        let vip = "198.18.2.1".parse().unwrap();
        let labels = Labels::parse("zone=default").unwrap();
        let host = v4("10.0.0.1:40000");
        let serving = |_| vec![(host, &labels)];
        let route = vs.route(vip, 80, Some(&labels), |_| true, serving, &mut rng);
        assert_eq!(route, Some(Route::Backends(vec![Target { addr: host, source: None }])));
        // The app is gone (no rows, no longer an app address): down, not direct.
        let route = vs.route(vip, 80, Some(&labels), |_| false, |_| Vec::new(), &mut rng);
        assert_eq!(route, Some(Route::Backends(vec![])));
        // Rows the client may not reach make the connect refused.
        let other = Labels::parse("role=prod").unwrap();
        let route = vs.route(vip, 80, Some(&other), |_| false, |_| vec![(host, &labels)], &mut rng);
        assert_eq!(route, Some(Route::Refused));
    }

    #[test]
    fn round_robin_alternates_exactly_and_skips_the_down() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.1.1"), "zone=default");
        let b = app(&mut t, Some("198.18.1.2"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        let pa = serve(&mut t, a, "0.0.0.0:8000", 1);
        let pb = serve(&mut t, b, "0.0.0.0:8000", 2);
        t.add_vservice(vservice("web", "198.18.2.1", LbType::RoundRobin, "198.18.1.1,198.18.1.2")).unwrap();
        let ports: Vec<u16> =
            (0..6).map(|_| first(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80"))).port()).collect();
        assert_eq!(ports, [pa, pb, pa, pb, pa, pb]);
        // An unmapped port of the vservice is refused; its name resolves.
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:81")), Route::Refused);
        assert_eq!(t.addresses_named("WEB"), Some(vec!["198.18.2.1".parse().unwrap()]));
        // b goes away: every connect goes to a.
        t.remove_app(b);
        for _ in 0..3 {
            assert_eq!(first(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80"))).port(), pa);
        }
        t.remove_app(a);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80")), Route::Backends(vec![]));
        t.remove_vservice("web").unwrap();
        assert!(!t.is_virtual("198.18.2.1".parse().unwrap()));
        assert_eq!(t.remove_vservice("web").unwrap_err(), VserviceError::Missing("web".into()));
    }

    #[test]
    fn vservice_backends_keep_labels_and_external_ones_go_direct() {
        let mut t = table();
        let prod = app(&mut t, Some("198.18.1.1"), "role=prod");
        let c = app(&mut t, None, "role=test");
        serve(&mut t, prod, "0.0.0.0:8000", 1);
        t.add_vservice(vservice("p", "198.18.2.2", LbType::Random, "198.18.1.1")).unwrap();
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.2:80")), Route::Refused);
        // Outside ax (an external port) there are no labels to check.
        assert!(
            matches!(t.vservice_route("198.18.2.2".parse().unwrap(), 80, None), Some(Route::Backends(b)) if b.len() == 1)
        );
        let mut ext = vservice("e", "198.18.2.3", LbType::Random, "127.0.0.1:9000,192.0.2.7");
        ext.source_ip = Some(NODE);
        t.add_vservice(ext).unwrap();
        let Route::Backends(targets) = t.route_connect(c, Proto::Tcp, sa("198.18.2.3:80")) else { panic!() };
        let mut addrs: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
        addrs.sort();
        assert_eq!(addrs, ["127.0.0.1:9000", "192.0.2.7:8000"]);
        assert!(targets.iter().all(|t| t.source == Some(NODE)));
    }

    #[test]
    fn vservice_names_and_addresses_are_unique() {
        let mut t = table();
        app(&mut t, Some("198.18.1.1"), "zone=default");
        t.add_vservice(vservice("web", "198.18.2.1", LbType::Random, "198.18.1.1")).unwrap();
        let refusal = |t: &mut Table, name, ip| {
            t.add_vservice(vservice(name, ip, LbType::Random, "198.18.1.1")).unwrap_err().to_string()
        };
        assert_eq!(refusal(&mut t, "web", "198.18.2.9"), "a vservice named 'web' already exists");
        assert_eq!(refusal(&mut t, "x", "198.18.2.1"), "vservice 'web' already has the address 198.18.2.1");
        let not_virtual = |ip| format!("{ip} is the address of an app or of this node: pick another for the vservice");
        assert_eq!(refusal(&mut t, "y", "198.18.1.1"), not_virtual("198.18.1.1"));
        assert_eq!(refusal(&mut t, "z", "10.0.0.1"), not_virtual("10.0.0.1"));
        assert_eq!(t.vservices().count(), 1);
        assert_eq!(t.remove_vservice("nope").unwrap_err().to_string(), "no vservice named 'nope'");
    }
}
