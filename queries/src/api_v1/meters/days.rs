//! Days of a meter, merged from its stored hours and kept in memory: a
//! month is read as 30 days × groups rows, not 720 hours × groups.
//!
//! A day is kept per meter definition and tenant, at the full grain of the
//! stored hours (subject and every group-by key), with subjects and group
//! values interned as numbers, so a query regroups it with integer keys.
//! It is read from the day's stored rollup (`meter_daily`, merged by the
//! compactor) when that was merged from the hours stored now, and merged
//! from the stored hours otherwise. It names the stored hour files it
//! stands for; when the day's set of rolled-up hours changes (a late event
//! re-rolled, a new hour), it is read again. Only days that lie whole in one window of the query are
//! read this way (no window, or `DAY`/`MONTH` windows whose boundaries fall
//! on UTC midnights); the others are read by hour.
//!
//! Memory: one row per (subject, groups) of a day, about 60 bytes, plus 4
//! bytes per distinct value of `UNIQUE_COUNT` (interned); at most
//! [`MAX_DAYS`] days are kept, the least recently used leaving first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use tally_pipeline::rules::meter::{definition_fingerprint, Fold, Meter};
use tally_pipeline::rules::meter_hourly::HourRows;

/// Days kept, over every meter and tenant.
pub const MAX_DAYS: usize = 2048;

/// A group value or subject that is absent.
pub const NONE: u32 = u32::MAX;

/// Strings as numbers, for one meter and tenant.
#[derive(Debug, Default)]
pub struct Names {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Names {
    pub fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(s);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// The id of `s`, if it was seen.
    pub fn find(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        (id != NONE).then(|| self.names[id as usize].as_ref())
    }
}

/// One row of a day.
#[derive(Debug)]
pub struct DayRow {
    pub subject: u32,
    pub groups: Box<[u32]>,
    /// The time of its first event.
    pub first: i64,
    /// The fold of its events; for `UNIQUE_COUNT`, an empty set, the
    /// values being in `distinct`.
    pub fold: Fold,
    /// `UNIQUE_COUNT`: the day's distinct values, interned, sorted.
    pub distinct: Box<[u32]>,
}

/// A meter's day for one tenant.
#[derive(Debug)]
pub struct Day {
    /// The stored hour files it was merged from.
    pub sources: Vec<PathBuf>,
    pub rows: Vec<DayRow>,
}

/// The days of one meter definition and tenant, and their names.
#[derive(Debug, Default)]
pub struct MeterDays {
    pub names: Names,
    pub days: HashMap<i64, Arc<Day>>,
}

impl MeterDays {
    /// Merges the day `day` from `parts`: its stored day, or its stored
    /// hours. `sources` are its stored hour files (a stored day is merged
    /// from them); the day is kept by them, and merged again when they
    /// change.
    pub fn merge(
        &mut self,
        day: i64,
        meter: &Meter,
        tenant: &str,
        sources: Vec<PathBuf>,
        parts: &[(PathBuf, Arc<HourRows>)],
    ) -> Arc<Day> {
        if let Some(d) = self.days.get(&day).filter(|d| d.sources == sources) {
            return d.clone();
        }
        // (subject, groups) → (first event, fold, distinct values)
        type Cell = (i64, Fold, HashSet<u32>);
        let mut rows: HashMap<(u32, Box<[u32]>), Cell> = HashMap::new();
        for (_, part) in parts {
            for r in part.rows(meter, tenant).filter(|r| r.events > 0) {
                let subject = self.names.id(r.subject);
                let groups: Box<[u32]> = r
                    .groups
                    .iter()
                    .map(|g| g.map_or(NONE, |g| self.names.id(g)))
                    .collect();
                let first = r.first.unwrap_or(r.hour);
                let (fold, distinct) = match r.fold {
                    Fold::Unique(values) => (
                        Fold::Unique(HashSet::new()),
                        values.iter().map(|v| self.names.id(v)).collect(),
                    ),
                    other => (other, HashSet::new()),
                };
                match rows.entry((subject, groups)) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        let (f, kept, seen) = e.get_mut();
                        *f = (*f).min(first);
                        kept.merge(fold);
                        seen.extend(distinct);
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert((first, fold, distinct));
                    }
                }
            }
        }
        let day_rows = rows
            .into_iter()
            .map(|((subject, groups), (first, fold, distinct))| {
                let mut distinct: Vec<u32> = distinct.into_iter().collect();
                distinct.sort_unstable();
                DayRow {
                    subject,
                    groups,
                    first,
                    fold,
                    distinct: distinct.into(),
                }
            })
            .collect();
        let d = Arc::new(Day {
            sources,
            rows: day_rows,
        });
        self.days.insert(day, d.clone());
        d
    }
}

/// (meter slug, definition, tenant)
type Key = (String, u64, String);

/// Every meter's kept days.
#[derive(Default)]
pub struct DayCache {
    meters: Mutex<HashMap<Key, Arc<Mutex<MeterDays>>>>,
    /// (key, day), least recently used first.
    used: Mutex<VecDeque<(Key, i64)>>,
}

impl DayCache {
    /// The kept days of a meter (as now defined) for a tenant.
    pub fn of(&self, meter: &Meter, tenant: &str) -> Arc<Mutex<MeterDays>> {
        let key = (
            meter.def.slug.clone(),
            definition_fingerprint(&meter.def),
            tenant.to_string(),
        );
        self.meters.lock().entry(key).or_default().clone()
    }

    /// Notes that `day` of a meter was read; drops the least recently read
    /// days past [`MAX_DAYS`].
    pub fn used(&self, meter: &Meter, tenant: &str, day: i64) {
        let key = (
            meter.def.slug.clone(),
            definition_fingerprint(&meter.def),
            tenant.to_string(),
        );
        let mut used = self.used.lock();
        if let Some(i) = used.iter().position(|(k, d)| *d == day && *k == key) {
            used.remove(i);
        }
        used.push_back((key, day));
        while used.len() > MAX_DAYS {
            let Some((k, d)) = used.pop_front() else {
                break;
            };
            if let Some(m) = self.meters.lock().get(&k) {
                m.lock().days.remove(&d);
            }
        }
    }
}

/// A hasher for the integer keys of regrouped days (FxHash's step): the
/// keys are interned numbers, not input an attacker picks.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
