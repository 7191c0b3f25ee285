//! Following the table with the kernel driver's maps at the cost of what changed: the
//! table's mutations note the destinations they can touch, and [`Table::kernel_sync`]
//! rebuilds only their entries (and every vservice port's, which read the rest of the
//! table), while a change to the label classes or the node's config rebuilds
//! everything. The entries it keeps equal [`Table::kernel_maps`]'s after any sequence
//! of changes (the property test below holds it to that).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::kmap::{Change, KernelMaps, RouteKey, ANY_CLASS};
use crate::labels::Labels;

use super::apps::{App, Driver};
use super::kernel::{KernelView, Pass};
use super::remote::{Remote, RemoteRow};
use super::services::Binding;
use super::{Proto, Table};

/// The label classes of this node's kernel-driver apps, what changed since the last
/// sync, and the entries that sync left.
#[derive(Debug, Default)]
pub(super) struct KernelState {
    /// Each label set of a kernel-driver app: its class and how many apps have it.
    classes: HashMap<Labels, (u32, usize)>,
    dirty: Dirty,
    synced: Option<Synced>,
}

/// What the table's changes since the last sync can have touched.
#[derive(Debug, Default)]
struct Dirty {
    /// Everything: the classes, the config or the cluster's nodes may have changed.
    all: bool,
    /// Addresses whose every-port entry may have changed.
    ips: BTreeSet<Ipv4Addr>,
    /// Services whose rows changed: their own entries and their rows' host addresses'.
    services: BTreeSet<(Proto, SocketAddrV4)>,
    /// Single destinations.
    dests: BTreeSet<(Proto, SocketAddrV4)>,
}

#[derive(Debug)]
struct Synced {
    classes: Vec<(Labels, u32)>,
    view: KernelView,
}

impl KernelState {
    /// How many label classes there are.
    pub(super) fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// Everything is to be rebuilt at the next sync.
    pub(super) fn touch_all(&mut self) {
        self.dirty.all = true;
    }

    // Nothing is noted before the first sync, which builds everything (a daemon
    // under the user driver never syncs, and keeps no list that grows).

    pub(super) fn touch_ip(&mut self, ip: Ipv4Addr) {
        if self.synced.is_some() {
            self.dirty.ips.insert(ip);
        }
    }

    pub(super) fn touch_dest(&mut self, proto: Proto, dest: SocketAddrV4) {
        if self.synced.is_some() {
            self.dirty.dests.insert((proto, dest));
        }
    }

    /// A row of `service` at `host` came or went.
    pub(super) fn touch_row(&mut self, proto: Proto, service: SocketAddrV4, host: SocketAddrV4) {
        if self.synced.is_some() {
            self.dirty.services.insert((proto, service));
            self.dirty.dests.insert((proto, host));
        }
    }

    /// A binding came or went (a row when listening).
    pub(super) fn touch_binding(&mut self, b: &Binding) {
        self.touch_row(b.proto, b.service, b.host);
    }

    /// `app` was registered: a kernel-driver app with a label set no other has makes
    /// a new class, which every destination needs an entry for.
    pub(super) fn app_added(&mut self, app: &App) {
        self.touch_ip(app.ip);
        if app.driver != Driver::Kernel {
            return;
        }
        if let Some((_, n)) = self.classes.get_mut(&app.labels) {
            *n += 1;
            return;
        }
        // The app's id with the top bit cleared (never ANY_CLASS), or the next free.
        let mut class = app.id.0 & 0x7fff_ffff;
        while self.classes.values().any(|(c, _)| *c == class) {
            class = (class + 1) & 0x7fff_ffff;
        }
        self.classes.insert(app.labels.clone(), (class, 1));
        self.touch_all();
    }

    /// `app` and its `bindings` went: the last app of a class takes the class's
    /// entries with it.
    pub(super) fn app_removed(&mut self, app: &App, bindings: &[Binding]) {
        self.touch_ip(app.ip);
        bindings.iter().for_each(|b| self.touch_binding(b));
        if app.driver != Driver::Kernel {
            return;
        }
        if let Some((_, n)) = self.classes.get_mut(&app.labels) {
            *n -= 1;
            if *n == 0 {
                self.classes.remove(&app.labels);
                self.touch_all();
            }
        }
    }

    /// The apps were replaced (a restore): classes made again, lowest id first.
    pub(super) fn apps_restored<'a>(&mut self, apps: impl Iterator<Item = &'a App>) {
        self.classes.clear();
        let mut apps: Vec<&App> = apps.collect();
        apps.sort_by_key(|a| a.id);
        apps.into_iter().for_each(|a| self.app_added(a));
        self.touch_all();
    }

    /// The cluster's word goes from `old` to `new`: other nodes or gateways rebuild
    /// everything; apps touch their addresses, rows their services and hosts.
    pub(super) fn remote_changed(&mut self, old: &Remote, new: &Remote) {
        if old.nodes != new.nodes || old.egress != new.egress || old.ingresses != new.ingresses {
            self.touch_all();
            return;
        }
        let ips = |r: &Remote| r.apps.iter().map(|a| a.ip).collect::<BTreeSet<Ipv4Addr>>();
        let (was, is) = (ips(old), ips(new));
        was.symmetric_difference(&is).for_each(|ip| self.touch_ip(*ip));
        // Remote clusters' services make their addresses virtual (see `is_virtual`),
        // and their labels decide who reaches them: any change touches the address.
        let gone = old.federated.iter().filter(|s| !new.federated.contains(s));
        let changed: BTreeSet<(Proto, SocketAddrV4)> = gone
            .chain(new.federated.iter().filter(|s| !old.federated.contains(s)))
            .map(|s| (s.proto, s.service))
            .collect();
        for (proto, service) in changed {
            self.touch_ip(*service.ip());
            self.touch_dest(proto, service);
        }
        // Rows as a multiset: a row published twice serves twice.
        let mut count: HashMap<&RemoteRow, isize> = HashMap::new();
        old.rows.iter().for_each(|r| *count.entry(r).or_default() -= 1);
        new.rows.iter().for_each(|r| *count.entry(r).or_default() += 1);
        for r in count.into_iter().filter(|(_, n)| *n != 0).map(|(r, _)| r) {
            self.touch_row(r.proto, r.service, r.host);
        }
    }
}

impl Table {
    /// The label classes of this node's kernel-driver apps, lowest first: one per label
    /// set, named by the id of the first app that had it (top bit cleared, so never
    /// [`ANY_CLASS`]) and kept while an app has it, never shared by two label sets.
    pub(super) fn kernel_classes(&self) -> Vec<(Labels, u32)> {
        let mut classes: Vec<(Labels, u32)> = self.kernel.classes.iter().map(|(l, (c, _))| (l.clone(), *c)).collect();
        classes.sort_by_key(|(_, c)| *c);
        classes
    }

    /// What the kernel driver's maps should hold now, as of the last
    /// [`Table::kernel_sync`].
    pub fn kernel_synced(&self) -> Option<&KernelMaps> {
        self.kernel.synced.as_ref().map(|s| &s.view.maps)
    }

    /// Brings the entries kept for the kernel driver to what the table says, and
    /// returns the writes that take the maps there (in [`KernelMaps::diff`]'s order)
    /// and the entries rebuilt now that had to leave backends out. Only the
    /// destinations the changes since the last sync touched are decided again, and
    /// every vservice port; everything is, the first time and when a label class, the
    /// config (`broker` included) or the cluster's nodes changed.
    pub fn kernel_sync(&mut self, broker: SocketAddrV4) -> (Vec<Change>, Vec<RouteKey>) {
        let dirty = std::mem::take(&mut self.kernel.dirty);
        let classes = self.kernel_classes();
        let config = self.kernel_config(broker);
        let synced = self.kernel.synced.take();
        let same = |s: &Synced| s.classes == classes && s.view.maps.config == config && !dirty.all;
        let reuse = synced.as_ref().is_some_and(same);
        let mut synced = match synced {
            Some(s) if reuse => s,
            other => {
                let old = other.map_or_else(|| KernelMaps::new(config), |s| s.view.maps);
                let view = self.kernel_maps(broker);
                let changes = KernelMaps::diff(&old, &view.maps);
                let trimmed = view.trimmed.iter().copied().collect();
                self.kernel.synced = Some(Synced { classes, view });
                return (changes, trimmed);
            }
        };
        let view = &mut synced.view;
        let mut before = KernelMaps::new(config);
        before.apps = std::mem::replace(&mut view.maps.apps, self.kernel_apps(&classes));
        before.private = std::mem::replace(&mut view.maps.private, self.kernel_private(&view.maps.apps));
        let peers = if classes.is_empty() { BTreeMap::new() } else { self.udp_peers() };
        before.peers = std::mem::replace(&mut view.maps.peers, peers);
        let mut touched: BTreeSet<RouteKey> = BTreeSet::new();
        let mut pass = Pass::new(classes.clone());
        if !classes.is_empty() {
            let mut note = |view: &KernelView, pass: &Pass, proto, dest| {
                for key in pass.keys(proto, dest) {
                    if touched.insert(key) {
                        if let Some(r) = view.maps.routes.get(&key) {
                            before.routes.insert(key, r.clone());
                        }
                    }
                }
            };
            let mut dests = dirty.dests;
            for ip in dirty.ips {
                for proto in [Proto::Tcp, Proto::Udp] {
                    let whole = RouteKey { class: ANY_CLASS, ip, port: 0, proto };
                    let was = view.maps.routes.get(&whole).cloned();
                    note(view, &pass, proto, SocketAddrV4::new(ip, 0));
                    self.put_whole(view, &mut pass, proto, ip);
                    if view.maps.routes.get(&whole) != was.as_ref() {
                        // Every entry at the address compares with this one.
                        dests.extend(self.exact_destinations(|at| at == ip).into_iter().filter(|(p, _)| *p == proto));
                        dests.extend(entries_at(view, &pass, proto, ip));
                    }
                }
            }
            for (proto, service) in dirty.services {
                dests.insert((proto, service));
                dests.extend(self.services.rows_at(proto, service).map(|b| (proto, b.host)));
                dests.extend(self.remote.rows_at(proto, service).map(|r| (proto, r.host)));
            }
            for v in self.vservices.iter() {
                dests.extend(v.ports.iter().map(|m| (Proto::Tcp, SocketAddrV4::new(v.ip, m.vport))));
            }
            for (proto, dest) in dests {
                note(view, &pass, proto, dest);
                self.put_exact(view, &mut pass, proto, dest);
            }
        }
        let mut after = KernelMaps::new(config);
        after.apps = view.maps.apps.clone();
        after.private = view.maps.private.clone();
        after.peers = view.maps.peers.clone();
        after.routes = touched.iter().filter_map(|k| Some((*k, view.maps.routes.get(k)?.clone()))).collect();
        let trimmed = touched.iter().filter(|k| view.trimmed.contains(k)).copied().collect();
        let changes = KernelMaps::diff(&before, &after);
        self.kernel.synced = Some(synced);
        (changes, trimmed)
    }
}

/// The destinations over `proto` at `ip` that have an entry in `view`.
fn entries_at(view: &KernelView, pass: &Pass, proto: Proto, ip: Ipv4Addr) -> Vec<(Proto, SocketAddrV4)> {
    let mut out = Vec::new();
    for class in pass.classes.iter().map(|(_, c)| *c).chain([ANY_CLASS]) {
        let from = RouteKey { class, ip, port: 1, proto };
        let to = RouteKey { class, ip, port: u16::MAX, proto };
        let at = view.maps.routes.range(from..=to).filter(|(k, _)| k.proto == proto);
        out.extend(at.map(|(k, _)| (proto, SocketAddrV4::new(ip, k.port))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AppId;
    use crate::table::testing::*;
    use crate::table::{BindPlan, BoundSocket, NewApp, Origin, RemoteApp, RemoteRow};
    use crate::vservice::LbType;
    use proptest::prelude::*;

    const BROKER: &str = "10.0.0.1:1021";

    fn add(t: &mut Table, ip: Option<&str>, labels: &str, driver: Driver) -> AppId {
        let labels = Labels::parse(labels).unwrap();
        let new = NewApp { ip: ip.map(|s| s.parse().unwrap()), labels, pid: 1, driver, ..NewApp::default() };
        t.add_app(new).unwrap().id
    }

    /// Random changes to a table, as the daemon and gossip make them.
    struct Changes {
        t: Table,
        apps: Vec<AppId>,
        remote: Remote,
        inode: u64,
        vservices: Vec<String>,
    }

    impl Changes {
        fn new() -> Changes {
            let mut t = table();
            let apps = vec![add(&mut t, None, "zone=default", Driver::Kernel)];
            Changes { t, apps, remote: Remote::default(), inode: 0, vservices: Vec::new() }
        }

        fn pick(&self, a: u8) -> Option<AppId> {
            (!self.apps.is_empty()).then(|| self.apps[a as usize % self.apps.len()])
        }

        fn apply(&mut self, (op, a, b): (u8, u8, u8)) {
            const LABELS: [&str; 4] = ["zone=default", "role=prod", "role=prod,zone=default", "role=dev"];
            const IPS: [Option<&str>; 4] = [None, Some("198.18.0.1"), Some("198.18.0.2"), Some("198.18.0.3")];
            let picked = self.pick(a);
            let t = &mut self.t;
            let node = |i: u8| -> Ipv4Addr { format!("10.0.0.{}", 2 + i % 2).parse().unwrap() };
            match op % 13 {
                0 => self.apps.push(add(t, IPS[a as usize % 4], LABELS[b as usize % 4], Driver::Kernel)),
                1 => self.apps.push(add(t, IPS[a as usize % 4], LABELS[b as usize % 4], Driver::User)),
                // A listen on a socket bound by an earlier change.
                2 if b % 2 == 0 && t.bindings().any(|x| !x.listening) => {
                    let x = t.bindings().find(|x| !x.listening).unwrap();
                    let (proto, port, inode) = (x.proto, x.host.port(), x.inode);
                    t.set_listening(proto, port, inode, 1);
                }
                // A bind, listening (a row) or not.
                2 | 12 => {
                    let Some(id) = picked else { return };
                    let proto = if b % 3 == 0 { Proto::Udp } else { Proto::Tcp };
                    let want = format!("0.0.0.0:{}", 80 + b % 3).parse().unwrap();
                    if let (Ok(BindPlan::Host { service, .. }), Some(p)) = (t.plan_bind(id, want, root), t.take_port())
                    {
                        self.inode += 1;
                        t.add_binding(id, BoundSocket { proto, ..bound(self.inode, "0.0.0.0:80") }, service, p);
                        if op % 13 == 2 {
                            t.set_listening(proto, p, self.inode, 1);
                        }
                    }
                }
                3 => {
                    if let Some(id) = picked {
                        self.apps.retain(|x| *x != id);
                        t.remove_app(id);
                    }
                }
                // Sockets the kernel no longer lists (two listings without them).
                4 => {
                    let live: std::collections::HashSet<u64> =
                        t.bindings().map(|x| x.inode).filter(|i| (i + u64::from(b)) % 3 != 0).collect();
                    for proto in [Proto::Tcp, Proto::Udp] {
                        for _ in 0..2 {
                            let mark = t.mark();
                            t.sweep(proto, &live, Some(&live), mark);
                        }
                    }
                }
                5 => {
                    if let Some(id) = picked {
                        t.add_private_bind(id, Proto::Tcp, 6000 + u16::from(b % 2));
                    }
                }
                // Another node's row and app.
                6 => {
                    let n = node(a);
                    if !self.remote.nodes.iter().any(|x| x.1 == n) {
                        self.remote.nodes.push((format!("n{n}"), n));
                    }
                    let ip: Ipv4Addr = format!("198.18.0.{}", 3 + b % 3).parse().unwrap();
                    self.remote.rows.push(RemoteRow {
                        node: format!("n{n}"),
                        app: format!("r{b}"),
                        proto: if b % 5 == 0 { Proto::Udp } else { Proto::Tcp },
                        // Port 0 is a gossiper's word only.
                        service: SocketAddrV4::new(ip, if b == 7 { 0 } else { 80 + u16::from(b % 2) }),
                        host: SocketAddrV4::new(n, 42000 + u16::from(b)),
                        labels: Labels::parse(LABELS[a as usize % 4]).unwrap(),
                    });
                    if !self.remote.apps.iter().any(|x| x.ip == ip) {
                        let app = RemoteApp {
                            node: format!("n{n}"),
                            id: format!("x{b}"),
                            name: None,
                            ip,
                            expose: vec![],
                            labels: None,
                        };
                        self.remote.apps.push(app);
                    }
                    t.set_remote(self.remote.clone());
                }
                // A row or an app of another node goes.
                7 => {
                    if b % 2 == 0 && !self.remote.rows.is_empty() {
                        let i = a as usize % self.remote.rows.len();
                        self.remote.rows.remove(i);
                    } else if !self.remote.apps.is_empty() {
                        let i = a as usize % self.remote.apps.len();
                        self.remote.apps.remove(i);
                    }
                    t.set_remote(self.remote.clone());
                }
                // A node fails: it goes with its rows, apps and gateway.
                8 => {
                    let n = node(a);
                    let name = format!("n{n}");
                    self.remote.nodes.retain(|x| x.1 != n);
                    self.remote.egress.retain(|x| *x != n);
                    self.remote.rows.retain(|r| r.node != name);
                    self.remote.apps.retain(|r| r.node != name);
                    t.set_remote(self.remote.clone());
                }
                9 => {
                    let lb = if b % 2 == 0 { LbType::Random } else { LbType::RoundRobin };
                    let backends = ["198.18.0.1", "198.18.0.2,192.0.2.7", "198.18.0.4,198.18.0.1", "10.0.0.1:80"];
                    let name = format!("v{a}");
                    let mut v = vservice(&name, &format!("198.18.2.{}", a % 3), lb, backends[b as usize % 4]);
                    v.allow_external = b % 3 == 0;
                    if t.add_vservice(v, Origin::Cluster).is_ok() {
                        self.vservices.push(name);
                    }
                }
                10 => {
                    if !self.vservices.is_empty() {
                        let name = self.vservices.remove(a as usize % self.vservices.len());
                        t.remove_vservice(&name).unwrap();
                    }
                }
                // Egress: a gateway elsewhere comes or goes, or this node becomes one.
                _ => {
                    if b % 2 == 0 {
                        t.set_egress_gateway(!t.egress_gateway());
                    } else {
                        let n = node(a);
                        if self.remote.egress.contains(&n) {
                            self.remote.egress.retain(|x| *x != n);
                        } else if self.remote.nodes.iter().any(|x| x.1 == n) {
                            self.remote.egress.push(n);
                        }
                        t.set_remote(self.remote.clone());
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// After every change of a random sequence, the entries kept by the syncs equal
        /// a build from nothing (trimmed ones included), and the maps the syncs' writes
        /// made equal them too.
        #[test]
        fn synced_maps_equal_a_full_build_after_every_change(
            ops in proptest::collection::vec((0u8..13, 0u8..8, 0u8..16), 0..60)
        ) {
            let broker: SocketAddrV4 = BROKER.parse().unwrap();
            let mut c = Changes::new();
            let mut written: Option<KernelMaps> = None;
            for (i, op) in ops.into_iter().enumerate() {
                c.apply(op);
                let (changes, _) = c.t.kernel_sync(broker);
                let w = written.get_or_insert_with(|| KernelMaps::new(c.t.kernel_config(broker)));
                w.apply(&changes);
                let full = c.t.kernel_maps(broker);
                let synced = &c.t.kernel.synced.as_ref().unwrap().view;
                prop_assert_eq!(&synced.maps, &full.maps, "after op {} {:?}", i, op);
                prop_assert_eq!(&synced.trimmed, &full.trimmed);
                prop_assert_eq!(&*w, &full.maps);
            }
        }
    }

    /// A listen rebuilds the entries of its service and host address, not the others.
    #[test]
    fn a_listen_writes_its_own_entries_and_a_new_class_rewrites_all() {
        let broker: SocketAddrV4 = BROKER.parse().unwrap();
        let mut t = table();
        let a = add(&mut t, Some("198.18.0.1"), "role=a", Driver::Kernel);
        let b = add(&mut t, Some("198.18.0.2"), "role=b", Driver::Kernel);
        serve(&mut t, a, "0.0.0.0:80", 1);
        t.kernel_sync(broker);
        let p = serve(&mut t, b, "0.0.0.0:81", 2);
        let (changes, _) = t.kernel_sync(broker);
        // Its route entries, and (a wildcard listener) its loopback port for the broker.
        let own = crate::kmap::PrivateKey { app: b.0, port: 81, proto: Proto::Tcp };
        let keys: BTreeSet<(Ipv4Addr, u16)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::PutRoute(k, _) | Change::DeleteRoute(k) => Some((k.ip, k.port)),
                Change::PutPrivate(k) if *k == own => None,
                other => panic!("{other:?}"),
            })
            .collect();
        let want = BTreeSet::from([("198.18.0.2".parse().unwrap(), 81), (NODE, p)]);
        assert_eq!(keys, want);
        assert!(changes.contains(&Change::PutPrivate(own)));
        // Nothing changed, nothing written.
        assert_eq!(t.kernel_sync(broker).0, vec![]);
        // A third label set: its class needs entries wherever its answer is its own.
        let c = add(&mut t, None, "role=c,role=a", Driver::Kernel).0 & 0x7fff_ffff;
        let (changes, _) = t.kernel_sync(broker);
        let put: Vec<(u32, Ipv4Addr)> = changes
            .iter()
            .filter_map(|x| match x {
                Change::PutRoute(k, _) => Some((k.class, k.ip)),
                _ => None,
            })
            .collect();
        assert_eq!(put, vec![(c, NODE), (c, "198.18.0.1".parse().unwrap())], "{changes:?}");
        let full = t.kernel_maps(broker).maps;
        assert_eq!(t.kernel_synced(), Some(&full));
    }

    /// A table nobody syncs (the user driver's) notes nothing: no list grows with
    /// the rows that come and go.
    #[test]
    fn nothing_is_noted_before_the_first_sync() {
        let mut t = table();
        let a = add(&mut t, Some("198.18.0.1"), "role=a", Driver::Kernel);
        serve(&mut t, a, "0.0.0.0:80", 1);
        let noted = |t: &Table| t.kernel.dirty.ips.len() + t.kernel.dirty.services.len() + t.kernel.dirty.dests.len();
        assert_eq!(noted(&t), 0);
        t.kernel_sync(BROKER.parse().unwrap());
        serve(&mut t, a, "0.0.0.0:81", 2);
        assert_eq!(noted(&t), 2, "the new row's service and host");
    }

    /// A remote cluster's service goes to the broker for the classes its labels
    /// allow and is refused for the rest, at every other port of its address too;
    /// a change of its labels alone reaches the synced maps; gateways' ingresses are
    /// refused to all; gone, the address stays refused.
    #[test]
    fn a_remote_clusters_service_goes_to_the_broker_for_the_classes_it_allows() {
        use crate::kmap::{BrokerKind, Lookup};
        let broker: SocketAddrV4 = BROKER.parse().unwrap();
        let mut t = table();
        let a = add(&mut t, None, "role=a", Driver::Kernel);
        let b = add(&mut t, None, "role=b", Driver::Kernel);
        let service = |labels: &str| crate::table::RemoteService {
            cluster: "c1".into(),
            gateway: "10.0.0.2".parse().unwrap(),
            proto: Proto::Tcp,
            service: "198.18.20.1:8000".parse().unwrap(),
            name: None,
            labels: vec![Labels::parse(labels).unwrap()],
        };
        let ingress: SocketAddrV4 = "10.12.0.11:6660".parse().unwrap();
        let remote = Remote { nodes: vec![("gw".into(), "10.0.0.2".parse().unwrap())], ..Remote::default() };
        t.kernel_sync(broker);
        assert_eq!(t.kernel_synced().unwrap().lookup(a.0, Proto::Tcp, ingress.into()), Lookup::Pass);
        t.set_remote(Remote { federated: vec![service("role=a")], ingresses: vec![ingress], ..remote.clone() });
        t.kernel_sync(broker);
        let m = t.kernel_synced().unwrap().clone();
        // A gateway's ingress is a daemon port: no app of any class reaches it.
        for app in [a, b] {
            assert_eq!(m.lookup(app.0, Proto::Tcp, ingress.into()), Lookup::Refuse);
        }
        let web = "198.18.20.1:8000".parse().unwrap();
        assert_eq!(m.lookup(a.0, Proto::Tcp, web), Lookup::Broker(BrokerKind::Egress));
        assert_eq!(m.lookup(b.0, Proto::Tcp, web), Lookup::Refuse);
        for other in ["198.18.20.1:8001", "198.18.20.1:0"] {
            assert_eq!(m.lookup(a.0, Proto::Tcp, other.parse().unwrap()), Lookup::Refuse, "{other}");
        }
        assert_eq!(m.lookup(a.0, Proto::Udp, web), Lookup::Refuse);
        t.set_remote(Remote { federated: vec![service("role=b")], ingresses: vec![ingress], ..remote });
        t.kernel_sync(broker);
        let m = t.kernel_synced().unwrap().clone();
        assert_eq!(m.lookup(a.0, Proto::Tcp, web), Lookup::Refuse);
        assert_eq!(m.lookup(b.0, Proto::Tcp, web), Lookup::Broker(BrokerKind::Egress));
        assert_eq!(m, t.kernel_maps(broker).maps);
        // Gone, its address stays refused (never sent out of the host).
        t.set_remote(Remote { nodes: vec![("gw".into(), "10.0.0.2".parse().unwrap())], ..Remote::default() });
        t.kernel_sync(broker);
        let m = t.kernel_synced().unwrap().clone();
        assert_eq!(m.lookup(b.0, Proto::Tcp, web), Lookup::Refuse);
        assert_eq!(m, t.kernel_maps(broker).maps);
    }

    /// A row another node publishes at port 0 cannot stand in for the every-port
    /// entry of its address (port 0 is that entry's key): a virtual address still
    /// refuses every port nobody serves.
    #[test]
    fn a_gossiped_row_at_port_0_leaves_the_whole_address_refused() {
        let broker: SocketAddrV4 = BROKER.parse().unwrap();
        let mut t = table();
        let c = add(&mut t, None, "role=a", Driver::Kernel);
        let vip: Ipv4Addr = "198.18.0.5".parse().unwrap();
        let n: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let row = |port| RemoteRow {
            node: "b".into(),
            app: "x".into(),
            proto: Proto::Tcp,
            service: SocketAddrV4::new(vip, port),
            host: SocketAddrV4::new(n, 42000 + port),
            labels: Labels::parse("role=a").unwrap(),
        };
        let app = RemoteApp { node: "b".into(), id: "x".into(), name: None, ip: vip, expose: vec![], labels: None };
        let remote = Remote {
            nodes: vec![("b".into(), n)],
            egress: vec![],
            rows: vec![row(80)],
            apps: vec![app],
            federated: vec![],
            ingresses: vec![],
        };
        t.set_remote(remote.clone());
        t.kernel_sync(broker);
        t.set_remote(Remote { rows: vec![row(80), row(0)], ..remote });
        t.kernel_sync(broker);
        let m = t.kernel_synced().unwrap().clone();
        let whole = RouteKey { class: ANY_CLASS, ip: vip, port: 0, proto: Proto::Tcp };
        assert_eq!(m.routes.get(&whole), Some(&crate::kmap::Route::refuse()));
        assert_eq!(m.lookup(c.0, Proto::Tcp, "198.18.0.5:81".parse().unwrap()), crate::kmap::Lookup::Refuse);
        assert!(matches!(
            m.lookup(c.0, Proto::Tcp, "198.18.0.5:80".parse().unwrap()),
            crate::kmap::Lookup::Backends(_)
        ));
        assert_eq!(m, t.kernel_maps(broker).maps);
    }

    /// Prints what the kernel driver's maps cost: one build from nothing, and one sync
    /// after one more listen, at 5,000 and 20,000 rows over three label classes; a
    /// flood of 5,000 listens each synced; one service of 2,000 rows. Run in release:
    /// `cargo test --release -p ax-core measure_kernel_maps -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_kernel_maps() {
        use crate::ports::PortRanges;
        use crate::table::{NodeInfo, PortPool};
        use std::time::Instant;
        let broker: SocketAddrV4 = BROKER.parse().unwrap();
        let fresh = || {
            let node = NodeInfo { name: "n1".into(), cluster: "appswitch".into(), ip: NODE, ports: ports() };
            let mut t = Table::new(node, PortPool::new(PortRanges::parse("20000-60000").unwrap()), 7);
            let apps: Vec<AppId> = ["role=a", "role=b", "role=c"]
                .iter()
                .enumerate()
                .map(|(i, l)| add(&mut t, Some(&format!("198.18.0.{}", i + 1)), l, Driver::Kernel))
                .collect();
            (t, apps)
        };
        // Row i of app i % 3, at its own service port (`spread`) or all at port 80.
        let listen = |t: &mut Table, apps: &[AppId], i: usize, spread: bool| {
            let a = i % apps.len();
            let port = if spread { 1024 + i / apps.len() } else { 80 };
            let ip = format!("198.18.0.{}:{port}", a + 1);
            let host = t.take_port().unwrap();
            t.add_binding(apps[a], bound(i as u64 + 1, &ip), ip.parse().unwrap(), host);
            t.set_listening(Proto::Tcp, host, i as u64 + 1, 128);
        };
        for rows in [5_000, 20_000] {
            let (mut t, apps) = fresh();
            (0..rows).for_each(|i| listen(&mut t, &apps, i, true));
            let start = Instant::now();
            let m = t.kernel_maps(broker);
            println!(
                "one build, {rows} rows, 3 classes: {:?} ({} route entries)",
                start.elapsed(),
                m.maps.routes.len()
            );
            t.kernel_sync(broker);
            let mut synced = std::time::Duration::ZERO;
            for i in rows..rows + 100 {
                listen(&mut t, &apps, i, true);
                let start = Instant::now();
                t.kernel_sync(broker);
                synced += start.elapsed();
            }
            println!("the sync after one listen, {rows} rows: {:?} (mean of 100)", synced / 100);
            let start = Instant::now();
            t.remove_app(apps[0]);
            let (changes, _) = t.kernel_sync(broker);
            println!(
                "an app with {} rows exits (its class goes), {rows} rows: {:?} ({} writes)",
                rows / 3,
                start.elapsed(),
                changes.len()
            );
        }
        let (mut t, apps) = fresh();
        t.kernel_sync(broker);
        let start = Instant::now();
        for i in 0..5_000 {
            listen(&mut t, &apps, i, true);
            t.kernel_sync(broker);
        }
        println!("a flood of 5000 listens, each synced: {:?}", start.elapsed());
        let (mut t, apps) = fresh();
        (0..2_000).for_each(|i| listen(&mut t, &apps[..1], i, false));
        let start = Instant::now();
        t.kernel_maps(broker);
        println!("one build, one service of 2000 rows: {:?}", start.elapsed());
        t.kernel_sync(broker);
        let start = Instant::now();
        listen(&mut t, &apps[..1], 2_000, false);
        t.kernel_sync(broker);
        println!("one more row of that service, synced: {:?}", start.elapsed());
    }
}
