//! The daemon's start on a real host ([`run`]): what it finds out of the host (the node
//! name and address, the driver it can run), the sockets it binds under the run dir
//! and on the node's address, and the saved state it takes back; then [`serve`]s.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ax_api::{API_SOCKET, RUN_SOCKET};
use ax_core::addr::{self, Subnet};
use ax_core::{AppId, DaemonPorts, NodeInfo, PortPool, Table};
use tracing::{info, warn};

use crate::{broker, cluster, driver, io, names, profile, rest, serve, store, watch};
use crate::{Command, Config, Daemon, Error, FederationConfig, Listeners, State};

/// Runs the daemon until SIGINT or SIGTERM: binds the real sockets under
/// `config.run_dir` and on the node's address, restores the saved state, and serves.
pub fn run(config: Config) -> Result<(), Error> {
    if ax_sys::proc::effective_uid() != 0 {
        return Err(Error::NotRoot);
    }
    let interfaces = ax_sys::proc::interface_addrs().map_err(io("cannot list network interfaces"))?;
    let unprivileged_port_start = ax_sys::proc::unprivileged_port_start().unwrap_or_else(|e| {
        warn!("cannot read net.ipv4.ip_unprivileged_port_start ({e}): ports below 1024 need CAP_NET_BIND_SERVICE");
        1024
    });
    let mut ports =
        DaemonPorts::new(config.dns.is_some(), config.gossip.gossip_port, config.rest_port, unprivileged_port_start);
    let federation = match &config.federation {
        Some(f) => {
            let ip = interface_ip(&interfaces, "--federation-gateway-ip", Some(&f.ip))?;
            ports = ports.with_federation(f.port, f.gossip_port);
            let advertise = f.advertise.unwrap_or(ip);
            Some(FederationConfig {
                ip,
                advertise,
                port: f.port,
                gossip_port: f.gossip_port,
                neighbors: f.neighbors.clone(),
            })
        }
        None => None,
    };
    let node = NodeInfo {
        name: match config.node_name {
            Some(n) => n,
            None => hostname()?,
        },
        cluster: config.cluster,
        ip: interface_ip(&interfaces, "--node-interface", config.node_interface.as_deref())?,
        ports,
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
    let tls = match &config.tls {
        Some(files) => {
            let tls = ax_tls::Tls::load(files, Some(&node.name)).map_err(Error::Tls)?;
            info!(ca = %files.ca.display(), cert = %files.cert.display(), "TLS: channels between daemons are mutually authenticated");
            Some(ax_tls::Reloadable::new(tls, Some(node.name.clone())))
        }
        None => {
            warn!("the cluster is unauthenticated: without --tls, any host that can reach this node's gossip port can join the cluster and publish services (see the README, Security)");
            None
        }
    };
    let fds = ax_sys::proc::raise_fd_limit().map_err(io("cannot raise the open-file limit"))?;
    let run_dir = config.run_dir.as_path();
    prepare_dir(run_dir)?;
    let api_path = run_dir.join(socket_name(API_SOCKET));
    let run_path = run_dir.join(socket_name(RUN_SOCKET));
    let api = bind_unix(&api_path)?;
    let run_sock = bind_unix(&run_path)?;
    // With --tls, REST is HTTPS and also on the node's address, for remote admin.
    let rest_on = if tls.is_some() { vec![Ipv4Addr::LOCALHOST, node.ip] } else { vec![Ipv4Addr::LOCALHOST] };
    let rest = rest_on
        .iter()
        .map(|ip| {
            std::net::TcpListener::bind((*ip, config.rest_port)).map_err(|e| {
                Error::Setting(format!(
                    "cannot serve REST on {ip}:{} ({e}): is another daemon running? (pick another with --rest-port)",
                    config.rest_port
                ))
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;

    let mut seed = [0u8; 8];
    ax_sys::proc::random_bytes(&mut seed).map_err(io("cannot read random bytes"))?;
    let mut table = Table::new(node.clone(), PortPool::new(config.ports.clone()), u64::from_ne_bytes(seed));
    table.set_egress_gateway(config.egress_gateway);
    table.set_egress_forwarder(tls.is_some());
    let state_path = store::path(run_dir);
    let saved = if config.clean {
        store::clean(&state_path)?;
        None
    } else {
        match store::load(&state_path)? {
            store::Loaded::Nothing => None,
            store::Loaded::State(saved, dropped) => {
                dropped.iter().for_each(store::Dropped::log);
                Some(saved)
            }
            store::Loaded::SetAside { to, why } => {
                warn!(to = %to.display(), "the saved state cannot be read ({why}): set aside, starting without it");
                None
            }
        }
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
    // A federation gateway takes its cluster's federated connections there too.
    let egress = if config.egress_gateway || tls.is_some() || federation.is_some() {
        Some(
            std::net::TcpListener::bind((node.ip, ax_core::EGRESS_PORT))
                .map_err(io(format!("cannot serve the egress port {}", ax_core::EGRESS_PORT)))?,
        )
    } else {
        None
    };
    // The apps in the host's namespace make their TCP sockets under the programs and maps
    // a previous daemon left pinned: where this one cannot take those over (an older
    // layout's, which the guard's install removes, or none), they are stopped before any
    // program goes, or they would make and connect sockets no program rules meanwhile.
    if !ax_trap::kdriver::maps_left_behind(run_dir) {
        stop_host_apps("the kernel driver's maps of this version were not left pinned");
    }
    let guard = match ax_trap::guard::Guard::install(run_dir) {
        Ok(guard) => Ok(Arc::new(guard)),
        Err(e) if ax_trap::guard::Guard::left_behind(run_dir) => {
            return Err(Error::Setting(format!(
                "the socket guard a previous daemon left under {} cannot be taken over ({e}): its apps' sockets \
                 are still guarded, so this daemon will not run without it; run the daemon where BPF works",
                run_dir.join("bpf").display()
            )))
        }
        Err(e) => {
            warn!(
                "the socket guard cannot be installed ({e}): apps run under the user driver with every send and \
                 receive that names an address trapped, and pool ports take packets from any host (README, \
                 \"Without BPF\")"
            );
            Err(e)
        }
    };
    if let (Some(egress), Ok(guard)) = (&egress, &guard) {
        // The port serves members (and this node), nobody else.
        guard.mark_members_only(egress.as_fd()).map_err(io("cannot guard the egress port"))?;
    }
    let chosen = driver::choose(config.driver, || {
        let guard = match &guard {
            Ok(guard) => guard,
            Err(e) => return Err(format!("it needs the socket guard, which cannot be installed ({e})")),
        };
        if unprivileged_port_start <= ax_core::BROKER_PORT {
            return Err(format!(
                "its broker's port {} would not be privileged (net.ipv4.ip_unprivileged_port_start is {unprivileged_port_start}): \
                 any user could listen there while the daemon is down",
                ax_core::BROKER_PORT
            ));
        }
        ax_trap::kdriver::KernelDriver::install(run_dir, guard).map_err(|e| e.to_string())
    })
    .map_err(Error::Setting)?;
    if chosen.kernel.is_none() {
        stop_host_apps("this daemon runs without the kernel driver");
    }
    let (kernel, broker) = match chosen.kernel {
        Some(k) => {
            // Where the programs send connects the daemon carries on (loopback, egress):
            // members only, like the egress port; a privileged port, the same across
            // restarts (the pinned programs keep sending there while the daemon is down).
            let broker = std::net::TcpListener::bind((node.ip, ax_core::BROKER_PORT))
                .map_err(io(format!("cannot listen for the broker on port {}", ax_core::BROKER_PORT)))?;
            if let Ok(guard) = &guard {
                guard.mark_members_only(broker.as_fd()).map_err(io("cannot guard the broker's port"))?;
            }
            let at = match broker.local_addr().map_err(io("cannot read the broker's address"))? {
                std::net::SocketAddr::V4(a) => a,
                std::net::SocketAddr::V6(_) => unreachable!("bound on the node's IPv4 address"),
            };
            (Some(driver::Kernel { driver: Arc::new(k), broker: at }), Some(broker))
        }
        None => (None, None),
    };
    let mut state = State::new(table);
    state.driver = chosen.driver;
    state.gateway = federation.clone().map(crate::federation::Gateway::new);
    let daemon = Daemon::with_kernel(state, run_dir, config.dns.as_ref().map(|d| d.domain.clone()), kernel);
    info!(driver = %chosen.driver, why = %chosen.why, "driver chosen");
    info!(node = %node.name, cluster = %node.cluster, ip = %node.ip, ports = %config.ports, driver = %chosen.driver, made_up = ?made_up, fds, reserved = ?node.ports.own().collect::<Vec<_>>(), unprivileged_port_start, "ax daemon starting");

    let profiler = match &config.cpu_profile {
        Some(path) => Some((profile::start()?, path.clone())),
        None => None,
    };
    if config.mem_profile.is_some() {
        profile::start_heap()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Named, so the runtime's threads (its blocking pool comes and goes) are told from
        // the threads held for apps.
        .thread_name(ASYNC_THREADS)
        // The egress tunnel's TLS records come and go on these threads (see the function).
        .on_thread_start(ax_sys::alloc::cache_this_thread)
        .enable_all()
        .build()
        .map_err(io("cannot start the async runtime"))?;
    let tls_on = tls.is_some();
    let listeners = Listeners {
        rest,
        api,
        run: Some((run_sock, guard.ok())),
        dns,
        egress,
        gossip: Some((
            gossip,
            cluster::GossipTransport::new(tls.as_ref(), interfaces.iter().map(|a| a.addr).collect())?,
        )),
        federation: match federation {
            Some(config) => {
                let local = interfaces.iter().map(|a| a.addr).collect();
                let (transport, allowed) = crate::federation::transport(tls.as_ref(), local, &config.neighbors)?;
                let at = (config.ip, config.port);
                let ingress = std::net::TcpListener::bind(at)
                    .map_err(io(format!("cannot listen for the federation ingress on {}:{}", at.0, at.1)))?;
                Some(crate::Federation { config, transport, allowed, ingress })
            }
            None => None,
        },
        tls,
    };
    let result = rt.block_on(async {
        if let Some(saved) = saved {
            restore(&daemon, saved);
        }
        stop_strays(&daemon);
        if let Some(broker) = broker {
            broker::spawn(broker, daemon.clone()).map_err(io("cannot start the broker"))?;
        }
        watch::spawn(daemon.clone(), watch::Netlink::probe());
        let scheme = if tls_on { "https" } else { "http" };
        let tcp: Vec<String> = rest_on.iter().map(|ip| format!("{scheme}://{ip}:{}", config.rest_port)).collect();
        info!("serving the API on {} and {}", api_path.display(), tcp.join(" and "));
        let result = serve(daemon.clone(), listeners, shutdown_signal()).await;
        // Everything is saved as it changes; once more for good measure on the way out.
        daemon.submit(Command::TableChanged);
        result
    });
    if let Some((guard, path)) = profiler {
        profile::write(guard, &path);
    }
    if let Some(path) = &config.mem_profile {
        profile::write_heap(path);
    }
    let _ = fs::remove_file(&api_path);
    let _ = fs::remove_file(&run_path);
    info!("ax daemon stopped");
    result
}

/// The async runtime's threads' name.
pub const ASYNC_THREADS: &str = "ax-async";

/// How long a restored app has to be taken back by its `ax run` before it is dropped.
pub(crate) const REATTACH_GRACE: Duration = Duration::from_secs(15);

/// Takes back what an earlier daemon saved: apps whose `ax run` is still alive, their
/// sockets and rows, and the vservices. Apps not taken back in time are dropped.
fn restore(daemon: &Daemon, saved: store::Saved) {
    let mut saved = saved;
    let before = saved.table.apps.len();
    saved.table.apps.retain(|a| ax_sys::proc::is_running(a.pid));
    let restored: Vec<AppId> = saved.table.apps.iter().map(|a| a.id).collect();
    let gone = before - restored.len();
    info!(apps = restored.len(), gone, "restoring the saved state");
    daemon.submit(Command::Restore { saved, at_ms: rest::now_ms() });
    drop_unattached_after(daemon.clone(), restored, REATTACH_GRACE);
}

/// Stops the apps in the host's namespace that a previous daemon left and this one does
/// not know (started with --clean, or gone from the saved state): no one would rule the
/// TCP sockets they make. Their cgroups' entries go first, so they make none meanwhile.
fn stop_strays(daemon: &Daemon) {
    let Some(k) = daemon.kernel() else { return };
    let known: std::collections::HashSet<String> = daemon.read(|s| s.table.apps().map(|a| a.id.to_string()).collect());
    for name in k.driver.app_cgroup_names().into_iter().filter(|n| !known.contains(n)) {
        warn!(app = %name, "stopping an app in the host's namespace that this daemon does not know");
        k.driver.remove_app_cgroup(&name);
    }
}

/// Stops every process of the apps in the host's namespace a previous daemon left, which
/// this one cannot rule (`why`).
fn stop_host_apps(why: &str) {
    match ax_trap::kdriver::stop_every_app() {
        Ok(true) => warn!("stopped the apps in the host's namespace a previous daemon left: {why}"),
        Ok(false) => {}
        Err(e) => warn!("cannot stop the apps in the host's namespace a previous daemon left ({why}): {e}"),
    }
}

/// After `grace`, drops those of `apps` whose `ax run` has not taken them back.
pub(crate) fn drop_unattached_after(daemon: Daemon, apps: Vec<AppId>, grace: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        // Forgetting apps waits its turn (and a state write): off the async workers.
        let _ = tokio::task::spawn_blocking(move || daemon.submit(Command::DropUnattached(apps))).await;
    })
}

/// The file name of one of `ax_api`'s socket paths, to place it in another run dir.
pub(crate) fn socket_name(path: &str) -> &std::ffi::OsStr {
    Path::new(path).file_name().expect("a socket path names a file")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn hostname() -> Result<String, Error> {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").map_err(io("cannot read the host name"))?;
    Ok(h.trim().to_string())
}

/// An address of this host given to `flag` (`--node-interface`,
/// `--federation-gateway-ip`) as an IPv4 address or an interface name; without one,
/// the first non-loopback interface that is up and has an IPv4 address.
fn interface_ip(addrs: &[ax_sys::proc::InterfaceAddr], flag: &str, choice: Option<&str>) -> Result<Ipv4Addr, Error> {
    let v4 = |a: &ax_sys::proc::InterfaceAddr| match a.addr {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    };
    let setting = |m: String| Error::Setting(m);
    match choice {
        Some(c) => {
            if let Ok(ip) = c.parse::<Ipv4Addr>() {
                if addrs.iter().any(|a| a.addr == IpAddr::V4(ip)) {
                    return Ok(ip);
                }
                return Err(setting(format!("{flag} {ip}: no interface of this host has that address")));
            }
            if c.parse::<IpAddr>().is_ok() {
                return Err(setting(format!("{flag} {c}: the address must be IPv4")));
            }
            let named: Vec<_> = addrs.iter().filter(|a| a.name == c).collect();
            if named.is_empty() {
                return Err(setting(format!("{flag} {c}: no such interface with an address on this host")));
            }
            named
                .iter()
                .find_map(|a| v4(a))
                .ok_or_else(|| setting(format!("{flag} {c}: the interface has no IPv4 address")))
        }
        None => addrs.iter().filter(|a| !a.loopback && a.up).find_map(v4).ok_or_else(|| {
            setting(format!("no non-loopback interface with an IPv4 address is up: name one with {flag}"))
        }),
    }
}

fn prepare_dir(dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("cannot create {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("cannot restrict {}", dir.display())))
}

/// Binds a root-only Unix socket at `path`, refusing to steal it from a live daemon.
fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::Setting(format!("another ax daemon is already serving at {}", path.display())));
    }
    let _ = fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).map_err(io(format!("cannot listen on {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot restrict {}", path.display())))?;
    Ok(l)
}
