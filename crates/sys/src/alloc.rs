//! The allocator: jemalloc, built with heap profiling, which stays off (sampling
//! inactive) unless `--mem-profile` turns it on.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start: profiling compiled in and
/// ready, but inactive (one sample per 512 KiB allocated when active); two arenas, no
/// thread caches, freed pages given back at once. The daemon runs a thread per app:
/// with jemalloc's defaults its RSS grew with the app count (274 MB at 200 apps and
/// 10,000 sockets, bench/lifecycle.sh); with these, 70 MB.
#[allow(non_upper_case_globals)]
// SAFETY: jemalloc reads `malloc_conf` once, at initialisation, as a NUL-terminated C
// string; this static is exactly that, and nothing writes it.
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &[u8; 103] =
    b"prof:true,prof_active:false,lg_prof_sample:19,narenas:2,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0\0";
