//! Where the daemon puts the datagram sockets it hands an app: at descriptor numbers in
//! [`DATAGRAM_FDS`]. The seccomp filter sees only registers, so this range is how it
//! tells a send or receive that may need the daemon (a UDP socket's: the address decides
//! where the datagram goes, and what source the app is shown) from one that never does
//! (a TCP socket's: the kernel ignores the address). `ax run`'s filter traps
//! sendmsg/recvmsg, and sendto/recvfrom with an address, only on these numbers; TCP
//! sockets get the app's lowest free number, like any descriptor, and run natively.
//!
//! The range is a convenience for the app, not a defence. A datagram socket the app
//! moves out of it (dup, dup2, fcntl F_DUPFD, SCM_RIGHTS, pidfd_getfd) is simply no
//! longer translated: its addressed sends are refused by the socket guard (EPERM: only
//! the daemon's threads may send a marked socket's datagrams where they like), its
//! connect is still trapped, and its receives show the backends' host addresses. A racing
//! app could reach each of those before (change its msghdr after the daemon read it and
//! let the call continue natively), so leaving the range gives it nothing it had not. A
//! TCP socket moved into the range only costs the app a trap per send and receive.
//! Where the guard cannot be installed (no BPF), the range does not limit the traps:
//! see [`crate::policy::SocketGuard::Absent`].

use std::ops::Range;
use std::os::fd::RawFd;

use ax_core::Errno;

/// Below FD_SETSIZE (1024), so select() works on them, and at the top of it, away from
/// the lowest free numbers an app's own descriptors take: an app meets the range only
/// once it holds 768 descriptors of its own (then its own just land in the range and
/// cost it traps). 256 datagram sockets per app at once.
pub const DATAGRAM_FDS: Range<u32> = 768..1024;

/// The open-file soft limit `ax run` must give an app for the whole range to be
/// usable (the kernel refuses a descriptor number at or past the limit).
pub const NEEDED_FD_LIMIT: u64 = DATAGRAM_FDS.end as u64;

/// The app's hard open-file limit leaves no room for the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the hard limit on open files is {hard}, but ax keeps an app's UDP sockets at descriptors {}-{}: \
     raise it to at least {NEEDED_FD_LIMIT} (ulimit -Hn {NEEDED_FD_LIMIT}) before ax run",
    DATAGRAM_FDS.start,
    DATAGRAM_FDS.end - 1
)]
pub struct FdLimitTooLow {
    pub hard: u64,
}

/// The soft open-file limit to start an app with, given the caller's: raised to
/// [`NEEDED_FD_LIMIT`] when lower (the common Linux default is that value), else left
/// alone (None).
pub fn soft_fd_limit(soft: u64, hard: u64) -> Result<Option<u64>, FdLimitTooLow> {
    if soft >= NEEDED_FD_LIMIT {
        Ok(None)
    } else if hard >= NEEDED_FD_LIMIT {
        Ok(Some(NEEDED_FD_LIMIT))
    } else {
        Err(FdLimitTooLow { hard })
    }
}

/// The number a new datagram socket goes to: the highest free one of the range below
/// `limit` (the app's soft open-file limit), asking `taken` about each from the top.
/// None when every such number is taken. Numbers are checked one at a time; one taken
/// by another thread of the app between the check and the install is replaced (closed),
/// which harms only the app that raced its own descriptor table.
pub fn datagram_slot(limit: u64, mut taken: impl FnMut(RawFd) -> Result<bool, Errno>) -> Result<Option<RawFd>, Errno> {
    let top = DATAGRAM_FDS.end.min(u32::try_from(limit).unwrap_or(u32::MAX));
    for fd in (DATAGRAM_FDS.start..top).rev() {
        if !taken(fd as RawFd)? {
            return Ok(Some(fd as RawFd));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: RawFd = DATAGRAM_FDS.start as RawFd;
    const HI: RawFd = DATAGRAM_FDS.end as RawFd;

    fn slot(limit: u64, taken: &[RawFd]) -> Option<RawFd> {
        let mut asked = Vec::new();
        let got = datagram_slot(limit, |fd| {
            asked.push(fd);
            Ok(taken.contains(&fd))
        })
        .unwrap();
        assert!(asked.iter().all(|fd| (LO..HI).contains(fd) && (*fd as u64) < limit), "asked about {asked:?}");
        got
    }

    #[test]
    fn the_range_fits_select_and_the_usual_limit() {
        assert!(DATAGRAM_FDS.start > 3 && DATAGRAM_FDS.end <= libc::FD_SETSIZE as u32);
        assert_eq!(NEEDED_FD_LIMIT, 1024);
    }

    #[test]
    fn slots_are_taken_from_the_top_and_never_outside_the_range() {
        assert_eq!(slot(1024, &[]), Some(HI - 1));
        assert_eq!(slot(1 << 20, &[]), Some(HI - 1), "a higher limit does not move the range");
        assert_eq!(slot(u64::MAX, &[]), Some(HI - 1));
        assert_eq!(slot(1024, &[HI - 1, HI - 2]), Some(HI - 3));
        let all_but_lo: Vec<RawFd> = (LO + 1..HI).collect();
        assert_eq!(slot(1024, &all_but_lo), Some(LO));
        let all: Vec<RawFd> = (LO..HI).collect();
        assert_eq!(slot(1 << 20, &all), None, "lo-1 and hi are never used");
    }

    #[test]
    fn slots_stay_below_the_apps_limit() {
        assert_eq!(slot(900, &[]), Some(899));
        assert_eq!(slot(LO as u64 + 1, &[]), Some(LO));
        assert_eq!(slot(LO as u64, &[]), None);
        assert_eq!(slot(0, &[]), None);
    }

    #[test]
    fn a_failed_check_fails_the_search() {
        assert_eq!(datagram_slot(1024, |_| Err(libc::ESRCH)), Err(libc::ESRCH));
    }

    #[test]
    fn ax_run_raises_a_low_soft_limit_or_says_why_it_cannot() {
        assert_eq!(soft_fd_limit(1024, 1024), Ok(None));
        assert_eq!(soft_fd_limit(20000, 20000), Ok(None));
        assert_eq!(soft_fd_limit(256, 4096), Ok(Some(1024)));
        assert_eq!(soft_fd_limit(256, 1024), Ok(Some(1024)));
        assert_eq!(soft_fd_limit(256, 1023), Err(FdLimitTooLow { hard: 1023 }));
        assert_eq!(
            FdLimitTooLow { hard: 512 }.to_string(),
            "the hard limit on open files is 512, but ax keeps an app's UDP sockets at descriptors 768-1023: \
             raise it to at least 1024 (ulimit -Hn 1024) before ax run"
        );
    }
}
