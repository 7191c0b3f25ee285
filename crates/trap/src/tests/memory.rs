//! The app's memory as the kernel would treat it: page protections hold (a read-only
//! buffer is EFAULT, never written), lengths read as net/socket.c reads them (negative
//! is EINVAL with nothing written, longer than the address gets the whole address and
//! its length), and writes come in the kernel's order (the length before the address).

use super::*;
use crate::fake::Prot;

fn len_at(r: &Rig, p: u64) -> i32 {
    i32::from_ne_bytes(r.k.peek(p, 4).try_into().unwrap())
}

fn writes(r: &Rig) -> usize {
    r.k.ops().iter().filter(|o| matches!(o, Op::Write(..))).count()
}

/// An app at 198.18.0.5.
fn app() -> Rig {
    let labels = Labels::parse("zone=default").unwrap();
    Rig::with(NewApp { ip: Some("198.18.0.5".parse().unwrap()), labels, ..NewApp::default() })
}

/// A socket whose name and peer the daemon shows: connected to a virtual service.
fn named(r: &Rig) -> RawFd {
    r.other(Some("198.18.0.1"), "zone=default").serve("0.0.0.0:80");
    let fd = r.tcp();
    assert_eq!(r.connect(fd, "198.18.0.1:80"), OK);
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].local = Some(host(33000));
    fd
}

fn name_call(r: &Rig, fd: RawFd, peer: bool, buf: u64, lenp: u64) -> Option<Reply> {
    let nr = if peer { libc::SYS_getpeername } else { libc::SYS_getsockname };
    r.trap(nr, [fd as u64, buf, lenp, 0, 0, 0])
}

#[test]
fn a_name_into_read_only_memory_is_efault_and_writes_nothing_there() {
    let r = app();
    let fd = named(&r);
    for peer in [false, true] {
        let buf = r.k.put_with(&[0xaa; 28], Prot::ReadOnly);
        let lenp = r.k.put(&28i32.to_ne_bytes());
        assert_eq!(name_call(&r, fd, peer, buf, lenp), fail(libc::EFAULT));
        assert_eq!(r.k.peek(buf, 28), [0xaa; 28]);
        assert_eq!(len_at(&r, lenp), 16, "the length is written first, as the kernel does");
    }
}

#[test]
fn a_bad_length_pointer_is_efault_and_writes_nothing() {
    let r = app();
    let fd = named(&r);
    let before = writes(&r);
    for peer in [false, true] {
        let buf = r.k.put(&[0; 28]);
        let read_only = r.k.put_with(&16i32.to_ne_bytes(), Prot::ReadOnly);
        let unreadable = r.k.put_with(&16i32.to_ne_bytes(), Prot::Nothing);
        for lenp in [read_only, unreadable, 0, 8] {
            assert_eq!(name_call(&r, fd, peer, buf, lenp), fail(libc::EFAULT), "length at {lenp:#x}");
        }
        assert_eq!(r.k.peek(buf, 28), [0; 28]);
    }
    assert_eq!(writes(&r), before);
}

#[test]
fn negative_lengths_are_einval_and_long_ones_get_the_whole_address() {
    let r = app();
    let fd = named(&r);
    let before = writes(&r);
    // Negative as the kernel's int: -1 and anything from 2^31 as the app's socklen_t.
    for len in [-1, i32::MIN, 0x8000_0010u32 as i32] {
        let buf = r.k.put(&[0; 28]);
        let lenp = r.k.put(&len.to_ne_bytes());
        assert_eq!(name_call(&r, fd, false, buf, lenp), fail(libc::EINVAL));
        assert_eq!((r.k.peek(buf, 28), len_at(&r, lenp)), (vec![0; 28], len), "nothing written");
    }
    assert_eq!(writes(&r), before);
    let buf = r.k.put(&[0; 28]);
    let lenp = r.k.put(&i32::MAX.to_ne_bytes());
    assert_eq!(name_call(&r, fd, false, buf, lenp), OK);
    assert_eq!(len_at(&r, lenp), 16);
    assert_eq!(r.k.peek(buf, 16), addr::encode(sa("198.18.0.5:33000"), Family::V4));
    // A zero length asks for the length alone: the address pointer is not touched.
    let lenp = r.k.put(&0i32.to_ne_bytes());
    assert_eq!(name_call(&r, fd, true, 0, lenp), OK);
    assert_eq!(len_at(&r, lenp), 16);
}

#[test]
fn addresses_in_unreadable_memory_are_efault_and_read_only_ones_are_read() {
    let r = Rig::new();
    let bytes = addr::encode(sa("192.0.2.1:443"), Family::V4);
    let hidden = r.k.put_with(&bytes, Prot::Nothing);
    let fd = r.tcp();
    assert_eq!(r.trap(libc::SYS_connect, [fd as u64, hidden, 16, 0, 0, 0]), fail(libc::EFAULT));
    assert_eq!(r.trap(libc::SYS_bind, [fd as u64, hidden, 16, 0, 0, 0]), fail(libc::EFAULT));
    let udp = r.udp();
    let data = r.k.put(b"x");
    assert_eq!(r.trap(libc::SYS_sendto, [udp as u64, data, 1, 0, hidden, 16]), fail(libc::EFAULT));
    assert!(r.k.sock(udp).sent.is_empty());
    let readable = r.k.put_with(&bytes, Prot::ReadOnly);
    assert_eq!(r.trap(libc::SYS_connect, [fd as u64, readable, 16, 0, 0, 0]), OK);
}

/// A UDP socket with one datagram waiting, from an outside address.
fn with_datagram(r: &Rig) -> RawFd {
    let fd = r.udp();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"data".to_vec(), sa("192.0.2.1:53")));
    fd
}

fn inbox(r: &Rig, fd: RawFd) -> usize {
    r.k.sock(fd).inbox.len()
}

#[test]
fn a_datagram_into_read_only_memory_is_efault_and_gone_as_in_the_kernel() {
    let r = Rig::new();
    let fd = with_datagram(&r);
    let buf = r.k.put_with(&[0; 8], Prot::ReadOnly);
    let src = r.k.put(&[0; 16]);
    let lenp = r.k.put(&16i32.to_ne_bytes());
    let before = writes(&r);
    assert_eq!(r.trap(libc::SYS_recvfrom, [fd as u64, buf, 8, 0, src, lenp]), fail(libc::EFAULT));
    assert_eq!((r.k.peek(buf, 8), r.k.peek(src, 16)), (vec![0; 8], vec![0; 16]));
    assert_eq!(writes(&r), before, "nothing written");
    assert_eq!(inbox(&r, fd), 0, "the kernel drops a datagram it could not copy");

    // A read-only source buffer: the data and the length are written, then EFAULT.
    let fd = with_datagram(&r);
    let buf = r.k.put(&[0; 8]);
    let src = r.k.put_with(&[0; 16], Prot::ReadOnly);
    let lenp = r.k.put(&20i32.to_ne_bytes());
    assert_eq!(r.trap(libc::SYS_recvfrom, [fd as u64, buf, 8, 0, src, lenp]), fail(libc::EFAULT));
    assert_eq!((r.k.peek(buf, 4), r.k.peek(src, 16), len_at(&r, lenp)), (b"data".to_vec(), vec![0; 16], 16));
}

#[test]
fn a_negative_source_length_is_einval_after_the_receive_as_in_the_kernel() {
    let r = Rig::new();
    let fd = with_datagram(&r);
    let (buf, src, lenp) = (r.k.put(&[0; 8]), r.k.put(&[0; 16]), r.k.put(&(-1i32).to_ne_bytes()));
    assert_eq!(r.trap(libc::SYS_recvfrom, [fd as u64, buf, 8, 0, src, lenp]), fail(libc::EINVAL));
    assert_eq!((r.k.peek(src, 16), len_at(&r, lenp)), (vec![0; 16], -1));
    assert_eq!(inbox(&r, fd), 0);
    // recvmsg reads its header's name length before receiving anything.
    let fd = with_datagram(&r);
    let h = {
        let mut raw = r.k.peek(r.k.put(&[0; 56]), 56);
        raw[0..8].copy_from_slice(&src.to_ne_bytes());
        raw[8..12].copy_from_slice(&(-1i32).to_ne_bytes());
        r.k.put(&raw)
    };
    assert_eq!(r.trap(libc::SYS_recvmsg, [fd as u64, h, 0, 0, 0, 0]), fail(libc::EINVAL));
    assert_eq!(inbox(&r, fd), 1, "nothing received");
}
