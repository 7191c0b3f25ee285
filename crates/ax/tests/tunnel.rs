//! End-to-end tests, as root, of what daemons carry for each other over TCP: egress
//! through a gateway and relays that cross nodes, under `--tls` through the tunnel (and
//! the egress forwarder), and without it the refusals that need no cryptography.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{Cluster, TestHost};

const PY: &str = "/usr/bin/python3";
const EGRESS_PORT: &str = "6661";

/// `ax tls-certs DIR NAMES...`: a CA in `dir` and a certificate per name.
fn certs(dir: &Path, names: &[&str]) {
    let out = Command::new(support::ax_bin()).arg("tls-certs").arg(dir).args(names).output().unwrap();
    assert!(out.status.success(), "ax tls-certs: {}", String::from_utf8_lossy(&out.stderr));
}

/// The daemon flags of node `name` under `--tls` with the CA in `dir`.
fn tls_flags(dir: &Path, name: &str) -> Vec<String> {
    let f = |s: String| dir.join(s).to_string_lossy().into_owned();
    vec!["--tls".into(), "--tls-ca-cert".into(), f("ca.pem".into()), "--tls-cert".into(), f(format!("{name}.pem"))]
        .into_iter()
        .chain(["--tls-key".into(), f(format!("{name}.key"))])
        .collect()
}

/// Starts node `name` on host `h` with `extra` flags, seeded with `all`.
fn start(h: &mut TestHost, name: &str, all: &str, extra: &[String]) {
    let mut args = vec!["--node-name", name, "--neighbors", all];
    args.extend(extra.iter().map(String::as_str));
    h.start_daemon(&args);
}

/// The first answer line to `request` on `ip`'s egress port, asked from host `h` by
/// `user` (root: None); `cert`: TLS with that certificate prefix, "-" for none.
fn ask(h: &TestHost, user: Option<&str>, ip: &str, request: &str, cert: Option<&str>) -> String {
    h.ask(user, ip, EGRESS_PORT, request, cert.map(|c| (c, "ax-tunnel")))
}

/// True when what `ask` printed is no answer at all (a refused handshake, a closed or
/// reset connection), neither OK nor ERR.
fn unanswered(said: &str) -> bool {
    !said.starts_with("OK") && !said.starts_with("ERR")
}

/// A plain web server on host `h` (no daemon there: the outside world), on `ip:port`.
fn outside_server(h: &mut TestHost, ip: &str, port: u16) {
    let root = h.web_root("out", "who", "outside");
    let mut server = h.cmd(PY);
    server.args(["-m", "http.server", &port.to_string(), "--bind", ip, "--directory", &root]);
    h.spawn_plain("outside", server);
}

/// The daemon's log without its colours.
fn log_of(h: &TestHost) -> String {
    let log = h.daemon_log();
    let mut out = String::with_capacity(log.len());
    let mut rest = log.as_str();
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        rest = rest[at..].split_once('m').map_or("", |(_, r)| r);
    }
    out.push_str(rest);
    out
}

fn wait_for_gateway(h: &TestHost) {
    h.wait_until("the gateway", Duration::from_secs(20), || {
        h.get("nodes").iter().any(|n| n["role"] == "egress-gateway" && n["live"] == true)
    });
}

#[test]
fn under_tls_egress_goes_through_the_forwarder_and_a_tunnel_and_strangers_get_nothing() {
    support::require_root_and(&[PY, "curl", "setpriv"]);
    let mut c = Cluster::new(4);
    let (a_ip, out_ip, gw_ip, stranger_ip) = (Cluster::ip(0), Cluster::ip(1), Cluster::ip(2), Cluster::ip(3));
    let pki = c.hosts[0].dir.join("pki");
    let foreign = c.hosts[0].dir.join("foreign");
    certs(&pki, &["a", "gw", "stranger"]);
    certs(&foreign, &["a", "gw"]);
    let all = [&a_ip, &gw_ip].map(|s| s.as_str()).join(",");
    start(&mut c.hosts[0], "a", &all, &tls_flags(&pki, "a"));
    let mut gw_flags = tls_flags(&pki, "gw");
    gw_flags.push("--egress-gateway".into());
    start(&mut c.hosts[2], "gw", &all, &gw_flags);
    outside_server(&mut c.hosts[1], &out_ip, 9300);
    let a = &c.hosts[0];
    wait_for_gateway(a);
    let url = format!("http://{out_ip}:9300/who");
    a.wait_until("the outside server", Duration::from_secs(20), || {
        a.run(&["--", "curl", "-sf", &url]).status.success()
    });
    assert_eq!(a.run_ok(&["--", "curl", "-sf", &url]), "outside");
    // The destination saw the gateway; the client saw the destination.
    let log = c.hosts[1].app_log("outside");
    assert!(log.lines().filter(|l| l.contains("GET /who")).all(|l| l.starts_with(&gw_ip)), "{log}");
    let script = format!("import socket\nc=socket.create_connection(('{out_ip}',9300))\nprint(c.getpeername())");
    assert_eq!(a.run_ok(&["--", PY, "-c", &script]).trim(), format!("('{out_ip}', 9300)"));
    // A refused destination is refused to the client too; so is the gateway's loopback.
    let refused = a.curl_refused_by_egress_destination();
    assert_eq!(a.run(&["--", "curl", "-s", &format!("http://{out_ip}:9399/")]).status.code(), Some(refused));
    // It went through a's forwarder and gw's tunnel, as member a.
    let gw_log = log_of(&c.hosts[2]);
    assert!(gw_log.lines().any(|l| l.contains("tunnel connection") && l.contains("member=a")), "{gw_log}");

    let egress = format!("AXEG {out_ip}:9300");
    let key = |dir: &Path, name: &str| dir.join(name).to_string_lossy().into_owned();
    // gw speaks TLS only: a's certificate gets an answer, in the clear nobody does, not
    // even root on a member.
    assert_eq!(ask(a, None, &gw_ip, &egress, Some(&key(&pki, "a"))), "OK");
    let said = ask(a, None, &gw_ip, &egress, None);
    assert!(unanswered(&said), "{said}");
    // No certificate, another CA's (even naming a), or the CA's naming another node than
    // the one at the peer's address: no answer.
    for (cert, what) in [
        ("-".to_string(), "no certificate"),
        (key(&foreign, "a"), "another CA"),
        (key(&pki, "gw"), "gw's name from a's address"),
        (key(&pki, "stranger"), "a name that is no member's"),
    ] {
        let said = ask(a, None, &gw_ip, &egress, Some(&cert));
        assert!(unanswered(&said), "{what}: {said}");
    }
    // A host that is no member gets no connection at all, certificate or not.
    let stranger = &c.hosts[3];
    for cert in [None, Some(key(&pki, "stranger")), Some(key(&foreign, "gw"))] {
        let said = ask(stranger, None, &gw_ip, &egress, cert.as_deref());
        assert_eq!(said, "TimeoutError timed out", "from {stranger_ip} with {cert:?}");
    }
    // a's forwarder serves the daemon's sockets only: root on a gets through it (the
    // same request), a local user who is not root does not.
    assert_eq!(ask(a, None, &a_ip, &egress, None), "OK");
    let said = ask(a, Some("nobody"), &a_ip, &egress, None);
    assert!(unanswered(&said), "{said}");
    let a_log = log_of(a);
    assert!(a_log.contains("the egress forwarder serves apps' sockets only"), "{a_log}");
    // An app cannot reach the forwarder either: it is a daemon port.
    let probe = format!("import socket\ntry:\n socket.create_connection(('{a_ip}', 6661), 3)\n print('connected')\nexcept OSError as e:\n print(e.errno)");
    assert_eq!(a.run_ok(&["--user", "nobody", "--", PY, "-c", &probe]).trim(), "111");
}

#[test]
fn under_tls_an_app_exposed_on_another_node_is_relayed_through_a_tunnel() {
    support::require_root_and(&[PY, "curl"]);
    let mut c = Cluster::new(3);
    let (a_ip, b_ip) = (Cluster::ip(0), Cluster::ip(1));
    let pki = c.hosts[0].dir.join("pki");
    certs(&pki, &["a", "b"]);
    let all = [&a_ip, &b_ip].map(|s| s.as_str()).join(",");
    start(&mut c.hosts[0], "a", &all, &tls_flags(&pki, "a"));
    start(&mut c.hosts[1], "b", &all, &tls_flags(&pki, "b"));
    let root = c.hosts[0].web_root("web", "who", "web");
    let spec = format!("8000:{b_ip}:9000");
    c.hosts[0].spawn_app("web", &["--expose", &spec, "--", PY, "-m", "http.server", "8000", "--directory", &root]);
    // A client outside the cluster (host 2 runs no daemon) reaches the app through b.
    let outside = &c.hosts[2];
    let url = format!("http://{b_ip}:9000/who");
    let fetch = || {
        let out = outside.cmd("curl").args(["-sf", "--max-time", "5", &url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    outside.wait_until("the port exposed on b", Duration::from_secs(30), || fetch() == "web");
    for _ in 0..5 {
        assert_eq!(fetch(), "web");
    }
    // b carried it to a's tunnel as member b, with a hop to the app's row.
    let a_log = log_of(&c.hosts[0]);
    assert!(a_log.lines().any(|l| l.contains("tunnel connection") && l.contains("member=b request=AXRL")), "{a_log}");
    // A member may ask for a's rows only: not a's REST port, not its DNS.
    let b = &c.hosts[1];
    let b_cert = pki.join("b").to_string_lossy().into_owned();
    for to in [format!("{a_ip}:53"), format!("{a_ip}:6664"), "127.0.0.1:6664".to_string()] {
        assert_eq!(ask(b, None, &a_ip, &format!("AXRL {to}"), Some(&b_cert)), "ERR 111", "{to}");
    }
}

#[test]
fn without_tls_the_gateway_refuses_the_clusters_own_destinations() {
    support::require_root_and(&[PY]);
    let mut c = Cluster::new(3);
    let (a_ip, out_ip, gw_ip) = (Cluster::ip(0), Cluster::ip(1), Cluster::ip(2));
    let all = [&a_ip, &gw_ip].map(|s| s.as_str()).join(",");
    start(&mut c.hosts[0], "a", &all, &[]);
    start(&mut c.hosts[2], "gw", &all, &["--egress-gateway".to_string()]);
    outside_server(&mut c.hosts[1], &out_ip, 9300);
    let a = &c.hosts[0];
    wait_for_gateway(a);
    // The outside is served (root on a member asks as a's daemon would)...
    a.wait_until("the outside server", Duration::from_secs(20), || {
        ask(a, None, &gw_ip, &format!("AXEG {out_ip}:9300"), None) == "OK"
    });
    // ...but not what listens on the gateway's loopback (REST), its node address (DNS
    // over TCP), nor another node's address.
    for dest in
        ["127.0.0.1:6664", "[::ffff:127.0.0.1]:6664", "0.0.0.0:6664", &format!("{gw_ip}:53"), &format!("{a_ip}:53")]
    {
        assert_eq!(ask(a, None, &gw_ip, &format!("AXEG {dest}"), None), "ERR 111", "{dest}");
    }
    let gw_log = log_of(&c.hosts[2]);
    assert!(gw_log.contains("egress to 127.0.0.1:6664: a loopback address"), "{gw_log}");
    // A relay hop is a --tls request: refused in the clear.
    let said = ask(a, None, &gw_ip, &format!("AXRL {gw_ip}:53"), None);
    assert!(unanswered(&said), "{said}");
}
