//! Client addresses of datagrams on one node: which app sent a datagram a server
//! receives from this node's address, so that recvfrom/recvmsg show that app's virtual
//! address (with the datagram's real port), and a send to that address reaches the
//! socket it came from.
//!
//! A datagram carries nothing of its sender but its source address, and the sender's
//! socket is the one bound at that address: the programs find it with the kernel's own
//! lookup (bpf_sk_lookup_udp, the tuple a reply would have). What they find is believed
//! only when it is proof:
//! - the source is this node's address (a datagram from another host says nothing of
//!   this node's sockets; one from another node's address is seen as itself);
//! - the socket is one ax marked for an app (`ax_ksock`); another is seen as itself;
//! - nobody can share its port: a socket that asked for SO_REUSEADDR or SO_REUSEPORT
//!   (the `ksetsockopt` program notes it in `ax_kshared`, whoever set it and however)
//!   could have a neighbour at the same address that sent the datagram, a process not
//!   under ax or another app among them, so it is not believed. Without those options
//!   the kernel gives no second socket its port (bind and autobind alike).
//!
//! The lookup is made when the server reads the datagram, not when it arrived: if the
//! sender closed in between and another app's socket took its port, that app is shown
//! (README, "Client addresses").

use ax_core::kmap::{AppEntry, Config, SockState};
use ax_sys::bpf::{self, Asm, Insn, Size, Target, Verdict as V, R0, R1, R10, R2, R3, R4, R5, R6, R8, R9};

use super::{config, lookup, off, sock_state_at, Maps, SCRATCH, SK};

/// The lookup's tuple on the stack (struct bpf_sock_tuple's IPv4 form: saddr, daddr,
/// sport, dport).
const TUPLE: i16 = -152;
const TUPLE_LEN: i32 = 12;
/// offsetof(struct bpf_sock, src_port): the socket's own port, in the host's order.
const SOCK_SRC_PORT: i16 = 44;
/// BPF_F_CURRENT_NETNS: the lookup in the namespace of the program's socket.
const CURRENT_NETNS: i32 = -1;

/// offsetof(struct bpf_sockopt, ...).
const SOCKOPT_SK: i16 = 0;
const SOCKOPT_LEVEL: i16 = 24;
const SOCKOPT_NAME: i16 = 28;

/// Leaves in r1 the virtual address of the app whose socket sent (or would take) a
/// datagram between the program's socket and this node's address at the port on the
/// stack at `port` (big-endian); when `ip` names a stack slot, that address must be
/// the node's. Goes to `none` when there is no such app or it cannot be believed (see
/// the module's text). Needs r6 = a sock_addr context; clobbers r0-r5, r8 and r9.
pub(super) fn app_at(a: &mut Asm, maps: &Maps, ip: Option<i16>, port: i16, none: impl Into<Target> + Copy) {
    let (release, found) = (a.label(), a.label());
    config(a, maps, none);
    a.load(Size::W, R1, R0, off(Config::NODE_IP_OFFSET));
    if let Some(ip) = ip {
        a.load(Size::W, R2, R10, ip).if_ne_reg(R1, R2, none);
    }
    // From the program's socket (at the node's address) to node:port.
    a.store(Size::W, R10, TUPLE, R1)
        .store(Size::W, R10, TUPLE + 4, R1)
        .load(Size::DW, R2, R6, SK)
        .load(Size::W, R2, R2, SOCK_SRC_PORT)
        .mov(R3, R2)
        .and_imm(R3, 0xff)
        .lsh_imm(R3, 8)
        .rsh_imm(R2, 8)
        .add(R2, R3)
        .store(Size::H, R10, TUPLE + 8, R2)
        .load(Size::H, R2, R10, port)
        .store(Size::H, R10, TUPLE + 10, R2)
        .mov(R1, R6)
        .mov(R2, R10)
        .add_imm(R2, TUPLE as i32)
        .mov_imm(R3, TUPLE_LEN)
        .mov_imm(R4, CURRENT_NETNS)
        .mov_imm(R5, 0)
        .call(bpf::FN_SK_LOOKUP_UDP)
        .if_eq(R0, 0, none)
        .mov(R8, R0);
    storage(a, &maps.ksock);
    a.if_eq(R0, 0, release).load(Size::W, R9, R0, off(SockState::APP_OFFSET));
    storage(a, &maps.shared);
    a.if_ne(R0, 0, release).mov(R1, R8).call(bpf::FN_SK_RELEASE).goto(found);
    a.here(release).mov(R1, R8).call(bpf::FN_SK_RELEASE).goto(none);
    a.here(found).store(Size::W, R10, SCRATCH, R9);
    lookup(a, &maps.apps, SCRATCH, none);
    a.load(Size::W, R1, R0, off(AppEntry::IP_OFFSET));
}

/// r0 = the value of the found socket (r8) in `map`, or 0.
fn storage(a: &mut Asm, map: &bpf::Map) {
    a.load_map(R1, map).mov(R2, R8).mov_imm(R3, 0).mov_imm(R4, 0).call(bpf::FN_SK_STORAGE_GET);
}

/// The setsockopt program: a socket of ax's (`ax_ksock`) that is asked for
/// SO_REUSEADDR or SO_REUSEPORT (on or off: asking is enough) gets an `ax_kshared`
/// value, for good. Every call goes on as asked.
pub(super) fn setsockopt(maps: &Maps) -> Vec<Insn> {
    let mut a = Asm::default();
    let shared = a.label();
    a.mov(R6, R1)
        .load(Size::W, R1, R6, SOCKOPT_LEVEL)
        .if_ne(R1, libc::SOL_SOCKET, V::Allow)
        .load(Size::W, R1, R6, SOCKOPT_NAME)
        .if_eq(R1, libc::SO_REUSEADDR, shared)
        .if_ne(R1, libc::SO_REUSEPORT, V::Allow)
        .here(shared)
        .mov(R1, R6);
    sock_state_at(&mut a, maps, SOCKOPT_SK);
    a.load_map(R1, &maps.shared)
        .load(Size::DW, R2, R6, SOCKOPT_SK)
        .mov_imm(R3, 0)
        .mov_imm(R4, bpf::SK_STORAGE_GET_F_CREATE)
        .call(bpf::FN_SK_STORAGE_GET)
        .goto(V::Allow);
    a.finish()
}
