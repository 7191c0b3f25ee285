//! End-to-end tests of `--tls`, as root: the checks at start, a cluster of daemons
//! holding certificates from one CA, and what is never heard: a daemon with another
//! CA's certificate, a gossiper with no certificate at all.

mod support;

use std::path::Path;

use support::TestHost;

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
