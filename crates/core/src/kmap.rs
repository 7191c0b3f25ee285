//! The kernel driver's maps as plain data: the byte layout of every key and value its
//! BPF programs read or write ([`layout`]: one place for it, the programs take their
//! offsets from its constants, the daemon encodes and decodes with its functions), and
//! [`KernelMaps`], the full content the maps should hold, with [`KernelMaps::diff`] to
//! turn one content into another with as few writes as the change needs.
//!
//! What goes into the maps (the decisions) is [`crate::table::Table::kernel_maps`]'s;
//! loading the programs and writing the maps is the trap crate's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;

use crate::table::Proto;

pub mod layout;

pub use layout::{
    AppEntry, BrokerEntry, BrokerKind, Config, ConnectCount, DecodeError, Lb, Peer, PrivateKey, Route, RouteError,
    RouteKey, SockState, Verdict, ANY_CLASS, MAX_GROUPS, MAX_TARGETS,
};

/// Everything the daemon-filled maps should hold (`ax_ksock` and `ax_kbroker` are
/// written per socket, not from the table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelMaps {
    pub config: Config,
    pub apps: BTreeMap<u32, AppEntry>,
    pub routes: BTreeMap<RouteKey, Route>,
    pub private: BTreeSet<PrivateKey>,
    /// UDP rows' host addresses and their services ([`Peer`]).
    pub peers: BTreeMap<SocketAddrV4, SocketAddrV4>,
}

/// What the programs do with a connect, as [`KernelMaps::lookup`] models it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'m> {
    /// The socket's app has no entry: EPERM.
    NoApp,
    /// ECONNREFUSED, no packet.
    Refuse,
    /// To the destination as it is.
    Pass,
    /// To the broker, which carries the connection on as `kind` says.
    Broker(BrokerKind),
    /// To one target of this entry.
    Backends(&'m Route),
}

/// One write to the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Config(Config),
    PutApp(u32, AppEntry),
    DeleteApp(u32),
    PutRoute(RouteKey, Route),
    DeleteRoute(RouteKey),
    PutPrivate(PrivateKey),
    DeletePrivate(PrivateKey),
    /// A UDP row's host address and its service.
    PutPeer(SocketAddrV4, SocketAddrV4),
    DeletePeer(SocketAddrV4),
}

impl KernelMaps {
    /// Empty maps under `config`.
    pub fn new(config: Config) -> KernelMaps {
        KernelMaps {
            config,
            apps: BTreeMap::new(),
            routes: BTreeMap::new(),
            private: BTreeSet::new(),
            peers: BTreeMap::new(),
        }
    }

    /// What a connect of `app`'s socket to `dest` over `proto` does, as the programs
    /// decide it: the app's entry, then the entries of (its class, address, port),
    /// (every class, address, port) and (every class, address, port 0), then the
    /// defaults: loopback (127/8, ::1, either form, and the unspecified address) to the broker where the app listens privately
    /// on that TCP port, else refused; TCP through the broker to an egress gateway when
    /// `egress` is on; else as it is. An IPv6 destination other than a v4-mapped one
    /// passes. A BROKER entry means egress.
    pub fn lookup(&self, app: u32, proto: Proto, dest: std::net::SocketAddr) -> Lookup<'_> {
        let Some(entry) = self.apps.get(&app) else { return Lookup::NoApp };
        let dest = crate::addr::unmap(dest);
        if crate::addr::is_loopback(dest.ip()) || dest.ip().is_unspecified() {
            let key = PrivateKey { app, port: dest.port(), proto };
            return if proto == Proto::Tcp && self.private.contains(&key) {
                Lookup::Broker(BrokerKind::Loopback)
            } else {
                Lookup::Refuse
            };
        }
        let std::net::SocketAddr::V4(v4) = dest else { return Lookup::Pass };
        let ip = *v4.ip();
        let key = |class, port| RouteKey { class, ip, port, proto };
        let exact =
            self.routes.get(&key(entry.class, v4.port())).or_else(|| self.routes.get(&key(ANY_CLASS, v4.port())));
        if exact.is_none() && self.refuses_undecided(v4) {
            return Lookup::Refuse;
        }
        let found = exact.or_else(|| self.routes.get(&key(ANY_CLASS, 0)));
        let route = found.map_or_else(|| KernelMaps::default_route(proto, &self.config), Route::clone);
        match route.verdict() {
            Verdict::Refuse => Lookup::Refuse,
            Verdict::Pass => Lookup::Pass,
            Verdict::Broker => Lookup::Broker(BrokerKind::Egress),
            Verdict::Backends => Lookup::Backends(found.expect("the defaults are never BACKENDS")),
        }
    }

    /// True when a connect to `dest` that no exact entry decides is refused: the maps
    /// are incomplete, or `dest` is a pool port of this node (a row's host address,
    /// whose entries may not be written yet).
    fn refuses_undecided(&self, dest: SocketAddrV4) -> bool {
        !self.config.complete || (*dest.ip() == self.config.node_ip && self.config.in_pool(dest.port()))
    }

    /// What a connect to a non-loopback IPv4 address without any entry does.
    pub fn default_route(proto: Proto, config: &Config) -> Route {
        if proto == Proto::Tcp && config.egress {
            Route::broker()
        } else {
            Route::pass()
        }
    }

    /// The source a received UDP datagram from `from` shows (the recvmsg programs): a
    /// row's host address shows as its service; anything else as it is.
    pub fn shown_source(&self, from: std::net::SocketAddr) -> std::net::SocketAddr {
        match crate::addr::unmap(from) {
            std::net::SocketAddr::V4(v4) => match self.peers.get(&v4) {
                Some(service) if from.is_ipv6() => {
                    std::net::SocketAddr::new(service.ip().to_ipv6_mapped().into(), service.port())
                }
                Some(service) => (*service).into(),
                None => from,
            },
            std::net::SocketAddr::V6(_) => from,
        }
    }

    /// What a connect to `dest` without an entry of its own does (maps complete).
    pub fn fallback(&self, proto: Proto, dest: SocketAddrV4) -> Route {
        if *dest.ip() == self.config.node_ip && self.config.in_pool(dest.port()) {
            return Route::refuse();
        }
        let ip = *dest.ip();
        let key = RouteKey { class: ANY_CLASS, ip, port: 0, proto };
        self.routes.get(&key).cloned().unwrap_or_else(|| KernelMaps::default_route(proto, &self.config))
    }

    /// The writes that turn `old` into `new`, in an order under which a connect made
    /// between two of them never meets a state worse than either end: routes and
    /// private listeners are added before an app entry names their class, and an app
    /// entry goes before the routes it used.
    pub fn diff(old: &KernelMaps, new: &KernelMaps) -> Vec<Change> {
        let mut out = Vec::new();
        if old.config != new.config {
            out.push(Change::Config(new.config));
        }
        for (k, r) in &new.routes {
            if old.routes.get(k) != Some(r) {
                out.push(Change::PutRoute(*k, r.clone()));
            }
        }
        out.extend(new.private.difference(&old.private).map(|k| Change::PutPrivate(*k)));
        for (host, service) in &new.peers {
            if old.peers.get(host) != Some(service) {
                out.push(Change::PutPeer(*host, *service));
            }
        }
        for (id, a) in &new.apps {
            if old.apps.get(id) != Some(a) {
                out.push(Change::PutApp(*id, *a));
            }
        }
        out.extend(old.apps.keys().filter(|id| !new.apps.contains_key(id)).map(|id| Change::DeleteApp(*id)));
        out.extend(old.routes.keys().filter(|k| !new.routes.contains_key(k)).map(|k| Change::DeleteRoute(*k)));
        out.extend(old.private.difference(&new.private).map(|k| Change::DeletePrivate(*k)));
        out.extend(old.peers.keys().filter(|h| !new.peers.contains_key(h)).map(|h| Change::DeletePeer(*h)));
        out
    }

    /// Applies `changes` as the maps would (what a writer of the maps does, for tests
    /// and for a daemon keeping track of what it wrote).
    pub fn apply(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Config(c) => self.config = *c,
                Change::PutApp(id, a) => {
                    self.apps.insert(*id, *a);
                }
                Change::DeleteApp(id) => {
                    self.apps.remove(id);
                }
                Change::PutRoute(k, r) => {
                    self.routes.insert(*k, r.clone());
                }
                Change::DeleteRoute(k) => {
                    self.routes.remove(k);
                }
                Change::PutPrivate(k) => {
                    self.private.insert(*k);
                }
                Change::DeletePrivate(k) => {
                    self.private.remove(k);
                }
                Change::PutPeer(host, service) => {
                    self.peers.insert(*host, *service);
                }
                Change::DeletePeer(host) => {
                    self.peers.remove(host);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::layout::tests::{config, v4};
    use super::*;
    use proptest::prelude::*;

    fn maps(ops: &[(u8, u8, u8)]) -> KernelMaps {
        let mut m = KernelMaps::new(config());
        for &(what, a, b) in ops {
            let ip = Ipv4Addr::new(198, 18, 0, a % 4);
            match what % 3 {
                0 => {
                    m.apps.insert(u32::from(a % 5) + 1, AppEntry { ip, class: u32::from(b % 3) });
                }
                1 => {
                    let key = RouteKey { class: u32::from(b % 3), ip, port: 80, proto: Proto::Tcp };
                    let route = match b % 4 {
                        0 => Route::refuse(),
                        1 => Route::pass(),
                        _ => {
                            Route::backends(Lb::Random, None, vec![vec![SocketAddrV4::new(ip, u16::from(b))]]).unwrap()
                        }
                    };
                    m.routes.insert(key, route);
                }
                2 => {
                    m.private.insert(PrivateKey {
                        app: u32::from(a % 5) + 1,
                        port: u16::from(b % 3),
                        proto: Proto::Tcp,
                    });
                }
                _ => {
                    m.peers.insert(SocketAddrV4::new(ip, u16::from(a % 3)), SocketAddrV4::new(ip, u16::from(b)));
                }
            }
        }
        m
    }

    proptest! {
        /// Applying the diff of two contents to the first gives the second, writing only
        /// what differs.
        #[test]
        fn the_diff_turns_old_into_new(
            old in proptest::collection::vec((0u8..4, 0u8..8, 0u8..8), 0..30),
            new in proptest::collection::vec((0u8..4, 0u8..8, 0u8..8), 0..30),
        ) {
            let (old, new) = (maps(&old), maps(&new));
            let changes = KernelMaps::diff(&old, &new);
            let mut got = old.clone();
            got.apply(&changes);
            prop_assert_eq!(&got, &new);
            prop_assert!(KernelMaps::diff(&new, &new).is_empty());
            for c in &changes {
                match c {
                    Change::PutRoute(k, r) => prop_assert!(old.routes.get(k) != Some(r)),
                    Change::PutApp(id, a) => prop_assert!(old.apps.get(id) != Some(a)),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn routes_go_in_before_the_app_that_uses_them_and_out_after() {
        let mut old = KernelMaps::new(config());
        let key = RouteKey { class: 1, ip: "198.18.0.1".parse().unwrap(), port: 80, proto: Proto::Tcp };
        let mut new = old.clone();
        new.apps.insert(5, AppEntry { ip: "198.18.0.5".parse().unwrap(), class: 1 });
        new.routes.insert(key, Route::pass());
        let changes = KernelMaps::diff(&old, &new);
        assert_eq!(changes, vec![Change::PutRoute(key, Route::pass()), Change::PutApp(5, new.apps[&5])],);
        old.apply(&changes);
        assert_eq!(
            KernelMaps::diff(&old, &KernelMaps::new(config())),
            vec![Change::DeleteApp(5), Change::DeleteRoute(key)]
        );
    }

    #[test]
    fn peers_are_laid_out_as_the_recvmsg_programs_read_them_and_show_services() {
        let (host, service) = (v4("10.0.0.1:40001"), v4("198.18.0.1:53"));
        assert_eq!(Peer::encode(host), [10, 0, 0, 1, 0x9c, 0x41, 0, 0]);
        let mut m = KernelMaps::new(config());
        m.peers.insert(host, service);
        let shown = |from: &str| m.shown_source(from.parse().unwrap()).to_string();
        assert_eq!(shown("10.0.0.1:40001"), "198.18.0.1:53");
        assert_eq!(shown("[::ffff:10.0.0.1]:40001"), "[::ffff:198.18.0.1]:53");
        assert_eq!(shown("10.0.0.1:40002"), "10.0.0.1:40002");
        assert_eq!(shown("[2001:db8::1]:40001"), "[2001:db8::1]:40001");
    }
}
