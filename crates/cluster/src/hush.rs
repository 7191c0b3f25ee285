//! Something done at most once a period per peer: warnings about what peers send (a
//! flood of bad packets must not become a flood of log lines), greetings.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Once a minute: for log lines.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);
/// Peers remembered at once; past this (a period of many forged sources), new ones
/// share one period between them until the old ones' period is up: a flood of
/// sources still gets its line each period, and is not silence.
const KEYS: usize = 1024;

#[derive(Debug)]
pub(crate) struct Hush<K> {
    every: Duration,
    last: Mutex<HashMap<K, (Instant, u64)>>,
    /// The period shared by keys that found no room, and how many were hushed in it.
    overflow: Mutex<(Option<Instant>, u64)>,
}

impl<K> Default for Hush<K> {
    /// Once a minute.
    fn default() -> Self {
        Hush::every(MINUTE)
    }
}

impl<K> Hush<K> {
    pub(crate) fn every(every: Duration) -> Hush<K> {
        Hush { every, last: Mutex::new(HashMap::new()), overflow: Mutex::new((None, 0)) }
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
                let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
                return match overflow.0 {
                    Some(at) if now.duration_since(at) < self.every => {
                        overflow.1 += 1;
                        None
                    }
                    _ => {
                        overflow.0 = Some(now);
                        Some(std::mem::take(&mut overflow.1))
                    }
                };
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
        assert_eq!(hush.speak(KEYS), Some(0), "full: the new peers share one minute");
        assert_eq!(hush.speak(KEYS + 1), None);
        assert_eq!(hush.speak(KEYS + 2), None);
        tokio::time::advance(MINUTE).await;
        assert_eq!(hush.speak(KEYS), Some(0), "the old minutes are over: room again");
        assert!(hush.last.lock().unwrap().len() <= KEYS);
    }
}
