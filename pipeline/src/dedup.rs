//! Exact deduplication on each dataset's key over a time window.
//!
//! Keys are kept whole (no hashes, no Bloom filter): a false duplicate would
//! drop a billable record. Datasets keyed by an id alone keep each key's bytes
//! in [`SHARDS`] tables chosen by the key's hash (about 40 bytes of overhead
//! per key): one table of millions of keys doubles in one go, holding the
//! admission lock for tens of milliseconds, where a shard doubles in a
//! sixty-fourth of that. Datasets whose key ends
//! in the record's time (`vm_metrics`: `vm_id, timestamp`) keep the times of
//! each key prefix as a run in arrival order ([`Times`]): 12 bytes a sample
//! instead of a boxed key, no hashing and no allocation per sample (a VM's
//! samples come in time order, so a new one is compared with the last and
//! pushed), and no rehash of one huge table (a pause that showed as a
//! latency spike in profiles). See BENCHMARKS.md for the measured
//! cost per million keys.
//!
//! The number of keys per dataset is bounded: when the bound is hit, the
//! oldest hour of keys is dropped early and `tally_dedup_evictions_total`
//! counts it, so memory stays bounded and the shortened window is visible.

use std::sync::Arc;

use std::hash::BuildHasher;

use hashbrown::hash_map::EntryRef;
use hashbrown::{DefaultHashBuilder, HashMap};
use parking_lot::Mutex;

use crate::batch::keys::KeyColumn;
use crate::batch::Columns;
use crate::dataset::Dataset;
use crate::metrics::Metrics;

/// Tables per id-keyed dataset (a power of two up to 64: the shard is the
/// hash's top six bits).
const SHARDS: usize = 64;

/// Marks a time of [`Times::run`] that was removed (a record that did not
/// become durable): it no longer counts and may be admitted again.
const REMOVED: u32 = u32::MAX;

/// The times of one key prefix (one VM's samples). A VM's samples arrive in
/// time order, so each new time is compared with the last and pushed:
/// `run` holds increasing times with their first-seen seconds in two
/// parallel vectors (12 bytes a sample, no hashing, memory touched in
/// order). A time at or below the run's last is looked up in the run by
/// binary search, then in `scattered`, which holds the rare late arrivals.
#[derive(Default)]
struct Times {
    run: Vec<u64>,
    run_seen: Vec<u32>,
    scattered: HashMap<u64, u32>,
    /// Live keys: the run's not-removed entries and `scattered`'s.
    len: usize,
}

impl Times {
    fn seen_mut(&mut self, time: u64) -> Option<&mut u32> {
        match self.run.last() {
            Some(&last) if time <= last => {}
            _ => return None,
        }
        if let Ok(i) = self.run.binary_search(&time) {
            let seen = &mut self.run_seen[i];
            return (*seen != REMOVED).then_some(seen);
        }
        self.scattered.get_mut(&time)
    }

    /// Adds a time that [`Times::seen_mut`] did not find.
    fn insert(&mut self, time: u64, now: u32) {
        self.len += 1;
        match self.run.last() {
            Some(&last) if time <= last => {}
            _ => {
                self.run.push(time);
                self.run_seen.push(now);
                return;
            }
        }
        if let Ok(i) = self.run.binary_search(&time) {
            // A removed entry comes back.
            self.run_seen[i] = now;
        } else {
            self.scattered.insert(time, now);
        }
    }

    fn remove(&mut self, time: u64) {
        if let Ok(i) = self.run.binary_search(&time) {
            if self.run_seen[i] != REMOVED {
                self.run_seen[i] = REMOVED;
                self.len -= 1;
            }
        } else if self.scattered.remove(&time).is_some() {
            self.len -= 1;
        }
    }

    fn oldest(&self) -> Option<u32> {
        let run = self.run_seen.iter().filter(|s| **s != REMOVED).min();
        run.into_iter()
            .chain(self.scattered.values())
            .min()
            .copied()
    }

    /// Keeps the times first seen at or after `cutoff`. Late arrivals are
    /// merged into the run, so every time in `scattered` stays at or below
    /// the run's last (the order `seen_mut`'s first comparison relies on).
    fn retain_since(&mut self, cutoff: u32) {
        let mut late: Vec<(u64, u32)> = self
            .scattered
            .drain()
            .filter(|(_, seen)| *seen >= cutoff)
            .collect();
        late.sort_unstable();
        if late.is_empty() {
            // The usual case: compact in place.
            let mut kept = 0;
            for i in 0..self.run.len() {
                let seen = self.run_seen[i];
                if seen != REMOVED && seen >= cutoff {
                    self.run[kept] = self.run[i];
                    self.run_seen[kept] = seen;
                    kept += 1;
                }
            }
            self.run.truncate(kept);
            self.run_seen.truncate(kept);
            self.len = kept;
            if self.run.capacity() > 4 * kept.max(16) {
                self.run.shrink_to_fit();
                self.run_seen.shrink_to_fit();
            }
            return;
        }
        let live = self.run.len().min(self.len) + late.len();
        let (mut run, mut run_seen) = (Vec::with_capacity(live), Vec::with_capacity(live));
        let mut late = late.into_iter().peekable();
        for (&time, &seen) in self.run.iter().zip(&self.run_seen) {
            while let Some(&(t, s)) = late.peek() {
                if t >= time {
                    break;
                }
                run.push(t);
                run_seen.push(s);
                late.next();
            }
            if seen != REMOVED && seen >= cutoff {
                run.push(time);
                run_seen.push(seen);
            }
        }
        for (t, s) in late {
            run.push(t);
            run_seen.push(s);
        }
        self.len = run.len();
        (self.run, self.run_seen) = (run, run_seen);
        self.scattered = HashMap::new();
    }
}

/// The keys of one dataset. `seen` values are the Unix second a key was
/// first seen.
enum KeySet {
    /// Whole keys, in [`SHARDS`] tables by hash.
    Flat {
        shards: Vec<HashMap<Box<[u8]>, u32>>,
        hasher: DefaultHashBuilder,
        len: usize,
    },
    /// Key prefix → the times (last 8 key bytes) seen with it.
    Nested {
        prefixes: HashMap<Box<[u8]>, Times>,
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
                prefixes.get_mut(prefix)?.seen_mut(time)
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
                times.insert(time, now);
                *len += 1;
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
                    let before = times.len;
                    times.remove(time);
                    *len -= before - times.len;
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
            KeySet::Nested { prefixes, .. } => prefixes.values().filter_map(Times::oldest).min(),
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
                    times.retain_since(cutoff);
                    *len += times.len;
                    times.len > 0
                });
            }
        }
    }
}

/// The dedup keys of a request's records, in one buffer (one allocation
/// for the request instead of one per record). Records of datasets without
/// a key have no entry.
pub struct Keys {
    bytes: Vec<u8>,
    ends: Vec<(Dataset, usize)>,
}

impl Keys {
    pub fn of(records: &[crate::record::Record]) -> Keys {
        let mut keys = Keys {
            bytes: Vec::with_capacity(records.len() * 40),
            ends: Vec::with_capacity(records.len()),
        };
        for r in records {
            if r.key_into(&mut keys.bytes) {
                keys.ends.push((r.dataset, keys.bytes.len()));
            }
        }
        keys
    }

    /// The keys of rows given as columns, read from the key columns
    /// without building a row (the same bytes as [`Keys::of`] gives for
    /// the same rows as records).
    pub fn of_columns(columns: &Columns) -> Keys {
        Keys::of_parts(std::slice::from_ref(columns))
    }

    /// The keys of several datasets' columns, part after part.
    pub fn of_parts(parts: &[Columns]) -> Keys {
        let n = parts.iter().map(Columns::rows).sum::<usize>();
        let mut keys = Keys {
            bytes: Vec::with_capacity(n * 40),
            ends: Vec::with_capacity(n),
        };
        for part in parts {
            keys.append_columns(part);
        }
        keys
    }

    fn append_columns(&mut self, columns: &Columns) {
        let dataset = columns.dataset();
        let n = columns.rows();
        let keys = self;
        let key_columns = dataset.key_columns();
        if key_columns.is_empty() {
            return;
        }
        let readers: Vec<KeyColumn> = key_columns
            .iter()
            .map(|&c| KeyColumn::of(columns.batch().column(c)))
            .collect::<Result<_, _>>()
            .expect("every column type of a schema can be a key");
        for i in 0..n {
            for r in &readers {
                r.encode(i, &mut keys.bytes);
            }
            keys.ends.push((dataset, keys.bytes.len()));
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Dataset, &[u8])> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|(_, end)| *end));
        self.ends
            .iter()
            .zip(starts)
            .map(|((d, end), start)| (*d, &self.bytes[start..*end]))
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
        self.admit(&mut set, dataset, key, now_secs)
    }

    /// Remembers each key of `keys` (in order, so a key twice in one call
    /// is a duplicate the second time), holding each dataset's lock once
    /// for a run of keys of that dataset; `fresh` gets `true` for each key
    /// not seen within the window.
    pub fn insert_all<'k>(
        &self,
        keys: impl IntoIterator<Item = (Dataset, &'k [u8])>,
        now_secs: u64,
        fresh: &mut Vec<bool>,
    ) {
        let mut held: Option<(Dataset, parking_lot::MutexGuard<'_, KeySet>)> = None;
        for (dataset, key) in keys {
            let set = match &mut held {
                Some((d, set)) if *d == dataset => set,
                _ => {
                    held = None;
                    &mut held.insert((dataset, self.sets[dataset.index()].lock())).1
                }
            };
            fresh.push(self.admit(set, dataset, key, now_secs));
        }
    }

    fn admit(&self, set: &mut KeySet, dataset: Dataset, key: &[u8], now_secs: u64) -> bool {
        let now = now_secs as u32;
        let window = self.window_secs;
        // A key seen within the window is a duplicate; one seen before it
        // counts as new and is seen again now.
        let again = |seen: &mut u32| {
            if now_secs.saturating_sub(*seen as u64) < window {
                return false;
            }
            *seen = now;
            true
        };
        if set.len() < self.max_keys {
            // Room for a new key: one lookup finds the key or inserts it.
            return match set {
                KeySet::Flat {
                    shards,
                    hasher,
                    len,
                } => match shards[KeySet::shard(hasher, key)].entry_ref(key) {
                    EntryRef::Occupied(mut e) => again(e.get_mut()),
                    EntryRef::Vacant(e) => {
                        e.insert(now);
                        *len += 1;
                        true
                    }
                },
                KeySet::Nested { prefixes, len } => {
                    let (prefix, time) = KeySet::split(key);
                    let times = prefixes.entry_ref(prefix).or_default();
                    match times.seen_mut(time) {
                        Some(seen) => again(seen),
                        None => {
                            times.insert(time, now);
                            *len += 1;
                            true
                        }
                    }
                }
            };
        }
        if let Some(seen) = set.seen_mut(key) {
            if now_secs.saturating_sub(*seen as u64) < self.window_secs {
                return false;
            }
            *seen = now;
            return true;
        }
        if set.len() >= self.max_keys {
            self.evict_oldest_hour(set, dataset);
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

    /// The index against a second implementation (one map from whole key
    /// to first-seen second) over a long random run of inserts, batched
    /// inserts, removals, expiries and evictions, with times mostly in
    /// order per VM and sometimes late, repeated or removed and re-sent.
    #[test]
    fn vm_keys_agree_with_a_plain_map_under_random_operations() {
        let (window, max_keys) = (50u64, 400usize);
        let d = dedup(window, max_keys);
        let mut model: std::collections::HashMap<Vec<u8>, u64> = Default::default();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut next_time = [0i64; 4];
        let mut now = 0u64;
        let model_admit =
            |model: &mut std::collections::HashMap<Vec<u8>, u64>, key: &[u8], now: u64| {
                if let Some(seen) = model.get_mut(key) {
                    if now - *seen < window {
                        return false;
                    }
                    *seen = now;
                    return true;
                }
                if model.len() >= max_keys {
                    let oldest = *model.values().min().unwrap();
                    model.retain(|_, seen| *seen >= oldest + 3600);
                }
                model.insert(key.to_vec(), now);
                true
            };
        for step in 0..20_000 {
            if rand(10) == 0 {
                now += rand(5);
            }
            let vm = rand(4) as usize;
            let ts = match rand(10) {
                // A late sample or a re-send of an older one.
                0 => next_time[vm] - rand(30) as i64 - 1,
                _ => {
                    next_time[vm] += 1 + rand(3) as i64;
                    next_time[vm]
                }
            };
            let key = vm_key(&format!("vm-{vm}"), ts - 20);
            match rand(20) {
                0 => {
                    // A record that did not become durable.
                    d.remove(Dataset::VmMetrics, &key);
                    model.remove(&key);
                }
                1 => {
                    d.expire(now);
                    let cutoff = now.saturating_sub(window);
                    model.retain(|_, seen| *seen >= cutoff);
                }
                2 => {
                    let keys = [
                        key.clone(),
                        vm_key(&format!("vm-{vm}"), ts - 21),
                        key.clone(),
                    ];
                    let mut fresh = Vec::new();
                    d.insert_all(
                        keys.iter().map(|k| (Dataset::VmMetrics, &k[..])),
                        now,
                        &mut fresh,
                    );
                    let expected: Vec<bool> = keys
                        .iter()
                        .map(|k| model_admit(&mut model, k, now))
                        .collect();
                    assert_eq!(fresh, expected, "step {step}");
                }
                _ => {
                    let expected = model_admit(&mut model, &key, now);
                    assert_eq!(
                        d.insert(Dataset::VmMetrics, &key, now),
                        expected,
                        "step {step}"
                    );
                }
            }
            assert_eq!(d.len(Dataset::VmMetrics), model.len(), "step {step}");
        }
        assert!(d.metrics.dedup_evictions.get() > 0, "the bound was reached");
    }

    #[test]
    fn keys_of_records_split_per_record() {
        use crate::record::{Record, Value};
        let record = |dataset: Dataset, set: &[(&str, Value)]| {
            let mut values = vec![Value::Null; dataset.columns().len()];
            for (name, v) in set {
                values[dataset.column_index(name).unwrap()] = v.clone();
            }
            Record { dataset, values }
        };
        let records = vec![
            record(
                Dataset::VmMetrics,
                &[
                    ("vm_id", "vm-1".into()),
                    ("customer_id", "c".into()),
                    ("timestamp", Value::Ts(5)),
                ],
            ),
            // No key: no entry.
            record(Dataset::Rejected, &[("reason", "r".into())]),
            record(
                Dataset::UsageTool,
                &[("event_id", "e-22".into()), ("microdao_id", "d".into())],
            ),
        ];
        let keys = Keys::of(&records);
        let got: Vec<(Dataset, Vec<u8>)> = keys.iter().map(|(d, k)| (d, k.to_vec())).collect();
        let want: Vec<(Dataset, Vec<u8>)> = records
            .iter()
            .filter_map(|r| Some((r.dataset, r.key()?)))
            .collect();
        assert_eq!(want.len(), 2);
        assert_eq!(got, want);
    }

    /// Keys read from columns are the bytes the records' own encoding
    /// gives, for every dataset and every column type, nulls included.
    #[test]
    fn keys_of_columns_equal_keys_of_the_same_records() {
        for d in Dataset::ALL {
            let records = crate::batch::convert::tests::records_of_every_type(d, 6);
            let want: Vec<(Dataset, Vec<u8>)> = Keys::of(&records)
                .iter()
                .map(|(d, k)| (d, k.to_vec()))
                .collect();
            let columns = Columns::of_records(records);
            let got: Vec<(Dataset, Vec<u8>)> = Keys::of_columns(&columns[0])
                .iter()
                .map(|(d, k)| (d, k.to_vec()))
                .collect();
            assert_eq!(got, want, "{d}");
            assert_eq!(got.len(), if d.has_key() { 6 } else { 0 }, "{d}");
        }
    }
}
