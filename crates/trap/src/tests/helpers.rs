//! Helper threads: they give up within a slice once their call is abandoned and let
//! go of what they hold; an app has only so many; timeouts hold as before.

use super::*;
use crate::helper::SLICE_MS;
use ax_core::limits::HELPERS_PER_APP;

/// Makes call `id` go stale at the `after`-th wait from now (its caller was killed
/// while a helper waited for it).
fn abandon_at_wait(r: &Rig, id: u64, after: usize) {
    let mut waits = 0;
    r.k.state().on_wait = Some(Box::new(move |s| {
        waits += 1;
        if waits == after {
            s.stale.insert(id);
        }
    }));
}

/// The timeouts of every wait so far.
fn waits(r: &Rig) -> Vec<i32> {
    r.k.ops().iter().filter_map(|o| if let Op::Wait(_, t) = o { Some(*t) } else { None }).collect()
}

fn blocking_recvfrom(r: &Rig, fd: RawFd) -> u64 {
    let id = r.next_id();
    let (buf, src, lenp) = (r.k.put(&[0; 64]), r.k.put(&[0; 28]), r.k.put(&16u32.to_ne_bytes()));
    assert_eq!(r.trap_as(id, libc::SYS_recvfrom, [fd as u64, buf, 64, 0, src, lenp]), None, "answered later");
    id
}

fn set_timeout(r: &Rig, fd: RawFd, opt: i32, ms: i64) {
    let tv = [(ms / 1000).to_ne_bytes(), (ms % 1000 * 1000).to_ne_bytes()].concat();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].opts.insert((libc::SOL_SOCKET, opt), tv);
}

#[test]
fn a_receive_whose_caller_is_killed_lets_go_of_its_socket_within_a_slice() {
    let r = Rig::new();
    let fd = r.udp();
    let id = blocking_recvfrom(&r, fd);
    assert_eq!((r.held(), r.engine.helpers.count()), (1, 1), "the helper holds its copy of the socket");
    abandon_at_wait(&r, id, 5);
    r.k.run_later();
    assert_eq!((r.held(), r.engine.helpers.count()), (0, 0), "copy dropped, helper counted out");
    assert_eq!(r.k.answer_to(id), None);
    let w = waits(&r);
    assert_eq!(w.len(), 5, "no wait after the one during which the call went stale");
    assert!(w.iter().all(|t| *t == SLICE_MS), "a receive without a timeout waits in slices: {w:?}");
}

#[test]
fn a_blocking_connect_whose_caller_is_killed_lets_go_of_its_socket() {
    let r = Rig::new();
    r.k.state().silent.insert(sa("192.0.2.1:80"));
    let fd = r.tcp();
    let id = r.connect_later(fd, "192.0.2.1:80");
    assert_eq!(r.held(), 1);
    abandon_at_wait(&r, id, 3);
    r.k.run_later();
    assert_eq!((r.held(), r.engine.helpers.count(), r.k.answer_to(id)), (0, 0, None));
}

#[test]
fn an_egress_handshake_whose_caller_is_killed_stops_and_records_nothing() {
    let r = Rig::new();
    let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
    r.table(|t| t.set_remote(Remote { nodes: vec![("g".into(), gw)], egress: vec![gw], ..Remote::default() }));
    let fd = r.tcp();
    let id = r.connect_later(fd, "192.0.2.1:443");
    // The gateway never answers; the caller is killed while the helper waits for it.
    abandon_at_wait(&r, id, 4);
    r.k.run_later();
    assert_eq!((r.held(), r.engine.helpers.count(), r.k.answer_to(id)), (0, 0, None));
    assert_eq!(r.k.sock(fd).peer, None, "the app's own socket was never touched");
    let locals: Vec<SocketAddr> = r.k.state().socks.iter().filter_map(|s| s.local).collect();
    assert!(!locals.is_empty(), "the daemon's socket was made");
    for local in locals {
        assert_eq!(r.table(|t| t.remembered_peer(local)), None);
    }
}

#[test]
fn receive_and_send_timeouts_are_kept_across_slices() {
    let r = Rig::new();
    let fd = r.udp();
    set_timeout(&r, fd, libc::SO_RCVTIMEO, 250);
    let id = blocking_recvfrom(&r, fd);
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), fail(libc::EAGAIN));
    assert_eq!(waits(&r), [SLICE_MS, SLICE_MS, 50]);
    // A datagram that arrives in the second slice is delivered.
    let fd = r.udp();
    let id = blocking_recvfrom(&r, fd);
    let sock = r.k.state().fds[&fd];
    let mut waits = 0;
    r.k.state().on_wait = Some(Box::new(move |s| {
        waits += 1;
        if waits == 2 {
            s.socks[sock].inbox.push_back((b"late".to_vec(), sa("192.0.2.1:53")));
        }
    }));
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), Some(Reply::Value(4)));
}

#[test]
fn an_app_has_at_most_its_helpers_and_gets_eagain_past_them() {
    let r = Rig::new();
    let fd = r.udp();
    let ids: Vec<u64> = (0..HELPERS_PER_APP).map(|_| blocking_recvfrom(&r, fd)).collect();
    assert_eq!(r.engine.helpers.count(), HELPERS_PER_APP);
    let (buf, src, lenp) = (r.k.put(&[0; 8]), r.k.put(&[0; 16]), r.k.put(&16u32.to_ne_bytes()));
    let recv = [fd as u64, buf, 8, 0, src, lenp];
    assert_eq!(r.trap(libc::SYS_recvfrom, recv), fail(libc::EAGAIN));
    // Another app has helpers of its own.
    let other = r.other(None, "zone=default");
    let ofd = other.udp();
    let oid = blocking_recvfrom(&other, ofd);
    assert_eq!(other.engine.helpers.count(), 1);
    // Once the callers are gone, the helpers are too, and the app gets them again.
    r.k.state().stale.extend(ids.into_iter().chain([oid]));
    r.k.run_later();
    assert_eq!((r.engine.helpers.count(), other.engine.helpers.count()), (0, 0));
    assert_eq!(r.trap(libc::SYS_recvfrom, recv), None);
    // A helper that cannot be started is not counted.
    r.k.state().no_threads = true;
    assert_eq!(r.trap(libc::SYS_recvfrom, recv), fail(libc::EAGAIN));
    assert_eq!(r.engine.helpers.count(), 1);
}
