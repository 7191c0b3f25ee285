//! The attack suite, as root: a hostile C program (`support/hostile.c`), run as an
//! untrusted app (`ax run --user nobody --labels role=test`), tries each way around the
//! daemon's decisions against a role=prod service that logs every connection and
//! datagram. Each test asserts that prod never heard from it and that the daemon still
//! serves a role=prod client afterwards; the hostile program's report of every attempt
//! (errno names) goes to the test's output.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use support::{TestHost, NODE_IP};

const PY: &str = "/usr/bin/python3";
const PROD_IP: &str = "198.18.10.1";
const PROD_TCP: &str = "198.18.10.1:8080";
const PROD_UDP: &str = "198.18.10.1:9000";
/// How long each race runs (the program also stops after 200,000 calls).
const RACE_SECONDS: &str = "5";
/// The daemon's default --ports.
const POOL: std::ops::RangeInclusive<u16> = 40000..=60000;

/// prod logs `tcp accept ADDR` for each connection in the order it accepts them, `tcp
/// data ..` for what each sends, `udp ..` for each datagram, and answers `prod-secret`.
const PROD: &str = "import socket,threading
def talk(c):
  c.settimeout(2)
  try: d=c.recv(200)
  except OSError: d=b''
  print('tcp data',d[:60],flush=True)
  try: c.sendall(b'prod-secret\\n')
  except OSError: pass
  c.close()
def udp():
  u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
  u.bind(('',9000))
  while True:
    d,a=u.recvfrom(2048)
    print('udp',d[:60],flush=True)
    try: u.sendto(b'prod-secret\\n',a)
    except OSError: pass
threading.Thread(target=udp,daemon=True).start()
s=socket.socket()
s.bind(('',8080))
s.listen(128)
while True:
  c,a=s.accept()
  print('tcp accept',a,flush=True)
  threading.Thread(target=talk,args=(c,),daemon=True).start()";

/// A role=prod client: one TCP and one UDP exchange with prod, each saying `checker`.
const CHECKER: &str = "import socket
c=socket.create_connection(('198.18.10.1',8080),timeout=20)
c.sendall(b'checker')
print(c.recv(100).decode(),end='',flush=True)
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
u.settimeout(20)
u.sendto(b'checker',('198.18.10.1',9000))
print(u.recvfrom(100)[0].decode(),end='')";

/// A test host with its daemon, prod, and the hostile program built.
struct Arena {
    h: TestHost,
    hostile: String,
    /// Where prod's sockets really are: the node address and a pool port.
    prod_tcp_host: String,
    prod_udp_host: String,
}

impl Arena {
    fn new() -> Arena {
        Arena::with_daemon(&[])
    }

    fn with_daemon(args: &[&str]) -> Arena {
        Arena::started(|h| h.start_daemon(args))
    }

    /// With a daemon that cannot use BPF: no socket guard, the user driver.
    fn without_bpf() -> Arena {
        Arena::started(|h| h.start_daemon_without_bpf(&[]))
    }

    fn started(start: impl FnOnce(&mut TestHost)) -> Arena {
        support::require_root_and(&["gcc", PY, "ss", "getent"]);
        let mut h = TestHost::new();
        start(&mut h);
        let hostile = h.compile_c("hostile.c");
        h.spawn_app("prod", &["--ip", PROD_IP, "--name", "prod", "--labels", "role=prod", "--", PY, "-c", PROD]);
        h.wait_for_rows(PROD_TCP, 1);
        h.wait_for_rows(PROD_UDP, 1);
        let host_addr = |service: &str| h.servers_at(service)[0]["ipv4_addr"].as_str().unwrap().to_string();
        let (prod_tcp_host, prod_udp_host) = (host_addr(PROD_TCP), host_addr(PROD_UDP));
        Arena { h, hostile, prod_tcp_host, prod_udp_host }
    }

    fn hostile_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["--user", "nobody", "--labels", "role=test", "--", self.hostile.as_str()];
        full.extend(args);
        full
    }

    /// Runs the hostile program to its end; returns (and shows) its report.
    fn attack(&self, args: &[&str]) -> String {
        let out = self.h.run(&self.hostile_args(args));
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("hostile {args:?} ({}):\n{report}{}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the hostile program failed: {out:?}");
        report
    }

    /// Starts the hostile program in the background as `what`.
    fn spawn_attack(&mut self, what: &str, args: &[&str]) {
        let full: Vec<String> = self.hostile_args(args).into_iter().map(str::to_string).collect();
        self.h.spawn_app(what, &full.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Waits until background attack `what` holds what it took; returns its report.
    fn holding(&self, what: &str) -> String {
        self.h.wait_for_line(what, "holding");
        let report = self.h.app_log(what);
        eprintln!("hostile {what}:\n{report}");
        report
    }

    /// A role=prod client still reaches prod, `ax get apps` answers, and prod's log holds
    /// the client's exchanges alone: nothing of the hostile app's reached it.
    fn assert_prod_untouched(&self) {
        assert_eq!(self.h.run_ok(&["--labels", "role=prod", "--", PY, "-c", CHECKER]), "prod-secret\nprod-secret\n");
        // The checker's datagram and connection were queued after anything the attack
        // sent, so once prod has logged them it has logged everything before them.
        self.h.wait_until("prod to log the checker", Duration::from_secs(20), || {
            let log = self.h.app_log("prod");
            log.contains("tcp data b'checker'") && log.contains("udp b'checker'")
        });
        let log = self.h.app_log("prod");
        let heard = |prefix: &str| log.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!((heard("tcp accept"), heard("udp ")), (1, 1), "prod heard from someone else:\n{log}");
        assert!(self.h.get("apps").iter().any(|a| a["app_ip"] == PROD_IP));
    }

    /// The driver prod (and so every app of this arena) runs under.
    fn prod_driver(&self) -> String {
        let apps = self.h.get("apps");
        let prod = apps.iter().find(|a| a["app_ip"] == PROD_IP).expect("prod runs");
        prod["driver"].as_str().unwrap().to_string()
    }

    /// Listening TCP and bound UDP sockets of the test host, other than those on the
    /// node address's pool ports (where the daemon puts apps' sockets) and `before`.
    fn native_sockets(&self, before: &[[String; 4]]) -> Vec<[String; 4]> {
        let pooled = |local: &str| {
            local
                .strip_prefix(&format!("{NODE_IP}:"))
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| POOL.contains(&p))
        };
        self.h.inet_sockets("-tuln").into_iter().filter(|s| !before.contains(s) && !pooled(&s[2])).collect()
    }
}

// ---- 1-3: calls that name a destination on a host socket --------------------------

#[test]
fn fast_open_sends_do_not_reach_prod() {
    let a = Arena::new();
    let report = a.attack(&["fastopen", "hostile fastopen", PROD_TCP, &a.prod_tcp_host]);
    assert!(!report.contains("REPLY"), "{report}");
    a.assert_prod_untouched();
}

#[test]
fn fast_open_sends_do_not_reach_the_hosts_api() {
    let a = Arena::new();
    let body = r#"{"name":"pwn","ip":"198.18.9.9","ports":"80","backends":"198.18.10.1"}"#;
    let post = format!(
        "POST /v1/vservices HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let report = a.attack(&["fastopen", &post, "127.0.0.1:6664"]);
    assert_eq!(a.h.get("vservices"), Vec::<serde_json::Value>::new(), "{report}");
    assert!(!report.contains("REPLY"), "the API answered: {report}");
    a.assert_prod_untouched();
}

#[test]
fn tcp_fastopen_connect_does_not_reach_prod() {
    let a = Arena::new();
    let report = a.attack(&["tfo-connect", "hostile tfo-connect", PROD_TCP, &a.prod_tcp_host]);
    assert!(!report.contains("REPLY"), "{report}");
    a.assert_prod_untouched();
}

#[test]
fn sendmmsg_does_not_reach_a_prod_udp_service() {
    let a = Arena::new();
    a.attack(&["sendmmsg-udp", PROD_UDP, &a.prod_udp_host]);
    a.assert_prod_untouched();
}

#[test]
fn the_i386_entry_does_not_reach_prod() {
    let a = Arena::new();
    let report = a.attack(&["int80", "hostile int80", PROD_TCP, &a.prod_tcp_host]);
    assert!(!report.contains("REPLY"), "{report}");
    a.assert_prod_untouched();
}

#[test]
fn a_udp_socket_moved_out_of_the_trapped_range_sends_nowhere() {
    // Its sends run natively there: the socket guard, not the filter, refuses them.
    let a = Arena::new();
    let report = a.attack(&["dgram-out", PROD_UDP, &a.prod_udp_host]);
    assert!(report.starts_with("socket: fd 1023\n"), "{report}");
    let copies: Vec<&str> = report.lines().filter(|l| l.starts_with("copy ")).collect();
    assert_eq!(copies.len(), 7 * 2 * 2, "{report}");
    // The user driver's socket guard refuses an addressed send off the trapped range;
    // the kernel driver's programs route it, to a refusal here (labels).
    let refused = if a.prod_driver() == "kernel" { ": ECONNREFUSED" } else { ": EPERM" };
    assert!(copies.iter().all(|l| l.ends_with(refused)), "{report}");
    a.assert_prod_untouched();
}

// ---- 4-5: races on what a descriptor number is -----------------------------------

#[test]
fn dup2_race_on_connect_does_not_reach_prod() {
    let a = Arena::new();
    a.attack(&["race", "connect", RACE_SECONDS, "0", PROD_TCP, &a.prod_tcp_host]);
    a.assert_prod_untouched();
}

#[test]
fn dup2_race_with_an_accepted_socket_does_not_reach_prod() {
    // A socket the kernel made for the app's own listener carries the guard's mark too.
    let a = Arena::new();
    a.attack(&["race", "accepted", RACE_SECONDS, "0", &a.prod_tcp_host]);
    a.assert_prod_untouched();
}

#[test]
fn dup2_race_on_sendto_does_not_reach_prod() {
    let a = Arena::new();
    a.attack(&["race", "sendto", RACE_SECONDS, "0", PROD_UDP, &a.prod_udp_host]);
    a.assert_prod_untouched();
}

#[test]
fn dup2_race_on_bind_takes_no_port_of_the_host() {
    let mut a = Arena::new();
    let before = a.h.inet_sockets("-tuln");
    let node = |port: u16| format!("{NODE_IP}:{port}");
    a.spawn_attack("race", &["race", "bind", RACE_SECONDS, "60", "0.0.0.0:7001", &node(7002), &node(53)]);
    a.holding("race");
    assert_eq!(a.native_sockets(&before), Vec::<[String; 4]>::new());
    a.h.stop_app("race");
    a.assert_prod_untouched();
}

/// Connects from the peer namespace (a plain host on the wire, not a member) to each
/// port of the node address at once; prints the ports that accepted.
const PEER_PROBE: &str = "import socket,select,sys
socks={}
for p in sys.argv[2:]:
  s=socket.socket();s.setblocking(False);s.connect_ex((sys.argv[1],int(p)));socks[s]=p
_,w,_=select.select([],list(socks),[],3)
print(' '.join(sorted(socks[s] for s in w if s.getsockopt(socket.SOL_SOCKET,socket.SO_ERROR)==0)))";

#[test]
fn dup2_race_on_listen_serves_no_one_outside() {
    let mut a = Arena::new();
    let before = a.h.inet_sockets("-tuln");
    a.spawn_attack("race", &["race", "listen", RACE_SECONDS, "60"]);
    a.holding("race");
    // A listen the kernel carried out on its own may leave a listener; no host on the
    // wire may reach it.
    let native = a.native_sockets(&before);
    eprintln!("listeners outside the pool: {native:?}");
    let ports: Vec<&str> = native.iter().filter_map(|s| s[2].rsplit(':').next()).collect();
    if !ports.is_empty() {
        let mut probe = a.h.peer_cmd(PY);
        probe.args(["-c", PEER_PROBE, NODE_IP]).args(&ports);
        let out = probe.output().unwrap();
        assert!(out.status.success(), "the probe failed: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "a plain host reached the app's listeners");
    }
    a.h.stop_app("race");
    a.assert_prod_untouched();
}

#[test]
fn close_and_reopen_race_on_connect_does_not_reach_prod() {
    let a = Arena::new();
    // Its wins are rarer than dup2's: all go to the one address a native connect from the
    // host can reach (the virtual address has no route there).
    a.attack(&["race", "reopen", RACE_SECONDS, "0", &a.prod_tcp_host]);
    a.assert_prod_untouched();
}

// ---- 6: the daemon's own ports --------------------------------------------------

#[test]
fn an_app_cannot_answer_dns_for_the_others() {
    let mut a = Arena::new();
    a.spawn_attack("squat", &["dns-squat", "60", "203.0.113.66"]);
    let bind = a.h.wait_for_line("squat", "bind 0.0.0.0:53: ");
    eprintln!("the squatter's {bind}");
    // Apps sharing the squatter's label and apps sharing none still get the daemon's answer.
    for labels in ["role=test", "zone=default"] {
        let out = a.h.run(&["--labels", labels, "--", "getent", "hosts", "prod"]);
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(answer.starts_with(&format!("{PROD_IP} ")), "{labels}: {answer:?} ({bind})");
    }
    // A refused squatter has already gone; one that bound stops by itself, or with the host.
    a.assert_prod_untouched();
}

// ---- 7: the kernel's errnos -------------------------------------------------------

#[test]
fn bad_buffers_and_connect_states_get_the_kernels_errnos() {
    let a = Arena::new();
    let silent = format!("{}:80", a.h.blackhole());
    let report = a.attack(&["errnos", &format!("{NODE_IP}:7100"), &silent]);
    assert_eq!(
        report,
        "bind: ok\nlisten: ok\nconnect: ok\n\
         getsockname into read-only address: EFAULT\ngetpeername into read-only address: EFAULT\n\
         getsockname with read-only length: EFAULT\ngetpeername with read-only length: EFAULT\n\
         read-only page: untouched\nconnect again: EISCONN\n\
         non-blocking connect: EINPROGRESS\nnon-blocking connect again: EALREADY\n"
    );
    a.assert_prod_untouched();
}

// ---- 8: resources -----------------------------------------------------------------

/// What the daemon holds: threads, descriptors, rows of `ax get sockets`, and the test
/// host's TCP and UDP sockets (TIME-WAIT aside).
#[derive(Debug, Clone, Copy)]
struct Usage {
    threads: usize,
    fds: usize,
    table_sockets: usize,
    host_sockets: usize,
}

impl Usage {
    fn of(h: &TestHost) -> Usage {
        let (threads, fds) = h.daemon_threads_and_fds();
        let host_sockets = h.inet_sockets("-tuan").iter().filter(|s| s[1] != "TIME-WAIT").count();
        Usage { threads, fds, table_sockets: h.get("sockets").len(), host_sockets }
    }

    /// The baseline: after one app came and went (so what the first app starts is
    /// there), once that app's thread has ended too (a moment after the app: until
    /// then it would be counted in the baseline, and a bound on top of it never met).
    fn settled(a: &Arena) -> Usage {
        a.h.run_ok(&["--", "true"]);
        let app_threads = || {
            let tasks = fs::read_dir(format!("/proc/{}/task", a.h.daemon_pid())).unwrap();
            let named = |t: &fs::DirEntry| fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            tasks.filter_map(Result::ok).filter(|t| named(t).trim() == "app").count()
        };
        a.h.wait_until("one app thread, prod's", Duration::from_secs(60), || app_threads() == 1);
        Usage::of(&a.h)
    }

    fn within(&self, base: &Usage) -> bool {
        self.threads <= base.threads
            && self.fds <= base.fds
            && self.table_sockets <= base.table_sockets
            && self.host_sockets <= base.host_sockets
    }
}

/// Twenty apps, each killed (SIGKILL) while blocked in the call `args(i)` makes; then
/// everything the daemon held for them must be released.
fn killed_mid_call(a: &mut Arena, args: impl Fn(usize) -> Vec<String>) {
    let base = Usage::settled(a);
    for i in 0..20 {
        let what = format!("blocked{i}");
        let args = args(i);
        a.spawn_attack(&what, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let line = a.h.wait_for_line(&what, "pid ");
        let words: Vec<&str> = line.split_whitespace().collect();
        let (pid, nr) = (words[1], words[5]);
        a.h.wait_until(&format!("{what} to block in syscall {nr}"), Duration::from_secs(20), || {
            a.h.syscall_of(pid) == nr
        });
        a.h.kill(pid, "KILL");
    }
    let t0 = Instant::now();
    let mut now = Usage::of(&a.h);
    while !now.within(&base) && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        now = Usage::of(&a.h);
    }
    eprintln!("baseline {base:?}, after the kills {now:?}, {:?} later", t0.elapsed());
    assert!(now.within(&base), "the daemon kept what killed apps held: baseline {base:?}, now {now:?}");
    a.assert_prod_untouched();
}

#[test]
fn apps_killed_in_a_blocking_recvfrom_leave_nothing_behind() {
    let mut a = Arena::new();
    killed_mid_call(&mut a, |i| vec!["block-recv".into(), (7200 + i).to_string()]);
}

#[test]
fn apps_killed_in_a_blocking_connect_leave_nothing_behind() {
    let mut a = Arena::new();
    let silent = format!("{}:80", a.h.blackhole());
    killed_mid_call(&mut a, |_| vec!["block-connect".into(), silent.clone()]);
}

/// Threads, each blocked in recvfrom on a UDP socket of its own (argv[1] of them);
/// a thread whose call fails says how, in one write (print's pieces interleave).
/// Says `started PID` once every thread is started.
const BLOCKERS: &str = "import errno,os,socket,sys,threading,time
def wait(s):
  try: s.recvfrom(64)
  except OSError as e:
    sys.stdout.write('recvfrom: %s\\n' % errno.errorcode.get(e.errno,e.errno))
    sys.stdout.flush()
socks=[socket.socket(socket.AF_INET,socket.SOCK_DGRAM) for _ in range(int(sys.argv[1]))]
for s in socks: threading.Thread(target=wait,args=(s,),daemon=True).start()
sys.stdout.write('started %d\\n' % os.getpid())
sys.stdout.flush()
time.sleep(600)";

/// recvfrom's number, as /proc/PID/syscall shows it.
#[cfg(target_arch = "x86_64")]
const SYS_RECVFROM: &str = "45";
#[cfg(target_arch = "aarch64")]
const SYS_RECVFROM: &str = "207";

/// Under the user driver blocked receives wait on the daemon's helpers, bounded; under
/// the kernel driver they are not trapped at all.
#[test]
fn an_app_blocking_many_threads_gets_bounded_helpers_and_they_go_with_it() {
    const HELPERS: usize = ax_core::limits::HELPERS_PER_APP;
    let blockers = HELPERS + 16;
    let mut a = Arena::new();
    let base = Usage::settled(&a);
    let n = blockers.to_string();
    a.h.spawn_app("blockers", &["--user", "nobody", "--labels", "role=test", "--", PY, "-c", BLOCKERS, &n]);
    let started = a.h.wait_for_line("blockers", "started ");
    let refused = || a.h.app_log("blockers").matches("recvfrom: EAGAIN\n").count();
    let threads = || a.h.daemon_threads_and_fds().0;
    if a.prod_driver() == "kernel" {
        // Receives are the kernel's: every thread blocks natively, at no cost to the
        // daemon but the app's engine thread, and none is refused.
        let pid = started.split_whitespace().nth(1).unwrap();
        let tasks = format!("cat /proc/{pid}/task/*/syscall");
        let receiving = || {
            let out = a.h.stdout_of("sh", &["-c", &tasks]);
            out.lines().filter(|l| l.split_whitespace().next() == Some(SYS_RECVFROM)).count()
        };
        a.h.wait_until("every receiver to block", Duration::from_secs(30), || receiving() == blockers);
        assert!(threads() <= base.threads + 1, "{} threads (baseline {})", threads(), base.threads);
        assert_eq!(refused(), 0, "{}", a.h.app_log("blockers"));
        a.h.kill(pid, "TERM");
        a.assert_prod_untouched();
        return;
    }
    a.h.wait_until("the calls past the bound to fail", Duration::from_secs(30), || refused() == blockers - HELPERS);
    // The app's engine thread and one helper per waiting call, no more.
    let most = base.threads + 1 + HELPERS;
    a.h.wait_until("a helper for every waiting call", Duration::from_secs(30), || threads() >= most);
    assert!(threads() <= most, "{} threads for {HELPERS} waiting calls (baseline {})", threads(), base.threads);
    let log = a.h.app_log("blockers");
    assert_eq!(log.matches("recvfrom:").count(), blockers - HELPERS, "only EAGAIN, only past the bound: {log}");
    a.h.kill(started.split_whitespace().nth(1).unwrap(), "TERM");
    let t0 = Instant::now();
    let mut now = Usage::of(&a.h);
    while !now.within(&base) && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        now = Usage::of(&a.h);
    }
    eprintln!("baseline {base:?}, after the app {now:?}, {:?} later", t0.elapsed());
    assert!(now.within(&base), "the daemon kept threads of a gone app: baseline {base:?}, now {now:?}");
    a.assert_prod_untouched();
}

#[test]
fn one_app_cannot_take_every_pool_port() {
    let mut a = Arena::with_daemon(&["--ports", "45000-45063"]);
    a.spawn_attack("hog", &["take-ports", "64", "20000", "60"]);
    let hog = a.holding("hog");
    let other = a.attack(&["take-ports", "1", "21000", "0"]);
    assert!(other.starts_with("bound 1 of 1\n"), "another app could not bind: {other}\nthe hog: {hog}");
    assert!(hog.contains(": EADDRINUSE\n") || hog.contains(": EAGAIN\n"), "the hog was not stopped by a cap: {hog}");
    a.h.stop_app("hog");
    a.assert_prod_untouched();
}

// ---- the guard outlives the daemon ------------------------------------------------

#[test]
fn the_guard_holds_through_a_daemon_restart() {
    let mut a = Arena::new();
    // The race's host socket is made by this daemon; the next one must still guard it.
    let host = a.prod_udp_host.clone();
    a.spawn_attack("race", &["race", "sendto", "8", "0", PROD_UDP, &host]);
    std::thread::sleep(Duration::from_secs(2));
    a.h.signal_daemon("KILL");
    std::thread::sleep(Duration::from_secs(1));
    a.h.start_daemon(&[]);
    a.h.wait_for_line("race", "race sendto:");
    eprintln!("hostile race across a restart:\n{}", a.h.app_log("race"));
    assert!(a.h.daemon_log().contains("taking over the socket guard"), "{}", a.h.daemon_log());
    a.assert_prod_untouched();
}

// ---- review: source routes on a connected UDP socket -------------------------------

/// Counts, on the peer host's wire, UDP datagrams to `PEER_IP`:`port` (what a source
/// route with the peer as its first hop sends there); prints `ready` first and `seen N`
/// when stdin closes.
const SNIFF: &str = "import socket,struct,sys,threading
port=int(sys.argv[1]);n=[0]
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x0800));s.bind(('ax1',0))
def watch():
  while True:
    ip=s.recv(4096)[14:];ihl=(ip[0]&15)*4
    if ip[9]==17 and socket.inet_ntoa(ip[16:20])==sys.argv[2] and struct.unpack('!H',ip[ihl+2:ihl+4])[0]==port: n[0]+=1
threading.Thread(target=watch,daemon=True).start()
print('ready',flush=True);sys.stdin.read();print('seen',n[0],flush=True)";

#[test]
fn a_source_route_on_a_connected_udp_socket_sends_nowhere_else() {
    use std::io::{BufRead, BufReader, Write};
    let a = Arena::new();
    // The daemon connects the app's socket to the blackhole (an outside address); the
    // app names the peer as its source route's first hop.
    let hole = format!("{}:9999", a.h.blackhole());
    let mut sniff =
        a.h.peer_cmd(PY)
            .args(["-c", SNIFF, "9999", support::PEER_IP])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let mut out = BufReader::new(sniff.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let report = a.attack(&["udp-srr", &hole, &format!("{}:9999", support::PEER_IP)]);
    std::thread::sleep(Duration::from_secs(1));
    sniff.stdin.take().unwrap().write_all(b"").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = sniff.wait();
    assert_eq!(
        line, "seen 0\n",
        "datagrams went to the source route's first hop, not where the daemon connected:\n{report}"
    );
}

// ---- without BPF: no socket guard, the filter traps what it would have refused ------

#[test]
fn without_bpf_a_udp_socket_moved_out_of_the_trapped_range_is_still_translated() {
    // No guard refuses the copies' sends: the filter traps them on every descriptor, and
    // the daemon decides them as it decides the original's (prod is role=prod only).
    let a = Arena::without_bpf();
    let report = a.attack(&["dgram-out", PROD_UDP, &a.prod_udp_host]);
    assert!(report.starts_with("socket: fd 1023\n"), "{report}");
    let copies: Vec<&str> = report.lines().filter(|l| l.starts_with("copy ")).collect();
    assert_eq!(copies.len(), 7 * 2 * 2, "{report}");
    assert!(copies.iter().all(|l| !l.ends_with(": ok")), "{report}");
    a.assert_prod_untouched();
}

#[test]
fn without_bpf_sendmmsg_does_not_reach_a_prod_udp_service() {
    let a = Arena::without_bpf();
    a.attack(&["sendmmsg-udp", PROD_UDP, &a.prod_udp_host]);
    a.assert_prod_untouched();
}

#[test]
fn without_bpf_dup2_race_on_connect_does_not_reach_prod() {
    let a = Arena::without_bpf();
    a.attack(&["race", "connect", RACE_SECONDS, "0", PROD_TCP, &a.prod_tcp_host]);
    a.assert_prod_untouched();
}

#[test]
fn without_bpf_a_dup2_race_on_sendto_is_the_known_gap_and_reaches_no_tcp_service() {
    // The documented difference (README, "Without BPF"): a datagram the kernel sends
    // natively, on a host UDP socket a racing thread put at the number of a call the
    // daemon let continue, is refused by no one. What it cannot do: reach a TCP
    // service, or stop the daemon serving prod.
    let a = Arena::without_bpf();
    let report = a.attack(&["race", "sendto", RACE_SECONDS, "0", PROD_UDP, &a.prod_udp_host]);
    assert!(!report.contains(&format!("sendto {PROD_UDP}: ok")), "the virtual address is the daemon's: {report}");
    assert_eq!(a.h.run_ok(&["--labels", "role=prod", "--", PY, "-c", CHECKER]), "prod-secret\nprod-secret\n");
    a.h.wait_until("prod to log the checker", Duration::from_secs(20), || {
        a.h.app_log("prod").contains("udp b'checker'")
    });
    let log = a.h.app_log("prod");
    assert_eq!(log.lines().filter(|l| l.starts_with("tcp accept")).count(), 1, "{log}");
    let hostile = log.lines().filter(|l| l.starts_with("udp b'hostile")).count();
    eprintln!("datagrams of the race that reached prod's host port natively: {hostile}");
}

#[test]
fn without_bpf_close_and_reopen_race_on_connect_does_not_reach_prod() {
    let a = Arena::without_bpf();
    a.attack(&["race", "reopen", RACE_SECONDS, "0", &a.prod_tcp_host]);
    a.assert_prod_untouched();
}

// ---- source addresses a datagram may name ------------------------------------------

/// A native UDP listener on the node address's port 7100 (ARGV 1): prints `ready`, then
/// `from SOURCE` for each datagram.
const SOURCES: &str = "import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind((sys.argv[1],7100))
print('ready',flush=True)
while True:
  d,a=s.recvfrom(100);print('from',a[0],flush=True)";

#[test]
fn a_datagram_cannot_name_another_of_the_hosts_addresses_as_its_source() {
    let mut a = Arena::new();
    let mut listener = a.h.cmd(PY);
    listener.args(["-c", SOURCES, NODE_IP]);
    a.h.spawn_plain("sources", listener);
    a.h.wait_for_line("sources", "ready");
    // IP_PKTINFO names the host's loopback address as the source.
    let report = a.attack(&["pktinfo-spoof", &format!("{NODE_IP}:7100"), "127.0.0.1"]);
    let sent = report.lines().filter(|l| l.starts_with("send") && l.ends_with(": ok")).count();
    assert!(sent > 0, "no send went: {report}");
    a.h.wait_until("the sent datagrams", Duration::from_secs(20), || {
        a.h.app_log("sources").lines().filter(|l| l.starts_with("from ")).count() >= sent
    });
    let log = a.h.app_log("sources");
    let from: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("from ")).collect();
    assert!(from.iter().all(|ip| *ip == NODE_IP), "a datagram came from another address: {from:?}\n{report}");
    a.assert_prod_untouched();
}
