//! eBPF: just enough of bpf(2) to load small cgroup programs written with [`Asm`],
//! keep their maps, attach them with links, and pin them in a bpffs so they outlive the
//! daemon. No libbpf, no ELF: the programs are built in memory.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::cvt;

const MAP_CREATE: i32 = 0;
const MAP_UPDATE_ELEM: i32 = 2;
const MAP_DELETE_ELEM: i32 = 3;
const MAP_GET_NEXT_KEY: i32 = 4;
const PROG_LOAD: i32 = 5;
const OBJ_PIN: i32 = 6;
const OBJ_GET: i32 = 7;
const BTF_LOAD: i32 = 18;
const LINK_CREATE: i32 = 28;
const MAP_LOOKUP_AND_DELETE_ELEM: i32 = 21;

/// Map types used here.
pub const MAP_HASH: u32 = 1;
pub const MAP_ARRAY: u32 = 2;
pub const MAP_LRU_HASH: u32 = 9;
/// Storage attached to each socket, freed with it (needs BTF for its key and value).
pub const MAP_SK_STORAGE: u32 = 24;
const F_NO_PREALLOC: u32 = 1;
/// Socket storage copied to the sockets a listener accepts.
const F_CLONE: u32 = 0x200;

/// Program types used here.
pub const PROG_CGROUP_SKB: u32 = 8;
pub const PROG_CGROUP_SOCK_ADDR: u32 = 18;

/// Attach types used here (the kernel's enum bpf_attach_type).
pub const ATTACH_INGRESS: u32 = 0;
pub const ATTACH_EGRESS: u32 = 1;
pub const ATTACH_BIND4: u32 = 8;
pub const ATTACH_BIND6: u32 = 9;
pub const ATTACH_CONNECT4: u32 = 10;
pub const ATTACH_CONNECT6: u32 = 11;
pub const ATTACH_UDP4_SENDMSG: u32 = 14;
pub const ATTACH_UDP6_SENDMSG: u32 = 15;
pub const ATTACH_UDP4_RECVMSG: u32 = 19;
pub const ATTACH_UDP6_RECVMSG: u32 = 20;
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
/// bpf_bind (connect4/6 programs only).
pub const FN_BIND: i32 = 64;
pub const FN_SK_STORAGE_GET: i32 = 107;
pub const FN_GET_NS_CURRENT_PID_TGID: i32 = 120;
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
        let mut value = vec![0u8; value_size];
        let mut a = MapElem {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(MAP_LOOKUP_AND_DELETE_ELEM, &mut a) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
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

/// One eBPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Registers: r0 holds results, r1-r5 arguments (clobbered by calls), r6-r9 survive
/// calls, r10 is the read-only frame pointer.
pub type Reg = u8;
pub const R0: Reg = 0;
pub const R1: Reg = 1;
pub const R2: Reg = 2;
pub const R3: Reg = 3;
pub const R4: Reg = 4;
pub const R5: Reg = 5;
pub const R6: Reg = 6;
pub const R7: Reg = 7;
pub const R8: Reg = 8;
pub const R9: Reg = 9;
pub const R10: Reg = 10;

/// Access sizes.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    W = 0x00,
    H = 0x08,
    B = 0x10,
    DW = 0x18,
}

const LDX_MEM: u8 = 0x61; // BPF_LDX | BPF_MEM, size added
const ST_MEM: u8 = 0x62; // BPF_ST | BPF_MEM, size added
const STX_MEM: u8 = 0x63; // BPF_STX | BPF_MEM, size added
const STX_ATOMIC: u8 = 0xc3; // BPF_STX | BPF_ATOMIC, size added
const ATOMIC_FETCH_ADD: i32 = 0x01; // BPF_ADD | BPF_FETCH
const ALU_K: u8 = 0x04; // BPF_ALU (32 bits, zero-extended) | BPF_K, op added
const ALU64_K: u8 = 0x07; // BPF_ALU64 | BPF_K, op added
const ALU64_X: u8 = 0x0f; // BPF_ALU64 | BPF_X, op added
const OP_ADD: u8 = 0x00;
const OP_DIV: u8 = 0x30;
const OP_OR: u8 = 0x40;
const OP_AND: u8 = 0x50;
const OP_LSH: u8 = 0x60;
const OP_RSH: u8 = 0x70;
const OP_MOD: u8 = 0x90;
const OP_MOV: u8 = 0xb0;
const JMP_K: u8 = 0x05; // BPF_JMP | BPF_K, op added
const JMP_X: u8 = 0x0d; // BPF_JMP | BPF_X, op added
const OP_JA: u8 = 0x00;
const OP_JGT: u8 = 0x20;
const OP_JEQ: u8 = 0x10;
const OP_JNE: u8 = 0x50;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// Where a jump goes: the program ends with `Deny` (r0 = 0) then `Allow` (r0 = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deny,
    Allow,
}

/// A place in a program, made by [`Asm::label`] and put at the next instruction by
/// [`Asm::here`]. Jumps to it must come before it: programs are loop-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// What a jump names: one of the closing verdicts, or a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Verdict(Verdict),
    Label(Label),
}

impl From<Verdict> for Target {
    fn from(v: Verdict) -> Target {
        Target::Verdict(v)
    }
}

impl From<Label> for Target {
    fn from(l: Label) -> Target {
        Target::Label(l)
    }
}

/// Builds a program whose every branch ends in a [`Verdict`] or an exit of its own.
#[derive(Default)]
pub struct Asm {
    prog: Vec<Insn>,
    jumps: Vec<(usize, Target)>,
    /// Where each label stands, once placed.
    labels: Vec<Option<usize>>,
}

fn ins(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

impl Asm {
    fn push(&mut self, i: Insn) -> &mut Asm {
        self.prog.push(i);
        self
    }

    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_MOV, dst, src, 0, 0))
    }

    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_MOV, dst, 0, 0, imm))
    }

    /// dst = imm as a u32 (zero-extended, where [`Asm::mov_imm`] sign-extends).
    pub fn mov32_imm(&mut self, dst: Reg, imm: u32) -> &mut Asm {
        self.push(ins(ALU_K | OP_MOV, dst, 0, 0, imm as i32))
    }

    pub fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_ADD, dst, 0, 0, imm))
    }

    /// dst += src
    pub fn add(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_ADD, dst, src, 0, 0))
    }

    pub fn and_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_AND, dst, 0, 0, imm))
    }

    /// dst &= src
    pub fn and(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_AND, dst, src, 0, 0))
    }

    pub fn or_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_OR, dst, 0, 0, imm))
    }

    /// dst /= src (unsigned; the kernel gives 0 when src is 0)
    pub fn div(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_DIV, dst, src, 0, 0))
    }

    /// dst %= src (unsigned; the kernel leaves dst as it is when src is 0)
    pub fn rem(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_MOD, dst, src, 0, 0))
    }

    /// dst <<= bits
    pub fn lsh_imm(&mut self, dst: Reg, bits: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_LSH, dst, 0, 0, bits))
    }

    /// dst >>= bits (logical)
    pub fn rsh_imm(&mut self, dst: Reg, bits: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_RSH, dst, 0, 0, bits))
    }

    /// dst = *(size *)(src + off)
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.push(ins(LDX_MEM | size as u8, dst, src, off, 0))
    }

    /// *(size *)(dst + off) = imm
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.push(ins(ST_MEM | size as u8, dst, 0, off, imm))
    }

    /// *(size *)(dst + off) = src
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(ins(STX_MEM | size as u8, dst, src, off, 0))
    }

    /// src = atomically { old = *(size *)(dst + off); *(dst + off) += src; old }
    /// (W or DW only).
    pub fn fetch_add(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(ins(STX_ATOMIC | size as u8, dst, src, off, ATOMIC_FETCH_ADD))
    }

    /// dst = the map `map` (a descriptor the loader turns into the map).
    pub fn load_map(&mut self, dst: Reg, map: &Map) -> &mut Asm {
        self.push(ins(LD_IMM64, dst, PSEUDO_MAP_FD, 0, map.raw()));
        self.push(ins(0, 0, 0, 0, 0))
    }

    pub fn call(&mut self, helper: i32) -> &mut Asm {
        self.push(ins(CALL, 0, 0, 0, helper))
    }

    /// Returns r0.
    pub fn exit(&mut self) -> &mut Asm {
        self.push(ins(EXIT, 0, 0, 0, 0))
    }

    /// Returns `imm`.
    pub fn ret(&mut self, imm: i32) -> &mut Asm {
        self.mov_imm(R0, imm).exit()
    }

    /// A new label, to be placed with [`Asm::here`].
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Puts `label` at the next instruction.
    pub fn here(&mut self, label: Label) -> &mut Asm {
        assert!(self.labels[label.0].is_none(), "label {} placed twice", label.0);
        self.labels[label.0] = Some(self.prog.len());
        self
    }

    fn jump(&mut self, code: u8, dst: Reg, src: Reg, imm: i32, to: impl Into<Target>) -> &mut Asm {
        self.jumps.push((self.prog.len(), to.into()));
        self.push(ins(code, dst, src, 0, imm))
    }

    /// if dst == imm: go to `to`
    pub fn if_eq(&mut self, dst: Reg, imm: i32, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_K | OP_JEQ, dst, 0, imm, to)
    }

    /// if dst != imm: go to `to`
    pub fn if_ne(&mut self, dst: Reg, imm: i32, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_K | OP_JNE, dst, 0, imm, to)
    }

    /// if dst > src (unsigned): go to `to`
    pub fn if_gt_reg(&mut self, dst: Reg, src: Reg, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_X | OP_JGT, dst, src, 0, to)
    }

    /// if dst != src: go to `to`
    pub fn if_ne_reg(&mut self, dst: Reg, src: Reg, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_X | OP_JNE, dst, src, 0, to)
    }

    /// if dst == imm: skip the next `n` instructions.
    pub fn skip_if_eq(&mut self, dst: Reg, imm: i32, n: i16) -> &mut Asm {
        self.push(ins(JMP_K | OP_JEQ, dst, 0, n, imm))
    }

    pub fn goto(&mut self, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_K | OP_JA, 0, 0, 0, to)
    }

    /// The program: what was built, then the verdicts jumped to (`Deny`, r0 = 0, before
    /// `Allow`, r0 = 1; the verifier refuses code no path reaches), with every jump
    /// resolved. Panics on a jump to a label never placed or placed before the jump (a
    /// loop): both are mistakes in the program's source.
    pub fn finish(&mut self) -> Vec<Insn> {
        let at_verdict = |a: &mut Asm, v: Verdict, r0: i32| {
            let used = a.jumps.iter().any(|&(_, to)| to == Target::Verdict(v));
            used.then(|| {
                let at = a.prog.len();
                a.ret(r0);
                at
            })
        };
        let deny = at_verdict(self, Verdict::Deny, 0);
        let allow = at_verdict(self, Verdict::Allow, 1);
        for &(at, to) in &self.jumps {
            let target = match to {
                Target::Verdict(Verdict::Deny) => deny,
                Target::Verdict(Verdict::Allow) => allow,
                Target::Label(l) => self.labels[l.0],
            }
            .unwrap_or_else(|| panic!("the jump at {at} goes to a label never placed"));
            assert!(target > at, "the jump at {at} goes back to {target}: programs are loop-free");
            self.prog[at].off = i16::try_from(target - at - 1).expect("a jump within 32k instructions");
        }
        self.jumps.clear();
        self.labels.clear();
        std::mem::take(&mut self.prog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_verdicts() {
        let mut a = Asm::default();
        a.mov(R6, R1).if_eq(R6, 0, Verdict::Allow).if_ne(R6, 5, Verdict::Deny).goto(Verdict::Allow);
        let p = a.finish();
        assert_eq!(p.len(), 8);
        // deny at 4 (r0 = 0), allow at 6 (r0 = 1)
        assert_eq!((p[4].code, p[4].imm, p[6].imm), (ALU64_K | OP_MOV, 0, 1));
        assert_eq!(1 + 1 + p[1].off as usize, 6);
        assert_eq!(2 + 1 + p[2].off as usize, 4);
        assert_eq!(3 + 1 + p[3].off as usize, 6);
        assert_eq!(p[0].regs, (R1 << 4) | R6);
    }

    /// The instruction words as the kernel's headers spell them
    /// (include/uapi/linux/bpf.h, bpf_common.h), and as `llvm-objdump -d` of clang's
    /// output shows them.
    #[test]
    fn encodings_match_the_kernels_instruction_format() {
        let mut a = Asm::default();
        a.fetch_add(Size::W, R9, 4, R1) // lock *(u32 *)(r9 + 4) += r1, fetching: c3 19 04 00 01 00 00 00
            .fetch_add(Size::DW, R2, -8, R3) // db 32 f8 ff 01 00 00 00
            .rem(R1, R2) // r1 %= r2: 9f 21
            .and(R3, R4) // 5f 43
            .add(R9, R1) // 0f 19
            .or_imm(R1, 1) // 47 01 .. 01 00 00 00
            .mov32_imm(R1, 0xffff_0000) // w1 = 0xffff0000: b4 01 00 00 00 00 ff ff
            .load(Size::H, R2, R6, 24) // r2 = *(u16 *)(r6 + 24): 69 62 18 00
            .load(Size::B, R2, R6, 10) // 71 62 0a 00
            .store(Size::H, R10, -6, R2) // *(u16 *)(r10 - 6) = r2: 6b 2a fa ff
            .store(Size::W, R6, 4, R1) // 63 16 04 00
            .store_imm(Size::B, R10, -5, 6) // 72 0a fb ff 06 00 00 00
            .call(FN_SET_RETVAL) // 85 00 00 00 bb 00 00 00
            .exit(); // 95
        let p = a.finish();
        let bytes = |i: &Insn| {
            let mut b = vec![i.code, i.regs];
            b.extend_from_slice(&i.off.to_le_bytes());
            b.extend_from_slice(&i.imm.to_le_bytes());
            b
        };
        let want: [[u8; 8]; 14] = [
            [0xc3, 0x19, 0x04, 0x00, 0x01, 0, 0, 0],
            [0xdb, 0x32, 0xf8, 0xff, 0x01, 0, 0, 0],
            [0x9f, 0x21, 0, 0, 0, 0, 0, 0],
            [0x5f, 0x43, 0, 0, 0, 0, 0, 0],
            [0x0f, 0x19, 0, 0, 0, 0, 0, 0],
            [0x47, 0x01, 0, 0, 0x01, 0, 0, 0],
            [0xb4, 0x01, 0, 0, 0, 0, 0xff, 0xff],
            [0x69, 0x62, 0x18, 0x00, 0, 0, 0, 0],
            [0x71, 0x62, 0x0a, 0x00, 0, 0, 0, 0],
            [0x6b, 0x2a, 0xfa, 0xff, 0, 0, 0, 0],
            [0x63, 0x16, 0x04, 0x00, 0, 0, 0, 0],
            [0x72, 0x0a, 0xfb, 0xff, 0x06, 0, 0, 0],
            [0x85, 0x00, 0, 0, 0xbb, 0, 0, 0],
            [0x95, 0x00, 0, 0, 0, 0, 0, 0],
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(bytes(&p[i]), w.to_vec(), "instruction {i}");
        }
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn labels_resolve_forward_and_only_used_verdicts_are_emitted() {
        let mut a = Asm::default();
        let (skip, out) = (a.label(), a.label());
        a.if_eq(R1, 0, skip) // 0
            .mov_imm(R2, 1) // 1
            .if_ne_reg(R1, R2, out) // 2
            .here(skip)
            .mov_imm(R2, 2) // 3
            .goto(Verdict::Deny) // 4
            .here(out)
            .ret(7); // 5, 6
        let p = a.finish();
        assert_eq!(p[0].off, 2); // to 3
        assert_eq!(p[2].off, 2); // to 5
        assert_eq!(p[4].off, 2); // to deny at 7
        assert_eq!((p[5].imm, p[6].code), (7, EXIT));
        // Allow is never jumped to: only deny follows.
        assert_eq!((p[7].imm, p[8].code, p.len()), (0, EXIT, 9));
    }

    #[test]
    #[should_panic(expected = "loop-free")]
    fn a_backward_jump_is_refused() {
        let mut a = Asm::default();
        let top = a.label();
        a.here(top).mov_imm(R0, 0).goto(top);
        a.finish();
    }

    #[test]
    #[should_panic(expected = "never placed")]
    fn a_jump_to_a_label_never_placed_is_refused() {
        let mut a = Asm::default();
        let nowhere = a.label();
        a.goto(nowhere);
        a.finish();
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
