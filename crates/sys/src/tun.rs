//! The echo device of an app's own network namespace: a tun interface that the
//! namespace routes every IPv4 destination to, so that what the app sends on sockets
//! ax does not carry (ping and raw sockets) reaches the daemon as packets, which it
//! answers (`ax_core::icmp`). Made in the calling thread's network namespace (the
//! caller enters the app's first, see [`crate::ns::with_netns`]).
//!
//! The device is persistent: it outlives the daemon's descriptor, so an app's ping
//! goes on (unanswered) across a daemon restart, and the next daemon attaches to it
//! again by name. It goes with its namespace.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::ns::set_host_address;
use crate::{c_string, cvt};

/// The echo device's name, in every app's namespace.
pub const ECHO_DEVICE: &str = "ax-echo";

/// The largest packet the device carries: an app's whole datagram, never fragmented.
pub const MTU: u32 = 65535;

/// `_IOW('T', 202, int)`: attach to (or make) the named device.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`: keep the device when its last descriptor closes.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

/// Attaches to the echo device `name` of the current network namespace, making it
/// first if there is none: an IPv4 tun with `own` (the app's address) as its /32
/// address, the largest MTU, and the default route; the namespace then lets the groups
/// `ping_groups` make ping sockets (`net.ipv4.ping_group_range`: the host's, so that
/// unprivileged ping works as it does there). Packets are read and written whole, one
/// per call, without a header.
pub fn echo_device(name: &str, own: Ipv4Addr, ping_groups: &str) -> io::Result<File> {
    let existed = crate::ns::has_link(name)?;
    let tun: File = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut ifr = crate::ns::ifreq(name)?;
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads the name and flags from `ifr` and writes the name back.
    cvt(unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut ifr) })?;
    if !existed {
        // SAFETY: TUNSETPERSIST takes an integer argument.
        cvt(unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) })?;
        set_mtu(name, MTU)?;
        set_host_address(name, own)?;
        // A packet from the device with the namespace's own address as its source (the
        // daemon's "unreachable" answers) is the device's to deliver, not a martian.
        sysctl(&format!("net/ipv4/conf/{name}/accept_local"), "1")?;
        crate::ns::link_up(name)?;
        default_route(name)?;
        sysctl(PING_GROUPS, ping_groups)?;
    }
    Ok(tun)
}

/// Sets the MTU of interface `name`.
fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = crate::sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ifr = crate::ns::ifreq(name)?;
    ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads the name and the MTU from `ifr`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &ifr) })?;
    Ok(())
}

/// Routes every IPv4 destination of the current namespace to interface `name`.
fn default_route(name: &str) -> io::Result<()> {
    let sock: OwnedFd = crate::sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let dev = c_string(name)?;
    // SAFETY: rtentry is plain data; all-zero is a valid value (destination and mask
    // 0.0.0.0 as AF_UNSPEC zeroes, fixed below).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    for sa in [&mut rt.rt_dst, &mut rt.rt_genmask] {
        sa.sa_family = libc::AF_INET as libc::sa_family_t;
    }
    rt.rt_flags = libc::RTF_UP;
    rt.rt_dev = dev.as_ptr().cast_mut();
    // SAFETY: SIOCADDRT reads `rt` and the device name it points to, which lives until
    // the call returns.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) })?;
    Ok(())
}

/// Who may make ping sockets (ICMP_ECHO over SOCK_DGRAM), per network namespace.
pub const PING_GROUPS: &str = "net/ipv4/ping_group_range";

/// Reads `/proc/sys/<key>` in the current thread's network namespace.
pub fn read_sysctl(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/sys/{key}"))?.trim().to_string())
}

/// Writes `value` to `/proc/sys/<key>`, in the current thread's network namespace
/// (the net sysctls are the opener's namespace's).
fn sysctl(key: &str, value: &str) -> io::Result<()> {
    OpenOptions::new().write(true).open(format!("/proc/sys/{key}"))?.write_all(value.as_bytes())
}
