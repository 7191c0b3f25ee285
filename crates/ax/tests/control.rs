//! End-to-end tests of the control plane's bounds, as root: who may read and change the
//! tables over which transport, what a flood of connections by a local user does, what
//! a restarted daemon takes back from a state file that was tampered with, and what
//! `/metrics` shows an operator's Prometheus (and nobody else).

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

/// Reads the metrics text on stdin with the Prometheus client library's own parser
/// (Debian python3-prometheus-client) and prints every sample as JSON; a text the
/// parser refuses fails it.
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        out.append({"type": f.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// The samples of one scrape of `/metrics` over TCP, as parsed by Prometheus' parser.
fn scrape(h: &TestHost) -> Vec<Value> {
    let (status, text) = curl(h.cmd("curl"), "GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    let mut parse = h.cmd(PY);
    parse.args(["-c", PARSE_METRICS]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    parse.stderr(std::process::Stdio::piped());
    let mut child = parse.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`; None if there is none.
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let has = |s: &&Value| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v);
    samples.iter().find(has).map(|s| s["value"].as_f64().unwrap())
}

/// Every histogram's buckets: by ascending `le`, counts never go down, and `+Inf`
/// equals `_count`. Returns how many histograms were checked.
fn check_histograms(samples: &[Value]) -> usize {
    let mut by_series: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for s in samples.iter().filter(|s| s["type"] == "histogram" && s["name"].as_str().unwrap().ends_with("_bucket")) {
        let call = s["labels"]["call"].as_str().unwrap().to_string();
        let le: f64 = s["labels"]["le"].as_str().unwrap().parse().unwrap();
        by_series.entry(call).or_default().push((le, s["value"].as_f64().unwrap()));
    }
    for (call, mut buckets) in by_series.clone() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{call}: buckets go down: {buckets:?}");
        let (le, inf) = *buckets.last().unwrap();
        assert!(le.is_infinite(), "{call}: no +Inf bucket");
        let count = sample(samples, "ax_trapped_call_duration_seconds_count", &[("call", &call)]).unwrap();
        assert_eq!(inf, count, "{call}: +Inf is not _count");
        assert!(sample(samples, "ax_trapped_call_duration_seconds_sum", &[("call", &call)]).is_some());
    }
    by_series.len()
}

#[test]
fn metrics_count_connects_allowed_and_denied_per_service_for_root_only() {
    support::require_root_and(&[PY, "curl", "setpriv"]);
    let parser = Command::new(PY).args(["-c", "import prometheus_client.parser"]).output().unwrap();
    assert!(
        parser.status.success(),
        "python3-prometheus-client is not installed: .ci/run installs the Debian packages the tests use"
    );
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let driver = h.daemon_driver();
    h.spawn_app(
        "web",
        &["--name", "web", "--ip", "198.18.31.1", "--labels", "role=web", "--", PY, "-m", "http.server", "8000"],
    );
    h.wait_for_rows("198.18.31.1:8000", 1);
    let url = "http://198.18.31.1:8000/";
    let allowed = |h: &TestHost| h.run_ok(&["--labels", "role=web", "--", "curl", "-sf", "-o", "/dev/null", url]);
    const ALLOWED: f64 = 3.0;
    for _ in 0..ALLOWED as usize {
        allowed(&h);
    }
    let denied = h.run(&["--labels", "role=other", "--", "curl", "-s", "-o", "/dev/null", url]);
    assert_eq!(denied.status.code(), Some(7), "a label mismatch is refused: {denied:?}");

    let m = scrape(&h);
    let web = |result| {
        sample(&m, "ax_service_connects_total", &[("service", "web:8000"), ("proto", "tcp"), ("result", result)])
    };
    assert!(web("allowed").unwrap() >= ALLOWED, "{driver}: {m:?}");
    assert_eq!(web("denied"), Some(1.0), "{driver}: exactly the one denial");
    let apps = h.get("apps");
    for d in ["user", "kernel"] {
        let running = apps.iter().filter(|a| a["driver"] == d).count() as f64;
        assert_eq!(sample(&m, "ax_apps", &[("driver", d)]), Some(running), "{d}");
    }
    assert_eq!(sample(&m, "ax_service_rows", &[("origin", "local")]), Some(1.0));
    assert_eq!(sample(&m, "ax_service_rows", &[("origin", "remote")]), Some(0.0));
    assert_eq!(sample(&m, "ax_vservices", &[]), Some(0.0));
    assert!(sample(&m, "ax_gossip_members", &[("state", "alive")]).is_some());
    assert_eq!(sample(&m, "ax_relay_connections", &[]), Some(0.0));
    assert!(sample(&m, "ax_relay_bytes_total", &[]).is_some());
    // socket() is trapped under both drivers; connect() only under the user driver.
    assert!(sample(&m, "ax_trapped_calls_total", &[("call", "socket")]).unwrap() >= ALLOWED + 1.0);
    if driver == "user" {
        assert!(sample(&m, "ax_trapped_calls_total", &[("call", "connect")]).unwrap() >= ALLOWED + 1.0);
    }
    assert!(check_histograms(&m) >= 1, "no histogram in {m:?}");

    // Counters only go up: one more connect shows.
    allowed(&h);
    let again = scrape(&h);
    let now = sample(&again, "ax_service_connects_total", &[("service", "web:8000"), ("result", "allowed")]).unwrap();
    assert!(now >= web("allowed").unwrap() + 1.0, "{now}");

    // Connects from many threads at once are each counted.
    let burst = "import socket,threading\ndef f():\n  for _ in range(10):\n    \
        socket.create_connection(('198.18.31.1',8000),timeout=20).close()\n\
        ts=[threading.Thread(target=f) for _ in range(8)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nprint('done')\n";
    assert_eq!(h.run_ok(&["--labels", "role=web", "--", PY, "-c", burst]), "done\n");
    let burst_seen = scrape(&h);
    let after_burst =
        sample(&burst_seen, "ax_service_connects_total", &[("service", "web:8000"), ("result", "allowed")]).unwrap();
    assert!(after_burst >= now + 80.0, "{driver}: {after_burst} after {now} and 80 more");

    // A local user learns nothing from it, as from the rest of the API.
    let (status, said) = curl(as_nobody(&h, "curl"), "GET", "/metrics", None);
    assert_eq!(status, 403, "{said}");
    assert!(said.contains("the API answers root only (uid 65534 is not)"), "{said}");
    for secret in ["web", "198.18.31.1", "ax_"] {
        assert!(!said.contains(secret), "nobody learnt {secret:?} from /metrics: {said}");
    }

    // A restarted daemon counts from zero again, and counts.
    assert!(h.stop_daemon().success());
    h.start_daemon(&[]);
    h.wait_for_rows("198.18.31.1:8000", 1);
    let denied = h.run(&["--labels", "role=other", "--", "curl", "-s", "-o", "/dev/null", url]);
    assert_eq!(denied.status.code(), Some(7), "{denied:?}");
    let after = scrape(&h);
    let denied_after = sample(&after, "ax_service_connects_total", &[("service", "web:8000"), ("result", "denied")]);
    assert_eq!(denied_after, Some(1.0), "{driver}: the new daemon's own count");
    check_histograms(&after);
}
