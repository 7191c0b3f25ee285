//! What one node publishes, as key-values, and the view of the others.
//!
//! Keys: `node` (the node itself), `row/<proto>/<host addr>` (one per service row),
//! `app/<app id>` (one per app, for names and virtual addresses), `vs/<name>` (one per
//! vservice), and a federation gateway's (see [`crate::federation`]). Values are JSON of typed records: protocol, labels, exposes and vservice
//! definitions are checked as they are read, like input from the API, and a record
//! this version cannot read, or that does not check, is skipped, never fatal.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ax_core::vservice::{Expose, Spec};
use ax_core::{addr, AppId, Labels, Proto, Remote, RemoteApp, RemoteRow, RemoteService};
use serde::{Deserialize, Serialize};

use crate::federation::{Export, Federation, GatewayRecord};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub cluster: String,
    pub ip: Ipv4Addr,
    pub egress_gateway: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRecord {
    pub app: String,
    pub proto: Proto,
    pub service: SocketAddrV4,
    pub host: SocketAddrV4,
    pub labels: Labels,
}

impl RowRecord {
    fn valid(&self) -> bool {
        self.app.parse::<AppId>().is_ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub id: String,
    pub name: Option<String>,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub expose: Vec<Expose>,
    /// Its labels, which decide who may ping its address (absent from older nodes).
    #[serde(default)]
    pub labels: Option<Labels>,
}

impl AppRecord {
    /// What the run channel checks of a new app, but the node-local `--expose` checks.
    fn valid(&self) -> bool {
        self.id.parse::<AppId>().is_ok()
            && addr::check_app_ip(self.ip).is_ok()
            && self.name.as_deref().is_none_or(|n| ax_dns::wire::check_label(n).is_ok())
    }
}

/// A vservice as the cluster knows it: every node republishes the newest record of
/// each name it has seen, so a vservice outlives the node that made it, and a deletion
/// (a record with `spec: None`) made anywhere wins everywhere once it is newer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsRecord {
    pub name: String,
    pub version: u64,
    /// The node that made this version (breaks ties between equal versions).
    pub origin: String,
    /// The vservice's definition, or None once deleted.
    pub spec: Option<Spec>,
}

impl VsRecord {
    /// The name is a DNS label, and the definition's own (the daemon checks the rest
    /// of the definition as it checks a request from the API).
    fn valid(&self) -> bool {
        ax_dns::wire::check_label(&self.name).is_ok()
            && self.name == self.name.to_ascii_lowercase()
            && self.spec.as_ref().is_none_or(|s| s.name.eq_ignore_ascii_case(&self.name))
    }

    /// Between equal versions a deletion wins, then the larger origin: the same choice
    /// on every node.
    fn newer_than(&self, other: &VsRecord) -> bool {
        (self.version, self.spec.is_none(), &self.origin) > (other.version, other.spec.is_none(), &other.origin)
    }

    /// Whether the version is past what any node's clock can have made by `now_ms`
    /// (see [`MAX_VERSION_AHEAD_MS`]).
    pub fn from_the_future(&self, now_ms: u64) -> bool {
        self.version > now_ms.saturating_add(MAX_VERSION_AHEAD_MS)
    }
}

/// How far ahead of this node's clock a vservice version may be. Versions are the wall
/// clock in ms of the change (or one past the newest version known, when that is
/// later), so a version a day ahead says a clock is a day wrong, or a forger: such a
/// record is ignored, and no record can sit above every later change (a version of
/// 2^64-1 could never be deleted). A deletion takes a version past every record its node
/// accepted, so it wins over each of them everywhere.
pub const MAX_VERSION_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// The newest record of each name among `records`.
pub fn merge_vservices<'a>(records: impl Iterator<Item = &'a VsRecord>) -> BTreeMap<String, VsRecord> {
    let mut out: BTreeMap<String, VsRecord> = BTreeMap::new();
    for r in records {
        match out.get(&r.name) {
            Some(known) if !r.newer_than(known) => {}
            _ => {
                out.insert(r.name.clone(), r.clone());
            }
        }
    }
    out
}

/// Everything one node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub node: NodeRecord,
    pub rows: Vec<RowRecord>,
    pub apps: Vec<AppRecord>,
    pub vservices: Vec<VsRecord>,
    /// A federation gateway's record, exports (on the WAN) and imports (in its cluster).
    pub federation: Federation,
}

pub const NODE_KEY: &str = "node";

impl Published {
    /// What a federation gateway publishes on the WAN: itself (`node`, at its WAN
    /// address), its gateway record and its cluster's exports; no rows, apps or
    /// vservices.
    pub fn wan(node: NodeRecord, gateway: GatewayRecord, exports: Vec<Export>) -> Published {
        let federation = Federation { gateway: Some(gateway), exports, imports: Vec::new() };
        Published { node, rows: Vec::new(), apps: Vec::new(), vservices: Vec::new(), federation }
    }

    /// The key-values that say this.
    pub fn to_keys(&self) -> BTreeMap<String, String> {
        let mut kv = BTreeMap::new();
        kv.insert(NODE_KEY.to_string(), json(&self.node));
        for r in &self.rows {
            kv.insert(format!("row/{}/{}", r.proto.name(), r.host), json(r));
        }
        for a in &self.apps {
            kv.insert(format!("app/{}", a.id), json(a));
        }
        for v in &self.vservices {
            kv.insert(format!("vs/{}", v.name), json(v));
        }
        self.federation.to_keys(&mut kv);
        kv
    }

    /// Reads a node's key-values back (None without a readable `node` key).
    pub fn from_keys<'a>(kv: impl Iterator<Item = (&'a str, &'a str)>) -> Option<Published> {
        let mut node = None;
        let (mut rows, mut apps, mut vservices) = (Vec::new(), Vec::new(), Vec::new());
        let mut federation = Federation::default();
        for (k, v) in kv {
            if k == NODE_KEY {
                node = serde_json::from_str(v).ok();
            } else if k.starts_with("row/") {
                rows.extend(serde_json::from_str::<RowRecord>(v).ok().filter(RowRecord::valid));
            } else if k.starts_with("app/") {
                apps.extend(serde_json::from_str::<AppRecord>(v).ok().filter(AppRecord::valid));
            } else if k.starts_with("vs/") {
                vservices.extend(serde_json::from_str::<VsRecord>(v).ok().filter(VsRecord::valid));
            } else {
                federation.take(k, v);
            }
        }
        Some(Published { node: node?, rows, apps, vservices, federation })
    }
}

/// Why nothing a node publishes counts: its node record says it is someone, or
/// somewhere, else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("its node record names '{record}', but it gossips as '{gossip}'")]
    Name { gossip: String, record: String },
    #[error("its node record gives the address {record}, but it gossips from {gossip}")]
    Address { gossip: IpAddr, record: Ipv4Addr },
}

/// What was left out of what a node publishes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Left {
    /// Rows whose host address is not the node's.
    pub rows: usize,
    /// Vservice records with a version from the future.
    pub vservices: usize,
}

impl Left {
    pub fn any(&self) -> bool {
        self.rows + self.vservices > 0
    }
}

/// Keeps what a node may say about itself: its node record must carry the name it
/// gossips under (`gossip_name`: its chitchat node id, which the transport proved, with
/// TLS) and the address it gossips from; a row counts only if its host is on that
/// address (a node serves its own apps only), and a vservice record only if its version
/// is not from the future (at `now_ms`, wall clock).
pub fn admit(
    gossip_name: &str,
    gossip_ip: IpAddr,
    mut p: Published,
    now_ms: u64,
) -> Result<(Published, Left), Refused> {
    if p.node.name != gossip_name {
        return Err(Refused::Name { gossip: gossip_name.to_string(), record: p.node.name });
    }
    if IpAddr::V4(p.node.ip) != gossip_ip {
        return Err(Refused::Address { gossip: gossip_ip, record: p.node.ip });
    }
    let (rows, vservices) = (p.rows.len(), p.vservices.len());
    p.rows.retain(|r| r.host.ip() == &p.node.ip);
    p.vservices.retain(|v| !v.from_the_future(now_ms));
    let left = Left { rows: rows - p.rows.len(), vservices: vservices - p.vservices.len() };
    Ok((p, left))
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize")
}

/// The other live nodes of our cluster as the table wants them. Nodes of another
/// cluster, or with our own name, are left out.
pub fn remote_view(me: &NodeRecord, others: &[Published]) -> Remote {
    let mut remote = Remote::default();
    for p in others.iter().filter(|p| p.node.cluster == me.cluster && p.node.name != me.name) {
        remote.nodes.push((p.node.name.clone(), p.node.ip));
        if p.node.egress_gateway {
            remote.egress.push(p.node.ip);
        }
        for r in &p.rows {
            remote.rows.push(RemoteRow {
                node: p.node.name.clone(),
                app: r.app.clone(),
                proto: r.proto,
                service: r.service,
                host: r.host,
                labels: r.labels.clone(),
            });
        }
        if let Some(g) = &p.federation.gateway {
            remote.ingresses.push(g.ingress);
        }
        // A gateway's imports: remote clusters' services, reached through it.
        for i in p.federation.imports.iter().filter(|_| p.federation.gateway.is_some()) {
            remote.federated.push(RemoteService {
                cluster: i.cluster.clone(),
                gateway: p.node.ip,
                proto: i.export.proto,
                service: i.export.service,
                name: i.export.name.clone(),
                labels: i.export.labels.clone(),
            });
        }
        for a in &p.apps {
            remote.apps.push(RemoteApp {
                node: p.node.name.clone(),
                id: a.id.clone(),
                name: a.name.clone(),
                ip: a.ip,
                expose: a.expose.clone(),
                labels: a.labels.clone(),
            });
        }
    }
    remote
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str) -> NodeRecord {
        NodeRecord { name: name.into(), cluster: "appswitch".into(), ip: ip.parse().unwrap(), egress_gateway: false }
    }

    fn published(name: &str, ip: &str) -> Published {
        Published {
            node: node(name, ip),
            rows: vec![RowRecord {
                app: "f0000001".into(),
                proto: Proto::Tcp,
                service: "198.18.0.1:80".parse().unwrap(),
                host: format!("{ip}:40000").parse().unwrap(),
                labels: "zone=default".parse().unwrap(),
            }],
            apps: vec![AppRecord {
                id: "f0000001".into(),
                name: Some("web".into()),
                ip: "198.18.0.1".parse().unwrap(),
                expose: vec![],
                labels: Some("zone=default".parse().unwrap()),
            }],
            vservices: vec![vs("web", 3, "a", true)],
            federation: Default::default(),
        }
    }

    fn vs(name: &str, version: u64, origin: &str, live: bool) -> VsRecord {
        let spec = || Spec {
            name: name.into(),
            ip: "198.18.2.1".parse().unwrap(),
            ports: "80:8000".parse().unwrap(),
            backends: "198.18.1.1".parse().unwrap(),
            lbtype: Default::default(),
            source_ip: None,
            external: false,
            allow_external_backends: false,
        };
        VsRecord { name: name.into(), version, origin: origin.into(), spec: live.then(spec) }
    }

    #[test]
    fn the_newest_vservice_record_wins_and_deletions_too() {
        let records =
            [vs("web", 3, "a", true), vs("web", 4, "b", false), vs("db", 1, "a", true), vs("db", 1, "c", true)];
        let merged = merge_vservices(records.iter());
        assert_eq!(merged["web"], vs("web", 4, "b", false));
        assert_eq!(merged["db"].origin, "c", "ties go to the larger origin, the same on every node");
        let again = merge_vservices(records.iter().rev());
        assert_eq!(merged, again, "order does not matter");
    }

    #[test]
    fn a_deletion_wins_ties_and_over_every_record_its_node_accepted() {
        let merged = merge_vservices([vs("web", 7, "z", true), vs("web", 7, "a", false)].iter());
        assert_eq!(merged["web"], vs("web", 7, "a", false), "a deletion wins a tie whatever the origins");
        // The largest version a node accepts, and the deletion made after it (one past).
        let now = 1_700_000_000_000;
        let newest = vs("web", now + MAX_VERSION_AHEAD_MS, "b", true);
        assert!(!newest.from_the_future(now));
        let delete = vs("web", newest.version + 1, "a", false);
        assert_eq!(merge_vservices([newest.clone(), delete.clone()].iter())["web"], delete);
        assert_eq!(merge_vservices([delete.clone(), newest].iter())["web"], delete);
    }

    #[test]
    fn a_version_from_the_future_is_refused_and_the_largest_cannot_overflow() {
        let now = 1_700_000_000_000;
        assert!(!vs("web", now, "a", true).from_the_future(now));
        assert!(!vs("web", now + MAX_VERSION_AHEAD_MS, "a", true).from_the_future(now));
        assert!(vs("web", now + MAX_VERSION_AHEAD_MS + 1, "a", true).from_the_future(now));
        assert!(vs("web", u64::MAX, "a", true).from_the_future(now));
        assert!(!vs("web", u64::MAX, "a", true).from_the_future(u64::MAX), "no overflow at the end of time");
    }

    #[test]
    fn a_node_publishes_only_itself_and_its_own_rows() {
        let now = 1_700_000_000_000;
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let good = published("b", "10.0.0.2");
        assert_eq!(admit("b", ip, good.clone(), now), Ok((good.clone(), Left::default())));

        let err = admit("a", ip, good.clone(), now).unwrap_err();
        assert_eq!(err, Refused::Name { gossip: "a".into(), record: "b".into() });
        assert!(err.to_string().contains("names 'b', but it gossips as 'a'"), "{err}");
        let err = admit("b", "10.0.0.3".parse().unwrap(), good.clone(), now).unwrap_err();
        assert_eq!(err, Refused::Address { gossip: "10.0.0.3".parse().unwrap(), record: "10.0.0.2".parse().unwrap() });

        // A row for another node's host, and a record from the future, are left out;
        // the rest stays.
        let mut p = good.clone();
        let mut theirs = p.rows[0].clone();
        theirs.host = "10.0.0.1:40000".parse().unwrap();
        p.rows.push(theirs);
        p.vservices.push(vs("db", u64::MAX, "b", true));
        let (kept, left) = admit("b", ip, p, now).unwrap();
        assert_eq!(kept, good);
        assert_eq!(left, Left { rows: 1, vservices: 1 });
        assert!(left.any());
    }

    #[test]
    fn keys_roundtrip_and_garbage_is_skipped() {
        let p = published("a", "10.0.0.1");
        let mut kv = p.to_keys();
        assert_eq!(Published::from_keys(kv.iter().map(|(k, v)| (k.as_str(), v.as_str()))), Some(p.clone()));
        kv.insert("row/tcp/garbage".into(), "{not json".into());
        kv.insert("future/thing".into(), "x".into());
        assert_eq!(Published::from_keys(kv.iter().map(|(k, v)| (k.as_str(), v.as_str()))), Some(p));
        assert_eq!(Published::from_keys([("app/x", "{}")].into_iter()), None);
    }

    #[test]
    fn records_are_typed_json_all_the_way_down() {
        let kv = published("a", "10.0.0.1").to_keys();
        let row: serde_json::Value = serde_json::from_str(&kv["row/tcp/10.0.0.1:40000"]).unwrap();
        assert_eq!(row["proto"], "tcp");
        assert_eq!(row["labels"], serde_json::json!({"zone": "default"}));
        let vs: serde_json::Value = serde_json::from_str(&kv["vs/web"]).unwrap();
        assert_eq!(vs["spec"]["ports"], "80:8000", "the definition is an object, not a string of JSON");
    }

    /// Each edit makes one record of a good node's keys fail a check a live input would.
    #[test]
    fn records_that_do_not_check_are_skipped_like_bad_input() {
        let p = published("a", "10.0.0.1");
        let edits: [(&str, &str, &str); 9] = [
            ("row/tcp/10.0.0.1:40000", "proto", r#""sctp""#),
            ("row/tcp/10.0.0.1:40000", "labels", r#""zone=default""#),
            ("row/tcp/10.0.0.1:40000", "labels", r#"{"zone":""}"#),
            ("row/tcp/10.0.0.1:40000", "app", r#""nope""#),
            ("app/f0000001", "ip", r#""127.0.0.1""#),
            ("app/f0000001", "name", r#""-web""#),
            ("app/f0000001", "expose", r#"["8000"]"#),
            ("vs/web", "name", r#""other""#),
            ("vs/web", "spec", r#"{"name":"web","ip":"198.18.2.1","ports":"80:x","backends":"198.18.1.1"}"#),
        ];
        for (key, field, bad) in edits {
            let mut kv = p.to_keys();
            let mut record: serde_json::Value = serde_json::from_str(&kv[key]).unwrap();
            record[field] = serde_json::from_str(bad).unwrap();
            kv.insert(key.into(), record.to_string());
            let read = Published::from_keys(kv.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
            let kept = read.rows.len() + read.apps.len() + read.vservices.len();
            assert_eq!(kept, 2, "{key}.{field} = {bad} was not skipped");
            assert_eq!(read.node, p.node);
        }
    }

    #[test]
    fn a_gossiped_row_becomes_a_typed_remote_row() {
        let me = node("a", "10.0.0.1");
        let b = published("b", "10.0.0.2");
        let kv = b.to_keys();
        let read = Published::from_keys(kv.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let view = remote_view(&me, &[read]);
        assert_eq!(
            view.rows,
            vec![RemoteRow {
                node: "b".into(),
                app: "f0000001".into(),
                proto: Proto::Tcp,
                service: "198.18.0.1:80".parse().unwrap(),
                host: "10.0.0.2:40000".parse().unwrap(),
                labels: "zone=default".parse().unwrap(),
            }]
        );
        assert_eq!(view.apps[0].ip, "198.18.0.1".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn the_view_keeps_our_cluster_only_and_not_ourselves() {
        let me = node("a", "10.0.0.1");
        let b = published("b", "10.0.0.2");
        let mut foreign = published("c", "10.0.0.3");
        foreign.node.cluster = "other".into();
        let view = remote_view(&me, &[published("a", "10.0.0.1"), b, foreign]);
        assert_eq!(view.nodes, vec![("b".to_string(), "10.0.0.2".parse().unwrap())]);
        assert_eq!(view.rows.len(), 1);
        assert_eq!(view.rows[0].host, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(view.apps[0].name.as_deref(), Some("web"));
    }
}

/// `--gossip-auto-discover` on a subnet too large to ask address by address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--gossip-auto-discover asks every address of the node's subnet, and {node}/{prefix} has more than 1024: give --neighbors")]
pub struct SubnetTooLarge {
    pub node: Ipv4Addr,
    pub prefix: u8,
}

/// The seeds `--gossip-auto-discover` tries: every other address of the node's subnet
/// (refused past a /22: that is too many to ask).
pub fn discovery_seeds(node: Ipv4Addr, prefix: u8, port: u16) -> Result<Vec<String>, SubnetTooLarge> {
    if prefix < 22 {
        return Err(SubnetTooLarge { node, prefix });
    }
    let net = ax_core::addr::Subnet::new(node, prefix);
    let size = net.size() as u32;
    let hosts = if size > 2 { 1..size - 1 } else { 0..size };
    Ok(hosts.map(|i| net.nth(i)).filter(|ip| *ip != node).map(|ip| format!("{ip}:{port}")).collect())
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    #[test]
    fn the_subnet_less_ourselves_and_its_ends() {
        let seeds = discovery_seeds("10.251.0.12".parse().unwrap(), 24, 7946).unwrap();
        assert_eq!(seeds.len(), 253);
        assert_eq!(seeds[0], "10.251.0.1:7946");
        assert!(!seeds.contains(&"10.251.0.12:7946".to_string()));
        assert!(!seeds.contains(&"10.251.0.255:7946".to_string()));
        assert!(discovery_seeds("10.0.0.1".parse().unwrap(), 16, 7946)
            .unwrap_err()
            .to_string()
            .contains("give --neighbors"));
    }
}
