//! The daemon's tables: apps, the sockets they bound (each on a pool port of the node
//! address), and the service rows those sockets make when they listen. The routing
//! decisions for bind, connect, getsockname and getpeername are made here.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::addr::{self, Family, Subnet};
use crate::ids::{self, AppId};
use crate::labels::Labels;
use crate::ports::PortPool;
use crate::vservice::{Backend, Expose, ExposeAt, LbType, Rotation, Vservice};
use crate::Errno;

/// This node, as rows name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub cluster: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
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

/// An app run under ax.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct App {
    pub id: AppId,
    pub uuid: String,
    pub name: Option<String>,
    pub ip: Ipv4Addr,
    pub labels: Labels,
    pub pid: i32,
    pub driver: String,
    /// `--expose` as given; the forms for this node bind the app's socket on the host
    /// port as it is, the others are relayed by the nodes they name.
    pub expose: Vec<Expose>,
}

/// What an app asks for when it registers.
#[derive(Debug, Clone, Default)]
pub struct NewApp {
    pub name: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub labels: Labels,
    pub pid: i32,
    pub driver: String,
    pub expose: Vec<Expose>,
}

/// A socket an app bound to a virtual address, and where it really is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    pub id: String,
    pub app: AppId,
    pub inode: u64,
    pub proto: Proto,
    pub family: Family,
    /// The address the app passed to bind, as it passed it.
    pub requested: SocketAddr,
    /// File status flags of the socket when it was bound (O_NONBLOCK and the like).
    pub flags: i32,
    /// The address clients use: the app's own address for a wildcard bind.
    pub service: SocketAddrV4,
    /// Node address and pool port.
    pub host: SocketAddrV4,
    pub listening: bool,
    pub backlog: i32,
    /// The table's change count when this row last changed (see [`Table::mark`]).
    pub changed: u64,
    /// Listings of the kernel's sockets in a row that did not show this one.
    pub missed: u8,
}

/// How many listings in a row must miss a socket before its row goes.
pub const SWEEP_MISSES: u8 = 2;

/// The facts about a socket being bound that the table records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundSocket {
    pub inode: u64,
    pub proto: Proto,
    pub family: Family,
    pub requested: SocketAddr,
    pub flags: i32,
}

/// How to carry out a bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindPlan {
    /// A loopback address: the socket moves into the app's own namespace and the
    /// bind happens there, private to the app.
    Private,
    /// Bind on the node address at `host_port` (an exposed port) or else a pool port;
    /// the app sees `service`.
    Host { service: SocketAddrV4, host_port: Option<u16> },
}

/// One place a connect may go, and the host address to make it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub addr: SocketAddrV4,
    pub source: Option<Ipv4Addr>,
}

/// Where a connect goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Loopback: inside the app's own namespace.
    Private,
    /// A served address the app may not reach, or a virtual address nobody serves:
    /// ECONNREFUSED, and no packet leaves.
    Refused,
    /// A service or vservice: the targets in the order to try (the first is the
    /// balancer's choice, the rest are fallbacks should it be down).
    Backends(Vec<Target>),
    /// Not ax's: straight out from the host.
    Direct(SocketAddr),
    /// Not ax's, through an egress gateway of the cluster: connect to the gateway's
    /// egress port and ask it for `dest`.
    Egress { gateway: SocketAddrV4, dest: SocketAddr },
}

/// The port egress gateways take connections on.
pub const EGRESS_PORT: u16 = 6661;
/// How many egress connections' real destinations are remembered for getpeername.
const EGRESS_MEMORY: usize = 4096;

/// A service row published by another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRow {
    pub node: String,
    pub app: String,
    pub proto: Proto,
    pub service: SocketAddrV4,
    pub host: SocketAddrV4,
    pub labels: Labels,
}

/// An app running on another node (for names and virtual addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteApp {
    pub node: String,
    pub id: String,
    pub name: Option<String>,
    pub ip: Ipv4Addr,
    pub expose: Vec<Expose>,
}

/// What the rest of the cluster publishes, as last gossiped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    /// The other live nodes: name and node address.
    pub nodes: Vec<(String, Ipv4Addr)>,
    /// The addresses of the live nodes that are egress gateways.
    pub egress: Vec<Ipv4Addr>,
    pub rows: Vec<RemoteRow>,
    pub apps: Vec<RemoteApp>,
}

/// What a daemon saves: enough to take its apps back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub apps: Vec<App>,
    pub bindings: Vec<Binding>,
}

/// The tables of one daemon.
#[derive(Debug)]
pub struct Table {
    node: NodeInfo,
    apps: BTreeMap<AppId, App>,
    bindings: BTreeMap<(Proto, u16), Binding>,
    pool: PortPool,
    rng: fastrand::Rng,
    changes: u64,
    /// Where apps with a name and no `--ip` get their address, and the next to try.
    made_up: Option<(Subnet, u32)>,
    vservices: BTreeMap<String, Vservice>,
    rotation: Rotation,
    remote: Remote,
    /// This node carries other nodes' outbound connections (`--egress-gateway`).
    egress_gateway: bool,
    /// Every app address other nodes have published: still virtual after its node
    /// dies, so a connect to it is refused rather than sent out of the host.
    seen_virtual: std::collections::BTreeSet<Ipv4Addr>,
    /// Egress connections by local address: where the app asked to go.
    egress_peers: std::collections::VecDeque<(SocketAddrV4, SocketAddr)>,
}

impl Table {
    pub fn new(node: NodeInfo, pool: PortPool, seed: u64) -> Table {
        Table {
            node,
            apps: BTreeMap::new(),
            bindings: BTreeMap::new(),
            pool,
            rng: fastrand::Rng::with_seed(seed),
            changes: 0,
            made_up: None,
            vservices: BTreeMap::new(),
            rotation: Rotation::default(),
            remote: Remote::default(),
            egress_gateway: false,
            egress_peers: Default::default(),
            seen_virtual: Default::default(),
        }
    }

    /// Makes this node an egress gateway: its own apps go out directly.
    pub fn set_egress_gateway(&mut self, on: bool) {
        self.egress_gateway = on;
    }

    pub fn egress_gateway(&self) -> bool {
        self.egress_gateway
    }

    /// Remembers that the egress connection from `local` is to `dest`.
    pub fn record_egress(&mut self, local: SocketAddrV4, dest: SocketAddr) {
        if self.egress_peers.len() >= EGRESS_MEMORY {
            self.egress_peers.pop_front();
        }
        self.egress_peers.push_back((local, dest));
    }

    /// Where the egress connection from `local` really goes.
    pub fn egress_peer(&self, local: SocketAddr) -> Option<SocketAddr> {
        let SocketAddr::V4(local) = addr::unmap(local) else { return None };
        self.egress_peers.iter().rev().find(|(l, _)| *l == local).map(|(_, d)| *d)
    }

    /// What survives a restart: the apps and the sockets they bound (vservices are
    /// kept by the daemon with their cluster records).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { apps: self.apps.values().cloned().collect(), bindings: self.bindings.values().cloned().collect() }
    }

    /// Takes back a snapshot taken by an earlier daemon: apps, sockets and their pool
    /// ports (which are then not handed out again).
    pub fn restore(&mut self, s: Snapshot) {
        for app in s.apps {
            self.apps.insert(app.id, app);
        }
        for mut b in s.bindings {
            if !self.apps.contains_key(&b.app) {
                continue;
            }
            self.pool.reserve(b.host.port());
            b.changed = self.next_change();
            self.bindings.insert((b.proto, b.host.port()), b);
        }
    }

    /// Replaces what is known of the other nodes (from gossip).
    pub fn set_remote(&mut self, remote: Remote) {
        let nodes: Vec<Ipv4Addr> = remote.nodes.iter().map(|n| n.1).collect();
        self.seen_virtual.extend(remote.apps.iter().map(|a| a.ip).filter(|ip| !nodes.contains(ip)));
        self.remote = remote;
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Every row serving `service` over `proto`, this node's and the cluster's: the host
    /// address to connect to, and the labels of the app behind it.
    fn rows_at(&self, proto: Proto, service: SocketAddrV4) -> Vec<(SocketAddrV4, &Labels)> {
        let local = self
            .services()
            .filter(|b| b.proto == proto && b.service == service)
            .filter_map(|b| self.apps.get(&b.app).map(|a| (b.host, &a.labels)));
        let remote =
            self.remote.rows.iter().filter(|r| r.proto == proto && r.service == service).map(|r| (r.host, &r.labels));
        local.chain(remote).collect()
    }

    /// Every app address, this node's and the cluster's.
    fn is_app_ip(&self, ip: Ipv4Addr) -> bool {
        self.apps.values().any(|a| a.ip == ip) || self.remote.apps.iter().any(|a| a.ip == ip)
    }

    /// Adds a vservice; its name and address must be new, and not an app's.
    pub fn add_vservice(&mut self, v: Vservice) -> Result<(), String> {
        if self.vservices.contains_key(&v.name) {
            return Err(format!("a vservice named '{}' already exists", v.name));
        }
        if let Some(other) = self.vservices.values().find(|o| o.ip == v.ip) {
            return Err(format!("vservice '{}' already has the address {}", other.name, v.ip));
        }
        if v.ip == self.node.ip || self.apps.values().any(|a| a.ip == v.ip) {
            return Err(format!("{} is the address of an app or of this node: pick another for the vservice", v.ip));
        }
        self.vservices.insert(v.name.clone(), v);
        Ok(())
    }

    pub fn remove_vservice(&mut self, name: &str) -> Result<Vservice, String> {
        let v = self.vservices.remove(name).ok_or_else(|| format!("no vservice named '{name}'"))?;
        self.rotation.forget(name);
        Ok(v)
    }

    pub fn vservices(&self) -> impl Iterator<Item = &Vservice> {
        self.vservices.values()
    }

    /// Where a connect to a vservice's `ip:port` goes: per backend, its choices (a
    /// service-table address's rows the client may reach, shuffled; an external
    /// address as is), backends in the balancer's order. `client` None (a client
    /// outside ax, through an external port) skips the label check. None when `ip` is
    /// no vservice's.
    pub fn vservice_route(&mut self, ip: Ipv4Addr, port: u16, client: Option<&Labels>) -> Option<Route> {
        let name = self.vservices.values().find(|v| v.ip == ip)?.name.clone();
        let app_ips: Vec<Ipv4Addr> =
            self.apps.values().map(|a| a.ip).chain(self.remote.apps.iter().map(|a| a.ip)).collect();
        let v = self.vservices.get_mut(&name).expect("found above");
        for b in &v.backends {
            let ip = match *b {
                Backend::Ip(ip) => ip,
                Backend::IpPort(sa) => *sa.ip(),
            };
            if app_ips.contains(&ip) {
                v.app_backends.insert(ip);
            }
        }
        let v = v.clone();
        let Some(map) = v.ports.iter().find(|m| m.vport == port) else {
            return Some(Route::Refused);
        };
        let mut groups: Vec<Vec<Target>> = Vec::new();
        let mut denied = false;
        for b in &v.backends {
            let addr = match *b {
                Backend::Ip(ip) => SocketAddrV4::new(ip, map.app_port),
                Backend::IpPort(sa) => sa,
            };
            if !v.app_backends.contains(addr.ip()) {
                groups.push(vec![Target { addr, source: v.source_ip }]);
                continue;
            }
            let rows = self.rows_at(Proto::Tcp, addr);
            let mut reachable: Vec<Target> = rows
                .iter()
                .filter(|(_, labels)| client.is_none_or(|c| labels.shares(c)))
                .map(|(host, _)| Target { addr: *host, source: None })
                .collect();
            denied |= !rows.is_empty() && reachable.is_empty();
            if !reachable.is_empty() {
                self.rng.shuffle(&mut reachable);
                groups.push(reachable);
            }
        }
        if groups.is_empty() {
            return Some(if denied { Route::Refused } else { Route::Backends(Vec::new()) });
        }
        match v.lb {
            LbType::Random => self.rng.shuffle(&mut groups),
            LbType::RoundRobin => {
                let start = self.rotation.next(&v.name, port, groups.len());
                groups.rotate_left(start);
            }
        }
        Some(Route::Backends(groups.into_iter().flatten().collect()))
    }

    /// Sets the range made-up addresses come from (see [`addr::made_up_range`]).
    pub fn set_made_up_range(&mut self, range: Subnet) {
        self.made_up = Some((range, 0));
    }

    /// A free address from the made-up range: not the network's first or last of any
    /// /24, and used by no app.
    fn make_up_ip(&mut self) -> Result<Ipv4Addr, String> {
        let (range, cursor) = self.made_up.ok_or("no address range for made-up addresses: give --ip")?;
        let size = range.size() as u32;
        for step in 0..size {
            let i = cursor.wrapping_add(step) % size;
            let ip = range.nth(i);
            let last = ip.octets()[3];
            if last == 0 || last == 255 || ip == self.node.ip || self.apps.values().any(|a| a.ip == ip) {
                continue;
            }
            self.made_up = Some((range, i.wrapping_add(1) % size));
            return Ok(ip);
        }
        Err(format!("every address of the made-up range {range} is in use: give --ip"))
    }

    /// Every address serving the name `label` (apps' names compare without case).
    pub fn addresses_named(&self, label: &str) -> Option<Vec<Ipv4Addr>> {
        let apps = self
            .apps
            .values()
            .filter(|a| a.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(label)))
            .map(|a| a.ip);
        let vservices = self.vservices.values().filter(|v| v.name.eq_ignore_ascii_case(label)).map(|v| v.ip);
        let remote = self
            .remote
            .apps
            .iter()
            .filter(|a| a.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(label)))
            .map(|a| a.ip);
        let mut ips: Vec<Ipv4Addr> = apps.chain(vservices).chain(remote).collect();
        ips.sort();
        ips.dedup();
        (!ips.is_empty()).then_some(ips)
    }

    /// A mark to take before listing the kernel's sockets: [`Table::sweep`] with it
    /// leaves alone every row that changed after, which the listing cannot have seen.
    pub fn mark(&self) -> u64 {
        self.changes
    }

    fn next_change(&mut self) -> u64 {
        self.changes += 1;
        self.changes
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    pub fn pool(&self) -> &PortPool {
        &self.pool
    }

    /// Registers an app; it gets a fresh id and, without `--ip`, a made-up address if
    /// it has a name, else the node address.
    pub fn add_app(&mut self, new: NewApp) -> Result<App, String> {
        let ip = match (new.ip, &new.name) {
            (Some(ip), _) => ip,
            (None, Some(_)) => self.make_up_ip()?,
            (None, None) => self.node.ip,
        };
        let id = loop {
            let id = AppId(0xf000_0000 | (self.rng.u32(..) & 0x0fff_ffff));
            if !self.apps.contains_key(&id) {
                break id;
            }
        };
        let app = App {
            id,
            uuid: ids::random_uuid(&mut self.rng),
            name: new.name.map(|n| n.to_ascii_lowercase()),
            ip,
            labels: new.labels,
            pid: new.pid,
            driver: new.driver,
            expose: new.expose,
        };
        self.apps.insert(id, app.clone());
        Ok(app)
    }

    /// Removes an app with every socket it bound; their ports go back to the pool.
    pub fn remove_app(&mut self, id: AppId) -> Option<(App, Vec<Binding>)> {
        let app = self.apps.remove(&id)?;
        let keys: Vec<_> = self.bindings.iter().filter(|(_, b)| b.app == id).map(|(k, _)| *k).collect();
        let gone = keys.into_iter().filter_map(|k| self.drop_binding(k)).collect();
        Some((app, gone))
    }

    pub fn app(&self, id: AppId) -> Option<&App> {
        self.apps.get(&id)
    }

    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// Listening sockets: the rows of the service table.
    pub fn services(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values().filter(|b| b.listening)
    }

    /// Decides where a bind of `requested` by `app` goes.
    pub fn plan_bind(&self, app: AppId, requested: SocketAddr) -> Result<BindPlan, Errno> {
        let app = self.apps.get(&app).ok_or(libc::EPERM)?;
        let want = addr::unmap(requested);
        if addr::is_loopback(want.ip()) {
            return Ok(BindPlan::Private);
        }
        match want {
            SocketAddr::V4(v4) if v4.ip().is_unspecified() || *v4.ip() == app.ip => {
                let here = |at: &ExposeAt| match at {
                    ExposeAt::ThisNode | ExposeAt::Every => true,
                    ExposeAt::Node(ip) => *ip == self.node.ip,
                };
                let host_port = app.expose.iter().find(|e| e.internal == v4.port() && here(&e.at)).map(|e| e.host_port);
                // One socket per exposed port gets it (nginx binds 0.0.0.0 and ::).
                let host_port =
                    host_port.filter(|h| !self.bindings.values().any(|b| b.app == app.id && b.host.port() == *h));
                Ok(BindPlan::Host { service: SocketAddrV4::new(app.ip, v4.port()), host_port })
            }
            // The app has no other address to bind to, as the kernel would say.
            _ => Err(libc::EADDRNOTAVAIL),
        }
    }

    /// Takes a pool port for a bind; None when the pool is exhausted.
    pub fn take_port(&mut self) -> Option<u16> {
        self.pool.take()
    }

    /// Gives back a port taken with [`Table::take_port`] that the host bind did not use.
    pub fn give_back_port(&mut self, port: u16) {
        self.pool.give_back(port);
    }

    /// Records a bound socket. A bind to port 0 is reported as the host port.
    pub fn add_binding(&mut self, app: AppId, socket: BoundSocket, service: SocketAddrV4, host_port: u16) -> Binding {
        let service = if service.port() == 0 { SocketAddrV4::new(*service.ip(), host_port) } else { service };
        let changed = self.next_change();
        let b = Binding {
            id: ids::random_uuid(&mut self.rng),
            app,
            inode: socket.inode,
            proto: socket.proto,
            family: socket.family,
            requested: socket.requested,
            flags: socket.flags,
            service,
            host: SocketAddrV4::new(self.node.ip, host_port),
            listening: false,
            backlog: 0,
            changed,
            missed: 0,
        };
        self.bindings.insert((socket.proto, host_port), b.clone());
        b
    }

    /// The socket bound at this host port, if ax bound it.
    pub fn binding(&self, proto: Proto, host_port: u16) -> Option<&Binding> {
        self.bindings.get(&(proto, host_port))
    }

    /// Marks the socket at `host_port` (whose inode must match) as listening, which
    /// makes it a service row.
    pub fn set_listening(&mut self, proto: Proto, host_port: u16, inode: u64, backlog: i32) -> Option<&Binding> {
        let changed = self.next_change();
        let b = self.bindings.get_mut(&(proto, host_port)).filter(|b| b.inode == inode)?;
        b.changed = changed;
        b.listening = true;
        b.backlog = backlog;
        Some(b)
    }

    fn drop_binding(&mut self, key: (Proto, u16)) -> Option<Binding> {
        let b = self.bindings.remove(&key)?;
        self.pool.give_back(key.1);
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
        let mut dead = Vec::new();
        for (k, b) in self.bindings.iter_mut().filter(|(k, b)| k.0 == proto && b.changed <= mark) {
            let live = match (b.listening, bound) {
                (true, _) => listening,
                (false, Some(bound)) => bound,
                (false, None) => continue,
            };
            if live.contains(&b.inode) {
                b.missed = 0;
            } else {
                b.missed += 1;
                if b.missed >= SWEEP_MISSES {
                    dead.push(*k);
                }
            }
        }
        dead.into_iter().filter_map(|k| self.drop_binding(k)).collect()
    }

    /// True when some socket of `proto` is bound but not listening.
    pub fn has_unlistened(&self, proto: Proto) -> bool {
        self.bindings.values().any(|b| b.proto == proto && !b.listening)
    }

    /// Decides where a connect by `client` to `dest` goes. The backend order is
    /// random, so connections spread over every backend of an address.
    pub fn route_connect(&mut self, client: AppId, proto: Proto, dest: SocketAddr) -> Route {
        let dest = addr::unmap(dest);
        // Linux takes a connect to 0.0.0.0 or :: as one to the loopback address.
        if addr::is_loopback(dest.ip()) || dest.ip().is_unspecified() {
            return Route::Private;
        }
        let SocketAddr::V4(v4) = dest else {
            return Route::Direct(dest);
        };
        let Some(labels) = self.apps.get(&client).map(|c| c.labels.clone()) else {
            return Route::Refused;
        };
        if proto == Proto::Tcp {
            if let Some(route) = self.vservice_route(*v4.ip(), v4.port(), Some(&labels)) {
                return route;
            }
        }
        // A connect straight to a backend's host address is a connect to its service:
        // labels cannot be bypassed by naming the pool port.
        let service = self.service_of_host(proto, v4).unwrap_or(v4);
        let rows = self.rows_at(proto, service);
        if rows.is_empty() {
            if self.is_virtual(dest.ip()) {
                return Route::Refused;
            }
            return self.outbound(proto, dest);
        }
        let mut allowed: Vec<Target> = rows
            .into_iter()
            .filter(|(_, server)| server.shares(&labels))
            .map(|(host, _)| Target { addr: host, source: None })
            .collect();
        if allowed.is_empty() {
            return Route::Refused;
        }
        self.rng.shuffle(&mut allowed);
        Route::Backends(allowed)
    }

    /// A connect to an address outside the service table: through a live egress
    /// gateway (TCP, from a node that is not one, to an address that is not a node's),
    /// else directly.
    fn outbound(&mut self, proto: Proto, dest: SocketAddr) -> Route {
        let dest_ip = dest.ip();
        let to_node = self.remote.nodes.iter().any(|(_, ip)| IpAddr::V4(*ip) == dest_ip);
        if proto != Proto::Tcp || self.egress_gateway || to_node || self.remote.egress.is_empty() {
            return Route::Direct(dest);
        }
        let gw = self.remote.egress[self.rng.usize(..self.remote.egress.len())];
        Route::Egress { gateway: SocketAddrV4::new(gw, EGRESS_PORT), dest }
    }

    /// What getsockname shows `app` for a socket whose real address is `real`: the
    /// virtual address of a socket it bound, or its own address in place of the node's.
    pub fn local_name(&self, app: AppId, proto: Proto, real: SocketAddr) -> Option<SocketAddr> {
        let SocketAddr::V4(v4) = addr::unmap(real) else { return None };
        if *v4.ip() != self.node.ip {
            return None;
        }
        if let Some(b) = self.bindings.get(&(proto, v4.port())).filter(|b| b.app == app) {
            return Some(SocketAddr::V4(b.service));
        }
        let me = self.apps.get(&app)?;
        Some(SocketAddr::V4(SocketAddrV4::new(me.ip, v4.port())))
    }

    /// What getpeername shows for a peer whose real address is `real`: a service's
    /// virtual address in place of its host address.
    pub fn peer_name(&self, proto: Proto, real: SocketAddr) -> Option<SocketAddr> {
        let SocketAddr::V4(v4) = addr::unmap(real) else { return None };
        self.service_of_host(proto, v4).map(SocketAddr::V4)
    }

    /// The service a row's host address serves, on this node or another.
    fn service_of_host(&self, proto: Proto, host: SocketAddrV4) -> Option<SocketAddrV4> {
        if let Some(b) = self.bindings.get(&(proto, host.port())).filter(|b| b.listening && b.host == host) {
            return Some(b.service);
        }
        self.remote.rows.iter().find(|r| r.proto == proto && r.host == host).map(|r| r.service)
    }

    /// True when `ip` is an app's address and not the node's own.
    pub fn is_virtual(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                v4 != self.node.ip
                    && !self.remote.nodes.iter().any(|(_, ip)| *ip == v4)
                    && (self.is_app_ip(v4)
                        || self.seen_virtual.contains(&v4)
                        || self.vservices.values().any(|v| v.ip == v4))
            }
            IpAddr::V6(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortRanges;
    use crate::vservice::{LbType, Vservice};
    use proptest::prelude::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn table() -> Table {
        let node = NodeInfo { name: "n1".into(), cluster: "appswitch".into(), ip: NODE };
        Table::new(node, PortPool::new(PortRanges::parse("40000-40009").unwrap()), 7)
    }

    fn app(t: &mut Table, ip: Option<&str>, labels: &str) -> AppId {
        t.add_app(NewApp {
            ip: ip.map(|s| s.parse().unwrap()),
            labels: Labels::parse(labels).unwrap(),
            pid: 1,
            driver: "user".into(),
            ..NewApp::default()
        })
        .unwrap()
        .id
    }

    /// Binds and listens like the trap engine does, returning the host port.
    fn serve(t: &mut Table, id: AppId, addr: &str, inode: u64) -> u16 {
        let BindPlan::Host { service, .. } = t.plan_bind(id, addr.parse().unwrap()).unwrap() else { panic!("private") };
        let port = t.take_port().unwrap();
        t.add_binding(id, bound(inode, addr), service, port);
        assert!(t.set_listening(Proto::Tcp, port, inode, 128).is_some());
        port
    }

    fn bound(inode: u64, requested: &str) -> BoundSocket {
        BoundSocket { inode, proto: Proto::Tcp, family: Family::V4, requested: sa(requested), flags: 0 }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn named(t: &mut Table, name: &str, ip: Option<&str>) -> Result<App, String> {
        t.add_app(NewApp { name: Some(name.into()), ip: ip.map(|s| s.parse().unwrap()), ..NewApp::default() })
    }

    #[test]
    fn named_apps_get_made_up_unique_addresses() {
        let mut t = table();
        assert!(named(&mut t, "web", None).unwrap_err().contains("give --ip"));
        t.set_made_up_range(Subnet::new("198.19.0.0".parse().unwrap(), 23));
        let a = named(&mut t, "web", None).unwrap();
        let b = named(&mut t, "Web", None).unwrap();
        let c = named(&mut t, "db", Some("198.19.0.3")).unwrap();
        assert_eq!(a.ip, "198.19.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b.ip, "198.19.0.2".parse::<Ipv4Addr>().unwrap());
        // 198.19.0.3 is taken by --ip.
        assert_eq!(named(&mut t, "x", None).unwrap().ip, "198.19.0.4".parse::<Ipv4Addr>().unwrap());
        assert_eq!(t.addresses_named("WEB"), Some(vec![a.ip, b.ip]));
        assert_eq!(t.addresses_named("db"), Some(vec![c.ip]));
        assert_eq!(t.addresses_named("nope"), None);
        t.remove_app(c.id);
        assert_eq!(t.addresses_named("db"), None);
        let mut ips = HashSet::new();
        while let Ok(app) = named(&mut t, "many", None) {
            assert!(ips.insert(app.ip), "{} handed out twice", app.ip);
            let last = app.ip.octets()[3];
            assert!(last != 0 && last != 255);
        }
        // 512 addresses less four ends (two /24s), less the three apps still there.
        assert_eq!(ips.len(), 512 - 4 - 3);
    }

    #[test]
    fn default_ip_is_the_node() {
        let mut t = table();
        let a = app(&mut t, None, "zone=default");
        assert_eq!(t.app(a).unwrap().ip, NODE);
        assert_eq!(t.app(a).unwrap().id.to_string().len(), 8);
    }

    #[test]
    fn bind_plans() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "zone=default");
        let host = |s| BindPlan::Host { service: s, host_port: None };
        assert_eq!(t.plan_bind(a, sa("0.0.0.0:80")), Ok(host("198.18.0.1:80".parse().unwrap())));
        assert_eq!(t.plan_bind(a, sa("[::]:80")), Ok(host("198.18.0.1:80".parse().unwrap())));
        assert_eq!(t.plan_bind(a, sa("[::ffff:198.18.0.1]:81")), Ok(host("198.18.0.1:81".parse().unwrap())));
        assert_eq!(t.plan_bind(a, sa("127.0.0.1:80")), Ok(BindPlan::Private));
        assert_eq!(t.plan_bind(a, sa("[::1]:80")), Ok(BindPlan::Private));
        assert_eq!(t.plan_bind(a, sa("198.18.0.2:80")), Err(libc::EADDRNOTAVAIL));
        assert_eq!(t.plan_bind(a, sa("[2001:db8::1]:80")), Err(libc::EADDRNOTAVAIL));
    }

    #[test]
    fn two_backends_on_one_address_both_get_chosen() {
        let mut t = table();
        let s1 = app(&mut t, Some("198.18.0.1"), "zone=default");
        let s2 = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        let p1 = serve(&mut t, s1, "0.0.0.0:80", 11);
        let p2 = serve(&mut t, s2, "[::]:80", 12);
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let Route::Backends(b) = t.route_connect(c, Proto::Tcp, sa("198.18.0.1:80")) else { panic!() };
            assert_eq!(b.len(), 2);
            seen.insert(b[0].addr.port());
        }
        assert_eq!(seen, HashSet::from([p1, p2]));
    }

    #[test]
    fn labels_isolate_both_ways() {
        let mut t = table();
        let prod = app(&mut t, Some("198.18.0.2"), "role=prod");
        let other = app(&mut t, Some("198.18.0.3"), "zone=default");
        let client_prod = app(&mut t, None, "role=prod");
        let client_default = app(&mut t, None, "zone=default");
        let pp = serve(&mut t, prod, "0.0.0.0:6379", 1);
        serve(&mut t, other, "0.0.0.0:6379", 2);
        assert_eq!(
            t.route_connect(client_prod, Proto::Tcp, sa("198.18.0.2:6379")),
            Route::Backends(vec![Target { addr: SocketAddrV4::new(NODE, pp), source: None }])
        );
        assert_eq!(t.route_connect(client_default, Proto::Tcp, sa("198.18.0.2:6379")), Route::Refused);
        assert_eq!(t.route_connect(client_prod, Proto::Tcp, sa("198.18.0.3:6379")), Route::Refused);
        // Naming the host port directly is no way around the labels.
        assert_eq!(
            t.route_connect(client_default, Proto::Tcp, SocketAddr::V4(SocketAddrV4::new(NODE, pp))),
            Route::Refused
        );
    }

    #[test]
    fn unserved_virtual_address_is_refused_and_others_go_direct() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        serve(&mut t, s, "0.0.0.0:80", 1);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.0.1:81")), Route::Refused);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.1:22")), Route::Direct(sa("10.0.0.1:22")));
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("[::ffff:127.0.0.1]:5")), Route::Private);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("0.0.0.0:6664")), Route::Private);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("[::]:6664")), Route::Private);
        assert_eq!(t.route_connect(c, Proto::Udp, sa("198.18.0.1:80")), Route::Refused);
    }

    #[test]
    fn names_translate_both_ways() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, Some("198.18.0.9"), "zone=default");
        let p = serve(&mut t, s, "[::]:80", 5);
        let host = SocketAddr::V4(SocketAddrV4::new(NODE, p));
        assert_eq!(t.local_name(s, Proto::Tcp, host), Some(sa("198.18.0.1:80")));
        assert_eq!(t.peer_name(Proto::Tcp, host), Some(sa("198.18.0.1:80")));
        assert_eq!(t.local_name(c, Proto::Tcp, sa("10.0.0.1:33000")), Some(sa("198.18.0.9:33000")));
        assert_eq!(t.local_name(c, Proto::Tcp, sa("10.9.9.9:33000")), None);
        assert_eq!(t.peer_name(Proto::Tcp, sa("10.0.0.1:1")), None);
    }

    #[test]
    fn closed_listener_and_exited_app_leave() {
        let mut t = table();
        let s = app(&mut t, Some("198.18.0.1"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        serve(&mut t, s, "0.0.0.0:80", 1);
        serve(&mut t, s, "0.0.0.0:81", 2);
        let live = HashSet::from([2]);
        assert!(t.sweep(Proto::Tcp, &live, None, t.mark()).is_empty(), "one miss is not enough");
        let gone = t.sweep(Proto::Tcp, &live, None, t.mark());
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].service, "198.18.0.1:80".parse().unwrap());
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.0.1:80")), Route::Refused);
        let (_, gone) = t.remove_app(s).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(t.services().count(), 0);
        assert_eq!(t.pool().in_use(), 0);
        // With its app gone the address is no longer virtual: it would go direct.
        assert!(!t.is_virtual("198.18.0.1".parse().unwrap()));
    }

    #[test]
    fn sweep_spares_rows_newer_than_its_listing() {
        let mut t = table();
        let s = app(&mut t, None, "zone=default");
        let mark = t.mark();
        // Bound and listening after the kernel was asked: not in `live`, yet alive.
        serve(&mut t, s, "0.0.0.0:80", 1);
        let none = HashSet::new();
        assert!(t.sweep(Proto::Tcp, &none, Some(&none), mark).is_empty());
        assert!(t.sweep(Proto::Tcp, &none, Some(&none), mark).is_empty());
        t.sweep(Proto::Tcp, &none, Some(&none), t.mark());
        assert_eq!(t.sweep(Proto::Tcp, &none, Some(&none), t.mark()).len(), 1);
    }

    #[test]
    fn a_listening_row_needs_a_listener_and_a_seen_socket_is_forgiven() {
        let mut t = table();
        let s = app(&mut t, None, "zone=default");
        serve(&mut t, s, "0.0.0.0:80", 1);
        let bound = HashSet::from([1]);
        let none = HashSet::new();
        // Listed as bound-only (shut down): not a listener any more.
        t.sweep(Proto::Tcp, &none, Some(&bound), t.mark());
        // Seen again as a listener: the miss is forgiven.
        t.sweep(Proto::Tcp, &bound, Some(&bound), t.mark());
        assert!(t.sweep(Proto::Tcp, &none, Some(&bound), t.mark()).is_empty());
        assert_eq!(t.sweep(Proto::Tcp, &none, Some(&bound), t.mark()).len(), 1);
        assert!(!t.has_unlistened(Proto::Tcp));
    }

    fn vservice(name: &str, ip: &str, lb: LbType, backends: &str) -> Vservice {
        Vservice {
            name: name.into(),
            ip: ip.parse().unwrap(),
            ports: crate::vservice::parse_ports("80:8000").unwrap(),
            backends: crate::vservice::parse_backends(backends).unwrap(),
            lb,
            source_ip: None,
            external: false,
            app_backends: Default::default(),
        }
    }

    fn first(route: Route) -> SocketAddrV4 {
        match route {
            Route::Backends(t) => t[0].addr,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_robin_alternates_exactly_and_skips_the_down() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.1.1"), "zone=default");
        let b = app(&mut t, Some("198.18.1.2"), "zone=default");
        let c = app(&mut t, None, "zone=default");
        let pa = serve(&mut t, a, "0.0.0.0:8000", 1);
        let pb = serve(&mut t, b, "0.0.0.0:8000", 2);
        t.add_vservice(vservice("web", "198.18.2.1", LbType::RoundRobin, "198.18.1.1,198.18.1.2")).unwrap();
        let ports: Vec<u16> =
            (0..6).map(|_| first(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80"))).port()).collect();
        assert_eq!(ports, [pa, pb, pa, pb, pa, pb]);
        // An unmapped port of the vservice is refused; its name resolves.
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:81")), Route::Refused);
        assert_eq!(t.addresses_named("WEB"), Some(vec!["198.18.2.1".parse().unwrap()]));
        // b goes away: every connect goes to a.
        t.remove_app(b);
        for _ in 0..3 {
            assert_eq!(first(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80"))).port(), pa);
        }
        t.remove_app(a);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.1:80")), Route::Backends(vec![]));
        t.remove_vservice("web").unwrap();
        assert!(!t.is_virtual("198.18.2.1".parse().unwrap()));
        assert_eq!(t.remove_vservice("web").unwrap_err(), "no vservice named 'web'");
    }

    #[test]
    fn vservice_backends_keep_labels_and_external_ones_go_direct() {
        let mut t = table();
        let prod = app(&mut t, Some("198.18.1.1"), "role=prod");
        let c = app(&mut t, None, "role=test");
        serve(&mut t, prod, "0.0.0.0:8000", 1);
        t.add_vservice(vservice("p", "198.18.2.2", LbType::Random, "198.18.1.1")).unwrap();
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.2.2:80")), Route::Refused);
        // Outside ax (an external port) there are no labels to check.
        assert!(
            matches!(t.vservice_route("198.18.2.2".parse().unwrap(), 80, None), Some(Route::Backends(b)) if b.len() == 1)
        );
        let mut ext = vservice("e", "198.18.2.3", LbType::Random, "127.0.0.1:9000,192.0.2.7");
        ext.source_ip = Some(NODE);
        t.add_vservice(ext).unwrap();
        let Route::Backends(targets) = t.route_connect(c, Proto::Tcp, sa("198.18.2.3:80")) else { panic!() };
        let mut addrs: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
        addrs.sort();
        assert_eq!(addrs, ["127.0.0.1:9000", "192.0.2.7:8000"]);
        assert!(targets.iter().all(|t| t.source == Some(NODE)));
    }

    #[test]
    fn vservice_names_and_addresses_are_unique() {
        let mut t = table();
        app(&mut t, Some("198.18.1.1"), "zone=default");
        t.add_vservice(vservice("web", "198.18.2.1", LbType::Random, "198.18.1.1")).unwrap();
        assert!(t
            .add_vservice(vservice("web", "198.18.2.9", LbType::Random, "198.18.1.1"))
            .unwrap_err()
            .contains("already exists"));
        assert!(t
            .add_vservice(vservice("x", "198.18.2.1", LbType::Random, "198.18.1.1"))
            .unwrap_err()
            .contains("already has"));
        assert!(t
            .add_vservice(vservice("y", "198.18.1.1", LbType::Random, "198.18.1.1"))
            .unwrap_err()
            .contains("an app"));
        assert_eq!(t.vservices().count(), 1);
    }

    #[test]
    fn exposed_ports_are_bound_as_they_are_once_per_app() {
        let mut t = table();
        let expose = vec![
            Expose { internal: 8000, at: ExposeAt::ThisNode, host_port: 9999 },
            Expose { internal: 8001, at: ExposeAt::Node("10.0.0.9".parse().unwrap()), host_port: 9998 },
        ];
        let id = t.add_app(NewApp { expose, ..NewApp::default() }).unwrap().id;
        let BindPlan::Host { host_port, .. } = t.plan_bind(id, sa("0.0.0.0:8000")).unwrap() else { panic!() };
        assert_eq!(host_port, Some(9999));
        t.add_binding(id, bound(1, "0.0.0.0:8000"), SocketAddrV4::new(NODE, 8000), 9999);
        // The app's second socket on that port ([::]) takes a pool port.
        let BindPlan::Host { host_port, .. } = t.plan_bind(id, sa("[::]:8000")).unwrap() else { panic!() };
        assert_eq!(host_port, None);
        // Exposed on another node: here the socket takes a pool port (that node relays).
        let BindPlan::Host { host_port, .. } = t.plan_bind(id, sa("0.0.0.0:8001")).unwrap() else { panic!() };
        assert_eq!(host_port, None);
        // An exposed port is not the pool's to give back.
        t.remove_app(id);
        assert_eq!(t.pool().in_use(), 0);
    }

    #[test]
    fn rows_of_other_nodes_serve_like_local_ones() {
        let mut t = table();
        let c = app(&mut t, None, "zone=default");
        let other: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let host = SocketAddrV4::new(other, 40007);
        let row = |labels: &str, service: &str| RemoteRow {
            node: "n2".into(),
            app: "f0000002".into(),
            proto: Proto::Tcp,
            service: service.parse().unwrap(),
            host,
            labels: Labels::parse(labels).unwrap(),
        };
        t.set_remote(Remote {
            nodes: vec![("n2".into(), other)],
            egress: vec![],
            rows: vec![row("zone=default", "198.18.3.1:8000"), row("role=prod", "198.18.3.2:80")],
            apps: vec![
                RemoteApp {
                    node: "n2".into(),
                    id: "f0000002".into(),
                    name: Some("web".into()),
                    ip: "198.18.3.1".parse().unwrap(),
                    expose: vec![],
                },
                RemoteApp { node: "n2".into(), id: "f0000003".into(), name: None, ip: other, expose: vec![] },
            ],
        });
        assert_eq!(first(t.route_connect(c, Proto::Tcp, sa("198.18.3.1:8000"))), host);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.3.2:80")), Route::Refused);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.3.1:9")), Route::Refused);
        // The other node's own address is not virtual: it is reached directly.
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.2:22")), Route::Direct(sa("10.0.0.2:22")));
        assert_eq!(t.addresses_named("web"), Some(vec!["198.18.3.1".parse().unwrap()]));
        assert_eq!(t.peer_name(Proto::Tcp, SocketAddr::V4(host)), Some(sa("198.18.3.1:8000")));
        // The node is gone, but its app's address stays virtual: refused, never sent out.
        t.set_remote(Remote::default());
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("198.18.3.1:8000")), Route::Refused);
    }

    #[test]
    fn outside_addresses_go_through_an_egress_gateway_when_there_is_one() {
        let mut t = table();
        let c = app(&mut t, None, "zone=default");
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")), Route::Direct(sa("192.0.2.1:443")));
        let gw: Ipv4Addr = "10.0.0.3".parse().unwrap();
        t.set_remote(Remote { nodes: vec![("g".into(), gw)], egress: vec![gw], ..Remote::default() });
        let via = Route::Egress { gateway: SocketAddrV4::new(gw, EGRESS_PORT), dest: sa("192.0.2.1:443") };
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")), via);
        // UDP, and connects to the cluster's own nodes, go directly.
        assert_eq!(t.route_connect(c, Proto::Udp, sa("192.0.2.1:53")), Route::Direct(sa("192.0.2.1:53")));
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("10.0.0.3:22")), Route::Direct(sa("10.0.0.3:22")));
        // A gateway's own apps go directly.
        t.set_egress_gateway(true);
        assert_eq!(t.route_connect(c, Proto::Tcp, sa("192.0.2.1:443")), Route::Direct(sa("192.0.2.1:443")));
        t.record_egress("10.0.0.1:33000".parse().unwrap(), sa("192.0.2.1:443"));
        assert_eq!(t.egress_peer(sa("10.0.0.1:33000")), Some(sa("192.0.2.1:443")));
        assert_eq!(t.egress_peer(sa("10.0.0.1:33001")), None);
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

    #[test]
    fn listen_needs_the_same_socket() {
        let mut t = table();
        let s = app(&mut t, None, "zone=default");
        let port = t.take_port().unwrap();
        t.add_binding(s, bound(9, "0.0.0.0:0"), SocketAddrV4::new(NODE, 0), port);
        assert_eq!(t.binding(Proto::Tcp, port).unwrap().service.port(), port);
        assert!(t.set_listening(Proto::Tcp, port, 10, 5).is_none());
        assert!(t.set_listening(Proto::Tcp, port, 9, 5).is_some());
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
}
