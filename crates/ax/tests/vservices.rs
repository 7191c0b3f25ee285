//! End-to-end tests of vservices, --expose and relays, as root, each in a test host of
//! its own.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::{TestHost, NODE_IP};

const PY: &str = "/usr/bin/python3";

/// A test host with a daemon and python backends `b1`, `b2` on 198.18.1.1/.2:8000.
fn two_backends(labels: &str) -> TestHost {
    support::require_root_and(&[PY, "curl"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    for (name, ip) in [("b1", "198.18.1.1"), ("b2", "198.18.1.2")] {
        let root = h.web_root(name, "who", name);
        h.spawn_app(
            name,
            &["--ip", ip, "--labels", labels, "--", PY, "-m", "http.server", "8000", "--directory", &root],
        );
    }
    h.wait_for_rows("198.18.1.1:8000", 1);
    h.wait_for_rows("198.18.1.2:8000", 1);
    h
}

fn create(h: &TestHost, args: &[&str]) -> std::process::Output {
    h.ax().args(["create", "vservice"]).args(args).output().unwrap()
}

fn create_ok(h: &TestHost, args: &[&str]) {
    let out = create(h, args);
    assert!(out.status.success(), "{out:?}");
}

fn curl(h: &TestHost, url: &str) -> String {
    h.run_ok(&["--", "curl", "-sf", url])
}

#[test]
fn round_robin_alternates_strictly_and_random_reaches_every_backend() {
    let h = two_backends("zone=default");
    create_ok(
        &h,
        &[
            "web",
            "--ip",
            "198.18.2.1",
            "--ports",
            "80:8000",
            "--backends",
            "198.18.1.1,198.18.1.2",
            "--lbtype",
            "RoundRobin",
        ],
    );
    let answers: Vec<String> = (0..20).map(|_| curl(&h, "http://198.18.2.1/who")).collect();
    for pair in answers.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {answers:?}");
    }
    assert_eq!(answers.iter().collect::<HashSet<_>>().len(), 2);
    // The vservice's name resolves through ax's DNS.
    assert!(["b1", "b2"].contains(&curl(&h, "http://web/who").as_str()));
    create_ok(&h, &["rnd", "--ip", "198.18.2.2", "--ports", "80:8000", "--backends", "198.18.1.1,198.18.1.2"]);
    let seen = h.distinct_answers(&["--", "curl", "-sf", "http://198.18.2.2/who"], 2, 40);
    assert_eq!(seen, HashSet::from(["b1".to_string(), "b2".to_string()]));
    let rows = h.get("vservices");
    let web = rows.iter().find(|r| r["name"] == "web").unwrap();
    assert_eq!((web["type"].as_str(), web["ports"].as_str()), (Some("RoundRobin"), Some("80:8000")));
    assert_eq!(rows.iter().find(|r| r["name"] == "rnd").unwrap()["type"], "Random");
}

#[test]
fn external_backends_dead_backends_and_labels() {
    let mut h = two_backends("role=prod");
    // A plain server outside ax on the node address.
    let root = h.web_root("ext", "who", "outside");
    let mut c = h.cmd(PY);
    c.args(["-m", "http.server", "9100", "--bind", NODE_IP, "--directory", &root]);
    h.spawn_plain("ext", c);
    h.wait_until("the outside server", Duration::from_secs(10), || {
        h.cmd("curl").args(["-sf", &format!("http://{NODE_IP}:9100/who")]).output().is_ok_and(|o| o.status.success())
    });
    // Outside hosts are backends only with the opt-in: without it the vservice is made
    // (an app may take the address later) but never dials them. NODE_IP:9101 has nobody:
    // a dead backend, skipped.
    let backends = format!("{NODE_IP}:9101,{NODE_IP}:9100");
    let closed = ["closed", "--ip", "198.18.3.3", "--ports", "80", "--backends", &backends];
    create_ok(&h, &closed);
    assert_eq!(h.run(&["--", "curl", "-s", "http://198.18.3.3/who"]).status.code(), Some(7));
    assert!(h.daemon_log().contains(&format!("backend {NODE_IP}:9101 is neither an app's address")));
    let ext = ["ext", "--ip", "198.18.3.1", "--ports", "80", "--backends", &backends, "--lbtype", "RoundRobin"];
    create_ok(&h, &[&ext[..], &["--allow-external-backends"]].concat());
    if h.daemon_driver() == "kernel" {
        // The kernel driver does not try the next backend after a refusal: the strict
        // rotation lands on the dead one every other time.
        let codes: Vec<Option<i32>> =
            (0..6).map(|_| h.run(&["--", "curl", "-sf", "http://198.18.3.1/who"]).status.code()).collect();
        assert_eq!(codes.iter().filter(|c| **c == Some(0)).count(), 3, "{codes:?}");
        assert_eq!(codes.iter().filter(|c| **c == Some(7)).count(), 3, "{codes:?}");
    } else {
        for _ in 0..6 {
            assert_eq!(curl(&h, "http://198.18.3.1/who"), "outside");
        }
    }
    // Labels still hold for service-table backends.
    create_ok(&h, &["prod", "--ip", "198.18.3.2", "--ports", "80:8000", "--backends", "198.18.1.1"]);
    assert_eq!(h.run_ok(&["--labels", "role=prod", "--", "curl", "-sf", "http://198.18.3.2/who"]), "b1");
    assert_eq!(h.run(&["--", "curl", "-sf", "http://198.18.3.2/who"]).status.code(), Some(7));
}

#[test]
fn an_external_vservice_serves_plain_clients_through_a_relay_until_deleted() {
    let h = two_backends("zone=default");
    create_ok(
        &h,
        &["pub", "--ip", "198.18.4.1", "--ports", "8080:8000", "--backends", "198.18.1.1,198.18.1.2", "--external"],
    );
    let plain = |h: &TestHost| {
        h.cmd("curl").args(["-sf", "--max-time", "5", &format!("http://{NODE_IP}:8080/who")]).output().unwrap()
    };
    let out = plain(&h);
    assert!(out.status.success(), "{out:?}");
    assert!(["b1", "b2"].contains(&String::from_utf8_lossy(&out.stdout).as_ref()));
    // A large body crosses the relay whole (splice, both directions), from whichever
    // backend the (random) balancer picks: both have it.
    for b in ["b1", "b2"] {
        std::fs::write(h.dir.join(b).join("big"), vec![b'x'; 8 << 20]).unwrap();
    }
    let got = h
        .cmd("sh")
        .args(["-c", &format!("for i in 1 2 3 4; do curl -sf http://{NODE_IP}:8080/big | wc -c; done")])
        .output()
        .unwrap();
    let sizes = String::from_utf8_lossy(&got.stdout).lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(sizes, vec![(8 << 20).to_string(); 4], "{got:?}");
    let proxies = h.get("proxies");
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies[0]["listener"], format!("{NODE_IP}:8080"));
    assert_eq!(proxies[0]["dialers"], serde_json::json!(["198.18.1.1", "198.18.1.2"]));
    // Delete (by its alias): the relay, the address and the name go.
    let out = h.ax().args(["del", "vservice", "pub"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(h.get("proxies").is_empty());
    assert!(h.get("vservices").is_empty());
    assert!(!plain(&h).status.success());
    assert_eq!(h.run(&["--", "curl", "-sf", "http://198.18.4.1:8080/who"]).status.code(), Some(7));
    assert!(!h.run(&["--", "getent", "hosts", "pub"]).status.success());
}

#[test]
fn expose_in_all_three_forms_on_one_node() {
    support::require_root_and(&[PY, "curl"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    for (i, spec) in ["8000:9999", &format!("8001:{NODE_IP}:9998"), "8002:0.0.0.0:9997"].iter().enumerate() {
        let port = (8000 + i).to_string();
        let root = h.web_root(&port, "who", &port);
        h.spawn_app(&port, &["--expose", spec, "--", PY, "-m", "http.server", &port, "--directory", &root]);
    }
    for (port, host_port) in [(8000, 9999), (8001, 9998), (8002, 9997)] {
        h.wait_for_rows(&format!("{NODE_IP}:{port}"), 1);
        let row = &h.servers_at(&format!("{NODE_IP}:{port}"))[0];
        // No proxy: the app's own socket is on the host port.
        assert_eq!(row["ipv4_addr"], format!("{NODE_IP}:{host_port}"));
        let out = h.cmd("curl").args(["-sf", &format!("http://{NODE_IP}:{host_port}/who")]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), port.to_string());
    }
    assert!(h.get("proxies").is_empty());
    support::fails_with(
        h.run(&["--expose", "8000:10.9.9.9:9999", "--", "true"]),
        "10.9.9.9 is not the address of a live node of this cluster",
    );
    support::fails_with(h.run(&["--expose", "8000:45000", "--", "true"]), "host port 45000 is inside the --ports pool");
    support::fails_with(h.run(&["--expose", "8000", "--", "true"]), "--expose '8000' is not internal:host-port");
}

#[test]
fn bad_vservice_requests_change_nothing() {
    let h = two_backends("zone=default");
    create_ok(&h, &["web", "--ip", "198.18.2.1", "--ports", "80:8000", "--backends", "198.18.1.1"]);
    let before = h.get("vservices");
    let cases: [(&[&str], &str); 6] = [
        (
            &["web", "--ip", "198.18.2.9", "--ports", "80", "--backends", "198.18.1.1"],
            "a vservice named 'web' already exists",
        ),
        (
            &["w2", "--ip", "198.18.2.1", "--ports", "80", "--backends", "198.18.1.1"],
            "vservice 'web' already has the address 198.18.2.1",
        ),
        (&["w3", "--ip", "198.18.2.3", "--ports", "80:x", "--backends", "198.18.1.1"], "--ports: 'x' is not a port"),
        (
            &["w4", "--ip", "198.18.2.4", "--ports", "80", "--backends", "web"],
            "--backends: 'web' is not an IPv4 address or IP:port",
        ),
        (
            &["w5", "--ip", "198.18.2.5", "--ports", "80", "--backends", "198.18.1.1", "--lbtype", "LeastConn"],
            "--lbtype 'LeastConn' is not one of Random, RoundRobin",
        ),
        (
            &["w6", "--ip", "300.1.1.1", "--ports", "80", "--backends", "198.18.1.1"],
            "--ip 300.1.1.1 is not an IPv4 address",
        ),
    ];
    for (args, want) in cases {
        support::fails_with(create(&h, args), want);
    }
    support::fails_with(h.ax().args(["delete", "vservice", "nope"]).output().unwrap(), "no vservice named 'nope'");
    assert_eq!(h.get("vservices"), before);
    // The REST API names the field too, with a 4xx (changes go over the Unix socket).
    let out = h
        .cmd("curl")
        .args([
            "-s",
            "--unix-socket",
            ax_api::API_SOCKET,
            "-w",
            " %{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"name\":1}",
            "http://ax/v1/vservices",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with(" 400") && text.contains("name"), "{text}");
}
