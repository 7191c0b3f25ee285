//! A small HTTP/1.1 client for the daemon: over its Unix socket (this host), or over
//! HTTPS to a daemon started with `--tls` (`--server`); one request per connection,
//! JSON bodies. (The CLI is single-threaded and makes one or two calls; a full HTTP
//! stack would cost more to build than it saves.)

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use ax_api::{ErrorBody, API_SOCKET};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::remote::{Remote, Server};

/// Why a call to the daemon failed. The causes are in the messages (the binary prints
/// the message alone).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}", ax_api::unreachable(API_SOCKET, .0))]
    Unreachable(io::Error),
    #[error("cannot reach the ax daemon at {server}: {err}")]
    RemoteUnreachable { server: Server, err: io::Error },
    /// The TLS files given to the CLI.
    #[error(transparent)]
    Files(#[from] ax_tls::TlsError),
    #[error("TLS with the ax daemon at {server} failed: {why}")]
    Tls { server: Server, why: String },
    #[error("cannot send the request to the ax daemon: {0}")]
    Send(io::Error),
    #[error("cannot read the ax daemon's answer: {0}")]
    Read(io::Error),
    #[error("{0}")]
    Malformed(&'static str),
    /// The daemon's own message for an answer other than 2xx.
    #[error("{0}")]
    Refused(String),
    #[error("the ax daemon's answer to {path} is not what this ax expects: {err}")]
    Unexpected { path: String, err: serde_json::Error },
    #[error("cannot encode JSON: {0}")]
    Encode(serde_json::Error),
}

type Result<T> = std::result::Result<T, ClientError>;

/// Where requests go.
pub enum Target {
    /// This host's daemon, over its Unix socket (root).
    Local,
    /// A daemon's HTTPS port, with a client certificate from its CA.
    Remote(Remote),
}

/// GETs `path` from the daemon and decodes the JSON answer.
pub fn get<T: DeserializeOwned>(target: &Target, path: &str) -> Result<T> {
    let body = request(target, "GET", path, None)?;
    serde_json::from_slice(&body).map_err(|err| ClientError::Unexpected { path: path.into(), err })
}

/// POSTs `body` as JSON to `path`.
pub fn post<B: Serialize>(target: &Target, path: &str, body: &B) -> Result<()> {
    request(target, "POST", path, Some(serde_json::to_vec(body).map_err(ClientError::Encode)?)).map(|_| ())
}

pub fn delete(target: &Target, path: &str) -> Result<()> {
    request(target, "DELETE", path, None).map(|_| ())
}

/// One request; an answer other than 2xx is an error carrying the daemon's message.
fn request(target: &Target, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Vec<u8>> {
    let body = body.unwrap_or_default();
    let host = match target {
        Target::Local => "ax".to_string(),
        Target::Remote(r) => r.authority(),
    };
    let mut message = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    message.extend_from_slice(&body);
    let raw = match target {
        Target::Local => {
            let mut s = UnixStream::connect(API_SOCKET).map_err(ClientError::Unreachable)?;
            s.write_all(&message).map_err(ClientError::Send)?;
            let mut raw = Vec::new();
            read_answer(&mut s, &mut raw).map_err(ClientError::Read)?;
            raw
        }
        Target::Remote(r) => r.exchange(&message)?,
    };
    let (status, body) = parse_response(&raw)?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(ClientError::Refused(msg));
    }
    Ok(body)
}

/// Splits a whole HTTP/1.1 response into its status and its (de-chunked) body.
/// The largest answer read (a listing of 10,000 sockets is a few MiB): a server that
/// sends more is not read on.
const MAX_ANSWER: usize = 64 << 20;

/// Reads `r` to its end into `raw`, refusing an answer past [`MAX_ANSWER`].
pub(crate) fn read_answer(r: impl Read, raw: &mut Vec<u8>) -> io::Result<()> {
    r.take(MAX_ANSWER as u64 + 1).read_to_end(raw)?;
    if raw.len() > MAX_ANSWER {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it is over {} MiB", MAX_ANSWER >> 20)));
    }
    Ok(())
}

pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let bad = ClientError::Malformed;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(bad("malformed HTTP answer: no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("malformed HTTP answer: headers are not text"))?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(bad("malformed HTTP answer: no status"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((status, if chunked { dechunk(body)? } else { body.to_vec() }))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let bad = ClientError::Malformed;
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or(bad("malformed chunked body"))?;
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| bad("malformed chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("malformed chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(bad("truncated chunked body"));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]").unwrap();
        assert_eq!((s, b.as_slice()), (200, b"[]".as_slice()));
        let (s, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (404, b"abcde".as_slice()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab").is_err());
    }

    #[test]
    fn an_endless_answer_is_cut_off_at_its_bound() {
        let mut raw = Vec::new();
        let e = read_answer(io::repeat(b'x'), &mut raw).unwrap_err();
        assert_eq!(e.to_string(), "it is over 64 MiB");
        assert_eq!(raw.len(), MAX_ANSWER + 1, "no more was read");
        let mut raw = Vec::new();
        read_answer(&b"HTTP/1.1 200 OK\r\n\r\n"[..], &mut raw).unwrap();
        assert_eq!(raw.len(), 19);
    }
}
