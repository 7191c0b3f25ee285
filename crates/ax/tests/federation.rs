//! End-to-end tests of the federation, as root: two clusters on LANs of their own that
//! do not route to each other, one gateway each, the gateways joined by a WAN (or one
//! of them behind a NAT router); a daemon on every host. What one cluster serves becomes
//! known (names, nodes) in the other through both gateways, and is reached through
//! them (sessions between gateways).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Switch, TestHost};

const PY: &str = "/usr/bin/python3";

/// The manual's topology: cluster c0 = h00 (gateway; LAN 10.10.0.10, WAN 10.12.0.10)
/// and h01 (10.10.0.11); cluster c1 = h10 (gateway; LAN 10.11.0.10, WAN 10.12.0.11)
/// and h11 (10.11.0.11). Hosts in that order; the switches are kept with them.
struct Federation {
    hosts: Vec<TestHost>,
    switches: Vec<Switch>,
}

impl Federation {
    /// Gateway h00 names its WAN interface, h10 its WAN address: both forms. With
    /// `tls`, every daemon holds a certificate from one CA.
    fn new(clusters: [&str; 2], tls: bool) -> Federation {
        Federation::build(clusters, tls, false, &[])
    }

    /// As `new` without TLS, but h10 sits behind a NAT router (hosts[4], on the WAN at
    /// [`NAT_PUBLIC`]) on a network of its own, 10.14.0.0/24: h10 is 10.14.0.11 there
    /// and advertises [`NAT_PUBLIC`], which h00 names as its neighbor. The router sends
    /// the WAN gossip and session ports of its public address on to h10 (nftables
    /// DNAT), and what h10 sends out leaves from its public address (masquerade).
    fn behind_nat(clusters: [&str; 2]) -> Federation {
        Federation::build(clusters, false, true, &[])
    }

    /// `gateway0`: more flags for c0's gateway h00.
    fn build(clusters: [&str; 2], tls: bool, nat: bool, gateway0: &[&str]) -> Federation {
        let (mut lan0, mut lan1, mut wan) = (Switch::new(), Switch::new(), Switch::new());
        let mut hosts =
            vec![lan0.host("10.10.0.10"), lan0.host("10.10.0.11"), lan1.host("10.11.0.10"), lan1.host("10.11.0.11")];
        let mut switches = Vec::new();
        wan.wire(&hosts[0], "wan0", "10.12.0.10");
        let mut c1_gateway = vec!["--federation-gateway-ip", "10.12.0.11"];
        if nat {
            let router = wan.host(NAT_PUBLIC);
            let mut inside = Switch::new();
            inside.wire(&router, "lan0", "10.14.0.1");
            inside.wire(&hosts[2], "wan0", "10.14.0.11");
            nat_router(&router, "10.14.0.11");
            hosts[2].stdout_of("ip", &["route", "add", "10.12.0.0/24", "via", "10.14.0.1"]);
            hosts.push(router);
            switches.push(inside);
            c1_gateway = vec!["--federation-gateway-ip", "10.14.0.11", "--federation-gateway-advertise-ip", NAT_PUBLIC];
        } else {
            wan.wire(&hosts[2], "wan0", "10.12.0.11");
        }
        let names = ["h00", "h01", "h10", "h11"];
        let pki = tls.then(|| {
            let dir = hosts[0].dir.join("pki");
            ax_tls::write_test_pki(&dir, &names.map(String::from)).unwrap()
        });
        let lans = ["10.10.0.10,10.10.0.11", "10.11.0.10,10.11.0.11"];
        let c0_neighbor = if nat { NAT_PUBLIC } else { "10.12.0.11" };
        c1_gateway.extend(["--federation-gateway-neighbors", "10.12.0.10"]);
        let gateway =
            [vec!["--federation-gateway-ip", "wan0", "--federation-gateway-neighbors", c0_neighbor], c1_gateway];
        for (i, h) in hosts.iter_mut().take(4).enumerate() {
            let (c, name) = (i / 2, names[i]);
            let mut args: Vec<String> =
                ["--node-name", name, "--cluster", clusters[c], "--neighbors", lans[c]].map(String::from).to_vec();
            if i % 2 == 0 {
                args.extend(gateway[c].iter().map(|a| a.to_string()));
            }
            if i == 0 {
                args.extend(gateway0.iter().map(|a| a.to_string()));
            }
            if let Some(pki) = &pki {
                let f = pki.files(name);
                let (ca, cert, key) = (f.ca.display(), f.cert.display(), f.key.display());
                args.extend([
                    "--tls".into(),
                    format!("--tls-ca-cert={ca}"),
                    format!("--tls-cert={cert}"),
                    format!("--tls-key={key}"),
                ]);
            }
            h.start_daemon(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        switches.splice(0..0, [lan0, lan1, wan]);
        Federation { hosts, switches }
    }

    /// Starts `web` at 198.18.20.1:8000 on h11 (cluster c1's plain node).
    fn serve_web(&mut self) {
        self.serve(3, "web", "198.18.20.1", "web");
    }

    /// Starts an app `name` at `ip`:8000 on host `i`, its `who` saying `says`.
    fn serve(&mut self, i: usize, name: &str, ip: &str, says: &str) {
        let root = self.hosts[i].web_root(name, "who", says);
        self.hosts[i].spawn_app(
            name,
            &["--name", name, "--ip", ip, "--", PY, "-m", "http.server", "8000", "--directory", &root],
        );
    }
}

/// The public (WAN) address of the NAT router in front of c1's gateway.
const NAT_PUBLIC: &str = "10.12.0.99";

/// Makes test host `router` (its `ax0` on the WAN at [`NAT_PUBLIC`]) a NAT router for
/// the gateway at `inside`: the WAN gossip port (UDP) and the session port (TCP) of
/// its public address go to `inside` (DNAT), and what the inside network sends out to
/// the WAN leaves from the public address (masquerade), as a home or cloud NAT does.
fn nat_router(router: &TestHost, inside: &str) {
    let rules = format!(
        "table ip nat {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {NAT_PUBLIC} udp dport 7947 dnat to {inside}
    ip daddr {NAT_PUBLIC} tcp dport 6660 dnat to {inside}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"ax0\" masquerade
  }}
}}
"
    );
    let file = router.dir.join("nat.nft");
    std::fs::write(&file, rules).unwrap();
    router.stdout_of("nft", &["-f", &file.to_string_lossy()]);
    router.stdout_of("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
}

/// `dig +short NAME` under `ax run` on `h` (the daemon's DNS).
fn dig(h: &TestHost, name: &str) -> String {
    let out = h.run(&["--", "dig", "+short", "+time=2", "+tries=1", name]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// On h01, `times` times, a thread writes federated requests naming `secret`
/// (198.18.20.2, zone=admin, on h11) on the socket another thread connects to `dest`;
/// asserts secret never got a request.
fn race_forged_requests(f: &Federation, dest: &str, times: usize) {
    let (ip, port) = dest.split_once(':').unwrap();
    let race = format!(
        "import os, socket, threading\n\
         forged = b'AXFD 198.18.20.2:8000 198.18.0.9 zone=admin\\nGET /who HTTP/1.0\\r\\n\\r\\n'\n\
         for _ in range({times}):\n\
         \x20   s = socket.socket()\n\
         \x20   done = threading.Event()\n\
         \x20   def spam(fd=s.fileno()):\n\
         \x20       while not done.is_set():\n\
         \x20           try: os.write(fd, forged)\n\
         \x20           except OSError: pass\n\
         \x20   t = threading.Thread(target=spam); t.start()\n\
         \x20   try: s.connect(('{ip}', {port}))\n\
         \x20   except OSError as e: print('connect', e)\n\
         \x20   done.set(); t.join(); s.close()\n\
         print('raced', flush=True)"
    );
    assert!(f.hosts[1].run_ok(&["--", PY, "-c", &race]).contains("raced"));
    let log = f.hosts[3].app_log("secret");
    assert!(!log.contains("GET"), "the app reached secret: {log}");
}

#[test]
fn a_service_of_one_cluster_is_known_by_name_in_the_other_through_two_gateways() {
    support::require_root_and(&[PY, "curl", "dig"]);
    let mut f = Federation::new(["c0", "c1"], false);
    // The plain nodes of the two clusters have no route to each other, nor to the WAN.
    for (from, to) in [(1, "10.11.0.11"), (3, "10.10.0.11"), (1, "10.12.0.11"), (0, "10.11.0.11")] {
        let out = f.hosts[from].cmd("ip").args(["route", "get", to]).output().unwrap();
        assert!(!out.status.success(), "host {from} has a route to {to}: {out:?}");
    }
    // Every cluster converged first: what is timed is the service's way alone.
    for h in &f.hosts {
        h.wait_until("its cluster's two nodes live", Duration::from_secs(60), || {
            let nodes = h.get("nodes");
            nodes.iter().filter(|n| n["live"] == true && n["cluster"] == nodes[0]["cluster"]).count() == 2
        });
    }
    let t0 = Instant::now();
    f.serve_web();
    let h01 = &f.hosts[1];
    h01.wait_until("web.c1 resolves on a plain node of c0", Duration::from_secs(90), || {
        dig(h01, "web.c1.appswitch.local") == "198.18.20.1"
    });
    eprintln!(
        "a service started in c1 resolved on a plain node of c0 {:?} later (polling with ax run dig)",
        t0.elapsed()
    );
    // Bare, and under the domain: unique in the federation, so c1's.
    assert_eq!(dig(h01, "web"), "198.18.20.1");
    assert_eq!(dig(h01, "web.appswitch.local"), "198.18.20.1");
    // Not a service of c0's.
    assert_eq!(dig(h01, "web.c0.appswitch.local"), "");
    // The connection: h01 -> h00 (egress) -> h10 (ingress) -> h11, by address and by
    // name.
    for url in ["http://198.18.20.1:8000/who", "http://web:8000/who", "http://web.c1.appswitch.local:8000/who"] {
        assert_eq!(h01.run_ok(&["--", "curl", "-sf", "--max-time", "30", url]), "web", "{url}");
    }
    // From the gateway's own apps too.
    assert_eq!(f.hosts[0].run_ok(&["--", "curl", "-sf", "--max-time", "30", "http://web:8000/who"]), "web");
    // The server sees the client app's own address under the kernel driver (the
    // ingress claims it for the backend's connection); under the user driver, the
    // ingress gateway's node address (README, "Client addresses").
    let url = "http://198.18.20.1:8000/client";
    h01.run(&["--ip", "198.18.10.7", "--", "curl", "-s", "--max-time", "30", url]);
    let shown = if f.hosts[3].daemon_driver() == "kernel" { "198.18.10.7" } else { "10.11.0.10" };
    let line = f.hosts[3].app_log("web").lines().find(|l| l.contains("GET /client")).map(str::to_string);
    assert!(line.as_deref().is_some_and(|l| l.contains(shown)), "{line:?} shows no {shown}");
    // The gateways in `ax get nodes`: c0's on its plain node; on h00, c1's too.
    let nodes = h01.get("nodes");
    let h00 = nodes.iter().find(|n| n["name"] == "h00").expect("h00 listed on h01");
    assert_eq!((h00["role"].as_str(), h00["cluster"].as_str()), (Some("federation-gateway"), Some("c0")));
    assert_eq!(h00["external_ip"], "10.12.0.10");
    let nodes = f.hosts[0].get("nodes");
    let h10 = nodes.iter().find(|n| n["name"] == "h10").expect("h10 listed on h00");
    assert_eq!((h10["role"].as_str(), h10["cluster"].as_str()), (Some("federation-gateway"), Some("c1")));
    // The ingress and egress listeners in `ax get proxies`, in the manual's columns:
    // the egress dials c1's gateway.
    let proxies = f.hosts[0].get("proxies");
    assert_eq!(proxies.len(), 2, "{proxies:?}");
    assert_eq!((proxies[0]["listener"].as_str(), proxies[0]["proto"].as_str()), (Some("10.12.0.10:6660"), Some("tcp")));
    assert_eq!(proxies[1]["listener"], "10.10.0.10:6661");
    assert_eq!(proxies[1]["dialers"], serde_json::json!(["10.12.0.11:6660"]));
    let table = String::from_utf8(f.hosts[0].ax().args(["get", "proxies"]).output().unwrap().stdout).unwrap();
    assert!(table.starts_with("ID") && table.contains("10.12.0.10:6660") && table.contains("[0.0.0.0:0]"), "{table}");
    assert!(table.contains("[10.12.0.11:6660]"), "{table}");
    // Without --tls, both gateways said the WAN is unauthenticated; neither saw a
    // clash of cluster names.
    for g in [0, 2] {
        let log = f.hosts[g].daemon_log();
        assert!(log.contains("the federation's wide-area link is unauthenticated"));
        assert!(!log.contains("claims the cluster name"), "{log}");
    }
}

/// Labels hold across clusters: at the client's node, and again at the ingress of the
/// service's cluster, whose gateway is no open relay (only its cluster's rows, and only
/// `AXFD`) and takes sessions only from other clusters' gateways. No app reaches an
/// ingress itself, not even one on a gateway, which reaches the WAN.
#[test]
fn labels_hold_across_clusters_and_the_ingress_serves_only_what_it_should() {
    support::require_root_and(&[PY, "curl", "dig"]);
    let mut f = Federation::new(["c0", "c1"], false);
    f.serve_web();
    // A service of c1 that c0's default apps may not reach.
    let root = f.hosts[3].web_root("secret", "who", "secret");
    let secret = ["--name", "secret", "--ip", "198.18.20.2", "--labels", "zone=admin", "--"];
    let server = [PY, "-m", "http.server", "8000", "--directory", &root];
    f.hosts[3].spawn_app("secret", &[&secret[..], &server[..]].concat());
    let (h00, h01) = (&f.hosts[0], &f.hosts[1]);
    h01.wait_until("web.c1 resolves on a plain node of c0", Duration::from_secs(90), || {
        dig(h01, "web.c1.appswitch.local") == "198.18.20.1"
    });
    let url = "http://198.18.20.1:8000/who";
    assert_eq!(h01.run_ok(&["--", "curl", "-sf", "--max-time", "30", url]), "web");
    // Labels that share nothing with web's: refused on the client's node (curl's 7).
    let out = h01.run(&["--labels", "zone=other", "--", "curl", "-s", "--max-time", "30", url]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    // An app racing its own descriptor: a thread writes federated requests naming a
    // service its labels do not reach (`secret`, zone=admin) on the socket another
    // thread connects to web, 20 times. The request is the daemon's, on a socket the
    // app holds only once it was answered: nothing of the app's reaches secret.
    h01.wait_until("secret known in c0", Duration::from_secs(90), || {
        dig(h01, "secret.c1.appswitch.local") == "198.18.20.2"
    });
    race_forged_requests(&f, "198.18.20.1:8000", 20);
    // Straight to c1's ingress from c0's gateway host, an address c1 hears.
    let ask = |request: &str| h00.ask(None, "10.12.0.11", "6660", request, None);
    assert_eq!(ask("AXFD 198.18.20.1:8000 198.18.0.9 zone=default"), "OK");
    assert_eq!(ask("AXFD 198.18.20.1:8000 198.18.0.9 zone=other"), "ERR 111", "labels checked again");
    assert_eq!(ask("AXFD 198.18.20.1:8000 198.18.0.9 -"), "ERR 111");
    for to in ["198.18.20.1:9", "10.11.0.11:7946", "10.11.0.10:6661", "203.0.113.1:80"] {
        assert_eq!(ask(&format!("AXFD {to} 198.18.0.9 zone=default")), "ERR 111", "{to}: no service of c1");
    }
    for request in ["AXEG 10.11.0.11:8000", "AXRL 10.11.0.11:8000", "GET / HTTP/1.0"] {
        let said = ask(request);
        assert!(!said.starts_with("OK") && !said.starts_with("ERR"), "{request}: {said}");
    }
    // Apps under ax on the gateway: c1's ingress is a daemon port, and so is c0's own.
    for ingress in ["10.12.0.11:6660", "10.12.0.10:6660"] {
        let out = h00.run(&["--", "curl", "-s", "--max-time", "30", &format!("http://{ingress}/")]);
        assert_eq!(out.status.code(), Some(7), "{ingress}: {out:?}");
    }
    // c0's gateway at its own ingress is no other cluster's gateway.
    let said = h00.ask(None, "10.12.0.10", "6660", "AXFD 198.18.20.1:8000 198.18.0.9 zone=default", None);
    assert!(!said.starts_with("OK") && !said.starts_with("ERR"), "{said}");
    assert!(h00.daemon_log().contains("a session from no other cluster's gateway"), "{}", h00.daemon_log());
    let log = f.hosts[2].daemon_log();
    assert!(log.contains("federation: refused: 'AXEG 10.11.0.11:8000' asked of the federation port"), "{log}");
}

/// Cluster c1 turns hostile: it publishes a service at the address of c0's own app
/// (`evil`), and one under the name of c0's app (`web`). In c0 the address stays its
/// app's, and the bare name too; the remote `web` is reached only by its cluster's
/// name, the remote `evil` not at all.
#[test]
fn a_remote_cluster_cannot_take_our_address_or_our_name() {
    support::require_root_and(&[PY, "curl", "dig"]);
    let mut f = Federation::new(["c0", "c1"], false);
    f.serve(1, "web", "198.18.10.1", "ours");
    f.serve(3, "web", "198.18.20.1", "theirs");
    f.serve(3, "evil", "198.18.10.1", "evil");
    let h00 = &f.hosts[0];
    h00.wait_until("the gateway refuses c1's claim on our address", Duration::from_secs(90), || {
        h00.daemon_log().contains("cluster 'c1' publishes 198.18.10.1:8000, an address of this cluster: refused")
    });
    let h01 = &f.hosts[1];
    h01.wait_until("web.c1 resolves in c0", Duration::from_secs(90), || {
        dig(h01, "web.c1.appswitch.local") == "198.18.20.1"
    });
    assert_eq!(dig(h01, "web"), "198.18.10.1", "the bare name stays ours");
    assert_eq!(dig(h01, "web.appswitch.local"), "198.18.10.1");
    assert_eq!(dig(h01, "evil.c1.appswitch.local"), "", "c1's service at our address is not taken");
    assert_eq!(dig(h01, "evil"), "");
    assert_eq!(h01.run_ok(&["--", "curl", "-sf", "--max-time", "10", "http://198.18.10.1:8000/who"]), "ours");
}

/// A second gateway of c0 (h02, LAN 10.10.0.12, WAN 10.12.0.12): no clash of names
/// with its fellow, both listed in both clusters, and when h00's daemon dies c1's
/// service stays known in c0 through h02.
#[test]
fn a_second_gateway_is_a_fellow_and_takes_over_the_names_when_the_first_dies() {
    support::require_root_and(&[PY, "dig"]);
    let mut f = Federation::new(["c0", "c1"], false);
    let mut h02 = f.switches[0].host("10.10.0.12");
    f.switches[2].wire(&h02, "wan0", "10.12.0.12");
    h02.start_daemon(&[
        "--node-name",
        "h02",
        "--cluster",
        "c0",
        "--neighbors",
        "10.10.0.10,10.10.0.11",
        "--federation-gateway-ip",
        "wan0",
        "--federation-gateway-neighbors",
        "10.12.0.11",
    ]);
    f.serve_web();
    let gateways_of = |h: &TestHost, cluster: &str| {
        let nodes = h.get("nodes");
        let mut names: Vec<String> = nodes
            .iter()
            .filter(|n| n["live"] == true && n["cluster"] == cluster && n["role"] == "federation-gateway")
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let (h01, h10) = (&f.hosts[1], &f.hosts[2]);
    h01.wait_until("both gateways of c0 on h01", Duration::from_secs(90), || gateways_of(h01, "c0") == ["h00", "h02"]);
    h10.wait_until("both gateways of c0 on h10", Duration::from_secs(90), || gateways_of(h10, "c0") == ["h00", "h02"]);
    h01.wait_until("web.c1 resolves in c0", Duration::from_secs(90), || {
        dig(h01, "web.c1.appswitch.local") == "198.18.20.1"
    });
    f.hosts[0].signal_daemon("KILL");
    let h01 = &f.hosts[1];
    h01.wait_until("h00 gone from h01", Duration::from_secs(60), || gateways_of(h01, "c0") == ["h02"]);
    assert_eq!(dig(h01, "web.c1.appswitch.local"), "198.18.20.1", "through h02");
    for h in [&f.hosts[0], &h02, &f.hosts[2]] {
        assert!(!h.daemon_log().contains("claims the cluster name"), "{}", h.daemon_log());
    }
}

/// Two gateways per cluster (c0: h00 and h02 at WAN 10.12.0.12; c1: h10 and h12 at
/// LAN 10.11.0.12, WAN 10.12.0.13): connections spread over c1's two ingresses, and
/// when one gateway of each cluster dies, connections go through the others and the
/// dead one leaves the other cluster's gateways' tables.
#[test]
fn several_gateways_share_the_load_and_dead_ones_are_passed_over() {
    support::require_root_and(&[PY, "curl", "dig"]);
    let mut f = Federation::new(["c0", "c1"], false);
    let mut h02 = f.switches[0].host("10.10.0.12");
    let mut h12 = f.switches[1].host("10.11.0.12");
    f.switches[2].wire(&h02, "wan0", "10.12.0.12");
    f.switches[2].wire(&h12, "wan0", "10.12.0.13");
    for (h, name, cluster, lan, wan) in [
        (&mut h02, "h02", "c0", "10.10.0.10,10.10.0.11", "10.12.0.11"),
        (&mut h12, "h12", "c1", "10.11.0.10,10.11.0.11", "10.12.0.10"),
    ] {
        h.start_daemon(&[
            "--node-name",
            name,
            "--cluster",
            cluster,
            "--neighbors",
            lan,
            "--federation-gateway-ip",
            "wan0",
            "--federation-gateway-neighbors",
            wan,
        ]);
    }
    f.serve_web();
    let dialers = |h: &TestHost| {
        let proxies = h.get("proxies");
        let egress = proxies.iter().find(|p| p["listener"].as_str().is_some_and(|l| l.ends_with(":6661")));
        let mut d: Vec<String> = egress.map_or_else(Vec::new, |e| {
            e["dialers"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect()
        });
        d.sort();
        d
    };
    for h in [&f.hosts[0], &h02] {
        h.wait_until("both of c1's ingresses known", Duration::from_secs(90), || {
            dialers(h) == ["10.12.0.11:6660", "10.12.0.13:6660"]
        });
    }
    let h01 = &f.hosts[1];
    let url = "http://198.18.20.1:8000/who";
    h01.wait_until("web reached from c0", Duration::from_secs(90), || {
        h01.run(&["--", "curl", "-sf", "--max-time", "30", url]).stdout == b"web"
    });
    // 16 connections held open: both of c1's ingresses carry some (all on one: 2^-15).
    let hold = "import socket, time; \
                held = [socket.create_connection(('198.18.20.1', 8000), 60) for _ in range(16)]; \
                print('open', flush=True); time.sleep(600)";
    f.hosts[1].spawn_app("holder", &["--", PY, "-c", hold]);
    f.hosts[1].wait_for_line("holder", "open");
    let sessions = |h: &TestHost| {
        let proxies = h.get("proxies");
        let ingress = proxies.iter().find(|p| p["listener"].as_str().is_some_and(|l| l.ends_with(":6660")));
        ingress.and_then(|p| p["sessions"].as_u64()).unwrap_or(0)
    };
    let (on_h10, on_h12) = (sessions(&f.hosts[2]), sessions(&h12));
    assert!(on_h10 > 0 && on_h12 > 0 && on_h10 + on_h12 == 16, "h10 {on_h10}, h12 {on_h12}");
    // One gateway of each cluster dies.
    let t0 = Instant::now();
    f.hosts[0].signal_daemon("KILL");
    f.hosts[2].signal_daemon("KILL");
    let h01 = &f.hosts[1];
    h01.wait_until("web reached through h02 and h12", Duration::from_secs(90), || {
        h01.run(&["--", "curl", "-sf", "--max-time", "30", url]).stdout == b"web"
    });
    eprintln!("reached again through the other gateways {:?} after the kill", t0.elapsed());
    h02.wait_until("h10 gone from h02's table", Duration::from_secs(90), || dialers(&h02) == ["10.12.0.13:6660"]);
    eprintln!("h10 left h02's table {:?} after the kill", t0.elapsed());
    for _ in 0..5 {
        assert_eq!(h01.run_ok(&["--", "curl", "-sf", "--max-time", "30", url]), "web");
    }
}

/// A cluster cut from the WAN (h00's WAN port down) loses only the remote services:
/// they leave its tables and names, while its own service still serves, by name too;
/// with the link back, the remote ones come back.
#[test]
fn a_cluster_cut_from_the_wan_loses_only_the_remote_services() {
    support::require_root_and(&[PY, "curl", "dig"]);
    let mut f = Federation::new(["c0", "c1"], false);
    f.serve_web();
    f.serve(1, "shop", "198.18.10.2", "shop");
    let h00 = &f.hosts[0];
    h00.wait_until("c1's web known in c0", Duration::from_secs(90), || {
        dig(h00, "web.c1.appswitch.local") == "198.18.20.1"
    });
    let web = ["--", "curl", "-sf", "--max-time", "30", "http://web:8000/who"];
    assert_eq!(h00.run_ok(&web), "web");
    let wan_port = |state: &str| {
        let out = Command::new("ip").args(["-n", &f.switches[2].ns, "link", "set", "p0", state]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    wan_port("down");
    let t0 = Instant::now();
    h00.wait_until("c1's web gone from c0", Duration::from_secs(90), || dig(h00, "web.c1.appswitch.local").is_empty());
    eprintln!("the remote service left c0's gateway {:?} after the cut", t0.elapsed());
    let h01 = &f.hosts[1];
    h01.wait_until("and c0's plain node", Duration::from_secs(60), || dig(h01, "web.c1.appswitch.local").is_empty());
    for h in [h00, h01] {
        assert_eq!(h.run_ok(&["--", "curl", "-sf", "--max-time", "30", "http://shop:8000/who"]), "shop");
        assert!(!h.run(&web).status.success());
    }
    wan_port("up");
    h01.wait_until("c1's web back in c0", Duration::from_secs(120), || h01.run(&web).stdout == b"web");
}

/// Both clusters call themselves c0: each gateway refuses the other, saying why, and
/// takes nothing from it.
#[test]
fn a_cluster_name_clash_is_refused_on_both_sides() {
    support::require_root_and(&[PY, "dig"]);
    let mut f = Federation::new(["c0", "c0"], false);
    f.serve_web();
    for (g, other) in [(0, "h10"), (2, "h00")] {
        let h = &f.hosts[g];
        let says = format!("the federation gateway '{other}' at");
        h.wait_until("the clash logged", Duration::from_secs(90), || {
            let log = h.daemon_log();
            log.contains(&says) && log.contains("claims the cluster name 'c0'")
        });
    }
    assert_eq!(dig(&f.hosts[1], "web"), "", "nothing taken from the other c0");
    assert_eq!(dig(&f.hosts[3], "web"), "198.18.20.1", "the name resolves in its own cluster");
    assert!(!f.hosts[0].get("nodes").iter().any(|n| n["name"] == "h10"));
}

/// Without --tls, a gateway hears WAN gossip only from its neighbors and the gateways
/// learned from them: a gateway on the WAN that nobody named (it names h00) publishes a
/// service nobody takes.
#[test]
fn without_tls_a_gateway_nobody_named_is_not_heard() {
    support::require_root_and(&[PY, "dig"]);
    let mut f = Federation::new(["c0", "c1"], false);
    f.serve_web();
    let mut lan = Switch::new();
    let mut rogue = lan.host("10.13.0.10");
    f.switches[2].wire(&rogue, "wan0", "10.12.0.99");
    rogue.start_daemon(&[
        "--node-name",
        "rogue",
        "--cluster",
        "evil",
        "--federation-gateway-ip",
        "wan0",
        "--federation-gateway-neighbors",
        "10.12.0.10,10.12.0.11",
    ]);
    let root = rogue.web_root("shop", "who", "shop");
    rogue.spawn_app(
        "shop",
        &["--name", "shop", "--ip", "198.18.30.1", "--", PY, "-m", "http.server", "8000", "--directory", &root],
    );
    let h00 = &f.hosts[0];
    h00.wait_until("the rogue's gossip dropped", Duration::from_secs(90), || {
        h00.daemon_log().lines().any(|l| l.contains("from=10.12.0.99") && l.contains("not a federation neighbor"))
    });
    let h01 = &f.hosts[1];
    h01.wait_until("web.c1 resolves on a plain node of c0", Duration::from_secs(90), || {
        dig(h01, "web.c1.appswitch.local") == "198.18.20.1"
    });
    assert_eq!(dig(h01, "shop.evil.appswitch.local"), "");
    assert!(!h00.get("nodes").iter().any(|n| n["name"] == "rogue"));
    f.switches.push(lan);
}

/// Under --tls the WAN gossip is QUIC with the cluster's certificates: no warning, and
/// names and connections cross as without (the connection through h01's forwarder,
/// a tunnel to h00, a TLS session to h10 and h10's tunnel to h11).
#[test]
fn under_tls_the_wan_is_authenticated_and_names_and_connections_cross() {
    support::require_root_and(&[PY, "dig", "curl"]);
    let mut f = Federation::new(["c0", "c1"], true);
    f.serve_web();
    let h01 = &f.hosts[1];
    h01.wait_until("web.c1 resolves on a plain node of c0", Duration::from_secs(90), || {
        dig(h01, "web.c1.appswitch.local") == "198.18.20.1"
    });
    assert_eq!(h01.run_ok(&["--", "curl", "-sf", "--max-time", "30", "http://web:8000/who"]), "web");
    assert_eq!(f.hosts[0].run_ok(&["--", "curl", "-sf", "--max-time", "30", "http://web:8000/who"]), "web");
    // A client retrying before its server exists gets through once the server listens.
    let retry = "import socket, time\n\
                 deadline = time.time() + 90\n\
                 while time.time() < deadline:\n\
                 \x20   try:\n\
                 \x20       socket.create_connection(('198.18.21.1', 8000), timeout=1).close()\n\
                 \x20       print('connected', flush=True)\n\
                 \x20       break\n\
                 \x20   except OSError:\n\
                 \x20       time.sleep(0.05)\n";
    f.hosts[1].spawn_app("retry", &["--", PY, "-c", retry]);
    f.serve(3, "late", "198.18.21.1", "late");
    let h01 = &f.hosts[1];
    h01.wait_until("the retrying client through", Duration::from_secs(90), || {
        h01.app_log("retry").contains("connected")
    });
    for g in [0, 2] {
        let log = f.hosts[g].daemon_log();
        let wan = log.lines().find(|l| l.contains("federation gateway: gossiping on the WAN")).expect("the WAN line");
        assert!(wan.contains("QUIC"), "{wan}");
        assert!(!log.contains("wide-area link is unauthenticated"), "{log}");
    }
}

#[test]
fn bad_federation_flags_stop_the_daemon_with_the_reason() {
    support::require_root_and(&[]);
    let mut lan = Switch::new();
    let h = lan.host("10.10.0.10");
    for (args, says) in [
        (&["--federation-gateway-ip", "ax0"][..], "a federation gateway needs --cluster"),
        (
            &["--cluster", "c0", "--federation-gateway-ip", "nosuch0"],
            "--federation-gateway-ip nosuch0: no such interface",
        ),
        (
            &["--cluster", "c0", "--federation-gateway-ip", "10.99.0.1"],
            "--federation-gateway-ip 10.99.0.1: no interface of this host has that address",
        ),
        (&["--federation-gateway-neighbors", "10.12.0.11"], "--federation-gateway-neighbors is a federation gateway's"),
    ] {
        let out = h.ax().args(["daemon", "--node-interface", "ax0"]).args(args).output().unwrap();
        support::fails_with(out, says);
    }
}

/// c1's gateway sits behind a NAT router that forwards its public address's gossip
/// and session ports to the gateway's private one: with
/// `--federation-gateway-advertise-ip` the public address, the clusters federate
/// through the NAT, and c0 knows the gateway by its public address only.
#[test]
fn a_gateway_behind_nat_is_reached_at_its_advertised_address() {
    support::require_root_and(&[PY, "dig", "nft"]);
    let mut f = Federation::behind_nat(["c0", "c1"]);
    // h10 has no address on the WAN: only the router's public one leads to it.
    let out = f.hosts[0].cmd("ip").args(["route", "get", "10.14.0.11"]).output().unwrap();
    assert!(!out.status.success(), "h00 has a route to h10's private address: {out:?}");
    f.serve_web();
    let h01 = &f.hosts[1];
    h01.wait_until("web.c1 resolves on a plain node of c0", Duration::from_secs(120), || {
        dig(h01, "web.c1.appswitch.local") == "198.18.20.1"
    });
    let h00 = &f.hosts[0];
    h00.wait_until("h10 live on h00", Duration::from_secs(60), || {
        h00.get("nodes").iter().any(|n| n["name"] == "h10" && n["live"] == true)
    });
    let nodes = h00.get("nodes");
    let h10 = nodes.iter().find(|n| n["name"] == "h10").unwrap();
    assert_eq!((h10["role"].as_str(), h10["cluster"].as_str()), (Some("federation-gateway"), Some("c1")));
    assert_eq!((h10["ip"].as_str(), h10["external_ip"].as_str()), (Some(NAT_PUBLIC), Some(NAT_PUBLIC)));
    assert!(!nodes.iter().any(|n| n["ip"] == "10.14.0.11" || n["external_ip"] == "10.14.0.11"), "{nodes:?}");
    // Its own cluster knows it by its advertised address too (where sessions go).
    let h11 = &f.hosts[3];
    h11.wait_until("h10 listed on h11 at the advertised address", Duration::from_secs(60), || {
        h11.get("nodes").iter().any(|n| n["name"] == "h10" && n["ip"] == "10.11.0.10" && n["external_ip"] == NAT_PUBLIC)
    });
    // The connection goes through the NAT: h01 -> h00 (egress) -> the router's public
    // address -> h10 (ingress) -> h11; h00's egress dials the advertised address.
    assert_eq!(h01.run_ok(&["--", "curl", "-sf", "--max-time", "30", "http://web:8000/who"]), "web");
    let proxies = h00.get("proxies");
    let egress = proxies.iter().find(|p| p["listener"] == "10.10.0.10:6661").expect("h00's egress listener");
    assert_eq!(egress["dialers"], serde_json::json!([format!("{NAT_PUBLIC}:6660")]));
}

/// An egress connection's handshake is made on the app's own socket (user driver), so
/// a thread of the app can race a line of its own onto it: a federated request naming
/// a service its labels do not reach, to c0's gateway, which is also the egress
/// gateway. The egress port must not take it there: nothing of the app's reaches
/// `secret`.
#[test]
fn a_federated_request_raced_onto_an_egress_handshake_reaches_nothing() {
    support::require_root_and(&[PY, "dig"]);
    let mut f = Federation::build(["c0", "c1"], false, false, &["--egress-gateway"]);
    f.serve_web();
    let root = f.hosts[3].web_root("secret", "who", "secret");
    let secret = ["--name", "secret", "--ip", "198.18.20.2", "--labels", "zone=admin", "--"];
    let server = [PY, "-m", "http.server", "8000", "--directory", &root];
    f.hosts[3].spawn_app("secret", &[&secret[..], &server[..]].concat());
    let h01 = &f.hosts[1];
    h01.wait_until("secret known in c0", Duration::from_secs(90), || {
        dig(h01, "secret.c1.appswitch.local") == "198.18.20.2"
    });
    h01.wait_until("the egress gateway", Duration::from_secs(60), || {
        h01.get("nodes").iter().any(|n| n["role"].as_str().is_some_and(|r| r.contains("egress")) && n["live"] == true)
    });
    race_forged_requests(&f, "203.0.113.1:80", 40);
}
