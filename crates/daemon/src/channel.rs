//! The run channel: `ax run` registers its app here, hands over the app's seccomp
//! listener, and the connection's thread then runs the app's trap engine until the
//! app's last process is gone, when the app and its rows leave the tables.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ax_api::{wire, Register, RunReply, RunRequest};
use ax_core::table::NewApp;
use ax_core::vservice::{parse_expose, ExposeAt};
use ax_core::{addr, AppId, Labels, NodeInfo, PortRanges};
use ax_sys::kernel::Linux;
use ax_sys::seccomp::{LastId, Listener};
use ax_trap::Engine;
use tracing::{info, warn};

use crate::Daemon;

pub fn spawn(listener: UnixListener, daemon: Daemon) -> std::io::Result<()> {
    std::thread::Builder::new().name("run-channel".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    let d = daemon.clone();
                    let spawned = std::thread::Builder::new().name("app".into()).spawn(move || serve(conn, d));
                    if let Err(e) = spawned {
                        warn!("cannot start a thread for an app: {e}");
                    }
                }
                Err(e) => warn!("run channel accept failed: {e}"),
            }
        }
    })?;
    Ok(())
}

fn reply(conn: &UnixStream, r: &RunReply) -> Result<()> {
    wire::send(conn.as_fd(), r, None).context("cannot answer ax run")
}

fn recv(conn: &UnixStream) -> Result<Option<(RunRequest, Option<OwnedFd>)>> {
    wire::recv(conn.as_fd()).context("cannot read from ax run")
}

fn serve(conn: UnixStream, daemon: Daemon) {
    let mut app = Registration { daemon: &daemon, id: None };
    if let Err(e) = session(&conn, &daemon, &mut app.id) {
        warn!("ax run session ended: {e:#}");
        let _ = reply(&conn, &RunReply::Error { error: format!("{e:#}") });
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
        let Some(id) = self.id else { return };
        self.daemon.attached().remove(&id);
        forget_app(self.daemon, id, "app exited");
    }
}

/// Removes an app and what it left (its rows, its resolv.conf), and saves.
pub fn forget_app(daemon: &Daemon, id: AppId, why: &str) {
    crate::names::remove_resolv_conf(id);
    let _ = std::fs::remove_file(last_id_path(id));
    let gone = daemon.table().remove_app(id);
    if let Some((_, gone)) = gone {
        let rows = gone.iter().filter(|b| b.listening).count();
        info!(app = %id, rows, sockets = gone.len(), "{why}; its rows are removed");
        crate::state::save(daemon);
    }
}

fn session(conn: &UnixStream, daemon: &Daemon, app: &mut Option<AppId>) -> Result<()> {
    let cred = ax_sys::scm::peer_cred(conn.as_fd())?;
    if cred.uid != 0 {
        bail!("ax run must run as root (uid {} is not)", cred.uid);
    }
    let req = match recv(conn)? {
        Some((RunRequest::Register(req), _)) => req,
        Some((RunRequest::Reattach { app_id, pid }, Some(fd))) => return reattach(conn, daemon, app, &app_id, pid, fd),
        _ => bail!("expected a register or reattach request first"),
    };
    let (node, ports, cluster_ips) = {
        let t = daemon.table();
        (t.node().clone(), t.pool().ranges().clone(), t.remote().nodes.iter().map(|n| n.1).collect::<Vec<_>>())
    };
    let new = validate(&req, cred.pid, &node, &ports, &cluster_ips)?;
    if new.name.is_some() && daemon.dns_domain.is_none() {
        bail!("--name needs the daemon's DNS server, and this daemon runs with --dns=false");
    }
    let registered = daemon.table().add_app(new).map_err(|e| anyhow!(e))?;
    *app = Some(registered.id);
    crate::state::save(daemon);
    info!(app = %registered.id, name = ?registered.name, ip = %registered.ip, labels = %registered.labels, "app registered");
    let resolv_conf = match (&daemon.dns_domain, req.dns_override) {
        (Some(domain), true) => {
            let node = daemon.table().node().ip;
            Some(crate::names::write_resolv_conf(registered.id, node, domain)?)
        }
        _ => None,
    };
    reply(
        conn,
        &RunReply::Registered { app_id: registered.id.to_string(), ip: registered.ip.to_string(), resolv_conf },
    )?;
    let (pid, fd) = match recv(conn)? {
        Some((RunRequest::Attach { pid }, Some(fd))) => (pid, fd),
        Some((RunRequest::Attach { .. }, None)) => bail!("attach came without the seccomp listener"),
        Some(_) => bail!("expected attach after register"),
        // ax run gave up before starting the app (a failed exec setup, say).
        None => return Ok(()),
    };
    serve_app(conn, daemon, registered.id, pid, fd, false)
}

/// Calls that may have been in flight when a daemon died: more than an app has threads.
const ORPHAN_SPAN: u64 = 256;

/// Where the id of the last call an app's engine received is kept.
fn last_id_path(id: AppId) -> std::path::PathBuf {
    std::path::PathBuf::from(ax_api::RUN_DIR).join("inflight").join(id.to_string())
}

/// Runs the app's trap engine on this thread until the app is gone. On a reattach,
/// calls the previous daemon received but never answered (it died mid-call) are
/// answered first with EINTR, so no thread of the app stays blocked for good.
fn serve_app(conn: &UnixStream, daemon: &Daemon, id: AppId, pid: i32, fd: OwnedFd, again: bool) -> Result<()> {
    let path = last_id_path(id);
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    let last_id = LastId::open(&path).with_context(|| format!("cannot map {}", path.display()))?;
    let listener = Listener::new(fd);
    if again && last_id.get() != 0 {
        let n = listener.answer_orphans(last_id.get(), ORPHAN_SPAN, libc::EINTR);
        if n > 0 {
            warn!(app = %id, calls = n, "answered calls the previous daemon left pending (EINTR)");
        }
    }
    let kernel =
        Linux::new(listener, pid, last_id).map_err(|e| anyhow!("cannot take over app {id} (pid {pid}): {e}"))?;
    let engine = Engine::new(id, Arc::new(kernel), Arc::new(daemon.clone()));
    reply(conn, &RunReply::Attached)?;
    daemon.attached().insert(id);
    info!(app = %id, pid, "app started");
    engine.run();
    Ok(())
}

/// A restarted daemon takes back an app it restored: `ax run` hands its listener over
/// again, and calls the app made meanwhile (queued in the kernel) are answered now.
fn reattach(
    conn: &UnixStream,
    daemon: &Daemon,
    app: &mut Option<AppId>,
    app_id: &str,
    pid: i32,
    fd: OwnedFd,
) -> Result<()> {
    let id: AppId = app_id.parse()?;
    if daemon.table().app(id).is_none() {
        bail!("app {id} is not known to this daemon (was it started with --clean?)");
    }
    *app = Some(id);
    info!(app = %id, pid, "app taken back after a restart");
    serve_app(conn, daemon, id, pid, fd, true)
}

/// Checks a registration as the API's contract says; every error names the field.
fn validate(
    req: &Register,
    peer_pid: i32,
    node: &NodeInfo,
    ports: &PortRanges,
    cluster_ips: &[Ipv4Addr],
) -> Result<NewApp> {
    let ip = match &req.ip {
        Some(s) => {
            let ip: Ipv4Addr = s.parse().map_err(|_| anyhow!("--ip {s} is not an IPv4 address"))?;
            addr::check_app_ip(ip).map_err(|e| anyhow!(e))?;
            Some(ip)
        }
        None => None,
    };
    let labels = Labels::parse(&req.labels).map_err(|e| anyhow!("--labels: {e}"))?;
    if let Some(name) = &req.name {
        ax_dns::wire::check_label(name).map_err(|e| anyhow!(e))?;
    }
    let mut expose = Vec::new();
    for spec in &req.expose {
        let e = parse_expose(spec).map_err(|e| anyhow!(e))?;
        match e.at {
            ExposeAt::Node(ip) if ip != node.ip && !cluster_ips.contains(&ip) => {
                bail!("--expose {spec}: {ip} is not the address of a live node of this cluster")
            }
            _ => {}
        }
        if ports.contains(e.host_port) {
            bail!("--expose {spec}: host port {} is inside the --ports pool ({ports})", e.host_port);
        }
        expose.push(e);
    }
    Ok(NewApp {
        name: req.name.clone(),
        ip,
        labels,
        pid: if req.pid > 0 { req.pid } else { peer_pid },
        driver: crate::DRIVER.into(),
        expose,
    })
}
