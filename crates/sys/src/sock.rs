//! Socket operations on raw descriptors: the daemon acts on sockets it holds through
//! pidfd_getfd, which std's socket types cannot wrap without taking ownership rules
//! that do not fit (the app owns them too).

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::cvt;

/// Encodes an address as the kernel's sockaddr.
pub fn to_raw(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Decodes a sockaddr the kernel filled in; None for families other than inet.
pub fn from_raw(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match ss.ss_family as i32 {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is aligned.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and it is aligned.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Creates a socket in the calling thread's network namespace.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = to_raw(addr);
    // SAFETY: `ss` holds a sockaddr of `len` bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(())
}

/// Connects; a non-blocking socket gives `EINPROGRESS` as an error, as in C.
pub fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = to_raw(addr);
    // SAFETY: `ss` holds a sockaddr of `len` bytes.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(())
}

pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: listen takes integers.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// Accepts a connection as a non-blocking, close-on-exec socket in one call (accept4):
/// the new socket and its peer's address.
pub fn accept_nonblocking(fd: BorrowedFd<'_>) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: `ss` has room for `len` bytes, and `len` is a valid in/out pointer.
    let new = cvt(unsafe {
        libc::accept4(fd.as_raw_fd(), (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len, flags)
    })?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok((unsafe { OwnedFd::from_raw_fd(new) }, from_raw(&ss, len)))
}

type NameFn = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name(fd: BorrowedFd<'_>, f: NameFn) -> io::Result<Option<SocketAddr>> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` has room for `len` bytes, and `len` is a valid in/out pointer.
    cvt(unsafe { f(fd.as_raw_fd(), (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    Ok(from_raw(&ss, len))
}

/// The socket's own address (None for non-inet sockets).
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    name(fd, libc::getsockname)
}

/// The connected peer's address (None for non-inet sockets).
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    name(fd, libc::getpeername)
}

/// Reads a socket option into `buf`, returning the length the kernel wrote.
pub fn get_opt(fd: BorrowedFd<'_>, level: i32, opt: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` has room for `len` bytes, and `len` is a valid in/out pointer.
    cvt(unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut len) })?;
    Ok(len as usize)
}

/// Sets a socket option from raw bytes.
pub fn set_opt(fd: BorrowedFd<'_>, level: i32, opt: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is readable for its length.
    cvt(unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, opt, value.as_ptr().cast(), value.len() as libc::socklen_t)
    })?;
    Ok(())
}

pub fn get_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    let mut b = [0u8; 4];
    get_opt(fd, level, opt, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

pub fn set_int(fd: BorrowedFd<'_>, level: i32, opt: i32, v: i32) -> io::Result<()> {
    set_opt(fd, level, opt, &v.to_ne_bytes())
}

/// The network namespace a socket lives in, as a cookie comparable across sockets.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    get_opt(fd, libc::SOL_SOCKET, libc::SO_NETNS_COOKIE, &mut b)?;
    Ok(u64::from_ne_bytes(b))
}

/// File status flags (O_NONBLOCK and friends) of the open file description.
pub fn file_flags(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: F_GETFL takes no pointer.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

pub fn set_file_flags(fd: BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    // SAFETY: F_SETFL takes an integer.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) })?;
    Ok(())
}

/// The socket's inode number, as sock_diag and /proc report it.
pub fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_ino)
}

/// Waits up to `timeout_ms` (-1: forever) for the socket to become writable, which is
/// how a pending connect reports that it finished.
pub fn wait_writable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    poll_one(fd, libc::POLLOUT, timeout_ms)
}

/// Waits up to `timeout_ms` (-1: forever) for the socket to become readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    poll_one(fd, libc::POLLIN, timeout_ms)
}

fn poll_one(fd: BorrowedFd<'_>, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    loop {
        // SAFETY: `p` is one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Dissolves a datagram socket's association (connect with AF_UNSPEC).
pub fn disconnect(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: sockaddr is plain data; all-zero has family AF_UNSPEC.
    let sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    // SAFETY: `sa` is a valid sockaddr of the length passed.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), &sa, size_of::<libc::sockaddr>() as libc::socklen_t) })?;
    Ok(())
}

/// What a datagram receive gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Bytes the datagram had (may exceed the buffer with MSG_TRUNC).
    pub len: usize,
    pub from: Option<SocketAddr>,
    /// Bytes of ancillary data written into the control buffer.
    pub control_len: usize,
    pub flags: i32,
}

/// recvmsg into one buffer (and a control buffer).
pub fn recv_msg(fd: BorrowedFd<'_>, buf: &mut [u8], control: &mut [u8], flags: i32) -> io::Result<Received> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !control.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
    }
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated length.
    let n = cvt(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) })? as usize;
    Ok(Received { len: n, from: from_raw(&ss, msg.msg_namelen), control_len: msg.msg_controllen, flags: msg.msg_flags })
}

/// sendmsg of one buffer (and control data) to `to`, or to the connected peer.
pub fn send_msg(
    fd: BorrowedFd<'_>,
    data: &[u8],
    control: &[u8],
    flags: i32,
    to: Option<&SocketAddr>,
) -> io::Result<usize> {
    let raw = to.map(to_raw);
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some((ss, len)) = &raw {
        msg.msg_name = (ss as *const libc::sockaddr_storage) as *mut libc::c_void;
        msg.msg_namelen = *len;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !control.is_empty() {
        msg.msg_control = control.as_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len();
    }
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated length; the
    // kernel only reads them.
    let n = cvt(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) })?;
    Ok(n as usize)
}

/// shutdown(2): `how` is libc::SHUT_RD, SHUT_WR or SHUT_RDWR.
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    // SAFETY: shutdown takes integers.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), how) })?;
    Ok(())
}

/// A pipe (read end, write end), close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel returned two new descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Moves up to `len` bytes from `from` to `to` inside the kernel (one end must be a
/// pipe), without waiting: 0 at end of input, `WouldBlock` when the pipe is full or
/// empty, or a socket (which must be non-blocking too) has no data or no room.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: null offsets: both ends are streams; no user memory is passed.
        let r = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sets a pipe's buffer size (F_SETPIPE_SZ); returns the size the kernel granted.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    // SAFETY: F_SETPIPE_SZ takes an integer.
    let r = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) })?;
    Ok(r as usize)
}

/// Makes close() reset the connection (SO_LINGER with a zero timeout): the peer sees
/// an error, not an end of data, when a relayed connection broke halfway.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    let bytes = [l.l_onoff.to_ne_bytes(), l.l_linger.to_ne_bytes()].concat();
    set_opt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &bytes)
}
