//! The run channel's framing: one JSON object per line on a Unix stream socket, with
//! at most one file descriptor riding along with a message.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// No message on the run channel comes near this.
const MAX_MESSAGE: usize = 64 * 1024;

/// Sends `msg` as one line, with `fd` attached if given.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut sent = ax_sys::scm::send(sock, &line, fd)?;
    while sent < line.len() {
        sent += ax_sys::scm::send(sock, &line[sent..], None)?;
    }
    Ok(())
}

/// Receives one line and the descriptor that came with it; None when the peer closed
/// the connection before a message began.
pub fn recv<T: DeserializeOwned>(sock: BorrowedFd<'_>) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut line = Vec::new();
    let mut fd = None;
    let mut buf = [0u8; 4096];
    loop {
        let (n, got) = ax_sys::scm::recv(sock, &mut buf)?;
        if got.is_some() {
            fd = got;
        }
        if n == 0 {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "run channel closed mid-message"));
        }
        line.extend_from_slice(&buf[..n]);
        if line.last() == Some(&b'\n') {
            break;
        }
        if line.len() > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "run channel message too long"));
        }
    }
    let msg = serde_json::from_slice(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad run channel message: {e}")))?;
    Ok(Some((msg, fd)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunRequest;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_message_and_its_fd_arrive_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        send(a.as_fd(), &RunRequest::Attach { pid: 42 }, Some(f.as_fd())).unwrap();
        let (msg, fd) = recv::<RunRequest>(b.as_fd()).unwrap().unwrap();
        assert_eq!(msg, RunRequest::Attach { pid: 42 });
        assert!(fd.is_some());
        drop(a);
        assert!(recv::<RunRequest>(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (a, b) = UnixStream::pair().unwrap();
        ax_sys::scm::send(a.as_fd(), b"{nope\n", None).unwrap();
        assert!(recv::<RunRequest>(b.as_fd()).is_err());
    }
}
