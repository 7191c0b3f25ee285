//! Which destinations the kernel driver's maps may hold an entry for: whole addresses
//! (every port), exact destinations (one port), and the UDP rows' host addresses whose
//! datagrams show as their services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::super::reserved::is_node_address;
use super::super::{Proto, Table};

impl Table {
    /// What a datagram from each UDP row's host address (here and on other nodes) shows
    /// as its source: the row's service, by the user driver's own answer
    /// ([`Table::peer_name`]).
    pub(in crate::table) fn udp_peers(&self) -> BTreeMap<SocketAddrV4, SocketAddrV4> {
        let here = self.services.rows().filter(|b| b.proto == Proto::Udp).map(|b| b.host);
        let there = self.remote.get().rows.iter().filter(|r| r.proto == Proto::Udp).map(|r| r.host);
        here.chain(there)
            .filter_map(|host| match self.peer_name(Proto::Udp, SocketAddr::V4(host)) {
                Some(SocketAddr::V4(service)) if service != host => Some((host, service)),
                _ => None,
            })
            .collect()
    }

    /// Addresses whose every port may answer other than the default: virtual
    /// addresses (refused where nothing serves them; remote clusters' services' too)
    /// and node addresses (never through egress).
    pub(super) fn whole_addresses(&self) -> BTreeSet<(Proto, Ipv4Addr)> {
        let mut ips: BTreeSet<Ipv4Addr> = self.apps.iter().map(|a| a.ip).collect();
        ips.extend(self.remote.get().apps.iter().map(|a| a.ip));
        ips.extend(self.remote.seen_app_ips());
        ips.extend(self.vservices.iter().map(|v| v.ip));
        ips.extend(self.remote.seen_federated_ips());
        ips.insert(self.node.ip);
        ips.extend(self.remote.get().nodes.iter().map(|n| n.1));
        ips.into_iter().flat_map(|ip| [(Proto::Tcp, ip), (Proto::Udp, ip)]).collect()
    }

    /// True when `ip` is one of [`Table::whole_addresses`].
    pub(super) fn is_whole_address(&self, ip: Ipv4Addr) -> bool {
        self.apps.has_ip(ip)
            || self.remote.has_app_ip(ip)
            || self.remote.was_app_ip(ip)
            || self.vservices.has_ip(ip)
            || self.remote.was_federated_ip(ip)
            || is_node_address(&self.node, &self.remote, ip)
    }

    /// Destinations whose answer may differ from their address's: service addresses
    /// and host addresses of rows (here and on other nodes), vservice ports, remote
    /// clusters' services, and the
    /// daemon's ports on every node address; those at an address `keep` takes. Never
    /// port 0, the key of every port of an address: a row there (only gossip can
    /// publish one) is not reachable through the kernel driver.
    pub(in crate::table) fn exact_destinations(
        &self,
        keep: impl Fn(Ipv4Addr) -> bool,
    ) -> BTreeSet<(Proto, SocketAddrV4)> {
        let mut out = BTreeSet::new();
        let mut add = |proto, dest: SocketAddrV4| {
            if dest.port() != 0 && keep(*dest.ip()) {
                out.insert((proto, dest));
            }
        };
        for b in self.services.rows() {
            add(b.proto, b.service);
            add(b.proto, b.host);
        }
        for r in self.remote.rows() {
            add(r.proto, r.service);
            add(r.proto, r.host);
        }
        for v in self.vservices.iter() {
            v.ports.iter().for_each(|m| add(Proto::Tcp, SocketAddrV4::new(v.ip, m.vport)));
        }
        for (proto, service, _) in self.federated_services() {
            add(proto, service);
        }
        for ingress in &self.remote.get().ingresses {
            add(Proto::Tcp, *ingress);
        }
        let nodes = std::iter::once(self.node.ip).chain(self.remote.get().nodes.iter().map(|n| n.1));
        for ip in nodes {
            for port in self.node.ports.own() {
                add(Proto::Tcp, SocketAddrV4::new(ip, port));
                add(Proto::Udp, SocketAddrV4::new(ip, port));
            }
        }
        out
    }

    /// True when `dest` over `proto` is one of [`Table::exact_destinations`].
    pub(super) fn is_exact_destination(&self, proto: Proto, dest: SocketAddrV4) -> bool {
        let (ip, port) = (*dest.ip(), dest.port());
        port != 0
            && (self.services.rows_at(proto, dest).next().is_some()
                || self.services.row_at_host(proto, dest).is_some()
                || self.remote.rows_at(proto, dest).next().is_some()
                || self.remote.row_at_host(proto, dest).is_some()
                || (proto == Proto::Tcp
                    && self.vservices.iter().any(|v| v.ip == ip && v.ports.iter().any(|m| m.vport == port)))
                || self.federated(proto, dest).is_some()
                || (proto == Proto::Tcp && self.remote.get().ingresses.contains(&dest))
                || (self.node.ports.own().any(|p| p == port) && is_node_address(&self.node, &self.remote, ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::kmap::{Lookup, Route as KRoute, ANY_CLASS};
    use crate::table::testing::*;
    use crate::table::Remote;

    #[test]
    fn virtual_addresses_refuse_every_port_nobody_serves_and_udp_is_its_own() {
        let mut t = table();
        let s = kapp(&mut t, Some("198.18.0.1"), "zone=default");
        serve(&mut t, s, "0.0.0.0:80", 1);
        let m = maps(&mut t);
        for proto in [Proto::Tcp, Proto::Udp] {
            assert_eq!(m.routes.get(&key(ANY_CLASS, "198.18.0.1:0", proto)), Some(&KRoute::refuse()));
        }
        assert_eq!(m.lookup(s.0, Proto::Udp, "198.18.0.1:80".parse().unwrap()), Lookup::Refuse);
        assert!(matches!(m.lookup(s.0, Proto::Tcp, "198.18.0.1:80".parse().unwrap()), Lookup::Backends(_)));
        // The node's own address and the outside pass, as the user driver's Direct.
        assert_eq!(m.lookup(s.0, Proto::Tcp, "10.0.0.1:22".parse().unwrap()), Lookup::Pass);
        assert_eq!(m.lookup(s.0, Proto::Tcp, "203.0.113.1:443".parse().unwrap()), Lookup::Pass);
        assert_eq!(m.lookup(s.0, Proto::Tcp, "[2001:db8::1]:80".parse().unwrap()), Lookup::Pass);
    }

    #[test]
    fn the_daemons_ports_are_refused_but_dns_whatever_rows_say() {
        let mut t = table();
        t.set_remote(Remote { nodes: vec![("b".into(), "10.0.0.2".parse().unwrap())], ..Remote::default() });
        let squatter = kapp(&mut t, None, "zone=default");
        let p = t.take_port().unwrap();
        t.add_binding(squatter, bound(1, "0.0.0.0:53"), SocketAddrV4::new(NODE, 53), p);
        t.set_listening(Proto::Tcp, p, 1, 1);
        let m = maps(&mut t);
        for dest in ["10.0.0.1:6664", "10.0.0.1:7946", "10.0.0.2:6661", "10.0.0.2:7946"] {
            for proto in [Proto::Tcp, Proto::Udp] {
                assert_eq!(m.routes.get(&key(ANY_CLASS, dest, proto)), Some(&KRoute::refuse()), "{dest}");
            }
        }
        // DNS passes (here the node's default), with no class entry despite the row.
        assert_eq!(m.lookup(squatter.0, Proto::Tcp, "10.0.0.1:53".parse().unwrap()), Lookup::Pass);
        assert!(m.routes.keys().all(|k| k.port != 53 || k.class == ANY_CLASS));
    }
}
