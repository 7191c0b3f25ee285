//! A call the previous daemon received and never answered (it died in it), finished by
//! the next one: made again, answered with what was done, or EINTR.

use ax_sys::kernel::Kernel;

use super::*;
use crate::fake::Tcp;
use crate::resume::restore_flags;

const SOCKET: i64 = libc::SYS_socket;
const TCP: [u64; 6] = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];

fn sockets_made(r: &Rig) -> usize {
    r.k.ops().iter().filter(|o| matches!(o, Op::Socket(..))).count()
}

#[test]
fn a_socket_the_dead_daemon_installed_is_answered_with_its_number() {
    let r = Rig::new();
    // The dead daemon made a socket, noted its inode and installed it at 3; then died.
    let s = r.k.socket(Netns::Host, libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    let (inode, id) = (r.k.inode(&s).unwrap(), 50);
    assert_eq!(r.k.add_fd(id, &s, None, false), Ok(3));
    let made = sockets_made(&r);
    let (answer, _) = r.resume(SOCKET, TCP, inode);
    assert_eq!(answer, Some(Reply::Value(3)));
    assert_eq!(sockets_made(&r), made, "no second socket");
}

#[test]
fn a_socket_that_never_reached_the_app_is_made_again() {
    let r = Rig::new();
    // Made and noted, but the daemon died before the app had it (or before the note).
    let s = r.k.socket(Netns::Host, libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    let inode = r.k.inode(&s).unwrap();
    drop(s);
    let before = r.k.state().fds.len();
    for note in [inode, 0] {
        let (answer, _) = r.resume(SOCKET, TCP, note);
        let Some(Reply::Value(fd)) = answer else { panic!("{answer:?}") };
        let sock = r.k.sock(fd as RawFd);
        assert_eq!((sock.ns, sock.marks), (Netns::Host, guard::GUARDED | guard::MEMBERS_ONLY));
    }
    assert_eq!(r.k.state().fds.len(), before + 2);
}

#[test]
fn a_connect_the_dead_daemon_started_is_answered_as_the_kernel_would() {
    let r = Rig::new();
    r.k.state().slow.insert(sa("192.0.2.1:80"));
    let (p, l) = r.addr("192.0.2.1:80");
    // Non-blocking, handshake under way: EINPROGRESS, no second connect.
    let fd = r.socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].tcp = Tcp::SynSent;
    let args = [fd as u64, p, l, 0, 0, 0];
    assert_eq!(r.resume(libc::SYS_connect, args, 0).0, fail(libc::EINPROGRESS));
    // Connected meanwhile: 0.
    r.k.state().socks[i].tcp = Tcp::Established;
    assert_eq!(r.resume(libc::SYS_connect, args, 0).0, OK);
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Connect(s, _) if *s == i)));
    // Blocking, left non-blocking by the dead daemon: its flags come back, and a helper
    // answers once the handshake is over.
    let fd = r.tcp();
    let i = r.k.state().fds[&fd];
    let flags = r.k.state().socks[i].flags;
    r.k.state().socks[i].flags |= libc::O_NONBLOCK;
    r.k.state().socks[i].tcp = Tcp::SynSent;
    let (answer, id) = r.resume(libc::SYS_connect, [fd as u64, p, l, 0, 0, 0], restore_flags(flags));
    assert_eq!(answer, None, "answered later");
    assert_eq!(r.k.sock(fd).flags, flags);
    r.k.state().socks[i].tcp = Tcp::Established;
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), OK);
}

/// A connect through a gateway touches the app's socket only once the handshake is
/// done: a daemon that died before finds it untouched and the next makes the call
/// again; one that died after finds it replaced and connected, and answers 0.
#[test]
fn a_connect_through_a_gateway_is_made_again_or_found_done() {
    let r = Rig::new();
    let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
    r.table(|t| t.set_remote(Remote { nodes: vec![("g".into(), gw)], egress: vec![gw], ..Remote::default() }));
    r.k.state().says.insert(SocketAddr::from((gw, EGRESS_PORT)), b"OK\n".to_vec());
    let fd = r.tcp();
    let flags = r.k.sock(fd).flags;
    let (p, l) = r.addr("192.0.2.1:443");
    let (answer, id) = r.resume(libc::SYS_connect, [fd as u64, p, l, 0, 0, 0], 0);
    assert_eq!(answer, None, "the handshake answers later");
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), OK);
    let s = r.k.sock(fd);
    assert_eq!(s.sent.last().unwrap().0, b"AXEG 192.0.2.1:443\n");
    assert_eq!(s.flags, flags);
    // Replaced and connected already: done.
    assert_eq!(r.resume(libc::SYS_connect, [fd as u64, p, l, 0, 0, 0], 0).0, OK);
}

#[test]
fn a_connect_that_never_started_is_made() {
    let r = Rig::new();
    let server = r.other(Some("198.18.0.1"), "zone=default");
    let at = server.serve("0.0.0.0:80");
    let fd = r.tcp();
    let (p, l) = r.addr("198.18.0.1:80");
    assert_eq!(r.resume(libc::SYS_connect, [fd as u64, p, l, 0, 0, 0], 0).0, OK);
    assert_eq!(r.k.sock(fd).peer, Some(SocketAddr::V4(at)));
}

#[test]
fn a_call_whose_redoing_is_unsafe_gets_eintr_and_a_call_answered_meanwhile_nothing() {
    let r = Rig::new();
    let fd = r.tcp();
    let (p, l) = r.addr("0.0.0.0:80");
    assert_eq!(r.resume(libc::SYS_bind, [fd as u64, p, l, 0, 0, 0], 0).0, fail(libc::EINTR));
    assert_eq!(r.k.sock(fd).local, None, "nothing bound");
    assert_eq!(r.table(|t| t.bindings().count()), 0);
    // A call no longer pending (its thread interrupted or gone) is left alone.
    let (id, before) = (r.next_id() + 1, r.k.state().fds.len());
    r.k.state().stale.insert(id);
    assert_eq!(r.resume(SOCKET, TCP, 0), (None, id));
    assert_eq!(r.k.state().fds.len(), before);
}

/// A helper's call outlives the engine's own record (the engine receives the app's
/// next calls meanwhile): it is kept apart, with its note, until the helper is done, so
/// a next daemon finds an egress handshake to redo, and a blocking connect to finish.
#[test]
fn calls_handed_to_helpers_are_recorded_with_their_notes_until_answered() {
    let r = Rig::new();
    let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
    r.table(|t| t.set_remote(Remote { nodes: vec![("g".into(), gw)], egress: vec![gw], ..Remote::default() }));
    r.k.state().says.insert(SocketAddr::from((gw, EGRESS_PORT)), b"OK\n".to_vec());
    let fd = r.tcp();
    let egress = r.connect_later(fd, "192.0.2.1:443");
    // The engine goes on with other calls.
    r.tcp();
    assert_eq!(r.k.state().handed, [(egress, 0)], "nothing to note: the app's socket is untouched");
    r.k.run_later();
    assert_eq!(r.k.answer_to(egress), OK);
    assert!(r.k.state().handed.is_empty());
    // A blocking connect a helper waits for: its flags are the app's again (nothing to
    // put back).
    let r = Rig::new();
    r.k.state().silent.insert(sa("192.0.2.1:80"));
    let plain = r.connect_later(r.tcp(), "192.0.2.1:80");
    r.tcp();
    assert_eq!(r.k.state().handed, [(plain, 0)]);
}
