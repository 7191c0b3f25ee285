//! Landlock, for two restrictions `ax run` puts on an app (the calling thread and
//! everything it starts, for good):
//! - network rules (Linux 6.7, ABI 4): it may no longer bind or connect TCP sockets
//!   itself. The check is the calling task's, not the socket's, so the daemon
//!   (unrestricted) still binds and connects an app's sockets on its own copies of them;
//! - scopes (Linux 6.12, ABI 6): it may no longer connect or send to an abstract
//!   AF_UNIX socket made outside its own Landlock domain (by the host, by another app).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct landlock_ruleset_attr` (ABI 6). Older kernels take it too while the fields
/// they do not know are zero.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

const CREATE_RULESET_VERSION: libc::c_uint = 1;
const ACCESS_NET_BIND_TCP: u64 = 1;
const ACCESS_NET_CONNECT_TCP: u64 = 2;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1;
/// The first ABI with network rules.
const NET_ABI: libc::c_long = 4;
/// The first ABI with scopes.
const SCOPE_ABI: libc::c_long = 6;

/// The ABI version the kernel serves; fails where Landlock is absent, off or blocked
/// (ENOSYS, EOPNOTSUPP, EPERM).
fn abi() -> io::Result<libc::c_long> {
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
    Ok(abi)
}

/// Ok when the kernel serves `want`, else why not.
fn needs(want: libc::c_long, what: &str) -> io::Result<()> {
    let abi = abi()?;
    if abi < want {
        let why = format!("Landlock ABI {abi} has no {what} (ABI {want} has)");
        return Err(io::Error::new(io::ErrorKind::Unsupported, why));
    }
    Ok(())
}

/// Restricts the calling thread and its future children by a ruleset with no rule:
/// everything `attr` handles is denied.
fn restrict(attr: RulesetAttr) -> io::Result<()> {
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
    // SAFETY: a plain call on a descriptor we own; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Denies TCP bind and connect to the calling thread and its future children, for good.
/// Fails where Landlock is absent, off or blocked, or too old for network rules
/// (Unsupported).
pub fn deny_tcp_bind_and_connect() -> io::Result<()> {
    needs(NET_ABI, "network rules")?;
    restrict(RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP,
        scoped: 0,
    })
}

/// Whether [`scope_abstract_unix_sockets`] can work here.
pub fn can_scope() -> bool {
    needs(SCOPE_ABI, "scopes").is_ok()
}

/// Keeps the calling thread and its future children from connecting or sending to
/// abstract AF_UNIX sockets made outside their Landlock domain, for good. Fails where
/// Landlock is absent, off or blocked, or too old for scopes (Unsupported).
pub fn scope_abstract_unix_sockets() -> io::Result<()> {
    needs(SCOPE_ABI, "scopes")?;
    restrict(RulesetAttr { handled_access_fs: 0, handled_access_net: 0, scoped: SCOPE_ABSTRACT_UNIX_SOCKET })
}
