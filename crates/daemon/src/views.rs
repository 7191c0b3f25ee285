//! The API's rows, made from the tables (this node's and, as gossiped, the cluster's), as typed values.

use ax_api::{AppView, DaemonInfo, NodeView, ServerView, SocketView};
use ax_cluster::gossip::NodeStatus;
use ax_core::{Driver, Table};

pub fn apps(t: &Table) -> Vec<AppView> {
    let node = t.node();
    t.apps()
        .map(|a| AppView {
            name: a.name.clone().unwrap_or_else(|| format!("<{}>", a.uuid)),
            app_id: a.id.to_string(),
            node_id: node.name.clone(),
            cluster: node.cluster.clone(),
            app_ip: a.ip,
            driver: a.driver.to_string(),
            host_sockets: a.host_sockets,
            labels: a.labels.clone(),
            zones: a.labels.selectors(),
        })
        .collect()
}

/// The service table: this node's rows, then the cluster's.
pub fn servers(t: &Table) -> Vec<ServerView> {
    let node = t.node();
    let local = t.services().map(|b| ServerView {
        node_id: node.name.clone(),
        cluster: node.cluster.clone(),
        app_id: b.app.to_string(),
        proto: b.proto,
        service_addr: b.service,
        ipv4_addr: b.host,
        labels: t.app(b.app).map(|a| a.labels.clone()).unwrap_or_default(),
    });
    let remote = t.remote().rows.iter().map(|r| ServerView {
        node_id: r.node.clone(),
        cluster: node.cluster.clone(),
        app_id: r.app.clone(),
        proto: r.proto,
        service_addr: r.service,
        ipv4_addr: r.host,
        labels: r.labels.clone(),
    });
    local.chain(remote).collect()
}

/// The cluster's nodes (this one first), then, on a federation gateway, the other
/// clusters' gateways as the WAN shows them. A gateway's external address is where
/// other clusters' gateways reach it.
pub fn nodes(nodes: &[NodeStatus], wan: &[NodeStatus]) -> Vec<NodeView> {
    nodes
        .iter()
        .chain(wan)
        .map(|n| {
            let roles: Vec<&str> =
                [(n.node.egress_gateway, "egress-gateway"), (n.gateway.is_some(), "federation-gateway")]
                    .into_iter()
                    .filter_map(|(is, role)| is.then_some(role))
                    .collect();
            NodeView {
                name: n.node.name.clone(),
                cluster: n.node.cluster.clone(),
                ip: n.node.ip,
                external_ip: n.gateway.as_ref().map_or(n.node.ip, |g| *g.ingress.ip()),
                role: if roles.is_empty() { "node".into() } else { roles.join(",") },
                app_count: n.apps,
                live: n.live,
                problem: n.problem.clone(),
            }
        })
        .collect()
}

pub fn sockets(t: &Table) -> Vec<SocketView> {
    let node = t.node();
    t.bindings()
        .map(|b| SocketView {
            id: b.id.clone(),
            node_id: node.name.clone(),
            app_id: b.app.to_string(),
            inode: b.inode,
            proto: b.proto,
            flags: b.flags,
            bind_ip: b.requested,
            backlog: b.backlog,
        })
        .collect()
}

pub fn info(t: &Table, driver: Driver) -> DaemonInfo {
    let node = t.node();
    DaemonInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        node_id: node.name.clone(),
        cluster: node.cluster.clone(),
        node_ip: node.ip,
        driver: driver.to_string(),
        ports: t.pool().ranges().to_string(),
        ports_in_use: t.pool().in_use(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ax_cluster::state::{remote_view, NodeRecord, Published, RowRecord};
    use ax_core::table::NewApp;
    use ax_core::{NodeInfo, PortPool, PortRanges, Proto};
    use serde_json::json;

    fn table() -> Table {
        let ports = ax_core::DaemonPorts::new(true, 7946, 6664, 1024);
        let node = NodeInfo { name: "n1".into(), cluster: "appswitch".into(), ip: "10.0.0.1".parse().unwrap(), ports };
        Table::new(node, PortPool::new(PortRanges::parse("40000-40009").unwrap()), 7)
    }

    #[test]
    fn a_gossiped_row_shows_in_servers_as_typed_json() {
        let mut t = table();
        let node = |name: &str, ip: &str| NodeRecord {
            name: name.into(),
            cluster: "appswitch".into(),
            ip: ip.parse().unwrap(),
            egress_gateway: false,
        };
        let theirs = Published {
            node: node("n2", "10.0.0.2"),
            rows: vec![RowRecord {
                app: "f0000001".into(),
                proto: Proto::Udp,
                service: "198.18.0.1:53".parse().unwrap(),
                host: "10.0.0.2:40000".parse().unwrap(),
                labels: "role=dns".parse().unwrap(),
            }],
            apps: vec![],
            vservices: vec![],
            federation: Default::default(),
        };
        // As the gossip carries it: key-values of JSON, read back on this node.
        let kv = theirs.to_keys();
        let read = Published::from_keys(kv.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        t.set_remote(remote_view(&node("n1", "10.0.0.1"), &[read]));
        let rows = servers(&t);
        assert_eq!(
            serde_json::to_value(rows).unwrap(),
            json!([{
                "node_id": "n2", "cluster": "appswitch", "app_id": "f0000001", "proto": "udp",
                "service_addr": "198.18.0.1:53", "ipv4_addr": "10.0.0.2:40000", "labels": {"role": "dns"}
            }])
        );
    }

    #[test]
    fn an_app_shows_its_labels_as_an_object_and_its_zones_as_a_list() {
        let mut t = table();
        let new = NewApp {
            ip: Some("198.18.5.1".parse().unwrap()),
            labels: "zone=default,team=a".parse().unwrap(),
            pid: 1,
            driver: ax_core::Driver::User,
            ..Default::default()
        };
        t.add_app(new).unwrap();
        let j = serde_json::to_value(apps(&t)).unwrap();
        assert_eq!(j[0]["labels"], json!({"zone": "default", "team": "a"}));
        assert_eq!(j[0]["zones"], json!(["zone==default", "team==a"]));
        assert_eq!(j[0]["app_ip"], "198.18.5.1");
    }

    #[test]
    fn gateways_show_their_role_and_wan_address() {
        use ax_cluster::federation::GatewayRecord;
        let status = |name: &str, cluster: &str, ip: &str, egress: bool, gateway: Option<&str>| NodeStatus {
            node: NodeRecord {
                name: name.into(),
                cluster: cluster.into(),
                ip: ip.parse().unwrap(),
                egress_gateway: egress,
            },
            live: true,
            apps: 0,
            problem: None,
            gateway: gateway.map(|g| GatewayRecord { ingress: g.parse().unwrap() }),
        };
        let lan = [
            status("h00", "c0", "10.10.0.10", false, Some("10.12.0.10:6660")),
            status("h01", "c0", "10.10.0.11", false, None),
            status("e", "c0", "10.10.0.12", true, Some("10.12.0.12:6660")),
        ];
        let wan = [status("h10", "c1", "10.12.0.11", false, Some("203.0.113.9:6660"))];
        let v = nodes(&lan, &wan);
        let roles: Vec<(&str, &str, String)> =
            v.iter().map(|n| (n.name.as_str(), n.role.as_str(), n.external_ip.to_string())).collect();
        assert_eq!(
            roles,
            [
                ("h00", "federation-gateway", "10.12.0.10".to_string()),
                ("h01", "node", "10.10.0.11".to_string()),
                ("e", "egress-gateway,federation-gateway", "10.12.0.12".to_string()),
                ("h10", "federation-gateway", "203.0.113.9".to_string()),
            ]
        );
        assert_eq!(v[3].cluster, "c1");
    }
}
