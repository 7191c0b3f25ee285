//! End-to-end tests of ping, as root: iputils' ping (a ping socket when the groups
//! allow, else a raw one) and busybox's (a raw socket) under `ax run`, answered for
//! the virtual addresses an app reaches, refused at once for the rest, across a
//! daemon restart, on another node, and with an app flooding its echo device.
//!
//! No wall clock is asserted: "at once" shows as the ICMP error the ping prints, which
//! only an answer brings (ping's own deadline, far away, would print none).

mod support;

use std::time::Duration;

use support::{Cluster, TestHost};

const PY: &str = "/usr/bin/python3";
const PING: &str = "/usr/bin/ping";
/// How long a ping waits for each reply: far longer than any answer takes here.
const WAIT: &str = "60";

fn host() -> TestHost {
    support::require_root_and(&[PY, PING, "busybox"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h
}

fn serve(h: &mut TestHost, name: &str, ip: &str, labels: &str) {
    let root = h.web_root(name, "who", name);
    h.spawn_app(
        name,
        &["--name", name, "--ip", ip, "--labels", labels, "--", PY, "-m", "http.server", "8000", "--directory", &root],
    );
    h.wait_for_rows(&format!("{ip}:8000"), 1);
}

/// `ax run ARGS` as a shell would show it: status, and stdout and stderr together.
fn ping(h: &TestHost, args: &[&str]) -> (bool, String) {
    let out = h.run(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn ping_answers_the_addresses_an_app_reaches_and_refuses_the_rest_at_once() {
    let mut h = host();
    serve(&mut h, "web", "198.18.40.1", "zone=default");
    serve(&mut h, "vault", "198.18.40.2", "role=prod");
    // iputils, by name and by address; its replies come from the address pinged.
    let (ok, out) = ping(&h, &["--", PING, "-c", "3", "-W", WAIT, "web"]);
    assert!(ok && out.contains("3 received") && out.contains("from 198.18.40.1"), "{out}");
    let (ok, out) = ping(&h, &["--", PING, "-n", "-c", "1", "-s", "1400", "198.18.40.1"]);
    assert!(ok && out.contains("1408 bytes from 198.18.40.1"), "{out}");
    // busybox, over a raw socket.
    let (ok, out) = ping(&h, &["--", "busybox", "ping", "-c", "2", "-W", WAIT, "198.18.40.1"]);
    assert!(ok && out.contains("2 packets received"), "{out}");
    // An app pings its own address.
    let (ok, out) = ping(&h, &["--ip", "198.18.40.9", "--", PING, "-c", "1", "198.18.40.9"]);
    assert!(ok, "{out}");
    // An address whose app shares no label with the pinger: unreachable, at once.
    let (ok, out) = ping(&h, &["--", PING, "-c", "1", "-W", WAIT, "198.18.40.2"]);
    assert!(!ok && out.contains("Destination Host Unreachable"), "{out}");
    let (ok, out) = ping(&h, &["--labels", "role=prod", "--", PING, "-c", "1", "-W", WAIT, "vault"]);
    assert!(ok, "{out}");
    // Not a virtual address: never sent anywhere; iputils' probe finds the host has no
    // route there.
    let (ok, out) = ping(&h, &["--", PING, "-c", "1", "-W", WAIT, "203.0.113.7"]);
    assert!(!ok && out.contains("Network is unreachable"), "{out}");
    // A name nobody has fails in the resolver.
    let (ok, out) = ping(&h, &["--", PING, "-c", "1", "-W", WAIT, "nosuchapp"]);
    assert!(!ok && out.contains("nosuchapp"), "{out}");
    // The app goes: its address stops answering.
    h.stop_app("web");
    h.wait_until("web to go", Duration::from_secs(60), || h.get("apps").iter().all(|a| a["name"] != "web"));
    let (ok, out) = ping(&h, &["--", PING, "-c", "1", "-W", WAIT, "198.18.40.1"]);
    assert!(!ok && out.to_lowercase().contains("unreachable"), "{out}");
}

#[test]
fn an_unprivileged_app_pings_over_a_ping_socket_when_the_host_lets_its_groups() {
    let mut h = host();
    serve(&mut h, "web", "198.18.41.1", "zone=default");
    // As a Debian host with systemd has it: every group may make ping sockets. The
    // app's namespace gets the host's setting.
    assert!(h.cmd("sysctl").args(["-qw", "net.ipv4.ping_group_range=0 2147483647"]).status().unwrap().success());
    let probe = "import socket\ntry:\n  socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n  \
                 print('made')\nexcept OSError as e: print(e.errno)";
    let made = h.run_ok(&["--user", "nobody", "--", PY, "-c", probe]);
    if h.daemon_driver() == "kernel" && ax_sys::landlock::can_scope() {
        // Under the kernel driver an unprivileged app lives in the host's namespace,
        // where a ping socket would reach the real network: refused (README).
        assert_eq!(made.trim(), "93", "EPROTONOSUPPORT");
        return;
    }
    assert_eq!(made.trim(), "made");
    let (ok, out) = ping(&h, &["--user", "nobody", "--", PING, "-c", "2", "-W", WAIT, "web"]);
    assert!(ok && out.contains("2 received"), "{out}");
}

#[test]
fn a_ping_goes_on_across_a_daemon_restart() {
    let mut h = host();
    serve(&mut h, "web", "198.18.42.1", "zone=default");
    h.spawn_app("pinger", &["--", PING, "-n", "-i", "0.2", "-W", WAIT, "198.18.42.1"]);
    let replies = |h: &TestHost| h.app_log("pinger").matches("bytes from 198.18.42.1").count();
    h.wait_until("replies", Duration::from_secs(60), || replies(&h) >= 2);
    h.signal_daemon("KILL");
    h.start_daemon(&[]);
    // The new daemon takes the ping's device back: replies resume.
    let before = replies(&h);
    h.wait_until("replies from the new daemon", Duration::from_secs(120), || replies(&h) >= before + 5);
}

#[test]
fn an_app_flooding_its_echo_device_costs_the_others_nothing() {
    let mut h = host();
    serve(&mut h, "web", "198.18.43.1", "zone=default");
    // A raw socket sending echo requests, garbage and forged sources as fast as it can.
    let flood = r#"
import socket, os, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def ip(src, dst, body):
    return struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(body), 0, 0, 64, 1, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + body
echo = b'\x08\x00\xf7\xff' + b'\x00' * 4
print('flooding', flush=True)
while True:
    for pkt in (ip('198.18.43.77', '198.18.43.1', echo), ip('198.18.43.1', '198.18.43.77', echo),
                os.urandom(60), b'\x45' + os.urandom(30)):
        try: s.sendto(pkt, ('198.18.43.1', 0))
        except OSError: pass
    try:
        p = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        p.sendto(echo, ('198.18.43.1', 0)); p.close()
    except OSError: pass
"#;
    h.spawn_app("flood", &["--ip", "198.18.43.77", "--", PY, "-c", flood]);
    h.wait_for_line("flood", "flooding");
    // Meanwhile the others are served: pings, connects, the API.
    for _ in 0..3 {
        let (ok, out) = ping(&h, &["--", PING, "-c", "2", "-W", WAIT, "web"]);
        assert!(ok && out.contains("2 received"), "{out}");
        assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://web:8000/who"]), "web");
        assert!(h.get("apps").len() >= 2);
    }
}

#[test]
fn a_ping_reaches_an_app_on_another_node_by_its_labels() {
    support::require_root_and(&[PY, PING]);
    let mut c = Cluster::new(2);
    let all = (0..2).map(Cluster::ip).collect::<Vec<_>>().join(",");
    for (i, h) in c.hosts.iter_mut().enumerate() {
        h.start_daemon(&["--node-name", ["a", "b"][i], "--neighbors", &all]);
    }
    serve(&mut c.hosts[0], "web", "198.18.44.1", "zone=default");
    // A client on a, with no service: known to b by its address and labels only.
    c.hosts[0].spawn_app("client", &["--name", "client", "--ip", "198.18.44.2", "--", "sleep", "infinity"]);
    let b = &c.hosts[1];
    b.wait_until("a's apps on b", Duration::from_secs(60), || {
        b.servers_at("198.18.44.1:8000").len() == 1 && b.run(&["--", "getent", "hosts", "client"]).status.success()
    });
    for target in ["web", "198.18.44.2"] {
        let (ok, out) = ping(b, &["--", PING, "-c", "2", "-W", WAIT, target]);
        assert!(ok && out.contains("2 received"), "{target}: {out}");
    }
    let (ok, out) = ping(b, &["--labels", "role=other", "--", PING, "-c", "1", "-W", WAIT, "198.18.44.2"]);
    assert!(!ok && out.contains("Destination Host Unreachable"), "{out}");
}
