//! eBPF: just enough of bpf(2) to load small cgroup programs written with [`Asm`] (the
//! assembler is `asm`'s), keep their maps, attach them with links, and pin them in a
//! bpffs so they outlive the daemon. No libbpf, no ELF: the programs are built in
//! memory.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::cvt;

mod asm;

pub use asm::{Asm, Insn, Label, Reg, Size, Target, Verdict, R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9};

const MAP_CREATE: i32 = 0;
const MAP_LOOKUP_ELEM: i32 = 1;
const MAP_UPDATE_ELEM: i32 = 2;
const MAP_DELETE_ELEM: i32 = 3;
const MAP_GET_NEXT_KEY: i32 = 4;
const PROG_LOAD: i32 = 5;
const OBJ_PIN: i32 = 6;
const OBJ_GET: i32 = 7;
const BTF_LOAD: i32 = 18;
const LINK_CREATE: i32 = 28;
const LINK_UPDATE: i32 = 29;
const LINK_DETACH: i32 = 34;
const MAP_LOOKUP_AND_DELETE_ELEM: i32 = 21;

/// Map types used here.
pub const MAP_HASH: u32 = 1;
pub const MAP_ARRAY: u32 = 2;
pub const MAP_LRU_HASH: u32 = 9;
/// A hash with one value per possible CPU, least recently used entries evicted when full.
pub const MAP_LRU_PERCPU_HASH: u32 = 10;
/// Storage attached to each socket, freed with it (needs BTF for its key and value).
pub const MAP_SK_STORAGE: u32 = 24;
const F_NO_PREALLOC: u32 = 1;
/// Socket storage copied to the sockets a listener accepts.
const F_CLONE: u32 = 0x200;

/// Program types used here.
pub const PROG_CGROUP_SKB: u32 = 8;
pub const PROG_CGROUP_SOCK: u32 = 9;
pub const PROG_SOCK_OPS: u32 = 13;
pub const PROG_CGROUP_SOCK_ADDR: u32 = 18;
pub const PROG_CGROUP_SOCKOPT: u32 = 25;

/// Attach types used here (the kernel's enum bpf_attach_type).
pub const ATTACH_INGRESS: u32 = 0;
pub const ATTACH_EGRESS: u32 = 1;
/// A new inet socket (cgroup/sock_create); a program's 0 fails socket() with EPERM.
pub const ATTACH_INET_SOCK_CREATE: u32 = 2;
pub const ATTACH_SOCK_OPS: u32 = 3;
pub const ATTACH_BIND4: u32 = 8;
pub const ATTACH_BIND6: u32 = 9;
pub const ATTACH_CONNECT4: u32 = 10;
pub const ATTACH_CONNECT6: u32 = 11;
pub const ATTACH_UDP4_SENDMSG: u32 = 14;
pub const ATTACH_UDP6_SENDMSG: u32 = 15;
pub const ATTACH_UDP4_RECVMSG: u32 = 19;
pub const ATTACH_UDP6_RECVMSG: u32 = 20;
pub const ATTACH_SETSOCKOPT: u32 = 22;
pub const ATTACH_GETPEERNAME4: u32 = 29;
pub const ATTACH_GETPEERNAME6: u32 = 30;
pub const ATTACH_GETSOCKNAME4: u32 = 31;
pub const ATTACH_GETSOCKNAME6: u32 = 32;

/// Helpers used here (their numbers in the kernel's uapi).
pub const FN_MAP_LOOKUP_ELEM: i32 = 1;
pub const FN_MAP_UPDATE_ELEM: i32 = 2;
pub const FN_MAP_DELETE_ELEM: i32 = 3;
pub const FN_GET_PRANDOM_U32: i32 = 7;
pub const FN_GET_CURRENT_UID_GID: i32 = 15;
pub const FN_SKB_LOAD_BYTES: i32 = 26;
/// bpf_get_socket_cookie; in a sock_addr program it takes the context.
pub const FN_GET_SOCKET_COOKIE: i32 = 46;
/// bpf_setsockopt (a sock_ops program's socket).
pub const FN_SETSOCKOPT: i32 = 49;
/// bpf_sock_ops_cb_flags_set: which optional sock_ops calls a socket gets.
pub const FN_SOCK_OPS_CB_FLAGS_SET: i32 = 59;
/// bpf_bind (connect4/6 programs only).
pub const FN_BIND: i32 = 64;
/// bpf_get_current_cgroup_id: the calling task's cgroup2 id (its directory's inode).
pub const FN_GET_CURRENT_CGROUP_ID: i32 = 80;
/// bpf_sk_lookup_udp: the socket a datagram with the given tuple would reach (a
/// reference, which bpf_sk_release gives back).
pub const FN_SK_LOOKUP_UDP: i32 = 85;
pub const FN_SK_RELEASE: i32 = 86;
pub const FN_SK_STORAGE_GET: i32 = 107;
pub const FN_GET_NS_CURRENT_PID_TGID: i32 = 120;
/// bpf_get_netns_cookie; in a sock program it takes the context (the socket's namespace).
pub const FN_GET_NETNS_COOKIE: i32 = 122;
/// bpf_load_hdr_opt, bpf_store_hdr_opt, bpf_reserve_hdr_opt: TCP header options in
/// sock_ops programs.
pub const FN_LOAD_HDR_OPT: i32 = 142;
pub const FN_STORE_HDR_OPT: i32 = 143;
pub const FN_RESERVE_HDR_OPT: i32 = 144;
/// bpf_set_retval: the errno a refusing cgroup program gives the call.
pub const FN_SET_RETVAL: i32 = 187;
/// bpf_sk_storage_get's flag: make the socket's value (zeroed) when it has none.
pub const SK_STORAGE_GET_F_CREATE: i32 = 1;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjPath {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkDetach {
    link_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct BtfLoad {
    btf: u64,
    log_buf: u64,
    btf_size: u32,
    log_size: u32,
    log_level: u32,
}

/// bpf(2) with `attr`; returns the new descriptor for commands that make one.
fn bpf<T>(cmd: i32, attr: &mut T) -> io::Result<i32> {
    // SAFETY: `attr` is one of the #[repr(C)] attribute structs above, laid out as the
    // kernel's union member for `cmd`, and lives across the call; every pointer inside
    // it points at a live buffer of the size it states. Fields past it are taken as zero.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    cvt(r).map(|r| r as i32)
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: bpf(2) just returned `fd` as a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (d, s) in n.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    n
}

/// A BTF blob for a socket-storage map: type 1 is `int` (the key, and a 4-byte value),
/// type 2 `int[value_size / 4]` (a larger value).
fn storage_btf(value_size: u32) -> Vec<u8> {
    let strings = b"\0int\0";
    // name "int", kind INT, size 4; encoding SIGNED, offset 0, 32 bits
    let mut words = vec![1u32, 1 << 24, 4, (1 << 24) | 32];
    if value_size != 4 {
        // no name, kind ARRAY; element type 1, index type 1, value_size / 4 elements
        words.extend_from_slice(&[0, 3 << 24, 0, 1, 1, value_size / 4]);
    }
    let types: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut blob = Vec::new();
    blob.extend_from_slice(&0xeb9fu16.to_ne_bytes());
    blob.extend_from_slice(&[1, 0]); // version, flags
    for word in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        // header length, types at 0 with their length, strings after them with theirs
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(strings);
    blob
}

/// A map: its descriptor and sizes.
pub struct Map {
    fd: OwnedFd,
}

impl Map {
    /// A hash or array map with fixed-size keys and values.
    pub fn new(map_type: u32, name: &str, key_size: u32, value_size: u32, max_entries: u32) -> io::Result<Map> {
        let mut a =
            MapCreate { map_type, key_size, value_size, max_entries, map_name: name16(name), ..Default::default() };
        Ok(Map { fd: owned(bpf(MAP_CREATE, &mut a)?) })
    }

    /// A hash map whose entries are allocated as they are written (BPF_F_NO_PREALLOC:
    /// `max_entries` costs nothing up front) and freed only after every program that
    /// may still read one is done (RCU): an update replaces an entry whole, so a
    /// program reads the old value or the new, never a mix.
    pub fn hash_unallocated(name: &str, key_size: u32, value_size: u32, max_entries: u32) -> io::Result<Map> {
        let mut a = MapCreate {
            map_type: MAP_HASH,
            key_size,
            value_size,
            max_entries,
            map_flags: F_NO_PREALLOC,
            map_name: name16(name),
            ..Default::default()
        };
        Ok(Map { fd: owned(bpf(MAP_CREATE, &mut a)?) })
    }

    /// Socket storage holding `value_size` bytes (a multiple of 4) per socket, keyed by
    /// a socket's descriptor, and copied to the sockets a listener accepts.
    pub fn sk_storage(name: &str, value_size: u32) -> io::Result<Map> {
        if value_size == 0 || !value_size.is_multiple_of(4) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket storage values are whole ints"));
        }
        let blob = storage_btf(value_size);
        let mut load = BtfLoad { btf: blob.as_ptr() as u64, btf_size: blob.len() as u32, ..Default::default() };
        let btf = owned(bpf(BTF_LOAD, &mut load)?);
        let mut a = MapCreate {
            map_type: MAP_SK_STORAGE,
            key_size: 4,
            value_size,
            map_flags: F_NO_PREALLOC | F_CLONE,
            map_name: name16(name),
            btf_fd: btf.as_raw_fd() as u32,
            btf_key_type_id: 1,
            btf_value_type_id: if value_size == 4 { 1 } else { 2 },
            ..Default::default()
        };
        Ok(Map { fd: owned(bpf(MAP_CREATE, &mut a)?) })
    }

    /// Sets `key` to `value` (both exactly the map's sizes).
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let mut a = MapElem {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            ..Default::default()
        };
        bpf(MAP_UPDATE_ELEM, &mut a).map(drop)
    }

    /// Removes `key`; absent keys are fine.
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        let mut a = MapElem { map_fd: self.fd.as_raw_fd() as u32, key: key.as_ptr() as u64, ..Default::default() };
        match bpf(MAP_DELETE_ELEM, &mut a) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// Every key of a hash map (`key_size` bytes, the map's), as they stand while it is
    /// walked: keys added or removed meanwhile may be missed or seen.
    pub fn keys(&self, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut next = vec![0u8; key_size];
            let mut a = MapElem {
                map_fd: self.fd.as_raw_fd() as u32,
                // No key: the first one.
                key: keys.last().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(MAP_GET_NEXT_KEY, &mut a) {
                Ok(_) => keys.push(next),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(e) => return Err(e),
            }
        }
    }

    /// The value at `key` (`value_size` bytes, the map's), removed from the map in the
    /// same step: of two takers, one gets it. None when absent.
    pub fn take(&self, key: &[u8], value_size: usize) -> io::Result<Option<Vec<u8>>> {
        self.value(MAP_LOOKUP_AND_DELETE_ELEM, key, value_size)
    }

    /// The value at `key` by `cmd` (a lookup, or a lookup that removes it); None when
    /// absent.
    fn value(&self, cmd: i32, key: &[u8], value_size: usize) -> io::Result<Option<Vec<u8>>> {
        let mut value = vec![0u8; value_size];
        let mut a = MapElem {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(cmd, &mut a) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A per-CPU map's values at `key`, one per possible CPU (`value_size` bytes, the
    /// map's, each); None when absent.
    pub fn per_cpu_values(&self, key: &[u8], value_size: usize) -> io::Result<Option<Vec<Vec<u8>>>> {
        // The kernel lays the values out 8-byte aligned, one per possible CPU.
        let stride = value_size.next_multiple_of(8);
        let cpus = possible_cpus()?;
        let Some(all) = self.value(MAP_LOOKUP_ELEM, key, stride * cpus)? else { return Ok(None) };
        Ok(Some(all.chunks(stride).map(|c| c[..value_size].to_vec()).collect()))
    }

    /// A socket-storage map's value (`value_size` bytes, the map's) for the socket
    /// `sock`; None when it has none.
    pub fn socket_value(&self, sock: BorrowedFd<'_>, value_size: usize) -> io::Result<Option<Vec<u8>>> {
        self.value(MAP_LOOKUP_ELEM, &sock.as_raw_fd().to_ne_bytes(), value_size)
    }

    /// Sets a socket-storage map's value for the socket `sock`.
    pub fn update_socket(&self, sock: BorrowedFd<'_>, value: u32) -> io::Result<()> {
        self.set_socket(sock, &value.to_ne_bytes())
    }

    /// Sets a socket-storage map's value (exactly its size) for the socket `sock`.
    pub fn set_socket(&self, sock: BorrowedFd<'_>, value: &[u8]) -> io::Result<()> {
        self.update(&sock.as_raw_fd().to_ne_bytes(), value)
    }

    /// The number that refers to this map from a program ([`Asm::load_map`]).
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn pin(&self, path: &Path) -> io::Result<()> {
        pin(self.fd.as_raw_fd(), path)
    }

    pub fn open_pinned(path: &Path) -> io::Result<Map> {
        open_pinned(path).map(|fd| Map { fd })
    }
}

/// How many CPUs the kernel may ever bring up (per-CPU maps hold a value for each).
pub fn possible_cpus() -> io::Result<usize> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    cpu_count(&list).ok_or_else(|| io::Error::other(format!("cannot read the possible CPUs from {list:?}")))
}

/// The number of CPUs in a kernel CPU list ("0-3,5").
fn cpu_count(list: &str) -> Option<usize> {
    list.trim().split(',').try_fold(0, |n, part| {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi) = (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?);
        (lo <= hi).then(|| n + hi - lo + 1)
    })
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    crate::c_string(path.as_os_str().as_bytes())
}

fn pin(fd: i32, path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    let mut a = ObjPath { pathname: p.as_ptr() as u64, bpf_fd: fd as u32, file_flags: 0 };
    bpf(OBJ_PIN, &mut a).map(drop)
}

fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    let mut a = ObjPath { pathname: p.as_ptr() as u64, ..Default::default() };
    bpf(OBJ_GET, &mut a).map(owned)
}

/// Loads `prog` as a program of `prog_type` for `attach_type`; the verifier's complaint
/// is in the error if it refuses. The first try asks for no log (a log that does not
/// fit its buffer fails even a program the verifier accepts); a refusal is tried again
/// with one, for its last words.
pub fn load(prog_type: u32, attach_type: u32, name: &str, prog: &[Insn]) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let attempt = |log: &mut [u8]| {
        let mut a = ProgLoad {
            prog_type,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
            prog_name: name16(name),
            expected_attach_type: attach_type,
            ..Default::default()
        };
        bpf(PROG_LOAD, &mut a).map(owned)
    };
    attempt(&mut []).or_else(|_| {
        let mut log = vec![0u8; 1024 * 1024];
        attempt(&mut log).map_err(|e| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let said = String::from_utf8_lossy(&log[..end]);
            let last = said.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            io::Error::new(e.kind(), format!("{e}; the verifier said: {last}"))
        })
    })
}

/// Attaches `prog` to the cgroup `cgroup` (a directory in a cgroup2 mount) for
/// `attach_type`, alongside whatever else is attached there. The attachment lasts as
/// long as the returned link (or its pin).
pub fn attach(prog: &OwnedFd, cgroup: &std::fs::File, attach_type: u32) -> io::Result<Link> {
    let mut a =
        LinkCreate { prog_fd: prog.as_raw_fd() as u32, target_fd: cgroup.as_raw_fd() as u32, attach_type, flags: 0 };
    Ok(Link { fd: owned(bpf(LINK_CREATE, &mut a)?) })
}

/// A program attached to a cgroup, for as long as this or its pin exists.
pub struct Link {
    fd: OwnedFd,
}

impl Link {
    pub fn pin(&self, path: &Path) -> io::Result<()> {
        pin(self.fd.as_raw_fd(), path)
    }

    pub fn open_pinned(path: &Path) -> io::Result<Link> {
        open_pinned(path).map(|fd| Link { fd })
    }

    /// Makes `prog` (of the link's program type and attach type) the link's program in
    /// one step: every call runs the old program or the new one, never both or none.
    pub fn update(&self, prog: &OwnedFd) -> io::Result<()> {
        let mut a = LinkUpdate {
            link_fd: self.fd.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(LINK_UPDATE, &mut a).map(drop)
    }

    /// Detaches the link's program now (dropping the last reference to a link, its pin
    /// included, detaches it only later, from a kernel worker).
    pub fn detach(&self) -> io::Result<()> {
        let mut a = LinkDetach { link_fd: self.fd.as_raw_fd() as u32 };
        bpf(LINK_DETACH, &mut a).map(drop)
    }
}

/// Mounts a bpffs at `dir` unless one is there already.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let p = c_path(dir)?;
    // SAFETY: statfs is plain data, written by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is a valid C string and `st` a live statfs.
    cvt(unsafe { libc::statfs(p.as_ptr(), &mut st) })?;
    if st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    crate::ns::mount_fs("bpf", dir, "mode=0700")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_list_counts_every_cpu_it_names() {
        assert_eq!(cpu_count("0\n"), Some(1));
        assert_eq!(cpu_count("0-3\n"), Some(4));
        assert_eq!(cpu_count("0-1,4,6-7"), Some(5));
        assert_eq!(cpu_count("3-1"), None);
        assert_eq!(cpu_count(""), None);
    }

    #[test]
    fn the_btf_blob_describes_an_int_array_for_larger_values() {
        let b = storage_btf(24);
        let word = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
        // header (24 bytes), then type 1 (int, 16 bytes), then type 2: the array
        assert_eq!(word(12), 16 + 24);
        assert_eq!((word(24 + 16 + 4) >> 24, word(24 + 16 + 12), word(24 + 16 + 16)), (3, 1, 1));
        assert_eq!(word(24 + 16 + 20), 6);
    }

    #[test]
    fn the_btf_blob_is_laid_out_as_its_header_says() {
        let b = storage_btf(4);
        let word = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 0xeb9f);
        let (hdr, types_len, str_off, str_len) = (word(4), word(12), word(16), word(20));
        assert_eq!(b.len() as u32, hdr + str_off + str_len);
        assert_eq!(types_len, 16);
        assert_eq!(&b[(hdr + str_off) as usize..], b"\0int\0");
    }
}
