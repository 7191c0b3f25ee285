//! What the daemon saves so a restart loses nothing: its table's apps and sockets and
//! its vservice records, written to `state.json` in the run directory before the call
//! that changed them is answered. A write goes to a temporary file that is then renamed
//! over the old one, so a kill -9 at any moment leaves a whole file, old or new.

use std::path::{Path, PathBuf};

use ax_cluster::state::VsRecord;
use ax_core::Snapshot;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    #[error("{path} is not a state this ax can read ({err}): start with --clean")]
    Unreadable { path: PathBuf, err: serde_json::Error },
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

/// The state an earlier daemon saved, if any: this version's, or the first version's
/// (an upgrade is a restart too, and must not lose the apps).
pub fn load(path: &Path) -> Result<Option<Saved>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(saved) => Ok(Some(saved)),
            Err(err) => serde_json::from_slice(&bytes)
                .ok()
                .and_then(from_first_version)
                .map(Some)
                .ok_or(StoreError::Unreadable { path: path.into(), err }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(StoreError::Read { path: path.into(), err }),
    }
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
        let saved = load(&path).unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let app = &saved.table.apps[0];
        assert_eq!(app.labels.to_string(), "role=prod,team=a");
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

    #[test]
    fn a_state_neither_version_can_read_says_to_start_clean() {
        let dir = std::env::temp_dir().join(format!("ax-state-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        // The first version's shape with a label that is no label.
        std::fs::write(&path, FIRST_VERSION.replace(r#"["team","a"]"#, r#"["team"]"#)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("start with --clean"), "{err}");
    }
}
