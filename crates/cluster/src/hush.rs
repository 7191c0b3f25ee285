//! Something done at most once a period per peer: warnings about what peers send (a
//! flood of bad packets must not become a flood of log lines), greetings.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Once a minute: for log lines.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);
/// Peers remembered at once; past this (a period of many forged sources), new ones wait
/// until the old ones' period is up.
const KEYS: usize = 1024;

#[derive(Debug)]
pub(crate) struct Hush<K> {
    every: Duration,
    last: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K> Default for Hush<K> {
    /// Once a minute.
    fn default() -> Self {
        Hush::every(MINUTE)
    }
}

impl<K> Hush<K> {
    pub(crate) fn every(every: Duration) -> Hush<K> {
        Hush { every, last: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Copy> Hush<K> {
    /// Whether to act on `key` now; if so, also how many times it was hushed since.
    pub(crate) fn speak(&self, key: K) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, hushed)) = last.get_mut(&key) {
            if now.duration_since(*at) < self.every {
                *hushed += 1;
                return None;
            }
            let said = *hushed;
            *at = now;
            *hushed = 0;
            return Some(said);
        }
        if last.len() >= KEYS {
            last.retain(|_, (at, _)| now.duration_since(*at) < self.every);
            if last.len() >= KEYS {
                return None;
            }
        }
        last.insert(key, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn once_a_minute_per_key_with_the_count_hushed() {
        let hush = Hush::default();
        assert_eq!(hush.speak(1), Some(0));
        assert_eq!(hush.speak(1), None);
        assert_eq!(hush.speak(1), None);
        assert_eq!(hush.speak(2), Some(0), "another peer has its own minute");
        tokio::time::advance(MINUTE).await;
        assert_eq!(hush.speak(1), Some(2));
        assert_eq!(hush.speak(1), None);
    }

    #[tokio::test(start_paused = true)]
    async fn many_keys_cannot_grow_it_past_its_bound() {
        let hush = Hush::default();
        for k in 0..KEYS {
            assert_eq!(hush.speak(k), Some(0));
        }
        assert_eq!(hush.speak(KEYS), None, "full: a new peer waits");
        tokio::time::advance(MINUTE).await;
        assert_eq!(hush.speak(KEYS), Some(0), "the old minutes are over: room again");
        assert!(hush.last.lock().unwrap().len() <= KEYS);
    }
}
