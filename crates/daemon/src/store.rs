//! What the daemon saves so a restart loses nothing: its table's apps and sockets and
//! its vservice records, written to `state.json` in the run directory before the call
//! that changed them is answered. A write goes to a temporary file that is then renamed
//! over the old one, so a kill -9 at any moment leaves a whole file, old or new.
//!
//! What is read back is input like any other (the file may have been edited, or
//! written by another version): every entry is read on its own and checked as live
//! input is ([`check`]); an entry that fails is dropped with its reason and the rest is
//! kept. A file that is not a state at all is set aside, and the daemon starts empty.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use ax_cluster::state::VsRecord;
use ax_core::vservice::ExposeAt;
use ax_core::{App, Binding, NodeInfo, PortRanges, Snapshot};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub table: Snapshot,
    pub vservices: Vec<VsRecord>,
}

/// Why the saved state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("cannot encode the state: {0}")]
    Encode(serde_json::Error),
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path} cannot be read ({why}), and cannot be set aside as {to}: {err}")]
    SetAside { path: PathBuf, why: String, to: PathBuf, err: std::io::Error },
    #[error("cannot remove {path}: {err}")]
    Remove { path: PathBuf, err: std::io::Error },
}

/// Where the state is kept in `run_dir`.
pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("state.json")
}

pub fn write(path: &Path, saved: &Saved) -> Result<(), StoreError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(saved).map_err(StoreError::Encode)?;
    std::fs::write(&tmp, bytes).map_err(|err| StoreError::Write { path: tmp.clone(), err })?;
    std::fs::rename(&tmp, path).map_err(|err| StoreError::Write { path: path.into(), err })
}

/// An entry of the saved state that is not taken back, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub what: String,
    pub why: String,
}

impl Dropped {
    fn new(what: impl Into<String>, why: impl fmt::Display) -> Dropped {
        Dropped { what: what.into(), why: why.to_string() }
    }

    pub fn log(&self) {
        warn!(what = %self.what, why = %self.why, "not taken back from the saved state");
    }
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    Nothing,
    /// The state, and the entries that could not be read.
    State(Saved, Vec<Dropped>),
    /// The file is no state: it was moved to `to`.
    SetAside {
        to: PathBuf,
        why: String,
    },
}

/// The state an earlier daemon saved, if any: this version's, or the first version's
/// (an upgrade is a restart too, and must not lose the apps). Entries that do not read
/// are dropped one by one; a file that is not a state is set aside.
pub fn load(path: &Path) -> Result<Loaded, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Nothing),
        Err(err) => return Err(StoreError::Read { path: path.into(), err }),
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return set_aside(path, e.to_string()),
    };
    if let Ok(saved) = serde_json::from_value::<Saved>(v.clone()) {
        return Ok(Loaded::State(saved, Vec::new()));
    }
    if let Some(saved) = from_first_version(v.clone()) {
        return Ok(Loaded::State(saved, Vec::new()));
    }
    match by_entry(&v) {
        Some((saved, dropped)) => Ok(Loaded::State(saved, dropped)),
        None => set_aside(path, "no table of apps and sockets, or no list of vservices".into()),
    }
}

/// Moves an unreadable state out of the way, so the daemon can start and the file can
/// still be looked at.
fn set_aside(path: &Path, why: String) -> Result<Loaded, StoreError> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let to = path.with_extension(format!("json.bad-{secs}"));
    match std::fs::rename(path, &to) {
        Ok(()) => Ok(Loaded::SetAside { to, why }),
        Err(err) => Err(StoreError::SetAside { path: path.into(), why, to, err }),
    }
}

/// Reads this version's state entry by entry: those that do not read are dropped.
fn by_entry(v: &Value) -> Option<(Saved, Vec<Dropped>)> {
    let mut dropped = Vec::new();
    let (apps, bindings, vservices) = (
        v.pointer("/table/apps")?.as_array()?,
        v.pointer("/table/bindings")?.as_array()?,
        v.get("vservices")?.as_array()?,
    );
    let mut saved = Saved::default();
    for a in apps {
        match serde_json::from_value::<App>(a.clone()) {
            Ok(app) => saved.table.apps.push(app),
            Err(e) => dropped.push(Dropped::new(format!("app {}", app_id(&a["id"])), e)),
        }
    }
    for b in bindings {
        match serde_json::from_value::<Binding>(b.clone()) {
            Ok(binding) => saved.table.bindings.push(binding),
            Err(e) => {
                dropped.push(Dropped::new(format!("socket {} of app {}", text(&b["host"]), app_id(&b["app"])), e))
            }
        }
    }
    for r in vservices {
        match serde_json::from_value::<VsRecord>(r.clone()) {
            Ok(rec) => saved.vservices.push(rec),
            Err(e) => dropped.push(Dropped::new(format!("vservice {}", text(&r["name"])), e)),
        }
    }
    Some((saved, dropped))
}

/// A value of an entry that did not read, for the log: text as it is, anything else
/// as JSON.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// An app id as the daemon shows it, where it reads as one.
fn app_id(v: &Value) -> String {
    serde_json::from_value::<ax_core::AppId>(v.clone()).map_or_else(|_| text(v), |id| id.to_string())
}

/// Keeps of `saved` what live input would be allowed to make on this node (with its
/// pool `ports`); the rest is dropped, each entry with its reason. Apps: a unicast
/// address not the host's loopback, a DNS-label name, `--expose` outside the pool; a
/// socket: of a kept app, on this node's address, at a pool port or one its app
/// exposes here, serving the app's address; a vservice: as the API would take it, with
/// a version not from the future at `now_ms` (as gossip takes one).
pub fn check(saved: Saved, node: &NodeInfo, ports: &PortRanges, now_ms: u64) -> (Saved, Vec<Dropped>) {
    let mut dropped = Vec::new();
    let mut kept = Saved::default();
    for app in saved.table.apps {
        let what = format!("app {} ({})", app.id, app.ip);
        match check_app(&app, &kept.table.apps, node, ports) {
            Ok(()) => kept.table.apps.push(app),
            Err(why) => dropped.push(Dropped::new(what, why)),
        }
    }
    let mut taken = BTreeSet::new();
    for b in saved.table.bindings {
        let what = format!("{} socket {} of app {} (serving {})", b.proto.name(), b.host, b.app, b.service);
        let Some(app) = kept.table.apps.iter().find(|a| a.id == b.app) else {
            dropped.push(Dropped::new(what, "its app is not taken back"));
            continue;
        };
        match check_binding(&b, app, node, ports, &taken) {
            Ok(()) => {
                taken.insert((b.proto, b.host.port()));
                kept.table.bindings.push(b);
            }
            Err(why) => dropped.push(Dropped::new(what, why)),
        }
    }
    for rec in saved.vservices {
        let what = format!("vservice {}", rec.name);
        let checked = match &rec.spec {
            _ if rec.from_the_future(now_ms) => Err(format!(
                "its version {} is more than a day ahead of this clock (a record no later change could outrank)",
                rec.version
            )),
            None => Ok(()),
            Some(spec) if spec.name.to_ascii_lowercase() != rec.name => {
                Err(format!("its record is named {} but defines {}", rec.name, spec.name))
            }
            Some(spec) => crate::vservices::parse(spec).map(|_| ()).map_err(|r| r.to_string()),
        };
        match checked {
            Ok(()) => kept.vservices.push(rec),
            Err(why) => dropped.push(Dropped::new(what, why)),
        }
    }
    (kept, dropped)
}

fn check_app(app: &App, kept: &[App], node: &NodeInfo, ports: &PortRanges) -> Result<(), String> {
    if kept.iter().any(|a| a.id == app.id) {
        return Err(format!("app id {} is given twice", app.id));
    }
    ax_core::addr::check_app_ip(app.ip).map_err(|e| e.to_string())?;
    if let Some(name) = &app.name {
        ax_dns::wire::check_label(name).map_err(|e| e.to_string())?;
    }
    if app.pid <= 0 {
        return Err(format!("pid {} is no process", app.pid));
    }
    for e in &app.expose {
        crate::channel::check_expose(e, node, ports, None)?;
    }
    Ok(())
}

fn check_binding(
    b: &Binding,
    app: &App,
    node: &NodeInfo,
    ports: &PortRanges,
    taken: &BTreeSet<(ax_core::Proto, u16)>,
) -> Result<(), String> {
    if *b.host.ip() != node.ip {
        return Err(format!("host address {} is not this node's ({})", b.host.ip(), node.ip));
    }
    let port = b.host.port();
    // As the bind plan gives exposed ports to an app's sockets (see `plan_bind`).
    let exposed_here = app.expose.iter().any(|e| {
        e.host_port == port
            && match e.at {
                ExposeAt::ThisNode | ExposeAt::Every => true,
                ExposeAt::Node(ip) => ip == node.ip,
            }
    });
    if !ports.contains(port) && !exposed_here {
        return Err(format!("host port {port} is neither in the --ports pool ({ports}) nor one the app exposes here"));
    }
    if taken.contains(&(b.proto, port)) {
        return Err(format!("host port {port} is held by another socket"));
    }
    if *b.service.ip() != app.ip {
        return Err(format!("service address {} is not its app's address {}", b.service.ip(), app.ip));
    }
    Ok(())
}

/// A state written before the API was typed: labels as pairs, `Tcp`/`Udp`, `--expose`
/// values as structures, vservice definitions as JSON text. Everything read from it is
/// still checked as this version reads its own.
fn from_first_version(mut v: Value) -> Option<Saved> {
    // Labels are read with the flag's parser, after the rest (an object cannot hold a
    // label name twice, a label list can).
    let mut labels = Vec::new();
    for app in v.pointer_mut("/table/apps")?.as_array_mut()? {
        let pairs: Vec<String> = app["labels"]
            .as_array()?
            .iter()
            .map(|p| Some(format!("{}={}", p.get(0)?.as_str()?, p.get(1)?.as_str()?)))
            .collect::<Option<_>>()?;
        labels.push(ax_core::Labels::parse(&pairs.join(",")).ok()?);
        app["labels"] = Value::Object(Default::default());
        let expose: Vec<Value> = app["expose"].as_array()?.iter().map(first_expose).collect::<Option<_>>()?;
        app["expose"] = Value::from(expose);
    }
    for b in v.pointer_mut("/table/bindings")?.as_array_mut()? {
        let proto = b["proto"].as_str()?.to_ascii_lowercase();
        b["proto"] = Value::from(proto);
    }
    for r in v.get_mut("vservices")?.as_array_mut()? {
        if let Some(text) = r["spec"].as_str() {
            r["spec"] = serde_json::from_str(text).ok()?;
        }
    }
    let mut saved: Saved = serde_json::from_value(v).ok()?;
    for (app, labels) in saved.table.apps.iter_mut().zip(labels) {
        app.labels = labels;
        // The first version had no mode without the guard.
        app.socket_guard = true;
    }
    Some(saved)
}

/// `{"internal":8000,"at":{"Node":"10.0.0.9"},"host_port":9998}` as `8000:10.0.0.9:9998`.
fn first_expose(e: &Value) -> Option<Value> {
    let (internal, host) = (e["internal"].as_u64()?, e["host_port"].as_u64()?);
    Some(Value::from(match &e["at"] {
        Value::String(at) if at == "ThisNode" => format!("{internal}:{host}"),
        Value::String(at) if at == "Every" => format!("{internal}:0.0.0.0:{host}"),
        at => format!("{internal}:{}:{host}", at.get("Node")?.as_str()?),
    }))
}

/// `--clean`: forgets the saved state.
pub fn clean(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Remove { path: path.into(), err }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_whole_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("ax-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write(&path, &Saved::default()).unwrap();
        let back: Saved = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(back.table.apps.is_empty());
        assert!(!dir.join("state.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A state as the first version wrote it (checked against that version's types).
    const FIRST_VERSION: &str = r#"{"table":{"apps":[{"id":4026531841,"uuid":"5e8a3c1e-0000-4000-8000-000000000001","name":"web","ip":"198.18.0.1","labels":[["role","prod"],["team","a"]],"pid":4242,"driver":"user","expose":[{"internal":8000,"at":"ThisNode","host_port":9999},{"internal":8001,"at":{"Node":"10.0.0.9"},"host_port":9998},{"internal":8002,"at":"Every","host_port":9997}]}],"bindings":[{"id":"5e8a3c1e-0000-4000-8000-000000000002","app":4026531841,"inode":77,"proto":"Tcp","family":"V4","requested":"0.0.0.0:80","flags":2,"service":"198.18.0.1:80","host":"10.0.0.1:40000","listening":true,"backlog":128,"changed":3,"missed":0},{"id":"5e8a3c1e-0000-4000-8000-000000000003","app":4026531841,"inode":78,"proto":"Udp","family":"V6","requested":"[::]:53","flags":2,"service":"198.18.0.1:53","host":"10.0.0.1:40001","listening":true,"backlog":0,"changed":4,"missed":0}]},"vservices":[{"name":"db","version":17,"origin":"n1","spec":"{\"name\":\"db\",\"ip\":\"198.18.2.1\",\"ports\":\"80:8000\",\"backends\":\"198.18.0.1\",\"lbtype\":\"RoundRobin\",\"source_ip\":null,\"external\":false}"},{"name":"gone","version":5,"origin":"n2","spec":null}]}"#;

    #[test]
    fn a_state_from_the_first_version_is_taken_back_whole() {
        let dir = std::env::temp_dir().join(format!("ax-state-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        std::fs::write(&path, FIRST_VERSION).unwrap();
        let Loaded::State(saved, dropped) = load(&path).unwrap() else { panic!("not loaded") };
        assert!(dropped.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        let app = &saved.table.apps[0];
        assert_eq!(app.labels.to_string(), "role=prod,team=a");
        assert!(app.socket_guard, "an app of the first version relies on the guard, as all did");
        let expose: Vec<String> = app.expose.iter().map(|e| e.to_string()).collect();
        assert_eq!(expose, ["8000:9999", "8001:10.0.0.9:9998", "8002:0.0.0.0:9997"]);
        let protos: Vec<ax_core::Proto> = saved.table.bindings.iter().map(|b| b.proto).collect();
        assert_eq!(protos, [ax_core::Proto::Tcp, ax_core::Proto::Udp]);
        assert_eq!(saved.table.bindings[0].host, "10.0.0.1:40000".parse().unwrap());
        let spec = saved.vservices[0].spec.as_ref().unwrap();
        assert_eq!((spec.name.as_str(), spec.ports.to_string()), ("db", "80:8000".to_string()));
        assert_eq!(spec.lbtype, ax_core::vservice::LbType::RoundRobin);
        assert!(saved.vservices[1].spec.is_none(), "a deletion stays a deletion");
    }

    /// Daemons from the no-BPF mode until apps kept their guard mode saved apps without
    /// it, those served without the guard (their filter traps every addressed send)
    /// included: such an app is not one whose filter relies on the guard.
    #[test]
    fn an_app_saved_before_guard_modes_were_kept_is_not_taken_as_guarded() {
        let dir = scratch("no-guard-mode");
        let path = dir.join("state.json");
        let mut saved = serde_json::to_value(Saved::default()).unwrap();
        let mut a = serde_json::to_value(app(7, "198.18.0.1")).unwrap();
        a.as_object_mut().unwrap().remove("socket_guard");
        saved["table"]["apps"] = Value::from(vec![a]);
        std::fs::write(&path, saved.to_string()).unwrap();
        let Loaded::State(saved, dropped) = load(&path).unwrap() else { panic!("not loaded") };
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(dropped.is_empty(), "{dropped:?}");
        assert!(!saved.table.apps[0].socket_guard, "a daemon without BPF must take it back");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ax-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_file_that_is_no_state_is_set_aside_and_the_daemon_starts_empty() {
        let dir = scratch("garbage");
        let path = dir.join("state.json");
        for garbage in ["{not json", r#"{"table": 7}"#] {
            std::fs::write(&path, garbage).unwrap();
            let Loaded::SetAside { to, why } = load(&path).unwrap() else { panic!("{garbage}: loaded") };
            assert!(!path.exists(), "moved away");
            assert_eq!(std::fs::read_to_string(&to).unwrap(), garbage, "kept for a look: {why}");
            std::fs::remove_file(&to).unwrap();
        }
        assert!(matches!(load(&path).unwrap(), Loaded::Nothing));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "a".into(),
            cluster: "appswitch".into(),
            ip: "10.0.0.1".parse().unwrap(),
            ports: ax_core::DaemonPorts::new(true, 7946, 6664, 1024),
        }
    }

    fn pool() -> PortRanges {
        PortRanges::parse("40000-40010").unwrap()
    }

    fn app(id: u32, ip: &str) -> App {
        App {
            id: ax_core::AppId(id),
            uuid: format!("uuid-{id}"),
            name: None,
            ip: ip.parse().unwrap(),
            labels: ax_core::Labels::parse("role=test").unwrap(),
            pid: 4242,
            driver: ax_core::Driver::User,
            expose: Vec::new(),
            socket_guard: true,
            host_sockets: false,
        }
    }

    fn socket(app: &App, host_port: u16) -> Binding {
        Binding {
            id: format!("b-{host_port}"),
            app: app.id,
            inode: u64::from(host_port),
            proto: ax_core::Proto::Tcp,
            family: ax_core::Family::V4,
            requested: "0.0.0.0:8000".parse().unwrap(),
            flags: 2,
            service: std::net::SocketAddrV4::new(app.ip, 8000),
            host: std::net::SocketAddrV4::new(node().ip, host_port),
            listening: true,
            backlog: 128,
            changed: 1,
            missed: 0,
        }
    }

    fn vservice(name: &str, ports: &str) -> VsRecord {
        let spec = serde_json::from_value(serde_json::json!({
            "name": name, "ip": "198.18.2.1", "ports": ports, "backends": "198.18.1.1"
        }))
        .unwrap();
        VsRecord { name: name.to_ascii_lowercase(), version: 1, origin: "a".into(), spec: Some(spec) }
    }

    fn whats(dropped: &[Dropped]) -> Vec<String> {
        dropped.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn entries_that_do_not_read_are_dropped_one_by_one_and_the_rest_kept() {
        let dir = scratch("entries");
        let path = dir.join("state.json");
        let (a, b) = (app(0xf000_0001, "198.18.0.1"), app(0xf000_0002, "198.18.0.2"));
        let saved = Saved {
            table: Snapshot {
                apps: vec![a.clone(), b.clone()],
                bindings: vec![socket(&a, 40000), socket(&b, 40001)],
                private: vec![],
            },
            vservices: vec![vservice("db", "80")],
        };
        let mut v = serde_json::to_value(&saved).unwrap();
        v["table"]["apps"][1]["labels"] = serde_json::json!({"role": ""});
        v["table"]["bindings"][1]["proto"] = "sctp".into();
        v["vservices"].as_array_mut().unwrap().push(serde_json::json!({"name": "x", "version": "new"}));
        std::fs::write(&path, v.to_string()).unwrap();
        let Loaded::State(back, dropped) = load(&path).unwrap() else { panic!("not loaded") };
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back.table.apps, vec![a.clone()]);
        assert_eq!(back.table.bindings, vec![socket(&a, 40000)]);
        assert_eq!(back.vservices, saved.vservices);
        let whats = whats(&dropped);
        assert_eq!(whats.len(), 3, "{whats:?}");
        assert!(whats[0].starts_with("app f0000002: label 'role=' has an empty value"), "{whats:?}");
        assert!(whats[1].starts_with("socket 10.0.0.1:40001 of app f0000002: unknown variant `sctp`"), "{whats:?}");
        assert!(whats[2].starts_with("vservice x: "), "{whats:?}");
    }

    #[test]
    fn every_entry_is_checked_as_live_input_and_each_bad_one_dropped_with_its_reason() {
        let good = app(0xf000_0001, "198.18.0.1");
        let mut exposed = app(0xf000_0002, "198.18.0.2");
        exposed.expose = vec!["8000:9999".parse().unwrap()];
        let mut named_badly = app(0xf000_0003, "198.18.0.3");
        named_badly.name = Some("-web".into());
        let mut exposed_in_pool = app(0xf000_0004, "198.18.0.4");
        exposed_in_pool.expose = vec!["8000:40005".parse().unwrap()];
        let mut no_pid = app(0xf000_0005, "198.18.0.5");
        no_pid.pid = 0;
        let apps = vec![
            good.clone(),
            exposed.clone(),
            app(0xf000_0006, "127.0.0.1"),
            app(0xf000_0007, "0.0.0.0"),
            app(0xf000_0008, "224.0.0.1"),
            named_badly,
            exposed_in_pool,
            no_pid,
            app(0xf000_0001, "198.18.0.9"),
        ];
        let mut elsewhere = socket(&good, 40002);
        elsewhere.host = "10.0.0.2:40002".parse().unwrap();
        let mut other_service = socket(&good, 40003);
        other_service.service = "198.18.0.7:8000".parse().unwrap();
        let bindings = vec![
            socket(&good, 40000),
            socket(&exposed, 9999),
            socket(&good, 80),
            socket(&exposed, 40000),
            elsewhere,
            other_service,
            socket(&app(0xf000_0006, "127.0.0.1"), 40004),
        ];
        let mut misnamed = vservice("db", "80");
        misnamed.name = "cache".into();
        let big = (1..=65).map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let mut forever = vservice("forever", "80");
        forever.version = u64::MAX;
        let vservices = vec![vservice("web", "80"), vservice("huge", &big), vservice("-x", "80"), misnamed, forever];
        let saved = Saved { table: Snapshot { apps, bindings, private: vec![] }, vservices };
        let (kept, dropped) = check(saved, &node(), &pool(), 1_700_000_000_000);
        assert_eq!(kept.table.apps, vec![good.clone(), exposed.clone()]);
        assert_eq!(kept.table.bindings, vec![socket(&good, 40000), socket(&exposed, 9999)]);
        assert_eq!(kept.vservices, vec![vservice("web", "80")]);
        let want = [
            "app f0000006 (127.0.0.1): --ip 127.0.0.1 is a loopback address",
            "app f0000007 (0.0.0.0): --ip 0.0.0.0 is the unspecified address",
            "app f0000008 (224.0.0.1): --ip 224.0.0.1 is a multicast address",
            "app f0000003 (198.18.0.3): ",
            "app f0000004 (198.18.0.4): --expose 8000:40005: host port 40005 is inside the --ports pool",
            "app f0000005 (198.18.0.5): pid 0 is no process",
            "app f0000001 (198.18.0.9): app id f0000001 is given twice",
            "tcp socket 10.0.0.1:80 of app f0000001 (serving 198.18.0.1:8000): host port 80 is neither in the --ports pool (40000-40010) nor one the app exposes here",
            "tcp socket 10.0.0.1:40000 of app f0000002 (serving 198.18.0.2:8000): host port 40000 is held by another socket",
            "tcp socket 10.0.0.2:40002 of app f0000001 (serving 198.18.0.1:8000): host address 10.0.0.2 is not this node's (10.0.0.1)",
            "tcp socket 10.0.0.1:40003 of app f0000001 (serving 198.18.0.7:8000): service address 198.18.0.7 is not its app's address 198.18.0.1",
            "tcp socket 10.0.0.1:40004 of app f0000006 (serving 127.0.0.1:8000): its app is not taken back",
            "vservice huge: --ports: 65 port maps, at most 64 per vservice",
            "vservice -x: ",
            "vservice cache: its record is named cache but defines db",
            "vservice forever: its version 18446744073709551615 is more than a day ahead of this clock",
        ];
        let got = whats(&dropped);
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g:?} does not start with {w:?}");
        }
    }
}
