//! The run channel: `ax run` registers its app here, hands over the app's seccomp
//! listener, and the connection's thread then runs the app's trap engine until the
//! app's last process is gone, when the app and its rows leave the tables.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ax_api::{wire, Register, RunReply, RunRequest};
use ax_core::addr::Subnet;
use ax_core::hostnet::{self, HostNet};
use ax_core::table::NewApp;
use ax_core::vservice::{Expose, ExposeAt};
use ax_core::{AppId, Driver, NodeInfo, PortRanges};
use ax_sys::kernel::Linux;
use ax_sys::seccomp::{InFlight, Listener};
use ax_trap::guard::Guard;
use ax_trap::policy::SocketGuard;
use ax_trap::Engine;
use tracing::{info, warn};

use crate::bounds::Gate;
use crate::state::{Answer, Command};
use crate::Daemon;

/// Why an `ax run` session ended early; `ax run` is told so.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// A request broke the contract; the message names the field and what to do.
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SessionError {
    let what = what.into();
    move |err| SessionError::Io { what, err }
}

fn refused(msg: impl Into<String>) -> SessionError {
    SessionError::Refused(msg.into())
}

/// Apps served at once: each holds a connection and a thread while it runs.
pub const MAX_APPS: usize = 4096;
/// How long `ax run` has to send its registration, and then (having set up the app's
/// namespaces meanwhile) its listener.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

pub fn spawn(listener: UnixListener, daemon: Daemon, guard: Option<Arc<Guard>>) -> std::io::Result<()> {
    std::thread::Builder::new().name("run-channel".into()).spawn(move || {
        let gate = Gate::new("run channel", MAX_APPS);
        gate.serve_blocking(&listener, |conn, permit| {
            let (d, g) = (daemon.clone(), guard.clone());
            let spawned = std::thread::Builder::new().name("app".into()).spawn(move || {
                serve(conn, d, g);
                drop(permit);
            });
            if let Err(e) = spawned {
                warn!("cannot start a thread for an app: {e}");
            }
        });
    })?;
    Ok(())
}

fn reply(conn: &UnixStream, r: &RunReply) -> Result<(), SessionError> {
    wire::send(conn.as_fd(), r, None).map_err(io("cannot answer ax run"))
}

fn recv(conn: &UnixStream) -> Result<Option<(RunRequest, Option<OwnedFd>)>, SessionError> {
    wire::recv(conn.as_fd()).map_err(io("cannot read from ax run"))
}

fn serve(conn: UnixStream, daemon: Daemon, guard: Option<Arc<Guard>>) {
    let mut app = Registration { daemon: &daemon, id: None };
    if let Err(e) = session(&conn, &daemon, &guard, &mut app.id) {
        warn!("ax run session ended: {e}");
        let _ = reply(&conn, &RunReply::Error { error: e.to_string() });
    }
}

/// An app's place in the tables, given back however its session ends (a panic in its
/// engine included).
struct Registration<'a> {
    daemon: &'a Daemon,
    id: Option<AppId>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let Some(app) = self.id else { return };
        self.daemon.submit(Command::Forget { app, why: "app exited" });
    }
}

fn session(
    conn: &UnixStream,
    daemon: &Daemon,
    guard: &Option<Arc<Guard>>,
    app: &mut Option<AppId>,
) -> Result<(), SessionError> {
    let cred = ax_sys::scm::peer_cred(conn.as_fd()).map_err(io("cannot read the credentials of ax run"))?;
    if cred.uid != 0 {
        return Err(refused(format!("ax run must run as root (uid {} is not)", cred.uid)));
    }
    let timeout = |t| conn.set_read_timeout(Some(t)).map_err(io("cannot bound the wait for ax run"));
    timeout(REGISTER_TIMEOUT)?;
    let req = match recv(conn)? {
        Some((RunRequest::Register(req), _)) => req,
        Some((RunRequest::Reattach { app_id, pid }, Some(fd))) => {
            let pids = Pids { app: app_process(cred.pid, pid)?, run: cred.pid };
            return reattach(conn, daemon, guard, app, &app_id, pids, fd);
        }
        _ => return Err(refused("expected a register or reattach request first")),
    };
    let (node, ports, cluster_ips, driver) = daemon.read(|s| {
        let t = &s.table;
        let cluster_ips = t.remote().nodes.iter().map(|n| n.1).collect::<Vec<_>>();
        (t.node().clone(), t.pool().ranges().clone(), cluster_ips, s.driver)
    });
    // Only the kernel driver's programs can rule sockets an app makes itself.
    let host_sockets = req.host_sockets && driver == Driver::Kernel && daemon.kernel().is_some();
    let new = NewApp {
        driver,
        socket_guard: guard.is_some(),
        host_sockets,
        ..validate(&req, cred.pid, &node, &ports, &cluster_ips)?
    };
    if new.name.is_some() && daemon.dns_domain().is_none() {
        return Err(refused("--name needs the daemon's DNS server, and this daemon runs with --dns=false"));
    }
    let registered = match daemon.submit(Command::Register(new)) {
        Answer::Registered(a) => a,
        Answer::Refused(r) => return Err(refused(r.to_string())),
        other => unreachable!("a registration is answered with the app or a refusal, not {other:?}"),
    };
    *app = Some(registered.id);
    info!(app = %registered.id, name = ?registered.name, ip = %registered.ip, labels = %registered.labels, "app registered");
    let resolv_conf = match (daemon.dns_domain(), req.dns_override) {
        (Some(domain), true) => Some(
            crate::names::write_resolv_conf(daemon.run_dir(), registered.id, node.ip, domain)
                .map_err(io("cannot write the app's resolv.conf"))?,
        ),
        _ => None,
    };
    let (driver, socket_guard, host_sockets) = (registered.driver, registered.socket_guard, registered.host_sockets);
    reply(
        conn,
        &RunReply::Registered {
            app_id: registered.id.to_string(),
            ip: registered.ip,
            resolv_conf,
            driver,
            socket_guard,
            host_sockets,
        },
    )?;
    timeout(ATTACH_TIMEOUT)?;
    let (pid, fd) = match recv(conn)? {
        Some((RunRequest::Attach { pid }, Some(fd))) => (pid, fd),
        Some((RunRequest::Attach { .. }, None)) => return Err(refused("attach came without the seccomp listener")),
        Some(_) => return Err(refused("expected attach after register")),
        // ax run gave up before starting the app (a failed exec setup, say).
        None => return Ok(()),
    };
    let pid = app_process(cred.pid, pid)?;
    if host_sockets {
        enter_cgroup(daemon, registered.id, pid)?;
    }
    serve_app(conn, daemon, guard, registered.id, Pids { app: pid, run: cred.pid }, fd, false)
}

/// Moves a host-placement app's first process (not started yet) into its cgroup, where
/// the kernel driver's programs mark the sockets it makes.
fn enter_cgroup(daemon: &Daemon, id: AppId, pid: i32) -> Result<(), SessionError> {
    let k = daemon.kernel().ok_or_else(|| refused("the kernel driver is gone"))?;
    let cgroup = k.driver.app_cgroup(&id.to_string(), id.0).map_err(|e| refused(e.to_string()))?;
    cgroup.enter(pid).map_err(io(format!("cannot move app {id} (pid {pid}) into its cgroup")))
}

/// The app's first process as this daemon numbers it: `ax run`'s child, which `ax run`
/// (`run`) numbers `nspid` in its own PID namespace (a container's, say).
fn app_process(run: i32, nspid: i32) -> Result<i32, SessionError> {
    ax_sys::ns::child_of(run, nspid)
        .map_err(io("cannot look for the app's process"))?
        .ok_or_else(|| refused(format!("process {nspid} (as ax run numbers it) is not a child of ax run")))
}

/// The processes of an app's session: its first (`app`) and `ax run` (`run`, by the
/// run connection's credentials: the process that registered it and keeps it).
#[derive(Debug, Clone, Copy)]
struct Pids {
    app: i32,
    run: i32,
}

/// Calls that may have been in flight when a daemon died: more than an app has threads.
const ORPHAN_SPAN: u64 = 256;

/// Where the call an app's engine has in hand is recorded (`InFlight`).
pub fn in_flight_path(run_dir: &Path, id: AppId) -> PathBuf {
    run_dir.join("inflight").join(id.to_string())
}

/// Runs the app's trap engine on this thread until the app is gone. On a reattach,
/// the calls the previous daemon received but never answered (it died mid-call) are
/// answered first, so no thread of the app stays blocked for good: the ones it was
/// carrying out (in hand, or handed to its helper threads) are finished where that is
/// safe (`Engine::resume`), the others get EINTR.
fn serve_app(
    conn: &UnixStream,
    daemon: &Daemon,
    guard: &Option<Arc<Guard>>,
    id: AppId,
    pids: Pids,
    fd: OwnedFd,
    again: bool,
) -> Result<(), SessionError> {
    let pid = pids.app;
    let path = in_flight_path(daemon.run_dir(), id);
    let dir = path.parent().expect("a parent");
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    // Twice the helpers: a helper leaves its place in the count just before its slot.
    let in_flight = InFlight::open(&path, 2 * ax_core::limits::HELPERS_PER_APP)
        .map_err(io(format!("cannot map {}", path.display())))?;
    let listener = Listener::new(fd);
    // Read before this daemon's engine records calls of its own there.
    let mut held = in_flight.take_handed();
    held.extend(in_flight.held());
    if !again {
        held.clear();
    }
    // A call in hand may have been handed to a helper too: finished once.
    let mut seen = std::collections::HashSet::new();
    held.retain(|(n, _)| seen.insert(n.id));
    if again && in_flight.last() != 0 {
        let except: Vec<u64> = held.iter().map(|(n, _)| n.id).collect();
        let last = in_flight.last();
        let answered = listener.answer_orphans(last, ORPHAN_SPAN, &except, libc::EINTR);
        if !answered.is_empty() {
            // Ids relative to the last one the previous daemon received.
            let ids: Vec<i64> = answered.iter().map(|a| a.wrapping_sub(last) as i64).collect();
            warn!(app = %id, calls = answered.len(), ?ids, finished = except.len(), "answered calls the previous daemon left pending (EINTR)");
        }
    }
    let (driver, app_guard, host_sockets) =
        daemon.read(|s| s.table.app(id).map(|a| (a.driver, a.socket_guard, a.host_sockets))).unwrap_or_default();
    // The app's own namespace: its first process's, or for an app in the host's, the one
    // ax run keeps for it.
    let ns_pid = if host_sockets { pids.run } else { pid };
    let netns = ax_sys::ns::open_netns(ns_pid).map_err(io(format!("cannot open app {id}'s namespace")))?;
    let app_ns = netns.try_clone().map_err(io(format!("cannot open app {id}'s namespace")))?;
    let mut kernel =
        Linux::new(listener, app_ns, in_flight, guard.as_ref().map(|g| g.marks()), ax_core::limits::HELPERS_PER_APP)
            .map_err(io(format!("cannot take over app {id} (pid {pid})")))?;
    match (driver, daemon.kernel()) {
        (Driver::Kernel, Some(k)) => {
            kernel = kernel.with_kernel_marks(k.driver.socket_states());
            daemon.set_app_netns(id, Some(netns));
        }
        (Driver::Kernel, None) => {
            warn!(app = %id, "the app runs under the kernel driver, which this daemon could not install: its new sockets fail")
        }
        (Driver::User, _) => {}
    }
    // The app's filter is the one its first daemon chose: with the guard's rules, or
    // trapping what the guard would refuse (a reattach checked that the guard is here).
    let socket_guard = if app_guard { SocketGuard::Installed } else { SocketGuard::Absent };
    // `--new-netns=false` shares ours; a host-placement app lives in the host's; an app
    // that shares ax run's (a container's, where ax run may not make one) may route out
    // of it as one in the host's would.
    let shares = same_netns(pid, "self") || same_netns(pid, &pids.run.to_string());
    let engine = Engine::new(id, Arc::new(kernel), Arc::new(daemon.clone()))
        .with_driver(driver)
        .with_guard(socket_guard)
        .in_host_netns(host_sockets || shares)
        .shared_netns(shares && !host_sockets)
        .with_stats(Arc::clone(daemon.stats()));
    for (n, note) in held {
        engine.resume(&n, note);
    }
    reply(conn, &RunReply::Attached)?;
    daemon.submit(Command::Attach(id));
    info!(app = %id, pid, "app started");
    engine.run();
    daemon.set_app_netns(id, None);
    Ok(())
}

/// Whether process `pid` lives in the network namespace of process `other` (a pid, or
/// `self`: this daemon); when unknown: yes, the stricter answer.
fn same_netns(pid: i32, other: &str) -> bool {
    use ax_sys::ns::identity;
    match (identity(&format!("/proc/{pid}/ns/net")), identity(&format!("/proc/{other}/ns/net"))) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => true,
    }
}

/// A restarted daemon takes back an app it restored: `ax run` hands its listener over
/// again, and calls the app made meanwhile (queued in the kernel) are answered now.
fn reattach(
    conn: &UnixStream,
    daemon: &Daemon,
    guard: &Option<Arc<Guard>>,
    app: &mut Option<AppId>,
    app_id: &str,
    pids: Pids,
    fd: OwnedFd,
) -> Result<(), SessionError> {
    let id = app_id.parse::<AppId>().map_err(|e| refused(e.to_string()))?;
    let pid = pids.app;
    // A guard or kernel driver made anew holds no mark or state of the app's sockets: as
    // good as none for it.
    let socket_guard = guard.as_ref().is_some_and(|g| g.taken_over());
    let kernel_driver = daemon.kernel().is_some_and(|k| k.driver.taken_over());
    if let Answer::Refused(r) = daemon.submit(Command::Reattach { app: id, socket_guard, kernel_driver }) {
        warn!(app = %id, pid, "app not taken back: {r}");
        // An app in the host's namespace makes TCP sockets no one would rule now.
        if let Some(k) = daemon.kernel() {
            k.driver.remove_app_cgroup(&id.to_string());
        }
        return Err(refused(r.to_string()));
    }
    *app = Some(id);
    info!(app = %id, pid, "app taken back after a restart");
    serve_app(conn, daemon, guard, id, pids, fd, true)
}

/// Checks what a registration's types cannot (its values were checked as it was read):
/// the name, `--ip` against the host's own addresses and networks (read now: they
/// change), and exposes against this node and its pool; every error names the field.
/// The driver and placement are left at their defaults.
fn validate(
    req: &Register,
    peer_pid: i32,
    node: &NodeInfo,
    ports: &PortRanges,
    cluster_ips: &[Ipv4Addr],
) -> Result<NewApp, SessionError> {
    if let Some(name) = &req.name {
        ax_dns::wire::check_label(name).map_err(|e| refused(e.to_string()))?;
    }
    if let (Some(ip), false) = (req.ip, req.ip_overlap_ok) {
        let host = host_networks().map_err(io("cannot list this host's networks to check --ip"))?;
        if let Some(o) = hostnet::overlap(ip.get(), node.ip, &host) {
            return Err(refused(o.to_string()));
        }
    }
    for e in &req.expose {
        check_expose(e, node, ports, Some(cluster_ips)).map_err(refused)?;
    }
    Ok(NewApp {
        name: req.name.clone(),
        ip: req.ip.map(|ip| ip.get()),
        labels: req.labels.clone(),
        // The kernel's number for ax run, in our PID namespace (ax run's own may be a
        // container's).
        pid: peer_pid,
        expose: req.expose.clone(),
        // How the app is served is the caller's to say.
        ..NewApp::default()
    })
}

/// The daemon's namespace's interface addresses and link-scope routes (IPv4).
fn host_networks() -> std::io::Result<Vec<HostNet>> {
    let addrs = ax_sys::proc::interface_addrs()?.into_iter().filter_map(|a| match a.addr {
        IpAddr::V4(ip) => Some(HostNet::Address { interface: a.name, ip, prefix: a.prefix }),
        IpAddr::V6(_) => None,
    });
    let routes = ax_sys::netlink::link_routes()?
        .into_iter()
        .map(|r| HostNet::Route { interface: r.interface, subnet: Subnet::new(r.dst, r.prefix) });
    Ok(addrs.chain(routes).collect())
}

/// Checks one `--expose` against this node and its pool; `cluster_ips` are the live
/// nodes' addresses, None where they are not known yet (a restart, before gossip).
pub(crate) fn check_expose(
    e: &Expose,
    node: &NodeInfo,
    ports: &PortRanges,
    cluster_ips: Option<&[Ipv4Addr]>,
) -> Result<(), String> {
    if let (ExposeAt::Node(ip), Some(cluster)) = (e.at, cluster_ips) {
        if ip != node.ip && !cluster.contains(&ip) {
            return Err(format!("--expose {e}: {ip} is not the address of a live node of this cluster"));
        }
    }
    if ports.contains(e.host_port) {
        return Err(format!("--expose {e}: host port {} is inside the --ports pool ({ports})", e.host_port));
    }
    if node.ports.own().any(|p| p == e.host_port) {
        return Err(format!("--expose {e}: host port {} is the ax daemon's own", e.host_port));
    }
    Ok(())
}
