//! The loops in-process on loopback (no root): real sockets, splice and epoll.

use super::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4};
use std::thread;

/// Where a test relay's clients go: fixed hops; tunnels never.
struct To(Vec<Hop>);

impl Serve for To {
    fn hops(&self) -> Vec<Hop> {
        self.0.clone()
    }
    fn tunnel(self: Arc<Self>, _: Client, to: SocketAddrV4, _: Vec<Hop>, _: Held) {
        panic!("no tunnel in these tests (asked for {to})");
    }
}

fn direct(addr: SocketAddr) -> Hop {
    let SocketAddr::V4(addr) = addr else { panic!("v4 only") };
    Hop::Direct(Target { addr, source: None })
}

/// A relay on loopback over `loops` loops, at most `cap` connections, to `hops`.
fn relay(loops: usize, cap: usize, hops: Vec<Hop>) -> (Pump, SocketAddr) {
    let pump = Pump::with_loops(loops, 1 << 16, cap).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let l = Listening { id: 1, listener, gate: Gate::new("test relay", cap), serve: Arc::new(To(hops)) };
    pump.listen(Arc::new(l)).unwrap();
    (pump, at)
}

/// A backend that hands each connection to `f` on a thread of its own.
fn backend(f: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let f = f.clone();
            thread::spawn(move || f(c));
        }
    });
    at
}

/// Echoes until the end of input, then ends its side too.
fn echo(mut c: TcpStream) {
    let mut buf = [0u8; 65536];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = c.shutdown(Shutdown::Write);
}

fn connect(at: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(at).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

fn roundtrip(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn bytes_cross_both_ways_whole_and_a_half_close_still_gets_the_answer() {
    // The backend reads the whole request (to its end), then answers with it reversed.
    let b = backend(|mut c| {
        let mut req = Vec::new();
        c.read_to_end(&mut req).unwrap();
        req.reverse();
        c.write_all(&req).unwrap();
    });
    let (_pump, at) = relay(1, 16, vec![direct(b)]);
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut c = connect(at);
    let w = {
        let (mut c, big) = (c.try_clone().unwrap(), big.clone());
        thread::spawn(move || {
            c.write_all(&big).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    w.join().unwrap();
    let mut want = big;
    want.reverse();
    assert!(got == want, "{} bytes back, {} expected, or not the same", got.len(), want.len());
}

#[test]
fn a_refused_backend_gives_way_to_the_next_and_with_none_left_the_client_is_closed() {
    let gone = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let b = backend(echo);
    let (_pump, at) = relay(1, 16, vec![direct(gone), direct(b)]);
    roundtrip(&mut connect(at), b"through the second");
    let (_pump, at) = relay(1, 16, vec![direct(gone)]);
    let mut c = connect(at);
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).unwrap(), 0, "no backend: the client gets an end");
}

#[test]
fn a_slow_reader_stalls_nobody_else_in_its_loop() {
    // One connection's backend floods it; its client never reads. Its pipe fills, the
    // backend is no longer read, and the one loop goes on serving others.
    let flood = backend(|mut c| {
        let chunk = vec![7u8; 1 << 20];
        while c.write_all(&chunk).is_ok() {}
    });
    let b = backend(echo);
    let (_pump, at) = relay(1, 64, vec![direct(b)]);
    let (_pump2, slow_at) = relay(1, 64, vec![direct(flood)]);
    let _slow = connect(slow_at);
    // Also one that half-closes and then sits, and one that resets mid-stream.
    let mut half = connect(at);
    half.write_all(b"x").unwrap();
    half.shutdown(Shutdown::Write).unwrap();
    thread::sleep(Duration::from_millis(200));
    for i in 0..20 {
        roundtrip(&mut connect(at), format!("still served {i}").as_bytes());
    }
    let mut got = Vec::new();
    half.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"x", "the half-closed one got its echo and the end");
}

#[test]
fn a_reset_mid_stream_reaches_the_client_as_a_reset_not_an_end() {
    let b = backend(|mut c| {
        c.write_all(&[1u8; 100_000]).unwrap();
        thread::sleep(Duration::from_millis(100));
        sock::set_linger_zero(c.as_fd()).unwrap();
    });
    let (_pump, at) = relay(1, 16, vec![direct(b)]);
    let mut c = connect(at);
    let mut buf = vec![0u8; 1 << 20];
    let end = loop {
        match c.read(&mut buf) {
            Ok(0) => break None,
            Ok(_) => continue,
            Err(e) => break Some(e.kind()),
        }
    };
    assert_eq!(end, Some(io::ErrorKind::ConnectionReset));
}

#[test]
fn connections_beyond_the_cap_are_closed_and_the_others_carried() {
    let b = backend(echo);
    let (_pump, at) = relay(1, 3, vec![direct(b)]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(at)).collect();
    for c in &mut held {
        roundtrip(c, b"in");
    }
    let mut extra = connect(at);
    let mut buf = [0u8; 1];
    let _ = extra.write(b"?");
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)), "a fourth is closed");
    drop(held.pop());
    // Its place is back once the loop has seen it go.
    let mut tries = 0;
    loop {
        let mut c = connect(at);
        if c.write_all(b"again").is_ok() {
            let mut got = [0u8; 5];
            if c.read_exact(&mut got).is_ok() {
                assert_eq!(&got, b"again");
                break;
            }
        }
        tries += 1;
        assert!(tries < 300, "the freed place never came back");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn handed_over_pairs_are_carried_under_the_loops_bound() {
    let pump = Pump::with_loops(2, 16, 100).unwrap();
    assert_eq!(bounds(16, 100).connections, 2, "two connections for 16 descriptors");
    let pair = || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    };
    let gate = Gate::new("test", 100);
    let mut ends = Vec::new();
    for _ in 0..3 {
        let ((out_a, in_a), (in_b, out_b)) = (pair(), pair());
        pump.carry(in_a, in_b, gate.admit(None).unwrap());
        ends.push((out_a, out_b));
    }
    for (a, b) in ends.iter_mut().take(2) {
        a.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        a.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
    let (a, b) = &mut ends[2];
    b.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = a.write_all(b"x");
    let mut buf = [0u8; 1];
    assert!(matches!(b.read(&mut buf), Ok(0) | Err(_)), "the third pair is beyond the bound: closed");
}

#[test]
fn the_descriptor_budget_sets_the_bounds() {
    let b = |pairs, connections, pipes, per_listener, per_source| Bounds {
        pairs,
        connections,
        pipes,
        per_listener,
        per_source,
    };
    assert_eq!(bounds(1 << 20, 32768), b(262144, 229376, 32768, 32768, 8192));
    // This sandbox's hard limit: 4,375 idle connections (1,666 when each held two
    // pipes from the start).
    assert_eq!(bounds(20000, 32768), b(5000, 4375, 625, 4375, 1093));
    assert_eq!(bounds(3, 10), b(3, 1, 2, 1, 1), "never zero, and pipes for the one connection");
    for fds in [16, 100, 20000, 1 << 20] {
        let x = bounds(fds, usize::MAX);
        assert!(4 * x.pairs as u64 <= fds.max(12), "{fds}: more than half the descriptors");
        assert!(3 * x.per_source <= x.pairs - x.pipes || x.per_source == 1, "{fds}: one address, all busy, takes all");
    }
}

/// A connection to `at` from the local address `src` (blocking, as `connect` makes).
fn connect_from(src: &str, at: SocketAddr) -> TcpStream {
    let s = sock::socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    sock::bind(s.as_fd(), &format!("{src}:0").parse().unwrap()).unwrap();
    sock::connect(s.as_fd(), &at).unwrap();
    let c = TcpStream::from(s);
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

#[test]
fn one_address_at_its_bound_is_closed_and_another_address_is_still_served() {
    let b = backend(echo);
    let pump = Pump::with_loops(1, 1 << 16, 100).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let gate = Gate::new("test relay", 10).per_peer(3);
    pump.listen(Arc::new(Listening { id: 1, listener, gate, serve: Arc::new(To(vec![direct(b)])) })).unwrap();
    let mut hog: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.2", at)).collect();
    for c in &mut hog {
        roundtrip(c, b"mine");
    }
    let mut extra = connect_from("127.0.0.2", at);
    let _ = extra.write(b"?");
    let mut buf = [0u8; 1];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)), "a fourth from one address is closed");
    roundtrip(&mut connect_from("127.0.0.3", at), b"another address is served");
    roundtrip(&mut hog[0], b"and the first address's keep going");
}

#[test]
fn a_side_waits_for_a_pipe_while_the_budget_is_spent_and_goes_on_once_one_is_freed() {
    // 20 descriptors: 5 pairs, 2 of them for pipes at least, 3 connections.
    assert_eq!(bounds(20, 100), Bounds { pairs: 5, connections: 3, pipes: 2, per_listener: 3, per_source: 1 });
    let flood = backend(|mut c| {
        let chunk = vec![7u8; 1 << 16];
        while c.write_all(&chunk).is_ok() {}
    });
    let b = backend(echo);
    let pump = Pump::with_loops(1, 20, 100).unwrap();
    let listen = |id, to| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let l = Listening { id, listener, gate: Gate::new("test relay", 100), serve: Arc::new(To(vec![direct(to)])) };
        pump.listen(Arc::new(l)).unwrap();
        at
    };
    let (flood_at, echo_at) = (listen(1, flood), listen(2, b));
    // Two clients that never read a flood: each holds a full pipe, the last two pairs.
    let stuck: Vec<TcpStream> = (0..2).map(|_| connect(flood_at)).collect();
    // Until their pipes are full for good: their four pairs taken, and kept.
    let (mut steady, start) = (0, Instant::now());
    while steady < 20 {
        steady = if pump.budget.fds.taken() == 4 { steady + 1 } else { 0 };
        assert!(start.elapsed() < Duration::from_secs(60), "the floods never held their pipes");
        thread::sleep(Duration::from_millis(25));
    }
    // The third connection is carried, but its bytes wait: no pipe to hold them.
    let mut c = connect(echo_at);
    c.write_all(b"waits for a pipe").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut got = [0u8; 16];
    assert!(c.read(&mut got).is_err(), "bytes crossed without a pipe in the budget");
    // One stuck client goes (its connection resets): its pipe is closed, the budget has
    // room again, and the waiting bytes cross.
    drop(stuck);
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"waits for a pipe");
}

#[test]
fn tokens_name_their_slot_generation_and_side() {
    for (gen, idx, side) in [(0, 0, Side::Client), (7, 12345, Side::Backend), (MAX_GEN, (1 << 31) - 1, Side::Backend)] {
        assert_eq!(untoken(token(gen, idx, side)), (gen, idx, side));
        assert_ne!(token(gen, idx, side), WAKER);
    }
    assert_eq!((MAX_GEN + 1) & MAX_GEN, 0, "generations go round below the waker's");
}
