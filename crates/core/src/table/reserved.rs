//! What belongs to the daemon on the node's address, and what a bind needs: the
//! daemon's own ports (DNS, gossip, egress, REST; on every node of the cluster, which
//! shares one configuration), the host ports this node relays or exposes, and the
//! privileged ports below the host's `ip_unprivileged_port_start`. An app cannot bind
//! a service address the daemon has (EADDRINUSE, as the kernel says of a port in use),
//! a connect to one of the daemon's own ports always reaches the daemon, and a
//! vservice may not send its clients there.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::ids::AppId;
use crate::vservice::ExposeAt;

use super::remote::RemoteView;
use super::{NodeInfo, Table, EGRESS_PORT};

/// The port of the daemon's DNS server on the node address.
pub const DNS_PORT: u16 = 53;

/// The kernel driver's broker on the node address (RFC 3692's experiment port 1):
/// below the unprivileged port start, so while the daemon is down (and the pinned
/// programs still send connects here) no user without CAP_NET_BIND_SERVICE can listen
/// in its place. The daemon refuses the kernel driver on a host whose
/// `net.ipv4.ip_unprivileged_port_start` lets anyone bind it.
pub const BROKER_PORT: u16 = 1021;

/// The daemon's own ports and the host's privileged-port boundary: facts of the node,
/// set by the daemon from its configuration when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonPorts {
    /// Every port the daemon serves on a node address, whatever the protocol.
    own: BTreeSet<u16>,
    /// Binding a port below this needs CAP_NET_BIND_SERVICE (the host's
    /// `net.ipv4.ip_unprivileged_port_start`).
    pub unprivileged_port_start: u16,
}

impl DaemonPorts {
    /// The ports of a daemon serving DNS (`dns`), gossip, the egress port, REST and
    /// the kernel driver's broker.
    pub fn new(dns: bool, gossip: u16, rest: u16, unprivileged_port_start: u16) -> DaemonPorts {
        let mut own = BTreeSet::from([gossip, EGRESS_PORT, rest, BROKER_PORT]);
        if dns {
            own.insert(DNS_PORT);
        }
        DaemonPorts { own, unprivileged_port_start }
    }

    /// A federation gateway's too: its ingress session port and WAN gossip port.
    pub fn with_federation(mut self, port: u16, gossip_port: u16) -> DaemonPorts {
        self.own.extend([port, gossip_port]);
        self
    }

    pub fn own(&self) -> impl Iterator<Item = u16> + '_ {
        self.own.iter().copied()
    }
}

/// Why an address is the daemon's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// One of the daemon's own ports on a node address of the cluster.
    Daemon,
    /// A host port of this node that a relay or an `--expose` serves.
    Relayed,
}

pub(super) fn is_node_address(node: &NodeInfo, remote: &RemoteView, ip: Ipv4Addr) -> bool {
    ip == node.ip || remote.is_node(ip)
}

pub(super) fn is_daemon_port(node: &NodeInfo, remote: &RemoteView, addr: SocketAddrV4) -> bool {
    (node.ports.own.contains(&addr.port()) && is_node_address(node, remote, *addr.ip()))
        || remote.get().ingresses.contains(&addr)
}

/// True when an `--expose` at `at`, of an app on this node (`local`) or another, is
/// served on this node, whose address is `me`.
pub(super) fn exposed_here(at: ExposeAt, me: Ipv4Addr, local: bool) -> bool {
    match at {
        ExposeAt::ThisNode => local,
        ExposeAt::Every => true,
        ExposeAt::Node(ip) => ip == me,
    }
}

impl Table {
    /// True when `ip` is a node address of the cluster: this node's or a live member's.
    pub fn is_node_address(&self, ip: Ipv4Addr) -> bool {
        is_node_address(&self.node, &self.remote, ip)
    }

    /// A port of the daemon's own on a node address.
    pub fn is_daemon_port(&self, addr: SocketAddrV4) -> bool {
        is_daemon_port(&self.node, &self.remote, addr)
    }

    /// Whether `addr` is the daemon's, and why; the `--expose` host ports of `owner`
    /// (the app binding) are its own to bind.
    pub fn reserved(&self, addr: SocketAddrV4, owner: Option<AppId>) -> Option<Reserved> {
        if self.is_daemon_port(addr) {
            return Some(Reserved::Daemon);
        }
        (*addr.ip() == self.node.ip && self.relayed_ports(owner).contains(&addr.port())).then_some(Reserved::Relayed)
    }

    /// The host ports of this node that relays or `--expose` serve: exposes of this
    /// node's apps (but `owner`'s) and of other nodes' apps that name this node or
    /// every node, and the virtual ports of `--external` vservices.
    fn relayed_ports(&self, owner: Option<AppId>) -> BTreeSet<u16> {
        let me = self.node.ip;
        let local = self
            .apps
            .iter()
            .filter(|a| Some(a.id) != owner)
            .flat_map(|a| a.expose.iter().filter(|e| exposed_here(e.at, me, true)))
            .map(|e| e.host_port);
        let remote = self
            .remote
            .get()
            .apps
            .iter()
            .flat_map(|a| a.expose.iter().filter(|e| exposed_here(e.at, me, false)))
            .map(|e| e.host_port);
        let external = self.vservices.iter().filter(|v| v.external).flat_map(|v| v.ports.iter().map(|m| m.vport));
        local.chain(remote).chain(external).collect()
    }

    /// True when the daemon's DNS server answers a query from `from`: this node's
    /// own address (apps' host sockets send from it), loopback, or a live member's
    /// node address. Anyone else on the link gets no answer.
    pub fn may_query_dns(&self, from: IpAddr) -> bool {
        match crate::addr::unmap(SocketAddr::new(from, 0)).ip() {
            IpAddr::V4(v4) => v4.is_loopback() || self.is_node_address(v4),
            IpAddr::V6(v6) => v6.is_loopback(),
        }
    }

    /// True when binding `port` needs CAP_NET_BIND_SERVICE, as on the host.
    pub fn is_privileged_port(&self, port: u16) -> bool {
        port != 0 && port < self.node.ports.unprivileged_port_start
    }
}

#[cfg(test)]
mod tests {
    use crate::table::testing::table;
    use crate::table::Remote;

    #[test]
    fn dns_answers_this_node_loopback_and_live_members_only() {
        let mut t = table();
        t.set_remote(Remote { nodes: vec![("n2".into(), "10.0.0.2".parse().unwrap())], ..Remote::default() });
        for ok in ["10.0.0.1", "127.0.0.1", "127.9.9.9", "::1", "::ffff:10.0.0.1", "10.0.0.2"] {
            assert!(t.may_query_dns(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.0.0.3", "203.0.113.5", "0.0.0.0", "2001:db8::1", "198.18.0.1"] {
            assert!(!t.may_query_dns(no.parse().unwrap()), "{no}");
        }
        // A member that left is a stranger again.
        t.set_remote(Remote::default());
        assert!(!t.may_query_dns("10.0.0.2".parse().unwrap()));
    }
}
