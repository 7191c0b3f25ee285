//! What this node knows of the rest of the cluster: the other live nodes, their egress
//! gateways, the rows and apps they publish (as last gossiped), every app address ever
//! published, the remote clusters' services our federation gateways lead to, and where
//! this node's egress connections really go. Gossip itself is elsewhere
//! (`ax-cluster`); this is only its latest word.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::addr;
use crate::labels::Labels;
use crate::vservice::Expose;

use super::Proto;

/// A service row published by another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteRow {
    pub node: String,
    pub app: String,
    pub proto: Proto,
    pub service: SocketAddrV4,
    pub host: SocketAddrV4,
    pub labels: Labels,
}

/// An app running on another node (for names and virtual addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteApp {
    pub node: String,
    pub id: String,
    pub name: Option<String>,
    pub ip: Ipv4Addr,
    pub expose: Vec<Expose>,
    /// Its labels (what a ping of its address is decided by); None from a node of a
    /// version that did not publish them.
    pub labels: Option<Labels>,
}

/// A service of another cluster of the federation, as a federation gateway of ours
/// re-publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteService {
    /// The cluster it belongs to.
    pub cluster: String,
    /// The node address of our gateway that leads there.
    pub gateway: Ipv4Addr,
    pub proto: Proto,
    pub service: SocketAddrV4,
    pub name: Option<String>,
    /// The label sets of its backends.
    pub labels: Vec<Labels>,
}

/// Where a connect to a remote cluster's service goes: to that cluster, through one of
/// our gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federated {
    pub cluster: String,
    /// Our gateways that lead there (node addresses), sorted.
    pub gateways: Vec<Ipv4Addr>,
    pub name: Option<String>,
    pub labels: Vec<Labels>,
}

/// What the rest of the cluster publishes, as last gossiped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    /// The other live nodes: name and node address.
    pub nodes: Vec<(String, Ipv4Addr)>,
    /// The addresses of the live nodes that are egress gateways.
    pub egress: Vec<Ipv4Addr>,
    pub rows: Vec<RemoteRow>,
    pub apps: Vec<RemoteApp>,
    /// Other clusters' services, as our gateways re-publish them.
    pub federated: Vec<RemoteService>,
    /// The federation gateways' ingresses (`--federation-gateway-port` on their WAN
    /// addresses): our cluster's, and on a gateway the other clusters' it knows. They
    /// are daemon ports, which no app may connect to.
    pub ingresses: Vec<SocketAddrV4>,
}

/// The latest [`Remote`], and the app addresses of every earlier one: an app address
/// stays virtual after its node dies, so a connect to it is refused rather than sent
/// out of the host. A node's own address is never taken for an app's. Remote
/// clusters' service addresses likewise stay virtual once they left (a gateway died,
/// the WAN was cut).
#[derive(Debug, Default)]
pub(super) struct RemoteView {
    now: Remote,
    seen_virtual: BTreeSet<Ipv4Addr>,
    seen_federated: BTreeSet<Ipv4Addr>,
    /// `now.rows` by service and by host address (the first row at a host), made once
    /// per gossip word: one lookup per destination, however many rows there are.
    by_service: HashMap<(Proto, SocketAddrV4), Vec<usize>>,
    by_host: HashMap<(Proto, SocketAddrV4), usize>,
    /// `now.federated` by service, an address claimed by two clusters left out.
    federated: HashMap<(Proto, SocketAddrV4), Federated>,
}

impl RemoteView {
    /// Replaces what is known of the other nodes.
    pub(super) fn set(&mut self, remote: Remote) {
        let nodes: Vec<Ipv4Addr> = remote.nodes.iter().map(|n| n.1).collect();
        self.seen_virtual.extend(remote.apps.iter().map(|a| a.ip).filter(|ip| !nodes.contains(ip)));
        self.by_service.clear();
        self.by_host.clear();
        for (i, r) in remote.rows.iter().enumerate().filter(|(_, r)| serves(r)) {
            self.by_service.entry((r.proto, r.service)).or_default().push(i);
            self.by_host.entry((r.proto, r.host)).or_insert(i);
        }
        self.federated = index_federated(&remote.federated);
        self.seen_federated.extend(self.federated.keys().map(|(_, s)| *s.ip()));
        self.now = remote;
    }

    /// The remote cluster's service at `service`, as our gateways publish it (whether
    /// the address is ours is the table's to say).
    pub(super) fn federated_at(&self, proto: Proto, service: SocketAddrV4) -> Option<&Federated> {
        self.federated.get(&(proto, service))
    }

    /// True when a remote cluster's service is at `ip`, or was.
    pub(super) fn was_federated_ip(&self, ip: Ipv4Addr) -> bool {
        self.seen_federated.contains(&ip)
    }

    /// Every address a remote cluster's service has had.
    pub(super) fn seen_federated_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.seen_federated.iter().copied()
    }

    /// Every remote cluster's service, by address.
    pub(super) fn federated(&self) -> impl Iterator<Item = (&(Proto, SocketAddrV4), &Federated)> {
        self.federated.iter()
    }

    pub(super) fn get(&self) -> &Remote {
        &self.now
    }

    /// True when `ip` is a live node's own address.
    pub(super) fn is_node(&self, ip: Ipv4Addr) -> bool {
        self.now.nodes.iter().any(|(_, n)| *n == ip)
    }

    /// True when a live app of another node has the address `ip`.
    pub(super) fn has_app_ip(&self, ip: Ipv4Addr) -> bool {
        self.now.apps.iter().any(|a| a.ip == ip)
    }

    /// True when `ip` was ever published as an app's address and is no node's.
    pub(super) fn was_app_ip(&self, ip: Ipv4Addr) -> bool {
        self.seen_virtual.contains(&ip)
    }

    /// Every address ever published as an app's (and no node's then).
    pub(super) fn seen_app_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.seen_virtual.iter().copied()
    }

    /// The addresses of the other nodes' apps named `label` (without case).
    pub(super) fn named<'a>(&'a self, label: &'a str) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.now.apps.iter().filter(|a| a.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(label))).map(|a| a.ip)
    }

    /// The rows other nodes publish that serve (see [`serves`]).
    pub(super) fn rows(&self) -> impl Iterator<Item = &RemoteRow> {
        self.now.rows.iter().filter(|r| serves(r))
    }

    /// The rows other nodes publish for `service` over `proto`.
    pub(super) fn rows_at(&self, proto: Proto, service: SocketAddrV4) -> impl Iterator<Item = &RemoteRow> {
        let at = self.by_service.get(&(proto, service)).into_iter().flatten();
        at.map(|i| &self.now.rows[*i])
    }

    /// The row another node publishes at `host`.
    pub(super) fn row_at_host(&self, proto: Proto, host: SocketAddrV4) -> Option<&RemoteRow> {
        self.by_host.get(&(proto, host)).map(|i| &self.now.rows[*i])
    }

    /// The service of the row another node publishes at `host`.
    pub(super) fn service_of_host(&self, proto: Proto, host: SocketAddrV4) -> Option<SocketAddrV4> {
        self.row_at_host(proto, host).map(|r| r.service)
    }

    /// The live egress gateways.
    pub(super) fn gateways(&self) -> &[Ipv4Addr] {
        &self.now.egress
    }
}

/// Remote services by address, gateways gathered. An address that two clusters claim
/// (whatever the ports) is nobody's: one cluster cannot take over another's service.
fn index_federated(services: &[RemoteService]) -> HashMap<(Proto, SocketAddrV4), Federated> {
    let mut owners: BTreeMap<Ipv4Addr, BTreeSet<&str>> = BTreeMap::new();
    for s in services {
        owners.entry(*s.service.ip()).or_default().insert(&s.cluster);
    }
    let mut out: HashMap<(Proto, SocketAddrV4), Federated> = HashMap::new();
    for s in services.iter().filter(|s| owners[s.service.ip()].len() == 1 && s.service.port() != 0) {
        let f = out.entry((s.proto, s.service)).or_insert_with(|| Federated {
            cluster: s.cluster.clone(),
            gateways: Vec::new(),
            name: s.name.clone(),
            labels: s.labels.clone(),
        });
        if !f.gateways.contains(&s.gateway) {
            f.gateways.push(s.gateway);
            f.gateways.sort();
        }
    }
    out
}

/// True when a published row serves: one at port 0 (only a gossiper can say one; no
/// connect goes there, and port 0 is the kernel driver's key for every port of an
/// address) serves nothing.
fn serves(r: &RemoteRow) -> bool {
    r.service.port() != 0 && r.host.port() != 0
}

/// How many connections' destinations (as their apps know them) are remembered for
/// getpeername.
const EGRESS_MEMORY: usize = 4096;

/// Where this node's connections go as their apps know them, by local address, where
/// the real peer is another: egress connections (the gateway is their peer) and
/// datagram sockets connected to the closed port. Bounded: the oldest is forgotten first, and
/// the newest wins when a local address comes back.
#[derive(Debug, Default)]
pub(super) struct EgressPeers(VecDeque<(SocketAddrV4, SocketAddr)>);

impl EgressPeers {
    pub(super) fn record(&mut self, local: SocketAddrV4, dest: SocketAddr) {
        if self.0.len() >= EGRESS_MEMORY {
            self.0.pop_front();
        }
        self.0.push_back((local, dest));
    }

    pub(super) fn peer(&self, local: SocketAddr) -> Option<SocketAddr> {
        let SocketAddr::V4(local) = addr::unmap(local) else { return None };
        self.0.iter().rev().find(|(l, _)| *l == local).map(|(_, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::{app, first, sa, table};
    use crate::table::Route;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn remote_app(node: &str, ip_: &str, name: Option<&str>) -> RemoteApp {
        RemoteApp {
            node: node.into(),
            id: "f0000002".into(),
            name: name.map(Into::into),
            ip: ip(ip_),
            expose: vec![],
            labels: None,
        }
    }

    fn row(service: &str, host: &str) -> RemoteRow {
        RemoteRow {
            node: "n2".into(),
            app: "f0000002".into(),
            proto: Proto::Tcp,
            service: service.parse().unwrap(),
            host: host.parse().unwrap(),
            labels: Labels::default(),
        }
    }

    #[test]
    fn rows_vanish_with_the_next_word_but_app_addresses_stay_virtual() {
        let mut v = RemoteView::default();
        v.set(Remote {
            nodes: vec![("n2".into(), ip("10.0.0.2"))],
            egress: vec![ip("10.0.0.2")],
            rows: vec![row("198.18.3.1:80", "10.0.0.2:40000")],
            // An app without its own address has its node's: that is no app address.
            apps: vec![remote_app("n2", "198.18.3.1", Some("Web")), remote_app("n2", "10.0.0.2", None)],
            ..Remote::default()
        });
        let service = "198.18.3.1:80".parse().unwrap();
        let host = "10.0.0.2:40000".parse().unwrap();
        assert_eq!(v.rows_at(Proto::Tcp, service).count(), 1);
        assert_eq!(v.rows_at(Proto::Udp, service).count(), 0);
        assert_eq!(v.service_of_host(Proto::Tcp, host), Some(service));
        assert_eq!(v.named("web").collect::<Vec<_>>(), [ip("198.18.3.1")]);
        assert!(v.is_node(ip("10.0.0.2")) && v.has_app_ip(ip("198.18.3.1")));
        assert_eq!(v.gateways(), [ip("10.0.0.2")]);
        // The node dies: its rows, apps and gateway go at once.
        v.set(Remote::default());
        assert_eq!(v.rows_at(Proto::Tcp, service).count(), 0);
        assert_eq!(v.service_of_host(Proto::Tcp, host), None);
        assert_eq!(v.named("web").count(), 0);
        assert!(v.gateways().is_empty() && !v.is_node(ip("10.0.0.2")) && !v.has_app_ip(ip("198.18.3.1")));
        assert!(v.was_app_ip(ip("198.18.3.1")));
        assert!(!v.was_app_ip(ip("10.0.0.2")));
    }

    #[test]
    fn egress_peers_remember_the_newest_and_forget_the_oldest() {
        let mut p = EgressPeers::default();
        let local = |port: u16| SocketAddrV4::new(ip("10.0.0.1"), port);
        let dest = |port: u16| SocketAddr::new(ip("192.0.2.1").into(), port);
        p.record(local(1), dest(80));
        p.record(local(1), dest(443));
        assert_eq!(p.peer(SocketAddr::V4(local(1))), Some(dest(443)));
        // An IPv6 socket reports its local address v4-mapped.
        assert_eq!(p.peer("[::ffff:10.0.0.1]:1".parse().unwrap()), Some(dest(443)));
        assert_eq!(p.peer("[2001:db8::1]:1".parse().unwrap()), None);
        for port in 2..=EGRESS_MEMORY as u16 {
            p.record(local(port), dest(port));
        }
        assert_eq!(p.0.len(), EGRESS_MEMORY);
        // Full: the first record is gone, the second (newer for the same address) stays.
        assert_eq!(p.peer(SocketAddr::V4(local(1))), Some(dest(443)));
        p.record(local(9000), dest(9000));
        assert_eq!(p.peer(SocketAddr::V4(local(1))), None);
        assert_eq!(p.peer(SocketAddr::V4(local(2))), Some(dest(2)));
        assert_eq!(p.0.len(), EGRESS_MEMORY);
    }

    #[test]
    fn rows_of_other_nodes_serve_like_local_ones() {
        let mut t = table();
        let c = app(&mut t, None, "zone=default");
        let other: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let host = SocketAddrV4::new(other, 40007);
        let row = |labels: &str, service: &str| RemoteRow {
            node: "n2".into(),
            app: "f0000002".into(),
            proto: Proto::Tcp,
            service: service.parse().unwrap(),
            host,
            labels: Labels::parse(labels).unwrap(),
        };
        t.set_remote(Remote {
            nodes: vec![("n2".into(), other)],
            egress: vec![],
            rows: vec![row("zone=default", "198.18.3.1:8000"), row("role=prod", "198.18.3.2:80")],
            apps: vec![
                RemoteApp {
                    node: "n2".into(),
                    id: "f0000002".into(),
                    name: Some("web".into()),
                    ip: "198.18.3.1".parse().unwrap(),
                    expose: vec![],
                    labels: None,
                },
                RemoteApp {
                    node: "n2".into(),
                    id: "f0000003".into(),
                    name: None,
                    ip: other,
                    expose: vec![],
                    labels: None,
                },
            ],
            ..Remote::default()
        });
        assert_eq!(first(t.route_connect(c, Proto::Tcp, sa("198.18.3.1:8000"))), host);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.3.2:80")), Route::Refused);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.3.1:9")), Route::Refused);
        // The other node's own address is not virtual: it is reached directly.
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.2:22")), Route::Direct(sa("10.0.0.2:22")));
        assert_eq!(t.addresses_named("web"), Some(vec!["198.18.3.1".parse().unwrap()]));
        assert_eq!(t.peer_name(Proto::Tcp, SocketAddr::V4(host)), Some(sa("198.18.3.1:8000")));
        // The node is gone, but its app's address stays virtual: refused, never sent out.
        t.set_remote(Remote::default());
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.3.1:8000")), Route::Refused);
    }
}
