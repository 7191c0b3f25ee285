//! One relayed connection's two directions, as a state machine driven by readiness:
//! what the event loop knows of each socket (readable, writable: set by an event,
//! cleared when a call would block) and of each direction's pipe (whether it has one,
//! bytes held, input ended), and the moves that follow. It does no I/O itself: the
//! moves go through [`Io`], so every rule is tested without sockets.
//!
//! The rules: a direction holds a pipe only while it has bytes to carry (taken when
//! its side turns readable, given back once emptied and the side has nothing more), so
//! an idle connection holds none; when none can be had, the side is not read until one
//! is given back ([`Status::Starved`]). A side is read only while its direction's pipe
//! has room, and the pipe is emptied into the other side while that one takes bytes
//! (back-pressure: a slow reader leaves its pipe full, so its sender is not read, and
//! the kernel closes the sender's TCP window). An end of input one way, once the pipe
//! is empty, becomes a shutdown of the other side's writing; the connection ends when
//! both directions have, or at the first error (a reset, a broken pipe).

use std::io;

/// One of a connection's two sockets; also names the direction that reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Backend = 1,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Client, Side::Backend];

    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// The moves of a connection (the event loop's are splice(2) calls).
pub trait Io {
    /// Gives the direction reading `from` a pipe; its capacity, or None when none can
    /// be had now (the relays' descriptor budget is spent).
    fn take(&mut self, from: Side) -> Option<usize>;
    /// Takes back the direction's pipe, empty.
    fn give(&mut self, from: Side);
    /// Moves up to `max` bytes from socket `from` into the pipe of its direction; 0 at
    /// the end of `from`'s input.
    fn fill(&mut self, from: Side, max: usize) -> io::Result<usize>;
    /// Moves up to `max` bytes from the pipe of the direction that reads `from` into the
    /// other side.
    fn drain(&mut self, from: Side, max: usize) -> io::Result<usize>;
    /// Shuts down writing on `side`.
    fn shut_write(&mut self, side: Side) -> io::Result<()>;
    /// Asks for a larger pipe for the direction reading `from`; its capacity now.
    fn grow(&mut self, from: Side) -> usize;
}

/// Rounds of moves one [`Flow::run`] makes at most, so that one busy connection does
/// not keep the loop from the others.
const ROUNDS: usize = 16;

/// Where a connection is after [`Flow::run`].
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting for readiness.
    Open,
    /// Could move more, but had its share: run it again after the others.
    More,
    /// A side has bytes to read but no pipe could be had: run it again once a pipe is
    /// given back.
    Starved,
    /// Both directions ended.
    Done,
    /// A call failed (reset, broken pipe): close both sides, resetting them.
    Failed(io::ErrorKind),
}

/// One direction: bytes read from one side, held in a pipe, written to the other.
#[derive(Debug, Clone, Copy, Default)]
struct Direction {
    /// The pipe's capacity; 0: no pipe.
    capacity: usize,
    held: usize,
    grown: bool,
    /// Readable, without a pipe, and none could be had.
    starved: bool,
    ended: bool,
    shut: bool,
}

/// What the loop knows of one socket.
#[derive(Debug, Clone, Copy, Default)]
struct Ready {
    readable: bool,
    writable: bool,
}

/// A relayed connection's state (see the module).
#[derive(Debug, Default)]
pub struct Flow {
    dir: [Direction; 2],
    ready: [Ready; 2],
}

impl Flow {
    /// A connection without pipes; nothing known ready yet.
    pub fn new() -> Flow {
        Flow::default()
    }

    /// An event on `side`: it may have bytes (or an end, or an error) to read, or room
    /// to write. A hang-up or an error counts as both, so the next call reports it.
    pub fn ready(&mut self, side: Side, readable: bool, writable: bool) {
        let r = &mut self.ready[side as usize];
        r.readable |= readable;
        r.writable |= writable;
    }

    /// Whether the direction reading `from` holds a pipe (one the loop closes, never
    /// reuses, if the connection fails: it may hold bytes); for tests.
    #[cfg(test)]
    fn holds_pipe(&self, from: Side) -> bool {
        self.dir[from as usize].capacity > 0
    }

    /// Whether `side` is waiting to be read while its pipe is full (a slow reader on
    /// the other side); for tests and views.
    #[cfg(test)]
    fn held_back(&self, side: Side) -> bool {
        let d = &self.dir[side as usize];
        self.ready[side as usize].readable && d.held == d.capacity
    }

    /// Makes every move readiness allows, until each would block or [`ROUNDS`] rounds.
    pub fn run(&mut self, io: &mut impl Io) -> Status {
        for _ in 0..ROUNDS {
            let mut moved = false;
            for from in Side::BOTH {
                match self.step(from, io) {
                    Ok(m) => moved |= m,
                    Err(e) => return Status::Failed(e.kind()),
                }
            }
            if self.dir.iter().all(|d| d.shut) {
                return Status::Done;
            }
            if !moved {
                return if self.dir.iter().any(|d| d.starved) { Status::Starved } else { Status::Open };
            }
        }
        Status::More
    }

    /// One round of the direction reading `from`: fill, drain, give the pipe back once
    /// it is not needed, pass an end on. True when anything moved.
    fn step(&mut self, from: Side, io: &mut impl Io) -> io::Result<bool> {
        let to = from.other();
        let mut moved = false;
        let d = &mut self.dir[from as usize];
        let readable = self.ready[from as usize].readable;
        if !d.ended && readable && d.capacity == 0 {
            match io.take(from) {
                Some(capacity) => (d.capacity, d.starved) = (capacity, false),
                None => d.starved = true,
            }
        }
        if !d.ended && d.held < d.capacity && readable {
            moved = match io.fill(from, d.capacity - d.held) {
                Ok(0) => {
                    d.ended = true;
                    true
                }
                Ok(n) => {
                    d.held += n;
                    true
                }
                // Nothing to read, unless the pipe has bytes: then the pipe may be
                // what is full (each splice takes one of its slots, however few bytes
                // it moved), and the socket is read again once it drained. Taken for
                // an empty socket, the next edge would never come: the sender waits
                // on a full window.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if d.held == 0 {
                        self.ready[from as usize].readable = false;
                    }
                    false
                }
                Err(e) => return Err(e),
            };
            // A pipe filled by one read is too small for this connection: once, a
            // larger one (idle connections keep the small default).
            if d.held == d.capacity && !d.grown {
                d.grown = true;
                d.capacity = io.grow(from).max(d.capacity);
            }
        }
        if d.held > 0 && self.ready[to as usize].writable {
            match io.drain(from, d.held) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    d.held -= n;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.ready[to as usize].writable = false,
                Err(e) => return Err(e),
            }
        }
        // Empty, and nothing more to read now: the pipe goes back.
        if d.capacity > 0 && d.held == 0 && (d.ended || !self.ready[from as usize].readable) {
            io.give(from);
            (d.capacity, d.grown) = (0, false);
        }
        if d.ended && d.held == 0 && !d.shut {
            d.shut = true;
            moved = true;
            io.shut_write(to)?;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A double of the two sockets and pipes: each side has bytes waiting to be read
    /// (and maybe an end or an error after them) and room to take bytes; it records
    /// what each side received and the shutdowns.
    #[derive(Default)]
    struct Fake {
        /// Bytes each side has for us, then (None) its end of input.
        input: [VecDeque<Option<u8>>; 2],
        /// The error a side's read returns once its input is used up.
        read_error: [Option<io::ErrorKind>; 2],
        /// How many more bytes each side takes now.
        room: [usize; 2],
        write_error: [Option<io::ErrorKind>; 2],
        pipe: [VecDeque<u8>; 2],
        received: [Vec<u8>; 2],
        shut: [bool; 2],
        grown_to: usize,
        calls: usize,
        /// The capacity of a pipe taken; how many more can be taken.
        pipe_size: usize,
        free: usize,
        /// Which directions hold a pipe; how many times each took one.
        holding: [bool; 2],
        taken: [usize; 2],
        grows: usize,
        /// A pipe's slots (None: as many as bytes): each read takes one, at most
        /// `chunk` bytes each; a pipe whose slots are taken refuses more (would block)
        /// until it is empty again.
        slots: Option<usize>,
        chunk: usize,
        used: [usize; 2],
    }

    /// Sockets with nothing to read and no room, and two pipes of `size` to take.
    fn fake(size: usize) -> Fake {
        Fake { pipe_size: size, free: 2, ..Fake::default() }
    }

    fn would_block() -> io::Error {
        io::ErrorKind::WouldBlock.into()
    }

    impl Io for Fake {
        fn take(&mut self, from: Side) -> Option<usize> {
            assert!(!self.holding[from as usize], "a second pipe for one direction");
            if self.free == 0 {
                return None;
            }
            self.free -= 1;
            self.holding[from as usize] = true;
            self.taken[from as usize] += 1;
            Some(self.pipe_size)
        }

        fn give(&mut self, from: Side) {
            assert!(self.holding[from as usize], "a pipe given back that was not taken");
            assert!(self.pipe[from as usize].is_empty(), "a pipe given back with bytes in it");
            self.holding[from as usize] = false;
            self.free += 1;
        }

        fn fill(&mut self, from: Side, max: usize) -> io::Result<usize> {
            assert!(self.holding[from as usize], "a read into no pipe");
            self.calls += 1;
            if self.pipe[from as usize].is_empty() {
                self.used[from as usize] = 0;
            }
            if self.slots.is_some_and(|s| self.used[from as usize] == s) {
                return Err(would_block());
            }
            let input = &mut self.input[from as usize];
            match input.front() {
                Some(None) => return Ok(0),
                None => return Err(self.read_error[from as usize].map_or_else(would_block, io::Error::from)),
                Some(Some(_)) => {}
            }
            self.used[from as usize] += 1;
            let max = if self.slots.is_some() { max.min(self.chunk) } else { max };
            let mut n = 0;
            while n < max {
                match input.front() {
                    Some(Some(b)) => {
                        self.pipe[from as usize].push_back(*b);
                        input.pop_front();
                        n += 1;
                    }
                    _ => break,
                }
            }
            Ok(n)
        }

        fn drain(&mut self, from: Side, max: usize) -> io::Result<usize> {
            assert!(self.holding[from as usize], "a write from no pipe");
            self.calls += 1;
            let to = from.other() as usize;
            if let Some(e) = self.write_error[to] {
                return Err(e.into());
            }
            assert!(max <= self.pipe[from as usize].len(), "the flow asked for more than its pipe holds");
            let n = max.min(self.room[to]);
            if n == 0 {
                return Err(would_block());
            }
            self.room[to] -= n;
            self.received[to].extend(self.pipe[from as usize].drain(..n));
            Ok(n)
        }

        fn shut_write(&mut self, side: Side) -> io::Result<()> {
            assert!(!self.shut[side as usize], "shut twice");
            self.shut[side as usize] = true;
            Ok(())
        }

        fn grow(&mut self, _: Side) -> usize {
            self.grows += 1;
            self.grown_to
        }
    }

    fn bytes(side: &mut VecDeque<Option<u8>>, data: &[u8]) {
        side.extend(data.iter().map(|b| Some(*b)));
    }

    const C: Side = Side::Client;
    const B: Side = Side::Backend;

    /// A pipe can be full of slots with room left in bytes (each splice takes a slot):
    /// reading the socket then would block, though it has bytes. The socket is read
    /// again once the pipe drained, not left for an edge that never comes (the
    /// sender waits on a full window).
    #[test]
    fn a_pipe_full_of_slots_does_not_stop_the_reading() {
        let mut io = fake(1000);
        (io.slots, io.chunk) = (Some(2), 10);
        bytes(&mut io.input[C as usize], &[7; 100]);
        let mut f = Flow::new();
        f.ready(C, true, false);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.pipe[C as usize].len(), 20, "two slots of 10, the backend not writable yet");
        io.room[B as usize] = 1000;
        f.ready(B, false, true);
        f.run(&mut io);
        assert_eq!(io.received[B as usize].len(), 100, "read on after the pipe drained");
    }

    #[test]
    fn bytes_cross_both_ways_and_nothing_moves_without_readiness() {
        let mut io = Fake { room: [100, 100], ..fake(64) };
        bytes(&mut io.input[0], b"request");
        bytes(&mut io.input[1], b"answer");
        let mut f = Flow::new();
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.calls, 0, "no readiness known: no call");
        f.ready(C, true, true);
        f.ready(B, true, true);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.received[1], b"request");
        assert_eq!(io.received[0], b"answer");
        assert_eq!(io.shut, [false, false]);
    }

    #[test]
    fn a_half_close_passes_on_after_the_bytes_and_the_other_way_goes_on() {
        let mut io = Fake { room: [100, 100], ..fake(64) };
        bytes(&mut io.input[0], b"GET");
        io.input[0].push_back(None);
        let mut f = Flow::new();
        f.ready(C, true, true);
        f.ready(B, false, true);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!((io.received[1].as_slice(), io.shut), (&b"GET"[..], [false, true]), "the backend's writing shut");
        // The answer comes later, and still reaches the client, which then gets its end.
        bytes(&mut io.input[1], b"200 OK");
        io.input[1].push_back(None);
        f.ready(B, true, false);
        assert_eq!(f.run(&mut io), Status::Done);
        assert_eq!(io.received[0], b"200 OK");
        assert_eq!(io.shut, [true, true]);
    }

    #[test]
    fn an_end_waits_for_the_bytes_held_before_it() {
        let mut io = Fake { room: [0, 2], ..fake(64) };
        bytes(&mut io.input[0], b"abcd");
        io.input[0].push_back(None);
        let mut f = Flow::new();
        f.ready(C, true, false);
        f.ready(B, false, true);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.received[1], b"ab");
        assert!(!io.shut[1], "two bytes are still in the pipe: no shutdown yet");
        io.room[1] = 10;
        f.ready(B, false, true);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!((io.received[1].as_slice(), io.shut[1]), (&b"abcd"[..], true));
    }

    #[test]
    fn a_slow_reader_holds_back_its_sender_only() {
        // The client never reads: the backend's answer fills the pipe, then the
        // backend is no longer read (its socket buffer and window fill instead).
        let mut io = Fake { room: [0, 1000], grown_to: 16, ..fake(8) };
        bytes(&mut io.input[1], &[7; 100]);
        let mut f = Flow::new();
        f.ready(C, true, true);
        f.ready(B, true, true);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.pipe[1].len(), 16, "one pipe's worth, grown once, is read");
        assert_eq!(io.input[1].len(), 84, "the rest stays with the backend");
        assert!(f.held_back(B));
        // Meanwhile the client's bytes still go to the backend.
        bytes(&mut io.input[0], b"more");
        f.ready(C, true, false);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.received[1], b"more");
        // Readiness on the full side alone makes no call: nothing spins.
        let calls = io.calls;
        f.ready(B, true, false);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.calls, calls, "no call: the pipe is full and the client takes nothing");
        // The client reads at last: bytes flow again.
        io.room[0] = 1000;
        f.ready(C, false, true);
        assert!(io.holding[1], "a full pipe stays with its direction");
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.received[0].len(), 100);
        assert_eq!(io.holding, [false, false], "both emptied: both given back");
    }

    #[test]
    fn a_reset_either_way_fails_the_connection() {
        let mut io = Fake { room: [100, 100], ..fake(64) };
        bytes(&mut io.input[1], b"part");
        io.read_error[1] = Some(io::ErrorKind::ConnectionReset);
        let mut f = Flow::new();
        f.ready(C, false, true);
        f.ready(B, true, false);
        assert_eq!(f.run(&mut io), Status::Failed(io::ErrorKind::ConnectionReset));
        assert_eq!(io.shut, [false, false], "a reset is no end of data: no shutdown passed on");
        assert!(f.holds_pipe(B), "the pipe still holds bytes: the loop closes it, never reuses it");

        let mut io = Fake { room: [100, 100], ..fake(64) };
        bytes(&mut io.input[0], b"data");
        io.write_error[1] = Some(io::ErrorKind::BrokenPipe);
        let mut f = Flow::new();
        f.ready(C, true, false);
        f.ready(B, false, true);
        assert_eq!(f.run(&mut io), Status::Failed(io::ErrorKind::BrokenPipe));
    }

    #[test]
    fn both_ends_at_once_finish_the_connection() {
        let mut io = fake(64);
        io.input[0].push_back(None);
        io.input[1].push_back(None);
        let mut f = Flow::new();
        f.ready(C, true, false);
        f.ready(B, true, false);
        assert_eq!(f.run(&mut io), Status::Done);
        assert_eq!(io.shut, [true, true]);
    }

    #[test]
    fn a_busy_connection_yields_after_its_share_and_goes_on_where_it_stopped() {
        let mut io = Fake { room: [0, usize::MAX], grown_to: 8, ..fake(8) };
        bytes(&mut io.input[0], &[3; 8 * (ROUNDS + 4)]);
        let mut f = Flow::new();
        f.ready(C, true, false);
        f.ready(B, false, true);
        assert_eq!(f.run(&mut io), Status::More);
        assert_eq!(io.received[1].len(), 8 * ROUNDS, "one pipe's worth per round");
        // No new event comes (edge-triggered): what it knew is kept.
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.received[1].len(), 8 * (ROUNDS + 4));
    }

    #[test]
    fn a_pipe_grows_once_and_only_when_a_read_fills_it() {
        let mut io = Fake { room: [0, 1000], grown_to: 32, ..fake(8) };
        bytes(&mut io.input[0], &[1; 4]);
        let mut f = Flow::new();
        f.ready(C, true, true);
        f.ready(B, false, true);
        f.run(&mut io);
        assert_eq!((io.grows, io.holding[0]), (0, false), "4 bytes in a pipe of 8: not grown, and given back emptied");
        bytes(&mut io.input[0], &[1; 100]);
        io.room[1] = 0;
        f.ready(C, true, false);
        f.run(&mut io);
        assert_eq!(f.dir[0].capacity, 32);
        assert_eq!(f.dir[0].held, 32);
        io.grown_to = 64;
        io.room[1] = 32;
        f.ready(B, false, true);
        f.run(&mut io);
        assert_eq!(f.dir[0].capacity, 32, "grown once only");
    }

    #[test]
    fn an_idle_connection_holds_no_pipe_and_a_request_takes_one_only_while_it_crosses() {
        let mut io = Fake { room: [100, 100], ..fake(64) };
        let mut f = Flow::new();
        f.ready(C, false, true);
        f.ready(B, false, true);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!((io.taken, io.calls), ([0, 0], 0), "writable only: no pipe, no call");
        bytes(&mut io.input[0], b"ping");
        f.ready(C, true, false);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!(io.received[1], b"ping");
        assert_eq!((io.taken, io.holding), ([1, 0], [false, false]), "taken for the request, given back once emptied");
        assert!(!f.holds_pipe(C) && !f.holds_pipe(B));
        bytes(&mut io.input[1], b"pong");
        f.ready(B, true, false);
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!((io.received[0].as_slice(), io.taken, io.free), (&b"pong"[..], [1, 1], 2));
    }

    #[test]
    fn without_a_pipe_a_side_is_not_read_until_one_is_given_back() {
        let mut io = Fake { room: [100, 100], free: 0, ..fake(64) };
        bytes(&mut io.input[0], b"waits");
        let mut f = Flow::new();
        f.ready(C, true, true);
        f.ready(B, false, true);
        assert_eq!(f.run(&mut io), Status::Starved);
        assert_eq!((io.calls, io.input[0].len()), (0, 5), "nothing read without a pipe");
        // Still none: still starved, and nothing spins.
        assert_eq!(f.run(&mut io), Status::Starved);
        assert_eq!(io.calls, 0);
        // One is given back (by another connection): the bytes cross, the pipe returns.
        io.free = 1;
        assert_eq!(f.run(&mut io), Status::Open);
        assert_eq!((io.received[1].as_slice(), io.free), (&b"waits"[..], 1));
    }

    #[test]
    fn an_end_gives_the_pipe_back_before_it_is_passed_on_and_a_done_connection_holds_none() {
        let mut io = Fake { room: [100, 100], ..fake(64) };
        bytes(&mut io.input[0], b"last");
        io.input[0].push_back(None);
        io.input[1].push_back(None);
        let mut f = Flow::new();
        f.ready(C, true, true);
        f.ready(B, true, true);
        assert_eq!(f.run(&mut io), Status::Done);
        assert_eq!((io.received[1].as_slice(), io.shut), (&b"last"[..], [true, true]));
        assert_eq!((io.holding, io.free), ([false, false], 2), "every pipe taken was given back");
    }
}
