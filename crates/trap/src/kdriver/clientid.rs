//! Client addresses across a connection: the sock_ops program that lets a server under
//! the kernel driver see a client app's virtual address where the kernel would show the
//! client's node address (accept, getpeername), on one node and across nodes.
//!
//! In band, in the SYN: a client app's connect to a member (this node or a live cluster
//! member: the guard's member set) carries a TCP option, experimental kind 254 with
//! the magic [`ax_core::clientid::MAGIC`] (RFC 6994), holding the app's virtual IPv4 address. So does a
//! daemon's own connect that carries a client's connection on (a relay's dial, a
//! tunnel's hop), with the address the daemon claimed for that client
//! (`ax_kclaims`, [`super::KernelDriver::claim`]). The kernel
//! keeps the SYN of a connection to an app's listener (`TCP_SAVE_SYN`, set when the
//! listener starts). When the connection is accepted, the program reads the option from
//! that SYN and, if the SYN came from a member, writes the address (with the client's
//! real port) into the accepted socket's state as the peer the getpeername programs
//! show. accept() fills in its address through the same getpeername hook.
//!
//! Trust. The option is believed only from member addresses. These are the same
//! addresses whose packets an app's pool port takes at all, so it is as good as the
//! node network itself. A host outside the cluster is always seen as itself. An app
//! cannot write TCP options of its own: that takes raw sockets, which no app gets.
//! A SYN answered with a syncookie (a listener under a SYN flood) keeps no SYN, so
//! its connection shows the client's node address.

use ax_core::clientid::{KIND_EXPERIMENTAL, MAGIC};
use ax_core::kmap::{AppEntry, SockState};
use ax_sys::bpf::{self, Asm, Insn, Map, Size, Verdict as V, R0, R1, R10, R2, R3, R4, R5, R6, R7};

use super::{lookup, off, sock_state_at, socket_value, Maps};

/// The option's length ([`ax_core::clientid`] has its layout).
const OPTION_LEN: i32 = ax_core::clientid::OPTION_LEN as i32;

/// offsetof(struct bpf_sock_ops, ...).
const OP: i16 = 0;
const REMOTE_IP4: i16 = 24;
/// The remote port, in network order, in the upper 16 bits.
const REMOTE_PORT: i16 = 64;
const CB_FLAGS: i16 = 84;
const SK: i16 = 184;
const SKB_TCP_FLAGS: i16 = 212;

/// enum bpf_sock_ops_op values used here.
const OP_TCP_CONNECT: i32 = 3;
const OP_ACTIVE_ESTABLISHED: i32 = 4;
const OP_PASSIVE_ESTABLISHED: i32 = 5;
const OP_TCP_LISTEN: i32 = 11;
const OP_HDR_OPT_LEN: i32 = 14;
const OP_WRITE_HDR_OPT: i32 = 15;
/// BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG.
const WRITE_HDR_OPT_FLAG: i32 = 1 << 6;
/// BPF_LOAD_HDR_OPT_TCP_SYN.
const FROM_SYN: i32 = 1;
const TCP_FLAG_SYN: i32 = 0x02;
const TCP_FLAG_ACK: i32 = 0x10;
const TCP_SAVE_SYN: i32 = 27;

/// The stack: the option (written or searched for), and a u32 key or value.
const OPTION: i16 = -16;
const SCRATCH: i16 = -4;

/// The sock_ops program (see the module's text); `members` is the guard's member set.
pub(super) fn program(maps: &Maps, members: &Map) -> Vec<Insn> {
    let mut a = Asm::default();
    let (connect, established, passive, listen, len, write) =
        (a.label(), a.label(), a.label(), a.label(), a.label(), a.label());
    a.mov(R6, R1)
        .load(Size::W, R1, R6, OP)
        .if_eq(R1, OP_TCP_CONNECT, connect)
        .if_eq(R1, OP_HDR_OPT_LEN, len)
        .if_eq(R1, OP_WRITE_HDR_OPT, write)
        .if_eq(R1, OP_ACTIVE_ESTABLISHED, established)
        .if_eq(R1, OP_PASSIVE_ESTABLISHED, passive)
        .if_eq(R1, OP_TCP_LISTEN, listen)
        .goto(V::Allow);

    // A connect of an app's socket (or a daemon's socket that carries a client's
    // connection on) to a member: its SYN will carry the option.
    a.here(connect);
    client_ip(&mut a, maps);
    member(&mut a, members);
    a.load(Size::W, R2, R6, CB_FLAGS).or_imm(R2, WRITE_HDR_OPT_FLAG);
    a.mov(R1, R6).call(bpf::FN_SOCK_OPS_CB_FLAGS_SET).goto(V::Allow);

    // Room for the option, in the SYN only (a SYN-ACK has the ACK bit).
    a.here(len);
    only_syn(&mut a);
    a.mov(R1, R6).mov_imm(R2, OPTION_LEN).mov_imm(R3, 0).call(bpf::FN_RESERVE_HDR_OPT).goto(V::Allow);

    a.here(write);
    only_syn(&mut a);
    client_ip(&mut a, maps);
    a.store(Size::W, R10, OPTION + 4, R1);
    option_head(&mut a, OPTION_LEN);
    a.mov(R1, R6)
        .mov(R2, R10)
        .add_imm(R2, OPTION as i32)
        .mov_imm(R3, OPTION_LEN)
        .mov_imm(R4, 0)
        .call(bpf::FN_STORE_HDR_OPT)
        .goto(V::Allow);

    // Connected: no more options to write, no more calls per segment.
    a.here(established);
    a.load(Size::W, R2, R6, CB_FLAGS).mov(R1, R2).and_imm(R1, WRITE_HDR_OPT_FLAG).if_eq(R1, 0, V::Allow);
    a.and_imm(R2, !WRITE_HDR_OPT_FLAG).mov(R1, R6).call(bpf::FN_SOCK_OPS_CB_FLAGS_SET).goto(V::Allow);

    // An app's listener keeps the SYNs of its connections, for the option.
    a.here(listen);
    state(&mut a, maps);
    a.store_imm(Size::W, R10, SCRATCH, 1)
        .mov(R1, R6)
        .mov_imm(R2, libc::SOL_TCP)
        .mov_imm(R3, TCP_SAVE_SYN)
        .mov(R4, R10)
        .add_imm(R4, SCRATCH as i32)
        .mov_imm(R5, 4)
        .call(bpf::FN_SETSOCKOPT)
        .goto(V::Allow);

    // Accepted from a member whose SYN names its app: that app is the peer.
    a.here(passive);
    state(&mut a, maps);
    member(&mut a, members);
    a.store_imm(Size::DW, R10, OPTION, 0);
    option_head(&mut a, 4);
    a.mov(R1, R6)
        .mov(R2, R10)
        .add_imm(R2, OPTION as i32)
        .mov_imm(R3, OPTION_LEN)
        .mov_imm(R4, FROM_SYN)
        .call(bpf::FN_LOAD_HDR_OPT)
        .if_ne(R0, OPTION_LEN, V::Allow)
        .load(Size::W, R1, R10, OPTION + 4)
        .if_eq(R1, 0, V::Allow)
        .store(Size::W, R7, off(SockState::PEER_IP_OFFSET), R1)
        .load(Size::W, R1, R6, REMOTE_PORT)
        .rsh_imm(R1, 16)
        .store(Size::H, R7, off(SockState::PEER_PORT_OFFSET), R1)
        .load(Size::W, R1, R7, off(SockState::FLAGS_OFFSET))
        .or_imm(R1, SockState::PEER_SET as i32)
        .store(Size::W, R7, off(SockState::FLAGS_OFFSET), R1)
        .goto(V::Allow);
    a.finish()
}

/// r7 = the socket's state; a socket without one is none of ax's apps': left alone.
fn state(a: &mut Asm, maps: &Maps) {
    a.mov(R1, R6);
    sock_state_at(a, maps, SK);
}

/// r1 = the address the socket's SYN names: its app's virtual address, or the client
/// address the daemon claimed for its own socket (`ax_kclaims`, [`super::KernelDriver::claim`]);
/// any other socket is left alone.
fn client_ip(a: &mut Asm, maps: &Maps) {
    let (app, have) = (a.label(), a.label());
    socket_value(a, &maps.ksock, SK);
    a.if_ne(R0, 0, app);
    socket_value(a, &maps.claims, SK);
    a.if_eq(R0, 0, V::Allow).load(Size::W, R1, R0, 0).goto(have);
    a.here(app).load(Size::W, R1, R0, off(SockState::APP_OFFSET)).store(Size::W, R10, SCRATCH, R1);
    lookup(a, &maps.apps, SCRATCH, V::Allow);
    a.load(Size::W, R1, R0, off(AppEntry::IP_OFFSET)).here(have);
}

/// Goes on only where the remote address is a member.
fn member(a: &mut Asm, members: &Map) {
    a.load(Size::W, R1, R6, REMOTE_IP4).store(Size::W, R10, SCRATCH, R1);
    lookup(a, members, SCRATCH, V::Allow);
}

/// Goes on only for a SYN without ACK.
fn only_syn(a: &mut Asm) {
    a.load(Size::W, R1, R6, SKB_TCP_FLAGS).and_imm(R1, TCP_FLAG_SYN | TCP_FLAG_ACK).if_ne(R1, TCP_FLAG_SYN, V::Allow);
}

/// The option's kind, length `len` and magic at [`OPTION`].
fn option_head(a: &mut Asm, len: i32) {
    let [hi, lo] = MAGIC.to_be_bytes();
    a.store_imm(Size::B, R10, OPTION, i32::from(KIND_EXPERIMENTAL))
        .store_imm(Size::B, R10, OPTION + 1, len)
        .store_imm(Size::B, R10, OPTION + 2, i32::from(hi))
        .store_imm(Size::B, R10, OPTION + 3, i32::from(lo));
}
