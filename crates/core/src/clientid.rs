//! The TCP option that names a client app in its connection's SYN (README, "Client
//! addresses"): written and read by the kernel driver's sock_ops program, and read
//! here from a SYN a relay's listener kept, so that a relay carries the client's name
//! on. Experimental kind 254 with the magic [`MAGIC`] (RFC 6994), then the client's
//! IPv4 address: [`OPTION_LEN`] bytes.

use std::net::Ipv4Addr;

/// The option's experimental-kind magic: "ax".
pub const MAGIC: u16 = 0x6178;
/// The option: kind, length, the magic, the IPv4 address.
pub const OPTION_LEN: usize = 8;
/// The experimental option kind (RFC 4727).
pub const KIND_EXPERIMENTAL: u8 = 254;

const KIND_END: u8 = 0;
const KIND_NOP: u8 = 1;

/// What a kept SYN (its IPv4 header, then its TCP header, as `TCP_SAVED_SYN` gives
/// them) says: its source address, and the client address its option names, if it has
/// one. None for anything that is not a whole IPv4 TCP header.
pub fn syn_claim(syn: &[u8]) -> Option<(Ipv4Addr, Option<Ipv4Addr>)> {
    let (&first, _) = syn.split_first()?;
    let ip_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ip_len < 20 || syn.len() < ip_len + 20 || syn[9] != 6 {
        return None;
    }
    let source = Ipv4Addr::new(syn[12], syn[13], syn[14], syn[15]);
    let tcp = &syn[ip_len..];
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    if tcp_len < 20 || tcp.len() < tcp_len {
        return None;
    }
    let mut options = &tcp[20..tcp_len];
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            KIND_END => break,
            KIND_NOP => options = rest,
            _ => {
                let len = usize::from(*rest.first()?);
                if len < 2 || len > options.len() {
                    return None;
                }
                let option = &options[..len];
                if kind == KIND_EXPERIMENTAL && len == OPTION_LEN && option[2..4] == MAGIC.to_be_bytes() {
                    return Some((source, Some(Ipv4Addr::new(option[4], option[5], option[6], option[7]))));
                }
                options = &options[len..];
            }
        }
    }
    Some((source, None))
}

/// Who a client that connected from `peer` is to be shown as to the server a daemon
/// carries its connection on to: the client its kept SYN (`syn`) names, if that SYN
/// came from `peer` and `peer` is a member (`is_member`: the same trust the kernel
/// driver's program gives the option); else the client itself. None (the daemon's own
/// node is shown) for an address a server would take for its own host
/// ([`crate::tunnel::claimable`]).
pub fn shown_client(peer: Ipv4Addr, syn: Option<&[u8]>, is_member: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let named = syn.and_then(syn_claim).filter(|(source, _)| *source == peer && is_member(peer)).and_then(|(_, n)| n);
    named.or(Some(peer)).filter(|ip| crate::tunnel::claimable(*ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_names_its_client_and_anyone_else_is_itself() {
        let member = |ip: Ipv4Addr| ip == Ipv4Addr::new(10, 0, 0, 2);
        let (m, other) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 9));
        let vip = Ipv4Addr::new(198, 18, 0, 5);
        let named = syn([10, 0, 0, 2], &OURS);
        assert_eq!(shown_client(m, Some(&named), member), Some(vip));
        assert_eq!(shown_client(m, Some(&syn([10, 0, 0, 2], &MSS)), member), Some(m));
        assert_eq!(shown_client(m, None, member), Some(m));
        // Not a member: its option is not believed.
        assert_eq!(shown_client(other, Some(&syn([10, 0, 0, 9], &OURS)), member), Some(other));
        // A SYN that is not the peer's own.
        assert_eq!(shown_client(other, Some(&named), member), Some(other));
        // The loopback is nobody's to claim, by address or by option.
        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(shown_client(lo, None, |_| true), None);
        let mut looped = OURS;
        looped[4..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(shown_client(m, Some(&syn([10, 0, 0, 2], &looped)), member), None);
    }

    /// A SYN from `source` with the TCP options `options` (padded to whole words).
    fn syn(source: [u8; 4], options: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&source);
        ip.extend_from_slice(&[10, 0, 0, 1]);
        let mut opts = options.to_vec();
        while !opts.len().is_multiple_of(4) {
            opts.push(KIND_END);
        }
        let words = (20 + opts.len()) / 4;
        let mut tcp = vec![0x9c, 0x41, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, (words as u8) << 4, 0x02, 0xff, 0xff];
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&opts);
        [ip, tcp].concat()
    }

    const MSS: [u8; 4] = [2, 4, 0x05, 0xb4];
    const OURS: [u8; 8] = [254, 8, 0x61, 0x78, 198, 18, 0, 5];

    #[test]
    fn the_option_is_found_among_others() {
        let src = Ipv4Addr::new(10, 0, 0, 2);
        let vip = Some(Ipv4Addr::new(198, 18, 0, 5));
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &OURS)), Some((src, vip)));
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &[&MSS[..], &[1, 1], &OURS].concat())), Some((src, vip)));
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &MSS)), Some((src, None)));
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &[])), Some((src, None)));
        // After the end of the options nothing counts.
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &[&[0u8][..], &OURS].concat())), Some((src, None)));
    }

    #[test]
    fn another_experiment_or_a_wrong_length_names_no_one() {
        let mut other = OURS;
        other[3] = 0x79;
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &other)).unwrap().1, None);
        let long = [254, 10, 0x61, 0x78, 198, 18, 0, 5, 0, 0];
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &long)).unwrap().1, None);
    }

    #[test]
    fn broken_headers_are_none() {
        let good = syn([10, 0, 0, 2], &OURS);
        assert_eq!(syn_claim(&[]), None);
        assert_eq!(syn_claim(&good[..30]), None, "cut in the TCP header");
        assert_eq!(syn_claim(&good[..good.len() - 4]), None, "cut in the options");
        let mut v6 = good.clone();
        v6[0] = 0x60;
        assert_eq!(syn_claim(&v6), None);
        let mut udp = good.clone();
        udp[9] = 17;
        assert_eq!(syn_claim(&udp), None);
        // An option whose length runs past the header, or is too short to move on.
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &[254, 40, 0x61, 0x78])), None);
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &[254, 0, 0x61, 0x78])), None);
        assert_eq!(syn_claim(&syn([10, 0, 0, 2], &[2])), None, "a kind without its length");
    }
}
