//! Decoding: a trapped notification becomes a typed call, from its registers alone.
//! Nothing is read from the app here; pointers stay pointers until the engine reads
//! them once, into its own buffers.

use std::os::fd::RawFd;

use ax_sys::seccomp::Notification;

/// A sockaddr in the app's memory: where, and the length the app passed (as the
/// kernel sees it: the low 32 bits of the register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrIn {
    pub ptr: u64,
    pub len: u32,
}

/// sendto(2) with an address (the filter lets those without one run natively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendTo {
    pub fd: RawFd,
    pub buf: u64,
    pub len: u64,
    pub flags: i32,
    pub to: AddrIn,
}

/// recvfrom(2) asking for the source: it goes to `from`, its length is read from and
/// written to `from_len_ptr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvFrom {
    pub fd: RawFd,
    pub buf: u64,
    pub len: u64,
    pub flags: i32,
    pub from: u64,
    pub from_len_ptr: u64,
}

/// A trapped call, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Socket {
        domain: i32,
        ty: i32,
        protocol: i32,
    },
    Bind {
        fd: RawFd,
        addr: AddrIn,
    },
    Listen {
        fd: RawFd,
        backlog: i32,
    },
    Connect {
        fd: RawFd,
        addr: AddrIn,
    },
    /// getsockname (`peer` false) or getpeername: the address goes to `addr`, its
    /// length is read from and written to `len_ptr`.
    Name {
        fd: RawFd,
        peer: bool,
        addr: u64,
        len_ptr: u64,
    },
    SendTo(SendTo),
    SendMsg {
        fd: RawFd,
        msg: u64,
        flags: i32,
    },
    /// Trapped only where no socket guard runs ([`crate::policy::rules`]).
    SendMmsg {
        fd: RawFd,
        vec: u64,
        vlen: u32,
        flags: i32,
    },
    RecvFrom(RecvFrom),
    RecvMsg {
        fd: RawFd,
        msg: u64,
        flags: i32,
    },
    /// A call the filter traps that the engine has no business with.
    Other {
        nr: i64,
    },
}

impl Call {
    pub fn decode(n: &Notification) -> Call {
        let a = n.args;
        let int = |i: usize| a[i] as i32;
        let addr = |p: usize, l: usize| AddrIn { ptr: a[p], len: a[l] as u32 };
        match n.nr as i64 {
            libc::SYS_socket => Call::Socket { domain: int(0), ty: int(1), protocol: int(2) },
            libc::SYS_bind => Call::Bind { fd: int(0), addr: addr(1, 2) },
            libc::SYS_listen => Call::Listen { fd: int(0), backlog: int(1) },
            libc::SYS_connect => Call::Connect { fd: int(0), addr: addr(1, 2) },
            libc::SYS_getsockname => Call::Name { fd: int(0), peer: false, addr: a[1], len_ptr: a[2] },
            libc::SYS_getpeername => Call::Name { fd: int(0), peer: true, addr: a[1], len_ptr: a[2] },
            libc::SYS_sendto => {
                Call::SendTo(SendTo { fd: int(0), buf: a[1], len: a[2], flags: int(3), to: addr(4, 5) })
            }
            libc::SYS_sendmsg => Call::SendMsg { fd: int(0), msg: a[1], flags: int(2) },
            libc::SYS_sendmmsg => Call::SendMmsg { fd: int(0), vec: a[1], vlen: a[2] as u32, flags: int(3) },
            libc::SYS_recvfrom => Call::RecvFrom(RecvFrom {
                fd: int(0),
                buf: a[1],
                len: a[2],
                flags: int(3),
                from: a[4],
                from_len_ptr: a[5],
            }),
            libc::SYS_recvmsg => Call::RecvMsg { fd: int(0), msg: a[1], flags: int(2) },
            nr => Call::Other { nr },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(nr: i64, args: [u64; 6]) -> Notification {
        Notification { id: 1, pid: 100, nr: nr as i32, arch: 0, args }
    }

    #[test]
    fn every_trapped_call_decodes_from_its_registers() {
        let d = |nr, args| Call::decode(&notification(nr, args));
        assert_eq!(d(libc::SYS_socket, [2, 0x80001, 6, 0, 0, 0]), Call::Socket { domain: 2, ty: 0x80001, protocol: 6 });
        assert_eq!(
            d(libc::SYS_bind, [3, 0x1000, 16, 0, 0, 0]),
            Call::Bind { fd: 3, addr: AddrIn { ptr: 0x1000, len: 16 } }
        );
        assert_eq!(d(libc::SYS_listen, [3, 511, 0, 0, 0, 0]), Call::Listen { fd: 3, backlog: 511 });
        assert_eq!(
            d(libc::SYS_connect, [4, 0x2000, 28, 0, 0, 0]),
            Call::Connect { fd: 4, addr: AddrIn { ptr: 0x2000, len: 28 } }
        );
        assert_eq!(
            d(libc::SYS_getsockname, [5, 0x10, 0x20, 0, 0, 0]),
            Call::Name { fd: 5, peer: false, addr: 0x10, len_ptr: 0x20 }
        );
        assert_eq!(
            d(libc::SYS_getpeername, [5, 0x10, 0x20, 0, 0, 0]),
            Call::Name { fd: 5, peer: true, addr: 0x10, len_ptr: 0x20 }
        );
        assert_eq!(
            d(libc::SYS_sendto, [6, 0x30, 5, 0x40, 0x50, 16]),
            Call::SendTo(SendTo { fd: 6, buf: 0x30, len: 5, flags: 0x40, to: AddrIn { ptr: 0x50, len: 16 } })
        );
        assert_eq!(d(libc::SYS_sendmsg, [6, 0x60, 1, 0, 0, 0]), Call::SendMsg { fd: 6, msg: 0x60, flags: 1 });
        assert_eq!(
            d(libc::SYS_sendmmsg, [6, 0x60, (1 << 32) | 3, 0x40, 0, 0]),
            Call::SendMmsg { fd: 6, vec: 0x60, vlen: 3, flags: 0x40 }
        );
        assert_eq!(
            d(libc::SYS_recvfrom, [7, 0x70, 9, 2, 0x80, 0x90]),
            Call::RecvFrom(RecvFrom { fd: 7, buf: 0x70, len: 9, flags: 2, from: 0x80, from_len_ptr: 0x90 })
        );
        assert_eq!(d(libc::SYS_recvmsg, [7, 0xa0, 0, 0, 0, 0]), Call::RecvMsg { fd: 7, msg: 0xa0, flags: 0 });
        assert_eq!(d(libc::SYS_accept4, [0; 6]), Call::Other { nr: libc::SYS_accept4 });
    }

    #[test]
    fn ints_are_the_low_32_bits_as_the_kernel_reads_them() {
        // A descriptor or length with garbage in the high half means what its low half says.
        let c = Call::decode(&notification(
            libc::SYS_connect,
            [0xdead_0000_0000_0004, 0x2000, 0xffff_0000_0000_0010, 0, 0, 0],
        ));
        assert_eq!(c, Call::Connect { fd: 4, addr: AddrIn { ptr: 0x2000, len: 16 } });
        // A negative descriptor stays negative (EBADF from the fd lookup).
        let c = Call::decode(&notification(libc::SYS_listen, [u64::MAX, 1, 0, 0, 0, 0]));
        assert_eq!(c, Call::Listen { fd: -1, backlog: 1 });
    }
}
