//! Whether an app's `--ip` would hide a real host: an address of this host, or one
//! inside a network it reaches directly. Traffic from every ax app to such an address
//! would go to the app, and the real host there would be lost to them. The caller reads
//! the host's interfaces and routes; this decides.

use std::net::Ipv4Addr;

use crate::addr::Subnet;

/// What the host reaches directly, and on which interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNet {
    /// An address of an interface, with its prefix length.
    Address { interface: String, ip: Ipv4Addr, prefix: u8 },
    /// A route out of an interface with no gateway (scope link).
    Route { interface: String, subnet: Subnet },
}

/// Why an `--ip` is refused (unless the app is run with `--ip-overlap-ok`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overlap {
    #[error(
        "--ip {ip} is an address of this host (on {interface}): ax apps would reach the app instead of this host \
         there; pick another address (or add --ip-overlap-ok)"
    )]
    Address { ip: Ipv4Addr, interface: String },
    #[error(
        "--ip {ip} is inside {subnet}, a network this host reaches directly (on {interface}): ax apps would reach \
         the app instead of a real host there; pick an address outside the host's networks (or add --ip-overlap-ok)"
    )]
    Network { ip: Ipv4Addr, subnet: Subnet, interface: String },
}

/// Why `ip` would hide a real host, given what the host reaches directly; None when it
/// would not. The node's own address is every app's default, so it is never refused.
/// An address of the host is named before a network that holds it. A network of prefix
/// length 0 (a default route out of a point-to-point link) is every address: it counts
/// for none.
pub fn overlap(ip: Ipv4Addr, node: Ipv4Addr, host: &[HostNet]) -> Option<Overlap> {
    if ip == node {
        return None;
    }
    let own = host.iter().find_map(|n| match n {
        HostNet::Address { interface, ip: a, .. } if *a == ip => Some(interface),
        _ => None,
    });
    if let Some(interface) = own {
        return Some(Overlap::Address { ip, interface: interface.clone() });
    }
    host.iter().find_map(|n| {
        let (interface, subnet) = match n {
            HostNet::Address { interface, ip, prefix } => (interface, Subnet::new(*ip, *prefix)),
            HostNet::Route { interface, subnet } => (interface, *subnet),
        };
        (subnet.prefix > 0 && subnet.contains(ip)).then(|| Overlap::Network {
            ip,
            subnet,
            interface: interface.clone(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A host on 10.251.0.1/24 (eth0), with a bridge 198.18.250.1/24, a /32 on a dummy
    /// device, a hand-made link route and a point-to-point default route.
    fn host() -> Vec<HostNet> {
        let addr =
            |interface: &str, a: &str, prefix| HostNet::Address { interface: interface.into(), ip: ip(a), prefix };
        let route = |interface: &str, a: &str, prefix| HostNet::Route {
            interface: interface.into(),
            subnet: Subnet::new(ip(a), prefix),
        };
        vec![
            addr("lo", "127.0.0.1", 8),
            addr("eth0", "10.251.0.1", 24),
            route("eth0", "10.251.0.0", 24),
            addr("br0", "198.18.250.1", 24),
            addr("dummy0", "192.0.2.77", 32),
            route("eth0", "198.18.251.0", 24),
            route("ppp0", "0.0.0.0", 0),
        ]
    }

    #[test]
    fn host_addresses_and_networks_are_refused_naming_the_interface() {
        let node = ip("10.251.0.1");
        let cases = [
            ("198.18.250.1", "--ip 198.18.250.1 is an address of this host (on br0)"),
            ("192.0.2.77", "--ip 192.0.2.77 is an address of this host (on dummy0)"),
            ("10.251.0.9", "--ip 10.251.0.9 is inside 10.251.0.0/24, a network this host reaches directly (on eth0)"),
            (
                "198.18.250.9",
                "--ip 198.18.250.9 is inside 198.18.250.0/24, a network this host reaches directly (on br0)",
            ),
            (
                "198.18.251.200",
                "--ip 198.18.251.200 is inside 198.18.251.0/24, a network this host reaches directly (on eth0)",
            ),
        ];
        for (given, want) in cases {
            let e = overlap(ip(given), node, &host()).unwrap_or_else(|| panic!("{given} accepted")).to_string();
            assert!(e.starts_with(want), "{given}: {e}");
            assert!(e.ends_with("(or add --ip-overlap-ok)"), "{e}");
        }
    }

    #[test]
    fn the_node_address_and_addresses_outside_the_hosts_networks_are_taken() {
        let node = ip("10.251.0.1");
        for given in ["10.251.0.1", "198.18.0.1", "198.18.252.1", "10.251.1.1", "192.0.2.76", "203.0.113.5"] {
            assert_eq!(overlap(ip(given), node, &host()), None, "{given}");
        }
        // A host with no networks refuses nothing.
        assert_eq!(overlap(ip("10.251.0.9"), node, &[]), None);
    }
}
