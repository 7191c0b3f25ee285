//! What one app may hold of the daemon's shared resources, so that no app starves the
//! others: pool ports and helper threads (the threads that wait for an app's blocking
//! connect or receive). The trap engine enforces both; the README lists them.

/// Helper threads one app may have waiting at once. Past it, the call that needs one
/// fails with EAGAIN (as when the kernel cannot make a thread).
pub const HELPERS_PER_APP: usize = 64;

/// Pool ports one app may hold when the pool has `capacity`: a quarter of it, at least
/// one. Past it, a bind fails with EADDRINUSE, as when the pool is exhausted.
pub fn pool_share(capacity: usize) -> usize {
    (capacity / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_gets_a_quarter_of_the_pool_and_never_none() {
        assert_eq!(pool_share(20_001), 5_000);
        assert_eq!(pool_share(10), 2);
        assert_eq!(pool_share(5), 1);
        assert_eq!(pool_share(1), 1);
    }
}
