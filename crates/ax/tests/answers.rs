//! Native answers, as root: one program (`support/answers.c`) makes a table of socket
//! calls (binds of wildcards and of the app's own address, binds of a port held,
//! with and without SO_REUSEADDR and SO_REUSEPORT, listens, connects to itself, v6-only
//! listeners) and prints the kernel's answer to each, addresses as getsockname and
//! getpeername give them. It runs natively in the test host, then under ax; the two
//! tables must be the same, line for line. And loopback to self: an app reaches its own
//! wildcard listeners through 127.0.0.1, ::1 and localhost, and no one else does.

mod support;

use support::{TestHost, NODE_IP};

/// The app's address under ax.
const APP_IP: &str = "198.18.0.40";
/// The first port of the rows (one each).
const FIRST_PORT: &str = "7100";

#[test]
fn socket_calls_get_the_same_answers_under_ax_as_natively() {
    support::require_root_and(&["gcc"]);
    let mut h = TestHost::new();
    let answers = h.compile_c("answers.c");
    // Natively first, before the daemon holds any port of the test host.
    let native = h.stdout_of(&answers, &[NODE_IP, FIRST_PORT]);
    h.start_daemon(&[]);
    assert!(native.lines().count() >= 25, "the table is whole: {native}");
    println!("natively:\n{native}");
    // As root, and as an unprivileged user (under the kernel driver, an app in the
    // host's namespace making its own TCP sockets).
    for user in ["root", "nobody"] {
        let under_ax = h.run_ok(&["--user", user, "--ip", APP_IP, "--", &answers, APP_IP, FIRST_PORT]);
        println!("under ax ({} driver, {user}):\n{under_ax}", h.daemon_driver());
        for (n, (want, got)) in native.lines().zip(under_ax.lines()).enumerate() {
            assert_eq!(got, want, "row {n} differs under ax as {user}");
        }
        assert_eq!(native.lines().count(), under_ax.lines().count(), "as {user}");
    }
}

const PY: &str = "/usr/bin/python3";

/// Waits for a server on `port` (any address of the app's namespace or its own on the
/// host), then fetches `who` through `localhost`, `127.0.0.1` and `[::1]`.
const FETCH_OWN: &str =
    "for i in $(seq 150); do curl -sf -o /dev/null http://127.0.0.1:$1/who && break; sleep 0.2; done
for url in http://localhost:$1/who http://127.0.0.1:$1/who \"http://[::1]:$1/who\"; do
  printf '%s ' \"$(curl -sf --max-time 10 \"$url\" || echo failed)\"
done";

#[test]
fn an_app_reaches_its_own_wildcard_listener_through_localhost() {
    support::require_root_and(&["curl", PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let root = h.web_root("own", "who", "own");
    let driver = h.daemon_driver();
    // `::` (both stacks: python's http.server clears IPV6_V6ONLY) takes all three.
    let script = format!("{PY} -m http.server 8001 --bind :: --directory {root} >/dev/null 2>&1 & {FETCH_OWN}");
    let got = h.run_ok(&["--ip", "198.18.0.41", "--", "sh", "-c", &script, "sh", "8001"]);
    assert_eq!(got, "own own own ", "localhost, 127.0.0.1, ::1 ({driver} driver)");
    // 0.0.0.0 takes IPv4 only: ::1 is refused, as on a host (curl's localhost falls
    // back to 127.0.0.1). The kernel driver's broker knows the loopback only as
    // 127.0.0.1, and takes ::1 there too (a documented difference).
    let script = format!("{PY} -m http.server 8002 --bind 0.0.0.0 --directory {root} >/dev/null 2>&1 & {FETCH_OWN}");
    let got = h.run_ok(&["--ip", "198.18.0.41", "--", "sh", "-c", &script, "sh", "8002"]);
    let v6 = if driver == "kernel" { "own" } else { "failed" };
    assert_eq!(got, format!("own own {v6} "), "localhost, 127.0.0.1, ::1 ({driver} driver)");
}

#[test]
fn no_one_else_reaches_an_apps_listener_through_the_loopback() {
    support::require_root_and(&["curl", PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let root = h.web_root("own", "who", "own");
    h.spawn_app("server", &["--ip", "198.18.0.42", "--", PY, "-m", "http.server", "8003", "--directory", &root]);
    h.wait_for_rows("198.18.0.42:8003", 1);
    // It serves its address.
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://198.18.0.42:8003/who"]), "own");
    // Another app, on the same labels, as root or not: its loopback is its own.
    for user in ["root", "nobody"] {
        for url in ["http://127.0.0.1:8003/who", "http://localhost:8003/who", "http://[::1]:8003/who"] {
            let out = h.run(&["--user", user, "--", "curl", "-s", "--max-time", "10", url]);
            assert_eq!(out.status.code(), Some(7), "{user} {url}: {out:?}");
            assert!(out.stdout.is_empty(), "{user} {url}: {out:?}");
        }
    }
    // A host process: the host's loopback has nothing there.
    let out = h.cmd("curl").args(["-s", "--max-time", "10", "http://127.0.0.1:8003/who"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}
