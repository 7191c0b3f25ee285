//! Seccomp filters with a user-notification listener, and the listener's ioctls.
//!
//! The filter program itself is built elsewhere (it is policy); this module only
//! installs it and speaks the listener protocol.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// but those in `except`: calls a crashed daemon received and never answered. Calls
    /// not yet received are left alone (the kernel refuses an answer to those). Returns
    /// the ids answered.
    pub fn answer_orphans(&self, last: u64, span: u64, except: &[u64], errno: i32) -> Vec<u64> {
        (0..=2 * span)
            .map(|i| last.wrapping_sub(span).wrapping_add(i))
            .filter(|id| !except.contains(id) && self.id_valid(*id) && self.fail(*id, errno).is_ok())
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
/// the last id received and the engine's note, then the helpers' slots.
const HEADER_LEN: usize = std::mem::size_of::<libc::seccomp_notif>() + 16;

/// A helper's slot, in words: the call's id (0: a free slot), its caller, number and
/// architecture, six arguments, the note.
const SLOT_WORDS: usize = 10;

/// The call an engine has in hand, kept in a small file mapped in memory, so that a
/// daemon restarted after a crash can find the calls its predecessor received but
/// never answered (ids are consecutive, and such a call stays pending, its caller
/// blocked, until answered) and finish the ones it was carrying out: the call itself,
/// and a note the engine adds on the way (what it already did, see `Kernel::note`).
/// Calls handed to helper threads (answered later, while the engine receives the next
/// ones) are kept in slots of their own, one per helper, until the helper is done.
///
/// The kernel writes the notification straight into the mapping (RECV's buffer is the
/// mapping), so a daemon killed at any point after RECV took a call leaves it recorded:
/// a SIGKILL takes effect on the way back to user space, after the copy. A call is put
/// in a helper's slot before the engine receives the next one.
pub struct InFlight {
    map: *mut u8,
    len: usize,
    slots: usize,
}

// SAFETY: the mapping is private to this value; the notification is only read and
// written through volatile copies by the one engine thread that receives, and the
// words after it are only accessed as AtomicU64 (see `word`), so moving it or sharing
// it between threads cannot race.
unsafe impl Send for InFlight {}
// SAFETY: as for Send.
unsafe impl Sync for InFlight {}

/// A call recorded in a helper's slot (see [`InFlight::hand_over`]); the slot is freed
/// when this is dropped.
pub struct Handed {
    in_flight: Arc<InFlight>,
    slot: usize,
}

impl Drop for Handed {
    fn drop(&mut self) {
        self.in_flight.slot_word(self.slot, 0).store(0, Ordering::Release);
    }
}

impl InFlight {
    /// Maps `path` (created, sized for `slots` helpers' calls) shared.
    pub fn open(path: &std::path::Path, slots: usize) -> io::Result<InFlight> {
        let len = HEADER_LEN + slots * SLOT_WORDS * 8;
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        f.set_len(len as u64)?;
        // SAFETY: mapping `len` bytes of a file we just sized to that, shared,
        // read-write; the kernel checks the fd and the length.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(InFlight { map: p.cast(), len, slots })
    }

    fn notif(&self) -> *mut libc::seccomp_notif {
        self.map.cast()
    }

    /// The `i`th word after the notification: 0 is the last id received, 1 the note,
    /// then the slots'.
    fn word(&self, i: usize) -> &AtomicU64 {
        let at = std::mem::size_of::<libc::seccomp_notif>() + i * 8;
        assert!(at + 8 <= self.len);
        // SAFETY: the word is mapped (checked just above), 8-byte aligned (the mapping
        // is page-aligned and the notification's size a multiple of 8) and lives as
        // long as `self`; AtomicU64 has the size and alignment of u64.
        unsafe { AtomicU64::from_ptr(self.map.add(at).cast::<u64>()) }
    }

    fn slot_word(&self, slot: usize, i: usize) -> &AtomicU64 {
        assert!(slot < self.slots && i < SLOT_WORDS);
        self.word(2 + slot * SLOT_WORDS + i)
    }

    /// Receives the app's next call into the record (its note cleared). ENOENT means
    /// the caller went away before we took it.
    pub fn receive(&self, listener: &Listener) -> io::Result<Notification> {
        self.word(1).store(0, Ordering::Release);
        // SAFETY: `notif` points at the mapped, aligned space for one seccomp_notif;
        // RECV wants it zeroed and writes one there.
        let n = unsafe {
            std::ptr::write_volatile(self.notif(), std::mem::zeroed());
            cvt(libc::ioctl(listener.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, self.notif()))?;
            std::ptr::read_volatile(self.notif())
        };
        self.word(0).store(n.id, Ordering::Release);
        Ok(Notification { id: n.id, pid: n.pid as i32, nr: n.data.nr, arch: n.data.arch, args: n.data.args })
    }

    /// Adds what a daemon taking over would need to finish the call in hand.
    pub fn note(&self, value: u64) {
        self.word(1).store(value, Ordering::Release);
    }

    /// The id of the last call received (0: none yet).
    pub fn last(&self) -> u64 {
        self.held().map_or_else(|| self.word(0).load(Ordering::Acquire), |(n, _)| n.id)
    }

    /// The call in hand, if any, and its note.
    pub fn held(&self) -> Option<(Notification, u64)> {
        // SAFETY: reads one seccomp_notif from the mapped, aligned space for it.
        let n = unsafe { std::ptr::read_volatile(self.notif()) };
        (n.id != 0).then(|| {
            let call =
                Notification { id: n.id, pid: n.pid as i32, nr: n.data.nr, arch: n.data.arch, args: n.data.args };
            (call, self.word(1).load(Ordering::Acquire))
        })
    }

    /// Records `call`, handed to a helper thread, with its note, until the [`Handed`]
    /// returned is dropped; None when every slot is taken. Only the engine's thread
    /// hands calls over (helpers only free their slots).
    pub fn hand_over(self: &Arc<Self>, call: &Notification, note: u64) -> Option<Handed> {
        let slot = (0..self.slots).find(|&s| self.slot_word(s, 0).load(Ordering::Acquire) == 0)?;
        let words = [call.pid as u32 as u64, u64::from(call.nr as u32) | u64::from(call.arch) << 32];
        for (i, w) in words.iter().chain(&call.args).chain([&note]).enumerate() {
            self.slot_word(slot, i + 1).store(*w, Ordering::Relaxed);
        }
        // Published last: a slot with an id is whole.
        self.slot_word(slot, 0).store(call.id, Ordering::Release);
        Some(Handed { in_flight: Arc::clone(self), slot })
    }

    /// The calls helpers held, and their notes; their slots are freed (the calls are
    /// this daemon's to finish now).
    pub fn take_handed(&self) -> Vec<(Notification, u64)> {
        (0..self.slots)
            .filter_map(|s| {
                let id = self.slot_word(s, 0).swap(0, Ordering::AcqRel);
                let w = |i| self.slot_word(s, i).load(Ordering::Relaxed);
                let mut args = [0; 6];
                args.iter_mut().enumerate().for_each(|(i, a)| *a = w(3 + i));
                let call =
                    Notification { id, pid: w(1) as i32, nr: w(2) as u32 as i32, arch: (w(2) >> 32) as u32, args };
                (id != 0).then_some((call, w(9)))
            })
            .collect()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // SAFETY: unmapping the bytes mapped in `open`, once.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64) -> Notification {
        Notification { id, pid: 4242, nr: libc::SYS_connect as i32, arch: 0xc000_003e, args: [3, 0x7ff0, 16, 0, 0, id] }
    }

    #[test]
    fn calls_handed_to_helpers_are_kept_until_done_and_taken_by_the_next_daemon() {
        let dir = std::env::temp_dir().join(format!("ax-inflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app");
        let _ = std::fs::remove_file(&path);
        let rec = Arc::new(InFlight::open(&path, 2).unwrap());
        let first = rec.hand_over(&call(7), 1 << 33).unwrap();
        let second = rec.hand_over(&call(9), 0).unwrap();
        assert!(rec.hand_over(&call(11), 0).is_none(), "two slots");
        drop(first);
        let third = rec.hand_over(&call(11), 5).unwrap();
        // The daemon dies with two helpers busy: the next one maps the same file.
        std::mem::forget((second, third));
        drop(rec);
        let next = InFlight::open(&path, 2).unwrap();
        let mut taken: Vec<(u64, u64, [u64; 6], i32, i32, u32)> =
            next.take_handed().iter().map(|(n, note)| (n.id, *note, n.args, n.pid, n.nr, n.arch)).collect();
        taken.sort();
        let want = |id, note| (id, note, call(id).args, 4242, libc::SYS_connect as i32, 0xc000_003e);
        assert_eq!(taken, vec![want(9, 0), want(11, 5)]);
        assert!(next.take_handed().is_empty(), "taken once");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
