//! Connects through an egress gateway: the app's socket is connected to the gateway's
//! egress port (or, under `--tls`, to this node's forwarder, which carries it to a
//! gateway over TLS), the daemon asks for the real destination (one line each way, see
//! [`ax_core::tunnel`]), and only then does the app's connect return, with the gateway's
//! answer. The app never sees the gateway: getpeername shows the destination it asked
//! for.
//!
//! A connect to a remote cluster's service goes the same way to a federation gateway,
//! with one difference: the request carries the client's labels, which the gateways
//! believe, so the app must not write it. The handshake is made on a fresh socket the
//! app does not hold, which then takes the place of the app's ([`Engine::federate`]).

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::Arc;

use ax_core::addr::{self, Family};
use ax_core::tunnel::{parse_answer, Request, MAX_ANSWER};
use ax_core::Errno;
use ax_sys::kernel::{Kernel, Netns, Readiness, Reply};
use ax_sys::seccomp::Notification;

use crate::engine::{install, replacement, so_error, Answer, Engine};
use crate::helper::{wait_for_call, Waited};
use crate::Node;

/// How long the gateway has for each step of the handshake.
const STEP_MS: i32 = 10_000;

impl<K: Kernel, N: Node> Engine<K, N> {
    pub(crate) fn egress(
        &self,
        n: &Notification,
        note: u64,
        s: K::Fd,
        gateway: SocketAddrV4,
        dest: SocketAddr,
        family: Family,
    ) -> Result<Answer, Errno> {
        let (k, node, id) = (Arc::clone(&self.k), Arc::clone(&self.node), n.id);
        self.later(n, note, move || {
            let reply = match handshake(&*k, &s, id, gateway, &Request::Egress(dest), family) {
                Ok(local) => {
                    node.with_table(|t| t.record_peer(local, dest));
                    Reply::Value(0)
                }
                Err(e) => Reply::Fail(e),
            };
            let _ = k.answer(id, reply);
        })
    }

    /// Connects the app's socket `s` (its descriptor `fd`) to a remote cluster's
    /// `service` through the first of `via` that answers (federation gateways' egress
    /// ports, or this node's forwarder): a socket of the daemon's own makes the
    /// handshake, the request naming the app's address and labels, and only then takes
    /// the place of the app's socket, so no thread of the app can write a request of
    /// its own first. Options the app set are carried over (as for a socket made
    /// private).
    pub(crate) fn federate(
        &self,
        n: &Notification,
        fd: RawFd,
        s: K::Fd,
        via: Vec<SocketAddrV4>,
        service: SocketAddrV4,
        family: Family,
    ) -> Result<Answer, Errno> {
        let me = self.node.with_table(|t| t.app(self.app).map(|a| (a.ip, a.labels.clone())));
        let (client, labels) = me.ok_or(libc::EPERM)?;
        let request = Request::Federate { service, client, labels };
        if request.line().len() > ax_core::tunnel::MAX_REQUEST {
            // Labels past what a gateway reads: it would refuse the request anyway.
            return Err(libc::ECONNREFUSED);
        }
        let flags = self.k.file_flags(&s)?;
        let (k, node, n2) = (Arc::clone(&self.k), Arc::clone(&self.node), *n);
        self.later(n, 0, move || {
            let id = n2.id;
            let mut done = Err(libc::ECONNREFUSED);
            for gateway in via {
                // A gateway that is down is passed over (gossip has not said so yet).
                done = replacement(&*k, &s, Netns::Host).and_then(|fresh| {
                    let local = handshake(&*k, &fresh, id, gateway, &request, family)?;
                    k.set_file_flags(&fresh, flags)?;
                    install(&*k, &n2, fd, &fresh)?;
                    node.with_table(|t| t.record_peer(local, SocketAddr::V4(service)));
                    Ok(())
                });
                if matches!(done, Ok(()) | Err(libc::EINTR)) {
                    break;
                }
            }
            let _ = k.answer(id, done.map_or_else(Reply::Fail, |()| Reply::Value(0)));
        })
    }
}

/// Connects `s` through the gateway for call `id`; stops (EINTR) as soon as the call is
/// abandoned, its answer then going nowhere.
fn handshake<K: Kernel>(
    k: &K,
    s: &K::Fd,
    id: u64,
    gateway: SocketAddrV4,
    request: &Request,
    family: Family,
) -> Result<SocketAddrV4, Errno> {
    let flags = k.file_flags(s)?;
    k.set_file_flags(s, flags | libc::O_NONBLOCK)?;
    let result = ask(&Step { k, s, id }, gateway, request, family);
    k.set_file_flags(s, flags)?;
    result?;
    match k.local_addr(s)?.map(addr::unmap) {
        Some(SocketAddr::V4(local)) => Ok(local),
        _ => Err(libc::EPROTO),
    }
}

/// The socket being handed to the gateway, for the call it answers.
struct Step<'a, K: Kernel> {
    k: &'a K,
    s: &'a K::Fd,
    id: u64,
}

impl<K: Kernel> Step<'_, K> {
    fn ready(&self, what: Readiness) -> Result<(), Errno> {
        match wait_for_call(self.k, self.s, what, STEP_MS, self.id)? {
            Waited::Ready => Ok(()),
            Waited::TimedOut => Err(libc::ETIMEDOUT),
            Waited::Abandoned => Err(libc::EINTR),
        }
    }
}

fn ask<K: Kernel>(step: &Step<'_, K>, gateway: SocketAddrV4, request: &Request, family: Family) -> Result<(), Errno> {
    let (k, s) = (step.k, step.s);
    match k.connect(s, &addr::for_family(SocketAddr::V4(gateway), family)) {
        Ok(()) => {}
        Err(libc::EINPROGRESS) => {
            step.ready(Readiness::Writable)?;
            so_error(k, s)?;
        }
        Err(e) => return Err(e),
    }
    let mut ask = request.line();
    while !ask.is_empty() {
        step.ready(Readiness::Writable)?;
        let sent = k.send_msg(s, &ask, &[], libc::MSG_NOSIGNAL, None)?;
        ask.drain(..sent);
    }
    // Byte by byte: nothing past the answer's newline may be taken from the app.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < MAX_ANSWER {
        step.ready(Readiness::Readable)?;
        match k.recv_msg(s, &mut b, &mut [], 0)?.len {
            0 => return Err(libc::ECONNRESET),
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    parse_answer(&line)
}
