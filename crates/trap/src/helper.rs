//! Helper threads: a call that must wait (a blocking connect or receive, an egress
//! handshake) is answered from a helper thread (one of the app's parked ones, see
//! [`Kernel::spawn`]), so the engine keeps serving the app's other threads. A helper waits in short slices and checks between them that
//! its call is still pending: when the caller is gone (killed, the app exited) it
//! stops within [`SLICE_MS`] and drops what it holds (its copy of the app's socket,
//! and with it the socket's pool port once the app's own descriptor is closed too),
//! answering no one. An app has at most [`HELPERS_PER_APP`] helpers at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ax_core::limits::HELPERS_PER_APP;
use ax_core::Errno;
use ax_sys::kernel::{Kernel, Readiness};
use ax_sys::seccomp::Notification;
use tracing::warn;

use crate::engine::{Answer, Engine};
use crate::Node;

/// The longest a helper waits before checking that its call is still pending: how
/// long it can outlive a caller that is gone.
pub(crate) const SLICE_MS: i32 = 100;

/// How a helper's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    Ready,
    TimedOut,
    /// The call is no longer pending: nobody is waiting for its answer.
    Abandoned,
}

/// Waits up to `timeout_ms` (-1: for ever) for `what` on `s`, as long as call `id` is
/// pending. Time is counted in the slices waited (a wait that times out has lasted its
/// slice), not read from a clock.
pub(crate) fn wait_for_call<K: Kernel>(
    k: &K,
    s: &K::Fd,
    what: Readiness,
    timeout_ms: i32,
    id: u64,
) -> Result<Waited, Errno> {
    let mut left = timeout_ms;
    loop {
        if !k.id_valid(id) {
            return Ok(Waited::Abandoned);
        }
        let slice = if left < 0 { SLICE_MS } else { left.min(SLICE_MS) };
        if k.wait(s, what, slice)? {
            return Ok(Waited::Ready);
        }
        if left >= 0 {
            left -= slice;
            if left == 0 {
                return Ok(Waited::TimedOut);
            }
        }
    }
}

/// How many helpers an app has; each [`Helper`] counts itself out when dropped, whether
/// it ran to the end, gave up, or never started.
#[derive(Default)]
pub(crate) struct Helpers(Arc<AtomicUsize>);

/// One helper's place in its app's count.
pub(crate) struct Helper(Arc<AtomicUsize>);

impl Helpers {
    /// A place for one more helper, unless the app has [`HELPERS_PER_APP`] already.
    fn enlist(&self) -> Option<Helper> {
        let taken = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < HELPERS_PER_APP).then_some(n + 1));
        taken.ok().map(|_| Helper(Arc::clone(&self.0)))
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How often a warning a hostile app could repeat at will is let through.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Lets one warning through per [`WARN_EVERY`], so an app cannot flood the log.
#[derive(Default)]
pub(crate) struct Hush(Mutex<Option<Instant>>);

impl Hush {
    pub(crate) fn speak(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl<K: Kernel, N: Node> Engine<K, N> {
    /// Runs `f` on a helper thread that will answer call `n` later (recorded with
    /// `note` meanwhile, for a next daemon: see [`crate::resume`]); EAGAIN for the app if
    /// it has all the helpers it may have, or no thread can be had (the engine itself
    /// must never die of it).
    pub(crate) fn later(
        &self,
        n: &Notification,
        note: u64,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<Answer, Errno> {
        let Some(helper) = self.helpers.enlist() else {
            if self.hush_helpers.speak() {
                warn!(app = %self.app, "the app has {HELPERS_PER_APP} calls waiting on helper threads, its most; more fail with EAGAIN");
            }
            return Err(libc::EAGAIN);
        };
        let run = move || {
            let _helper = helper;
            f();
        };
        self.k.spawn(n, note, Box::new(run)).map(|()| Answer::Later).map_err(|e| {
            warn!(app = %self.app, "cannot start a helper thread: errno {e}");
            libc::EAGAIN
        })
    }
}
