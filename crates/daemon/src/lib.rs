//! The ax daemon: one per host, as root. Its node state (the table, vservice records,
//! attached apps, the cluster's nodes, the relays owed) has one owner, [`Daemon`],
//! changed only by [`Command`]s (see `state.rs`); it is saved as it changes and taken
//! back after a restart. [`serve`] runs the REST API, the run channel (where apps come in
//! and get a trap engine each), DNS, the egress gateway and gossip on sockets it is
//! given; [`run`] binds the real ones and also watches the kernel's socket list so that
//! rows of closed listeners leave.
//!
//! It does not parse command lines (the CLI builds a [`Config`]).

mod bounds;
mod broker;
mod channel;
mod cluster;
mod driver;
mod federation;
mod members;
mod metrics;
mod names;
mod peer;
mod profile;
mod relay;
mod rest;
mod start;
pub mod state;
mod store;
mod tunnel;
mod views;
mod vservices;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use ax_core::{AppId, Driver, PortRanges, Table};
use tracing::{info, warn};

pub use start::{run, ASYNC_THREADS};
use state::RelayChange;
pub use state::{Answer, Command, State};

/// The daemon's settings, resolved from flags and environment by the CLI.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--driver`: None takes the kernel driver where its programs load, else the user
    /// driver.
    pub driver: Option<Driver>,
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
    /// `--federation-gateway-*`: this node is a federation gateway.
    pub federation: Option<FederationSettings>,
    /// `--egress-gateway`: carry other nodes' connections to the outside.
    pub egress_gateway: bool,
    /// `--clean`: forget the state an earlier daemon saved.
    pub clean: bool,
    /// `--cpu-profile`: sample the daemon's CPU and write a pprof profile there on exit.
    pub cpu_profile: Option<std::path::PathBuf>,
    /// `--mem-profile`: sample the daemon's heap and write a pprof profile there on exit.
    pub mem_profile: Option<std::path::PathBuf>,
    /// Where the sockets, the saved state and apps' files live (`ax_api::RUN_DIR`).
    pub run_dir: PathBuf,
    /// `--tls`: the CA, certificate and key every channel between daemons uses. None:
    /// the cluster is unauthenticated (logged once at start).
    pub tls: Option<ax_tls::Files>,
}

#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub domain: String,
    /// `--dns-servers`; None: the host's resolv.conf nameservers.
    pub servers: Option<Vec<std::net::SocketAddr>>,
}

pub use cluster::{ClusterConfig, GossipTransport};
pub use federation::FederationConfig;

/// `--federation-gateway-*` as given: the gateway address may be an interface name,
/// resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationSettings {
    /// `--federation-gateway-ip`: an IPv4 address of this host or an interface name.
    pub ip: String,
    pub advertise: Option<std::net::Ipv4Addr>,
    pub port: u16,
    pub gossip_port: u16,
    pub neighbors: Vec<std::net::Ipv4Addr>,
}

/// Why the daemon cannot start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ax daemon must run as root: it makes sockets for apps in the host's network namespace and reads their memory (try: sudo ax daemon)")]
    NotRoot,
    /// A system call or file that setting up needs failed; `what` says which.
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    /// A setting this host cannot honour; the message says which and what to do.
    #[error("{0}")]
    Setting(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    /// Not the error's source: the message already carries it.
    #[error("--tls: {0}")]
    Tls(ax_tls::TlsError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |err| Error::Io { what, err }
}

/// The daemon's one owner of node state, shared by the API, the run channel, the
/// engines, the watcher and gossip. They change the state only through
/// [`Daemon::submit`].
#[derive(Clone)]
pub struct Daemon(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// Where effects are carried out, one command's at a time and in the order the
    /// commands were applied (each takes a ticket under the state's lock and waits for
    /// its turn here, with the state's lock released: engines and readers never wait on
    /// a file write). A turn may take the state's lock (to copy the state it writes);
    /// the state's lock is never held while this one is taken.
    outbox: Mutex<Outbox>,
    turn: Condvar,
    /// Tickets handed out, under the state's lock: read under that lock, it counts
    /// every command applied so far.
    issued: AtomicU64,
    run_dir: PathBuf,
    node_ip: Ipv4Addr,
    /// The DNS domain, when the DNS server runs.
    dns_domain: Option<String>,
    /// `--tls`: tunnels to other nodes, set once the egress port serves.
    tunnel: OnceLock<Arc<tunnel::Client>>,
    /// A federation gateway's data path, set once its ingress serves.
    federation: OnceLock<Arc<federation::path::Path>>,
    /// The kernel driver, when it is installed.
    kernel: Option<driver::Kernel>,
    /// Kernel-driver apps' network namespaces, for the broker's loopback connects.
    netns: broker::Namespaces,
    /// The event loops that carry relayed connections, started with the first relay.
    pump: Mutex<Option<Arc<relay::pump::Pump>>>,
    /// What the engines count, for `/metrics`.
    stats: Arc<ax_trap::stats::Stats>,
    /// The `service` labels `/metrics` has shown.
    metric_labels: metrics::Labels,
}

/// Effects' side of the daemon: the running relays, and how far effects have got.
#[derive(Default)]
struct Outbox {
    relays: relay::Relays,
    /// The last ticket whose effects are carried out.
    done: u64,
    /// The last ticket whose command the state written includes.
    written: u64,
    /// The kernel driver's maps hold what the table's last sync wanted (false: not
    /// known, as at start or after a failed write).
    kernel_written: bool,
    /// The table's generation the kernel driver's maps were last built from.
    kernel_generation: u64,
    /// A route entry had to leave backends out (logged once).
    kernel_trimmed: bool,
    /// The last ticket whose command the kernel driver's maps were last synced with
    /// (written or not: a failed write is tried again at the next change).
    kernel_synced: u64,
}

/// One command's turn at the outbox. Ending it, however the effects went (a panic
/// included), lets the next ticket's turn begin, so no turn waits for good.
struct Turn<'a> {
    outbox: MutexGuard<'a, Outbox>,
    ticket: u64,
    next: &'a Condvar,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.outbox.done = self.ticket;
        self.next.notify_all();
    }
}

impl Daemon {
    /// A daemon over `state`, keeping its files in `run_dir`.
    pub fn new(state: State, run_dir: &Path, dns_domain: Option<String>) -> Daemon {
        Daemon::with_kernel(state, run_dir, dns_domain, None)
    }

    /// As [`Daemon::new`], with the kernel driver installed: its maps follow the state.
    pub fn with_kernel(
        state: State,
        run_dir: &Path,
        dns_domain: Option<String>,
        kernel: Option<driver::Kernel>,
    ) -> Daemon {
        let node_ip = state.table.node().ip;
        Daemon(Arc::new(Shared {
            state: Mutex::new(state),
            outbox: Default::default(),
            turn: Condvar::new(),
            issued: AtomicU64::new(0),
            run_dir: run_dir.into(),
            node_ip,
            dns_domain,
            tunnel: OnceLock::new(),
            federation: OnceLock::new(),
            kernel,
            netns: broker::Namespaces::default(),
            pump: Mutex::default(),
            stats: Arc::default(),
            metric_labels: metrics::Labels::default(),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.0.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn node_ip(&self) -> Ipv4Addr {
        self.0.node_ip
    }

    pub fn dns_domain(&self) -> Option<&str> {
        self.0.dns_domain.as_deref()
    }

    pub fn run_dir(&self) -> &Path {
        &self.0.run_dir
    }

    /// Tunnels to other nodes (`--tls`); None: the cluster's TCP goes in the clear.
    fn tunnel(&self) -> Option<&tunnel::Client> {
        self.0.tunnel.get().map(|t| &**t)
    }

    /// A federation gateway's data path (None on other nodes).
    fn federation(&self) -> Option<Arc<federation::path::Path>> {
        self.0.federation.get().cloned()
    }

    /// The tunnel client itself, for work that outlives the caller.
    fn tunnel_client(&self) -> Option<Arc<tunnel::Client>> {
        self.0.tunnel.get().cloned()
    }

    /// The relays' event loops, started on first use with bounds from the descriptor
    /// budget.
    fn pump(&self) -> std::io::Result<Arc<relay::pump::Pump>> {
        let mut pump = self.0.pump.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = &*pump {
            return Ok(p.clone());
        }
        let p = Arc::new(relay::pump::Pump::start(ax_sys::proc::fd_limits()?.0, relay::MAX_CONNECTIONS)?);
        *pump = Some(p.clone());
        Ok(p)
    }

    /// What the engines count, shared by all of them.
    pub(crate) fn stats(&self) -> &Arc<ax_trap::stats::Stats> {
        &self.0.stats
    }

    pub(crate) fn metric_labels(&self) -> &metrics::Labels {
        &self.0.metric_labels
    }

    /// The relays' connections now and bytes carried so far (none before the first
    /// relay starts).
    pub(crate) fn relay_counts(&self) -> (usize, u64) {
        let pump = self.0.pump.lock().unwrap_or_else(|p| p.into_inner());
        pump.as_ref().map_or((0, 0), |p| (p.connections(), p.carried()))
    }

    /// Reads the state (views, checks); changes go through [`Daemon::submit`].
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state())
    }

    /// The relays running here, then a federation gateway's listeners, for `ax get
    /// proxies`.
    pub fn proxies(&self) -> Vec<ax_api::ProxyView> {
        let mut views = self.outbox().relays.views();
        let next = views.iter().map(|v| v.id).max().unwrap_or(0) + 1;
        let ingress = self.read(|s| s.gateway.as_ref().map(|g| SocketAddrV4::new(g.config.ip, g.config.port)));
        if let (Some(path), Some(ingress)) = (self.federation(), ingress) {
            views.extend(path.views(self, ingress, next));
        }
        views
    }

    /// Applies `command` and carries out its effects; returns its answer.
    pub fn submit(&self, command: Command) -> Answer {
        self.submit_with(command, BTreeMap::new())
    }

    /// As [`Daemon::submit`], starting relays on listeners the caller bound, by port.
    pub fn submit_with(&self, command: Command, mut bound: BTreeMap<u16, std::net::TcpListener>) -> Answer {
        let (mut effects, ticket) = {
            let mut state = self.state();
            let effects = state.apply(command);
            (effects, self.0.issued.fetch_add(1, Ordering::SeqCst) + 1)
        };
        let mut outbox = self.outbox();
        while outbox.done + 1 != ticket {
            outbox = self.0.turn.wait(outbox).unwrap_or_else(|p| p.into_inner());
        }
        let mut turn = Turn { outbox, ticket, next: &self.0.turn };
        let outbox = &mut *turn.outbox;
        let mut failed = Vec::new();
        for change in effects.relays.drain(..) {
            match change {
                RelayChange::Stop(key) => outbox.relays.stop(self, &key),
                RelayChange::Start(key, spec) => {
                    let listener = bound.remove(&key.port);
                    if let Err(e) = outbox.relays.start(self, key.clone(), spec, listener) {
                        warn!(owner = %key.owner, port = key.port, "cannot start a relay: {e}");
                        failed.push(key);
                    }
                }
            }
        }
        for app in effects.remove_files.drain(..) {
            names::remove_resolv_conf(self.run_dir(), app);
            let _ = fs::remove_file(channel::in_flight_path(self.run_dir(), app));
        }
        for app in effects.remove_cgroups.drain(..) {
            // Killing what is left of the app takes a moment: off the command turn, unless
            // no thread can be had.
            if let Some(k) = self.kernel() {
                let (driver, name) = (Arc::clone(&k.driver), app.to_string());
                let (theirs, named) = (Arc::clone(&driver), name.clone());
                let spawned = std::thread::Builder::new()
                    .name("ax-cgroup".into())
                    .spawn(move || theirs.remove_app_cgroup(&named));
                if spawned.is_err() {
                    driver.remove_app_cgroup(&name);
                }
            }
        }
        // Written before the answer: the state as it is now, with every command applied
        // so far, unless a turn before this one wrote it after this command was applied.
        if effects.persist && outbox.written < ticket {
            let (saved, applied) = {
                let state = self.state();
                (state.saved(), self.0.issued.load(Ordering::SeqCst))
            };
            if let Err(e) = store::write(&store::path(self.run_dir()), &saved) {
                warn!("cannot save the daemon's state: {e}");
            }
            outbox.written = applied;
        }
        drop(turn);
        if let Some(k) = self.0.kernel.as_ref() {
            self.await_kernel_sync(k, ticket);
        }
        if !failed.is_empty() {
            self.submit(Command::RelaysFailed(failed));
        }
        effects.answer
    }
}

impl Daemon {
    /// The kernel driver, when it is installed.
    pub(crate) fn kernel(&self) -> Option<&driver::Kernel> {
        self.0.kernel.as_ref()
    }

    /// Under the kernel driver, makes the SYN of `dial` (a socket of the daemon's that
    /// carries a relay's client on, not connected yet) name `client`, so that a server
    /// under ax sees the client rather than this node (README, "Client addresses"). A
    /// failure is logged: the server then sees this node, as under the user driver.
    pub(crate) fn claim_client(&self, dial: std::os::fd::BorrowedFd<'_>, client: std::net::Ipv4Addr) {
        if let Some(k) = self.kernel() {
            if let Err(e) = k.driver.claim(dial, client) {
                warn!(%client, "a relayed connection shows this node to its server: {e}");
            }
        }
    }

    /// A kernel-driver app's network namespace, while its engine runs here.
    pub(crate) fn app_netns(&self, app: AppId) -> Option<Arc<fs::File>> {
        self.0.netns.get(app)
    }

    /// Keeps (Some) or forgets (None) a kernel-driver app's network namespace.
    pub(crate) fn set_app_netns(&self, app: AppId, netns: Option<fs::File>) {
        match netns {
            Some(ns) => self.0.netns.insert(app, ns),
            None => self.0.netns.remove(app),
        }
    }

    /// Returns once the kernel driver's maps hold `ticket`'s command (a new app's entry,
    /// a row's routes: an app's first connect must not meet maps without it). The sync
    /// is done by the last turn issued: a turn that finds a later one issued leaves it
    /// to that one, so a burst of commands (a listen flood from many threads) costs one
    /// sync, not one each.
    fn await_kernel_sync(&self, k: &driver::Kernel, ticket: u64) {
        let mut outbox = self.outbox();
        while outbox.kernel_synced < ticket {
            if outbox.done == self.0.issued.load(Ordering::SeqCst) {
                // No turn runs or waits: holding the outbox is holding the turn.
                self.sync_kernel(k, &mut outbox);
                return;
            }
            outbox = self.0.turn.wait(outbox).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Brings the kernel driver's maps to what the state says, writing what the
    /// table's changes since the last sync touched ([`Table::kernel_sync`]); the first
    /// time (at start, or after a failed write), everything, then removing what an
    /// earlier daemon wrote that no longer holds. Nothing is done when the table has
    /// not changed since the maps were written.
    fn sync_kernel(&self, k: &driver::Kernel, outbox: &mut Outbox) {
        let (changes, trimmed, whole, generation) = {
            let mut state = self.state();
            // Every command issued so far is applied to the state read here.
            outbox.kernel_synced = self.0.issued.load(Ordering::SeqCst);
            let generation = state.table.generation();
            if outbox.kernel_written && outbox.kernel_generation == generation {
                return;
            }
            let (changes, trimmed) = state.table.kernel_sync(k.broker);
            let whole = state.table.kernel_synced().filter(|_| !outbox.kernel_written).cloned();
            (changes, trimmed, whole, generation)
        };
        if !trimmed.is_empty() && !outbox.kernel_trimmed {
            outbox.kernel_trimmed = true;
            warn!(entries = ?trimmed, "a destination has more than {} backends or {} groups: the kernel driver balances over a subset of them", ax_core::kmap::MAX_TARGETS, ax_core::kmap::MAX_GROUPS);
        }
        // The table has handed these changes over: should writing them panic, the next
        // sync must rewrite everything rather than find nothing new.
        outbox.kernel_written = false;
        let written = match whole {
            Some(maps) => k.driver.resync(&maps),
            None => k.driver.apply(&changes),
        };
        outbox.kernel_written = written.is_ok();
        match written {
            Ok(()) => outbox.kernel_generation = generation,
            Err(e) => warn!("the kernel driver's maps lag behind the table (written again at the next change): {e}"),
        }
    }
}

impl ax_trap::Node for Daemon {
    fn with_table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        f(&mut self.state().table)
    }

    fn changed(&self) {
        self.submit(Command::TableChanged);
    }
}

/// The sockets the daemon serves on, bound by the caller.
pub struct Listeners {
    /// The REST API over TCP: 127.0.0.1, and with `--tls` the node's address too (all
    /// HTTPS then).
    pub rest: Vec<std::net::TcpListener>,
    /// The REST API over a Unix socket (root only).
    pub api: std::os::unix::net::UnixListener,
    /// The run channel and the socket guard for apps' sockets (None where the host has
    /// no BPF for it); None serves no apps (API tests).
    pub run: Option<(std::os::unix::net::UnixListener, Option<Arc<ax_trap::guard::Guard>>)>,
    pub dns: Option<names::Bound>,
    /// The node's egress port: `--egress-gateway`, or any node under `--tls` (the
    /// tunnel and the egress forwarder).
    pub egress: Option<std::net::TcpListener>,
    /// Gossip: chitchat binds its UDP socket itself, from the config, on this transport.
    pub gossip: Option<(ClusterConfig, cluster::GossipTransport)>,
    /// A federation gateway's WAN gossip, likewise (and, without TLS, the addresses
    /// it hears).
    pub federation: Option<Federation>,
    /// `--tls`: the files every channel between daemons uses, read again on SIGHUP.
    pub tls: Option<Arc<ax_tls::Reloadable>>,
}

/// A federation gateway's listeners: its WAN gossip's transport (and, without TLS, the
/// addresses it hears, which its ingress takes sessions from too), and its ingress.
pub struct Federation {
    pub config: FederationConfig,
    pub transport: cluster::GossipTransport,
    pub allowed: Option<ax_cluster::udp::Allowed>,
    pub ingress: std::net::TcpListener,
}

/// Serves the API, the run channel, DNS, the egress gateway and gossip on `listeners`
/// until `shutdown` completes.
pub async fn serve(
    daemon: Daemon,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let tokio_io = |what: &str| io(format!("cannot serve {what}"));
    let tcp = listeners
        .rest
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(tokio_io("REST"))?;
    listeners.api.set_nonblocking(true).map_err(tokio_io("the API socket"))?;
    let unix = tokio::net::UnixListener::from_std(listeners.api).map_err(tokio_io("the API socket"))?;
    if let Some((run, guard)) = listeners.run {
        if let Some(guard) = &guard {
            members::spawn(daemon.clone(), Arc::clone(guard)).map_err(io("cannot start the member updates"))?;
        }
        channel::spawn(run, daemon.clone(), guard).map_err(io("cannot start the run channel"))?;
    }
    if let Some(dns) = listeners.dns {
        let (node, domain) = (daemon.read(|s| s.table.node().ip), daemon.dns_domain().unwrap_or_default().to_owned());
        names::write_node_resolv_conf(daemon.run_dir(), node, &domain)
            .map_err(io(format!("cannot write {}", daemon.run_dir().join("resolv.conf").display())))?;
        names::spawn(dns, daemon.clone()).map_err(io("cannot serve DNS"))?;
    }
    if let Some(egress) = listeners.egress {
        let tls = listeners.tls.as_ref().map(|t| (t, Arc::new(tunnel::Client::new(t))));
        if let Some((_, client)) = &tls {
            let _ = daemon.0.tunnel.set(client.clone());
        }
        tunnel::spawn(egress, daemon.clone(), tls)
            .map_err(io(format!("cannot serve the egress port {}", ax_core::EGRESS_PORT)))?;
    }
    if let Some(tls) = listeners.tls.clone() {
        tokio::spawn(reload_on_hangup(tls));
    }
    let gossip = match listeners.gossip {
        Some((config, transport)) => Some(cluster::start(daemon.clone(), &config, transport).await?),
        None => None,
    };
    let wan = match listeners.federation {
        Some(f) => {
            let cap = daemon.pump().map_err(io("cannot start the relay loops"))?.per_listener();
            let path = Arc::new(federation::path::Path::new(listeners.tls.as_ref(), f.allowed.clone(), cap));
            let _ = daemon.0.federation.set(path.clone());
            let at = SocketAddrV4::new(f.config.ip, f.config.port);
            federation::path::spawn_ingress(f.ingress, daemon.clone(), path)
                .map_err(io(format!("cannot serve the federation ingress on {at}")))?;
            Some(federation::start(daemon.clone(), f.config, (f.transport, f.allowed)).await?)
        }
        None => None,
    };
    let result = rest::serve(tcp, unix, listeners.tls, daemon, shutdown).await.map_err(io("the REST API failed"));
    for g in gossip.into_iter().chain(wan) {
        g.abort();
    }
    result
}

/// Reads the TLS files again on every SIGHUP; connections already made stay, new
/// handshakes use the new files. A reload that fails keeps the files in use.
async fn reload_on_hangup(tls: Arc<ax_tls::Reloadable>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot catch SIGHUP: the TLS files are read only at start");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(t) => info!(cert = %t.files().cert.display(), "SIGHUP: TLS files read again"),
            Err(e) => warn!("SIGHUP: {e}; the files read before stay in use"),
        }
    }
}
