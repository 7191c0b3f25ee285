//! epoll(7) and eventfd(2): what the relays' event loops wait on. Nothing here decides
//! what to wait for; the loops do.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::cvt;

/// Readiness bits, as epoll_wait reports them and epoll_ctl takes them.
pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;
pub const RDHUP: u32 = libc::EPOLLRDHUP as u32;
pub const HUP: u32 = libc::EPOLLHUP as u32;
pub const ERR: u32 = libc::EPOLLERR as u32;
/// Edge-triggered: reported when readiness arrives, not while it lasts.
pub const ET: u32 = libc::EPOLLET as u32;
/// Of several epoll instances waiting on one descriptor, wake one (for a listener
/// shared by several loops).
pub const EXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

/// An epoll instance.
pub struct Epoll(OwnedFd);

/// What one epoll_wait returned (the default has no room: for swapping out).
#[derive(Default)]
pub struct Events(Vec<libc::epoll_event>);

impl Events {
    /// Room for `n` events per wait.
    pub fn with_capacity(n: usize) -> Events {
        Events(Vec::with_capacity(n.max(1)))
    }

    /// (token, readiness bits) of each event.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.0.iter().map(|e| (e.u64, e.events))
    }
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the kernel returned a new descriptor that we now own.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        let mut e = libc::epoll_event { events, u64: token };
        // SAFETY: `e` is a valid epoll_event for the duration of the call (the kernel
        // copies it); both descriptors are borrowed, so open.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd.as_raw_fd(), &mut e) })?;
        Ok(())
    }

    /// Watches `fd` for `events`; `token` comes back with each of its events.
    pub fn add(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Stops watching `fd` (closing its last descriptor does too).
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (-1: for good) for events, replacing `out`'s; an
    /// interrupted wait returns no events.
    pub fn wait(&self, out: &mut Events, timeout_ms: i32) -> io::Result<()> {
        out.0.clear();
        let room = out.0.capacity().min(i32::MAX as usize) as i32;
        // SAFETY: the buffer has room for `room` events; the kernel writes at most that
        // many and returns how many.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), out.0.as_mut_ptr(), room, timeout_ms) };
        match cvt(n) {
            // SAFETY: the kernel initialised the first `n` (<= capacity) events.
            Ok(n) => unsafe { out.0.set_len(n as usize) },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An eventfd: a counter other threads bump to wake a loop that waits on it.
pub struct Waker(OwnedFd);

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes integers and returns a new descriptor or -1.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: the kernel returned a new descriptor that we now own.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the counter readable (a wait on it returns).
    pub fn wake(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes the 8 bytes of `one`, which outlives the call.
        cvt(unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) })?;
        Ok(())
    }

    /// Resets the counter (after a wake-up).
    pub fn reset(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`; EAGAIN (already reset) is fine.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_readable_socket_and_a_wake_up_come_back_with_their_tokens() {
        let ep = Epoll::new().unwrap();
        let waker = Waker::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        ep.add(b.as_fd(), IN | ET, 7).unwrap();
        ep.add(waker.as_fd(), IN, 9).unwrap();
        let mut ev = Events::with_capacity(8);
        ep.wait(&mut ev, 0).unwrap();
        assert_eq!(ev.iter().count(), 0, "nothing is ready yet");
        a.write_all(b"x").unwrap();
        waker.wake().unwrap();
        ep.wait(&mut ev, 1000).unwrap();
        let mut got: Vec<(u64, u32)> = ev.iter().map(|(t, e)| (t, e & IN)).collect();
        got.sort_unstable();
        assert_eq!(got, [(7, IN), (9, IN)]);
        // Edge-triggered: the byte still unread is not reported again; the reset
        // waker is not either.
        waker.reset();
        ep.wait(&mut ev, 0).unwrap();
        assert_eq!(ev.iter().count(), 0);
        ep.modify(b.as_fd(), OUT, 8).unwrap();
        ep.wait(&mut ev, 1000).unwrap();
        assert_eq!(ev.iter().map(|(t, _)| t).collect::<Vec<_>>(), [8]);
        ep.delete(b.as_fd()).unwrap();
        ep.wait(&mut ev, 0).unwrap();
        assert_eq!(ev.iter().count(), 0);
    }
}
