//! A whole cluster in one process: real chitchat with its real codec over a channel
//! transport that can cut links, tokio time paused and advanced. Asserts convergence,
//! failure detection within 5 s, and healing.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ax_cluster::gossip::{Gossip, GossipConfig};
use ax_cluster::state::{NodeRecord, Published, RowRecord};
use chitchat::transport::{ChannelTransport, Transport, TransportExt};
use tokio::time::Instant;

fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, (i / 200) as u8, (i % 200 + 1) as u8)
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((ip(i), 7946))
}

fn published(i: usize) -> Published {
    Published {
        node: NodeRecord { name: format!("n{i}"), cluster: "appswitch".into(), ip: ip(i), egress_gateway: false },
        rows: vec![RowRecord {
            app: format!("f{i:07x}"),
            proto: ax_core::Proto::Tcp,
            service: format!("198.18.{}.{}:80", i / 200, i % 200 + 1).parse().unwrap(),
            host: SocketAddr::from((ip(i), 40000)).to_string().parse().unwrap(),
            labels: "zone=default".parse().unwrap(),
        }],
        apps: vec![],
        vservices: vec![],
    }
}

async fn cluster(n: usize, transport: &dyn Transport) -> Vec<Gossip> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let seeds = if i == 0 { vec![] } else { vec![addr(0).to_string()] };
        let mut g =
            Gossip::start(GossipConfig::new(published(i).node, addr(i), seeds, 1), transport, None).await.unwrap();
        g.publish(&published(i)).await;
        nodes.push(g);
    }
    nodes
}

/// How many other nodes' rows `g` sees.
async fn rows_seen(g: &Gossip) -> usize {
    g.view().await.0.rows.len()
}

async fn until(what: &str, limit: Duration, nodes: &[Gossip], want: impl Fn(usize, usize) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for (i, g) in nodes.iter().enumerate() {
            if !want(i, rows_seen(g).await) {
                all = false;
                break;
            }
        }
        if all {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not after {limit:?} of simulated time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_hundred_and_twenty_nodes_converge_detect_a_cut_node_and_heal() {
    let n = 120;
    let transport = ChannelTransport::with_mtu(65_507);
    let nodes = cluster(n, &transport).await;
    let took = until("convergence", Duration::from_secs(30), &nodes, |_, seen| seen == n - 1).await;
    eprintln!("{n} nodes converged in {took:?} of simulated time");

    // Cut node 7 off from everyone: within 5 s nobody uses its rows.
    let cut = 7;
    for j in (0..n).filter(|j| *j != cut) {
        transport.remove_link(addr(cut), addr(j)).await;
    }
    let took = until("failure detection", Duration::from_secs(5), &nodes, |i, seen| i == cut || seen == n - 2).await;
    eprintln!("a cut node's rows left every table in {took:?}");

    // Restore the links: its rows come back without anyone doing anything.
    for j in (0..n).filter(|j| *j != cut) {
        transport.add_link(addr(cut), addr(j)).await;
    }
    let took = until("healing", Duration::from_secs(30), &nodes, |_, seen| seen == n - 1).await;
    eprintln!("the partition healed in {took:?}");
}

#[tokio::test(start_paused = true)]
async fn another_cluster_is_never_merged() {
    let transport = ChannelTransport::with_mtu(65_507);
    let mut nodes = cluster(3, &transport).await;
    let mut foreign = published(3);
    foreign.node.cluster = "other".into();
    let mut g =
        Gossip::start(GossipConfig::new(foreign.node.clone(), addr(3), vec![addr(0).to_string()], 1), &transport, None)
            .await
            .unwrap();
    g.publish(&foreign).await;
    nodes.push(g);
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (i, g) in nodes.iter().enumerate() {
        let seen = rows_seen(g).await;
        assert_eq!(seen, if i == 3 { 0 } else { 2 }, "node {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lossy_network_still_converges() {
    // One gossip message in five is lost on the way, in both directions.
    let lossy = ChannelTransport::with_mtu(65_507).drop_message(0.2);
    let nodes = cluster(50, lossy.as_ref()).await;
    let took = until("convergence over a lossy network", Duration::from_secs(30), &nodes, |_, seen| seen == 49).await;
    eprintln!("50 nodes converged in {took:?} with 20% of messages lost");
}
