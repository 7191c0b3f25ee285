//! Seccomp filters with a user-notification listener, and the listener's ioctls.
//!
//! The filter program itself is built elsewhere (it is policy); this module only
//! installs it and speaks the listener protocol.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::cvt;

pub use libc::sock_filter;

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (kernel 6.6+): wake the waiting thread on the
/// notifying CPU. Not in libc yet.
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;

/// One trapped system call, as the kernel reports it.
#[derive(Debug, Clone, Copy)]
pub struct Notification {
    pub id: u64,
    /// Thread id of the caller, in the receiver's pid namespace.
    pub pid: i32,
    pub nr: i32,
    pub arch: u32,
    pub args: [u64; 6],
}

/// Sets no_new_privs and installs `prog` on the calling thread with a new listener,
/// using `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` so that a signal cannot make the
/// kernel re-issue a call the listener has already received.
pub fn install_filter(prog: &[sock_filter]) -> io::Result<OwnedFd> {
    crate::proc::set_no_new_privs()?;
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = libc::sock_fprog { len, filter: prog.as_ptr() as *mut sock_filter };
    let flags = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the
    // program before returning.
    let fd = cvt(unsafe {
        libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &fprog as *const libc::sock_fprog)
    })?;
    // SAFETY: on success the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What a waiting listener saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// A notification is pending.
    Notification,
    /// Every task that used the filter is gone.
    Hangup,
}

/// The daemon's end of a seccomp filter.
#[derive(Debug)]
pub struct Listener(OwnedFd);

impl Listener {
    pub fn new(fd: OwnedFd) -> Self {
        Listener(fd)
    }

    /// Asks the kernel to wake the receiver on the notifying CPU (about ten times
    /// faster round trips than the default cross-CPU wake-up).
    pub fn set_sync_wakeup(&self) -> io::Result<()> {
        // SAFETY: SET_FLAGS takes its flags by value; no memory is passed.
        cvt(unsafe {
            libc::ioctl(self.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
        })?;
        Ok(())
    }

    /// Waits until a notification is pending or every user of the filter is gone.
    /// (A blocked RECV would not return on the latter; poll shares RECV's wait queue,
    /// so the synchronous wake-up still applies.)
    pub fn wait(&self) -> io::Result<Ready> {
        let mut p = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: `p` is one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut p, 1, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if p.revents & libc::POLLIN != 0 {
                return Ok(Ready::Notification);
            }
            if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                return Ok(Ready::Hangup);
            }
        }
    }

    /// Receives one notification. ENOENT means the caller went away before we took it.
    pub fn recv(&self) -> io::Result<Notification> {
        // SAFETY: seccomp_notif is plain data; the kernel requires it zeroed.
        let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV writes one seccomp_notif into `n`, which is large enough.
        cvt(unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) })?;
        Ok(Notification { id: n.id, pid: n.pid as i32, nr: n.data.nr, arch: n.data.arch, args: n.data.args })
    }

    /// True while the notification is still waiting for an answer: its thread has not
    /// died or been interrupted. Checked after reading the app's memory, so a pid that
    /// was recycled meanwhile cannot make us act for another process.
    pub fn id_valid(&self, id: u64) -> bool {
        // SAFETY: ID_VALID reads one u64 from the pointer we pass.
        unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0 }
    }

    fn send(&self, id: u64, val: i64, errno: i32, flags: u32) -> io::Result<()> {
        let mut resp = libc::seccomp_notif_resp { id, val, error: -errno, flags };
        // SAFETY: SEND reads one seccomp_notif_resp from the pointer we pass.
        cvt(unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) })?;
        Ok(())
    }

    /// Answers with `errno` every call still pending around id `last` (within `span`):
    /// calls a crashed daemon received and never answered. Calls not yet received are
    /// left alone (the kernel refuses an answer to those). Returns how many were answered.
    pub fn answer_orphans(&self, last: u64, span: u64, errno: i32) -> usize {
        (0..=2 * span)
            .map(|i| last.wrapping_sub(span).wrapping_add(i))
            .filter(|id| self.id_valid(*id) && self.fail(*id, errno).is_ok())
            .count()
    }

    /// Answers the call with a return value.
    pub fn reply(&self, id: u64, val: i64) -> io::Result<()> {
        self.send(id, val, 0, 0)
    }

    /// Answers the call with an error number.
    pub fn fail(&self, id: u64, errno: i32) -> io::Result<()> {
        self.send(id, 0, errno, 0)
    }

    /// Lets the kernel run the call as the app made it. Only sound where the outcome
    /// cannot depend on memory the app might change meanwhile, or cannot matter.
    pub fn proceed(&self, id: u64) -> io::Result<()> {
        self.send(id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32)
    }

    /// Installs `fd` in the caller. With `at`, it replaces that descriptor number;
    /// otherwise the kernel picks the lowest free one. With `answer`, the same ioctl
    /// also answers the call with the new number (no separate reply).
    pub fn add_fd(
        &self,
        id: u64,
        fd: BorrowedFd<'_>,
        at: Option<RawFd>,
        cloexec: bool,
        answer: bool,
    ) -> io::Result<RawFd> {
        let mut flags = 0;
        if at.is_some() {
            flags |= libc::SECCOMP_ADDFD_FLAG_SETFD;
        }
        if answer {
            flags |= libc::SECCOMP_ADDFD_FLAG_SEND;
        }
        let mut addfd = libc::seccomp_notif_addfd {
            id,
            flags: flags as u32,
            srcfd: fd.as_raw_fd() as u32,
            newfd: at.unwrap_or(0) as u32,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: ADDFD reads one seccomp_notif_addfd from the pointer we pass.
        let r = cvt(unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd) })?;
        Ok(r)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The id of the last notification an engine received, kept in a small file mapped in
/// memory (a plain store per call, no system call), so that a daemon restarted after a
/// crash can find the calls its predecessor received but never answered: ids are
/// consecutive, and such a call stays pending (and its caller blocked) until answered.
pub struct LastId {
    map: *mut u64,
}

// SAFETY: the mapping is private to this value and only ever accessed as one aligned
// AtomicU64 (see `cell`), so moving it or sharing it between threads cannot race.
unsafe impl Send for LastId {}
// SAFETY: as for Send: every access is an atomic operation on the mapped word.
unsafe impl Sync for LastId {}

impl LastId {
    /// Maps `path` (created, 8 bytes) shared.
    pub fn open(path: &std::path::Path) -> io::Result<LastId> {
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        f.set_len(8)?;
        // SAFETY: mapping 8 bytes of a file we just sized to 8 bytes, shared, read-write;
        // the kernel checks the fd and the length.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), 8, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(LastId { map: p.cast() })
    }

    fn cell(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: `map` points at 8 mapped, page-aligned bytes that live as long as
        // `self`; AtomicU64 has the size and alignment of u64.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.map) }
    }

    pub fn set(&self, id: u64) {
        self.cell().store(id, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.cell().load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for LastId {
    fn drop(&mut self) {
        // SAFETY: unmapping the 8 bytes mapped in `open`, once.
        unsafe { libc::munmap(self.map.cast(), 8) };
    }
}
