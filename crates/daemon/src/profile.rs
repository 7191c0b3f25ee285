//! Profiles, written when the daemon stops, in the pprof format `go tool pprof` and
//! `pprof` read. `--cpu-profile FILE`: the daemon's threads sampled by SIGPROF at 199 Hz
//! (below the kernel's 250 Hz tick, and not a multiple of it). `--mem-profile FILE`:
//! jemalloc's heap sampling (one sample per 512 KiB allocated), live allocations.

use std::path::Path;

use pprof::protos::Message;
use tracing::{info, warn};

/// Why a profile cannot be taken or written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot start the CPU profiler: {0}")]
    Cpu(pprof::Error),
    #[error("jemalloc was built without heap profiling")]
    NoHeapProfiling,
    #[error("cannot start the heap profiler: {0}")]
    Heap(String),
    #[error("cannot encode the profile: {0}")]
    Encode(String),
    #[error("cannot write {path}: {err}")]
    Write { path: std::path::PathBuf, err: std::io::Error },
}

pub fn start() -> Result<pprof::ProfilerGuard<'static>, ProfileError> {
    pprof::ProfilerGuardBuilder::default()
        .frequency(199)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(ProfileError::Cpu)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<usize, ProfileError> {
    std::fs::write(path, bytes).map_err(|err| ProfileError::Write { path: path.into(), err })?;
    Ok(bytes.len())
}

/// Writes the profile; a failure is logged (the daemon is stopping anyway).
pub fn write(guard: pprof::ProfilerGuard<'static>, path: &Path) {
    let result = (|| -> Result<usize, ProfileError> {
        let encode = |e: &dyn std::fmt::Display| ProfileError::Encode(e.to_string());
        let profile = guard.report().build().and_then(|r| r.pprof()).map_err(|e| encode(&e))?;
        let mut bytes = Vec::new();
        profile.encode(&mut bytes).map_err(|e| encode(&e))?;
        write_file(path, &bytes)
    })();
    match result {
        Ok(n) => info!(file = %path.display(), bytes = n, "CPU profile written"),
        Err(e) => warn!("cannot write the CPU profile: {e}"),
    }
}

/// Turns jemalloc's heap sampling on.
pub fn start_heap() -> Result<(), ProfileError> {
    let ctl = jemalloc_pprof::PROF_CTL.as_ref().ok_or(ProfileError::NoHeapProfiling)?;
    ctl.blocking_lock().activate().map_err(|e| ProfileError::Heap(e.to_string()))
}

/// Writes the heap profile (gzipped pprof); a failure is logged.
pub fn write_heap(path: &Path) {
    let result = (|| -> Result<usize, ProfileError> {
        let ctl = jemalloc_pprof::PROF_CTL.as_ref().ok_or(ProfileError::NoHeapProfiling)?;
        let bytes = ctl.blocking_lock().dump_pprof().map_err(|e| ProfileError::Encode(e.to_string()))?;
        write_file(path, &bytes)
    })();
    match result {
        Ok(n) => info!(file = %path.display(), bytes = n, "heap profile written"),
        Err(e) => warn!("cannot write the heap profile: {e}"),
    }
}
