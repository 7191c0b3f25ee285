//! What a queried name means to ax: one of its names (bare, like `web`, or under the
//! domain, like `web.appswitch.local`), a name in its domain that does not exist
//! (NXDOMAIN), or a name for the upstream servers.

use std::net::{IpAddr, Ipv4Addr};

use crate::wire::{self, Query};

/// Where the names come from, and who may ask for them (the daemon's tables).
pub trait Names: Send + Sync {
    /// Every address serving the bare name `label`, or None if no app has the name.
    fn addresses(&self, label: &str) -> Option<Vec<Ipv4Addr>>;
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
        match names.addresses(label).filter(|a| !a.is_empty()) {
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
