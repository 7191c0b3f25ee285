//! End-to-end tests of the control plane's bounds, as root: who may read and change the
//! tables over which transport, what a flood of connections by a local user does, and
//! what a restarted daemon takes back from a state file that was tampered with.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{TestHost, NODE_IP};

const PY: &str = "/usr/bin/python3";
const REST: &str = "http://127.0.0.1:6664";
const STATE: &str = "/var/run/appswitch/state.json";

/// `program ARGS` in the test host as user nobody, with no supplementary groups.
fn as_nobody(h: &TestHost, program: &str) -> Command {
    let mut c = h.cmd("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", program]);
    c
}

/// One curl request: the status and the body.
fn curl(mut c: Command, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    c.args(["-s", "-X", method, "-w", "\n%{http_code}", "-H", "Content-Type: application/json"]);
    if let Some(b) = body {
        c.args(["-d", b]);
    }
    let out = c.arg(format!("{REST}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn a_local_user_learns_nothing_and_changes_nothing_and_root_changes_only_over_the_socket() {
    support::require_root_and(&[PY, "curl", "setpriv"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.python_backend("secret-app", "198.18.30.1", 8000);
    h.wait_for_rows("198.18.30.1:8000", 1);
    let vservice = r#"{"name":"evil","ip":"203.0.113.5","ports":"80:8000","backends":"198.18.30.1"}"#;
    for (method, path, body) in [
        ("GET", "/v1/apps", None),
        ("GET", "/v1/servers", None),
        ("GET", "/v1/info", None),
        ("POST", "/v1/vservices", Some(vservice)),
        ("DELETE", "/v1/vservices/evil", None),
    ] {
        let (status, said) = curl(as_nobody(&h, "curl"), method, path, body);
        assert_eq!(status, 403, "nobody: {method} {path}: {said}");
        assert!(said.contains("the API answers root only (uid 65534 is not)"), "{said}");
        for secret in ["198.18.30.1", "secret", "10.251.0.1", "node"] {
            assert!(!said.contains(secret), "nobody learnt {secret:?} from {method} {path}: {said}");
        }
    }
    assert!(h.get("vservices").is_empty(), "nobody created a vservice");
    // Root over TCP: reads, but changes nothing.
    let (status, apps) = curl(h.cmd("curl"), "GET", "/v1/apps", None);
    assert_eq!(status, 200, "{apps}");
    assert!(apps.contains("198.18.30.1"), "{apps}");
    let (status, said) = curl(h.cmd("curl"), "POST", "/v1/vservices", Some(vservice));
    assert_eq!(status, 403, "{said}");
    assert!(said.contains("over TCP the API is read-only") && said.contains("/var/run/appswitch/ax.sock"), "{said}");
    assert!(h.get("vservices").is_empty());
    // Root over the Unix socket (the ax command): the change is made.
    let out = h
        .ax()
        .args(["create", "vservice", "good", "--ip", "198.18.30.9", "--ports", "80:8000", "--backends", "198.18.30.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let names: Vec<Value> = h.get("vservices").into_iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, ["good"]);
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://198.18.30.9/who"]), "secret-app");
}

/// Opens N connections to the REST port and holds them, then waits (up to 90 s) for the
/// daemon to close every one; prints `open=N` once they are open and `shed=K of N`.
const FLOOD: &str = r#"
import resource, select, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
conns = []
for i in range(n):
    s = socket.socket()
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    conns.append(s)
print("open=%d" % len(conns), flush=True)
p = select.poll()
by_fd = {}
for s in conns:
    p.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    by_fd[s.fileno()] = s
shed = 0
deadline = time.time() + 90
while by_fd and time.time() < deadline:
    for fd, _ in p.poll(1000):
        s = by_fd.pop(fd)
        p.unregister(fd)
        try:
            data = s.recv(1)
        except OSError:
            data = b""
        shed += data == b""
print("shed=%d of %d" % (shed, n), flush=True)
time.sleep(3600)
"#;

#[test]
fn thousands_of_idle_connections_by_a_local_user_exhaust_nothing_and_are_shed() {
    support::require_root_and(&[PY, "setpriv"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let mut flood = as_nobody(&h, PY);
    flood.args(["-c", FLOOD, "6664", "2000"]);
    h.spawn_plain("flood", flood);
    h.wait_until("2000 connections open", Duration::from_secs(120), || h.app_log("flood").contains("open=2000"));
    // Meanwhile root's commands and apps are served.
    assert!(h.get("apps").is_empty());
    assert_eq!(h.run_ok(&["--", "true"]), "");
    assert_eq!(h.run_ok(&["--", PY, "-c", "print('still here')"]), "still here\n");
    h.wait_until("the connections to be shed", Duration::from_secs(120), || h.app_log("flood").contains("shed="));
    let log = h.app_log("flood");
    assert!(log.contains("shed=2000 of 2000"), "{log}");
    // The daemon logged the cap, once per burst rather than once per connection.
    let lines = h.daemon_log().lines().filter(|l| l.contains("connection cap reached")).count();
    assert!((1..50).contains(&lines), "{lines} lines about the cap");
    // And root's reads over TCP are served again.
    h.wait_until("TCP reads served again", Duration::from_secs(60), || {
        curl(h.cmd("curl"), "GET", "/v1/info", None).0 == 200
    });
}

/// `state.json` as JSON, read inside the test host.
fn read_state(h: &TestHost) -> Value {
    let out = h.cmd("cat").arg(STATE).output().unwrap();
    serde_json::from_slice(&out.stdout).expect("the state is JSON")
}

#[test]
fn a_tampered_state_file_loses_its_bad_entries_with_a_log_line_each_and_keeps_the_rest() {
    support::require_root_and(&[PY, "curl"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    for (name, ip) in [("keep", "198.18.31.1"), ("looped", "198.18.31.2"), ("ported", "198.18.31.3")] {
        h.python_backend(name, ip, 8000);
        h.wait_for_rows(&format!("{ip}:8000"), 1);
    }
    h.signal_daemon("KILL");
    let mut state = read_state(&h);
    let apps = state["table"]["apps"].as_array_mut().unwrap();
    let looped = apps.iter_mut().find(|a| a["ip"] == "198.18.31.2").expect("the looped app is saved");
    looped["ip"] = "127.0.0.1".into();
    let looped_id = format!("{:08x}", looped["id"].as_u64().unwrap());
    let bindings = state["table"]["bindings"].as_array_mut().unwrap();
    let ported = bindings.iter_mut().find(|b| b["service"] == "198.18.31.3:8000").expect("the ported row is saved");
    ported["host"] = format!("{NODE_IP}:80").into();
    let write = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])";
    let status = h.cmd(PY).args(["-c", write, STATE, &state.to_string()]).status().unwrap();
    assert!(status.success());
    h.start_daemon(&[]);
    let log = h.daemon_log();
    let dropped: Vec<&str> = log.lines().filter(|l| l.contains("not taken back from the saved state")).collect();
    // The two entries edited, and the socket of the app no longer taken back.
    assert_eq!(dropped.len(), 3, "{dropped:#?}");
    assert!(dropped.iter().any(|l| l.contains(&looped_id) && l.contains("its app is not taken back")), "{dropped:#?}");
    assert!(
        dropped.iter().any(|l| l.contains(&looped_id) && l.contains("127.0.0.1 is a loopback address")),
        "{dropped:#?}"
    );
    assert!(
        dropped
            .iter()
            .any(|l| l.contains(&format!("{NODE_IP}:80")) && l.contains("host port 80 is neither in the --ports pool")),
        "{dropped:#?}"
    );
    // The valid entries are back: the untouched app and its row, and the app whose row
    // was dropped; not the app with a loopback address.
    h.wait_until("the kept apps to be taken back", Duration::from_secs(30), || {
        let ips: Vec<Value> = h.get("apps").into_iter().map(|a| a["app_ip"].clone()).collect();
        ips.len() == 2 && ips.contains(&"198.18.31.1".into()) && ips.contains(&"198.18.31.3".into())
    });
    assert!(h.get("apps").iter().all(|a| a["app_ip"] != "127.0.0.1"));
    assert_eq!(h.servers_at("198.18.31.1:8000").len(), 1);
    assert!(h.servers_at("198.18.31.3:8000").is_empty(), "the row on host port 80 is gone");
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://198.18.31.1:8000/who"]), "keep");
}
