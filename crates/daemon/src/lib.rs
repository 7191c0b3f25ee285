//! The ax daemon: one per host, as root. It owns the tables (`ax_core::Table`), serves
//! the API (REST on a root-only Unix socket and on 127.0.0.1), takes apps in on the run
//! channel and runs a trap engine for each, and watches the kernel's socket list so
//! that rows of closed listeners leave.
//!
//! It does not parse command lines (the CLI builds a [`Config`]) and keeps no state
//! across restarts yet.

mod channel;
mod cluster;
mod egress;
mod names;
mod profile;
mod relay;
mod rest;
mod state;
mod views;
mod vservices;
mod watch;

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use ax_api::{API_SOCKET, RUN_DIR, RUN_SOCKET};
use ax_core::addr::{self, Subnet};
use ax_core::{NodeInfo, PortPool, PortRanges, Table};
use tracing::{info, warn};

/// The daemon's settings, resolved from flags and environment by the CLI.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interface name or IPv4 address; None picks the first non-loopback interface
    /// with an IPv4 address.
    pub node_interface: Option<String>,
    pub node_name: Option<String>,
    pub cluster: String,
    pub ports: PortRanges,
    pub rest_port: u16,
    /// The built-in DNS server: None with `--dns=false`.
    pub dns: Option<DnsConfig>,
    pub gossip: ClusterConfig,
    /// `--egress-gateway`: carry other nodes' connections to the outside.
    pub egress_gateway: bool,
    /// `--clean`: forget the state an earlier daemon saved.
    pub clean: bool,
    /// `--cpu-profile`: sample the daemon's CPU and write a pprof profile there on exit.
    pub cpu_profile: Option<std::path::PathBuf>,
    /// `--mem-profile`: sample the daemon's heap and write a pprof profile there on exit.
    pub mem_profile: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub domain: String,
    /// `--dns-servers`; None: the host's resolv.conf nameservers.
    pub servers: Option<Vec<std::net::SocketAddr>>,
}

/// The driver this daemon runs (the kernel driver is not built yet).
pub const DRIVER: &str = "user";

pub use cluster::ClusterConfig;

/// Shared by the API, the run channel and the watcher.
#[derive(Clone)]
pub struct Daemon {
    pub table: Arc<Mutex<Table>>,
    /// The DNS domain, when the DNS server runs.
    pub dns_domain: Option<String>,
    relays: relay::Shared,
    /// The cluster's nodes as last gossiped, this one first.
    nodes: Arc<Mutex<Vec<ax_cluster::gossip::NodeStatus>>>,
    /// Apps whose trap engine runs here (the others were restored and await their
    /// `ax run`).
    attached: Arc<Mutex<std::collections::HashSet<ax_core::AppId>>>,
    /// The newest record of every vservice name this node has seen (see vservices.rs).
    vservice_records: Arc<Mutex<std::collections::BTreeMap<String, ax_cluster::state::VsRecord>>>,
}

impl Daemon {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attached(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ax_core::AppId>> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn relays(&self) -> std::sync::MutexGuard<'_, relay::Relays> {
        self.relays.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock order: the table before the vservice records, whenever both are held.
    fn vservice_records(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, ax_cluster::state::VsRecord>> {
        self.vservice_records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ax_trap::Node for Daemon {
    fn with_table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        f(&mut self.table())
    }

    fn changed(&self) {
        state::save(self);
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<()> {
    if ax_sys::proc::effective_uid() != 0 {
        bail!("ax daemon must run as root: it makes sockets for apps in the host's network namespace and reads their memory (try: sudo ax daemon)");
    }
    let interfaces = ax_sys::proc::interface_addrs().context("cannot list network interfaces")?;
    let node = NodeInfo {
        name: match config.node_name {
            Some(n) => n,
            None => hostname()?,
        },
        cluster: config.cluster,
        ip: node_ip(&interfaces, config.node_interface.as_deref())?,
    };
    let host_networks: Vec<Subnet> = interfaces
        .iter()
        .filter_map(|a| match a.addr {
            IpAddr::V4(ip) => Some(Subnet::new(ip, a.prefix)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let made_up = addr::made_up_range(&host_networks);
    let mut gossip = config.gossip.clone();
    if gossip.auto_discover.is_some() {
        let prefix = interfaces.iter().find(|a| a.addr == IpAddr::V4(node.ip)).map_or(32, |a| a.prefix);
        gossip.auto_discover = Some(prefix);
    }
    let fds = ax_sys::proc::raise_fd_limit().context("cannot raise the open-file limit")?;
    prepare_dir(Path::new(RUN_DIR))?;
    let api_std = bind_unix(API_SOCKET)?;
    let run_sock = bind_unix(RUN_SOCKET)?;
    let rest_addr = (Ipv4Addr::LOCALHOST, config.rest_port);
    let rest_std = std::net::TcpListener::bind(rest_addr).with_context(|| {
        format!(
            "cannot serve REST on 127.0.0.1:{}: is another daemon running? (pick another with --rest-port)",
            config.rest_port
        )
    })?;

    let mut seed = [0u8; 8];
    ax_sys::proc::random_bytes(&mut seed)?;
    let mut table = Table::new(node.clone(), PortPool::new(config.ports.clone()), u64::from_ne_bytes(seed));
    table.set_egress_gateway(config.egress_gateway);
    let saved = if config.clean {
        state::clean()?;
        None
    } else {
        state::load()?
    };
    match made_up {
        Some(range) => table.set_made_up_range(range),
        None => warn!(
            "every candidate range for made-up addresses overlaps this host's networks: apps with --name need --ip"
        ),
    }
    let dns = match &config.dns {
        Some(d) => Some(names::bind(node.ip, d)?),
        None => None,
    };
    let daemon = Daemon {
        table: Arc::new(Mutex::new(table)),
        dns_domain: config.dns.as_ref().map(|d| d.domain.clone()),
        relays: Default::default(),
        nodes: Default::default(),
        vservice_records: Default::default(),
        attached: Default::default(),
    };
    if let Some(saved) = saved {
        restore(&daemon, saved);
    }
    info!(node = %node.name, cluster = %node.cluster, ip = %node.ip, ports = %config.ports, driver = DRIVER, made_up = ?made_up, fds, "ax daemon starting");

    watch::spawn(daemon.clone())?;
    channel::spawn(run_sock, daemon.clone())?;

    let profiler = match &config.cpu_profile {
        Some(path) => Some((profile::start()?, path.clone())),
        None => None,
    };
    if config.mem_profile.is_some() {
        profile::start_heap()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async move {
        rest_std.set_nonblocking(true)?;
        api_std.set_nonblocking(true)?;
        let tcp = tokio::net::TcpListener::from_std(rest_std)?;
        let unix = tokio::net::UnixListener::from_std(api_std)?;
        if let Some(dns) = dns {
            names::spawn(dns, daemon.clone())?;
        }
        if config.egress_gateway {
            egress::spawn(daemon.clone())
                .with_context(|| format!("cannot serve as egress gateway on port {}", ax_core::EGRESS_PORT))?;
        }
        cluster::start(daemon.clone(), &gossip).await?;
        info!("serving the API on {API_SOCKET} and http://127.0.0.1:{}", config.rest_port);
        let result = rest::serve(tcp, unix, daemon.clone(), shutdown_signal()).await;
        // Everything is saved as it changes; once more for good measure on the way out.
        state::save(&daemon);
        result
    });
    if let Some((guard, path)) = profiler {
        profile::write(guard, &path);
    }
    if let Some(path) = &config.mem_profile {
        profile::write_heap(path);
    }
    let _ = fs::remove_file(API_SOCKET);
    let _ = fs::remove_file(RUN_SOCKET);
    info!("ax daemon stopped");
    result
}

/// How long a restored app has to be taken back by its `ax run` before it is dropped.
const REATTACH_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// Takes back what an earlier daemon saved: apps whose `ax run` is still alive, their
/// sockets and rows, and the vservices. Apps not taken back in time are dropped.
fn restore(daemon: &Daemon, saved: state::Saved) {
    let mut snapshot = saved.table;
    let before = snapshot.apps.len();
    snapshot.apps.retain(|a| Path::new(&format!("/proc/{}", a.pid)).exists());
    let restored: Vec<ax_core::AppId> = snapshot.apps.iter().map(|a| a.id).collect();
    let gone = before - restored.len();
    daemon.table().restore(snapshot);
    vservices::converge(daemon, saved.vservices);
    info!(apps = restored.len(), gone, "restored the saved state");
    state::save(daemon);
    let d = daemon.clone();
    let _ = std::thread::Builder::new().name("reattach".into()).spawn(move || {
        std::thread::sleep(REATTACH_GRACE);
        for id in restored {
            if !d.attached().contains(&id) {
                channel::forget_app(&d, id, "app not taken back after the restart");
            }
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn hostname() -> Result<String> {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").context("cannot read the host name")?;
    Ok(h.trim().to_string())
}

/// The node address: `--node-interface` as an IPv4 address or an interface name, or
/// the first non-loopback interface that is up and has an IPv4 address.
fn node_ip(addrs: &[ax_sys::proc::InterfaceAddr], choice: Option<&str>) -> Result<Ipv4Addr> {
    let v4 = |a: &ax_sys::proc::InterfaceAddr| match a.addr {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    };
    match choice {
        Some(c) => {
            if let Ok(ip) = c.parse::<Ipv4Addr>() {
                if addrs.iter().any(|a| a.addr == IpAddr::V4(ip)) {
                    return Ok(ip);
                }
                bail!("--node-interface {ip}: no interface of this host has that address");
            }
            if c.parse::<IpAddr>().is_ok() {
                bail!("--node-interface {c}: the node address must be IPv4");
            }
            let named: Vec<_> = addrs.iter().filter(|a| a.name == c).collect();
            if named.is_empty() {
                bail!("--node-interface {c}: no such interface with an address on this host");
            }
            named
                .iter()
                .find_map(|a| v4(a))
                .with_context(|| format!("--node-interface {c}: the interface has no IPv4 address"))
        }
        None => addrs
            .iter()
            .filter(|a| !a.loopback && a.up)
            .find_map(v4)
            .context("no non-loopback interface with an IPv4 address is up: name one with --node-interface"),
    }
}

fn prepare_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;
    Ok(())
}

/// Binds a root-only Unix socket at `path`, refusing to steal it from a live daemon.
fn bind_unix(path: &str) -> Result<std::os::unix::net::UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another ax daemon is already serving at {path}");
    }
    let _ = fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {path}"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).with_context(|| format!("cannot restrict {path}"))?;
    Ok(l)
}
