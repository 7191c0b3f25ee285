//! Virtual services: a virtual IP with port mappings in front of backends, which are
//! service-table addresses (apps, with labels) or external `IP[:port]`s reached directly
//! from the host; balanced at random or in strict rotation per port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// How a vservice spreads connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbType {
    Random,
    RoundRobin,
}

impl LbType {
    pub fn parse(s: &str) -> Result<LbType, String> {
        match s.to_ascii_lowercase().as_str() {
            "random" => Ok(LbType::Random),
            "roundrobin" => Ok(LbType::RoundRobin),
            _ => Err(format!("--lbtype '{s}' is not one of Random, RoundRobin")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LbType::Random => "Random",
            LbType::RoundRobin => "RoundRobin",
        }
    }
}

/// `vport:appport`: connections to the virtual port go to the backends' app port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    pub vport: u16,
    pub app_port: u16,
}

fn port(s: &str, what: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what}: '{s}' is not a port (1-65535)")),
    }
}

/// Parses `--ports 80:8000,443` (a bare port maps to itself).
pub fn parse_ports(csv: &str) -> Result<Vec<PortMap>, String> {
    let mut out: Vec<PortMap> = Vec::new();
    for item in csv.split(',').map(str::trim) {
        let m = match item.split_once(':') {
            Some((v, a)) => PortMap { vport: port(v, "--ports")?, app_port: port(a, "--ports")? },
            None => {
                let p = port(item, "--ports")?;
                PortMap { vport: p, app_port: p }
            }
        };
        if out.iter().any(|o| o.vport == m.vport) {
            return Err(format!("--ports: virtual port {} is given twice", m.vport));
        }
        out.push(m);
    }
    Ok(out)
}

/// A backend as given: an address (a service-table address, or an external host whose
/// app port is used) or an address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ip(Ipv4Addr),
    IpPort(SocketAddrV4),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Ip(ip) => write!(f, "{ip}"),
            Backend::IpPort(sa) => write!(f, "{sa}"),
        }
    }
}

/// Parses `--backends 198.18.1.1,10.0.0.5:8080`.
pub fn parse_backends(csv: &str) -> Result<Vec<Backend>, String> {
    let items: Vec<&str> = csv.split(',').map(str::trim).collect();
    if items.iter().all(|s| s.is_empty()) {
        return Err("--backends: give at least one IPv4 address or IP:port".into());
    }
    items
        .into_iter()
        .map(|s| {
            s.parse::<SocketAddrV4>()
                .map(Backend::IpPort)
                .or_else(|_| s.parse::<Ipv4Addr>().map(Backend::Ip))
                .map_err(|_| format!("--backends: '{s}' is not an IPv4 address or IP:port"))
        })
        .collect()
}

/// A virtual service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vservice {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<PortMap>,
    pub backends: Vec<Backend>,
    pub lb: LbType,
    /// The host address outbound connections to external backends come from.
    pub source_ip: Option<Ipv4Addr>,
    /// Also served on the virtual port of every node, for clients outside ax.
    pub external: bool,
    /// Backend addresses seen serving as apps: they stay service-table backends (down
    /// when no app serves them) rather than turn into external hosts.
    pub app_backends: std::collections::BTreeSet<Ipv4Addr>,
}

/// Rotation state of RoundRobin vservices: the next backend, per vservice and port.
#[derive(Debug, Default)]
pub struct Rotation(HashMap<(String, u16), usize>);

impl Rotation {
    /// The index to start from among `n` backends, advancing the rotation.
    pub fn next(&mut self, name: &str, vport: u16, n: usize) -> usize {
        let c = self.0.entry((name.to_string(), vport)).or_insert(0);
        let i = *c % n.max(1);
        *c = c.wrapping_add(1);
        i
    }

    pub fn forget(&mut self, name: &str) {
        self.0.retain(|(n, _), _| n != name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_backends() {
        assert_eq!(
            parse_ports("80:8000,443").unwrap(),
            vec![PortMap { vport: 80, app_port: 8000 }, PortMap { vport: 443, app_port: 443 }]
        );
        assert!(parse_ports("80:8000,80:9000").unwrap_err().contains("given twice"));
        assert_eq!(parse_ports("x:80").unwrap_err(), "--ports: 'x' is not a port (1-65535)");
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("").is_err());
        assert_eq!(
            parse_backends("198.18.1.1, 10.0.0.5:8080").unwrap(),
            vec![Backend::Ip("198.18.1.1".parse().unwrap()), Backend::IpPort("10.0.0.5:8080".parse().unwrap())]
        );
        assert!(parse_backends("").is_err());
        assert_eq!(parse_backends("web").unwrap_err(), "--backends: 'web' is not an IPv4 address or IP:port");
        assert_eq!(LbType::parse("roundrobin"), Ok(LbType::RoundRobin));
        assert_eq!(LbType::parse("Random"), Ok(LbType::Random));
        assert!(LbType::parse("LeastConn").unwrap_err().contains("Random, RoundRobin"));
    }

    #[test]
    fn rotation_is_per_vservice_and_port() {
        let mut r = Rotation::default();
        let seq: Vec<usize> = (0..4).map(|_| r.next("web", 80, 2)).collect();
        assert_eq!(seq, [0, 1, 0, 1]);
        assert_eq!(r.next("web", 81, 2), 0);
        assert_eq!(r.next("db", 80, 3), 0);
        r.forget("web");
        assert_eq!(r.next("web", 80, 2), 0);
    }
}

/// Where `--expose` makes an app port reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExposeAt {
    /// `internal:host-port`: the node the app runs on.
    ThisNode,
    /// `internal:<node-IP>:node-port`: that node only.
    Node(Ipv4Addr),
    /// `internal:0.0.0.0:node-port`: every node.
    Every,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expose {
    pub internal: u16,
    pub at: ExposeAt,
    pub host_port: u16,
}

/// Parses one `--expose` value in any of its three forms.
pub fn parse_expose(s: &str) -> Result<Expose, String> {
    let bad = || {
        format!("--expose '{s}' is not internal:host-port, internal:<node-IP>:node-port or internal:0.0.0.0:node-port")
    };
    let parts: Vec<&str> = s.split(':').collect();
    let p = |x: &str| x.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
    match parts[..] {
        [i, h] => Ok(Expose { internal: p(i)?, at: ExposeAt::ThisNode, host_port: p(h)? }),
        [i, ip, h] => {
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
            let at = if ip.is_unspecified() { ExposeAt::Every } else { ExposeAt::Node(ip) };
            Ok(Expose { internal: p(i)?, at, host_port: p(h)? })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod expose_tests {
    use super::*;

    #[test]
    fn the_three_forms() {
        assert_eq!(
            parse_expose("8000:9999").unwrap(),
            Expose { internal: 8000, at: ExposeAt::ThisNode, host_port: 9999 }
        );
        assert_eq!(parse_expose("8000:10.0.0.1:9999").unwrap().at, ExposeAt::Node("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_expose("8000:0.0.0.0:9999").unwrap().at, ExposeAt::Every);
        for bad in ["8000", "8000:x", "a:9999", "8000:1.2.3:9", "0:9999", "1:2:3:4"] {
            assert!(parse_expose(bad).unwrap_err().starts_with(&format!("--expose '{bad}'")), "{bad}");
        }
    }
}
