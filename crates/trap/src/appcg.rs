//! The kernel driver's app cgroups: `<cgroup2 root>/ax-apps-N/<name>`, one per app that
//! makes its TCP sockets itself ("host sockets"), and the `cgroup/sock_create` program on
//! `ax-apps-N` that makes every inet socket made there the programs' to rule, as the
//! daemon's are. N is the inode of the daemon's network namespace: daemons of other
//! namespaces on one machine (test hosts) share the cgroup2 hierarchy but not their
//! apps' cgroups, and one's program never judges another's sockets. Below, `ax-apps`
//! stands for it.
//!
//! `ax_kcgroups` maps a cgroup's id (its directory's inode) to the kernel id of the app
//! it holds. For a socket made in a cgroup at or under `ax-apps`, the program:
//! - refuses it (socket() fails with EPERM) when the cgroup has no entry: an app the
//!   daemon forgot, a cgroup left behind or made by hand;
//! - refuses anything but TCP (SOCK_STREAM, IPPROTO_TCP): UDP, raw, ICMP, MPTCP, SCTP
//!   sockets are the daemon's to make;
//! - marks a TCP socket as the daemon marks the TCP sockets it makes for a kernel-driver
//!   app: members-only in the guard's map, `SockState { app, no peer, no local, local_any: false }` in
//!   `ax_ksock` (refused when either cannot be written).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ax_core::kmap::SockState;
use ax_sys::bpf::{self, Asm, Insn, Map, Size, Verdict as V, R0, R1, R10, R2, R3, R4, R6, R7};
use tracing::{info, warn};

use crate::guard;

/// The name of the cgroup under the cgroup2 root that holds this daemon's app cgroups:
/// `ax-apps-N`, N the inode of this thread's network namespace.
pub fn apps_cgroup_name() -> io::Result<String> {
    let (_, netns) = ax_sys::ns::identity("/proc/thread-self/ns/net")?;
    Ok(format!("ax-apps-{netns}"))
}

/// Stops every process of every app under this daemon's `ax-apps` (cgroup.kill there
/// reaches the cgroups under it) and waits briefly for them to be gone: what a daemon
/// does first when it will not rule their sockets (it cannot take over the kernel
/// driver's maps, or runs without the kernel driver), before any pinned program goes.
/// Returns whether any process was there (none where no cgroup2 is mounted: no daemon
/// could make app cgroups).
pub fn stop_every_app() -> io::Result<bool> {
    let Some(root) = crate::hooks::cgroup2_root()? else { return Ok(false) };
    let apps = root.join(apps_cgroup_name()?);
    let populated = || match fs::read_to_string(apps.join("cgroup.events")) {
        Ok(events) => Ok(events.lines().any(|l| l == "populated 1")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    };
    if !populated()? {
        return Ok(false);
    }
    fs::write(apps.join("cgroup.kill"), "1")?;
    let deadline = Instant::now() + REMOVAL_PATIENCE;
    while populated()? && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}

/// Most entries of `ax_kcgroups`.
pub(crate) const MAX_CGROUPS: u32 = 4096;
/// How long a removal waits for the killed processes of a cgroup to be gone.
const REMOVAL_PATIENCE: Duration = Duration::from_secs(2);

/// offsetof(struct bpf_sock, type / protocol).
const SOCK_TYPE: i16 = 8;
const SOCK_PROTOCOL: i16 = 12;
/// The program's stack: the cgroup id, the guard's mark, the socket's state.
const CGROUP_ID: i16 = -8;
const MARK: i16 = -12;
const STATE: i16 = -40;
// The three do not overlap, and the state and the id are stored in aligned words of 8.
const _: () = assert!(
    STATE + SockState::SIZE as i16 <= MARK
        && MARK + 4 <= CGROUP_ID
        && STATE % 8 == 0
        && CGROUP_ID % 8 == 0
        && SockState::SIZE.is_multiple_of(8)
);

/// A failure to make an app's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum AppCgroupError {
    #[error("{0:?} cannot name an app cgroup (empty, '.', '..', or holding '/', a newline or NUL)")]
    Name(String),
    #[error("0 is no kernel app id")]
    App,
    #[error("cannot make the app cgroup {0}: {1}")]
    Make(PathBuf, io::Error),
    #[error("{0} is not the cgroup the kernel driver's programs were attached to (removed and made again?): restart the daemon")]
    Moved(PathBuf),
    #[error("cannot write the kernel driver's cgroup map: {0}")]
    Map(io::Error),
}

/// One app's cgroup, made: processes entered here make their sockets under the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCgroup {
    dir: PathBuf,
    id: u64,
}

impl AppCgroup {
    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn enter(&self, pid: i32) -> io::Result<()> {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `ax-apps` and the map of its cgroups.
pub(crate) struct AppCgroups {
    /// `ax-apps`, and its id when the programs were attached to it.
    pub(crate) dir: PathBuf,
    pub(crate) id: u64,
    pub(crate) ids: Arc<Map>,
}

impl AppCgroups {
    /// Makes `name`'s cgroup if missing, and enters it in the map as app `app`.
    pub(crate) fn make(&self, name: &str, app: u32) -> Result<AppCgroup, AppCgroupError> {
        check_name(name)?;
        if app == 0 {
            return Err(AppCgroupError::App);
        }
        // A new `ax-apps` would have no programs: no app cgroup goes there.
        if fs::metadata(&self.dir).map(|m| m.ino()).ok() != Some(self.id) {
            return Err(AppCgroupError::Moved(self.dir.clone()));
        }
        let dir = self.dir.join(name);
        let made = |e: io::Error| AppCgroupError::Make(dir.clone(), e);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(made(e)),
            _ => {}
        }
        // Not a control file of ax-apps (cgroup.procs, ...) that has the name.
        let meta = fs::symlink_metadata(&dir).map_err(made)?;
        if !meta.is_dir() {
            return Err(made(io::Error::from(io::ErrorKind::NotADirectory)));
        }
        self.ids.update(&key(meta.ino()), &app.to_ne_bytes()).map_err(AppCgroupError::Map)?;
        Ok(AppCgroup { dir, id: meta.ino() })
    }

    /// Removes `name`'s cgroup: its entry first (sockets made there are refused from
    /// then on), then its processes (cgroup.kill), then the directory, tried again
    /// while the processes die. A failure is logged, and what is left stays refused.
    pub(crate) fn remove(&self, name: &str) {
        if let Err(e) = check_name(name) {
            warn!("not removing an app cgroup: {e}");
            return;
        }
        let dir = self.dir.join(name);
        let id = match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => m.ino(),
            Ok(_) => {
                warn!("not removing {}: not a cgroup", dir.display());
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!("cannot remove the app cgroup {}: {e}", dir.display());
                return;
            }
        };
        if let Err(e) = self.ids.delete(&key(id)) {
            warn!("cannot remove the entry of the app cgroup {} (its sockets are still made): {e}", dir.display());
        }
        if let Err(e) = fs::write(dir.join("cgroup.kill"), "1") {
            warn!("cannot kill the processes of the app cgroup {}: {e}", dir.display());
        }
        let deadline = Instant::now() + REMOVAL_PATIENCE;
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => info!(cgroup = %dir.display(), "app cgroup removed"),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!("cannot remove the app cgroup {} (left, its sockets refused): {e}", dir.display()),
            }
            return;
        }
    }

    /// Removes the entries of cgroups that are gone (removed by someone else, or while
    /// no daemon ran): what a daemon that took the map over does first, so that the
    /// map does not fill with them.
    pub(crate) fn prune(&self) -> io::Result<()> {
        let live: Vec<[u8; 8]> =
            self.names().iter().filter_map(|n| fs::metadata(self.dir.join(n)).ok()).map(|m| key(m.ino())).collect();
        for gone in self.ids.keys(8)?.iter().filter(|k| !live.iter().any(|l| l == &k[..])) {
            self.ids.delete(gone)?;
        }
        Ok(())
    }

    /// The names of the cgroups under `ax-apps`.
    pub(crate) fn names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

/// An app cgroup's name: one path component of ours, which the kernel takes (no newline).
fn check_name(name: &str) -> Result<(), AppCgroupError> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\n', '\0']);
    if bad {
        return Err(AppCgroupError::Name(name.to_string()));
    }
    Ok(())
}

/// `ax_kcgroups`' key for the cgroup with id `id`.
fn key(id: u64) -> [u8; 8] {
    id.to_ne_bytes()
}

/// cgroup/sock_create on `ax-apps`: the socket's cgroup's app (`ids`), TCP only, in the
/// daemon's network namespace (`netns`, its cookie), marked members-only in the guard's
/// `marks` and with the app's fresh state in `states`. A socket in a namespace of the
/// app's own (an unprivileged user namespace gives it one) is refused: the programs would
/// send its connects to a broker it cannot reach, leaving entries no one takes.
pub(crate) fn sock_create(ids: &Map, marks: &Map, states: &Map, netns: u64) -> Vec<Insn> {
    let mut a = Asm::default();
    a.mov(R6, R1)
        .call(bpf::FN_GET_CURRENT_CGROUP_ID)
        .store(Size::DW, R10, CGROUP_ID, R0)
        .mov(R2, R10)
        .add_imm(R2, CGROUP_ID as i32)
        .load_map(R1, ids)
        .call(bpf::FN_MAP_LOOKUP_ELEM)
        .if_eq(R0, 0, V::Deny)
        .load(Size::W, R7, R0, 0)
        .load(Size::W, R1, R6, SOCK_TYPE)
        .if_ne(R1, libc::SOCK_STREAM, V::Deny)
        .load(Size::W, R1, R6, SOCK_PROTOCOL)
        .if_ne(R1, libc::IPPROTO_TCP, V::Deny)
        .mov(R1, R6)
        .call(bpf::FN_GET_NETNS_COOKIE)
        .mov32_imm(R1, (netns >> 32) as u32)
        .lsh_imm(R1, 32)
        .mov32_imm(R2, netns as u32)
        .add(R1, R2)
        .if_ne_reg(R0, R1, V::Deny)
        .store_imm(Size::W, R10, MARK, guard::MEMBERS_ONLY as i32);
    create(&mut a, marks, MARK);
    // SockState { app, peer: None, local: None, local_any: false }: all zero but the app.
    for word in (0..SockState::SIZE as i16).step_by(8) {
        a.store_imm(Size::DW, R10, STATE + word, 0);
    }
    a.store(Size::W, R10, STATE + SockState::APP_OFFSET as i16, R7);
    create(&mut a, states, STATE);
    a.goto(V::Allow);
    a.finish()
}

/// The socket's (the context's, r6) value in the socket storage `map`, made from the
/// value on the stack at `value`; refused when it cannot be made.
fn create(a: &mut Asm, map: &Map, value: i16) {
    a.load_map(R1, map)
        .mov(R2, R6)
        .mov(R3, R10)
        .add_imm(R3, value as i32)
        .mov_imm(R4, bpf::SK_STORAGE_GET_F_CREATE)
        .call(bpf::FN_SK_STORAGE_GET)
        .if_eq(R0, 0, V::Deny);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_cgroup_name_is_one_path_component_the_kernel_takes() {
        for good in ["app-1", "7", "a.b", "...", "web server"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "/", "../x", "a\nb", "a\0b"] {
            let e = check_name(bad).expect_err(bad).to_string();
            assert!(e.contains("cannot name an app cgroup"), "{e}");
        }
    }

    #[test]
    fn the_program_writes_a_state_as_encode_makes_it() {
        // All zero but the app, at its offset: what the program stores.
        let mut want = [0u8; SockState::SIZE];
        want[SockState::APP_OFFSET..SockState::APP_OFFSET + 4].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(SockState { app: 7, peer: None, local: None, local_any: false }.encode(), want);
    }
}
