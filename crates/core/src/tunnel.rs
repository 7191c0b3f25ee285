//! The lines daemons speak on the egress port ([`crate::EGRESS_PORT`]) before the
//! bytes: one request, one answer. `AXEG <ip:port>` asks an egress gateway to connect
//! out; `AXRL <ip:port> [<client ip>]` asks a node (under `--tls`) for a hop to one of
//! its own rows' host addresses, on behalf of a client whose address the server is to
//! see (the node's SYN names it, as an app's names the app); `AXFD <ip:port> <client
//! ip> <labels>` asks a federation gateway for a connection to a remote cluster's
//! service on behalf of a client app with that address and those labels (a node asks
//! one of its cluster's gateways, which asks a gateway of the service's cluster on its
//! federation port the same). The answer is `OK`, or `ERR <errno>`, the errno the
//! kernel gave the gateway (or the refusal's, ECONNREFUSED), which the app's connect
//! then returns. Only daemons write requests: on a socket no app holds yet.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::labels::Labels;
use crate::Errno;

/// The longest request line (without its newline) a daemon reads: a federated
/// request carries the client's labels.
pub const MAX_REQUEST: usize = 4096;
/// The longest answer line a daemon or a trap engine reads.
pub const MAX_ANSWER: usize = 32;

/// What a daemon asks another on the egress port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Connect out to `dest` (an egress gateway's service).
    Egress(SocketAddr),
    /// A hop to `to`, a host address of a row of the node asked (a relay that crosses
    /// nodes, under `--tls`), for the relay's client at `client` (IPv4 only: what the
    /// SYN can name).
    Relay { to: SocketAddrV4, client: Option<Ipv4Addr> },
    /// A connection to `service`, a remote cluster's (federation), for the client app
    /// at `client` with `labels` (checked again by the gateway of the service's
    /// cluster; `-` on the wire for none).
    Federate { service: SocketAddrV4, client: Ipv4Addr, labels: Labels },
}

/// Whether a server may be shown `client` as the address of a connection carried on
/// for it: not the loopback (a server trusts its own host there), nor an address no
/// host connects from.
pub fn claimable(client: Ipv4Addr) -> bool {
    !(client.is_loopback() || client.is_unspecified() || client.is_multicast() || client.is_broadcast())
}

/// Why a request line is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("the request is not text")]
    NotText,
    #[error("unknown request '{0}' (AXEG, AXRL or AXFD expected)")]
    Unknown(String),
    #[error("'{0}' is not a federated request (an IPv4 ip:port, a client's IPv4 address, labels or '-')")]
    Federated(String),
    #[error("'{0}' is not an ip:port (for AXRL: an IPv4 ip:port, then a client's IPv4 address or nothing)")]
    Address(String),
}

impl Request {
    /// Reads a request line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Request, BadRequest> {
        let line = std::str::from_utf8(line).map_err(|_| BadRequest::NotText)?;
        let (verb, addr) = line.split_once(' ').unwrap_or((line, ""));
        let bad = || BadRequest::Address(addr.chars().take(MAX_REQUEST).collect());
        match verb {
            "AXEG" => addr.parse().map(Request::Egress).map_err(|_| bad()),
            "AXRL" => {
                let (to, client) = match addr.split_once(' ') {
                    Some((to, client)) => (to, Some(client.parse().ok().filter(|c| claimable(*c)).ok_or_else(bad)?)),
                    None => (addr, None),
                };
                Ok(Request::Relay { to: to.parse().map_err(|_| bad())?, client })
            }
            "AXFD" => {
                let bad = || BadRequest::Federated(addr.chars().take(MAX_REQUEST).collect());
                let mut parts = addr.split(' ');
                let (Some(service), Some(client), Some(labels), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad());
                };
                let client: Ipv4Addr = client.parse().ok().filter(|c| claimable(*c)).ok_or_else(bad)?;
                let labels = match labels {
                    "-" => Labels::default(),
                    "" => return Err(bad()),
                    l => l.parse().map_err(|_| bad())?,
                };
                Ok(Request::Federate { service: service.parse().map_err(|_| bad())?, client, labels })
            }
            other => Err(BadRequest::Unknown(other.chars().take(8).collect())),
        }
    }

    /// The request as sent, newline included.
    pub fn line(&self) -> Vec<u8> {
        format!("{self}\n").into_bytes()
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Egress(dest) => write!(f, "AXEG {dest}"),
            Request::Relay { to, client: None } => write!(f, "AXRL {to}"),
            Request::Relay { to, client: Some(client) } => write!(f, "AXRL {to} {client}"),
            Request::Federate { service, client, labels } if *labels == Labels::default() => {
                write!(f, "AXFD {service} {client} -")
            }
            Request::Federate { service, client, labels } => write!(f, "AXFD {service} {client} {labels}"),
        }
    }
}

/// The answer line (newline included) for a connect that gave `result`.
pub fn answer_line(result: Result<(), Errno>) -> Vec<u8> {
    match result {
        Ok(()) => b"OK\n".to_vec(),
        Err(e) => format!("ERR {e}\n").into_bytes(),
    }
}

/// Reads an answer line (without its newline): `OK`, or `ERR <errno>` (anything else is
/// a refusal, ECONNREFUSED).
pub fn parse_answer(line: &[u8]) -> Result<(), Errno> {
    match std::str::from_utf8(line).unwrap_or("") {
        "OK" => Ok(()),
        other => Err(other
            .strip_prefix("ERR ")
            .and_then(|e| e.parse().ok())
            .filter(|e| *e > 0)
            .unwrap_or(libc::ECONNREFUSED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_as_written() {
        for r in [
            Request::Egress("192.0.2.1:443".parse().unwrap()),
            Request::Egress("[2001:db8::1]:80".parse().unwrap()),
            Request::Relay { to: "10.0.0.2:40001".parse().unwrap(), client: None },
            Request::Relay { to: "10.0.0.2:40001".parse().unwrap(), client: Some("192.0.2.7".parse().unwrap()) },
            Request::Federate {
                service: "198.18.20.1:8000".parse().unwrap(),
                client: "198.18.0.7".parse().unwrap(),
                labels: "zone=default,role=web".parse().unwrap(),
            },
            Request::Federate {
                service: "198.18.20.1:8000".parse().unwrap(),
                client: "198.18.0.7".parse().unwrap(),
                labels: Labels::default(),
            },
        ] {
            let line = r.line();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(Request::parse(&line[..line.len() - 1]), Ok(r));
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(Request::parse(b"\xff\xfe"), Err(BadRequest::NotText));
        assert_eq!(Request::parse(b"GET / HTTP/1.1"), Err(BadRequest::Unknown("GET".into())));
        assert_eq!(Request::parse(b"AXEG"), Err(BadRequest::Address("".into())));
        assert_eq!(Request::parse(b"AXEG 192.0.2.1"), Err(BadRequest::Address("192.0.2.1".into())));
        assert_eq!(Request::parse(b"AXEG  192.0.2.1:80"), Err(BadRequest::Address(" 192.0.2.1:80".into())));
        assert_eq!(Request::parse(b"AXEG 192.0.2.1:80 "), Err(BadRequest::Address("192.0.2.1:80 ".into())));
        assert_eq!(Request::parse(b"AXEG 192.0.2.1:99999"), Err(BadRequest::Address("192.0.2.1:99999".into())));
        // A relay hop is to a node's row: IPv4 only.
        assert_eq!(Request::parse(b"AXRL [::1]:80"), Err(BadRequest::Address("[::1]:80".into())));
        // The client a hop names is an IPv4 address, once, and one a server may be shown.
        for bad in [
            "10.0.0.2:80 2001:db8::1",
            "10.0.0.2:80 192.0.2.7:9",
            "10.0.0.2:80 192.0.2.7 192.0.2.8",
            "10.0.0.2:80 ",
            "10.0.0.2:80 127.0.0.1",
            "10.0.0.2:80 127.9.9.9",
            "10.0.0.2:80 0.0.0.0",
            "10.0.0.2:80 224.0.0.1",
            "10.0.0.2:80 255.255.255.255",
        ] {
            let line = format!("AXRL {bad}");
            assert_eq!(Request::parse(line.as_bytes()), Err(BadRequest::Address(bad.into())), "{line}");
        }
        assert_eq!(Request::parse(b"axeg 192.0.2.1:80"), Err(BadRequest::Unknown("axeg".into())));
        // A federated request names an IPv4 service, a client one may be shown, and
        // labels (or `-`), each once.
        for bad in [
            "198.18.20.1:8000 198.18.0.7",
            "198.18.20.1:8000 198.18.0.7 ",
            "198.18.20.1:8000 198.18.0.7 zone=a extra",
            "[::1]:80 198.18.0.7 zone=a",
            "198.18.20.1 198.18.0.7 zone=a",
            "198.18.20.1:8000 127.0.0.1 zone=a",
            "198.18.20.1:8000 0.0.0.0 zone=a",
            "198.18.20.1:8000 198.18.0.7 zone",
            "198.18.20.1:8000 198.18.0.7 =a",
            "198.18.20.1:8000  198.18.0.7 zone=a",
        ] {
            let line = format!("AXFD {bad}");
            assert_eq!(Request::parse(line.as_bytes()), Err(BadRequest::Federated(bad.into())), "{line}");
        }
    }

    #[test]
    fn the_answer_reads_as_the_kernel_would_say_it() {
        assert_eq!(parse_answer(b"OK"), Ok(()));
        assert_eq!(parse_answer(b"ERR 113"), Err(libc::EHOSTUNREACH));
        assert_eq!(parse_answer(b"ERR x"), Err(libc::ECONNREFUSED));
        assert_eq!(parse_answer(b"ERR 0"), Err(libc::ECONNREFUSED), "no error is no success");
        assert_eq!(parse_answer(b"ERR -1"), Err(libc::ECONNREFUSED));
        assert_eq!(parse_answer(b"\xff\xfe"), Err(libc::ECONNREFUSED));
        assert_eq!(parse_answer(b""), Err(libc::ECONNREFUSED));
        for r in [Ok(()), Err(libc::ETIMEDOUT)] {
            let line = answer_line(r);
            assert_eq!(parse_answer(&line[..line.len() - 1]), r);
        }
    }
}
