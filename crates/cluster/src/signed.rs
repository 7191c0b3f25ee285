//! Sealed state (`--tls`): what a node publishes counts only as that node signed it.
//!
//! Gossip relays every node's key-values through the others, and chitchat does not say
//! who wrote a value: a node holding a certificate of the cluster could rewrite another
//! node's state as it relays it (a row for that node's address, a vservice record), or
//! replay an old one. So each node publishes, beside its records:
//!
//! - `cert`: its certificate chain (base64 DER, leaf first);
//! - `seal`: a signature by that certificate's key over its chitchat id (name,
//!   generation, gossip address), a sequence number that only grows, and every other
//!   key-value, set after them (so a peer holding the seal holds what it covers).
//!
//! A reader counts a node's state only as last sealed: by a certificate from the CA,
//! for a node, naming the node, over exactly the key-values it holds, with a sequence
//! past the last it took. A state that does not hold leaves the last one that did
//! (or nothing). A node seals again every [`RESEAL`] even when nothing changed, and a
//! state whose sequence has not moved for [`STALE`] no longer counts: a relay cannot
//! keep a stopped node's last state in use for longer.
//!
//! What a member can still do to another member's state is delay it: chitchat's
//! versions and heartbeats are not signed, so a relay announcing a node's state at a
//! version past the real one makes the others wait for versions that never come. That
//! node's state then stops counting after [`STALE`] (never a forged one); the readers
//! log that its state does not hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ax_tls::{Reloadable, Signature, SignatureError};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chitchat::{ChitchatId, NodeState};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::state::Published;

pub const CERT_KEY: &str = "cert";
pub const SEAL_KEY: &str = "seal";

/// How often a node seals its state again when nothing changed.
pub const RESEAL: Duration = Duration::from_secs(20);
/// How long a node's state counts after its sequence last moved.
pub const STALE: Duration = Duration::from_secs(60);
/// How often a node's certificate is checked again against the files in use (it may
/// have expired, or the CA been replaced).
const RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Seal {
    seq: u64,
    scheme: u16,
    sig: String,
}

/// The bytes a node signs: a domain tag, its chitchat id, the sequence, and every
/// key-value but the seal, in key order, each length-prefixed (no two states share
/// an encoding).
fn message<'a>(id: &ChitchatId, seq: u64, kv: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut m = b"ax gossip state v1\0".to_vec();
    let mut field = |bytes: &[u8]| {
        m.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        m.extend_from_slice(bytes);
    };
    field(id.node_id.as_bytes());
    field(&id.generation_id.to_be_bytes());
    field(id.gossip_advertise_addr.to_string().as_bytes());
    field(&seq.to_be_bytes());
    for (k, v) in kv.filter(|(k, _)| *k != SEAL_KEY) {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    m
}

fn encode_chain(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| BASE64.encode(c)).collect::<Vec<_>>().join(",")
}

fn decode_chain(value: &str) -> Option<Vec<CertificateDer<'static>>> {
    value.split(',').map(|c| BASE64.decode(c).ok().map(CertificateDer::from)).collect()
}

/// Seals what this node publishes.
#[derive(Debug)]
pub struct Sealer {
    tls: Arc<Reloadable>,
    seq: u64,
    sealed: Option<Instant>,
}

impl Sealer {
    pub fn new(tls: Arc<Reloadable>) -> Sealer {
        Sealer { tls, seq: 0, sealed: None }
    }

    /// Whether the state should be sealed again though it did not change.
    pub fn due(&self) -> bool {
        self.sealed.is_none_or(|at| at.elapsed() >= RESEAL)
    }

    /// Adds the certificate and the seal to `keys` (this node's, as `id`). The
    /// sequence is the wall clock in ms, or one past the last when that is later.
    pub fn seal(&mut self, id: &ChitchatId, keys: &mut BTreeMap<String, String>) -> Result<(), SignatureError> {
        let tls = self.tls.current();
        keys.insert(CERT_KEY.into(), encode_chain(tls.chain()));
        keys.remove(SEAL_KEY);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let seq = now_ms.max(self.seq + 1);
        let signature = tls.sign(&message(id, seq, keys.iter().map(|(k, v)| (k.as_str(), v.as_str()))))?;
        let seal = Seal { seq, scheme: signature.scheme, sig: BASE64.encode(&signature.bytes) };
        keys.insert(SEAL_KEY.into(), serde_json::to_string(&seal).expect("a seal serializes"));
        (self.seq, self.sealed) = (seq, Some(Instant::now()));
        Ok(())
    }
}

/// Why a node's current key-values do not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    #[error("they carry no seal")]
    Missing,
    #[error("their seal or certificate cannot be read")]
    Unreadable,
    #[error("their certificate is refused: {0}")]
    Certificate(String),
    #[error("their certificate does not name the node")]
    NotNamed,
    #[error("their seal does not hold: {0}")]
    Signature(SignatureError),
    #[error("their seal is older than one already taken (a replay)")]
    Replayed,
    #[error("their seal is over {} s old (a stopped node, a replay, or a clock more than {} s off)", STALE.as_secs(), SKEW.as_secs())]
    Stale,
    #[error("too many nodes are known to check another")]
    Crowded,
}

impl Unsealed {
    /// Whether the node's certificate itself is at fault (then its last state goes
    /// too: it was sealed with a certificate no longer accepted).
    fn certificate(&self) -> bool {
        matches!(self, Unsealed::Certificate(_) | Unsealed::NotNamed)
    }
}

/// A node's state as the seals let it count.
#[derive(Debug, Clone, Default)]
pub struct Sealed {
    /// The last state that held (None if none did, or its certificate is no longer
    /// accepted).
    pub state: Option<Published>,
    /// Whether its sequence moved within [`STALE`].
    pub fresh: bool,
    /// Why the node's current key-values do not count, if they do not.
    pub problem: Option<Unsealed>,
}

impl Sealed {
    /// The state if it counts now.
    pub fn live(self) -> Option<Published> {
        self.state.filter(|_| self.fresh)
    }
}

/// What was taken of each node.
struct Known {
    /// The chitchat version of the node's state at the last check, and when.
    version: Option<u64>,
    checked: Instant,
    seq: u64,
    advanced: Instant,
    state: Option<Published>,
    /// The certificate chain (as published) that sealed `state`.
    cert: String,
    problem: Option<Unsealed>,
}

/// Nodes remembered at once (ids chitchat holds: a member can announce many); past
/// this, those whose state never held are forgotten first.
const KNOWN: usize = 4096;
/// Certificate chains whose check is remembered ([`RECHECK`]).
const CHAINS: usize = 1024;
/// The largest `cert` value read, and the most certificates in a chain.
const MAX_CERT: usize = 16 * 1024;
const MAX_CHAIN: usize = 4;
/// How far a seal's sequence (its sealer's wall clock) may lag this node's clock and
/// still count as fresh, beyond [`STALE`]: the nodes' clocks must agree within this.
pub const SKEW: Duration = Duration::from_secs(120);

/// A chain's check: its leaf, or why it is refused.
type Checked = Result<CertificateDer<'static>, Unsealed>;

/// Checks the nodes' seals, remembering the last state of each that held.
pub struct Seals {
    tls: Arc<Reloadable>,
    known: Mutex<HashMap<ChitchatId, Known>>,
    /// Each chain's leaf if the CA (the files in use) accepted it, and when asked.
    chains: Mutex<HashMap<String, (Checked, Instant)>>,
}

impl Seals {
    pub fn new(tls: Arc<Reloadable>) -> Seals {
        Seals { tls, known: Mutex::default(), chains: Mutex::default() }
    }

    /// `id`'s state at `now_ms` (wall clock), as far as its seals hold (checked again
    /// when the state changed, and every [`RECHECK`]).
    pub fn state(&self, id: &ChitchatId, node: &NodeState, now_ms: u64) -> Sealed {
        let now = Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN && !known.contains_key(id) {
            known.retain(|_, k| k.state.is_some());
            if known.len() >= KNOWN {
                return Sealed { state: None, fresh: false, problem: Some(Unsealed::Crowded) };
            }
        }
        let k = known.entry(id.clone()).or_insert_with(|| Known {
            version: None,
            checked: now,
            seq: 0,
            advanced: now,
            state: None,
            cert: String::new(),
            problem: None,
        });
        if k.version != Some(node.max_version()) || now.duration_since(k.checked) >= RECHECK {
            (k.version, k.checked) = (Some(node.max_version()), now);
            match self.check(id, node, k.seq) {
                Ok((seq, state, cert)) => {
                    if seq > k.seq {
                        (k.seq, k.advanced) = (seq, now);
                    }
                    (k.state, k.cert, k.problem) = (state, cert, None);
                }
                Err(e) => {
                    // The state last taken goes with its certificate, whatever is wrong
                    // with the current key-values.
                    if e.certificate() || self.leaf(&k.cert, &id.node_id).is_err() {
                        k.state = None;
                    }
                    k.problem = Some(e);
                }
            }
        }
        // Fresh: its sequence moved lately, here, and was sealed lately by its clock (a
        // captured seal replayed later is old by its own sequence).
        let sealed_ago = Duration::from_millis(now_ms.saturating_sub(k.seq));
        let fresh = now.duration_since(k.advanced) < STALE && sealed_ago < STALE + SKEW;
        let problem = k.problem.clone().or((!fresh && k.state.is_some()).then_some(Unsealed::Stale));
        Sealed { state: k.state.clone(), fresh, problem }
    }

    /// The state last taken of `id`, without checking anything (for a dead node).
    pub fn last(&self, id: &ChitchatId) -> Option<Published> {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).get(id).and_then(|k| k.state.clone())
    }

    /// Forgets the nodes chitchat no longer knows.
    pub fn retain(&self, keep: impl Fn(&ChitchatId) -> bool) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| keep(id));
    }

    /// The leaf of the chain published as `cert`, if the CA accepts the chain (a node's,
    /// valid now) and it names node `name`. Checks of a chain are remembered for
    /// [`RECHECK`].
    fn leaf(&self, cert: &str, name: &str) -> Checked {
        let now = Instant::now();
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        let leaf = match chains.get(cert) {
            Some((verdict, at)) if now.duration_since(*at) < RECHECK => verdict.clone(),
            _ => {
                let verdict = self.check_chain(cert);
                if chains.len() >= CHAINS {
                    chains.retain(|_, (_, at)| now.duration_since(*at) < RECHECK);
                    if chains.len() >= CHAINS {
                        chains.clear();
                    }
                }
                chains.insert(cert.to_string(), (verdict.clone(), now));
                verdict
            }
        }?;
        if !ax_tls::names(&leaf, name) {
            return Err(Unsealed::NotNamed);
        }
        Ok(leaf)
    }

    fn check_chain(&self, cert: &str) -> Checked {
        if cert.len() > MAX_CERT {
            return Err(Unsealed::Unreadable);
        }
        let chain = decode_chain(cert).filter(|c| !c.is_empty() && c.len() <= MAX_CHAIN).ok_or(Unsealed::Unreadable)?;
        self.tls.current().check(&chain).map_err(Unsealed::Certificate)?;
        Ok(chain.into_iter().next().expect("a chain has a leaf"))
    }

    /// The sequence, records and certificate of `id`'s current key-values, if their seal
    /// holds and is not older than `last`.
    fn check(
        &self,
        id: &ChitchatId,
        node: &NodeState,
        last: u64,
    ) -> Result<(u64, Option<Published>, String), Unsealed> {
        let seal = node.get(SEAL_KEY).ok_or(Unsealed::Missing)?;
        let seal: Seal = serde_json::from_str(seal).map_err(|_| Unsealed::Unreadable)?;
        if seal.seq < last {
            return Err(Unsealed::Replayed);
        }
        let cert = node.get(CERT_KEY).ok_or(Unsealed::Unreadable)?;
        let leaf = self.leaf(cert, &id.node_id)?;
        let signature =
            Signature { scheme: seal.scheme, bytes: BASE64.decode(&seal.sig).map_err(|_| Unsealed::Unreadable)? };
        self.tls
            .current()
            .verify_signature(&leaf, &message(id, seal.seq, node.key_values()), &signature)
            .map_err(Unsealed::Signature)?;
        Ok((seal.seq, Published::from_keys(node.key_values()), cert.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use ax_tls::{TestPki, Tls};
    use chitchat::{Chitchat, ChitchatConfig, FailureDetectorConfig};

    use super::*;
    use crate::state::{NodeRecord, RowRecord};

    struct Pki {
        dir: PathBuf,
        pki: TestPki,
    }

    impl Pki {
        fn new(tag: &str, names: &[&str]) -> Pki {
            let dir = std::env::temp_dir().join(format!("ax-seal-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let pki = ax_tls::write_test_pki(&dir, &names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            Pki { dir, pki }
        }

        fn tls(&self, name: &str) -> Arc<Reloadable> {
            Reloadable::new(Tls::load(&self.pki.files(name), Some(name)).unwrap(), Some(name.into()))
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }

    fn id(name: &str) -> ChitchatId {
        ChitchatId::new(name.to_string(), 7, SocketAddr::from(([10, 0, 0, 1], 7946)))
    }

    /// A chitchat instance whose own state is the node `id`'s (no network).
    fn node(id: &ChitchatId) -> Chitchat {
        let config = ChitchatConfig {
            chitchat_id: id.clone(),
            cluster_id: "appswitch".into(),
            gossip_interval: Duration::from_secs(1),
            listen_addr: id.gossip_advertise_addr,
            seed_nodes: vec![],
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        Chitchat::with_chitchat_id_and_seeds(config, tokio::sync::watch::channel(HashSet::new()).1, vec![])
    }

    fn published(port: u16) -> Published {
        let ip = "10.0.0.1".parse().unwrap();
        Published {
            node: NodeRecord { name: "n1".into(), cluster: "appswitch".into(), ip, egress_gateway: false },
            rows: vec![RowRecord {
                app: "f0000001".into(),
                proto: ax_core::Proto::Tcp,
                service: "198.18.0.1:80".parse().unwrap(),
                host: format!("10.0.0.1:{port}").parse().unwrap(),
                labels: "zone=default".parse().unwrap(),
            }],
            apps: vec![],
            vservices: vec![],
            federation: Default::default(),
        }
    }

    /// `p`'s keys, sealed by `sealer` as `id`.
    fn sealed(sealer: &mut Sealer, id: &ChitchatId, p: &Published) -> BTreeMap<String, String> {
        let mut keys = p.to_keys();
        sealer.seal(id, &mut keys).unwrap();
        keys
    }

    fn set(c: &mut Chitchat, keys: &BTreeMap<String, String>) {
        for (k, v) in keys {
            c.self_node_state().set(k, v);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sealed_state_counts_and_a_changed_one_leaves_the_last_seal() {
        let pki = Pki::new("changed", &["n1", "n2"]);
        let n1 = id("n1");
        let (mut sealer, seals) = (Sealer::new(pki.tls("n1")), Seals::new(pki.tls("n2")));
        let mut c = node(&n1);
        set(&mut c, &sealed(&mut sealer, &n1, &published(40000)));
        let s = seals.state(&n1, c.self_node_state(), now());
        assert_eq!((s.state, s.fresh, s.problem), (Some(published(40000)), true, None));

        // A relay adds a row for n1's address: the last seal stands, and says why.
        let mut forged = published(40000).to_keys();
        forged.insert("row/tcp/10.0.0.1:40001".into(), published(40001).to_keys()["row/tcp/10.0.0.1:40001"].clone());
        set(&mut c, &forged);
        let s = seals.state(&n1, c.self_node_state(), now());
        assert_eq!(s.state, Some(published(40000)));
        assert_eq!(s.problem, Some(Unsealed::Signature(SignatureError::Invalid)));
        assert!(s.problem.unwrap().to_string().contains("seal does not hold"));

        // n1 seals again: its state counts as it is.
        c.self_node_state().delete("row/tcp/10.0.0.1:40000");
        set(&mut c, &sealed(&mut sealer, &n1, &published(40001)));
        let s = seals.state(&n1, c.self_node_state(), now());
        assert_eq!((s.state, s.problem), (Some(published(40001)), None));
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_seal_replayed_is_refused() {
        let pki = Pki::new("replay", &["n1", "n2"]);
        let n1 = id("n1");
        let (mut sealer, seals) = (Sealer::new(pki.tls("n1")), Seals::new(pki.tls("n2")));
        let mut c = node(&n1);
        let old = sealed(&mut sealer, &n1, &published(40000));
        set(&mut c, &sealed(&mut sealer, &n1, &published(40000)));
        assert_eq!(seals.state(&n1, c.self_node_state(), now()).live(), Some(published(40000)));
        set(&mut c, &old);
        let s = seals.state(&n1, c.self_node_state(), now());
        assert_eq!((s.state, s.problem), (Some(published(40000)), Some(Unsealed::Replayed)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_seal_counts_only_by_a_certificate_from_the_ca_naming_the_node() {
        let pki = Pki::new("who", &["n1", "n2"]);
        let foreign = Pki::new("who-foreign", &["n1"]);
        let n1 = id("n1");
        let cases = [
            (Sealer::new(pki.tls("n2")), Unsealed::NotNamed),
            (
                Sealer::new(foreign.tls("n1")),
                Unsealed::Certificate("it is not signed by the CA given with --tls-ca-cert".into()),
            ),
        ];
        for (mut sealer, why) in cases {
            let (seals, mut c) = (Seals::new(pki.tls("n2")), node(&n1));
            set(&mut c, &sealed(&mut sealer, &n1, &published(40000)));
            let s = seals.state(&n1, c.self_node_state(), now());
            assert_eq!((s.state, s.problem), (None, Some(why)));
        }
        // Keys without a seal, or with one that is not JSON, count for nothing.
        let (seals, mut c) = (Seals::new(pki.tls("n2")), node(&n1));
        set(&mut c, &published(40000).to_keys());
        assert_eq!(seals.state(&n1, c.self_node_state(), now()).problem, Some(Unsealed::Missing));
        c.self_node_state().set(SEAL_KEY, "{");
        let s = seals.state(&n1, c.self_node_state(), now());
        assert_eq!((s.state, s.problem), (None, Some(Unsealed::Unreadable)));
    }

    /// The seal covers the generation: the same keys under another generation (a
    /// restart a relay made up) do not hold.
    #[tokio::test(start_paused = true)]
    async fn a_seal_holds_for_its_generation_only() {
        let pki = Pki::new("generation", &["n1", "n2"]);
        let n1 = id("n1");
        let (mut sealer, seals) = (Sealer::new(pki.tls("n1")), Seals::new(pki.tls("n2")));
        let keys = sealed(&mut sealer, &n1, &published(40000));
        let later = ChitchatId::new("n1".to_string(), n1.generation_id + 1, n1.gossip_advertise_addr);
        let mut c = node(&later);
        set(&mut c, &keys);
        let s = seals.state(&later, c.self_node_state(), now());
        assert_eq!((s.state, s.problem), (None, Some(Unsealed::Signature(SignatureError::Invalid))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_whose_seal_stops_moving_stops_counting() {
        let pki = Pki::new("stale", &["n1", "n2"]);
        let n1 = id("n1");
        let (mut sealer, seals) = (Sealer::new(pki.tls("n1")), Seals::new(pki.tls("n2")));
        let mut c = node(&n1);
        set(&mut c, &sealed(&mut sealer, &n1, &published(40000)));
        assert!(seals.state(&n1, c.self_node_state(), now()).fresh);
        assert!(!sealer.due());
        tokio::time::advance(RESEAL).await;
        assert!(sealer.due(), "a node seals again every {RESEAL:?}");
        tokio::time::advance(STALE - RESEAL).await;
        let s = seals.state(&n1, c.self_node_state(), now());
        assert_eq!((s.state.is_some(), s.fresh, s.problem.clone()), (true, false, Some(Unsealed::Stale)));
        assert_eq!(s.live(), None);
        set(&mut c, &sealed(&mut sealer, &n1, &published(40000)));
        assert_eq!(seals.state(&n1, c.self_node_state(), now()).live(), Some(published(40000)));
    }

    /// A reader that never saw a node is shown seals captured long ago: they hold, but
    /// their sequence (the sealer's clock) says they are old.
    #[tokio::test(start_paused = true)]
    async fn a_seal_replayed_long_after_is_stale_by_its_own_clock() {
        let pki = Pki::new("late", &["n1", "n2"]);
        let n1 = id("n1");
        let (mut sealer, seals) = (Sealer::new(pki.tls("n1")), Seals::new(pki.tls("n2")));
        let mut c = node(&n1);
        set(&mut c, &sealed(&mut sealer, &n1, &published(40000)));
        let later = now() + (STALE + SKEW).as_millis() as u64 + 1;
        let s = seals.state(&n1, c.self_node_state(), later);
        assert_eq!((s.state.is_some(), s.fresh, s.problem.clone()), (true, false, Some(Unsealed::Stale)));
        assert!(s.problem.unwrap().to_string().contains("clock"));
        assert!(seals.state(&n1, c.self_node_state(), now()).fresh, "within the skew it counts");
    }

    /// The state last taken goes once its certificate is no longer accepted, though the
    /// node's current key-values fail for another reason.
    #[tokio::test(start_paused = true)]
    async fn a_state_kept_goes_with_its_certificate() {
        let pki = Pki::new("recheck", &["n1", "n2"]);
        let other = Pki::new("recheck-other", &["n2"]);
        let n1 = id("n1");
        let reader = pki.pki.files("n2");
        let tls = Reloadable::new(Tls::load(&reader, Some("n2")).unwrap(), Some("n2".into()));
        let (mut sealer, seals) = (Sealer::new(pki.tls("n1")), Seals::new(tls.clone()));
        let mut c = node(&n1);
        set(&mut c, &sealed(&mut sealer, &n1, &published(40000)));
        assert!(seals.state(&n1, c.self_node_state(), now()).live().is_some());
        // A relay's change: the last seal stands...
        c.self_node_state().set("row/tcp/10.0.0.1:40009", "{}");
        assert!(seals.state(&n1, c.self_node_state(), now()).state.is_some());
        // ...until the reader's CA is replaced (n1's certificate is of the old one).
        let theirs = other.pki.files("n2");
        for (from, to) in [(&theirs.ca, &reader.ca), (&theirs.cert, &reader.cert), (&theirs.key, &reader.key)] {
            std::fs::copy(from, to).unwrap();
        }
        tls.reload().unwrap();
        tokio::time::advance(RECHECK).await;
        let s = seals.state(&n1, c.self_node_state(), now());
        assert_eq!(s.state, None);
    }
}
