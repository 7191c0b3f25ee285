//! Simulated convergence: N daemons' gossip (real chitchat, real codec, channel
//! transport, tokio time paused) from a cold start with one seed; prints the simulated
//! time until every node sees every other node's row, and the gossip bytes per node per
//! second over that time. `cargo run --release -p ax-cluster --example convergence -- 10 100 300`

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ax_cluster::gossip::{Gossip, GossipConfig};
use ax_cluster::state::{NodeRecord, Published, RowRecord};
use chitchat::transport::ChannelTransport;
use tokio::time::Instant;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 9, (i / 200) as u8, (i % 200 + 1) as u8), 7946))
}

fn published(i: usize) -> Published {
    let SocketAddr::V4(a) = addr(i) else { unreachable!() };
    Published {
        node: NodeRecord { name: format!("n{i}"), cluster: "appswitch".into(), ip: *a.ip(), egress_gateway: false },
        rows: vec![RowRecord {
            app: format!("f{i:07x}"),
            proto: ax_core::Proto::Tcp,
            service: format!("198.18.{}.{}:80", i / 200, i % 200 + 1).parse().unwrap(),
            host: format!("{}:40000", a.ip()).parse().unwrap(),
            labels: "zone=default".parse().unwrap(),
        }],
        apps: vec![],
        vservices: vec![],
    }
}

/// Gives up after this much simulated time.
const LIMIT: Duration = Duration::from_secs(30);

async fn run(n: usize) -> (Option<Duration>, f64) {
    let transport = ChannelTransport::with_mtu(65_507);
    let mut nodes = Vec::new();
    for i in 0..n {
        let seeds = if i == 0 { vec![] } else { vec![addr(0).to_string()] };
        let mut config = GossipConfig::new(published(i).node, addr(i), seeds, 1);
        if let Ok(phi) = std::env::var("PHI") {
            config.phi_threshold = phi.parse().unwrap();
        }
        let mut g = Gossip::start(config, &transport, None).await.unwrap();
        g.publish(&published(i)).await;
        nodes.push(g);
    }
    let start = Instant::now();
    loop {
        let mut done = true;
        for g in &nodes {
            if g.peers_with_rows().await != n - 1 {
                done = false;
                break;
            }
        }
        if done || start.elapsed() > LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = start.elapsed();
    let bytes = transport.statistics().num_bytes_total as f64;
    for g in nodes {
        g.shutdown().await;
    }
    ((took <= LIMIT).then_some(took), bytes / n as f64 / took.as_secs_f64().max(0.001))
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10, 100, 300] } else { sizes };
    println!("{:>6} {:>22} {:>26}", "nodes", "convergence (simulated)", "gossip bytes/node/s");
    for n in sizes {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let (took, rate) = rt.block_on(run(n));
        match took {
            Some(t) => println!("{n:>6} {:>21.2}s {rate:>26.0}", t.as_secs_f64()),
            None => println!("{n:>6} {:>22} {rate:>26.0}", format!("> {}s", LIMIT.as_secs())),
        }
    }
}
