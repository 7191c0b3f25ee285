//! What the egress port serves other nodes (see [`crate::tunnel`] for its lines): which
//! destinations an egress gateway refuses to connect to whoever asks (they are the
//! cluster's own, not the outside world's), which addresses a relay hop may reach, and
//! who the peer at an address is.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::addr;

use super::{Proto, Table};

/// Why a gateway will not connect to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 127/8, ::1 (either form) or the unspecified address, which Linux takes for
    /// loopback: the gateway's own private services.
    Loopback,
    /// An address of the gateway host itself (its daemon's ports among them).
    GatewayHost,
    /// A node address of the cluster.
    NodeAddress,
    /// The host address of a service row (the cluster's apps, reached through ax).
    RowHost,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Loopback => "a loopback address",
            Refusal::GatewayHost => "an address of this host",
            Refusal::NodeAddress => "a node address of the cluster",
            Refusal::RowHost => "the host address of a service row",
        })
    }
}

impl Table {
    /// Why this node, as egress gateway, refuses to connect to `dest`; `host_addrs`:
    /// every address of this host's interfaces. None: it may.
    pub fn egress_refusal(&self, dest: SocketAddr, host_addrs: &[IpAddr]) -> Option<Refusal> {
        let ip = addr::unmap(dest).ip();
        if addr::is_loopback(ip) || ip.is_unspecified() {
            return Some(Refusal::Loopback);
        }
        if host_addrs.iter().any(|h| addr::unmap(SocketAddr::new(*h, 0)).ip() == ip) {
            return Some(Refusal::GatewayHost);
        }
        let IpAddr::V4(v4) = ip else { return None };
        if self.is_node_address(v4) {
            return Some(Refusal::NodeAddress);
        }
        let row_host = self.services.rows().any(|b| *b.host.ip() == v4)
            || self.remote.get().rows.iter().any(|r| *r.host.ip() == v4);
        row_host.then_some(Refusal::RowHost)
    }

    /// True when a relay hop may reach `to`: a host address of one of this node's own
    /// TCP rows (an exposed port included), nothing else.
    pub fn relay_hop_allowed(&self, to: SocketAddrV4) -> bool {
        *to.ip() == self.node.ip && self.services.service_of_host(Proto::Tcp, to).is_some()
    }

    /// The names of the live members whose node address is `ip` (never this node).
    pub fn members_at(&self, ip: Ipv4Addr) -> impl Iterator<Item = &str> {
        self.remote.get().nodes.iter().filter(move |(_, n)| *n == ip).map(|(name, _)| name.as_str())
    }

    /// Whether egress goes through this node's forwarder (`--tls`: it carries the app's
    /// bytes to a gateway over TLS) rather than from the app's socket to a gateway.
    pub fn set_egress_forwarder(&mut self, on: bool) {
        self.generation += 1;
        self.kernel.touch_all();
        self.egress_forwarder = on;
    }

    /// A live egress gateway, at random (connections spread over them).
    pub fn pick_gateway(&mut self) -> Option<Ipv4Addr> {
        let gateways = self.remote.gateways();
        (!gateways.is_empty()).then(|| gateways[self.rng.usize(..gateways.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::{app, serve, table, NODE};
    use crate::table::{Remote, RemoteRow};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn remote() -> Remote {
        Remote {
            nodes: vec![("n2".into(), "10.0.0.2".parse().unwrap())],
            rows: vec![RemoteRow {
                node: "n2".into(),
                app: "web".into(),
                proto: Proto::Tcp,
                service: "198.18.0.9:80".parse().unwrap(),
                host: "10.0.9.9:40000".parse().unwrap(),
                labels: Default::default(),
            }],
            egress: vec!["10.0.0.2".parse().unwrap()],
            ..Remote::default()
        }
    }

    #[test]
    fn the_gateway_refuses_the_clusters_own_addresses_and_its_own() {
        let mut t = table();
        t.set_remote(remote());
        let host = [ip("10.0.0.1"), ip("192.168.7.7"), ip("fe80::1")];
        let refused = |dest: &str| t.egress_refusal(dest.parse().unwrap(), &host);
        for lo in ["127.0.0.1:6664", "127.9.9.9:80", "[::1]:80", "[::ffff:127.0.0.1]:6664", "0.0.0.0:80", "[::]:80"] {
            assert_eq!(refused(lo), Some(Refusal::Loopback), "{lo}");
        }
        // The gateway's other addresses (and so its daemon's ports on them).
        for own in ["192.168.7.7:7946", "[::ffff:192.168.7.7]:22", "[fe80::1]:80"] {
            assert_eq!(refused(own), Some(Refusal::GatewayHost), "{own}");
        }
        assert_eq!(refused("10.0.0.1:6664"), Some(Refusal::GatewayHost));
        assert_eq!(refused("10.0.0.2:6664"), Some(Refusal::NodeAddress));
        assert_eq!(refused("[::ffff:10.0.0.2]:22"), Some(Refusal::NodeAddress));
        assert_eq!(refused("10.0.9.9:1"), Some(Refusal::RowHost), "any port of a row's host");
        for out in ["192.0.2.1:443", "10.0.0.3:6664", "[2001:db8::1]:443", "203.0.113.5:53"] {
            assert_eq!(refused(out), None, "{out}");
        }
        // A member that left is outside again.
        t.set_remote(Remote::default());
        assert_eq!(t.egress_refusal("10.0.0.2:6664".parse().unwrap(), &host), None);
    }

    #[test]
    fn this_nodes_rows_are_refused_even_on_another_address() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "zone=default");
        let port = serve(&mut t, a, "198.18.0.1:80", 1);
        // With no interface list at all, the node's address is still the cluster's.
        assert_eq!(t.egress_refusal(SocketAddr::from((NODE, port)), &[]), Some(Refusal::NodeAddress));
    }

    #[test]
    fn a_relay_hop_reaches_this_nodes_listening_rows_only() {
        let mut t = table();
        t.set_remote(remote());
        let a = app(&mut t, Some("198.18.0.1"), "zone=default");
        let port = serve(&mut t, a, "198.18.0.1:80", 1);
        assert!(t.relay_hop_allowed(SocketAddrV4::new(NODE, port)));
        for no in [
            SocketAddrV4::new(NODE, port + 1),
            SocketAddrV4::new(NODE, 6664),
            SocketAddrV4::new(NODE, 7946),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            "10.0.9.9:40000".parse().unwrap(),
            "198.18.0.1:80".parse().unwrap(),
        ] {
            assert!(!t.relay_hop_allowed(no), "{no}");
        }
    }

    #[test]
    fn members_are_found_by_address_and_gateways_picked_among_the_live() {
        let mut t = table();
        assert_eq!(t.pick_gateway(), None);
        t.set_remote(remote());
        assert_eq!(t.members_at("10.0.0.2".parse().unwrap()).collect::<Vec<_>>(), ["n2"]);
        assert_eq!(t.members_at(NODE).count(), 0, "this node is no member of its own");
        assert_eq!(t.members_at("10.0.0.3".parse().unwrap()).count(), 0);
        assert_eq!(t.pick_gateway(), Some("10.0.0.2".parse().unwrap()));
    }
}
