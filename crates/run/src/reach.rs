//! Reaching the daemon's run socket, waiting (bounded) while it restarts: a missing
//! socket or one nobody listens on is a daemon between two lives; any other failure is
//! final at once. Time comes through [`Clock`], so the wait is tested without sleeping.

use std::io;
use std::time::{Duration, Instant};

/// How long before the wait says so on stderr (once).
pub const NOTICE_AFTER: Duration = Duration::from_secs(1);
/// How often the socket is tried again.
const EVERY: Duration = Duration::from_millis(100);

pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&mut self, d: Duration);
}

/// The real clock.
pub struct Wall;

impl Clock for Wall {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// Whether a failed connect may be a daemon restarting: its socket not there yet, or
/// left by a daemon that is gone.
fn restarting(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
}

/// `connect`'s first success, trying again for up to `bound` while the daemon seems to
/// be restarting; `notice` is called once, after [`NOTICE_AFTER`] of waiting. After the
/// bound (or at once for another failure), the last error.
pub fn connect_waiting<T>(
    mut connect: impl FnMut() -> io::Result<T>,
    bound: Duration,
    clock: &mut impl Clock,
    mut notice: impl FnMut(&io::Error),
) -> io::Result<T> {
    let start = clock.now();
    let mut noticed = false;
    loop {
        let err = match connect() {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let waited = clock.now().saturating_duration_since(start);
        if !restarting(&err) || waited >= bound {
            return Err(err);
        }
        if !noticed && waited >= NOTICE_AFTER {
            notice(&err);
            noticed = true;
        }
        clock.sleep(EVERY.min(bound - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when slept on.
    struct Fake(Instant);

    impl Clock for Fake {
        fn now(&self) -> Instant {
            self.0
        }
        fn sleep(&mut self, d: Duration) {
            self.0 += d;
        }
    }

    fn refused() -> io::Error {
        io::Error::from_raw_os_error(libc::ECONNREFUSED)
    }

    fn missing() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOENT)
    }

    /// Runs the wait over `answers` (then successes); returns its result, the fake time
    /// it took, the connects tried and the notices given.
    fn wait(answers: Vec<io::Error>, bound: Duration) -> (io::Result<()>, Duration, usize, usize) {
        let mut answers = answers.into_iter();
        let (mut tries, mut notices) = (0, 0);
        let mut clock = Fake(Instant::now());
        let start = clock.0;
        let r = connect_waiting(
            || {
                tries += 1;
                answers.next().map_or(Ok(()), Err)
            },
            bound,
            &mut clock,
            |_| notices += 1,
        );
        (r, clock.0 - start, tries, notices)
    }

    #[test]
    fn a_daemon_that_answers_at_once_is_not_waited_for() {
        let (r, took, tries, notices) = wait(vec![], Duration::from_secs(30));
        assert!(r.is_ok());
        assert_eq!((took, tries, notices), (Duration::ZERO, 1, 0));
    }

    #[test]
    fn a_restarting_daemon_is_waited_for_and_the_wait_said_once_after_a_second() {
        // Half a second of a missing socket, then refused: no notice yet.
        let mut answers: Vec<io::Error> = (0..5).map(|_| missing()).collect();
        answers.push(refused());
        let (r, took, tries, notices) = wait(answers, Duration::from_secs(30));
        assert!(r.is_ok());
        assert_eq!((took, tries, notices), (Duration::from_millis(600), 7, 0));
        // Five seconds: one notice, and the connect that succeeds ends the wait.
        let (r, took, tries, notices) = wait((0..50).map(|_| refused()).collect(), Duration::from_secs(30));
        assert!(r.is_ok());
        assert_eq!((took, tries, notices), (Duration::from_secs(5), 51, 1));
    }

    #[test]
    fn after_the_bound_the_last_error_and_other_errors_at_once() {
        let (r, took, tries, notices) = wait((0..1000).map(|_| refused()).collect(), Duration::from_millis(2050));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ECONNREFUSED));
        assert_eq!((took, tries, notices), (Duration::from_millis(2050), 22, 1));
        // A bound of zero: the first failure.
        let (r, took, tries, notices) = wait(vec![missing()], Duration::ZERO);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        assert_eq!((took, tries, notices), (Duration::ZERO, 1, 0));
        // Permission denied is not a restart.
        let (r, _, tries, notices) =
            wait(vec![io::Error::from_raw_os_error(libc::EACCES), refused()], Duration::from_secs(30));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EACCES));
        assert_eq!((tries, notices), (1, 0));
    }
}
