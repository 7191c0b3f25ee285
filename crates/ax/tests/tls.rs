//! End-to-end tests of `--tls`, as root: the checks at start, a cluster of daemons
//! holding certificates from one CA, and what is never heard: a daemon with another
//! CA's certificate, a gossiper with no certificate at all.

mod support;

use std::path::Path;

use std::time::Duration;

use support::{Cluster, TestHost};

const PY: &str = "/usr/bin/python3";

/// `--tls` with the files of `name` from `pki`.
fn tls_args(pki: &ax_tls::TestPki, name: &str) -> Vec<String> {
    let f = pki.files(name);
    let s = |p: &Path| p.display().to_string();
    vec![
        "--tls".into(),
        "--tls-ca-cert".into(),
        s(&f.ca),
        "--tls-cert".into(),
        s(&f.cert),
        "--tls-key".into(),
        s(&f.key),
    ]
}

fn nodes_seen(h: &TestHost) -> Vec<String> {
    let mut names: Vec<String> =
        h.get("nodes").iter().filter(|n| n["live"] == true).map(|n| n["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

#[test]
fn bad_tls_files_stop_the_daemon_with_the_file_named() {
    support::require_root_and(&[]);
    let mut h = TestHost::new();
    let pki = ax_tls::write_test_pki(&h.dir.join("pki"), &["n1".into(), "n2".into()]).unwrap();
    let other = ax_tls::write_test_pki(&h.dir.join("other"), &["n1".into()]).unwrap();
    let old = pki.issue("old", -1).unwrap();
    let daemon = |name: &str, files: &ax_tls::Files| {
        let s = |p: &Path| p.display().to_string();
        h.ax()
            .args(["daemon", "--node-interface", "ax0", "--node-name", name, "--tls"])
            .args(["--tls-ca-cert", &s(&files.ca), "--tls-cert", &s(&files.cert), "--tls-key", &s(&files.key)])
            .output()
            .unwrap()
    };
    let n1 = pki.files("n1");
    let missing = ax_tls::Files { cert: h.dir.join("pki/nope.pem"), ..n1.clone() };
    support::fails_with(daemon("n1", &missing), "nope.pem: No such file");
    support::fails_with(daemon("n1", &ax_tls::Files { ca: other.ca_file(), ..n1.clone() }), "not signed by the CA");
    support::fails_with(daemon("old", &old), "old.pem cannot be used: it has expired");
    support::fails_with(
        daemon("n1", &ax_tls::Files { key: pki.files("n2").key, ..n1.clone() }),
        "n2.key does not belong",
    );
    support::fails_with(daemon("n3", &n1), "does not name this node 'n3'");
    // Relative paths are taken from the daemon's current directory.
    let relative = format!(
        "cd {} && {} daemon --node-interface ax0 --node-name n1 --tls --tls-ca-cert ca.pem --tls-cert n1.pem --tls-key missing.key",
        h.dir.join("pki").display(),
        support::ax_bin()
    );
    let out = h.cmd("sh").args(["-c", &relative]).output().unwrap();
    support::fails_with(out, &format!("{}", h.dir.join("pki/missing.key").display()));
    // Without --tls the daemon says once that the cluster is unauthenticated.
    h.start_daemon(&[]);
    assert_eq!(h.daemon_log().matches("the cluster is unauthenticated").count(), 1, "{}", h.daemon_log());
    h.stop_daemon();
    let mut args = tls_args(&pki, "n1");
    args.extend(["--node-name".into(), "n1".into()]);
    h.start_daemon(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The log is appended to: the warning is still the first daemon's alone.
    assert_eq!(h.daemon_log().matches("the cluster is unauthenticated").count(), 1);
    assert!(h.daemon_log().contains("mutually authenticated"));
}

#[test]
fn a_tls_cluster_serves_across_nodes_and_a_foreign_ca_never_joins() {
    support::require_root_and(&[PY, "curl"]);
    let mut c = Cluster::new(4);
    let all = (0..4).map(Cluster::ip).collect::<Vec<_>>().join(",");
    let pki = ax_tls::write_test_pki(&c.hosts[0].dir.join("pki"), &["a".into(), "b".into(), "c".into()]).unwrap();
    let foreign = ax_tls::write_test_pki(&c.hosts[3].dir.join("pki"), &["d".into()]).unwrap();
    for (i, h) in c.hosts.iter_mut().enumerate() {
        let name = ["a", "b", "c", "d"][i];
        let mut args = tls_args(if i == 3 { &foreign } else { &pki }, name);
        args.extend(["--node-name".into(), name.into(), "--neighbors".into(), all.clone()]);
        h.start_daemon(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for h in &c.hosts[..3] {
        h.wait_until("a, b and c live", Duration::from_secs(30), || nodes_seen(h) == ["a", "b", "c"]);
    }
    // Across nodes by address and name.
    let root = c.hosts[0].web_root("web", "who", "web");
    c.hosts[0].spawn_app(
        "web",
        &["--name", "web", "--ip", "198.18.30.1", "--", PY, "-m", "http.server", "8000", "--directory", &root],
    );
    let b = &c.hosts[1];
    b.wait_until("a's row on b", Duration::from_secs(30), || b.servers_at("198.18.30.1:8000").len() == 1);
    assert_eq!(b.run_ok(&["--", "curl", "-sf", "http://web:8000/who"]), "web");
    // A vservice made on b serves on c; deleted on c, gone on a.
    let out = b
        .ax()
        .args(["create", "vservice", "front", "--ip", "198.18.30.9", "--ports", "80:8000", "--backends", "198.18.30.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cn = &c.hosts[2];
    cn.wait_until("the vservice on c", Duration::from_secs(30), || cn.get("vservices").len() == 1);
    cn.wait_until("web's row on c", Duration::from_secs(30), || cn.servers_at("198.18.30.1:8000").len() == 1);
    assert_eq!(cn.run_ok(&["--", "curl", "-sf", "http://front/who"]), "web");
    assert!(cn.ax().args(["delete", "vservice", "front"]).output().unwrap().status.success());
    let a = &c.hosts[0];
    a.wait_until("the vservice gone from a", Duration::from_secs(30), || a.get("vservices").is_empty());
    // d holds a certificate of another CA: nobody hears it, it hears nobody.
    for h in &c.hosts[..3] {
        assert_eq!(nodes_seen(h), ["a", "b", "c"]);
        assert!(h.get("nodes").iter().all(|n| n["name"] != "d"), "d is not even known as dead");
    }
    assert_eq!(nodes_seen(&c.hosts[3]), ["d"]);
    assert!(c.hosts[3].servers_at("198.18.30.1:8000").is_empty());
}

/// The rogue gossiper (`crates/cluster/examples/rogue.rs`), copied where any user may
/// run it.
fn rogue(h: &TestHost) -> String {
    let built = Path::new(support::ax_bin()).parent().unwrap().join("examples/rogue");
    assert!(
        built.exists(),
        "{} is missing: `cargo test --workspace` builds it (or: cargo build -p ax-cluster --example rogue)",
        built.display()
    );
    let to = h.dir.join("rogue");
    if !to.exists() {
        std::fs::copy(&built, &to).unwrap();
    }
    to.display().to_string()
}

/// What a rogue publishes: node name `name`, a row for a virtual address served at b's
/// host, and a vservice whose only backend is the node's own REST port, at version
/// 2^64-1.
fn rogue_flags(listen: &str, name: &str) -> Vec<String> {
    let mut f = vec!["--listen".to_string(), listen.to_string()];
    for i in 0..2 {
        f.extend(["--seed".to_string(), format!("{}:7946", Cluster::ip(i))]);
    }
    f.extend(["--name", name, "--row", "198.18.31.1:80=10.251.0.12:8000", "--vservice", "admin"].map(String::from));
    f
}

/// The rogue as an app of `h`, as nobody, claiming a's name (it cannot have the gossip
/// port): its log is `rogue-app`.
fn rogue_app(h: &mut TestHost) {
    let mut args = vec!["--user".to_string(), "nobody".into(), "--".into(), rogue(h)];
    args.extend(rogue_flags("0.0.0.0:17946", "a"));
    h.spawn_app("rogue-app", &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The rogue on host `h`, not under ax, gossiping from `ip`'s gossip port as `name`.
fn rogue_host(h: &mut TestHost, what: &str, ip: &str, name: &str) {
    let mut cmd = h.cmd(&rogue(h));
    cmd.args(rogue_flags(&format!("{ip}:7946"), name));
    h.spawn_plain(what, cmd);
}

/// Waits for the rogue to start gossiping, then for its sixth report of whom it sees;
/// returns the last. Each wait has its own deadline: the start (`ax run`, a debug binary
/// paged in) is what a loaded machine slows most, and is not part of the six seconds
/// the rogue is given to be heard. A rogue that could not start fails here with its
/// reason, not after a timeout.
fn rogue_sees(h: &TestHost, what: &str) -> String {
    let log = || h.app_log(what);
    h.wait_until("the rogue to start", Duration::from_secs(30), || log().lines().any(|l| l.starts_with("rogue: ")));
    assert!(log().contains("rogue: gossiping\n"), "the rogue did not start:\n{}", log());
    h.wait_until("the rogue's reports", Duration::from_secs(30), || log().matches("rogue: live").count() >= 6);
    log().lines().rfind(|l| l.starts_with("rogue: live")).unwrap().to_string()
}

/// Nothing the rogue published is anywhere: no node but the members, no row, no vservice.
fn nothing_of_the_rogue(c: &Cluster, members: &[&str]) {
    for h in &c.hosts[..2] {
        assert_eq!(nodes_seen(h), members);
        assert!(h.get("vservices").is_empty(), "{:?}", h.get("vservices"));
        assert!(h.servers_at("198.18.31.1:80").is_empty());
        assert!(h.get("nodes").iter().all(|n| n["ip"] != Cluster::ip(2)), "{:?}", h.get("nodes"));
    }
}

#[test]
fn a_rogue_gossiper_is_never_heard_by_a_tls_cluster_from_a_host_or_from_an_app() {
    support::require_root_and(&[]);
    let mut c = Cluster::new(3);
    let pki = ax_tls::write_test_pki(&c.hosts[0].dir.join("pki"), &["a".into(), "b".into()]).unwrap();
    for (i, h) in c.hosts[..2].iter_mut().enumerate() {
        let name = ["a", "b"][i];
        let mut args = tls_args(&pki, name);
        args.extend([
            "--node-name".into(),
            name.into(),
            "--neighbors".into(),
            format!("{},{}", Cluster::ip(0), Cluster::ip(1)),
        ]);
        h.start_daemon(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for h in &c.hosts[..2] {
        h.wait_until("a and b live", Duration::from_secs(30), || nodes_seen(h) == ["a", "b"]);
    }
    // From another host, on the gossip port itself.
    rogue_host(&mut c.hosts[2], "rogue", &Cluster::ip(2), "a");
    assert_eq!(rogue_sees(&c.hosts[2], "rogue"), "rogue: live", "nobody answers it");
    nothing_of_the_rogue(&c, &["a", "b"]);
    // From an app on a, as nobody.
    rogue_app(&mut c.hosts[0]);
    assert_eq!(rogue_sees(&c.hosts[0], "rogue-app"), "rogue: live");
    nothing_of_the_rogue(&c, &["a", "b"]);
}

#[test]
fn without_tls_a_rogue_app_is_not_heard_and_a_rogue_host_speaks_only_for_itself() {
    support::require_root_and(&[PY, "curl"]);
    let mut c = Cluster::new(3);
    let both = format!("{},{}", Cluster::ip(0), Cluster::ip(1));
    c.hosts[0].start_daemon(&["--node-name", "a", "--neighbors", &both]);
    c.hosts[1].start_daemon(&["--node-name", "b", "--neighbors", &both]);
    for h in &c.hosts[..2] {
        h.wait_until("a and b live", Duration::from_secs(30), || nodes_seen(h) == ["a", "b"]);
    }
    let root = c.hosts[0].web_root("web", "who", "web");
    c.hosts[0].spawn_app("web", &["--ip", "198.18.31.5", "--", PY, "-m", "http.server", "8000", "--directory", &root]);
    let b = &c.hosts[1];
    b.wait_until("a's row on b", Duration::from_secs(30), || b.servers_at("198.18.31.5:8000").len() == 1);
    // An app cannot send from the gossip port (nor reach a node's): never heard.
    rogue_app(&mut c.hosts[0]);
    assert_eq!(rogue_sees(&c.hosts[0], "rogue-app"), "rogue: live");
    nothing_of_the_rogue(&c, &["a", "b"]);
    // Another host on the gossip port is heard (that needs --tls to refuse), but as what
    // it is: a's name stays a's, a row for b's host and a version 2^64-1 count nowhere.
    rogue_host(&mut c.hosts[2], "rogue", &Cluster::ip(2), "a");
    assert_eq!(rogue_sees(&c.hosts[2], "rogue"), "rogue: live a b", "the rogue hears the members");
    nothing_of_the_rogue(&c, &["a", "b"]);
    assert!(c.hosts[1].daemon_log().contains("the first holder keeps it"), "{}", c.hosts[1].daemon_log());
    // a's rows stay a's: the rogue's newer generation under a's name changes nothing.
    assert_eq!(c.hosts[1].servers_at("198.18.31.5:8000")[0]["node_id"], "a");
    assert_eq!(c.hosts[1].run_ok(&["--", "curl", "-sf", "http://198.18.31.5:8000/who"]), "web");
    // Under a name of its own it joins, with nothing it may not say of itself.
    let second = "10.251.0.14";
    let out = c.hosts[2].cmd("ip").args(["addr", "add", &format!("{second}/24"), "dev", "ax0"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    rogue_host(&mut c.hosts[2], "rogue-r", second, "r");
    for h in &c.hosts[..2] {
        h.wait_until("r joins", Duration::from_secs(30), || nodes_seen(h) == ["a", "b", "r"]);
        assert!(h.get("vservices").is_empty(), "{:?}", h.get("vservices"));
        assert!(h.servers_at("198.18.31.1:80").is_empty());
    }
    assert!(c.hosts[0].daemon_log().contains("records left out"), "{}", c.hosts[0].daemon_log());
}
