//! What the daemon saves so a restart loses nothing: its table's apps and sockets and
//! its vservice records, written to `state.json` in the run directory before the call
//! that changed them is answered. A write goes to a temporary file that is then renamed
//! over the old one, so a kill -9 at any moment leaves a whole file, old or new.

use std::path::{Path, PathBuf};

use ax_cluster::state::VsRecord;
use ax_core::Snapshot;
use serde::{Deserialize, Serialize};

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

/// The state an earlier daemon saved, if any.
pub fn load(path: &Path) -> Result<Option<Saved>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|err| StoreError::Unreadable { path: path.into(), err })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(StoreError::Read { path: path.into(), err }),
    }
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
}
