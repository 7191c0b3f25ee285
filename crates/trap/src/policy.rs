//! The seccomp policy as data: each rule names a system call, what happens to it, and
//! why. [`compile`] turns the rules into the BPF program `ax run` installs.

use ax_sys::seccomp::sock_filter;

use crate::fds::DATAGRAM_FDS;

/// What the filter does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the kernel run it.
    Allow,
    /// Stop the caller and ask the daemon.
    Notify,
    /// Fail it with this errno without asking anyone.
    Errno(i32),
}

/// When a rule applies beyond the call number.
#[derive(Debug, Clone, Copy)]
pub enum When {
    Always,
    /// The low 32 bits of argument `arg` is one of `values`.
    ArgIn {
        arg: usize,
        values: &'static [u32],
    },
    /// Argument `arg` (a pointer) is not null.
    ArgNonNull {
        arg: usize,
    },
    /// The low 32 bits of argument `arg` have any of `bits` set (a flag argument).
    ArgHasBits {
        arg: usize,
        bits: u32,
    },
    /// The low 32 bits of each argument equal its value.
    ArgsEq(&'static [(usize, u32)]),
    /// `socket()` asks for a TCP socket: an inet family, a stream type (whatever its
    /// SOCK_NONBLOCK and SOCK_CLOEXEC flags), protocol 0 or IPPROTO_TCP.
    TcpSocket,
    /// The descriptor (the low 32 bits of argument 0, as the kernel reads an int) is in
    /// [`DATAGRAM_FDS`], where the daemon puts the UDP sockets it makes, and the
    /// condition holds.
    DatagramFd(&'static When),
}

#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub nr: i64,
    pub when: When,
    pub action: Action,
    pub why: &'static str,
}

const INET_FAMILIES: &[u32] = &[libc::AF_INET as u32, libc::AF_INET6 as u32];
const SOURCE_ROUTE_WHY: &str = "a source route (IP options, an IPv6 routing header) would send the daemon's own \
     connects and sends to a first hop of the app's choosing";
/// The RFC 2292 name of IPV6_RTHDR, still served by Linux (libc does not export it).
const IPV6_2292RTHDR: u32 = 5;
/// RFC 2292's IPV6_PKTOPTIONS (libc does not export it): sticky options given as
/// ancillary data, a routing header among them on kernels with MIP6.
const IPV6_2292PKTOPTIONS: u32 = 6;
const FASTOPEN: When = When::ArgHasBits { arg: 3, bits: libc::MSG_FASTOPEN as u32 };
const FASTOPEN_WHY: &str = "TCP fast open would have the kernel connect a host socket wherever the app says; \
     apps see a host whose client fast open is off";

/// The user driver's rules. Calls not named here run natively: accept, read, write,
/// send, recv, poll and close stay off the daemon's path.
pub const RULES: &[Rule] = &[
    Rule { nr: libc::SYS_sendto, when: FASTOPEN, action: Action::Errno(libc::EOPNOTSUPP), why: FASTOPEN_WHY },
    Rule {
        nr: libc::SYS_sendmsg,
        when: When::ArgHasBits { arg: 2, bits: libc::MSG_FASTOPEN as u32 },
        action: Action::Errno(libc::EOPNOTSUPP),
        why: FASTOPEN_WHY,
    },
    Rule { nr: libc::SYS_sendmmsg, when: FASTOPEN, action: Action::Errno(libc::EOPNOTSUPP), why: FASTOPEN_WHY },
    Rule {
        nr: libc::SYS_setsockopt,
        when: When::ArgsEq(&[(1, libc::IPPROTO_TCP as u32), (2, libc::TCP_FASTOPEN_CONNECT as u32)]),
        action: Action::Errno(libc::EOPNOTSUPP),
        why: FASTOPEN_WHY,
    },
    Rule {
        nr: libc::SYS_setsockopt,
        when: When::ArgsEq(&[(1, libc::IPPROTO_IP as u32), (2, libc::IP_OPTIONS as u32)]),
        action: Action::Errno(libc::EPERM),
        why: SOURCE_ROUTE_WHY,
    },
    Rule {
        nr: libc::SYS_setsockopt,
        when: When::ArgsEq(&[(1, libc::IPPROTO_IPV6 as u32), (2, libc::IPV6_RTHDR as u32)]),
        action: Action::Errno(libc::EPERM),
        why: SOURCE_ROUTE_WHY,
    },
    Rule {
        nr: libc::SYS_setsockopt,
        when: When::ArgsEq(&[(1, libc::IPPROTO_IPV6 as u32), (2, IPV6_2292RTHDR)]),
        action: Action::Errno(libc::EPERM),
        why: SOURCE_ROUTE_WHY,
    },
    Rule {
        nr: libc::SYS_setsockopt,
        when: When::ArgsEq(&[(1, libc::IPPROTO_IPV6 as u32), (2, IPV6_2292PKTOPTIONS)]),
        action: Action::Errno(libc::EPERM),
        why: SOURCE_ROUTE_WHY,
    },
    Rule {
        nr: libc::SYS_socket,
        when: When::ArgIn { arg: 0, values: INET_FAMILIES },
        action: Action::Notify,
        why: "inet sockets are made in the host namespace by the daemon; AF_UNIX and the rest stay native",
    },
    Rule {
        nr: libc::SYS_bind,
        when: When::Always,
        action: Action::Notify,
        why: "a virtual address becomes the node address and a pool port",
    },
    Rule {
        nr: libc::SYS_listen,
        when: When::Always,
        action: Action::Notify,
        why: "the daemon listens and adds the service row",
    },
    Rule {
        nr: libc::SYS_connect,
        when: When::Always,
        action: Action::Notify,
        why: "service address to backend, label check; the daemon connects with its own copy of the address",
    },
    Rule {
        nr: libc::SYS_getsockname,
        when: When::Always,
        action: Action::Notify,
        why: "the app sees its virtual address, not the host's",
    },
    Rule {
        nr: libc::SYS_getpeername,
        when: When::Always,
        action: Action::Notify,
        why: "the app sees the service address it connected to",
    },
    // Sends and receives on a TCP socket never need the daemon (the kernel ignores their
    // address); only a UDP socket's address decides where a datagram goes, or what source
    // the app is shown. The daemon puts the UDP sockets it makes at numbers in
    // DATAGRAM_FDS, so these four are trapped there alone (see crate::fds), after the
    // fast-open rules above, which hold on every number.
    Rule {
        nr: libc::SYS_sendto,
        when: When::DatagramFd(&When::ArgNonNull { arg: 4 }),
        action: Action::Notify,
        why: "a datagram to a virtual address goes to its backend; sends without an address stay native",
    },
    Rule {
        nr: libc::SYS_sendmsg,
        when: When::DatagramFd(&When::Always),
        action: Action::Notify,
        why: "as sendto; the address is inside the msghdr, which only the daemon can read",
    },
    Rule {
        nr: libc::SYS_recvfrom,
        when: When::DatagramFd(&When::ArgNonNull { arg: 4 }),
        action: Action::Notify,
        why: "a datagram from a backend shows the virtual address it was sent to; recv without an address stays native",
    },
    Rule {
        nr: libc::SYS_recvmsg,
        when: When::DatagramFd(&When::Always),
        action: Action::Notify,
        why: "as recvfrom; the address buffer is inside the msghdr",
    },
    Rule {
        nr: libc::SYS_io_uring_setup,
        when: When::Always,
        action: Action::Errno(libc::ENOSYS),
        why: "io_uring would carry socket calls past the filter; apps fall back to plain calls",
    },
];

/// Where an app's sockets live (see `ax_api::RunReply::Registered::host_sockets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In a network namespace of its own: every inet `socket()` is the daemon's to make.
    OwnNetns,
    /// In the host's namespace, in a cgroup of its own: the app makes its TCP sockets
    /// itself, and the kernel driver's programs mark and rule them there.
    Host,
}

/// The rules a host-placement app gets before all others.
const HOST_FIRST: &[Rule] = &[
    Rule {
        nr: libc::SYS_socket,
        when: When::TcpSocket,
        action: Action::Allow,
        why: "a host-placement app makes its TCP sockets itself: its cgroup's sock_create program marks them for \
              the kernel driver's programs, and refuses every other inet socket made there",
    },
    Rule {
        nr: libc::SYS_socket,
        when: When::ArgIn { arg: 0, values: HOST_NATIVE_FAMILIES },
        action: Action::Allow,
        why: "unix, netlink and crypto sockets reach nothing past the host: what any local user has",
    },
    Rule {
        nr: libc::SYS_socketpair,
        when: When::ArgIn { arg: 0, values: &[libc::AF_UNIX as u32] },
        action: Action::Allow,
        why: "a unix socket pair reaches nothing but itself",
    },
];

/// The families a host-placement app makes sockets of natively, TCP aside: none reaches
/// the network (AF_ALG is the kernel's crypto).
const HOST_NATIVE_FAMILIES: &[u32] = &[libc::AF_UNIX as u32, libc::AF_NETLINK as u32, libc::AF_ALG as u32];
const HOST_OTHER_WHY: &str = "in the host's namespace, other families (SMC, RDS, RxRPC, TIPC, packet, vsock...) \
     would carry the app's traffic in kernel sockets (sock_create_kern) that no sock_create program sees";

/// The rules a host-placement app gets after all others: every socket the rules before
/// neither let through nor trapped.
const HOST_LAST: &[Rule] = &[
    Rule { nr: libc::SYS_socket, when: When::Always, action: Action::Errno(libc::EAFNOSUPPORT), why: HOST_OTHER_WHY },
    Rule {
        nr: libc::SYS_socketpair,
        when: When::Always,
        action: Action::Errno(libc::EAFNOSUPPORT),
        why: HOST_OTHER_WHY,
    },
];

/// The calls the kernel driver's BPF programs answer on the daemon's host sockets, and
/// that its apps' filters therefore let through: datagrams are routed by its udp
/// sendmsg programs, their sources shown by its recvmsg programs, and what those cannot
/// see (a source route in a control message) is dropped by its egress program.
const ANSWERED_IN_KERNEL: &[i64] = &[
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
];

/// Whether the socket guard ([`crate::guard`]) runs beside the filter on the app's host
/// sockets. [`RULES`] lean on it: what they leave native (sends outside the datagram
/// range, `sendmmsg`) the guard refuses when it would name a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketGuard {
    Installed,
    /// No BPF on the host: the filter traps what the guard would have policed.
    Absent,
}

const BATCH_WHY: &str = "without the socket guard nothing else stops a batch send's addresses: the daemon sends \
     each datagram of a host UDP socket itself";

/// The rules of an app of `driver`: the kernel driver's are the user driver's without
/// the traps of the calls its programs answer ([`ANSWERED_IN_KERNEL`]). Without the
/// socket guard, every trap kept to the datagram range holds on every descriptor, and
/// `sendmmsg` is trapped as `sendmsg` is (`unguarded` below). A host-placement app
/// (the kernel driver's only, with its guard) makes its TCP, unix and netlink sockets
/// untrapped, and none of the other families.
pub fn rules(driver: ax_core::Driver, guard: SocketGuard, placement: Placement) -> Vec<Rule> {
    let trapped = |r: &&Rule| {
        driver == ax_core::Driver::User || !(r.action == Action::Notify && ANSWERED_IN_KERNEL.contains(&r.nr))
    };
    let kept = RULES.iter().filter(trapped).copied();
    let kept: Vec<Rule> = match guard {
        SocketGuard::Installed => kept.collect(),
        SocketGuard::Absent => kept.flat_map(unguarded).collect(),
    };
    match placement {
        Placement::OwnNetns => kept,
        Placement::Host => HOST_FIRST.iter().copied().chain(kept).chain(HOST_LAST.iter().copied()).collect(),
    }
}

/// `r` where no socket guard runs: a rule kept to [`When::DatagramFd`] applies on every
/// descriptor (a UDP socket moved out of the range is no longer refused by the guard),
/// and the `sendmsg` trap is followed by the same trap on `sendmmsg` (whose addresses
/// only the guard saw).
fn unguarded(r: Rule) -> impl Iterator<Item = Rule> {
    let when = match r.when {
        When::DatagramFd(inner) => *inner,
        w => w,
    };
    let r = Rule { when, ..r };
    let batch = (r.nr == libc::SYS_sendmsg && r.action == Action::Notify).then_some(Rule {
        nr: libc::SYS_sendmmsg,
        why: BATCH_WHY,
        ..r
    });
    std::iter::once(r).chain(batch)
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// x32 system calls on x86_64 have this bit set; they are refused outright.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
/// The bits of socket()'s type argument that hold the type (the kernel's SOCK_TYPE_MASK).
const SOCK_TYPE_MASK: u32 = 0xf;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn ret(action: Action) -> sock_filter {
    let k = match action {
        Action::Allow => libc::SECCOMP_RET_ALLOW,
        Action::Notify => libc::SECCOMP_RET_USER_NOTIF,
        Action::Errno(e) => libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA),
    };
    stmt(BPF_RET_K, k)
}

fn arg(i: usize) -> u32 {
    OFF_ARGS + 8 * i as u32
}

/// The instructions that test `when`, or None for [`When::Always`]. They fall through
/// past their last instruction on a match, and jump one further (over the rule's
/// return) on a miss.
fn test(when: When) -> Option<Vec<sock_filter>> {
    Some(match when {
        When::Always => return None,
        When::ArgIn { arg: i, values } => {
            let n = values.len();
            let mut t = vec![stmt(BPF_LD_W_ABS, arg(i))];
            for (j, v) in values.iter().enumerate() {
                // A match jumps to the return; the last value's miss to the reload.
                let last = j + 1 == n;
                t.push(jump(BPF_JEQ_K, *v, (n - 1 - j) as u8, u8::from(last)));
            }
            t
        }
        When::ArgNonNull { arg: i } => vec![
            stmt(BPF_LD_W_ABS, arg(i)),
            jump(BPF_JEQ_K, 0, 0, 2),
            stmt(BPF_LD_W_ABS, arg(i) + 4),
            jump(BPF_JEQ_K, 0, 1, 0),
        ],
        When::ArgHasBits { arg: i, bits } => vec![stmt(BPF_LD_W_ABS, arg(i)), jump(BPF_JSET_K, bits, 0, 1)],
        When::ArgsEq(pairs) => {
            let mut t = Vec::new();
            for (j, &(i, v)) in pairs.iter().enumerate() {
                // A miss skips the tests left, the return, and lands on the reload.
                let left = 2 * (pairs.len() - 1 - j);
                t.push(stmt(BPF_LD_W_ABS, arg(i)));
                t.push(jump(BPF_JEQ_K, v, 0, (left + 1) as u8));
            }
            t
        }
        // Each miss jumps to the reload past the return: from the instruction at index i
        // of the 9, that is 9 - i instructions on (one more than the ones left).
        When::TcpSocket => vec![
            stmt(BPF_LD_W_ABS, arg(0)),
            jump(BPF_JEQ_K, libc::AF_INET as u32, 1, 0),
            jump(BPF_JEQ_K, libc::AF_INET6 as u32, 0, 7),
            stmt(BPF_LD_W_ABS, arg(1)),
            stmt(BPF_AND_K, SOCK_TYPE_MASK),
            jump(BPF_JEQ_K, libc::SOCK_STREAM as u32, 0, 4),
            stmt(BPF_LD_W_ABS, arg(2)),
            jump(BPF_JEQ_K, 0, 1, 0),
            jump(BPF_JEQ_K, libc::IPPROTO_TCP as u32, 0, 1),
        ],
        When::DatagramFd(inner) => {
            let inner = test(*inner).unwrap_or_default();
            let n = inner.len() as u8;
            // Unsigned compares: a negative descriptor is 2^31 or more, past the range.
            let mut t = vec![
                stmt(BPF_LD_W_ABS, arg(0)),
                jump(BPF_JGE_K, DATAGRAM_FDS.start, 0, n + 2),
                jump(BPF_JGE_K, DATAGRAM_FDS.end, n + 1, 0),
            ];
            t.extend(inner);
            t
        }
    })
}

/// Compiles `rules` into a filter: foreign architectures and x32 calls get ENOSYS; each
/// rule tests the call number, then its arguments; a call no rule takes is allowed.
///
/// A rule with a condition is laid out as: the test, then `return action`, then the
/// reload of the call number that a failed test jumps to, so the next rule (for the same
/// call, say) sees the number again.
pub fn compile(rules: &[Rule]) -> Vec<sock_filter> {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        ret(Action::Errno(libc::ENOSYS)),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        ret(Action::Errno(libc::ENOSYS)),
    ];
    for r in rules {
        let Some(test) = test(r.when) else {
            p.push(jump(BPF_JEQ_K, r.nr as u32, 0, 1));
            p.push(ret(r.action));
            continue;
        };
        // Past the test, the return and the reload: the accumulator still holds the number.
        p.push(jump(BPF_JEQ_K, r.nr as u32, 0, (test.len() + 2) as u8));
        p.extend(test);
        p.push(ret(r.action));
        p.push(stmt(BPF_LD_W_ABS, OFF_NR));
    }
    p.push(ret(Action::Allow));
    p
}

#[cfg(test)]
mod tests;
