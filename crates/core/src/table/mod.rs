//! The tables of one daemon, composed of one part per idea: `apps` (the registry
//! and made-up addresses), `services` (bound sockets, service rows, the port pool and
//! the sweep), `vservices` (the vservice set and its balancing), `remote` (the
//! cluster's latest word and egress peers), `federated` (remote clusters' services), and `routing`, the decisions for bind,
//! connect, getsockname and getpeername that read all of them. [`Table`] is what the
//! daemon and the trap engine hold; its parts are not reachable on their own.

mod apps;
mod echo;
mod federated;
mod gateway;
mod kernel;
mod ksync;
mod metrics;
mod remote;
mod reserved;
mod routing;
mod services;
mod vservices;

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::addr::Subnet;
use crate::ids::{self, AppId};
use crate::ports::PortPool;

pub use apps::{AddAppError, App, BadDriver, Driver, NewApp};
pub use echo::Echo;
pub use gateway::Refusal;
pub use kernel::{KernelView, ROUTES_PER_APP};
pub use remote::{Federated, Remote, RemoteApp, RemoteRow, RemoteService};
pub use reserved::{DaemonPorts, Reserved, BROKER_PORT, DNS_PORT};
pub use routing::{BindPlan, Route, Target, EGRESS_PORT};
pub use services::{Binding, BoundSocket, SWEEP_MISSES};
pub use vservices::{Origin, VserviceError};

/// This node, as rows name it, and the daemon's own ports on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub cluster: String,
    pub ip: Ipv4Addr,
    pub ports: DaemonPorts,
}

/// In JSON (the API, gossip, the state file) as `tcp` / `udp`, the way tables print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The protocol of a socket of this type (flags masked off), if ax virtualizes it.
    pub fn from_sock_type(ty: i32) -> Option<Proto> {
        match ty & 0xf {
            libc::SOCK_STREAM => Some(Proto::Tcp),
            libc::SOCK_DGRAM => Some(Proto::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// What a daemon saves: enough to take its apps back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub apps: Vec<App>,
    pub bindings: Vec<Binding>,
    /// Loopback ports apps bound in their own namespaces (see [`Table::add_private_bind`]).
    #[serde(default)]
    pub private: Vec<PrivateBind>,
}

/// A loopback port an app bound in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PrivateBind {
    pub app: AppId,
    pub proto: Proto,
    pub port: u16,
}

/// The tables of one daemon. Across its parts: every row belongs to a registered app
/// (an app's rows go with it), and a vservice is never given an app's or the node's address.
#[derive(Debug)]
pub struct Table {
    node: NodeInfo,
    apps: apps::Apps,
    services: services::Services,
    vservices: vservices::Vservices,
    remote: remote::RemoteView,
    egress_peers: remote::EgressPeers,
    /// Loopback ports apps bound in their own namespaces.
    private: BTreeSet<PrivateBind>,
    /// This node carries other nodes' outbound connections (`--egress-gateway`).
    egress_gateway: bool,
    /// Egress goes through this node's forwarder (see [`Table::set_egress_forwarder`]).
    egress_forwarder: bool,
    /// Ids, UUIDs and every random balancing choice come from here (seeded in tests).
    rng: fastrand::Rng,
    /// Counts changes to what the table decides (see [`Table::generation`]).
    generation: u64,
    /// The kernel driver's label classes, and what changed for its maps.
    kernel: ksync::KernelState,
}

impl Table {
    pub fn new(node: NodeInfo, pool: PortPool, seed: u64) -> Table {
        Table {
            node,
            apps: Default::default(),
            services: services::Services::new(pool),
            vservices: Default::default(),
            remote: Default::default(),
            egress_peers: Default::default(),
            private: BTreeSet::new(),
            egress_gateway: false,
            egress_forwarder: false,
            rng: fastrand::Rng::with_seed(seed),
            generation: 0,
            kernel: Default::default(),
        }
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Makes this node an egress gateway: its own apps go out directly.
    pub fn set_egress_gateway(&mut self, on: bool) {
        self.generation += 1;
        self.kernel.touch_all();
        self.egress_gateway = on;
    }

    pub fn egress_gateway(&self) -> bool {
        self.egress_gateway
    }

    /// Remembers that the connection from `local` is to `dest` as far as its app knows
    /// (an egress connection, or a datagram socket connected to the closed port).
    pub fn record_peer(&mut self, local: SocketAddrV4, dest: SocketAddr) {
        self.egress_peers.record(local, dest);
    }

    /// Where the connection from `local` goes as far as its app knows.
    pub fn remembered_peer(&self, local: SocketAddr) -> Option<SocketAddr> {
        self.egress_peers.peer(local)
    }

    /// What survives a restart: the apps and the sockets they bound (vservices are
    /// kept by the daemon with their cluster records).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            apps: self.apps.iter().cloned().collect(),
            bindings: self.services.iter().cloned().collect(),
            private: self.private.iter().copied().collect(),
        }
    }

    /// Takes back a snapshot taken by an earlier daemon: apps, sockets and their pool
    /// ports (which are then not handed out again).
    pub fn restore(&mut self, s: Snapshot) {
        self.generation += 1;
        self.apps.restore(s.apps);
        let apps = &self.apps;
        self.services.restore(s.bindings, |id| apps.get(id).is_some());
        self.private = s.private.into_iter().filter(|p| apps.get(p.app).is_some()).collect();
        self.kernel.apps_restored(self.apps.iter());
    }

    /// Replaces what is known of the other nodes (from gossip).
    pub fn set_remote(&mut self, remote: Remote) {
        if *self.remote.get() != remote {
            self.generation += 1;
            self.kernel.remote_changed(self.remote.get(), &remote);
            self.remote.set(remote);
        }
    }

    pub fn remote(&self) -> &Remote {
        self.remote.get()
    }

    /// Sets the range made-up addresses come from (see [`crate::addr::made_up_range`]).
    pub fn set_made_up_range(&mut self, range: Subnet) {
        self.apps.set_made_up_range(range);
    }

    /// Every address serving the name `label` (apps' names compare without case).
    pub fn addresses_named(&self, label: &str) -> Option<Vec<Ipv4Addr>> {
        let mut ips: Vec<Ipv4Addr> =
            self.apps.named(label).chain(self.vservices.named(label)).chain(self.remote.named(label)).collect();
        ips.sort();
        ips.dedup();
        (!ips.is_empty()).then_some(ips)
    }

    /// A mark to take before listing the kernel's sockets: [`Table::sweep`] with it
    /// leaves alone every row that changed after, which the listing cannot have seen.
    /// Changes so far to anything the table's decisions read (apps, rows, private
    /// binds, vservices, the other nodes, egress): equal generations, equal decisions
    /// (what [`Table::kernel_maps`] derives included).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn mark(&self) -> u64 {
        self.services.mark()
    }

    pub fn pool(&self) -> &PortPool {
        self.services.pool()
    }

    /// Registers an app; it gets a fresh id and, without `--ip`, a made-up address if
    /// it has a name, else the node address.
    pub fn add_app(&mut self, new: NewApp) -> Result<App, AddAppError> {
        self.generation += 1;
        let app = self.apps.add(new, self.node.ip, &mut self.rng)?;
        self.kernel.app_added(&app);
        Ok(app)
    }

    /// Removes an app with every socket it bound; their ports go back to the pool.
    pub fn remove_app(&mut self, id: AppId) -> Option<(App, Vec<Binding>)> {
        self.generation += 1;
        let app = self.apps.remove(id)?;
        self.private.retain(|p| p.app != id);
        let bindings = self.services.remove_app(id);
        self.kernel.app_removed(&app, &bindings);
        Some((app, bindings))
    }

    pub fn app(&self, id: AppId) -> Option<&App> {
        self.apps.get(id)
    }

    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.iter()
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.services.iter()
    }

    /// Listening sockets: the rows of the service table.
    pub fn services(&self) -> impl Iterator<Item = &Binding> {
        self.services.rows()
    }

    /// Records that `app` bound a loopback port in its own namespace: the kernel
    /// driver sends the app's host sockets' connects to that port there. Kept until the
    /// app goes (a listener closed since is then refused by the app's namespace itself).
    pub fn add_private_bind(&mut self, app: AppId, proto: Proto, port: u16) {
        if self.apps.get(app).is_some() {
            self.generation += 1;
            self.private.insert(PrivateBind { app, proto, port });
        }
    }

    pub fn private_binds(&self) -> impl Iterator<Item = &PrivateBind> {
        self.private.iter()
    }

    /// Takes a pool port for a bind; None when the pool is exhausted.
    pub fn take_port(&mut self) -> Option<u16> {
        self.services.take_port()
    }

    /// How many pool ports `app`'s sockets hold (exposed ports are not the pool's).
    pub fn pool_ports_held(&self, app: AppId) -> usize {
        self.services.pool_ports_held(app)
    }

    /// Gives back a port taken with [`Table::take_port`] that the host bind did not use.
    pub fn give_back_port(&mut self, port: u16) {
        self.services.give_back_port(port);
    }

    /// Records a bound socket. A bind to port 0 is reported as the host port.
    pub fn add_binding(&mut self, app: AppId, socket: BoundSocket, service: SocketAddrV4, host_port: u16) -> Binding {
        let id = ids::random_uuid(&mut self.rng);
        self.generation += 1;
        if let Some(old) = self.services.get(socket.proto, host_port) {
            self.kernel.touch_binding(old);
        }
        let b = self.services.add(id, app, socket, service, SocketAddrV4::new(self.node.ip, host_port));
        self.kernel.touch_binding(&b);
        b
    }

    /// The socket bound at this host port, if ax bound it.
    pub fn binding(&self, proto: Proto, host_port: u16) -> Option<&Binding> {
        self.services.get(proto, host_port)
    }

    /// Marks the socket at `host_port` (whose inode must match) as listening, which
    /// makes it a service row.
    pub fn set_listening(&mut self, proto: Proto, host_port: u16, inode: u64, backlog: i32) -> Option<&Binding> {
        self.generation += 1;
        let b = self.services.set_listening(proto, host_port, inode, backlog)?;
        self.kernel.touch_row(b.proto, b.service, b.host);
        Some(b)
    }

    /// Removes the sockets of `proto` the kernel no longer has. A listening row must be
    /// in `listening`; a bound-only row in `bound`, when given (None: not judged). A
    /// row goes after [`SWEEP_MISSES`] listings in a row without it (one listing can
    /// skip a socket when others come and go meanwhile), and only rows unchanged since
    /// `mark` (taken before the listings) are judged.
    pub fn sweep(
        &mut self,
        proto: Proto,
        listening: &HashSet<u64>,
        bound: Option<&HashSet<u64>>,
        mark: u64,
    ) -> Vec<Binding> {
        let gone = self.services.sweep(proto, listening, bound, mark);
        if !gone.is_empty() {
            self.generation += 1;
        }
        gone.iter().for_each(|b| self.kernel.touch_binding(b));
        gone
    }

    /// True when some socket of `proto` is bound but not listening.
    pub fn has_unlistened(&self, proto: Proto) -> bool {
        self.services.has_unlistened(proto)
    }
}

/// The table as the trap engine and the tests drive it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::addr::Family;
    use crate::labels::Labels;
    use crate::ports::PortRanges;
    use crate::vservice::{parse_backends, parse_ports, LbType, Vservice};

    pub(crate) const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    /// The privilege answer of a caller holding CAP_NET_BIND_SERVICE (root).
    pub(crate) fn root() -> bool {
        true
    }

    /// A daemon's ports as the defaults have them.
    pub(crate) fn ports() -> DaemonPorts {
        DaemonPorts::new(true, 7946, 6664, 1024)
    }

    pub(crate) fn table() -> Table {
        let node = NodeInfo { name: "n1".into(), cluster: "appswitch".into(), ip: NODE, ports: ports() };
        Table::new(node, PortPool::new(PortRanges::parse("40000-40009").unwrap()), 7)
    }

    pub(crate) fn app(t: &mut Table, ip: Option<&str>, labels: &str) -> AppId {
        t.add_app(NewApp {
            ip: ip.map(|s| s.parse().unwrap()),
            labels: Labels::parse(labels).unwrap(),
            pid: 1,
            driver: Driver::User,
            ..NewApp::default()
        })
        .unwrap()
        .id
    }

    pub(crate) fn named(t: &mut Table, name: &str, ip: Option<&str>) -> Result<App, AddAppError> {
        t.add_app(NewApp { name: Some(name.into()), ip: ip.map(|s| s.parse().unwrap()), ..NewApp::default() })
    }

    /// Binds and listens like the trap engine does, returning the host port.
    pub(crate) fn serve(t: &mut Table, id: AppId, addr: &str, inode: u64) -> u16 {
        let BindPlan::Host { service, .. } = t.plan_bind(id, addr.parse().unwrap(), root).unwrap() else {
            panic!("private")
        };
        let port = t.take_port().unwrap();
        t.add_binding(id, bound(inode, addr), service, port);
        assert!(t.set_listening(Proto::Tcp, port, inode, 128).is_some());
        port
    }

    pub(crate) fn bound(inode: u64, requested: &str) -> BoundSocket {
        BoundSocket { inode, proto: Proto::Tcp, family: Family::V4, requested: sa(requested), flags: 0 }
    }

    pub(crate) fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    pub(crate) fn vservice(name: &str, ip: &str, lb: LbType, backends: &str) -> Vservice {
        Vservice {
            name: name.into(),
            ip: ip.parse().unwrap(),
            ports: parse_ports("80:8000").unwrap(),
            backends: parse_backends(backends).unwrap(),
            lb,
            source_ip: None,
            external: false,
            allow_external: false,
            app_backends: Default::default(),
        }
    }

    /// The balancer's choice of a connect that has backends.
    pub(crate) fn first(route: Route) -> SocketAddrV4 {
        match route {
            Route::Backends(t) => t[0].addr,
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_ip_is_the_node() {
        let mut t = table();
        let a = app(&mut t, None, "zone=default");
        assert_eq!(t.app(a).unwrap().ip, NODE);
        assert_eq!(t.app(a).unwrap().id.to_string().len(), 8);
    }

    proptest! {
        /// Whatever apps come and go, the table never holds a row of an app it does not
        /// know, never two rows on one host port, and the pool count matches.
        #[test]
        fn table_stays_consistent(ops in proptest::collection::vec((0u8..4, 0u8..4, 0u16..3), 1..200)) {
            let mut t = table();
            let mut apps: Vec<AppId> = Vec::new();
            let mut inode = 0;
            for (op, who, port) in ops {
                match op {
                    0 => apps.push(app(&mut t, Some(["198.18.0.1", "198.18.0.2"][who as usize % 2]), ["a=1", "b=2"][who as usize % 2])),
                    1 if !apps.is_empty() => {
                        let id = apps[who as usize % apps.len()];
                        if let Some(p) = t.take_port() {
                            inode += 1;
                            let svc = SocketAddrV4::new(t.app(id).unwrap().ip, 80 + port);
                            t.add_binding(id, bound(inode, "0.0.0.0:80"), svc, p);
                            t.set_listening(Proto::Tcp, p, inode, 1);
                        }
                    }
                    2 if !apps.is_empty() => {
                        let id = apps.swap_remove(who as usize % apps.len());
                        t.remove_app(id);
                    }
                    _ => {
                        let live: HashSet<u64> = t.bindings().map(|b| b.inode).filter(|i| i % 2 == 0).collect();
                        let mark = t.mark();
                        t.sweep(Proto::Tcp, &live, Some(&live), mark);
                    }
                }
                prop_assert_eq!(t.pool().in_use(), t.bindings().count());
                for b in t.bindings() {
                    prop_assert!(t.app(b.app).is_some());
                }
                if let Some(&c) = apps.first() {
                    for dest in ["198.18.0.1:80", "198.18.0.2:81"] {
                        if let Route::Backends(hosts) = t.route_connect(c, Proto::Tcp, sa(dest)) {
                            for h in hosts {
                                let b = t.binding(Proto::Tcp, h.addr.port()).unwrap();
                                prop_assert!(b.listening);
                                prop_assert!(t.app(b.app).unwrap().labels.shares(&t.app(c).unwrap().labels));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_snapshot_restores_apps_rows_and_taken_ports() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.0.1"), "role=prod");
        let port = serve(&mut t, s, "0.0.0.0:80", 5);
        let snap = t.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        let mut fresh = table();
        fresh.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(fresh.app(s).unwrap().labels.to_string(), "role=prod");
        assert_eq!(fresh.services().count(), 1);
        let c = app(&mut fresh, None, "role=prod");
        assert_eq!(first(fresh.route_connect(c, Proto::Tcp, sa("198.18.0.1:80"))).port(), port);
        // The restored row's port is not handed out again.
        assert!((0..9).all(|_| fresh.take_port() != Some(port)));
    }
}
