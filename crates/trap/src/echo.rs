//! The echo responder of one app: a thread that reads the packets the app's own
//! namespace routes to its echo device (`ax_sys::tun`), and writes back what
//! `ax_core::icmp` answers, as the table decides (`Table::echo`): `ping` of a virtual
//! address works as on a host, and an address the app reaches nothing at fails at once.
//!
//! The device is made at the app's first ping or raw socket, not before: most apps
//! never send a packet ax does not carry. The thread holds no lock between packets and
//! is paced ([`Pace`]): an app flooding its device costs the daemon a bounded share of
//! a core, and what it sends past that is dropped by its own kernel's queue. It ends
//! when its engine does (the engine holds the other end of a pipe it waits on).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ax_core::{icmp, AppId};
use ax_sys::epoll::{Epoll, Events, IN};
use ax_sys::sock;
use tracing::debug;

use crate::Node;

/// Packets answered per second, sustained, per app: far past any ping (even `ping -f`
/// waits for each reply), far below what would cost the daemon a core.
pub const RATE: u32 = 2000;
/// Packets answered at once before the pace applies.
const BURST: u32 = 200;

/// A running responder: dropping it ends the thread (its pipe's write end closes).
#[derive(Debug)]
pub struct Responder {
    _stop: OwnedFd,
}

/// Starts answering on `device` for `app`, whose address is `own`.
pub fn start<N: Node>(device: OwnedFd, app: AppId, own: Ipv4Addr, node: Arc<N>) -> std::io::Result<Responder> {
    let (stop_read, stop_write) = sock::pipe()?;
    let epoll = Epoll::new()?;
    epoll.add(device.as_fd(), IN, 0)?;
    // No events asked: the hang-up when the engine drops the write end comes anyway.
    epoll.add(stop_read.as_fd(), 0, 1)?;
    std::thread::Builder::new().name("ax-echo".into()).spawn(move || {
        serve(File::from(device), &epoll, app, own, &*node);
        drop(stop_read);
    })?;
    Ok(Responder { _stop: stop_write })
}

fn serve<N: Node>(mut device: File, epoll: &Epoll, app: AppId, own: Ipv4Addr, node: &N) {
    let mut buf = vec![0u8; ax_sys::tun::MTU as usize + 1];
    let mut events = Events::with_capacity(2);
    let mut pace = Pace::new(Instant::now());
    loop {
        if let Err(e) = epoll.wait(&mut events, -1) {
            debug!(%app, "echo responder stops: {e}");
            return;
        }
        if events.iter().any(|(token, _)| token == 1) {
            return;
        }
        let n = match device.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => continue,
            Err(e) => {
                // The device went with its namespace.
                debug!(%app, "echo device closed: {e}");
                return;
            }
        };
        if let Some(wait) = pace.take(Instant::now()) {
            std::thread::sleep(wait);
        }
        let Some(answer) = icmp::answer(&buf[..n], own, |to| node.with_table(|t| t.echo(app, to))) else {
            continue;
        };
        if let Err(e) = device.write_all(&answer) {
            debug!(%app, "echo answer not written: {e}");
        }
    }
}

/// A token bucket of [`RATE`] per second holding [`BURST`].
#[derive(Debug)]
struct Pace {
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new(now: Instant) -> Pace {
        Pace { tokens: f64::from(BURST), at: now }
    }

    /// Takes a token: None when one is there now, else how long until one is.
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(RATE);
        self.tokens = (self.tokens + earned).min(f64::from(BURST)) - 1.0;
        self.at = now;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / f64::from(RATE)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_lets_a_burst_through_then_the_rate() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        for _ in 0..BURST {
            assert_eq!(p.take(t0), None);
        }
        // The next one waits one token's time; a second later the bucket is full again.
        let wait = p.take(t0).unwrap();
        assert!((wait.as_secs_f64() - 1.0 / f64::from(RATE)).abs() < 1e-9, "{wait:?}");
        let later = t0 + Duration::from_secs(1);
        for _ in 0..BURST {
            assert_eq!(p.take(later), None);
        }
        assert!(p.take(later).is_some());
        // A flood of packets, each answered after the wait it is told: no more than the
        // burst and RATE a second get answered.
        let mut p = Pace::new(t0);
        let mut now = t0;
        let answered = RATE * 20;
        for _ in 0..answered {
            if let Some(wait) = p.take(now) {
                now += wait;
            }
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!(f64::from(answered) <= f64::from(BURST) + secs * f64::from(RATE) + 1.0, "{answered} in {secs}s");
        assert!(secs > 19.0, "{secs}");
    }
}
