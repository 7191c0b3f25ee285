//! Federation: clusters joined by gateway nodes, decided without I/O.
//!
//! A gateway runs a second gossip instance (the same [`crate::gossip::Gossip`], under
//! the chitchat cluster id [`FEDERATION_ID`], on the WAN gossip port) where it
//! publishes only its [`GatewayRecord`] and its cluster's [`Export`]s: one record per
//! service (virtual address, port, protocol, name, label sets), never per row or
//! backend, so the WAN carries O(services) whatever the clusters' sizes. What it learns
//! there it re-publishes into its own cluster's gossip as [`Import`]s, each marked with
//! the cluster it comes from, so plain nodes learn remote services and which of their
//! gateways lead there.
//!
//! [`federate`] decides what a gateway takes from the WAN: never a gateway claiming our
//! cluster's name without being one of our cluster ([`Clash`]), never a service at an
//! address our cluster uses (a remote cluster cannot shadow or take over ours), and no
//! address claimed by two remote clusters (neither wins: an ambiguity is refused, not
//! settled in favour of whoever published last). The data path (egress and ingress
//! sessions) is not here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ax_core::{addr, Labels, Proto};
use serde::{Deserialize, Serialize};

use crate::state::Published;

/// The chitchat cluster id of the WAN gossip: every gateway of every cluster shares it
/// (cluster names travel in the records).
pub const FEDERATION_ID: &str = "ax-federation";

/// At most this many distinct label sets per exported service: beyond, the record
/// would grow with the backends (the WAN carries services, not rows).
pub const MAX_LABEL_SETS: usize = 8;

/// A federation gateway as it publishes itself (on the WAN and in its own cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    /// Where other clusters' gateways open sessions (`--federation-gateway-advertise-ip`
    /// or `--federation-gateway-ip`, and `--federation-gateway-port`).
    pub ingress: SocketAddrV4,
}

/// One service a cluster offers to the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub proto: Proto,
    /// The virtual address and port.
    pub service: SocketAddrV4,
    /// The name of the app holding the address, if it has one.
    pub name: Option<String>,
    /// The distinct label sets of its backends (a client may connect if it shares a
    /// label with one of them), at most [`MAX_LABEL_SETS`].
    pub labels: Vec<Labels>,
}

impl Export {
    /// What an app's address and name must be here too: a virtual address, a DNS
    /// label, a port that serves.
    fn valid(&self) -> bool {
        addr::check_app_ip(*self.service.ip()).is_ok()
            && self.service.port() != 0
            && self.labels.len() <= MAX_LABEL_SETS
            && self.name.as_deref().is_none_or(|n| ax_dns::wire::check_label(n).is_ok())
    }

    fn key(&self) -> String {
        format!("{}/{}", self.proto.name(), self.service)
    }
}

/// A remote cluster's service, as a gateway re-publishes it into its own cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    /// The cluster it comes from.
    pub cluster: String,
    #[serde(flatten)]
    pub export: Export,
}

impl Import {
    fn valid(&self) -> bool {
        ax_dns::wire::check_label(&self.cluster).is_ok() && self.export.valid()
    }
}

/// What a node publishes about federation: nothing unless it is a gateway. On the WAN a
/// gateway publishes its record and exports; in its cluster its record and imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Federation {
    pub gateway: Option<GatewayRecord>,
    pub exports: Vec<Export>,
    pub imports: Vec<Import>,
}

pub const GATEWAY_KEY: &str = "gateway";
const EXPORT: &str = "export/";
const IMPORT: &str = "import/";

impl Federation {
    pub(crate) fn to_keys(&self, kv: &mut BTreeMap<String, String>) {
        if let Some(g) = &self.gateway {
            kv.insert(GATEWAY_KEY.into(), json(g));
        }
        for e in &self.exports {
            kv.insert(format!("{EXPORT}{}", e.key()), json(e));
        }
        for i in &self.imports {
            kv.insert(format!("{IMPORT}{}/{}", i.cluster, i.export.key()), json(i));
        }
    }

    /// Takes the key-value if it is one of ours (true), skipping a record that does not
    /// check as any bad input is.
    pub(crate) fn take(&mut self, k: &str, v: &str) -> bool {
        if k == GATEWAY_KEY {
            self.gateway = serde_json::from_str(v).ok();
        } else if k.starts_with(EXPORT) {
            self.exports.extend(serde_json::from_str::<Export>(v).ok().filter(Export::valid));
        } else if k.starts_with(IMPORT) {
            self.imports.extend(serde_json::from_str::<Import>(v).ok().filter(Import::valid));
        } else {
            return false;
        }
        true
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize")
}

/// A service row of the cluster, as the summary is made from it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRow<'a> {
    pub proto: Proto,
    pub service: SocketAddrV4,
    pub labels: &'a Labels,
}

/// The cluster's export summary: one record per service (protocol, address, port) of
/// `rows` (every node's rows, this one's included), with the label sets of its
/// backends and the name `name_of` gives its address. Rows at a node's own address
/// (`is_node`: apps without an address of their own) are not exported: a node address
/// means nothing in another cluster.
pub fn summarize<'a>(
    rows: impl Iterator<Item = ServiceRow<'a>>,
    is_node: impl Fn(Ipv4Addr) -> bool,
    name_of: impl Fn(Ipv4Addr) -> Option<String>,
) -> Vec<Export> {
    let mut by: BTreeMap<(Proto, SocketAddrV4), Vec<&Labels>> = BTreeMap::new();
    for r in rows.filter(|r| r.service.port() != 0 && !is_node(*r.service.ip())) {
        let sets = by.entry((r.proto, r.service)).or_default();
        if !sets.contains(&r.labels) {
            sets.push(r.labels);
        }
    }
    by.into_iter()
        .map(|((proto, service), labels)| Export {
            proto,
            service,
            name: name_of(*service.ip()),
            labels: labels.into_iter().take(MAX_LABEL_SETS).cloned().collect(),
        })
        .filter(Export::valid)
        .collect()
}

/// A gateway that claims our cluster's name but is not one of our cluster.
#[derive(Debug, Clone, PartialEq, Eq, Ord, PartialOrd, thiserror::Error)]
#[error("the federation gateway '{name}' at {at} claims the cluster name '{cluster}', but is no member of this cluster: cluster names must be unique in a federation (give one of the clusters another --cluster); its gateway and services are refused")]
pub struct Clash {
    pub name: String,
    pub cluster: String,
    pub at: Ipv4Addr,
}

/// Why a remote service was not taken.
#[derive(Debug, Clone, PartialEq, Eq, Ord, PartialOrd)]
pub enum Refusal {
    /// Its address is one our cluster uses (an app's, a row's, a vservice's, a node's).
    Ours { cluster: String, service: SocketAddrV4 },
    /// Two remote clusters publish the same address.
    Ambiguous { clusters: Vec<String>, ip: Ipv4Addr },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Ours { cluster, service } => write!(f, "cluster '{cluster}' publishes {service}, an address of this cluster: refused (a remote service never shadows a local one)"),
            Refusal::Ambiguous { clusters, ip } => write!(f, "clusters {} all publish services at {ip}: refused for each (nobody wins an ambiguity)", clusters.join(", ")),
        }
    }
}

/// A remote cluster's gateways, as the WAN gossip shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteGateway {
    pub name: String,
    pub cluster: String,
    pub ingress: SocketAddrV4,
}

/// What a gateway takes from the WAN this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Federated {
    /// The other clusters' gateways, by cluster: where sessions to each go.
    pub gateways: BTreeMap<String, Vec<RemoteGateway>>,
    /// The remote services to re-publish into our cluster, sorted.
    pub imports: Vec<Import>,
    pub clashes: Vec<Clash>,
    pub refused: Vec<Refusal>,
}

/// Decides what to take from `wan` (the WAN members that count, this gateway not
/// among them) for a gateway of `cluster`, whose cluster's gateways are `our_gateways`
/// by name (itself included, as our cluster's gossip shows them: a gateway of ours is
/// one of them under the same name and record); `ours` says whether an address is in
/// use in our cluster.
pub fn federate(
    cluster: &str,
    our_gateways: &BTreeMap<String, GatewayRecord>,
    wan: &[Published],
    ours: impl Fn(Ipv4Addr) -> bool,
) -> Federated {
    let mut out = Federated::default();
    // (proto, service) -> cluster -> the record (the smallest, if a cluster's gateways
    // disagree in the middle of a change: the same on every gateway).
    let mut offered: BTreeMap<(Proto, SocketAddrV4), BTreeMap<&str, &Export>> = BTreeMap::new();
    for p in wan {
        let Some(g) = &p.federation.gateway else { continue };
        if p.node.cluster == cluster {
            if our_gateways.get(&p.node.name) != Some(g) {
                out.clashes.push(Clash { name: p.node.name.clone(), cluster: p.node.cluster.clone(), at: p.node.ip });
            }
            continue;
        }
        out.gateways.entry(p.node.cluster.clone()).or_default().push(RemoteGateway {
            name: p.node.name.clone(),
            cluster: p.node.cluster.clone(),
            ingress: g.ingress,
        });
        for e in &p.federation.exports {
            let slot = offered.entry((e.proto, e.service)).or_default().entry(&p.node.cluster).or_insert(e);
            if json(e) < json(*slot) {
                *slot = e;
            }
        }
    }
    // Which clusters publish each address, whatever the port.
    let mut owners: BTreeMap<Ipv4Addr, BTreeSet<&str>> = BTreeMap::new();
    for ((_, service), by) in &offered {
        owners.entry(*service.ip()).or_default().extend(by.keys().copied());
    }
    for (ip, clusters) in &owners {
        if clusters.len() > 1 && !ours(*ip) {
            out.refused
                .push(Refusal::Ambiguous { clusters: clusters.iter().map(|c| c.to_string()).collect(), ip: *ip });
        }
    }
    for ((_, service), by) in offered {
        for (c, e) in by {
            if ours(*service.ip()) {
                out.refused.push(Refusal::Ours { cluster: c.to_string(), service });
            } else if owners[service.ip()].len() == 1 {
                out.imports.push(Import { cluster: c.to_string(), export: e.clone() });
            }
        }
    }
    out.clashes.sort();
    out.clashes.dedup();
    out.refused.sort();
    out.refused.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeRecord;

    fn export(service: &str, name: Option<&str>) -> Export {
        Export {
            proto: Proto::Tcp,
            service: service.parse().unwrap(),
            name: name.map(Into::into),
            labels: vec!["zone=default".parse().unwrap()],
        }
    }

    fn gateway(name: &str, cluster: &str, ip: &str, exports: Vec<Export>) -> Published {
        let ip: Ipv4Addr = ip.parse().unwrap();
        let node = NodeRecord { name: name.into(), cluster: cluster.into(), ip, egress_gateway: false };
        Published::wan(node, GatewayRecord { ingress: SocketAddrV4::new(ip, 6660) }, exports)
    }

    fn ours(gateways: &[&Published]) -> BTreeMap<String, GatewayRecord> {
        gateways.iter().map(|p| (p.node.name.clone(), p.federation.gateway.clone().unwrap())).collect()
    }

    fn mine() -> BTreeMap<String, GatewayRecord> {
        ours(&[&gateway("h00", "c0", "10.12.0.10", vec![])])
    }

    #[test]
    fn one_export_per_service_whatever_the_rows() {
        let (a, b): (Labels, Labels) = ("zone=default".parse().unwrap(), "role=db".parse().unwrap());
        let row = |s: &str, labels| ServiceRow { proto: Proto::Tcp, service: s.parse().unwrap(), labels };
        // Three backends of one service (two label sets), one other service, a row at
        // a node's own address, a row at port 0.
        let rows = [
            row("198.18.20.1:80", &a),
            row("198.18.20.1:80", &a),
            row("198.18.20.1:80", &b),
            row("198.18.20.2:5432", &b),
            row("10.10.0.11:8080", &a),
            row("198.18.20.3:0", &a),
        ];
        let node = |ip: Ipv4Addr| ip == Ipv4Addr::new(10, 10, 0, 11);
        let name = |ip: Ipv4Addr| (ip == Ipv4Addr::new(198, 18, 20, 1)).then(|| "web".to_string());
        let got = summarize(rows.into_iter(), node, name);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].service, "198.18.20.1:80".parse().unwrap());
        assert_eq!(got[0].name.as_deref(), Some("web"));
        assert_eq!(got[0].labels.len(), 2, "distinct label sets, not one per row");
        assert_eq!(got[1].name, None);
    }

    #[test]
    fn label_sets_are_bounded() {
        let labels: Vec<Labels> = (0..20).map(|i| format!("k=v{i}").parse().unwrap()).collect();
        let rows = labels.iter().map(|l| ServiceRow {
            proto: Proto::Tcp,
            service: "198.18.0.1:80".parse().unwrap(),
            labels: l,
        });
        let got = summarize(rows, |_| false, |_| None);
        assert_eq!(got[0].labels.len(), MAX_LABEL_SETS);
    }

    #[test]
    fn remote_services_are_imported_marked_with_their_cluster() {
        let wan = [
            gateway("h10", "c1", "10.12.0.11", vec![export("198.18.20.1:8000", Some("web"))]),
            gateway("h20", "c2", "10.12.0.12", vec![export("198.18.30.1:53", None)]),
        ];
        let got = federate("c0", &mine(), &wan, |_| false);
        assert_eq!(got.imports.len(), 2);
        assert_eq!(got.imports[0], Import { cluster: "c1".into(), export: export("198.18.20.1:8000", Some("web")) });
        assert_eq!(got.imports[1].cluster, "c2");
        assert_eq!(got.gateways["c1"][0].ingress, "10.12.0.11:6660".parse().unwrap());
        assert!(got.clashes.is_empty() && got.refused.is_empty());
    }

    #[test]
    fn two_gateways_of_one_cluster_make_one_import() {
        let wan = [
            gateway("h10", "c1", "10.12.0.11", vec![export("198.18.20.1:8000", Some("web"))]),
            gateway("h12", "c1", "10.12.0.13", vec![export("198.18.20.1:8000", Some("web"))]),
        ];
        let got = federate("c0", &mine(), &wan, |_| false);
        assert_eq!(got.imports.len(), 1);
        assert_eq!(got.gateways["c1"].len(), 2);
    }

    /// A hostile cluster publishes our own virtual addresses (and our names on them),
    /// and an address a friendly cluster uses: it takes over neither, and the friendly
    /// cluster's service is refused too rather than let the last word win.
    #[test]
    fn a_hostile_cluster_shadows_nothing() {
        let our_web: Ipv4Addr = "198.18.10.1".parse().unwrap();
        let wan = [
            gateway(
                "evil",
                "c9",
                "10.12.0.99",
                vec![export("198.18.10.1:80", Some("web")), export("198.18.20.1:8000", Some("web"))],
            ),
            gateway("h10", "c1", "10.12.0.11", vec![export("198.18.20.1:8000", Some("web"))]),
        ];
        let got = federate("c0", &mine(), &wan, |ip| ip == our_web);
        assert!(got.imports.is_empty(), "{:?}", got.imports);
        assert_eq!(
            got.refused,
            vec![
                Refusal::Ours { cluster: "c9".into(), service: "198.18.10.1:80".parse().unwrap() },
                Refusal::Ambiguous { clusters: vec!["c1".into(), "c9".into()], ip: "198.18.20.1".parse().unwrap() },
            ]
        );
        assert!(got.refused[0].to_string().contains("never shadows"));
    }

    #[test]
    fn a_gateway_claiming_our_cluster_name_is_refused() {
        let fellow = gateway("h01", "c0", "10.12.0.14", vec![export("198.18.10.1:80", None)]);
        let wan = [
            // A fellow gateway of our cluster (our gossip shows it): neither a clash
            // nor a source of imports.
            fellow.clone(),
            // Another cluster that took our name.
            gateway("x", "c0", "10.12.0.50", vec![export("198.18.50.1:80", None)]),
            // ... and one that took the name of one of our gateways too.
            gateway("h01", "c0", "10.12.0.51", vec![]),
        ];
        let got = federate("c0", &ours(&[&gateway("h00", "c0", "10.12.0.10", vec![]), &fellow]), &wan, |_| false);
        assert!(got.imports.is_empty());
        assert!(got.gateways.is_empty());
        let clash = |name: &str, at: &str| Clash { name: name.into(), cluster: "c0".into(), at: at.parse().unwrap() };
        assert_eq!(got.clashes, vec![clash("h01", "10.12.0.51"), clash("x", "10.12.0.50")]);
        let msg = got.clashes[0].to_string();
        assert!(msg.contains("'c0'") && msg.contains("must be unique"), "{msg}");
    }

    #[test]
    fn exports_that_do_not_check_are_skipped() {
        let mut f = Federation::default();
        let bad = [
            r#"{"proto":"tcp","service":"10.0.0.1:0","name":null,"labels":[]}"#,
            r#"{"proto":"tcp","service":"127.0.0.1:80","name":null,"labels":[]}"#,
            r#"{"proto":"tcp","service":"198.18.0.1:80","name":"-x","labels":[]}"#,
            r#"{"proto":"sctp","service":"198.18.0.1:80","name":null,"labels":[]}"#,
        ];
        for v in bad {
            assert!(f.take("export/tcp/x", v));
        }
        assert!(f.take(
            "import/c1/tcp/x",
            r#"{"cluster":"c 1","proto":"tcp","service":"198.18.0.1:80","name":null,"labels":[]}"#
        ));
        assert!(!f.take("row/tcp/x", "{}"));
        assert_eq!(f, Federation::default());
        assert!(f.take(
            "export/tcp/x",
            r#"{"proto":"tcp","service":"198.18.0.1:80","name":"web","labels":[{"zone":"default"}]}"#
        ));
        assert_eq!(f.exports, vec![export("198.18.0.1:80", Some("web"))]);
    }

    #[test]
    fn keys_roundtrip() {
        let f = Federation {
            gateway: Some(GatewayRecord { ingress: "10.12.0.10:6660".parse().unwrap() }),
            exports: vec![export("198.18.0.1:80", Some("web"))],
            imports: vec![Import { cluster: "c1".into(), export: export("198.18.20.1:80", None) }],
        };
        let mut kv = BTreeMap::new();
        f.to_keys(&mut kv);
        assert_eq!(kv.len(), 3);
        let mut back = Federation::default();
        for (k, v) in &kv {
            assert!(back.take(k, v));
        }
        assert_eq!(back, f);
    }
}
