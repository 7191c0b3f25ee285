//! The decisions that read the whole table: where a bind lands, where a connect goes
//! (private, refused, to rows the client's labels reach, through a vservice, out
//! directly or through an egress gateway), which addresses are virtual, and what
//! getsockname and getpeername answer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::addr;
use crate::ids::AppId;
use crate::labels::Labels;
use crate::Errno;

use super::reserved::{exposed_here, is_daemon_port, is_node_address, DNS_PORT};
use super::vservices::Reach;
use super::{NodeInfo, Proto, Table};

/// The port egress gateways take connections on.
pub const EGRESS_PORT: u16 = 6661;

/// How to carry out a bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindPlan {
    /// A loopback address: the socket moves into the app's own namespace and the
    /// bind happens there, private to the app.
    Private,
    /// Bind on the node address at `host_port` (an exposed port) or else a pool port;
    /// the app sees `service`.
    Host { service: SocketAddrV4, host_port: Option<u16> },
}

/// A connect's decision before the balancer orders its choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Nothing to balance: this is where it goes.
    Final(Route),
    /// Choose among these.
    Balanced(Balanced),
    /// Not ax's: out directly or through an egress gateway.
    Outbound(SocketAddr),
    /// A remote cluster's service the client may reach: through a federation gateway.
    Federated(SocketAddrV4),
}

/// The choices of a connect to a service or vservice: groups (a vservice's backends in
/// its order; a service's one group of rows), each the targets it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Balanced {
    pub(super) groups: Vec<Vec<Target>>,
    /// Round robin over the groups of this vservice name and port; None: at random.
    pub(super) rotate: Option<(String, u16)>,
}

/// One place a connect may go, and the host address to make it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub addr: SocketAddrV4,
    pub source: Option<Ipv4Addr>,
}

/// Where a connect goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Loopback: inside the app's own namespace.
    Private,
    /// A served address the app may not reach, or a virtual address nobody serves:
    /// ECONNREFUSED, and no packet leaves.
    Refused,
    /// A service or vservice: the targets in the order to try (the first is the
    /// balancer's choice, the rest are fallbacks should it be down).
    Backends(Vec<Target>),
    /// Not ax's: straight out from the host.
    Direct(SocketAddr),
    /// Not ax's, through an egress gateway of the cluster: connect to `gateway` (a
    /// gateway's egress port, or this node's forwarder under `--tls`) and ask it for
    /// `dest`.
    Egress { gateway: SocketAddrV4, dest: SocketAddr },
    /// A remote cluster's service the client may reach: connect to the first of `via`
    /// that answers (the egress ports of our federation gateways that lead there, in
    /// the order to try, or this node's forwarder under `--tls`) and ask for `service`
    /// there; the daemon asks, on a socket the app does not hold yet, since the request
    /// carries the client's labels.
    Federated { via: Vec<SocketAddrV4>, service: SocketAddrV4 },
}

impl Table {
    /// Decides where a bind of `requested` by `app` goes, in the kernel's order of
    /// checks: an address the app does not have (EADDRNOTAVAIL), then a privileged port
    /// without CAP_NET_BIND_SERVICE (EACCES; `privileged` says whether the calling
    /// thread holds it, asked only for such a port), then a service address the daemon
    /// has (EADDRINUSE: its own ports on a node address, and ports it relays).
    pub fn plan_bind(
        &self,
        app: AppId,
        requested: SocketAddr,
        privileged: impl FnOnce() -> bool,
    ) -> Result<BindPlan, Errno> {
        let app = self.apps.get(app).ok_or(libc::EPERM)?;
        let want = addr::unmap(requested);
        let plan = if addr::is_loopback(want.ip()) {
            BindPlan::Private
        } else {
            match want {
                SocketAddr::V4(v4) if v4.ip().is_unspecified() || *v4.ip() == app.ip => {
                    let me = self.node.ip;
                    let host_port = app
                        .expose
                        .iter()
                        .find(|e| e.internal == v4.port() && exposed_here(e.at, me, true))
                        .map(|e| e.host_port);
                    // One socket per exposed port gets it (nginx binds 0.0.0.0 and ::).
                    let host_port = host_port.filter(|h| !self.services.holds(app.id, *h));
                    BindPlan::Host { service: SocketAddrV4::new(app.ip, v4.port()), host_port }
                }
                // The app has no other address to bind to, as the kernel would say.
                _ => return Err(libc::EADDRNOTAVAIL),
            }
        };
        if self.is_privileged_port(want.port()) && !privileged() {
            return Err(libc::EACCES);
        }
        match plan {
            BindPlan::Host { service, .. } if self.reserved(service, Some(app.id)).is_some() => Err(libc::EADDRINUSE),
            plan => Ok(plan),
        }
    }

    /// Decides where a connect by `client` to `dest` goes. The backend order is
    /// random, so connections spread over every backend of an address.
    pub fn route_connect(&mut self, client: AppId, proto: Proto, dest: SocketAddr) -> Route {
        let labels = self.apps.get(client).map(|c| c.labels.clone());
        match self.decide_connect(labels.as_ref(), proto, dest) {
            Decision::Final(route) => route,
            Decision::Balanced(b) => self.vservices.balance(b, &mut self.rng),
            Decision::Outbound(dest) => self.outbound(proto, dest),
            Decision::Federated(service) => self.federation(service),
        }
    }

    /// The decision of a connect to `dest` by a client with `labels` (None: an app
    /// the table does not know), before any balancing: what both drivers carry out,
    /// the user driver per connect ([`Table::route_connect`]), the kernel driver once
    /// per destination and label class ([`Table::kernel_maps`]).
    pub(super) fn decide_connect(&mut self, labels: Option<&Labels>, proto: Proto, dest: SocketAddr) -> Decision {
        match self.resolve_connect(labels, proto, dest) {
            Ok((labels, service)) => self.decide_rows(labels, proto, service),
            Err(decision) => decision,
        }
    }

    /// The first half of [`Table::decide_connect`]: its decision when the destination
    /// alone settles it (loopback, IPv6, an unknown client, a daemon port, a vservice),
    /// else the service the connect is to, which [`Table::decide_rows`] decides.
    pub(super) fn resolve_connect<'l>(
        &mut self,
        labels: Option<&'l Labels>,
        proto: Proto,
        dest: SocketAddr,
    ) -> Result<(&'l Labels, SocketAddrV4), Decision> {
        let dest = addr::unmap(dest);
        // Linux takes a connect to 0.0.0.0 or :: as one to the loopback address.
        if addr::is_loopback(dest.ip()) || dest.ip().is_unspecified() {
            return Err(Decision::Final(Route::Private));
        }
        let SocketAddr::V4(v4) = dest else {
            return Err(Decision::Final(Route::Direct(dest)));
        };
        let Some(labels) = labels else {
            return Err(Decision::Final(Route::Refused));
        };
        // The daemon's own ports are the daemon's, whatever rows say: no app can stand
        // in for it. Apps may ask its DNS; the rest (gossip above all: a datagram from a
        // node's address would pass for that node's word) is no app's business.
        if self.is_daemon_port(v4) {
            return Err(Decision::Final(if v4.port() == DNS_PORT { Route::Direct(dest) } else { Route::Refused }));
        }
        if proto == Proto::Tcp {
            if let Some(decision) = self.decide_vservice(*v4.ip(), v4.port(), Some(labels)) {
                return Err(decision);
            }
        }
        // A connect straight to a backend's host address is a connect to its service:
        // labels cannot be bypassed by naming the pool port.
        Ok((labels, self.service_of_host(proto, v4).unwrap_or(v4)))
    }

    /// The rest of [`Table::decide_connect`] for a destination that is no vservice's
    /// and no daemon port, once it is known to be a connect to `service` (its own
    /// address, or the service of the row at its host address): the answer is then the
    /// same for every destination that leads to `service`.
    pub(super) fn decide_rows(&self, labels: &Labels, proto: Proto, service: SocketAddrV4) -> Decision {
        let dest = SocketAddr::V4(service);
        let rows = self.rows_at(proto, service);
        if rows.is_empty() {
            if let Some(f) = self.federated(proto, service) {
                // Labels are checked here, and again by the service's own cluster.
                let allowed = proto == Proto::Tcp && f.labels.iter().any(|l| l.shares(labels));
                return if allowed { Decision::Federated(service) } else { Decision::Final(Route::Refused) };
            }
            if self.is_virtual(dest.ip()) {
                return Decision::Final(Route::Refused);
            }
            return Decision::Outbound(dest);
        }
        let allowed: Vec<Target> = rows
            .into_iter()
            .filter(|(_, server)| server.shares(labels))
            .map(|(host, _)| Target { addr: host, source: None })
            .collect();
        if allowed.is_empty() {
            return Decision::Final(Route::Refused);
        }
        Decision::Balanced(Balanced { groups: vec![allowed], rotate: None })
    }

    /// Where a connect to a vservice's `ip:port` goes: per backend, its choices (a
    /// row's host address: that row; a service-table address: its rows; either only
    /// where the client may reach them, shuffled; an outside address as is, when the
    /// vservice allows outside backends), backends in the balancer's order. What each
    /// backend is gets decided now, from the table as it is: an address that became an
    /// app's or a row's since the vservice was made is routed as one. `client` None (a
    /// client outside ax, through an external port) skips the label check. None when
    /// `ip` is no vservice's.
    pub fn vservice_route(&mut self, ip: Ipv4Addr, port: u16, client: Option<&Labels>) -> Option<Route> {
        Some(match self.decide_vservice(ip, port, client)? {
            Decision::Balanced(b) => self.vservices.balance(b, &mut self.rng),
            Decision::Final(route) => route,
            Decision::Outbound(dest) => Route::Direct(dest),
            // A vservice's backends are this cluster's.
            Decision::Federated(_) => Route::Refused,
        })
    }

    pub(super) fn decide_vservice(&mut self, ip: Ipv4Addr, port: u16, client: Option<&Labels>) -> Option<Decision> {
        let (node, apps, services, remote) = (&self.node, &self.apps, &self.services, &self.remote);
        let is_app_ip = |ip| !is_node_address(node, remote, ip) && (apps.has_ip(ip) || remote.has_app_ip(ip));
        let reach = |addr, seen_app| reach(node, apps, services, remote, addr, seen_app);
        self.vservices.decide(ip, port, client, is_app_ip, reach)
    }

    /// A connect to an address outside the service table: through a live egress
    /// gateway (see [`Table::egress_applies`]), else directly. With the forwarder on,
    /// the app's socket goes to this node's egress port, and the forwarder picks the
    /// gateway.
    fn outbound(&mut self, proto: Proto, dest: SocketAddr) -> Route {
        if !self.egress_applies(proto, dest) {
            return Route::Direct(dest);
        }
        let via = if self.egress_forwarder { Some(self.node.ip) } else { self.pick_gateway() };
        match via {
            Some(ip) => Route::Egress { gateway: SocketAddrV4::new(ip, EGRESS_PORT), dest },
            None => Route::Direct(dest),
        }
    }

    /// True when a connect to `dest` outside the service table goes through an egress
    /// gateway: TCP, from a node that is not one, while a gateway lives, to an address
    /// that is not another node's.
    pub(super) fn egress_applies(&self, proto: Proto, dest: SocketAddr) -> bool {
        let to_node = matches!(dest.ip(), IpAddr::V4(ip) if self.remote.is_node(ip));
        proto == Proto::Tcp && !to_node && self.egress_on()
    }

    /// True when this node sends outside TCP connections through egress gateways now.
    pub(super) fn egress_on(&self) -> bool {
        !self.egress_gateway && !self.remote.gateways().is_empty()
    }

    /// What getsockname shows `app` for a socket whose real address is `real`: the
    /// virtual address of a socket it bound, or its own address in place of the node's.
    /// A socket bound to a wildcard (`unconnected`: its inode, while it has no peer)
    /// shows the wildcard and its port, as the kernel does until a connection gives it
    /// an address; the connections it accepts show the virtual address.
    pub fn local_name(
        &self,
        app: AppId,
        proto: Proto,
        real: SocketAddr,
        unconnected: Option<u64>,
    ) -> Option<SocketAddr> {
        let SocketAddr::V4(v4) = addr::unmap(real) else { return None };
        if *v4.ip() != self.node.ip {
            return None;
        }
        if let Some(b) = self.services.get(proto, v4.port()).filter(|b| b.app == app) {
            if unconnected == Some(b.inode) && b.binds_wildcard() {
                return Some(SocketAddr::new(b.requested.ip(), b.service.port()));
            }
            return Some(SocketAddr::V4(b.service));
        }
        let me = self.apps.get(app)?;
        Some(SocketAddr::V4(SocketAddrV4::new(me.ip, v4.port())))
    }

    /// Where a connect by `app` to the loopback (`dest`: 127.0.0.0/8, `::1`, or the
    /// unspecified address, which Linux takes as loopback) reaches a listener of its own
    /// on the host, as on a host its wildcard listeners take loopback connections: the
    /// host addresses of its TCP rows at that port bound to a wildcard that takes
    /// `dest`'s family (`::` takes both, `0.0.0.0` and `::ffff:0.0.0.0` IPv4 only). No
    /// one else's rows: another app's loopback is its own.
    pub fn own_rows(&self, app: AppId, proto: Proto, dest: SocketAddr) -> Vec<SocketAddrV4> {
        let ipv4 = addr::unmap(dest).is_ipv4();
        let takes = |requested: SocketAddr| match requested {
            SocketAddr::V6(v6) if v6.ip().is_unspecified() => true,
            other => ipv4 && addr::unmap(other).ip().is_unspecified(),
        };
        self.services
            .rows()
            .filter(|b| b.app == app && b.proto == proto && b.service.port() == dest.port() && takes(b.requested))
            .map(|b| b.host)
            .collect()
    }

    /// What getpeername shows for a peer whose real address is `real`: a service's
    /// virtual address in place of its host address.
    pub fn peer_name(&self, proto: Proto, real: SocketAddr) -> Option<SocketAddr> {
        let SocketAddr::V4(v4) = addr::unmap(real) else { return None };
        self.service_of_host(proto, v4).map(SocketAddr::V4)
    }

    /// The service a row's host address serves, on this node or another.
    pub(super) fn service_of_host(&self, proto: Proto, host: SocketAddrV4) -> Option<SocketAddrV4> {
        self.services.service_of_host(proto, host).or_else(|| self.remote.service_of_host(proto, host))
    }

    pub(super) fn rows_at(&self, proto: Proto, service: SocketAddrV4) -> Vec<(SocketAddrV4, &Labels)> {
        rows_at(&self.apps, &self.services, &self.remote, proto, service)
    }

    /// True when `ip` is an app's, a vservice's or a remote cluster's service's address
    /// (now or ever) and not a node's own.
    pub fn is_virtual(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                !self.is_node_address(v4) && (self.is_app_or_vservice_address(v4) || self.remote.was_federated_ip(v4))
            }
            IpAddr::V6(_) => false,
        }
    }

    /// True when `ip` is an app's (here or on another node, now or ever) or a
    /// vservice's.
    pub(super) fn is_app_or_vservice_address(&self, ip: Ipv4Addr) -> bool {
        self.apps.has_ip(ip) || self.remote.has_app_ip(ip) || self.remote.was_app_ip(ip) || self.vservices.has_ip(ip)
    }
}

/// What a vservice backend at `addr` is now (TCP): never to be dialled (and why), a
/// row's host address (that row), a service-table address (its rows; none when down;
/// `seen_app`: its address was once an app's), or an outside address.
pub(super) fn reach<'t>(
    node: &NodeInfo,
    apps: &'t super::apps::Apps,
    services: &'t super::services::Services,
    remote: &'t super::remote::RemoteView,
    addr: SocketAddrV4,
    seen_app: bool,
) -> Reach<'t> {
    if let Some(why) = addr::not_unicast(*addr.ip()) {
        return Reach::Refused(why);
    }
    let local = services.row_at_host(Proto::Tcp, addr).and_then(|b| apps.get(b.app).map(|a| (b.host, &a.labels)));
    if let Some(row) = local.or_else(|| remote.row_at_host(Proto::Tcp, addr).map(|r| (r.host, &r.labels))) {
        return Reach::Rows(vec![row]);
    }
    if is_daemon_port(node, remote, addr) {
        return Reach::Refused("a port of the ax daemon on a node address");
    }
    let rows = rows_at(apps, services, remote, Proto::Tcp, addr);
    if seen_app || !rows.is_empty() {
        Reach::Rows(rows)
    } else {
        Reach::Outside
    }
}

/// Every row serving `service` over `proto`, this node's and the cluster's: the host
/// address to connect to, and the labels of the app behind it.
fn rows_at<'t>(
    apps: &'t super::apps::Apps,
    services: &'t super::services::Services,
    remote: &'t super::remote::RemoteView,
    proto: Proto,
    service: SocketAddrV4,
) -> Vec<(SocketAddrV4, &'t Labels)> {
    let local = services.rows_at(proto, service).filter_map(|b| apps.get(b.app).map(|a| (b.host, &a.labels)));
    let remote = remote.rows_at(proto, service).map(|r| (r.host, &r.labels));
    local.chain(remote).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::*;
    use crate::table::{DaemonPorts, NewApp, Remote, RemoteApp};
    use crate::vservice::{Expose, ExposeAt};
    use std::collections::HashSet;

    #[test]
    fn bind_plans() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "zone=default");
        let host = |s| BindPlan::Host { service: s, host_port: None };
        assert_eq!(t.plan_bind(a, sa("0.0.0.0:80"), root), Ok(host("198.18.0.1:80".parse().unwrap())));
        assert_eq!(t.plan_bind(a, sa("[::]:80"), root), Ok(host("198.18.0.1:80".parse().unwrap())));
        assert_eq!(t.plan_bind(a, sa("[::ffff:198.18.0.1]:81"), root), Ok(host("198.18.0.1:81".parse().unwrap())));
        assert_eq!(t.plan_bind(a, sa("127.0.0.1:80"), root), Ok(BindPlan::Private));
        assert_eq!(t.plan_bind(a, sa("[::1]:80"), root), Ok(BindPlan::Private));
        assert_eq!(t.plan_bind(a, sa("198.18.0.2:80"), root), Err(libc::EADDRNOTAVAIL));
        assert_eq!(t.plan_bind(a, sa("[2001:db8::1]:80"), root), Err(libc::EADDRNOTAVAIL));
    }

    #[test]
    fn the_daemons_ports_on_a_node_address_are_not_for_apps() {
        let mut t = table();
        t.set_remote(Remote { nodes: vec![("n2".into(), "10.0.0.2".parse().unwrap())], ..Remote::default() });
        let on_node = app(&mut t, None, "zone=default");
        let virt = app(&mut t, Some("198.18.0.1"), "zone=default");
        let on_member = app(&mut t, Some("10.0.0.2"), "zone=default");
        for port in [53, 6661, 6664, 7946] {
            let any = sa(&format!("0.0.0.0:{port}"));
            assert_eq!(t.plan_bind(on_node, any, root), Err(libc::EADDRINUSE), "{port}");
            assert_eq!(t.plan_bind(on_member, any, root), Err(libc::EADDRINUSE), "{port}");
            // On an address of its own an app has every port.
            assert!(t.plan_bind(virt, any, root).is_ok(), "{port}");
            // Loopback stays the app's own.
            assert_eq!(t.plan_bind(on_node, sa(&format!("127.0.0.1:{port}")), root), Ok(BindPlan::Private));
        }
        assert!(t.plan_bind(on_node, sa("0.0.0.0:54"), root).is_ok());
        // Without DNS, 53 is the app's to take.
        let mut quiet = table();
        let ports = DaemonPorts::new(false, 7946, 6664, 1024);
        quiet.node.ports = ports;
        let a = app(&mut quiet, None, "zone=default");
        assert!(quiet.plan_bind(a, sa("0.0.0.0:53"), root).is_ok());
    }

    #[test]
    fn relayed_and_exposed_host_ports_are_reserved_but_for_their_own_app() {
        let mut t = table();
        let mine = Expose { internal: 8000, at: ExposeAt::ThisNode, host_port: 9999 };
        let exposer = t.add_app(NewApp { expose: vec![mine], ..NewApp::default() }).unwrap().id;
        let other = app(&mut t, None, "zone=default");
        let every = Expose { internal: 8000, at: ExposeAt::Every, host_port: 9997 };
        let elsewhere = Expose { internal: 8000, at: ExposeAt::Node("10.0.0.9".parse().unwrap()), host_port: 9996 };
        let remote_app = RemoteApp {
            node: "n2".into(),
            id: "f0000002".into(),
            name: None,
            ip: "198.18.0.5".parse().unwrap(),
            expose: vec![every, elsewhere],
            labels: None,
        };
        t.set_remote(Remote { apps: vec![remote_app], ..Remote::default() });
        let mut ext = vservice("pub", "198.18.2.1", crate::vservice::LbType::Random, "198.18.0.5");
        ext.external = true;
        t.add_vservice(ext, crate::table::Origin::Cluster).unwrap();
        for port in [9999, 9997, 80] {
            assert_eq!(t.plan_bind(other, sa(&format!("0.0.0.0:{port}")), root), Err(libc::EADDRINUSE), "{port}");
        }
        assert!(t.plan_bind(other, sa("0.0.0.0:9996"), root).is_ok(), "exposed on another node only");
        // The exposing app binds its own exposed port (8000) and may bind 9999 itself.
        assert!(t.plan_bind(exposer, sa("0.0.0.0:8000"), root).is_ok());
        assert!(t.plan_bind(exposer, sa("0.0.0.0:9999"), root).is_ok());
        assert_eq!(t.reserved("10.0.0.1:9999".parse().unwrap(), None), Some(crate::table::Reserved::Relayed));
        assert_eq!(t.reserved("10.0.0.1:53".parse().unwrap(), None), Some(crate::table::Reserved::Daemon));
        assert_eq!(t.reserved("198.18.0.5:53".parse().unwrap(), None), None);
    }

    #[test]
    fn privileged_ports_need_the_capability_as_on_a_host() {
        let mut t = table();
        let a = app(&mut t, None, "zone=default");
        let v = app(&mut t, Some("198.18.0.1"), "zone=default");
        let nobody = || false;
        for addr in ["0.0.0.0:80", "[::]:443", "127.0.0.1:80", "198.18.0.1:1023"] {
            assert_eq!(t.plan_bind(v, sa(addr), nobody), Err(libc::EACCES), "{addr}");
            assert!(t.plan_bind(v, sa(addr), root).is_ok(), "{addr}");
        }
        for addr in ["0.0.0.0:0", "0.0.0.0:1024", "127.0.0.1:8080"] {
            assert!(t.plan_bind(v, sa(addr), nobody).is_ok(), "{addr}");
        }
        // The kernel's order: an address the app lacks first, then the privilege, then
        // a port in use.
        assert_eq!(t.plan_bind(v, sa("198.18.0.9:80"), nobody), Err(libc::EADDRNOTAVAIL));
        assert_eq!(t.plan_bind(a, sa("0.0.0.0:53"), nobody), Err(libc::EACCES));
        assert_eq!(t.plan_bind(a, sa("0.0.0.0:53"), root), Err(libc::EADDRINUSE));
        // The privilege is asked only where a port needs it.
        assert!(t.plan_bind(v, sa("0.0.0.0:8080"), || panic!("asked")).is_ok());
        // A host whose ip_unprivileged_port_start is 0 lets anyone bind anything.
        t.node.ports.unprivileged_port_start = 0;
        assert!(t.plan_bind(v, sa("0.0.0.0:80"), nobody).is_ok());
    }

    #[test]
    fn a_connect_to_the_daemons_dns_reaches_the_daemon_whatever_rows_say() {
        let mut t = table();
        let squatter = app(&mut t, None, "zone=default");
        let c = app(&mut t, None, "zone=default");
        // A row at NODE:53 that no bind would make now (an older daemon's state, say).
        let p = t.take_port().unwrap();
        t.add_binding(squatter, bound(1, "0.0.0.0:53"), SocketAddrV4::new(NODE, 53), p);
        t.set_listening(Proto::Tcp, p, 1, 1);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.1:53")), Route::Direct(sa("10.0.0.1:53")));
        assert_eq!(t.route_connect(c, Proto::Udp, sa("[::ffff:10.0.0.1]:53")), Route::Direct(sa("10.0.0.1:53")));
        // Its other ports, here or on a member, are no app's to reach: a gossip datagram
        // from the node's address would pass for the node's own word.
        t.set_remote(Remote { nodes: vec![("b".into(), "10.0.0.2".parse().unwrap())], ..Remote::default() });
        for dest in ["10.0.0.1:6664", "10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.2:6661"] {
            assert_eq!(t.route_connect(c, Proto::Udp, sa(dest)), Route::Refused, "{dest}");
            assert_eq!(t.route_connect(c, Proto::Tcp, sa(dest)), Route::Refused, "{dest}");
        }
        assert_eq!(t.route_connect(c, Proto::Udp, sa("10.0.0.2:53")), Route::Direct(sa("10.0.0.2:53")));
        // Elsewhere those ports are anyone's.
        assert_eq!(t.route_connect(c, Proto::Udp, sa("10.9.9.9:7946")), Route::Direct(sa("10.9.9.9:7946")));
    }

    #[test]
    fn two_backends_on_one_address_both_get_chosen() {
        let mut t = table();
        let s1 = app(&mut t, Some("198.18.0.1"), "zone=default");
        let s2 = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        let p1 = serve(&mut t, s1, "0.0.0.0:80", 11);
        let p2 = serve(&mut t, s2, "[::]:80", 12);
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let Route::Backends(b) = t.route_connect(c, Proto::Tcp, sa("198.18.0.1:80")) else { panic!() };
            assert_eq!(b.len(), 2);
            seen.insert(b[0].addr.port());
        }
        assert_eq!(seen, HashSet::from([p1, p2]));
    }

    #[test]
    fn labels_isolate_both_ways() {
        let mut t = table();
        let prod = app(&mut t, Some("198.18.0.2"), "role=prod");
        let other = app(&mut t, Some("198.18.0.3"), "zone=default");
        let client_prod = app(&mut t, None, "role=prod");
        let client_default = app(&mut t, None, "zone=default");
        let pp = serve(&mut t, prod, "0.0.0.0:6379", 1);
        serve(&mut t, other, "0.0.0.0:6379", 2);
        assert_eq!(
            t.route_connect(client_prod, Proto::Tcp, sa("198.18.0.2:6379")),
            Route::Backends(vec![Target { addr: SocketAddrV4::new(NODE, pp), source: None }])
        );
        assert_eq!(t.route_connect(client_default, Proto::Tcp, sa("198.18.0.2:6379")), Route::Refused);
        assert_eq!(t.route_connect(client_prod, Proto::Tcp, sa("198.18.0.3:6379")), Route::Refused);
        // Naming the host port directly is no way around the labels.
        assert_eq!(
            t.route_connect(client_default, Proto::Tcp, SocketAddr::V4(SocketAddrV4::new(NODE, pp))),
            Route::Refused
        );
    }

    #[test]
    fn unserved_virtual_address_is_refused_and_others_go_direct() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        serve(&mut t, s, "0.0.0.0:80", 1);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.0.1:81")), Route::Refused);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.1:22")), Route::Direct(sa("10.0.0.1:22")));
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("[::ffff:127.0.0.1]:5")), Route::Private);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("0.0.0.0:6664")), Route::Private);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("[::]:6664")), Route::Private);
        assert_eq!(t.route_connect(c, Proto::Udp, sa("198.18.0.1:80")), Route::Refused);
    }

    #[test]
    fn names_translate_both_ways() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, Some("198.18.0.9"), "zone=default");
        let p = serve(&mut t, s, "[::]:80", 5);
        let host = SocketAddr::V4(SocketAddrV4::new(NODE, p));
        assert_eq!(t.local_name(s, Proto::Tcp, host, None), Some(sa("198.18.0.1:80")));
        assert_eq!(t.peer_name(Proto::Tcp, host), Some(sa("198.18.0.1:80")));
        // The listener itself shows the wildcard it was bound to, with its port; what it
        // accepts (another inode, or the socket once connected) the virtual address.
        assert_eq!(t.local_name(s, Proto::Tcp, host, Some(5)), Some(sa("[::]:80")));
        assert_eq!(t.local_name(s, Proto::Tcp, host, Some(6)), Some(sa("198.18.0.1:80")));
        let q = serve(&mut t, s, "198.18.0.1:81", 7);
        let specific = SocketAddr::V4(SocketAddrV4::new(NODE, q));
        assert_eq!(t.local_name(s, Proto::Tcp, specific, Some(7)), Some(sa("198.18.0.1:81")));
        let r = serve(&mut t, s, "0.0.0.0:0", 8);
        let any = SocketAddr::V4(SocketAddrV4::new(NODE, r));
        assert_eq!(t.local_name(s, Proto::Tcp, any, Some(8)), Some(SocketAddr::from(([0, 0, 0, 0], r))));
        // Another app's socket at that port shows nothing of it.
        assert_eq!(t.local_name(c, Proto::Tcp, host, Some(5)), Some(SocketAddr::from(([198, 18, 0, 9], p))));
        assert_eq!(t.local_name(c, Proto::Tcp, sa("10.0.0.1:33000"), None), Some(sa("198.18.0.9:33000")));
        assert_eq!(t.local_name(c, Proto::Tcp, sa("10.9.9.9:33000"), None), None);
        assert_eq!(t.peer_name(Proto::Tcp, sa("10.0.0.1:1")), None);
    }

    #[test]
    fn an_app_reaches_its_own_wildcard_listeners_over_loopback_and_no_one_elses() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "zone=default");
        let b = app(&mut t, Some("198.18.0.2"), "zone=default");
        let any4 = serve(&mut t, a, "0.0.0.0:8001", 1);
        let any6 = serve(&mut t, a, "[::]:8002", 2);
        serve(&mut t, a, "198.18.0.1:8003", 3);
        let host = |p| SocketAddrV4::new(NODE, p);
        assert_eq!(t.own_rows(a, Proto::Tcp, sa("127.0.0.1:8001")), [host(any4)]);
        assert_eq!(t.own_rows(a, Proto::Tcp, sa("0.0.0.0:8001")), [host(any4)]);
        assert_eq!(t.own_rows(a, Proto::Tcp, sa("[::ffff:127.0.0.1]:8001")), [host(any4)]);
        // ::1 reaches `::`, not 0.0.0.0 (IPv4 only), as on a host.
        assert_eq!(t.own_rows(a, Proto::Tcp, sa("[::1]:8001")), []);
        assert_eq!(t.own_rows(a, Proto::Tcp, sa("[::1]:8002")), [host(any6)]);
        assert_eq!(t.own_rows(a, Proto::Tcp, sa("127.0.0.1:8002")), [host(any6)]);
        // A listener on the app's own address takes no loopback connection.
        assert_eq!(t.own_rows(a, Proto::Tcp, sa("127.0.0.1:8003")), []);
        // Another app, another protocol, another port: nothing.
        assert_eq!(t.own_rows(b, Proto::Tcp, sa("127.0.0.1:8001")), []);
        assert_eq!(t.own_rows(a, Proto::Udp, sa("127.0.0.1:8001")), []);
        assert_eq!(t.own_rows(a, Proto::Tcp, sa("127.0.0.1:8004")), []);
    }

    #[test]
    fn exposed_ports_are_bound_as_they_are_once_per_app() {
        let mut t = table();
        let expose = vec![
            Expose { internal: 8000, at: ExposeAt::ThisNode, host_port: 9999 },
            Expose { internal: 8001, at: ExposeAt::Node("10.0.0.9".parse().unwrap()), host_port: 9998 },
        ];
        let id = t.add_app(NewApp { expose, ..NewApp::default() }).unwrap().id;
        let BindPlan::Host { host_port, .. } = t.plan_bind(id, sa("0.0.0.0:8000"), root).unwrap() else { panic!() };
        assert_eq!(host_port, Some(9999));
        t.add_binding(id, bound(1, "0.0.0.0:8000"), SocketAddrV4::new(NODE, 8000), 9999);
        // The app's second socket on that port ([::]) takes a pool port.
        let BindPlan::Host { host_port, .. } = t.plan_bind(id, sa("[::]:8000"), root).unwrap() else { panic!() };
        assert_eq!(host_port, None);
        // Exposed on another node: here the socket takes a pool port (that node relays).
        let BindPlan::Host { host_port, .. } = t.plan_bind(id, sa("0.0.0.0:8001"), root).unwrap() else { panic!() };
        assert_eq!(host_port, None);
        // An exposed port is not the pool's to give back.
        t.remove_app(id);
        assert_eq!(t.pool().in_use(), 0);
    }

    #[test]
    fn outside_addresses_go_through_an_egress_gateway_when_there_is_one() {
        let mut t = table();
        let c = app(&mut t, None, "zone=default");
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")), Route::Direct(sa("192.0.2.1:443")));
        let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
        t.set_remote(Remote { nodes: vec![("g".into(), gw)], egress: vec![gw], ..Remote::default() });
        let via = Route::Egress { gateway: SocketAddrV4::new(gw, EGRESS_PORT), dest: sa("192.0.2.1:443") };
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")), via);
        // UDP, and connects to the cluster's own nodes, go directly.
        assert_eq!(t.route_connect(c, Proto::Udp, sa("192.0.2.1:53")), Route::Direct(sa("192.0.2.1:53")));
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.3:22")), Route::Direct(sa("10.0.0.3:22")));
        // A gateway's own apps go directly.
        t.set_egress_gateway(true);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")), Route::Direct(sa("192.0.2.1:443")));
        t.record_peer("10.0.0.1:33000".parse().unwrap(), sa("192.0.2.1:443"));
        assert_eq!(t.remembered_peer(sa("10.0.0.1:33000")), Some(sa("192.0.2.1:443")));
        assert_eq!(t.remembered_peer(sa("10.0.0.1:33001")), None);
    }

    #[test]
    fn the_node_address_is_routed_only_where_an_app_serves_it() {
        let mut t = table();
        // An app without --ip has the node's address: its rows serve NODE:port.
        let on_node = app(&mut t, None, "zone=default");
        let own = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        let p = serve(&mut t, on_node, "0.0.0.0:80", 1);
        assert_eq!(first(t.route_connect(c, Proto::Tcp, sa("10.0.0.1:80"))), SocketAddrV4::new(NODE, p));
        // An unserved port of the node is the host's own: direct. Of an app: refused.
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.1:22")), Route::Direct(sa("10.0.0.1:22")));
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.0.1:22")), Route::Refused);
        assert!(!t.is_virtual(NODE.into()), "apps on the node's address do not make it virtual");
        assert!(t.is_virtual("198.18.0.1".parse().unwrap()));
        // A row of one protocol does not serve the other.
        assert_eq!(t.route_connect(c, Proto::Udp, sa("10.0.0.1:80")), Route::Direct(sa("10.0.0.1:80")));
        // The app that serves it sees the node address as its own in getsockname.
        assert_eq!(t.local_name(own, Proto::Tcp, sa("[::ffff:10.0.0.1]:5000"), None), Some(sa("198.18.0.1:5000")));
        assert_eq!(t.local_name(on_node, Proto::Tcp, sa("10.0.0.1:5000"), None), Some(sa("10.0.0.1:5000")));
    }

    #[test]
    fn unknown_apps_and_plain_ipv6_get_nothing_virtual() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.0.1"), "zone=default");
        serve(&mut t, s, "0.0.0.0:80", 1);
        let stranger = AppId(0xf000_0000);
        assert_eq!(t.plan_bind(stranger, sa("0.0.0.0:80"), root), Err(libc::EPERM));
        assert_eq!(t.route_connect(stranger, Proto::Tcp, sa("198.18.0.1:80")), Route::Refused);
        assert_eq!(t.local_name(stranger, Proto::Tcp, sa("10.0.0.1:1"), None), None);
        // Loopback stays private even for an unknown app; a real IPv6 address goes out.
        assert_eq!(t.route_connect(stranger, Proto::Tcp, sa("127.0.0.1:80")), Route::Private);
        assert_eq!(t.route_connect(s, Proto::Tcp, sa("[2001:db8::1]:80")), Route::Direct(sa("[2001:db8::1]:80")));
        assert!(!t.is_virtual("2001:db8::1".parse().unwrap()));
        assert_eq!(t.peer_name(Proto::Tcp, sa("[2001:db8::1]:80")), None);
    }

    #[test]
    fn egress_spreads_over_the_gateways_and_spares_node_addresses() {
        let mut t = table();
        let c = app(&mut t, None, "zone=default");
        let gws: Vec<Ipv4Addr> = vec!["10.0.0.3".parse().unwrap(), "10.0.0.4".parse().unwrap()];
        let nodes = vec![("g1".into(), gws[0]), ("g2".into(), gws[1]), ("n5".into(), "10.0.0.5".parse().unwrap())];
        t.set_remote(Remote { nodes, egress: gws.clone(), ..Remote::default() });
        let mut used = HashSet::new();
        for _ in 0..50 {
            let Route::Egress { gateway, dest } = t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")) else { panic!() };
            assert_eq!((gateway.port(), dest), (EGRESS_PORT, sa("192.0.2.1:443")));
            used.insert(*gateway.ip());
        }
        assert_eq!(used, gws.into_iter().collect());
        // A node that is no gateway is still reached directly.
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.5:22")), Route::Direct(sa("10.0.0.5:22")));
    }

    #[test]
    fn with_the_forwarder_egress_goes_to_this_nodes_egress_port_while_a_gateway_lives() {
        let mut t = table();
        t.set_egress_forwarder(true);
        let c = app(&mut t, None, "zone=default");
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")), Route::Direct(sa("192.0.2.1:443")));
        let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
        t.set_remote(Remote { nodes: vec![("g".into(), gw)], egress: vec![gw], ..Remote::default() });
        let via = Route::Egress { gateway: SocketAddrV4::new(NODE, EGRESS_PORT), dest: sa("192.0.2.1:443") };
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")), via);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.3:22")), Route::Direct(sa("10.0.0.3:22")));
        // The app still cannot reach the forwarder itself: it is a daemon port.
        assert_eq!(t.route_connect(c, Proto::Tcp, SocketAddr::from((NODE, EGRESS_PORT))), Route::Refused);
    }
}
