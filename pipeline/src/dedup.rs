//! Exact deduplication on each dataset's key over a time window.
//!
//! Keys are kept whole (no hashes, no Bloom filter): a false duplicate would
//! drop a billable record. Each key costs its bytes plus about 40 bytes of
//! table overhead; see the README for the measured cost per million keys.
//! The number of keys per dataset is bounded: when the bound is hit, the
//! oldest hour of keys is dropped early and `tally_dedup_evictions_total`
//! counts it, so memory stays bounded and the shortened window is visible.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::dataset::Dataset;
use crate::metrics::Metrics;

pub struct Dedup {
    window_secs: u64,
    max_keys: usize,
    /// Key → the second (Unix time) it was first seen.
    sets: Vec<Mutex<HashMap<Box<[u8]>, u32>>>,
    metrics: Arc<Metrics>,
}

impl Dedup {
    pub fn new(window_secs: u64, max_keys: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            window_secs,
            max_keys: max_keys.max(1),
            sets: Dataset::ALL
                .iter()
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            metrics,
        }
    }

    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    /// Remembers `key`; `true` when it was not seen within the window.
    pub fn insert(&self, dataset: Dataset, key: &[u8], now_secs: u64) -> bool {
        let mut set = self.sets[dataset.index()].lock();
        let now = now_secs as u32;
        if let Some(seen) = set.get_mut(key) {
            if now_secs.saturating_sub(*seen as u64) < self.window_secs {
                return false;
            }
            *seen = now;
            return true;
        }
        if set.len() >= self.max_keys {
            self.evict_oldest_hour(&mut set, dataset);
        }
        set.insert(key.into(), now);
        true
    }

    /// Forgets a key whose record was not made durable after all.
    pub fn remove(&self, dataset: Dataset, key: &[u8]) {
        self.sets[dataset.index()].lock().remove(key);
    }

    /// Drops keys older than the window.
    pub fn expire(&self, now_secs: u64) {
        let cutoff = now_secs.saturating_sub(self.window_secs);
        for set in &self.sets {
            set.lock().retain(|_, seen| *seen as u64 >= cutoff);
        }
    }

    pub fn len(&self, dataset: Dataset) -> usize {
        self.sets[dataset.index()].lock().len()
    }

    pub fn is_empty(&self) -> bool {
        Dataset::ALL.iter().all(|d| self.len(*d) == 0)
    }

    fn evict_oldest_hour(&self, set: &mut HashMap<Box<[u8]>, u32>, dataset: Dataset) {
        let Some(oldest) = set.values().min().copied() else {
            return;
        };
        let cutoff = oldest.saturating_add(3600);
        let before = set.len();
        set.retain(|_, seen| *seen >= cutoff);
        let evicted = (before - set.len()) as u64;
        self.metrics.dedup_evictions.add(evicted);
        tracing::warn!(%dataset, evicted, max_keys = self.max_keys, "dedup key bound reached: the oldest hour of keys was dropped before the window ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedup(window: u64, max: usize) -> Dedup {
        Dedup::new(window, max, Arc::new(Metrics::default()))
    }

    #[test]
    fn second_copy_within_window_is_a_duplicate() {
        let d = dedup(100, 10);
        assert!(d.insert(Dataset::UsageLlm, b"a", 1000));
        assert!(!d.insert(Dataset::UsageLlm, b"a", 1099));
        // Same key in another dataset is another record.
        assert!(d.insert(Dataset::UsageTool, b"a", 1000));
        // After the window it counts again.
        assert!(d.insert(Dataset::UsageLlm, b"a", 1100));
    }

    #[test]
    fn expire_and_remove_forget_keys() {
        let d = dedup(100, 10);
        d.insert(Dataset::UsageLlm, b"old", 0);
        d.insert(Dataset::UsageLlm, b"new", 150);
        d.expire(160);
        assert_eq!(d.len(Dataset::UsageLlm), 1);
        d.remove(Dataset::UsageLlm, b"new");
        assert!(d.is_empty());
    }

    #[test]
    fn key_bound_evicts_the_oldest_hour_and_counts_it() {
        let d = dedup(86_400, 3);
        d.insert(Dataset::VmMetrics, b"1", 0);
        d.insert(Dataset::VmMetrics, b"2", 10);
        d.insert(Dataset::VmMetrics, b"3", 7200);
        assert!(d.insert(Dataset::VmMetrics, b"4", 7201));
        assert_eq!(d.len(Dataset::VmMetrics), 2);
        assert_eq!(d.metrics.dedup_evictions.get(), 2);
        assert!(!d.insert(Dataset::VmMetrics, b"3", 7202));
    }
}
