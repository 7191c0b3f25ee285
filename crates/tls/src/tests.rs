//! Handshakes in memory (a client and a server connection exchanging bytes, no
//! network) with certificates from test CAs: who is heard, and what a reload changes.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, Error, ServerConfig, ServerConnection};

use crate::{names, test_client, write_test_pki, Files, Reloadable, Signature, SignatureError, TestPki, Tls};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ax-tls-hs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A CA with node `n1` and client `admin`, and another CA with its own `admin`.
fn pkis(d: &std::path::Path) -> (TestPki, TestPki) {
    let ours = write_test_pki(d, &["n1".into(), "admin".into()]).unwrap();
    let other = write_test_pki(&d.join("other"), &["admin".into()]).unwrap();
    (ours, other)
}

fn reloadable(files: &Files, node: Option<&str>) -> Arc<Reloadable> {
    Reloadable::new(Tls::load(files, node).unwrap(), node.map(str::to_string))
}

/// How a handshake ended on each side, and the certificate each saw of the other.
struct Outcome {
    client: Result<(), Error>,
    server: Result<(), Error>,
    server_cert: Option<CertificateDer<'static>>,
    client_cert: Option<CertificateDer<'static>>,
}

impl Outcome {
    fn done(&self) -> bool {
        self.client.is_ok() && self.server.is_ok()
    }
}

/// Runs the handshake of `client` (dialing `name`) with `server`, passing bytes until
/// neither side has more to say.
fn handshake(client: ClientConfig, server: ServerConfig, name: &str) -> Outcome {
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    let (mut client_err, mut server_err) = (None, None);
    loop {
        let mut moved = false;
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        if !buf.is_empty() && server_err.is_none() {
            moved = true;
            s.read_tls(&mut buf.as_slice()).unwrap();
            server_err = s.process_new_packets().err();
        }
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        if !buf.is_empty() && client_err.is_none() {
            moved = true;
            c.read_tls(&mut buf.as_slice()).unwrap();
            client_err = c.process_new_packets().err();
        }
        if !moved {
            break;
        }
    }
    let handshaking = |busy: bool, err: Option<Error>| match err {
        Some(e) => Err(e),
        None if busy => Err(Error::General("the handshake did not finish".into())),
        None => Ok(()),
    };
    Outcome {
        client: handshaking(c.is_handshaking(), client_err),
        server: handshaking(s.is_handshaking(), server_err),
        server_cert: c.peer_certificates().map(|p| p[0].clone().into_owned()),
        client_cert: s.peer_certificates().map(|p| p[0].clone().into_owned()),
    }
}

fn cert_in(files: &Files) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(&files.cert).unwrap()
}

#[test]
fn certificates_from_the_ca_are_accepted_both_ways_whatever_name_is_dialled() {
    let d = dir("ok");
    let (pki, _) = pkis(&d);
    let server = reloadable(&pki.files("n1"), Some("n1")).server_config(&[b"http/1.1"]);
    let client = reloadable(&pki.files("admin"), None).client_config(&[b"http/1.1"]);
    let o = handshake(client.clone(), server.clone(), "n1");
    assert!(o.done(), "{:?} {:?}", o.client, o.server);
    let (seen_server, seen_client) = (o.server_cert.unwrap(), o.client_cert.unwrap());
    assert_eq!(seen_server, cert_in(&pki.files("n1")));
    assert!(names(&seen_server, "n1") && names(&seen_client, "admin"));
    // The client accepts any certificate from the CA: the name it expects is the
    // caller's to check.
    let o = handshake(client, server, "n2");
    assert!(o.done(), "{:?} {:?}", o.client, o.server);
    assert!(!names(&o.server_cert.unwrap(), "n2"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_certificate_from_another_ca_is_refused_by_either_side() {
    let d = dir("foreign");
    let (pki, other) = pkis(&d);
    let server = reloadable(&pki.files("n1"), Some("n1")).server_config(&[b"http/1.1"]);
    // Test CAs share their subject: another CA's certificate names ours as its issuer,
    // and its signature is what fails.
    let foreign = |e: &Result<(), Error>| {
        matches!(e, Err(Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)))
    };
    // A client trusting our CA but showing another CA's certificate: the server says no.
    let o = handshake(test_client(&pki.ca_file(), Some(&other.files("admin"))).unwrap(), server.clone(), "n1");
    assert!(foreign(&o.server), "{:?}", o.server);
    assert!(matches!(o.client, Err(Error::AlertReceived(_))), "the client is told: {:?}", o.client);
    assert_eq!(o.client_cert, None, "the server keeps no refused certificate");
    // A node of another CA dialling ours: it refuses our certificate before showing its own.
    let theirs = reloadable(&other.files("admin"), None).client_config(&[b"http/1.1"]);
    let o = handshake(theirs, server, "n1");
    assert!(foreign(&o.client), "{:?}", o.client);
    assert!(o.server.is_err() && o.client_cert.is_none());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let d = dir("none");
    let (pki, _) = pkis(&d);
    let server = reloadable(&pki.files("n1"), Some("n1")).server_config(&[b"http/1.1"]);
    let o = handshake(test_client(&pki.ca_file(), None).unwrap(), server, "n1");
    assert!(matches!(o.server, Err(Error::NoCertificatesPresented)), "{:?}", o.server);
    assert!(matches!(o.client, Err(Error::AlertReceived(_))), "{:?}", o.client);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_expired_certificate_is_refused_by_either_side() {
    let d = dir("expired");
    let (pki, _) = pkis(&d);
    let old = pki.issue("old", -1).unwrap();
    let expired = |e: &Result<(), Error>| {
        matches!(e, Err(Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })))
    };
    let server = reloadable(&pki.files("n1"), Some("n1")).server_config(&[b"http/1.1"]);
    let o = handshake(test_client(&pki.ca_file(), Some(&old)).unwrap(), server, "n1");
    assert!(expired(&o.server), "{:?}", o.server);
    // A server showing an expired certificate (ours refuse to load one: made by hand).
    let stale = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_in(&old)], PrivateKeyDer::from_pem_file(&old.key).unwrap())
        .unwrap();
    let client = reloadable(&pki.files("admin"), None).client_config(&[]);
    let o = handshake(client, stale, "old");
    assert!(expired(&o.client), "{:?}", o.client);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn after_a_reload_new_handshakes_show_the_new_certificate_and_a_bad_reload_keeps_the_old() {
    let d = dir("reload");
    let (pki, _) = pkis(&d);
    let node = reloadable(&pki.files("n1"), Some("n1"));
    // Built once, as the daemon does.
    let server = node.server_config(&[b"http/1.1"]);
    let client = || reloadable(&pki.files("admin"), None).client_config(&[b"http/1.1"]);
    let first = cert_in(&pki.files("n1"));
    let seen = || {
        let o = handshake(client(), server.clone(), "n1");
        assert!(o.done(), "{:?} {:?}", o.client, o.server);
        o.server_cert.unwrap()
    };
    assert_eq!(seen(), first);
    let renewed = pki.issue("n1", 30).unwrap();
    let second = cert_in(&renewed);
    assert_ne!(first, second);
    assert_eq!(seen(), first, "the files are read again only on reload");
    node.reload().unwrap();
    assert_eq!(seen(), second);
    // A broken key: the reload fails naming it, and the files read before stay.
    std::fs::write(&renewed.key, "not a key").unwrap();
    let e = node.reload().unwrap_err().to_string();
    assert!(e.contains("n1.key"), "{e}");
    assert_eq!(seen(), second);
    // A certificate for another name: refused too.
    let n2 = pki.issue("n2", 30).unwrap();
    std::fs::copy(&n2.cert, &renewed.cert).unwrap();
    std::fs::copy(&n2.key, &renewed.key).unwrap();
    let e = node.reload().unwrap_err().to_string();
    assert!(e.contains("does not name this node 'n1'"), "{e}");
    assert_eq!(seen(), second);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_client_certificate_is_heard_by_rest_and_never_as_a_node() {
    let d = dir("client");
    let (pki, _) = pkis(&d);
    let ops = pki.issue_as("ops", 1, crate::Usage::Client).unwrap();
    // It loads as a client's, and is refused as a node's at start.
    let client = reloadable(&ops, None).client_config(&[b"x"]);
    let m = Tls::load(&ops, Some("ops")).unwrap_err().to_string();
    assert!(m.contains("ops.pem") && m.contains("serverAuth"), "{m}");
    let n1 = reloadable(&pki.files("n1"), Some("n1"));
    let o = handshake(client.clone(), n1.server_config(&[b"x"]), "n1");
    assert!(o.done(), "REST takes a client's certificate: {:?} {:?}", o.client, o.server);
    let o = handshake(client, n1.node_server_config(&[b"x"]), "n1");
    assert!(o.server.is_err(), "gossip and the tunnel take nodes only");
    // A node's certificate passes both.
    let node = reloadable(&pki.files("admin"), None).client_config(&[b"x"]);
    assert!(handshake(node, n1.node_server_config(&[b"x"]), "n1").done());
    let _ = std::fs::remove_dir_all(&d);
}

/// A node's signature holds for its own certificate and message only.
#[test]
fn a_signature_holds_for_the_signers_certificate_and_message_only() {
    let d = dir("sign");
    let pki = write_test_pki(&d, &["n1".into(), "n2".into()]).unwrap();
    let n1 = Tls::load(&pki.files("n1"), Some("n1")).unwrap();
    let n2 = Tls::load(&pki.files("n2"), Some("n2")).unwrap();
    let signature = n1.sign(b"state of n1").unwrap();
    assert!(crate::SIGNING.contains(&rustls::SignatureScheme::from(signature.scheme)));
    let n1_leaf = &n1.chain()[0];
    assert_eq!(n2.verify_signature(n1_leaf, b"state of n1", &signature), Ok(()), "any node checks it");
    assert_eq!(n2.verify_signature(n1_leaf, b"state of n2", &signature), Err(SignatureError::Invalid));
    assert_eq!(n1.verify_signature(&n2.chain()[0], b"state of n1", &signature), Err(SignatureError::Invalid));
    let mut flipped = signature.clone();
    flipped.bytes[10] ^= 1;
    assert_eq!(n2.verify_signature(n1_leaf, b"state of n1", &flipped), Err(SignatureError::Invalid));
    // PKCS#1 v1.5 and unknown numbers are not schemes nodes sign with.
    for scheme in [0x0401, 0xfefe] {
        let other = Signature { scheme, ..signature.clone() };
        assert_eq!(n2.verify_signature(n1_leaf, b"state of n1", &other), Err(SignatureError::Scheme(scheme)));
    }
    let garbage = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
    assert_eq!(n2.verify_signature(&garbage, b"state of n1", &signature), Err(SignatureError::Certificate));
    std::fs::remove_dir_all(&d).unwrap();
}
