//! Parked threads that run work handed to them, so that work which must wait (a trapped
//! call answered later) costs a wake-up instead of a new thread. A pool has at most
//! `max` threads; work handed over while all of them are busy waits its turn (its
//! owner bounds how much work it hands over). A thread idle for `idle_for` exits, and
//! every idle one exits once the pool is dropped: a pool nobody uses holds no thread.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    shared: Arc<Shared>,
    name: &'static str,
    max: usize,
    idle_for: Duration,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Threads parked, waiting for work.
    idle: usize,
    /// Threads alive (busy, parked, or between the two).
    threads: usize,
    /// The pool was dropped: parked threads exit.
    closed: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A job runs outside the lock: nothing can poison it but this module's own code.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pool {
    /// A pool of at most `max` (at least one) threads named `name`, each exiting after
    /// `idle_for` without work.
    pub fn new(name: &'static str, max: usize, idle_for: Duration) -> Pool {
        Pool { shared: Arc::default(), name, max: max.max(1), idle_for }
    }

    /// Runs `f` on a parked thread, or a new one when none is free and the pool is below
    /// its size, or else once a thread is free. Fails only when a thread was needed and
    /// the system would not make one.
    pub fn run(&self, f: Job) -> io::Result<()> {
        let mut s = self.shared.state();
        if s.idle > s.jobs.len() || s.threads >= self.max {
            s.jobs.push_back(f);
            if s.idle > 0 {
                self.shared.wake.notify_one();
            }
            return Ok(());
        }
        s.threads += 1;
        drop(s);
        let (shared, idle_for) = (Arc::clone(&self.shared), self.idle_for);
        let started = std::thread::Builder::new().name(self.name.into()).spawn(move || {
            let alive = Alive(Arc::clone(&shared));
            serve(&alive.0, f, idle_for);
        });
        started.map(|_| ()).inspect_err(|_| self.shared.state().threads -= 1)
    }

    /// How many threads the pool has now.
    pub fn threads(&self) -> usize {
        self.shared.state().threads
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.state().closed = true;
        self.shared.wake.notify_all();
    }
}

/// A pool thread's place in the count, given up however the thread ends (a job that
/// panics included).
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.state().threads -= 1;
    }
}

/// A pool thread: runs `first`, then whatever is handed over, until it has waited
/// `idle_for` for nothing or the pool is gone.
fn serve(shared: &Shared, first: Job, idle_for: Duration) {
    let mut job = first;
    loop {
        job();
        let mut s = shared.state();
        job = loop {
            if let Some(next) = s.jobs.pop_front() {
                break next;
            }
            if s.closed {
                return;
            }
            s.idle += 1;
            let (back, waited) = shared.wake.wait_timeout(s, idle_for).unwrap_or_else(|p| p.into_inner());
            s = back;
            s.idle -= 1;
            if waited.timed_out() && s.jobs.is_empty() {
                return;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread::ThreadId;
    use std::time::Instant;

    const LONG: Duration = Duration::from_secs(60);

    /// Polls `cond` for up to a minute.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < LONG, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs a job that reports its thread, and waits for the report.
    fn thread_of(pool: &Pool) -> ThreadId {
        let (tx, rx) = mpsc::channel();
        pool.run(Box::new(move || tx.send(std::thread::current().id()).unwrap())).unwrap();
        rx.recv_timeout(LONG).unwrap()
    }

    /// Waits until `pool` has a parked thread (and nothing queued).
    fn parked(pool: &Pool) {
        eventually("a thread parks", || {
            let s = pool.shared.state();
            s.idle == 1 && s.jobs.is_empty()
        });
    }

    #[test]
    fn one_after_another_jobs_run_on_the_same_thread() {
        let pool = Pool::new("t", 4, LONG);
        let first = thread_of(&pool);
        for _ in 0..20 {
            parked(&pool);
            assert_eq!(thread_of(&pool), first);
        }
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn jobs_at_once_get_threads_of_their_own_up_to_the_size_then_wait_their_turn() {
        let pool = Pool::new("t", 3, LONG);
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let (done, finished) = mpsc::channel();
        for i in 0..5 {
            let (gate, done) = (Arc::clone(&gate), done.clone());
            pool.run(Box::new(move || {
                gate.lock().unwrap().recv().unwrap();
                done.send(i).unwrap();
            }))
            .unwrap();
        }
        assert_eq!(pool.threads(), 3, "three threads, two jobs queued");
        assert_eq!(pool.shared.state().jobs.len(), 2);
        for _ in 0..5 {
            release.send(()).unwrap();
        }
        let mut all: Vec<i32> = (0..5).map(|_| finished.recv_timeout(LONG).unwrap()).collect();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3, 4]);
        assert!(pool.threads() <= 3);
    }

    #[test]
    fn idle_threads_exit_after_a_while() {
        let pool = Pool::new("t", 4, Duration::from_millis(20));
        thread_of(&pool);
        eventually("the idle thread exits", || pool.threads() == 0);
        // And the pool starts a thread again when work comes.
        thread_of(&pool);
    }

    #[test]
    fn parked_threads_exit_when_the_pool_is_dropped() {
        let pool = Pool::new("t", 4, LONG);
        thread_of(&pool);
        parked(&pool);
        let shared = Arc::clone(&pool.shared);
        drop(pool);
        eventually("the parked thread exits", || shared.state().threads == 0);
    }

    #[test]
    fn a_job_that_panics_gives_its_thread_back() {
        let pool = Pool::new("t", 1, LONG);
        pool.run(Box::new(|| panic!("a job that panics"))).unwrap();
        eventually("the thread is counted out", || pool.threads() == 0);
        thread_of(&pool);
    }
}
