//! Process file descriptors: a stable handle on one thread, and its file table.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::cvt;

/// A pidfd. Unlike a pid number it can never come to mean another process.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens a pidfd for one thread (not only a thread-group leader), so the trapped
    /// threads of multi-threaded programs can be named.
    pub fn open_thread(tid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
        let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, tid, libc::PIDFD_THREAD) })?;
        // SAFETY: the kernel returned a new descriptor that we now own.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Duplicates descriptor `fd` of the thread's file table into ours (close-on-exec).
    /// The copy shares the open file description: it is the app's socket itself.
    pub fn get_fd(&self, fd: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_getfd takes integers and returns a new fd or -1.
        let r = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.0.as_raw_fd(), fd, 0) })?;
        // SAFETY: the kernel returned a new descriptor that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
