//! Datagrams with addresses: sendto/sendmsg to a virtual address go to its backend,
//! and recvfrom/recvmsg on a host UDP socket show a backend's virtual address as the
//! source. The daemon does these calls itself with its own copy of the app's buffers;
//! anything else (no address, the app's own sockets) runs natively.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use ax_core::addr::{self, Family, SockAddr};
use ax_core::{Errno, Proto};
use ax_sys::kernel::{Kernel, Readiness, Reply};
use ax_sys::seccomp::Notification;
use ax_sys::sock::Received;

use crate::call::{AddrIn, RecvFrom, SendTo};
use crate::engine::{put_name, timeout_ms, Answer, Engine};
use crate::helper::{wait_for_call, Waited};
use crate::policy::SocketGuard;
use crate::Node;
use ax_core::plan::{self, Datagram, Kind, Use};

/// The most a datagram send may carry (the kernel's limit for UDP is below this).
pub(crate) const MAX_PAYLOAD: usize = 256 * 1024;
const MAX_CONTROL: usize = 4096;
/// UIO_MAXIOV.
const MAX_IOV: u64 = 1024;

/// The fields of a `struct msghdr` (x86_64 and aarch64 layout, 56 bytes).
pub(crate) struct MsgHdr {
    pub name: u64,
    pub namelen: u32,
    pub iov: u64,
    pub iovlen: u64,
    pub control: u64,
    pub controllen: u64,
}

pub(crate) const MSGHDR_LEN: usize = 56;
/// A `struct mmsghdr`: a msghdr, its `msg_len` (u32), padding.
const MMSGHDR_LEN: u64 = 64;

/// A datagram the daemon sent for the app.
struct Sent {
    len: i64,
    /// The app's socket was replaced by a private one (a send to its own loopback).
    replaced: bool,
}
const OFF_NAMELEN: u64 = 8;
const OFF_CONTROLLEN: u64 = 40;
const OFF_FLAGS: u64 = 48;

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl MsgHdr {
    pub(crate) fn parse(b: &[u8; MSGHDR_LEN]) -> MsgHdr {
        MsgHdr {
            name: u64_at(b, 0),
            namelen: u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes")),
            iov: u64_at(b, 16),
            iovlen: u64_at(b, 24),
            control: u64_at(b, 32),
            controllen: u64_at(b, 40),
        }
    }
}

/// Where a received datagram goes in the app's memory (the source's room is read when
/// it is written, as the kernel does).
enum Into {
    From { buf: u64, len: usize, src: u64, srclen_ptr: u64 },
    Msg { hdr: u64, iovs: Vec<(u64, usize)>, name: u64, control: u64, controllen: usize },
}

impl Into {
    fn capacity(&self) -> usize {
        match self {
            Into::From { len, .. } => *len,
            // Lengths are the app's: they may add up past usize.
            Into::Msg { iovs, .. } => iovs.iter().fold(0usize, |sum, i| sum.saturating_add(i.1)),
        }
        .min(MAX_PAYLOAD)
    }

    fn control_capacity(&self) -> usize {
        match self {
            Into::From { .. } => 0,
            Into::Msg { controllen, .. } => (*controllen).min(MAX_CONTROL),
        }
    }

    /// Writes the datagram, its (shown) source `name` and ancillary data where the caller
    /// of call `id` (thread `tid`) asked, in the kernel's order: data first, so a bad
    /// buffer fails the call with the datagram gone, as it would natively.
    fn deliver<K: Kernel>(
        &self,
        (k, tid, id): (&K, i32, u64),
        data: &[u8],
        got: &Received,
        control: &[u8],
        name: &[u8],
    ) -> Result<i64, Errno> {
        let copied = got.len.min(data.len());
        match self {
            Into::From { buf, len, src, srclen_ptr } => {
                k.write(tid, id, *buf, &data[..copied.min(*len)])?;
                if *src != 0 {
                    put_name(k, tid, id, name, *src, *srclen_ptr)?;
                }
            }
            Into::Msg { hdr, iovs, name: name_ptr, control: control_ptr, controllen } => {
                let mut rest = &data[..copied];
                for (base, len) in iovs {
                    let take = rest.len().min(*len);
                    k.write(tid, id, *base, &rest[..take])?;
                    rest = &rest[take..];
                }
                put_name(k, tid, id, name, *name_ptr, hdr + OFF_NAMELEN)?;
                let c = got.control_len.min(*controllen).min(control.len());
                k.write(tid, id, *control_ptr, &control[..c])?;
                k.write(tid, id, hdr + OFF_CONTROLLEN, &(c as u64).to_ne_bytes())?;
                k.write(tid, id, hdr + OFF_FLAGS, &got.flags.to_ne_bytes())?;
            }
        }
        Ok(got.len as i64)
    }
}

impl<K: Kernel, N: Node> Engine<K, N> {
    fn read_bytes(&self, n: &Notification, ptr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut b = vec![0u8; len];
        self.k.read(n.pid, n.id, ptr, &mut b)?;
        Ok(b)
    }

    fn read_msghdr(&self, n: &Notification, ptr: u64) -> Result<MsgHdr, Errno> {
        let mut b = [0u8; MSGHDR_LEN];
        self.k.read(n.pid, n.id, ptr, &mut b)?;
        Ok(MsgHdr::parse(&b))
    }

    fn read_iovecs(&self, n: &Notification, ptr: u64, count: u64) -> Result<Vec<(u64, usize)>, Errno> {
        if count > MAX_IOV {
            return Err(libc::EMSGSIZE);
        }
        let b = self.read_bytes(n, ptr, 16 * count as usize)?;
        Ok(b.chunks(16).map(|c| (u64_at(c, 0), u64_at(c, 8) as usize)).collect())
    }

    /// The app's socket `fd`, when it is a TCP or UDP socket the daemon made.
    fn host_socket(&self, n: &Notification, fd: RawFd) -> Result<Option<(K::Fd, Family, Proto)>, Errno> {
        Ok(match self.classify(n, fd)? {
            (s, Kind::Host(family, proto)) => Some((s, family, proto)),
            _ => None,
        })
    }

    /// TCP sockets run natively, except TCP Fast Open, whose send would connect
    /// without the daemon.
    fn tcp_send(flags: i32) -> Result<Answer, Errno> {
        if flags & libc::MSG_FASTOPEN != 0 {
            Err(libc::EOPNOTSUPP)
        } else {
            Ok(Answer::Proceed)
        }
    }

    pub(crate) fn sendto(&self, n: &Notification, c: SendTo) -> Result<Answer, Errno> {
        let Some((s, family, proto)) = self.host_socket(n, c.fd)? else { return Ok(Answer::Proceed) };
        if proto == Proto::Tcp {
            return Self::tcp_send(c.flags);
        }
        if c.len > MAX_PAYLOAD as u64 {
            return Err(libc::EMSGSIZE);
        }
        let data = self.read_bytes(n, c.buf, c.len as usize)?;
        let SockAddr::Inet(dest) = self.read_addr(n, c.to, family, Use::Send)? else {
            return Err(libc::EAFNOSUPPORT);
        };
        self.send_datagram(n, c.fd, &s, family, &data, &[], c.flags, dest).map(|sent| Answer::Value(sent.len))
    }

    pub(crate) fn sendmsg(&self, n: &Notification, fd: RawFd, msg: u64, flags: i32) -> Result<Answer, Errno> {
        let Some((s, family, proto)) = self.host_socket(n, fd)? else { return Ok(Answer::Proceed) };
        if proto == Proto::Tcp {
            return Self::tcp_send(flags);
        }
        let hdr = self.read_msghdr(n, msg)?;
        if (hdr.name == 0 || hdr.namelen == 0) && self.guard == SocketGuard::Installed {
            // Should a racing thread give it an address meanwhile, the guard refuses it.
            return Ok(Answer::Proceed);
        }
        self.send_msghdr(n, fd, &s, family, &hdr, flags).map(|sent| Answer::Value(sent.len))
    }

    /// sendmmsg, trapped only where no socket guard runs: on a host UDP socket the
    /// daemon sends each message as [`Self::sendmsg`] would and writes its length to
    /// its `msg_len`. As in the kernel, a failure ends the batch: the count sent so far
    /// is the answer, or the error when nothing was sent. A message to the app's own
    /// loopback (its socket replaced by a private one) ends the batch too.
    pub(crate) fn sendmmsg(
        &self,
        n: &Notification,
        fd: RawFd,
        vec: u64,
        vlen: u32,
        flags: i32,
    ) -> Result<Answer, Errno> {
        let Some((s, family, proto)) = self.host_socket(n, fd)? else { return Ok(Answer::Proceed) };
        if proto == Proto::Tcp {
            return Self::tcp_send(flags);
        }
        let mut count = 0i64;
        for i in 0..u64::from(vlen).min(MAX_IOV) {
            let at = vec.checked_add(i * MMSGHDR_LEN).ok_or(libc::EFAULT);
            let one = at.and_then(|at| {
                let sent = self.send_msghdr(n, fd, &s, family, &self.read_msghdr(n, at)?, flags)?;
                self.k.write(n.pid, n.id, at + MSGHDR_LEN as u64, &(sent.len as u32).to_ne_bytes())?;
                Ok(sent)
            });
            match one {
                Ok(sent) => {
                    count += 1;
                    if sent.replaced {
                        break;
                    }
                }
                Err(e) if count == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(Answer::Value(count))
    }

    /// Sends the datagram `hdr` describes on host UDP socket `s`, with the daemon's own
    /// copy of it: where its address says, or without one where the socket is connected.
    fn send_msghdr(
        &self,
        n: &Notification,
        fd: RawFd,
        s: &K::Fd,
        family: Family,
        hdr: &MsgHdr,
        flags: i32,
    ) -> Result<Sent, Errno> {
        let mut data = Vec::new();
        for (base, len) in self.read_iovecs(n, hdr.iov, hdr.iovlen)? {
            if data.len().saturating_add(len) > MAX_PAYLOAD {
                return Err(libc::EMSGSIZE);
            }
            data.extend(self.read_bytes(n, base, len)?);
        }
        let control = self.read_bytes(n, hdr.control, (hdr.controllen as usize).min(MAX_CONTROL))?;
        if hdr.name == 0 || hdr.namelen == 0 {
            let control = plan::host_control(&control)?;
            let len = self.k.send_msg(s, &data, &control, plan::send_flags(flags), None)?;
            return Ok(Sent { len: len as i64, replaced: false });
        }
        let to = AddrIn { ptr: hdr.name, len: hdr.namelen };
        let SockAddr::Inet(dest) = self.read_addr(n, to, family, Use::Send)? else {
            return Err(libc::EAFNOSUPPORT);
        };
        self.send_datagram(n, fd, s, family, &data, &control, flags, dest)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_datagram(
        &self,
        n: &Notification,
        fd: RawFd,
        s: &K::Fd,
        family: Family,
        data: &[u8],
        control: &[u8],
        flags: i32,
        dest: SocketAddr,
    ) -> Result<Sent, Errno> {
        let flags = plan::send_flags(flags);
        let to = match self.node.with_table(|t| plan::datagram(t, self.app, dest))? {
            Datagram::To(to) => to,
            Datagram::Backends(backends) => SocketAddr::V4(plan::pinned(&backends, self.k.inode(s)?)),
            Datagram::Private => {
                let fresh = self.privatize(n, fd, s)?;
                let len = self.k.send_msg(&fresh, data, control, flags, Some(&dest))?;
                return Ok(Sent { len: len as i64, replaced: true });
            }
        };
        let control = plan::host_control(control)?;
        let len = self.k.send_msg(s, data, &control, flags, Some(&addr::for_family(to, family)))?;
        Ok(Sent { len: len as i64, replaced: false })
    }

    pub(crate) fn recvfrom(&self, n: &Notification, c: RecvFrom) -> Result<Answer, Errno> {
        let Some((s, family, Proto::Udp)) = self.host_socket(n, c.fd)? else { return Ok(Answer::Proceed) };
        if c.flags & libc::MSG_ERRQUEUE != 0 {
            return Ok(Answer::Proceed);
        }
        let into = Into::From { buf: c.buf, len: c.len as usize, src: c.from, srclen_ptr: c.from_len_ptr };
        self.recv_datagram(n, s, family, c.flags, into)
    }

    pub(crate) fn recvmsg(&self, n: &Notification, fd: RawFd, msg: u64, flags: i32) -> Result<Answer, Errno> {
        let Some((s, family, Proto::Udp)) = self.host_socket(n, fd)? else { return Ok(Answer::Proceed) };
        let hdr = self.read_msghdr(n, msg)?;
        if hdr.name == 0 || hdr.namelen == 0 || flags & libc::MSG_ERRQUEUE != 0 {
            return Ok(Answer::Proceed);
        }
        if (hdr.namelen as i32) < 0 {
            // As the kernel reads the header, before anything is received.
            return Err(libc::EINVAL);
        }
        let iovs = self.read_iovecs(n, hdr.iov, hdr.iovlen)?;
        let into =
            Into::Msg { hdr: msg, iovs, name: hdr.name, control: hdr.control, controllen: hdr.controllen as usize };
        self.recv_datagram(n, s, family, flags, into)
    }

    /// Receives without blocking this thread: at once if a datagram is waiting, else
    /// (for a blocking socket) on a helper thread once one arrives.
    fn recv_datagram(
        &self,
        n: &Notification,
        s: K::Fd,
        family: Family,
        flags: i32,
        into: Into,
    ) -> Result<Answer, Errno> {
        let recv = Receive { k: &*self.k, node: &*self.node, tid: n.pid, id: n.id };
        match recv.now(&s, flags, &into, family) {
            // Whether the socket blocks matters only when nothing is waiting.
            Err(libc::EAGAIN) if flags & libc::MSG_DONTWAIT == 0 && self.k.file_flags(&s)? & libc::O_NONBLOCK == 0 => {
                let (k, node, tid, id) = (Arc::clone(&self.k), Arc::clone(&self.node), n.pid, n.id);
                self.later(n, 0, move || {
                    let timeout = timeout_ms(&*k, &s, libc::SO_RCVTIMEO);
                    let recv = Receive { k: &*k, node: &*node, tid, id };
                    let answer = match wait_for_call(&*k, &s, Readiness::Readable, timeout, id) {
                        Ok(Waited::Abandoned) => return,
                        Ok(Waited::TimedOut) => Err(libc::EAGAIN),
                        Ok(Waited::Ready) => recv.now(&s, flags, &into, family),
                        Err(e) => Err(e),
                    };
                    let _ = k.answer(id, answer.map_or_else(Reply::Fail, Reply::Value));
                })
            }
            r => r.map(Answer::Value),
        }
    }
}

/// The most of its receive buffer a thread keeps for its next receive: a 64 KiB
/// datagram and its ancillary data. A larger buffer is given back after the call.
const KEPT: usize = 64 * 1024 + MAX_CONTROL;

thread_local! {
    /// The receive buffer of the thread (an app's engine or one of its helpers), kept
    /// between calls: with a fresh one per call the allocator gave its pages back to the
    /// kernel after each (madvise, then a page fault on the next), once per datagram.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with room for `len` bytes of data and `control_len` of ancillary data, from
/// this thread's buffer. What it holds from an earlier call is the same app's, and is
/// never copied out: a delivery writes only what the kernel has just received.
fn with_buffers<R>(len: usize, control_len: usize, f: impl FnOnce(&mut [u8], &mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.take();
        buf.resize(len + control_len, 0);
        let (data, control) = buf.split_at_mut(len);
        let result = f(data, control);
        if buf.capacity() <= KEPT {
            cell.replace(buf);
        }
        result
    })
}

/// The delivery of one received datagram into the caller of call `id`.
struct Receive<'a, K, N> {
    k: &'a K,
    node: &'a N,
    tid: i32,
    id: u64,
}

impl<K: Kernel, N: Node> Receive<'_, K, N> {
    /// Receives the datagram waiting on `s`, if any (EAGAIN when none), and delivers it.
    fn now(&self, s: &K::Fd, flags: i32, into: &Into, family: Family) -> Result<i64, Errno> {
        with_buffers(into.capacity(), into.control_capacity(), |data, control| {
            let got = self.k.recv_msg(s, data, control, flags | libc::MSG_DONTWAIT)?;
            self.deliver(into, data, &got, control, family)
        })
    }

    fn deliver(&self, into: &Into, data: &[u8], got: &Received, control: &[u8], family: Family) -> Result<i64, Errno> {
        if !self.k.id_valid(self.id) {
            return Err(libc::EINTR);
        }
        // A backend's host address shows as the virtual address the app sent to.
        let from = got.from.map(|f| self.node.with_table(|t| t.peer_name(Proto::Udp, f)).unwrap_or(f));
        let name = from.map(|a| addr::encode(a, family)).unwrap_or_default();
        into.deliver((self.k, self.tid, self.id), data, got, control, &name)
    }
}
