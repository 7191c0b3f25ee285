//! What a relayed connection's bytes cross: pipes, each with its place in the relays'
//! descriptor budget, a loop's few spare ones, and the splice(2) calls that carry out
//! a [`Flow`](super::flow::Flow)'s moves through them.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ax_sys::sock;
use tracing::debug;

use super::flow::{Io, Side};
use crate::bounds::{Gate, Permit};

/// A pipe's size once a read has filled it (the kernel's default is 64 KiB): more per
/// splice for connections that carry a lot.
const BIG_PIPE: usize = 1024 * 1024;
/// The size asked for a new pipe (the kernel's default; asked, so that a smaller
/// grant, as for a user over its pipe quota, is known).
const PIPE: usize = 64 * 1024;
/// Spare pipes one loop keeps at most.
pub const MAX_SPARE_PIPES: usize = 64;

/// A pipe, with its place in the descriptor budget.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    _fds: Permit,
}

/// A loop's spare pipes (empty), and where new ones come from.
pub struct Spares {
    pipes: Vec<Pipe>,
    keep: usize,
    fds: Arc<Gate>,
    /// A pipe was given back since the loop last looked.
    given: bool,
}

impl Spares {
    /// Up to `keep` spares; new pipes under the budget `fds`.
    pub fn new(keep: usize, fds: Arc<Gate>) -> Spares {
        Spares { pipes: Vec::new(), keep, fds, given: false }
    }

    /// Whether a pipe was given back since the last call.
    pub fn given(&mut self) -> bool {
        std::mem::take(&mut self.given)
    }

    /// Closes the spares.
    pub fn clear(&mut self) {
        self.pipes.clear();
    }

    /// A spare pipe, or a new one if the budget has room.
    fn take(&mut self) -> Option<Pipe> {
        if let Some(p) = self.pipes.pop() {
            return Some(p);
        }
        let fds = self.fds.claim()?;
        let made = sock::pipe().and_then(|(read, write)| {
            // Asked, so that a smaller grant (a user over its pipe quota) is known.
            let capacity = sock::set_pipe_size(write.as_fd(), PIPE)?;
            Ok(Pipe { read, write, capacity, _fds: fds })
        });
        made.map_err(|e| debug!("relay: no pipe: {e}")).ok()
    }

    /// Keeps an emptied pipe for the next taker (beyond `keep`, closes it).
    fn give(&mut self, p: Pipe) {
        self.given = true;
        if self.pipes.len() < self.keep {
            self.pipes.push(p);
        }
    }
}

/// The splice(2) calls of one connection.
pub struct Splicer<'a> {
    pub socks: [BorrowedFd<'a>; 2],
    pub pipes: &'a mut [Option<Pipe>; 2],
    pub spares: &'a mut Spares,
    /// Where the bytes delivered are counted.
    pub carried: &'a AtomicU64,
}

impl Splicer<'_> {
    fn pipe(&self, from: Side) -> io::Result<&Pipe> {
        // The flow reads and writes only through a pipe it was given.
        self.pipes[from as usize].as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Io for Splicer<'_> {
    fn take(&mut self, from: Side) -> Option<usize> {
        let p = self.spares.take()?;
        let capacity = p.capacity;
        self.pipes[from as usize] = Some(p);
        Some(capacity)
    }

    fn give(&mut self, from: Side) {
        if let Some(p) = self.pipes[from as usize].take() {
            self.spares.give(p);
        }
    }

    fn fill(&mut self, from: Side, max: usize) -> io::Result<usize> {
        sock::splice(self.socks[from as usize], self.pipe(from)?.write.as_fd(), max)
    }

    fn drain(&mut self, from: Side, max: usize) -> io::Result<usize> {
        let n = sock::splice(self.pipe(from)?.read.as_fd(), self.socks[from.other() as usize], max)?;
        self.carried.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn shut_write(&mut self, side: Side) -> io::Result<()> {
        sock::shutdown(self.socks[side as usize], libc::SHUT_WR)
    }

    fn grow(&mut self, from: Side) -> usize {
        let Some(p) = self.pipes[from as usize].as_mut() else { return 0 };
        if p.capacity < BIG_PIPE {
            p.capacity = sock::set_pipe_size(p.write.as_fd(), BIG_PIPE).unwrap_or(p.capacity);
        }
        p.capacity
    }
}
