//! End-to-end tests of what a server under ax sees of its clients (issue 13, part 1),
//! as root: a client app's virtual address on one node and across nodes, a client not
//! under ax as itself, with a plain socket server and with PostgreSQL's pg_hba.conf.
//!
//! Under the kernel driver, a client app's SYN names its virtual address and the
//! server's accept and getpeername show it. Under the user driver, nothing carries it,
//! and a server sees the client's node address (README, "Client addresses").

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Cluster, TestHost};

const PY: &str = "/usr/bin/python3";

/// A server on 0.0.0.0:7000 printing, for each connection, "peer <accept's address>
/// <getpeername's address>".
const SERVER: &str = "
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7000))
s.listen(64)
while True:
    c, a = s.accept()
    print('peer', a[0], c.getpeername()[0], flush=True)
    c.sendall(b'ok')
    c.close()
";

fn client(dest: &str) -> String {
    format!("import socket\ns = socket.create_connection(('{dest}', 7000))\nprint(s.recv(2).decode())")
}

/// Two nodes, each daemon seeded with the other, both live.
fn two() -> Cluster {
    support::require_root_and(&[PY]);
    let mut c = Cluster::new(2);
    let all = (0..2).map(Cluster::ip).collect::<Vec<_>>().join(",");
    for (h, name) in c.hosts.iter_mut().zip(["a", "b"]) {
        h.start_daemon(&["--node-name", name, "--neighbors", &all]);
    }
    for h in &c.hosts {
        h.wait_until("both nodes live", Duration::from_secs(30), || {
            h.get("nodes").iter().filter(|n| n["live"] == true).count() == 2
        });
    }
    c
}

/// What a server of `h` is shown for a client app at `virtual` on node `node`.
fn shown<'a>(h: &TestHost, virtual_ip: &'a str, node: &'a str) -> &'a str {
    if h.daemon_driver() == "kernel" {
        virtual_ip
    } else {
        node
    }
}

/// The next "peer" line of the server's log after `seen` of them.
fn next_peer(h: &TestHost, seen: usize) -> String {
    let peers =
        || h.app_log("server").lines().filter(|l| l.starts_with("peer ")).map(str::to_string).collect::<Vec<_>>();
    h.wait_until("the server's next connection", Duration::from_secs(30), || peers().len() > seen);
    peers()[seen].clone()
}

#[test]
fn a_server_sees_its_clients_virtual_addresses_on_one_node_and_across_nodes() {
    let mut c = two();
    c.hosts[0].spawn_app("server", &["--ip", "198.18.7.1", "--", PY, "-c", SERVER]);
    for h in &c.hosts {
        h.wait_until("the server's row", Duration::from_secs(30), || h.servers_at("198.18.7.1:7000").len() == 1);
    }
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let (a_ip, b_ip) = (Cluster::ip(0), Cluster::ip(1));

    // On the server's node, root and (where the kernel driver places it in the host's
    // namespace) an unprivileged client.
    assert_eq!(a.run_ok(&["--ip", "198.18.7.2", "--", PY, "-c", &client("198.18.7.1")]).trim(), "ok");
    let want = shown(a, "198.18.7.2", &a_ip);
    assert_eq!(next_peer(a, 0), format!("peer {want} {want}"));
    assert_eq!(
        a.run_ok(&["--ip", "198.18.7.3", "--user", "nobody", "--", PY, "-c", &client("198.18.7.1")]).trim(),
        "ok"
    );
    let want = shown(a, "198.18.7.3", &a_ip);
    assert_eq!(next_peer(a, 1), format!("peer {want} {want}"));

    // Across nodes, by name.
    assert_eq!(b.run_ok(&["--ip", "198.18.7.4", "--", PY, "-c", &client("198.18.7.1")]).trim(), "ok");
    let want = shown(a, "198.18.7.4", &b_ip);
    assert_eq!(next_peer(a, 2), format!("peer {want} {want}"));

    // A client not under ax, on the other node, straight to the server's host port: itself.
    let host_port = b.servers_at("198.18.7.1:7000")[0]["ipv4_addr"].as_str().unwrap().to_string();
    let (host, port) = host_port.rsplit_once(':').unwrap();
    let plain = format!("import socket\ns = socket.create_connection(('{host}', {port}))\nprint(s.recv(2).decode())");
    assert_eq!(b.stdout_of(PY, &["-c", &plain]).trim(), "ok");
    assert_eq!(next_peer(a, 3), format!("peer {b_ip} {b_ip}"));
}

/// The attack: a host outside the cluster whose SYNs carry the option (here a node of
/// another cluster that wrongly counts this one as a member) claims a virtual address.
/// A port open to all (`--expose`) takes its connection, and shows it as itself.
#[test]
fn a_host_outside_the_cluster_cannot_claim_a_virtual_address() {
    support::require_root_and(&[PY]);
    let mut c = Cluster::new(2);
    let (a_ip, b_ip) = (Cluster::ip(0), Cluster::ip(1));
    c.hosts[0].start_daemon(&["--node-name", "a", "--cluster", "c0"]);
    c.hosts[1].start_daemon(&["--node-name", "b", "--cluster", "c1"]);
    c.hosts[0].spawn_app("server", &["--ip", "198.18.7.1", "--expose", "7000:7000", "--", PY, "-c", SERVER]);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    a.wait_until("the server's row", Duration::from_secs(30), || a.servers_at("198.18.7.1:7000").len() == 1);
    let add = format!("{}/tests/support/add_member.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(PY).args([&add, &b.daemon_pid().to_string(), &a_ip]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The claim is made (b's client writes the option), and not believed.
    assert_eq!(b.run_ok(&["--ip", "198.18.7.9", "--", PY, "-c", &client(&a_ip)]).trim(), "ok");
    assert_eq!(next_peer(a, 0), format!("peer {b_ip} {b_ip}"));
    // A member's claim through the same port is believed (kernel driver): the
    // refusal above is the member check's, not a missing option.
    assert_eq!(a.run_ok(&["--ip", "198.18.7.2", "--", PY, "-c", &client(&a_ip)]).trim(), "ok");
    let want = shown(a, "198.18.7.2", &a_ip);
    assert_eq!(next_peer(a, 1), format!("peer {want} {want}"));
}
