//! Which user owns the other end of a local TCP connection: the kernel's socket
//! tables (/proc/net/tcp and /proc/net/tcp6) give the owner's uid of every socket of
//! this network namespace. The REST API over TCP answers only root and the daemon's
//! own user; anything that cannot be told for sure (no such row, a row that does not
//! read, a socket no longer established) is nobody's, and is refused.

use std::io::BufRead;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ax_core::addr::unmap;

/// TCP_ESTABLISHED: a socket that closed (TIME_WAIT rows show uid 0) proves nothing.
const ESTABLISHED: u8 = 1;

/// One row of /proc/net/tcp{,6}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    uid: u32,
}

/// `0100007F:1A00` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word as the
/// kernel holds it, printed in hex in this machine's byte order.
fn address(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| ip.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::from(word(0)?),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// One line of the table; None for the header and anything malformed.
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...`
fn row(line: &str) -> Option<Row> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 || !f[0].ends_with(':') {
        return None;
    }
    Some(Row {
        local: address(f[1])?,
        remote: address(f[2])?,
        state: u8::from_str_radix(f[3], 16).ok()?,
        uid: f[7].parse().ok()?,
    })
}

/// The owner of the established socket whose local address is `peer` and remote
/// address `us` (v4-mapped IPv6 addresses are their IPv4 address), among `lines`.
fn owner_in<S: AsRef<str>>(lines: impl IntoIterator<Item = S>, peer: SocketAddr, us: SocketAddr) -> Option<u32> {
    let (peer, us) = (unmap(peer), unmap(us));
    lines
        .into_iter()
        .filter_map(|l| row(l.as_ref()))
        .find(|r| r.state == ESTABLISHED && unmap(r.local) == peer && unmap(r.remote) == us)
        .map(|r| r.uid)
}

/// The uid owning the client end of a connection that `us` accepted from `peer`, on
/// this host; None when it cannot be found.
pub fn owner(peer: SocketAddr, us: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"].into_iter().find_map(|table| {
        let f = std::fs::File::open(table).ok()?;
        owner_in(std::io::BufReader::new(f).lines().map_while(Result::ok), peer, us)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as this machine prints them (the addresses' words in its byte order).
    fn v4(ip: [u8; 4], port: u16) -> String {
        format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip))
    }

    fn v6(ip: Ipv6Addr, port: u16) -> String {
        let o = ip.octets();
        let words: String = o.chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap()))).collect();
        format!("{words}:{port:04X}")
    }

    fn line(local: &str, remote: &str, state: &str, uid: u32) -> String {
        format!("   7: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid:>5}        0 4242 1 0 20 4 30 10 -1")
    }

    const HEADER: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_owner_of_the_client_end_is_found_by_both_addresses() {
        let lo = [127, 0, 0, 1];
        let table = [
            HEADER.to_string(),
            // The daemon's listener and its own end of the connection: not the client.
            line(&v4(lo, 6664), &v4([0; 4], 0), "0A", 0),
            line(&v4(lo, 6664), &v4(lo, 51000), "01", 0),
            // Another connection from the same user, and the client's.
            line(&v4(lo, 51001), &v4(lo, 6664), "01", 1000),
            line(&v4(lo, 51000), &v4(lo, 6664), "01", 65534),
        ];
        assert_eq!(owner_in(&table, at("127.0.0.1:51000"), at("127.0.0.1:6664")), Some(65534));
        assert_eq!(owner_in(&table, at("127.0.0.1:51001"), at("127.0.0.1:6664")), Some(1000));
        assert_eq!(owner_in(&table, at("127.0.0.1:51002"), at("127.0.0.1:6664")), None, "not found: nobody's");
        assert_eq!(owner_in(&table, at("127.0.0.1:51000"), at("127.0.0.1:6665")), None, "another server's");
    }

    #[test]
    fn a_v4_mapped_client_in_the_ipv6_table_is_found() {
        let mapped = |port| v6("::ffff:127.0.0.1".parse().unwrap(), port);
        let table = [line(&mapped(52000), &mapped(6664), "01", 0)];
        assert_eq!(owner_in(&table, at("127.0.0.1:52000"), at("127.0.0.1:6664")), Some(0));
        let plain = [line(&v6(Ipv6Addr::LOCALHOST, 52000), &v6(Ipv6Addr::LOCALHOST, 6664), "01", 0)];
        assert_eq!(owner_in(&plain, at("127.0.0.1:52000"), at("127.0.0.1:6664")), None, "::1 is not 127.0.0.1");
    }

    #[test]
    fn a_socket_no_longer_established_proves_nothing() {
        let lo = [127, 0, 0, 1];
        // TIME_WAIT (06) rows say uid 0 whoever owned the socket; FIN_WAIT2 (05).
        for state in ["06", "05", "08"] {
            let table = [line(&v4(lo, 51000), &v4(lo, 6664), state, 0)];
            assert_eq!(owner_in(&table, at("127.0.0.1:51000"), at("127.0.0.1:6664")), None, "{state}");
        }
    }

    #[test]
    fn malformed_lines_are_skipped_not_trusted() {
        let lo = [127, 0, 0, 1];
        let good = line(&v4(lo, 51000), &v4(lo, 6664), "01", 1000);
        let table = [
            "".to_string(),
            "garbage".to_string(),
            line("7F000001", &v4(lo, 6664), "01", 0),
            line(&v4(lo, 51000), "XYZ:1A00", "01", 0),
            line(&v4(lo, 51000), &v4(lo, 6664), "zz", 0),
            good.replace(" 1000 ", " -1 "),
            good.clone(),
        ];
        assert_eq!(owner_in(&table, at("127.0.0.1:51000"), at("127.0.0.1:6664")), Some(1000));
        assert_eq!(owner_in(&table[..6], at("127.0.0.1:51000"), at("127.0.0.1:6664")), None);
    }

    #[test]
    fn this_process_owns_its_own_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(owner(s.peer_addr().unwrap(), s.local_addr().unwrap()), Some(ax_sys::proc::effective_uid()));
        drop(c);
    }
}
