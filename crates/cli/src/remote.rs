//! A daemon reached over HTTPS (`--server https://HOST[:PORT]`): the address, the TLS
//! client (a certificate from the daemon's CA; the server's checked against that CA, and
//! its name when dialled by name) and what a failed handshake means, told with the file
//! to look at.

use std::fmt;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConnection};

use crate::client::ClientError;

/// How long a connection to a remote daemon may take to open, and then each read or
/// write of the exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A remote daemon's REST API, as `--server` gives it: `https://HOST[:PORT]` (port
/// [`ax_api::REST_PORT`] when left out). HOST is an address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    host: String,
    port: u16,
}

/// A `--server` value that is not `https://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("--server {0}: ax talks to a remote daemon over HTTPS only (a daemon started with --tls serves it on its REST port): use https://HOST[:PORT]")]
    Plain(String),
    #[error("--server {0}: '{1}' is not a scheme ax speaks: use https://HOST[:PORT]")]
    Scheme(String, String),
    #[error("--server '{0}' is not https://HOST[:PORT] (HOST an address or a DNS name; no path, user or query)")]
    Form(String),
}

impl FromStr for Server {
    type Err = ServerError;

    fn from_str(s: &str) -> std::result::Result<Server, ServerError> {
        let form = || ServerError::Form(s.to_string());
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => return Err(ServerError::Plain(s.into())),
            Some((scheme, _)) => return Err(ServerError::Scheme(s.into(), scheme.into())),
            None => return Err(form()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(form());
        }
        let (host, port) = match rest.strip_prefix('[') {
            // [IPv6]:PORT
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(form)?;
                (host, if after.is_empty() { None } else { Some(after.strip_prefix(':').ok_or_else(form)?) })
            }
            None => match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let port = match port {
            None => ax_api::REST_PORT,
            Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(form)?,
        };
        // The name the TLS client is given: an address, or a DNS name.
        ServerName::try_from(host).map_err(|_| form())?;
        // DNS names are the same in any case; certificates name nodes in lower case.
        Ok(Server { host: host.to_ascii_lowercase(), port })
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

impl Server {
    /// HOST:PORT, as the Host header says it.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn name(&self) -> ServerName<'static> {
        ServerName::try_from(self.host.clone()).expect("checked when parsed")
    }
}

/// A daemon's HTTPS port and the TLS client for it.
pub struct Remote {
    server: Server,
    config: Arc<rustls::ClientConfig>,
    files: ax_tls::Files,
}

impl Remote {
    /// `server` reached with `files`: they are read and checked here (the key matches
    /// the certificate, which is from the CA and valid now), so a bad file is named
    /// before anything is sent.
    pub fn new(server: Server, files: ax_tls::Files) -> Result<Remote, ClientError> {
        let tls = ax_tls::Tls::load(&files, None)?;
        let config = Arc::new(ax_tls::Reloadable::new(tls, None).client_config(&[b"http/1.1"]));
        Ok(Remote { server, config, files })
    }

    /// HOST:PORT, as the Host header says it.
    pub fn authority(&self) -> String {
        self.server.authority()
    }

    /// Connects, shakes hands, sends `message` and reads the whole answer.
    pub fn exchange(&self, message: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut sock = self.connect()?;
        let mut conn =
            ClientConnection::new(self.config.clone(), self.server.name()).map_err(|e| self.tls(e.to_string()))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| self.failed(e, ClientError::Send))?;
        }
        self.check_name(&conn)?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        s.write_all(message).map_err(|e| self.failed(e, ClientError::Send))?;
        let mut raw = Vec::new();
        match crate::client::read_answer(&mut s, &mut raw) {
            Ok(()) => Ok(raw),
            // An answer ended without TLS's close_notify: whole if it parses.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
            Err(e) => Err(self.failed(e, ClientError::Read)),
        }
    }

    fn connect(&self) -> Result<TcpStream, ClientError> {
        let unreachable = |err| ClientError::RemoteUnreachable { server: self.server.clone(), err };
        let addrs = (self.server.host.as_str(), self.server.port).to_socket_addrs().map_err(unreachable)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    s.set_read_timeout(Some(IO_TIMEOUT))
                        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
                        .map_err(unreachable)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }

    /// A server dialled by DNS name must hold a certificate naming it (as any HTTPS
    /// client checks); one dialled by address is checked against the CA only, since
    /// node certificates name nodes, not addresses.
    fn check_name(&self, conn: &ClientConnection) -> Result<(), ClientError> {
        let ServerName::DnsName(_) = self.server.name() else { return Ok(()) };
        let names_it =
            conn.peer_certificates().and_then(|c| c.first()).is_some_and(|c| ax_tls::names(c, &self.server.host));
        if names_it {
            return Ok(());
        }
        Err(self.tls(format!(
            "its certificate does not name '{}' (a node's certificate names its node: dial it by its node name, or by address)",
            self.server.host
        )))
    }

    fn tls(&self, why: String) -> ClientError {
        ClientError::Tls { server: self.server.clone(), why }
    }

    /// An I/O error of the exchange: a TLS failure told as a person reads it, or else
    /// `plain`'s.
    fn failed(&self, e: io::Error, plain: fn(io::Error) -> ClientError) -> ClientError {
        match tls_reason(&e, &self.files) {
            Some(why) => self.tls(why),
            None => plain(e),
        }
    }
}

/// What a TLS error in `e` means for the person at the CLI, with the file to look at.
fn tls_reason(e: &io::Error, files: &ax_tls::Files) -> Option<String> {
    use rustls::Error as E;
    let err = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(err) = err else {
        return (e.kind() == io::ErrorKind::UnexpectedEof).then(|| {
            "the server closed the connection during the handshake: is its daemon started with --tls?".into()
        });
    };
    Some(match err {
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!("the server's certificate is not from the CA in {}", files.ca.display())
        }
        E::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired".into()
        }
        E::InvalidCertificate(other) => format!("the server's certificate is refused ({other:?})"),
        E::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied),
        ) => format!(
            "the server refused our certificate {} ({alert:?}): it takes certificates from its own CA, valid now",
            files.cert.display()
        ),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "the server does not speak TLS here: is its daemon started with --tls?".into()
        }
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};
    use std::path::{Path, PathBuf};
    use std::thread::JoinHandle;

    use rustls::{ServerConnection, StreamOwned};

    use super::*;
    use crate::client::{self, Target};

    #[test]
    fn server_urls_are_https_host_and_port_only() {
        for (given, shown) in [
            ("https://n1", "https://n1:6664"),
            ("https://n1:7000/", "https://n1:7000"),
            ("HTTPS://10.0.0.1:443", "https://10.0.0.1:443"),
            ("https://[fd00::1]:7000", "https://[fd00::1]:7000"),
            ("https://[fd00::1]", "https://[fd00::1]:6664"),
            ("https://node-1.example.com:6664", "https://node-1.example.com:6664"),
            ("https://N1.Example.com", "https://n1.example.com:6664"),
        ] {
            assert_eq!(given.parse::<Server>().map(|s| s.to_string()).as_deref(), Ok(shown), "{given}");
        }
        let plain = "http://n1:6664".parse::<Server>().unwrap_err();
        assert!(matches!(plain, ServerError::Plain(_)));
        assert!(plain.to_string().contains("over HTTPS only"), "{plain}");
        assert_eq!("tcp://n1:6664".parse::<Server>(), Err(ServerError::Scheme("tcp://n1:6664".into(), "tcp".into())));
        for bad in [
            "n1:6664",
            "https://",
            "https://:6664",
            "https://n1:0",
            "https://n1:65536",
            "https://n1:x",
            "https://n1/v1/apps",
            "https://admin@n1",
            "https://n1?x=1",
            "https://::1",
            "https://[::1",
            "https://[::1]x",
            "https://bad_name!",
        ] {
            assert_eq!(bad.parse::<Server>(), Err(ServerError::Form(bad.into())), "{bad}");
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ax-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A daemon's HTTPS port on 127.0.0.1 for one connection, with the daemon's TLS for
    /// node `node` of the CA in `pki`: answers `[]` to a request, or gives the error it
    /// met.
    fn https_once(pki: &ax_tls::TestPki, node: &str) -> (SocketAddr, JoinHandle<Result<(), String>>) {
        let tls = ax_tls::Tls::load(&pki.files(node), Some(node)).unwrap();
        let config = ax_tls::Reloadable::new(tls, Some(node.into())).server_config(&[b"http/1.1"]);
        serve_once(move |sock| {
            let conn = ServerConnection::new(Arc::new(config)).map_err(|e| e.to_string())?;
            let mut s = StreamOwned::new(conn, sock);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).map_err(|e| e.to_string())?;
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]")
                .map_err(|e| e.to_string())?;
            s.conn.send_close_notify();
            s.flush().map_err(|e| e.to_string())
        })
    }

    fn serve_once(
        serve: impl FnOnce(TcpStream) -> Result<(), String> + Send + 'static,
    ) -> (SocketAddr, JoinHandle<Result<(), String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let served = std::thread::spawn(move || {
            let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            serve(sock)
        });
        (at, served)
    }

    /// `ax get apps` against `https://HOST:PORT` with `files`.
    fn get(host: &str, at: SocketAddr, files: &ax_tls::Files) -> Result<Vec<serde_json::Value>, String> {
        let server: Server = format!("https://{host}:{}", at.port()).parse().unwrap();
        let target = Target::Remote(Remote::new(server, files.clone()).map_err(|e| e.to_string())?);
        client::get(&target, ax_api::path::APPS).map_err(|e| e.to_string())
    }

    fn pkis(d: &Path) -> (ax_tls::TestPki, ax_tls::TestPki) {
        let ours = ax_tls::write_test_pki(d, &["n1".into(), "localhost".into(), "admin".into()]).unwrap();
        let other = ax_tls::write_test_pki(&d.join("other"), &["admin".into()]).unwrap();
        (ours, other)
    }

    #[test]
    fn a_certificate_from_the_ca_gets_an_answer_by_address_or_by_the_name_on_the_servers_certificate() {
        let d = dir("ok");
        let (pki, _) = pkis(&d);
        let (at, served) = https_once(&pki, "n1");
        assert_eq!(get("127.0.0.1", at, &pki.files("admin")), Ok(vec![]));
        served.join().unwrap().unwrap();
        let (at, served) = https_once(&pki, "localhost");
        assert_eq!(get("localhost", at, &pki.files("admin")), Ok(vec![]));
        served.join().unwrap().unwrap();
        // Dialled by a name its certificate does not carry: refused, nothing sent.
        let (at, served) = https_once(&pki, "n1");
        let e = get("localhost", at, &pki.files("admin")).unwrap_err();
        assert!(e.contains("its certificate does not name 'localhost'"), "{e}");
        assert!(served.join().unwrap().is_err(), "the server got no request");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn every_failure_says_what_failed_and_names_the_file_or_the_server() {
        let d = dir("fail");
        let (pki, other) = pkis(&d);
        // Our certificate is from another CA than the server's (and we trust its CA).
        let (at, served) = https_once(&pki, "n1");
        let e = get("127.0.0.1", at, &other.files("admin")).unwrap_err();
        let ca = other.ca_file().display().to_string();
        assert!(e.contains("the server's certificate is not from the CA in") && e.contains(&ca), "{e}");
        assert!(served.join().unwrap().is_err());
        // Trusting the server's CA but holding another's certificate: refused before
        // anything is sent, naming the file.
        let mixed = ax_tls::Files { ca: pki.ca_file(), ..other.files("admin") };
        let (at, served) = https_once(&pki, "n1");
        let e = get("127.0.0.1", at, &mixed).unwrap_err();
        let cert = mixed.cert.display().to_string();
        assert!(e.contains("is not signed by the CA") && e.contains(&cert), "{e}");
        drop(served);
        // Shown anyway (by a client that does not check it): the server refuses it.
        let (at, served) = https_once(&pki, "localhost");
        let remote = Remote {
            server: format!("https://localhost:{}", at.port()).parse().unwrap(),
            config: Arc::new(ax_tls::test_client(&pki.ca_file(), Some(&mixed)).unwrap()),
            files: mixed,
        };
        let e = client::get::<Vec<serde_json::Value>>(&Target::Remote(remote), ax_api::path::APPS).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("the server refused our certificate") && e.contains(&cert), "{e}");
        assert!(served.join().unwrap().is_err());
        // A server that does not speak TLS (a daemon without --tls answers 400).
        let (at, served) = serve_once(|mut sock| {
            let mut hello = [0u8; 16];
            sock.read(&mut hello).map_err(|e| e.to_string())?;
            sock.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").map_err(|e| e.to_string())
        });
        let e = get("127.0.0.1", at, &pki.files("admin")).unwrap_err();
        assert!(e.contains("does not speak TLS here: is its daemon started with --tls?"), "{e}");
        served.join().unwrap().unwrap();
        // Nobody there.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = get("127.0.0.1", closed, &pki.files("admin")).unwrap_err();
        assert!(e.starts_with(&format!("cannot reach the ax daemon at https://127.0.0.1:{}: ", closed.port())), "{e}");
        // A file that is not there, named.
        let missing = ax_tls::Files { key: d.join("nope.key"), ..pki.files("admin") };
        let e = get("127.0.0.1", closed, &missing).unwrap_err();
        assert!(e.contains("nope.key") && e.contains("No such file"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
