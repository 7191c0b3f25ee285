//! The API's rows, made from the tables.

use ax_api::{AppView, DaemonInfo, NodeView, ServerView, SocketView};
use ax_core::Table;

pub fn apps(t: &Table) -> Vec<AppView> {
    let node = t.node();
    t.apps()
        .map(|a| AppView {
            name: a.name.clone().unwrap_or_else(|| format!("<{}>", a.uuid)),
            app_id: a.id.to_string(),
            node_id: node.name.clone(),
            cluster: node.cluster.clone(),
            app_ip: a.ip.to_string(),
            driver: a.driver.clone(),
            labels: a.labels.to_string(),
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
        proto: b.proto.name().into(),
        service_addr: b.service.to_string(),
        ipv4_addr: b.host.to_string(),
        labels: t.app(b.app).map(|a| a.labels.to_string()).unwrap_or_default(),
    });
    let remote = t.remote().rows.iter().map(|r| ServerView {
        node_id: r.node.clone(),
        cluster: node.cluster.clone(),
        app_id: r.app.clone(),
        proto: r.proto.name().into(),
        service_addr: r.service.to_string(),
        ipv4_addr: r.host.to_string(),
        labels: r.labels.to_string(),
    });
    local.chain(remote).collect()
}

pub fn nodes(nodes: &[ax_cluster::gossip::NodeStatus]) -> Vec<NodeView> {
    nodes
        .iter()
        .map(|n| NodeView {
            name: n.node.name.clone(),
            cluster: n.node.cluster.clone(),
            ip: n.node.ip.to_string(),
            external_ip: n.node.ip.to_string(),
            role: if n.node.egress_gateway { "egress-gateway" } else { "node" }.into(),
            app_count: n.apps,
            live: n.live,
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
            proto: b.proto.name().into(),
            flags: b.flags,
            bind_ip: b.requested.to_string(),
            backlog: b.backlog,
        })
        .collect()
}

pub fn info(t: &Table) -> DaemonInfo {
    let node = t.node();
    DaemonInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        node_id: node.name.clone(),
        cluster: node.cluster.clone(),
        node_ip: node.ip.to_string(),
        driver: crate::DRIVER.into(),
        ports: t.pool().ranges().to_string(),
        ports_in_use: t.pool().in_use(),
    }
}
