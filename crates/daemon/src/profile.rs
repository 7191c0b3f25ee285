//! Profiles, written when the daemon stops, in the pprof format `go tool pprof` and
//! `pprof` read. `--cpu-profile FILE`: the daemon's threads sampled by SIGPROF at 199 Hz
//! (below the kernel's 250 Hz tick, and not a multiple of it). `--mem-profile FILE`:
//! jemalloc's heap sampling (one sample per 512 KiB allocated), live allocations.

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

/// Turns jemalloc's heap sampling on.
pub fn start_heap() -> Result<()> {
    let ctl = jemalloc_pprof::PROF_CTL.as_ref().context("jemalloc was built without heap profiling")?;
    ctl.blocking_lock().activate().map_err(|e| anyhow::anyhow!("cannot start the heap profiler: {e}"))
}

/// Writes the heap profile (gzipped pprof); a failure is logged.
pub fn write_heap(path: &Path) {
    let result = (|| -> Result<usize> {
        let ctl = jemalloc_pprof::PROF_CTL.as_ref().context("jemalloc was built without heap profiling")?;
        let bytes = ctl.blocking_lock().dump_pprof()?;
        std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(bytes.len())
    })();
    match result {
        Ok(n) => info!(file = %path.display(), bytes = n, "heap profile written"),
        Err(e) => warn!("cannot write the heap profile: {e:#}"),
    }
}
