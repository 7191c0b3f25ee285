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

    /// Answers with `errno` every call still pending around id `last` (within `span`)
    /// but `except`: calls a crashed daemon received and never answered. Calls not yet
    /// received are left alone (the kernel refuses an answer to those). Returns the ids
    /// answered.
    pub fn answer_orphans(&self, last: u64, span: u64, except: Option<u64>, errno: i32) -> Vec<u64> {
        (0..=2 * span)
            .map(|i| last.wrapping_sub(span).wrapping_add(i))
            .filter(|id| Some(*id) != except && self.id_valid(*id) && self.fail(*id, errno).is_ok())
            .collect()
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

    /// Installs `fd` in the caller; the call stays pending, to be answered with the
    /// number. With `at`, it replaces that descriptor number; otherwise the kernel picks
    /// the lowest free one.
    ///
    /// ADDFD's SEND flag (install and answer in one) is never used: when the ioctl is
    /// interrupted (the daemon killed, a signal) before the caller's thread took the
    /// descriptor, the kernel drops the descriptor but leaves the call marked answered
    /// with nothing, and the app's socket() returns 0 (Linux 6.18, kernel/seccomp.c,
    /// seccomp_notify_addfd): the app then takes its stdin for a socket. Without it,
    /// the call stays pending, for this daemon's reply or the next one's.
    pub fn add_fd(&self, id: u64, fd: BorrowedFd<'_>, at: Option<RawFd>, cloexec: bool) -> io::Result<RawFd> {
        let flags = if at.is_some() { libc::SECCOMP_ADDFD_FLAG_SETFD } else { 0 };
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

/// An [`InFlight`] file: the kernel's `struct seccomp_notif` as RECV wrote it, then
/// the last id received and the engine's note.
const IN_FLIGHT_LEN: usize = std::mem::size_of::<libc::seccomp_notif>() + 16;

/// The call an engine has in hand, kept in a small file mapped in memory, so that a
/// daemon restarted after a crash can find the calls its predecessor received but
/// never answered (ids are consecutive, and such a call stays pending, its caller
/// blocked, until answered) and finish the one it was carrying out: the call itself,
/// and a note the engine adds on the way (what it already did, see `Kernel::note`).
///
/// The kernel writes the notification straight into the mapping (RECV's buffer is the
/// mapping), so a daemon killed at any point after RECV took a call leaves it recorded:
/// a SIGKILL takes effect on the way back to user space, after the copy.
pub struct InFlight {
    map: *mut u8,
}

// SAFETY: the mapping is private to this value; the notification is only read and
// written through volatile copies by the one engine thread that receives, and the two
// words after it are only accessed as AtomicU64 (see `word`), so moving it or sharing
// it between threads cannot race.
unsafe impl Send for InFlight {}
// SAFETY: as for Send.
unsafe impl Sync for InFlight {}

impl InFlight {
    /// Maps `path` (created, sized) shared.
    pub fn open(path: &std::path::Path) -> io::Result<InFlight> {
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        f.set_len(IN_FLIGHT_LEN as u64)?;
        // SAFETY: mapping IN_FLIGHT_LEN bytes of a file we just sized to that, shared,
        // read-write; the kernel checks the fd and the length.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                IN_FLIGHT_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(InFlight { map: p.cast() })
    }

    fn notif(&self) -> *mut libc::seccomp_notif {
        self.map.cast()
    }

    /// Word 0 is the last id received, word 1 the note.
    fn word(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < 2);
        // SAFETY: the two words after the notification are mapped, 8-byte aligned (the
        // mapping is page-aligned and the notification's size a multiple of 8) and live
        // as long as `self`; AtomicU64 has the size and alignment of u64.
        unsafe {
            let at = self.map.add(std::mem::size_of::<libc::seccomp_notif>()).cast::<u64>().add(i);
            std::sync::atomic::AtomicU64::from_ptr(at)
        }
    }

    /// Receives the app's next call into the record (its note cleared). ENOENT means
    /// the caller went away before we took it.
    pub fn receive(&self, listener: &Listener) -> io::Result<Notification> {
        self.word(1).store(0, std::sync::atomic::Ordering::Release);
        // SAFETY: `notif` points at the mapped, aligned space for one seccomp_notif;
        // RECV wants it zeroed and writes one there.
        let n = unsafe {
            std::ptr::write_volatile(self.notif(), std::mem::zeroed());
            cvt(libc::ioctl(listener.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, self.notif()))?;
            std::ptr::read_volatile(self.notif())
        };
        self.word(0).store(n.id, std::sync::atomic::Ordering::Release);
        Ok(Notification { id: n.id, pid: n.pid as i32, nr: n.data.nr, arch: n.data.arch, args: n.data.args })
    }

    /// Adds what a daemon taking over would need to finish the call in hand.
    pub fn note(&self, value: u64) {
        self.word(1).store(value, std::sync::atomic::Ordering::Release);
    }

    /// The id of the last call received (0: none yet).
    pub fn last(&self) -> u64 {
        self.held().map_or_else(|| self.word(0).load(std::sync::atomic::Ordering::Acquire), |(n, _)| n.id)
    }

    /// The call in hand, if any, and its note.
    pub fn held(&self) -> Option<(Notification, u64)> {
        // SAFETY: reads one seccomp_notif from the mapped, aligned space for it.
        let n = unsafe { std::ptr::read_volatile(self.notif()) };
        (n.id != 0).then(|| {
            let call =
                Notification { id: n.id, pid: n.pid as i32, nr: n.data.nr, arch: n.data.arch, args: n.data.args };
            (call, self.word(1).load(std::sync::atomic::Ordering::Acquire))
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // SAFETY: unmapping the bytes mapped in `open`, once.
        unsafe { libc::munmap(self.map.cast(), IN_FLIGHT_LEN) };
    }
}
