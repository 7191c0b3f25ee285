//! End-to-end tests of what a server under ax sees of its clients (issue 13, part 1),
//! as root: a client app's virtual address on one node and across nodes (`--tls` or
//! not), a client not under ax as itself (through a relay too), with a plain socket
//! server, PostgreSQL's pg_hba.conf, nginx, Java, and a UDP server (recvfrom, recvmsg).
//!
//! Under the kernel driver, a client app's SYN names its virtual address (a relay's, its
//! client's) and the server's accept and getpeername show it; a datagram from an app's
//! socket on the server's node shows that app. Under the user driver, nothing carries
//! it, and a server sees the client's node address (README, "Client addresses").

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Cluster, TestHost, NODE_IP};

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

/// `n` nodes, each daemon seeded with all (`tls`: under `--tls`, with certificates of
/// one CA), all live.
fn nodes(n: usize, tls: bool) -> Cluster {
    support::require_root_and(&[PY]);
    let mut c = Cluster::new(n);
    let all = (0..n).map(Cluster::ip).collect::<Vec<_>>().join(",");
    let names: Vec<String> = (0..n).map(|i| ((b'a' + i as u8) as char).to_string()).collect();
    let pki = ax_tls::write_test_pki(&c.hosts[0].dir.join("pki"), &names).unwrap();
    for (h, name) in c.hosts.iter_mut().zip(&names) {
        let f = pki.files(name);
        let s = |p: &std::path::Path| p.display().to_string();
        let (ca, cert, key) = (s(&f.ca), s(&f.cert), s(&f.key));
        let mut args = vec!["--node-name", name, "--neighbors", &all];
        if tls {
            args.extend(["--tls", "--tls-ca-cert", &ca, "--tls-cert", &cert, "--tls-key", &key]);
        }
        h.start_daemon(&args);
    }
    for h in &c.hosts {
        h.wait_until("every node live", Duration::from_secs(60), || {
            h.get("nodes").iter().filter(|n| n["live"] == true).count() == n
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
    let mut c = nodes(2, false);
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

/// The directory of PostgreSQL's server programs (Debian's postgresql package).
fn postgres_bin() -> String {
    let versions = std::fs::read_dir("/usr/lib/postgresql").expect("postgresql is not installed (.ci/run installs it)");
    let mut bins: Vec<_> =
        versions.flatten().map(|v| v.path().join("bin")).filter(|b| b.join("postgres").exists()).collect();
    bins.sort();
    bins.pop().expect("no PostgreSQL server under /usr/lib/postgresql").to_string_lossy().into_owned()
}

/// PostgreSQL under ax, run as its own user, with a pg_hba.conf that lets in one
/// client address only: that client app's `--ip`, as an operator writes it.
#[test]
fn postgres_lets_in_the_client_its_pg_hba_names_and_no_other() {
    support::require_root_and(&["psql", "runuser"]);
    let bin = postgres_bin();
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let data = h.dir.join("pg");
    std::fs::create_dir_all(&data).unwrap();
    let data = data.to_string_lossy().into_owned();
    for cmd in [vec!["chmod", "755", h.dir.to_str().unwrap()], vec!["chown", "postgres:", &data]] {
        assert!(Command::new(cmd[0]).args(&cmd[1..]).status().unwrap().success());
    }
    let initdb =
        h.cmd("runuser").args(["-u", "postgres", "--", &format!("{bin}/initdb"), "-D", &data]).output().unwrap();
    assert!(initdb.status.success(), "{}", String::from_utf8_lossy(&initdb.stderr));
    std::fs::write(format!("{data}/pg_hba.conf"), "host all all 198.18.8.2/32 trust\n").unwrap();
    let postgres = format!("{bin}/postgres");
    let settings = ["-c", "listen_addresses=*", "-c", "unix_socket_directories=", "-c", "log_connections=on"];
    let mut args = vec!["--ip", "198.18.8.1", "--user", "postgres", "--", &postgres, "-D", &data];
    args.extend(settings);
    h.spawn_app("postgres", &args);
    h.wait_until("postgres's row", Duration::from_secs(60), || !h.servers_at("198.18.8.1:5432").is_empty());

    let ask = |ip: &str| {
        h.run(&["--ip", ip, "--", "psql", "-h", "198.18.8.1", "-U", "postgres", "-Atc", "select inet_client_addr()"])
    };
    let named = ask("198.18.8.2");
    let other = ask("198.18.8.3");
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    if h.daemon_driver() == "kernel" {
        assert!(named.status.success(), "{}", err(&named));
        assert_eq!(String::from_utf8_lossy(&named.stdout).trim(), "198.18.8.2");
        assert!(err(&other).contains("no pg_hba.conf entry for host \"198.18.8.3\""), "{}", err(&other));
    } else {
        // The user driver: the server sees the node's address, which pg_hba.conf does not name.
        for out in [&named, &other] {
            assert!(err(out).contains(&format!("no pg_hba.conf entry for host \"{NODE_IP}\"")), "{}", err(out));
        }
    }
}

/// nginx's `$remote_addr` (its access log) is the client app's address.
#[test]
fn nginx_logs_the_client_apps_address() {
    support::require_root_and(&["nginx", "curl"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let root = h.web_root("www", "who", "nginx");
    let conf = h.dir.join("nginx.conf");
    let log = h.dir.join("access.log");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\n\
             http {{ log_format who '$remote_addr'; access_log {log} who; \
             server {{ listen 8080; root {root}; }} }}\n",
            dir = h.dir.display(),
            log = log.display()
        ),
    )
    .unwrap();
    h.spawn_app("nginx", &["--ip", "198.18.9.1", "--", "nginx", "-c", conf.to_str().unwrap()]);
    h.wait_until("nginx's row", Duration::from_secs(30), || !h.servers_at("198.18.9.1:8080").is_empty());
    assert_eq!(h.run_ok(&["--ip", "198.18.9.2", "--", "curl", "-sf", "http://198.18.9.1:8080/who"]), "nginx");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    h.wait_until("nginx's access log line", Duration::from_secs(30), || !logged().is_empty());
    assert_eq!(logged().trim(), shown(&h, "198.18.9.2", NODE_IP));
}

/// A Java server (the JDK's HttpServer) prints `getRemoteAddress()` per exchange.
const JAVA_SERVER: &str = "
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;

public class Who {
    public static void main(String[] args) throws Exception {
        HttpServer s = HttpServer.create(new InetSocketAddress(8000), 64);
        s.createContext(\"/\", x -> {
            System.out.println(\"peer \" + x.getRemoteAddress().getAddress().getHostAddress());
            byte[] body = \"java\".getBytes();
            x.sendResponseHeaders(200, body.length);
            x.getResponseBody().write(body);
            x.close();
        });
        s.start();
        System.out.println(\"listening\");
    }
}
";

#[test]
fn a_java_server_sees_the_client_apps_address() {
    support::require_root_and(&["java", "curl"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let src = h.dir.join("Who.java");
    std::fs::write(&src, JAVA_SERVER).unwrap();
    h.spawn_app("server", &["--ip", "198.18.9.5", "--", "java", src.to_str().unwrap()]);
    h.wait_until("the java server's row", Duration::from_secs(60), || !h.servers_at("198.18.9.5:8000").is_empty());
    assert_eq!(h.run_ok(&["--ip", "198.18.9.6", "--", "curl", "-sf", "http://198.18.9.5:8000/"]), "java");
    assert_eq!(next_peer(&h, 0), format!("peer {}", shown(&h, "198.18.9.6", NODE_IP)));
}

/// A UDP server on 0.0.0.0:7001 printing, for each datagram, "from <recvfrom's address>
/// <recvmsg's address>" (one datagram read with each, in turn), and echoing the
/// datagram back to the address recvfrom or recvmsg showed.
const UDP_SERVER: &str = "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 7001))
n = 0
while True:
    if n % 2 == 0:
        data, a = s.recvfrom(512)
    else:
        data, _, _, a = s.recvmsg(512)
    n += 1
    print('from', a[0], a[1], data.decode(), flush=True)
    s.sendto(data, a)
";

/// A UDP client sending `word` to `dest`:7001 from an unbound socket (`reuse`: with
/// SO_REUSEADDR set first) and printing "<its own port> <the echo>".
fn udp_client(dest: &str, word: &str, reuse: bool) -> String {
    let reuse = if reuse { "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n" } else { "" };
    format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n{reuse}s.settimeout(20)\n\
         s.sendto(b'{word}', ('{dest}', 7001))\nprint(s.getsockname()[1], s.recv(64).decode())"
    )
}

/// The server's line for the datagram `word`: "from <ip> <port>".
fn udp_from(h: &TestHost, word: &str) -> (String, String) {
    let line = || h.app_log("server").lines().find(|l| l.ends_with(&format!(" {word}"))).map(str::to_string);
    h.wait_until("the server's line for the datagram", Duration::from_secs(30), || line().is_some());
    let line = line().unwrap();
    let mut f = line.split_whitespace().skip(1);
    (f.next().unwrap().to_string(), f.next().unwrap().to_string())
}

#[test]
fn a_udp_server_sees_the_client_apps_address_and_its_replies_reach_the_client() {
    support::require_root_and(&[PY, "socat"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.spawn_app("server", &["--ip", "198.18.10.1", "--", PY, "-c", UDP_SERVER]);
    h.wait_until("the server's row", Duration::from_secs(30), || !h.servers_at("198.18.10.1:7001").is_empty());

    // Two datagrams: the server reads one with recvfrom, one with recvmsg; its echo
    // to the address shown comes back.
    for word in ["one", "two"] {
        let out = h.run_ok(&["--ip", "198.18.10.2", "--", PY, "-c", &udp_client("198.18.10.1", word, false)]);
        let (port, echo) = out.trim().split_once(' ').unwrap();
        assert_eq!(echo, word);
        assert_eq!(udp_from(&h, word), (shown(&h, "198.18.10.2", NODE_IP).to_string(), port.to_string()));
    }
    // socat, a program of its own, connected to the service (its datagram is sent on
    // a connected socket). It waits for more after the echo (UDP has no end), so it
    // runs in the background and its echo is waited for.
    let mut socat = h.cmd("sh");
    let ax = support::ax_bin();
    socat.arg("-c").arg(format!("echo three | {ax} run --ip 198.18.10.3 -- socat -t 120 - UDP:198.18.10.1:7001"));
    h.spawn_plain("socat", socat);
    h.wait_until("socat's echo", Duration::from_secs(60), || h.app_log("socat").contains("three"));
    assert_eq!(h.app_log("socat").trim(), "three");
    assert_eq!(udp_from(&h, "three").0, shown(&h, "198.18.10.3", NODE_IP));

    // A program not under ax on the node, to the server's host port: itself. (From a
    // port below the pool's: under the kernel driver a send to a pool port of the node
    // that no row holds is refused, the reply included.)
    let host_port = h.servers_at("198.18.10.1:7001")[0]["ipv4_addr"].as_str().unwrap().to_string();
    let (host, port) = host_port.rsplit_once(':').unwrap();
    let plain = udp_client(host, "four", false)
        .replace("7001", port)
        .replace("s.settimeout", "s.bind(('0.0.0.0', 31001))\ns.settimeout");
    let out = h.stdout_of(PY, &["-c", &plain]);
    let (port, echo) = out.trim().split_once(' ').unwrap();
    assert_eq!(echo, "four");
    assert_eq!(udp_from(&h, "four"), (NODE_IP.to_string(), port.to_string()));
}

/// The same through an IPv6 server socket (`::`, dual-stack): the app's address
/// v4-mapped, and the reply to it reaches the client.
#[test]
fn an_ipv6_udp_server_sees_the_client_apps_address_v4_mapped() {
    support::require_root_and(&[PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let server = UDP_SERVER.replace("AF_INET,", "AF_INET6,").replace("'0.0.0.0'", "'::'");
    h.spawn_app("server", &["--ip", "198.18.10.1", "--", PY, "-c", &server]);
    h.wait_until("the server's row", Duration::from_secs(30), || !h.servers_at("198.18.10.1:7001").is_empty());
    for word in ["one", "two"] {
        let out = h.run_ok(&["--ip", "198.18.10.2", "--", PY, "-c", &udp_client("198.18.10.1", word, false)]);
        let (port, echo) = out.trim().split_once(' ').unwrap();
        assert_eq!(echo, word);
        let want = format!("::ffff:{}", shown(&h, "198.18.10.2", NODE_IP));
        assert_eq!(udp_from(&h, word), (want, port.to_string()));
    }
}

/// The attack: a local user not under ax shares the port of an app's UDP socket (both
/// ask for SO_REUSEADDR, which the kernel then allows whoever binds) and sends from it.
/// The app's socket is the one the kernel finds at that port (it is connected to the
/// server), yet the datagram is not the app's: a socket that could share its port is
/// never believed, so the server sees the node's address, for the intruder and for
/// the app alike.
#[test]
fn a_local_user_sharing_an_apps_udp_port_is_not_seen_as_that_app() {
    support::require_root_and(&[PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.spawn_app("server", &["--ip", "198.18.10.1", "--", PY, "-c", UDP_SERVER]);
    h.wait_until("the server's row", Duration::from_secs(30), || !h.servers_at("198.18.10.1:7001").is_empty());
    let victim = "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.connect(('198.18.10.1', 7001))\n\
                  s.send(b'victim')\nprint('port', s.getsockname()[1], flush=True)\nsys.stdin.read()";
    h.spawn_app("victim", &["--ip", "198.18.10.5", "--", PY, "-c", victim]);
    let port = h.wait_for_line("victim", "port ");
    let port = port.trim().strip_prefix("port ").unwrap();

    let host_port = h.servers_at("198.18.10.1:7001")[0]["ipv4_addr"].as_str().unwrap().to_string();
    let (host, to) = host_port.rsplit_once(':').unwrap();
    let intruder = format!(
        "import os, socket\nos.setgid(65534)\nos.setuid(65534)\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', {port}))\n\
         s.sendto(b'intruder', ('{host}', {to}))\nprint('sent')"
    );
    assert_eq!(h.stdout_of(PY, &["-c", &intruder]).trim(), "sent");
    assert_eq!(udp_from(&h, "intruder"), (NODE_IP.to_string(), port.to_string()));
    assert_eq!(udp_from(&h, "victim"), (NODE_IP.to_string(), port.to_string()));
}

/// Under `--tls` too, a connection between apps on two nodes is the client app's own
/// socket connected to the server's host address (the tunnel carries relays and
/// egress, not these): its SYN names the client app, and the server sees it.
#[test]
fn under_tls_a_server_sees_a_client_app_on_another_node() {
    let mut c = nodes(2, true);
    c.hosts[0].spawn_app("server", &["--ip", "198.18.7.1", "--", PY, "-c", SERVER]);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    b.wait_until("the server's row on b", Duration::from_secs(30), || b.servers_at("198.18.7.1:7000").len() == 1);
    assert_eq!(b.run_ok(&["--ip", "198.18.7.4", "--", PY, "-c", &client("198.18.7.1")]).trim(), "ok");
    let b_ip = Cluster::ip(1);
    let want = shown(a, "198.18.7.4", &b_ip);
    assert_eq!(next_peer(a, 0), format!("peer {want} {want}"));
}

/// A relay carries a client's connection on (an `--external` vservice port on node b,
/// its backend on node a; under `--tls` through a's tunnel, else dialled from b): the
/// server sees the client, a host not under ax on node c, as itself, and a client app
/// on c as that app (kernel driver), not the node that dialled.
fn a_relayed_client_is_seen_as_itself(tls: bool) {
    let mut c = nodes(3, tls);
    c.hosts[0].spawn_app("server", &["--ip", "198.18.7.1", "--", PY, "-c", SERVER]);
    let a = &c.hosts[0];
    a.wait_until("the server's row", Duration::from_secs(30), || a.servers_at("198.18.7.1:7000").len() == 1);
    let front = ["create", "vservice", "front", "--ip", "198.18.7.9", "--ports", "7000:7000"];
    let out = a.ax().args(front).args(["--backends", "198.18.7.1", "--external"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let (b, cn) = (&c.hosts[1], &c.hosts[2]);
    b.wait_until("the relay on b", Duration::from_secs(30), || {
        !b.get("proxies").is_empty() && b.servers_at("198.18.7.1:7000").len() == 1
    });
    let (a_ip, b_ip, c_ip) = (Cluster::ip(0), Cluster::ip(1), Cluster::ip(2));
    let plain = format!("import socket\ns = socket.create_connection(('{b_ip}', 7000))\nprint(s.recv(2).decode())");
    assert_eq!(cn.stdout_of(PY, &["-c", &plain]).trim(), "ok");
    let dialer = if tls { &a_ip } else { &b_ip };
    let want = shown(a, &c_ip, dialer);
    assert_eq!(next_peer(a, 0), format!("peer {want} {want}"));

    // The attack: a local user on b connects to the relay from 127.0.0.1, to be shown
    // to the server as its own host's loopback (which servers trust). It is shown the
    // node that dialled.
    let local = format!(
        "import os, socket\nos.setgid(65534)\nos.setuid(65534)\n\
         s = socket.create_connection(('{b_ip}', 7000), source_address=('127.0.0.1', 0))\nprint(s.recv(2).decode())"
    );
    assert_eq!(b.stdout_of(PY, &["-c", &local]).trim(), "ok");
    assert_eq!(next_peer(a, 1), format!("peer {dialer} {dialer}"));

    // A client app on c, to the relay by the node's address: its SYN names it, and the
    // relay carries the name on (under --tls in the tunnel's session).
    assert_eq!(cn.run_ok(&["--ip", "198.18.7.6", "--", PY, "-c", &client(&b_ip)]).trim(), "ok");
    let want = shown(a, "198.18.7.6", dialer);
    assert_eq!(next_peer(a, 2), format!("peer {want} {want}"));
}

#[test]
fn a_relayed_client_is_seen_as_itself_through_a_relay() {
    a_relayed_client_is_seen_as_itself(false);
}

#[test]
fn a_relayed_client_is_seen_as_itself_through_the_tls_tunnel() {
    a_relayed_client_is_seen_as_itself(true);
}
