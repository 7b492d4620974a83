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
//! The number of keys per dataset is bounded: past the bound, the oldest
//! keys are dropped before their window ends and `tally_dedup_evictions_total`
//! counts them, so memory stays bounded and the shortened window is
//! visible. An id-keyed dataset drops its earliest arrivals one for one
//! with new keys ([`IdKeys`]); a time-keyed one drops the keys of its
//! earliest seconds, an eighth of the bound at a time. Neither empties the
//! index at once: at 50,000 keys a second the default bound is reached in
//! 200 s, and dropping "the oldest hour" then dropped every key, with a
//! walk that held the admission lock for seconds.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
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

/// Arrivals an expiry drops per hold of a dataset's lock.
const EXPIRE_STEP: usize = 4096;

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

    /// The first-seen seconds of the live times.
    fn seen_values(&self) -> impl Iterator<Item = u32> + '_ {
        let run = self.run_seen.iter().filter(|s| **s != REMOVED);
        run.chain(self.scattered.values()).copied()
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
            // The usual case: compact in place. The run is in arrival
            // order, so the times to drop mostly come first: then the rest
            // moves down in one go.
            let keep = |seen: u32| seen != REMOVED && seen >= cutoff;
            let start = self
                .run_seen
                .iter()
                .position(|s| keep(*s))
                .unwrap_or(self.run_seen.len());
            if self.run_seen[start..].iter().all(|s| keep(*s)) {
                self.run.drain(..start);
                self.run_seen.drain(..start);
            } else {
                let mut kept = 0;
                for i in start..self.run.len() {
                    let seen = self.run_seen[i];
                    if keep(seen) {
                        self.run[kept] = self.run[i];
                        self.run_seen[kept] = seen;
                        kept += 1;
                    }
                }
                self.run.truncate(kept);
                self.run_seen.truncate(kept);
            }
            let kept = self.run.len();
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

/// A key of an id-keyed dataset with the second it was first seen and the
/// low half of its hash (in what would be padding: 24 bytes either way).
/// Lookups compare the half hash before the key's bytes, so a probe does
/// not read the key of another that shares its table slot group.
struct IdKey {
    key: Box<[u8]>,
    seen: u32,
    hash_lo: u32,
}

impl IdKey {
    fn is(&self, key: &[u8], hash: u64) -> bool {
        self.hash_lo == hash as u32 && *self.key == *key
    }

    /// Whether this is the key of the arrival `(hash, seen)`.
    fn arrived(&self, hash: u64, seen: u32, hasher: &DefaultHashBuilder) -> bool {
        self.seen == seen && self.hash_lo == hash as u32 && hasher.hash_one(&self.key) == hash
    }
}

/// One admission: the second it happens, the window and the key bound.
#[derive(Clone, Copy)]
struct Admission {
    now: u32,
    window: u64,
    max_keys: usize,
}

impl Admission {
    /// Whether a key first seen at `seen` is still inside the window.
    fn within_window(&self, seen: u32) -> bool {
        (self.now as u64).saturating_sub(seen as u64) < self.window
    }
}

/// Arrivals per chunk of [`Arrivals`].
const ARRIVALS_CHUNK: usize = 1 << 16;

/// Id keys in arrival order (hash and first-seen second), oldest first, in
/// chunks: growing never copies what is held (one vector of ten million
/// arrivals doubling copied 160 MB with the admission lock held), and
/// memory is the arrivals held plus at most one chunk.
#[derive(Default)]
struct Arrivals {
    chunks: VecDeque<Vec<(u64, u32)>>,
    /// Arrivals of the front chunk already taken.
    head: usize,
}

impl Arrivals {
    /// Every chunk but the last is full.
    fn len(&self) -> usize {
        match self.chunks.back() {
            Some(last) => (self.chunks.len() - 1) * ARRIVALS_CHUNK + last.len() - self.head,
            None => 0,
        }
    }

    fn push(&mut self, arrival: (u64, u32)) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < ARRIVALS_CHUNK => chunk.push(arrival),
            _ => {
                let mut chunk = Vec::with_capacity(ARRIVALS_CHUNK);
                chunk.push(arrival);
                self.chunks.push_back(chunk);
            }
        }
    }

    fn front(&self) -> Option<(u64, u32)> {
        self.chunks.front()?.get(self.head).copied()
    }

    fn pop(&mut self) -> Option<(u64, u32)> {
        let several = self.chunks.len() > 1;
        let chunk = self.chunks.front_mut()?;
        let arrival = *chunk.get(self.head)?;
        self.head += 1;
        if self.head == chunk.len() {
            if chunk.len() == ARRIVALS_CHUNK || several {
                self.chunks.pop_front();
            } else {
                chunk.clear();
            }
            self.head = 0;
        }
        Some(arrival)
    }

    /// Rebuilds the arrivals from `keep`'s choice, in order (start-up and
    /// rare clean-ups: it walks them all).
    fn rebuild(&mut self, keep: impl FnMut(&(u64, u32)) -> bool) {
        let mut all = self.take_all();
        all.retain(keep);
        self.fill(all);
    }

    fn take_all(&mut self) -> Vec<(u64, u32)> {
        let mut all = Vec::with_capacity(self.len());
        while let Some(a) = self.pop() {
            all.push(a);
        }
        all
    }

    fn fill(&mut self, all: Vec<(u64, u32)>) {
        *self = Arrivals::default();
        for a in all {
            self.push(a);
        }
    }

    /// Orders the arrivals by first-seen second (stable).
    fn sort_by_seen(&mut self) {
        let mut all = self.take_all();
        all.sort_by_key(|(_, seen)| *seen);
        self.fill(all);
    }
}

/// The keys of a dataset keyed by an id alone, in [`SHARDS`] tables by
/// hash, and their arrivals in order: the hash and first-seen second of
/// each key, oldest first. The key bound and the window drop keys from the
/// front of the arrivals, one at a time, so neither walks the whole index
/// (a walk over ten million boxed keys, freeing them, held the admission
/// lock for seconds). An arrival whose key was removed, or seen again
/// later (which is a new arrival), finds no key of its hash and second,
/// and is skipped.
struct IdKeys {
    shards: Vec<HashTable<IdKey>>,
    hasher: DefaultHashBuilder,
    arrivals: Arrivals,
    len: usize,
}

impl IdKeys {
    fn new() -> Self {
        IdKeys {
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            hasher: DefaultHashBuilder::default(),
            arrivals: Arrivals::default(),
            len: 0,
        }
    }

    fn shard(hash: u64) -> usize {
        // The top bits: the table inside a shard indexes by the low ones.
        (hash >> 58) as usize % SHARDS
    }

    /// Admits `key` at `now`: `true` when it was not seen within `window`
    /// seconds. A new key past `max_keys` first drops the oldest arrivals;
    /// `evicted` counts them.
    fn admit(&mut self, key: &[u8], at: Admission, evicted: &mut u64) -> bool {
        let Admission { now, max_keys, .. } = at;
        let hash = self.hasher.hash_one(key);
        let hasher = &self.hasher;
        let rehash = |e: &IdKey| hasher.hash_one(&e.key);
        match self.shards[Self::shard(hash)].entry(hash, |e| e.is(key, hash), rehash) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                let seen = &mut e.get_mut().seen;
                if at.within_window(*seen) {
                    return false;
                }
                *seen = now;
                self.arrivals.push((hash, now));
                return true;
            }
            hashbrown::hash_table::Entry::Vacant(v) if self.len < max_keys => {
                v.insert(IdKey {
                    key: key.into(),
                    seen: now,
                    hash_lo: hash as u32,
                });
            }
            hashbrown::hash_table::Entry::Vacant(_) => {
                while self.len >= max_keys {
                    match self.pop_oldest() {
                        Some(true) => *evicted += 1,
                        Some(false) => {}
                        None => break,
                    }
                }
                let hasher = &self.hasher;
                self.shards[Self::shard(hash)].insert_unique(
                    hash,
                    IdKey {
                        key: key.into(),
                        seen: now,
                        hash_lo: hash as u32,
                    },
                    |e| hasher.hash_one(&e.key),
                );
            }
        }
        self.len += 1;
        self.arrivals.push((hash, now));
        if self.len < max_keys {
            self.grow_early(Self::shard(hash));
        }
        true
    }

    /// The shards fill evenly, so left alone all 64 double within a
    /// second or two (at 7.3 M keys: acknowledgements held ~300 ms at
    /// 50,000 keys/s). Shard `s` doubles once it is `1 - s/512` full
    /// instead, which spreads the doublings over an eighth of the fill.
    /// Only while the index fills: at the bound, keys leave as they come,
    /// and the slots they leave shrink `capacity()`; growing on it then
    /// rehashed a shard every few seconds (70 ms batches).
    fn grow_early(&mut self, shard: usize) {
        let table = &mut self.shards[shard];
        let (len, cap) = (table.len(), table.capacity());
        if cap >= 4096 && len * 512 >= cap * (512 - shard) && len < cap {
            let hasher = &self.hasher;
            table.reserve(cap - len + 1, |e| hasher.hash_one(&e.key));
        }
    }

    fn remove(&mut self, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        if let Ok(e) = self.shards[Self::shard(hash)].find_entry(hash, |e| e.is(key, hash)) {
            e.remove();
            self.len -= 1;
        }
        // Removed keys leave their arrivals behind: past twice the live
        // keys, the arrivals are walked once to drop them.
        if self.arrivals.len() > 2 * self.len + 65_536 {
            let (shards, hasher) = (&self.shards, &self.hasher);
            self.arrivals.rebuild(|&(hash, seen)| {
                shards[Self::shard(hash)]
                    .find(hash, |e| e.arrived(hash, seen, hasher))
                    .is_some()
            });
        }
    }

    /// Takes the oldest arrival: `Some(true)` when its key was dropped,
    /// `Some(false)` when it was stale, `None` when there is none.
    fn pop_oldest(&mut self) -> Option<bool> {
        let (hash, seen) = self.arrivals.pop()?;
        let hasher = &self.hasher;
        match self.shards[Self::shard(hash)].find_entry(hash, |e| e.arrived(hash, seen, hasher)) {
            Ok(e) => {
                e.remove();
                self.len -= 1;
                Some(true)
            }
            Err(_) => Some(false),
        }
    }

    /// Drops keys first seen before `cutoff`, at most `limit` arrivals;
    /// `false` when none is left to drop.
    fn expire(&mut self, cutoff: u32, limit: usize) -> bool {
        for _ in 0..limit {
            match self.arrivals.front() {
                Some((_, seen)) if seen < cutoff => {
                    self.pop_oldest();
                }
                _ => return false,
            }
        }
        true
    }

    /// Puts the arrivals in order of first-seen second (in their order
    /// within a second).
    fn order_by_first_seen(&mut self) {
        self.arrivals.sort_by_seen();
    }

    /// The second the oldest key kept was first seen.
    fn oldest(&self) -> Option<u32> {
        self.arrivals.front().map(|(_, seen)| seen)
    }
}

/// The keys of one dataset. `seen` values are the Unix second a key was
/// first seen.
enum KeySet {
    /// Whole keys, in arrival order ([`IdKeys`]).
    Flat(IdKeys),
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
            KeySet::Flat(IdKeys::new())
        }
    }

    fn len(&self) -> usize {
        match self {
            KeySet::Flat(keys) => keys.len,
            KeySet::Nested { len, .. } => *len,
        }
    }

    /// Splits a nested key into its prefix and its 8-byte time part.
    fn split(key: &[u8]) -> (&[u8], u64) {
        let (prefix, time) = key.split_at(key.len().saturating_sub(8));
        let mut last = [0u8; 8];
        last[8 - time.len()..].copy_from_slice(time);
        (prefix, u64::from_be_bytes(last))
    }

    fn remove(&mut self, key: &[u8]) {
        match self {
            KeySet::Flat(keys) => keys.remove(key),
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
}

/// The keys of a dataset whose key ends in the record's time, per prefix.
/// The key bound drops the keys first seen in the earliest seconds, at
/// least an eighth of the bound at a time (one walk over the runs, which
/// are plain vectors), so the window shrinks by that eighth, not to
/// nothing.
impl KeySet {
    fn admit_nested(
        prefixes: &mut HashMap<Box<[u8]>, Times>,
        len: &mut usize,
        key: &[u8],
        at: Admission,
        evicted: &mut u64,
    ) -> bool {
        let Admission { now, max_keys, .. } = at;
        let (prefix, time) = Self::split(key);
        let times = prefixes.entry_ref(prefix).or_default();
        if let Some(seen) = times.seen_mut(time) {
            if at.within_window(*seen) {
                return false;
            }
            *seen = now;
            return true;
        }
        if *len >= max_keys {
            *evicted += Self::evict_earliest_seconds(prefixes, len, max_keys);
            prefixes.entry_ref(prefix).or_default().insert(time, now);
        } else {
            times.insert(time, now);
        }
        *len += 1;
        true
    }

    /// Drops the keys first seen in the earliest seconds, at least an
    /// eighth of `max_keys`; returns how many.
    fn evict_earliest_seconds(
        prefixes: &mut HashMap<Box<[u8]>, Times>,
        len: &mut usize,
        max_keys: usize,
    ) -> u64 {
        let want = (max_keys / 8).max(1);
        // Plain loops over the runs (a removed time is `u32::MAX`, never
        // the least): the index holds millions of times.
        let Some(lo) = prefixes
            .values()
            .flat_map(|t| {
                t.run_seen
                    .iter()
                    .min()
                    .into_iter()
                    .chain(t.scattered.values())
            })
            .min()
            .copied()
        else {
            return 0;
        };
        // The last second to drop: counted per second over the next day
        // and a half or so, else (a window longer than that) found by
        // selection.
        const SPAN: usize = 1 << 17;
        let mut per_second = vec![0usize; SPAN];
        let mut count = |seen: u32, n: usize| {
            let d = seen.wrapping_sub(lo) as usize;
            if d < SPAN {
                per_second[d] += n;
            }
        };
        for times in prefixes.values() {
            // A run's times come in seconds that repeat: counted per
            // stretch of one second.
            let mut stretch = (lo, 0);
            for &seen in &times.run_seen {
                if seen == stretch.0 {
                    stretch.1 += 1;
                } else {
                    count(stretch.0, stretch.1);
                    stretch = (seen, 1);
                }
            }
            count(stretch.0, stretch.1);
            for &seen in times.scattered.values() {
                count(seen, 1);
            }
        }
        let mut dropped = 0;
        let found = per_second.iter().position(|n| {
            dropped += n;
            dropped >= want
        });
        let last = match found {
            Some(d) => lo + d as u32,
            None => {
                let mut all: Vec<u32> = prefixes.values().flat_map(Times::seen_values).collect();
                let i = (want - 1).min(all.len() - 1);
                *all.select_nth_unstable(i).1
            }
        };
        let before = *len;
        Self::retain_nested_since(prefixes, len, last.saturating_add(1));
        (before - *len) as u64
    }

    /// Keeps the time-keyed keys first seen at or after `cutoff`, and
    /// drops the prefixes left empty.
    fn retain_nested_since(prefixes: &mut HashMap<Box<[u8]>, Times>, len: &mut usize, cutoff: u32) {
        *len = 0;
        prefixes.retain(|_, times| {
            times.retain_since(cutoff);
            *len += times.len;
            times.len > 0
        });
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
        let at = Admission {
            now: now_secs as u32,
            window: self.window_secs,
            max_keys: self.max_keys,
        };
        let mut evicted = 0;
        let fresh = match set {
            KeySet::Flat(keys) => keys.admit(key, at, &mut evicted),
            KeySet::Nested { prefixes, len } => {
                KeySet::admit_nested(prefixes, len, key, at, &mut evicted)
            }
        };
        if evicted > 0 {
            self.evicted(set, dataset, evicted, now_secs);
        }
        fresh
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

    /// Drops keys older than the window. An id-keyed dataset drops its
    /// oldest arrivals a few thousand at a time, letting go of the lock
    /// between, so ingest never waits for a whole expiry.
    pub fn expire(&self, now_secs: u64) {
        let cutoff = now_secs.saturating_sub(self.window_secs) as u32;
        for set in &self.sets {
            loop {
                let mut set = set.lock();
                match &mut *set {
                    KeySet::Flat(keys) => {
                        if !keys.expire(cutoff, EXPIRE_STEP) {
                            break;
                        }
                    }
                    KeySet::Nested { prefixes, len } => {
                        KeySet::retain_nested_since(prefixes, len, cutoff);
                        break;
                    }
                }
            }
        }
    }

    /// Orders each id-keyed dataset's arrivals by the second their keys
    /// were first seen, once keys came in another order: start-up restores
    /// the keys of the newest files first, so that the key bound keeps
    /// those, and the bound and the window then drop the oldest first.
    pub fn order_by_first_seen(&self) {
        for set in &self.sets {
            if let KeySet::Flat(keys) = &mut *set.lock() {
                keys.order_by_first_seen();
            }
        }
    }

    pub fn len(&self, dataset: Dataset) -> usize {
        self.sets[dataset.index()].lock().len()
    }

    pub fn is_empty(&self) -> bool {
        Dataset::ALL.iter().all(|d| self.len(*d) == 0)
    }

    /// Counts keys the bound dropped, and says so in the log once per
    /// bound's worth, with how far back the index now reaches.
    fn evicted(&self, set: &KeySet, dataset: Dataset, evicted: u64, now_secs: u64) {
        let total = self.metrics.dedup_evictions.get();
        self.metrics.dedup_evictions.add(evicted);
        let bound = self.max_keys as u64;
        if total / bound == (total + evicted) / bound && total > 0 {
            return;
        }
        let oldest = match set {
            KeySet::Flat(keys) => keys.oldest(),
            KeySet::Nested { prefixes, .. } => prefixes.values().flat_map(Times::seen_values).min(),
        };
        let reach_secs = oldest.map(|s| now_secs.saturating_sub(s as u64));
        tracing::info!(%dataset, evicted = total + evicted, max_keys = self.max_keys, ?reach_secs, "dedup key bound reached: the oldest keys left memory before their window ended; compaction still drops copies of them");
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
    fn arrivals_come_out_in_order_across_chunks() {
        let mut arrivals = Arrivals::default();
        let mut model = std::collections::VecDeque::new();
        let mut next = 0u64;
        // Pushes outrun pops, then pops catch up, across several chunks.
        for round in 0..4 * ARRIVALS_CHUNK {
            let pushes = if round < 3 * ARRIVALS_CHUNK { 2 } else { 0 };
            for _ in 0..pushes {
                arrivals.push((next, next as u32));
                model.push_back((next, next as u32));
                next += 1;
            }
            assert_eq!(arrivals.front(), model.front().copied());
            assert_eq!(arrivals.pop(), model.pop_front());
            assert_eq!(arrivals.len(), model.len());
        }
        while let Some(a) = model.pop_front() {
            assert_eq!(arrivals.pop(), Some(a));
        }
        assert_eq!((arrivals.pop(), arrivals.len()), (None, 0));
        arrivals.push((7, 7));
        assert_eq!(arrivals.front(), Some((7, 7)));
    }

    #[test]
    fn an_id_key_entry_is_a_boxed_key_and_two_halves() {
        assert_eq!(std::mem::size_of::<IdKey>(), 24);
    }

    #[test]
    fn key_bound_drops_the_earliest_arrivals_of_ids_and_counts_them() {
        let d = dedup(86_400, 3);
        let llm = Dataset::UsageLlm;
        assert!(d.insert(llm, b"1", 0));
        assert!(d.insert(llm, b"2", 0));
        assert!(d.insert(llm, b"3", 0));
        // Full: each new key drops the earliest arrival, one at a time.
        assert!(d.insert(llm, b"4", 1));
        assert_eq!(d.len(llm), 3);
        assert_eq!(d.metrics.dedup_evictions.get(), 1);
        assert!(!d.insert(llm, b"2", 2), "2 is still held");
        assert!(d.insert(llm, b"1", 2), "1 left memory");
        assert_eq!(d.metrics.dedup_evictions.get(), 2);
        // A removed key's arrival is skipped, not counted.
        d.remove(llm, b"3");
        assert!(d.insert(llm, b"5", 3));
        assert_eq!(d.metrics.dedup_evictions.get(), 2);
        assert!(d.insert(llm, b"6", 3));
        assert_eq!(d.metrics.dedup_evictions.get(), 3, "4 went");
        assert!(!d.insert(llm, b"1", 4));
        assert!(!d.insert(llm, b"5", 4));
        assert!(d.insert(llm, b"4", 4));
    }

    #[test]
    fn key_bound_drops_the_earliest_seconds_of_vm_keys_and_counts_them() {
        let d = dedup(86_400, 8);
        let key = |ts| vm_key("vm-1", ts);
        for ts in 0..8 {
            // Two keys a second.
            assert!(d.insert(Dataset::VmMetrics, &key(ts), ts as u64 / 2));
        }
        // Full: an eighth of the bound (one key) is wanted, and the whole
        // earliest second (two keys) goes.
        assert!(d.insert(Dataset::VmMetrics, &key(8), 10));
        assert_eq!(d.len(Dataset::VmMetrics), 7);
        assert_eq!(d.metrics.dedup_evictions.get(), 2);
        assert!(d.insert(Dataset::VmMetrics, &key(0), 10), "second 0 left");
        assert!(
            !d.insert(Dataset::VmMetrics, &key(2), 10),
            "second 1 is held"
        );
    }

    #[test]
    fn keys_restored_newest_first_are_dropped_oldest_first() {
        let d = dedup(100, 3);
        let llm = Dataset::UsageLlm;
        for (key, seen) in [(b"c", 30), (b"b", 20), (b"a", 10)] {
            assert!(d.insert(llm, key, seen));
        }
        d.order_by_first_seen();
        assert!(d.insert(llm, b"d", 40));
        assert!(d.insert(llm, b"a", 41), "a, the oldest, left first");
        assert!(d.insert(llm, b"b", 42), "then b");
        assert!(!d.insert(llm, b"d", 42), "d stays");
        d.expire(141);
        assert_eq!(d.len(llm), 2, "d went with the window");
        assert!(!d.insert(llm, b"a", 140));
    }

    #[test]
    fn expiry_drops_arrivals_before_the_window_and_keeps_later_ones() {
        let d = dedup(100, 1_000_000);
        let llm = Dataset::UsageLlm;
        // More keys than one step of an expiry.
        let n = EXPIRE_STEP as u64 * 3 + 7;
        for i in 0..n {
            assert!(d.insert(llm, format!("old-{i}").as_bytes(), i / 1000));
        }
        assert!(d.insert(llm, b"new", 150));
        // A key seen again after its window is a new arrival.
        assert!(d.insert(llm, b"old-0", 150));
        d.expire(160);
        assert_eq!(d.len(llm), 2);
        assert!(!d.insert(llm, b"old-0", 160));
        assert!(d.insert(llm, b"old-1", 160));
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

    /// A second implementation of the index: one map from whole key to
    /// first-seen second, and the arrivals in order.
    #[derive(Default)]
    struct Model {
        seen: std::collections::HashMap<Vec<u8>, u64>,
        arrivals: std::collections::VecDeque<(Vec<u8>, u64)>,
    }

    impl Model {
        /// Takes the oldest arrival, dropping its key if it is still the
        /// key's latest; `false` when there is none.
        fn pop(&mut self) -> bool {
            let Some((key, at)) = self.arrivals.pop_front() else {
                return false;
            };
            if self.seen.get(&key) == Some(&at) {
                self.seen.remove(&key);
            }
            true
        }
    }

    /// How the model makes room at the key bound.
    #[derive(Clone, Copy)]
    enum Bound {
        /// Drops the earliest arrivals until there is room.
        Arrivals,
        /// Drops every key of the earliest seconds, at least an eighth of
        /// the bound.
        EarliestSeconds,
    }

    /// The index against [`Model`] over a long random run of inserts,
    /// batched inserts, removals, expiries and evictions, with times
    /// mostly in order per key prefix and sometimes late, repeated or
    /// removed and re-sent.
    fn agrees_with_a_plain_map(dataset: Dataset, key_of: fn(usize, i64) -> Vec<u8>, bound: Bound) {
        let (window, max_keys) = (50u64, 400usize);
        let d = dedup(window, max_keys);
        let mut model = Model::default();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut next_time = [0i64; 4];
        let mut now = 0u64;
        let model_admit = |model: &mut Model, key: &[u8], now: u64| {
            if let Some(seen) = model.seen.get_mut(key) {
                if now - *seen < window {
                    return false;
                }
                *seen = now;
                model.arrivals.push_back((key.to_vec(), now));
                return true;
            }
            if model.seen.len() >= max_keys {
                match bound {
                    Bound::Arrivals => while model.seen.len() >= max_keys && model.pop() {},
                    Bound::EarliestSeconds => {
                        let mut seens: Vec<u64> = model.seen.values().copied().collect();
                        seens.sort_unstable();
                        let last = seens[(max_keys / 8).max(1) - 1];
                        model.seen.retain(|_, seen| *seen > last);
                    }
                }
            }
            model.seen.insert(key.to_vec(), now);
            model.arrivals.push_back((key.to_vec(), now));
            true
        };
        for step in 0..20_000 {
            if rand(10) == 0 {
                now += rand(5);
            }
            let prefix = rand(4) as usize;
            let ts = match rand(10) {
                // A late record or a re-send of an older one.
                0 => next_time[prefix] - rand(30) as i64 - 1,
                _ => {
                    next_time[prefix] += 1 + rand(3) as i64;
                    next_time[prefix]
                }
            };
            let key = key_of(prefix, ts - 20);
            match rand(20) {
                0 => {
                    // A record that did not become durable.
                    d.remove(dataset, &key);
                    model.seen.remove(&key);
                }
                1 => {
                    d.expire(now);
                    let cutoff = now.saturating_sub(window);
                    match bound {
                        Bound::Arrivals => {
                            while model.arrivals.front().is_some_and(|(_, at)| *at < cutoff) {
                                model.pop();
                            }
                        }
                        Bound::EarliestSeconds => model.seen.retain(|_, seen| *seen >= cutoff),
                    }
                }
                2 => {
                    let keys = [key.clone(), key_of(prefix, ts - 21), key.clone()];
                    let mut fresh = Vec::new();
                    d.insert_all(keys.iter().map(|k| (dataset, &k[..])), now, &mut fresh);
                    let expected: Vec<bool> = keys
                        .iter()
                        .map(|k| model_admit(&mut model, k, now))
                        .collect();
                    assert_eq!(fresh, expected, "step {step}");
                }
                _ => {
                    let expected = model_admit(&mut model, &key, now);
                    assert_eq!(d.insert(dataset, &key, now), expected, "step {step}");
                }
            }
            assert_eq!(d.len(dataset), model.seen.len(), "step {step}");
        }
        assert!(d.metrics.dedup_evictions.get() > 0, "the bound was reached");
    }

    #[test]
    fn vm_keys_agree_with_a_plain_map_under_random_operations() {
        agrees_with_a_plain_map(
            Dataset::VmMetrics,
            |vm, ts| vm_key(&format!("vm-{vm}"), ts),
            Bound::EarliestSeconds,
        );
    }

    #[test]
    fn id_keys_agree_with_a_plain_map_under_random_operations() {
        agrees_with_a_plain_map(
            Dataset::UsageLlm,
            |source, n| format!("evt-{source}-{n}").into_bytes(),
            Bound::Arrivals,
        );
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
