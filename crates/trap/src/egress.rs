//! Connects through an egress gateway: the app's socket is connected to the gateway's
//! egress port, the daemon asks the gateway for the real destination (one line each
//! way), and only then does the app's connect return, with the gateway's answer. The
//! app never sees the gateway: getpeername shows the destination it asked for.

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use ax_core::addr::{self, Family};
use ax_core::Errno;
use ax_sys::seccomp::Notification;
use ax_sys::sock;

use crate::engine::{errno, later, Answer, Engine};
use crate::Node;

/// How long the gateway has for each step of the handshake.
const STEP_MS: i32 = 10_000;

impl<N: Node> Engine<N> {
    pub(crate) fn egress(
        &self,
        n: &Notification,
        s: OwnedFd,
        gateway: SocketAddrV4,
        dest: SocketAddr,
        family: Family,
    ) -> Result<Answer, Errno> {
        let (listener, node, id) = (Arc::clone(&self.listener), Arc::clone(&self.node), n.id);
        later(move || {
            let answer = handshake(s.as_fd(), gateway, dest, family);
            let _ = match answer {
                Ok(local) => {
                    node.with_table(|t| t.record_egress(local, dest));
                    listener.reply(id, 0)
                }
                Err(e) => listener.fail(id, e),
            };
        })
    }
}

fn handshake(
    fd: BorrowedFd<'_>,
    gateway: SocketAddrV4,
    dest: SocketAddr,
    family: Family,
) -> Result<SocketAddrV4, Errno> {
    let flags = sock::file_flags(fd).map_err(errno)?;
    sock::set_file_flags(fd, flags | libc::O_NONBLOCK).map_err(errno)?;
    let result = ask(fd, gateway, dest, family);
    sock::set_file_flags(fd, flags).map_err(errno)?;
    result?;
    match sock::local_addr(fd).map_err(errno)?.map(addr::unmap) {
        Some(SocketAddr::V4(local)) => Ok(local),
        _ => Err(libc::EPROTO),
    }
}

fn ask(fd: BorrowedFd<'_>, gateway: SocketAddrV4, dest: SocketAddr, family: Family) -> Result<(), Errno> {
    match sock::connect(fd, &addr::for_family(SocketAddr::V4(gateway), family)).map_err(errno) {
        Ok(()) => {}
        Err(libc::EINPROGRESS) => {
            if !sock::wait_writable(fd, STEP_MS).map_err(errno)? {
                return Err(libc::ETIMEDOUT);
            }
            match sock::get_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).map_err(errno)? {
                0 => {}
                e => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    let mut ask = format!("AXEG {dest}\n").into_bytes();
    while !ask.is_empty() {
        if !sock::wait_writable(fd, STEP_MS).map_err(errno)? {
            return Err(libc::ETIMEDOUT);
        }
        let sent = sock::send_msg(fd, &ask, &[], libc::MSG_NOSIGNAL, None).map_err(errno)?;
        ask.drain(..sent);
    }
    // Byte by byte: nothing past the answer's newline may be taken from the app.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 32 {
        if !sock::wait_readable(fd, STEP_MS).map_err(errno)? {
            return Err(libc::ETIMEDOUT);
        }
        match sock::recv_msg(fd, &mut b, &mut [], 0).map_err(errno)?.len {
            0 => return Err(libc::ECONNRESET),
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    match std::str::from_utf8(&line).unwrap_or("") {
        "OK" => Ok(()),
        other => Err(other.strip_prefix("ERR ").and_then(|e| e.parse().ok()).unwrap_or(libc::ECONNREFUSED)),
    }
}
