//! Datagrams with addresses: sendto, sendmsg, recvfrom, recvmsg.

use super::*;

/// A UDP server app on `service`: its host address.
fn udp_server(r: &Rig, ip: &str, labels: &str, service: &str) -> SocketAddrV4 {
    let s = r.other(Some(ip), labels);
    let fd = s.udp();
    assert_eq!(s.bind(fd, service), OK);
    match s.k.sock(fd).local {
        Some(SocketAddr::V4(a)) => a,
        other => panic!("{other:?}"),
    }
}

fn sendto(r: &Rig, fd: RawFd, data: &[u8], to: &str, flags: i32) -> Option<Reply> {
    let buf = r.k.put(data);
    let (p, l) = r.addr(to);
    r.trap(libc::SYS_sendto, [fd as u64, buf, data.len() as u64, flags as u64, p, l])
}

#[test]
fn a_datagram_to_a_virtual_address_goes_to_its_backend() {
    let r = Rig::new();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    assert_eq!(sendto(&r, fd, b"query", "198.18.0.53:53", 0), Some(Reply::Value(5)));
    let s = r.k.sock(fd);
    assert_eq!(s.sent, vec![(b"query".to_vec(), Vec::new(), Some(SocketAddr::V4(at)))]);
}

#[test]
fn datagrams_obey_labels_and_loopback_stays_private() {
    let r = Rig::with(NewApp { labels: Labels::parse("role=test").unwrap(), ..NewApp::default() });
    udp_server(&r, "198.18.0.53", "role=prod", "0.0.0.0:53");
    let fd = r.udp();
    assert_eq!(sendto(&r, fd, b"q", "198.18.0.53:53", 0), fail(libc::ECONNREFUSED));
    assert!(r.k.sock(fd).sent.is_empty());
    assert_eq!(sendto(&r, fd, b"q", "192.0.2.9:53", 0), Some(Reply::Value(1)));
    assert_eq!(r.k.sock(fd).sent[0].2, Some(sa("192.0.2.9:53")));
    let lo = r.udp();
    assert_eq!(sendto(&r, lo, b"q", "127.0.0.1:53", 0), Some(Reply::Value(1)));
    let s = r.k.sock(lo);
    assert_eq!((s.ns, s.sent[0].2), (Netns::App, Some(sa("127.0.0.1:53"))));
}

#[test]
fn one_socket_keeps_talking_to_one_backend() {
    let r = Rig::new();
    udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    for _ in 0..3 {
        let fd = r.udp();
        for _ in 0..5 {
            sendto(&r, fd, b"q", "198.18.0.53:53", 0);
        }
        let sent = r.k.sock(fd).sent;
        assert!(sent.iter().all(|s| s.2 == sent[0].2), "{sent:?}");
    }
}

#[test]
fn tcp_sends_run_natively_but_fast_open_is_refused() {
    let r = Rig::new();
    let fd = r.tcp();
    assert_eq!(sendto(&r, fd, b"x", "192.0.2.1:80", 0), Some(Reply::Proceed));
    assert_eq!(sendto(&r, fd, b"x", "192.0.2.1:80", libc::MSG_FASTOPEN), fail(libc::EOPNOTSUPP));
    assert!(r.k.sock(fd).peer.is_none(), "no connection was made");
}

#[test]
fn oversized_datagrams_are_emsgsize() {
    let r = Rig::new();
    let fd = r.udp();
    let (p, l) = r.addr("192.0.2.1:53");
    let big = crate::datagram::MAX_PAYLOAD as u64 + 1;
    assert_eq!(r.trap(libc::SYS_sendto, [fd as u64, p, big, 0, p, l]), fail(libc::EMSGSIZE));
    assert_eq!(sendto(&r, fd, b"x", "192.0.2.1:53", 0), Some(Reply::Value(1)));
}

/// A msghdr in the app's memory: name, iovecs over `parts`, control bytes.
fn msghdr(r: &Rig, name: Option<&str>, parts: &[&[u8]], control: &[u8], iov_cap: usize) -> u64 {
    let (name_ptr, name_len) = match name {
        Some(a) => r.addr(a),
        None => (0, 0),
    };
    let mut iov = Vec::new();
    for p in parts {
        let mut b = p.to_vec();
        b.resize(iov_cap.max(p.len()), 0);
        iov.extend(r.k.put(&b).to_ne_bytes());
        iov.extend((iov_cap.max(p.len()) as u64).to_ne_bytes());
    }
    let iov_ptr = r.k.put(&iov);
    let control_ptr = r.k.put(&control.iter().copied().chain(std::iter::repeat_n(0, 64)).collect::<Vec<u8>>());
    let mut h = Vec::new();
    h.extend(name_ptr.to_ne_bytes());
    h.extend((name_len as u32).to_ne_bytes());
    h.extend([0u8; 4]);
    h.extend(iov_ptr.to_ne_bytes());
    h.extend((parts.len() as u64).to_ne_bytes());
    h.extend(control_ptr.to_ne_bytes());
    h.extend((control.len() as u64).to_ne_bytes());
    h.extend([0u8; 8]);
    r.k.put(&h)
}

#[test]
fn sendmsg_gathers_the_iovecs_and_passes_the_harmless_control_data() {
    let r = Rig::new();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    let cmsg = |level: i32, kind: i32| {
        let mut c = 20u64.to_ne_bytes().to_vec();
        c.extend(level.to_ne_bytes());
        c.extend(kind.to_ne_bytes());
        c.extend(7u32.to_ne_bytes());
        c.extend([0u8; 4]);
        c
    };
    // A TOS goes with the datagram; a mark the daemon could set and the app could not
    // does not.
    let (tos, mark) = (cmsg(libc::IPPROTO_IP, libc::IP_TOS), cmsg(libc::SOL_SOCKET, libc::SO_MARK));
    let h = msghdr(&r, Some("198.18.0.53:53"), &[b"ab", b"cde"], &[mark, tos.clone()].concat(), 0);
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, h, 0, 0, 0, 0]), Some(Reply::Value(5)));
    assert_eq!(r.k.sock(fd).sent, vec![(b"abcde".to_vec(), tos, Some(SocketAddr::V4(at)))]);
    let no_name = msghdr(&r, None, &[b"x"], b"", 0);
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, no_name, 0, 0, 0, 0]), Some(Reply::Proceed));
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, 0x8, 0, 0, 0, 0]), fail(libc::EFAULT));
}

/// A `struct mmsghdr` array of the msghdrs at `hdrs`; returns where it is.
fn mmsghdrs(r: &Rig, hdrs: &[u64]) -> u64 {
    let raw: Vec<u8> = hdrs.iter().flat_map(|&h| [r.k.peek(h, 56), vec![0xee; 8]].concat()).collect();
    r.k.put(&raw)
}

#[test]
fn without_the_guard_the_daemon_sends_what_it_let_run_natively() {
    // No guard would refuse an address a racing thread puts in the header after the
    // daemon read it: the daemon sends the datagram itself, on the connected socket.
    let r = Rig::new().unguarded();
    let fd = r.udp();
    let no_name = msghdr(&r, None, &[b"x", b"y"], b"", 0);
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, no_name, 0, 0, 0, 0]), Some(Reply::Value(2)));
    assert_eq!(r.k.sock(fd).sent, vec![(b"xy".to_vec(), Vec::new(), None)]);
    // TCP and the app's own sockets still run natively.
    assert_eq!(r.trap(libc::SYS_sendmsg, [r.tcp() as u64, no_name, 0, 0, 0, 0]), Some(Reply::Proceed));
    assert_eq!(r.trap(libc::SYS_sendmsg, [NOT_A_SOCKET as u64, no_name, 0, 0, 0, 0]), Some(Reply::Proceed));
}

#[test]
fn without_the_guard_each_datagram_of_a_batch_is_the_daemons_to_send() {
    let r = Rig::new().unguarded();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    let to_service = msghdr(&r, Some("198.18.0.53:53"), &[b"abc"], b"", 0);
    let connected = msghdr(&r, None, &[b"de"], b"", 0);
    let vec = mmsghdrs(&r, &[to_service, connected]);
    assert_eq!(r.trap(libc::SYS_sendmmsg, [fd as u64, vec, 2, 0, 0, 0]), Some(Reply::Value(2)));
    let want = vec![(b"abc".to_vec(), Vec::new(), Some(SocketAddr::V4(at))), (b"de".to_vec(), Vec::new(), None)];
    assert_eq!(r.k.sock(fd).sent, want);
    // Each message's length is written after its header.
    assert_eq!(r.k.peek(vec + 56, 4), 3u32.to_ne_bytes());
    assert_eq!(r.k.peek(vec + 64 + 56, 4), 2u32.to_ne_bytes());
    assert_eq!(r.trap(libc::SYS_sendmmsg, [fd as u64, vec, 0, 0, 0, 0]), Some(Reply::Value(0)));
    // TCP batches run natively, but fast open is refused.
    let tcp = r.tcp();
    assert_eq!(r.trap(libc::SYS_sendmmsg, [tcp as u64, vec, 2, 0, 0, 0]), Some(Reply::Proceed));
    let fo = libc::MSG_FASTOPEN as u64;
    assert_eq!(r.trap(libc::SYS_sendmmsg, [tcp as u64, vec, 2, fo, 0, 0]), fail(libc::EOPNOTSUPP));
}

#[test]
fn without_the_guard_a_batch_stops_at_its_first_refusal() {
    let r = Rig::with(NewApp { labels: Labels::parse("role=test").unwrap(), ..NewApp::default() }).unguarded();
    udp_server(&r, "198.18.0.53", "role=prod", "0.0.0.0:53");
    let fd = r.udp();
    let allowed = msghdr(&r, Some("192.0.2.9:53"), &[b"ok"], b"", 0);
    let refused = msghdr(&r, Some("198.18.0.53:53"), &[b"no"], b"", 0);
    // The kernel's rule: the count sent, or the first error when nothing was.
    let first = mmsghdrs(&r, &[refused, allowed]);
    assert_eq!(r.trap(libc::SYS_sendmmsg, [fd as u64, first, 2, 0, 0, 0]), fail(libc::ECONNREFUSED));
    let second = mmsghdrs(&r, &[allowed, refused, allowed]);
    assert_eq!(r.trap(libc::SYS_sendmmsg, [fd as u64, second, 3, 0, 0, 0]), Some(Reply::Value(1)));
    assert_eq!(r.k.sock(fd).sent, vec![(b"ok".to_vec(), Vec::new(), Some(sa("192.0.2.9:53")))]);
    // A vector the app cannot give is EFAULT, as from the kernel.
    assert_eq!(r.trap(libc::SYS_sendmmsg, [fd as u64, 0x8, 1, 0, 0, 0]), fail(libc::EFAULT));
    assert_eq!(r.trap(libc::SYS_sendmmsg, [fd as u64, u64::MAX - 8, 2, 0, 0, 0]), fail(libc::EFAULT));
}

#[test]
fn too_many_iovecs_are_emsgsize() {
    let r = Rig::new();
    let fd = r.udp();
    let h = msghdr(&r, Some("192.0.2.1:53"), &[b"x"], b"", 0);
    let mut raw = r.k.peek(h, 56);
    raw[24..32].copy_from_slice(&1025u64.to_ne_bytes());
    let h = r.k.put(&raw);
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, h, 0, 0, 0, 0]), fail(libc::EMSGSIZE));
}

fn recvfrom(r: &Rig, id: u64, fd: RawFd, flags: i32, srclen: u32) -> (Option<Reply>, u64, u64, u64) {
    let buf = r.k.put(&[0u8; 64]);
    let src = r.k.put(&[0u8; 28]);
    let lenp = r.k.put(&srclen.to_ne_bytes());
    let reply = r.trap_as(id, libc::SYS_recvfrom, [fd as u64, buf, 64, flags as u64, src, lenp]);
    (reply, buf, src, lenp)
}

#[test]
fn a_reply_from_a_backend_shows_the_virtual_address_it_was_sent_to() {
    let r = Rig::new();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"answer".to_vec(), SocketAddr::V4(at)));
    let (reply, buf, src, lenp) = recvfrom(&r, r.next_id(), fd, 0, 16);
    assert_eq!(reply, Some(Reply::Value(6)));
    assert_eq!(r.k.peek(buf, 6), b"answer");
    assert_eq!(r.k.peek(src, 16), addr::encode(sa("198.18.0.53:53"), Family::V4));
    assert_eq!(u32::from_ne_bytes(r.k.peek(lenp, 4).try_into().unwrap()), 16);
}

#[test]
fn a_short_source_buffer_is_filled_as_far_as_it_goes() {
    let r = Rig::new();
    let fd = r.udp();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"x".to_vec(), sa("192.0.2.1:53")));
    let (reply, _, src, lenp) = recvfrom(&r, r.next_id(), fd, 0, 6);
    assert_eq!(reply, Some(Reply::Value(1)));
    assert_eq!(r.k.peek(src, 8)[6..], [0, 0]);
    assert_eq!(u32::from_ne_bytes(r.k.peek(lenp, 4).try_into().unwrap()), 16);
}

#[test]
fn an_empty_nonblocking_receive_is_eagain() {
    let r = Rig::new();
    let fd = r.socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK);
    assert_eq!(recvfrom(&r, r.next_id(), fd, 0, 16).0, fail(libc::EAGAIN));
    let fd = r.udp();
    assert_eq!(recvfrom(&r, r.next_id(), fd, libc::MSG_DONTWAIT, 16).0, fail(libc::EAGAIN));
}

#[test]
fn a_blocking_receive_is_answered_when_a_datagram_arrives() {
    let r = Rig::new();
    let fd = r.udp();
    let id = r.next_id();
    let (reply, buf, _, _) = recvfrom(&r, id, fd, 0, 16);
    assert_eq!(reply, None, "answered later");
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"late".to_vec(), sa("192.0.2.1:53")));
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), Some(Reply::Value(4)));
    assert_eq!(r.k.peek(buf, 4), b"late");
}

#[test]
fn a_receive_whose_caller_is_gone_writes_nothing() {
    let r = Rig::new();
    let fd = r.udp();
    let id = r.next_id();
    recvfrom(&r, id, fd, 0, 16);
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"late".to_vec(), sa("192.0.2.1:53")));
    r.k.state().stale.insert(id);
    r.k.run_later();
    assert_eq!(r.k.answer_to(id), None);
    assert!(!r.k.ops().iter().any(|o| matches!(o, Op::Write(..))));
}

#[test]
fn recvmsg_scatters_the_datagram_and_fills_in_the_header() {
    let r = Rig::new();
    let at = udp_server(&r, "198.18.0.53", "zone=default", "0.0.0.0:53");
    let fd = r.udp();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"abcdef".to_vec(), SocketAddr::V4(at)));
    let h = msghdr(&r, Some("0.0.0.0:0"), &[b"", b""], b"", 4);
    assert_eq!(r.trap(libc::SYS_recvmsg, [fd as u64, h, 0, 0, 0, 0]), Some(Reply::Value(6)));
    let raw = r.k.peek(h, 56);
    let name = u64::from_ne_bytes(raw[0..8].try_into().unwrap());
    let iov = u64::from_ne_bytes(raw[16..24].try_into().unwrap());
    let iovs = r.k.peek(iov, 32);
    let first = u64::from_ne_bytes(iovs[0..8].try_into().unwrap());
    let second = u64::from_ne_bytes(iovs[16..24].try_into().unwrap());
    assert_eq!(r.k.peek(first, 4), b"abcd");
    assert_eq!(r.k.peek(second, 2), b"ef");
    assert_eq!(r.k.peek(name, 16), addr::encode(sa("198.18.0.53:53"), Family::V4));
    assert_eq!(u32::from_ne_bytes(raw[8..12].try_into().unwrap()), 16);
}

#[test]
fn receives_without_an_address_or_from_the_error_queue_run_natively() {
    let r = Rig::new();
    let fd = r.udp();
    let h = msghdr(&r, None, &[b""], b"", 4);
    assert_eq!(r.trap(libc::SYS_recvmsg, [fd as u64, h, 0, 0, 0, 0]), Some(Reply::Proceed));
    let h = msghdr(&r, Some("0.0.0.0:0"), &[b""], b"", 4);
    assert_eq!(r.trap(libc::SYS_recvmsg, [fd as u64, h, libc::MSG_ERRQUEUE as u64, 0, 0, 0]), Some(Reply::Proceed));
    assert_eq!(recvfrom(&r, r.next_id(), fd, libc::MSG_ERRQUEUE, 16).0, Some(Reply::Proceed));
    let tcp = r.tcp();
    assert_eq!(recvfrom(&r, r.next_id(), tcp, 0, 16).0, Some(Reply::Proceed));
}

#[test]
fn iovec_lengths_that_overflow_do_not_upset_the_engine() {
    let r = Rig::new();
    let fd = r.udp();
    let i = r.k.state().fds[&fd];
    r.k.state().socks[i].inbox.push_back((b"abc".to_vec(), sa("192.0.2.1:53")));
    let h = msghdr(&r, Some("0.0.0.0:0"), &[b"", b""], b"", 4);
    let raw = r.k.peek(h, 56);
    let iov = u64::from_ne_bytes(raw[16..24].try_into().unwrap());
    let mut iovs = r.k.peek(iov, 32);
    iovs[8..16].copy_from_slice(&u64::MAX.to_ne_bytes());
    iovs[24..32].copy_from_slice(&u64::MAX.to_ne_bytes());
    let iov2 = r.k.put(&iovs);
    let mut raw = raw.clone();
    raw[16..24].copy_from_slice(&iov2.to_ne_bytes());
    let h = r.k.put(&raw);
    assert_eq!(r.trap(libc::SYS_recvmsg, [fd as u64, h, 0, 0, 0, 0]), Some(Reply::Value(3)));
    let h = msghdr(&r, Some("192.0.2.1:53"), &[b"x"], b"", 0);
    let mut raw = r.k.peek(h, 56);
    raw[16..24].copy_from_slice(&iov2.to_ne_bytes());
    raw[24..32].copy_from_slice(&2u64.to_ne_bytes());
    let h = r.k.put(&raw);
    assert_eq!(r.trap(libc::SYS_sendmsg, [fd as u64, h, 0, 0, 0, 0]), fail(libc::EMSGSIZE));
}

// Where datagram sockets go: the descriptor range the filter traps (crate::fds)

const LO: RawFd = crate::fds::DATAGRAM_FDS.start as RawFd;
const HI: RawFd = crate::fds::DATAGRAM_FDS.end as RawFd;

/// Gives the app descriptors of its own (pipes, say) at `fds`.
fn occupy(r: &Rig, fds: impl IntoIterator<Item = RawFd>) {
    for fd in fds {
        r.k.give(fd, libc::AF_UNIX, libc::SOCK_STREAM, Netns::App);
    }
}

#[test]
fn udp_sockets_go_to_the_top_of_the_range_and_tcp_ones_to_the_lowest_free_number() {
    let r = Rig::new();
    assert_eq!(r.udp(), HI - 1);
    assert_eq!(r.socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC), HI - 2);
    assert_eq!(r.tcp(), 3);
    assert_eq!(r.socket(libc::AF_INET6, libc::SOCK_STREAM), 4);
    let adds: Vec<Option<RawFd>> =
        r.k.ops().iter().filter_map(|o| if let Op::AddFd { at, .. } = o { Some(*at) } else { None }).collect();
    assert_eq!(adds, [Some(HI - 1), Some(HI - 2), None, None]);
    assert!(r.k.state().cloexec.contains(&(HI - 2)), "SOCK_CLOEXEC holds at a chosen number too");
    assert_eq!(r.k.sock(HI - 1).marks, guard::GUARDED, "marked before the app has it");
    // A closed one's number is given again.
    r.k.state().fds.remove(&(HI - 1));
    assert_eq!(r.udp(), HI - 1);
}

#[test]
fn a_number_the_app_holds_is_never_replaced() {
    let r = Rig::new();
    occupy(&r, [HI - 1, HI - 3]);
    let own = r.k.state().fds[&(HI - 1)];
    assert_eq!(r.udp(), HI - 2);
    assert_eq!(r.udp(), HI - 4);
    assert_eq!(r.k.state().fds[&(HI - 1)], own);
}

#[test]
fn the_range_edges_hold_and_a_full_range_is_emfile() {
    let r = Rig::new();
    occupy(&r, LO + 1..HI);
    assert_eq!(r.udp(), LO, "the lowest number of the range is used");
    let before = r.k.state().fds.clone();
    let ops = r.k.ops().len();
    assert_eq!(
        r.trap(libc::SYS_socket, [libc::AF_INET as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0]),
        fail(libc::EMFILE)
    );
    assert_eq!(r.k.state().fds, before, "nothing installed, {} below the range left free", LO - 1);
    assert!(!r.k.ops()[ops..].iter().any(|o| matches!(o, Op::AddFd { .. })));
    assert_eq!(r.k.held(), 0, "the socket made for it is closed");
    // A higher limit does not reach past the range, and TCP sockets are unaffected.
    r.k.state().fd_limit = 1 << 20;
    assert_eq!(
        r.trap(libc::SYS_socket, [libc::AF_INET as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0]),
        fail(libc::EMFILE)
    );
    assert!(!r.k.state().fds.contains_key(&HI));
    assert_eq!(r.tcp(), 3);
}

#[test]
fn the_apps_open_file_limit_bounds_the_numbers() {
    let r = Rig::new();
    r.udp();
    assert!(!r.k.ops().contains(&Op::FdLimit), "not looked up while the range fits");
    r.k.state().fd_limit = 900;
    assert_eq!(r.udp(), 899);
    assert_eq!(r.k.ops().iter().filter(|o| **o == Op::FdLimit).count(), 1, "looked up once the kernel said EBADF");
    r.k.state().fd_limit = LO as u64 + 1;
    assert_eq!(r.udp(), LO);
    r.k.state().fd_limit = LO as u64;
    assert_eq!(
        r.trap(libc::SYS_socket, [libc::AF_INET as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0]),
        fail(libc::EMFILE)
    );
    assert_eq!(r.k.held(), 0);
}

#[test]
fn a_tcp_socket_moved_into_the_range_still_runs_natively() {
    let r = Rig::new();
    let fd = r.tcp();
    let i = r.k.state().fds[&fd];
    r.k.state().fds.insert(HI - 1, i);
    let h = msghdr(&r, Some("192.0.2.1:80"), &[b"get k\r\n"], b"", 0);
    assert_eq!(r.trap(libc::SYS_sendmsg, [(HI - 1) as u64, h, 0, 0, 0, 0]), Some(Reply::Proceed));
    assert_eq!(r.trap(libc::SYS_recvmsg, [(HI - 1) as u64, h, 0, 0, 0, 0]), Some(Reply::Proceed));
    assert_eq!(sendto(&r, HI - 1, b"x", "192.0.2.1:80", 0), Some(Reply::Proceed));
    assert_eq!(recvfrom(&r, r.next_id(), HI - 1, 0, 16).0, Some(Reply::Proceed));
    let s = r.k.sock(HI - 1);
    assert!(s.sent.is_empty() && s.peer.is_none(), "the daemon sent and connected nothing: {s:?}");
    // Fast open stays refused there, as on every number.
    let h = msghdr(&r, Some("192.0.2.1:80"), &[b"x"], b"", 0);
    assert_eq!(
        r.trap(libc::SYS_sendmsg, [(HI - 1) as u64, h, libc::MSG_FASTOPEN as u64, 0, 0, 0]),
        fail(libc::EOPNOTSUPP)
    );
}

#[test]
fn a_refused_udp_connect_is_connected_to_the_closed_port_and_shows_its_destination() {
    let r = Rig::new();
    let _b = r.other(Some("198.18.0.20"), "zone=default");
    let fd = r.udp();
    // Nobody serves the port: a host's UDP connect succeeds all the same.
    assert_eq!(r.connect(fd, "198.18.0.20:1025"), OK);
    assert_eq!(r.k.sock(fd).peer, Some(sa("10.0.0.1:1021")), "the node's closed port");
    assert_eq!(r.shown(fd, true), Some(sa("198.18.0.20:1025")));
    // A TCP socket is refused at once.
    let tcp = r.tcp();
    assert_eq!(r.connect(tcp, "198.18.0.20:1025"), fail(libc::ECONNREFUSED));
}
