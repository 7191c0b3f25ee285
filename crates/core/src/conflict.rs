//! Whether a bind (or a listen) of an app's socket conflicts with another socket of the
//! same app on the same port and protocol, by the kernel's own rules: the answer a
//! host gives, which ax must give too, since every socket of an app lands on a host
//! port of its own (the kernel never sees two of them meet).
//!
//! The rules, from `net/ipv4/inet_connection_sock.c` (`inet_bind_conflict`, called
//! with `relax` and `reuseport_ok` set for an explicit bind and for listen) and
//! `net/ipv4/udp.c` (`udp_lib_lport_inuse`), and the address match of
//! `inet_rcv_saddr_equal` (wildcards matching):
//! - both sockets have SO_REUSEADDR and the one already there is not listening: no
//!   conflict;
//! - else both have SO_REUSEPORT (and the same owner): no conflict;
//! - else the two conflict when their addresses match.
//!
//! Every socket of one app is taken as one owner's: the daemon makes them all, and the
//! kernel's check of the owner's uid has nothing else to go by. A UDP socket never
//! listens. Nothing here does I/O.

use std::net::{IpAddr, Ipv4Addr};

/// What the kernel weighs of a socket bound (or being bound) at the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The address as the app bound it: an IPv4 one for an AF_INET socket, an IPv6 one
    /// (v4-mapped included) for an AF_INET6 socket.
    pub addr: IpAddr,
    /// IPV6_V6ONLY (AF_INET6 sockets only).
    pub v6only: bool,
    pub reuse_addr: bool,
    pub reuse_port: bool,
    /// TCP_LISTEN.
    pub listening: bool,
}

/// True when binding (or listening on) `new` fails with EADDRINUSE because of `old`,
/// a socket of the same protocol bound at the same port.
pub fn conflicts(new: &Held, old: &Held) -> bool {
    let reuse = new.reuse_addr && old.reuse_addr && !old.listening;
    let shared = new.reuse_port && old.reuse_port;
    !reuse && !shared && same_address(new, old)
}

/// A bind (or listen) of `new` beside the sockets `held` at its port and protocol: fine,
/// or EADDRINUSE as the kernel would answer.
pub fn check<'h>(new: &Held, held: impl IntoIterator<Item = &'h Held>) -> Result<(), crate::Errno> {
    match held.into_iter().any(|old| conflicts(new, old)) {
        true => Err(libc::EADDRINUSE),
        false => Ok(()),
    }
}

/// How the kernel classes an IPv6 address here (`ipv6_addr_type`, the classes that
/// matter to `ipv6_rcv_saddr_equal`); an AF_INET socket's address counts as mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Any,
    Mapped,
    Other,
}

fn class(addr: IpAddr) -> Class {
    match addr {
        IpAddr::V4(_) => Class::Mapped,
        IpAddr::V6(v6) if v6.is_unspecified() => Class::Any,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Class::Mapped,
        IpAddr::V6(_) => Class::Other,
    }
}

/// A socket's IPv4 receive address (`sk_rcv_saddr`): its own for AF_INET; for AF_INET6
/// the mapped address's, 0.0.0.0 for `::`, and the kernel's placeholder 127.0.0.6
/// (LOOPBACK4_IPV6) for any other IPv6 address.
fn rcv_saddr(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::new(127, 0, 0, 6)),
    }
}

/// `inet_rcv_saddr_equal(new, old, match_wildcard = true)`.
fn same_address(new: &Held, old: &Held) -> bool {
    let v4_equal = || {
        let (a, b) = (rcv_saddr(new.addr), rcv_saddr(old.addr));
        !old.v6only && (a == b || a.is_unspecified() || b.is_unspecified())
    };
    let IpAddr::V6(mine) = new.addr else {
        return v4_equal();
    };
    let (c1, c2) = (class(new.addr), class(old.addr));
    if c1 == Class::Mapped && c2 == Class::Mapped {
        return v4_equal();
    }
    if c1 == Class::Any && c2 == Class::Any {
        return true;
    }
    if c2 == Class::Any && !(old.v6only && c1 == Class::Mapped) {
        return true;
    }
    if c1 == Class::Any && !(new.v6only && c2 == Class::Mapped) {
        return true;
    }
    matches!(old.addr, IpAddr::V6(theirs) if theirs == mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(addr: &str) -> Held {
        Held { addr: addr.parse().unwrap(), v6only: false, reuse_addr: false, reuse_port: false, listening: false }
    }

    fn v6only(addr: &str) -> Held {
        Held { v6only: true, ..held(addr) }
    }

    fn with(h: Held, reuse_addr: bool, reuse_port: bool, listening: bool) -> Held {
        Held { reuse_addr, reuse_port, listening, ..h }
    }

    #[test]
    fn the_same_address_twice_conflicts_unless_reuse_allows_it() {
        let any = held("0.0.0.0");
        assert!(conflicts(&any, &any));
        // SO_REUSEADDR on both: only while the one there does not listen.
        let reuse = |listening| with(any, true, false, listening);
        assert!(!conflicts(&reuse(false), &reuse(false)));
        assert!(conflicts(&reuse(false), &reuse(true)));
        // Listening on the new one is no matter (the second listen meets a listener).
        assert!(!conflicts(&reuse(true), &reuse(false)));
        // On one side only: no help.
        assert!(conflicts(&reuse(false), &any));
        assert!(conflicts(&any, &reuse(false)));
        // SO_REUSEPORT on both: listening or not.
        let port = |listening| with(any, false, true, listening);
        assert!(!conflicts(&port(false), &port(true)));
        assert!(!conflicts(&port(true), &port(true)));
        assert!(conflicts(&port(false), &any));
        assert!(conflicts(&any, &port(true)));
        // SO_REUSEADDR on one, SO_REUSEPORT on the other: neither rule holds.
        assert!(conflicts(&reuse(false), &port(false)));
    }

    #[test]
    fn wildcards_match_every_address_of_their_family_and_v4_mapped_ones() {
        let pairs = [
            // (new, old, conflict)
            (held("0.0.0.0"), held("198.18.0.1"), true),
            (held("198.18.0.1"), held("0.0.0.0"), true),
            (held("198.18.0.1"), held("198.18.0.2"), false),
            (held("::"), held("0.0.0.0"), true),
            (held("0.0.0.0"), held("::"), true),
            (held("::"), held("198.18.0.1"), true),
            (held("198.18.0.1"), held("::"), true),
            (held("::"), held("::"), true),
            (held("::ffff:198.18.0.1"), held("198.18.0.1"), true),
            (held("::ffff:198.18.0.1"), held("0.0.0.0"), true),
            (held("::ffff:0.0.0.0"), held("198.18.0.1"), true),
            (held("::ffff:198.18.0.1"), held("::ffff:198.18.0.2"), false),
            // IPV6_V6ONLY keeps a `::` socket off IPv4 addresses, both ways.
            (v6only("::"), held("0.0.0.0"), false),
            (held("0.0.0.0"), v6only("::"), false),
            (v6only("::"), held("::ffff:198.18.0.1"), false),
            (held("::ffff:198.18.0.1"), v6only("::"), false),
            (v6only("::"), held("::"), true),
            (held("::"), v6only("::"), true),
            (v6only("::"), v6only("::"), true),
            (v6only("::"), held("::1"), true),
            // A plain IPv6 address is 127.0.0.6 to an IPv4 wildcard, as in the kernel.
            (held("0.0.0.0"), held("::1"), true),
            (held("0.0.0.0"), v6only("::1"), false),
            (held("198.18.0.1"), held("::1"), false),
            (held("::1"), held("::1"), true),
            (held("::1"), held("::2"), false),
            (held("::1"), held("0.0.0.0"), false),
            (held("127.0.0.1"), held("0.0.0.0"), true),
        ];
        for (new, old, want) in pairs {
            assert_eq!(conflicts(&new, &old), want, "{new:?} after {old:?}");
        }
    }

    #[test]
    fn one_conflict_among_the_held_is_enough() {
        let any = held("0.0.0.0");
        let other = held("198.18.0.2");
        assert_eq!(check(&held("198.18.0.1"), [&other]), Ok(()));
        assert_eq!(check(&held("198.18.0.1"), [&other, &any]), Err(libc::EADDRINUSE));
        assert_eq!(check(&any, []), Ok(()));
    }

    #[test]
    fn reuse_overrides_the_address_match_but_not_a_listener() {
        let a = with(held("0.0.0.0"), true, false, false);
        let b = with(held("::"), true, false, true);
        assert!(conflicts(&a, &b));
        assert!(!conflicts(&b, &a));
    }
}
