//! Landlock's network rules (Linux 6.7, ABI 4): the calling thread and everything it
//! starts may no longer bind or connect TCP sockets themselves. The check is the
//! calling task's, not the socket's, so the daemon (unrestricted) still binds and
//! connects an app's sockets on its own copies of them.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `struct landlock_ruleset_attr` up to `handled_access_net` (ABI 4).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
}

const CREATE_RULESET_VERSION: libc::c_uint = 1;
const ACCESS_NET_BIND_TCP: u64 = 1;
const ACCESS_NET_CONNECT_TCP: u64 = 2;
/// The first ABI with network rules.
const NET_ABI: libc::c_long = 4;

/// Denies TCP bind and connect to the calling thread and its future children, for good.
/// Fails where Landlock is absent, off or blocked (ENOSYS, EOPNOTSUPP, EPERM), or too
/// old for network rules (Unsupported).
pub fn deny_tcp_bind_and_connect() -> io::Result<()> {
    // SAFETY: with a null attribute, size 0 and the VERSION flag, the call only returns
    // the ABI version; no memory is read.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if abi < 0 {
        return Err(io::Error::last_os_error());
    }
    if abi < NET_ABI {
        let why = format!("Landlock ABI {abi} has no network rules (ABI {NET_ABI}, Linux 6.7, has)");
        return Err(io::Error::new(io::ErrorKind::Unsupported, why));
    }
    let attr = RulesetAttr { handled_access_fs: 0, handled_access_net: ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP };
    // SAFETY: `attr` is a live, initialised struct of the size passed; the kernel only
    // reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // No rule is added: every TCP bind and connect the ruleset handles is denied.
    // SAFETY: a plain call on a descriptor we own; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, std::os::fd::AsRawFd::as_raw_fd(&ruleset), 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
