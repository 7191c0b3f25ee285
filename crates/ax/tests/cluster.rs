//! End-to-end tests of the cluster, as root: three test hosts joined by a bridge (no
//! route out), a daemon in each, gossiping.

mod support;

use std::time::{Duration, Instant};

use support::{Cluster, TestHost};

const PY: &str = "/usr/bin/python3";

/// Three hosts a, b, c, each daemon seeded with the others.
fn three() -> Cluster {
    support::require_root_and(&[PY, "curl"]);
    let mut c = Cluster::new(3);
    let all = (0..3).map(Cluster::ip).collect::<Vec<_>>().join(",");
    for (i, h) in c.hosts.iter_mut().enumerate() {
        h.start_daemon(&["--node-name", ["a", "b", "c"][i], "--neighbors", &all]);
    }
    c
}

fn nodes_seen(h: &TestHost) -> Vec<String> {
    h.get("nodes").iter().filter(|n| n["live"] == true).map(|n| n["name"].as_str().unwrap().to_string()).collect()
}

fn serve(h: &mut TestHost, name: &str, ip: &str, labels: &str) {
    let root = h.web_root(name, "who", name);
    h.spawn_app(
        name,
        &["--name", name, "--ip", ip, "--labels", labels, "--", PY, "-m", "http.server", "8000", "--directory", &root],
    );
}

#[test]
fn one_service_table_across_nodes_by_ip_and_by_name_with_labels() {
    let mut c = three();
    for h in &c.hosts {
        h.wait_until("three live nodes", Duration::from_secs(20), || nodes_seen(h).len() == 3);
    }
    serve(&mut c.hosts[0], "web", "198.18.3.1", "zone=default");
    serve(&mut c.hosts[0], "vault", "198.18.3.2", "role=prod");
    let t0 = Instant::now();
    let b = &c.hosts[1];
    b.wait_until("a's rows on b", Duration::from_secs(20), || b.servers_at("198.18.3.1:8000").len() == 1);
    eprintln!("a's row reached b {:?} after the app started", t0.elapsed());
    let row = &b.servers_at("198.18.3.1:8000")[0];
    assert_eq!(row["node_id"], "a");
    assert_eq!(row["ipv4_addr"].as_str().unwrap().split(':').next(), Some(Cluster::ip(0).as_str()));
    assert_eq!(b.run_ok(&["--", "curl", "-sf", "http://198.18.3.1:8000/who"]), "web");
    assert_eq!(b.run_ok(&["--", "curl", "-sf", "http://web:8000/who"]), "web");
    // c learns of the row on its own gossip round: wait for it there too.
    let cn = &c.hosts[2];
    cn.wait_until("a's rows on c", Duration::from_secs(20), || cn.servers_at("198.18.3.1:8000").len() == 1);
    assert_eq!(cn.run_ok(&["--", "curl", "-sf", "http://web.appswitch.local:8000/who"]), "web");
    // Labels hold across nodes, both ways.
    b.wait_until("vault's row on b", Duration::from_secs(20), || b.servers_at("198.18.3.2:8000").len() == 1);
    assert_eq!(b.run(&["--", "curl", "-sf", "http://198.18.3.2:8000/who"]).status.code(), Some(7));
    assert_eq!(b.run_ok(&["--labels", "role=prod", "--", "curl", "-sf", "http://vault:8000/who"]), "vault");
    let nodes = b.get("nodes");
    assert_eq!(nodes[0]["name"], "b", "this node first");
    assert_eq!(nodes.iter().find(|n| n["name"] == "a").unwrap()["app_count"], 2);
}

#[test]
fn a_dead_or_cut_off_node_leaves_and_comes_back() {
    let mut c = three();
    serve(&mut c.hosts[0], "web", "198.18.4.1", "zone=default");
    let b_sees = |c: &Cluster, n: usize| c.hosts[1].servers_at("198.18.4.1:8000").len() == n;
    c.hosts[1].wait_until("a's row on b", Duration::from_secs(20), || b_sees(&c, 1));
    // The wire cut: a's rows leave b's table, and come back when it is mended.
    c.set_link(0, false);
    let t0 = Instant::now();
    c.hosts[1].wait_until("a's row to leave b", Duration::from_secs(20), || b_sees(&c, 0));
    eprintln!("a cut-off node's row left in {:?}", t0.elapsed());
    c.set_link(0, true);
    c.hosts[1].wait_until("a's row back on b", Duration::from_secs(30), || b_sees(&c, 1));
    assert_eq!(c.hosts[1].run_ok(&["--", "curl", "-sf", "http://198.18.4.1:8000/who"]), "web");
    // kill -9 of a's daemon: gone from c; a daemon restarted there serves new apps.
    c.hosts[0].signal_daemon("KILL");
    let t0 = Instant::now();
    c.hosts[2]
        .wait_until("a to leave c", Duration::from_secs(20), || !nodes_seen(&c.hosts[2]).contains(&"a".to_string()));
    eprintln!("a killed node left in {:?}", t0.elapsed());
    let all = (0..3).map(Cluster::ip).collect::<Vec<_>>().join(",");
    c.hosts[0].start_daemon(&["--node-name", "a", "--neighbors", &all]);
    serve(&mut c.hosts[0], "again", "198.18.4.2", "zone=default");
    c.hosts[2].wait_until("a's new row on c", Duration::from_secs(20), || {
        c.hosts[2].servers_at("198.18.4.2:8000").len() == 1
    });
    // The app that ran all along is taken back by the restarted daemon: its row too.
    c.hosts[2].wait_until("a's old row back on c", Duration::from_secs(20), || {
        c.hosts[2].servers_at("198.18.4.1:8000").len() == 1
    });
    assert_eq!(c.hosts[2].run_ok(&["--", "curl", "-sf", "http://198.18.4.1:8000/who"]), "web");
}

#[test]
fn duplicate_names_and_foreign_clusters_are_refused() {
    support::require_root_and(&[]);
    let mut c = Cluster::new(3);
    let all = (0..3).map(Cluster::ip).collect::<Vec<_>>().join(",");
    c.hosts[0].start_daemon(&["--node-name", "a", "--neighbors", &all]);
    c.hosts[2].start_daemon(&["--node-name", "x", "--cluster", "other", "--neighbors", &all]);
    // b wants a's name: refused with the reason, not merged.
    let out = c.hosts[1]
        .ax()
        .args(["daemon", "--node-interface", "ax0", "--node-name", "a", "--neighbors", &all])
        .output()
        .unwrap();
    support::fails_with(out, "the node name 'a' is already used by the node at");
    // The foreign cluster's node never appears, on either side.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(nodes_seen(&c.hosts[0]), ["a"]);
    assert_eq!(nodes_seen(&c.hosts[2]), ["x"]);
    support::fails_with(
        c.hosts[1].ax().args(["daemon", "--neighbors", "10.0.0.300"]).output().unwrap(),
        "--neighbors: '10.0.0.300' is not an IPv4 address",
    );
    // A neighbor nobody answers for: the daemon starts and serves alone.
    c.hosts[1].start_daemon(&["--node-name", "lonely", "--cluster", "third", "--neighbors", "10.251.0.99"]);
    assert_eq!(nodes_seen(&c.hosts[1]), ["lonely"]);
}

#[test]
fn a_vservice_made_on_one_node_serves_on_all_and_a_delete_anywhere_removes_it() {
    let mut c = three();
    serve(&mut c.hosts[0], "web", "198.18.5.1", "zone=default");
    let out = c.hosts[0]
        .ax()
        .args([
            "create",
            "vservice",
            "front",
            "--ip",
            "198.18.5.9",
            "--ports",
            "80:8000",
            "--backends",
            "198.18.5.1",
            "--external",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for h in &c.hosts[1..] {
        h.wait_until("the vservice everywhere", Duration::from_secs(20), || h.get("vservices").len() == 1);
        h.wait_until("web's row everywhere", Duration::from_secs(20), || h.servers_at("198.18.5.1:8000").len() == 1);
    }
    assert_eq!(c.hosts[1].run_ok(&["--", "curl", "-sf", "http://198.18.5.9/who"]), "web");
    assert_eq!(c.hosts[2].run_ok(&["--", "curl", "-sf", "http://front/who"]), "web");
    // --external: every node answers plain clients on the virtual port, relaying to a.
    for (i, h) in c.hosts.iter().enumerate() {
        let url = format!("http://{}:80/who", Cluster::ip(i));
        h.wait_until("the relay", Duration::from_secs(10), || !h.get("proxies").is_empty());
        let out = h.cmd("curl").args(["-sf", "--max-time", "5", &url]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "web", "node {i}: {out:?}");
    }
    // Deleted on c: gone on a and b too.
    let out = c.hosts[2].ax().args(["delete", "vservice", "front"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for h in &c.hosts {
        h.wait_until("the vservice gone", Duration::from_secs(20), || {
            h.get("vservices").is_empty() && h.get("proxies").is_empty()
        });
    }
    assert_eq!(c.hosts[1].run(&["--", "curl", "-sf", "http://198.18.5.9/who"]).status.code(), Some(7));
}

#[test]
fn expose_on_every_node_or_on_one_named_node() {
    let mut c = three();
    for h in &c.hosts {
        h.wait_until("three live nodes", Duration::from_secs(20), || nodes_seen(h).len() == 3);
    }
    let b_ip = Cluster::ip(1);
    for (name, port, spec) in
        [("everywhere", "8000", "8000:0.0.0.0:9990".to_string()), ("onb", "8001", format!("8001:{b_ip}:9991"))]
    {
        let root = c.hosts[0].web_root(name, "who", name);
        c.hosts[0].spawn_app(name, &["--expose", &spec, "--", PY, "-m", "http.server", port, "--directory", &root]);
    }
    let plain = |h: &TestHost, i: usize, port: u16| {
        let out = h
            .cmd("curl")
            .args(["-sf", "--max-time", "3", &format!("http://{}:{port}/who", Cluster::ip(i))])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for i in 0..3 {
        let h = &c.hosts[i];
        h.wait_until("the exposed port", Duration::from_secs(20), || plain(h, i, 9990) == "everywhere");
    }
    let b = &c.hosts[1];
    b.wait_until("the port exposed on b", Duration::from_secs(20), || plain(b, 1, 9991) == "onb");
    assert_eq!(plain(&c.hosts[0], 0, 9991), "", "only on b");
    assert_eq!(plain(&c.hosts[2], 2, 9991), "", "only on b");
    // Relays only where the app is not: two on b, one on c, none on a.
    assert_eq!(c.hosts[0].get("proxies").len(), 0);
    assert_eq!(b.get("proxies").len(), 2);
    assert_eq!(c.hosts[2].get("proxies").len(), 1);
    // Naming a node that is not in the cluster is refused.
    support::fails_with(
        c.hosts[0].run(&["--expose", "8000:10.251.0.99:9000", "--", "true"]),
        "not the address of a live node",
    );
}

#[test]
fn egress_through_a_gateway_is_transparent_to_the_client() {
    support::require_root_and(&[PY, "curl"]);
    // b (host 1) is a plain test host on the wire (no daemon): a server outside the cluster.
    let c = Cluster::with_egress_gateway(&[]);
    let a = &c.hosts[0];
    let url = format!("http://{}:9300/who", Cluster::ip(1));
    a.wait_until("the outside server", Duration::from_secs(10), || {
        a.run(&["--", "curl", "-sf", &url]).status.success()
    });
    assert_eq!(a.run_ok(&["--", "curl", "-sf", &url]), "outside");
    // The destination saw the gateway; the client saw the destination.
    let log = c.hosts[1].app_log("outside");
    assert!(log.lines().filter(|l| l.contains("GET /who")).all(|l| l.starts_with(&Cluster::ip(2))), "{log}");
    let script =
        format!("import socket\nc=socket.create_connection(('{}',9300))\nprint(c.getpeername())", Cluster::ip(1));
    assert_eq!(a.run_ok(&["--", PY, "-c", &script]).trim(), format!("('{}', 9300)", Cluster::ip(1)));
    // A refused destination is refused to the client too.
    let refused = format!("http://{}:9399/", Cluster::ip(1));
    assert_eq!(a.run(&["--", "curl", "-s", &refused]).status.code(), Some(a.curl_refused_by_egress_destination()));
    // The gateway is no open proxy: b, on the wire but no member, gets no connection.
    let probe = format!(
        "import socket\ntry:\n socket.create_connection(('{}', 6661), 3)\n print('connected')\nexcept OSError as e:\n print(e)",
        Cluster::ip(2)
    );
    let out = c.hosts[1].cmd(PY).args(["-c", &probe]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "timed out", "the gateway answered a non-member");
}

#[test]
fn auto_discovery_finds_the_subnets_nodes_without_a_list() {
    support::require_root_and(&[]);
    let mut c = Cluster::new(3);
    for (i, h) in c.hosts.iter_mut().enumerate() {
        h.start_daemon(&["--node-name", ["a", "b", "c"][i], "--gossip-auto-discover"]);
    }
    for h in &c.hosts {
        h.wait_until("every node found", Duration::from_secs(30), || nodes_seen(h).len() == 3);
    }
}
