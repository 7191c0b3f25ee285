//! What the engines count for the daemon's `/metrics`: trapped calls by system call
//! with how long each took to handle (a fixed-bucket histogram), and connects allowed
//! and denied per service. Shared by every engine of a daemon; rendering is the
//! daemon's.
//!
//! A trapped call costs a few relaxed atomic adds, no lock and no allocation. A
//! connect to a service also takes a short lock on the per-service tally (a connect
//! already costs a round trip through the daemon and the table's lock).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ax_core::Proto;

/// The system calls counted by name (every call the filter may trap, and a few it may
/// come to); any other is counted as `other`.
pub const CALLS: &[(i64, &str)] = &[
    (libc::SYS_socket, "socket"),
    (libc::SYS_socketpair, "socketpair"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_accept, "accept"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_getsockname, "getsockname"),
    (libc::SYS_getpeername, "getpeername"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_sendmmsg, "sendmmsg"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_recvmmsg, "recvmmsg"),
    (libc::SYS_setsockopt, "setsockopt"),
    (libc::SYS_getsockopt, "getsockopt"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
];
/// The name of the calls [`CALLS`] does not name.
pub const OTHER: &str = "other";

/// The histogram's upper bounds, in nanoseconds: 1 µs to 10 ms (a trapped call costs
/// 5-100 µs; one that waits for a helper is counted until it is handed over).
pub const BUCKETS_NS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Services counted apart at most; connects to others beyond go to one tally with no
/// service ([`Stats::connects`] shows it as None), so no app can grow the daemon's
/// memory or the scrape without bound.
pub const MAX_SERVICES: usize = 4096;

/// What connects are counted under: a protocol and an address (a service's, or for
/// the kernel driver a route entry's).
pub type CountedAt = (Proto, SocketAddrV4);

/// One call's counts: per bucket (not cumulative; the last is above every bound) and
/// the sum of the times.
#[derive(Default)]
struct CallCounts {
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// One call's counts as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSnapshot {
    pub call: &'static str,
    /// Per bucket of [`BUCKETS_NS`], not cumulative, and then the calls above them all.
    pub buckets: [u64; BUCKETS_NS.len() + 1],
    pub sum_ns: u64,
}

impl CallSnapshot {
    /// How many calls: the sum of the buckets (so it always equals the histogram's
    /// `+Inf` bucket, even when read while calls are counted).
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Connects a service got: allowed and denied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tally {
    pub allowed: u64,
    pub denied: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.allowed += other.allowed;
        self.denied += other.denied;
    }
}

/// A daemon's counts, shared by its engines.
pub struct Stats {
    calls: [CallCounts; CALLS.len() + 1],
    /// By (protocol, service address); None: services beyond [`MAX_SERVICES`].
    connects: Mutex<HashMap<Option<CountedAt>, Tally>>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats { calls: std::array::from_fn(|_| CallCounts::default()), connects: Mutex::default() }
    }
}

impl Stats {
    /// Counts one trapped call `nr`, handled in `took`.
    pub fn call(&self, nr: i64, took: Duration) {
        let c = &self.calls[CALLS.iter().position(|(n, _)| *n == nr).unwrap_or(CALLS.len())];
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_NS.iter().position(|b| ns <= *b).unwrap_or(BUCKETS_NS.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        c.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The calls counted so far, those seen at least once.
    pub fn calls(&self) -> Vec<CallSnapshot> {
        let names = CALLS.iter().map(|(_, name)| *name).chain([OTHER]);
        names
            .zip(&self.calls)
            .map(|(call, c)| CallSnapshot {
                call,
                buckets: std::array::from_fn(|i| c.buckets[i].load(Ordering::Relaxed)),
                sum_ns: c.sum_ns.load(Ordering::Relaxed),
            })
            .filter(|s| s.count() > 0)
            .collect()
    }

    /// Counts a connect to `service` over `proto`, allowed or denied.
    pub fn connect(&self, proto: Proto, service: SocketAddrV4, allowed: bool) {
        let mut tallies = self.connects.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = Some((proto, service));
        if !tallies.contains_key(&key) && tallies.len() >= MAX_SERVICES {
            key = None;
        }
        let t = tallies.entry(key).or_default();
        if allowed {
            t.allowed += 1;
        } else {
            t.denied += 1;
        }
    }

    /// The connects counted so far, by service (None: the services beyond
    /// [`MAX_SERVICES`]).
    pub fn connects(&self) -> Vec<(Option<CountedAt>, Tally)> {
        let tallies = self.connects.lock().unwrap_or_else(|p| p.into_inner());
        tallies.iter().map(|(k, t)| (*k, *t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_lands_in_the_first_bucket_whose_bound_it_does_not_pass() {
        let s = Stats::default();
        for us in [0, 1, 2, 3, 40, 20_000] {
            s.call(libc::SYS_connect, Duration::from_micros(us));
        }
        s.call(9999, Duration::from_nanos(7));
        let calls = s.calls();
        assert_eq!(calls.len(), 2, "only the calls seen: {calls:?}");
        let c = &calls[0];
        assert_eq!(c.call, "connect");
        // 0 and 1 µs in ≤1 µs, 2 in ≤2.5, 3 in ≤5, 40 in ≤50, 20 ms above them all.
        assert_eq!(c.buckets, [2, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!((c.count(), c.sum_ns), (6, 20_046_000));
        assert_eq!((calls[1].call, calls[1].count()), (OTHER, 1));
    }

    #[test]
    fn counts_from_many_threads_are_all_kept() {
        let s = std::sync::Arc::new(Stats::default());
        let service: SocketAddrV4 = "198.18.0.1:80".parse().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.call(libc::SYS_socket, Duration::from_micros(3));
                        s.connect(Proto::Tcp, service, i % 2 == 0);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(s.calls()[0].count(), 8000);
        assert_eq!(s.connects(), vec![(Some((Proto::Tcp, service)), Tally { allowed: 4000, denied: 4000 })]);
    }

    #[test]
    fn services_past_the_bound_share_one_tally() {
        let s = Stats::default();
        for i in 0..MAX_SERVICES + 10 {
            let ip = std::net::Ipv4Addr::from(0xc612_0000 + i as u32);
            s.connect(Proto::Tcp, SocketAddrV4::new(ip, 80), false);
        }
        // A service counted before the bound was reached keeps its own tally.
        s.connect(Proto::Tcp, "198.18.0.0:80".parse().unwrap(), true);
        let got = s.connects();
        assert_eq!(got.len(), MAX_SERVICES + 1);
        let rest = got.iter().find(|(k, _)| k.is_none()).unwrap().1;
        assert_eq!(rest, Tally { allowed: 0, denied: 10 });
        let first = got.iter().find(|(k, _)| *k == Some((Proto::Tcp, "198.18.0.0:80".parse().unwrap()))).unwrap();
        assert_eq!(first.1, Tally { allowed: 1, denied: 1 });
    }
}
