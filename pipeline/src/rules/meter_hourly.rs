//! The meters' stored hourly rollups (`meter_hourly`): for each meter, hour,
//! tenant, subject and group, the fold of the hour's events ([`Fold`]) in
//! columns, so a month is read as hours × groups rows, not as events.
//!
//! - A meter's rows carry its definition's fingerprint, and every meter that
//!   was rolled up leaves one *marker* row (no tenant) even in an hour with
//!   none of its events: a reader uses the hour's rows of a meter only when
//!   the marker of its current definition is there, and reads raw events
//!   otherwise (a meter created or changed since).
//! - `UNIQUE_COUNT` stays exact: each row keeps the hour's distinct values
//!   (`distinct`), and a window's count is the size of their union. That
//!   costs the values' text once per hour, subject and group in which they
//!   occur.
//! - Events a meter cannot read (value missing, or not a number where it
//!   needs one) are counted in `unreadable` by tenant and subject.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt64Type};
use arrow::error::ArrowError;
use serde_json::Value;

use super::meter::{definition_fingerprint, Fold, Meter};

/// The rollup table of the `events` dataset.
pub const TABLE: &str = "meter_hourly";

/// The same rows by UTC day (`hour` holds the day's start), merged from a
/// day's stored hours by [`DayFold`]: a month is read as 30 days × groups.
pub const DAY_TABLE: &str = "meter_daily";

pub fn schema() -> SchemaRef {
    let list = || DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    Arc::new(Schema::new(vec![
        Field::new("meter", DataType::Utf8, false),
        Field::new("definition", DataType::UInt64, false),
        Field::new("tenant", DataType::Utf8, true),
        Field::new("hour", DataType::Int64, false),
        Field::new("subject", DataType::Utf8, true),
        // In the order of the meter's group-by keys (by name).
        Field::new("groups", list(), true),
        // Events that gave the meter a value (every event, for COUNT).
        Field::new("events", DataType::UInt64, false),
        // The time of the first of them.
        Field::new("first_time", DataType::Int64, true),
        Field::new("sum", DataType::Float64, true),
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
        Field::new("latest_time", DataType::Int64, true),
        Field::new("latest", DataType::Float64, true),
        Field::new("distinct", list(), true),
        Field::new("unreadable", DataType::UInt64, false),
    ]))
}

/// One row's fold, the events it holds and those unreadable.
#[derive(Debug)]
struct Cell {
    fold: Fold,
    events: u64,
    first: i64,
    unreadable: u64,
}

/// (meter index, tenant, subject, groups)
type Key = (usize, String, String, Vec<Option<String>>);

/// Folds an hour's events, batch by batch, into every meter's rows.
pub struct MeterHourFold<'m> {
    meters: &'m [Meter],
    hour: i64,
    by_type: HashMap<&'m str, Vec<usize>>,
    cells: HashMap<Key, Cell>,
    held: usize,
}

fn column<'b>(b: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef, ArrowError> {
    b.column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("events have no column {name}")))
}

/// A column as text, whatever its encoding (dictionary or not).
fn text(b: &RecordBatch, name: &str) -> Result<ArrayRef, ArrowError> {
    arrow::compute::cast(column(b, name)?, &DataType::Utf8)
}

/// The event time as nanoseconds.
pub fn times(b: &RecordBatch) -> Result<ArrayRef, ArrowError> {
    arrow::compute::cast(column(b, "timestamp")?, &DataType::Int64)
}

impl<'m> MeterHourFold<'m> {
    pub fn new(meters: &'m [Meter], hour: i64) -> Self {
        let mut by_type: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, m) in meters.iter().enumerate() {
            by_type
                .entry(m.def.event_type.as_str())
                .or_default()
                .push(i);
        }
        Self {
            meters,
            hour,
            by_type,
            cells: HashMap::new(),
            held: 0,
        }
    }

    /// Adds a batch of `events` rows (any of its columns' encodings).
    pub fn push(&mut self, b: &RecordBatch) -> Result<(), ArrowError> {
        if self.by_type.is_empty() {
            return Ok(());
        }
        let kinds = text(b, "type")?;
        let kinds = kinds.as_string::<i32>();
        let tenants = text(b, "tenant")?;
        let tenants = tenants.as_string::<i32>();
        let subjects = text(b, "subject")?;
        let subjects = subjects.as_string::<i32>();
        let data = text(b, "data")?;
        let data = data.as_string::<i32>();
        let ts = times(b)?;
        let ts = ts.as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            let Some(which) = self.by_type.get(kinds.value(r)) else {
                continue;
            };
            let at = ts.value(r);
            let parsed: Option<Value> = (!data.is_null(r))
                .then(|| serde_json::from_str(data.value(r)).ok())
                .flatten();
            for &i in which {
                let m = &self.meters[i];
                if m.event_from.is_some_and(|from| at < from) {
                    continue;
                }
                let (groups, reading) = match m.read(parsed.as_ref()) {
                    Ok(reading) => (reading.groups.clone(), Some(reading)),
                    Err(_) => (Vec::new(), None),
                };
                let key = (
                    i,
                    tenants.value(r).to_string(),
                    subjects.value(r).to_string(),
                    groups,
                );
                let held = &mut self.held;
                let cell = self.cells.entry(key).or_insert_with_key(|k| {
                    *held += key_bytes(k);
                    Cell {
                        fold: Fold::new(m.aggregation),
                        events: 0,
                        first: i64::MAX,
                        unreadable: 0,
                    }
                });
                match reading {
                    Some(reading) => {
                        if let (Fold::Unique(set), super::meter::Taken::Text(s)) =
                            (&cell.fold, &reading.value)
                        {
                            if !set.contains(s) {
                                *held += 48 + s.len();
                            }
                        }
                        cell.fold.add(at, &reading.value);
                        cell.events += 1;
                        cell.first = cell.first.min(at);
                    }
                    None => cell.unreadable += 1,
                }
            }
        }
        Ok(())
    }

    /// Bytes held (an estimate of the rows and distinct values kept).
    pub fn memory(&self) -> usize {
        self.held
    }

    /// The hour's rows: every meter's marker, then its rows by tenant,
    /// subject and groups.
    pub fn finish(self) -> RecordBatch {
        write_rows(self.meters, self.hour, self.cells, |_| true)
    }
}

/// Each meter's marker (those `marked`), then its rows by tenant, subject
/// and groups.
fn write_rows(
    meters: &[Meter],
    hour: i64,
    cells: HashMap<Key, Cell>,
    marked: impl Fn(usize) -> bool,
) -> RecordBatch {
    let mut sorted: BTreeMap<(&str, u64), Vec<(Key, Cell)>> = BTreeMap::new();
    let fingerprints: Vec<u64> = meters
        .iter()
        .map(|m| definition_fingerprint(&m.def))
        .collect();
    for (i, m) in meters.iter().enumerate().filter(|(i, _)| marked(*i)) {
        sorted.insert((m.def.slug.as_str(), fingerprints[i]), Vec::new());
    }
    for (key, cell) in cells {
        let m = &meters[key.0];
        if let Some(rows) = sorted.get_mut(&(m.def.slug.as_str(), fingerprints[key.0])) {
            rows.push((key, cell));
        }
    }
    let mut w = Writer::default();
    for ((slug, fp), mut rows) in sorted {
        w.marker(slug, fp, hour);
        rows.sort_by(|a, b| (&a.0 .1, &a.0 .2, &a.0 .3).cmp(&(&b.0 .1, &b.0 .2, &b.0 .3)));
        for ((_, tenant, subject, groups), cell) in rows {
            w.row(slug, fp, &tenant, hour, &subject, &groups, &cell);
        }
    }
    w.finish()
}

/// The bytes a row of this key holds (an estimate).
fn key_bytes(k: &Key) -> usize {
    96 + k.1.len()
        + k.2.len()
        + k.3
            .iter()
            .map(|g| 24 + g.as_ref().map_or(0, String::len))
            .sum::<usize>()
}

/// Merges a UTC day's stored hours ([`HourRows`], one at a time) into the
/// day's rows, written as an hour's are (`hour` holds the day's start). A
/// meter has the day's marker only when every hour merged has its marker:
/// otherwise its day is read from its hours.
pub struct DayFold {
    meters: Vec<Meter>,
    day: i64,
    cells: HashMap<Key, Cell>,
    hours: usize,
    /// Hours with each meter's marker.
    marked: Vec<usize>,
    held: usize,
}

impl DayFold {
    pub fn new(meters: Vec<Meter>, day: i64) -> Self {
        Self {
            day,
            cells: HashMap::new(),
            hours: 0,
            marked: vec![0; meters.len()],
            meters,
            held: 0,
        }
    }

    /// Adds a stored hour's rows of every meter it was rolled up for.
    pub fn push(&mut self, hour: &HourRows) {
        self.hours += 1;
        for (i, m) in self.meters.iter().enumerate() {
            if !hour.has(m) {
                continue;
            }
            self.marked[i] += 1;
            for tenant in hour.tenants(m) {
                for r in hour.rows(m, tenant) {
                    let key = (
                        i,
                        tenant.to_string(),
                        r.subject.to_string(),
                        r.groups.iter().map(|g| g.map(str::to_string)).collect(),
                    );
                    let held = &mut self.held;
                    let cell = self.cells.entry(key).or_insert_with_key(|k| {
                        *held += key_bytes(k);
                        Cell {
                            fold: Fold::new(m.aggregation),
                            events: 0,
                            first: i64::MAX,
                            unreadable: 0,
                        }
                    });
                    if let (Fold::Unique(kept), Fold::Unique(new)) = (&cell.fold, &r.fold) {
                        *held += new
                            .iter()
                            .filter(|v| !kept.contains(*v))
                            .map(|v| 48 + v.len())
                            .sum::<usize>();
                    }
                    cell.fold.merge(r.fold);
                    cell.events += r.events;
                    if let Some(first) = r.first {
                        cell.first = cell.first.min(first);
                    }
                    cell.unreadable += r.unreadable;
                }
            }
        }
    }

    /// Bytes held (an estimate of the rows and distinct values kept).
    pub fn memory(&self) -> usize {
        self.held
    }

    /// The day's rows, with the markers of the meters every hour had.
    pub fn finish(self) -> RecordBatch {
        let (marked, hours) = (self.marked, self.hours);
        write_rows(&self.meters, self.day, self.cells, |i| marked[i] == hours)
    }
}

#[derive(Default)]
struct Writer {
    meter: StringBuilder,
    definition: UInt64Builder,
    tenant: StringBuilder,
    hour: Int64Builder,
    subject: StringBuilder,
    groups: ListBuilder<StringBuilder>,
    events: UInt64Builder,
    first_time: Int64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    latest_time: Int64Builder,
    latest: Float64Builder,
    distinct: ListBuilder<StringBuilder>,
    unreadable: UInt64Builder,
}

impl Writer {
    fn marker(&mut self, slug: &str, fp: u64, hour: i64) {
        self.meter.append_value(slug);
        self.definition.append_value(fp);
        self.tenant.append_null();
        self.hour.append_value(hour);
        self.subject.append_null();
        self.groups.append_null();
        self.events.append_value(0);
        self.first_time.append_null();
        for b in [
            &mut self.sum,
            &mut self.min,
            &mut self.max,
            &mut self.latest,
        ] {
            b.append_null();
        }
        self.latest_time.append_null();
        self.distinct.append_null();
        self.unreadable.append_value(0);
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        slug: &str,
        fp: u64,
        tenant: &str,
        hour: i64,
        subject: &str,
        groups: &[Option<String>],
        cell: &Cell,
    ) {
        self.meter.append_value(slug);
        self.definition.append_value(fp);
        self.tenant.append_value(tenant);
        self.hour.append_value(hour);
        self.subject.append_value(subject);
        for g in groups {
            self.groups.values().append_option(g.as_deref());
        }
        self.groups.append(true);
        self.events.append_value(cell.events);
        self.first_time
            .append_option((cell.events > 0).then_some(cell.first));
        let (mut sum, mut min, mut max, mut latest) = (None, None, None, None);
        match &cell.fold {
            Fold::Sum(s) => sum = Some(*s),
            Fold::Avg(s, _) => sum = Some(*s),
            Fold::Min(m) => min = *m,
            Fold::Max(m) => max = *m,
            Fold::Latest(l) => latest = *l,
            Fold::Count(_) | Fold::Unique(_) => {}
        }
        self.sum.append_option(sum);
        self.min.append_option(min);
        self.max.append_option(max);
        self.latest_time.append_option(latest.map(|l| l.0));
        self.latest.append_option(latest.map(|l| l.1));
        match &cell.fold {
            Fold::Unique(set) => {
                let mut values: Vec<&String> = set.iter().collect();
                values.sort_unstable();
                for v in values {
                    self.distinct.values().append_value(v);
                }
                self.distinct.append(true);
            }
            _ => self.distinct.append_null(),
        }
        self.unreadable.append_value(cell.unreadable);
    }

    fn finish(mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.meter.finish()),
            Arc::new(self.definition.finish()),
            Arc::new(self.tenant.finish()),
            Arc::new(self.hour.finish()),
            Arc::new(self.subject.finish()),
            Arc::new(self.groups.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.first_time.finish()),
            Arc::new(self.sum.finish()),
            Arc::new(self.min.finish()),
            Arc::new(self.max.finish()),
            Arc::new(self.latest_time.finish()),
            Arc::new(self.latest.finish()),
            Arc::new(self.distinct.finish()),
            Arc::new(self.unreadable.finish()),
        ];
        RecordBatch::try_new(schema(), columns).expect("the writer follows the schema")
    }
}

/// The strings of row `r` of a list column (none when it is null).
fn list_strings(l: &arrow::array::ListArray, r: usize) -> Vec<Option<&str>> {
    if l.is_null(r) {
        return Vec::new();
    }
    let offsets = l.value_offsets();
    let values = l.values().as_string::<i32>();
    (offsets[r] as usize..offsets[r + 1] as usize)
        .map(|i| (!values.is_null(i)).then(|| values.value(i)))
        .collect()
}

/// One stored row of a meter, as a reader merges it.
#[derive(Debug)]
pub struct HourRow<'a> {
    pub hour: i64,
    pub subject: &'a str,
    pub groups: Vec<Option<&'a str>>,
    pub events: u64,
    /// The time of the first of them.
    pub first: Option<i64>,
    pub unreadable: u64,
    pub fold: Fold,
}

/// A stored hour's rows, indexed by meter and tenant (decoded once, kept
/// by the reader).
#[derive(Debug)]
pub struct HourRows {
    batch: RecordBatch,
    /// (slug, definition) of every meter rolled up in the hour.
    markers: HashSet<(String, u64)>,
    /// (slug, tenant) → its rows.
    ranges: HashMap<(String, String), Range<usize>>,
}

impl HourRows {
    pub fn new(batch: RecordBatch) -> Result<HourRows, ArrowError> {
        if batch.schema().fields() != schema().fields() {
            return Err(ArrowError::SchemaError(format!(
                "{TABLE} has other columns than this release writes: {:?}",
                batch.schema()
            )));
        }
        let meter = batch.column(0).as_string::<i32>();
        let def = batch.column(1).as_primitive::<UInt64Type>();
        let tenant = batch.column(2).as_string::<i32>();
        let mut markers = HashSet::new();
        let mut ranges: HashMap<(String, String), Range<usize>> = HashMap::new();
        for r in 0..batch.num_rows() {
            if tenant.is_null(r) {
                markers.insert((meter.value(r).to_string(), def.value(r)));
                continue;
            }
            let key = (meter.value(r).to_string(), tenant.value(r).to_string());
            let range = ranges.entry(key).or_insert(r..r);
            range.end = r + 1;
        }
        Ok(HourRows {
            batch,
            markers,
            ranges,
        })
    }

    /// Whether the hour was rolled up for this definition of a meter.
    pub fn has(&self, meter: &Meter) -> bool {
        self.markers
            .contains(&(meter.def.slug.clone(), definition_fingerprint(&meter.def)))
    }

    /// The tenants with rows of a meter.
    pub fn tenants<'s>(&'s self, meter: &'s Meter) -> impl Iterator<Item = &'s str> + 's {
        self.ranges
            .keys()
            .filter(move |(slug, _)| *slug == meter.def.slug)
            .map(|(_, tenant)| tenant.as_str())
    }

    /// The rows of one meter and tenant (call [`HourRows::has`] first).
    pub fn rows<'s>(
        &'s self,
        meter: &'s Meter,
        tenant: &str,
    ) -> impl Iterator<Item = HourRow<'s>> + 's {
        let range = self.range(meter, tenant);
        self.rows_in(meter, range)
    }

    /// The rows of one meter, tenant and subject: found by halving, as a
    /// meter's rows of a tenant are sorted by subject.
    pub fn rows_of_subject<'s>(
        &'s self,
        meter: &'s Meter,
        tenant: &str,
        subject: &str,
    ) -> impl Iterator<Item = HourRow<'s>> + 's {
        let range = self.range(meter, tenant);
        let subjects = self.batch.column(4).as_string::<i32>();
        // The first row in `range` for which `past` holds.
        let first = |past: &dyn Fn(&str) -> bool| {
            let (mut lo, mut hi) = (range.start, range.end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if past(subjects.value(mid)) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            lo
        };
        let start = first(&|s| s >= subject);
        let end = first(&|s| s > subject);
        self.rows_in(meter, start..end)
    }

    fn range(&self, meter: &Meter, tenant: &str) -> Range<usize> {
        self.ranges
            .get(&(meter.def.slug.clone(), tenant.to_string()))
            .cloned()
            .unwrap_or(0..0)
    }

    fn rows_in<'s>(
        &'s self,
        meter: &'s Meter,
        range: Range<usize>,
    ) -> impl Iterator<Item = HourRow<'s>> + 's {
        let b = &self.batch;
        let hour = b.column(3).as_primitive::<Int64Type>();
        let subject = b.column(4).as_string::<i32>();
        let groups = b.column(5).as_list::<i32>();
        let events = b.column(6).as_primitive::<UInt64Type>();
        let first = b.column(7).as_primitive::<Int64Type>();
        let f = |i: usize| b.column(i).as_primitive::<Float64Type>();
        let (sum, min, max, latest) = (f(8), f(9), f(10), f(12));
        let latest_time = b.column(11).as_primitive::<Int64Type>();
        let distinct = b.column(13).as_list::<i32>();
        let unreadable = b.column(14).as_primitive::<UInt64Type>();
        let opt = |a: &arrow::array::PrimitiveArray<Float64Type>, r: usize| {
            (!a.is_null(r)).then(|| a.value(r))
        };
        range.map(move |r| {
            let strings =
                |l: &'s arrow::array::ListArray| -> Vec<Option<&'s str>> { list_strings(l, r) };
            let n = events.value(r);
            let fold = match meter.aggregation {
                super::meter::Aggregation::Sum => Fold::Sum(opt(sum, r).unwrap_or(0.0)),
                super::meter::Aggregation::Count => Fold::Count(n),
                super::meter::Aggregation::Avg => Fold::Avg(opt(sum, r).unwrap_or(0.0), n),
                super::meter::Aggregation::Min => Fold::Min(opt(min, r)),
                super::meter::Aggregation::Max => Fold::Max(opt(max, r)),
                super::meter::Aggregation::Latest => Fold::Latest(
                    opt(latest, r)
                        .and_then(|x| (!latest_time.is_null(r)).then(|| (latest_time.value(r), x))),
                ),
                super::meter::Aggregation::UniqueCount => Fold::Unique(
                    strings(distinct)
                        .into_iter()
                        .flatten()
                        .map(str::to_string)
                        .collect(),
                ),
            };
            HourRow {
                hour: hour.value(r),
                subject: subject.value(r),
                groups: strings(groups),
                events: n,
                first: (!first.is_null(r)).then(|| first.value(r)),
                unreadable: unreadable.value(r),
                fold,
            }
        })
    }
}

/// Unreadable events by meter slug in a `meter_hourly` batch, read from
/// its `meter` and `unreadable` columns only (a projection suffices).
pub fn unreadable_of(batch: &RecordBatch) -> Result<HashMap<String, u64>, ArrowError> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("{TABLE} has no column {name}")))
    };
    let meter = col("meter")?.as_string::<i32>();
    let n = col("unreadable")?.as_primitive::<UInt64Type>();
    let mut out: HashMap<String, u64> = HashMap::new();
    for r in 0..batch.num_rows() {
        if n.value(r) > 0 {
            *out.entry(meter.value(r).to_string()).or_default() += n.value(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::meter::{MeterDef, Taken};
    use arrow::array::{StringArray, TimestampNanosecondArray};
    use serde_json::json;

    fn meter(v: Value) -> Meter {
        Meter::check(serde_json::from_value::<MeterDef>(v).unwrap()).unwrap()
    }

    /// (tenant, type, time, subject, data)
    type Event<'a> = (&'a str, &'a str, i64, &'a str, Option<Value>);

    fn events(rows: &[Event]) -> RecordBatch {
        let s = |f: fn(&Event) -> String| {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
        };
        RecordBatch::try_from_iter(vec![
            ("tenant", s(|r| r.0.to_string())),
            ("type", s(|r| r.1.to_string())),
            (
                "timestamp",
                Arc::new(TimestampNanosecondArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            ("subject", s(|r| r.3.to_string())),
            (
                "data",
                Arc::new(StringArray::from(
                    rows.iter()
                        .map(|r| r.4.as_ref().map(|v| v.to_string()))
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    /// A pseudo-random day of events over several hours, tenants,
    /// subjects and groups, with unreadable values among them.
    fn random_day(day: i64, n: u64) -> Vec<(String, i64, String, Option<Value>)> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|_| {
                let hour = (next() % 24) as i64;
                let at = day + hour * 3_600_000_000_000 + (next() % 3_600_000_000_000) as i64;
                let tenant = format!("t{}", next() % 2);
                let subject = format!("s{}", next() % 5);
                let data = match next() % 10 {
                    0 => json!({"model": "a"}),
                    1 => json!({"tokens": "many", "model": "b", "user": "u1"}),
                    _ => {
                        let model = ["a", "b", "c"][(next() % 3) as usize];
                        json!({"tokens": next() % 100, "model": model,
                               "user": format!("u{}", next() % 7)})
                    }
                };
                (tenant, at, subject, Some(data))
            })
            .collect()
    }

    #[test]
    fn a_day_merged_from_its_stored_hours_is_the_fold_of_its_events() {
        let meters: Vec<Meter> = [
            ("sum", "SUM"),
            ("count", "COUNT"),
            ("users", "UNIQUE_COUNT"),
            ("avg", "AVG"),
            ("min", "MIN"),
            ("max", "MAX"),
            ("last", "LATEST"),
        ]
        .iter()
        .map(|(slug, agg)| {
            let value = if *agg == "UNIQUE_COUNT" {
                "$.user"
            } else {
                "$.tokens"
            };
            let mut def = json!({"slug": slug, "eventType": "llm", "aggregation": agg,
                                  "groupBy": {"model": "$.model"}});
            if *agg != "COUNT" {
                def["valueProperty"] = json!(value);
            }
            meter(def)
        })
        .collect();
        let day = 20_000 * 86_400 * 1_000_000_000i64;
        let all = random_day(day, 3_000);
        let batch_of = |rows: &[&(String, i64, String, Option<Value>)]| {
            let evs: Vec<Event> = rows
                .iter()
                .map(|(t, at, s, d)| (t.as_str(), "llm", *at, s.as_str(), d.clone()))
                .collect();
            events(&evs)
        };
        // The day as the compactor stores it: each hour rolled up, then the
        // hours merged.
        let mut days = DayFold::new(meters.clone(), day);
        for h in 0..24 {
            let (start, end) = (
                day + h * 3_600_000_000_000,
                day + (h + 1) * 3_600_000_000_000,
            );
            let rows: Vec<_> = all.iter().filter(|r| r.1 >= start && r.1 < end).collect();
            let mut hour = MeterHourFold::new(&meters, start);
            hour.push(&batch_of(&rows)).unwrap();
            days.push(&HourRows::new(hour.finish()).unwrap());
        }
        assert!(days.memory() > 0);
        let merged = days.finish();
        // The same day folded from its events at once.
        let mut once = MeterHourFold::new(&meters, day);
        once.push(&batch_of(&all.iter().collect::<Vec<_>>()))
            .unwrap();
        let once = once.finish();
        assert_eq!(merged.num_rows(), once.num_rows());
        assert_eq!(merged, once);
        // A meter that an hour was not rolled up for has no day marker.
        let mut partial = DayFold::new(meters.clone(), day);
        let mut hour = MeterHourFold::new(&meters[..1], day);
        hour.push(&batch_of(&all.iter().take(10).collect::<Vec<_>>()))
            .unwrap();
        partial.push(&HourRows::new(hour.finish()).unwrap());
        let mut hour = MeterHourFold::new(&meters, day + 3_600_000_000_000);
        hour.push(&batch_of(&all.iter().skip(10).take(10).collect::<Vec<_>>()))
            .unwrap();
        partial.push(&HourRows::new(hour.finish()).unwrap());
        let rows = HourRows::new(partial.finish()).unwrap();
        assert!(rows.has(&meters[0]));
        assert!(!rows.has(&meters[1]));
        assert_eq!(rows.tenants(&meters[1]).count(), 0);
    }

    #[test]
    fn stored_rows_fold_to_what_the_events_fold_to() {
        let meters = vec![
            meter(
                json!({"slug": "tokens", "eventType": "llm", "aggregation": "SUM",
                "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}}),
            ),
            meter(
                json!({"slug": "users", "eventType": "llm", "aggregation": "UNIQUE_COUNT",
                "valueProperty": "$.user"}),
            ),
            meter(
                json!({"slug": "last", "eventType": "llm", "aggregation": "LATEST",
                "valueProperty": "$.tokens"}),
            ),
            meter(json!({"slug": "idle", "eventType": "other", "aggregation": "COUNT"})),
        ];
        let b = events(&[
            (
                "t1",
                "llm",
                5,
                "s1",
                Some(json!({"tokens": 3, "model": "a", "user": "u1"})),
            ),
            (
                "t1",
                "llm",
                9,
                "s1",
                Some(json!({"tokens": "4", "model": "a", "user": "u2"})),
            ),
            (
                "t1",
                "llm",
                7,
                "s1",
                Some(json!({"tokens": 10, "model": "b", "user": "u1"})),
            ),
            (
                "t1",
                "llm",
                8,
                "s1",
                Some(json!({"tokens": "x", "model": "b"})),
            ),
            (
                "t2",
                "llm",
                1,
                "s1",
                Some(json!({"tokens": 100, "user": "u9"})),
            ),
            ("t1", "chat", 1, "s1", Some(json!({"tokens": 1000}))),
        ]);
        let mut fold = MeterHourFold::new(&meters, 0);
        fold.push(&b).unwrap();
        let rows = HourRows::new(fold.finish()).unwrap();
        for m in &meters {
            assert!(rows.has(m), "{} has its marker", m.def.slug);
        }
        type Summed<'a> = (Vec<Option<&'a str>>, u64, Option<f64>, u64);
        let sums: Vec<Summed> = rows
            .rows(&meters[0], "t1")
            .map(|r| (r.groups.clone(), r.events, r.fold.value(), r.unreadable))
            .collect();
        // "x" is not a number: one unreadable event, in a row without groups.
        assert_eq!(
            sums,
            [
                (vec![], 0, Some(0.0), 1),
                (vec![Some("a")], 2, Some(7.0), 0),
                (vec![Some("b")], 1, Some(10.0), 0),
            ]
        );
        let users: Vec<Option<f64>> = rows
            .rows(&meters[1], "t1")
            .map(|r| r.fold.value())
            .collect();
        assert_eq!(users, [Some(2.0)]);
        let mut merged = Fold::new(meters[1].aggregation);
        for r in rows
            .rows(&meters[1], "t1")
            .chain(rows.rows(&meters[1], "t2"))
        {
            merged.merge(r.fold);
        }
        assert_eq!(merged.value(), Some(3.0));
        let last: Vec<Option<f64>> = rows
            .rows(&meters[2], "t1")
            .map(|r| r.fold.value())
            .collect();
        assert_eq!(last, [Some(4.0)]);
        assert_eq!(rows.rows(&meters[3], "t1").count(), 0);
        let of_s1: Vec<Option<f64>> = rows
            .rows_of_subject(&meters[0], "t1", "s1")
            .map(|r| r.fold.value())
            .collect();
        assert_eq!(of_s1, [Some(0.0), Some(7.0), Some(10.0)]);
        assert_eq!(rows.rows_of_subject(&meters[0], "t1", "s0").count(), 0);
        assert_eq!(rows.rows_of_subject(&meters[0], "t1", "s2").count(), 0);
        assert_eq!(unreadable_of(&rows.batch).unwrap().get("tokens"), Some(&1));
        // Another definition of a meter finds no marker.
        let changed = meter(
            json!({"slug": "tokens", "eventType": "llm", "aggregation": "MAX",
            "valueProperty": "$.tokens"}),
        );
        assert!(!rows.has(&changed));
        let _ = Taken::None;
    }
}
