//! What the socket guard and the kernel driver share as sets of cgroup eBPF programs on
//! the daemon's cgroup: finding that cgroup (mounting a cgroup2 when this mount
//! namespace shows none), the bpffs and a layout's pin directory, the daemon's identity
//! (written into a pinned map; the programs recognise the daemon's threads by it), and
//! loading, attaching and pinning programs so that they outlive the daemon.
//!
//! It owns no programs and no decisions: the guard and the kernel driver bring theirs.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ax_sys::bpf::{self, Asm, Insn, Link, Map, Size, Target, R0, R1, R10, R2, R3, R4, R7};

/// Why a set of programs could not be installed; `.0` names the set ("socket guard",
/// "kernel driver").
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the {0} cannot find the daemon's cgroup (cgroup2 is needed): {1}")]
    Cgroup(&'static str, io::Error),
    #[error("the {0} cannot set up its pins at {1}: {2}")]
    Pins(&'static str, PathBuf, io::Error),
    #[error("the {0} cannot create its maps: {1}")]
    Maps(&'static str, io::Error),
    #[error("the {0} cannot load its {1} program (Linux 6.10 or later is needed): {2}")]
    Load(&'static str, &'static str, io::Error),
    #[error("the {0} cannot attach its {1} program to {2}: {3}")]
    Attach(&'static str, &'static str, PathBuf, io::Error),
}

/// A cgroup2 directory, open: programs attached there run for the sockets made in it
/// and in the cgroups under it.
pub struct Cgroup {
    pub dir: PathBuf,
    /// The root of the cgroup2 mount `dir` is in.
    pub root: PathBuf,
    file: File,
}

impl Cgroup {
    /// This process's cgroup (a cgroup2 is mounted at `run_dir`/cgroup2 when this mount
    /// namespace shows none): new sockets belong to it, so programs attached there see
    /// every socket the daemon makes.
    pub fn own(who: &'static str, run_dir: &Path) -> Result<Cgroup, InstallError> {
        let (root, dir) = own_cgroup(&run_dir.join("cgroup2")).map_err(|e| InstallError::Cgroup(who, e))?;
        Cgroup::open(who, root, dir)
    }

    /// The cgroup `name` right under the root, made if missing.
    pub fn under_root(&self, who: &'static str, name: &str) -> Result<Cgroup, InstallError> {
        let dir = self.root.join(name);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Cgroup::error(who, &dir, e)),
            _ => Cgroup::open(who, self.root.clone(), dir),
        }
    }

    fn open(who: &'static str, root: PathBuf, dir: PathBuf) -> Result<Cgroup, InstallError> {
        let file = File::open(&dir).map_err(|e| Cgroup::error(who, &dir, e))?;
        Ok(Cgroup { dir, root, file })
    }

    fn error(who: &'static str, dir: &Path, e: io::Error) -> InstallError {
        InstallError::Cgroup(who, io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
    }

    /// Whether `other` is this cgroup or one under it: programs attached here run for
    /// its sockets too.
    pub fn holds(&self, other: &Cgroup) -> bool {
        other.dir.starts_with(&self.dir)
    }

    /// The cgroup's id (its directory's inode; what bpf_get_current_cgroup_id gives).
    pub fn id(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.ino())
    }
}

/// `run_dir`/bpf/`layout`, with a bpffs mounted at `run_dir`/bpf if need be.
pub fn pin_dir(who: &'static str, run_dir: &Path, layout: &str) -> Result<PathBuf, InstallError> {
    let pins = run_dir.join("bpf");
    bpf::ensure_bpffs(&pins).map_err(|e| InstallError::Pins(who, pins.clone(), e))?;
    Ok(pins.join(layout))
}

/// The names of ax's pin layouts, but for their version: `ax-guard-vN` (the socket
/// guard), `ax-kernel-vN` (the kernel driver).
const LAYOUT_SETS: [&str; 2] = ["ax-guard-v", "ax-kernel-v"];

/// Whether `name` is the pin directory of one of ax's layouts, of any version.
fn is_layout(name: &str) -> bool {
    LAYOUT_SETS
        .iter()
        .any(|set| name.strip_prefix(set).is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())))
}

/// The pin directories under `run_dir`/bpf of ax's layouts, of any version, that hold
/// pins: real directories only (a symbolic link is no layout of ours).
pub fn pinned_layouts(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(run_dir.join("bpf")) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_layout) && e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|dir| fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()))
        .collect()
}

/// Removes the pin directories of ax's layouts other than `current` under `run_dir`/bpf
/// (and nothing else): an older version's programs, which would go on acting on the
/// daemon's sockets by maps no daemon updates any more. Returns those removed; one that
/// cannot be removed does not keep the others (the first error is returned after all
/// were tried).
pub fn remove_old_layouts(run_dir: &Path, current: &[&str]) -> io::Result<Vec<PathBuf>> {
    let old = pinned_layouts(run_dir)
        .into_iter()
        .filter(|dir| dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| !current.contains(&n)));
    let (mut removed, mut failed) = (Vec::new(), None);
    for dir in old {
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(e) => failed = failed.or(Some(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))),
        }
    }
    failed.map_or(Ok(removed), Err)
}

/// A map holding the daemon's identity (one 24-byte value), for [`if_not_daemon`].
pub fn daemon_map() -> io::Result<Map> {
    Map::new(bpf::MAP_ARRAY, "ax_daemon", 4, 24, 1)
}

/// Writes this process's identity into `daemon`: from now on its threads are the
/// daemon's.
pub fn claim(daemon: &Map) -> io::Result<()> {
    daemon.update(&0u32.to_ne_bytes(), &identity()?)
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

/// bpf_pidns_info { pid, tgid } on the stack.
const PIDNS_INFO: i16 = -16;

/// Jumps to `not` unless the calling thread is one of the daemon's (its process is the
/// one `daemon` names, and it runs as root); falls through for the daemon. Clobbers
/// r0-r5 and r7.
pub fn if_not_daemon(a: &mut Asm, daemon: &Map, not: impl Into<Target> + Copy) {
    a.store_imm(Size::W, R10, -4, 0)
        .mov(R2, R10)
        .add_imm(R2, -4)
        .load_map(R1, daemon)
        .call(bpf::FN_MAP_LOOKUP_ELEM)
        .if_eq(R0, 0, not)
        .load(Size::W, R7, R0, 16)
        .load(Size::DW, R1, R0, 0)
        .load(Size::DW, R2, R0, 8)
        .mov(R3, R10)
        .add_imm(R3, PIDNS_INFO as i32)
        .mov_imm(R4, 8)
        .call(bpf::FN_GET_NS_CURRENT_PID_TGID)
        // Not in the daemon's pid namespace at all: not the daemon.
        .if_ne(R0, 0, not)
        .load(Size::W, R1, R10, PIDNS_INFO + 4)
        .if_ne_reg(R1, R7, not)
        // And root: after a daemon dies, an unprivileged process may get its pid.
        .call(bpf::FN_GET_CURRENT_UID_GID)
        .lsh_imm(R0, 32)
        .rsh_imm(R0, 32)
        .if_ne(R0, 0, not);
}

/// One program to attach: (attach type, name for messages and pins, program type,
/// instructions).
pub type Program = (u32, &'static str, u32, Vec<Insn>);

/// Loads every program and attaches it to `cgroup` (alongside whatever else is attached
/// there), its link pinned under `dir` per cgroup. Where a previous daemon in the same
/// cgroup left the program's link pinned, that link gets the new program in one step
/// (no call runs neither or both: two connect programs would route a connect twice).
/// The links pinned under `dir` for this cgroup of programs not among `programs` (a
/// previous daemon's set there was another) are detached and go. A daemon started in another cgroup leaves the
/// links that rule the sockets made in the old one.
pub fn attach_and_pin(
    who: &'static str,
    cgroup: &Cgroup,
    dir: &Path,
    programs: &[Program],
) -> Result<(), InstallError> {
    let cgroup_id = cgroup.id().map_err(|e| InstallError::Cgroup(who, e))?;
    let pins: Vec<String> = programs.iter().map(|(_, name, _, _)| link_pin(name, cgroup_id)).collect();
    for ((hook, name, prog_type, insns), pin) in programs.iter().zip(&pins) {
        let prog: OwnedFd =
            bpf::load(*prog_type, *hook, &format!("ax_{name}"), insns).map_err(|e| InstallError::Load(who, name, e))?;
        let path = dir.join(pin);
        // A pinned link that cannot take the program (detached meanwhile) is replaced.
        if Link::open_pinned(&path).and_then(|old| old.update(&prog)).is_ok() {
            continue;
        }
        let link = bpf::attach(&prog, &cgroup.file, *hook)
            .map_err(|e| InstallError::Attach(who, name, cgroup.dir.clone(), e))?;
        let _ = fs::remove_file(&path);
        link.pin(&path).map_err(|e| InstallError::Pins(who, path.clone(), e))?;
    }
    let stale = |name: &str| is_link_pin_of(name, cgroup_id) && !pins.iter().any(|p| p == name);
    for e in fs::read_dir(dir).map_err(|e| InstallError::Pins(who, dir.to_path_buf(), e))?.flatten() {
        if e.file_name().to_str().is_some_and(stale) {
            // Detached first: gone from every call from now on.
            Link::open_pinned(&e.path())
                .and_then(|l| l.detach())
                .and_then(|()| fs::remove_file(e.path()))
                .map_err(|err| InstallError::Pins(who, e.path(), err))?;
        }
    }
    Ok(())
}

/// The pin name of program `name`'s link on cgroup `cgroup_id`.
fn link_pin(name: &str, cgroup_id: u64) -> String {
    format!("link-{name}-{cgroup_id}")
}

/// Whether `pin` is the pin name of a link on cgroup `cgroup_id`.
fn is_link_pin_of(pin: &str, cgroup_id: u64) -> bool {
    pin.strip_prefix("link-")
        .and_then(|rest| rest.rsplit_once('-'))
        .is_some_and(|(name, id)| !name.is_empty() && id == cgroup_id.to_string())
}

/// The root of the cgroup2 mount this process's cgroup is found in, and that cgroup's
/// directory.
fn own_cgroup(fallback: &Path) -> io::Result<(PathBuf, PathBuf)> {
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
    let dir = mount.join(inside);
    Ok((mount, dir))
}

/// Where this mount namespace shows the cgroup2 hierarchy (as [`Cgroup::own`] finds it,
/// but mounting nothing): None where it shows none.
pub fn cgroup2_root() -> io::Result<Option<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(cgroup2_mount(&mountinfo).map(|(mount, _)| PathBuf::from(mount)))
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
    fn old_layouts_of_ax_are_found_and_removed_and_nothing_else() {
        let run = std::env::temp_dir().join(format!("ax-layouts-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run);
        let (pins, outside) = (run.join("bpf"), run.join("outside"));
        for dir in
            ["ax-guard-v1", "ax-guard-v2", "ax-kernel-v2", "ax-kernel-v10", "other-v1", "ax-guard-vx", "ax-guard-v"]
        {
            fs::create_dir_all(pins.join(dir)).unwrap();
            fs::write(pins.join(dir).join("sockets"), "").unwrap();
        }
        fs::create_dir_all(pins.join("ax-kernel-v3")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), "").unwrap();
        std::os::unix::fs::symlink(&outside, pins.join("ax-kernel-v1")).unwrap();
        let names = |v: Vec<PathBuf>| {
            let mut n: Vec<String> = v.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
            n.sort();
            n
        };
        // The empty current kernel layout holds nothing; the others are ax's, any version.
        let pinned = ["ax-guard-v1", "ax-guard-v2", "ax-kernel-v10", "ax-kernel-v2"];
        assert_eq!(names(pinned_layouts(&run)), pinned);
        let removed = remove_old_layouts(&run, &["ax-guard-v2", "ax-kernel-v3"]).unwrap();
        assert_eq!(names(removed), ["ax-guard-v1", "ax-kernel-v10", "ax-kernel-v2"]);
        let left: Vec<PathBuf> = fs::read_dir(&pins).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(
            names(left),
            ["ax-guard-v", "ax-guard-v2", "ax-guard-vx", "ax-kernel-v1", "ax-kernel-v3", "other-v1"]
        );
        assert!(outside.join("keep").exists(), "a link is not followed");
        fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn link_pins_are_told_by_their_cgroup() {
        assert_eq!(link_pin("kconnect4", 42), "link-kconnect4-42");
        assert!(is_link_pin_of("link-kconnect4-42", 42));
        assert!(is_link_pin_of("link-sock-create-42", 42), "a name with dashes");
        assert!(!is_link_pin_of("link-kconnect4-421", 42));
        assert!(!is_link_pin_of("link-kconnect4-42", 4));
        assert!(!is_link_pin_of("link--42", 42));
        assert!(!is_link_pin_of("ksock", 42));
        assert!(!is_link_pin_of("kconnect4-42", 42));
    }

    #[test]
    fn the_unified_line_gives_the_path() {
        assert_eq!(unified_path("4:memory:/x\n0::/system.slice/ax.service\n"), Some("/system.slice/ax.service"));
        assert_eq!(unified_path("4:memory:/x\n"), None);
    }
}
