//! Datagrams with addresses: sendto/sendmsg to a virtual address go to its backend,
//! and recvfrom/recvmsg on a host UDP socket show a backend's virtual address as the
//! source. The daemon does these calls itself with its own copy of the app's buffers;
//! anything else (no address, TCP, the app's own sockets) runs natively.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use ax_core::addr::{self, Family, SockAddr};
use ax_core::{Errno, Proto, Route};
use ax_sys::seccomp::{Listener, Notification};
use ax_sys::sock::{self, Received};

use crate::engine::{errno, later, socket_timeout_ms, Answer, Engine};
use crate::Node;

/// The most a datagram send may carry (the kernel's limit for UDP is below this).
const MAX_PAYLOAD: usize = 256 * 1024;
const MAX_CONTROL: usize = 4096;
/// UIO_MAXIOV.
const MAX_IOV: u64 = 1024;

/// The fields of a `struct msghdr` (x86_64 and aarch64 layout, 56 bytes).
struct MsgHdr {
    name: u64,
    namelen: u32,
    iov: u64,
    iovlen: u64,
    control: u64,
    controllen: u64,
}

const MSGHDR_LEN: usize = 56;

/// Writes bytes at an address of the app's memory.
type WriteMem<'a> = dyn FnMut(u64, &[u8]) -> Result<(), Errno> + 'a;
const OFF_NAMELEN: u64 = 8;
const OFF_CONTROLLEN: u64 = 40;
const OFF_FLAGS: u64 = 48;

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Where a received datagram goes in the app's memory.
enum Into {
    From { buf: u64, len: usize, src: u64, srclen_ptr: u64, srclen: u32 },
    Msg { hdr: u64, iovs: Vec<(u64, usize)>, name: u64, namelen: u32, control: u64, controllen: usize },
}

impl Into {
    fn capacity(&self) -> usize {
        match self {
            Into::From { len, .. } => *len,
            Into::Msg { iovs, .. } => iovs.iter().map(|i| i.1).sum(),
        }
        .min(MAX_PAYLOAD)
    }

    fn control_capacity(&self) -> usize {
        match self {
            Into::From { .. } => 0,
            Into::Msg { controllen, .. } => (*controllen).min(MAX_CONTROL),
        }
    }

    /// Writes the datagram, its (shown) source and ancillary data where the app asked.
    fn deliver(
        &self,
        write: &mut WriteMem<'_>,
        data: &[u8],
        got: &Received,
        control: &[u8],
        from: Option<SocketAddr>,
        family: Family,
    ) -> Result<i64, Errno> {
        let name = from.map(|a| addr::encode(a, family)).unwrap_or_default();
        let copied = got.len.min(data.len());
        match self {
            Into::From { buf, len, src, srclen_ptr, srclen } => {
                write(*buf, &data[..copied.min(*len)])?;
                if *src != 0 {
                    write(*src, &name[..name.len().min(*srclen as usize)])?;
                    write(*srclen_ptr, &(name.len() as u32).to_ne_bytes())?;
                }
            }
            Into::Msg { hdr, iovs, name: name_ptr, namelen, control: control_ptr, controllen } => {
                let mut rest = &data[..copied];
                for (base, len) in iovs {
                    let take = rest.len().min(*len);
                    write(*base, &rest[..take])?;
                    rest = &rest[take..];
                }
                write(*name_ptr, &name[..name.len().min(*namelen as usize)])?;
                write(hdr + OFF_NAMELEN, &(name.len() as u32).to_ne_bytes())?;
                let c = got.control_len.min(*controllen).min(control.len());
                write(*control_ptr, &control[..c])?;
                write(hdr + OFF_CONTROLLEN, &(c as u64).to_ne_bytes())?;
                write(hdr + OFF_FLAGS, &got.flags.to_ne_bytes())?;
            }
        }
        Ok(got.len as i64)
    }
}

impl<N: Node> Engine<N> {
    fn read_bytes(&mut self, n: &Notification, ptr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut b = vec![0u8; len];
        self.tasks.read(n.pid, n.id, &self.listener, ptr, &mut b)?;
        Ok(b)
    }

    fn read_msghdr(&mut self, n: &Notification, ptr: u64) -> Result<MsgHdr, Errno> {
        let b = self.read_bytes(n, ptr, MSGHDR_LEN)?;
        Ok(MsgHdr {
            name: u64_at(&b, 0),
            namelen: u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes")),
            iov: u64_at(&b, 16),
            iovlen: u64_at(&b, 24),
            control: u64_at(&b, 32),
            controllen: u64_at(&b, 40),
        })
    }

    fn read_iovecs(&mut self, n: &Notification, ptr: u64, count: u64) -> Result<Vec<(u64, usize)>, Errno> {
        if count > MAX_IOV {
            return Err(libc::EMSGSIZE);
        }
        let b = self.read_bytes(n, ptr, 16 * count as usize)?;
        Ok(b.chunks(16).map(|c| (u64_at(c, 0), u64_at(c, 8) as usize)).collect())
    }

    /// TCP sockets run natively, except TCP Fast Open, whose sendto would connect
    /// without the daemon.
    fn tcp_send(flags: i32) -> Result<Answer, Errno> {
        if flags & libc::MSG_FASTOPEN != 0 {
            Err(libc::EOPNOTSUPP)
        } else {
            Ok(Answer::Proceed)
        }
    }

    pub(crate) fn sendto(&mut self, n: &Notification) -> Result<Answer, Errno> {
        let flags = n.args[3] as i32;
        let Some((s, family, proto)) = self.host_socket(n)? else { return Ok(Answer::Proceed) };
        if proto == Proto::Tcp {
            return Self::tcp_send(flags);
        }
        let len = n.args[2] as usize;
        if len > MAX_PAYLOAD {
            return Err(libc::EMSGSIZE);
        }
        let data = self.read_bytes(n, n.args[1], len)?;
        let SockAddr::Inet(dest) = self.read_addr(n, n.args[4], n.args[5], family)? else {
            return Err(libc::EAFNOSUPPORT);
        };
        self.send_datagram(n, s, family, &data, &[], flags, dest)
    }

    pub(crate) fn sendmsg(&mut self, n: &Notification) -> Result<Answer, Errno> {
        let flags = n.args[2] as i32;
        let Some((s, family, proto)) = self.host_socket(n)? else { return Ok(Answer::Proceed) };
        if proto == Proto::Tcp {
            return Self::tcp_send(flags);
        }
        let hdr = self.read_msghdr(n, n.args[1])?;
        if hdr.name == 0 || hdr.namelen == 0 {
            return Ok(Answer::Proceed);
        }
        let mut data = Vec::new();
        for (base, len) in self.read_iovecs(n, hdr.iov, hdr.iovlen)? {
            if data.len() + len > MAX_PAYLOAD {
                return Err(libc::EMSGSIZE);
            }
            data.extend(self.read_bytes(n, base, len)?);
        }
        let control = self.read_bytes(n, hdr.control, (hdr.controllen as usize).min(MAX_CONTROL))?;
        let SockAddr::Inet(dest) = self.read_addr(n, hdr.name, hdr.namelen as u64, family)? else {
            return Err(libc::EAFNOSUPPORT);
        };
        self.send_datagram(n, s, family, &data, &control, flags, dest)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_datagram(
        &mut self,
        n: &Notification,
        s: OwnedFd,
        family: Family,
        data: &[u8],
        control: &[u8],
        flags: i32,
        dest: SocketAddr,
    ) -> Result<Answer, Errno> {
        let route = self.node.with_table(|t| t.route_connect(self.app, Proto::Udp, dest));
        let target = match route {
            Route::Private => {
                let fresh = self.privatize(n, s.as_fd())?;
                let sent = sock::send_msg(fresh.as_fd(), data, control, flags, Some(&dest)).map_err(errno)?;
                return Ok(Answer::Value(sent as i64));
            }
            Route::Refused => return Err(libc::ECONNREFUSED),
            Route::Direct(a) | Route::Egress { dest: a, .. } => a,
            Route::Backends(mut targets) if !targets.is_empty() => {
                // One socket keeps talking to one backend, so replies make sense.
                targets.sort();
                let inode = sock::inode(s.as_fd()).map_err(errno)?;
                SocketAddr::V4(targets[(inode % targets.len() as u64) as usize].addr)
            }
            Route::Backends(_) => return Err(libc::ECONNREFUSED),
        };
        let sent =
            sock::send_msg(s.as_fd(), data, control, flags, Some(&addr::for_family(target, family))).map_err(errno)?;
        Ok(Answer::Value(sent as i64))
    }

    pub(crate) fn recvfrom(&mut self, n: &Notification) -> Result<Answer, Errno> {
        let flags = n.args[3] as i32;
        let Some((s, family, Proto::Udp)) = self.host_socket(n)? else { return Ok(Answer::Proceed) };
        if flags & libc::MSG_ERRQUEUE != 0 {
            return Ok(Answer::Proceed);
        }
        let srclen = u32::from_ne_bytes(self.read_bytes(n, n.args[5], 4)?.try_into().expect("4 bytes"));
        let into =
            Into::From { buf: n.args[1], len: n.args[2] as usize, src: n.args[4], srclen_ptr: n.args[5], srclen };
        self.recv_datagram(n, s, family, flags, into)
    }

    pub(crate) fn recvmsg(&mut self, n: &Notification) -> Result<Answer, Errno> {
        let flags = n.args[2] as i32;
        let Some((s, family, Proto::Udp)) = self.host_socket(n)? else { return Ok(Answer::Proceed) };
        let hdr = self.read_msghdr(n, n.args[1])?;
        if hdr.name == 0 || hdr.namelen == 0 || flags & libc::MSG_ERRQUEUE != 0 {
            return Ok(Answer::Proceed);
        }
        let iovs = self.read_iovecs(n, hdr.iov, hdr.iovlen)?;
        let into = Into::Msg {
            hdr: n.args[1],
            iovs,
            name: hdr.name,
            namelen: hdr.namelen,
            control: hdr.control,
            controllen: hdr.controllen as usize,
        };
        self.recv_datagram(n, s, family, flags, into)
    }

    /// Receives without blocking this thread: at once if a datagram is waiting, else
    /// (for a blocking socket) on a helper thread once one arrives.
    fn recv_datagram(
        &mut self,
        n: &Notification,
        s: OwnedFd,
        family: Family,
        flags: i32,
        into: Into,
    ) -> Result<Answer, Errno> {
        let nonblocking =
            flags & libc::MSG_DONTWAIT != 0 || sock::file_flags(s.as_fd()).map_err(errno)? & libc::O_NONBLOCK != 0;
        let mut data = vec![0u8; into.capacity()];
        let mut control = vec![0u8; into.control_capacity()];
        match sock::recv_msg(s.as_fd(), &mut data, &mut control, flags | libc::MSG_DONTWAIT) {
            Ok(got) => {
                if !self.listener.id_valid(n.id) {
                    return Err(libc::EINTR);
                }
                let from = shown_source(&*self.node, got.from);
                let (pid, id) = (n.pid, n.id);
                let (tasks, listener) = (&mut self.tasks, &self.listener);
                let mut write = |ptr: u64, bytes: &[u8]| tasks.write(pid, id, listener, ptr, bytes);
                into.deliver(&mut write, &data, &got, &control, from, family).map(Answer::Value)
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && !nonblocking => {
                let waiter =
                    Waiter { listener: Arc::clone(&self.listener), node: Arc::clone(&self.node), id: n.id, tid: n.pid };
                later(move || waiter.finish(s, family, flags, into, data, control))
            }
            Err(e) => Err(errno(e)),
        }
    }
}

/// A backend's host address shows as the virtual address the app sent to.
fn shown_source(node: &impl Node, from: Option<SocketAddr>) -> Option<SocketAddr> {
    let from = from?;
    Some(node.with_table(|t| t.peer_name(Proto::Udp, from)).unwrap_or(from))
}

/// Finishes a blocking receive on its own thread.
struct Waiter<N: Node> {
    listener: Arc<Listener>,
    node: Arc<N>,
    id: u64,
    tid: i32,
}

impl<N: Node> Waiter<N> {
    fn finish(self, s: OwnedFd, family: Family, flags: i32, into: Into, mut data: Vec<u8>, mut control: Vec<u8>) {
        let timeout = socket_timeout_ms(s.as_fd(), libc::SO_RCVTIMEO);
        let result = match sock::wait_readable(s.as_fd(), timeout) {
            Ok(false) => Err(libc::EAGAIN),
            Ok(true) => sock::recv_msg(s.as_fd(), &mut data, &mut control, flags | libc::MSG_DONTWAIT).map_err(errno),
            Err(e) => Err(errno(e)),
        };
        let answer = result.and_then(|got| {
            // The memory file is opened only while the call is still pending, so it
            // is the caller's and no one else's.
            let mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{}/mem", self.tid)).map_err(errno)?;
            if !self.listener.id_valid(self.id) {
                return Err(libc::EINTR);
            }
            let from = shown_source(&*self.node, got.from);
            let mut write = |ptr: u64, bytes: &[u8]| {
                std::os::unix::fs::FileExt::write_all_at(&mem, bytes, ptr).map_err(|_| libc::EFAULT)
            };
            into.deliver(&mut write, &data, &got, &control, from, family)
        });
        let _ = match answer {
            Ok(v) => self.listener.reply(self.id, v),
            Err(e) => self.listener.fail(self.id, e),
        };
    }
}
