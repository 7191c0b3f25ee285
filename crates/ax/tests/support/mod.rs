//! Test hosts for end-to-end tests. Each [`TestHost`] is a network namespace with a
//! veth node interface (its peer in a second namespace, no route out), its own mount
//! namespace with a private /run (so its own /var/run/appswitch), and its own PID
//! namespace, so everything started in it dies with it, even if the test process is
//! killed. Tests run their daemon and apps inside and touch nothing of the machine's.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const NODE_IP: &str = "10.251.0.1";
pub const PEER_IP: &str = "10.251.0.2";
/// An address on the node's subnet that [`TestHost::blackhole`] makes swallow packets.
pub const BLACKHOLE_IP: &str = "10.251.0.4";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The ax binary under test.
pub fn ax_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ax")
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Fails the test at once with a useful message when the suite cannot run here.
pub fn require_root_and(programs: &[&str]) {
    assert_eq!(
        fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .split_whitespace()
            .nth(1),
        Some("0"),
        "the end-to-end tests need root (they make network namespaces): run the README's test command as root"
    );
    for p in programs {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {p}")).output().unwrap().status.success();
        assert!(found, "{p} is not installed: .ci/run installs the Debian packages the tests use");
    }
}

/// Asserts a command failed and said `want` on stderr.
pub fn fails_with(out: Output, want: &str) {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "expected {want:?} in {err:?}");
}

/// Removes namespaces left by test processes that died without cleaning up.
fn reap_stale() {
    let Ok(list) = fs::read_dir("/run/netns") else { return };
    for e in list.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("axt-") else { continue };
        let Some(pid) = rest.split('-').next() else { continue };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// The pid of the `sleep` that process `parent` forks (unshare --fork, nsenter -p).
fn sleeping_child(parent: u32, what: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kids = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
        if let Some(pid) = kids.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()) {
            if fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().starts_with(b"sleep") {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fresh_name() -> String {
    reap_stale();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("axt-{}-{n}", std::process::id())
}

/// A bridge in a namespace of its own, with no route out: a LAN (or a WAN) of test
/// hosts. Its ports are `p0`, `p1`... in the order hosts are wired to it.
pub struct Switch {
    pub ns: String,
    ports: usize,
}

impl Switch {
    pub fn new() -> Switch {
        let ns = format!("{}-sw", fresh_name());
        sh(Command::new("ip").args(["netns", "add", &ns]));
        sh(Command::new("ip").args(["-n", &ns, "link", "add", "br0", "type", "bridge"]));
        sh(Command::new("ip").args(["-n", &ns, "link", "set", "br0", "up"]));
        Switch { ns, ports: 0 }
    }

    /// Makes the veth end `end` (in this switch's namespace) its next port.
    fn plug(&mut self, end: &str) {
        let port = format!("p{}", self.ports);
        self.ports += 1;
        sh(Command::new("ip").args(["-n", &self.ns, "link", "set", end, "name", &port]));
        sh(Command::new("ip").args(["-n", &self.ns, "link", "set", &port, "master", "br0", "up"]));
    }

    /// A new test host whose node interface (`ax0`, at `ip`/24) is wired here.
    pub fn host(&mut self, ip: &str) -> TestHost {
        let h = TestHost::with_link(fresh_name(), ip, &self.ns);
        self.plug("ax1");
        h
    }

    /// Wires test host `h` here too, by a second interface `ifname` at `ip`/24.
    pub fn wire(&mut self, h: &TestHost, ifname: &str, ip: &str) {
        sh(Command::new("ip")
            .args(["link", "add", ifname, "netns", &h.name, "type", "veth", "peer", "name", "ax1", "netns", &self.ns]));
        sh(Command::new("ip").args(["-n", &h.name, "addr", "add", &format!("{ip}/24"), "dev", ifname]));
        sh(Command::new("ip").args(["-n", &h.name, "link", "set", ifname, "up"]));
        self.plug("ax1");
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Test hosts joined by a [`Switch`]: a cluster on one machine. Host `i` has the node
/// address 10.251.0.(11+i).
pub struct Cluster {
    pub hosts: Vec<TestHost>,
    switch: Switch,
}

impl Cluster {
    pub fn new(n: usize) -> Cluster {
        let mut switch = Switch::new();
        let hosts = (0..n).map(|i| switch.host(&Cluster::ip(i))).collect();
        Cluster { hosts, switch }
    }

    pub fn ip(i: usize) -> String {
        format!("10.251.0.{}", 11 + i)
    }

    /// Three hosts: 0 a member node ("a", its daemon started with `flags` too), 2 the
    /// cluster's egress gateway ("gw"), 1 a plain host on the wire (no daemon) serving
    /// `who` = "outside" on :9300 (python's http.server, its log `outside`), outside the
    /// cluster. Returns once node a sees the gateway live.
    pub fn with_egress_gateway(flags: &[&str]) -> Cluster {
        let mut c = Cluster::new(3);
        let all = (0..3).map(Cluster::ip).collect::<Vec<_>>().join(",");
        let mut a = vec!["--node-name", "a", "--neighbors", &all];
        a.extend_from_slice(flags);
        c.hosts[0].start_daemon(&a);
        c.hosts[2].start_daemon(&["--node-name", "gw", "--neighbors", &all, "--egress-gateway"]);
        let root = c.hosts[1].web_root("out", "who", "outside");
        let mut server = c.hosts[1].cmd("/usr/bin/python3");
        server.args(["-m", "http.server", "9300", "--bind", &Cluster::ip(1), "--directory", &root]);
        c.hosts[1].spawn_plain("outside", server);
        let h = &c.hosts[0];
        h.wait_until("the gateway", Duration::from_secs(20), || {
            h.get("nodes").iter().any(|n| n["role"] == "egress-gateway" && n["live"] == true)
        });
        c
    }

    /// Cuts (or restores) host `i`'s wire to the switch.
    pub fn set_link(&self, i: usize, up: bool) {
        sh(Command::new("ip").args([
            "-n",
            &self.switch.ns,
            "link",
            "set",
            &format!("p{i}"),
            if up { "up" } else { "down" },
        ]));
    }
}

impl Drop for Cluster {
    /// The hosts go before their switch.
    fn drop(&mut self) {
        self.hosts.clear();
    }
}

pub struct TestHost {
    pub name: String,
    holder: Child,
    /// The PID namespace's init, whose namespaces every command enters.
    init: i32,
    pub dir: PathBuf,
    daemon: Option<Child>,
    background: Vec<Child>,
    /// The command line of each app started in the background, by name.
    apps: std::collections::HashMap<String, String>,
}

impl TestHost {
    /// A test host whose node interface (NODE_IP) is wired to a plain peer host
    /// (PEER_IP) in a namespace of its own.
    pub fn new() -> TestHost {
        let name = fresh_name();
        let peer = format!("{name}-p");
        sh(Command::new("ip").args(["netns", "add", &peer]));
        let h = TestHost::with_link(name, NODE_IP, &peer);
        for cmd in [vec!["addr", "add", &format!("{PEER_IP}/24"), "dev", "ax1"], vec!["link", "set", "ax1", "up"]] {
            sh(Command::new("ip").args(["-n", &peer]).args(cmd));
        }
        h
    }

    /// A test host with node address `ip`, its veth's other end (`ax1`) put in
    /// namespace `other` (a peer host, or the switch of a cluster).
    fn with_link(name: String, ip: &str, other: &str) -> TestHost {
        sh(Command::new("ip").args(["netns", "add", &name]));
        sh(Command::new("ip")
            .args(["link", "add", "ax0", "netns", &name, "type", "veth", "peer", "name", "ax1", "netns", other]));
        for cmd in [
            vec!["addr", "add", &format!("{ip}/24"), "dev", "ax0"],
            vec!["link", "set", "ax0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            sh(Command::new("ip").args(["-n", &name]).args(cmd));
        }
        let dir = std::env::temp_dir().join(&name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // setpriv: the chain dies if this test process dies; unshare --kill-child: the
        // PID namespace (and all in it) dies with unshare.
        let holder = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "ip", "netns", "exec", &name])
            .args(["unshare", "--mount", "--propagation", "private", "--pid", "--kill-child", "--mount-proc"])
            .args(["sh", "-c", "mount -t tmpfs tmpfs /run && exec sleep infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start the test host");
        let init = sleeping_child(holder.id(), "test host");
        TestHost { name, holder, init, dir, daemon: None, background: Vec::new(), apps: Default::default() }
    }

    /// A directory `name` in the test's scratch space holding one file.
    pub fn web_root(&self, name: &str, file: &str, content: &str) -> String {
        let root = self.dir.join(name);
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join(file), content).unwrap();
        root.to_string_lossy().into_owned()
    }

    /// A python http.server app `name` on `ip:port`, serving a directory whose `who`
    /// file says `name`.
    pub fn python_backend(&mut self, name: &str, ip: &str, port: u16) {
        let root = self.web_root(name, "who", name);
        let port = port.to_string();
        self.spawn_app(name, &["--ip", ip, "--", "/usr/bin/python3", "-m", "http.server", &port, "--directory", &root]);
    }

    /// A command that runs inside the test host.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-m", "-n", "-p", "--", program]);
        c.stdin(Stdio::null());
        c
    }

    /// Starts a process holding a network namespace of its own (only `lo`, down) inside
    /// the test host, as a container with no network would; returns its pid.
    pub fn container(&mut self) -> i32 {
        let mut c = self.cmd("unshare");
        c.args(["--net", "sleep", "infinity"]);
        let child = c.spawn().expect("cannot start the container");
        let nsenter = child.id();
        self.background.push(child);
        sleeping_child(nsenter, "container")
    }

    /// `ax ARGS` run in the test host, but in the network namespace of process `pid`.
    pub fn ax_in_netns_of(&self, pid: i32) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-m", "-p", &format!("--net=/proc/{pid}/ns/net"), "--", ax_bin()]);
        c.stdin(Stdio::null());
        c
    }

    /// A command in the test host's peer namespace: a plain host on the wire, not ax's.
    pub fn peer_cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-p", self.name), program]);
        c.stdin(Stdio::null());
        c
    }

    /// `ax` in the test host. With `AX_TEST_DRIVER` set (`user` or `kernel`), every
    /// daemon started with it runs that driver (`AX_DRIVER` is `--driver`'s variable).
    pub fn ax(&self) -> Command {
        let mut c = self.cmd(ax_bin());
        if let Some(driver) = test_driver() {
            c.env("AX_DRIVER", driver);
        }
        c
    }

    pub fn log_path(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.log"))
    }

    fn logged(&self, mut c: Command, what: &str) -> Child {
        // Appending: a restarted daemon adds to the same log.
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path(what)).unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        c.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
    }

    /// Starts `ax daemon` with `args` and waits until its API answers.
    pub fn start_daemon(&mut self, args: &[&str]) {
        let mut c = self.ax();
        c.arg("daemon").arg("--node-interface").arg("ax0").args(args).env("RUST_LOG", "ax=debug,info");
        self.start_daemon_as(c);
    }

    /// Starts `ax daemon ARGS` where bpf(2) fails with EPERM, as under Docker's default
    /// seccomp profile (support/nobpf.c), and waits until its API answers. The daemon
    /// chooses its driver (`AX_TEST_DRIVER` is not passed on): where its eBPF programs
    /// cannot be loaded, only the user driver can run.
    pub fn start_daemon_without_bpf(&mut self, args: &[&str]) {
        let c = self.daemon_without_bpf(args);
        self.start_daemon_as(c);
    }

    /// `ax daemon --node-interface ax0 ARGS` in the test host, where bpf(2) fails.
    pub fn daemon_without_bpf(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(&self.compile_c("nobpf.c"));
        c.args([ax_bin(), "daemon", "--node-interface", "ax0"]).args(args).env("RUST_LOG", "ax=debug,info");
        c
    }

    fn start_daemon_as(&mut self, c: Command) {
        self.daemon = Some(self.logged(c, "daemon"));
        self.wait_until("the daemon answers", Duration::from_secs(10), || {
            self.ax().args(["get", "apps"]).output().is_ok_and(|o| o.status.success())
        });
    }

    /// Starts `ax daemon --driver kernel ARGS`; false (the daemon gone) where the kernel
    /// driver's programs cannot be installed on this machine.
    pub fn start_kernel_daemon(&mut self, args: &[&str]) -> bool {
        let mut c = self.ax();
        c.args(["daemon", "--driver", "kernel", "--node-interface", "ax0"]).args(args).env("RUST_LOG", "ax=debug,info");
        let mut daemon = self.logged(c, "daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ax().args(["get", "apps"]).output().is_ok_and(|o| o.status.success()) {
                self.daemon = Some(daemon);
                return true;
            }
            if daemon.try_wait().unwrap().is_some() {
                assert!(self.daemon_log().contains("cannot be installed"), "{}", self.daemon_log());
                return false;
            }
            assert!(Instant::now() < deadline, "the daemon never answered\n{}", self.daemon_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.log_path("daemon")).unwrap_or_default()
    }

    /// Starts `ax run ARGS` in the background; its output goes to `<what>.log`.
    pub fn spawn_app(&mut self, what: &str, args: &[&str]) {
        let mut c = self.ax();
        c.arg("run").args(args);
        self.apps.insert(what.to_string(), format!("{} run {}", ax_bin(), args.join(" ")));
        let child = self.logged(c, what);
        self.background.push(child);
    }

    /// Starts a plain program in the background in the test host (not under ax).
    pub fn spawn_plain(&mut self, what: &str, mut c: Command) {
        let child = self.logged(
            {
                c.stdin(Stdio::null());
                c
            },
            what,
        );
        self.background.push(child);
    }

    /// Stops an app started with [`TestHost::spawn_app`] as `what` (SIGTERM to its
    /// `ax run`, which passes it on).
    pub fn stop_app(&mut self, what: &str) {
        let pattern = self.apps.remove(what).unwrap_or_else(|| panic!("no app {what}"));
        let status = self.cmd("pkill").args(["-TERM", "-f", &pattern]).status().unwrap();
        assert!(status.success(), "no process matched {pattern}");
    }

    pub fn app_log(&self, what: &str) -> String {
        fs::read_to_string(self.log_path(what)).unwrap_or_default()
    }

    /// Runs `ax run ARGS` to completion (killed after 60 s).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd("timeout");
        c.args(["60", ax_bin(), "run"]).args(args);
        c.output().expect("cannot run ax run")
    }

    /// Runs `ax run ARGS`, which must succeed; returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ax run {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `ax run ARGS` until it has printed `want` different answers (or `tries`
    /// times); returns the answers seen.
    pub fn distinct_answers(&self, args: &[&str], want: usize, tries: usize) -> std::collections::HashSet<String> {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..tries {
            seen.insert(self.run_ok(args));
            if seen.len() >= want {
                break;
            }
        }
        seen
    }

    /// The first answer line to `request` on `ip:port` (a daemon's port that takes
    /// request lines), asked from this host by `user` (root: None) with
    /// support/ask.py; `tls`: TLS 1.3 presenting that certificate prefix ("-" for
    /// none) with that ALPN protocol.
    pub fn ask(&self, user: Option<&str>, ip: &str, port: &str, request: &str, tls: Option<(&str, &str)>) -> String {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/ask.py");
        let script = self.dir.join("ask.py");
        fs::copy(src, &script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = match user {
            None => self.cmd("/usr/bin/python3"),
            Some(u) => {
                let mut c = self.cmd("setpriv");
                c.args([&format!("--reuid={u}"), "--regid=nogroup", "--clear-groups", "/usr/bin/python3"]);
                c
            }
        };
        c.arg(&script).args([ip, port, request]);
        if let Some((cert, alpn)) = tls {
            c.args([cert, alpn]);
        }
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `ax get RESOURCE -o json`.
    pub fn get(&self, resource: &str) -> Vec<Value> {
        let out = sh(self.ax().args(["get", resource, "-o", "json"]));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("JSON rows")
    }

    /// The driver the daemon runs new apps under (`GET /v1/info` on the API's Unix
    /// socket, which speaks plain HTTP under `--tls` too; read with python).
    pub fn daemon_driver(&self) -> String {
        let get = format!(
            "import json,socket\ns=socket.socket(socket.AF_UNIX)\ns.connect('{}')\n\
             s.sendall(b'GET /v1/info HTTP/1.0\\r\\nHost: ax\\r\\n\\r\\n')\nr=b''\nwhile True:\n  d=s.recv(65536)\n  \
             if not d: break\n  r+=d\nprint(json.loads(r.split(b'\\r\\n\\r\\n',1)[1])['driver'])",
            ax_api::API_SOCKET
        );
        let out = sh(self.cmd("/usr/bin/python3").args(["-c", &get]));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// curl's exit status when an egress destination refuses: 7, or under the kernel
    /// driver 56 (the app's connect went to the daemon's broker and succeeded; the
    /// refusal shows as the connection closed at once, a documented difference).
    pub fn curl_refused_by_egress_destination(&self) -> i32 {
        if self.daemon_driver() == "kernel" {
            56
        } else {
            7
        }
    }

    /// Service rows for a service address.
    pub fn servers_at(&self, service: &str) -> Vec<Value> {
        self.get("servers").into_iter().filter(|r| r["service_addr"] == service).collect()
    }

    /// Waits until `n` service rows for `service` exist.
    pub fn wait_for_rows(&self, service: &str, n: usize) {
        self.wait_until(&format!("{n} rows for {service}"), Duration::from_secs(15), || {
            self.servers_at(service).len() == n
        });
    }

    /// Waits until app `what`'s log has a line starting with `prefix`; returns that line.
    pub fn wait_for_line(&self, what: &str, prefix: &str) -> String {
        let find = || self.app_log(what).lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        self.wait_until(&format!("{what} to say {prefix:?}"), Duration::from_secs(30), || find().is_some());
        find().unwrap()
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- daemon log ---\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Compiles `source` (a C file in tests/support) into the test's scratch space, where
    /// any user may run it; returns the program's path.
    pub fn compile_c(&self, source: &str) -> String {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(source);
        let bin = self.dir.join(source.trim_end_matches(".c"));
        sh(Command::new("gcc").args(["-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"]).arg(&bin).arg(&src));
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755)).unwrap();
        bin.to_string_lossy().into_owned()
    }

    /// Makes BLACKHOLE_IP swallow packets: a permanent neighbour entry with a MAC nobody
    /// has sends them to the peer namespace, which drops them. A connect there waits.
    pub fn blackhole(&self) -> &'static str {
        sh(Command::new("ip").args(["-n", &self.name, "neigh", "replace", BLACKHOLE_IP]).args([
            "lladdr",
            "02:00:00:00:00:04",
            "dev",
            "ax0",
            "nud",
            "permanent",
        ]));
        BLACKHOLE_IP
    }

    /// The standard output of `program ARGS` run in the test host, which must succeed.
    pub fn stdout_of(&self, program: &str, args: &[&str]) -> String {
        String::from_utf8(sh(self.cmd(program).args(args)).stdout).unwrap()
    }

    /// The test host's TCP and UDP sockets as `ss` shows them (`ss_flags` such as
    /// "-tuan"): protocol, state, local and peer address.
    pub fn inet_sockets(&self, ss_flags: &str) -> Vec<[String; 4]> {
        self.stdout_of("ss", &["-H", ss_flags])
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                [f[0], f[1], f[4], f[5]].map(str::to_string)
            })
            .collect()
    }

    /// Sends signal `sig` to process `pid` of the test host's PID namespace.
    pub fn kill(&self, pid: &str, sig: &str) {
        sh(self.cmd("kill").args([&format!("-{sig}"), pid]));
    }

    /// The number of the system call process `pid` is blocked in ("running" when none).
    pub fn syscall_of(&self, pid: &str) -> String {
        let out = self.cmd("cat").arg(format!("/proc/{pid}/syscall")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("gone").to_string()
    }

    /// The daemon's pid as this test process sees it (the child of the nsenter started).
    pub fn daemon_pid(&self) -> u32 {
        let nsenter = self.daemon.as_ref().expect("a daemon").id();
        let kids = fs::read_to_string(format!("/proc/{nsenter}/task/{nsenter}/children")).unwrap();
        kids.split_whitespace().next().and_then(|p| p.parse().ok()).expect("the daemon process")
    }

    /// How many threads and open descriptors the daemon has.
    /// The daemon's threads (but its async runtime's, whose blocking pool comes and goes
    /// with the API calls that measure it) and open descriptors.
    pub fn daemon_threads_and_fds(&self) -> (usize, usize) {
        let pid = self.daemon_pid();
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let named = |t: &fs::DirEntry| fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let threads = tasks.filter_map(Result::ok).filter(|t| named(t).trim() != ax_daemon::ASYNC_THREADS).count();
        (threads, fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count())
    }

    /// Sends SIGTERM to the daemon and waits for it.
    pub fn stop_daemon(&mut self) -> std::process::ExitStatus {
        self.signal_daemon("TERM")
    }

    /// Sends `sig` to the daemon (nsenter forks: the daemon itself is signalled) and
    /// waits for it.
    pub fn signal_daemon(&mut self, sig: &str) -> std::process::ExitStatus {
        let mut d = self.daemon.take().expect("a daemon");
        let _ = self.cmd("pkill").args([&format!("-{sig}"), "-f", "ax daemon"]).status();
        d.wait().unwrap()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} daemon log ---\n{}", self.name, self.daemon_log());
            for app in self.apps.keys() {
                let log = fs::read_to_string(self.log_path(app)).unwrap_or_default();
                eprintln!("--- {} app {app} log ---\n{log}", self.name);
            }
        }
        // The kernel driver's app cgroups are named after the host's network namespace.
        let netns = fs::metadata(format!("/run/netns/{}", self.name)).map(|m| m.ino());
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        for c in self.background.iter_mut().chain(self.daemon.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(netns) = netns {
            remove_app_cgroups(&self.dir, netns);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        // A cluster host has no peer namespace: nothing to say then.
        let _ = Command::new("ip").args(["netns", "del", &format!("{}-p", self.name)]).stderr(Stdio::null()).status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Removes the (empty, their processes gone) app cgroups a test host's daemon made,
/// `ax-apps-NETNS` and what is under it, through a cgroup2 mounted in a mount namespace
/// of its own: none is left behind by the tests.
fn remove_app_cgroups(scratch: &Path, netns: u64) {
    let mnt = scratch.join("cgroup2");
    let _ = fs::create_dir_all(&mnt);
    let script = format!(
        "mount -t cgroup2 none {0} && for d in {0}/ax-apps-{1}/*/; do rmdir \"$d\"; done; rmdir {0}/ax-apps-{1}",
        mnt.display(),
        netns
    );
    let _ = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stderr(Stdio::null())
        .status();
}

/// The driver the suites run under (`AX_TEST_DRIVER`); None: the daemon's own choice.
pub fn test_driver() -> Option<String> {
    std::env::var("AX_TEST_DRIVER").ok().filter(|d| !d.is_empty())
}
