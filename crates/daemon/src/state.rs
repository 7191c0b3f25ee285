//! What the daemon saves so a restart loses nothing: its table's apps and sockets and
//! its vservice records, written to /var/run/appswitch/state.json before the call that
//! changed them is answered. A write goes to a temporary file that is then renamed over
//! the old one, so a kill -9 at any moment leaves a whole file, old or new.

use std::path::Path;

use anyhow::{Context, Result};
use ax_cluster::state::VsRecord;
use ax_core::Snapshot;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::Daemon;

pub const STATE: &str = "/var/run/appswitch/state.json";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub table: Snapshot,
    pub vservices: Vec<VsRecord>,
}

/// Saves the daemon's state now. A failure is logged: serving goes on.
pub fn save(daemon: &Daemon) {
    let saved = Saved { table: daemon.table().snapshot(), vservices: crate::vservices::records(daemon) };
    if let Err(e) = write(Path::new(STATE), &saved) {
        warn!("cannot save the daemon's state to {STATE}: {e:#}");
    }
}

fn write(path: &Path, saved: &Saved) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(saved)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// The state an earlier daemon saved, if any.
pub fn load() -> Result<Option<Saved>> {
    match std::fs::read(STATE) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{STATE} is not a state this ax can read: start with --clean"))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {STATE}")),
    }
}

/// `--clean`: forgets the saved state.
pub fn clean() -> Result<()> {
    match std::fs::remove_file(STATE) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("cannot remove {STATE}")),
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
