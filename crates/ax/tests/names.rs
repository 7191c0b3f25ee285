//! End-to-end tests of names, DNS, the app's environment and UDP, as root, each in a
//! test host of its own.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::{TestHost, NODE_IP};

const PY: &str = "/usr/bin/python3";
const STUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/dns_stub.py");

fn host(programs: &[&str], daemon_args: &[&str]) -> TestHost {
    support::require_root_and(programs);
    let mut h = TestHost::new();
    h.start_daemon(daemon_args);
    h
}

fn app_ip(h: &TestHost, name: &str) -> String {
    let apps = h.get("apps");
    let a = apps.iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("no app named {name}: {apps:?}"));
    a["app_ip"].as_str().unwrap().to_string()
}

fn serve_named(h: &mut TestHost, log: &str, name: &str, port: u16, body: &str) {
    let dir = h.web_root(log, "who", body);
    h.spawn_app(log, &["--name", name, "--", PY, "-m", "http.server", &port.to_string(), "--directory", &dir]);
}

#[test]
fn names_resolve_bare_qualified_and_through_getent_and_wget() {
    let mut h = host(&[PY, "curl", "busybox"], &[]);
    serve_named(&mut h, "web", "web", 8000, "web here");
    h.wait_until("web's row", Duration::from_secs(10), || h.get("servers").len() == 1);
    let ip = app_ip(&h, "web");
    assert!(ip.starts_with("198.19."), "made-up address {ip}");
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://web:8000/who"]), "web here");
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://web.appswitch.local:8000/who"]), "web here");
    let getent = h.run_ok(&["--", "getent", "hosts", "web"]);
    assert_eq!(getent.split_whitespace().next(), Some(ip.as_str()), "{getent}");
    assert_eq!(h.run_ok(&["--", "busybox", "wget", "-q", "-O", "-", "http://web:8000/who"]), "web here");
    // The app sees ax's resolver; the host's file is as it was.
    let before = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let seen = h.run_ok(&["--", "cat", "/etc/resolv.conf"]);
    assert!(seen.contains(&format!("nameserver {NODE_IP}")) && seen.contains("search appswitch.local"), "{seen}");
    assert_eq!(std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(), before);
    let untouched = h.run_ok(&["--dns-override=false", "--", "cat", "/etc/resolv.conf"]);
    assert_eq!(untouched, before);
    // The name leaves with its app.
    h.stop_app("web");
    h.wait_until("web's name to go", Duration::from_secs(10), || {
        !h.run(&["--", "getent", "hosts", "web"]).status.success()
    });
}

#[test]
fn dig_gets_our_names_nxdomain_and_forwarded_names() {
    let mut h = TestHost::new();
    support::require_root_and(&[PY, "dig"]);
    let mut stub = h.cmd(PY);
    stub.args([STUB, "127.0.0.1", "5353", "203.0.113.7"]);
    h.spawn_plain("stub", stub);
    h.wait_until("the stub", Duration::from_secs(10), || h.app_log("stub").contains("ready"));
    h.start_daemon(&["--dns-servers", "127.0.0.1:5353"]);
    h.spawn_app("db", &["--name", "db", "--ip", "198.18.8.1", "--", "sleep", "60"]);
    h.wait_until("db", Duration::from_secs(10), || h.get("apps").len() == 1);
    let dig = |args: &[&str]| {
        let mut a = vec!["--", "dig", "+time=2", "+tries=1"];
        a.extend_from_slice(args);
        h.run_ok(&a)
    };
    assert_eq!(dig(&["+short", "db.appswitch.local"]).trim(), "198.18.8.1");
    assert_eq!(dig(&["+short", "db"]).trim(), "198.18.8.1");
    assert_eq!(dig(&["+short", "db.appswitch.local", "AAAA"]).trim(), "");
    assert!(dig(&["nope.appswitch.local"]).contains("status: NXDOMAIN"));
    assert_eq!(dig(&["+short", "ext.example"]).trim(), "203.0.113.7");
    assert_eq!(dig(&["+short", "+tcp", "ext.example"]).trim(), "203.0.113.7");
    assert_eq!(dig(&["+short", "+tcp", "db"]).trim(), "198.18.8.1");
}

#[test]
fn two_apps_sharing_a_name_both_get_connections() {
    let mut h = host(&[PY, "curl"], &[]);
    serve_named(&mut h, "one", "shared", 8000, "one");
    serve_named(&mut h, "two", "shared", 8000, "two");
    h.wait_until("both rows", Duration::from_secs(10), || h.get("servers").len() == 2);
    let seen = h.distinct_answers(&["--", "curl", "-sf", "http://shared:8000/who"], 2, 40);
    assert_eq!(seen, HashSet::from(["one".to_string(), "two".to_string()]));
}

#[test]
fn redis_cli_by_name() {
    let mut h = host(&["redis-server", "redis-cli"], &[]);
    h.spawn_app(
        "redis",
        &["--name", "cache", "--", "redis-server", "--port", "6379", "--protected-mode", "no", "--save", ""],
    );
    // 0.0.0.0 and a v6-only `::` (served in redis's own namespace): one row.
    h.wait_until("redis", Duration::from_secs(10), || h.get("servers").len() == 1);
    assert_eq!(h.run_ok(&["--", "redis-cli", "-h", "cache", "ping"]).trim(), "PONG");
}

#[test]
fn socat_udp_both_ways_with_virtual_sources() {
    let mut h = host(&["socat", PY], &[]);
    h.spawn_app("sink", &["--ip", "198.18.0.9", "--", "socat", "-u", "UDP-RECV:9000", "STDOUT"]);
    let echo = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',9001))\n\
        while True:\n  d,a=s.recvfrom(2048)\n  s.sendto(d.upper(),a)";
    h.spawn_app("echo", &["--ip", "198.18.0.10", "--", PY, "-c", echo]);
    h.wait_until("udp rows", Duration::from_secs(10), || {
        h.get("servers").iter().filter(|r| r["proto"] == "udp").count() == 2
    });
    let out = h
        .cmd("sh")
        .args(["-c", &format!("echo hi | {} run -- socat -u - UDP-SENDTO:198.18.0.9:9000", support::ax_bin())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    h.wait_until("the datagram", Duration::from_secs(5), || h.app_log("sink") == "hi\n");
    // socat only takes replies from the address it sent to: the virtual one.
    let out = h
        .cmd("sh")
        .args([
            "-c",
            &format!("echo hello | timeout 10 {} run -- socat -T2 - UDP-SENDTO:198.18.0.10:9001", support::ax_bin()),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");
    let client = "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nc.sendto(b'a',('198.18.0.10',9001))\nprint(c.recvfrom(9))\n\
        k=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nk.connect(('198.18.0.10',9001))\nk.send(b'b')\nprint(k.recv(9),k.getpeername())\n\
        m=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nm.sendmsg([b'c',b'd'],[],0,('198.18.0.10',9001))\nprint(m.recvmsg(9)[::3])";
    assert_eq!(
        h.run_ok(&["--", PY, "-c", client]),
        "(b'A', ('198.18.0.10', 9001))\nb'B' ('198.18.0.10', 9001)\n(b'CD', ('198.18.0.10', 9001))\n"
    );
}

#[test]
fn user_interface_and_callers_namespace() {
    let mut h = host(&["ip", "curl", PY], &[]);
    assert_eq!(h.run_ok(&["--user", "nobody", "--", "id", "-un"]).trim(), "nobody");
    assert_eq!(h.run_ok(&["--user", "65534", "--", "whoami"]).trim(), "nobody");
    assert_eq!(h.run_ok(&["--user", "nobody", "--", "sh", "-c", "echo $HOME"]).trim(), "/nonexistent");
    let addr = h.run_ok(&["--ip", "198.18.9.9", "--interface", "eth0", "--", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 198.18.9.9/32"), "{addr}");
    let link = h.run_ok(&["--interface", "eth0", "--", "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("UP"), "{link}");
    // --new-netns=false: the app stays in the caller's (a container's) namespace, and
    // is still virtualized.
    let root = h.web_root("c", "who", "served");
    h.spawn_app("srv", &["--ip", "198.18.9.10", "--", PY, "-m", "http.server", "80", "--directory", &root]);
    h.wait_for_rows("198.18.9.10:80", 1);
    let container = h.container();
    let out = h
        .ax_in_netns_of(container)
        .args(["run", "--new-netns=false", "--", "curl", "-sf", "http://198.18.9.10/who"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "served", "{out:?}");
    let links =
        h.ax_in_netns_of(container).args(["run", "--new-netns=false", "--", "ip", "-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains("lo:") && !links.contains("ax0"), "{links}");
    // In the daemon's own namespace, an inet socket the daemon does not make (SCTP,
    // MPTCP, raw) would be a host socket that no one rules: refused.
    let probe =
        "import socket\nfor t,p in ((1,132),(1,262),(3,1)):\n  try:\n    socket.socket(2,t,p);print('made')\n  \
        except OSError as e:print(e.errno)";
    assert_eq!(h.run_ok(&["--new-netns=false", "--", PY, "-c", probe]), "93\n93\n93\n");
}

#[test]
fn bad_names_users_servers_and_interfaces_start_nothing() {
    let mut h = host(&[], &[]);
    let fails = support::fails_with;
    fails(h.run(&["--name", "bad_name", "--", "true"]), "--name 'bad_name' is not a valid DNS label");
    fails(h.run(&["--user", "nosuchuser", "--", "true"]), "--user nosuchuser: no such user");
    fails(h.run(&["--interface", "eth0/1", "--", "true"]), "--interface 'eth0/1' is not a valid interface name");
    fails(
        h.run(&["--interface", "eth0", "--new-netns=false", "--", "true"]),
        "--interface needs the app's own network namespace",
    );
    assert!(h.get("apps").is_empty());
    fails(
        h.ax().args(["daemon", "--dns-servers", "1.2.3.4:99999"]).output().unwrap(),
        "--dns-servers: '1.2.3.4:99999' is not IP[:port]",
    );
    fails(
        h.ax().args(["daemon", "--dns-domain", "bad..domain"]).output().unwrap(),
        "--dns-domain 'bad..domain' is not a valid domain name",
    );
    // Without the DNS server there are no names.
    h.stop_daemon();
    h.start_daemon(&["--dns=false"]);
    fails(h.run(&["--name", "web", "--", "true"]), "--name needs the daemon's DNS server");
}
