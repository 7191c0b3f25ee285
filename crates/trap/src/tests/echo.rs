//! The echo device and its responder: made at the app's first ping or raw socket,
//! answering as the table says, taken back by a next daemon, gone with the engine.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use ax_core::icmp;

use super::*;

const PATIENCE: Duration = Duration::from_secs(120);

fn ping_socket(r: &Rig) -> Option<Reply> {
    r.trap(libc::SYS_socket, [libc::AF_INET as u64, libc::SOCK_DGRAM as u64, libc::IPPROTO_ICMP as u64, 0, 0, 0])
}

fn own(r: &Rig) -> Ipv4Addr {
    r.table(|t| t.app(r.app).unwrap().ip)
}

/// The far end of the rig's echo device.
fn wire(r: &Rig) -> UnixDatagram {
    let w = r.k.state().echo_wire.as_ref().expect("an echo device").try_clone().unwrap();
    w.set_read_timeout(Some(PATIENCE)).unwrap();
    w
}

/// Sends the app's ping of `to` down the device; what came back.
fn ping(r: &Rig, to: &str) -> Option<Result<Ipv4Addr, u8>> {
    let w = wire(r);
    w.send(&icmp::echo_request(own(r), to.parse().unwrap(), 7, 1, b"payload")).unwrap();
    let mut buf = [0u8; 2048];
    let n = w.recv(&mut buf).expect("an answer");
    icmp::answered(&buf[..n])
}

#[test]
fn the_first_ping_or_raw_socket_makes_the_device_once() {
    let r = Rig::new();
    r.socket(libc::AF_INET, libc::SOCK_STREAM);
    r.socket(libc::AF_INET, libc::SOCK_DGRAM);
    let sctp = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, libc::IPPROTO_SCTP as u64, 0, 0, 0];
    assert_eq!(r.trap(libc::SYS_socket, sctp), Some(Reply::Proceed));
    let icmp6 = [libc::AF_INET6 as u64, libc::SOCK_DGRAM as u64, libc::IPPROTO_ICMPV6 as u64, 0, 0, 0];
    assert_eq!(r.trap(libc::SYS_socket, icmp6), Some(Reply::Proceed));
    assert_eq!(r.k.state().echo_made, 0, "no ping socket yet");
    assert_eq!(ping_socket(&r), Some(Reply::Proceed));
    let raw = [libc::AF_INET as u64, (libc::SOCK_RAW | libc::SOCK_CLOEXEC) as u64, libc::IPPROTO_ICMP as u64, 0, 0, 0];
    assert_eq!(r.trap(libc::SYS_socket, raw), Some(Reply::Proceed));
    assert_eq!(r.k.state().echo_made, 1);
}

#[test]
fn pings_are_answered_as_the_table_decides() {
    let r = Rig::new();
    let _web = r.other(Some("198.18.0.20"), "zone=default");
    let _db = r.other(Some("198.18.0.30"), "role=db");
    ping_socket(&r);
    assert_eq!(ping(&r, "198.18.0.20"), Some(Ok("198.18.0.20".parse().unwrap())));
    assert_eq!(ping(&r, "198.18.0.30"), Some(Err(1)), "no label shared: host unreachable");
    assert_eq!(ping(&r, "203.0.113.9"), Some(Err(0)), "not virtual: network unreachable");
    // The table is asked at each packet: an app that goes stops answering.
    let web = r.table(|t| t.apps().find(|a| a.ip == "198.18.0.20".parse::<Ipv4Addr>().unwrap()).unwrap().id);
    r.table(|t| t.remove_app(web));
    assert_eq!(ping(&r, "198.18.0.20"), Some(Err(0)), "nobody has the address now");
}

#[test]
fn an_app_in_the_host_namespace_gets_no_device() {
    let r = Rig::new();
    let r = Rig { engine: r.engine.in_host_netns(true), ..r };
    assert_eq!(ping_socket(&r), fail(libc::EPROTONOSUPPORT));
    r.engine.run();
    assert_eq!(r.k.state().echo_made, 0);
}

#[test]
fn without_a_device_the_socket_is_still_the_apps() {
    let r = Rig::new();
    r.k.state().no_tun = true;
    assert_eq!(ping_socket(&r), Some(Reply::Proceed));
    assert_eq!(ping_socket(&r), Some(Reply::Proceed));
    assert!(r.k.state().echo_wire.is_none());
}

#[test]
fn a_next_daemon_takes_the_device_back_and_makes_none() {
    // No device: the engine's start makes none.
    let fresh = Rig::new();
    fresh.engine.run();
    assert_eq!(fresh.k.state().echo_made, 0);
    // A device a daemon before made: taken back before the first call.
    let r = Rig::new();
    ping_socket(&r);
    let next = Engine::new(r.app, r.k.clone(), r.node.clone());
    drop(r.engine);
    next.run();
    assert_eq!(r.k.state().echo_made, 2);
    let r = Rig { engine: next, ..r };
    let me = own(&r).to_string();
    assert_eq!(ping(&r, &me), Some(Ok(own(&r))));
}

#[test]
fn the_responder_ends_with_its_engine() {
    let r = Rig::new();
    ping_socket(&r);
    let w = wire(&r);
    drop(r.engine);
    // Its end of the device closes: sends to it are refused from then on.
    let deadline = Instant::now() + PATIENCE;
    while w.send(b"x").is_ok() {
        assert!(Instant::now() < deadline, "the responder still holds its device");
        std::thread::sleep(Duration::from_millis(10));
    }
}
