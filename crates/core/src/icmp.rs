//! What the daemon answers on an app's echo device: the packets its own network
//! namespace routes there (every IPv4 destination: the app's ping and raw sockets,
//! which ax does not carry) and the packets written back. An echo request gets an echo
//! reply or an ICMP error, as [`crate::Table::echo`] decides for its destination; any
//! other packet gets "network unreachable", the error the empty namespace gave before
//! it had the device. Pure: bytes in, bytes out.
//!
//! Nothing is answered that a host would not answer (RFC 1122 3.2.2): a packet that is
//! not the app's own (another source: a raw socket's forgery), a fragment (the device's
//! MTU is the largest IPv4 packet, so the app's kernel never fragments; only a raw
//! socket does), one to a broadcast or multicast address, a malformed one, or an ICMP
//! message other than an echo request (an error never answers an error).

use std::net::Ipv4Addr;

use crate::table::Echo;

const IPPROTO_ICMP: u8 = 1;
const ECHO_REPLY: u8 = 0;
const DEST_UNREACHABLE: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const NET_UNREACHABLE: u8 = 0;
const HOST_UNREACHABLE: u8 = 1;
/// The TTL of what the daemon sends, a Linux host's default.
const TTL: u8 = 64;
/// How much of the offending datagram an ICMP error quotes: as much as keeps the
/// error within 576 bytes (RFC 1812 4.3.2.3).
const QUOTED: usize = 576 - 20 - 8;

/// A packet from the device worth an answer.
#[derive(Debug, PartialEq, Eq)]
struct Request<'p> {
    /// The whole datagram, cut to its total length.
    datagram: &'p [u8],
    header_len: usize,
    to: Ipv4Addr,
    /// An ICMP echo request (else: anything else of the app's).
    echo: bool,
}

/// Reads `packet` from the echo device of the app at `own`: None when it earns no
/// answer.
fn read(packet: &[u8], own: Ipv4Addr) -> Option<Request<'_>> {
    let first = *packet.first()?;
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < 20 || packet.len() < header_len {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < header_len || total > packet.len() || checksum(&packet[..header_len]) != 0 {
        return None;
    }
    let datagram = &packet[..total];
    let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff; // more-fragments, offset
    let from = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let to = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    if fragment != 0 || from != own || to.is_broadcast() || to.is_multicast() || to.is_unspecified() {
        return None;
    }
    let payload = &datagram[header_len..];
    if packet[9] != IPPROTO_ICMP {
        return Some(Request { datagram, header_len, to, echo: false });
    }
    let echo = payload.len() >= 8 && payload[0] == ECHO_REQUEST && payload[1] == 0 && checksum(payload) == 0;
    echo.then_some(Request { datagram, header_len, to, echo })
}

/// The answer to `packet` from the app at `own`, where `decide` says what an echo
/// request to an address earns; None: no answer.
pub fn answer(packet: &[u8], own: Ipv4Addr, decide: impl FnOnce(Ipv4Addr) -> Echo) -> Option<Vec<u8>> {
    let r = read(packet, own)?;
    let verdict = if r.echo { decide(r.to) } else { Echo::NetUnreachable };
    Some(match verdict {
        Echo::Reply => r.reply(own),
        Echo::HostUnreachable => r.unreachable(own, HOST_UNREACHABLE),
        Echo::NetUnreachable => r.unreachable(own, NET_UNREACHABLE),
    })
}

impl Request<'_> {
    /// The echo reply: the request's identifier, sequence and data, from the address
    /// pinged.
    fn reply(&self, own: Ipv4Addr) -> Vec<u8> {
        let mut icmp = self.datagram[self.header_len..].to_vec();
        icmp[0] = ECHO_REPLY;
        seal(&mut icmp, 2);
        datagram(self.to, own, IPPROTO_ICMP, &icmp)
    }

    /// An ICMP destination unreachable of `code`, quoting the datagram, from the app's
    /// own address, as a host's own stack reports a destination it cannot reach.
    fn unreachable(&self, own: Ipv4Addr, code: u8) -> Vec<u8> {
        let quoted = &self.datagram[..self.datagram.len().min(QUOTED)];
        let mut icmp = vec![DEST_UNREACHABLE, code, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        seal(&mut icmp, 2);
        datagram(own, own, IPPROTO_ICMP, &icmp)
    }
}

/// The echo request an app's kernel sends for `ping` (identifier `id`, sequence `seq`):
/// what the engine's tests feed a responder.
pub fn echo_request(from: Ipv4Addr, to: Ipv4Addr, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![ECHO_REQUEST, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    seal(&mut m, 2);
    datagram(from, to, IPPROTO_ICMP, &m)
}

/// What an answer is: an echo reply (its source), or a destination unreachable (its
/// code); None for anything else.
pub fn answered(packet: &[u8]) -> Option<Result<Ipv4Addr, u8>> {
    let r = packet.get(20..22)?;
    match (r[0], r[1]) {
        (ECHO_REPLY, 0) => Some(Ok(Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]))),
        (DEST_UNREACHABLE, code) => Some(Err(code)),
        _ => None,
    }
}

/// An IPv4 datagram of protocol `proto` carrying `payload` from `from` to `to`.
fn datagram(from: Ipv4Addr, to: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, TTL, proto, 0, 0]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    seal(&mut p, 10);
    p.extend_from_slice(&payload[..usize::from(total) - 20]);
    p
}

/// Writes the internet checksum of `bytes` at `at` (zeroed first).
fn seal(bytes: &mut [u8], at: usize) {
    bytes[at..at + 2].fill(0);
    let sum = checksum(bytes);
    bytes[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The internet checksum (RFC 1071): zero over a buffer whose checksum is right.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn ping(to: Ipv4Addr) -> Vec<u8> {
        echo_request(OWN, to, 0x4242, 7, b"abcdefgh12345")
    }

    /// Source, destination and ICMP message of a well-formed answer.
    fn parts(p: &[u8]) -> (Ipv4Addr, Ipv4Addr, &[u8]) {
        assert_eq!(p[0], 0x45);
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert_eq!((p[8], p[9]), (TTL, IPPROTO_ICMP));
        assert_eq!(checksum(&p[..20]), 0, "IP header checksum");
        assert_eq!(checksum(&p[20..]), 0, "ICMP checksum");
        (Ipv4Addr::new(p[12], p[13], p[14], p[15]), Ipv4Addr::new(p[16], p[17], p[18], p[19]), &p[20..])
    }

    #[test]
    fn an_echo_request_gets_its_reply_from_the_address_pinged() {
        let request = ping(WEB);
        let mut asked = None;
        let reply = answer(&request, OWN, |to| {
            asked = Some(to);
            Echo::Reply
        })
        .unwrap();
        assert_eq!(asked, Some(WEB));
        let (from, to, icmp) = parts(&reply);
        assert_eq!((from, to), (WEB, OWN));
        assert_eq!((icmp[0], icmp[1]), (ECHO_REPLY, 0));
        // Identifier, sequence and data come back as sent.
        assert_eq!(&icmp[4..], &request[24..]);
    }

    #[test]
    fn an_address_the_app_reaches_nothing_at_is_unreachable() {
        for (verdict, code) in [(Echo::HostUnreachable, HOST_UNREACHABLE), (Echo::NetUnreachable, NET_UNREACHABLE)] {
            let request = ping(WEB);
            let error = answer(&request, OWN, |_| verdict).unwrap();
            let (from, to, icmp) = parts(&error);
            assert_eq!((from, to), (OWN, OWN));
            assert_eq!((icmp[0], icmp[1]), (DEST_UNREACHABLE, code));
            // The request is quoted whole (it is short), so the app's socket finds it.
            assert_eq!(&icmp[8..], &request[..]);
        }
    }

    #[test]
    fn what_is_not_an_echo_request_is_network_unreachable_without_asking() {
        let syn = datagram(OWN, WEB, 6, &[0u8; 20]);
        let error = answer(&syn, OWN, |_| panic!("only pings are decided")).unwrap();
        let (_, _, icmp) = parts(&error);
        assert_eq!((icmp[0], icmp[1]), (DEST_UNREACHABLE, NET_UNREACHABLE));
        // A long datagram is quoted only as far as 576 bytes of error.
        let big = datagram(OWN, WEB, 132, &[7u8; 2000]);
        assert_eq!(answer(&big, OWN, |_| Echo::Reply).unwrap().len(), 576);
    }

    #[test]
    fn what_a_host_would_not_answer_gets_nothing() {
        let never = |_| -> Echo { panic!("not to be decided") };
        let good = ping(WEB);
        // Another source (a raw socket's forgery), a broadcast, a multicast.
        assert_eq!(answer(&datagram(WEB, OWN, IPPROTO_ICMP, &good[20..]), OWN, never), None);
        assert_eq!(answer(&ping(Ipv4Addr::BROADCAST), OWN, never), None);
        assert_eq!(answer(&ping(Ipv4Addr::new(224, 0, 0, 1)), OWN, never), None);
        // ICMP that is not an echo request: a reply, an error.
        let mut reply = good.clone();
        reply[20] = ECHO_REPLY;
        seal(&mut reply[20..], 2);
        assert_eq!(answer(&reply, OWN, never), None);
        let error = datagram(OWN, WEB, IPPROTO_ICMP, &[DEST_UNREACHABLE, 1, 0xfc, 0xfe, 0, 0, 0, 0]);
        assert_eq!(answer(&error, OWN, never), None);
        // A fragment, first or later.
        for flags in [0x20u8, 0x00] {
            let mut f = good.clone();
            f[6] = flags;
            f[7] = if flags == 0 { 8 } else { 0 };
            seal(&mut f, 10);
            assert_eq!(answer(&f, OWN, never), None, "{flags:#x}");
        }
        // Bad checksums, of the header and of the message.
        let mut bad = good.clone();
        bad[10] ^= 1;
        assert_eq!(answer(&bad, OWN, never), None);
        let mut bad = good.clone();
        bad[30] ^= 1;
        assert_eq!(answer(&bad, OWN, never), None);
    }

    #[test]
    fn malformed_packets_get_nothing_and_never_panic() {
        let good = ping(WEB);
        let decide = |_| Echo::Reply;
        // Every truncation, and lengths that lie.
        for n in 0..good.len() {
            assert_eq!(answer(&good[..n], OWN, decide), None, "{n} bytes");
        }
        let mut long = good.clone();
        long.extend_from_slice(&[0xee; 10]);
        // Bytes past the total length are not the datagram's: the reply is the same.
        assert_eq!(answer(&long, OWN, decide), answer(&good, OWN, decide));
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(answer(&v6, OWN, decide), None);
        let mut ihl = good.clone();
        ihl[0] = 0x4f; // a header longer than the datagram
        assert_eq!(answer(&ihl, OWN, decide), None);
        // Random bytes, with a valid-looking start.
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let n = rng.usize(0..80);
            let mut p: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            if n > 20 && rng.bool() {
                p[0] = 0x45;
                p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            }
            let _ = answer(&p, OWN, decide);
        }
    }
}
