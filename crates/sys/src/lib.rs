//! Every direct call into the kernel that ax makes lives here, behind small safe
//! functions: seccomp filters and their notification listeners, pidfds, reads and
//! writes of an app's memory, sockets by raw fd, namespaces, sock_diag, fd passing and
//! process control. Nothing here decides anything; the callers hold the policy.
//!
//! Each `unsafe` block says why it is sound. The rest of the workspace forbids `unsafe`.

pub mod alloc;
pub mod bpf;
pub mod epoll;
pub mod kernel;
pub mod landlock;
pub mod netlink;
pub mod ns;
pub mod pidfd;
pub mod pool;
pub mod proc;
pub mod scm;
pub mod seccomp;
pub mod sock;
pub mod tun;

use std::io;

/// `bytes` as a C string; a NUL inside is EINVAL, as the kernel would say of a bad name.
pub(crate) fn c_string(bytes: impl Into<Vec<u8>>) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Turns a libc-style return value (negative on error, errno set) into a `Result`.
pub(crate) fn cvt<T: Default + PartialOrd + Copy>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
