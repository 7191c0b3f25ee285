//! End-to-end tests of REST over HTTPS (`ax daemon --tls`), as root: remote admin from
//! another host with curl and `ax --server`, who gets no answer, and the node's
//! certificate replaced on SIGHUP.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{ax_bin, TestHost, NODE_IP};

/// The node's name, the name on its certificate.
const NODE: &str = "n1";
const VSERVICE: &[&str] =
    &["vservice", "web", "--ip", "198.18.40.1", "--ports", "80:8000", "--backends", "198.18.40.2"];

/// `ax tls-certs DIR NAMES...`: a CA in `dir` (made or reused) and a certificate per name.
fn tls_certs(dir: &Path, names: &[&str]) {
    let out = Command::new(ax_bin()).arg("tls-certs").arg(dir).args(names).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A test host whose daemon runs with `--tls` (node `n1`); the CA's folder, which also
/// holds `admin`'s certificate.
fn tls_host() -> (TestHost, PathBuf) {
    support::require_root_and(&["curl"]);
    let mut h = TestHost::new();
    let pki = h.dir.join("pki");
    tls_certs(&pki, &[NODE, "--client", "admin"]);
    let f = |name: &str| pki.join(name).to_string_lossy().into_owned();
    h.start_daemon(&[
        "--node-name",
        NODE,
        "--tls",
        "--tls-ca-cert",
        &f("ca.pem"),
        "--tls-cert",
        &f("n1.pem"),
        "--tls-key",
        &f("n1.key"),
    ]);
    (h, pki)
}

/// What one curl did: whether it succeeded, the HTTP status (0: none), and what it
/// printed.
struct Curl {
    ok: bool,
    status: u16,
    body: String,
}

/// curl `args` then `https://n1:6664{path}`, with n1 at `at`, trusting the CA in `pki`
/// and showing `client`'s certificate of the CA in `pki` (if any).
fn curl(mut c: Command, at: &str, pki: &Path, client: Option<&Path>, args: &[&str], path: &str) -> Curl {
    c.args(["-s", "-m", "20", "-w", "\n%{http_code}", "-H", "Content-Type: application/json"]);
    c.arg("--resolve").arg(format!("{NODE}:6664:{at}")).arg("--cacert").arg(pki.join("ca.pem"));
    if let Some(dir) = client {
        c.arg("--cert").arg(dir.join("admin.pem")).arg("--key").arg(dir.join("admin.key"));
    }
    let out = c.args(args).arg(format!("https://{NODE}:6664{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Curl { ok: out.status.success(), status: code.trim().parse().unwrap_or(0), body: body.to_string() }
}

/// `ax ARGS --server https://NODE_IP:6664` with `admin`'s files from `client`, trusting
/// the CA in `trust`, run on the peer host: a remote admin.
fn ax_remote(h: &TestHost, trust: &Path, client: &Path, args: &[&str]) -> Output {
    let mut c = h.peer_cmd(ax_bin());
    c.args(args).arg("--server").arg(format!("https://{NODE_IP}:6664"));
    c.arg("--tls-ca-cert").arg(trust.join("ca.pem"));
    c.arg("--tls-cert").arg(client.join("admin.pem")).arg("--tls-key").arg(client.join("admin.key"));
    c.output().unwrap()
}

fn vservice_names(h: &TestHost) -> Vec<Value> {
    h.get("vservices").into_iter().map(|v| v["name"].clone()).collect()
}

#[test]
fn remote_admin_over_https_needs_a_certificate_from_the_ca_even_to_read() {
    let (h, pki) = tls_host();
    let other = pki.join("other");
    tls_certs(&other, &["--client", "admin"]);
    // From another host, and on 127.0.0.1 of the node itself.
    for (c, at) in [(h.peer_cmd("curl"), NODE_IP), (h.cmd("curl"), "127.0.0.1")] {
        let r = curl(c, at, &pki, Some(&pki), &[], "/v1/nodes");
        assert!(r.ok && r.status == 200, "{at}: {} {}", r.status, r.body);
        assert!(r.body.contains(&format!("\"{NODE}\"")), "{}", r.body);
    }
    // No certificate, or one of another CA: no answer at all (the handshake fails).
    for (what, client) in [("no certificate", None), ("another CA's", Some(other.as_path()))] {
        let r = curl(h.peer_cmd("curl"), NODE_IP, &pki, client, &[], "/v1/nodes");
        assert!(!r.ok && r.status == 0, "{what}: {} {}", r.status, r.body);
        assert!(!r.body.contains(NODE), "{what}: {}", r.body);
    }
    // Plain HTTP on the port: nothing answers in HTTP, on either address.
    for (mut c, at) in [(h.peer_cmd("curl"), NODE_IP), (h.cmd("curl"), "127.0.0.1")] {
        let out = c.args(["-s", "-m", "20", &format!("http://{at}:6664/v1/nodes")]).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && !said.contains(NODE), "{at}: {out:?}");
    }
    // ax --server says why.
    let out = ax_remote(&h, &other, &other, &["get", "nodes"]);
    support::fails_with(out, &format!("the server's certificate is not from the CA in {}", other.display()));
    let out = ax_remote(&h, &pki, &other, &["get", "nodes"]);
    support::fails_with(out, "other/admin.pem cannot be used: it is not signed by the CA given with --tls-ca-cert");
    let mut c = h.peer_cmd(ax_bin());
    c.args(["get", "apps", "--server", &format!("http://{NODE_IP}:6664")]);
    support::fails_with(c.output().unwrap(), "over HTTPS only");
    let out = ax_remote(&h, &pki, &pki, &["get", "nodes", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let nodes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes[0]["name"], NODE);
    h.wait_until("the refused handshakes to be logged", Duration::from_secs(30), || {
        h.daemon_log().contains("TLS handshake with 10.251.0.2:")
    });
    assert!(h.get("apps").is_empty(), "the Unix socket serves as before");
}

#[test]
fn changes_over_https_with_a_certificate_from_the_ca() {
    let (h, pki) = tls_host();
    // ax --server, flags after the resource.
    let create: Vec<&str> = [&["create"][..], VSERVICE, &["--allow-external-backends"]].concat();
    let out = ax_remote(&h, &pki, &pki, &create);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(vservice_names(&h), ["web"]);
    let out = ax_remote(&h, &pki, &pki, &["get", "vservices"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.40.1"), "{out:?}");
    // curl DELETE.
    let r = curl(h.peer_cmd("curl"), NODE_IP, &pki, Some(&pki), &["-X", "DELETE"], "/v1/vservices/web");
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(vservice_names(&h).is_empty());
    // curl POST without a certificate: nothing is created; with one, it is.
    let body = r#"{"name":"web","ip":"198.18.40.1","ports":"80:8000","backends":"198.18.40.2","allow_external_backends":true}"#;
    let post = ["-X", "POST", "-d", body];
    let r = curl(h.peer_cmd("curl"), NODE_IP, &pki, None, &post, "/v1/vservices");
    assert_eq!(r.status, 0, "{}", r.body);
    assert!(vservice_names(&h).is_empty());
    let r = curl(h.peer_cmd("curl"), NODE_IP, &pki, Some(&pki), &post, "/v1/vservices");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(vservice_names(&h), ["web"]);
    // A refusal of the daemon's comes back as its message.
    let out = ax_remote(&h, &pki, &pki, &create);
    support::fails_with(out, "web");
    let out = ax_remote(&h, &pki, &pki, &["delete", "vservice", "web"]);
    assert!(out.status.success(), "{out:?}");
    assert!(vservice_names(&h).is_empty());
    // The daemon's own AX_TLS_* in the environment do not send a local command away.
    let out = h.ax().args(["get", "vservices"]).env("AX_TLS_CERT", pki.join("admin.pem")).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The certificate a TLS handshake with the daemon at `at` shows, as PEM.
fn presented(h: &TestHost, at: &str, pki: &Path) -> String {
    let r = curl(h.cmd("curl"), at, pki, Some(pki), &["-o", "/dev/null", "-w", "%{certs}"], "/v1/info");
    assert!(r.ok, "{} {}", r.status, r.body);
    pem_of(&r.body)
}

/// The first PEM certificate in `text`, whitespace removed.
fn pem_of(text: &str) -> String {
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate in {text}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin;
    text[begin..end].split_whitespace().collect()
}

#[test]
fn sighup_rotates_the_node_certificate_and_a_broken_file_keeps_the_one_in_use() {
    let (h, pki) = tls_host();
    let file = || pem_of(&std::fs::read_to_string(pki.join("n1.pem")).unwrap());
    let first = file();
    assert_eq!(presented(&h, NODE_IP, &pki), first);
    tls_certs(&pki, &[NODE]);
    let second = file();
    assert_ne!(first, second);
    assert_eq!(presented(&h, NODE_IP, &pki), first, "read again only on SIGHUP");
    let hup = || {
        let status = Command::new("kill").args(["-HUP", &h.daemon_pid().to_string()]).status().unwrap();
        assert!(status.success());
    };
    hup();
    h.wait_until("the new certificate", Duration::from_secs(30), || presented(&h, NODE_IP, &pki) == second);
    assert_eq!(presented(&h, "127.0.0.1", &pki), second);
    assert!(h.daemon_log().contains("SIGHUP: TLS files read again"));
    // A broken key: a warning naming it, the certificate in use stays, all serve on.
    std::fs::write(pki.join("n1.key"), "not a key").unwrap();
    hup();
    h.wait_until("the warning", Duration::from_secs(30), || {
        h.daemon_log().lines().any(|l| l.contains("WARN") && l.contains("SIGHUP") && l.contains("n1.key"))
    });
    assert_eq!(presented(&h, NODE_IP, &pki), second);
    let r = curl(h.peer_cmd("curl"), NODE_IP, &pki, Some(&pki), &[], "/v1/nodes");
    assert_eq!(r.status, 200, "{}", r.body);
    let out = ax_remote(&h, &pki, &pki, &[&["create"][..], VSERVICE, &["--allow-external-backends"]].concat());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(vservice_names(&h), ["web"]);
}

/// Another host opens more idle TCP connections to the HTTPS port than the listener
/// holds (never starting a handshake): it gets its per-address share only, and an admin
/// from elsewhere is still served.
#[test]
fn one_host_of_idle_connections_does_not_keep_admins_out() {
    let (h, pki) = tls_host();
    let holder = format!(
        "import socket, sys, time\n\
         s = [socket.create_connection(('{NODE_IP}', 6664)) for _ in range({n})]\n\
         print('held', flush=True)\n\
         time.sleep(30)\n",
        n = 70 // the listener holds 64
    );
    let mut c = h.peer_cmd("python3");
    c.args(["-c", &holder]).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "held", "the connections were made");
    // From the node itself to its address: another source address, the same listener.
    let r = curl(h.cmd("curl"), NODE_IP, &pki, Some(&pki), &[], "/v1/nodes");
    let _ = child.kill();
    let _ = child.wait();
    assert!(r.ok && r.status == 200, "{} {}", r.status, r.body);
    h.wait_until("the refusals to be logged", Duration::from_secs(30), || {
        h.daemon_log().contains("per-address connection cap reached")
    });
}
