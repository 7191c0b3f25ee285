//! Namespaces: the app's new network and mount namespaces, and entering another
//! thread's network namespace for a moment.
//!
//! Network namespaces belong to a thread, not a process: callers that switch do it on
//! a thread of their own and switch back before doing anything else.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::{c_string, cvt};

/// Moves the calling thread into a new mount namespace (with `mounts`) and a new network
/// namespace (with `net`).
pub fn unshare(mounts: bool, net: bool) -> io::Result<()> {
    let flags = if mounts { libc::CLONE_NEWNS } else { 0 } | if net { libc::CLONE_NEWNET } else { 0 };
    // SAFETY: unshare takes flags only.
    cvt(unsafe { libc::unshare(flags) })?;
    Ok(())
}

/// Bind-mounts the file `src` over `dst` (in this mount namespace only, once mounts
/// are private).
pub fn bind_mount(src: &str, dst: &str) -> io::Result<()> {
    let (src, dst) = (c_string(src)?, c_string(dst)?);
    // SAFETY: both paths are valid C strings; a bind mount takes no type or data.
    cvt(unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) })?;
    Ok(())
}

/// Mounts a filesystem of type `fstype` (cgroup2, bpf...) on the directory `dir`, with
/// the options `data`.
pub fn mount_fs(fstype: &str, dir: &std::path::Path, data: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let (fs, dir, data) = (c_string(fstype)?, c_string(dir.as_os_str().as_bytes())?, c_string(data)?);
    // SAFETY: every pointer is a valid C string, and these filesystems take a string of
    // options as their data.
    cvt(unsafe { libc::mount(fs.as_ptr(), dir.as_ptr(), fs.as_ptr(), 0, data.as_ptr().cast()) })?;
    Ok(())
}

/// Makes every mount in this mount namespace private, so mounts made here (a private
/// resolv.conf, say) never propagate back to the host.
pub fn make_mounts_private() -> io::Result<()> {
    let root = CString::new("/").expect("no NUL");
    // SAFETY: all pointers are valid C strings or null, as mount(2) allows for a
    // propagation change.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    Ok(())
}

pub(crate) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    Ok(ifr)
}

/// Brings interface `name` of the current network namespace up.
pub fn link_up(name: &str) -> io::Result<()> {
    let sock = crate::sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ifr = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `ifr`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: the union member for flags was just written by the kernel.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `ifr`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) })?;
    Ok(())
}

/// Whether the current network namespace has an interface `name`.
pub fn has_link(name: &str) -> io::Result<bool> {
    let sock = crate::sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ifr = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX reads the name from `ifr` and writes the index into it.
    match cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    link_up("lo")
}

/// Gives interface `name` the address `ip` with a /32 netmask.
pub fn set_host_address(name: &str, ip: std::net::Ipv4Addr) -> io::Result<()> {
    let sock = crate::sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    for (req, addr) in [(libc::SIOCSIFADDR, ip), (libc::SIOCSIFNETMASK, std::net::Ipv4Addr::BROADCAST)] {
        let mut ifr = ifreq(name)?;
        let (ss, _) = crate::sock::to_raw(&std::net::SocketAddr::from((addr, 0)));
        // SAFETY: the union's sockaddr member is large enough for a sockaddr_in, which
        // `ss` holds at its start.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&ss as *const libc::sockaddr_storage).cast::<u8>(),
                (&mut ifr.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr>(),
            )
        };
        // SAFETY: the ioctl reads the name and address from `ifr`.
        cvt(unsafe { libc::ioctl(sock.as_raw_fd(), req, &ifr) })?;
    }
    Ok(())
}

/// Creates a network interface `name` of link type `kind` (as `ip link add NAME type
/// KIND` does) in the current network namespace, through rtnetlink.
pub fn create_link(name: &str, kind: &str) -> io::Result<()> {
    const RTM_NEWLINK: u16 = 16;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
        out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut body = vec![0u8; 16]; // struct ifinfomsg, all zero: AF_UNSPEC, no flags
    attr(&mut body, IFLA_IFNAME, format!("{name}\0").as_bytes());
    let mut info = Vec::new();
    attr(&mut info, IFLA_INFO_KIND, kind.as_bytes());
    attr(&mut body, IFLA_LINKINFO, &info);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(&body);
    crate::netlink::request_ack(libc::NETLINK_ROUTE, &msg)
}

/// The network namespace of process `pid`, as an fd that keeps it alive.
pub fn open_netns(pid: i32) -> io::Result<File> {
    File::open(format!("/proc/{pid}/ns/net"))
}

/// The calling thread's own network namespace.
pub fn current_netns() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

/// Moves the calling thread into the network namespace `ns`.
pub fn enter_netns(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes an fd and flags.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}

/// Runs `f` with the calling thread inside `ns`, then returns to `home`. A thread that
/// cannot return would go on making sockets in the wrong namespace: it panics.
pub fn with_netns<T>(ns: &File, home: &File, f: impl FnOnce() -> T) -> io::Result<T> {
    enter_netns(ns.as_fd())?;
    let out = f();
    if let Err(e) = enter_netns(home.as_fd()) {
        panic!("cannot return to the host's network namespace: {e}");
    }
    Ok(out)
}

/// The identity (device, inode) of the namespace at `path` (`/proc/PID/ns/net`, say):
/// two paths name the same namespace when they give the same.
pub fn identity(path: &str) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

/// The child of process `parent` whose number in `parent`'s PID namespace is `nspid`,
/// both as this process numbers them (its /proc); None when `parent` has no such child.
/// A parent in a container numbers its children in the container's PID namespace;
/// where both namespaces are one, `nspid` is the answer and is tried first. Children
/// of `parent`'s main thread only (`ax run` forks from it).
pub fn child_of(parent: i32, nspid: i32) -> io::Result<Option<i32>> {
    let is_it = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .is_some_and(|s| status_field(&s, "PPid:") == Some(parent) && status_field(&s, "NSpid:") == Some(nspid))
    };
    if is_it(nspid) {
        return Ok(Some(nspid));
    }
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))?;
    Ok(children.split_whitespace().filter_map(|p| p.parse().ok()).find(|&pid| is_it(pid)))
}

/// The last number on a /proc status line (`NSpid:` lists a process's number in each
/// PID namespace, its own last).
fn status_field(status: &str, field: &str) -> Option<i32> {
    status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_read_the_innermost_number() {
        let status = "Name:\tcurl\nPid:\t4242\nPPid:\t4241\nNSpid:\t4242\t7\nNSpgid:\t4242\t7\n";
        assert_eq!(status_field(status, "PPid:"), Some(4241));
        assert_eq!(status_field(status, "NSpid:"), Some(7));
        assert_eq!(status_field(status, "Tgid:"), None);
        assert_eq!(status_field("PPid:\tx\n", "PPid:"), None);
    }

    #[test]
    fn a_child_is_found_by_its_number_and_only_under_its_parent() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        // One PID namespace here: its number is its number.
        assert_eq!(child_of(me, pid).unwrap(), Some(pid));
        assert_eq!(child_of(pid, pid).unwrap(), None, "not its own parent's child");
        assert_eq!(child_of(me, pid + 100_000).unwrap(), None, "no child has that number");
        assert_eq!(child_of(me, me).unwrap(), None, "not a child of its own");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
