//! End-to-end tests, as root: unmodified programs from Debian packages under `ax run`,
//! through the real trap engine, each test in a test host of its own.

mod support;

use std::collections::HashSet;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{TestHost, NODE_IP, PEER_IP};

const PY: &str = "/usr/bin/python3";

fn host(programs: &[&str]) -> TestHost {
    support::require_root_and(programs);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h
}

#[test]
fn two_backends_on_one_address_both_answer_curl() {
    let mut h = host(&["curl", PY]);
    h.python_backend("b1", "198.18.0.1", 80);
    h.python_backend("b2", "198.18.0.1", 80);
    h.wait_for_rows("198.18.0.1:80", 2);
    let seen = h.distinct_answers(&["--", "curl", "-sf", "http://198.18.0.1/who"], 2, 30);
    assert_eq!(seen, HashSet::from(["b1".to_string(), "b2".to_string()]));
    let head = h.run_ok(&["--", "curl", "-sI", "http://198.18.0.1/"]);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
}

#[test]
fn nginx_with_its_stock_config_serves_on_both_stacks() {
    let mut h = host(&["curl", "nginx"]);
    h.spawn_app("nginx", &["--ip", "198.18.0.5", "--", "nginx", "-g", "daemon off;"]);
    h.wait_for_rows("198.18.0.5:80", 1);
    // Its `[::]:80` is v6-only (nginx's default): served in the app's own namespace, as
    // the app's addresses are IPv4 ones; IPv4 clients (v4-mapped ones too) reach `80`.
    let sockets = h.get("sockets");
    let binds: HashSet<&str> = sockets.iter().map(|s| s["bind_ip"].as_str().unwrap()).collect();
    assert_eq!(binds, HashSet::from(["0.0.0.0:80"]));
    for url in ["http://198.18.0.5/", "http://[::ffff:198.18.0.5]/"] {
        let body = h.run_ok(&["--", "curl", "-sf", url]);
        assert!(body.contains("Welcome to nginx"), "{url}: {body}");
    }
}

#[test]
fn redis_with_labels_and_benchmark() {
    let mut h = host(&["redis-server", "redis-cli", "redis-benchmark"]);
    h.spawn_app(
        "redis",
        &[
            "--ip",
            "198.18.0.2",
            "--labels",
            "role=prod",
            "--",
            "redis-server",
            "--port",
            "6379",
            "--protected-mode",
            "no",
            "--save",
            "",
        ],
    );
    // redis binds 0.0.0.0 and a v6-only `::` (served in its own namespace): one row.
    h.wait_for_rows("198.18.0.2:6379", 1);
    assert_eq!(h.run_ok(&["--labels", "role=prod", "--", "redis-cli", "-h", "198.18.0.2", "ping"]).trim(), "PONG");
    // No shared label: refused, before any packet.
    let denied = h.run(&["--", "redis-cli", "-h", "198.18.0.2", "ping"]);
    let text = String::from_utf8_lossy(&denied.stdout).to_string() + &String::from_utf8_lossy(&denied.stderr);
    assert!(text.contains("Connection refused"), "{text}");
    let bench = h.run_ok(&[
        "--labels",
        "role=prod",
        "--",
        "redis-benchmark",
        "-h",
        "198.18.0.2",
        "-q",
        "-n",
        "2000",
        "-c",
        "10",
        "-t",
        "get,set",
    ]);
    assert!(bench.contains("SET:") && bench.contains("GET:"), "{bench}");
}

#[test]
fn labels_isolate_in_both_directions() {
    let mut h = host(&["curl", PY]);
    h.spawn_app("prod", &["--ip", "198.18.1.1", "--labels", "role=prod", "--", PY, "-m", "http.server", "80"]);
    h.spawn_app("test", &["--ip", "198.18.1.2", "--labels", "role=test,team=a", "--", PY, "-m", "http.server", "80"]);
    h.wait_for_rows("198.18.1.1:80", 1);
    h.wait_for_rows("198.18.1.2:80", 1);
    let code = |labels: &str, url: &str| {
        h.run(&["--labels", labels, "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url])
    };
    assert_eq!(code("role=prod", "http://198.18.1.1/").stdout, b"200");
    assert_eq!(code("team=a", "http://198.18.1.2/").stdout, b"200");
    // curl's exit code 7: failed to connect.
    assert_eq!(code("role=prod", "http://198.18.1.2/").status.code(), Some(7));
    assert_eq!(code("role=test", "http://198.18.1.1/").status.code(), Some(7));
    assert_eq!(code("zone=default", "http://198.18.1.1/").status.code(), Some(7));
}

#[test]
fn iperf3_client_to_server() {
    let mut h = host(&["iperf3"]);
    h.spawn_app("iperf", &["--ip", "198.18.0.6", "--", "iperf3", "-s", "-1"]);
    h.wait_for_rows("198.18.0.6:5201", 1);
    let out = h.run_ok(&["--", "iperf3", "-c", "198.18.0.6", "-t", "1", "-J"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap();
    assert!(bytes > 1e6, "received only {bytes} bytes");
    // iperf3 -s -1 exits after one test; its rows leave with it.
    h.wait_for_rows("198.18.0.6:5201", 0);
}

#[test]
fn static_busybox_httpd_and_wget() {
    let mut h = host(&["busybox"]);
    let www = h.web_root("www", "index.html", "static hello\n");
    let busybox = if std::path::Path::new("/bin/busybox").exists() { "/bin/busybox" } else { "busybox" };
    h.spawn_app("httpd", &["--ip", "198.18.0.7", "--", busybox, "httpd", "-f", "-p", "8080", "-h", &www]);
    h.wait_for_rows("198.18.0.7:8080", 1);
    assert_eq!(h.run_ok(&["--", busybox, "wget", "-q", "-O", "-", "http://198.18.0.7:8080/"]), "static hello\n");
}

#[test]
fn a_closed_listener_leaves_within_a_second_and_refuses() {
    let mut h = host(&[PY]);
    let flag = h.dir.join("close-now");
    let script = format!(
        "import socket,os,time\ns=socket.socket()\ns.bind(('',7000))\ns.listen()\nwhile not os.path.exists('{}'): time.sleep(0.02)\ns.close()\ntime.sleep(60)",
        flag.display()
    );
    h.spawn_app("closer", &["--ip", "198.18.2.1", "--", PY, "-c", &script]);
    h.wait_for_rows("198.18.2.1:7000", 1);
    fs::write(&flag, "").unwrap();
    let t0 = Instant::now();
    h.wait_for_rows("198.18.2.1:7000", 0);
    // How fast is measured by bench/run.sh; a test never fails on wall-clock time.
    eprintln!("closed listener's row left after {:?}", t0.elapsed());
    // The app still runs, but the address is not served: refused.
    assert_eq!(h.get("apps").len(), 1);
    let probe = "import socket\ntry:\n  socket.create_connection(('198.18.2.1',7000),timeout=5)\n  print('connected')\nexcept ConnectionRefusedError:\n  print('refused')";
    assert_eq!(h.run_ok(&["--", PY, "-c", probe]).trim(), "refused");
}

#[test]
fn an_exited_app_leaves_every_table() {
    let mut h = host(&[PY]);
    h.spawn_app(
        "short",
        &[
            "--ip",
            "198.18.2.2",
            "--",
            PY,
            "-c",
            "import socket,time\ns=socket.socket()\ns.bind(('',80))\ns.listen()\ntime.sleep(1.5)",
        ],
    );
    h.wait_for_rows("198.18.2.2:80", 1);
    assert_eq!(h.get("sockets").len(), 1);
    h.wait_until("the app to leave", Duration::from_secs(10), || h.get("apps").is_empty());
    assert!(h.get("servers").is_empty());
    assert!(h.get("sockets").is_empty());
}

#[test]
fn a_bad_pointer_gets_efault_and_the_daemon_serves_the_next_app() {
    let mut h = host(&[PY, "curl"]);
    let script = "import ctypes,socket,errno\nlibc=ctypes.CDLL(None,use_errno=True)\ns=socket.socket()\n\
        r=libc.connect(s.fileno(),ctypes.c_void_p(16),16)\nprint(r,errno.errorcode[ctypes.get_errno()])\n\
        r=libc.getsockname(s.fileno(),ctypes.c_void_p(16),ctypes.c_void_p(32))\nprint(r,errno.errorcode[ctypes.get_errno()])";
    assert_eq!(h.run_ok(&["--", PY, "-c", script]), "-1 EFAULT\n-1 EFAULT\n");
    h.python_backend("after", "198.18.2.3", 80);
    h.wait_for_rows("198.18.2.3:80", 1);
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://198.18.2.3/who"]), "after");
}

#[test]
fn io_uring_is_refused_and_unix_sockets_are_untouched() {
    let h = host(&[PY]);
    let script = "import ctypes,socket,errno,os\nlibc=ctypes.CDLL(None,use_errno=True)\n\
        r=libc.syscall(425,8,ctypes.c_void_p(0))\nprint(r,errno.errorcode[ctypes.get_errno()])\n\
        a,b=socket.socketpair()\na.sendall(b'unix-ok')\nprint(b.recv(16).decode())\n\
        p='/tmp/ax-e2e-%d.sock'%os.getpid()\nl=socket.socket(socket.AF_UNIX)\nl.bind(p)\nl.listen()\n\
        c=socket.socket(socket.AF_UNIX)\nc.connect(p)\nprint(c.getpeername()==p)\nos.unlink(p)";
    assert_eq!(h.run_ok(&["--", PY, "-c", script]), "-1 ENOSYS\nunix-ok\nTrue\n");
}

#[test]
fn apps_see_virtual_addresses_and_loopback_stays_private() {
    let mut h = host(&[PY]);
    h.spawn_app("srv", &["--ip", "198.18.3.1", "--", PY, "-c", "import socket,time\ns=socket.socket()\ns.bind(('',80))\ns.listen()\nprint(s.getsockname(),flush=True)\nc,_=s.accept()\nprint(c.getsockname(),flush=True)\ntime.sleep(30)"]);
    h.wait_for_rows("198.18.3.1:80", 1);
    let client = "import socket\nc=socket.create_connection(('198.18.3.1',80))\nprint(c.getpeername())\n\
        l=socket.socket()\nl.bind(('127.0.0.1',9000))\nl.listen()\nx=socket.create_connection(('127.0.0.1',9000))\nprint(x.getpeername())";
    assert_eq!(h.run_ok(&["--ip", "198.18.3.2", "--", PY, "-c", client]), "('198.18.3.1', 80)\n('127.0.0.1', 9000)\n");
    h.wait_until("the server's view", Duration::from_secs(5), || h.app_log("srv").lines().count() >= 2);
    // The listener shows the wildcard it was bound to, what it accepted its address.
    assert_eq!(h.app_log("srv"), "('0.0.0.0', 80)\n('198.18.3.1', 80)\n");
    // Nothing of the app's loopback listener reached the host's namespace or tables.
    assert!(h.get("sockets").iter().all(|s| !s["bind_ip"].as_str().unwrap().starts_with("127.")));
}

#[test]
fn threads_and_non_blocking_sockets() {
    let mut h = host(&[PY]);
    h.python_backend("mt", "198.18.4.1", 80);
    h.wait_for_rows("198.18.4.1:80", 1);
    let script = "import socket,threading,asyncio\nok=[]\n\
        def w():\n  for _ in range(10):\n    c=socket.create_connection(('198.18.4.1',80));c.sendall(b'GET /who HTTP/1.0\\r\\n\\r\\n')\n    ok.append(c.recv(4096).startswith(b'HTTP/1.0 200'));c.close()\n\
        ts=[threading.Thread(target=w) for _ in range(8)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nprint(sum(ok))\n\
        async def a():\n  r,w=await asyncio.open_connection('198.18.4.1',80)\n  w.write(b'GET /who HTTP/1.0\\r\\n\\r\\n')\n  return (await r.read()).endswith(b'mt')\n\
        async def m():\n  return sum(await asyncio.gather(*[a() for _ in range(20)]))\nprint(asyncio.run(m()))";
    assert_eq!(h.run_ok(&["--", PY, "-c", script]), "80\n20\n");
}

/// socket() may be answered with a socket the daemon made ahead (after the app's last
/// call of the same kind): each must be exactly what the call asked for, and only ever
/// the app's own, even with two apps calling at once.
#[test]
fn sockets_made_ahead_are_as_asked_and_each_apps_own() {
    let mut h = host(&[PY]);
    h.python_backend("srv", "198.18.4.9", 80);
    h.wait_for_rows("198.18.4.9:80", 1);
    // Kinds in turn, each several times (so spares of one kind sit while others are
    // asked for); then connects, whose sockets must show the app's own address.
    let script = "import socket,fcntl,os,ctypes,sys\nlibc=ctypes.CDLL(None,use_errno=True)\n\
        S,D,N,C=socket.SOCK_STREAM,socket.SOCK_DGRAM,socket.SOCK_NONBLOCK,socket.SOCK_CLOEXEC\n\
        kinds=[(2,S),(2,S|N),(2,S|C),(2,S|N|C),(10,S),(2,D),(10,D|N),(2,S,6),(10,D,17)]\nbad=0\n\
        for _ in range(4):\n  for k in kinds:\n    f,t=k[0],k[1];p=k[2] if len(k)>2 else 0\n    \
        fd=libc.socket(f,t,p)\n    s=socket.socket(fileno=fd)\n    \
        got=(s.getsockopt(1,socket.SO_DOMAIN),s.getsockopt(1,socket.SO_TYPE),s.getsockopt(1,socket.SO_PROTOCOL),\n      \
        bool(fcntl.fcntl(fd,fcntl.F_GETFL)&os.O_NONBLOCK),bool(fcntl.fcntl(fd,fcntl.F_GETFD)&fcntl.FD_CLOEXEC),s.getsockname()[1])\n    \
        want=(f,t&~(N|C),6 if t&S==S else 17,bool(t&N),bool(t&C),0)\n    \
        if got!=want:print('wrong',got,want);bad+=1\n    s.close()\n\
        names=set()\nfor _ in range(40):\n  c=socket.create_connection(('198.18.4.9',80));names.add(c.getsockname()[0]);c.close()\n\
        print('done',bad,*sorted(names),flush=True)";
    h.spawn_app("other", &["--ip", "198.18.4.10", "--", PY, "-c", script]);
    let mine = h.run_ok(&["--ip", "198.18.4.11", "--", PY, "-c", script]);
    assert_eq!(mine, "done 0 198.18.4.11\n");
    assert_eq!(h.wait_for_line("other", "done"), "done 0 198.18.4.10");
}

#[test]
fn other_addresses_go_out_directly_from_the_host() {
    let mut h = host(&[PY, "curl"]);
    let www = h.web_root("peer", "who", "plain peer");
    let mut c = h.peer_cmd(PY);
    c.args(["-m", "http.server", "8081", "--bind", PEER_IP, "--directory", &www]);
    h.spawn_plain("peer", c);
    let url = format!("http://{PEER_IP}:8081/who");
    h.wait_until("the peer server", Duration::from_secs(10), || h.run(&["--", "curl", "-sf", &url]).status.success());
    assert_eq!(h.run_ok(&["--", "curl", "-sf", &url]), "plain peer");
    // It came from the node address: the connection left the host as itself.
    assert!(h.app_log("peer").contains(NODE_IP), "{}", h.app_log("peer"));
}

#[test]
fn tables_have_the_manuals_columns() {
    let mut h = host(&[PY]);
    h.python_backend("t", "198.18.5.1", 8000);
    h.wait_for_rows("198.18.5.1:8000", 1);
    let apps = h.get("apps");
    assert_eq!(apps.len(), 1);
    let a = &apps[0];
    let id = a["app_id"].as_str().unwrap();
    assert!(id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert!(a["name"].as_str().unwrap().starts_with('<') && a["name"].as_str().unwrap().len() == 38);
    assert_eq!(a["app_ip"], "198.18.5.1");
    // JSON carries labels as an object and zones as a list; the table prints them as before.
    assert_eq!(a["labels"], serde_json::json!({"zone": "default"}));
    assert_eq!(a["zones"], serde_json::json!(["zone==default"]));
    let text = String::from_utf8(h.ax().args(["get", "apps"]).output().unwrap().stdout).unwrap();
    let row: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(row[row.len() - 2..], ["zone=default", "[zone==default]"], "{text}");
    // The daemon's driver, and which one as AX_TEST_DRIVER asks where it does.
    let driver = h.daemon_driver();
    assert_eq!(a["driver"], driver.as_str());
    assert!(support::test_driver().is_none_or(|d| d == driver), "{driver}");
    let s = &h.get("servers")[0];
    assert_eq!(s["app_id"], id);
    assert_eq!(s["proto"], "tcp");
    assert!(s["ipv4_addr"].as_str().unwrap().starts_with(&format!("{NODE_IP}:")));
    let text = String::from_utf8(h.ax().args(["get", "servers"]).output().unwrap().stdout).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NODEID", "CLUSTER", "APPID", "PROTO", "SERVICEADDR", "IPV4ADDR"]);
    let text = String::from_utf8(h.ax().args(["get", "sockets"]).output().unwrap().stdout).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "NODEID", "APPID", "INODE", "PROTO", "FLAGS", "BINDIP", "BACKLOG"]);
}

#[test]
fn exit_status_is_the_programs() {
    let h = host(&[]);
    assert_eq!(h.run(&["--", "sh", "-c", "exit 3"]).status.code(), Some(3));
    let missing = h.run(&["--", "no-such-program-ax"]);
    assert_eq!(missing.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-program-ax: command not found"));
    let version = h.ax().arg("version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout), format!("ax {}\n", env!("CARGO_PKG_VERSION")));
    assert_eq!(h.run(&["--", "sh", "-c", "kill -TERM $$"]).status.code(), Some(128 + 15));
}

/// An `--ip` that is an address of the host, or inside a network it reaches directly
/// (an interface's prefix, or a link route), is refused naming the interface; the
/// node's own address is taken, and `--ip-overlap-ok` takes the others.
#[test]
fn an_ip_of_the_hosts_own_networks_is_refused_unless_overlap_is_ok() {
    let h = host(&[]);
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(["-n", &h.name]).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // A second network on a bridge of its own, and one reached by a route out of ax0.
    ip(&["link", "add", "axb", "type", "bridge"]);
    ip(&["addr", "add", "198.18.250.1/24", "dev", "axb"]);
    ip(&["link", "set", "axb", "up"]);
    ip(&["route", "add", "198.18.251.0/24", "dev", "ax0"]);
    for (given, want) in [
        ("198.18.250.1", "--ip 198.18.250.1 is an address of this host (on axb)"),
        ("198.18.250.9", "--ip 198.18.250.9 is inside 198.18.250.0/24, a network this host reaches directly (on axb)"),
        ("198.18.251.9", "--ip 198.18.251.9 is inside 198.18.251.0/24, a network this host reaches directly (on ax0)"),
        ("10.251.0.9", "--ip 10.251.0.9 is inside 10.251.0.0/24, a network this host reaches directly (on ax0)"),
    ] {
        let out = h.run(&["--ip", given, "--", "echo", "ran"]);
        assert!(out.stdout.is_empty(), "{given}: {out:?}");
        support::fails_with(out, want);
        assert!(h.daemon_log().contains(want), "{given}: the daemon logs the refusal");
    }
    assert_eq!(h.run_ok(&["--ip", NODE_IP, "--", "echo", "ran"]), "ran\n");
    assert_eq!(h.run_ok(&["--ip", "198.18.252.1", "--", "echo", "ran"]), "ran\n");
    assert_eq!(h.run_ok(&["--ip", "198.18.250.9", "--ip-overlap-ok", "--", "echo", "ran"]), "ran\n");
    support::fails_with(
        h.run(&["--ip-overlap-ok", "--", "true"]),
        "the following required arguments were not provided",
    );
}

/// The daemon's log in a file (not a terminal) has no colour escapes; with
/// `--log-format json` each line is one JSON object with its level and message.
#[test]
fn the_daemon_log_in_a_file_is_plain_text_or_json_lines() {
    let mut h = host(&[]);
    h.run_ok(&["--name", "logged", "--", "true"]);
    assert!(h.stop_daemon().success());
    let text = h.daemon_log();
    assert!(text.contains(" INFO ") && text.contains("logged"), "{text}");
    assert!(!text.contains('\x1b'), "escapes in a log file: {text:?}");
    h.start_daemon(&["--log-format", "json"]);
    h.run_ok(&["--name", "logged", "--", "true"]);
    assert!(h.stop_daemon().success());
    let json = &h.daemon_log()[text.len()..];
    let lines: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))).collect();
    for line in &lines {
        assert!(line["level"].is_string() && line["message"].is_string(), "{line}");
    }
    let info = |what: &str| lines.iter().any(|l| l["level"] == "INFO" && l.to_string().contains(what));
    assert!(info("logged"), "the app's registration: {json}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let mut h = host(&[]);
    let fails = support::fails_with;
    fails(h.run(&["--ip", "300.1.1.1", "--", "true"]), "--ip 300.1.1.1 is not an IPv4 address");
    fails(h.run(&["--ip", "127.0.0.1", "--", "true"]), "loopback");
    fails(h.run(&["--labels", "role", "--", "true"]), "label 'role' is not of the form label=value");
    fails(h.ax().args(["daemon", "--ports", "5000-4000"]).output().unwrap(), "range '5000-4000' ends before it starts");
    fails(h.ax().args(["daemon", "--ports", "http"]).output().unwrap(), "'http' is not a port");
    fails(h.ax().args(["daemon", "--tls"]).output().unwrap(), "--tls needs --tls-ca-cert, --tls-cert, --tls-key");
    fails(h.ax().args(["daemon", "--tls-cert", "n.pem"]).output().unwrap(), "--tls-cert is given without --tls");
    // A second daemon on the same host is refused.
    fails(h.ax().args(["daemon", "--node-interface", "ax0"]).output().unwrap(), "another ax daemon is already serving");
    // A mistyped flag is clap's usage error (status 2) with its suggestion, not a program.
    let out = h.run(&["--lables", "role=x", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    fails(out, "unexpected argument '--lables' found\n\n  tip: a similar argument exists: '--labels'");
    // After the program, its flags are its own.
    assert_eq!(h.run_ok(&["--labels", "role=x", "sh", "-c", "echo $0 $1", "--lables", "-x"]), "--lables -x\n");
    // With no daemon: after the wait (said once, after a second), the message names the
    // socket and how to start it; with no wait, at once and without a word of waiting.
    h.stop_daemon();
    let out = h.run(&["--daemon-wait", "2", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.matches("ax: waiting for the ax daemon at /var/run/appswitch/run.sock (").count(), 1, "{err}");
    assert!(err.contains("up to 2s (--daemon-wait)"), "{err}");
    fails(out, "cannot reach the ax daemon at /var/run/appswitch/run.sock");
    let out =
        h.cmd("timeout").env("AX_DAEMON_WAIT", "0").args(["60", support::ax_bin(), "run", "true"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("waiting"), "{out:?}");
    fails(out, "cannot reach the ax daemon at /var/run/appswitch/run.sock");
    let out = h.ax().args(["get", "apps"]).output().unwrap();
    fails(out, "start it first with 'ax daemon'");
}

#[test]
fn an_app_gets_its_share_of_the_port_pool_and_an_exhausted_pool_fails_the_bind_with_eaddrinuse() {
    support::require_root_and(&[PY]);
    let mut h = TestHost::new();
    h.start_daemon(&["--ports", "45000-45001"]);
    let script = "import socket,errno\nkeep=[]\nfor p in (80,81,82):\n  s=socket.socket()\n  try:\n    s.bind(('',p));keep.append(s);print('bound',p)\n  except OSError as e:\n    print(errno.errorcode[e.errno],p)";
    // Two ports: an app's share (a quarter, at least one) is one.
    assert_eq!(h.run_ok(&["--ip", "198.18.6.1", "--", PY, "-c", script]), "bound 80\nEADDRINUSE 81\nEADDRINUSE 82\n");
    assert!(h.daemon_log().contains("holds 1 of the 2 ports of --ports 45000-45001, its share"), "{}", h.daemon_log());
    // The port came back when the app exited.
    h.wait_until("ports back", Duration::from_secs(5), || h.get("sockets").is_empty());
    // Two apps with one port each take the pool: a third app's bind fails.
    let hold = "import socket,time\ns=socket.socket()\ns.bind(('',80))\ns.listen()\ntime.sleep(600)";
    h.spawn_app("a", &["--ip", "198.18.6.2", "--", PY, "-c", hold]);
    h.spawn_app("b", &["--ip", "198.18.6.3", "--", PY, "-c", hold]);
    h.wait_until("both apps hold a port", Duration::from_secs(30), || h.get("sockets").len() == 2);
    let out = h.run_ok(&["--ip", "198.18.6.1", "--", PY, "-c", script]);
    assert_eq!(out, "EADDRINUSE 80\nEADDRINUSE 81\nEADDRINUSE 82\n");
    assert!(
        h.daemon_log().contains("port pool exhausted: all 2 ports of --ports 45000-45001 are in use"),
        "{}",
        h.daemon_log()
    );
}

#[test]
fn default_address_is_the_node_and_rest_answers_on_loopback() {
    let mut h = host(&[PY, "curl"]);
    let root = h.web_root("n", "who", "on the node");
    h.spawn_app("node", &["--", PY, "-m", "http.server", "8000", "--directory", &root]);
    let service = format!("{NODE_IP}:8000");
    h.wait_for_rows(&service, 1);
    assert_eq!(h.run_ok(&["--", "curl", "-sf", &format!("http://{service}/who")]), "on the node");
    // The REST API on 127.0.0.1:6664, from the host's side (not under ax).
    let out = h.cmd("curl").args(["-sf", "http://127.0.0.1:6664/v1/servers"]).output().unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["service_addr"], service.as_str());
    let out = h.cmd("curl").args(["-s", "-w", "%{http_code}", "http://127.0.0.1:6664/v1/nope"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("404"));
    // The API socket and its directory are root's alone.
    let modes = String::from_utf8(
        h.cmd("stat")
            .args(["-c", "%a %U", "/var/run/appswitch", "/var/run/appswitch/ax.sock"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(modes, "700 root\n600 root\n");
}

#[test]
fn a_slow_blocking_connect_does_not_hold_up_the_apps_other_threads() {
    let mut h = host(&[PY]);
    h.python_backend("fast", "198.18.7.1", 80);
    h.wait_for_rows("198.18.7.1:80", 1);
    // 10.251.0.3 is on the node's subnet but nobody has it: the blocking connect waits
    // for ARP to give up, in a helper thread of the daemon, while thread B is served.
    let script = "import socket,threading,time,errno\nlog=[]\n\
        def a():\n  s=socket.socket()\n  try:\n    s.connect(('10.251.0.3',80));log.append('A connected')\n  except OSError as e:\n    log.append('A '+errno.errorcode[e.errno])\n\
        def b():\n  time.sleep(0.3)\n  c=socket.create_connection(('198.18.7.1',80));c.close();log.append('B connected')\n\
        ts=[threading.Thread(target=f) for f in (a,b)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nprint(','.join(log))";
    assert_eq!(h.run_ok(&["--", PY, "-c", script]).trim(), "B connected,A EHOSTUNREACH");
}

#[test]
fn daemon_settings_from_flags_and_environment() {
    support::require_root_and(&["curl"]);
    let mut h = TestHost::new();
    // A non-root daemon is refused with the reason.
    let out = h
        .cmd("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", support::ax_bin(), "daemon"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ax daemon must run as root"), "{out:?}");
    let mut c = h.ax();
    c.args(["daemon", "--node-interface", NODE_IP, "--node-name", "n7"])
        .env("AX_PORTS", "41000-41009")
        .env("AX_CLUSTER", "c1");
    h.spawn_plain("daemon", c);
    h.wait_until("the daemon", Duration::from_secs(10), || {
        h.ax().args(["get", "apps"]).output().is_ok_and(|o| o.status.success())
    });
    let out = h.cmd("curl").args(["-sf", "http://127.0.0.1:6664/v1/info"]).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((info["node_id"].as_str(), info["cluster"].as_str()), (Some("n7"), Some("c1")));
    assert_eq!((info["node_ip"].as_str(), info["ports"].as_str()), (Some(NODE_IP), Some("41000-41009")));
    let bad = h.ax().args(["daemon", "--node-interface", "nosuch0", "--rest-port", "6665"]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--node-interface nosuch0: no such interface"), "{bad:?}");
}

#[test]
fn pool_ports_answer_members_only_and_exposed_ports_answer_anyone() {
    let mut h = host(&[PY, "curl"]);
    let root = h.web_root("pool", "who", "pool");
    h.spawn_app("pool", &["--ip", "198.18.6.1", "--", PY, "-m", "http.server", "8000", "--directory", &root]);
    h.spawn_app("open", &["--expose", "8001:9901", "--", PY, "-m", "http.server", "8001", "--directory", &root]);
    h.wait_for_rows("198.18.6.1:8000", 1);
    let host_port = h.servers_at("198.18.6.1:8000")[0]["ipv4_addr"].as_str().unwrap().to_string();
    // An app on the node reaches the pool port, by its virtual and its host address.
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://198.18.6.1:8000/who"]), "pool");
    assert_eq!(h.run_ok(&["--", "curl", "-sf", &format!("http://{host_port}/who")]), "pool");
    // A host on the link that is no member of the cluster does not: its SYNs are dropped.
    let from_peer = |url: &str| h.peer_cmd("curl").args(["-s", "--max-time", "3", url]).output().unwrap();
    let out = from_peer(&format!("http://{host_port}/who"));
    assert_eq!(out.status.code(), Some(28), "the pool port answered a non-member: {out:?}");
    // An exposed port is the way in for everyone.
    let url = format!("http://{NODE_IP}:9901/who");
    h.wait_until("the exposed port", Duration::from_secs(20), || from_peer(&url).stdout == b"pool");
}

/// A memcached client: sets a key, asks for it again over the same connection moved to
/// descriptor 1000 (in the range where UDP sockets live and sends are trapped), says
/// `ready`, and once the file FLAG exists asks 200 more times with a 10 s timeout.
const MEMCACHED_CLIENT: &str = "import socket,os,sys,time
c=socket.create_connection(('198.18.0.11',11211),timeout=20)
def ask(s,q):
  s.sendall(q)
  d=b''
  while not d.endswith((b'END\\r\\n',b'STORED\\r\\n')):
    x=s.recv(4096)
    if not x: return 'closed'
    d+=x
  return d.decode().replace('\\r\\n',' ').strip()
print('set:',ask(c,b'set k 0 0 5\\r\\nhello\\r\\n'),flush=True)
m=socket.socket(fileno=os.dup2(c.fileno(),1000))
m.settimeout(20)
m.sendmsg([b'get k\\r\\n'])
print('fd',m.fileno(),'recvmsg:',m.recvmsg(4096)[0].decode().replace('\\r\\n',' ').strip(),flush=True)
m.detach()
print('ready',flush=True)
while not os.path.exists(sys.argv[1]): time.sleep(0.02)
c.settimeout(10)
try:
  got=[ask(c,b'set k%d 0 0 2\\r\\nv%d\\r\\n'%(i%10,i%10))+' '+ask(c,b'get k%d\\r\\n'%(i%10)) for i in range(200)]
  print('after stop:',len(got),'answers,',len(set(got)),'distinct',flush=True)
except OSError as e:
  print('after stop:',repr(e),flush=True)";

#[test]
fn memcached_answers_over_tcp_without_the_daemon() {
    // memcached answers with sendmsg; on TCP that must never wait for the daemon. The
    // daemon is stopped (SIGSTOP) while the client talks: any trapped call would hang.
    let mut h = host(&["memcached", PY, "kill"]);
    h.spawn_app("memcached", &["--ip", "198.18.0.11", "--user", "nobody", "--", "memcached", "-p", "11211", "-t", "2"]);
    // memcached binds 0.0.0.0 and a v6-only `::` (served in its own namespace): one row.
    h.wait_for_rows("198.18.0.11:11211", 1);
    let flag = h.log_path("go");
    h.spawn_app("client", &["--user", "nobody", "--", PY, "-c", MEMCACHED_CLIENT, flag.to_str().unwrap()]);
    h.wait_for_line("client", "ready");
    let log = h.app_log("client");
    assert!(log.starts_with("set: STORED\nfd 1000 recvmsg: VALUE k 0 5 hello END\n"), "{log}");
    let daemon = h.daemon_pid().to_string();
    let signal = |sig: &str| assert!(Command::new("kill").args([sig, &daemon]).status().unwrap().success());
    signal("-STOP");
    fs::write(&flag, "").unwrap();
    let line = h.wait_for_line("client", "after stop:");
    signal("-CONT");
    assert_eq!(line, "after stop: 200 answers, 10 distinct", "{}", h.app_log("client"));
}
