//! End-to-end tests of what is the kernel driver's own, as root: its maps follow the
//! table (seen through real connects), a denied connect fails with ECONNREFUSED and
//! sends nothing, apps read back virtual addresses without asking the daemon, loopback
//! listeners are reached through the broker, and an app started before a daemon restart
//! keeps connecting after it; the same for datagrams. Every test is skipped (with a
//! message) where the kernel driver cannot be installed; `make test` asks
//! `the_kernel_driver_installs_here` first.

mod support;

use std::time::Duration;

use support::TestHost;

const PY: &str = "/usr/bin/python3";
/// errno 111 on Linux.
const ECONNREFUSED: i32 = 111;

/// A test host whose daemon runs the kernel driver; None (said on stderr) where it
/// cannot be installed.
fn kernel_host(programs: &[&str]) -> Option<TestHost> {
    support::require_root_and(programs);
    let mut h = TestHost::new();
    if h.start_kernel_daemon(&[]) {
        return Some(h);
    }
    eprintln!("skipped: the kernel driver cannot be installed here:\n{}", h.daemon_log());
    None
}

/// A kernel-driver test host whose unprivileged apps live in the host's namespace; None
/// (said on stderr) where the kernel driver cannot be installed, or Landlock cannot scope
/// abstract sockets (`ax run` keeps such apps in a namespace of their own).
fn host_placing(programs: &[&str]) -> Option<TestHost> {
    if !ax_sys::landlock::can_scope() {
        eprintln!("skipped: Landlock cannot scope abstract unix sockets here (Linux 6.12, ABI 6, is needed)");
        return None;
    }
    kernel_host(programs)
}

/// A python http.server app `name` with `labels` on `ip`:80 whose `who` says `name`.
fn web(h: &mut TestHost, name: &str, ip: &str, labels: &str) {
    let root = h.web_root(name, "who", name);
    h.spawn_app(name, &["--ip", ip, "--labels", labels, "--", PY, "-m", "http.server", "80", "--directory", &root]);
}

/// What `curl http://URL/who` from an app with `labels` gets: the answer, or curl's
/// exit status (7: the connection was refused).
fn curl(h: &TestHost, labels: &str, ip: &str) -> Result<String, i32> {
    let out = h.run(&["--labels", labels, "--", "curl", "-sf", "--max-time", "20", &format!("http://{ip}/who")]);
    match out.status.code() {
        Some(0) => Ok(String::from_utf8(out.stdout).unwrap()),
        code => Err(code.unwrap_or(-1)),
    }
}

/// TCP segments the test host has sent (`Tcp: OutSegs` of /proc/net/snmp): a SYN
/// counts, whatever the interface.
fn tcp_out_segments(h: &TestHost) -> u64 {
    let snmp = h.stdout_of("cat", &["/proc/net/snmp"]);
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "OutSegs").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Asked by `make test` before it runs the suites under the kernel driver.
#[test]
#[ignore = "a probe for make test"]
fn the_kernel_driver_installs_here() {
    assert!(kernel_host(&[]).is_some());
}

#[test]
fn the_maps_follow_the_table_rows_added_removed_and_labels_changed() {
    let Some(mut h) = kernel_host(&[PY, "curl"]) else { return };
    web(&mut h, "a1", "198.18.3.1", "role=a");
    h.wait_for_rows("198.18.3.1:80", 1);
    assert_eq!(h.get("apps")[0]["driver"], "kernel");
    assert_eq!(curl(&h, "role=a", "198.18.3.1"), Ok("a1".into()));
    assert_eq!(curl(&h, "role=b", "198.18.3.1"), Err(7), "another label class is refused");
    // A row added: a second backend of class b on the same address.
    web(&mut h, "b1", "198.18.3.1", "role=b");
    h.wait_for_rows("198.18.3.1:80", 2);
    for _ in 0..5 {
        assert_eq!(curl(&h, "role=b", "198.18.3.1"), Ok("b1".into()));
        assert_eq!(curl(&h, "role=a", "198.18.3.1"), Ok("a1".into()));
    }
    // A row removed: class a has none left.
    h.stop_app("a1");
    h.wait_for_rows("198.18.3.1:80", 1);
    assert_eq!(curl(&h, "role=a", "198.18.3.1"), Err(7));
    assert_eq!(curl(&h, "role=b", "198.18.3.1"), Ok("b1".into()));
    // Labels changed: the app comes back with both labels; class a reaches it again,
    // and class b now has two backends.
    web(&mut h, "a2", "198.18.3.1", "role=a,role=b");
    h.wait_for_rows("198.18.3.1:80", 2);
    assert_eq!(curl(&h, "role=a", "198.18.3.1"), Ok("a2".into()));
    let seen = h.distinct_answers(&["--labels", "role=b", "--", "curl", "-sf", "http://198.18.3.1/who"], 2, 40);
    assert_eq!(seen, ["a2".to_string(), "b1".to_string()].into());
    // A new label class (an app of labels no app had) gets its own entries.
    assert_eq!(curl(&h, "role=c", "198.18.3.1"), Err(7));
}

#[test]
fn a_denied_connect_fails_with_econnrefused_and_sends_no_packet() {
    let Some(mut h) = kernel_host(&[PY, "nc"]) else { return };
    web(&mut h, "db", "198.18.3.2", "role=db");
    h.wait_for_rows("198.18.3.2:80", 1);
    // Label-denied, an unserved port of a served address, the client's own address.
    let denied = ["198.18.3.2 80", "198.18.3.2 81", "198.18.3.4 80"];
    let refused = "import socket,sys\nfor t in sys.argv[1:]:\n  ip,port=t.split()\n  s=socket.socket()\n  \
        try:\n    s.connect((ip,int(port)));print(t,'connected')\n  except OSError as e:print(t,e.errno)\n";
    let mut args = vec!["--ip", "198.18.3.4", "--labels", "role=web", "--", PY, "-c", refused];
    args.extend(denied.iter().copied().cycle().take(30));
    let before = tcp_out_segments(&h);
    let out = h.run_ok(&args);
    let after = tcp_out_segments(&h);
    assert_eq!(out.lines().count(), 30, "{out}");
    assert!(out.lines().all(|l| l.ends_with(&format!(" {}", ECONNREFUSED))), "{out}");
    assert_eq!(after - before, 0, "a refused connect sent a segment");
    // The count does move when a connect leaves: one that goes out to the blackhole.
    let hole = h.blackhole();
    let before = tcp_out_segments(&h);
    let _ = h.run(&["--", "nc", "-z", "-w", "1", hole, "80"]);
    assert!(tcp_out_segments(&h) > before, "the control connect sent nothing");
}

#[test]
fn connects_and_name_queries_never_reach_the_daemon_and_show_virtual_addresses() {
    let Some(mut h) = kernel_host(&[PY]) else { return };
    web(&mut h, "srv", "198.18.3.5", "zone=default");
    h.wait_for_rows("198.18.3.5:80", 1);
    let client = "import socket\ns=socket.create_connection(('198.18.3.5',80))\n\
        print(s.getpeername()[0],s.getpeername()[1],s.getsockname()[0])\n\
        s6=socket.create_connection(('::ffff:198.18.3.5',80))\nprint(s6.getpeername()[0],s6.getsockname()[0])";
    let out = h.run_ok(&["--ip", "198.18.3.6", "--", PY, "-c", client]);
    assert_eq!(out, "198.18.3.5 80 198.18.3.6\n::ffff:198.18.3.5 ::ffff:198.18.3.6\n");
    // The server shows the wildcard it bound, as on a host, not the host's address.
    assert!(h.app_log("srv").contains("Serving HTTP on :: port 80"), "{}", h.app_log("srv"));
    // The daemon never saw a connect (its engine logs every one it carries out).
    assert!(!h.daemon_log().contains("\"connect\""), "a connect was trapped");
    assert!(!h.daemon_log().lines().any(|l| l.contains("ax_trap::engine") && l.ends_with("connect")));
}

#[test]
fn loopback_listeners_are_reached_through_the_broker_and_others_refused() {
    let Some(h) = kernel_host(&[PY]) else { return };
    let app = "import socket,threading\nl=socket.socket();l.bind(('127.0.0.1',7000));l.listen()\n\
        def echo():\n  c,_=l.accept();c.sendall(c.recv(100).upper());c.close()\n\
        threading.Thread(target=echo).start()\n\
        c=socket.create_connection(('127.0.0.1',7000));c.sendall(b'hello');print(c.recv(100).decode())\n\
        try:\n  socket.create_connection(('127.0.0.1',7001))\nexcept OSError as e:print(e.errno)";
    let out = h.run_ok(&["--", PY, "-c", app]);
    assert_eq!(out, format!("HELLO\n{}\n", ECONNREFUSED));
}

#[test]
fn an_app_started_before_a_restart_keeps_connecting_after_it() {
    keeps_connecting_across_a_restart(&[]);
}

#[test]
fn an_app_in_the_host_namespace_keeps_connecting_across_a_restart() {
    keeps_connecting_across_a_restart(&["--user", "nobody"]);
}

/// A client (run with `as_user`) connects across a kill -9 of the daemon.
fn keeps_connecting_across_a_restart(as_user: &[&str]) {
    let Some(mut h) = kernel_host(&[PY]) else { return };
    web(&mut h, "old", "198.18.3.7", "zone=default");
    h.wait_for_rows("198.18.3.7:80", 1);
    // Connects every 50 ms to the server there from the start and, once it exists, to
    // the one started after the restart, until it has reached the old one 50 times and
    // the new one 3 times; prints every outcome that is not a success.
    let client = "import socket,time,sys\nok={}\n\
        while ok.get('198.18.3.7',0)<50 or ok.get('198.18.3.8',0)<3:\n  \
        for ip in ('198.18.3.7','198.18.3.8'):\n    try:\n      \
        c=socket.create_connection((ip,80),timeout=20);c.sendall(b'GET /who HTTP/1.0\\r\\n\\r\\n')\n      \
        ok[ip]=ok.get(ip,0)+c.recv(4096).startswith(b'HTTP/1.0 200');c.close()\n    \
        except OSError as e:\n      if ip=='198.18.3.7':print('error',repr(e),flush=True)\n  time.sleep(0.05)\n\
        print('ok',ok.get('198.18.3.7',0),ok.get('198.18.3.8',0),flush=True)";
    h.spawn_app("client", &[as_user, &["--", PY, "-c", client]].concat());
    std::thread::sleep(Duration::from_secs(2));
    h.signal_daemon("KILL");
    std::thread::sleep(Duration::from_secs(1));
    assert!(h.start_kernel_daemon(&[]), "the kernel driver installed before and not after");
    web(&mut h, "new", "198.18.3.8", "zone=default");
    h.wait_for_rows("198.18.3.8:80", 1);
    // The loop ends only once the maps took in the row added after the restart.
    h.wait_for_line("client", "ok");
    assert!(!h.app_log("client").contains("error"), "{}", h.app_log("client"));
    assert!(h.daemon_log().contains("taking over the kernel driver's maps"), "{}", h.daemon_log());
}

#[test]
fn an_app_gets_nothing_from_the_broker_directly_nor_from_the_hosts_loopback() {
    let Some(h) = kernel_host(&[PY, "ss"]) else { return };
    let broker = format!("{}:{}", support::NODE_IP, ax_core::BROKER_PORT);
    let listeners = h.inet_sockets("-ltun");
    assert!(listeners.iter().any(|s| s[2] == broker), "no broker at {broker} among {listeners:?}");
    // Straight to the broker: one of the daemon's own ports, refused like the others
    // (and were it reached, closed with nothing: no program sent the connection).
    let direct = format!(
        "import socket\ntry:\n  c=socket.create_connection(('{}',{}))\n  c.sendall(b'AXEG 203.0.113.1:80\\n')\n  \
         print(repr(c.recv(100)))\nexcept OSError as e:print(e.errno)",
        support::NODE_IP,
        ax_core::BROKER_PORT
    );
    let got = h.run_ok(&["--", PY, "-c", &direct]);
    assert_eq!(got.trim(), ECONNREFUSED.to_string());
    // The host's loopback services (the daemon's REST among them) are not the app's,
    // in either family.
    let probe = "import socket\nfor a in (('127.0.0.1',6664),('::1',6664),('0.0.0.0',6664)):\n  \
        s=socket.socket(socket.AF_INET6 if ':' in a[0] else socket.AF_INET)\n  \
        try:\n    s.connect(a);print('connected')\n  except OSError as e:print(e.errno)";
    let out = h.run_ok(&["--", PY, "-c", probe]);
    assert_eq!(out, format!("{ECONNREFUSED}\n{ECONNREFUSED}\n{ECONNREFUSED}\n"));
    // And the daemon serves on.
    assert!(h.ax().args(["get", "apps"]).output().unwrap().status.success());
}

/// While the daemon is down, the pinned programs still send loopback and egress
/// connects to the broker's port: a user without privileges cannot listen there (it is
/// below the unprivileged port start), and the daemon that comes back takes it again.
#[test]
fn a_user_cannot_take_the_brokers_place_across_a_restart() {
    let Some(mut h) = kernel_host(&[PY, "setpriv"]) else { return };
    let broker = format!("{}:{}", support::NODE_IP, ax_core::BROKER_PORT);
    assert!(h.inet_sockets("-ltun").iter().any(|s| s[2] == broker), "the broker listens at {broker}");
    h.stop_daemon();
    let squat = format!(
        "import socket\ns=socket.socket()\ntry:\n  s.bind(('{}',{}));s.listen();print('listening')\n\
         except OSError as e:print(e.errno)",
        support::NODE_IP,
        ax_core::BROKER_PORT
    );
    let as_nobody = ["--reuid=65534", "--regid=65534", "--clear-groups", "--", PY, "-c", &squat];
    // EACCES: binding there needs CAP_NET_BIND_SERVICE.
    assert_eq!(h.stdout_of("setpriv", &as_nobody).trim(), "13");
    assert!(h.start_kernel_daemon(&[]), "the kernel driver installed before and not after");
    assert!(h.inet_sockets("-ltun").iter().any(|s| s[2] == broker), "the broker is back at {broker}");
}

// ---- datagrams, in the kernel ------------------------------------------------------

/// A UDP server on port 9000 answering each datagram with its first argument.
const UDP_ECHO: &str = "import socket,sys
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind(('',9000))
while True:
  d,a=u.recvfrom(100);u.sendto(sys.argv[1].encode(),a)";

/// `N` exchanges with HOST:9000, each on a new socket moved off the descriptors where
/// the daemon puts UDP sockets (a dup: only the kernel driver's programs translate
/// there; the user driver's guard refuses it); prints the answer and the source shown.
const UDP_ASK: &str = "import os,socket,sys
host,n=sys.argv[1],int(sys.argv[2])
for _ in range(n):
  u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
  c=socket.socket(fileno=os.dup(u.fileno()));u.close();c.settimeout(20)
  c.sendto(b'hi',(host,9000));d,a=c.recvfrom(100)
  print(d.decode(),a[0],a[1],flush=True);c.close()";

fn udp_echo(h: &mut TestHost, name: &str, args: &[&str]) {
    let mut full = args.to_vec();
    full.extend(["--", PY, "-c", UDP_ECHO, name]);
    h.spawn_app(name, &full);
}

/// UDP datagrams the test host has sent (`Udp: OutDatagrams` of /proc/net/snmp).
fn udp_out_datagrams(h: &TestHost) -> u64 {
    let snmp = h.stdout_of("cat", &["/proc/net/snmp"]);
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "OutDatagrams").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[test]
fn udp_requests_by_name_spread_over_the_rows_and_answers_show_the_service_address() {
    let Some(mut h) = kernel_host(&[PY]) else { return };
    udp_echo(&mut h, "u1", &["--ip", "198.18.3.20", "--name", "udpecho"]);
    udp_echo(&mut h, "u2", &["--ip", "198.18.3.20"]);
    h.wait_for_rows("198.18.3.20:9000", 2);
    let out = h.run_ok(&["--", PY, "-c", UDP_ASK, "udpecho", "40"]);
    let mut seen = std::collections::BTreeSet::new();
    for line in out.lines() {
        let (who, from) = line.split_once(' ').unwrap();
        assert_eq!(from, "198.18.3.20 9000", "the answer's source is the service the app asked: {out}");
        seen.insert(who.to_string());
    }
    assert_eq!(out.lines().count(), 40, "{out}");
    assert_eq!(seen, ["u1".to_string(), "u2".to_string()].into(), "sockets spread over both rows: {out}");
}

#[test]
fn a_denied_datagram_fails_with_econnrefused_and_sends_no_packet() {
    let Some(mut h) = kernel_host(&[PY]) else { return };
    udp_echo(&mut h, "db", &["--ip", "198.18.3.21", "--labels", "role=db"]);
    h.wait_for_rows("198.18.3.21:9000", 1);
    // Label-denied, an unserved port of a served address, the client's own address, and
    // the server's host address (a pool port of the node).
    let host = h.servers_at("198.18.3.21:9000")[0]["ipv4_addr"].as_str().unwrap().to_string();
    let (host_ip, host_port) = host.split_once(':').unwrap();
    let at_host = format!("{host_ip} {host_port}");
    let denied = ["198.18.3.21 9000", "198.18.3.21 9001", "198.18.3.24 9000", at_host.as_str()];
    let refused = "import socket,sys\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor t in sys.argv[1:]:\n  \
        ip,port=t.split()\n  try:\n    u.sendto(b'x',(ip,int(port)));print(t,'sent')\n  \
        except OSError as e:print(t,e.errno)\n";
    let mut args = vec!["--ip", "198.18.3.24", "--labels", "role=web", "--", PY, "-c", refused];
    args.extend(denied.iter().copied().cycle().take(40));
    let before = udp_out_datagrams(&h);
    let out = h.run_ok(&args);
    let after = udp_out_datagrams(&h);
    assert_eq!(out.lines().count(), 40, "{out}");
    assert!(out.lines().all(|l| l.ends_with(&format!(" {}", ECONNREFUSED))), "{out}");
    assert_eq!(after - before, 0, "a refused datagram was sent");
    assert_eq!(h.app_log("db"), "", "the server heard nothing");
    // The count does move when a datagram leaves: one to the blackhole.
    let hole = h.blackhole();
    let before = udp_out_datagrams(&h);
    h.run_ok(&[
        "--",
        PY,
        "-c",
        &format!("import socket\nsocket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(b'x',('{hole}',9))"),
    ]);
    assert!(udp_out_datagrams(&h) > before, "the control datagram went nowhere");
}

#[test]
fn an_app_started_before_a_restart_keeps_sending_datagrams_after_it() {
    let Some(mut h) = kernel_host(&[PY]) else { return };
    udp_echo(&mut h, "old", &["--ip", "198.18.3.22"]);
    h.wait_for_rows("198.18.3.22:9000", 1);
    // One socket made before the restart asks both servers every 50 ms: the one there
    // from the start and, once it exists, the one started after the restart, until the
    // first has answered 50 times and the second 3 (however slow a loaded machine makes
    // each round). An unanswered request (5 s) is counted as lost; any other error is
    // printed.
    let client = "import socket,time\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.settimeout(5)\n\
        ok={};lost=0\nwhile ok.get('198.18.3.22',0)<50 or ok.get('198.18.3.23',0)<3:\n  \
        for ip in ('198.18.3.22','198.18.3.23'):\n    \
        try:\n      u.sendto(b'hi',(ip,9000));d,a=u.recvfrom(100)\n      \
        if a!=(ip,9000):print('error source',a,flush=True)\n      ok[ip]=ok.get(ip,0)+1\n    \
        except TimeoutError:lost+=1\n    \
        except OSError as e:\n      if ip=='198.18.3.22':print('error',e,flush=True)\n  time.sleep(0.05)\n\
        print('ok',ok.get('198.18.3.22',0),ok.get('198.18.3.23',0),lost,flush=True)";
    h.spawn_app("client", &["--", PY, "-c", client]);
    std::thread::sleep(Duration::from_secs(2));
    h.signal_daemon("KILL");
    std::thread::sleep(Duration::from_secs(1));
    assert!(h.start_kernel_daemon(&[]), "the kernel driver installed before and not after");
    udp_echo(&mut h, "new", &["--ip", "198.18.3.23"]);
    h.wait_for_rows("198.18.3.23:9000", 1);
    let done = || h.app_log("client").lines().find(|l| l.starts_with("ok")).map(str::to_string);
    h.wait_until("the client's 50 and 3 answers", Duration::from_secs(120), || done().is_some());
    let done = done().unwrap();
    assert!(!h.app_log("client").contains("error"), "{}", h.app_log("client"));
    let counts: Vec<u32> = done.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect();
    assert!(counts[0] >= 50, "{done}");
    assert!(counts[1] >= 3, "the maps took in the row added after the restart: {done}");
    // Known, not yet understood: a datagram sent while the new daemon attaches its
    // programs may be lost (seen at most once per restart on this loaded machine).
    assert!(counts[2] <= 1, "datagrams lost: {done}");
}

/// An app's answer to `ax run` comes only once the kernel driver's maps hold the app:
/// while another app floods the daemon with listens and closes (so that most commands
/// find a later one queued), new apps with label sets of their own (each a new label
/// class, a rebuild of every entry) connect at once, and every connect is carried.
#[test]
fn apps_started_during_a_flood_of_listens_connect_at_once() {
    let Some(mut h) = kernel_host(&[PY]) else { return };
    web(&mut h, "srv", "198.18.3.30", "zone=default");
    h.wait_for_rows("198.18.3.30:80", 1);
    let flood = "import socket,threading\ndef f():\n  while True:\n    s=socket.socket()\n    \
        s.bind(('0.0.0.0',0));s.listen();s.close()\nfor _ in range(4): threading.Thread(target=f).start()\n";
    // Rows enough that a new label class costs a long rebuild.
    let hold = "import socket,time\nk=[]\nfor _ in range(500):\n  s=socket.socket();s.bind(('0.0.0.0',0));s.listen();k.append(s)\n\
        print('held',flush=True)\ntime.sleep(3600)\n";
    h.spawn_app("hold", &["--ip", "198.18.3.32", "--", PY, "-c", hold]);
    // 500 trapped binds and listens: slow on a loaded machine, so a generous wait.
    h.wait_until("the 500 listeners held", Duration::from_secs(180), || h.app_log("hold").contains("held"));
    h.spawn_app("flood", &["--ip", "198.18.3.31", "--", PY, "-c", flood]);
    let client = "import socket\ntry:\n  socket.create_connection(('198.18.3.30',80),timeout=20);print('ok')\n\
        except OSError as e:print('errno',e.errno)\n";
    for i in 0..10 {
        let labels = format!("zone=default,n{i}=x");
        let out = h.run_ok(&["--labels", &labels, "--", PY, "-c", client]);
        assert_eq!(out, "ok\n", "app {i} ({labels}): {out}");
    }
}

/// The established TCP sockets of the test host (`/proc/net/tcp`, both families) with
/// their owners' uids.
fn established_owners(h: &TestHost) -> Vec<u32> {
    let mut owners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in h.stdout_of("cat", &[table]).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // st 01 is ESTABLISHED; the uid is the eighth field.
            if f.len() > 7 && f[3] == "01" {
                owners.push(f[7].parse().unwrap());
            }
        }
    }
    owners
}

const NOBODY: u32 = 65534;

#[test]
fn an_unprivileged_app_lives_in_the_host_namespace_and_makes_its_own_tcp_sockets() {
    let Some(mut h) = host_placing(&[PY, "curl"]) else { return };
    web(&mut h, "web", "198.18.5.1", "role=a");
    h.wait_for_rows("198.18.5.1:80", 1);
    let hold = "import socket,time\nc=socket.create_connection(('198.18.5.1',80),timeout=20)\n\
        print('peer',c.getpeername()[0],c.getpeername()[1],c.getsockname()[0],flush=True)\ntime.sleep(120)";
    assert!(!established_owners(&h).contains(&NOBODY));
    h.spawn_app("client", &["--user", "nobody", "--ip", "198.18.5.2", "--labels", "role=a", "--", PY, "-c", hold]);
    // The programs answer the names on the app's own socket as on one the daemon made.
    assert_eq!(h.wait_for_line("client", "peer"), "peer 198.18.5.1 80 198.18.5.2");
    // Its connection is a socket of nobody's (the ones the daemon makes are root's): the
    // app made it itself, untrapped.
    assert!(established_owners(&h).contains(&NOBODY), "{:?}", established_owners(&h));
    let apps = h.get("apps");
    let placed = |ip: &str| apps.iter().find(|a| a["app_ip"] == ip).map(|a| a["host_sockets"].clone());
    assert_eq!(placed("198.18.5.2"), Some(true.into()), "{apps:?}");
    assert_eq!(placed("198.18.5.1"), Some(false.into()), "a root app keeps a namespace of its own");
    // Labels hold on its sockets as on every other app's.
    let curl = |labels| {
        let url = "http://198.18.5.1/who";
        h.run(&["--user", "nobody", "--labels", labels, "--", "curl", "-sf", "--max-time", "20", url]).status.code()
    };
    assert_eq!(curl("role=a"), Some(0));
    assert_eq!(curl("role=b"), Some(7));
}

/// What a hostile app in the host's namespace tries: the host's loopback services and
/// abstract sockets, sockets the programs do not rule, and leaving its cgroup. Its own
/// loopback listener still answers it.
const ESCAPES: &str = r#"
import os,socket,sys,threading
def made(*a):
  try: socket.socket(*a).close(); return 'made'
  except OSError as e: return e.errno
def get(addr):
  try:
    c=socket.create_connection(addr,timeout=10); c.sendall(b'GET /who HTTP/1.0\r\n\r\n')
    return repr(c.recv(100))
  except OSError as e: return e.errno
def abstract(name):
  s=socket.socket(socket.AF_UNIX)
  try: s.connect('\0'+name); return 'connected'
  except OSError as e: return e.errno
def write(path):
  try:
    with open(path,'w') as f: f.write(str(os.getpid()))
    return 'moved'
  except OSError as e: return e.errno
print('loopback', get(('127.0.0.1',int(sys.argv[1]))))
print('raw', made(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP))
print('ping', made(socket.AF_INET,socket.SOCK_DGRAM,socket.IPPROTO_ICMP))
print('sctp', made(socket.AF_INET6,socket.SOCK_STREAM,132))
print('mptcp', made(socket.AF_INET,socket.SOCK_STREAM,262))
print('packet', made(socket.AF_PACKET,socket.SOCK_DGRAM,0))
print('vsock', made(40,socket.SOCK_STREAM,0))
print('netlink', made(socket.AF_NETLINK,socket.SOCK_RAW,0))
print('pair', socket.socketpair()[0].family.name)
print('abstract', abstract('ax-test-host'))
print('cgroup', write(sys.argv[2]+'/cgroup.procs'))
l=socket.socket(); l.bind(('127.0.0.1',7000)); l.listen()
def serve():
  c,_=l.accept(); c.recv(100); c.sendall(b'own'); c.close()
threading.Thread(target=serve).start()
print('own', get(('127.0.0.1',7000)))
"#;

#[test]
fn an_app_in_the_host_namespace_reaches_nothing_of_the_host_the_others_cannot() {
    let Some(mut h) = host_placing(&[PY, "curl"]) else { return };
    // The host's own: a web server on its loopback, an abstract socket.
    host_loopback_server(&mut h, 18080);
    let mut abstract_listener = h.cmd(PY);
    let listen = "import socket\ns=socket.socket(socket.AF_UNIX);s.bind('\\0ax-test-host');s.listen()\n\
        print('listening',flush=True)\nwhile True:\n  c,_=s.accept();c.sendall(b'host');c.close()";
    abstract_listener.args(["-c", listen]);
    h.spawn_plain("host-abstract", abstract_listener);
    h.wait_for_line("host-abstract", "listening");
    // The cgroup the daemon works in (here the root of the cgroup2 hierarchy).
    let log = h.daemon_log();
    let line = log.lines().find(|l| l.contains("kernel driver installed")).expect("the install line");
    let cgroup = line.split("cgroup=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let served = |h: &TestHost| h.app_log("host-web").matches("GET").count();
    let before = served(&h);
    let out = h.run_ok(&["--user", "nobody", "--", PY, "-c", ESCAPES, "18080", &cgroup]);
    let said: std::collections::HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    // Refused, or let through to the broker and closed at once: never the host's server.
    assert!(["111", "b''", "104"].contains(&said["loopback"]), "{out}");
    for kind in ["raw", "ping", "sctp", "mptcp"] {
        assert_eq!(said[kind], "93", "{kind}: EPROTONOSUPPORT\n{out}");
    }
    // Other families would carry traffic in kernel sockets no program rules.
    for kind in ["packet", "vsock"] {
        assert_eq!(said[kind], "97", "{kind}: EAFNOSUPPORT\n{out}");
    }
    assert_eq!((said["netlink"], said["pair"]), ("made", "AF_UNIX"), "{out}");
    assert_eq!(said["abstract"], "1", "Landlock's scope: EPERM\n{out}");
    assert_eq!(said["cgroup"], "13", "EACCES\n{out}");
    assert_eq!(said["own"], "b'own'", "{out}");
    assert_eq!(served(&h), before, "the host's server was reached\n{}", h.app_log("host-web"));
}

#[test]
fn an_app_in_the_host_namespace_that_a_new_daemon_does_not_know_is_stopped() {
    let Some(mut h) = host_placing(&[PY, "pgrep"]) else { return };
    let busy = "import socket,time\nprint('up',flush=True)\nwhile True:\n  socket.socket().close();time.sleep(0.05)";
    h.spawn_app("busy", &["--user", "nobody", "--", PY, "-c", busy]);
    h.wait_for_line("busy", "up");
    let running = |h: &TestHost| h.cmd("pgrep").args(["-u", "nobody", "-f", "while True"]).status().unwrap().success();
    assert!(running(&h));
    h.signal_daemon("KILL");
    // Started afresh, this daemon would rule none of the TCP sockets the app makes.
    assert!(h.start_kernel_daemon(&["--clean"]), "the kernel driver installed before and not after");
    h.wait_until("the unknown app to be stopped", Duration::from_secs(30), || !running(&h));
    assert!(h.daemon_log().contains("does not know"), "{}", h.daemon_log());
}

/// A python web server of the test host's own (not under ax) on 127.0.0.1:`port`,
/// serving `who` = "host", up (its log, `host-web`, shows curl's request).
fn host_loopback_server(h: &mut TestHost, port: u16) {
    let root = h.web_root("host", "who", "host");
    let mut server = h.cmd(PY);
    server.args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory", &root]);
    h.spawn_plain("host-web", server);
    let url = format!("http://127.0.0.1:{port}/who");
    h.wait_until("the host's web server", Duration::from_secs(20), || {
        h.cmd("curl").args(["-sf", &url]).output().is_ok_and(|o| o.stdout == b"host")
    });
}

/// An app that holds TCP sockets it made while the programs ruled it, and tries one on
/// the host's loopback server (argv[1]) every 2 ms: refused while the programs rule
/// it; the first time it is not, it asks the server and says what it got.
const SNEAK: &str = r#"
import socket,sys,time
pool=[socket.socket() for _ in range(20)]
print('up',flush=True)
probe=pool.pop()
while True:
  try: probe.connect(('127.0.0.1',int(sys.argv[1])))
  except ConnectionRefusedError: time.sleep(0.002); continue
  except OSError as e: print('error',e.errno,flush=True); time.sleep(0.002); continue
  probe.sendall(b'GET /who HTTP/1.0\r\n\r\n'); print('reached',repr(probe.recv(300)[-4:]),flush=True); break
while True: time.sleep(1)
"#;

#[test]
fn an_app_in_the_host_namespace_is_stopped_before_an_older_layouts_programs_go() {
    let Some(mut h) = host_placing(&[PY, "curl", "pgrep"]) else { return };
    host_loopback_server(&mut h, 18081);
    let served = |h: &TestHost| h.app_log("host-web").matches("GET /who").count();
    let before = served(&h);
    h.spawn_app("sneak", &["--user", "nobody", "--", PY, "-c", SNEAK, "18081"]);
    h.wait_for_line("sneak", "up");
    let running =
        |h: &TestHost| h.cmd("pgrep").args(["-u", "nobody", "-f", "pool=.socket"]).output().unwrap().status.success();
    std::thread::sleep(Duration::from_secs(1));
    assert!(running(&h) && !h.app_log("sneak").contains("reached"), "{}", h.app_log("sneak"));
    h.signal_daemon("KILL");
    // An upgrade: the pins left are an older layout's, which the new daemon removes.
    let pins = format!("{}/bpf", ax_api::RUN_DIR);
    h.stdout_of("mv", &[&format!("{pins}/ax-kernel-v5"), &format!("{pins}/ax-kernel-v4")]);
    assert!(h.start_kernel_daemon(&[]));
    h.wait_until("the app to be stopped", Duration::from_secs(30), || !running(&h));
    assert_eq!(served(&h), before, "the app reached the host's server unruled\n{}", h.app_log("sneak"));
    assert!(!h.app_log("sneak").contains("reached"), "{}", h.app_log("sneak"));
}

#[test]
fn a_daemon_without_the_kernel_driver_stops_every_process_of_an_app_in_the_host_namespace() {
    let Some(mut h) = host_placing(&[PY, "pgrep"]) else { return };
    // The app's first process and a child it forked, which makes TCP sockets.
    let forks = "import os,socket,time\nif os.fork()==0:\n  while True: socket.socket().close();time.sleep(0.05)\n\
        print('up',flush=True)\nwhile True: time.sleep(0.05)";
    h.spawn_app("forks", &["--user", "nobody", "--", PY, "-c", forks]);
    h.wait_for_line("forks", "up");
    let count = |h: &TestHost| h.stdout_of("sh", &["-c", "pgrep -c -u nobody -f os.fork || true"]).trim().to_string();
    assert_eq!(count(&h), "2");
    h.signal_daemon("KILL");
    // This one has no kernel driver: no program of its own would rule their sockets.
    h.start_daemon(&["--driver", "user"]);
    h.wait_until("every process of the app to be stopped", Duration::from_secs(40), || count(&h) == "0");
}
