//! The tunnel's side of the egress port in-process, without root: a node at 127.0.0.2
//! whose one member, "n2", is at 127.0.0.1 (where these test clients connect from),
//! with real certificates from a test CA and from a foreign one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ax_core::table::{BoundSocket, NewApp};
use ax_core::{Family, Proto, Remote};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ax_trap::Node as _;
use rustls::pki_types::pem::PemObject;

use super::*;
use crate::State;

const NODE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const MEMBER: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A folder of test certificates, removed at the end.
struct Pki(PathBuf);

impl Pki {
    fn new(tag: &str, names: &[&str]) -> (Pki, ax_tls::TestPki) {
        let dir = std::env::temp_dir().join(format!("ax-tunnel-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let pki = ax_tls::write_test_pki(&dir, &names).unwrap();
        (Pki(dir), pki)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn reloadable(pki: &ax_tls::TestPki, name: &str) -> Arc<ax_tls::Reloadable> {
    ax_tls::Reloadable::new(ax_tls::Tls::load(&pki.files(name), Some(name)).unwrap(), Some(name.into()))
}

/// The node "a" serving its egress port under --tls; its address, and a row's host
/// address (a real listener, answering "row").
struct Node {
    daemon: Daemon,
    at: SocketAddr,
    row: SocketAddrV4,
}

async fn node(pki: &ax_tls::TestPki) -> Node {
    let daemon = Daemon::new(State::for_test(NODE), &std::env::temp_dir(), None);
    let row = std::net::TcpListener::bind((NODE, 0)).unwrap();
    let row_port = row.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in row.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut c, b"row");
        }
    });
    daemon.with_table(|t| {
        t.set_remote(Remote { nodes: vec![("n2".into(), MEMBER)], ..Remote::default() });
        let app = t.add_app(NewApp { ip: Some("198.18.0.1".parse().unwrap()), ..NewApp::default() }).unwrap().id;
        let requested = "0.0.0.0:80".parse().unwrap();
        let socket = BoundSocket { inode: 1, proto: Proto::Tcp, family: Family::V4, requested, flags: 0 };
        t.add_binding(app, socket, "198.18.0.1:80".parse().unwrap(), row_port);
        t.set_listening(Proto::Tcp, row_port, 1, 128).unwrap();
    });
    let listener = std::net::TcpListener::bind((NODE, 0)).unwrap();
    let at = listener.local_addr().unwrap();
    let tls = reloadable(pki, "a");
    spawn(listener, daemon.clone(), Some((&tls, Arc::new(Client::new(&tls))))).unwrap();
    Node { daemon, at, row: SocketAddrV4::new(NODE, row_port) }
}

/// A connection from the member's address.
async fn dial(at: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind((MEMBER, 0).into()).unwrap();
    s.connect(at).await.unwrap()
}

/// Connects with `who`'s certificate, asks `request`, and returns everything the node
/// says until it closes (a refused handshake or peer: nothing).
async fn ask(at: SocketAddr, who: &Arc<ax_tls::Reloadable>, request: &str) -> String {
    let connector = TlsConnector::from(Arc::new(who.client_config(&[ALPN])));
    let mut heard = Vec::new();
    if let Ok(mut tls) = connector.connect(ServerName::IpAddress(NODE.into()), dial(at).await).await {
        // Under TLS 1.3 a refused client certificate shows on the first read.
        let _ = tls.write_all(format!("{request}\n").as_bytes()).await;
        // A node that held the connection open would fail the test, not hang it.
        if tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut heard)).await.is_err() {
            heard.extend(b" (still open)");
        }
    }
    String::from_utf8_lossy(&heard).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_gets_a_hop_to_this_nodes_rows_and_nothing_else() {
    let (_d, pki) = Pki::new("member", &["a", "n2"]);
    let node = node(&pki).await;
    let n2 = reloadable(&pki, "n2");
    assert_eq!(ask(node.at, &n2, &format!("AXRL {}", node.row)).await, "OK\nrow");
    let not_a_row = SocketAddrV4::new(NODE, node.at.port());
    for refused in [
        format!("AXRL {not_a_row}"),
        format!("AXRL 127.0.0.1:{}", node.row.port()),
        // No gateway: no egress, whatever the destination.
        "AXEG 192.0.2.1:80".to_string(),
    ] {
        assert_eq!(ask(node.at, &n2, &refused).await, "ERR 111\n", "{refused}");
    }
    assert_eq!(ask(node.at, &n2, "GET / HTTP/1.1").await, "", "a bad request gets no answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_the_clusters_own_destinations() {
    let (_d, pki) = Pki::new("gateway", &["a", "n2"]);
    let node = node(&pki).await;
    node.daemon.with_table(|t| t.set_egress_gateway(true));
    let n2 = reloadable(&pki, "n2");
    // Something listens there: a refusal is the gateway's, not the kernel's.
    let private = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = private.local_addr().unwrap().port();
    for dest in ["127.0.0.1", "[::ffff:127.0.0.1]", "0.0.0.0", "127.0.0.2"] {
        assert_eq!(ask(node.at, &n2, &format!("AXEG {dest}:{port}")).await, "ERR 111\n", "{dest}");
    }
    assert_eq!(ask(node.at, &n2, &format!("AXEG {}", node.row)).await, "ERR 111\n", "a row's host address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_not_heard() {
    let (_d, pki) = Pki::new("strangers", &["a", "n2", "n3"]);
    let (_f, foreign) = Pki::new("foreign", &["n2"]);
    let node = node(&pki).await;
    let hop = format!("AXRL {}", node.row);
    // A certificate from another CA, even naming the member.
    assert_eq!(ask(node.at, &reloadable(&foreign, "n2"), &hop).await, "");
    // A certificate from the CA naming a node that is not the member at that address.
    assert_eq!(ask(node.at, &reloadable(&pki, "n3"), &hop).await, "");
    // No TLS at all.
    let mut plain = dial(node.at).await;
    plain.write_all(format!("{hop}\n").as_bytes()).await.unwrap();
    let mut heard = Vec::new();
    let _ = plain.read_to_end(&mut heard).await;
    assert!(!heard.starts_with(b"OK"), "{heard:?}");
    // The member itself, once it has left, is a stranger too.
    let n2 = reloadable(&pki, "n2");
    assert_eq!(ask(node.at, &n2, &hop).await, "OK\nrow");
    node.daemon.with_table(|t| t.set_remote(Remote::default()));
    assert_eq!(ask(node.at, &n2, &hop).await, "");
}

#[test]
fn a_member_is_named_by_its_certificate_at_its_address() {
    let (_d, pki) = Pki::new("named", &["a", "n2", "n3"]);
    let cert = |name: &str| {
        let pem = std::fs::read(pki.files(name).cert).unwrap();
        rustls::pki_types::CertificateDer::pem_slice_iter(&pem).next().unwrap().unwrap()
    };
    let mut table = State::for_test(NODE).table;
    table.set_remote(Remote {
        nodes: vec![("n2".into(), MEMBER), ("n3".into(), "10.0.0.3".parse().unwrap())],
        ..Remote::default()
    });
    let (n2, n3) = (cert("n2"), cert("n3"));
    assert_eq!(member_named(&table, MEMBER.into(), Some(&n2)), Some("n2".into()));
    assert_eq!(member_named(&table, "::ffff:127.0.0.1".parse().unwrap(), Some(&n2)), Some("n2".into()));
    assert_eq!(member_named(&table, MEMBER.into(), Some(&n3)), None, "n3's certificate at n2's address");
    assert_eq!(member_named(&table, MEMBER.into(), None), None);
    assert_eq!(member_named(&table, NODE.into(), Some(&cert("a"))), None, "this node is no member");
    assert_eq!(member_named(&table, "10.0.0.9".parse().unwrap(), Some(&n2)), None);
}

#[tokio::test]
async fn a_line_is_read_up_to_its_newline_and_no_further() {
    let (mut a, mut b) = tokio::io::duplex(256);
    b.write_all(b"AXEG 192.0.2.1:80\nrest").await.unwrap();
    assert_eq!(read_line(&mut a, MAX_REQUEST).await.unwrap(), b"AXEG 192.0.2.1:80");
    let mut rest = [0u8; 4];
    a.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"rest");
    b.write_all(&[b'x'; 200]).await.unwrap();
    assert_eq!(read_line(&mut a, 128).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
    drop(b);
    let (mut a, b) = tokio::io::duplex(8);
    drop(b);
    assert_eq!(read_line(&mut a, 8).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

/// The same on plain TCP by peeking: the line, in pieces too, and nothing past it; too
/// long; an end before the newline.
#[tokio::test]
async fn a_line_peeked_is_read_up_to_its_newline_and_no_further() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut b = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (mut a, _) = listener.accept().await.unwrap();
    b.write_all(b"AXEG 192.0.2.1:80\nrest").await.unwrap();
    assert_eq!(peek_line(&mut a, MAX_REQUEST).await.unwrap(), b"AXEG 192.0.2.1:80");
    let mut rest = [0u8; 4];
    a.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"rest");
    let writer = tokio::spawn(async move {
        b.write_all(b"AXEG 192.0").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        b.write_all(b".2.1:80\nmore").await.unwrap();
        b
    });
    assert_eq!(peek_line(&mut a, MAX_REQUEST).await.unwrap(), b"AXEG 192.0.2.1:80");
    let mut b = writer.await.unwrap();
    a.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"more");
    b.write_all(&[b'x'; 200]).await.unwrap();
    assert_eq!(peek_line(&mut a, 128).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
    b.write_all(b"\nAXEG").await.unwrap();
    drop(b);
    let _ = peek_line(&mut a, 4096).await;
    assert_eq!(peek_line(&mut a, 4096).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

/// A node's tunnel as a client meets it: at 127.0.0.3:6661 with `name`'s certificate,
/// answering OK to one request; what it was asked, if anything.
async fn far_end(pki: &ax_tls::TestPki, name: &str) -> tokio::task::JoinHandle<Option<Vec<u8>>> {
    let acceptor = TlsAcceptor::from(Arc::new(reloadable(pki, name).node_server_config(&[ALPN])));
    let listener = tokio::net::TcpListener::bind((FAR, EGRESS_PORT)).await.unwrap();
    tokio::spawn(async move {
        let (conn, _) = listener.accept().await.ok()?;
        let mut tls = acceptor.accept(conn).await.ok()?;
        let asked = read_line(&mut tls, MAX_REQUEST).await.ok()?;
        tls.write_all(b"OK\n").await.ok()?;
        Some(asked)
    })
}

const FAR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_opened_only_to_the_member_its_certificate_names() {
    let (_d, pki) = Pki::new("client", &["a", "n3", "rogue"]);
    let daemon = Daemon::new(State::for_test(NODE), &std::env::temp_dir(), None);
    daemon.with_table(|t| t.set_remote(Remote { nodes: vec![("n3".into(), FAR)], ..Remote::default() }));
    let client = Client::new(&reloadable(&pki, "a"));
    let hop = Request::Relay { to: SocketAddrV4::new(FAR, 40000), client: None };
    // One at a time: both far ends take 127.0.0.3:6661.
    let rogue = far_end(&pki, "rogue").await;
    assert_eq!(client.open(&daemon, FAR, hop.clone()).await.err(), Some(libc::ECONNREFUSED));
    assert_eq!(rogue.await.unwrap(), None, "the request went to a server that is not n3");
    let n3 = far_end(&pki, "n3").await;
    assert!(client.open(&daemon, FAR, hop.clone()).await.is_ok());
    assert_eq!(n3.await.unwrap(), Some(hop.to_string().into_bytes()));
}
