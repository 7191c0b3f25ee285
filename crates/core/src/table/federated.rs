//! Remote clusters' services in this node's table: what our federation gateways
//! re-publish, as far as it does not touch this cluster's own addresses. A remote
//! cluster never shadows or takes over a local service or name: an address in use here
//! (an app's now or ever, a vservice's, a node's) is answered as ours whatever the
//! gateways say, and names resolve to remote services only where no local one has them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::remote::Federated;
use super::routing::Decision;
use super::{Proto, Route, Table, EGRESS_PORT};
use crate::labels::Labels;

impl Table {
    /// True when `ip` is in use in this cluster: a node's address, an app's (here or
    /// on another node, now or ever), a vservice's.
    pub fn is_cluster_address(&self, ip: Ipv4Addr) -> bool {
        self.is_node_address(ip) || self.is_app_or_vservice_address(ip)
    }

    /// The remote cluster's service at `service` and our gateways that lead there, if
    /// `service` is one and its address is not ours.
    pub fn federated(&self, proto: Proto, service: SocketAddrV4) -> Option<&Federated> {
        self.remote.federated_at(proto, service).filter(|_| !self.is_cluster_address(*service.ip()))
    }

    /// Every remote cluster's service that is not at one of our addresses, sorted by
    /// protocol and address.
    pub fn federated_services(&self) -> Vec<(Proto, SocketAddrV4, &Federated)> {
        let mut all: Vec<_> = self
            .remote
            .federated()
            .filter(|((_, s), _)| !self.is_cluster_address(*s.ip()))
            .map(|((p, s), f)| (*p, *s, f))
            .collect();
        all.sort_by_key(|(p, s, _)| (p.name(), *s));
        all
    }

    /// A connect to a remote cluster's `service`: to this node's forwarder under
    /// `--tls` (it opens the tunnel), else to our gateways that lead there
    /// ([`Table::federation_gateways`]); refused when none does.
    pub(super) fn federation(&mut self, service: SocketAddrV4) -> Route {
        let via = if self.egress_forwarder { vec![self.node.ip] } else { self.federation_gateways(service) };
        match via.is_empty() {
            true => Route::Refused,
            false => Route::Federated {
                via: via.into_iter().map(|ip| SocketAddrV4::new(ip, EGRESS_PORT)).collect(),
                service,
            },
        }
    }

    /// The gateways of ours a connection to a remote cluster's `service` may go
    /// through, in the order to try: this node first when it is one, the others in
    /// random order (one that died is tried, and passed over, until gossip says so).
    pub fn federation_gateways(&mut self, service: SocketAddrV4) -> Vec<Ipv4Addr> {
        let Some(f) = self.federated(Proto::Tcp, service) else { return Vec::new() };
        let mut gateways = f.gateways.clone();
        self.rng.shuffle(&mut gateways);
        if let Some(i) = gateways.iter().position(|g| *g == self.node.ip) {
            gateways[..=i].rotate_right(1);
        }
        gateways
    }

    /// Where a connection that another cluster's gateway carries in (ingress) goes: to
    /// this cluster's rows of `service` that a client with `labels` may reach, in the
    /// balancer's order; Refused for anything else (no service of ours there, or none
    /// the labels reach). Never outside the cluster nor on to a third one: an ingress
    /// is no open relay.
    pub fn route_inbound(&mut self, labels: &Labels, service: SocketAddrV4) -> Route {
        if self.rows_at(Proto::Tcp, service).is_empty() {
            return Route::Refused;
        }
        match self.decide_rows(labels, Proto::Tcp, service) {
            Decision::Balanced(b) => self.vservices.balance(b, &mut self.rng),
            _ => Route::Refused,
        }
    }

    /// The addresses of remote services named `label` (without case), by cluster.
    pub fn federated_named(&self, label: &str) -> BTreeMap<String, Vec<Ipv4Addr>> {
        let mut out: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for (_, service, f) in self.federated_services() {
            if f.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(label)) {
                let ips = out.entry(f.cluster.clone()).or_default();
                if !ips.contains(service.ip()) {
                    ips.push(*service.ip());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::remote::RemoteService;
    use crate::table::testing::{app, named, sa, serve, table};
    use crate::table::{Remote, RemoteApp};

    fn service(cluster: &str, gateway: &str, at: &str, name: Option<&str>) -> RemoteService {
        RemoteService {
            cluster: cluster.into(),
            gateway: gateway.parse().unwrap(),
            proto: Proto::Tcp,
            service: at.parse().unwrap(),
            name: name.map(Into::into),
            labels: vec!["zone=default".parse().unwrap()],
        }
    }

    fn with(federated: Vec<RemoteService>) -> Remote {
        Remote { nodes: vec![("gw".into(), "10.0.0.9".parse().unwrap())], federated, ..Remote::default() }
    }

    #[test]
    fn a_remote_service_is_known_with_the_gateways_that_lead_there() {
        let mut t = table();
        t.set_remote(with(vec![
            service("c1", "10.0.0.9", "198.18.20.1:8000", Some("web")),
            service("c1", "10.0.0.8", "198.18.20.1:8000", Some("web")),
        ]));
        let f = t.federated(Proto::Tcp, "198.18.20.1:8000".parse().unwrap()).unwrap();
        assert_eq!(f.cluster, "c1");
        assert_eq!(f.gateways, ["10.0.0.8".parse::<Ipv4Addr>().unwrap(), "10.0.0.9".parse().unwrap()]);
        assert_eq!(t.federated(Proto::Udp, "198.18.20.1:8000".parse().unwrap()), None);
        assert_eq!(t.federated(Proto::Tcp, "198.18.20.1:9".parse().unwrap()), None);
        assert_eq!(t.federated_named("WEB"), BTreeMap::from([("c1".into(), vec!["198.18.20.1".parse().unwrap()])]));
        // A local name is not a remote one.
        assert_eq!(t.addresses_named("web"), None);
    }

    /// A remote cluster publishes our own app's address and name, a vservice's
    /// address, a node's address, and an address another remote cluster uses: none of
    /// it is taken, and our app keeps its address and name.
    #[test]
    fn a_hostile_remote_cluster_shadows_nothing_here() {
        let mut t = table();
        let ours = named(&mut t, "web", Some("198.18.10.1")).unwrap();
        t.add_vservice(
            crate::table::testing::vservice("db", "198.18.10.2", Default::default(), "198.18.10.1"),
            crate::table::Origin::Request,
        )
        .unwrap();
        let c = app(&mut t, None, "zone=default");
        let mut remote = with(vec![
            service("evil", "10.0.0.9", "198.18.10.1:80", Some("web")),
            service("evil", "10.0.0.9", "198.18.10.2:80", Some("db")),
            service("evil", "10.0.0.9", "10.0.0.9:22", None),
            service("evil", "10.0.0.9", "198.18.10.3:80", Some("api")),
            service("evil", "10.0.0.9", "198.18.20.1:8000", Some("shop")),
            service("c1", "10.0.0.9", "198.18.20.1:8000", Some("shop")),
        ]);
        // An app of another node of ours, at an address the remote cluster claims too.
        remote.apps.push(RemoteApp {
            node: "gw".into(),
            id: "f0000009".into(),
            name: Some("api".into()),
            ip: "198.18.10.3".parse().unwrap(),
            expose: vec![],
            labels: None,
        });
        t.set_remote(remote);
        for at in ["198.18.10.1:80", "198.18.10.2:80", "10.0.0.9:22", "198.18.10.3:80", "198.18.20.1:8000"] {
            assert_eq!(t.federated(Proto::Tcp, at.parse().unwrap()), None, "{at}");
        }
        assert!(t.federated_services().is_empty());
        assert_eq!(t.addresses_named("web"), Some(vec![ours.ip]));
        assert!(t.federated_named("web").is_empty() && t.federated_named("shop").is_empty());
        assert_eq!(
            t.route_connect(c, Proto::Tcp, sa("198.18.10.1:80")),
            Route::Refused,
            "our app does not serve port 80"
        );
    }

    /// A connect to a remote cluster's service goes through our gateways when the
    /// client shares a label with one of its backends; otherwise, at another port of
    /// its address, or over UDP, it is refused like one to any virtual address without
    /// rows: never sent out of the host.
    #[test]
    fn a_connect_to_a_remote_service_goes_to_the_federation_when_labels_allow() {
        let mut t = table();
        let c = app(&mut t, None, "zone=default");
        let other = app(&mut t, None, "zone=other");
        t.set_remote(with(vec![service("c1", "10.0.0.9", "198.18.20.1:8000", Some("web"))]));
        let web = sa("198.18.20.1:8000");
        let via = vec!["10.0.0.9:6661".parse().unwrap()];
        let service = "198.18.20.1:8000".parse().unwrap();
        assert_eq!(t.route_connect(c, Proto::Tcp, web), Route::Federated { via, service });
        assert_eq!(t.route_connect(other, Proto::Tcp, web), Route::Refused, "no label in common");
        assert_eq!(t.route_connect(c, Proto::Udp, web), Route::Refused, "TCP only");
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.20.1:9")), Route::Refused);
        // A ping is answered as connects go.
        let at = "198.18.20.1".parse().unwrap();
        assert_eq!((t.echo(c, at), t.echo(other, at)), (crate::Echo::Reply, crate::Echo::HostUnreachable));
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.20.9:8000")), Route::Direct(sa("198.18.20.9:8000")));
        // Gone (the WAN cut, say), its address stays virtual: refused, never sent out.
        t.set_remote(with(vec![]));
        assert_eq!(t.route_connect(c, Proto::Tcp, web), Route::Refused);
    }

    /// Every gateway that leads there is tried, this node first when it is one.
    #[test]
    fn a_connection_tries_every_gateway_this_node_first() {
        let mut t = table();
        let me = t.node().ip;
        t.set_remote(with(vec![
            service("c1", "10.0.0.9", "198.18.20.1:8000", None),
            service("c1", "10.0.0.8", "198.18.20.1:8000", None),
        ]));
        let web = "198.18.20.1:8000".parse().unwrap();
        let mut got = t.federation_gateways(web);
        got.sort();
        assert_eq!(got, ["10.0.0.8".parse::<Ipv4Addr>().unwrap(), "10.0.0.9".parse().unwrap()]);
        let mut remote = with(vec![
            service("c1", "10.0.0.9", "198.18.20.1:8000", None),
            service("c1", "10.0.0.8", "198.18.20.1:8000", None),
        ]);
        remote.federated.push(RemoteService { gateway: me, ..service("c1", "10.0.0.9", "198.18.20.1:8000", None) });
        t.set_remote(remote);
        for _ in 0..20 {
            let got = t.federation_gateways(web);
            assert_eq!((got.len(), got[0]), (3, me));
        }
        assert!(t.federation_gateways("198.18.20.1:9".parse().unwrap()).is_empty());
    }

    /// A federation gateway's ingress is a daemon port wherever it is: an app on a
    /// gateway, which reaches the WAN, cannot stand in for a gateway there.
    #[test]
    fn no_app_reaches_a_gateways_ingress() {
        let mut t = table();
        let c = app(&mut t, None, "zone=default");
        let ingress = sa("10.12.0.11:6660");
        assert_eq!(t.route_connect(c, Proto::Tcp, ingress), Route::Direct(ingress));
        t.set_remote(Remote { ingresses: vec!["10.12.0.11:6660".parse().unwrap()], ..with(vec![]) });
        assert_eq!(t.route_connect(c, Proto::Tcp, ingress), Route::Refused);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.12.0.11:80")), Route::Direct(sa("10.12.0.11:80")));
    }

    /// What another cluster's gateway carries in reaches this cluster's rows of the
    /// service the labels allow, and nothing else: no outside address, no vservice, no
    /// daemon port, no third cluster's service.
    #[test]
    fn an_inbound_connection_reaches_only_our_rows_its_labels_allow() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.20.1"), "zone=default");
        let port = serve(&mut t, s, "0.0.0.0:8000", 1);
        let zone: Labels = "zone=default".parse().unwrap();
        let web = "198.18.20.1:8000".parse().unwrap();
        let host = SocketAddrV4::new(t.node().ip, port);
        assert_eq!(t.route_inbound(&zone, web), Route::Backends(vec![crate::Target { addr: host, source: None }]));
        assert_eq!(t.route_inbound(&"zone=other".parse().unwrap(), web), Route::Refused, "no label in common");
        assert_eq!(t.route_inbound(&Labels::default(), web), Route::Refused, "no labels");
        assert_eq!(t.route_inbound(&zone, host), Route::Refused, "a host address is no service");
        t.add_vservice(
            crate::table::testing::vservice("db", "198.18.10.2", Default::default(), "198.18.20.1"),
            crate::table::Origin::Request,
        )
        .unwrap();
        t.set_remote(with(vec![service("c2", "10.0.0.9", "198.18.30.1:80", None)]));
        for refused in ["203.0.113.1:80", "198.18.10.2:80", "198.18.30.1:80", "198.18.20.1:9"] {
            assert_eq!(t.route_inbound(&zone, refused.parse().unwrap()), Route::Refused, "{refused}");
        }
        let node = SocketAddrV4::new(t.node().ip, crate::EGRESS_PORT);
        assert_eq!(t.route_inbound(&zone, node), Route::Refused, "a daemon port");
    }
}
