//! Bounds on the daemon's listeners, in one place for every accept loop (REST over TCP
//! and Unix, the run channel, the egress gateway, relays): how many connections a
//! listener holds at once (a new one beyond that is closed at once), what an accept
//! error means (out of descriptors or memory: log, wait a little, go on; the listener
//! shut down: stop), how long a connection may sit with no byte moving either way, and
//! how failed TLS handshakes are logged (once per burst). What a connection then does is
//! its server's business.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::warn;

/// How long a refused connection or an accept error is not logged again after it was.
const QUIET: Duration = Duration::from_secs(10);
/// The same for failed TLS handshakes: once a minute (anyone who reaches a TLS port can
/// fail one per packet).
const HANDSHAKE_QUIET: Duration = Duration::from_secs(60);
/// How long an accept loop waits after running out of descriptors or memory.
pub const BACKOFF: Duration = Duration::from_millis(100);

/// A listener's bound: at most `cap` connections at once, and with
/// [`Gate::per_peer`] at most that many from one address.
pub struct Gate {
    name: &'static str,
    cap: usize,
    open: Arc<AtomicUsize>,
    per_peer: Option<(usize, Peers)>,
    /// Addresses the per-peer cap does not apply to.
    exempt: Option<Exempt>,
    refused: Mutex<Burst>,
    failed: Mutex<Burst>,
    handshakes: Mutex<Burst>,
}

/// Connections open by peer address.
type Peers = Arc<Mutex<HashMap<IpAddr, usize>>>;
type Exempt = Box<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// A connection's place under its listener's cap (and its peer's), given back when
/// dropped.
#[derive(Debug)]
pub struct Permit {
    open: Arc<AtomicUsize>,
    peer: Option<(Peers, IpAddr)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        if let Some((peers, ip)) = &self.peer {
            let mut peers = peers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = peers.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(ip);
                }
            }
        }
    }
}

/// What an accept loop does after an accept error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The error was one connection's (aborted before it was taken): accept again.
    Retry,
    /// The host is short of descriptors or memory: wait, then accept again (the
    /// listener works again once descriptors are freed).
    Wait(Duration),
    /// The listener is gone (shut down, closed): the loop ends.
    Stop,
}

/// What an accept error means, by errno.
pub fn flow(e: &io::Error) -> Flow {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Flow::Wait(BACKOFF),
        // accept(2): errors of the connection, to be treated like EAGAIN.
        Some(
            libc::ECONNABORTED
            | libc::EINTR
            | libc::EAGAIN
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH,
        ) => Flow::Retry,
        // A relay's listener is stopped with shutdown(2): accept then fails with EINVAL.
        Some(libc::EINVAL | libc::EBADF | libc::ENOTSOCK) => Flow::Stop,
        // Anything else: never spin on it.
        _ => Flow::Wait(BACKOFF),
    }
}

/// Events of one kind, reported once per burst: the first, then at most one line per
/// quiet period ([`QUIET`] by default) saying how many more there were.
#[derive(Debug)]
pub struct Burst {
    last: Option<Instant>,
    since: u64,
    quiet: Duration,
}

impl Default for Burst {
    fn default() -> Burst {
        Burst::every(QUIET)
    }
}

impl Burst {
    fn every(quiet: Duration) -> Burst {
        Burst { last: None, since: 0, quiet }
    }

    /// Counts an event at `now`; Some(events since the last report) when this one is
    /// to be reported.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        match self.last {
            Some(t) if now.duration_since(t) < self.quiet => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.since))
            }
        }
    }
}

impl Gate {
    pub fn new(name: &'static str, cap: usize) -> Gate {
        Gate {
            name,
            cap,
            open: Arc::default(),
            per_peer: None,
            exempt: None,
            refused: Mutex::default(),
            failed: Mutex::default(),
            handshakes: Mutex::new(Burst::every(HANDSHAKE_QUIET)),
        }
    }

    /// Also at most `n` connections from one address: for a port anyone on the network
    /// reaches, where connections that only sit (a TLS handshake never finished) from
    /// one host must not fill the cap for all.
    pub fn per_peer(mut self, n: usize) -> Gate {
        self.per_peer = Some((n, Peers::default()));
        self
    }

    /// As [`Gate::per_peer`], but for the addresses `exempt` says (this cluster's nodes,
    /// whose connections carry many apps' at once).
    pub fn per_peer_except(self, n: usize, exempt: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Gate {
        Gate { exempt: Some(Box::new(exempt)), ..self.per_peer(n) }
    }

    /// How many connections hold a place now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A place for a new connection from `peer`, or None when `cap` are open, or the
    /// per-peer cap from that address (the caller closes it).
    pub fn admit(&self, peer: Option<IpAddr>) -> Option<Permit> {
        let mut held = None;
        let peer = peer.filter(|ip| !self.exempt.as_ref().is_some_and(|exempt| exempt(*ip)));
        if let (Some((cap, peers)), Some(ip)) = (&self.per_peer, peer) {
            let mut open = peers.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(ip).or_insert(0);
            if *n >= *cap {
                self.refuse(Some(ip));
                return None;
            }
            *n += 1;
            held = Some((peers.clone(), ip));
        }
        // The peer's place goes back with the permit if the listener is full.
        let permit = self.place(held);
        if permit.is_none() {
            self.refuse(None);
        }
        permit
    }

    /// A place under `cap`, not logged when refused: for what is not a connection (a
    /// relay's pipe), whose caller knows what a refusal means.
    pub fn claim(&self) -> Option<Permit> {
        self.place(None)
    }

    /// Places taken now; for tests.
    #[cfg(test)]
    pub fn taken(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn place(&self, peer: Option<(Peers, IpAddr)>) -> Option<Permit> {
        let permit = Permit { open: self.open.clone(), peer };
        (self.open.fetch_add(1, Ordering::SeqCst) < self.cap).then_some(permit)
    }

    fn refuse(&self, peer: Option<IpAddr>) {
        if let Some(n) = self.refused.lock().unwrap_or_else(|p| p.into_inner()).hit(Instant::now()) {
            match peer {
                Some(ip) => warn!(
                    listener = self.name,
                    %ip,
                    cap = self.per_peer.as_ref().map_or(0, |(n, _)| *n),
                    refused = n,
                    "per-address connection cap reached: new connections from it are closed at once"
                ),
                None => warn!(
                    listener = self.name,
                    cap = self.cap,
                    refused = n,
                    "connection cap reached: new connections are closed at once"
                ),
            }
        }
    }

    /// What to do after accept failed with `e`; logged once per burst.
    pub fn accept_failed(&self, e: &io::Error) -> Flow {
        let f = flow(e);
        if f != Flow::Retry {
            if let Some(n) = self.failed.lock().unwrap_or_else(|p| p.into_inner()).hit(Instant::now()) {
                warn!(listener = self.name, errors = n, ?f, "accept failed: {e}");
            }
        }
        f
    }

    /// A connection whose TLS handshake failed (no certificate from the CA, not TLS,
    /// too slow): logged once per burst, since anyone who reaches the port can cause one.
    pub fn handshake_failed(&self, peer: Option<SocketAddr>, why: &dyn std::fmt::Display) {
        if let Some(n) = self.handshakes.lock().unwrap_or_else(|p| p.into_inner()).hit(Instant::now()) {
            let peer = peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
            warn!(listener = self.name, failed = n, "TLS handshake with {peer} failed: {why}");
        }
    }

    /// Accepts on a blocking `listener` until it is gone, handing each admitted
    /// connection with its permit to `handle` (which must not block for long: it
    /// starts the connection's thread).
    pub fn serve_blocking<L: Accept>(&self, listener: &L, mut handle: impl FnMut(L::Conn, Permit)) {
        loop {
            match listener.accept_one() {
                Ok(conn) => {
                    if let Some(permit) = self.admit(L::peer(&conn)) {
                        handle(conn, permit);
                    }
                }
                Err(e) => match self.accept_failed(&e) {
                    Flow::Retry => {}
                    Flow::Wait(d) => std::thread::sleep(d),
                    Flow::Stop => return,
                },
            }
        }
    }

    /// As [`Gate::serve_blocking`], on an async listener, until `stop` completes; an
    /// error that ends the listener is returned.
    pub async fn serve_async<L: AcceptAsync>(
        &self,
        listener: &L,
        stop: impl Future<Output = ()>,
        mut handle: impl FnMut(L::Conn, Permit),
    ) -> io::Result<()> {
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                a = listener.accept_one() => a,
                () = &mut stop => return Ok(()),
            };
            match accepted {
                Ok(conn) => {
                    if let Some(permit) = self.admit(L::peer(&conn)) {
                        handle(conn, permit);
                    }
                }
                Err(e) => match self.accept_failed(&e) {
                    Flow::Retry => {}
                    Flow::Wait(d) => tokio::time::sleep(d).await,
                    Flow::Stop => return Err(e),
                },
            }
        }
    }
}

/// A blocking listener.
pub trait Accept {
    type Conn;
    fn accept_one(&self) -> io::Result<Self::Conn>;
    /// The address a connection comes from (None: not an IP socket).
    fn peer(_conn: &Self::Conn) -> Option<IpAddr> {
        None
    }
}

impl Accept for std::os::unix::net::UnixListener {
    type Conn = std::os::unix::net::UnixStream;
    fn accept_one(&self) -> io::Result<Self::Conn> {
        self.accept().map(|(c, _)| c)
    }
}

/// An async listener.
pub trait AcceptAsync {
    type Conn;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
    /// The address a connection comes from (None: not an IP socket).
    fn peer(_conn: &Self::Conn) -> Option<IpAddr> {
        None
    }
}

impl AcceptAsync for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Conn> {
        self.accept().await.map(|(c, _)| c)
    }
    fn peer(conn: &Self::Conn) -> Option<IpAddr> {
        conn.peer_addr().ok().map(|a| a.ip())
    }
}

impl AcceptAsync for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Conn> {
        self.accept().await.map(|(c, _)| c)
    }
}

/// A connection that fails with `TimedOut` once no byte has moved either way for
/// `limit` while it waits to read or write.
pub struct Idle<Io> {
    io: Io,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<Io> Idle<Io> {
    pub fn new(io: Io, limit: Duration) -> Idle<Io> {
        Idle { io, limit, timer: Box::pin(tokio::time::sleep(limit)) }
    }

    /// After a call on the connection: progress restarts the clock; waiting past the
    /// limit is an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                let next = tokio::time::Instant::now() + self.limit;
                self.timer.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no byte moved for {} s", self.limit.as_secs()),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Idle<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.watch(cx, r)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Idle<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn accept_errors_wait_retry_or_stop_by_errno() {
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EIO] {
            assert_eq!(flow(&errno(e)), Flow::Wait(BACKOFF), "{e}");
        }
        for e in [libc::ECONNABORTED, libc::EINTR, libc::EPROTO, libc::EPERM] {
            assert_eq!(flow(&errno(e)), Flow::Retry, "{e}");
        }
        for e in [libc::EINVAL, libc::EBADF] {
            assert_eq!(flow(&errno(e)), Flow::Stop, "{e}");
        }
    }

    #[test]
    fn the_cap_admits_that_many_and_a_dropped_permit_frees_a_place() {
        let g = Gate::new("test", 2);
        let a = g.admit(None).unwrap();
        let _b = g.admit(None).unwrap();
        assert!(g.admit(None).is_none());
        assert_eq!(g.open.load(Ordering::SeqCst), 2);
        drop(a);
        assert!(g.admit(None).is_some());
    }

    #[test]
    fn one_address_fills_its_share_and_the_others_still_get_in() {
        let g = Gate::new("test", 4).per_peer(2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = g.admit(Some(a)).unwrap();
        let _a2 = g.admit(Some(a)).unwrap();
        assert!(g.admit(Some(a)).is_none(), "a third from one address");
        let _b1 = g.admit(Some(b)).unwrap();
        let _b2 = g.admit(Some(b)).unwrap();
        assert!(g.admit(Some(c)).is_none(), "the listener is full");
        assert_eq!(g.per_peer.as_ref().unwrap().1.lock().unwrap().get(&c), None, "a refused one holds no place");
        drop(a1);
        let _c1 = g.admit(Some(c)).unwrap();
        assert!(g.admit(Some(a)).is_none(), "a's freed place went to c (the listener is full)");
        assert_eq!(g.open.load(Ordering::SeqCst), 4);
        assert_eq!(g.per_peer.as_ref().unwrap().1.lock().unwrap()[&a], 1);
        let g = Gate::new("test", 4).per_peer_except(1, move |ip| ip == b);
        let _held = (g.admit(Some(b)).unwrap(), g.admit(Some(b)).unwrap(), g.admit(Some(a)).unwrap());
        assert!(g.admit(Some(a)).is_none(), "a is held to its one");
        assert!(g.admit(Some(b)).is_some(), "b is not held to any");
    }

    #[test]
    fn a_burst_is_reported_once_then_once_per_quiet_period_with_its_count() {
        let mut b = Burst::default();
        let t = Instant::now();
        assert_eq!(b.hit(t), Some(1));
        assert_eq!(b.hit(t + Duration::from_secs(1)), None);
        assert_eq!(b.hit(t + Duration::from_secs(2)), None);
        assert_eq!(b.hit(t + QUIET), Some(3));
        assert_eq!(b.hit(t + QUIET * 3), Some(1));
    }

    /// A listener that plays back a script of results, then reports itself closed.
    struct Script(RefCell<VecDeque<io::Result<u32>>>);

    impl Accept for Script {
        type Conn = u32;
        fn accept_one(&self) -> io::Result<u32> {
            self.0.borrow_mut().pop_front().unwrap_or_else(|| Err(errno(libc::EINVAL)))
        }
    }

    #[test]
    fn a_loop_out_of_descriptors_waits_and_goes_on_and_sheds_beyond_the_cap() {
        let script = Script(RefCell::new(
            [Ok(1), Err(errno(libc::EMFILE)), Err(errno(libc::ECONNABORTED)), Ok(2), Ok(3), Ok(4)].into(),
        ));
        let g = Gate::new("test", 2);
        let mut served = Vec::new();
        let mut held = Vec::new();
        let start = Instant::now();
        g.serve_blocking(&script, |c, p| {
            served.push(c);
            held.push(p);
        });
        assert!(start.elapsed() >= BACKOFF, "EMFILE made the loop wait");
        assert_eq!(served, [1, 2], "3 and 4 came beyond the cap of 2 and were closed");
        drop(held);
        assert_eq!(g.open.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_progress_restarts_the_clock() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Idle::new(a, Duration::from_secs(30));
        let mut buf = [0u8; 4];
        tokio::time::sleep(Duration::from_secs(20)).await;
        b.write_all(b"ping").await.unwrap();
        a.read_exact(&mut buf).await.unwrap();
        // 20 s after the last byte: still fine; 30 s: gone.
        tokio::time::sleep(Duration::from_secs(20)).await;
        b.write_all(b"p").await.unwrap();
        a.read_exact(&mut buf[..1]).await.unwrap();
        let e = a.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
