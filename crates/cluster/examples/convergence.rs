//! Convergence: N daemons' gossip from a cold start with one seed, until every node
//! counts every other node's row; and the gossip bytes per node per second over that
//! time. Three runs per size, side by side:
//!
//! - simulated: real chitchat and codec over the channel transport, tokio time paused
//!   (the protocol alone: no CPU or network cost);
//! - UDP and QUIC: real time on loopback (127.1.x.y and 127.2.x.y, one port), the
//!   daemon's transports without and with `--tls` (a test CA, each node its own
//!   certificate, every node proven by a handshake before it counts). All nodes share
//!   this process and its cores, so the QUIC figure at N nodes pays N nodes' handshakes
//!   on one machine; `cpu` is the process's CPU time per node per second until
//!   converged, in % of a core (what one node's daemon would spend); `steady` is the
//!   bytes per node per second in the 3 s after.
//!
//! `cargo run --release -p ax-cluster --example convergence -- 3 100 300` (`--sim`: the
//! simulation alone, without the real runs' minutes of handshakes at 300 nodes).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ax_cluster::gossip::{Gossip, GossipConfig};
use ax_cluster::quic::QuicTransport;
use ax_cluster::state::{NodeRecord, Published, RowRecord};
use ax_cluster::udp::PortCheckedUdp;
use chitchat::transport::{ChannelTransport, Transport};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Node `i`'s address in network `net` (10 for the simulation, 127.x for loopback).
fn ip(net: [u8; 2], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(net[0], net[1], (i / 200) as u8, (i % 200 + 1) as u8)
}

fn published(ip: Ipv4Addr, i: usize) -> Published {
    Published {
        node: NodeRecord { name: format!("n{i}"), cluster: "appswitch".into(), ip, egress_gateway: false },
        rows: vec![RowRecord {
            app: format!("f{i:07x}"),
            proto: ax_core::Proto::Tcp,
            service: format!("198.18.{}.{}:80", i / 200, i % 200 + 1).parse().unwrap(),
            host: format!("{ip}:40000").parse().unwrap(),
            labels: "zone=default".parse().unwrap(),
        }],
        apps: vec![],
        vservices: vec![],
        federation: Default::default(),
    }
}

/// Gives up after this much (simulated or real) time.
const LIMIT: Duration = Duration::from_secs(60);
const STEADY: Duration = Duration::from_secs(3);

/// A node's transport, and what it sent.
enum Wire {
    Channel(ChannelTransport),
    Udp(PortCheckedUdp),
    Quic(Box<QuicTransport>),
}

impl Wire {
    fn transport(&self) -> &dyn Transport {
        match self {
            Wire::Channel(t) => t,
            Wire::Udp(t) => t,
            Wire::Quic(t) => t.as_ref(),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Wire::Channel(t) => t.statistics().num_bytes_total,
            Wire::Udp(t) => t.bytes_sent(),
            Wire::Quic(t) => t.bytes_sent(),
        }
    }
}

struct Outcome {
    took: Option<Duration>,
    /// CPU time of the whole process per node, as a share of one core, until converged.
    cpu: f64,
    /// Bytes per node per second until converged, and in the [`STEADY`] time after.
    rate: f64,
    steady: f64,
}

/// Starts `n` nodes of network `net` on `port`, node `i` on `wires[i]` (or all on the
/// one given), and waits for convergence.
async fn run(n: usize, net: [u8; 2], port: u16, wires: Vec<Wire>) -> Outcome {
    let addr = move |i: usize| SocketAddr::from((ip(net, i), port));
    let wires = Arc::new(wires);
    // All at once, as a cluster started together: each start waits for its node's
    // random phase.
    let start = Instant::now();
    let mut starting = JoinSet::new();
    for i in 0..n {
        let wires = Arc::clone(&wires);
        starting.spawn(async move {
            let seeds = if i == 0 { vec![] } else { vec![addr(0).to_string()] };
            let p = published(ip(net, i), i);
            let mut config = GossipConfig::new(p.node.clone(), addr(i), seeds, 1);
            if let Ok(phi) = std::env::var("PHI") {
                config.phi_threshold = phi.parse().unwrap();
            }
            let wire = &wires[i.min(wires.len() - 1)];
            let trust = match wire {
                Wire::Quic(q) => Some(q.trust()),
                _ => None,
            };
            let mut g = Gossip::start(config, wire.transport(), trust).await.unwrap();
            g.publish(&p).await;
            g
        });
    }
    let nodes = starting.join_all().await;
    let bytes = || wires.iter().map(Wire::bytes).sum::<u64>() as f64;
    let cpu = cpu_seconds();
    loop {
        // Every node asked every time, as each daemon reads its view every round.
        let mut done = true;
        for g in &nodes {
            done &= g.peers_with_rows().await == n - 1;
        }
        if done || start.elapsed() > LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = start.elapsed();
    let (sent, cpu) = (bytes(), cpu_seconds() - cpu);
    tokio::time::sleep(STEADY).await;
    let steady = (bytes() - sent) / n as f64 / STEADY.as_secs_f64();
    for g in nodes {
        g.shutdown().await;
    }
    let per_node_second = |x: f64| x / n as f64 / took.as_secs_f64().max(0.001);
    Outcome { took: (took <= LIMIT).then_some(took), cpu: per_node_second(cpu), rate: per_node_second(sent), steady }
}

/// User and system CPU time of this process so far (/proc/self/stat, in ticks of
/// 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn simulated(n: usize) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(run(n, [10, 9], 7946, vec![Wire::Channel(ChannelTransport::with_mtu(65_507))]))
}

/// A free UDP port on `ip` (the other loopback addresses are as free).
fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

fn real(n: usize, tls: bool) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let net = if tls { [127, 2] } else { [127, 1] };
    let port = free_port(ip(net, 0));
    let pki_dir = std::env::temp_dir().join(format!("ax-convergence-{}", std::process::id()));
    let outcome = rt.block_on(async {
        let wires = if tls {
            let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let pki = ax_tls::write_test_pki(&pki_dir, &names).unwrap();
            names
                .iter()
                .map(|name| {
                    let tls = ax_tls::Tls::load(&pki.files(name), Some(name)).unwrap();
                    Wire::Quic(Box::new(QuicTransport::new(&ax_tls::Reloadable::new(tls, None)).unwrap()))
                })
                .collect()
        } else {
            (0..n).map(|_| Wire::Udp(PortCheckedUdp::new(Vec::new()))).collect()
        };
        run(n, net, port, wires).await
    });
    let _ = std::fs::remove_dir_all(&pki_dir);
    outcome
}

fn secs(o: &Outcome) -> String {
    match o.took {
        Some(t) => format!("{:.2}s", t.as_secs_f64()),
        None => format!("> {}s", LIMIT.as_secs()),
    }
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}x", a / b.max(f64::MIN_POSITIVE))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sim_only = args.iter().any(|a| a == "--sim");
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![3, 100, 300] } else { sizes };
    if sim_only {
        println!("{:>5} | {:>9} {:>9} {:>9}", "nodes", "sim", "sim B/n/s", "steady");
        for n in sizes {
            let sim = simulated(n);
            println!("{n:>5} | {:>9} {:>9.0} {:>9.0}", secs(&sim), sim.rate, sim.steady);
        }
        return;
    }
    println!(
        "{:>5} | {:>9} {:>9} | {:>9} {:>9} {:>6} | {:>8} {:>8} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6}",
        "nodes",
        "sim",
        "sim B/n/s",
        "UDP",
        "QUIC",
        "ratio",
        "UDP cpu",
        "QUIC",
        "UDP B/n/s",
        "QUIC",
        "ratio",
        "steady",
        "QUIC",
        "ratio"
    );
    for n in sizes {
        let sim = simulated(n);
        let udp = real(n, false);
        let quic = real(n, true);
        let t = |o: &Outcome| o.took.unwrap_or(LIMIT).as_secs_f64();
        println!(
            "{n:>5} | {:>9} {:>9.0} | {:>9} {:>9} {:>6} | {:>7.1}% {:>7.1}% | {:>9.0} {:>9.0} {:>6} | {:>9.0} {:>9.0} {:>6}",
            secs(&sim),
            sim.rate,
            secs(&udp),
            secs(&quic),
            ratio(t(&quic), t(&udp)),
            udp.cpu * 100.0,
            quic.cpu * 100.0,
            udp.rate,
            quic.rate,
            ratio(quic.rate, udp.rate),
            udp.steady,
            quic.steady,
            ratio(quic.steady, udp.steady),
        );
    }
}
