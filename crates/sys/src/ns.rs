//! Namespaces: the app's new network and mount namespaces, and entering another
//! thread's network namespace for a moment.
//!
//! Network namespaces belong to a thread, not a process: callers that switch do it on
//! a thread of their own and switch back before doing anything else.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::cvt;

/// Moves the calling thread into new network and mount namespaces.
pub fn unshare_net_and_mount() -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) })?;
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

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    let sock = crate::sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `ifr`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: the union member for flags was just written by the kernel.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `ifr`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) })?;
    Ok(())
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

/// Runs `f` with the calling thread inside `ns`, then returns to `home`.
pub fn with_netns<T>(ns: &File, home: &File, f: impl FnOnce() -> T) -> io::Result<T> {
    enter_netns(ns.as_fd())?;
    let out = f();
    enter_netns(home.as_fd())?;
    Ok(out)
}
