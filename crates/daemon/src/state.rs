//! The daemon's node state and the one place it changes. Everything the daemon knows of
//! its node (the table, the vservice records, which apps are attached, the cluster's
//! nodes, the relays that should run) is in [`State`]; REST, the run channel, the
//! engines, the watcher and gossip change it only by [`Command`]s, and [`State::apply`]
//! answers each with [`Effects`] (relays to start or stop, whether to persist, files
//! to remove, the answer) that the caller carries out after the lock is released.
//!
//! It does no I/O: sockets, files and threads are the caller's (see `lib.rs`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use ax_api::VserviceRequest;
use ax_cluster::federation::Federation;
use ax_cluster::gossip::NodeStatus;
use ax_cluster::state::{merge_vservices, AppRecord, NodeRecord, Published, RowRecord, VsRecord};
use ax_core::table::NewApp;
use ax_core::vservice::{ExposeAt, Vservice};
use ax_core::{App, AppId, Binding, Driver, Origin, Proto, Remote, Table};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::federation::{Gateway, WanView};
use crate::relay::{RelayKey, RelaySpec};
use crate::store::{self, Saved};
use crate::vservices::{self, Refusal};

/// How long an `--expose` relay outlives its app's node dropping out of the gossip view.
/// A node wrongly suspected dead by the failure detector (a busy host, a late
/// heartbeat) is back within a second or two, and its relays must not flap meanwhile; a
/// node really gone takes its relays with it after this.
pub const EXPOSE_HOLD: Duration = Duration::from_secs(10);

/// A change to the node's state, from whoever asks for it.
#[derive(Debug)]
pub enum Command {
    /// `ax run` registers an app (already validated).
    Register(NewApp),
    /// An app's trap engine runs here.
    Attach(AppId),
    /// A restarted daemon is asked to take a restored app back; `socket_guard`: whether
    /// it has the socket guard, with the marks a previous daemon left; `kernel_driver`:
    /// whether it has the kernel driver, with the sockets' states a previous one left.
    Reattach { app: AppId, socket_guard: bool, kernel_driver: bool },
    /// An app is gone (it exited, or was not taken back): its rows and files go too.
    Forget { app: AppId, why: &'static str },
    /// The reattach grace is over: restored apps not taken back by now are dropped.
    DropUnattached(Vec<AppId>),
    /// An earlier daemon's state (its apps already checked to be alive), taken back at
    /// `at_ms` (wall clock, ms: vservice versions past it by more than a day are not).
    Restore { saved: Saved, at_ms: u64 },
    /// An engine changed the table (a bind or a listen) and wants it kept.
    TableChanged,
    /// The watcher's listing of the kernel's sockets.
    Sweep(Sweep),
    /// `POST /v1/vservices`, made at `at_ms` (wall clock, ms): the version of its record.
    CreateVservice { vservice: Vservice, spec: VserviceRequest, at_ms: u64, unbindable: Option<(u16, String)> },
    /// `DELETE /v1/vservices/{name}`.
    DeleteVservice { name: String, at_ms: u64 },
    /// One gossip round's view of the cluster.
    Gossip(GossipView),
    /// A federation gateway's WAN gossip round.
    Wan(WanView),
    /// Relays that could not start: they are not running, so they are not owed as
    /// such (an expose relay is tried again next round).
    RelaysFailed(Vec<RelayKey>),
}

/// What the kernel listed, for [`Command::Sweep`].
#[derive(Debug)]
pub struct Sweep {
    /// [`Table::mark`] taken before the listings.
    pub mark: u64,
    pub tcp_listening: HashSet<u64>,
    /// Every TCP socket, when bound-only rows are judged.
    pub tcp_bound: Option<HashSet<u64>>,
    pub udp: HashSet<u64>,
}

/// What gossip says of the other nodes this round.
#[derive(Debug)]
pub struct GossipView {
    pub remote: Remote,
    /// Every other node known, with its liveness.
    pub nodes: Vec<NodeStatus>,
    /// The vservice records the other nodes of the cluster publish.
    pub vservices: Vec<VsRecord>,
    pub now: Instant,
}

/// A relay to start or stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayChange {
    Start(RelayKey, RelaySpec),
    Stop(RelayKey),
}

/// The answer to a command.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Done,
    Registered(App),
    Refused(Refusal),
    /// What this node publishes to the cluster, after a gossip round.
    Publish(Box<Published>),
}

/// What applying a command asks of the world, in this order.
#[derive(Debug)]
pub struct Effects {
    pub relays: Vec<RelayChange>,
    /// Files an app left (its resolv.conf, its last call id).
    pub remove_files: Vec<AppId>,
    /// Apps in the host's namespace that are gone: their cgroups go too.
    pub remove_cgroups: Vec<AppId>,
    /// The state is to be written before the answer is given.
    pub persist: bool,
    pub answer: Answer,
}

/// Everything the daemon knows of its node.
#[derive(Debug)]
pub struct State {
    pub table: Table,
    /// The newest record of every vservice name this node has seen.
    pub(crate) vservices: BTreeMap<String, VsRecord>,
    /// Apps whose trap engine runs here (the others were restored and await their
    /// `ax run`).
    attached: HashSet<AppId>,
    /// The cluster's nodes as last gossiped, this one first.
    pub nodes: Vec<NodeStatus>,
    /// The relays that should run.
    pub(crate) relays: BTreeMap<RelayKey, RelaySpec>,
    /// Where each `--expose` relay's app lives and when gossip last showed its row.
    exposes: BTreeMap<RelayKey, (String, Instant)>,
    /// The driver new apps run under (see `driver.rs`).
    pub driver: Driver,
    /// This node as a federation gateway, if it is one.
    pub gateway: Option<Gateway>,
}

/// Collects what applying a command asks for.
#[derive(Default)]
pub(crate) struct Out {
    relays: Vec<RelayChange>,
    remove_files: Vec<AppId>,
    remove_cgroups: Vec<AppId>,
    persist: bool,
}

impl State {
    pub fn new(table: Table) -> State {
        State {
            table,
            vservices: BTreeMap::new(),
            attached: HashSet::new(),
            nodes: Vec::new(),
            relays: BTreeMap::new(),
            exposes: BTreeMap::new(),
            driver: Driver::User,
            gateway: None,
        }
    }

    /// Applies one command; nothing else changes the state.
    pub fn apply(&mut self, command: Command) -> Effects {
        let mut out = Out::default();
        let answer = match command {
            Command::Register(new) => match self.table.add_app(new) {
                Ok(app) => {
                    out.persist = true;
                    Answer::Registered(app)
                }
                Err(e) => Answer::Refused(Refusal::Bad(e.to_string())),
            },
            Command::Attach(app) => {
                self.attached.insert(app);
                Answer::Done
            }
            Command::Reattach { app, socket_guard, kernel_driver } => match self.table.app(app) {
                // Its filter lets through what the guard refuses: without the guard,
                // the app could connect and bind its host sockets behind our back.
                Some(a) if a.socket_guard && !socket_guard => Answer::Refused(Refusal::Conflict(format!(
                    "app {app} was started under a daemon with the socket guard, which its seccomp filter relies \
                     on, and this daemon runs without it (no BPF) or with one made anew that holds no mark of the \
                     app's sockets (its pins lost or of an older version): it is not taken back; restart the app, \
                     or run the daemon where BPF works"
                ))),
                // Its connects and sends on the host sockets it holds are untrapped, and
                // would be ruled by programs that know nothing of those sockets.
                Some(a) if a.driver == Driver::Kernel && !kernel_driver => Answer::Refused(Refusal::Conflict(format!(
                    "app {app} runs under the kernel driver, and this daemon has none or one made anew that holds \
                         no state of the app's sockets (its pins lost or of an older version): it is not taken back \
                         and is stopped; restart the app"
                ))),
                Some(_) => Answer::Done,
                None => Answer::Refused(Refusal::Missing(format!(
                    "app {app} is not known to this daemon (was it started with --clean?)"
                ))),
            },
            Command::Forget { app, why } => {
                self.forget(app, why, &mut out);
                Answer::Done
            }
            Command::DropUnattached(apps) => {
                let gone: Vec<AppId> = apps.into_iter().filter(|a| !self.attached.contains(a)).collect();
                for app in gone {
                    self.forget(app, "app not taken back after the restart", &mut out);
                }
                Answer::Done
            }
            Command::Restore { saved, at_ms } => {
                let (saved, dropped) = store::check(saved, self.table.node(), self.table.pool().ranges(), at_ms);
                dropped.iter().for_each(store::Dropped::log);
                self.table.restore(saved.table);
                self.converge(saved.vservices, &mut out);
                out.persist = true;
                Answer::Done
            }
            Command::TableChanged => {
                out.persist = true;
                Answer::Done
            }
            Command::Sweep(s) => {
                let mut gone = self.table.sweep(Proto::Tcp, &s.tcp_listening, s.tcp_bound.as_ref(), s.mark);
                gone.extend(self.table.sweep(Proto::Udp, &s.udp, Some(&s.udp), s.mark));
                for b in gone.iter().filter(|b| b.listening) {
                    info!(app = %b.app, service = %b.service, host = %b.host, "service row removed: its socket was closed");
                }
                out.persist = !gone.is_empty();
                Answer::Done
            }
            Command::CreateVservice { vservice, spec, at_ms, unbindable } => {
                match vservices::create(self, vservice, spec, at_ms, unbindable, &mut out) {
                    Ok(()) => {
                        out.persist = true;
                        Answer::Done
                    }
                    Err(r) => Answer::Refused(r),
                }
            }
            Command::DeleteVservice { name, at_ms } => match vservices::delete(self, &name, at_ms, &mut out) {
                Ok(()) => {
                    out.persist = true;
                    Answer::Done
                }
                Err(r) => Answer::Refused(r),
            },
            Command::Gossip(view) => {
                out.persist = self.converge(view.vservices, &mut out);
                let mut remote = view.remote;
                if let Some(g) = &self.gateway {
                    remote.federated.extend(g.own_imports(self.table.node().ip));
                    remote.ingresses.extend(g.ingresses());
                }
                self.table.set_remote(remote);
                let me = self.me();
                let apps = self.table.apps().count();
                let gateway = self.gateway.as_ref().map(|g| g.config.record());
                self.nodes = std::iter::once(NodeStatus { node: me, live: true, apps, problem: None, gateway })
                    .chain(view.nodes)
                    .collect();
                self.relay_exposes(view.now, &mut out);
                Answer::Publish(Box::new(self.published()))
            }
            Command::Wan(view) => self.wan_round(view),
            Command::RelaysFailed(keys) => {
                for k in keys {
                    self.relays.remove(&k);
                }
                Answer::Done
            }
        };
        let (relays, remove_files, remove_cgroups) = (out.relays, out.remove_files, out.remove_cgroups);
        Effects { relays, remove_files, remove_cgroups, persist: out.persist, answer }
    }

    fn forget(&mut self, app: AppId, why: &str, out: &mut Out) {
        self.attached.remove(&app);
        out.remove_files.push(app);
        if let Some((removed, gone)) = self.table.remove_app(app) {
            if removed.host_sockets {
                out.remove_cgroups.push(app);
            }
            let rows = gone.iter().filter(|b| b.listening).count();
            info!(app = %app, rows, sockets = gone.len(), "{why}; its rows are removed");
            out.persist = true;
        }
    }

    /// Takes in the cluster's vservice records, all at once: where a newer version than
    /// ours exists, the table (and this node's relays) follow it. True when any did.
    fn converge(&mut self, theirs: Vec<VsRecord>, out: &mut Out) -> bool {
        let merged = merge_vservices(self.vservices.values().chain(theirs.iter()));
        let mut changed = false;
        for (name, rec) in merged {
            if self.vservices.get(&name) == Some(&rec) {
                continue;
            }
            changed = true;
            let _ = vservices::uninstall(self, &name, out);
            if let Some(spec) = &rec.spec {
                match vservices::parse(spec) {
                    Ok(v) => {
                        if let Err(e) = vservices::install(self, v, None, Origin::Cluster, out) {
                            warn!(vservice = %name, "cannot take in the cluster's vservice: {e}");
                        }
                    }
                    Err(e) => warn!(vservice = %name, "a vservice from the cluster that does not check: {e}"),
                }
            }
            info!(vservice = %name, version = rec.version, origin = %rec.origin, deleted = rec.spec.is_none(), "vservice from the cluster");
            self.vservices.insert(name, rec);
        }
        changed
    }

    /// Owes the relays for `--expose` of apps on other nodes (`0.0.0.0`, or this node's
    /// address) and stops those no longer owed. A relay whose app's node is missing from
    /// this round's view is kept for [`EXPOSE_HOLD`]: only a node that is live and no
    /// longer shows the row, or one gone for longer, takes its relay away.
    fn relay_exposes(&mut self, now: Instant, out: &mut Out) {
        let remote = self.table.remote();
        let me = self.table.node().ip;
        let mut owed: BTreeMap<RelayKey, (RelaySpec, String)> = BTreeMap::new();
        for app in &remote.apps {
            for e in app.expose.iter().filter(|e| e.at == ExposeAt::Every || e.at == ExposeAt::Node(me)) {
                let row = remote.rows.iter().find(|r| r.app == app.id && r.service.port() == e.internal);
                if let Some(row) = row {
                    let key = RelayKey::expose(&app.id, e.host_port);
                    owed.insert(key, (RelaySpec::fixed(row.host), app.node.clone()));
                }
            }
        }
        let live: BTreeSet<String> = remote.nodes.iter().map(|n| n.0.clone()).collect();
        let mut exposes = BTreeMap::new();
        for (key, (spec, node)) in owed {
            exposes.insert(key.clone(), (node, now));
            self.want_relay(key, spec, out);
        }
        for (key, (node, seen)) in std::mem::take(&mut self.exposes) {
            if exposes.contains_key(&key) {
                continue;
            }
            if !live.contains(&node) && now.duration_since(seen) < EXPOSE_HOLD {
                debug!(%node, owner = %key.owner, "node missing from the gossip view: its expose relay is held");
                exposes.insert(key, (node, seen));
            } else if self.relays.remove(&key).is_some() {
                out.relays.push(RelayChange::Stop(key));
            }
        }
        self.exposes = exposes;
    }

    /// Makes `key` run as `spec` (restarted if it ran otherwise).
    pub(crate) fn want_relay(&mut self, key: RelayKey, spec: RelaySpec, out: &mut Out) {
        match self.relays.get(&key) {
            Some(s) if *s == spec => return,
            Some(_) => out.relays.push(RelayChange::Stop(key.clone())),
            None => {}
        }
        self.relays.insert(key.clone(), spec.clone());
        out.relays.push(RelayChange::Start(key, spec));
    }

    /// Stops every relay of `owner`.
    pub(crate) fn drop_relays(&mut self, owner: &str, out: &mut Out) {
        let keys: Vec<RelayKey> = self.relays.keys().filter(|k| k.owner == owner).cloned().collect();
        for k in keys {
            self.relays.remove(&k);
            out.relays.push(RelayChange::Stop(k));
        }
    }

    pub(crate) fn me(&self) -> NodeRecord {
        let node = self.table.node();
        NodeRecord {
            name: node.name.clone(),
            cluster: node.cluster.clone(),
            ip: node.ip,
            egress_gateway: self.table.egress_gateway(),
        }
    }

    /// What this node tells the cluster.
    fn published(&self) -> Published {
        let t = &self.table;
        let row = |b: &Binding| RowRecord {
            app: b.app.to_string(),
            proto: b.proto,
            service: b.service,
            host: b.host,
            labels: t.app(b.app).map(|a| a.labels.clone()).unwrap_or_default(),
        };
        Published {
            node: self.me(),
            rows: t.services().map(row).collect(),
            apps: t
                .apps()
                .map(|a| AppRecord {
                    id: a.id.to_string(),
                    name: a.name.clone(),
                    ip: a.ip,
                    expose: a.expose.clone(),
                    labels: Some(a.labels.clone()),
                })
                .collect(),
            vservices: self.vservices.values().cloned().collect(),
            federation: Federation {
                gateway: self.gateway.as_ref().map(|g| g.config.record()),
                exports: Vec::new(),
                imports: self.gateway.as_ref().map(|g| g.imports.clone()).unwrap_or_default(),
            },
        }
    }

    /// What a restarted daemon needs to take this state back.
    pub fn saved(&self) -> Saved {
        Saved { table: self.table.snapshot(), vservices: self.vservices.values().cloned().collect() }
    }
}

#[cfg(test)]
impl State {
    /// A state for node `a` at `ip`, with a small port pool.
    pub(crate) fn for_test(ip: std::net::Ipv4Addr) -> State {
        let ports = ax_core::DaemonPorts::new(true, 7946, 6664, 1024);
        let node = ax_core::NodeInfo { name: "a".into(), cluster: "appswitch".into(), ip, ports };
        let ports = ax_core::PortRanges::parse("40000-40010").expect("a valid range");
        State::new(Table::new(node, ax_core::PortPool::new(ports), 7))
    }
}

#[cfg(test)]
mod tests;
