//! The kernel driver's programs: cgroup sock_addr programs on the daemon's cgroup that
//! carry out, on the host sockets the daemon made for kernel-driver apps, what the user
//! driver's engine does for connect, getpeername and getsockname, from the maps the
//! daemon fills (`ax_core::kmap` has their layout and what goes into them; this module
//! loads the programs, owns the maps and writes them).
//!
//! A sock_addr program runs for the cgroup of the *socket*: sockets the daemon makes
//! are in its cgroup, so the programs see the app's later calls on them. A socket
//! without an `ax_ksock` entry (the daemon's own, anything else in the cgroup) is left
//! alone by every program. The programs read the destination from the kernel's copy of
//! the app's sockaddr (copied in before any hook runs), so an app that changes its
//! buffer during the call changes nothing the programs decide on.
//!
//! - connect4/6 (their model is `ax_core::kmap::KernelMaps::lookup`): the loopback
//!   (127/8, 0.0.0.0) goes to the broker where the app has a private listener, else it
//!   is refused; other destinations by route lookup (class, ip, port, proto), (ANY,
//!   ip, port, proto), (ANY, ip, 0, proto), then the defaults; REFUSE fails the call with
//!   ECONNREFUSED before any packet (a UDP socket's: connected to the node's closed
//!   port instead, `ax_core::plan::closed_port`); BACKENDS picks a group (random or round robin)
//!   and a target in it at random, and connects from the route's source address when
//!   it has one (bpf_bind); BROKER records the destination under the socket's cookie
//!   and sends the connect to the daemon's broker. The original destination is kept
//!   for getpeername. An IPv6 socket's v4-mapped destination is handled as IPv4, `::`
//!   and `::1` as 127.0.0.1; other IPv6 destinations pass unchanged.
//! - getpeername4/6, getsockname4/6: the addresses the app connected to and was bound
//!   at, and its own virtual address for the node's.
//! - udp sendmsg4/6: a datagram's destination is routed as a connect's, except that
//!   a socket's datagrams all go to one target of a BACKENDS entry (chosen by the
//!   socket's cookie, `Route::pinned`), nothing is recorded, and nothing goes to the
//!   broker (refused); the source the app may name (IP_PKTINFO) becomes the socket's
//!   own address. A UDP destination no entry names that is an app's address at a port
//!   its socket on this node holds (what recvmsg shows of that app) goes to that socket
//!   (`sender`), for a connect as for a send.
//! - udp recvmsg4/6: the source of a datagram from a row's host address shows as its
//!   service (`ax_kpeers`); one from an app's socket on this node, as that app's
//!   address at the datagram's port (`sender`).
//! - setsockopt: notes the sockets asked for SO_REUSEADDR or SO_REUSEPORT, whose
//!   datagrams `sender` does not believe.
//! - cgroup egress: packets of these sockets with IP options or IPv6 extension headers
//!   (a source route in a send's control message, which no sock_addr program sees) are
//!   dropped.
//! - bind4/6: refused (EPERM) to every thread that is not the daemon's (the daemon
//!   binds for the app, as the guard demands of guarded sockets).
//! - sock_ops (`clientid`): a client app's SYN (or a daemon's, for a client it carries
//!   on) names the client to a server under ax, whose accept and getpeername show it.
//! - sock_create, on `<cgroup2 root>/ax-apps-N` (`crate::appcg`): the TCP sockets an app
//!   in a cgroup there makes itself get the marks of the daemon's, so the programs
//!   above rule them alike; any other inet socket there is refused.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ax_core::kmap::{
    AppEntry, BrokerEntry, BrokerKind, Change, Config, ConnectCount, DecodeError, KernelMaps, Peer, PrivateKey, Route,
    RouteKey, SockState, Verdict, ANY_CLASS,
};
use ax_sys::bpf::{self, Asm, Insn, Label, Map, Reg, Size, Verdict as V, R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9};
use tracing::info;

use crate::appcg::{self, AppCgroups};
pub use crate::appcg::{apps_cgroup_name, stop_every_app, AppCgroup, AppCgroupError};
use crate::guard::Guard;
use crate::hooks::{self, Cgroup, InstallError};
use crate::stats::{CountedAt, Tally};

mod clientid;
mod sender;

/// The pin directory's name; a new layout gets a new name.
pub(crate) const LAYOUT: &str = "ax-kernel-v5";
const WHO: &str = "kernel driver";

/// offsetof(struct bpf_sock_addr, ...).
const USER_FAMILY: i16 = 0;
const USER_IP4: i16 = 4;
const USER_IP6: i16 = 8;
const USER_PORT: i16 = 24;
const PROTOCOL: i16 = 36;
const MSG_SRC_IP4: i16 = 40;
const MSG_SRC_IP6: i16 = 44;
const SK: i16 = 64;
/// offsetof(struct bpf_sock, src_ip4 / src_ip6): the address the socket is bound to.
const SOCK_SRC_IP4: i16 = 24;
const SOCK_SRC_IP6: i16 = 28;
/// offsetof(struct bpf_sock, state): the socket's TCP state (UDP: established once
/// connected, else closed).
const SOCK_STATE: i16 = 72;
/// offsetof(struct __sk_buff, sk).
const SKB_SK: i16 = 168;

/// The third word of a v4-mapped IPv6 address (::ffff:0:0/96) as a little-endian load
/// of its bytes 00 00 ff ff gives it; and ::1's fourth.
const MAPPED: u32 = 0xffff_0000;
const LOOPBACK6: i32 = 0x0100_0000;
/// 127.0.0.1 as a little-endian load of its bytes gives it.
const LOOPBACK4: i32 = 0x0100_007f;

/// The stack of the connect programs (offsets from r10).
const ROUTE_KEY: i16 = -16; // RouteKey, 12 bytes
const SCRATCH: i16 = -4; // a u32 key or value
const BROKER_ENTRY: i16 = -32; // BrokerEntry, 12 bytes
const COOKIE: i16 = -40; // u64
const PRIVATE_KEY: i16 = -64; // PrivateKey, 8 bytes
const BIND_ADDR: i16 = -96; // sockaddr_in (16 bytes) or sockaddr_in6 (28)
const PEER_KEY: i16 = -104; // the recvmsg programs' Peer key, 8 bytes
const DEST: i16 = -112; // the destination the app named: ip (be32), port (be16)
const COUNT_KEY: i16 = -120; // ConnectCount's key, 8 bytes
const COUNT_VALUE: i16 = -136; // ConnectCount's value, 16 bytes

const fn at(base: i16, field: usize) -> i16 {
    base + field as i16
}

/// A field of a kmap layout as an instruction offset (every layout is a few hundred
/// bytes at most).
const fn off(field: usize) -> i16 {
    field as i16
}

/// Why the kernel driver could not be installed (the daemon logs it and runs its apps
/// with the user driver).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct KernelDriverError(#[from] InstallError);

/// A write to or a read of the kernel driver's maps that failed.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot write the kernel driver's {0} map: {1}")]
    Write(&'static str, io::Error),
    #[error("cannot read the kernel driver's broker map: {0}")]
    Read(io::Error),
    #[error("cannot read the kernel driver's connect counts: {0}")]
    Counts(io::Error),
    #[error("the kernel driver's broker map holds a bad entry: {0}")]
    Decode(#[from] DecodeError),
}

/// The maps, all pinned: a restarting daemon takes them over with the sockets' states,
/// the broker's pending entries and the tables, and keeps serving while it re-syncs.
struct Maps {
    ksock: Arc<Map>,
    apps: Map,
    routes: Map,
    conf: Map,
    private: Map,
    broker: Map,
    peers: Map,
    /// `ax_kshared`: the sockets of ax's that were asked for SO_REUSEADDR or
    /// SO_REUSEPORT (`sender::setsockopt`), whose datagrams prove no sender.
    shared: Map,
    /// `ax_kclaims`: the client address (IPv4, as on the wire) the SYN of a daemon's
    /// socket names, for a connection the daemon carries on ([`KernelDriver::claim`]).
    claims: Map,
    daemon: Map,
    cgroups: Arc<Map>,
    /// `ax_kconnects` and `ax_kconnports` ([`count_connect`]): made anew by every
    /// daemon, never pinned (the programs it installs count into them; counts start at
    /// zero with the daemon, as all of its metrics do).
    connects: Map,
    connect_ports: Map,
}

/// A map of connect counts ([`ConnectCount`]), one value per CPU.
fn connect_counts(name: &str) -> io::Result<Map> {
    let (key, value) = (ConnectCount::KEY_SIZE as u32, ConnectCount::VALUE_SIZE as u32);
    Map::new(bpf::MAP_LRU_PERCPU_HASH, name, key, value, ConnectCount::MAX_ENTRIES)
}

/// The maps' pin names, in the order they are made and pinned: `ksock` last, since a
/// later daemon takes the set over once that one is there.
const MAPS: [&str; 11] =
    ["daemon", "apps", "routes", "conf", "private", "broker", "peers", "cgroups", "shared", "claims", TAKEN_WITH];
const TAKEN_WITH: &str = "ksock";

/// Whether a previous daemon left this layout's maps pinned under `run_dir`: what
/// [`KernelDriver::install`] takes over (else its apps' sockets have no state here).
pub fn maps_left_behind(run_dir: &Path) -> bool {
    run_dir.join("bpf").join(LAYOUT).join(TAKEN_WITH).exists()
}

impl Maps {
    fn make(name: &str) -> io::Result<Map> {
        match name {
            "daemon" => hooks::daemon_map(),
            "apps" => Map::new(bpf::MAP_HASH, "ax_kapps", 4, AppEntry::SIZE as u32, AppEntry::MAX_ENTRIES),
            "routes" => {
                Map::hash_unallocated("ax_kroutes", RouteKey::SIZE as u32, Route::SIZE as u32, RouteKey::MAX_ENTRIES)
            }
            // A hash, not an array: an update replaces the one entry whole (an array's
            // is copied in place, under a program reading it).
            "conf" => Map::hash_unallocated("ax_kconf", 4, Config::SIZE as u32, 1),
            "private" => Map::new(bpf::MAP_HASH, "ax_kprivate", PrivateKey::SIZE as u32, 4, PrivateKey::MAX_ENTRIES),
            "broker" => {
                Map::new(bpf::MAP_LRU_HASH, "ax_kbroker", 8, BrokerEntry::SIZE as u32, BrokerEntry::MAX_ENTRIES)
            }
            "peers" => Map::hash_unallocated("ax_kpeers", Peer::SIZE as u32, Peer::SIZE as u32, Peer::MAX_ENTRIES),
            "cgroups" => Map::new(bpf::MAP_HASH, "ax_kcgroups", 8, 4, appcg::MAX_CGROUPS),
            "shared" => Map::sk_storage("ax_kshared", 4),
            "claims" => Map::sk_storage("ax_kclaims", 4),
            _ => Map::sk_storage("ax_ksock", SockState::SIZE as u32),
        }
    }

    /// The maps pinned under `dir` (true), or new ones pinned there (false).
    fn open_or_create(dir: &Path) -> io::Result<(Maps, bool)> {
        let taken = dir.join(TAKEN_WITH).exists();
        if !taken {
            fs::create_dir_all(dir)?;
        }
        let mut got = Vec::new();
        for name in MAPS {
            let path = dir.join(name);
            got.push(if taken {
                Map::open_pinned(&path)?
            } else {
                let map = Maps::make(name)?;
                let _ = fs::remove_file(&path);
                map.pin(&path)?;
                map
            });
        }
        if taken {
            info!(pins = %dir.display(), "taking over the kernel driver's maps a previous daemon left");
        }
        let [daemon, apps, routes, conf, private, broker, peers, cgroups, shared, claims, ksock]: [Map; 11] =
            got.try_into().unwrap_or_else(|_| unreachable!("one map per name"));
        let maps = Maps {
            ksock: Arc::new(ksock),
            apps,
            routes,
            conf,
            private,
            broker,
            peers,
            shared,
            claims,
            daemon,
            cgroups: Arc::new(cgroups),
            connects: connect_counts("ax_kconnects")?,
            connect_ports: connect_counts("ax_kconnports")?,
        };
        Ok((maps, taken))
    }
}

/// The kernel driver, installed: its programs attached to the daemon's cgroup (and
/// pinned), its maps open.
pub struct KernelDriver {
    maps: Maps,
    /// `ax-apps`, where the apps that make their own TCP sockets live.
    apps: AppCgroups,
    /// The config last written, for marking the maps incomplete (None: none written
    /// yet, and the programs refuse what no exact entry decides).
    config: Mutex<Option<Config>>,
    taken_over: bool,
}

impl KernelDriver {
    /// Installs the programs on this process's cgroup, creating the maps or taking over
    /// the ones a previous daemon pinned under `run_dir`/bpf (a bpffs is mounted there
    /// if need be; so is a cgroup2 at `run_dir`/cgroup2 when this mount namespace shows
    /// none), and the sock_create program on `<cgroup2 root>/ax-apps-N` (made if
    /// missing), which marks sockets there for `guard` too. Where the daemon's cgroup
    /// does not hold `ax-apps`, the guard's programs and these are attached there too.
    pub fn install(run_dir: &Path, guard: &Guard) -> Result<KernelDriver, KernelDriverError> {
        let cgroup = Cgroup::own(WHO, run_dir)?;
        let dir = hooks::pin_dir(WHO, run_dir, LAYOUT)?;
        let (maps, taken_over) = Maps::open_or_create(&dir).map_err(|e| InstallError::Pins(WHO, dir.clone(), e))?;
        hooks::claim(&maps.daemon).map_err(|e| InstallError::Maps(WHO, e))?;
        let sock_addr = |hook, name, insns| (hook, name, bpf::PROG_CGROUP_SOCK_ADDR, insns);
        let programs = vec![
            sock_addr(bpf::ATTACH_CONNECT4, "kconnect4", route(&maps, false, Hook::Connect)),
            sock_addr(bpf::ATTACH_CONNECT6, "kconnect6", route(&maps, true, Hook::Connect)),
            sock_addr(bpf::ATTACH_GETPEERNAME4, "kgetpeername4", getpeername(&maps, false)),
            sock_addr(bpf::ATTACH_GETPEERNAME6, "kgetpeername6", getpeername(&maps, true)),
            sock_addr(bpf::ATTACH_GETSOCKNAME4, "kgetsockname4", getsockname(&maps, false)),
            sock_addr(bpf::ATTACH_GETSOCKNAME6, "kgetsockname6", getsockname(&maps, true)),
            sock_addr(bpf::ATTACH_BIND4, "kbind4", daemon_only(&maps)),
            sock_addr(bpf::ATTACH_BIND6, "kbind6", daemon_only(&maps)),
            sock_addr(bpf::ATTACH_UDP4_SENDMSG, "ksendmsg4", route(&maps, false, Hook::Send)),
            sock_addr(bpf::ATTACH_UDP6_SENDMSG, "ksendmsg6", route(&maps, true, Hook::Send)),
            sock_addr(bpf::ATTACH_UDP4_RECVMSG, "krecvmsg4", recvmsg(&maps, false)),
            sock_addr(bpf::ATTACH_UDP6_RECVMSG, "krecvmsg6", recvmsg(&maps, true)),
            (bpf::ATTACH_EGRESS, "kegress", bpf::PROG_CGROUP_SKB, egress(&maps)),
            (bpf::ATTACH_SOCK_OPS, "kclientid", bpf::PROG_SOCK_OPS, clientid::program(&maps, guard.members())),
            (bpf::ATTACH_SETSOCKOPT, "ksetsockopt", bpf::PROG_CGROUP_SOCKOPT, sender::setsockopt(&maps)),
        ];
        hooks::attach_and_pin(WHO, &cgroup, &dir, &programs)?;
        let name = appcg::apps_cgroup_name().map_err(|e| InstallError::Cgroup(WHO, e))?;
        let apps = cgroup.under_root(WHO, &name)?;
        if apps.holds(&cgroup) {
            let e = io::Error::other(format!("the daemon runs in {}, inside ax-apps", cgroup.dir.display()));
            return Err(InstallError::Cgroup(WHO, e).into());
        }
        // What runs on the daemon's cgroup runs on the ones under it; elsewhere the
        // programs go on ax-apps too.
        let mut at_apps = if cgroup.holds(&apps) { Vec::new() } else { programs };
        if !at_apps.is_empty() {
            guard.attach_to(&apps)?;
        }
        let netns = ax_sys::sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
            .and_then(|probe| ax_sys::sock::netns_cookie(std::os::fd::AsFd::as_fd(&probe)))
            .map_err(|e| InstallError::Maps(WHO, e))?;
        let create = appcg::sock_create(&maps.cgroups, &guard.marks(), &maps.ksock, netns);
        at_apps.push((bpf::ATTACH_INET_SOCK_CREATE, "ksockcreate", bpf::PROG_CGROUP_SOCK, create));
        hooks::attach_and_pin(WHO, &apps, &dir, &at_apps)?;
        let id = apps.id().map_err(|e| InstallError::Cgroup(WHO, e))?;
        info!(cgroup = %cgroup.dir.display(), apps = %apps.dir.display(), pins = %dir.display(), "kernel driver installed");
        let apps = AppCgroups { dir: apps.dir, id, ids: Arc::clone(&maps.cgroups) };
        apps.prune().map_err(|e| InstallError::Maps(WHO, e))?;
        Ok(KernelDriver { maps, apps, config: Mutex::new(None), taken_over })
    }

    /// The cgroup of app `app` (its kernel id, as in [`SockState::app`]), named `name`
    /// under ax-apps: made if missing, its id entered in `ax_kcgroups` for `app`.
    /// Idempotent: a restarted daemon takes its apps' cgroups over so.
    pub fn app_cgroup(&self, name: &str, app: u32) -> Result<AppCgroup, AppCgroupError> {
        self.apps.make(name, app)
    }

    /// Removes app `name`'s cgroup: its entry first (new sockets there fail), then its
    /// processes (cgroup.kill), then the directory (tried again while they die; a
    /// failure is logged and the cgroup left, its sockets refused).
    pub fn remove_app_cgroup(&self, name: &str) {
        self.apps.remove(name)
    }

    /// The names of the cgroups under ax-apps, for the daemon's restart cleanup.
    pub fn app_cgroup_names(&self) -> Vec<String> {
        self.apps.names()
    }

    /// Whether the sockets' states are the ones a previous daemon left (its pins, of
    /// this layout): false when they were made anew, so no socket of an app started
    /// before has one, and the programs leave such sockets alone.
    pub fn taken_over(&self) -> bool {
        self.taken_over
    }

    /// Makes `sock` (a host socket the daemon made for a kernel-driver app) the
    /// programs' to rule, with `state`; a socket's state goes with it when it closes.
    pub fn mark(&self, sock: BorrowedFd<'_>, state: &SockState) -> Result<(), MapError> {
        self.maps.ksock.set_socket(sock, &state.encode()).map_err(|e| MapError::Write("socket state", e))
    }

    /// Makes the SYN of `sock`, a socket of the daemon's own that carries a client's
    /// connection on to an app (a relay's dial), name `client` as an app's connect
    /// does its app (`clientid`): the server sees the client, not the daemon.
    pub fn claim(&self, sock: BorrowedFd<'_>, client: std::net::Ipv4Addr) -> Result<(), MapError> {
        self.maps.claims.set_socket(sock, &client.octets()).map_err(|e| MapError::Write("client claims", e))
    }

    /// The sockets' states, for the engines that mark kernel-driver apps' sockets.
    pub fn socket_states(&self) -> Arc<Map> {
        Arc::clone(&self.maps.ksock)
    }

    /// Writes `changes` in order (see `KernelMaps::diff` for why the order matters).
    /// A write that fails (a full map) first marks the maps incomplete, so the
    /// programs refuse whatever no exact entry decides (the missing entry may have
    /// been a refusal), then the rest are written all the same (an app entry among
    /// them, so a new app still connects where its entries are); the first failure
    /// is returned. Whoever gets an error must [`KernelDriver::resync`] later: only
    /// that marks the maps complete again.
    pub fn apply(&self, changes: &[Change]) -> Result<(), MapError> {
        let mut failed = None;
        for c in changes {
            if let Err(e) = self.write(c) {
                if failed.is_none() {
                    self.mark_incomplete()?;
                }
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Writes the config last written with `complete` off.
    fn mark_incomplete(&self) -> Result<(), MapError> {
        let last = *self.config.lock().unwrap_or_else(|p| p.into_inner());
        match last {
            Some(c) if c.complete => self.write(&Change::Config(Config { complete: false, ..c })),
            _ => Ok(()),
        }
    }

    fn write(&self, c: &Change) -> Result<(), MapError> {
        let m = &self.maps;
        {
            match c {
                Change::Config(c) => {
                    let written = m.conf.update(&0u32.to_ne_bytes(), &c.encode()).map_err(|e| (e, "config"));
                    if written.is_ok() {
                        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(*c);
                    }
                    written
                }
                Change::PutApp(id, a) => m.apps.update(&AppEntry::key(*id), &a.encode()).map_err(|e| (e, "apps")),
                Change::DeleteApp(id) => m.apps.delete(&AppEntry::key(*id)).map_err(|e| (e, "apps")),
                Change::PutRoute(k, r) => m.routes.update(&k.encode(), &r.encode()).map_err(|e| (e, "routes")),
                Change::DeleteRoute(k) => m.routes.delete(&k.encode()).map_err(|e| (e, "routes")),
                Change::PutPrivate(k) => {
                    m.private.update(&k.encode(), &PrivateKey::VALUE).map_err(|e| (e, "private listeners"))
                }
                Change::DeletePrivate(k) => m.private.delete(&k.encode()).map_err(|e| (e, "private listeners")),
                Change::PutPeer(host, service) => {
                    m.peers.update(&Peer::encode(*host), &Peer::encode(*service)).map_err(|e| (e, "peers"))
                }
                Change::DeletePeer(host) => m.peers.delete(&Peer::encode(*host)).map_err(|e| (e, "peers")),
            }
            .map_err(|(e, what)| MapError::Write(what, e))
        }
    }

    /// Makes the maps hold exactly `want` (config, apps, routes, private listeners):
    /// what a daemon that took over the maps of a previous one does first, since it
    /// does not know what they hold. Every entry is written (round-robin counters start
    /// again), then what `want` lacks is deleted, apps first. The config goes first
    /// marked incomplete and last as `want` has it, once everything else is written:
    /// until then the programs refuse what no exact entry decides.
    pub fn resync(&self, want: &KernelMaps) -> Result<(), MapError> {
        self.write(&Change::Config(Config { complete: false, ..want.config }))?;
        self.apply(&KernelMaps::diff(&KernelMaps::new(want.config), want))?;
        let m = &self.maps;
        let apps: BTreeSet<Vec<u8>> = want.apps.keys().map(|id| AppEntry::key(*id).to_vec()).collect();
        let routes: BTreeSet<Vec<u8>> = want.routes.keys().map(|k| k.encode().to_vec()).collect();
        let private: BTreeSet<Vec<u8>> = want.private.iter().map(|k| k.encode().to_vec()).collect();
        let peers: BTreeSet<Vec<u8>> = want.peers.keys().map(|h| Peer::encode(*h).to_vec()).collect();
        for (map, size, keep, what) in [
            (&m.apps, 4, apps, "apps"),
            (&m.routes, RouteKey::SIZE, routes, "routes"),
            (&m.private, PrivateKey::SIZE, private, "private listeners"),
            (&m.peers, Peer::SIZE, peers, "peers"),
        ] {
            let stale = map.keys(size).map_err(|e| MapError::Write(what, e))?;
            for key in stale.iter().filter(|k| !keep.contains(*k)) {
                map.delete(key).map_err(|e| MapError::Write(what, e))?;
            }
        }
        self.write(&Change::Config(want.config))
    }

    /// The connects the connect programs counted, by address, port and protocol,
    /// summed over CPUs (see [`count_connect`]); an address may come twice (once from
    /// each map).
    pub fn connect_counts(&self) -> Result<Vec<(CountedAt, Tally)>, MapError> {
        let mut out = Vec::new();
        let bad = |e: DecodeError| MapError::Counts(io::Error::other(e));
        for m in [&self.maps.connects, &self.maps.connect_ports] {
            for key in m.keys(ConnectCount::KEY_SIZE).map_err(MapError::Counts)? {
                // Evicted since it was listed: nothing to add.
                let Some(per_cpu) = m.per_cpu_values(&key, ConnectCount::VALUE_SIZE).map_err(MapError::Counts)? else {
                    continue;
                };
                let mut tally = Tally::default();
                for v in per_cpu {
                    let (allowed, denied) = ConnectCount::decode_value(&v).map_err(bad)?;
                    tally.add(Tally { allowed, denied });
                }
                out.push((ConnectCount::decode_key(&key).map_err(bad)?, tally));
            }
        }
        Ok(out)
    }

    /// The broker entry a connect program wrote for the app socket with this cookie,
    /// removed (of two takers, one gets it); None when there is none.
    pub fn take_broker(&self, cookie: u64) -> Result<Option<BrokerEntry>, MapError> {
        let got = self.maps.broker.take(&cookie.to_ne_bytes(), BrokerEntry::SIZE).map_err(MapError::Read)?;
        Ok(got.map(|b| BrokerEntry::decode(&b)).transpose()?)
    }
}

/// Counts the connect the route entry at r9 decides (see [`ConnectCount`]): BACKENDS
/// as allowed, REFUSE as denied, under the entry's address, port and protocol (the
/// route key on the stack) in `ax_kconnects`; where the entry is one for every port of
/// the address (port 0), under the port the app named, in `ax_kconnports` (apart, so
/// that connects to ports no entry names cannot crowd out the entries' counts).
/// Clobbers r0-r5 and r8.
fn count_connect(a: &mut Asm, maps: &Maps) {
    let [count, any_port, done] = [(); 3].map(|_| a.label());
    let key = |field| at(COUNT_KEY, field);
    a.load(Size::B, R8, R9, off(Route::VERDICT_OFFSET))
        .if_eq(R8, Verdict::Backends as i32, count)
        .if_ne(R8, Verdict::Refuse as i32, done)
        .here(count)
        .load(Size::W, R1, R10, at(ROUTE_KEY, RouteKey::IP_OFFSET))
        .store(Size::W, R10, key(ConnectCount::IP_OFFSET), R1)
        .load(Size::B, R1, R10, at(ROUTE_KEY, RouteKey::PROTO_OFFSET))
        .store(Size::B, R10, key(ConnectCount::PROTO_OFFSET), R1)
        .store_imm(Size::B, R10, key(ConnectCount::PROTO_OFFSET + 1), 0)
        .load(Size::H, R1, R10, at(ROUTE_KEY, RouteKey::PORT_OFFSET))
        .store(Size::H, R10, key(ConnectCount::PORT_OFFSET), R1)
        .if_eq(R1, 0, any_port);
    bump_count(a, &maps.connects, done);
    a.here(any_port).load(Size::H, R1, R10, DEST + 4).store(Size::H, R10, key(ConnectCount::PORT_OFFSET), R1);
    bump_count(a, &maps.connect_ports, done);
    a.here(done);
}

/// Adds one to this CPU's allowed (r8 BACKENDS) or denied count at the key on the
/// stack at COUNT_KEY in `map`, then goes to `done`. Clobbers r0-r5.
fn bump_count(a: &mut Asm, map: &Map, done: Label) {
    let [found, add] = [(); 2].map(|_| a.label());
    a.mov(R2, R10).add_imm(R2, COUNT_KEY as i32).load_map(R1, map).call(bpf::FN_MAP_LOOKUP_ELEM);
    // The first count of this key on this CPU: a zero value, then look again (an
    // entry another CPU made meanwhile is as good).
    a.if_ne(R0, 0, found)
        .store_imm(Size::DW, R10, COUNT_VALUE, 0)
        .store_imm(Size::DW, R10, COUNT_VALUE + 8, 0)
        .load_map(R1, map)
        .mov(R2, R10)
        .add_imm(R2, COUNT_KEY as i32)
        .mov(R3, R10)
        .add_imm(R3, COUNT_VALUE as i32)
        .mov_imm(R4, BPF_NOEXIST)
        .call(bpf::FN_MAP_UPDATE_ELEM);
    a.mov(R2, R10).add_imm(R2, COUNT_KEY as i32).load_map(R1, map).call(bpf::FN_MAP_LOOKUP_ELEM);
    a.if_eq(R0, 0, done)
        .here(found)
        .if_eq(R8, Verdict::Backends as i32, add)
        .add_imm(R0, ConnectCount::DENIED_OFFSET as i32)
        .here(add)
        // Atomic even on this CPU's own value: a program may be preempted by another
        // one on the same CPU between a read and a write.
        .mov_imm(R1, 1)
        .fetch_add(Size::DW, R0, 0, R1)
        .goto(done);
}

/// bpf_map_update_elem's flag: only if the key is not there yet.
const BPF_NOEXIST: i32 = 1;

/// r6 = the context, r7 = the socket's `ax_ksock` state; a socket without one (or no
/// socket) is left alone.
fn sock_state(a: &mut Asm, maps: &Maps) {
    sock_state_at(a, maps, SK);
}

/// [`sock_state`] for a context whose socket pointer is at `sk`.
fn sock_state_at(a: &mut Asm, maps: &Maps, sk: i16) {
    a.mov(R6, R1);
    socket_value(a, &maps.ksock, sk);
    a.if_eq(R0, 0, V::Allow).mov(R7, R0);
}

/// r0 = the value in the socket-storage `map` of the socket of the context (r6) whose
/// pointer is at `sk`, or 0; a context without a socket is left alone.
fn socket_value(a: &mut Asm, map: &Map, sk: i16) {
    a.load(Size::DW, R2, R6, sk)
        .if_eq(R2, 0, V::Allow)
        .load_map(R1, map)
        .mov_imm(R3, 0)
        .mov_imm(R4, 0)
        .call(bpf::FN_SK_STORAGE_GET);
}

/// r0 = the map value at the key on the stack at `key`; jumps to `missing` if absent.
fn lookup(a: &mut Asm, map: &Map, key: i16, missing: impl Into<bpf::Target> + Copy) {
    a.mov(R2, R10).add_imm(R2, key as i32).load_map(R1, map).call(bpf::FN_MAP_LOOKUP_ELEM).if_eq(R0, 0, missing);
}

/// r0 = the config; jumps to `missing` if the array has none (it always has).
fn config(a: &mut Asm, maps: &Maps, missing: impl Into<bpf::Target> + Copy) {
    a.store_imm(Size::W, R10, SCRATCH, 0);
    lookup(a, &maps.conf, SCRATCH, missing);
}

/// The user address's IPv4 (v4-mapped, on an IPv6 hook) into `dst`; any other IPv6
/// address is left as it is (allowed). Uses R1 and R2 on the way.
fn user_ip4(a: &mut Asm, v6: bool, dst: Reg) {
    if v6 {
        a.load(Size::W, R1, R6, USER_IP6)
            .if_ne(R1, 0, V::Allow)
            .load(Size::W, R1, R6, USER_IP6 + 4)
            .if_ne(R1, 0, V::Allow)
            .load(Size::W, R1, R6, USER_IP6 + 8)
            .mov32_imm(R2, MAPPED)
            .if_ne_reg(R1, R2, V::Allow)
            .load(Size::W, dst, R6, USER_IP6 + 12);
    } else {
        a.load(Size::W, dst, R6, USER_IP4);
    }
}

/// Writes the address `ip`:`port` (registers; `ip` an IPv4 address, be) into the
/// context's user_ip4/user_port, or, for IPv6, as the v4-mapped ::ffff:`ip`. Clobbers
/// r5.
fn write_addr(a: &mut Asm, v6: bool, ip: Reg, port: Reg) {
    if v6 {
        a.mov_imm(R5, 0)
            .store(Size::W, R6, USER_IP6, R5)
            .store(Size::W, R6, USER_IP6 + 4, R5)
            .mov32_imm(R5, MAPPED)
            .store(Size::W, R6, USER_IP6 + 8, R5)
            .store(Size::W, R6, USER_IP6 + 12, ip);
    } else {
        a.store(Size::W, R6, USER_IP4, ip);
    }
    a.store(Size::W, R6, USER_PORT, port);
}

/// Fails the call with -`errno`.
fn fail(a: &mut Asm, errno: i32) {
    a.mov_imm(R1, -errno).call(bpf::FN_SET_RETVAL).ret(0);
}

/// A destination (in the route key) that no exact entry decides: refused (to
/// `refuse`) when the maps are incomplete or it is a pool port of this node (a row
/// whose entries may not be written yet), as `KernelMaps::lookup` has it. Clobbers
/// r0-r4.
fn undecided(a: &mut Asm, maps: &Maps, refuse: Label) {
    let not_pool = a.label();
    config(a, maps, refuse);
    a.load(Size::B, R1, R0, off(Config::COMPLETE_OFFSET))
        .if_eq(R1, 0, refuse)
        .load(Size::W, R1, R0, off(Config::NODE_IP_OFFSET))
        .load(Size::W, R2, R10, at(ROUTE_KEY, RouteKey::IP_OFFSET))
        .if_ne_reg(R1, R2, not_pool)
        // The port in the host's order (the key holds it big-endian).
        .load(Size::H, R3, R10, at(ROUTE_KEY, RouteKey::PORT_OFFSET))
        .if_eq(R3, 0, not_pool)
        .mov(R4, R3)
        .and_imm(R4, 0xff)
        .lsh_imm(R4, 8)
        .rsh_imm(R3, 8)
        .add(R3, R4);
    for i in 0..Config::POOL_RANGES {
        let next = a.label();
        let at_range = off(Config::POOL_OFFSET + i * Config::POOL_RANGE_SIZE);
        a.load(Size::H, R1, R0, at_range)
            .load(Size::H, R2, R0, at_range + 2)
            .if_gt_reg(R1, R3, next)
            .if_gt_reg(R3, R2, next)
            .goto(refuse)
            .here(next);
    }
    a.here(not_pool);
}

/// What a program that routes a destination is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// connect4/6: one target (balanced) for the connection, which getpeername shows
    /// as the destination the app named.
    Connect,
    /// udp sendmsg4/6: the target the socket is pinned to ([`Route::pinned`]), for
    /// this datagram only.
    Send,
}

/// connect4/6 and udp sendmsg4/6.
fn route(maps: &Maps, v6: bool, hook: Hook) -> Vec<Insn> {
    let mut a = Asm::default();
    let [refuse, native6, loopback6, have_dest, found, no_route, loopback, broker, backends, random, chosen] =
        [(); 11].map(|_| a.label());
    let [wrong_family, loopback_refused] = [(); 2].map(|_| a.label());
    sock_state(&mut a, maps);
    if hook == Hook::Send {
        // The source the app may name (IP_PKTINFO, IPV6_PKTINFO) is the socket's own
        // address, as when the daemon sent for it and dropped that message: another
        // of the host's addresses (127.0.0.1, ...) would be the app speaking as the node.
        a.load(Size::DW, R1, R6, SK);
        let (from, to, words) = if v6 { (SOCK_SRC_IP6, MSG_SRC_IP6, 4) } else { (SOCK_SRC_IP4, MSG_SRC_IP4, 1) };
        for w in 0..words {
            a.load(Size::W, R2, R1, from + 4 * w).store(Size::W, R6, to + 4 * w, R2);
        }
        // No address (a connected socket's send with ancillary data; the kernel refuses
        // port 0 in an address before this hook): connect decided where it goes.
        a.load(Size::W, R1, R6, USER_PORT).if_eq(R1, 0, V::Allow);
    } else {
        // The kernel refuses a sockaddr of another family after the hook; so do we,
        // before anything is written.
        a.load(Size::W, R1, R6, USER_FAMILY).if_ne(R1, if v6 { libc::AF_INET6 } else { libc::AF_INET }, wrong_family);
    }

    // The destination's IPv4 address into the route key.
    if v6 {
        a.load(Size::W, R1, R6, USER_IP6)
            .if_ne(R1, 0, native6)
            .load(Size::W, R1, R6, USER_IP6 + 4)
            .if_ne(R1, 0, native6)
            .load(Size::W, R1, R6, USER_IP6 + 8)
            .mov32_imm(R2, MAPPED)
            .if_eq(R1, 0, loopback6)
            .if_ne_reg(R1, R2, native6)
            .load(Size::W, R1, R6, USER_IP6 + 12)
            .goto(have_dest)
            .here(loopback6)
            // :: and ::1 are the loopback, as 0.0.0.0 and 127.0.0.1 are.
            .load(Size::W, R1, R6, USER_IP6 + 12)
            .skip_if_eq(R1, 0, 1)
            .if_ne(R1, LOOPBACK6, native6)
            .mov_imm(R1, LOOPBACK4)
            .goto(have_dest);
    } else {
        a.load(Size::W, R1, R6, USER_IP4);
    }
    a.here(have_dest)
        .store(Size::W, R10, at(ROUTE_KEY, RouteKey::IP_OFFSET), R1)
        .load(Size::W, R2, R6, USER_PORT)
        .store(Size::H, R10, at(ROUTE_KEY, RouteKey::PORT_OFFSET), R2)
        .load(Size::W, R3, R6, PROTOCOL)
        .store(Size::B, R10, at(ROUTE_KEY, RouteKey::PROTO_OFFSET), R3)
        .store_imm(Size::B, R10, at(ROUTE_KEY, RouteKey::PROTO_OFFSET + 1), 0)
        .store(Size::W, R10, DEST, R1)
        .store(Size::H, R10, DEST + 4, R2);
    if hook == Hook::Connect {
        // What getpeername will show: the destination the app named.
        a.store(Size::W, R7, off(SockState::PEER_IP_OFFSET), R1)
            .store(Size::H, R7, off(SockState::PEER_PORT_OFFSET), R2)
            .load(Size::W, R1, R7, off(SockState::FLAGS_OFFSET))
            .or_imm(R1, SockState::PEER_SET as i32)
            .store(Size::W, R7, off(SockState::FLAGS_OFFSET), R1);
    }
    // The app's class; an app the maps do not know sends nowhere.
    a.load(Size::W, R1, R7, off(SockState::APP_OFFSET)).store(Size::W, R10, SCRATCH, R1);
    lookup(&mut a, &maps.apps, SCRATCH, V::Deny);
    a.load(Size::W, R1, R0, off(AppEntry::CLASS_OFFSET))
        .store(Size::W, R10, at(ROUTE_KEY, RouteKey::CLASS_OFFSET), R1)
        // The loopback is the app's own, whatever the entries say.
        .load(Size::W, R1, R10, DEST)
        .if_eq(R1, 0, loopback)
        .and_imm(R1, 0xff)
        .if_eq(R1, 127, loopback);
    a.mov(R2, R10).add_imm(R2, ROUTE_KEY as i32).load_map(R1, &maps.routes).call(bpf::FN_MAP_LOOKUP_ELEM);
    a.if_ne(R0, 0, found).store_imm(Size::W, R10, at(ROUTE_KEY, RouteKey::CLASS_OFFSET), ANY_CLASS as i32);
    a.mov(R2, R10).add_imm(R2, ROUTE_KEY as i32).load_map(R1, &maps.routes).call(bpf::FN_MAP_LOOKUP_ELEM);
    a.if_ne(R0, 0, found);
    undecided(&mut a, maps, refuse);
    // An app's address at a port it sends from on this node (what a server's recvmsg
    // shows of that app): to that socket, at the node's address.
    let not_client = a.label();
    a.load(Size::W, R1, R6, PROTOCOL).if_ne(R1, libc::IPPROTO_UDP, not_client);
    sender::app_at(&mut a, maps, None, DEST + 4, not_client);
    a.load(Size::W, R2, R10, DEST).if_ne_reg(R1, R2, not_client);
    config(&mut a, maps, not_client);
    a.load(Size::W, R1, R0, off(Config::NODE_IP_OFFSET)).load(Size::H, R2, R10, DEST + 4);
    write_addr(&mut a, v6, R1, R2);
    a.goto(V::Allow).here(not_client);
    a.store_imm(Size::H, R10, at(ROUTE_KEY, RouteKey::PORT_OFFSET), 0);
    lookup(&mut a, &maps.routes, ROUTE_KEY, no_route);

    a.here(found).mov(R9, R0);
    if hook == Hook::Connect {
        count_connect(&mut a, maps);
    }
    a.load(Size::B, R1, R9, off(Route::VERDICT_OFFSET))
        .if_eq(R1, Verdict::Pass as i32, V::Allow)
        .if_eq(R1, Verdict::Backends as i32, backends)
        .if_ne(R1, Verdict::Broker as i32, refuse)
        .store_imm(Size::B, R10, at(BROKER_ENTRY, BrokerEntry::KIND_OFFSET), BrokerKind::Egress as i32)
        .goto(broker);

    // No entry: outside TCP goes through the broker when the node has egress; the
    // rest passes.
    a.here(no_route);
    config(&mut a, maps, refuse);
    a.load(Size::B, R1, R0, off(Config::EGRESS_OFFSET))
        .if_eq(R1, 0, V::Allow)
        .load(Size::W, R1, R6, PROTOCOL)
        .if_ne(R1, libc::IPPROTO_TCP, V::Allow)
        .store_imm(Size::B, R10, at(BROKER_ENTRY, BrokerEntry::KIND_OFFSET), BrokerKind::Egress as i32)
        .goto(broker);

    a.here(loopback)
        .load(Size::W, R1, R7, off(SockState::APP_OFFSET))
        .store(Size::W, R10, at(PRIVATE_KEY, PrivateKey::APP_OFFSET), R1)
        .load(Size::H, R1, R10, DEST + 4)
        .store(Size::H, R10, at(PRIVATE_KEY, PrivateKey::PORT_OFFSET), R1)
        .load(Size::W, R1, R6, PROTOCOL)
        .store(Size::B, R10, at(PRIVATE_KEY, PrivateKey::PROTO_OFFSET), R1)
        .store_imm(Size::B, R10, at(PRIVATE_KEY, PrivateKey::PROTO_OFFSET + 1), 0);
    lookup(&mut a, &maps.private, PRIVATE_KEY, loopback_refused);
    a.store_imm(Size::B, R10, at(BROKER_ENTRY, BrokerEntry::KIND_OFFSET), BrokerKind::Loopback as i32);

    // To the broker (TCP only: it takes connections), with the destination recorded
    // under the socket's cookie for it.
    a.here(broker)
        .load(Size::W, R1, R6, PROTOCOL)
        .if_ne(R1, libc::IPPROTO_TCP, loopback_refused)
        .load(Size::W, R1, R7, off(SockState::APP_OFFSET))
        .store(Size::W, R10, at(BROKER_ENTRY, BrokerEntry::APP_OFFSET), R1)
        .load(Size::W, R1, R10, DEST)
        .store(Size::W, R10, at(BROKER_ENTRY, BrokerEntry::DEST_IP_OFFSET), R1)
        .load(Size::H, R1, R10, DEST + 4)
        .store(Size::H, R10, at(BROKER_ENTRY, BrokerEntry::DEST_PORT_OFFSET), R1)
        .store_imm(Size::B, R10, at(BROKER_ENTRY, BrokerEntry::KIND_OFFSET + 1), 0)
        .mov(R1, R6)
        .call(bpf::FN_GET_SOCKET_COOKIE)
        .store(Size::DW, R10, COOKIE, R0)
        .load_map(R1, &maps.broker)
        .mov(R2, R10)
        .add_imm(R2, COOKIE as i32)
        .mov(R3, R10)
        .add_imm(R3, BROKER_ENTRY as i32)
        .mov_imm(R4, 0)
        .call(bpf::FN_MAP_UPDATE_ELEM)
        .if_ne(R0, 0, refuse);
    config(&mut a, maps, refuse);
    a.load(Size::W, R1, R0, off(Config::BROKER_IP_OFFSET)).load(Size::H, R2, R0, off(Config::BROKER_PORT_OFFSET));
    write_addr(&mut a, v6, R1, R2);
    a.goto(V::Allow);

    // One target: r8 its group's first target, r0 its place in the group.
    a.here(backends).load(Size::B, R8, R9, off(Route::NGROUPS_OFFSET)).if_eq(R8, 0, refuse);
    let group = |a: &mut Asm| {
        // ngroups <= 8: the mask changes nothing but shows the verifier the bound.
        a.and_imm(R1, ax_core::kmap::MAX_GROUPS as i32 - 1)
            .lsh_imm(R1, Route::GROUP_SIZE.trailing_zeros() as i32)
            .add(R1, R9)
            .load(Size::B, R2, R1, off(Route::GROUPS_OFFSET + 1))
            .if_eq(R2, 0, refuse);
    };
    match hook {
        // The group by the entry's balancer, the target in it at random.
        Hook::Connect => {
            a.load(Size::B, R1, R9, off(Route::LB_OFFSET))
                .if_ne(R1, ax_core::kmap::Lb::RoundRobin as i32, random)
                .mov_imm(R1, 1)
                .fetch_add(Size::W, R9, off(Route::RR_OFFSET), R1)
                .goto(chosen)
                .here(random)
                .call(bpf::FN_GET_PRANDOM_U32)
                .mov(R1, R0)
                .here(chosen)
                .rem(R1, R8);
            group(&mut a);
            a.load(Size::B, R8, R1, off(Route::GROUPS_OFFSET))
                .store(Size::W, R10, SCRATCH, R2)
                .call(bpf::FN_GET_PRANDOM_U32)
                .load(Size::W, R1, R10, SCRATCH)
                .rem(R0, R1);
        }
        // By the socket's cookie: every datagram of a socket to the same backend.
        Hook::Send => {
            a.mov(R1, R6).call(bpf::FN_GET_SOCKET_COOKIE).store(Size::DW, R10, COOKIE, R0).mov(R1, R0).rem(R1, R8);
            group(&mut a);
            a.load(Size::DW, R0, R10, COOKIE).div(R0, R8).rem(R0, R2).load(Size::B, R8, R1, off(Route::GROUPS_OFFSET));
        }
    }
    a.add(R0, R8)
        .and_imm(R0, ax_core::kmap::MAX_TARGETS as i32 - 1)
        .lsh_imm(R0, Route::TARGET_SIZE.trailing_zeros() as i32)
        .add(R0, R9)
        .load(Size::W, R1, R0, off(Route::TARGETS_OFFSET + Route::TARGET_IP_OFFSET))
        .load(Size::H, R2, R0, off(Route::TARGETS_OFFSET + Route::TARGET_PORT_OFFSET));
    write_addr(&mut a, v6, R1, R2);
    if hook == Hook::Send {
        // A datagram has no source route entry to bind to: the user driver's sends
        // go from the socket as it is too.
        a.goto(V::Allow);
    } else {
        bind_source(&mut a, v6);
    }

    if v6 {
        // A real IPv6 destination passes as it is, and getpeername shows the kernel's.
        a.here(native6);
        if hook == Hook::Connect {
            a.load(Size::W, R1, R7, off(SockState::FLAGS_OFFSET)).and_imm(R1, !(SockState::PEER_SET as i32)).store(
                Size::W,
                R7,
                off(SockState::FLAGS_OFFSET),
                R1,
            );
        }
        a.goto(V::Allow);
    }
    if hook == Hook::Connect {
        a.here(wrong_family);
        fail(&mut a, libc::EAFNOSUPPORT);
    }
    a.here(refuse);
    if hook == Hook::Connect {
        // A UDP connect never fails on a host: connected to the node's closed port
        // (the broker's, which takes TCP only: `plan::closed_port`), its sends go
        // nowhere and fail afterwards, and getpeername shows the destination named.
        let refused = a.label();
        a.load(Size::W, R1, R6, PROTOCOL).if_ne(R1, libc::IPPROTO_UDP, refused);
        config(&mut a, maps, refused);
        a.load(Size::W, R1, R0, off(Config::BROKER_IP_OFFSET)).load(Size::H, R2, R0, off(Config::BROKER_PORT_OFFSET));
        write_addr(&mut a, v6, R1, R2);
        a.goto(V::Allow).here(refused);
    }
    // The loopback without a listener of the app's, and a socket the broker cannot
    // carry: refused, UDP too (it has no closed port on the loopback to go to).
    a.here(loopback_refused);
    fail(&mut a, libc::ECONNREFUSED);
    a.finish()
}

/// The end of a connect to a target: from the entry's (r9) source address, if it has
/// one; a source that cannot be had fails the connect with the bind's errno rather
/// than connecting from another.
fn bind_source(a: &mut Asm, v6: bool) {
    a.load(Size::W, R1, R9, off(Route::SOURCE_IP_OFFSET)).if_eq(R1, 0, V::Allow);
    if v6 {
        a.mov_imm(R2, 0)
            .store_imm(Size::H, R10, BIND_ADDR, libc::AF_INET6)
            .store(Size::H, R10, BIND_ADDR + 2, R2)
            .store(Size::W, R10, BIND_ADDR + 4, R2)
            .store(Size::W, R10, BIND_ADDR + 8, R2)
            .store(Size::W, R10, BIND_ADDR + 12, R2)
            .store(Size::W, R10, BIND_ADDR + 24, R2)
            .mov32_imm(R2, MAPPED)
            .store(Size::W, R10, BIND_ADDR + 16, R2)
            .store(Size::W, R10, BIND_ADDR + 20, R1)
            .mov_imm(R3, 28);
    } else {
        a.store_imm(Size::H, R10, BIND_ADDR, libc::AF_INET)
            .store_imm(Size::H, R10, BIND_ADDR + 2, 0)
            .store(Size::W, R10, BIND_ADDR + 4, R1)
            .store_imm(Size::DW, R10, BIND_ADDR + 8, 0)
            .mov_imm(R3, 16);
    }
    a.mov(R1, R6).mov(R2, R10).add_imm(R2, BIND_ADDR as i32).call(bpf::FN_BIND).if_eq(R0, 0, V::Allow);
    a.mov(R1, R0).call(bpf::FN_SET_RETVAL).ret(0);
}

/// udp recvmsg4/6: a datagram from a row's host address shows its service as the
/// source (`ax_kpeers`), as the user driver's receive does; the rest as it is.
fn recvmsg(maps: &Maps, v6: bool) -> Vec<Insn> {
    let mut a = Asm::default();
    sock_state(&mut a, maps);
    user_ip4(&mut a, v6, R1);
    // The port's word holds it in its low 16 bits: the key's padding stays zero.
    a.store(Size::W, R10, at(PEER_KEY, Peer::IP_OFFSET), R1).load(Size::W, R1, R6, USER_PORT).store(
        Size::W,
        R10,
        at(PEER_KEY, Peer::PORT_OFFSET),
        R1,
    );
    let client = a.label();
    lookup(&mut a, &maps.peers, PEER_KEY, client);
    a.load(Size::W, R1, R0, off(Peer::IP_OFFSET)).load(Size::H, R2, R0, off(Peer::PORT_OFFSET));
    write_addr(&mut a, v6, R1, R2);
    a.goto(V::Allow).here(client);
    // Else, from an app's socket on this node: that app, at the datagram's port.
    sender::app_at(&mut a, maps, Some(at(PEER_KEY, Peer::IP_OFFSET)), at(PEER_KEY, Peer::PORT_OFFSET), V::Allow);
    a.load(Size::W, R2, R6, USER_PORT);
    write_addr(&mut a, v6, R1, R2);
    a.goto(V::Allow);
    a.finish()
}

/// cgroup egress: a packet of a kernel-driver app's socket carries no IP options and
/// no IPv6 extension header but a fragment header, or is dropped (the send fails with
/// EPERM). The sendmsg programs cannot see a send's control messages, and IP_RETOPTS
/// (or an IPv6 routing header) would route a datagram to a first hop of the app's
/// choosing, past the programs' decision.
fn egress(maps: &Maps) -> Vec<Insn> {
    let mut a = Asm::default();
    sock_state_at(&mut a, maps, SKB_SK);
    a.mov(R1, R6)
        .mov_imm(R2, 0)
        .mov(R3, R10)
        .add_imm(R3, -8)
        .mov_imm(R4, 8)
        .call(bpf::FN_SKB_LOAD_BYTES)
        .if_ne(R0, 0, V::Deny)
        // Version 4, header length 5 words.
        .load(Size::B, R1, R10, -8)
        .if_eq(R1, 0x45, V::Allow)
        .rsh_imm(R1, 4)
        .if_ne(R1, 6, V::Deny)
        // IPv6's next header (byte 6).
        .load(Size::B, R1, R10, -2)
        .if_eq(R1, libc::IPPROTO_TCP, V::Allow)
        .if_eq(R1, libc::IPPROTO_UDP, V::Allow)
        .if_eq(R1, libc::IPPROTO_FRAGMENT, V::Allow)
        .goto(V::Deny);
    a.finish()
}

/// getpeername4/6: the destination the app connected to.
fn getpeername(maps: &Maps, v6: bool) -> Vec<Insn> {
    let mut a = Asm::default();
    sock_state(&mut a, maps);
    a.load(Size::W, R1, R7, off(SockState::FLAGS_OFFSET))
        .and_imm(R1, SockState::PEER_SET as i32)
        .if_eq(R1, 0, V::Allow)
        .load(Size::W, R1, R7, off(SockState::PEER_IP_OFFSET))
        .load(Size::H, R2, R7, off(SockState::PEER_PORT_OFFSET));
    write_addr(&mut a, v6, R1, R2);
    a.goto(V::Allow);
    a.finish()
}

/// getsockname4/6: the service address a socket the daemon bound stands for (the
/// wildcard for a wildcard bind while the socket is closed or listening, as the kernel
/// shows it; what it accepts inherits its state and shows the service address); the
/// app's own address where the kernel's is the node's.
fn getsockname(maps: &Maps, v6: bool) -> Vec<Insn> {
    let mut a = Asm::default();
    let (not_bound, any, shown) = (a.label(), a.label(), a.label());
    sock_state(&mut a, maps);
    a.load(Size::W, R1, R7, off(SockState::FLAGS_OFFSET))
        .and_imm(R1, SockState::LOCAL_SET as i32)
        .if_eq(R1, 0, not_bound)
        .load(Size::W, R1, R7, off(SockState::LOCAL_IP_OFFSET))
        .load(Size::H, R2, R7, off(SockState::LOCAL_PORT_OFFSET))
        .load(Size::W, R3, R7, off(SockState::FLAGS_OFFSET))
        .and_imm(R3, SockState::LOCAL_ANY as i32)
        .if_eq(R3, 0, shown)
        .load(Size::DW, R3, R6, SK)
        .load(Size::W, R3, R3, SOCK_STATE)
        .if_eq(R3, i32::from(ax_core::plan::TCP_CLOSE), any)
        .if_ne(R3, i32::from(ax_core::plan::TCP_LISTEN), shown)
        .here(any)
        .mov_imm(R1, 0)
        .here(shown);
    if v6 {
        // A wildcard bind of an IPv6 socket is `::`, not ::ffff:0.0.0.0.
        let mapped = a.label();
        a.if_ne(R1, 0, mapped)
            .store(Size::W, R6, USER_IP6, R1)
            .store(Size::W, R6, USER_IP6 + 4, R1)
            .store(Size::W, R6, USER_IP6 + 8, R1)
            .store(Size::W, R6, USER_IP6 + 12, R1)
            .store(Size::W, R6, USER_PORT, R2)
            .goto(V::Allow)
            .here(mapped);
    }
    write_addr(&mut a, v6, R1, R2);
    a.goto(V::Allow).here(not_bound);
    user_ip4(&mut a, v6, R8);
    config(&mut a, maps, V::Allow);
    a.load(Size::W, R1, R0, off(Config::NODE_IP_OFFSET))
        .if_ne_reg(R8, R1, V::Allow)
        .load(Size::W, R1, R7, off(SockState::APP_OFFSET))
        .store(Size::W, R10, SCRATCH, R1);
    lookup(&mut a, &maps.apps, SCRATCH, V::Allow);
    a.load(Size::W, R1, R0, off(AppEntry::IP_OFFSET)).store(Size::W, R6, if v6 { USER_IP6 + 12 } else { USER_IP4 }, R1);
    a.goto(V::Allow);
    a.finish()
}

/// bind4/6: the daemon's threads only.
fn daemon_only(maps: &Maps) -> Vec<Insn> {
    let mut a = Asm::default();
    sock_state(&mut a, maps);
    hooks::if_not_daemon(&mut a, &maps.daemon, V::Deny);
    a.goto(V::Allow);
    a.finish()
}
