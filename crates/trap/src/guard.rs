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

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ax_sys::bpf::{self, Asm, Insn, Map, Size, Verdict, R0, R1, R10, R2, R3, R4, R6, R7, R8};
use tracing::info;

/// The socket belongs to an app: only the daemon connects, binds or addresses it.
pub const GUARDED: u32 = 1;
/// Only members may open connections to it or send it datagrams.
pub const MEMBERS_ONLY: u32 = 2;

/// Attach types of the calls that name a destination or an address (bind4, bind6,
/// connect4, connect6, udp4_sendmsg, udp6_sendmsg).
const ADDRESS_HOOKS: &[(u32, &str)] =
    &[(8, "bind4"), (9, "bind6"), (10, "connect4"), (11, "connect6"), (14, "sendmsg4"), (15, "sendmsg6")];
const INGRESS: u32 = 0;

/// The pin directory's name; a new layout gets a new name.
const LAYOUT: &str = "ax-guard-v2";
const MAX_MEMBERS: u32 = 4096;
/// bpf_pidns_info { pid, tgid } on the stack.
const PIDNS_INFO: i16 = -16;
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

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot find the daemon's cgroup (cgroup2 is needed): {0}")]
    Cgroup(io::Error),
    #[error("cannot set up the bpffs at {0}: {1}")]
    Pins(PathBuf, io::Error),
    #[error("cannot create the guard's maps: {0}")]
    Maps(io::Error),
    #[error("cannot load the guard's {0} program (Linux 6.10 or later is needed): {1}")]
    Load(&'static str, io::Error),
    #[error("cannot attach the guard's {0} program to {1}: {2}")]
    Attach(&'static str, PathBuf, io::Error),
}

/// The guard, installed.
pub struct Guard {
    sockets: Arc<Map>,
    members: Map,
    known: Mutex<HashSet<Ipv4Addr>>,
}

/// The marks and the daemon's identity outlive a daemon (pinned); the members are
/// this daemon's to find out afresh.
struct Maps {
    sockets: Map,
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
        Ok(Some(Maps { sockets, daemon: Map::open_pinned(&dir.join("daemon"))?, members: Maps::members()? }))
    }

    fn create(dir: &Path) -> io::Result<Maps> {
        fs::create_dir_all(dir)?;
        let maps = Maps {
            sockets: Map::sk_storage("ax_sockets", 4)?,
            daemon: Map::new(bpf::MAP_ARRAY, "ax_daemon", 4, 24, 1)?,
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
        let pins = &run_dir.join("bpf");
        let cgroup_dir = own_cgroup(&run_dir.join("cgroup2")).map_err(GuardError::Cgroup)?;
        let cgroup = File::open(&cgroup_dir)
            .map_err(|e| GuardError::Cgroup(io::Error::new(e.kind(), format!("{}: {e}", cgroup_dir.display()))))?;
        bpf::ensure_bpffs(pins).map_err(|e| GuardError::Pins(pins.into(), e))?;
        let dir = pins.join(LAYOUT);
        // Anything but "none yet" stops the daemon: starting over would drop the marks
        // of every running app's sockets.
        let maps = match Maps::open(&dir).map_err(|e| GuardError::Pins(dir.clone(), e))? {
            Some(maps) => {
                info!(pins = %dir.display(), "taking over the socket guard a previous daemon left");
                maps
            }
            None => Maps::create(&dir).map_err(|e| GuardError::Pins(dir.clone(), e))?,
        };
        maps.daemon.update(&0u32.to_ne_bytes(), &identity().map_err(GuardError::Maps)?).map_err(GuardError::Maps)?;

        let address = address_program(&maps);
        let ingress = ingress_program(&maps);
        let mut links = Vec::new();
        for &(hook, name) in ADDRESS_HOOKS {
            let prog = bpf::load(bpf::PROG_CGROUP_SOCK_ADDR, hook, "ax_guard", &address)
                .map_err(|e| GuardError::Load(name, e))?;
            let link =
                bpf::attach(&prog, &cgroup, hook).map_err(|e| GuardError::Attach(name, cgroup_dir.clone(), e))?;
            links.push((name, link));
        }
        let prog = bpf::load(bpf::PROG_CGROUP_SKB, INGRESS, "ax_members", &ingress)
            .map_err(|e| GuardError::Load("ingress", e))?;
        let link =
            bpf::attach(&prog, &cgroup, INGRESS).map_err(|e| GuardError::Attach("ingress", cgroup_dir.clone(), e))?;
        links.push(("ingress", link));
        // The new links are attached before the old pins go: the rules never lapse. Pins
        // are per cgroup: a daemon started in another one leaves the links that guard the
        // sockets made in the old one.
        let cgroup_id = cgroup.metadata().map_err(GuardError::Cgroup)?.ino();
        for (name, link) in &links {
            let path = dir.join(format!("link-{name}-{cgroup_id}"));
            let _ = fs::remove_file(&path);
            link.pin(&path).map_err(|e| GuardError::Pins(path.clone(), e))?;
        }
        info!(cgroup = %cgroup_dir.display(), pins = %dir.display(), "socket guard installed");
        Ok(Guard { sockets: Arc::new(maps.sockets), members: maps.members, known: Mutex::new(HashSet::new()) })
    }

    /// The map of marks ([`GUARDED`], [`MEMBERS_ONLY`]) that engines write, one value per
    /// socket.
    pub fn marks(&self) -> Arc<Map> {
        Arc::clone(&self.sockets)
    }

    /// Makes one of the daemon's own listeners take connections from members only.
    pub fn mark_members_only(&self, sock: BorrowedFd<'_>) -> io::Result<()> {
        self.sockets.update_socket(sock, MEMBERS_ONLY)
    }

    /// Makes `members` the addresses pool ports take packets from.
    pub fn set_members(&self, members: &HashSet<Ipv4Addr>) -> io::Result<()> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for gone in known.difference(members) {
            self.members.delete(&gone.octets())?;
        }
        for new in members.difference(&known) {
            self.members.update(&new.octets(), &1u32.to_ne_bytes())?;
        }
        known.clone_from(members);
        Ok(())
    }
}

/// The daemon map's one value: this process's pid namespace (device, inode) and its pid
/// there, which is how the programs recognise the daemon's threads.
fn identity() -> io::Result<[u8; 24]> {
    let ns = fs::metadata("/proc/self/ns/pid")?;
    let mut v = [0u8; 24];
    v[0..8].copy_from_slice(&ns.dev().to_ne_bytes());
    v[8..16].copy_from_slice(&ns.ino().to_ne_bytes());
    v[16..20].copy_from_slice(&std::process::id().to_ne_bytes());
    Ok(v)
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
    a.and_imm(R7, GUARDED as i32)
        .if_eq(R7, 0, Verdict::Allow)
        .store_imm(Size::W, R10, -4, 0)
        .mov(R2, R10)
        .add_imm(R2, -4)
        .load_map(R1, &maps.daemon)
        .call(bpf::FN_MAP_LOOKUP_ELEM)
        .if_eq(R0, 0, Verdict::Deny)
        .load(Size::W, R7, R0, 16)
        .load(Size::DW, R1, R0, 0)
        .load(Size::DW, R2, R0, 8)
        .mov(R3, R10)
        .add_imm(R3, PIDNS_INFO as i32)
        .mov_imm(R4, 8)
        .call(bpf::FN_GET_NS_CURRENT_PID_TGID)
        // Not in the daemon's pid namespace at all: not the daemon.
        .if_ne(R0, 0, Verdict::Deny)
        .load(Size::W, R1, R10, PIDNS_INFO + 4)
        .if_ne_reg(R1, R7, Verdict::Deny)
        // And root: after a daemon dies, an unprivileged process may get its pid.
        .call(bpf::FN_GET_CURRENT_UID_GID)
        .lsh_imm(R0, 32)
        .rsh_imm(R0, 32)
        .if_ne(R0, 0, Verdict::Deny)
        .goto(Verdict::Allow);
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

/// The cgroup2 directory of this process: new sockets belong to it, so programs
/// attached there see every socket the daemon makes.
fn own_cgroup(fallback: &Path) -> io::Result<PathBuf> {
    let cgroup = fs::read_to_string("/proc/self/cgroup")?;
    let path = unified_path(&cgroup).ok_or_else(|| io::Error::other("no cgroup2 line (0::) in /proc/self/cgroup"))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let (mount, root) = match cgroup2_mount(&mountinfo) {
        Some((mount, root)) => (PathBuf::from(mount), root.trim_end_matches('/').to_string()),
        None => {
            fs::create_dir_all(fallback)?;
            ax_sys::ns::mount_fs("cgroup2", fallback, "")?;
            (fallback.to_path_buf(), String::new())
        }
    };
    let inside = path.strip_prefix(root.as_str()).unwrap_or(path).trim_start_matches('/');
    Ok(mount.join(inside))
}

/// The cgroup2 mount point and the root it shows, from /proc/self/mountinfo.
fn cgroup2_mount(mountinfo: &str) -> Option<(&str, &str)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = left.split_whitespace().collect();
        Some((*f.get(4)?, *f.get(3)?))
    })
}

/// This process's cgroup2 path, from /proc/self/cgroup.
fn unified_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_in_a_hybrid_layout() {
        let mi = "25 1 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                  30 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                  39 25 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mi), Some(("/sys/fs/cgroup/unified", "/")));
        assert_eq!(cgroup2_mount("25 1 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
        assert_eq!(cgroup2_mount("garbage\n"), None);
    }

    #[test]
    fn the_unified_line_gives_the_path() {
        assert_eq!(unified_path("4:memory:/x\n0::/system.slice/ax.service\n"), Some("/system.slice/ax.service"));
        assert_eq!(unified_path("4:memory:/x\n"), None);
    }
}
