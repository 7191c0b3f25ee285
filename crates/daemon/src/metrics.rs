//! `GET /metrics`: the daemon in the Prometheus text format, for operators. What it
//! shows is read at scrape time: the tables (apps, rows, vservices, the cluster's
//! members), the engines' counts (trapped calls and their latency, connects allowed
//! and denied per service), the kernel driver's connect counts (`ax_kconnects`) and
//! the relays'. Counters start at zero with the daemon. README's "Metrics" lists
//! every metric.
//!
//! It answers behind the REST API's gatekeeper like every route: only callers who may
//! read `ax get` may read it, and it shows nothing `ax get` would not show them but
//! counts.

mod text;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::sync::Mutex;

use ax_core::{Driver, Proto, Table};
use ax_trap::stats::{CallSnapshot, Tally, BUCKETS_NS};
use tracing::debug;

pub use text::CONTENT_TYPE;
use text::{Exposition, Histogram, Kind};

use crate::Daemon;

/// The `service` label of connects to services beyond what the engines count apart.
const OTHER_SERVICES: &str = "other";
/// Labels remembered at most (beyond, forgotten and made again).
const MAX_LABELS: usize = 32 * 1024;

/// Everything one scrape shows, read from the daemon.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub apps: BTreeMap<&'static str, u64>,
    pub local_rows: u64,
    pub remote_rows: u64,
    pub vservices: u64,
    pub members_alive: u64,
    pub members_dead: u64,
    /// By (service label, protocol).
    pub connects: BTreeMap<(String, Proto), Tally>,
    pub calls: Vec<CallSnapshot>,
    pub relay_connections: u64,
    pub relay_bytes: u64,
}

/// The `service` label of each address counted, fixed the first time it is shown, so
/// that a series keeps its name while the daemon runs (a name that left the table, or
/// a row's host address counted by the kernel driver, keeps the label it had).
#[derive(Default)]
pub struct Labels {
    known: Mutex<HashMap<(Proto, SocketAddrV4), String>>,
}

impl Labels {
    /// The label of connects counted at `at` (a service, or for the kernel driver a
    /// route entry's address): the service's name and port if the address goes by a
    /// name, else its address. None when `at` is not (yet) a service the table knows
    /// and `at` comes from the kernel (shown once it is).
    fn of(&self, t: &Table, proto: Proto, at: SocketAddrV4, from_kernel: bool) -> Option<String> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = known.get(&(proto, at)) {
            return Some(l.clone());
        }
        let service = match t.service_of_connect(proto, at.into()) {
            Some(s) => s,
            None if from_kernel => return None,
            None => at,
        };
        let label = match t.name_of(*service.ip()) {
            Some(name) => format!("{name}:{}", service.port()),
            None => service.to_string(),
        };
        if known.len() >= MAX_LABELS {
            known.clear();
        }
        known.insert((proto, at), label.clone());
        Some(label)
    }
}

/// Reads what a scrape shows (the kernel driver's maps included: off the async
/// workers).
pub fn gather(d: &Daemon) -> Snapshot {
    let engines = d.stats().connects();
    let kernel = match d.kernel().map(|k| k.driver.connect_counts()) {
        Some(Ok(counts)) => counts,
        Some(Err(e)) => {
            debug!("metrics: {e}");
            Vec::new()
        }
        None => Vec::new(),
    };
    let (relay_connections, relay_bytes) = d.relay_counts();
    let mut snap = Snapshot {
        calls: d.stats().calls(),
        relay_connections: relay_connections as u64,
        relay_bytes,
        ..Snapshot::default()
    };
    d.read(|s| {
        let t = &s.table;
        for driver in [Driver::User, Driver::Kernel] {
            snap.apps.insert(driver.name(), t.apps().filter(|a| a.driver == driver).count() as u64);
        }
        snap.local_rows = t.services().count() as u64;
        snap.remote_rows = t.remote().rows.len() as u64;
        snap.vservices = t.vservices().count() as u64;
        snap.members_alive = s.nodes.iter().filter(|n| n.live).count() as u64;
        snap.members_dead = s.nodes.iter().filter(|n| !n.live).count() as u64;
        let labels = d.metric_labels();
        let engines = engines.into_iter().map(|(at, tally)| (at, tally, false));
        let kernel = kernel.into_iter().map(|(at, tally)| (Some(at), tally, true));
        for (at, tally, from_kernel) in engines.chain(kernel) {
            let key = match at {
                Some((proto, at)) => match labels.of(t, proto, at, from_kernel) {
                    Some(label) => (label, proto),
                    None => continue,
                },
                None => (OTHER_SERVICES.to_string(), Proto::Tcp),
            };
            snap.connects.entry(key).or_default().add(tally);
        }
    });
    snap
}

/// The text of a scrape.
pub fn render(s: &Snapshot) -> String {
    let mut e = Exposition::default();
    e.family("ax_apps", Kind::Gauge, "Apps registered with this daemon (running or awaiting their ax run), by driver.");
    for (driver, n) in &s.apps {
        e.sample("ax_apps", &[("driver", driver)], *n);
    }
    e.family(
        "ax_service_rows",
        Kind::Gauge,
        "Rows of the service table: this node's, and the other nodes' as gossiped.",
    );
    e.sample("ax_service_rows", &[("origin", "local")], s.local_rows);
    e.sample("ax_service_rows", &[("origin", "remote")], s.remote_rows);
    e.family("ax_vservices", Kind::Gauge, "Virtual services known to this node.");
    e.sample("ax_vservices", &[], s.vservices);
    e.family(
        "ax_service_connects_total",
        Kind::Counter,
        "Connects by apps to a service (name:port, or ip:port), allowed or denied by labels.",
    );
    for ((service, proto), t) in &s.connects {
        for (result, n) in [("allowed", t.allowed), ("denied", t.denied)] {
            let labels = [("service", service.as_str()), ("proto", proto.name()), ("result", result)];
            e.sample("ax_service_connects_total", &labels, n);
        }
    }
    e.family(
        "ax_trapped_calls_total",
        Kind::Counter,
        "System calls of user-driver apps trapped and answered, by call.",
    );
    for c in &s.calls {
        e.sample("ax_trapped_calls_total", &[("call", c.call)], c.count());
    }
    e.family(
        "ax_trapped_call_duration_seconds",
        Kind::Histogram,
        "Time from the daemon receiving a trapped call to answering it (or handing it to a helper thread), by call.",
    );
    let bounds: Vec<f64> = BUCKETS_NS.iter().map(|ns| *ns as f64 / 1e9).collect();
    for c in &s.calls {
        let h = Histogram { bounds: &bounds, counts: &c.buckets, sum: c.sum_ns as f64 / 1e9 };
        e.histogram("ax_trapped_call_duration_seconds", &[("call", c.call)], &h);
    }
    e.family("ax_gossip_members", Kind::Gauge, "Members of the cluster as gossip sees them, this node included.");
    e.sample("ax_gossip_members", &[("state", "alive")], s.members_alive);
    e.sample("ax_gossip_members", &[("state", "dead")], s.members_dead);
    e.family("ax_relay_connections", Kind::Gauge, "Connections the daemon's relays and egress gateway carry now.");
    e.sample("ax_relay_connections", &[], s.relay_connections);
    e.family("ax_relay_bytes_total", Kind::Counter, "Bytes the daemon's relays and egress gateway carried, both ways.");
    e.sample("ax_relay_bytes_total", &[], s.relay_bytes);
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_its_labels() {
        let mut s = Snapshot {
            local_rows: 2,
            remote_rows: 1,
            vservices: 1,
            members_alive: 2,
            members_dead: 1,
            relay_connections: 3,
            relay_bytes: 4096,
            ..Snapshot::default()
        };
        s.apps.insert("kernel", 0);
        s.apps.insert("user", 2);
        s.connects.insert(("web:80".into(), Proto::Tcp), Tally { allowed: 5, denied: 1 });
        let mut buckets = [0; BUCKETS_NS.len() + 1];
        buckets[2] = 4;
        s.calls.push(CallSnapshot { call: "connect", buckets, sum_ns: 12_000 });
        let text = render(&s);
        for want in [
            "# TYPE ax_apps gauge",
            "ax_apps{driver=\"kernel\"} 0",
            "ax_apps{driver=\"user\"} 2",
            "ax_service_rows{origin=\"local\"} 2",
            "ax_service_rows{origin=\"remote\"} 1",
            "ax_vservices 1",
            "# TYPE ax_service_connects_total counter",
            "ax_service_connects_total{service=\"web:80\",proto=\"tcp\",result=\"allowed\"} 5",
            "ax_service_connects_total{service=\"web:80\",proto=\"tcp\",result=\"denied\"} 1",
            "ax_trapped_calls_total{call=\"connect\"} 4",
            "# TYPE ax_trapped_call_duration_seconds histogram",
            "ax_trapped_call_duration_seconds_bucket{call=\"connect\",le=\"0.000001\"} 0",
            "ax_trapped_call_duration_seconds_bucket{call=\"connect\",le=\"0.000005\"} 4",
            "ax_trapped_call_duration_seconds_bucket{call=\"connect\",le=\"0.01\"} 4",
            "ax_trapped_call_duration_seconds_bucket{call=\"connect\",le=\"+Inf\"} 4",
            "ax_trapped_call_duration_seconds_sum{call=\"connect\"} 0.000012",
            "ax_trapped_call_duration_seconds_count{call=\"connect\"} 4",
            "ax_gossip_members{state=\"alive\"} 2",
            "ax_gossip_members{state=\"dead\"} 1",
            "ax_relay_connections 3",
            "ax_relay_bytes_total 4096",
        ] {
            assert!(text.lines().any(|l| l == want), "no line {want:?} in\n{text}");
        }
        // One HELP and one TYPE per family, before its samples.
        let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(families.len(), 9, "{families:?}");
    }

    fn table() -> Table {
        let ports = ax_core::DaemonPorts::new(true, 7946, 6664, 1024);
        let node = ax_core::NodeInfo { name: "n1".into(), cluster: "c".into(), ip: "10.0.0.1".parse().unwrap(), ports };
        Table::new(node, ax_core::PortPool::new(ax_core::PortRanges::parse("40000-40009").unwrap()), 7)
    }

    #[test]
    fn a_service_is_labelled_by_name_once_and_keeps_it() {
        let mut t = table();
        let new = ax_core::table::NewApp {
            name: Some("web".into()),
            ip: Some("198.18.0.1".parse().unwrap()),
            ..Default::default()
        };
        let app = t.add_app(new).unwrap().id;
        let labels = Labels::default();
        let web: SocketAddrV4 = "198.18.0.1:80".parse().unwrap();
        // Not served yet: the engines' count shows the address; the kernel's waits.
        assert_eq!(labels.of(&t, Proto::Tcp, "198.18.0.1:81".parse().unwrap(), false), Some("web:81".into()));
        assert_eq!(labels.of(&t, Proto::Tcp, web, true), None);
        let bound = ax_core::BoundSocket {
            inode: 1,
            proto: Proto::Tcp,
            family: ax_core::addr::Family::V4,
            requested: "0.0.0.0:80".parse().unwrap(),
            flags: 0,
        };
        let port = t.take_port().unwrap();
        t.add_binding(app, bound, web, port);
        t.set_listening(Proto::Tcp, port, 1, 128);
        assert_eq!(labels.of(&t, Proto::Tcp, web, true), Some("web:80".into()));
        // The kernel counts a connect to the row's host address under that address.
        let host = SocketAddrV4::new("10.0.0.1".parse().unwrap(), port);
        assert_eq!(labels.of(&t, Proto::Tcp, host, true), Some("web:80".into()));
        t.remove_app(app);
        assert_eq!(labels.of(&t, Proto::Tcp, web, true), Some("web:80".into()), "kept once shown");
    }
}
