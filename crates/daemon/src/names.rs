//! The daemon's DNS server: binds port 53 on the node address (UDP and TCP), answers
//! apps' names from the table, and writes each app's private resolv.conf.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ax_core::AppId;
use ax_dns::server::Dns;
use ax_dns::zone::{self, Names, Zone};
use tracing::{info, warn};

use crate::bounds::Gate;
use crate::{Daemon, DnsConfig, Error};

/// The DNS server's bound sockets and settings, made before the runtime starts so a
/// busy port 53 stops the daemon with a clear error.
pub struct Bound {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    zone: Zone,
    upstreams: Vec<SocketAddr>,
}

pub fn bind(node: Ipv4Addr, config: &DnsConfig) -> Result<Bound, Error> {
    let zone = Zone::new(&config.domain).map_err(|e| Error::Setting(e.to_string()))?;
    let at = SocketAddr::from((node, ax_core::DNS_PORT));
    let busy = |e| {
        Error::Setting(format!("cannot serve DNS on {at} ({e}): free the port or start the daemon with --dns=false"))
    };
    let udp = std::net::UdpSocket::bind(at).map_err(busy)?;
    let tcp = std::net::TcpListener::bind(at).map_err(busy)?;
    let upstreams = match &config.servers {
        Some(s) => s.clone(),
        None => {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            zone::resolv_conf_servers(&text, node.into())
        }
    };
    Ok(Bound { udp, tcp, zone, upstreams })
}

struct TableNames(Daemon);

impl Names for TableNames {
    fn addresses(&self, label: &str) -> Option<Vec<Ipv4Addr>> {
        self.0.read(|s| s.table.addresses_named(label))
    }

    fn federated(&self, label: &str) -> std::collections::BTreeMap<String, Vec<Ipv4Addr>> {
        self.0.read(|s| s.table.federated_named(label))
    }

    fn cluster(&self) -> String {
        self.0.read(|s| s.table.node().cluster.clone())
    }

    fn may_ask(&self, from: IpAddr) -> bool {
        self.0.read(|s| s.table.may_query_dns(from))
    }
}

/// DNS connections over TCP served at once; more are closed as they come.
const DNS_TCP_CONNECTIONS: usize = 256;

/// Starts serving: UDP on a thread of its own, TCP and forwarding on the runtime this
/// is called from.
pub fn spawn(b: Bound, daemon: Daemon) -> std::io::Result<()> {
    b.tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpListener::from_std(b.tcp)?;
    info!(at = %b.udp.local_addr()?, domain = b.zone.domain(), upstreams = ?b.upstreams, "serving DNS");
    let names = Arc::new(TableNames(daemon));
    let dns = Arc::new(Dns { zone: b.zone, names, upstreams: b.upstreams, strangers: Default::default() });
    let rt = tokio::runtime::Handle::current();
    let udp_dns = dns.clone();
    let udp = b.udp;
    std::thread::Builder::new().name("dns".into()).spawn(move || ax_dns::server::serve_udp(udp, udp_dns, rt))?;
    let gate = Gate::new("DNS over TCP", DNS_TCP_CONNECTIONS);
    tokio::spawn(async move {
        let served = gate.serve_async(&tcp, std::future::pending(), |conn, permit| {
            let dns = dns.clone();
            tokio::spawn(async move {
                ax_dns::server::serve_tcp_conn(conn, dns).await;
                drop(permit);
            });
        });
        if let Err(e) = served.await {
            warn!("DNS over TCP stopped: {e}");
        }
    });
    Ok(())
}

fn resolv_conf_path(run_dir: &Path, app: AppId) -> PathBuf {
    run_dir.join("resolv").join(format!("{app}.conf"))
}

/// Writes the resolv.conf an app sees: the daemon's DNS server, and its domain to
/// search. Returns its path.
pub fn write_resolv_conf(run_dir: &Path, app: AppId, node: Ipv4Addr, domain: &str) -> std::io::Result<String> {
    let path = resolv_conf_path(run_dir, app);
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    std::fs::write(&path, resolv_conf(&format!("app {app}"), node, domain))?;
    Ok(path.to_string_lossy().into_owned())
}

/// Writes `resolv.conf` in the run directory, the same for every app: a container whose
/// `ax run` may not mount an app's own over /etc/resolv.conf (no CAP_SYS_ADMIN) mounts
/// this one there (README: Containers and Kubernetes). A file that already says the
/// same is left as it is: a container's mount holds its inode.
pub fn write_node_resolv_conf(run_dir: &Path, node: Ipv4Addr, domain: &str) -> std::io::Result<()> {
    let (path, text) = (run_dir.join("resolv.conf"), resolv_conf("containers on this node", node, domain));
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text)
}

fn resolv_conf(whom: &str, node: Ipv4Addr, domain: &str) -> String {
    format!("# written by ax for {whom}\nnameserver {node}\nsearch {domain}\noptions ndots:1\n")
}

pub fn remove_resolv_conf(run_dir: &Path, app: AppId) {
    let _ = std::fs::remove_file(resolv_conf_path(run_dir, app));
}
