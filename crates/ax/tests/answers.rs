//! Native answers, as root: one program (`support/answers.c`) makes a table of socket
//! calls (binds of wildcards and of the app's own address, binds of a port held,
//! with and without SO_REUSEADDR and SO_REUSEPORT, listens, connects to itself, v6-only
//! listeners) and prints the kernel's answer to each, addresses as getsockname and
//! getpeername give them. It runs natively in the test host, then under ax; the two
//! tables must be the same, line for line.

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
