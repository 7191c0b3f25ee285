//! What a queried name means to ax: one of its names (bare, like `web`, or under the
//! domain, like `web.appswitch.local`), a name in its domain that does not exist
//! (NXDOMAIN), or a name for the upstream servers.
//!
//! Across a federation: `web.c1.appswitch.local` is always the service named `web` of
//! cluster `c1` (of our own cluster when `c1` is ours). The bare name, and the name
//! under the domain, are our cluster's first; only where no local app or vservice has
//! the name do they resolve to a remote cluster's service, and then only if exactly one
//! remote cluster has it (a name two clusters use is ambiguous: NXDOMAIN in the
//! domain, forwarded when bare). A remote cluster can never take a name from us.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::wire::{self, Query};

/// Where the names come from, and who may ask for them (the daemon's tables).
pub trait Names: Send + Sync {
    /// Every address serving the bare name `label` in our cluster, or None if no app
    /// has the name.
    fn addresses(&self, label: &str) -> Option<Vec<Ipv4Addr>>;
    /// The addresses of remote clusters' services named `label`, by cluster (none
    /// outside a federation).
    fn federated(&self, label: &str) -> BTreeMap<String, Vec<Ipv4Addr>>;
    /// Our cluster's name.
    fn cluster(&self) -> String;
    /// Whether a query from `from` is answered at all.
    fn may_ask(&self, from: IpAddr) -> bool;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer it here: the rcode and the A records.
    Answer { rcode: u8, addrs: Vec<Ipv4Addr> },
    /// Relay it to an upstream server unchanged.
    Forward,
}

/// A `--dns-domain` that is not a domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--dns-domain '{0}' is not a valid domain name")]
pub struct BadDomain(pub String);

/// ax's zone: the bare names of apps and the same names under `domain`.
#[derive(Debug, Clone)]
pub struct Zone {
    domain: String,
}

impl Zone {
    pub fn new(domain: &str) -> Result<Zone, BadDomain> {
        let d = domain.trim_matches('.').to_ascii_lowercase();
        let valid = !d.is_empty() && d.len() <= 253 && d.split('.').all(|l| wire::check_label(l).is_ok());
        if !valid {
            return Err(BadDomain(domain.into()));
        }
        Ok(Zone { domain: d })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn decide(&self, q: &Query, names: &dyn Names) -> Decision {
        if q.qclass != wire::CLASS_IN && q.qclass != wire::TYPE_ANY {
            return Decision::Forward;
        }
        let (label, ours) = if q.name == self.domain {
            return answer_empty();
        } else if let Some(rest) = q.name.strip_suffix(&self.domain).and_then(|r| r.strip_suffix('.')) {
            (rest, true)
        } else if !q.name.contains('.') && !q.name.is_empty() {
            (q.name.as_str(), false)
        } else {
            return Decision::Forward;
        };
        match resolve(label, names).filter(|a| !a.is_empty()) {
            Some(mut addrs) => match q.qtype {
                wire::TYPE_A | wire::TYPE_ANY => {
                    // Spread clients over the addresses serving one name.
                    fastrand::shuffle(&mut addrs);
                    Decision::Answer { rcode: wire::RCODE_OK, addrs }
                }
                // The name exists but has no records of this type (AAAA and the rest).
                _ => answer_empty(),
            },
            None if ours => Decision::Answer { rcode: wire::RCODE_NXDOMAIN, addrs: Vec::new() },
            None => Decision::Forward,
        }
    }
}

/// The addresses of `name` (in our domain, or bare): `label.cluster` is that cluster's
/// service; `label` is ours, else the one remote cluster's that has it.
fn resolve(name: &str, names: &dyn Names) -> Option<Vec<Ipv4Addr>> {
    match name.split_once('.') {
        Some((label, cluster)) if !cluster.contains('.') => {
            if cluster == names.cluster().to_ascii_lowercase() {
                names.addresses(label)
            } else {
                names.federated(label).into_iter().find(|(c, _)| c.eq_ignore_ascii_case(cluster)).map(|(_, a)| a)
            }
        }
        Some(_) => None,
        None => names.addresses(name).or_else(|| {
            let mut remote = names.federated(name).into_values();
            match (remote.next(), remote.next()) {
                (Some(addrs), None) => Some(addrs),
                _ => None,
            }
        }),
    }
}

fn answer_empty() -> Decision {
    Decision::Answer { rcode: wire::RCODE_OK, addrs: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse_query, query_bytes, RCODE_NXDOMAIN, RCODE_OK, TYPE_A, TYPE_AAAA};

    struct Fixed;
    impl Names for Fixed {
        fn addresses(&self, label: &str) -> Option<Vec<Ipv4Addr>> {
            (label == "web").then(|| vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)])
        }

        /// `web` in c1 and c2 (ours too), `shop` in c1 only, `db` in c1 and c2.
        fn federated(&self, label: &str) -> BTreeMap<String, Vec<Ipv4Addr>> {
            let at = |c: &str, ip: [u8; 4]| (c.to_string(), vec![Ipv4Addr::from(ip)]);
            match label {
                "web" => BTreeMap::from([at("c1", [198, 18, 20, 1]), at("c2", [198, 18, 30, 1])]),
                "shop" => BTreeMap::from([at("c1", [198, 18, 20, 2])]),
                "db" => BTreeMap::from([at("c1", [198, 18, 20, 3]), at("C2", [198, 18, 30, 3])]),
                _ => BTreeMap::new(),
            }
        }

        fn cluster(&self) -> String {
            "C0".into()
        }

        fn may_ask(&self, _: IpAddr) -> bool {
            true
        }
    }

    fn decide(name: &str, qtype: u16) -> Decision {
        let z = Zone::new("AppSwitch.Local.").unwrap();
        z.decide(&parse_query(&query_bytes(1, name, qtype)).unwrap(), &Fixed)
    }

    #[test]
    fn our_names_bare_and_qualified() {
        for name in ["web", "web.appswitch.local", "WEB.appswitch.local"] {
            let Decision::Answer { rcode, mut addrs } = decide(name, TYPE_A) else { panic!("{name}") };
            addrs.sort();
            assert_eq!((rcode, addrs.len()), (RCODE_OK, 2), "{name}");
        }
        assert_eq!(decide("web", TYPE_AAAA), Decision::Answer { rcode: RCODE_OK, addrs: vec![] });
    }

    #[test]
    fn unknown_in_domain_is_nxdomain_and_the_rest_is_forwarded() {
        assert_eq!(decide("db.appswitch.local", TYPE_A), Decision::Answer { rcode: RCODE_NXDOMAIN, addrs: vec![] });
        assert_eq!(decide("a.web.appswitch.local", TYPE_A), Decision::Answer { rcode: RCODE_NXDOMAIN, addrs: vec![] });
        assert_eq!(decide("db", TYPE_A), Decision::Forward);
        assert_eq!(decide("example.org", TYPE_A), Decision::Forward);
        assert_eq!(decide("xappswitch.local", TYPE_A), Decision::Forward);
        assert_eq!(decide("appswitch.local", TYPE_A), Decision::Answer { rcode: RCODE_OK, addrs: vec![] });
    }

    fn a(name: &str) -> Decision {
        decide(name, TYPE_A)
    }

    fn addrs(ips: &[[u8; 4]]) -> Decision {
        Decision::Answer { rcode: RCODE_OK, addrs: ips.iter().map(|ip| Ipv4Addr::from(*ip)).collect() }
    }

    #[test]
    fn a_remote_service_by_cluster_always_and_bare_when_unique() {
        // Qualified by cluster: that cluster's, ours included.
        assert_eq!(a("web.c1.appswitch.local"), addrs(&[[198, 18, 20, 1]]));
        assert_eq!(a("WEB.C2.appswitch.local"), addrs(&[[198, 18, 30, 1]]));
        assert_eq!(a("db.c2.appswitch.local"), addrs(&[[198, 18, 30, 3]]));
        let Decision::Answer { rcode, addrs: ours } = a("web.c0.appswitch.local") else { panic!() };
        assert_eq!((rcode, ours.len()), (RCODE_OK, 2));
        // Bare (or under the domain): unique among remote clusters.
        assert_eq!(a("shop"), addrs(&[[198, 18, 20, 2]]));
        assert_eq!(a("shop.appswitch.local"), addrs(&[[198, 18, 20, 2]]));
        // No such name there, no such cluster, too many labels.
        let nx = Decision::Answer { rcode: RCODE_NXDOMAIN, addrs: vec![] };
        assert_eq!(a("shop.c2.appswitch.local"), nx);
        assert_eq!(a("shop.c9.appswitch.local"), nx);
        assert_eq!(a("x.shop.c1.appswitch.local"), nx);
    }

    /// A name two remote clusters use is nobody's unqualified, and our own name stays
    /// ours whoever else publishes it.
    #[test]
    fn remote_names_never_shadow_ours_nor_each_other() {
        let nx = Decision::Answer { rcode: RCODE_NXDOMAIN, addrs: vec![] };
        assert_eq!(a("db.appswitch.local"), nx);
        assert_eq!(a("db"), Decision::Forward);
        for name in ["web", "web.appswitch.local"] {
            let Decision::Answer { rcode, mut addrs } = a(name) else { panic!("{name}") };
            addrs.sort();
            assert_eq!((rcode, addrs), (RCODE_OK, vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)]));
        }
        // Bare names with a dot outside the domain are the upstreams'.
        assert_eq!(a("web.c1"), Decision::Forward);
    }

    #[test]
    fn domain_is_checked() {
        assert_eq!(Zone::new("").unwrap_err().to_string(), "--dns-domain '' is not a valid domain name");
        assert!(Zone::new("a..b").is_err());
        assert!(Zone::new("bad_name.local").is_err());
        assert_eq!(Zone::new("Corp.Example.").unwrap().domain(), "corp.example");
        // 253 characters is the longest name; one more is refused, as it was given.
        let long = ["x".repeat(63), "x".repeat(63), "x".repeat(63), "x".repeat(61)].join(".");
        assert!(Zone::new(&long).is_ok());
        assert_eq!(Zone::new(&format!("a.{long}")).unwrap_err(), BadDomain(format!("a.{long}")));
    }
}

/// An item of `--dns-servers` that is not `IP[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--dns-servers: '{0}' is not IP[:port]")]
pub struct BadServer(pub String);

/// Parses `--dns-servers`: a comma-separated list of `IP[:port]` (IPv6 as `[ip]:port`
/// or a bare address); the port defaults to 53.
pub fn parse_servers(csv: &str) -> Result<Vec<std::net::SocketAddr>, BadServer> {
    use std::net::{IpAddr, SocketAddr};
    csv.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<SocketAddr>()
                .or_else(|_| item.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| BadServer(item.into()))
        })
        .collect()
}

/// The nameservers of a resolv.conf, less `skip` (the daemon's own DNS address).
pub fn resolv_conf_servers(text: &str, skip: std::net::IpAddr) -> Vec<std::net::SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<std::net::IpAddr>().ok())
        .filter(|ip| *ip != skip)
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn server_lists() {
        let s = parse_servers("127.0.0.1:5533, 8.8.8.8,[::1]:54,::2").unwrap();
        let want: Vec<std::net::SocketAddr> =
            ["127.0.0.1:5533", "8.8.8.8:53", "[::1]:54", "[::2]:53"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(s, want);
        assert_eq!(
            parse_servers("1.2.3.4:99999").unwrap_err().to_string(),
            "--dns-servers: '1.2.3.4:99999' is not IP[:port]"
        );
        assert!(parse_servers("dns.example").is_err());
    }

    #[test]
    fn resolv_conf_skips_ourselves() {
        let text =
            "# x\nsearch lan\nnameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\n";
        let got = resolv_conf_servers(text, "10.0.0.1".parse().unwrap());
        assert_eq!(got, vec!["10.0.0.2:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]);
    }
}
