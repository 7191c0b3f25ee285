//! `--cpu-profile FILE`: samples the daemon's threads (SIGPROF, 199 Hz: below the
//! kernel's 250 Hz tick, and not a multiple of it) and writes a pprof profile (the
//! protobuf `go tool pprof` and `pprof` read) when the daemon stops.

use std::path::Path;

use anyhow::{Context, Result};
use pprof::protos::Message;
use tracing::{info, warn};

pub fn start() -> Result<pprof::ProfilerGuard<'static>> {
    pprof::ProfilerGuardBuilder::default()
        .frequency(199)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .context("cannot start the CPU profiler")
}

/// Writes the profile; a failure is logged (the daemon is stopping anyway).
pub fn write(guard: pprof::ProfilerGuard<'static>, path: &Path) {
    let result = (|| -> Result<usize> {
        let profile = guard.report().build()?.pprof()?;
        let mut bytes = Vec::new();
        profile.encode(&mut bytes)?;
        std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(bytes.len())
    })();
    match result {
        Ok(n) => info!(file = %path.display(), bytes = n, "CPU profile written"),
        Err(e) => warn!("cannot write the CPU profile: {e:#}"),
    }
}
