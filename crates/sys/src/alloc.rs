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

/// Gives the calling thread a jemalloc thread cache, which `malloc_conf` leaves off.
///
/// For the daemon's few async runtime threads, which carry the TLS egress tunnel: rustls
/// allocates every TLS record it sends or receives (16 KiB and more, jemalloc's "large"
/// classes) and frees it a moment later. Without a cache each free went back to the
/// arena, which (`dirty_decay_ms:0`) gave the pages to the kernel at once, and the next
/// record faulted them in again: madvise, page faults and TLB shootdowns were about
/// half of the daemons' CPU time under `bench/egress.sh --tls` (6.0 CPU-seconds per GB
/// carried, 3.0 with a cache). A cache holds a bounded number of blocks per size class
/// (up to 32 KiB) and is trimmed as it goes idle, so a couple of threads with one stay
/// cheap; the thread per app keeps none.
pub fn cache_this_thread() {
    use tikv_jemalloc_ctl::{Access, AsName};
    // An error leaves the thread uncached: slower, not wrong.
    let _ = b"thread.tcache.enabled\0".name().write(true);
}

#[cfg(test)]
mod tests {
    use tikv_jemalloc_ctl::{Access, AsName};

    fn cached() -> bool {
        b"thread.tcache.enabled\0".name().read().unwrap()
    }

    #[test]
    fn a_thread_gets_a_cache_only_when_it_asks() {
        // malloc_conf turns caches off for every thread (each app has one).
        assert!(!std::thread::spawn(cached).join().unwrap());
        assert!(std::thread::spawn(|| {
            super::cache_this_thread();
            cached()
        })
        .join()
        .unwrap());
    }
}
