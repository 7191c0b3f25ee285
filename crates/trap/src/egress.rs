//! Connects through a gateway: an egress gateway (`AXEG`: the real destination) or a
//! federation gateway (`AXFD`: a remote cluster's service, with the client app's
//! address and labels, which the gateways believe). The daemon makes the handshake (one
//! line each way, see [`ax_core::tunnel`]) on a fresh socket of its own, connected to
//! the gateway's egress port (or, under `--tls`, to this node's forwarder, which carries
//! it on over TLS), and only once the gateway said yes does that socket take the place
//! of the app's, with the options the app had set: no thread of the app can write a
//! request of its own first, racing the daemon on its descriptor. Only then does the
//! app's connect return, with the gateway's answer. The app never sees the gateway:
//! getpeername shows the destination it asked for.

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::Arc;

use ax_core::addr::{self, Family};
use ax_core::tunnel::{parse_answer, Request, MAX_ANSWER, MAX_REQUEST};
use ax_core::Errno;
use ax_sys::kernel::{Kernel, Netns, Readiness, Reply};
use ax_sys::seccomp::Notification;

use crate::engine::{install, replacement, so_error, Answer, Engine};
use crate::helper::{wait_for_call, Waited};
use crate::Node;

/// How long the gateway has for each step of the handshake.
const STEP_MS: i32 = 10_000;

impl<K: Kernel, N: Node> Engine<K, N> {
    /// Connects the app's socket (`s`, its descriptor `fd`) to a remote cluster's
    /// `service` through the first of `via` that answers, the request naming the app's
    /// address and labels.
    pub(crate) fn federate(
        &self,
        n: &Notification,
        (fd, s): (RawFd, K::Fd),
        via: Vec<SocketAddrV4>,
        service: SocketAddrV4,
        family: Family,
    ) -> Result<Answer, Errno> {
        let me = self.node.with_table(|t| t.app(self.app).map(|a| (a.ip, a.labels.clone())));
        let (client, labels) = me.ok_or(libc::EPERM)?;
        let request = Request::Federate { service, client, labels };
        if request.line().len() > MAX_REQUEST {
            // Labels past what a gateway reads: it would refuse the request anyway.
            return Err(libc::ECONNREFUSED);
        }
        self.through_gateway(n, (fd, s), via, request, SocketAddr::V4(service), family)
    }

    /// Connects the app's socket through the first of `via` that answers `request`
    /// (one that is down is passed over: gossip may not have said so yet), on a fresh
    /// socket that then takes the app's socket's place; `shown` is what getpeername
    /// shows. A daemon that dies meanwhile leaves the app's socket untouched (the next
    /// one makes the call again) or replaced and connected (it answers 0).
    pub(crate) fn through_gateway(
        &self,
        n: &Notification,
        (fd, s): (RawFd, K::Fd),
        via: Vec<SocketAddrV4>,
        request: Request,
        shown: SocketAddr,
        family: Family,
    ) -> Result<Answer, Errno> {
        let flags = self.k.file_flags(&s)?;
        let (k, node, n2) = (Arc::clone(&self.k), Arc::clone(&self.node), *n);
        self.later(n, 0, move || {
            let id = n2.id;
            let mut done = Err(libc::ECONNREFUSED);
            for gateway in via {
                done = replacement(&*k, &s, Netns::Host).and_then(|fresh| {
                    let local = handshake(&*k, &fresh, id, gateway, &request, family)?;
                    k.set_file_flags(&fresh, flags)?;
                    install(&*k, &n2, fd, &fresh)?;
                    node.with_table(|t| t.record_peer(local, shown));
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
