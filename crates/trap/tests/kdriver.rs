//! The kernel driver's programs, loaded and attached for real (root). Each test re-runs
//! itself in a sandbox: a private mount and network namespace (loopback and the test's
//! addresses only) and a cgroup2 cgroup of its own, which the programs are attached to.
//! The test process plays the daemon (it makes and marks the sockets); "app" calls are
//! made from a child process, as an app's are.

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ax_core::kmap::{
    AppEntry, BrokerEntry, BrokerKind, Change, Config, KernelMaps, Lb, Lookup, PrivateKey, Route, RouteKey, SockState,
    ANY_CLASS,
};
use ax_core::Proto;
use ax_sys::sock;
use ax_trap::guard::Guard;
use ax_trap::kdriver::{apps_cgroup_name, KernelDriver};

const INSIDE: &str = "AX_KDRIVER_SANDBOX";
const NODE: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const APP: u32 = 1;
const APP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const CLASS: u32 = 7;
const BROKER: SocketAddrV4 = SocketAddrV4::new(NODE, 6700);

/// The config of tests: this node's pool is port 81 and 7000-7001.
fn config(egress: bool) -> Config {
    Config::new(NODE, BROKER, egress, &ax_core::ports::PortRanges::parse("81,7000-7001").unwrap())
}

fn v4(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Where the sandbox's daemon (the test process) runs in the sandbox's cgroup tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// At the root: its programs run on ax-apps by inheritance.
    Root,
    /// In a cgroup of its own below the root, beside ax-apps.
    Beside,
}

/// Runs `body` in a sandbox of its own (the test re-runs itself there), or fails at once
/// with a message saying why it cannot.
fn sandboxed(name: &str, body: impl FnOnce(&Sandbox)) {
    sandboxed_at(name, Place::Root, body)
}

/// [`sandboxed`], the daemon at `place`.
fn sandboxed_at(name: &str, place: Place, body: impl FnOnce(&Sandbox)) {
    if env::var_os(INSIDE).is_some() {
        body(&Sandbox::new(place));
        return;
    }
    let uid = fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        uid.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "the kernel driver's tests need root (they load BPF programs and make namespaces): run the README's test \
         command as root"
    );
    let cgroup = sandbox_cgroup(name);
    // The sandbox starts in a cgroup of its own, the root of its cgroup namespace: the
    // cgroup2 it mounts shows that cgroup as its root, so its ax-apps is its own.
    let out = Command::new("sh")
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
        .arg(&cgroup)
        .args(["unshare", "--cgroup", "--mount", "--net", "--propagation", "private", "--"])
        .arg(env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1", "--include-ignored"])
        .env(INSIDE, "1")
        .output()
        .expect("unshare (util-linux) runs the sandbox");
    let _ = fs::remove_dir(Sandbox::dir_of(out_pid(&out.stdout).unwrap_or(0)));
    remove_cgroup_tree(&cgroup);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("1 passed"), "the sandboxed run failed:\n{stdout}\n{stderr}");
    print!("{stdout}");
}

const SANDBOX_CGROUPS: &str = "ax-kdriver-test-";

/// A new cgroup for the sandbox of test `name`, under the cgroup2 root; the ones of
/// test processes that died before they could remove theirs are removed.
fn sandbox_cgroup(name: &str) -> PathBuf {
    let out = Command::new("findmnt").args(["-n", "-t", "cgroup2", "-o", "TARGET"]).output().expect("findmnt runs");
    let mounts = String::from_utf8_lossy(&out.stdout);
    let root = PathBuf::from(mounts.lines().next().expect("a cgroup2 is mounted"));
    for e in fs::read_dir(&root).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = n.strip_prefix(SANDBOX_CGROUPS).and_then(|rest| rest.split('-').next()) {
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let cgroup = root.join(format!("{SANDBOX_CGROUPS}{}-{name}", std::process::id()));
    remove_cgroup_tree(&cgroup);
    fs::create_dir(&cgroup).unwrap();
    cgroup
}

/// Removes the cgroup `dir` and every cgroup under it, killing what runs there.
fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::remove_dir(dir).is_err_and(|e| e.kind() != ErrorKind::NotFound) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sandbox's pid, which it prints first.
fn out_pid(stdout: &[u8]) -> Option<u32> {
    String::from_utf8_lossy(stdout).lines().find_map(|l| l.strip_prefix("sandbox pid ")?.parse().ok())
}

/// The sandbox, from inside: the guard and the driver installed on the daemon's cgroup,
/// in a cgroup2 mount of its own.
struct Sandbox {
    guard: Guard,
    driver: KernelDriver,
    /// The root of the sandbox's cgroup2 mount, and the daemon's cgroup.
    cgroups: PathBuf,
    cgroup: PathBuf,
}

impl Sandbox {
    fn dir_of(pid: u32) -> PathBuf {
        env::temp_dir().join(format!("ax-kdriver-{pid}"))
    }

    fn run_dir() -> PathBuf {
        Sandbox::dir_of(std::process::id()).join("run")
    }

    fn new(place: Place) -> Sandbox {
        let pid = std::process::id();
        println!("sandbox pid {pid}");
        for args in [
            &["ip", "link", "set", "lo", "up"][..],
            &["ip", "addr", "add", "10.251.0.1/32", "dev", "lo"],
            &["ip", "addr", "add", "203.0.113.5/32", "dev", "lo"],
            &["ip", "addr", "add", "198.18.0.10/32", "dev", "lo"],
            &["ip", "-6", "addr", "add", "fd00::5/128", "dev", "lo", "nodad"],
            // Ping sockets for everyone, so that refusing them is the programs' doing.
            &["sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647"],
        ] {
            sh(args);
        }
        // The host's cgroup2 mounts show cgroups outside this namespace: gone, so the
        // programs find the one mounted here.
        let mounts = Command::new("findmnt").args(["-n", "-t", "cgroup2", "-o", "TARGET"]).output().unwrap();
        for m in String::from_utf8_lossy(&mounts.stdout).lines() {
            sh(&["umount", "-l", m]);
        }
        // Everything under the directory goes with this mount namespace.
        let dir = Sandbox::dir_of(pid);
        fs::create_dir_all(&dir).unwrap();
        ax_sys::ns::mount_fs("tmpfs", &dir, "mode=0700").unwrap();
        let cgroups = dir.join("cgroup2");
        fs::create_dir_all(&cgroups).unwrap();
        ax_sys::ns::mount_fs("cgroup2", &cgroups, "").unwrap();
        let cgroup = match place {
            Place::Root => cgroups.clone(),
            Place::Beside => cgroups.join("daemon"),
        };
        if place == Place::Beside {
            fs::create_dir(&cgroup).unwrap();
            fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
        }
        let guard = Guard::install(&Sandbox::run_dir()).unwrap_or_else(|e| panic!("{e}"));
        let driver = KernelDriver::install(&Sandbox::run_dir(), &guard).unwrap_or_else(|e| panic!("{e}"));
        driver
            .apply(&[Change::Config(config(true)), Change::PutApp(APP, AppEntry { ip: APP_IP, class: CLASS })])
            .unwrap();
        Sandbox { guard, driver, cgroups, cgroup }
    }

    fn route(&self, class: u32, dest: &str, proto: Proto, route: Route) {
        let d = v4(dest);
        let key = RouteKey { class, ip: *d.ip(), port: d.port(), proto };
        self.driver.apply(&[Change::PutRoute(key, route)]).unwrap();
    }

    /// A socket as the daemon makes it for the app (marked with `state`).
    fn socket(&self, family: i32, ty: i32, state: SockState) -> OwnedFd {
        let s = sock::socket(family, ty, 0).unwrap();
        self.driver.mark(s.as_fd(), &state).unwrap();
        s
    }

    fn tcp(&self) -> OwnedFd {
        self.socket(libc::AF_INET, libc::SOCK_STREAM, fresh())
    }
}

fn fresh() -> SockState {
    SockState { app: APP, peer: None, local: None, local_any: false }
}

fn listener(addr: &str) -> TcpListener {
    let l = TcpListener::bind(addr).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// Which of `listeners` has a connection waiting (taken); panics unless exactly one.
fn landed(listeners: &[&TcpListener]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<usize> =
            listeners.iter().enumerate().filter(|(_, l)| l.accept().is_ok()).map(|(i, _)| i).collect();
        match got.len() {
            0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            1 => return got[0],
            _ => panic!("connections landed on listeners {got:?}, not on exactly one"),
        }
    }
}

fn nothing_waits(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a listener that must see nothing got {other:?}"),
    }
}

fn errno(r: std::io::Result<()>) -> i32 {
    r.expect_err("the call should fail").raw_os_error().unwrap()
}

/// Packets loopback sent so far (this network namespace's).
fn lo_packets() -> u64 {
    let dev = fs::read_to_string("/proc/self/net/dev").unwrap();
    let line = dev.lines().find(|l| l.trim_start().starts_with("lo:")).unwrap();
    line.split_once(':').unwrap().1.split_whitespace().nth(9).unwrap().parse().unwrap()
}

/// A generator seeded from `AX_KDRIVER_SEED`, or at random (the seed is printed, so a
/// failing run can be repeated).
fn seeded_rng() -> fastrand::Rng {
    let seed = env::var("AX_KDRIVER_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (AX_KDRIVER_SEED repeats it)");
    fastrand::Rng::with_seed(seed)
}

/// A random route entry, or None (one time in six: no entry): refuse, pass, broker,
/// or 1-3 groups of 1-`per_group` of `targets`, balanced at random or round robin.
fn random_route(rng: &mut fastrand::Rng, targets: &[SocketAddrV4], per_group: usize) -> Option<Route> {
    Some(match rng.u8(0..6) {
        0 => Route::refuse(),
        1 => Route::pass(),
        2 => Route::broker(),
        3 | 4 => {
            let lb = if rng.bool() { Lb::Random } else { Lb::RoundRobin };
            let groups = (0..rng.usize(1..=3))
                .map(|_| (0..rng.usize(1..=per_group)).map(|_| targets[rng.usize(..targets.len())]).collect())
                .collect();
            Route::backends(lb, None, groups).unwrap()
        }
        _ => return None,
    })
}

fn backends(lb: Lb, groups: &[&[&str]]) -> Route {
    Route::backends(lb, None, groups.iter().map(|g| g.iter().map(|a| v4(a)).collect()).collect()).unwrap()
}

#[test]
fn connects_to_a_service_go_to_its_backends_random_and_round_robin() {
    sandboxed("connects_to_a_service_go_to_its_backends_random_and_round_robin", |s| {
        let b: Vec<TcpListener> = (1..=3).map(|i| listener(&format!("10.251.0.1:4000{i}"))).collect();
        let all: Vec<&TcpListener> = b.iter().collect();
        let targets = ["10.251.0.1:40001", "10.251.0.1:40002", "10.251.0.1:40003"];
        s.route(CLASS, "198.18.0.20:80", Proto::Tcp, backends(Lb::Random, &[&targets]));
        s.route(
            ANY_CLASS,
            "198.18.0.21:80",
            Proto::Tcp,
            backends(Lb::RoundRobin, &[&targets[..1], &targets[1..2], &targets[2..]]),
        );

        let mut seen = BTreeMap::new();
        for _ in 0..60 {
            let c = s.tcp();
            sock::connect(c.as_fd(), &sa("198.18.0.20:80")).unwrap();
            assert_eq!(sock::peer_addr(c.as_fd()).unwrap(), Some(sa("198.18.0.20:80")), "getpeername: the service");
            let me = sock::local_addr(c.as_fd()).unwrap().unwrap();
            assert_eq!(me.ip(), std::net::IpAddr::V4(APP_IP), "getsockname: the app's address, not the node's");
            *seen.entry(landed(&all)).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "random choice over 60 connects reaches every backend: {seen:?}");

        let order: Vec<usize> = (0..9)
            .map(|_| {
                let c = s.tcp();
                sock::connect(c.as_fd(), &sa("198.18.0.21:80")).unwrap();
                landed(&all)
            })
            .collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2], "round robin takes the groups in turn");
    });
}

#[test]
fn route_lookup_takes_the_class_then_any_then_any_port() {
    sandboxed("route_lookup_takes_the_class_then_any_then_any_port", |s| {
        let (one, two, three) =
            (listener("10.251.0.1:40011"), listener("10.251.0.1:40012"), listener("10.251.0.1:40013"));
        let all = [&one, &two, &three];
        s.route(CLASS, "198.18.0.30:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40011"]]));
        s.route(ANY_CLASS, "198.18.0.30:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40012"]]));
        s.route(ANY_CLASS, "198.18.0.30:0", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40013"]]));
        s.route(9, "198.18.0.30:81", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40011"]]));
        for (dest, want) in [("198.18.0.30:80", 0), ("198.18.0.30:81", 2), ("198.18.0.30:9999", 2)] {
            let c = s.tcp();
            sock::connect(c.as_fd(), &sa(dest)).unwrap();
            assert_eq!(landed(&all), want, "{dest}");
        }
        // A UDP connect looks up UDP entries: none here, so it passes unchanged.
        let u = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        let real = UdpSocket::bind("198.18.0.10:5353").unwrap();
        sock::connect(u.as_fd(), &sa("198.18.0.10:5353")).unwrap();
        UdpSocket::from(u).send(b"x").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(real.recv(&mut buf).unwrap(), 1);
        // An app the maps do not know connects nowhere.
        let stranger = s.socket(
            libc::AF_INET,
            libc::SOCK_STREAM,
            SockState { app: 99, peer: None, local: None, local_any: false },
        );
        assert_eq!(errno(sock::connect(stranger.as_fd(), &sa("198.18.0.30:80"))), libc::EPERM);
    });
}

#[test]
fn a_refused_connect_fails_with_econnrefused_and_sends_nothing() {
    sandboxed("a_refused_connect_fails_with_econnrefused_and_sends_nothing", |s| {
        let outside = listener("203.0.113.5:80");
        s.route(CLASS, "203.0.113.5:80", Proto::Tcp, Route::refuse());
        s.route(ANY_CLASS, "198.18.0.40:0", Proto::Tcp, Route::refuse());
        let before = lo_packets();
        for dest in ["203.0.113.5:80", "198.18.0.40:443"] {
            let c = s.tcp();
            assert_eq!(errno(sock::connect(c.as_fd(), &sa(dest))), libc::ECONNREFUSED, "{dest}");
            // Non-blocking too: refused at once, not EINPROGRESS.
            let n = s.tcp();
            sock::set_file_flags(n.as_fd(), libc::O_NONBLOCK).unwrap();
            assert_eq!(errno(sock::connect(n.as_fd(), &sa(dest))), libc::ECONNREFUSED, "{dest}, non-blocking");
        }
        assert_eq!(lo_packets(), before, "a refused connect sends no packet");
        nothing_waits(&outside);
        // A UDP connect never fails, as on a host: connected to the node's closed port
        // (the broker's, which takes TCP only), it shows its destination, and its
        // datagrams reach no one but earn port unreachable.
        let sink = UdpSocket::bind("203.0.113.5:53").unwrap();
        sink.set_nonblocking(true).unwrap();
        s.route(CLASS, "203.0.113.5:53", Proto::Udp, Route::refuse());
        let u = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        sock::connect(u.as_fd(), &sa("203.0.113.5:53")).unwrap();
        assert_eq!(sock::peer_addr(u.as_fd()).unwrap(), Some(sa("203.0.113.5:53")));
        sock::send_msg(u.as_fd(), b"closed", &[], 0, None).unwrap();
        let refused = (0..600).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            sock::send_msg(u.as_fd(), b"closed", &[], 0, None)
                .is_err_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED))
        });
        assert!(refused, "no port unreachable from the closed port");
        assert!(sink.recv(&mut [0u8; 8]).is_err(), "the refused destination got a datagram");
        // The same socket then connects where it may.
        let ok = listener("10.251.0.1:40021");
        s.route(CLASS, "198.18.0.41:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40021"]]));
        let c = s.tcp();
        assert_eq!(errno(sock::connect(c.as_fd(), &sa("203.0.113.5:80"))), libc::ECONNREFUSED);
        sock::connect(c.as_fd(), &sa("198.18.0.41:80")).unwrap();
        assert_eq!(landed(&[&ok]), 0);
        assert_eq!(sock::peer_addr(c.as_fd()).unwrap(), Some(sa("198.18.0.41:80")));
    });
}

#[test]
fn broker_routes_record_the_destination_and_land_on_the_broker() {
    sandboxed("broker_routes_record_the_destination_and_land_on_the_broker", |s| {
        let broker = listener("10.251.0.1:6700");
        let outside = listener("203.0.113.5:443");
        let cookie = |fd: &OwnedFd| {
            let mut b = [0u8; 8];
            sock::get_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, &mut b).unwrap();
            u64::from_ne_bytes(b)
        };
        // No entry, TCP, egress on: through the broker.
        let c = s.tcp();
        sock::connect(c.as_fd(), &sa("203.0.113.5:443")).unwrap();
        assert_eq!(landed(&[&broker]), 0);
        nothing_waits(&outside);
        assert_eq!(sock::peer_addr(c.as_fd()).unwrap(), Some(sa("203.0.113.5:443")));
        let want = BrokerEntry { app: APP, dest: v4("203.0.113.5:443"), kind: BrokerKind::Egress };
        assert_eq!(s.driver.take_broker(cookie(&c)).unwrap(), Some(want));
        assert_eq!(s.driver.take_broker(cookie(&c)).unwrap(), None, "an entry is taken once");

        // The loopback: to the broker where the app has a private listener, else refused.
        s.driver.apply(&[Change::PutPrivate(PrivateKey { app: APP, port: 5000, proto: Proto::Tcp })]).unwrap();
        let host_lo = listener("127.0.0.1:5001");
        for dest in ["127.0.0.1:5000", "127.3.4.5:5000", "0.0.0.0:5000"] {
            let c = s.tcp();
            sock::connect(c.as_fd(), &sa(dest)).unwrap();
            assert_eq!(landed(&[&broker]), 0);
            let entry = s.driver.take_broker(cookie(&c)).unwrap().unwrap();
            assert_eq!((entry.kind, entry.dest), (BrokerKind::Loopback, v4(dest)));
        }
        let c = s.tcp();
        assert_eq!(errno(sock::connect(c.as_fd(), &sa("127.0.0.1:5001"))), libc::ECONNREFUSED);
        nothing_waits(&host_lo);

        // An explicit BROKER entry, and UDP, which the broker cannot carry: refused.
        s.route(CLASS, "198.18.0.50:25", Proto::Tcp, Route::broker());
        let c = s.tcp();
        sock::connect(c.as_fd(), &sa("198.18.0.50:25")).unwrap();
        assert_eq!(landed(&[&broker]), 0);
        assert_eq!(s.driver.take_broker(cookie(&c)).unwrap().unwrap().dest, v4("198.18.0.50:25"));
        s.driver.apply(&[Change::PutPrivate(PrivateKey { app: APP, port: 5300, proto: Proto::Udp })]).unwrap();
        let u = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        assert_eq!(errno(sock::connect(u.as_fd(), &sa("127.0.0.1:5300"))), libc::ECONNREFUSED);
    });
}

#[test]
fn unmarked_sockets_are_untouched() {
    sandboxed("unmarked_sockets_are_untouched", |s| {
        let real = listener("198.18.0.10:80");
        let backend = listener("10.251.0.1:40031");
        s.route(ANY_CLASS, "198.18.0.10:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40031"]]));
        s.route(ANY_CLASS, "203.0.113.5:0", Proto::Tcp, Route::refuse());
        let outside = listener("203.0.113.5:81");
        let plain = TcpStream::connect("198.18.0.10:80").unwrap();
        assert_eq!(landed(&[&real, &backend]), 0);
        assert_eq!(plain.peer_addr().unwrap(), sa("198.18.0.10:80"));
        assert_eq!(plain.local_addr().unwrap().ip(), "198.18.0.10".parse::<std::net::IpAddr>().unwrap());
        let _plain_out = TcpStream::connect("203.0.113.5:81").unwrap();
        assert_eq!(landed(&[&outside]), 0, "an unmarked socket is not refused");
        let c = s.tcp();
        sock::connect(c.as_fd(), &sa("198.18.0.10:80")).unwrap();
        assert_eq!(landed(&[&real, &backend]), 1);
        // The daemon's own sockets bind and send as they like.
        let u = UdpSocket::bind("10.251.0.1:0").unwrap();
        u.send_to(b"x", "203.0.113.5:9").unwrap();
    });
}

/// The app: a child process holding one of the daemon's sockets as its stdin.
const APP_PY: &str = r#"
import ctypes, errno, socket, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
mode, args = sys.argv[1], sys.argv[2:]
s = socket.socket(fileno=0)
def call(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def raw(ip, port, family=socket.AF_INET):
    return struct.pack("<H", family) + struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8)
def connect(buf, n):
    r = libc.connect(s.fileno(), buf, n)
    return "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]
if mode == "bind-send":
    ip, port = args[0], int(args[1])
    print("bind", call(lambda: s.bind((ip, 0))))
    print("sendto", call(lambda: s.sendto(b"x", (ip, port))))
    print("send-unaddressed", call(lambda: s.send(b"x")))
    mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    print("own-bind", call(lambda: mine.bind((ip, 0))))
    print("own-sendto", call(lambda: mine.sendto(b"o", (ip, port))))
elif mode == "fastopen":
    print("fastopen", call(lambda: s.sendto(b"x", socket.MSG_FASTOPEN, (args[0], int(args[1])))))
elif mode == "connect":
    print("connect", call(lambda: s.connect((args[0], int(args[1])))))
elif mode == "race":
    good, bad, rounds = raw(args[0], int(args[1])), raw(args[2], int(args[3])), int(args[4])
    buf = ctypes.create_string_buffer(good, 16)
    done = False
    def flip():
        while not done:
            ctypes.memmove(buf, bad, 16)
            ctypes.memmove(buf, good, 16)
    t = threading.Thread(target=flip)
    t.start()
    counts = {}
    for _ in range(rounds):
        r = connect(buf, 16)
        if r == "ok":
            # Where it landed, as getpeername shows it; a send after a send to the
            # closed port may fail with that port's ECONNREFUSED.
            r = "service" if s.getpeername()[1] == int(args[1]) else "closed"
            try:
                s.send(b"x")
                if r == "service":
                    counts["sent"] = counts.get("sent", 0) + 1
            except OSError:
                pass
        counts[r] = counts.get(r, 0) + 1
    done = True
    t.join()
    for k, v in sorted(counts.items()):
        print("race", k, v)
elif mode == "odd":
    ip, port = args[0], int(args[1])
    print("short", connect(ctypes.create_string_buffer(raw(ip, port), 16), 8))
    print("unspec-first", connect(ctypes.create_string_buffer(bytes(16), 16), 16))
    print("long", connect(ctypes.create_string_buffer(raw(ip, port) + bytes(112), 128), 128))
    print("twice", connect(ctypes.create_string_buffer(raw(ip, port), 16), 16))
    print("peer", s.getpeername())
    print("inet6-on-inet", connect(ctypes.create_string_buffer(raw(ip, port, socket.AF_INET6) + bytes(12), 28), 28))
"#;

/// Runs the app script in `mode` with `sock` as its stdin; its output lines.
fn app(sock: &OwnedFd, mode: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("python3")
        .args(["-c", APP_PY, mode])
        .args(args)
        .stdin(Stdio::from(sock.try_clone().unwrap()))
        .output()
        .expect("python3 runs the app");
    assert!(out.status.success(), "the app failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn app_threads_may_not_bind_and_their_datagrams_are_routed() {
    sandboxed("app_threads_may_not_bind_and_their_datagrams_are_routed", |s| {
        let sink = UdpSocket::bind("10.251.0.1:5400").unwrap();
        let u = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        sock::connect(u.as_fd(), &sa("10.251.0.1:5400")).unwrap();
        let got = app(&u, "bind-send", &["10.251.0.1", "5400"]);
        assert_eq!(
            got,
            ["bind EPERM", "sendto ok", "send-unaddressed ok", "own-bind ok", "own-sendto ok"],
            "the app's own sockets are its own business; the daemon's are bound by the daemon alone"
        );
        let t = s.tcp();
        assert_eq!(app(&t, "bind-send", &["10.251.0.1", "5400"])[0], "bind EPERM");
        // The daemon's threads, on the same sockets.
        let d = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        sock::bind(d.as_fd(), &sa("10.251.0.1:0")).unwrap();
        UdpSocket::from(d).send_to(b"y", "10.251.0.1:5400").unwrap();
        let d6 = s.socket(libc::AF_INET6, libc::SOCK_DGRAM, fresh());
        sock::bind(d6.as_fd(), &sa("[::]:0")).unwrap();
        UdpSocket::from(d6).send_to(b"z", "[::ffff:10.251.0.1]:5400").unwrap();
        sock::bind(t.as_fd(), &sa("10.251.0.1:0")).unwrap();
        let mut buf = [0u8; 8];
        let mut got = Vec::new();
        sink.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        while got.len() < 6 {
            let n = sink.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        got.sort();
        let want: Vec<Vec<u8>> = [b"o", b"o", b"x", b"x", b"y", b"z"].iter().map(|b| b.to_vec()).collect();
        assert_eq!(got, want, "the app's own sends (two runs), its two sends on the daemon's socket, the daemon's two");
    });
}

/// A UDP sink per address: which one got the datagram `tag` (polled; None after
/// `patience` with nothing).
fn udp_landed(
    sinks: &[(SocketAddrV4, UdpSocket)],
    tag: &[u8],
    patience: Duration,
) -> Option<(SocketAddrV4, SocketAddr)> {
    let deadline = Instant::now() + patience;
    let mut buf = [0u8; 64];
    loop {
        for (at, sink) in sinks {
            if let Ok((n, from)) = sink.recv_from(&mut buf) {
                if &buf[..n] == tag {
                    return Some((*at, from));
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn cookie(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    sock::get_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, &mut b).unwrap();
    u64::from_ne_bytes(b)
}

/// For random maps, every datagram does what the programs' model says
/// (`KernelMaps::lookup`, `Route::pinned`): EPERM, ECONNREFUSED (a broker entry too:
/// the broker takes connections), unchanged, or to the target the socket is pinned to,
/// every datagram of it; the reply's source shows as `KernelMaps::shown_source` says,
/// on IPv4 and IPv6 sockets.
#[test]
fn datagrams_do_what_the_model_of_the_maps_says() {
    sandboxed("datagrams_do_what_the_model_of_the_maps_says", |s| {
        let mut rng = seeded_rng();
        let ips: Vec<Ipv4Addr> = vec![Ipv4Addr::new(198, 18, 0, 1), NODE, Ipv4Addr::LOCALHOST];
        sh(&["ip", "addr", "add", "198.18.0.1/32", "dev", "lo"]);
        let ports = [80u16, 81];
        let targets: Vec<SocketAddrV4> = (0..4).map(|i| SocketAddrV4::new(NODE, 40300 + i)).collect();
        let mut sinks: Vec<(SocketAddrV4, UdpSocket)> = Vec::new();
        for at in ips.iter().flat_map(|ip| ports.map(|p| SocketAddrV4::new(*ip, p))).chain(targets.iter().copied()) {
            let u = UdpSocket::bind(at).unwrap();
            u.set_nonblocking(true).unwrap();
            sinks.push((at, u));
        }
        let mut current = KernelMaps::new(config(true));
        for round in 0..6 {
            let mut next = KernelMaps::new(Config { complete: rng.u8(0..4) != 0, ..config(true) });
            next.apps.insert(APP, AppEntry { ip: APP_IP, class: CLASS });
            for class in [CLASS, ANY_CLASS] {
                for ip in &ips[..2] {
                    for port in [80u16, 81, 0] {
                        let Some(route) = random_route(&mut rng, &targets, 3) else { continue };
                        next.routes.insert(RouteKey { class, ip: *ip, port, proto: Proto::Udp }, route);
                    }
                }
            }
            for t in &targets {
                if rng.bool() {
                    next.peers.insert(*t, SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, rng.u8(1..9)), 53));
                }
            }
            s.driver.apply(&KernelMaps::diff(&current, &next)).unwrap();
            current = next;
            for app in [APP, 3] {
                for ip in &ips {
                    for port in ports {
                        for v6 in [false, true] {
                            let dest = SocketAddrV4::new(*ip, port);
                            let (family, to) = if v6 {
                                (libc::AF_INET6, SocketAddr::new(ip.to_ipv6_mapped().into(), port))
                            } else {
                                (libc::AF_INET, SocketAddr::V4(dest))
                            };
                            let u = s.socket(
                                family,
                                libc::SOCK_DGRAM,
                                SockState { app, peer: None, local: None, local_any: false },
                            );
                            let want = current.lookup(app, Proto::Udp, SocketAddr::V4(dest));
                            let what = format!("round {round}, app {app} to {to}: model {want:?}");
                            for n in 0..3u8 {
                                let tag = [round as u8, app as u8, n, u8::from(v6), ip.octets()[3], port as u8];
                                let sent = sock::send_msg(u.as_fd(), &tag, &[], 0, Some(&to)).map(|_| ());
                                let landed = |sent: std::io::Result<()>| {
                                    sent.expect(&what);
                                    udp_landed(&sinks, &tag, Duration::from_secs(30)).expect(&what)
                                };
                                let at = match want {
                                    Lookup::NoApp => {
                                        assert_eq!(errno(sent), libc::EPERM, "{what}");
                                        continue;
                                    }
                                    Lookup::Refuse | Lookup::Broker(_) => {
                                        assert_eq!(errno(sent), libc::ECONNREFUSED, "{what}");
                                        continue;
                                    }
                                    Lookup::Pass => {
                                        let (at, _) = landed(sent);
                                        assert_eq!(at, dest, "{what}");
                                        at
                                    }
                                    Lookup::Backends(route) => {
                                        let (at, _) = landed(sent);
                                        assert_eq!(Some(at), route.pinned(cookie(&u)), "{what}");
                                        at
                                    }
                                };
                                // The answer, from the sink, and the source it shows.
                                let sink = &sinks.iter().find(|(a, _)| *a == at).unwrap().1;
                                let port = sock::local_addr(u.as_fd()).unwrap().unwrap().port();
                                let mine = SocketAddrV4::new(NODE, port);
                                sink.send_to(b"answer", mine).unwrap();
                                sock::wait_readable(u.as_fd(), 30_000).unwrap();
                                let got = sock::recv_msg(u.as_fd(), &mut [0u8; 16], &mut [], 0).unwrap();
                                let real = if v6 {
                                    SocketAddr::new(at.ip().to_ipv6_mapped().into(), at.port())
                                } else {
                                    SocketAddr::V4(at)
                                };
                                assert_eq!(got.from, Some(current.shown_source(real)), "{what}: the answer's source");
                            }
                        }
                    }
                }
            }
        }
    });
}

/// The source a send may name (IP_PKTINFO's spec_dst) becomes the socket's own address
/// on a marked socket: an app cannot speak as another of the host's addresses. An
/// unmarked socket keeps what it named (the test can fail).
#[test]
fn a_datagram_goes_from_the_sockets_own_address_whatever_pktinfo_names() {
    sandboxed("a_datagram_goes_from_the_sockets_own_address_whatever_pktinfo_names", |s| {
        let sink = UdpSocket::bind("10.251.0.1:5500").unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let spoofed: Ipv4Addr = "203.0.113.5".parse().unwrap();
        let control = pktinfo(spoofed);
        let to = sa("10.251.0.1:5500");
        let marked = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        sock::bind(marked.as_fd(), &sa("10.251.0.1:0")).unwrap();
        let unbound = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        let plain = sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        let mut buf = [0u8; 8];
        for (fd, want) in [(&marked, NODE), (&unbound, NODE), (&plain, spoofed)] {
            sock::send_msg(fd.as_fd(), b"p", &control, 0, Some(&to)).unwrap();
            let (_, from) = sink.recv_from(&mut buf).unwrap();
            assert_eq!(from.ip(), std::net::IpAddr::V4(want));
        }
    });
}

/// One `struct cmsghdr` (64-bit layout) holding `data`.
fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
    let len = 16 + data.len();
    let mut b = Vec::with_capacity(len.next_multiple_of(8));
    b.extend((len as u64).to_ne_bytes());
    b.extend(level.to_ne_bytes());
    b.extend(kind.to_ne_bytes());
    b.extend(data);
    b.resize(len.next_multiple_of(8), 0);
    b
}

/// IP_PKTINFO naming `spec_dst` as the source.
fn pktinfo(spec_dst: Ipv4Addr) -> Vec<u8> {
    let mut info = vec![0u8; 12];
    info[4..8].copy_from_slice(&spec_dst.octets());
    cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &info)
}

/// A loose source route through `hop` in a send's control message leaves nothing on the
/// wire from a marked socket (EPERM), connected or not; from an unmarked socket it goes
/// (the test can fail).
#[test]
fn a_source_route_in_a_control_message_sends_nothing() {
    sandboxed("a_source_route_in_a_control_message_sends_nothing", |s| {
        let _sink = UdpSocket::bind("10.251.0.1:5600").unwrap();
        let mut lsrr = vec![131u8, 7, 4];
        lsrr.extend([203, 0, 113, 5]);
        lsrr.push(1);
        let control = cmsg(libc::IPPROTO_IP, libc::IP_RETOPTS, &lsrr);
        let to = sa("10.251.0.1:5600");
        let unconnected = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        let connected = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        sock::connect(connected.as_fd(), &to).unwrap();
        let v6 = s.socket(libc::AF_INET6, libc::SOCK_DGRAM, fresh());
        let to6 = sa("[::ffff:10.251.0.1]:5600");
        let before = lo_packets();
        assert_eq!(errno(sock::send_msg(unconnected.as_fd(), b"r", &control, 0, Some(&to)).map(|_| ())), libc::EPERM);
        assert_eq!(errno(sock::send_msg(connected.as_fd(), b"r", &control, 0, None).map(|_| ())), libc::EPERM);
        assert_eq!(errno(sock::send_msg(v6.as_fd(), b"r", &control, 0, Some(&to6)).map(|_| ())), libc::EPERM);
        assert_eq!(lo_packets(), before, "a source-routed datagram left");
        // Without options the same sockets send.
        sock::send_msg(unconnected.as_fd(), b"r", &[], 0, Some(&to)).unwrap();
        sock::send_msg(connected.as_fd(), b"r", &[], 0, None).unwrap();
        let plain = sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        sock::send_msg(plain.as_fd(), b"r", &control, 0, Some(&to)).unwrap();
    });
}

#[test]
fn v4_mapped_connects_behave_as_ipv4_and_other_ipv6_passes() {
    sandboxed("v4_mapped_connects_behave_as_ipv4_and_other_ipv6_passes", |s| {
        let backend = listener("10.251.0.1:40041");
        let broker = listener("10.251.0.1:6700");
        let host_lo6 = listener("[::1]:5001");
        let real6 = listener("[fd00::5]:7000");
        s.route(CLASS, "198.18.0.60:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40041"]]));
        s.route(CLASS, "203.0.113.5:80", Proto::Tcp, Route::refuse());
        let tcp6 = || s.socket(libc::AF_INET6, libc::SOCK_STREAM, fresh());

        let c = tcp6();
        sock::connect(c.as_fd(), &sa("[::ffff:198.18.0.60]:80")).unwrap();
        assert_eq!(landed(&[&backend]), 0);
        assert_eq!(sock::peer_addr(c.as_fd()).unwrap(), Some(sa("[::ffff:198.18.0.60]:80")));
        assert_eq!(
            sock::local_addr(c.as_fd()).unwrap().unwrap().ip(),
            "::ffff:198.18.1.1".parse::<std::net::IpAddr>().unwrap()
        );
        let c = tcp6();
        assert_eq!(errno(sock::connect(c.as_fd(), &sa("[::ffff:203.0.113.5]:80"))), libc::ECONNREFUSED);
        // ::1 and :: are the app's loopback: refused without a private listener, to the
        // broker with one; never the host's.
        for dest in ["[::1]:5001", "[::]:5001"] {
            let c = tcp6();
            assert_eq!(errno(sock::connect(c.as_fd(), &sa(dest))), libc::ECONNREFUSED, "{dest}");
        }
        nothing_waits(&host_lo6);
        s.driver.apply(&[Change::PutPrivate(PrivateKey { app: APP, port: 5001, proto: Proto::Tcp })]).unwrap();
        let c = tcp6();
        sock::connect(c.as_fd(), &sa("[::1]:5001")).unwrap();
        assert_eq!(landed(&[&broker, &host_lo6]), 0);
        // A real IPv6 destination passes, and getpeername shows it even after the same
        // socket was connected to a service (UDP connects again at will).
        let c = tcp6();
        sock::connect(c.as_fd(), &sa("[fd00::5]:7000")).unwrap();
        assert_eq!(landed(&[&real6]), 0);
        assert_eq!(sock::peer_addr(c.as_fd()).unwrap(), Some(sa("[fd00::5]:7000")));
        s.route(CLASS, "198.18.0.61:53", Proto::Udp, backends(Lb::Random, &[&["10.251.0.1:5353"]]));
        let u = s.socket(libc::AF_INET6, libc::SOCK_DGRAM, fresh());
        sock::connect(u.as_fd(), &sa("[::ffff:198.18.0.61]:53")).unwrap();
        assert_eq!(sock::peer_addr(u.as_fd()).unwrap(), Some(sa("[::ffff:198.18.0.61]:53")));
        // (The kernel keeps a socket bound to a v4-mapped address off IPv6 until it is
        // disconnected.)
        sock::disconnect(u.as_fd()).unwrap();
        sock::connect(u.as_fd(), &sa("[fd00::5]:53")).unwrap();
        assert_eq!(sock::peer_addr(u.as_fd()).unwrap(), Some(sa("[fd00::5]:53")));
        // An IPv4 sockaddr on an IPv6 UDP socket runs the connect4 program: as IPv4.
        let u = s.socket(libc::AF_INET6, libc::SOCK_DGRAM, fresh());
        sock::connect(u.as_fd(), &sa("198.18.0.61:53")).unwrap();
        assert_eq!(sock::peer_addr(u.as_fd()).unwrap(), Some(sa("[::ffff:198.18.0.61]:53")));
    });
}

#[test]
fn getsockname_shows_the_service_address_a_bound_socket_stands_for() {
    sandboxed("getsockname_shows_the_service_address_a_bound_socket_stands_for", |s| {
        let state = SockState { app: APP, peer: None, local: Some(v4("198.18.1.1:80")), local_any: false };
        let l = s.socket(libc::AF_INET, libc::SOCK_STREAM, state);
        sock::bind(l.as_fd(), &sa("10.251.0.1:40051")).unwrap();
        sock::listen(l.as_fd(), 8).unwrap();
        assert_eq!(sock::local_addr(l.as_fd()).unwrap(), Some(sa("198.18.1.1:80")));
        // An accepted connection carries the listener's state.
        let _client = TcpStream::connect("10.251.0.1:40051").unwrap();
        let (accepted, _) = TcpListener::from(l).accept().unwrap();
        assert_eq!(accepted.local_addr().unwrap(), sa("198.18.1.1:80"));
        let wild6 = SockState { app: APP, peer: None, local: Some(v4("0.0.0.0:8080")), local_any: false };
        let l6 = s.socket(libc::AF_INET6, libc::SOCK_STREAM, wild6);
        sock::bind(l6.as_fd(), &sa("[::]:40052")).unwrap();
        assert_eq!(sock::local_addr(l6.as_fd()).unwrap(), Some(sa("[::]:8080")));
        let svc6 = SockState { app: APP, peer: None, local: Some(v4("198.18.1.1:8081")), local_any: false };
        let l6 = s.socket(libc::AF_INET6, libc::SOCK_STREAM, svc6);
        sock::bind(l6.as_fd(), &sa("[::]:40053")).unwrap();
        assert_eq!(sock::local_addr(l6.as_fd()).unwrap(), Some(sa("[::ffff:198.18.1.1]:8081")));
        // Not bound by the daemon, on an address other than the node's: as it is.
        let u = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        sock::bind(u.as_fd(), &sa("127.0.0.1:40054")).unwrap();
        assert_eq!(sock::local_addr(u.as_fd()).unwrap(), Some(sa("127.0.0.1:40054")));
    });
}

#[test]
fn getsockname_shows_a_wildcard_bind_until_the_socket_is_connected() {
    sandboxed("getsockname_shows_a_wildcard_bind_until_the_socket_is_connected", |s| {
        let any =
            |port| SockState { app: APP, peer: None, local: Some(v4(&format!("198.18.1.1:{port}"))), local_any: true };
        // Bound and listening: the wildcard and the app's port; what it accepts carries
        // its state, and shows the service address, as the kernel shows the concrete one.
        let l = s.socket(libc::AF_INET, libc::SOCK_STREAM, any(80));
        sock::bind(l.as_fd(), &sa("10.251.0.1:40061")).unwrap();
        assert_eq!(sock::local_addr(l.as_fd()).unwrap(), Some(sa("0.0.0.0:80")));
        sock::listen(l.as_fd(), 8).unwrap();
        assert_eq!(sock::local_addr(l.as_fd()).unwrap(), Some(sa("0.0.0.0:80")));
        let _client = TcpStream::connect("10.251.0.1:40061").unwrap();
        let (accepted, _) = TcpListener::from(l).accept().unwrap();
        assert_eq!(accepted.local_addr().unwrap(), sa("198.18.1.1:80"));
        let l6 = s.socket(libc::AF_INET6, libc::SOCK_STREAM, any(81));
        sock::bind(l6.as_fd(), &sa("[::ffff:10.251.0.1]:40062")).unwrap();
        assert_eq!(sock::local_addr(l6.as_fd()).unwrap(), Some(sa("[::]:81")));
        // Bound to the wildcard, then connected: its own address.
        let peer = TcpListener::bind("10.251.0.1:5610").unwrap();
        s.route(CLASS, "10.251.0.1:5610", Proto::Tcp, Route::pass());
        s.route(CLASS, "10.251.0.1:5610", Proto::Udp, Route::pass());
        let c = s.socket(libc::AF_INET, libc::SOCK_STREAM, any(5000));
        sock::bind(c.as_fd(), &sa("10.251.0.1:40064")).unwrap();
        sock::connect(c.as_fd(), &sa("10.251.0.1:5610")).unwrap();
        assert_eq!(sock::local_addr(c.as_fd()).unwrap(), Some(sa("198.18.1.1:5000")));
        drop(peer);
        // UDP: the wildcard until connected.
        let u = s.socket(libc::AF_INET, libc::SOCK_DGRAM, any(53));
        sock::bind(u.as_fd(), &sa("10.251.0.1:40065")).unwrap();
        assert_eq!(sock::local_addr(u.as_fd()).unwrap(), Some(sa("0.0.0.0:53")));
        sock::connect(u.as_fd(), &sa("10.251.0.1:5610")).unwrap();
        assert_eq!(sock::local_addr(u.as_fd()).unwrap(), Some(sa("198.18.1.1:53")));
    });
}

#[test]
fn the_programs_decide_on_the_kernels_copy_of_an_address_the_app_races() {
    sandboxed("the_programs_decide_on_the_kernels_copy_of_an_address_the_app_races", |s| {
        // The app flips its sockaddr between a service and a refused outside address
        // while it connects: whatever it lands on was decided on the address the kernel
        // connects to, so nothing ever reaches the outside address. A UDP connect
        // never fails: a refused one is connected to the closed port.
        // Buffers that hold every datagram of the run: nothing is dropped, so the
        // counts are exact once the app is done (loopback delivers as it sends).
        let sink = |addr| {
            let u = UdpSocket::bind(addr).unwrap();
            sock::set_int(u.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20).unwrap();
            u.set_nonblocking(true).unwrap();
            u
        };
        let (backend, outside) = (sink("10.251.0.1:5500"), sink("203.0.113.5:5501"));
        s.route(CLASS, "198.18.0.70:53", Proto::Udp, backends(Lb::Random, &[&["10.251.0.1:5500"]]));
        s.route(CLASS, "203.0.113.5:5501", Proto::Udp, Route::refuse());
        let u = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        let got = app(&u, "race", &["198.18.0.70", "53", "203.0.113.5", "5501", "2000"]);
        let count = |k: &str| {
            got.iter().find_map(|l| l.strip_prefix(&format!("race {k} "))).map_or(0, |n| n.parse::<usize>().unwrap())
        };
        let (service, closed, sent) = (count("service"), count("closed"), count("sent"));
        println!("race: {service} connects landed on the service, {closed} on the closed port");
        assert_eq!(service + closed, 2000, "every connect lands on the service or the closed port: {got:?}");
        let received = |u: &UdpSocket| std::iter::from_fn(|| u.recv(&mut [0u8; 8]).ok()).count();
        assert_eq!(received(&outside), 0, "the outside got datagrams");
        assert_eq!(received(&backend), sent, "every send after a connect to the service went to the backend");
    });
}

#[test]
fn odd_lengths_unspec_and_second_connects_are_the_kernels_business() {
    sandboxed("odd_lengths_unspec_and_second_connects_are_the_kernels_business", |s| {
        let backend = listener("10.251.0.1:40061");
        s.route(CLASS, "198.18.0.80:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40061"]]));
        let c = s.tcp();
        let got = app(&c, "odd", &["198.18.0.80", "80"]);
        assert_eq!(
            got,
            [
                "short EINVAL",
                "unspec-first ok",
                "long ok",
                "twice EISCONN",
                "peer ('198.18.0.80', 80)",
                "inet6-on-inet EISCONN",
            ]
        );
        assert_eq!(landed(&[&backend]), 0);
        // An IPv6 sockaddr on a fresh IPv4 TCP socket: the kernel's own errno, nothing
        // connected.
        let c = s.tcp();
        assert_eq!(errno(sock::connect(c.as_fd(), &sa("[::ffff:198.18.0.80]:80"))), libc::EAFNOSUPPORT);
        nothing_waits(&backend);
        // Disconnected with AF_UNSPEC, a TCP socket connects again: to a real IPv4
        // address, getpeername shows that one.
        let u = s.socket(libc::AF_INET, libc::SOCK_DGRAM, fresh());
        s.route(CLASS, "198.18.0.81:53", Proto::Udp, backends(Lb::Random, &[&["10.251.0.1:5353"]]));
        sock::connect(u.as_fd(), &sa("198.18.0.81:53")).unwrap();
        sock::disconnect(u.as_fd()).unwrap();
        assert!(sock::peer_addr(u.as_fd()).is_err(), "not connected after AF_UNSPEC");
        sock::connect(u.as_fd(), &sa("198.18.0.10:53")).unwrap();
        assert_eq!(sock::peer_addr(u.as_fd()).unwrap(), Some(sa("198.18.0.10:53")));
    });
}

#[test]
fn a_restarted_daemon_takes_over_the_maps_and_the_marks() {
    sandboxed("a_restarted_daemon_takes_over_the_maps_and_the_marks", |s| {
        let b: Vec<TcpListener> = (1..=3).map(|i| listener(&format!("10.251.0.1:4007{i}"))).collect();
        let all: Vec<&TcpListener> = b.iter().collect();
        let rr = backends(Lb::RoundRobin, &[&["10.251.0.1:40071"], &["10.251.0.1:40072"], &["10.251.0.1:40073"]]);
        s.route(CLASS, "198.18.0.90:80", Proto::Tcp, rr);
        let before = s.tcp();
        // The next daemon, same run directory: it takes the pins over.
        let next = KernelDriver::install(&Sandbox::run_dir(), &s.guard).unwrap();
        sock::connect(before.as_fd(), &sa("198.18.0.90:80")).unwrap();
        assert_eq!(landed(&all), 0, "a socket marked before the restart, a route written before it");
        let after = sock::socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
        next.mark(after.as_fd(), &fresh()).unwrap();
        sock::connect(after.as_fd(), &sa("198.18.0.90:80")).unwrap();
        let mut order = vec![landed(&all)];
        order.extend((0..4).map(|_| {
            let c = s.tcp();
            sock::connect(c.as_fd(), &sa("198.18.0.90:80")).unwrap();
            landed(&all)
        }));
        // One set of programs runs per connect: the old links went with their pins (two
        // would step the round-robin counter twice).
        assert_eq!(order, [1, 2, 0, 1, 2]);
        // The new daemon makes the maps what its table says: what the old one left and
        // the new one lacks goes.
        s.route(CLASS, "198.18.0.92:80", Proto::Tcp, Route::refuse());
        s.driver.apply(&[Change::PutApp(2, AppEntry { ip: APP_IP, class: CLASS })]).unwrap();
        let mut want = KernelMaps::new(config(false));
        want.apps.insert(APP, AppEntry { ip: APP_IP, class: CLASS });
        let key = RouteKey { class: CLASS, ip: "198.18.0.90".parse().unwrap(), port: 80, proto: Proto::Tcp };
        want.routes.insert(key, backends(Lb::Random, &[&["10.251.0.1:40073"]]));
        next.resync(&want).unwrap();
        let c = s.tcp();
        sock::connect(c.as_fd(), &sa("198.18.0.90:80")).unwrap();
        assert_eq!(landed(&all), 2);
        // The refusal is gone: the connect passes, to an address no route reaches.
        let c = s.tcp();
        assert_eq!(errno(sock::connect(c.as_fd(), &sa("198.18.0.92:80"))), libc::ENETUNREACH);
        let stale =
            s.socket(libc::AF_INET, libc::SOCK_STREAM, SockState { app: 2, peer: None, local: None, local_any: false });
        assert_eq!(errno(sock::connect(stale.as_fd(), &sa("198.18.0.90:80"))), libc::EPERM, "app 2 is gone");
    });
}

#[test]
fn the_guard_and_the_kernel_driver_share_the_daemons_cgroup() {
    sandboxed("the_guard_and_the_kernel_driver_share_the_daemons_cgroup", |s| {
        let guard = &s.guard;
        let backend = listener("10.251.0.1:40081");
        s.route(CLASS, "198.18.0.91:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40081"]]));
        // A kernel-driver socket (members-only in the guard's map, not guarded): the
        // kernel driver's programs decide, the guard's let it be.
        let k = s.tcp();
        guard.mark_members_only(k.as_fd()).unwrap();
        assert_eq!(app(&k, "connect", &["198.18.0.91", "80"]), ["connect ok"]);
        assert_eq!(landed(&[&backend]), 0);
        assert_eq!(app(&s.tcp(), "bind-send", &["10.251.0.1", "9"])[0], "bind EPERM");
        // A guarded socket (the user driver's): the app may not connect it, the daemon may.
        let g = sock::socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
        guard.marks().update_socket(g.as_fd(), ax_trap::guard::GUARDED).unwrap();
        assert_eq!(app(&g, "connect", &["10.251.0.1", "40081"]), ["connect EPERM"]);
        sock::connect(g.as_fd(), &sa("10.251.0.1:40081")).unwrap();
        assert_eq!(landed(&[&backend]), 0);
    });
}

#[test]
fn a_fastopen_send_is_a_connect_to_the_programs() {
    sandboxed("a_fastopen_send_is_a_connect_to_the_programs", |s| {
        let backend = listener("10.251.0.1:40101");
        let outside = listener("203.0.113.5:80");
        s.route(CLASS, "198.18.0.100:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40101"]]));
        s.route(CLASS, "203.0.113.5:80", Proto::Tcp, Route::refuse());
        let before = lo_packets();
        assert_eq!(app(&s.tcp(), "fastopen", &["203.0.113.5", "80"]), ["fastopen ECONNREFUSED"]);
        assert_eq!(lo_packets(), before, "no packet");
        nothing_waits(&outside);
        let c = s.tcp();
        assert_eq!(app(&c, "fastopen", &["198.18.0.100", "80"]), ["fastopen ok"]);
        assert_eq!(sock::peer_addr(c.as_fd()).unwrap(), Some(sa("198.18.0.100:80")));
        assert_eq!(landed(&[&backend, &outside]), 0);
    });
}

#[test]
fn a_failed_install_says_why() {
    sandboxed("a_failed_install_says_why", |s| {
        let file = Sandbox::dir_of(std::process::id()).join("not-a-directory");
        fs::write(&file, "").unwrap();
        let e = KernelDriver::install(&file, &s.guard).err().expect("no pins under a file").to_string();
        assert!(e.starts_with("the kernel driver cannot set up its pins at "), "{e}");
        assert!(e.contains("not-a-directory/bpf"), "{e}");
    });
}

/// For random maps, every connect does what the programs' model
/// (`KernelMaps::lookup`) says: refused, EPERM, unchanged, to the broker with the
/// entry's kind, or to one of the route's targets; the maps are moved from one content
/// to the next with `KernelMaps::diff`, deletions included.
#[test]
fn connects_do_what_the_model_of_the_maps_says() {
    sandboxed("connects_do_what_the_model_of_the_maps_says", |s| {
        let mut rng = seeded_rng();
        let ips: Vec<Ipv4Addr> =
            (1..=3).map(|i| Ipv4Addr::new(198, 18, 0, i)).chain([NODE, Ipv4Addr::LOCALHOST]).collect();
        for ip in &ips[..3] {
            sh(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        let ports = [80u16, 81];
        let mut real = BTreeMap::new();
        for ip in &ips[..4] {
            for port in ports {
                real.insert(SocketAddrV4::new(*ip, port), listener(&format!("{ip}:{port}")));
            }
        }
        let targets: Vec<SocketAddrV4> = (0..6).map(|i| SocketAddrV4::new(NODE, 40200 + i)).collect();
        let target_listeners: Vec<TcpListener> = targets.iter().map(|t| listener(&t.to_string())).collect();
        let broker = listener(&BROKER.to_string());
        let host_lo = [listener("127.0.0.1:80"), listener("127.0.0.1:81")];
        let mut everything: Vec<&TcpListener> = vec![&broker];
        everything.extend(real.values());
        everything.extend(target_listeners.iter());
        everything.extend(host_lo.iter());
        let mut current = KernelMaps::new(config(true));
        current.apps.insert(APP, AppEntry { ip: APP_IP, class: CLASS });

        for round in 0..8 {
            // Now and then incomplete: what no exact entry decides is refused.
            let mut next = KernelMaps::new(Config { complete: rng.u8(0..4) != 0, ..config(rng.bool()) });
            next.apps.insert(APP, AppEntry { ip: APP_IP, class: CLASS });
            next.apps.insert(2, AppEntry { ip: Ipv4Addr::new(198, 18, 1, 2), class: 8 });
            for class in [CLASS, 8, ANY_CLASS] {
                for ip in &ips[..4] {
                    for port in [80u16, 81, 0] {
                        if port == 0 && class != ANY_CLASS {
                            continue;
                        }
                        let Some(route) = random_route(&mut rng, &targets, 2) else { continue };
                        next.routes.insert(RouteKey { class, ip: *ip, port, proto: Proto::Tcp }, route);
                    }
                }
            }
            for app in [APP, 2] {
                for port in ports {
                    if rng.bool() {
                        next.private.insert(PrivateKey { app, port, proto: Proto::Tcp });
                    }
                }
            }
            s.driver.apply(&KernelMaps::diff(&current, &next)).unwrap();
            current = next;
            for app in [APP, 2, 3] {
                for ip in &ips {
                    for port in ports {
                        let dest = SocketAddrV4::new(*ip, port);
                        let c = s.socket(
                            libc::AF_INET,
                            libc::SOCK_STREAM,
                            SockState { app, peer: None, local: None, local_any: false },
                        );
                        let got = sock::connect(c.as_fd(), &SocketAddr::V4(dest));
                        let want = current.lookup(app, Proto::Tcp, SocketAddr::V4(dest));
                        let what = format!("round {round}, app {app} to {dest}: model {want:?}, got {got:?}");
                        let landed_on = || everything[landed(&everything)].local_addr().unwrap();
                        match want {
                            Lookup::NoApp => {
                                assert_eq!(got.map_err(|e| e.raw_os_error()), Err(Some(libc::EPERM)), "{what}")
                            }
                            Lookup::Refuse => {
                                assert_eq!(got.map_err(|e| e.raw_os_error()), Err(Some(libc::ECONNREFUSED)), "{what}")
                            }
                            Lookup::Pass => {
                                got.expect(&what);
                                assert_eq!(landed_on(), SocketAddr::V4(dest), "{what}");
                            }
                            Lookup::Broker(kind) => {
                                got.expect(&what);
                                assert_eq!(landed_on(), SocketAddr::V4(BROKER), "{what}");
                                let mut b = [0u8; 8];
                                sock::get_opt(c.as_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, &mut b).unwrap();
                                let entry = s.driver.take_broker(u64::from_ne_bytes(b)).unwrap().expect(&what);
                                assert_eq!(entry, BrokerEntry { app, dest, kind }, "{what}");
                            }
                            Lookup::Backends(route) => {
                                got.expect(&what);
                                let SocketAddr::V4(at) = landed_on() else { panic!("{what}") };
                                assert!(route.targets().any(|t| t == at), "{what}: landed on {at}");
                            }
                        }
                        assert_eq!(
                            sock::peer_addr(c.as_fd()).ok().flatten().filter(|_| got_ok(&want)),
                            got_ok(&want).then_some(SocketAddr::V4(dest)),
                            "{what}: getpeername"
                        );
                    }
                }
            }
        }
    });
}

/// Whether the model's answer connects.
fn got_ok(l: &Lookup<'_>) -> bool {
    matches!(l, Lookup::Pass | Lookup::Broker(_) | Lookup::Backends(_))
}

/// Nanoseconds this thread has run on a CPU (the kernel's schedstat): the cost of a
/// call, however loaded the machine is.
fn cpu_ns() -> u64 {
    let stat = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// Not a check: the cost of the programs, printed (run it with `--ignored`). Rates of
/// socket + connect + close to a loopback listener: a socket in a cgroup without
/// programs, an unmarked one under the programs, and a marked one through a service
/// route (with and without the daemon's mark, a bpf(2) call, in the loop).
#[test]
#[ignore]
fn measure_connect_rates() {
    // Beside: the cgroup made for the native rows holds none of the programs.
    sandboxed_at("measure_connect_rates", Place::Beside, |s| {
        let server = TcpListener::bind("10.251.0.1:40090").unwrap();
        std::thread::spawn(move || {
            for c in server.incoming() {
                drop(c);
            }
        });
        s.route(CLASS, "198.18.0.95:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40090"]]));
        let native_cgroup = s.cgroups.join(format!("ax-kdriver-native-{}", std::process::id()));
        fs::create_dir(&native_cgroup).unwrap();
        let join = |dir: &PathBuf| fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        let reset = 1i32.to_ne_bytes().iter().chain(0i32.to_ne_bytes().iter()).copied().collect::<Vec<u8>>();
        // `premade`: sockets made (and marked) before the clock starts.
        let run = |n: usize, premade: bool, mark: bool, dest: &str| {
            let dest = sa(dest);
            let make = || {
                if mark {
                    s.tcp()
                } else {
                    sock::socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap()
                }
            };
            let mut made: Vec<OwnedFd> = if premade { (0..n).map(|_| make()).collect() } else { Vec::new() };
            let (start, cpu) = (Instant::now(), cpu_ns());
            for _ in 0..n {
                let c = made.pop().unwrap_or_else(make);
                sock::connect(c.as_fd(), &dest).unwrap();
                // No TIME_WAIT: the ports last the whole run.
                sock::set_opt(c.as_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &reset).unwrap();
            }
            ((cpu_ns() - cpu) as f64 / n as f64 / 1000.0, n as f64 / start.elapsed().as_secs_f64())
        };
        let (n, direct, service) = (2000, "10.251.0.1:40090", "198.18.0.95:80");
        let mut rates: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        let mut note = |what, r| rates.entry(what).or_default().push(r);
        for _ in 0..15 {
            join(&native_cgroup);
            note("a1 socket+connect+close, no programs in the cgroup", run(n, false, false, direct));
            note("b1 connect+close, no programs in the cgroup", run(n, true, false, direct));
            join(&s.cgroup);
            note("a2 socket+connect+close, unmarked, programs attached", run(n, false, false, direct));
            note("a3 socket+mark+connect+close, marked, to a service", run(n, false, true, service));
            note("b2 connect+close, marked, to a service", run(n, true, true, service));
        }
        fs::remove_dir(&native_cgroup).unwrap();
        for (what, r) in rates {
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let cpu = median(r.iter().map(|x| x.0).collect());
            let rate = median(r.iter().map(|x| x.1).collect());
            println!("rate {what}: {cpu:.2} us of this thread's CPU per connection, {rate:.0}/s (medians of 15 runs)");
        }
    });
}

/// A routes map that cannot take another entry fails closed: the write that fails
/// marks the maps incomplete, every connect no exact entry decides is then refused (a
/// missing entry may be a refusal), the writes after it still happen (an app entry
/// among them), and a resync that fits makes the maps complete again.
#[test]
fn a_full_routes_map_refuses_what_it_cannot_decide() {
    sandboxed("a_full_routes_map_refuses_what_it_cannot_decide", |s| {
        let open = listener("10.251.0.1:80");
        let served = listener("10.251.0.1:40300");
        // The node's address passes (as the daemon writes it: no egress there).
        let node = RouteKey { class: ANY_CLASS, ip: NODE, port: 0, proto: Proto::Tcp };
        s.driver.apply(&[Change::PutRoute(node, Route::pass())]).unwrap();
        let c = s.tcp();
        sock::connect(c.as_fd(), &sa("10.251.0.1:80")).unwrap();
        assert_eq!(landed(&[&open]), 0, "the node's address passes while the maps are complete");
        let service = RouteKey { class: CLASS, ip: "198.18.0.120".parse().unwrap(), port: 80, proto: Proto::Tcp };
        let to_served = backends(Lb::Random, &[&["10.251.0.1:40300"]]);
        let mut fill = vec![Change::PutRoute(service, to_served.clone())];
        fill.extend((0..RouteKey::MAX_ENTRIES).map(|i| {
            let ip = Ipv4Addr::from(0xc612_0000 + 0x100 + i);
            Change::PutRoute(RouteKey { class: ANY_CLASS, ip, port: 9, proto: Proto::Tcp }, Route::refuse())
        }));
        fill.push(Change::PutApp(3, AppEntry { ip: APP_IP, class: CLASS }));
        let e = s.driver.apply(&fill).expect_err("one entry more than the map holds").to_string();
        assert!(e.contains("routes"), "{e}");
        let c = s.tcp();
        assert_eq!(errno(sock::connect(c.as_fd(), &sa("10.251.0.1:80"))), libc::ECONNREFUSED, "undecided");
        nothing_waits(&open);
        // An exact entry still decides, for an app written after the failure too.
        let late =
            s.socket(libc::AF_INET, libc::SOCK_STREAM, SockState { app: 3, peer: None, local: None, local_any: false });
        sock::connect(late.as_fd(), &sa("198.18.0.120:80")).unwrap();
        assert_eq!(landed(&[&served]), 0);
        let mut want = KernelMaps::new(config(true));
        want.apps.insert(APP, AppEntry { ip: APP_IP, class: CLASS });
        want.routes.insert(service, to_served);
        want.routes.insert(node, Route::pass());
        s.driver.resync(&want).unwrap();
        let c = s.tcp();
        sock::connect(c.as_fd(), &sa("10.251.0.1:80")).unwrap();
        assert_eq!(landed(&[&open]), 0, "complete again");
    });
}

/// A pool port of this node without an entry of its own is refused (a row's entries
/// may not be written yet), other ports of the node pass, and an entry decides.
#[test]
fn a_pool_port_of_the_node_is_refused_until_an_entry_says_otherwise() {
    sandboxed("a_pool_port_of_the_node_is_refused_until_an_entry_says_otherwise", |s| {
        let row = listener("10.251.0.1:7001");
        let other = listener("10.251.0.1:7002");
        s.route(ANY_CLASS, "10.251.0.1:0", Proto::Tcp, Route::pass());
        let c = s.tcp();
        assert_eq!(errno(sock::connect(c.as_fd(), &sa("10.251.0.1:7001"))), libc::ECONNREFUSED);
        nothing_waits(&row);
        let c = s.tcp();
        sock::connect(c.as_fd(), &sa("10.251.0.1:7002")).unwrap();
        assert_eq!(landed(&[&other]), 0);
        s.route(CLASS, "10.251.0.1:7001", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:7001"]]));
        let c = s.tcp();
        sock::connect(c.as_fd(), &sa("10.251.0.1:7001")).unwrap();
        assert_eq!(landed(&[&row]), 0);
    });
}

/// An app that makes its own sockets: it waits for a line on stdin (the test enters it
/// into a cgroup meanwhile), then tries one socket of each kind and says what it got,
/// shows the descriptors of its TCP sockets and waits again (the test reads their
/// marks), then connects them to `ip:port` (v4, and v4-mapped on v6) and says what
/// the programs show, and waits to be let go.
const HOST_PY: &str = r#"
import errno, socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
sys.stdin.readline()
def made(family, kind, proto=0):
    try:
        return socket.socket(family, kind, proto), "ok"
    except OSError as e:
        return None, errno.errorcode[e.errno]
A4, A6 = socket.AF_INET, socket.AF_INET6
tcp4, got = made(A4, socket.SOCK_STREAM)
print("tcp4", got)
tcp6, got = made(A6, socket.SOCK_STREAM, socket.IPPROTO_TCP)
print("tcp6", got)
for name, family, kind, proto in [
    ("udp4", A4, socket.SOCK_DGRAM, 0),
    ("udp6", A6, socket.SOCK_DGRAM, 0),
    ("raw4", A4, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ("raw6", A6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    ("ping4", A4, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    ("mptcp4", A4, socket.SOCK_STREAM, 262),
    ("mptcp6", A6, socket.SOCK_STREAM, 262),
    ("unix", socket.AF_UNIX, socket.SOCK_STREAM, 0),
]:
    print(name, made(family, kind, proto)[1])
print("fds", tcp4.fileno() if tcp4 else -1, tcp6.fileno() if tcp6 else -1, flush=True)
sys.stdin.readline()
if tcp4 and tcp6:
    tcp4.connect((ip, port))
    print("v4", tcp4.getpeername(), tcp4.getsockname()[0])
    tcp6.connect(("::ffff:" + ip, port))
    print("v6", tcp6.getpeername()[:2], tcp6.getsockname()[0], flush=True)
sys.stdin.readline()
"#;

/// A child process talked to by lines.
struct Talk {
    child: std::process::Child,
    out: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Talk {
    fn new(mut c: Command) -> Talk {
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("the app starts");
        let out = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        Talk { child, out }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn go(&mut self) {
        std::io::Write::write_all(self.child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    }

    /// The next `n` lines.
    fn lines(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.out.next().expect("the app said less").unwrap()).collect()
    }

    /// The app's descriptor `fd`, ours too.
    fn fd(&self, fd: &str) -> OwnedFd {
        ax_sys::pidfd::Pidfd::open_thread(self.pid()).unwrap().get_fd(fd.parse().unwrap()).unwrap()
    }
}

impl Drop for Talk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guard's mark and the kernel driver's state of socket `fd`.
fn marks_of(s: &Sandbox, fd: &OwnedFd) -> (Option<u32>, Option<SockState>) {
    let mark =
        s.guard.marks().socket_value(fd.as_fd(), 4).unwrap().map(|v| u32::from_ne_bytes(v[..].try_into().unwrap()));
    let state = s.driver.socket_states().socket_value(fd.as_fd(), SockState::SIZE).unwrap();
    (mark, state.map(|v| SockState::decode(&v).unwrap()))
}

/// Runs HOST_PY to `dest`, entered into `cgroup` first if given (by the driver's
/// `enter`); its report of the socket kinds, the marks of its two TCP sockets, and what
/// the connects showed (None when there were no TCP sockets).
#[allow(clippy::type_complexity)]
fn host_app(
    s: &Sandbox,
    enter: impl FnOnce(i32),
    dest: &str,
) -> (Vec<String>, Vec<(Option<u32>, Option<SockState>)>, Option<Vec<String>>) {
    let d = v4(dest);
    let mut c = Command::new("python3");
    c.args(["-c", HOST_PY, &d.ip().to_string(), &d.port().to_string()]);
    let mut app = Talk::new(c);
    enter(app.pid());
    app.go();
    let kinds = app.lines(10);
    let fds = app.lines(1)[0].clone();
    let fds: Vec<&str> = fds.strip_prefix("fds ").unwrap().split(' ').collect();
    let marks = fds.iter().filter(|f| **f != "-1").map(|f| marks_of(s, &app.fd(f))).collect();
    app.go();
    let shown = (!fds.contains(&"-1")).then(|| app.lines(2));
    app.go();
    (kinds, marks, shown)
}

#[test]
fn an_app_cgroup_makes_tcp_sockets_marked_as_the_daemons_and_no_others() {
    sandboxed("an_app_cgroup_makes_tcp_sockets_marked_as_the_daemons_and_no_others", host_sockets);
}

/// The daemon's programs run on ax-apps by inheritance ([`Place::Root`]) or attached
/// there too ([`Place::Beside`]): the same either way.
#[test]
fn an_app_cgroup_beside_the_daemons_makes_the_same_sockets() {
    sandboxed_at("an_app_cgroup_beside_the_daemons_makes_the_same_sockets", Place::Beside, host_sockets);
}

/// What HOST_PY's other inet sockets get in an app cgroup: EPERM, but MPTCP's on a
/// kernel without it, which refuses them itself before any program.
fn refused_kinds() -> Vec<String> {
    let mptcp = if Path::new("/proc/sys/net/mptcp").exists() { "EPERM" } else { "EPROTONOSUPPORT" };
    let refused = ["udp4", "udp6", "raw4", "raw6", "ping4"].map(|k| format!("{k} EPERM"));
    refused.into_iter().chain(["mptcp4", "mptcp6"].map(|k| format!("{k} {mptcp}"))).collect()
}

/// An app cgroup's TCP sockets are marked and ruled as the daemon's, other inet
/// sockets refused; a process outside ax-apps makes what it likes, unmarked.
fn host_sockets(s: &Sandbox) {
    let real = listener("198.18.0.10:80");
    let backend = listener("10.251.0.1:40111");
    s.route(CLASS, "198.18.0.10:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40111"]]));
    let cg = s.driver.app_cgroup("app-1", APP).unwrap();
    assert!(cg.dir().starts_with(s.cgroups.join(apps_cgroup_name().unwrap())), "{}", cg.dir().display());

    let (kinds, marks, shown) = host_app(s, |pid| cg.enter(pid).unwrap(), "198.18.0.10:80");
    let refused = refused_kinds();
    assert_eq!(kinds[..2], ["tcp4 ok", "tcp6 ok"]);
    assert_eq!(kinds[2..9], refused, "only TCP is made in an app cgroup");
    assert_eq!(kinds[9], "unix ok", "not an inet socket: not the program's");
    let daemons = (Some(ax_trap::guard::MEMBERS_ONLY), Some(fresh()));
    assert_eq!(marks, [daemons, daemons], "marked as the daemon marks the TCP sockets it makes for the app");
    let shown = shown.unwrap();
    assert_eq!(shown[0], "v4 ('198.18.0.10', 80) 198.18.1.1", "the service and the app's address");
    assert_eq!(shown[1], "v6 ('::ffff:198.18.0.10', 80) ::ffff:198.18.1.1");
    assert_eq!(landed(&[&real, &backend]), 1, "v4: to the backend");
    assert_eq!(landed(&[&real, &backend]), 1, "v6: to the backend");
    // In a network namespace of its own (which a user namespace gives any app), the
    // programs would send its connects to a broker out of its reach: refused.
    let probe = "import socket\ntry:\n  socket.socket();print('made')\nexcept OSError as e:print(e.errno)";
    let out = Command::new("sh")
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec unshare --net python3 -c "$1""#])
        .arg(cg.dir())
        .arg(probe)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "EPERM: {out:?}");

    // A process outside ax-apps: its sockets are its own, made and left alone.
    let (kinds, marks, shown) = host_app(s, |_| {}, "198.18.0.10:80");
    // What the kernel refuses itself (no MPTCP) it refuses here too.
    let made = |k: &str| match refused.iter().find(|r| r.starts_with(k) && !r.ends_with(" EPERM")) {
        Some(unsupported) => unsupported.clone(),
        None => format!("{k} ok"),
    };
    let all_made: Vec<String> =
        ["tcp4", "tcp6", "udp4", "udp6", "raw4", "raw6", "ping4", "mptcp4", "mptcp6", "unix"].map(made).to_vec();
    assert_eq!(kinds, all_made);
    assert_eq!(marks, [(None, None), (None, None)], "unmarked");
    let shown = shown.unwrap();
    assert!(shown[0].starts_with("v4 ('198.18.0.10', 80) 198.18.0.10"), "{}", shown[0]);
    assert_eq!(landed(&[&real, &backend]), 0, "v4: not rewritten");
    assert_eq!(landed(&[&real, &backend]), 0, "v6: not rewritten");
}

#[test]
fn app_cgroups_are_taken_over_refused_without_an_entry_and_removed_with_their_processes() {
    sandboxed("app_cgroups_are_taken_over_refused_without_an_entry_and_removed_with_their_processes", |s| {
        let apps = s.cgroups.join(apps_cgroup_name().unwrap());
        let backend = listener("10.251.0.1:40121");
        s.route(CLASS, "198.18.0.120:80", Proto::Tcp, backends(Lb::Random, &[&["10.251.0.1:40121"]]));
        let cg = s.driver.app_cgroup("app-2", APP).unwrap();
        assert_eq!(s.driver.app_cgroup("app-2", APP).unwrap(), cg, "idempotent");
        // A cgroup made by hand (or left behind) under ax-apps has no entry.
        fs::create_dir(apps.join("stray")).unwrap();
        let by_hand = |pid: i32| fs::write(apps.join("stray/cgroup.procs"), pid.to_string()).unwrap();
        let (kinds, marks, shown) = host_app(s, by_hand, "198.18.0.120:80");
        assert_eq!(kinds[..2], ["tcp4 EPERM", "tcp6 EPERM"], "no entry: no inet socket");
        assert_eq!(kinds[2..9], refused_kinds());
        assert_eq!(kinds[9], "unix ok");
        assert!(marks.is_empty() && shown.is_none());

        // Names that are not one cgroup under ax-apps.
        for bad in ["", ".", "..", "a/b", "../app-2"] {
            assert!(s.driver.app_cgroup(bad, APP).is_err(), "{bad:?}");
            s.driver.remove_app_cgroup(bad);
        }
        let e = s.driver.app_cgroup("cgroup.procs", APP).unwrap_err().to_string();
        assert!(e.contains("cannot make the app cgroup"), "{e}");
        assert!(s.driver.app_cgroup("app-3", 0).is_err(), "no app 0");
        assert!(apps.join("app-2").is_dir(), "nothing removed by a bad name");

        // The next daemon takes the cgroups over, and drops the entries of cgroups gone.
        let gone = s.driver.app_cgroup("app-5", APP).unwrap();
        let mut both = vec![cgroup_id(cg.dir()), cgroup_id(gone.dir())];
        both.sort();
        fs::remove_dir(gone.dir()).unwrap();
        assert_eq!(kcgroup_ids(), both);
        let next = KernelDriver::install(&Sandbox::run_dir(), &s.guard).unwrap();
        assert_eq!(kcgroup_ids(), [cgroup_id(cg.dir())]);
        assert_eq!(next.app_cgroup_names(), ["app-2", "stray"]);
        assert_eq!(next.app_cgroup("app-2", APP).unwrap(), cg);

        // Removed: its processes (forked ones too) killed, the directory gone.
        let mut c = Command::new("sh");
        c.args(["-c", "read x; sleep 1000 & sleep 1000 & echo forked; wait"]);
        let mut app = Talk::new(c);
        cg.enter(app.pid()).unwrap();
        app.go();
        assert_eq!(app.lines(1), ["forked"]);
        let procs = fs::read_to_string(cg.dir().join("cgroup.procs")).unwrap();
        assert_eq!(procs.lines().count(), 3, "{procs}");
        next.remove_app_cgroup("app-2");
        assert!(!cg.dir().exists(), "the app cgroup is gone");
        assert!(kcgroup_ids().is_empty(), "its entry too");
        let status = app.child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert_eq!(next.app_cgroup_names(), ["stray"]);
        next.remove_app_cgroup("stray");
        assert!(next.app_cgroup_names().is_empty());
        assert!(apps.is_dir(), "ax-apps stays");
        // Made again: a new cgroup, a new entry.
        let again = next.app_cgroup("app-2", APP).unwrap();
        assert_ne!(again, cg);
        let (kinds, marks, _) = host_app(s, |pid| again.enter(pid).unwrap(), "198.18.0.120:80");
        assert_eq!(kinds[..2], ["tcp4 ok", "tcp6 ok"]);
        assert_eq!(marks[0].1, Some(fresh()));
        assert_eq!(landed(&[&backend]), 0);
        assert_eq!(landed(&[&backend]), 0);
    });
}

/// The kernel driver's pin directory (of this version's layout, the one there is).
fn kernel_pins() -> PathBuf {
    let layouts = fs::read_dir(Sandbox::run_dir().join("bpf")).unwrap().flatten();
    layouts.map(|e| e.path()).find(|p| p.to_string_lossy().contains("ax-kernel-v")).unwrap()
}

/// The cgroup ids `ax_kcgroups` holds, sorted.
fn kcgroup_ids() -> Vec<u64> {
    let map = ax_sys::bpf::Map::open_pinned(&kernel_pins().join("cgroups")).unwrap();
    let mut ids: Vec<u64> =
        map.keys(8).unwrap().iter().map(|k| u64::from_ne_bytes(k[..].try_into().unwrap())).collect();
    ids.sort();
    ids
}

fn cgroup_id(dir: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir).unwrap())
}

/// A daemon beside ax-apps attached every program there too; the next one, at the root
/// (it holds ax-apps), removes those links: one set of programs runs on an app's
/// connect (two would route the connect twice).
#[test]
fn a_daemon_moved_to_the_root_leaves_one_set_of_programs_on_ax_apps() {
    sandboxed_at("a_daemon_moved_to_the_root_leaves_one_set_of_programs_on_ax_apps", Place::Beside, |s| {
        let b: Vec<TcpListener> = (1..=3).map(|i| listener(&format!("10.251.0.1:4013{i}"))).collect();
        let all: Vec<&TcpListener> = b.iter().collect();
        let rr = backends(Lb::RoundRobin, &[&["10.251.0.1:40131"], &["10.251.0.1:40132"], &["10.251.0.1:40133"]]);
        s.route(CLASS, "198.18.0.130:80", Proto::Tcp, rr);
        let apps_id = cgroup_id(&s.cgroups.join(apps_cgroup_name().unwrap()));
        let at_apps = || -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(kernel_pins())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(&format!("-{apps_id}")))
                .collect();
            names.sort();
            names
        };
        assert_eq!(at_apps().len(), 16, "beside: the 15 programs and sock_create on ax-apps: {:?}", at_apps());
        assert_ne!(s.cgroup, s.cgroups);
        fs::write(s.cgroups.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        let next = KernelDriver::install(&Sandbox::run_dir(), &s.guard).unwrap();
        assert_eq!(at_apps(), [format!("link-ksockcreate-{apps_id}")]);
        let cg = next.app_cgroup("app-4", APP).unwrap();
        let (_, _, shown) = host_app(s, |pid| cg.enter(pid).unwrap(), "198.18.0.130:80");
        assert_eq!(shown.unwrap()[0], "v4 ('198.18.0.130', 80) 198.18.1.1");
        // v4 then v6, the round robin stepped once each.
        assert_eq!((landed(&all[..1]), landed(&all[1..2])), (0, 0));
        nothing_waits(all[2]);
    });
}
