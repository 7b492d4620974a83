//! Exact deduplication on each dataset's key over a time window.
//!
//! Keys are kept whole (no hashes, no Bloom filter): a false duplicate would
//! drop a billable record. Datasets keyed by an id alone keep each key's bytes
//! in [`SHARDS`] tables chosen by the key's hash (about 40 bytes of overhead
//! per key): one table of millions of keys doubles in one go, holding the
//! admission lock for tens of milliseconds, where a shard doubles in a
//! sixty-fourth of that. Datasets whose key ends
//! in the record's time (`vm_metrics`: `vm_id, timestamp`) keep one small
//! table of times per key prefix: 16 bytes a sample instead of a boxed key,
//! no allocation per sample, and no rehash of one huge table (a pause that
//! showed as a latency spike in profiles). See BENCHMARKS.md for the measured
//! cost per million keys.
//!
//! The number of keys per dataset is bounded: when the bound is hit, the
//! oldest hour of keys is dropped early and `tally_dedup_evictions_total`
//! counts it, so memory stays bounded and the shortened window is visible.

use std::sync::Arc;

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap};
use parking_lot::Mutex;

use crate::dataset::Dataset;
use crate::metrics::Metrics;

/// Tables per id-keyed dataset (a power of two up to 64: the shard is the
/// hash's top six bits).
const SHARDS: usize = 64;

/// The keys of one dataset. `seen` values are the Unix second a key was
/// first seen.
enum KeySet {
    /// Whole keys, in [`SHARDS`] tables by hash.
    Flat {
        shards: Vec<HashMap<Box<[u8]>, u32>>,
        hasher: DefaultHashBuilder,
        len: usize,
    },
    /// Key prefix → (last 8 key bytes, the time part) → seen.
    Nested {
        prefixes: HashMap<Box<[u8]>, HashMap<u64, u32>>,
        len: usize,
    },
}

impl KeySet {
    fn for_dataset(dataset: Dataset) -> KeySet {
        if dataset.key_ends_in_time() {
            KeySet::Nested {
                prefixes: HashMap::new(),
                len: 0,
            }
        } else {
            KeySet::Flat {
                shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
                hasher: DefaultHashBuilder::default(),
                len: 0,
            }
        }
    }

    fn shard(hasher: &DefaultHashBuilder, key: &[u8]) -> usize {
        // The top bits: the table inside a shard indexes by the low ones.
        (hasher.hash_one(key) >> 58) as usize % SHARDS
    }

    fn len(&self) -> usize {
        match self {
            KeySet::Flat { len, .. } | KeySet::Nested { len, .. } => *len,
        }
    }

    /// Splits a nested key into its prefix and its 8-byte time part.
    fn split(key: &[u8]) -> (&[u8], u64) {
        let (prefix, time) = key.split_at(key.len().saturating_sub(8));
        let mut last = [0u8; 8];
        last[8 - time.len()..].copy_from_slice(time);
        (prefix, u64::from_be_bytes(last))
    }

    fn seen_mut(&mut self, key: &[u8]) -> Option<&mut u32> {
        match self {
            KeySet::Flat { shards, hasher, .. } => shards[Self::shard(hasher, key)].get_mut(key),
            KeySet::Nested { prefixes, .. } => {
                let (prefix, time) = Self::split(key);
                prefixes.get_mut(prefix)?.get_mut(&time)
            }
        }
    }

    fn insert(&mut self, key: &[u8], now: u32) {
        match self {
            KeySet::Flat {
                shards,
                hasher,
                len,
            } => {
                if shards[Self::shard(hasher, key)]
                    .insert(key.into(), now)
                    .is_none()
                {
                    *len += 1;
                }
            }
            KeySet::Nested { prefixes, len } => {
                let (prefix, time) = Self::split(key);
                let times = match prefixes.get_mut(prefix) {
                    Some(t) => t,
                    None => prefixes.entry(prefix.into()).or_default(),
                };
                if times.insert(time, now).is_none() {
                    *len += 1;
                }
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        match self {
            KeySet::Flat {
                shards,
                hasher,
                len,
            } => {
                if shards[Self::shard(hasher, key)].remove(key).is_some() {
                    *len -= 1;
                }
            }
            KeySet::Nested { prefixes, len } => {
                let (prefix, time) = Self::split(key);
                if let Some(times) = prefixes.get_mut(prefix) {
                    if times.remove(&time).is_some() {
                        *len -= 1;
                    }
                    if times.is_empty() {
                        prefixes.remove(prefix);
                    }
                }
            }
        }
    }

    fn oldest(&self) -> Option<u32> {
        match self {
            KeySet::Flat { shards, .. } => shards
                .iter()
                .filter_map(|m| m.values().min().copied())
                .min(),
            KeySet::Nested { prefixes, .. } => prefixes
                .values()
                .filter_map(|t| t.values().min().copied())
                .min(),
        }
    }

    /// Keeps the keys first seen at or after `cutoff`.
    fn retain_since(&mut self, cutoff: u32) {
        match self {
            KeySet::Flat { shards, len, .. } => {
                *len = 0;
                for m in shards {
                    m.retain(|_, seen| *seen >= cutoff);
                    *len += m.len();
                }
            }
            KeySet::Nested { prefixes, len } => {
                *len = 0;
                prefixes.retain(|_, times| {
                    times.retain(|_, seen| *seen >= cutoff);
                    *len += times.len();
                    !times.is_empty()
                });
            }
        }
    }
}

pub struct Dedup {
    window_secs: u64,
    max_keys: usize,
    sets: Vec<Mutex<KeySet>>,
    metrics: Arc<Metrics>,
}

impl Dedup {
    pub fn new(window_secs: u64, max_keys: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            window_secs,
            max_keys: max_keys.max(1),
            sets: Dataset::ALL
                .iter()
                .map(|d| Mutex::new(KeySet::for_dataset(*d)))
                .collect(),
            metrics,
        }
    }

    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    /// The bound on keys kept per dataset.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Remembers `key`; `true` when it was not seen within the window.
    pub fn insert(&self, dataset: Dataset, key: &[u8], now_secs: u64) -> bool {
        let mut set = self.sets[dataset.index()].lock();
        let now = now_secs as u32;
        if let Some(seen) = set.seen_mut(key) {
            if now_secs.saturating_sub(*seen as u64) < self.window_secs {
                return false;
            }
            *seen = now;
            return true;
        }
        if set.len() >= self.max_keys {
            self.evict_oldest_hour(&mut set, dataset);
        }
        set.insert(key, now);
        true
    }

    /// Forgets a key whose record was not made durable after all.
    pub fn remove(&self, dataset: Dataset, key: &[u8]) {
        self.sets[dataset.index()].lock().remove(key);
    }

    /// Drops keys older than the window every minute, until `stop`.
    pub async fn expire_every_minute(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let dedup = self.clone();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let _ = tokio::task::spawn_blocking(move || dedup.expire(now)).await;
        }
    }

    /// Drops keys older than the window.
    pub fn expire(&self, now_secs: u64) {
        let cutoff = now_secs.saturating_sub(self.window_secs) as u32;
        for set in &self.sets {
            set.lock().retain_since(cutoff);
        }
    }

    pub fn len(&self, dataset: Dataset) -> usize {
        self.sets[dataset.index()].lock().len()
    }

    pub fn is_empty(&self) -> bool {
        Dataset::ALL.iter().all(|d| self.len(*d) == 0)
    }

    fn evict_oldest_hour(&self, set: &mut KeySet, dataset: Dataset) {
        let Some(oldest) = set.oldest() else {
            return;
        };
        let before = set.len();
        set.retain_since(oldest.saturating_add(3600));
        let evicted = (before - set.len()) as u64;
        self.metrics.dedup_evictions.add(evicted);
        tracing::info!(%dataset, evicted, max_keys = self.max_keys, "dedup key bound reached: the oldest hour of keys left memory early; compaction still drops copies of them");
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

    fn vm_key(vm: &str, ts: i64) -> Vec<u8> {
        let mut k = Vec::new();
        crate::record::encode_key_part(&crate::record::Value::Str(vm.into()), &mut k);
        crate::record::encode_key_part(&crate::record::Value::Ts(ts), &mut k);
        k
    }

    #[test]
    fn vm_keys_are_exact_per_vm_and_timestamp() {
        let d = dedup(86_400, 100);
        assert!(d.insert(Dataset::VmMetrics, &vm_key("vm-1", 10), 0));
        assert!(d.insert(Dataset::VmMetrics, &vm_key("vm-1", 11), 0));
        // Same time, other VM; a VM whose name extends another's.
        assert!(d.insert(Dataset::VmMetrics, &vm_key("vm-2", 10), 0));
        assert!(d.insert(Dataset::VmMetrics, &vm_key("vm-10", 10), 0));
        // Negative and far-apart times are distinct keys too.
        assert!(d.insert(Dataset::VmMetrics, &vm_key("vm-1", -10), 0));
        assert!(!d.insert(Dataset::VmMetrics, &vm_key("vm-1", 10), 5));
        assert!(!d.insert(Dataset::VmMetrics, &vm_key("vm-1", -10), 5));
        assert_eq!(d.len(Dataset::VmMetrics), 5);
        d.remove(Dataset::VmMetrics, &vm_key("vm-1", 10));
        d.remove(Dataset::VmMetrics, &vm_key("vm-1", 10));
        assert_eq!(d.len(Dataset::VmMetrics), 4);
        assert!(d.insert(Dataset::VmMetrics, &vm_key("vm-1", 10), 6));
        d.expire(86_400 + 3);
        assert_eq!(
            d.len(Dataset::VmMetrics),
            1,
            "only the key seen at 6 is inside the window"
        );
    }
}
