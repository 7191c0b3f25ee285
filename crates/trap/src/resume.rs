//! A daemon that dies (`kill -9`, a crash) while it carries out a trapped call leaves
//! that call pending: its caller stays blocked in the kernel, the filter's listener
//! alive in `ax run`, until the next daemon answers it. The engine records the call it
//! has in hand (number and arguments, `ax_sys::seccomp::InFlight`) and notes what it
//! did that cannot be seen from outside; so does each helper thread for the call it
//! answers later (a blocking connect, an egress handshake, a blocking receive), while
//! the engine goes on with the app's other calls. The next daemon finishes each such
//! call where doing it again is safe, and answers EINTR only where it is not.
//!
//! - `socket()`: the note is the new socket's inode. Found in the caller's descriptor
//!   table, it was installed and the call is answered with its number; otherwise
//!   nothing reached the app (the descriptor is installed by itself, the answer given
//!   apart, see `Listener::add_fd`) and the call is made again.
//! - `connect()` (trapped under the user driver): a blocking socket's flags are put
//!   back (the engine makes it non-blocking while it connects; the note holds them). A
//!   handshake the previous daemon started is answered as the kernel would have
//!   answered it: connected, 0; under way, EINPROGRESS on a non-blocking socket, its
//!   outcome on a blocking one. A socket that never connected is connected now. A
//!   connect through a gateway never touches the app's socket until its handshake is
//!   done (a fresh socket takes its place then, see `egress`): untouched, it is made
//!   again; replaced, it is connected.
//! - `getsockname()`/`getpeername()` only read: made again.
//! - Everything else (bind and listen, which change the tables; datagram sends, which
//!   may have left): EINTR, the kernel's word for a call that was interrupted.

use ax_core::plan::{Kind, Progress};
use ax_core::{Errno, Proto};
use ax_sys::kernel::Kernel;
use ax_sys::seccomp::Notification;
use tracing::info;

use crate::call::Call;
use crate::engine::{so_error, Answer, Engine};
use crate::Node;

/// A connect's note: the socket's file flags, to be put back, marked so that flags of 0
/// are told apart from no note.
const RESTORE_FLAGS: u64 = 1 << 32;

/// The note for a blocking socket made non-blocking while the engine connects it.
pub(crate) fn restore_flags(flags: i32) -> u64 {
    RESTORE_FLAGS | u64::from(flags as u32)
}

impl<K: Kernel, N: Node> Engine<K, N> {
    /// Finishes `n`, the call a previous daemon had in hand when it died, with what it
    /// noted on the way (0: nothing).
    pub fn resume(&self, n: &Notification, note: u64) {
        if !self.k.id_valid(n.id) {
            return;
        }
        let call = Call::decode(n);
        info!(app = %self.app, nr = n.nr, "finishing the call the previous daemon had in hand");
        let done = match call {
            Call::Socket { .. } => match (note != 0).then(|| self.k.socket_fd(n.pid, note)).flatten() {
                Some(fd) => Ok(Answer::Value(fd.into())),
                None => return self.handle(n),
            },
            Call::Connect { fd, .. } => match self.resume_connect(n, fd, note) {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => return self.handle(n),
                Err(e) => Err(e),
            },
            Call::Name { .. } => return self.handle(n),
            _ => Err(libc::EINTR),
        };
        self.deliver(n, done);
    }

    /// How a connect the previous daemon may have started ends; None where it never
    /// started (or cannot be told apart from that): the call is then made again.
    fn resume_connect(&self, n: &Notification, fd: i32, note: u64) -> Result<Option<Answer>, Errno> {
        let (s, kind) = self.classify(n, fd)?;
        let mut flags = self.k.file_flags(&s)?;
        if note & RESTORE_FLAGS != 0 {
            flags = note as u32 as i32;
            self.k.set_file_flags(&s, flags)?;
        }
        let Kind::Host(_, Proto::Tcp) = kind else { return Ok(None) };
        Ok(match self.progress(&s)? {
            Progress::Busy => Some(Answer::Value(0)),
            Progress::Connecting if flags & libc::O_NONBLOCK != 0 => return Err(libc::EINPROGRESS),
            Progress::Connecting => Some(self.finish_later(n, s, libc::EINPROGRESS)?),
            Progress::Idle => {
                // A refused attempt's error is the previous daemon's, not the app's.
                let _ = so_error(&*self.k, &s);
                None
            }
        })
    }
}
