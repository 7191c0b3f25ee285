//! End-to-end tests, as root, of what apps and vservices may not take: the daemon's own
//! ports on the node address (its DNS above all), privileged ports without
//! CAP_NET_BIND_SERVICE, vservice backends on loopback or the daemon, and rows' host
//! addresses without their labels; and DNS answers for hosts outside the cluster.

mod support;

use std::time::Duration;

use support::{TestHost, NODE_IP};

const PY: &str = "/usr/bin/python3";

/// Binds one socket (argv: udp|tcp, address, port) and prints `bound` or the errno's
/// name.
const BIND: &str = r#"
import errno, socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
try:
    s.bind((sys.argv[2], int(sys.argv[3])))
    print("bound")
except OSError as e:
    print(errno.errorcode[e.errno])
"#;

fn host() -> TestHost {
    support::require_root_and(&[PY, "curl", "dig", "getent"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h
}

/// What a bind of `proto` `addr`:`port` by an app run with `opts` comes to.
fn bind(h: &TestHost, opts: &[&str], proto: &str, addr: &str, port: u16) -> String {
    let port = port.to_string();
    let mut args = opts.to_vec();
    args.extend(["--", PY, "-c", BIND, proto, addr, &port]);
    h.run_ok(&args).trim().to_string()
}

#[test]
fn no_app_takes_the_daemons_dns_and_every_app_still_resolves_through_it() {
    let mut h = host();
    let root = h.web_root("web", "who", "web");
    h.spawn_app(
        "web",
        &["--name", "web", "--ip", "198.18.6.1", "--", PY, "-m", "http.server", "8000", "--directory", &root],
    );
    h.wait_for_rows("198.18.6.1:8000", 1);
    let nobody = ["--user", "nobody"];
    // An app without --ip has the node's address, where 53 is the daemon's.
    assert_eq!(bind(&h, &nobody, "udp", "0.0.0.0", 53), "EACCES", "a privileged port, to nobody");
    for proto in ["udp", "tcp"] {
        for port in [53, 6661, 6664, 7946] {
            assert_eq!(bind(&h, &[], proto, "0.0.0.0", port), "EADDRINUSE", "root, {proto} {port}");
        }
    }
    // Nothing was added, and names resolve through the daemon for every app.
    assert!(h.servers_at(&format!("{NODE_IP}:53")).is_empty());
    assert_eq!(h.run_ok(&["--", "getent", "hosts", "web"]).split_whitespace().next(), Some("198.18.6.1"));
    assert_eq!(h.run_ok(&["--user", "nobody", "--", "dig", "+short", "+time=5", "web"]).trim(), "198.18.6.1");
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://web:8000/who"]), "web");
    // Nor may an app be exposed on one of them.
    support::fails_with(
        h.run(&["--expose", "8000:6661", "--", "true"]),
        "--expose 8000:6661: host port 6661 is the ax daemon's own",
    );
    // An app on an address of its own binds 53 there like any port.
    assert_eq!(bind(&h, &["--ip", "198.18.6.53"], "udp", "0.0.0.0", 53), "bound");
}

#[test]
fn privileged_ports_need_the_capability_as_on_a_host() {
    let mut h = host();
    let nobody = ["--user", "nobody", "--ip", "198.18.6.80"];
    assert_eq!(bind(&h, &nobody, "tcp", "0.0.0.0", 80), "EACCES");
    assert_eq!(bind(&h, &nobody, "udp", "198.18.6.80", 1023), "EACCES");
    // Loopback binds are carried out by the daemon too: the same rule holds.
    assert_eq!(bind(&h, &nobody, "tcp", "127.0.0.1", 80), "EACCES");
    assert_eq!(bind(&h, &nobody, "tcp", "0.0.0.0", 8080), "bound");
    assert_eq!(bind(&h, &nobody, "tcp", "0.0.0.0", 0), "bound");
    // Root keeps CAP_NET_BIND_SERVICE: port 80 serves.
    let root = h.web_root("web", "who", "root");
    h.spawn_app("web", &["--ip", "198.18.6.80", "--", PY, "-m", "http.server", "80", "--directory", &root]);
    h.wait_for_rows("198.18.6.80:80", 1);
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://198.18.6.80/who"]), "root");
}

fn create(h: &TestHost, args: &[&str]) -> std::process::Output {
    h.ax().args(["create", "vservice"]).args(args).output().unwrap()
}

#[test]
fn vservices_reach_neither_the_daemon_nor_a_row_past_its_labels() {
    let mut h = host();
    let root = h.web_root("prod", "who", "prod");
    let prod =
        ["--ip", "198.18.7.1", "--labels", "role=prod", "--", PY, "-m", "http.server", "8000", "--directory", &root];
    h.spawn_app("prod", &prod);
    h.wait_for_rows("198.18.7.1:8000", 1);
    let pool_port = h.servers_at("198.18.7.1:8000")[0]["ipv4_addr"].as_str().unwrap().to_string();
    // The REST API and DNS, on loopback or the node: refused, opt-in or not.
    let rest = format!("{NODE_IP}:6664");
    for (backend, why) in [("127.0.0.1:6664", "is a loopback address"), (rest.as_str(), "is a port of the ax daemon")] {
        for opt_in in [&[][..], &["--allow-external-backends"][..]] {
            let mut args = vec!["api", "--ip", "198.18.7.9", "--ports", "80", "--backends", backend];
            args.extend(opt_in);
            support::fails_with(create(&h, &args), &format!("backend {backend} {why}"));
        }
    }
    // The prod row's host address, named as a backend: that row, with its labels.
    let out = create(&h, &["sneak", "--ip", "198.18.7.2", "--ports", "80", "--backends", &pool_port]);
    assert!(out.status.success(), "{out:?}");
    let test_client = ["--labels", "role=test", "--", "curl", "-s", "--max-time", "10", "http://198.18.7.2/who"];
    assert_eq!(h.run(&test_client).status.code(), Some(7), "refused: role=test shares no label with the row");
    assert_eq!(h.run_ok(&["--labels", "role=prod", "--", "curl", "-sf", "http://198.18.7.2/who"]), "prod");
    // A host outside the service table needs the opt-in: without it, it is never dialled.
    let out = create(&h, &["out", "--ip", "198.18.7.3", "--ports", "80", "--backends", "203.0.113.9:80"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(h.run(&["--", "curl", "-s", "--max-time", "10", "http://198.18.7.3/"]).status.code(), Some(7));
    assert!(h.daemon_log().contains("backend 203.0.113.9:80 is neither an app's address"), "{}", h.daemon_log());
    assert_eq!(h.get("vservices").len(), 2);
}

#[test]
fn dns_answers_no_host_outside_the_cluster() {
    let mut h = host();
    h.spawn_app("db", &["--name", "db", "--ip", "198.18.8.1", "--", "sleep", "600"]);
    h.wait_until("db", Duration::from_secs(10), || h.get("apps").len() == 1);
    // The peer host on the link is no member: no answer, over UDP or TCP.
    for tcp in [false, true] {
        let mut dig = h.peer_cmd("dig");
        dig.args([&format!("@{NODE_IP}"), "+time=2", "+tries=1", "db"]);
        if tcp {
            dig.arg("+tcp");
        }
        let out = dig.output().unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("198.18.8.1"), "{out:?}");
        assert!(!out.status.success(), "{out:?}");
    }
    h.wait_until("the drop logged", Duration::from_secs(20), || h.daemon_log().contains("was dropped"));
    // Apps are answered.
    assert_eq!(h.run_ok(&["--", "dig", "+short", "+time=5", "db"]).trim(), "198.18.8.1");
}
