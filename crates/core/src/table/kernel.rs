//! The kernel driver's maps, derived from the table by the same decisions the user
//! driver makes per connect ([`Table::decide_connect`]): every destination whose answer
//! is not the programs' default gets an entry, per label class of this node's
//! kernel-driver apps, or one for every class where all classes get the same answer.
//! What the programs do with the entries is modelled by [`KernelMaps::lookup`]; the
//! tests below hold the two to the user driver's answers. Which destinations may have
//! an entry is `dests`'s; how many entries one app's rows may take, `room`'s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::kmap::{AppEntry, Config, KernelMaps, Lb, PrivateKey, Route as KRoute, RouteKey, ANY_CLASS};
use crate::kmap::{MAX_GROUPS, MAX_TARGETS};
use crate::labels::Labels;

use super::apps::Driver;
use super::routing::{Balanced, Decision, Target};
use super::{Proto, Route, Table};

mod dests;
mod room;

pub use room::ROUTES_PER_APP;

/// The maps, and the entries that held more backends than an entry can (a subset of
/// them was kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelView {
    pub maps: KernelMaps,
    pub trimmed: BTreeSet<RouteKey>,
}

/// One pass over destinations: the label classes, and each class's answer for a
/// service already decided in this pass (every host address of a service's rows
/// answers as the service does, so a service of many rows is decided once, not once
/// per row).
pub(super) struct Pass {
    pub(super) classes: Vec<(Labels, u32)>,
    memo: HashMap<(Proto, SocketAddrV4, u32), (KRoute, bool)>,
}

impl Pass {
    pub(super) fn new(classes: Vec<(Labels, u32)>) -> Pass {
        Pass { classes, memo: HashMap::new() }
    }

    /// Every key a destination may have an entry under: one per class, and ANY.
    pub(super) fn keys(&self, proto: Proto, dest: SocketAddrV4) -> impl Iterator<Item = RouteKey> + '_ {
        let classes = self.classes.iter().map(|(_, c)| *c).chain([ANY_CLASS]);
        classes.map(move |class| RouteKey { class, ip: *dest.ip(), port: dest.port(), proto })
    }
}

impl Table {
    /// What the kernel driver's maps hold for this table, built from nothing, with
    /// `broker` the address of the daemon's broker (the daemon follows the table with
    /// [`Table::kernel_sync`], which rebuilds only what a change can touch). An app's
    /// class is the one of its label set (see [`Table::kernel_classes`]).
    pub fn kernel_maps(&mut self, broker: SocketAddrV4) -> KernelView {
        let classes = self.kernel_classes();
        let mut view = KernelView { maps: KernelMaps::new(self.kernel_config(broker)), trimmed: BTreeSet::new() };
        view.maps.apps = self.kernel_apps(&classes);
        view.maps.private = self.kernel_private(&view.maps.apps);
        if classes.is_empty() {
            return view;
        }
        let mut pass = Pass::new(classes);
        view.maps.peers = self.udp_peers();
        // Every port of an address first: what a port without its own entry gets.
        for (proto, ip) in self.whole_addresses() {
            self.put_whole(&mut view, &mut pass, proto, ip);
        }
        for (proto, dest) in self.exact_destinations(|_| true) {
            self.put_exact(&mut view, &mut pass, proto, dest);
        }
        view
    }

    /// The config entry for `broker`, with the maps complete.
    pub(super) fn kernel_config(&self, broker: SocketAddrV4) -> Config {
        Config::new(self.node.ip, broker, self.egress_on(), self.services.pool().ranges())
    }

    /// The kernel-driver apps' entries.
    pub(super) fn kernel_apps(&self, classes: &[(Labels, u32)]) -> BTreeMap<u32, AppEntry> {
        let class_of: HashMap<&Labels, u32> = classes.iter().map(|(l, c)| (l, *c)).collect();
        let kernel_apps = self.apps.iter().filter(|a| a.driver == Driver::Kernel);
        kernel_apps.filter_map(|a| Some((a.id.0, AppEntry { ip: a.ip, class: *class_of.get(&a.labels)? }))).collect()
    }

    /// The loopback ports of the apps in `apps` that the broker carries on: where they
    /// listen privately, and where a wildcard listener of theirs on the host takes
    /// loopback connects ([`Table::own_rows`]).
    pub(super) fn kernel_private(&self, apps: &BTreeMap<u32, AppEntry>) -> BTreeSet<PrivateKey> {
        let private = self.private.iter().filter(|p| p.proto == Proto::Tcp && apps.contains_key(&p.app.0));
        let private = private.map(|p| PrivateKey { app: p.app.0, port: p.port, proto: p.proto });
        let own =
            self.services.rows().filter(|b| b.proto == Proto::Tcp && b.binds_wildcard() && apps.contains_key(&b.app.0));
        private.chain(own.map(|b| PrivateKey { app: b.app.0, port: b.service.port(), proto: Proto::Tcp })).collect()
    }

    /// Brings the every-port entry of `ip` over `proto` in `view` to what the table
    /// says (none where `ip` is no whole address).
    pub(super) fn put_whole(&mut self, view: &mut KernelView, pass: &mut Pass, proto: Proto, ip: Ipv4Addr) {
        let dest = SocketAddrV4::new(ip, 0);
        forget(view, pass, proto, dest);
        if !self.is_whole_address(ip) {
            return;
        }
        let answers = self.answers(pass, proto, dest, &mut view.trimmed);
        let key = RouteKey { class: ANY_CLASS, ip, port: 0, proto };
        if let Some(route) = same(answers).filter(|r| *r != KernelMaps::default_route(proto, &view.maps.config)) {
            view.maps.routes.insert(key, route);
        }
    }

    /// Brings the entries of `dest` over `proto` in `view` to what the table says
    /// (none where it is no exact destination), the every-port entry of its address
    /// being up to date. Port 0 is that entry's key, never an exact destination.
    pub(super) fn put_exact(&mut self, view: &mut KernelView, pass: &mut Pass, proto: Proto, dest: SocketAddrV4) {
        if dest.port() == 0 {
            return;
        }
        forget(view, pass, proto, dest);
        if !self.is_exact_destination(proto, dest) {
            return;
        }
        let fallback = view.maps.fallback(proto, dest);
        let answers = self.answers(pass, proto, dest, &mut view.trimmed);
        let key = |class| RouteKey { class, ip: *dest.ip(), port: dest.port(), proto };
        match same(answers.clone()) {
            Some(route) if route == fallback => {}
            Some(route) => {
                view.maps.routes.insert(key(ANY_CLASS), route);
            }
            None => {
                for ((_, class), route) in pass.classes.iter().zip(answers) {
                    if route != fallback {
                        view.maps.routes.insert(key(*class), route);
                    }
                }
            }
        }
    }

    /// The entry for a connect to `dest` over `proto`, for each class in turn.
    fn answers(
        &mut self,
        pass: &mut Pass,
        proto: Proto,
        dest: SocketAddrV4,
        trimmed: &mut BTreeSet<RouteKey>,
    ) -> Vec<KRoute> {
        let mut out = Vec::with_capacity(pass.classes.len());
        for (labels, class) in &pass.classes {
            let (route, cut) = match self.resolve_connect(Some(labels), proto, SocketAddr::V4(dest)) {
                Err(decision) => self.encode(proto, decision),
                Ok((labels, service)) => match pass.memo.get(&(proto, service, *class)) {
                    Some(known) => known.clone(),
                    None => {
                        let answer = self.encode(proto, self.decide_rows(labels, proto, service));
                        pass.memo.insert((proto, service, *class), answer.clone());
                        answer
                    }
                },
            };
            if cut {
                trimmed.insert(RouteKey { class: *class, ip: *dest.ip(), port: dest.port(), proto });
            }
            out.push(route);
        }
        out
    }

    /// A decision as a route entry, and whether some of its backends had to be left out.
    fn encode(&self, proto: Proto, decision: Decision) -> (KRoute, bool) {
        match decision {
            // Loopback is never a key: the programs' defaults carry it out.
            Decision::Final(Route::Refused | Route::Private) => (KRoute::refuse(), false),
            Decision::Final(Route::Direct(_)) => (KRoute::pass(), false),
            Decision::Final(r @ (Route::Backends(_) | Route::Egress { .. } | Route::Federated { .. })) => {
                unreachable!("decide_connect leaves {r:?} to the balancer and the gateway choices")
            }
            // The broker asks a federation gateway on the app's behalf.
            Decision::Federated(_) => (KRoute::broker(), false),
            Decision::Balanced(b) => backends(b),
            Decision::Outbound(d) if self.egress_applies(proto, d) => (KRoute::broker(), false),
            Decision::Outbound(_) => (KRoute::pass(), false),
        }
    }
}

/// Takes the entries of `dest` over `proto` out of `view` (and out of its trimmed).
fn forget(view: &mut KernelView, pass: &Pass, proto: Proto, dest: SocketAddrV4) {
    for key in pass.keys(proto, dest) {
        view.maps.routes.remove(&key);
        view.trimmed.remove(&key);
    }
}

/// The one answer of every class, if they agree.
fn same(answers: Vec<KRoute>) -> Option<KRoute> {
    let first = answers.first()?.clone();
    answers.iter().all(|a| *a == first).then_some(first)
}

/// A BACKENDS entry of `b`'s choices (REFUSE without any), and whether some had to be
/// left out: the first [`MAX_GROUPS`] groups, and of [`MAX_TARGETS`] targets an equal
/// share per group (in address order, so the entry stays the same while the table
/// does).
fn backends(b: Balanced) -> (KRoute, bool) {
    let source = b.groups.iter().flatten().find_map(|t| t.source);
    let lb = if b.rotate.is_some() { Lb::RoundRobin } else { Lb::Random };
    let total: usize = b.groups.iter().map(Vec::len).sum();
    let mut groups: Vec<Vec<SocketAddrV4>> = b
        .groups
        .into_iter()
        .take(MAX_GROUPS)
        .map(|g| {
            let mut g: Vec<SocketAddrV4> = g.iter().map(|t: &Target| t.addr).collect();
            g.sort();
            g
        })
        .collect();
    if groups.is_empty() {
        return (KRoute::refuse(), false);
    }
    let mut budget = MAX_TARGETS;
    let mut cap = vec![0; groups.len()];
    while budget > 0 && cap.iter().zip(&groups).any(|(c, g)| *c < g.len()) {
        for (c, g) in cap.iter_mut().zip(&groups) {
            if budget > 0 && *c < g.len() {
                *c += 1;
                budget -= 1;
            }
        }
    }
    for (g, c) in groups.iter_mut().zip(cap) {
        g.truncate(c);
    }
    let kept: usize = groups.iter().map(Vec::len).sum();
    let route =
        KRoute::backends(lb, source, groups).expect("groups and targets are cut to what an entry holds, none empty");
    (route, kept < total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AppId;
    use crate::kmap::{BrokerKind, Lookup, Verdict};
    use crate::table::testing::*;
    use crate::table::{BindPlan, BoundSocket, NewApp, Origin, Remote, RemoteApp, RemoteRow};
    use crate::vservice::LbType;
    use proptest::prelude::*;

    pub(super) const BROKER: &str = "10.0.0.1:40500";

    pub(super) fn kapp(t: &mut Table, ip: Option<&str>, labels: &str) -> AppId {
        t.add_app(NewApp {
            ip: ip.map(|s| s.parse().unwrap()),
            labels: Labels::parse(labels).unwrap(),
            pid: 1,
            driver: Driver::Kernel,
            ..NewApp::default()
        })
        .unwrap()
        .id
    }

    pub(super) fn maps(t: &mut Table) -> KernelMaps {
        t.kernel_maps(BROKER.parse().unwrap()).maps
    }

    pub(super) fn key(class: u32, dest: &str, proto: Proto) -> RouteKey {
        let d: SocketAddrV4 = dest.parse().unwrap();
        RouteKey { class, ip: *d.ip(), port: d.port(), proto }
    }

    pub(super) fn class(m: &KernelMaps, a: AppId) -> u32 {
        m.apps[&a.0].class
    }

    pub(super) fn host(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(NODE, port)
    }

    #[test]
    fn apps_with_one_label_set_share_a_class_and_user_apps_get_nothing() {
        let mut t = table();
        let a = kapp(&mut t, Some("198.18.0.1"), "role=prod");
        let b = kapp(&mut t, Some("198.18.0.2"), "role=prod");
        let c = kapp(&mut t, None, "role=dev");
        let u = app(&mut t, Some("198.18.0.4"), "role=prod");
        let m = maps(&mut t);
        assert_eq!(m.apps.len(), 3, "{:?}", m.apps);
        assert!(!m.apps.contains_key(&u.0));
        assert_eq!(class(&m, a), class(&m, b));
        assert_eq!(class(&m, a), a.0 & 0x7fff_ffff, "the first app of the label set names it");
        assert_ne!(class(&m, a), class(&m, c));
        assert_eq!(m.apps[&c.0], AppEntry { ip: NODE, class: c.0 & 0x7fff_ffff });
        assert_eq!(m.apps[&a.0].ip, "198.18.0.1".parse::<Ipv4Addr>().unwrap());
        assert!(m.apps.values().all(|e| e.class != ANY_CLASS));
        // Without kernel-driver apps there is nothing to route.
        let mut t = table();
        app(&mut t, Some("198.18.0.4"), "role=prod");
        assert!(maps(&mut t).routes.is_empty());
    }

    #[test]
    fn a_service_is_one_group_of_the_rows_each_class_may_reach() {
        let mut t = table();
        let prod = kapp(&mut t, Some("198.18.0.1"), "role=prod");
        let dev = kapp(&mut t, Some("198.18.0.2"), "role=dev");
        let p1 = serve(&mut t, prod, "0.0.0.0:80", 1);
        let m = maps(&mut t);
        let allowed = KRoute::backends(Lb::Random, None, vec![vec![host(p1)]]).unwrap();
        for dest in ["198.18.0.1:80".to_string(), format!("10.0.0.1:{p1}")] {
            assert_eq!(m.routes.get(&key(class(&m, prod), &dest, Proto::Tcp)), Some(&allowed), "{dest}");
            assert_eq!(m.lookup(dev.0, Proto::Tcp, dest.parse().unwrap()), Lookup::Refuse, "{dest}");
        }
        // The virtual address refuses every class on its own, and so does a pool port of
        // the node: no entry for either.
        assert_eq!(m.routes.get(&key(class(&m, dev), "198.18.0.1:80", Proto::Tcp)), None);
        let at_host = key(class(&m, dev), &format!("10.0.0.1:{p1}"), Proto::Tcp);
        assert_eq!(m.routes.get(&at_host), None);
        // A second row the dev class may reach joins only its group.
        let other = kapp(&mut t, Some("198.18.0.1"), "role=prod,role=dev");
        let p2 = serve(&mut t, other, "0.0.0.0:80", 2);
        let m = maps(&mut t);
        let both = KRoute::backends(Lb::Random, None, vec![vec![host(p1), host(p2)]]).unwrap();
        let one = KRoute::backends(Lb::Random, None, vec![vec![host(p2)]]).unwrap();
        assert_eq!(m.routes.get(&key(class(&m, prod), "198.18.0.1:80", Proto::Tcp)), Some(&both));
        assert_eq!(m.routes.get(&key(class(&m, dev), "198.18.0.1:80", Proto::Tcp)), Some(&one));
    }

    #[test]
    fn a_vservice_is_one_group_per_backend_in_its_order_with_its_balancer() {
        let mut t = table();
        let c = kapp(&mut t, None, "zone=default");
        let b1 = kapp(&mut t, Some("198.18.0.1"), "zone=default");
        let b2 = kapp(&mut t, Some("198.18.0.2"), "zone=default");
        let p1 = serve(&mut t, b1, "0.0.0.0:8000", 1);
        let p2 = serve(&mut t, b2, "0.0.0.0:8000", 2);
        let mut v = vservice("web", "198.18.2.1", LbType::RoundRobin, "198.18.0.2,198.18.0.1,192.0.2.7");
        v.allow_external = true;
        v.source_ip = Some("10.0.0.1".parse().unwrap());
        t.add_vservice(v, Origin::Request).unwrap();
        let m = maps(&mut t);
        let want = KRoute::backends(
            Lb::RoundRobin,
            Some("10.0.0.1".parse().unwrap()),
            vec![vec![host(p2)], vec![host(p1)], vec!["192.0.2.7:8000".parse().unwrap()]],
        )
        .unwrap();
        assert_eq!(m.routes.get(&key(ANY_CLASS, "198.18.2.1:80", Proto::Tcp)), Some(&want));
        // Its unmapped ports and UDP: refused, as for any virtual address.
        assert_eq!(m.lookup(c.0, Proto::Tcp, "198.18.2.1:81".parse().unwrap()), Lookup::Refuse);
        assert_eq!(m.lookup(c.0, Proto::Udp, "198.18.2.1:80".parse().unwrap()), Lookup::Refuse);
        // A class that reaches none of its rows is refused.
        let other = kapp(&mut t, None, "team=x");
        let m = maps(&mut t);
        let mut v = vservice("db", "198.18.2.2", LbType::Random, "198.18.0.1");
        v.allow_external = false;
        t.add_vservice(v, Origin::Request).unwrap();
        let m2 = maps(&mut t);
        assert_eq!(m2.lookup(other.0, Proto::Tcp, "198.18.2.2:80".parse().unwrap()), Lookup::Refuse);
        let Lookup::Backends(r) = m2.lookup(c.0, Proto::Tcp, "198.18.2.2:80".parse().unwrap()) else { panic!() };
        assert_eq!((r.lb(), r.targets().collect::<Vec<_>>()), (Lb::Random, vec![host(p1)]));
        assert_ne!(m, m2);
    }

    #[test]
    fn loopback_goes_to_the_broker_only_where_the_app_listens_privately() {
        let mut t = table();
        let a = kapp(&mut t, Some("198.18.0.1"), "zone=default");
        let b = kapp(&mut t, Some("198.18.0.2"), "zone=default");
        t.add_private_bind(a, Proto::Tcp, 6379);
        t.add_private_bind(a, Proto::Udp, 5353);
        t.add_private_bind(AppId(0xf000_0009), Proto::Tcp, 1);
        let m = maps(&mut t);
        assert_eq!(m.private, BTreeSet::from([PrivateKey { app: a.0, port: 6379, proto: Proto::Tcp }]));
        for dest in ["127.0.0.1:6379", "[::1]:6379", "0.0.0.0:6379", "[::ffff:127.0.0.2]:6379"] {
            assert_eq!(
                m.lookup(a.0, Proto::Tcp, dest.parse().unwrap()),
                Lookup::Broker(BrokerKind::Loopback),
                "{dest}"
            );
            assert_eq!(m.lookup(b.0, Proto::Tcp, dest.parse().unwrap()), Lookup::Refuse, "{dest}");
        }
        assert_eq!(m.lookup(a.0, Proto::Tcp, "127.0.0.1:6380".parse().unwrap()), Lookup::Refuse);
        // No broker for datagrams: a UDP connect to loopback is refused.
        assert_eq!(m.lookup(a.0, Proto::Udp, "127.0.0.1:5353".parse().unwrap()), Lookup::Refuse);
        // A wildcard listener of its own on the host takes its loopback connects too
        // (the broker tries its namespace first); one on its own address does not.
        let p = serve(&mut t, a, "0.0.0.0:8001", 1);
        serve(&mut t, a, "198.18.0.1:8002", 2);
        let m = maps(&mut t);
        assert_eq!(m.lookup(a.0, Proto::Tcp, "127.0.0.1:8001".parse().unwrap()), Lookup::Broker(BrokerKind::Loopback));
        assert_eq!(m.lookup(b.0, Proto::Tcp, "127.0.0.1:8001".parse().unwrap()), Lookup::Refuse);
        assert_eq!(m.lookup(a.0, Proto::Tcp, "127.0.0.1:8002".parse().unwrap()), Lookup::Refuse);
        assert_eq!(t.own_rows(a, Proto::Tcp, "127.0.0.1:8001".parse().unwrap()), [SocketAddrV4::new(NODE, p)]);
        t.remove_app(a);
        assert!(maps(&mut t).private.is_empty());
    }

    #[test]
    fn egress_sends_outside_tcp_to_the_broker_and_spares_the_other_nodes() {
        let mut t = table();
        let c = kapp(&mut t, None, "zone=default");
        assert!(!maps(&mut t).config.egress);
        let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
        t.set_remote(Remote {
            nodes: vec![("g".into(), gw), ("n5".into(), "10.0.0.5".parse().unwrap())],
            egress: vec![gw],
            ..Remote::default()
        });
        let m = maps(&mut t);
        assert_eq!(m.config, Config::new(NODE, BROKER.parse().unwrap(), true, t.pool().ranges()));
        assert_eq!(m.lookup(c.0, Proto::Tcp, "192.0.2.1:443".parse().unwrap()), Lookup::Broker(BrokerKind::Egress));
        assert_eq!(m.lookup(c.0, Proto::Udp, "192.0.2.1:53".parse().unwrap()), Lookup::Pass);
        for node in ["10.0.0.3:22", "10.0.0.5:22"] {
            assert_eq!(m.routes.get(&key(ANY_CLASS, &node.replace(":22", ":0"), Proto::Tcp)), Some(&KRoute::pass()));
            assert_eq!(m.lookup(c.0, Proto::Tcp, node.parse().unwrap()), Lookup::Pass);
        }
        t.set_egress_gateway(true);
        assert!(!maps(&mut t).config.egress);
    }

    #[test]
    fn more_backends_than_an_entry_holds_are_cut_evenly_and_reported() {
        let mut t = table();
        let c = kapp(&mut t, None, "zone=default");
        let rows: Vec<RemoteRow> = (0..40u16)
            .map(|i| RemoteRow {
                node: "n2".into(),
                app: format!("a{i}"),
                proto: Proto::Tcp,
                service: "198.18.0.7:80".parse().unwrap(),
                host: SocketAddrV4::new("10.0.0.2".parse().unwrap(), 41000 + i),
                labels: Labels::parse("zone=default").unwrap(),
            })
            .collect();
        let apps = vec![RemoteApp {
            node: "n2".into(),
            id: "x".into(),
            name: None,
            ip: "198.18.0.7".parse().unwrap(),
            expose: vec![],
            labels: None,
        }];
        t.set_remote(Remote {
            nodes: vec![("n2".into(), "10.0.0.2".parse().unwrap())],
            rows,
            apps,
            ..Remote::default()
        });
        let view = t.kernel_maps(BROKER.parse().unwrap());
        let k = key(ANY_CLASS, "198.18.0.7:80", Proto::Tcp);
        let r = &view.maps.routes[&k];
        assert_eq!((r.verdict(), r.targets().count()), (Verdict::Backends, MAX_TARGETS));
        assert!(view.trimmed.contains(&RouteKey { class: class(&view.maps, c), ..k }));
        // The same table gives the same entry: nothing to rewrite.
        assert_eq!(t.kernel_maps(BROKER.parse().unwrap()).maps, view.maps);
    }

    /// A table built from generated operations: kernel-driver apps of three label sets
    /// on a few addresses, their TCP and UDP rows, private binds, other nodes with rows,
    /// apps and egress gateways, and vservices of both balancers over rows and outside
    /// backends.
    fn generated(ops: &[(u8, u8, u8)]) -> (Table, Vec<AppId>) {
        let mut t = table();
        let labels = ["zone=default", "role=prod", "role=prod,zone=default"];
        let ips = [None, Some("198.18.0.1"), Some("198.18.0.2"), Some("198.18.0.3")];
        let mut apps = vec![kapp(&mut t, None, "zone=default")];
        let mut remote = Remote::default();
        let mut inode = 0;
        for &(op, a, b) in ops {
            match op % 6 {
                0 => apps.push(kapp(&mut t, ips[a as usize % 4], labels[b as usize % 3])),
                1 => {
                    let id = apps[a as usize % apps.len()];
                    let proto = if b % 3 == 0 { Proto::Udp } else { Proto::Tcp };
                    if let (Ok(BindPlan::Host { service, .. }), Some(p)) =
                        (t.plan_bind(id, format!("0.0.0.0:{}", 80 + b % 3).parse().unwrap(), root), t.take_port())
                    {
                        inode += 1;
                        t.add_binding(id, BoundSocket { proto, ..bound(inode, "0.0.0.0:80") }, service, p);
                        t.set_listening(proto, p, inode, 1);
                    }
                }
                2 => t.add_private_bind(apps[a as usize % apps.len()], Proto::Tcp, 6000 + u16::from(b % 2)),
                3 => {
                    let node: Ipv4Addr = format!("10.0.0.{}", 2 + a % 2).parse().unwrap();
                    if !remote.nodes.iter().any(|n| n.1 == node) {
                        remote.nodes.push((format!("n{node}"), node));
                    }
                    if b % 4 == 0 && !remote.egress.contains(&node) {
                        remote.egress.push(node);
                    }
                    remote.rows.push(RemoteRow {
                        node: format!("n{node}"),
                        app: format!("r{b}"),
                        proto: if b % 5 == 0 { Proto::Udp } else { Proto::Tcp },
                        service: format!("198.18.0.{}:{}", 3 + b % 3, 80 + b % 2).parse().unwrap(),
                        host: SocketAddrV4::new(node, 42000 + u16::from(b)),
                        labels: Labels::parse(labels[a as usize % 3]).unwrap(),
                    });
                    let ip = format!("198.18.0.{}", 3 + b % 3).parse().unwrap();
                    if !remote.apps.iter().any(|x| x.ip == ip) {
                        let id = format!("x{b}");
                        remote.apps.push(RemoteApp {
                            node: format!("n{node}"),
                            id,
                            name: None,
                            ip,
                            expose: vec![],
                            labels: None,
                        });
                    }
                    t.set_remote(remote.clone());
                }
                4 => {
                    let lb = if b % 2 == 0 { LbType::Random } else { LbType::RoundRobin };
                    let backends = ["198.18.0.1", "198.18.0.2,192.0.2.7", "198.18.0.4,198.18.0.1", "10.0.0.1:80"];
                    let mut v =
                        vservice(&format!("v{a}"), &format!("198.18.2.{}", a % 3), lb, backends[b as usize % 4]);
                    v.allow_external = b % 3 == 0;
                    let _ = t.add_vservice(v, Origin::Cluster);
                }
                _ => {
                    let id = apps.swap_remove(a as usize % apps.len());
                    t.remove_app(id);
                    if apps.is_empty() {
                        apps.push(kapp(&mut t, None, labels[b as usize % 3]));
                    }
                }
            }
        }
        (t, apps)
    }

    fn destinations(t: &Table) -> Vec<SocketAddr> {
        let mut ips: Vec<String> = (0..5).map(|i| format!("198.18.0.{i}")).collect();
        ips.extend((0..3).map(|i| format!("198.18.2.{i}")));
        ips.extend(["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.7", "203.0.113.1", "127.0.0.1"].map(String::from));
        let mut ports: Vec<u16> = vec![0, 22, 53, 80, 81, 6000, 6001, 6661, 6664, 7946, 8000];
        ports.extend(t.bindings().map(|b| b.host.port()));
        ports.extend(t.remote().rows.iter().map(|r| r.host.port()));
        let mut out: Vec<SocketAddr> = Vec::new();
        for ip in &ips {
            for port in &ports {
                out.push(format!("{ip}:{port}").parse().unwrap());
            }
        }
        out.extend(
            ["[::1]:6000", "[::]:6001", "[::ffff:198.18.0.1]:80", "[2001:db8::1]:80"]
                .map(|s| s.parse::<SocketAddr>().unwrap()),
        );
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// For every kernel-driver app, destination and protocol, the maps as the
        /// programs read them answer what the user driver answers: the same set of
        /// targets (and source address), refused exactly where it refuses, passed where
        /// it goes direct, brokered where it goes private (to a listener) or through
        /// egress.
        #[test]
        fn the_maps_answer_as_route_connect_does(ops in proptest::collection::vec((0u8..6, 0u8..8, 0u8..16), 0..40)) {
            let (mut t, apps) = generated(&ops);
            let view = t.kernel_maps(BROKER.parse().unwrap());
            prop_assert!(view.trimmed.is_empty());
            let m = view.maps;
            let dests = destinations(&t);
            for &c in &apps {
                for &dest in &dests {
                    for proto in [Proto::Tcp, Proto::Udp] {
                        let user = t.route_connect(c, proto, dest);
                        let kernel = m.lookup(c.0, proto, dest);
                        let private = t.private_binds().any(|p| p.app == c && p.proto == proto && p.port == dest.port())
                            || (proto == Proto::Tcp && !t.own_rows(c, proto, SocketAddr::new([127, 0, 0, 1].into(), dest.port())).is_empty());
                        match (&user, kernel) {
                            (Route::Private, Lookup::Broker(BrokerKind::Loopback)) if proto == Proto::Tcp && private => {}
                            (Route::Private, Lookup::Refuse) if proto == Proto::Udp || !private => {}
                            (Route::Refused, Lookup::Refuse) => {}
                            (Route::Backends(ts), Lookup::Refuse) if ts.is_empty() => {}
                            (Route::Backends(ts), Lookup::Backends(r)) => {
                                let want: BTreeSet<SocketAddrV4> = ts.iter().map(|t| t.addr).collect();
                                let got: BTreeSet<SocketAddrV4> = r.targets().collect();
                                prop_assert_eq!(&got, &want, "{:?} {} {:?}", proto, dest, c);
                                prop_assert_eq!(r.source(), ts.iter().find_map(|t| t.source));
                                // A datagram socket's pinned target is one of them, whatever its cookie.
                                for cookie in [0, 1, 7, 8, 1 << 40, u64::MAX] {
                                    prop_assert!(r.pinned(cookie).is_some_and(|p| want.contains(&p)));
                                }
                            }
                            (Route::Direct(d), Lookup::Pass) if *d == crate::addr::unmap(dest) => {}
                            // A pool port of the node where no row listens: nothing
                            // there takes connections from other apps (documented).
                            (Route::Direct(SocketAddr::V4(d)) | Route::Egress { dest: SocketAddr::V4(d), .. }, Lookup::Refuse)
                                if *d.ip() == NODE && t.pool().ranges().contains(d.port()) => {}
                            (Route::Egress { dest: d, .. }, Lookup::Broker(BrokerKind::Egress)) if *d == crate::addr::unmap(dest) => {}
                            (Route::Federated { service, .. }, Lookup::Broker(BrokerKind::Egress)) if SocketAddr::V4(*service) == crate::addr::unmap(dest) => {}
                            (u, k) => prop_assert!(false, "{:?} {} by {}: user {:?}, kernel {:?}", proto, dest, c, u, k),
                        }
                    }
                }
            }
            // A datagram's source shows as the user driver shows it.
            for &from in &dests {
                let user = t.peer_name(Proto::Udp, from).unwrap_or(crate::addr::unmap(from));
                prop_assert_eq!(crate::addr::unmap(m.shown_source(from)), user, "{}", from);
            }
            // An app the maps do not know is refused by the programs (EPERM).
            prop_assert_eq!(m.lookup(1, Proto::Tcp, "198.18.0.1:80".parse().unwrap()), Lookup::NoApp);
        }
    }

    /// Incomplete maps refuse every connect no exact entry decides (the node's other
    /// ports, the outside) and exact entries still decide; complete maps refuse a pool
    /// port of the node without an entry, but pass its other ports.
    #[test]
    fn what_no_exact_entry_decides_is_refused_while_the_maps_are_incomplete() {
        let mut t = table();
        let c = kapp(&mut t, Some("198.18.0.1"), "zone=default");
        let p = serve(&mut t, c, "0.0.0.0:80", 1);
        let mut m = maps(&mut t);
        let free_pool_port = (40000..).find(|q| *q != p).unwrap();
        assert!(m.config.in_pool(free_pool_port) && !m.config.in_pool(22));
        let node = |port| SocketAddr::V4(host(port));
        assert_eq!(m.lookup(c.0, Proto::Tcp, node(22)), Lookup::Pass);
        assert_eq!(m.lookup(c.0, Proto::Tcp, node(free_pool_port)), Lookup::Refuse);
        assert!(matches!(m.lookup(c.0, Proto::Tcp, node(p)), Lookup::Backends(_)));
        m.config.complete = false;
        assert_eq!(m.lookup(c.0, Proto::Tcp, node(22)), Lookup::Refuse);
        assert_eq!(m.lookup(c.0, Proto::Tcp, "203.0.113.1:443".parse().unwrap()), Lookup::Refuse);
        assert!(matches!(m.lookup(c.0, Proto::Tcp, "198.18.0.1:80".parse().unwrap()), Lookup::Backends(_)));
    }

    /// The generation moves with every change the maps derive from, and not with a
    /// gossip word that repeats the last (the daemon then skips the rebuild).
    #[test]
    fn the_generation_moves_with_changes_and_not_with_repeated_gossip() {
        let mut t = table();
        let g0 = t.generation();
        let c = kapp(&mut t, None, "zone=default");
        let g1 = t.generation();
        assert!(g1 > g0);
        let remote = Remote { nodes: vec![("b".into(), "10.0.0.2".parse().unwrap())], ..Remote::default() };
        t.set_remote(remote.clone());
        let g2 = t.generation();
        assert!(g2 > g1);
        let before = maps(&mut t);
        t.set_remote(remote);
        assert_eq!(t.generation(), g2, "the same word again");
        assert_eq!(maps(&mut t), before);
        serve(&mut t, c, "0.0.0.0:80", 1);
        assert!(t.generation() > g2);
        t.remove_app(c);
        assert!(t.generation() > g2 + 1);
    }
}
