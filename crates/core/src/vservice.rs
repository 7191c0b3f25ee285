//! Virtual services: a virtual IP with port mappings in front of backends, which are
//! service-table addresses (apps, with labels) or external `IP[:port]`s reached directly
//! from the host; balanced at random or in strict rotation per port. Also the typed
//! values of `ax create vservice` and `ax run --expose`: each parses from its flag's
//! text once (`FromStr`, for the CLI and for JSON alike) and is valid from then on.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::addr::VirtualIp;

/// Why a vservice or `--expose` value does not parse; each names its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("--lbtype '{0}' is not one of Random, RoundRobin")]
    LbType(String),
    #[error("--ports: '{0}' is not a port (1-65535)")]
    Port(String),
    #[error("--ports: virtual port {0} is given twice")]
    PortTwice(u16),
    #[error("--backends: give at least one IPv4 address or IP:port")]
    NoBackends,
    #[error("--backends: '{0}' is not an IPv4 address or IP:port")]
    Backend(String),
    #[error("--expose '{0}' is not internal:host-port, internal:<node-IP>:node-port or internal:0.0.0.0:node-port")]
    Expose(String),
}

/// Serializes a type as its text (`Display`) and deserializes it through `FromStr`, so
/// JSON input is checked exactly as the command line is.
macro_rules! as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use as_text;

/// How a vservice spreads connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbType {
    #[default]
    Random,
    RoundRobin,
}

impl LbType {
    pub fn name(self) -> &'static str {
        match self {
            LbType::Random => "Random",
            LbType::RoundRobin => "RoundRobin",
        }
    }
}

impl FromStr for LbType {
    type Err = ParseError;

    /// Either name, in any case (the manual writes them both ways).
    fn from_str(s: &str) -> Result<LbType, ParseError> {
        match s.to_ascii_lowercase().as_str() {
            "random" => Ok(LbType::Random),
            "roundrobin" => Ok(LbType::RoundRobin),
            _ => Err(ParseError::LbType(s.into())),
        }
    }
}

impl fmt::Display for LbType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

as_text!(LbType);

/// `vport:appport`: connections to the virtual port go to the backends' app port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    pub vport: u16,
    pub app_port: u16,
}

fn port(s: &str) -> Result<u16, ParseError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ParseError::Port(s.into())),
    }
}

/// Parses `--ports 80:8000,443` (a bare port maps to itself).
pub fn parse_ports(csv: &str) -> Result<Vec<PortMap>, ParseError> {
    let mut out: Vec<PortMap> = Vec::new();
    for item in csv.split(',').map(str::trim) {
        let m = match item.split_once(':') {
            Some((v, a)) => PortMap { vport: port(v)?, app_port: port(a)? },
            None => {
                let p = port(item)?;
                PortMap { vport: p, app_port: p }
            }
        };
        if out.iter().any(|o| o.vport == m.vport) {
            return Err(ParseError::PortTwice(m.vport));
        }
        out.push(m);
    }
    Ok(out)
}

/// A vservice's port maps, at least one, no virtual port twice. Written as the flag
/// takes them, every map in full: `80:8000,443:443`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMaps(pub Vec<PortMap>);

impl FromStr for PortMaps {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<PortMaps, ParseError> {
        parse_ports(s).map(PortMaps)
    }
}

impl fmt::Display for PortMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|m| format!("{}:{}", m.vport, m.app_port)).collect();
        f.write_str(&items.join(","))
    }
}

as_text!(PortMaps);

/// A backend as given: an address (a service-table address, or an external host whose
/// app port is used) or an address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ip(Ipv4Addr),
    IpPort(SocketAddrV4),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Ip(ip) => write!(f, "{ip}"),
            Backend::IpPort(sa) => write!(f, "{sa}"),
        }
    }
}

/// Parses `--backends 198.18.1.1,10.0.0.5:8080`.
pub fn parse_backends(csv: &str) -> Result<Vec<Backend>, ParseError> {
    let items: Vec<&str> = csv.split(',').map(str::trim).collect();
    if items.iter().all(|s| s.is_empty()) {
        return Err(ParseError::NoBackends);
    }
    items
        .into_iter()
        .map(|s| {
            s.parse::<SocketAddrV4>()
                .map(Backend::IpPort)
                .or_else(|_| s.parse::<Ipv4Addr>().map(Backend::Ip))
                .map_err(|_| ParseError::Backend(s.into()))
        })
        .collect()
}

/// A vservice's backends, at least one; written as the flag takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends(pub Vec<Backend>);

impl FromStr for Backends {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Backends, ParseError> {
        parse_backends(s).map(Backends)
    }
}

impl fmt::Display for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(Backend::to_string).collect();
        f.write_str(&items.join(","))
    }
}

as_text!(Backends);

/// A vservice's definition, as `ax create vservice` gives it, the API takes it, the
/// cluster carries it and the state file keeps it. Every field is valid once this
/// exists, except the name, which the daemon checks as a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub ip: VirtualIp,
    pub ports: PortMaps,
    pub backends: Backends,
    #[serde(default)]
    pub lbtype: LbType,
    #[serde(default)]
    pub source_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub external: bool,
    /// Backends outside the service table (neither an app's address nor a row's host
    /// address) may be dialled: `--allow-external-backends`.
    #[serde(default)]
    pub allow_external_backends: bool,
}

impl Spec {
    /// The vservice it defines; the name is taken lowercase (DNS names have no case).
    pub fn vservice(&self) -> Vservice {
        Vservice {
            name: self.name.to_ascii_lowercase(),
            ip: self.ip.get(),
            ports: self.ports.0.clone(),
            backends: self.backends.0.clone(),
            lb: self.lbtype,
            source_ip: self.source_ip,
            external: self.external,
            allow_external: self.allow_external_backends,
            app_backends: Default::default(),
        }
    }
}

/// At most this many port maps per vservice.
pub const MAX_PORTS: usize = 64;
/// At most this many backends per vservice.
pub const MAX_BACKENDS: usize = 256;
/// At most this many (port map, backend) pairs per vservice: every connect and every
/// relay walks them, so their product is bounded too.
pub const MAX_PAIRS: usize = 4096;

/// A vservice larger than the daemon serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("--ports: {0} port maps, at most {MAX_PORTS} per vservice")]
    Ports(usize),
    #[error("--backends: {0} backends, at most {MAX_BACKENDS} per vservice")]
    Backends(usize),
    #[error(
        "--ports x --backends: {0} x {1} pairs, at most {MAX_PAIRS} per vservice: split it into several vservices"
    )]
    Pairs(usize, usize),
}

impl Spec {
    /// Checks the size bounds ([`MAX_PORTS`], [`MAX_BACKENDS`], [`MAX_PAIRS`]).
    pub fn check_limits(&self) -> Result<(), LimitError> {
        let (ports, backends) = (self.ports.0.len(), self.backends.0.len());
        if ports > MAX_PORTS {
            return Err(LimitError::Ports(ports));
        }
        if backends > MAX_BACKENDS {
            return Err(LimitError::Backends(backends));
        }
        if ports * backends > MAX_PAIRS {
            return Err(LimitError::Pairs(ports, backends));
        }
        Ok(())
    }
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
    /// Backends outside the service table may be dialled (else they never are).
    pub allow_external: bool,
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
        assert_eq!(parse_ports("80:8000,80:9000").unwrap_err().to_string(), "--ports: virtual port 80 is given twice");
        assert_eq!(parse_ports("x:80").unwrap_err().to_string(), "--ports: 'x' is not a port (1-65535)");
        assert_eq!(parse_ports("0"), Err(ParseError::Port("0".into())));
        assert!(parse_ports("").is_err());
        assert_eq!(
            parse_backends("198.18.1.1, 10.0.0.5:8080").unwrap(),
            vec![Backend::Ip("198.18.1.1".parse().unwrap()), Backend::IpPort("10.0.0.5:8080".parse().unwrap())]
        );
        assert_eq!(
            parse_backends(" , ").unwrap_err().to_string(),
            "--backends: give at least one IPv4 address or IP:port"
        );
        assert_eq!(
            parse_backends("web").unwrap_err().to_string(),
            "--backends: 'web' is not an IPv4 address or IP:port"
        );
        assert_eq!("roundrobin".parse(), Ok(LbType::RoundRobin));
        assert_eq!("Random".parse(), Ok(LbType::Random));
        assert_eq!(
            "LeastConn".parse::<LbType>().unwrap_err().to_string(),
            "--lbtype 'LeastConn' is not one of Random, RoundRobin"
        );
    }

    #[test]
    fn values_print_as_their_flags_take_them() {
        let ports: PortMaps = " 80:8000, 443".parse().unwrap();
        assert_eq!(ports.to_string(), "80:8000,443:443");
        assert_eq!(ports.to_string().parse::<PortMaps>().unwrap(), ports);
        let backends: Backends = "198.18.1.1, 10.0.0.5:8080".parse().unwrap();
        assert_eq!(backends.to_string(), "198.18.1.1,10.0.0.5:8080");
        assert_eq!(backends.to_string().parse::<Backends>().unwrap(), backends);
        assert_eq!(LbType::RoundRobin.to_string().parse::<LbType>().unwrap(), LbType::RoundRobin);
    }

    fn spec_json() -> serde_json::Value {
        serde_json::json!({"name": "Web", "ip": "198.18.2.1", "ports": "80:8000", "backends": "198.18.1.1,10.0.0.5:8080"})
    }

    #[test]
    fn a_spec_reads_from_json_with_defaults_and_roundtrips() {
        let spec: Spec = serde_json::from_value(spec_json()).unwrap();
        assert_eq!(spec.lbtype, LbType::Random);
        assert_eq!((spec.source_ip, spec.external, spec.allow_external_backends), (None, false, false));
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["ports"], "80:8000");
        assert_eq!(back["lbtype"], "Random");
        assert_eq!(serde_json::from_value::<Spec>(back).unwrap(), spec);
        let v = spec.vservice();
        assert_eq!(v.name, "web");
        assert_eq!(v.ports, vec![PortMap { vport: 80, app_port: 8000 }]);
        assert_eq!(v.backends.len(), 2);
    }

    #[test]
    fn a_bad_field_in_json_is_refused_with_the_flags_message() {
        let cases = [
            ("ports", serde_json::json!("80:x"), "--ports: 'x' is not a port (1-65535)"),
            ("backends", serde_json::json!("web"), "--backends: 'web' is not an IPv4 address or IP:port"),
            ("lbtype", serde_json::json!("LeastConn"), "--lbtype 'LeastConn' is not one of Random, RoundRobin"),
            ("ip", serde_json::json!("300.1.1.1"), "--ip 300.1.1.1 is not an IPv4 address"),
            ("ip", serde_json::json!("127.0.0.1"), "--ip 127.0.0.1 is a loopback address"),
            ("ports", serde_json::json!(80), "invalid type"),
        ];
        for (field, value, want) in cases {
            let mut j = spec_json();
            j[field] = value;
            let e = serde_json::from_value::<Spec>(j).unwrap_err().to_string();
            assert!(e.contains(want), "{field}: {e}");
        }
    }

    #[test]
    fn a_vservice_is_bounded_in_ports_backends_and_their_product() {
        let spec = |ports: usize, backends: usize| {
            let mut j = spec_json();
            j["ports"] = (1..=ports).map(|p| p.to_string()).collect::<Vec<_>>().join(",").into();
            j["backends"] =
                (0..backends).map(|i| format!("198.18.{}.{}", i / 256, i % 256)).collect::<Vec<_>>().join(",").into();
            serde_json::from_value::<Spec>(j).unwrap().check_limits()
        };
        assert_eq!(spec(MAX_PORTS, MAX_PAIRS / MAX_PORTS), Ok(()));
        assert_eq!(spec(MAX_PAIRS / MAX_BACKENDS, MAX_BACKENDS), Ok(()));
        assert_eq!(spec(MAX_PORTS + 1, 1), Err(LimitError::Ports(65)));
        assert_eq!(spec(1, MAX_BACKENDS + 1), Err(LimitError::Backends(257)));
        assert_eq!(spec(MAX_PORTS, MAX_BACKENDS), Err(LimitError::Pairs(64, 256)));
        assert_eq!(spec(1000, 1).unwrap_err().to_string(), "--ports: 1000 port maps, at most 64 per vservice");
        assert_eq!(
            spec(32, 200).unwrap_err().to_string(),
            "--ports x --backends: 32 x 200 pairs, at most 4096 per vservice: split it into several vservices"
        );
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExposeAt {
    /// `internal:host-port`: the node the app runs on.
    ThisNode,
    /// `internal:<node-IP>:node-port`: that node only.
    Node(Ipv4Addr),
    /// `internal:0.0.0.0:node-port`: every node.
    Every,
}

/// One `--expose` value; written (in JSON too) in the form it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expose {
    pub internal: u16,
    pub at: ExposeAt,
    pub host_port: u16,
}

/// Parses one `--expose` value in any of its three forms.
pub fn parse_expose(s: &str) -> Result<Expose, ParseError> {
    let bad = || ParseError::Expose(s.into());
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

impl FromStr for Expose {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Expose, ParseError> {
        parse_expose(s)
    }
}

impl fmt::Display for Expose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            ExposeAt::ThisNode => write!(f, "{}:{}", self.internal, self.host_port),
            ExposeAt::Node(ip) => write!(f, "{}:{ip}:{}", self.internal, self.host_port),
            ExposeAt::Every => write!(f, "{}:0.0.0.0:{}", self.internal, self.host_port),
        }
    }
}

as_text!(Expose);

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
            assert!(parse_expose(bad).unwrap_err().to_string().starts_with(&format!("--expose '{bad}'")), "{bad}");
        }
    }

    #[test]
    fn each_form_roundtrips_through_text_and_json() {
        for s in ["8000:9999", "8000:10.0.0.1:9999", "8000:0.0.0.0:9999"] {
            let e: Expose = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
            let j = serde_json::to_string(&e).unwrap();
            assert_eq!(j, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Expose>(&j).unwrap(), e);
        }
        assert!(serde_json::from_str::<Expose>("\"0:9999\"").unwrap_err().to_string().contains("--expose '0:9999'"));
    }
}
