//! Gossip over QUIC with real certificates (a test CA from `ax_tls::write_test_pki`), on
//! loopback: every node on the same port of its own 127.0.N.x address, as nodes of a
//! cluster are. Real time: each wait polls with a generous deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ax_cluster::gossip::{Gossip, GossipConfig};
use ax_cluster::quic::QuicTransport;
use ax_cluster::state::{NodeRecord, Published, RowRecord, VsRecord};
use ax_tls::{Files, Reloadable, Tls};
use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, DeletionStatus, FailureDetectorConfig, VersionedValue,
};
use tokio::time::Instant;

/// Long enough for anything that must happen on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// One test's addresses: 127.0.`net`.x, all on one free port.
struct Net {
    net: u8,
    port: u16,
    pki: PathBuf,
}

impl Net {
    fn new(net: u8) -> Net {
        let probe = std::net::UdpSocket::bind((Ipv4Addr::new(127, 0, net, 1), 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        let pki = std::env::temp_dir().join(format!("ax-gossip-quic-{net}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pki);
        Net { net, port, pki }
    }

    fn ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.net, i)
    }

    fn addr(&self, i: u8) -> SocketAddr {
        SocketAddr::from((self.ip(i), self.port))
    }

    /// The certificates of `names` from this test's CA.
    fn certs(&self, names: &[&str]) -> ax_tls::TestPki {
        ax_tls::write_test_pki(&self.pki, &names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// A node named `name` at address `i` (seeded with address 1 unless it is 1), with
    /// the certificate in `files`, publishing one row on its own address and `vservices`.
    async fn node(&self, name: &str, i: u8, files: &Files, vservices: Vec<VsRecord>) -> Gossip {
        let tls = Reloadable::new(Tls::load(files, None).unwrap(), None);
        let transport = QuicTransport::new(&tls).unwrap();
        let me = NodeRecord { name: name.into(), cluster: "appswitch".into(), ip: self.ip(i), egress_gateway: false };
        let seeds = if i == 1 { vec![] } else { vec![self.addr(1).to_string()] };
        let mut config = GossipConfig::new(me.clone(), self.addr(i), seeds, generation());
        config.interval = Duration::from_millis(100);
        transport.self_id().set(config.chitchat_id()).unwrap();
        let mut g = Gossip::start(config, &transport, Some(transport.trust())).await.unwrap();
        g.publish(&Published {
            rows: vec![row(self.ip(i), i)],
            node: me,
            apps: vec![],
            vservices,
            federation: Default::default(),
        })
        .await;
        g
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pki);
    }
}

/// Start time in ms, as the daemon's: later nodes have newer generations.
fn generation() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn row(host: Ipv4Addr, i: u8) -> RowRecord {
    RowRecord {
        app: format!("f000000{i}"),
        proto: ax_core::Proto::Tcp,
        service: format!("198.18.0.{i}:80").parse().unwrap(),
        host: SocketAddr::from((host, 40000)).to_string().parse().unwrap(),
        labels: "zone=default".parse().unwrap(),
    }
}

fn vs(name: &str, version: u64) -> VsRecord {
    let spec = serde_json::json!({"name": name, "ip": "198.18.2.1", "ports": "80:6664", "backends": "127.0.0.1",
        "external": true, "allow_external_backends": true});
    VsRecord { name: name.into(), version, origin: "n3".into(), spec: Some(serde_json::from_value(spec).unwrap()) }
}

/// The (name, address) of the nodes `g` counts as live, sorted.
async fn live(g: &Gossip) -> Vec<(String, Ipv4Addr)> {
    let mut nodes: Vec<_> = g.view().await.1.into_iter().filter(|n| n.live).map(|n| (n.node.name, n.node.ip)).collect();
    nodes.sort();
    nodes
}

/// The hosts of the rows `g` takes in, sorted.
async fn row_hosts(g: &Gossip) -> Vec<Ipv4Addr> {
    let mut hosts: Vec<_> = g.view().await.0.rows.iter().map(|r| *r.host.ip()).collect();
    hosts.sort();
    hosts
}

/// Polls `check` until it holds, for at most [`DEADLINE`].
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "{what}: not after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// For `period`, `check` holds every time it is asked.
async fn throughout<F: std::future::Future<Output = Result<(), String>>>(
    period: Duration,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while start.elapsed() < period {
        if let Err(e) = check().await {
            panic!("{e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three nodes with certificates naming them converge. Node 3 also publishes a row for
/// node 1's host and a vservice record of version 2^64-1 (plus an honest one): the
/// others take neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_and_take_only_what_a_node_may_say() {
    let net = Net::new(31);
    let pki = net.certs(&["n1", "n2", "n3"]);
    let n1 = net.node("n1", 1, &pki.files("n1"), vec![]).await;
    let n2 = net.node("n2", 2, &pki.files("n2"), vec![]).await;
    let mut n3 = net.node("n3", 3, &pki.files("n3"), vec![]).await;
    let mut forged = Published {
        node: NodeRecord { name: "n3".into(), cluster: "appswitch".into(), ip: net.ip(3), egress_gateway: false },
        rows: vec![row(net.ip(3), 3), row(net.ip(1), 9)],
        apps: vec![],
        vservices: vec![vs("honest", generation()), vs("forever", u64::MAX)],
        federation: Default::default(),
    };
    n3.publish(&forged).await;
    let nodes = [&n1, &n2, &n3];
    let took = until("convergence", || async {
        for g in nodes {
            if live(g).await.len() != 2 {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("3 nodes over QUIC converged in {took:?}");
    assert_eq!(live(&n1).await, vec![("n2".into(), net.ip(2)), ("n3".into(), net.ip(3))]);
    assert_eq!(row_hosts(&n2).await, vec![net.ip(1), net.ip(3)], "n3's row for n1's host is not taken");
    let names: Vec<String> = n1.view().await.2.into_iter().map(|v| v.name).collect();
    assert_eq!(names, vec!["honest".to_string()], "a version from the future is not taken");
    // Still true once n3 publishes something else: nothing of it was kept.
    forged.vservices.clear();
    n3.publish(&forged).await;
    until("n3's records gone", || async { n1.view().await.2.is_empty() }).await;
    for g in [n1, n2, n3] {
        g.shutdown().await;
    }
}

/// A node whose certificate comes from another CA, and a plain UDP gossiper without any,
/// both seeded with node 1: neither is ever heard, and neither hears anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_ca_node_and_a_certificate_less_one_are_never_heard() {
    let net = Net::new(32);
    let pki = net.certs(&["n1", "n2"]);
    let foreign = ax_tls::write_test_pki(&net.pki.join("foreign"), &["n3".into()]).unwrap();
    let n1 = net.node("n1", 1, &pki.files("n1"), vec![]).await;
    let n2 = net.node("n2", 2, &pki.files("n2"), vec![]).await;
    let n3 = net.node("n3", 3, &foreign.files("n3"), vec![]).await;
    let rogue_id = ChitchatId::new("n4".to_string(), generation(), net.addr(4));
    let rogue_config = ChitchatConfig {
        chitchat_id: rogue_id,
        cluster_id: "appswitch".into(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: net.addr(4),
        seed_nodes: vec![net.addr(1).to_string()],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    let rogue = spawn_chitchat(rogue_config, vec![("node".into(), "{}".into())], &UdpTransport).await.unwrap();
    until("n1 and n2 see each other", || async {
        live(&n1).await.contains(&("n2".into(), net.ip(2))) && live(&n2).await.contains(&("n1".into(), net.ip(1)))
    })
    .await;
    throughout(Duration::from_secs(5), || async {
        for g in [&n1, &n2] {
            let nodes: Vec<String> = g.view().await.1.into_iter().map(|n| n.node.name).collect();
            if nodes.len() != 1 {
                return Err(format!("a member counts {nodes:?}"));
            }
        }
        if !n3.view().await.1.is_empty() {
            return Err("the foreign-CA node counts someone".into());
        }
        let heard = rogue.with_chitchat(|c| c.live_nodes().count()).await;
        if heard != 1 {
            return Err(format!("the certificate-less gossiper hears {heard} live nodes, itself included"));
        }
        Ok(())
    })
    .await;
    for g in [n1, n2, n3] {
        g.shutdown().await;
    }
    let _ = rogue.shutdown().await;
}

/// A node holding n2's certificate gossips as "n1": nobody counts it (there is no other
/// n1), though it takes part in the gossip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_a_name_its_certificate_does_not_carry_is_not_counted() {
    let net = Net::new(33);
    let pki = net.certs(&["n2", "n3"]);
    let n2 = net.node("n2", 1, &pki.files("n2"), vec![]).await;
    let n3 = net.node("n3", 2, &pki.files("n3"), vec![]).await;
    let impostor = net.node("n1", 3, &pki.files("n2"), vec![]).await;
    until("the impostor hears the others", || async { live(&impostor).await.len() == 2 }).await;
    until("n2 and n3 see each other", || async {
        live(&n2).await.contains(&("n3".into(), net.ip(2))) && live(&n3).await.contains(&("n2".into(), net.ip(1)))
    })
    .await;
    throughout(Duration::from_secs(3), || async {
        for g in [&n2, &n3] {
            let names: Vec<String> = g.view().await.1.into_iter().map(|n| n.node.name).collect();
            if names.contains(&"n1".to_string()) || row_hosts(g).await.contains(&net.ip(3)) {
                return Err(format!("the impostor is counted: {names:?}"));
            }
        }
        Ok(())
    })
    .await;
    for g in [n2, n3, impostor] {
        g.shutdown().await;
    }
}

/// Two nodes hold a certificate for n1: the first to be live keeps the name while it
/// lives; then the other has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_holder_of_a_name_is_refused_while_the_first_lives() {
    let net = Net::new(34);
    let pki = net.certs(&["n1", "n2"]);
    let first = net.node("n1", 1, &pki.files("n1"), vec![]).await;
    let n2 = net.node("n2", 2, &pki.files("n2"), vec![]).await;
    until("n2 counts the first n1", || async { live(&n2).await == vec![("n1".to_string(), net.ip(1))] }).await;
    let second = net.node("n1", 3, &pki.files("n1"), vec![]).await;
    // Once n2 and the second n1 heard each other, n2 has proven the second too.
    until("the second n1 counts n2", || async { live(&second).await.contains(&("n2".to_string(), net.ip(2))) }).await;
    throughout(Duration::from_secs(3), || async {
        let (nodes, hosts) = (live(&n2).await, row_hosts(&n2).await);
        if nodes != vec![("n1".to_string(), net.ip(1))] || hosts != vec![net.ip(1)] {
            return Err(format!("n2 counts {nodes:?} with rows on {hosts:?}"));
        }
        Ok(())
    })
    .await;
    first.shutdown().await;
    until("the second n1 takes the name", || async { live(&n2).await == vec![("n1".to_string(), net.ip(3))] }).await;
    for g in [n2, second] {
        g.shutdown().await;
    }
}

/// What a relay holds of node `name`: its chitchat id, key-values (deletions too) and
/// version.
async fn relayed(relay: &ChitchatHandle, name: &str) -> Option<(ChitchatId, Vec<(String, VersionedValue)>, u64)> {
    relay
        .with_chitchat(|c| {
            let (id, s) = c.node_states().iter().find(|(id, _)| &*id.node_id == name)?;
            let kv = s.key_values_including_deleted().map(|(k, v)| (k.to_string(), v.clone())).collect();
            Some((id.clone(), kv, s.max_version()))
        })
        .await
}

/// The relay rewrites `id`'s state to `kv` (any key it held and `kv` lacks deleted),
/// every value at a version past `max`, so the others take it from the relay.
async fn rewrite(
    relay: &ChitchatHandle,
    id: &ChitchatId,
    held: &[(String, VersionedValue)],
    kv: &[(String, String)],
    max: u64,
) {
    let mut values: Vec<(String, VersionedValue)> = Vec::new();
    let mut version = max;
    for (k, v) in kv {
        version += 1;
        values.push((k.clone(), VersionedValue { value: v.clone(), version, status: DeletionStatus::Set }));
    }
    for (k, _) in held.iter().filter(|(k, _)| !kv.iter().any(|(kk, _)| kk == k)) {
        version += 1;
        let status = DeletionStatus::Deleted(Instant::now());
        values.push((k.clone(), VersionedValue { value: String::new(), version, status }));
    }
    relay.with_chitchat(|c| c.reset_node_state_if_update(id, values.iter().cloned(), version, 0)).await;
}

/// n1's rows as `g` counts them (host ports), and why it says n1's state does not count.
async fn n1_seen_by(g: &Gossip) -> (Vec<u16>, Option<String>) {
    let (remote, nodes, _) = g.view().await;
    let mut ports: Vec<u16> = remote.rows.iter().filter(|r| r.node == "n1").map(|r| r.host.port()).collect();
    ports.sort();
    (ports, nodes.into_iter().find(|n| n.node.name == "n1").and_then(|n| n.problem))
}

/// A member (chitchat alone over QUIC, with n3's certificate) relays n1's state
/// rewritten: first with a row for n1's address it made up, then as n1's older state
/// replayed. n2 takes both from it (it says why n1's state does not count) and counts
/// n1 as n1 last sealed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_relaying_another_nodes_state_rewritten_or_replayed_is_not_believed() {
    let net = Net::new(35);
    let pki = net.certs(&["n1", "n2", "n3"]);
    let mut n1 = net.node("n1", 1, &pki.files("n1"), vec![]).await;
    let n2 = net.node("n2", 2, &pki.files("n2"), vec![]).await;
    let tls = Reloadable::new(Tls::load(&pki.files("n3"), None).unwrap(), None);
    let transport = QuicTransport::new(&tls).unwrap();
    let relay_config = ChitchatConfig {
        chitchat_id: ChitchatId::new("n3".to_string(), generation(), net.addr(3)),
        cluster_id: "appswitch".into(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: net.addr(3),
        seed_nodes: vec![net.addr(1).to_string(), net.addr(2).to_string()],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    let relay = spawn_chitchat(relay_config, vec![], &transport).await.unwrap();
    let has = |kv: &[(String, VersionedValue)], key: &str| kv.iter().any(|(k, v)| k == key && !v.is_deleted());
    let row_key = |port: u16| format!("row/tcp/{}:{port}", net.ip(1));
    until("n2 counts n1's row, and the relay holds n1's seal", || async {
        n1_seen_by(&n2).await == (vec![40000], None)
            && relayed(&relay, "n1").await.is_some_and(|(_, kv, _)| has(&kv, "seal"))
    })
    .await;
    let (_, old, _) = relayed(&relay, "n1").await.unwrap();

    // n1 adds a row; then the relay adds one of its own to n1's state.
    let mut second = row(net.ip(1), 1);
    second.host.set_port(40001);
    let me = NodeRecord { name: "n1".into(), cluster: "appswitch".into(), ip: net.ip(1), egress_gateway: false };
    n1.publish(&Published {
        rows: vec![row(net.ip(1), 1), second],
        node: me,
        apps: vec![],
        vservices: vec![],
        federation: Default::default(),
    })
    .await;
    until("n2 counts n1's second row", || async { n1_seen_by(&n2).await.0 == vec![40000, 40001] }).await;
    until("the relay holds it", || async {
        relayed(&relay, "n1").await.is_some_and(|(_, kv, _)| has(&kv, &row_key(40001)))
    })
    .await;
    let (id, held, max) = relayed(&relay, "n1").await.unwrap();
    let mut forged: Vec<(String, String)> =
        held.iter().filter(|(_, v)| !v.is_deleted()).map(|(k, v)| (k.clone(), v.value.clone())).collect();
    let mut made_up = row(net.ip(1), 9);
    made_up.host.set_port(40002);
    forged.push((row_key(40002), serde_json::to_string(&made_up).unwrap()));
    rewrite(&relay, &id, &held, &forged, max).await;
    until("n2 says n1's state is not as sealed", || async {
        n1_seen_by(&n2).await.1.is_some_and(|p| p.contains("seal does not hold"))
    })
    .await;
    throughout(Duration::from_secs(2), || async {
        match n1_seen_by(&n2).await.0 {
            ports if ports == [40000, 40001] => Ok(()),
            ports => Err(format!("n2 counts n1's rows on ports {ports:?}")),
        }
    })
    .await;

    // The relay replays n1's older state, seal and all.
    let (id, held, max) = relayed(&relay, "n1").await.unwrap();
    let replay: Vec<(String, String)> =
        old.iter().filter(|(_, v)| !v.is_deleted()).map(|(k, v)| (k.clone(), v.value.clone())).collect();
    rewrite(&relay, &id, &held, &replay, max).await;
    until("n2 says n1's state is a replay", || async { n1_seen_by(&n2).await.1.is_some_and(|p| p.contains("replay")) })
        .await;
    assert_eq!(n1_seen_by(&n2).await.0, vec![40000, 40001], "n1 counts as last sealed");
    for g in [n1, n2] {
        g.shutdown().await;
    }
    let _ = relay.shutdown().await;
}
