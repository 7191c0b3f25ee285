//! The socket guard: rules the kernel itself enforces on the host sockets ax hands to
//! apps, so they hold whatever a hostile app races.
//!
//! The seccomp path decides every connect, bind and addressed send an app makes, but a
//! call the daemon lets the kernel continue is looked up again by descriptor number, and
//! some calls (sendmmsg, a send with MSG_FASTOPEN) name destinations the filter cannot
//! see. So every host socket an app gets is marked, in socket storage, and two cgroup
//! eBPF programs on the daemon's cgroup (where those sockets are made) check the mark:
//!
//! - on connect, bind and addressed UDP sends (IPv4 and IPv6), a marked socket is
//!   refused (EPERM) unless the caller is a thread of the daemon: only the daemon picks
//!   where an app's host socket goes;
//! - on ingress, a socket marked members-only takes new connections (TCP, in LISTEN) or
//!   datagrams (UDP, unconnected) only from the addresses in the members map (this node
//!   and the cluster's live members); everything else is dropped, as a firewall would.
//!   Apps' TCP sockets are members-only from the start (a listener the app made behind
//!   the daemon's back included) and UDP ones once on a pool port; a socket on an exposed
//!   port is open to all.
//!
//! Maps and links are pinned under the run directory, so a restarting daemon takes them
//! over (it writes its own identity into the daemon map) and the rules never lapse; while
//! no daemon runs, the identity is a gone process and every app's attempt is refused.
//!
//! Where the guard cannot be installed (no BPF), apps get the filter of
//! [`crate::policy::SocketGuard::Absent`], which traps what the guard would refuse, and
//! the engine sends itself what it would otherwise let continue on a host UDP socket.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ax_sys::bpf::{self, Asm, Insn, Map, Size, Verdict, R0, R1, R10, R2, R3, R4, R6, R7, R8};
use tracing::{info, warn};

use crate::hooks::{self, Cgroup, InstallError};

/// The socket belongs to an app: only the daemon connects, binds or addresses it.
pub const GUARDED: u32 = 1;
/// Only members may open connections to it or send it datagrams.
pub const MEMBERS_ONLY: u32 = 2;

/// Attach types of the calls that name a destination or an address (bind4, bind6,
/// connect4, connect6, udp4_sendmsg, udp6_sendmsg).
const ADDRESS_HOOKS: &[(u32, &str)] = &[
    (bpf::ATTACH_BIND4, "bind4"),
    (bpf::ATTACH_BIND6, "bind6"),
    (bpf::ATTACH_CONNECT4, "connect4"),
    (bpf::ATTACH_CONNECT6, "connect6"),
    (bpf::ATTACH_UDP4_SENDMSG, "sendmsg4"),
    (bpf::ATTACH_UDP6_SENDMSG, "sendmsg6"),
];

/// The pin directory's name; a new layout gets a new name.
const LAYOUT: &str = "ax-guard-v2";
const MAX_MEMBERS: u32 = 4096;
const WHO: &str = "socket guard";
/// offsetof(struct bpf_sock_addr, sk) and offsetof(struct __sk_buff, sk / protocol).
const SOCK_ADDR_SK: i16 = 64;
const SKB_SK: i16 = 168;
const SKB_PROTOCOL: i16 = 16;
/// offsetof(struct bpf_sock, state), and the states that take new peers: TCP_LISTEN, and
/// TCP_CLOSE (an unconnected UDP socket).
const SOCK_STATE: i16 = 72;
const TCP_LISTEN: i32 = 10;
const TCP_CLOSE: i32 = 7;
/// The IPv4 source address in the network header.
const IPV4_SADDR: i32 = 12;

/// Why the guard could not be installed.
pub type GuardError = InstallError;

/// The guard, installed.
pub struct Guard {
    maps: Maps,
    /// Its pin directory.
    dir: PathBuf,
    known: Mutex<HashSet<Ipv4Addr>>,
    /// The marks are a previous daemon's, taken over from its pins.
    taken_over: bool,
}

/// The marks and the daemon's identity outlive a daemon (pinned); the members are
/// this daemon's to find out afresh.
struct Maps {
    sockets: Arc<Map>,
    daemon: Map,
    members: Map,
}

impl Maps {
    /// The pinned maps under `dir`, or new ones pinned there; None when there are
    /// none yet.
    fn open(dir: &Path) -> io::Result<Option<Maps>> {
        let sockets = match Map::open_pinned(&dir.join("sockets")) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Maps {
            sockets: Arc::new(sockets),
            daemon: Map::open_pinned(&dir.join("daemon"))?,
            members: Maps::members()?,
        }))
    }

    fn create(dir: &Path) -> io::Result<Maps> {
        fs::create_dir_all(dir)?;
        let maps = Maps {
            sockets: Arc::new(Map::sk_storage("ax_sockets", 4)?),
            daemon: hooks::daemon_map()?,
            members: Maps::members()?,
        };
        // The identity first: once `sockets` is pinned, a later daemon takes both.
        maps.daemon.pin(&dir.join("daemon"))?;
        maps.sockets.pin(&dir.join("sockets"))?;
        Ok(maps)
    }

    fn members() -> io::Result<Map> {
        Map::new(bpf::MAP_HASH, "ax_members", 4, 4, MAX_MEMBERS)
    }
}

impl Guard {
    /// Installs the guard on this process's cgroup, taking over the maps a previous
    /// daemon pinned under `run_dir`/bpf (a bpffs is mounted there if need be; so is a
    /// cgroup2 at `run_dir`/cgroup2 when this mount namespace shows none).
    pub fn install(run_dir: &Path) -> Result<Guard, GuardError> {
        let cgroup = Cgroup::own(WHO, run_dir)?;
        let dir = hooks::pin_dir(WHO, run_dir, LAYOUT)?;
        // Anything but "none yet" stops the daemon: starting over would drop the marks
        // of every running app's sockets.
        let (maps, taken_over) = match Maps::open(&dir).map_err(|e| InstallError::Pins(WHO, dir.clone(), e))? {
            Some(maps) => {
                info!(pins = %dir.display(), "taking over the socket guard a previous daemon left");
                (maps, true)
            }
            None => (Maps::create(&dir).map_err(|e| InstallError::Pins(WHO, dir.clone(), e))?, false),
        };
        hooks::claim(&maps.daemon).map_err(|e| InstallError::Maps(WHO, e))?;

        hooks::attach_and_pin(WHO, &cgroup, &dir, &programs(&maps))?;
        info!(cgroup = %cgroup.dir.display(), pins = %dir.display(), "socket guard installed");
        match hooks::remove_old_layouts(run_dir, &[LAYOUT, crate::kdriver::LAYOUT]) {
            Ok(old) if !old.is_empty() => info!(?old, "removed the pins of older versions' programs"),
            Ok(_) => {}
            Err(e) => warn!("cannot remove the pins of older versions' programs under {}: {e}", run_dir.display()),
        }
        Ok(Guard { maps, dir, known: Mutex::new(HashSet::new()), taken_over })
    }

    /// Attaches the guard's programs to `cgroup` too (and pins them), for the sockets
    /// made there: the kernel driver's app cgroups, where the daemon's cgroup does not
    /// hold them.
    pub(crate) fn attach_to(&self, cgroup: &Cgroup) -> Result<(), GuardError> {
        hooks::attach_and_pin(WHO, cgroup, &self.dir, &programs(&self.maps))?;
        info!(cgroup = %cgroup.dir.display(), "socket guard attached");
        Ok(())
    }

    /// Whether this guard's marks are the ones a previous daemon left (its pins, of this
    /// layout): false when they were made anew (none pinned, lost with a bpffs mount, or
    /// an older version's, removed), so no socket of an app started before holds one.
    pub fn taken_over(&self) -> bool {
        self.taken_over
    }

    /// Whether a previous daemon left programs pinned under `run_dir` (the guard's or the
    /// kernel driver's, of this version's layout or an older one): its apps' sockets are
    /// guarded still, so a daemon that cannot take the guard over must not serve
    /// without one.
    pub fn left_behind(run_dir: &Path) -> bool {
        !hooks::pinned_layouts(run_dir).is_empty()
    }

    /// The map of marks ([`GUARDED`], [`MEMBERS_ONLY`]) that engines write, one value per
    /// socket.
    pub fn marks(&self) -> Arc<Map> {
        Arc::clone(&self.maps.sockets)
    }

    /// Makes one of the daemon's own listeners take connections from members only.
    pub fn mark_members_only(&self, sock: BorrowedFd<'_>) -> io::Result<()> {
        self.maps.sockets.update_socket(sock, MEMBERS_ONLY)
    }

    /// The member set, for programs that trust what members send.
    pub(crate) fn members(&self) -> &Map {
        &self.maps.members
    }

    /// Makes `members` the addresses pool ports take packets from.
    pub fn set_members(&self, members: &HashSet<Ipv4Addr>) -> io::Result<()> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for gone in known.difference(members) {
            self.maps.members.delete(&gone.octets())?;
        }
        for new in members.difference(&known) {
            self.maps.members.update(&new.octets(), &1u32.to_ne_bytes())?;
        }
        known.clone_from(members);
        Ok(())
    }
}

/// The guard's programs: on the calls that name an address, and on ingress.
fn programs(maps: &Maps) -> Vec<hooks::Program> {
    let address = address_program(maps);
    let mut programs: Vec<hooks::Program> =
        ADDRESS_HOOKS.iter().map(|&(hook, name)| (hook, name, bpf::PROG_CGROUP_SOCK_ADDR, address.clone())).collect();
    programs.push((bpf::ATTACH_INGRESS, "ingress", bpf::PROG_CGROUP_SKB, ingress_program(maps)));
    programs
}

/// r7 = the socket's marks (r6: the context, r8: the socket), from the socket pointer at
/// ctx + `sk_at`; a null socket or one without marks is allowed.
fn marks(a: &mut Asm, maps: &Maps, sk_at: i16) {
    a.mov(R6, R1)
        .load(Size::DW, R2, R6, sk_at)
        .if_eq(R2, 0, Verdict::Allow)
        .mov(R8, R2)
        .load_map(R1, &maps.sockets)
        .mov_imm(R3, 0)
        .mov_imm(R4, 0)
        .call(bpf::FN_SK_STORAGE_GET)
        .if_eq(R0, 0, Verdict::Allow)
        .load(Size::W, R7, R0, 0);
}

/// Connect, bind and addressed sends on a guarded socket: allowed to the daemon only.
fn address_program(maps: &Maps) -> Vec<Insn> {
    let mut a = Asm::default();
    marks(&mut a, maps, SOCK_ADDR_SK);
    a.and_imm(R7, GUARDED as i32).if_eq(R7, 0, Verdict::Allow);
    hooks::if_not_daemon(&mut a, &maps.daemon, Verdict::Deny);
    a.goto(Verdict::Allow);
    a.finish()
}

/// Packets for a members-only socket that takes new peers: IPv4 from a member, or
/// dropped. Established connections and connected sockets are left alone.
fn ingress_program(maps: &Maps) -> Vec<Insn> {
    let ipv4 = i32::from(0x0800u16.to_be());
    let mut a = Asm::default();
    marks(&mut a, maps, SKB_SK);
    a.and_imm(R7, MEMBERS_ONLY as i32)
        .if_eq(R7, 0, Verdict::Allow)
        .load(Size::W, R2, R8, SOCK_STATE)
        .skip_if_eq(R2, TCP_LISTEN, 1)
        .if_ne(R2, TCP_CLOSE, Verdict::Allow)
        .load(Size::W, R2, R6, SKB_PROTOCOL)
        .if_ne(R2, ipv4, Verdict::Deny)
        .mov(R1, R6)
        .mov_imm(R2, IPV4_SADDR)
        .mov(R3, R10)
        .add_imm(R3, -4)
        .mov_imm(R4, 4)
        .call(bpf::FN_SKB_LOAD_BYTES)
        .if_ne(R0, 0, Verdict::Deny)
        .mov(R2, R10)
        .add_imm(R2, -4)
        .load_map(R1, &maps.members)
        .call(bpf::FN_MAP_LOOKUP_ELEM)
        .if_eq(R0, 0, Verdict::Deny)
        .goto(Verdict::Allow);
    a.finish()
}
