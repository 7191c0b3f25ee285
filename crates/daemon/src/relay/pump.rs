//! The event loops that carry every plain relayed connection: relays' clients (each
//! loop accepts on every relay's listener, and the kernel wakes one loop per
//! connection), and pairs handed over by others (the egress gateway). A connection
//! costs no thread: its two sockets sit in one loop's epoll set, edge-triggered, and
//! [`Flow`] says which splice(2) to make when an event comes. A
//! backend is dialled without waiting (a refused one, or one silent for
//! [`DIAL_TIMEOUT`], gives way to the next hop, as the balancer ordered them); a hop
//! through a `--tls` tunnel is handed to the caller's [`Serve::tunnel`] (user space:
//! TLS), which may hand the client back for the next hop.
//!
//! One loop per core (at most [`MAX_LOOPS`]): splicing is the kernel's work, done on
//! the CPU of the thread that asks, so connections spread over loops spread over
//! cores; more loops than cores would only add switches.
//!
//! A direction holds a pipe only while bytes cross it: taken from its loop's few spare
//! ones (or made) when its side turns readable, given back once emptied. An idle
//! connection is two descriptors, its slot here and its sockets' memory; pipes cost
//! two descriptors each, and they and the connections share one descriptor budget
//! ([`bounds`]). A pipe grows once, when one read fills it, and keeps its size when
//! reused.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ax_core::Target;
use ax_sys::epoll::{self, Epoll, Events, Waker};
use ax_sys::sock;
use tracing::{debug, info, warn};

use super::flow::{Flow, Side, Status};
use super::splice::{Pipe, Spares, Splicer, MAX_SPARE_PIPES};
use crate::bounds::{Flow as AcceptFlow, Gate, Permit};

/// How long a backend may take to answer a dial before the next one is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Loops at most, whatever the core count.
const MAX_LOOPS: usize = 4;
/// How long a loop left without connections keeps its spare pipes (for the next
/// ones: a pipe made costs calls); after that an idle daemon holds none.
const SPARES_LINGER: Duration = Duration::from_secs(1);
/// How soon a connection waiting for a pipe looks again when none is given back in its
/// own loop.
const STARVED_RETRY: Duration = Duration::from_millis(20);
/// Connections accepted per wake-up of one listener, so that a flood of connects
/// takes turns with the connections already carried.
const ACCEPTS_PER_WAKE: usize = 64;
/// Events taken per epoll_wait.
const EVENTS: usize = 256;
/// The waker's token (no slot's: generations stay below 2^31).
const WAKER: u64 = u64::MAX;
/// Generations of a slot go round below this.
const MAX_GEN: u32 = (1 << 31) - 1;

/// One step on the way to a backend, in the balancer's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Dialled from this node.
    Direct(Target),
    /// A row on another node, reached through that node's `--tls` tunnel.
    Tunnel(SocketAddrV4),
}

/// A connection's places: under its listener's bound (and its address's), under the
/// loops' bound on connections, and its two descriptors in the relays' budget. Given
/// back when the connection ends.
#[derive(Debug)]
pub struct Held {
    _listener: Permit,
    _connection: Permit,
    _fds: Permit,
}

/// What a listener's connections get.
pub trait Serve: Send + Sync {
    /// Where a new client goes, in the order to try; empty: nowhere (it is closed).
    fn hops(&self) -> Vec<Hop>;
    /// Who a new client is to be shown as to the backend's server (what [`Serve::dialing`]
    /// and [`Serve::tunnel`] then get), asked once as it is accepted: by default nobody.
    fn shown(&self, _client: &TcpStream) -> Option<Ipv4Addr> {
        None
    }
    /// Carries `client` through a tunnel to `to`; when that cannot be made, hands the
    /// client back with [`Pump::dial`] for the `rest` of the hops.
    fn tunnel(self: Arc<Self>, client: Client, to: SocketAddrV4, rest: Vec<Hop>, held: Held);
    /// Readies `dial`, a socket about to connect to a backend for a client to be shown
    /// as `shown`: by default nothing.
    fn dialing(&self, _dial: BorrowedFd<'_>, _shown: Ipv4Addr) {}
}

/// A relay's client: its connection, and who the backend's server is to be shown
/// ([`Serve::shown`]).
pub struct Client {
    pub stream: TcpStream,
    pub shown: Option<Ipv4Addr>,
}

/// A listener the loops accept on.
pub struct Listening {
    pub id: u32,
    pub listener: TcpListener,
    pub gate: Gate,
    pub serve: Arc<dyn Serve>,
}

/// What other threads ask of a loop.
enum Job {
    Listen(Arc<Listening>),
    Unlisten(u32),
    Dial { client: Client, hops: Vec<Hop>, held: Held, serve: Arc<dyn Serve> },
    Carry { a: TcpStream, b: TcpStream, held: Held },
}

/// The loops' shared bounds: connections, and the descriptor budget (in pairs: a
/// connection's two sockets, or one pipe) that connections and pipes draw from.
struct Budget {
    connections: Gate,
    fds: Arc<Gate>,
    /// Bytes carried so far, both ways, over every connection (for `/metrics`).
    carried: AtomicU64,
}

impl Budget {
    /// Places for a new connection (listener's permit given), or None: it is closed.
    fn admit(&self, listener: Permit) -> Option<Held> {
        let connection = self.connections.admit(None)?;
        let fds = self.fds.admit(None)?;
        Some(Held { _listener: listener, _connection: connection, _fds: fds })
    }
}

/// A loop, from other threads.
struct Handle {
    jobs: Mutex<Vec<Job>>,
    waker: Waker,
}

impl Handle {
    fn send(&self, job: Job) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).push(job);
        if let Err(e) = self.waker.wake() {
            warn!("relay loop: cannot wake it: {e}");
        }
    }
}

/// The loops, and the bounds on the connections they carry.
pub struct Pump {
    loops: Vec<Arc<Handle>>,
    next: std::sync::atomic::AtomicUsize,
    budget: Arc<Budget>,
    bounds: Bounds,
}

/// How many relayed connections the descriptor budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Descriptor pairs for relaying: a connection's two sockets, or one pipe.
    pub pairs: usize,
    /// Connections at once, over all listeners: all of the pairs but [`Bounds::pipes`].
    pub connections: usize,
    /// Pairs that connections never take: pipes for the busy ones, always.
    pub pipes: usize,
    /// One listener's connections at most.
    pub per_listener: usize,
    /// One client address's connections to one listener at most: a quarter of the
    /// listener's, so that one address, even with every one of its connections holding
    /// both pipes (three pairs each), leaves others connections and pipes.
    pub per_source: usize,
}

/// Share of the pairs kept for pipes: an idle connection holds none, a busy one one
/// per direction with bytes in flight; beyond what is free, a direction waits.
const PIPE_SHARE: usize = 8;

/// The bounds from the descriptor budget `fds`. Half of it is for relaying, the rest
/// for apps, their engines and the daemon's own; one listener may take up to
/// `max_per_listener` connections.
pub fn bounds(fds: u64, max_per_listener: usize) -> Bounds {
    let pairs = (fds / 2 / 2) as usize;
    let pipes = (pairs / PIPE_SHARE).max(2);
    let connections = pairs.saturating_sub(pipes).max(1);
    let per_listener = connections.min(max_per_listener);
    Bounds { pairs: connections + pipes, connections, pipes, per_listener, per_source: (per_listener / 4).max(1) }
}

impl Pump {
    /// Starts one loop per core (at most [`MAX_LOOPS`]); `fds` is the daemon's
    /// descriptor budget.
    pub fn start(fds: u64, max_per_listener: usize) -> io::Result<Pump> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_LOOPS);
        Pump::with_loops(n, fds, max_per_listener)
    }

    /// Starts `n` loops.
    fn with_loops(n: usize, fds: u64, max_per_listener: usize) -> io::Result<Pump> {
        let b = bounds(fds, max_per_listener);
        let budget = Arc::new(Budget {
            connections: Gate::new("relayed connections", b.connections),
            fds: Arc::new(Gate::new("relay descriptors", b.pairs)),
            carried: AtomicU64::new(0),
        });
        // Spare pipes a loop keeps: few, so that spares idle in one loop never leave
        // another without (they count against the budget).
        let spares = (b.pipes / (2 * n)).min(MAX_SPARE_PIPES);
        let mut loops = Vec::with_capacity(n);
        for i in 0..n {
            let handle = Arc::new(Handle { jobs: Mutex::default(), waker: Waker::new()? });
            let mut worker = Worker::new(handle.clone(), budget.clone(), spares)?;
            std::thread::Builder::new().name(format!("relay-loop-{i}")).spawn(move || worker.run())?;
            loops.push(handle);
        }
        info!(
            loops = n,
            fds,
            connections = b.connections,
            pipes_at_least = b.pipes,
            per_listener = b.per_listener,
            per_source = b.per_source,
            "relay loops started"
        );
        Ok(Pump { loops, next: Default::default(), budget, bounds: b })
    }

    /// The connections held now (dialing or carrying).
    pub fn connections(&self) -> usize {
        self.budget.connections.open()
    }

    /// The bytes carried so far, both ways.
    pub fn carried(&self) -> u64 {
        self.budget.carried.load(Ordering::Relaxed)
    }

    /// How many connections one listener may hold.
    pub fn per_listener(&self) -> usize {
        self.bounds.per_listener
    }

    /// How many connections one client address may hold on one listener.
    pub fn per_source(&self) -> usize {
        self.bounds.per_source
    }

    /// Every loop accepts on `l` from now on.
    pub fn listen(&self, l: Arc<Listening>) -> io::Result<()> {
        l.listener.set_nonblocking(true)?;
        for h in &self.loops {
            h.send(Job::Listen(l.clone()));
        }
        Ok(())
    }

    /// No loop accepts on listener `id` any more (its connections go on).
    pub fn unlisten(&self, id: u32) {
        for h in &self.loops {
            h.send(Job::Unlisten(id));
        }
    }

    fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.loops[i % self.loops.len()]
    }

    /// Carries `client` to the first of `hops` that answers (`serve` takes tunnel hops).
    pub fn dial(&self, client: Client, hops: Vec<Hop>, held: Held, serve: Arc<dyn Serve>) {
        self.pick().send(Job::Dial { client, hops, held, serve });
    }

    /// Carries bytes both ways between two connected sockets, under `permit` (their
    /// listener's) and the loops' bound; refused (closed) beyond it.
    pub fn carry(&self, a: TcpStream, b: TcpStream, permit: Permit) {
        if let Some(held) = self.budget.admit(permit) {
            self.pick().send(Job::Carry { a, b, held });
        }
    }
}

/// Where a connection is.
enum Stage {
    /// Waiting for `backend` (None: between hops) to answer.
    Dialing {
        backend: Option<(TcpStream, Instant)>,
        hops: VecDeque<Hop>,
        serve: Arc<dyn Serve>,
        /// Who the backend's server is to see ([`Serve::shown`]).
        shown: Option<Ipv4Addr>,
    },
    Carrying {
        backend: TcpStream,
    },
}

struct Conn {
    client: TcpStream,
    stage: Stage,
    /// Each direction's pipe while it has one (index: the side it reads from).
    pipes: [Option<Pipe>; 2],
    flow: Flow,
    /// In the run queue, or waiting for a pipe.
    queued: bool,
    _held: Held,
}

enum Entry {
    Free,
    Listener { l: Arc<Listening>, paused: bool },
    Conn(Box<Conn>),
}

struct Slot {
    gen: u32,
    entry: Entry,
}

/// A slot's token: generation, index, side (so a late event for a reused slot is
/// told from its new occupant's).
fn token(gen: u32, idx: usize, side: Side) -> u64 {
    (u64::from(gen) << 32) | ((idx as u64) << 1) | side as u64
}

fn untoken(t: u64) -> (u32, usize, Side) {
    let side = if t & 1 == 0 { Side::Client } else { Side::Backend };
    ((t >> 32) as u32, ((t & 0xffff_ffff) >> 1) as usize, side)
}

/// Sockets are watched for both ways at once, edge-triggered: no epoll_ctl as a
/// connection's needs change; [`Flow`] keeps what each event said.
const SOCKET_EVENTS: u32 = epoll::IN | epoll::OUT | epoll::RDHUP | epoll::ET;

/// One loop's state, on its thread.
struct Worker {
    epoll: Epoll,
    handle: Arc<Handle>,
    budget: Arc<Budget>,
    spares: Spares,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Dial deadlines and paused listeners' wake-ups, by token.
    timers: BTreeSet<(Instant, u64)>,
    /// Connections with moves left (tokens of their client side).
    queue: VecDeque<u64>,
    /// Connections waiting for a pipe, and when to look again if none is given back
    /// here (another loop's may free budget).
    starved: Vec<u64>,
    retry: Option<Instant>,
    /// Connections in this loop; when the spare pipes go if it stays without any.
    conns: usize,
    trim: Option<Instant>,
    events: Events,
}

impl Worker {
    fn new(handle: Arc<Handle>, budget: Arc<Budget>, spares: usize) -> io::Result<Worker> {
        let epoll = Epoll::new()?;
        epoll.add(handle.waker.as_fd(), epoll::IN, WAKER)?;
        let spares = Spares::new(spares, budget.fds.clone());
        Ok(Worker {
            epoll,
            handle,
            budget,
            spares,
            slots: Vec::new(),
            free: Vec::new(),
            timers: BTreeSet::new(),
            queue: VecDeque::new(),
            starved: Vec::new(),
            retry: None,
            conns: 0,
            trim: None,
            events: Events::with_capacity(EVENTS),
        })
    }

    fn run(&mut self) {
        loop {
            let timeout = if !self.queue.is_empty() {
                0
            } else {
                match self.timers.first().map(|(at, _)| *at).into_iter().chain(self.retry).chain(self.trim).min() {
                    Some(at) => {
                        let ms = at.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000);
                        ms.min(i32::MAX as u128) as i32
                    }
                    None => -1,
                }
            };
            if let Err(e) = self.epoll.wait(&mut self.events, timeout) {
                warn!("relay loop: epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let events = std::mem::take(&mut self.events);
            for (t, bits) in events.iter() {
                if t == WAKER {
                    self.jobs();
                } else {
                    self.event(t, bits);
                }
            }
            self.events = events;
            let now = Instant::now();
            self.expire(now);
            self.unstarve(now);
            self.run_queue();
            if self.trim.is_some_and(|at| at <= now) {
                self.trim = None;
                if self.conns == 0 {
                    self.spares.clear();
                }
            }
        }
    }

    /// Connections waiting for a pipe run again once one was given back here, or
    /// after [`STARVED_RETRY`].
    fn unstarve(&mut self, now: Instant) {
        let given = self.spares.given();
        if self.starved.is_empty() || !(given || self.retry.is_some_and(|at| at <= now)) {
            return;
        }
        self.retry = None;
        self.queue.extend(self.starved.drain(..));
    }

    fn insert(&mut self, entry: Entry) -> (usize, u32) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, entry: Entry::Free });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        slot.entry = entry;
        (idx, slot.gen)
    }

    fn remove(&mut self, idx: usize) -> Entry {
        let slot = &mut self.slots[idx];
        slot.gen = (slot.gen + 1) & MAX_GEN;
        self.free.push(idx);
        let entry = std::mem::replace(&mut slot.entry, Entry::Free);
        if matches!(entry, Entry::Conn(_)) {
            self.conns -= 1;
            if self.conns == 0 {
                self.trim = Some(Instant::now() + SPARES_LINGER);
            }
        }
        entry
    }

    fn jobs(&mut self) {
        self.handle.waker.reset();
        let jobs = std::mem::take(&mut *self.handle.jobs.lock().unwrap_or_else(|p| p.into_inner()));
        for job in jobs {
            match job {
                Job::Listen(l) => self.listen(l),
                Job::Unlisten(id) => {
                    let found =
                        self.slots.iter().position(|s| matches!(&s.entry, Entry::Listener { l, .. } if l.id == id));
                    if let Some(idx) = found {
                        self.unlisten(idx);
                    }
                }
                Job::Dial { client: Client { stream, shown }, hops, held, serve } => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.admit(stream, shown, hops.into(), held, serve);
                    }
                }
                Job::Carry { a, b, held } => {
                    if a.set_nonblocking(true).and(b.set_nonblocking(true)).is_ok() {
                        self.add_conn(a, Stage::Carrying { backend: b }, held);
                    }
                }
            }
        }
    }

    fn listen(&mut self, l: Arc<Listening>) {
        let (idx, gen) = self.insert(Entry::Listener { l: l.clone(), paused: false });
        if let Err(e) = self.epoll.add(l.listener.as_fd(), epoll::IN | epoll::EXCLUSIVE, token(gen, idx, Side::Client))
        {
            warn!(id = l.id, "relay loop: cannot watch the listener: {e}");
            self.remove(idx);
        }
    }

    fn unlisten(&mut self, idx: usize) {
        if let Entry::Listener { l, paused } = self.remove(idx) {
            if !paused {
                let _ = self.epoll.delete(l.listener.as_fd());
            }
        }
    }

    /// A connection in a new slot, its sockets watched (what they have ready comes as
    /// their first events); None (closed) if it cannot be.
    fn add_conn(&mut self, client: TcpStream, stage: Stage, held: Held) -> Option<usize> {
        let conn = Conn { client, stage, pipes: [None, None], flow: Flow::new(), queued: false, _held: held };
        let (idx, gen) = self.insert(Entry::Conn(Box::new(conn)));
        self.conns += 1;
        let Entry::Conn(c) = &mut self.slots[idx].entry else { unreachable!("just inserted") };
        let mut watched = self.epoll.add(c.client.as_fd(), SOCKET_EVENTS, token(gen, idx, Side::Client));
        if let Stage::Carrying { backend } = &c.stage {
            watched =
                watched.and_then(|()| self.epoll.add(backend.as_fd(), SOCKET_EVENTS, token(gen, idx, Side::Backend)));
        }
        if let Err(e) = watched {
            debug!("relay: cannot watch a connection: {e}");
            self.remove(idx);
            return None;
        }
        Some(idx)
    }

    /// A client accepted (or handed back), non-blocking: on to its first hop.
    fn admit(
        &mut self,
        client: TcpStream,
        shown: Option<Ipv4Addr>,
        hops: VecDeque<Hop>,
        held: Held,
        serve: Arc<dyn Serve>,
    ) {
        if let Some(idx) = self.add_conn(client, Stage::Dialing { backend: None, hops, serve, shown }, held) {
            self.next_hop(idx);
        }
    }

    fn event(&mut self, t: u64, bits: u32) {
        let (gen, idx, side) = untoken(t);
        let Some(slot) = self.slots.get_mut(idx).filter(|s| s.gen == gen) else { return };
        match &mut slot.entry {
            Entry::Free => {}
            Entry::Listener { l, .. } => {
                let l = l.clone();
                self.accept(idx, &l);
            }
            Entry::Conn(c) => {
                let hangup = bits & (epoll::HUP | epoll::ERR) != 0;
                if let (Stage::Dialing { .. }, Side::Backend) = (&c.stage, side) {
                    return self.dialled(idx, bits);
                }
                c.flow.ready(side, hangup || bits & (epoll::IN | epoll::RDHUP) != 0, hangup || bits & epoll::OUT != 0);
                if matches!(c.stage, Stage::Carrying { .. }) && !c.queued {
                    c.queued = true;
                    self.queue.push_back(token(gen, idx, Side::Client));
                }
            }
        }
    }

    fn accept(&mut self, idx: usize, l: &Arc<Listening>) {
        for _ in 0..ACCEPTS_PER_WAKE {
            match sock::accept_nonblocking(l.listener.as_fd()) {
                Ok((client, peer)) => {
                    let Some(permit) = l.gate.admit(peer.map(|p| p.ip())) else { continue };
                    let Some(held) = self.budget.admit(permit) else { continue };
                    let client = TcpStream::from(client);
                    let shown = l.serve.shown(&client);
                    self.admit(client, shown, l.serve.hops().into(), held, l.serve.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match l.gate.accept_failed(&e) {
                    AcceptFlow::Retry => {}
                    AcceptFlow::Wait(d) => {
                        // Out of descriptors or memory: not watched for a while, so the
                        // level-triggered listener does not spin.
                        let _ = self.epoll.delete(l.listener.as_fd());
                        if let Entry::Listener { paused, .. } = &mut self.slots[idx].entry {
                            *paused = true;
                        }
                        self.timers.insert((Instant::now() + d, token(self.slots[idx].gen, idx, Side::Client)));
                        return;
                    }
                    AcceptFlow::Stop => return self.unlisten(idx),
                },
            }
        }
    }

    /// Tries the connection's next hop; closes it when none is left.
    fn next_hop(&mut self, idx: usize) {
        loop {
            let gen = self.slots[idx].gen;
            let Entry::Conn(c) = &mut self.slots[idx].entry else { return };
            let Stage::Dialing { backend, hops, serve, shown } = &mut c.stage else { return };
            if let Some((_, deadline)) = backend.take() {
                self.timers.remove(&(deadline, token(gen, idx, Side::Backend)));
            }
            match hops.pop_front() {
                None => {
                    debug!("relay: no backend answered");
                    return self.close(idx, false);
                }
                Some(Hop::Tunnel(to)) => {
                    let (rest, serve, shown) = (hops.drain(..).collect(), serve.clone(), *shown);
                    let Entry::Conn(c) = self.remove(idx) else { return };
                    let _ = self.epoll.delete(c.client.as_fd());
                    let Conn { client, _held: held, .. } = *c;
                    return serve.tunnel(Client { stream: client, shown }, to, rest, held);
                }
                Some(Hop::Direct(t)) => match dial(t, |s| shown.iter().for_each(|ip| serve.dialing(s, *ip))) {
                    Ok(s) => {
                        let deadline = Instant::now() + DIAL_TIMEOUT;
                        let tok = token(gen, idx, Side::Backend);
                        if self.epoll.add(s.as_fd(), SOCKET_EVENTS, tok).is_ok() {
                            *backend = Some((s, deadline));
                            self.timers.insert((deadline, tok));
                            return;
                        }
                    }
                    Err(e) => debug!(to = %t.addr, "relay: dial failed: {e}"),
                },
            }
        }
    }

    /// An event (`bits`) on the backend being dialled: answered, or failed. A connect
    /// in progress reports nothing; an error or hang-up is a failure (a refusal, an
    /// unreachable host); writable without either, connected: no call needed to tell.
    fn dialled(&mut self, idx: usize, bits: u32) {
        if bits & (epoll::ERR | epoll::HUP) != 0 {
            return self.next_hop(idx);
        }
        if bits & epoll::OUT == 0 {
            return;
        }
        let gen = self.slots[idx].gen;
        let Entry::Conn(c) = &mut self.slots[idx].entry else { return };
        let Stage::Dialing { backend, .. } = &mut c.stage else { return };
        let Some((s, deadline)) = backend.take() else { return };
        self.timers.remove(&(deadline, token(gen, idx, Side::Backend)));
        c.stage = Stage::Carrying { backend: s };
        // The client's events while dialling were kept; the backend's are these.
        c.flow.ready(Side::Backend, bits & (epoll::IN | epoll::RDHUP) != 0, true);
        if !c.queued {
            c.queued = true;
            self.queue.push_back(token(gen, idx, Side::Client));
        }
    }

    /// Deadlines passed: dials time out, paused listeners are watched again.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, t)) = self.timers.first() {
            if at > now {
                return;
            }
            self.timers.remove(&(at, t));
            let (gen, idx, _) = untoken(t);
            let Some(slot) = self.slots.get_mut(idx).filter(|s| s.gen == gen) else { continue };
            match &mut slot.entry {
                Entry::Listener { l, paused } if *paused => {
                    *paused = false;
                    let _ =
                        self.epoll.add(l.listener.as_fd(), epoll::IN | epoll::EXCLUSIVE, token(gen, idx, Side::Client));
                }
                Entry::Conn(_) => {
                    debug!("relay: a backend did not answer in time");
                    self.next_hop(idx);
                }
                _ => {}
            }
        }
    }

    fn run_queue(&mut self) {
        for _ in 0..self.queue.len() {
            let Some(t) = self.queue.pop_front() else { return };
            let (gen, idx, _) = untoken(t);
            let Some(slot) = self.slots.get_mut(idx).filter(|s| s.gen == gen) else { continue };
            let Entry::Conn(c) = &mut slot.entry else { continue };
            let Stage::Carrying { backend } = &c.stage else { continue };
            let mut io = Splicer {
                socks: [c.client.as_fd(), backend.as_fd()],
                pipes: &mut c.pipes,
                spares: &mut self.spares,
                carried: &self.budget.carried,
            };
            match c.flow.run(&mut io) {
                Status::Open => c.queued = false,
                Status::More => self.queue.push_back(t),
                Status::Starved => {
                    self.starved.push(t);
                    self.retry.get_or_insert(Instant::now() + STARVED_RETRY);
                }
                Status::Done => self.close(idx, false),
                Status::Failed(why) => {
                    debug!(?why, "relay: a connection broke");
                    self.close(idx, true);
                }
            }
        }
    }

    /// Ends a connection; `reset`: its sockets are reset, not closed in order, so
    /// neither peer takes a broken transfer for a whole one.
    fn close(&mut self, idx: usize, reset: bool) {
        if let Entry::Conn(c) = self.remove(idx) {
            if reset {
                let _ = sock::set_linger_zero(c.client.as_fd());
                if let Stage::Carrying { backend } = &c.stage {
                    let _ = sock::set_linger_zero(backend.as_fd());
                }
            }
        }
    }
}

/// Starts a non-blocking connect to `t`, from a socket `ready` saw first.
fn dial(t: Target, ready: impl FnOnce(BorrowedFd<'_>)) -> io::Result<TcpStream> {
    let s = sock::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    if let Some(src) = t.source {
        sock::bind(s.as_fd(), &SocketAddr::from((src, 0)))?;
    }
    ready(s.as_fd());
    match sock::connect(s.as_fd(), &SocketAddr::V4(t.addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from(s))
}

#[cfg(test)]
mod tests;
