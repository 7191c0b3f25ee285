//! End-to-end tests of the relays' event loops, as root: an `--external` vservice port
//! in front of a python asyncio app (support/relay_peers.py serve), and plain python
//! clients outside ax. Threads and memory are measured, never time.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use support::{TestHost, NODE_IP};

const PY: &str = "/usr/bin/python3";
const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/relay_peers.py");

/// A test host with the backends app on 198.18.5.1 and a vservice whose node ports
/// 9000 (echo), 9001 (answer after the end) and 9002 (flood) are relayed to it.
fn relayed() -> TestHost {
    support::require_root_and(&[PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.spawn_app("backends", &["--ip", "198.18.5.1", "--", PY, PEERS, "serve", "0.0.0.0"]);
    for port in [9000, 9001, 9002] {
        h.wait_for_rows(&format!("198.18.5.1:{port}"), 1);
    }
    let out = h
        .ax()
        .args(["create", "vservice", "peers", "--ip", "198.18.5.2", "--ports", "9000,9001,9002"])
        .args(["--backends", "198.18.5.1", "--external"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    h.wait_until("the relays listen", Duration::from_secs(30), || h.get("proxies").len() == 3);
    h
}

/// The daemon's resident memory, in KiB.
fn rss_kib(h: &TestHost) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", h.daemon_pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The relay's established connections on port 9000: (from clients, to the backend's
/// host port).
fn relayed_conns(h: &TestHost, backend: &str) -> (usize, usize) {
    let all = h.inet_sockets("-tuan");
    let est: Vec<_> = all.iter().filter(|s| s[1] == "ESTAB").collect();
    let from = est.iter().filter(|s| s[2] == format!("{NODE_IP}:9000")).count();
    let to = est.iter().filter(|s| s[3] == backend).count();
    (from, to)
}

/// A bound on a relay's connections, `key` (per_listener, per_source), from the
/// daemon's log line `relay loops started ... per_listener=N per_source=M` (colours
/// and all).
fn logged_bound(log: &str, key: &str) -> Option<usize> {
    let line = log.lines().find(|l| l.contains("relay loops started"))?;
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    let n = plain.split(&format!("{key}=")).nth(1)?;
    n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A client program kept running, driven line by line.
struct Driven {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Driven {
    fn start(h: &TestHost, args: &[&str]) -> Driven {
        let mut child = h.cmd(PY).arg(PEERS).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Driven { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.child.stdin.as_mut().unwrap(), "{cmd}").unwrap();
        self.line()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ten_thousand_idle_connections_cost_a_few_threads_and_little_memory_and_all_still_carry_bytes() {
    let h = relayed();
    // Warm up: the loops start with the first relay; one connection through.
    let mut warm = Driven::start(&h, &["idle", NODE_IP, "9000", "1"]);
    assert_eq!(warm.line(), "open");
    assert_eq!(warm.ask("check 1"), "ok");
    drop(warm);
    let backend = h.servers_at("198.18.5.1:9000")[0]["ipv4_addr"].as_str().unwrap().to_string();
    h.wait_until("the warm-up's connections are released", Duration::from_secs(60), || {
        relayed_conns(&h, &backend) == (0, 0)
    });
    let (threads0, fds0) = h.daemon_threads_and_fds();
    let rss0 = rss_kib(&h);
    // 10,000, unless the daemon's descriptor budget bounds a relay to fewer (where it
    // cannot raise its limit: no CAP_SYS_RESOURCE; 4,375 under a hard limit of 20,000),
    // from as many client addresses as one address's bound asks.
    let log = h.daemon_log();
    let per_listener = logged_bound(&log, "per_listener").expect("the daemon logs its relay bounds");
    let per_source = logged_bound(&log, "per_source").expect("the daemon logs its relay bounds");
    let n = 10_000.min(per_listener - 10);
    eprintln!("{n} idle connections (a relay's bound here: {per_listener}, one address's: {per_source})");
    let mut idle = Driven::start(&h, &["idle", NODE_IP, "9000", &n.to_string(), &(per_source - 1).to_string()]);
    assert_eq!(idle.line(), "open", "the client could not open {n} connections");
    h.wait_until("every connection is carried", Duration::from_secs(120), || relayed_conns(&h, &backend) == (n, n));
    let (threads, fds) = h.daemon_threads_and_fds();
    let rss = rss_kib(&h);
    eprintln!(
        "daemon: {threads0} -> {threads} threads, {fds0} -> {fds} fds, {rss0} -> {rss} KiB RSS for {n} connections"
    );
    assert!(threads <= threads0 + 4 && threads < 40, "threads: {threads0} before, {threads} with {n} connections");
    let per_conn = (rss.saturating_sub(rss0)) * 1024 / n as u64;
    assert!(per_conn < 2048, "{per_conn} bytes of RSS per idle connection");
    // Two sockets each, no pipes (a pipe is taken only while bytes cross).
    assert!(fds <= fds0 + 2 * n + 64, "{fds0} -> {fds} descriptors for {n} idle connections");
    // Bytes still flow both ways: on a sample of the old ones and a new one (1 MiB).
    assert_eq!(idle.ask("check 100"), "ok");
    assert_eq!(idle.ask("quit"), "");
    drop(idle);
    // All released once the clients are gone.
    h.wait_until("the connections are released", Duration::from_secs(60), || relayed_conns(&h, &backend) == (0, 0));
    // Every descriptor is given back (the spare pipes counted before go too, once the
    // loops have been without connections for a while).
    h.wait_until("every descriptor is given back", Duration::from_secs(60), || h.daemon_threads_and_fds().1 <= fds0);
}

#[test]
fn one_client_address_holding_its_bound_cannot_shut_out_another() {
    let h = relayed();
    let per_source = logged_bound(&h.daemon_log(), "per_source").expect("the daemon logs its relay bounds");
    // A hostile client holds all one address may (each checked carried) and is closed
    // beyond it; another address, and the node's own, are still served.
    let mut hog = Driven::start(&h, &["hog", NODE_IP, "9000", &per_source.to_string(), "127.0.0.2"]);
    assert_eq!(hog.line(), "held", "the hog's connections were not all carried, or one more was");
    assert_eq!(hog.ask("from 127.0.0.3"), "ok");
    assert_eq!(hog.ask(&format!("from {NODE_IP}")), "ok");
    assert!(h.daemon_log().contains("per-address connection cap reached"), "the refusal is logged");
}

#[test]
fn a_client_that_shuts_its_writing_still_gets_the_answer() {
    let h = relayed();
    let out = h.cmd(PY).args([PEERS, "halfclose", NODE_IP, "9001"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "answer to the question");
}

/// The connections the relay on port 9000 holds from client address `ip` (or has yet to
/// accept): its side of them open, the client's end read (CLOSE-WAIT) or not.
fn held_from(h: &TestHost, ip: &str) -> usize {
    let held = |s: &[String; 4]| matches!(s[1].as_str(), "ESTAB" | "CLOSE-WAIT" | "SYN-RECV");
    let ours = |s: &[String; 4]| s[2] == format!("{NODE_IP}:9000") && s[3].starts_with(&format!("{ip}:"));
    h.inet_sockets("-tuan").iter().filter(|s| held(s) && ours(s)).count()
}

#[test]
fn slow_readers_half_closes_resets_and_connect_floods_stall_no_one_else() {
    let h = relayed();
    let log = h.daemon_log();
    let per_listener = logged_bound(&log, "per_listener").expect("the daemon logs its relay bounds");
    let per_source = logged_bound(&log, "per_source").expect("the daemon logs its relay bounds");
    // The flood's connections, all at once at worst, stay under the relay's bound.
    assert!(per_listener > 2200, "a relay's bound here, {per_listener}, is below one flood");
    let mut hostile = Driven::start(&h, &["hostile", NODE_IP, "9000", "9002"]);
    assert_eq!(hostile.line(), "flooded");
    // Another address is served at once, however many of the flood's connections the
    // relay still carries.
    assert_eq!(hostile.ask("from 127.0.0.2"), "ok");
    // The flooder too, once fewer than its address's bound are left: the relay carries a
    // connection the client dropped until the backend has answered its end (a client
    // that only shut its writing is owed the answer), and on a loaded machine hundreds
    // may wait for that; beyond the bound its address is refused, as it must be.
    h.wait_until("the flood's connections are answered", Duration::from_secs(120), || {
        held_from(&h, NODE_IP) < per_source
    });
    assert_eq!(hostile.ask(&format!("from {NODE_IP}")), "ok");
    assert_eq!(hostile.ask("quit"), "");
    drop(hostile);
    // The daemon serves on, and its threads stayed few.
    let (threads, _) = h.daemon_threads_and_fds();
    assert!(threads < 40, "{threads} threads");
    let out = h.cmd(PY).args([PEERS, "halfclose", NODE_IP, "9001"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "answer to the question");
}

#[test]
fn a_large_transfer_crosses_whole_and_in_order_and_each_end_comes_after_its_bytes() {
    let h = relayed();
    // 64 MiB each way through the echo, more than every buffer and pipe on the path
    // holds: the client sends while it reads the echo, then shuts its writing; the echo
    // ends its answer only once it has read that end, and the client's read ends only
    // after the whole echo, so both ends were passed on after all their bytes.
    let out = h.cmd(PY).args([PEERS, "bulk", NODE_IP, "9000", "64"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let sent = lines.next().and_then(|l| l.strip_prefix("sent ")).expect("the client's digest of what it sent");
    let got = lines.next().and_then(|l| l.strip_prefix("got ")).expect("the client's digest of what came back");
    assert_eq!(got, sent, "byte count and SHA-256 of the echo against what was sent");
    assert!(sent.starts_with(&format!("{} ", 64 << 20)), "{sent}");
}

/// Bytes the sockets at `addr` (host address:port) have had acknowledged: how many have
/// left the process that owns them.
fn bytes_acked(h: &TestHost, addr: &str) -> u64 {
    let out = h.stdout_of("ss", &["-H", "-tni", "src", addr]);
    out.split_whitespace().filter_map(|w| w.strip_prefix("bytes_acked:")).filter_map(|n| n.parse::<u64>().ok()).sum()
}

/// The largest buffer the test host's TCP sockets may grow to, for `dir` "rmem" or "wmem".
fn tcp_buffer_max(h: &TestHost, dir: &str) -> u64 {
    let v = h.stdout_of("cat", &[&format!("/proc/sys/net/ipv4/tcp_{dir}")]);
    v.split_whitespace().nth(2).and_then(|n| n.parse().ok()).expect("tcp_rmem/tcp_wmem: min default max")
}

#[test]
fn a_reader_that_stops_holds_back_its_sender_and_the_bytes_in_flight_stay_bounded() {
    let h = relayed();
    let flood = h.servers_at("198.18.5.1:9002")[0]["ipv4_addr"].as_str().unwrap().to_string();
    let rss0 = rss_kib(&h);
    // A client of the flood that reads nothing: the flood fills the path, then is held
    // back (what it got out stops growing: two looks a second apart find the same).
    let mut reader = Driven::start(&h, &["stall", NODE_IP, "9002", "256"]);
    assert_eq!(reader.line(), "open");
    let mut out = 0;
    h.wait_until("the flood to be held back", Duration::from_secs(120), || {
        let now = bytes_acked(&h, &flood);
        let settled = now == out && now > 1 << 20;
        out = now;
        if !settled {
            std::thread::sleep(Duration::from_secs(1));
        }
        settled
    });
    // All of it sits in the relay's receive queue, its pipe (1 MiB at most), its send
    // queue and the reader's receive queue. A relay that read on regardless would take
    // without bound (a sockmap redirect to the egress does: 1 GiB seen).
    let bound = 2 * tcp_buffer_max(&h, "rmem") + tcp_buffer_max(&h, "wmem") + (1 << 20);
    assert!(out <= bound, "the flood got {out} bytes out to a reader that reads nothing; the path holds {bound}");
    let grown = rss_kib(&h).saturating_sub(rss0);
    assert!(grown < 16 * 1024, "the daemon's RSS grew by {grown} KiB while the reader stopped");
    // The reader reads at last: 256 MiB of the flood come, every byte as sent.
    assert_eq!(reader.ask("read"), "ok");
}
