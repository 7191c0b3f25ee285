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
            app_ip: a.ip,
            driver: a.driver.clone(),
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

pub fn nodes(nodes: &[ax_cluster::gossip::NodeStatus]) -> Vec<NodeView> {
    nodes
        .iter()
        .map(|n| NodeView {
            name: n.node.name.clone(),
            cluster: n.node.cluster.clone(),
            ip: n.node.ip,
            external_ip: n.node.ip,
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
            proto: b.proto,
            flags: b.flags,
            bind_ip: b.requested,
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
        node_ip: node.ip,
        driver: crate::DRIVER.into(),
        ports: t.pool().ranges().to_string(),
        ports_in_use: t.pool().in_use(),
    }
}
