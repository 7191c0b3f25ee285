//! A rogue gossiper, for tests of the cluster's defences: chitchat 0.11 over plain UDP
//! (chitchat's own `UdpTransport`), no certificate, publishing what an attacker would.
//! ax's daemons must ignore it: with `--tls` it never completes a handshake; without,
//! under `ax run` it cannot send from the gossip port; and whatever it publishes that a
//! node may not say of itself is left out.
//!
//! ```text
//! cargo run -p ax-cluster --example rogue -- --listen 10.0.0.9:7946 --seed 10.0.0.1:7946 \
//!     --name n1 --row 198.18.0.1:80 --vservice admin
//! ```
//!
//! Flags:
//! - `--listen IP:PORT` (required): where it gossips from, and the address it advertises.
//! - `--seed IP:PORT`: a node to gossip with (repeat for more).
//! - `--cluster C`: the cluster id (default `appswitch`).
//! - `--name NAME`: the node name it claims (default `rogue`; a member's to impersonate).
//! - `--ip IP`: the node address in its node record (default the `--listen` address).
//! - `--generation N`: its chitchat generation (default: now in ms, newer than any
//!   daemon started before it).
//! - `--row SERVICE[=HOST]`: a row for the service address `SERVICE` (`IP:PORT`, TCP)
//!   served at `HOST` (default `<ip>:40000`; another node's host address to steal its
//!   traffic). Repeat for more.
//! - `--vservice NAME`: a vservice record `NAME`, external, with `--vip IP` (default
//!   198.18.2.1), `--ports VPORT:PORT` (default `80:6664`) and `--backends IP` (default
//!   `127.0.0.1`: the node's own REST port), external backends allowed.
//! - `--version N`: that record's version (default 2^64-1, which would never be deleted).
//!
//! Its node record says it is an egress gateway. It prints `rogue: gossiping` once it
//! runs, then every second `rogue: live` followed by the names of the other nodes it
//! sees as live (none while nobody answers), space-separated and sorted.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ax_cluster::state::{NodeRecord, Published, RowRecord, VsRecord};
use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig};

struct Flags {
    listen: SocketAddr,
    seeds: Vec<String>,
    cluster: String,
    name: String,
    ip: Option<Ipv4Addr>,
    generation: u64,
    rows: Vec<String>,
    vservice: Option<String>,
    vip: String,
    ports: String,
    backends: String,
    version: u64,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Flags, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis() as u64;
    let mut listen = None;
    let mut f = Flags {
        listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        seeds: vec![],
        cluster: "appswitch".into(),
        name: "rogue".into(),
        ip: None,
        generation: now,
        rows: vec![],
        vservice: None,
        vip: "198.18.2.1".into(),
        ports: "80:6664".into(),
        backends: "127.0.0.1".into(),
        version: u64::MAX,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| bad(&e))?),
            "--seed" => f.seeds.push(value),
            "--cluster" => f.cluster = value,
            "--name" => f.name = value,
            "--ip" => f.ip = Some(value.parse().map_err(|e| bad(&e))?),
            "--generation" => f.generation = value.parse().map_err(|e| bad(&e))?,
            "--row" => f.rows.push(value),
            "--vservice" => f.vservice = Some(value),
            "--vip" => f.vip = value,
            "--ports" => f.ports = value,
            "--backends" => f.backends = value,
            "--version" => f.version = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag} (see the doc comment of examples/rogue.rs)")),
        }
    }
    f.listen = listen.ok_or("--listen IP:PORT is required")?;
    Ok(f)
}

/// What it publishes, from the flags.
fn published(f: &Flags) -> Result<Published, String> {
    let ip = match (f.ip, f.listen) {
        (Some(ip), _) => ip,
        (None, SocketAddr::V4(a)) => *a.ip(),
        (None, SocketAddr::V6(_)) => return Err("give --ip for an IPv6 --listen".into()),
    };
    let rows = f
        .rows
        .iter()
        .map(|r| {
            let (service, host) = r.split_once('=').unwrap_or((r, ""));
            let host = if host.is_empty() { format!("{ip}:40000") } else { host.to_string() };
            Ok(RowRecord {
                app: "f0000001".into(),
                proto: ax_core::Proto::Tcp,
                service: service.parse().map_err(|e| format!("--row {r}: {e}"))?,
                host: host.parse().map_err(|e| format!("--row {r}: {e}"))?,
                labels: Default::default(),
            })
        })
        .collect::<Result<_, String>>()?;
    let vservices = match &f.vservice {
        Some(name) => {
            let spec = serde_json::json!({"name": name, "ip": f.vip, "ports": f.ports, "backends": f.backends,
                "external": true, "allow_external_backends": true});
            let spec = serde_json::from_value(spec).map_err(|e| format!("--vservice {name}: {e}"))?;
            vec![VsRecord { name: name.clone(), version: f.version, origin: f.name.clone(), spec: Some(spec) }]
        }
        None => vec![],
    };
    let node = NodeRecord { name: f.name.clone(), cluster: f.cluster.clone(), ip, egress_gateway: true };
    Ok(Published { node, rows, apps: vec![], vservices, federation: Default::default() })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Err(e) = run().await;
    eprintln!("rogue: {e}");
    std::process::exit(2);
}

async fn run() -> Result<std::convert::Infallible, String> {
    let f = parse(std::env::args().skip(1))?;
    let keys = published(&f)?.to_keys().into_iter().collect();
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(f.name.clone(), f.generation, f.listen),
        cluster_id: f.cluster.clone(),
        gossip_interval: Duration::from_millis(250),
        listen_addr: f.listen,
        seed_nodes: f.seeds.clone(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    let handle = spawn_chitchat(config, keys, &UdpTransport).await.map_err(|e| format!("{e:#}"))?;
    println!("rogue: gossiping");
    let me = handle.chitchat_id().clone();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut live: Vec<String> = handle
            .with_chitchat(|c| c.live_nodes().filter(|id| **id != me).map(|id| id.node_id.to_string()).collect())
            .await;
        live.sort();
        live.dedup();
        println!("rogue: live{}", live.iter().map(|n| format!(" {n}")).collect::<String>());
    }
}
