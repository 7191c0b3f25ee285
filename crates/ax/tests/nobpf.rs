//! A machine without BPF: the daemon runs where bpf(2) fails with EPERM (as under
//! Docker's default seccomp profile; support/nobpf.c). It says why once, runs every app
//! under the user driver with the filter that traps what the socket guard would have
//! refused, and real programs work. The attacks that matter in this mode are in
//! hostile.rs (`without_bpf_*`).

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::TestHost;

const PY: &str = "/usr/bin/python3";

fn host(programs: &[&str]) -> Option<TestHost> {
    support::require_root_and(&[&["gcc"], programs].concat());
    // The suites run once per driver; this one chooses no driver, so once is enough.
    if support::test_driver().as_deref() == Some("kernel") {
        eprintln!("the daemon without BPF runs the user driver: tested in the user pass");
        return None;
    }
    let mut h = TestHost::new();
    h.start_daemon_without_bpf(&[]);
    Some(h)
}

/// A UDP echo app: answers each datagram with `echo ` and what it got.
const UDP_ECHO: &str = "import socket
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
u.bind(('',9000))
while True:
  d,a=u.recvfrom(2048)
  u.sendto(b'echo '+d,a)";

/// Asks the echo app three ways: sendto/recvfrom (shows the service as the source),
/// connected send/recv, and a connected sendmsg without an address (sent by the daemon
/// when no guard runs).
const UDP_CLIENT: &str = "import socket
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
u.settimeout(20)
u.sendto(b'one',('198.18.0.12',9000))
d,a=u.recvfrom(100)
print(d.decode(),a[0],a[1])
u.connect(('198.18.0.12',9000))
u.send(b'two')
print(u.recv(100).decode())
u.sendmsg([b'thr',b'ee'])
print(u.recvmsg(100)[0].decode())";

/// A memcached client over TCP: memcached answers with sendmsg, trapped on every
/// descriptor without the guard, and let continue on a TCP socket.
const MEMCACHED_CLIENT: &str = "import socket
c=socket.create_connection(('198.18.0.11',11211),timeout=20)
def ask(q):
  c.sendall(q)
  d=b''
  while not d.endswith((b'END\\r\\n',b'STORED\\r\\n')):
    x=c.recv(4096)
    if not x: return 'closed'
    d+=x
  return d.decode().replace('\\r\\n',' ').strip()
print(ask(b'set k 0 0 5\\r\\nhello\\r\\n'))
print(ask(b'get k\\r\\n'))";

/// `s` without ANSI colour sequences (ESC [ ... m).
fn uncoloured(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, c) => out.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

#[test]
fn without_bpf_the_daemon_says_why_once_and_serves_apps_under_the_user_driver() {
    let Some(mut h) = host(&["curl", "getent", PY]) else { return };
    // Without the log's colours.
    let log = uncoloured(&h.daemon_log());
    let said: Vec<&str> = log.lines().filter(|l| l.contains("the socket guard cannot be installed")).collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("WARN") && said[0].contains("Operation not permitted"), "{log}");
    let chosen = log.lines().find(|l| l.contains("driver chosen")).unwrap_or_default();
    assert!(chosen.contains("driver=user") && chosen.contains("socket guard"), "{log}");
    assert_eq!(h.daemon_driver(), "user");

    h.spawn_app(
        "web",
        &[
            "--ip",
            "198.18.0.10",
            "--name",
            "web",
            "--",
            PY,
            "-m",
            "http.server",
            "8080",
            "--directory",
            &h.web_root("web", "who", "web"),
        ],
    );
    h.wait_for_rows("198.18.0.10:8080", 1);
    assert_eq!(
        h.run_ok(&["--user", "nobody", "--", "curl", "-s", "--max-time", "20", "http://198.18.0.10:8080/who"]),
        "web"
    );
    // getaddrinfo asks for A and AAAA at once with sendmmsg, the daemon's to send here.
    let ahosts = h.run_ok(&["--user", "nobody", "--", "getent", "ahosts", "web"]);
    assert!(ahosts.starts_with("198.18.0.10 "), "{ahosts}");
    let apps = h.get("apps");
    assert!(!apps.is_empty() && apps.iter().all(|a| a["driver"] == "user"), "{apps:?}");
    // Said once at start, not per app.
    assert_eq!(h.daemon_log().matches("the socket guard cannot be installed").count(), 1);
}

#[test]
fn without_bpf_udp_requests_get_answers_from_the_service_address() {
    let Some(mut h) = host(&[PY]) else { return };
    h.spawn_app("echo", &["--ip", "198.18.0.12", "--user", "nobody", "--", PY, "-c", UDP_ECHO]);
    h.wait_for_rows("198.18.0.12:9000", 1);
    let out = h.run_ok(&["--user", "nobody", "--", PY, "-c", UDP_CLIENT]);
    assert_eq!(out, "echo one 198.18.0.12 9000\necho two\necho three\n");
}

#[test]
fn without_bpf_memcached_answers() {
    let Some(mut h) = host(&["memcached", PY]) else { return };
    h.spawn_app("memcached", &["--ip", "198.18.0.11", "--user", "nobody", "--", "memcached", "-p", "11211", "-t", "2"]);
    // 0.0.0.0 and a v6-only `::` (served in memcached's own namespace): one row.
    h.wait_for_rows("198.18.0.11:11211", 1);
    assert_eq!(h.run_ok(&["--user", "nobody", "--", PY, "-c", MEMCACHED_CLIENT]), "STORED\nVALUE k 0 5 hello END\n");
}

#[test]
fn without_bpf_driver_kernel_is_refused_with_the_reason() {
    support::require_root_and(&["gcc"]);
    let h = TestHost::new();
    let mut daemon = h.daemon_without_bpf(&["--driver", "kernel"]);
    let out = daemon.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("--driver kernel") && said.contains("socket guard") && said.contains("Operation not permitted"),
        "{said}"
    );
    h.wait_until("nothing to serve", Duration::from_secs(1), || !h.run(&["--", "true"]).status.success());
}

#[test]
fn a_daemon_without_bpf_does_not_serve_where_a_previous_one_left_its_guard() {
    // The pinned guard still rules the sockets of the apps the previous daemon served
    // (and refuses this daemon, whose identity it does not hold): no silent fallback.
    support::require_root_and(&["gcc"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.stop_daemon();
    let out = h.daemon_without_bpf(&[]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("a previous daemon left") && said.contains("cannot be taken over"), "{said}");
}

/// An app started under a daemon with the socket guard has the guard's filter, which
/// lets through what the guard refuses. Taken back by a daemon without BPF (the pins
/// lost with the bpffs mount, say) it could connect and bind host sockets behind that
/// daemon's back: the reattach is refused, and said so in the daemon's log and on the
/// app's stderr.
#[test]
fn an_app_that_relied_on_the_guard_is_not_taken_back_by_a_daemon_without_it() {
    support::require_root_and(&["gcc", PY]);
    if support::test_driver().as_deref() == Some("kernel") {
        eprintln!("the daemon without BPF runs the user driver: tested in the user pass");
        return;
    }
    guarded_app_refused_after_a_restart(|h| h.start_daemon_without_bpf(&[]), "socket guard");
}

/// Pins of an older version's layout are a previous daemon's too: a daemon without BPF
/// does not serve over them, and one with BPF removes them, and nothing else there.
#[test]
fn pins_of_an_older_layout_stop_a_daemon_without_bpf_and_are_removed_by_one_with_it() {
    support::require_root_and(&["gcc"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.stop_daemon();
    let bpf = format!("{}/bpf", ax_api::RUN_DIR);
    // As an older version would have left them (version 0 of each set), and someone
    // else's directory beside them.
    h.stdout_of("sh", &["-c", &format!("cd {bpf} && for d in ax-*; do mv $d ${{d%v*}}v0; done && mkdir other-v1")]);
    let mut daemon = h.daemon_without_bpf(&[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stopped = None;
    h.wait_until("the daemon without BPF to stop", Duration::from_secs(30), || {
        stopped = daemon.try_wait().unwrap();
        // One that serves instead is stopped here, the test failed.
        stopped.is_some()
            || (h.ax().args(["get", "apps"]).output().is_ok_and(|o| o.status.success()) && {
                let _ = daemon.kill();
                panic!("a daemon without BPF serves over an older version's pins")
            })
    });
    let mut said = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!stopped.unwrap().success() && said.contains("a previous daemon left"), "{said}");
    h.start_daemon(&[]);
    let left = h.stdout_of("ls", &[&bpf]);
    assert!(!left.contains("v0") && left.contains("ax-guard-v") && left.contains("other-v1"), "{left}");
    assert!(h.daemon_log().contains("removed the pins of older versions' programs"), "{}", h.daemon_log());
}

/// Neither is it taken back by a daemon whose guard was made anew (its pins lost with
/// the bpffs mount, or an older version's, removed): no socket of the app holds a mark
/// in that guard's map, so its host sockets would go unguarded under a filter that lets
/// through what the guard refuses.
#[test]
fn an_app_that_relied_on_the_guard_is_not_taken_back_by_a_guard_made_anew() {
    support::require_root_and(&["gcc", PY]);
    guarded_app_refused_after_a_restart(|h| h.start_daemon(&[]), "made anew");
}

/// An app started under the guard, the daemon killed and its pins removed, a daemon
/// started by `restart`: it refuses the app (its log), and `ax run` says why
/// (`reason` on its stderr).
fn guarded_app_refused_after_a_restart(restart: impl FnOnce(&mut TestHost), reason: &str) {
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.spawn_app("guarded", &["--", PY, "-c", "import time\nwhile True: time.sleep(1)"]);
    // Started, not only registered: a daemon killed between the two finds the app gone.
    h.wait_until("the app started", Duration::from_secs(30), || {
        h.get("apps").len() == 1 && h.daemon_log().contains("app started")
    });
    h.signal_daemon("KILL");
    h.stdout_of("sh", &["-c", &format!("rm -r {}/bpf/ax-*", ax_api::RUN_DIR)]);
    restart(&mut h);
    h.wait_until("the reattach refused", Duration::from_secs(30), || {
        let log = h.daemon_log();
        log.contains("app not taken back") || log.contains("app taken back after a restart")
    });
    assert!(!h.daemon_log().contains("app taken back after a restart"), "{}", h.daemon_log());
    h.wait_until("ax run told", Duration::from_secs(30), || h.app_log("guarded").contains("did not take app"));
    assert!(h.app_log("guarded").contains(reason), "{}", h.app_log("guarded"));
}
