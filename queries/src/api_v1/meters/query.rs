//! `GET`/`POST /api/v1/meters/{idOrSlug}/query` (OpenMeter's semantics:
//! `from` inclusive, `to` exclusive; `subject` filters and groups by
//! subject; `filterGroupBy[key]=value`; rows `{value, windowStart,
//! windowEnd, subject, groupBy}`, or CSV when asked), and the meter's
//! subjects and group-by values.
//!
//! Hours with stored rollups for the meter's definition
//! (`tally_pipeline::rules::meter_hourly`, kept by compaction) are read from
//! them; the others (the open hour, hours not compacted or rolled up since
//! the meter changed, and hours a window cuts: `MINUTE`, or a time zone
//! whose offset is not whole hours) from their raw events, each once. Both
//! are folded by the meter's rules (`tally_pipeline::rules::meter`); every
//! value is exact, `UNIQUE_COUNT` included (the union of the hours'
//! distinct values).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono_tz::Tz;
use datafusion::common::ScalarValue;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tally_pipeline::access::Access;
use tally_pipeline::clock::rfc3339;
use tally_pipeline::clock::HOUR_NS;
use tally_pipeline::rollup::{day_sources, file_name, RolledHour};
use tally_pipeline::rules::meter::{Fold, Meter};
use tally_pipeline::rules::meter_hourly::{self, HourRow, HourRows};
use tally_pipeline::store::FileEntry;
use tally_pipeline::Dataset;

use super::book::{Meters, StoredMeter};
use super::days::{Day, IdMap, MeterDays, NONE};
use super::windows::{window, WindowSize};
use crate::api_v1::problems::{bad, forbidden, no_meter, unexpected};

pub(crate) const METER_EVENTS: &str = include_str!("../sql/meter_events.sql");

/// The token's tenant and the meter asked for, or the answer that refuses.
fn meter_of(
    m: &Meters,
    access: &Access,
    id_or_slug: &str,
) -> Result<(String, Arc<StoredMeter>), Box<Response>> {
    let tenant = access.namespace().map_err(|e| Box::new(forbidden(e)))?;
    let meter = m
        .book
        .get(id_or_slug)
        .ok_or_else(|| Box::new(no_meter(id_or_slug)))?;
    Ok((tenant, meter))
}

/// A query, from the query string or a JSON body.
#[derive(Debug, Default)]
pub struct MeterQuery {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub window: Option<WindowSize>,
    pub tz: Option<Tz>,
    pub subjects: Vec<String>,
    pub group_by: Vec<String>,
    pub filter: BTreeMap<String, BTreeSet<String>>,
}

fn time(name: &str, v: &str, errors: &mut Vec<String>) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt());
    if t.is_none() {
        errors.push(format!("{name} must be an RFC 3339 time, got {v:?}"));
    }
    t
}

impl MeterQuery {
    /// From `from=…&windowSize=…&subject=a&subject=b&groupBy=model&filterGroupBy[model]=x`.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<MeterQuery, Vec<String>> {
        let mut q = MeterQuery::default();
        let mut errors = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "from" => q.from = time("from", v, &mut errors),
                "to" => q.to = time("to", v, &mut errors),
                "windowSize" => match WindowSize::parse(v) {
                    Some(w) => q.window = Some(w),
                    None => errors.push(format!(
                        "windowSize must be MINUTE, HOUR, DAY or MONTH, got {v:?}"
                    )),
                },
                "windowTimeZone" => match v.parse::<Tz>() {
                    Ok(tz) => q.tz = Some(tz),
                    Err(_) => errors.push(format!(
                        "windowTimeZone must be an IANA time zone such as Europe/Berlin, got {v:?}"
                    )),
                },
                "subject" => q.subjects.push(v.clone()),
                "groupBy" => q.group_by.push(v.clone()),
                "clientId" => {}
                other => match other
                    .strip_prefix("filterGroupBy[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    Some(key) => {
                        q.filter
                            .entry(key.to_string())
                            .or_default()
                            .insert(v.clone());
                    }
                    None => errors.push(format!("{other} is not a parameter of a meter query")),
                },
            }
        }
        if errors.is_empty() {
            Ok(q)
        } else {
            Err(errors)
        }
    }

    /// From OpenMeter's `MeterQueryRequest` body.
    pub fn from_body(body: &Value) -> Result<MeterQuery, Vec<String>> {
        let Some(obj) = body.as_object() else {
            return Err(vec!["the body must be a JSON object".into()]);
        };
        let mut pairs = Vec::new();
        let mut errors = Vec::new();
        for (k, v) in obj {
            match (k.as_str(), v) {
                (_, Value::Null) => {}
                ("subject" | "groupBy", Value::Array(items)) => {
                    for i in items {
                        match i.as_str() {
                            Some(s) => pairs.push((k.clone(), s.to_string())),
                            None => errors.push(format!("{k} must hold strings")),
                        }
                    }
                }
                ("filterGroupBy", Value::Object(m)) => {
                    for (key, vals) in m {
                        let vals = match vals {
                            Value::Array(a) => a.clone(),
                            other => vec![other.clone()],
                        };
                        for v in vals {
                            match v.as_str() {
                                Some(s) => {
                                    pairs.push((format!("filterGroupBy[{key}]"), s.to_string()))
                                }
                                None => {
                                    errors.push(format!("filterGroupBy.{key} must hold strings"))
                                }
                            }
                        }
                    }
                }
                (_, Value::String(s)) => pairs.push((k.clone(), s.clone())),
                _ => errors.push(format!("{k} has the wrong type")),
            }
        }
        match MeterQuery::from_pairs(&pairs) {
            Ok(q) if errors.is_empty() => Ok(q),
            Ok(_) => Err(errors),
            Err(mut e) => {
                errors.append(&mut e);
                Err(errors)
            }
        }
    }
}

/// One row of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub start: i64,
    pub end: i64,
    pub subject: Option<String>,
    /// By the asked group-by keys, in their order.
    pub groups: Vec<Option<String>>,
    pub value: f64,
}

/// What a meter's answer is folded from: days merged from stored hours
/// (`days.rs`) where a day lies whole in one window; the stored hourly rows
/// of the other hours that have them for the meter's current definition
/// (and lie whole in a window); the raw events of the rest.
#[derive(Default)]
pub struct Gathered {
    pub days: Vec<(i64, Arc<Day>)>,
    /// The names of the days' rows.
    pub names: Option<Arc<Mutex<MeterDays>>>,
    pub hours: Vec<(i64, Arc<HourRows>)>,
    /// (time, subject, data)
    pub raw: Vec<(i64, String, Option<Value>)>,
}

const DAY_NS: i64 = 24 * HOUR_NS;

/// The windows of a query: whether an hour, and a UTC day, lie whole in
/// one window (always, without windows).
#[derive(Clone, Copy)]
pub struct Fit {
    window: Option<(WindowSize, Tz)>,
}

impl Fit {
    pub const ANY: Fit = Fit { window: None };

    pub fn of(q: &MeterQuery) -> Fit {
        Fit {
            window: q.window.map(|w| (w, q.tz.unwrap_or(chrono_tz::UTC))),
        }
    }

    fn whole(&self, start: i64, len: i64) -> bool {
        match self.window {
            None => true,
            Some((WindowSize::Minute, _)) => false,
            Some((w, tz)) => window(w, tz, start) == window(w, tz, start + len - 1),
        }
    }
}

/// The stored rollup of a UTC day, when it was merged from `hours` (the
/// day's stored hour files now) and holds `meter` as now defined. A day
/// file that cannot be read is reported and its hours are read instead.
async fn stored_day(
    m: &Meters,
    day: i64,
    hours: &[FileEntry],
    meter: &Meter,
) -> Option<(PathBuf, Arc<HourRows>)> {
    let names: Vec<String> = hours.iter().map(|e| file_name(&e.path)).collect();
    let sources = day_sources(names.iter().map(String::as_str));
    let entry = m
        .history
        .stored_day(Dataset::Events, day)
        .filter(|d| d.sources == sources)?
        .tables
        .get(meter_hourly::DAY_TABLE)?
        .clone();
    match m.history.meter_hour(&entry, false).await {
        Ok(rows) => rows.has(meter).then_some((entry.path, rows)),
        Err(e) => {
            tracing::error!(path = %entry.path.display(), error = %e, "a day's meter rollup could not be read; its hours are read instead");
            None
        }
    }
}

/// A meter's hours in `[from, to)` for one tenant.
pub async fn gather(
    m: &Meters,
    tenant: &str,
    meter: &StoredMeter,
    from: Option<i64>,
    to: i64,
    fit: Fit,
) -> Result<Gathered, String> {
    let from = match (from, meter.meter.event_from) {
        (Some(a), Some(b)) => a.max(b),
        (a, b) => a.or(b).unwrap_or(i64::MIN / 2),
    };
    let mut cov = m.history.coverage_as_stored(Dataset::Events, from, to);
    let mut out = Gathered::default();
    let mut by_day: BTreeMap<i64, Vec<(i64, Arc<RolledHour>)>> = BTreeMap::new();
    for (h, rolled) in std::mem::take(&mut cov.rolled) {
        by_day
            .entry(h.div_euclid(DAY_NS) * DAY_NS)
            .or_default()
            .push((h, rolled));
    }
    let read_raw = |h: i64| cov.raw_hours.contains(&h) || cov.unique_hours.contains(&h);
    let mut fallback = Vec::new();
    let kept = m.days.of(&meter.meter, tenant);
    for (day, hours) in by_day {
        // A whole day in range and in one window, every hour of it rolled
        // up: read as a day.
        let entries: Option<Vec<FileEntry>> = hours
            .iter()
            .map(|(_, r)| r.tables.get(meter_hourly::TABLE).cloned())
            .collect();
        let day_fits = day >= from
            && day + DAY_NS <= to
            && fit.whole(day, DAY_NS)
            && !(0..24).any(|i| read_raw(day + i * HOUR_NS));
        if let (true, Some(entries)) = (day_fits, entries) {
            let sources: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
            let same = kept
                .lock()
                .days
                .get(&day)
                .filter(|d| d.sources == sources)
                .cloned();
            let found = match same {
                Some(d) => Some(d),
                None => {
                    let parts = match stored_day(m, day, &entries, &meter.meter).await {
                        Some(part) => {
                            m.metrics.meter_days_stored.add(1);
                            vec![part]
                        }
                        None => {
                            let mut decoded = Vec::with_capacity(entries.len());
                            for e in &entries {
                                let rows = m
                                    .history
                                    .meter_hour(e, false)
                                    .await
                                    .map_err(|e| e.to_string())?;
                                if !rows.has(&meter.meter) {
                                    break;
                                }
                                decoded.push((e.path.clone(), rows));
                            }
                            if decoded.len() == entries.len() {
                                m.metrics.meter_days_merged.add(1);
                            }
                            decoded
                        }
                    };
                    (parts.len() == 1 || parts.len() == entries.len()).then(|| {
                        kept.lock()
                            .merge(day, &meter.meter, tenant, sources, &parts)
                    })
                }
            };
            if let Some(d) = found {
                m.days.used(&meter.meter, tenant, day);
                out.days.push((day, d));
                continue;
            }
        }
        for (h, rolled) in hours {
            let rows = match rolled.tables.get(meter_hourly::TABLE) {
                Some(entry) => Some(
                    m.history
                        .meter_hour(entry, true)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            match rows {
                Some(rows) if fit.whole(h, HOUR_NS) && rows.has(&meter.meter) => {
                    out.hours.push((h, rows))
                }
                // Rolled up before this meter (or this definition of it),
                // or cut by a window: its raw events, each stored once.
                _ => fallback.push(h),
            }
        }
    }
    for h in fallback {
        cov.unique_hours.insert(h);
        cov.unique.push((h.max(from), (h + HOUR_NS).min(to)));
    }
    cov.unique.sort_unstable();
    if !out.days.is_empty() {
        out.names = Some(kept);
    }
    m.metrics
        .meter_hours_rolled
        .add((out.hours.len() + 24 * out.days.len()) as u64);
    m.metrics
        .meter_hours_raw
        .add((cov.raw_hours.len() + cov.unique_hours.len()) as u64);
    let params = vec![
        ScalarValue::Utf8(Some(tenant.to_string())),
        ScalarValue::Utf8(Some(meter.meter.def.event_type.clone())),
    ];
    let batches = m
        .history
        .raw_rows_with(Dataset::Events, METER_EVENTS, &cov, params)
        .await
        .map_err(|e| e.to_string())?;
    for b in &batches {
        let ts = b.column(0).as_primitive::<Int64Type>();
        let subject = b.column(1).as_string::<i32>();
        let data = b.column(2).as_string::<i32>();
        for r in 0..b.num_rows() {
            let d = (!data.is_null(r))
                .then(|| serde_json::from_str::<Value>(data.value(r)).ok())
                .flatten();
            out.raw.push((ts.value(r), subject.value(r).to_string(), d));
        }
    }
    Ok(out)
}

/// The rows of `q` over `meter`'s gathered hours and events.
pub fn fold_rows(
    meter: &StoredMeter,
    tenant: &str,
    q: &MeterQuery,
    gathered: &Gathered,
    to: i64,
) -> Result<Vec<Row>, Vec<String>> {
    let m = &meter.meter;
    let keys: Vec<&str> = m.group_by.iter().map(|(k, _)| k.as_str()).collect();
    let mut errors = Vec::new();
    let by_subject = !q.subjects.is_empty() || q.group_by.iter().any(|g| g == "subject");
    let mut asked = Vec::new();
    for g in q.group_by.iter().filter(|g| *g != "subject") {
        match keys.iter().position(|k| k == g) {
            Some(i) => asked.push(i),
            None => errors.push(format!(
                "groupBy {g:?} is not a group-by key of meter {} (its keys: {})",
                m.def.slug,
                keys.join(", ")
            )),
        }
    }
    let mut filters = Vec::new();
    for (k, vals) in &q.filter {
        match keys.iter().position(|key| key == k) {
            Some(i) => filters.push((i, vals)),
            None => errors.push(format!(
                "filterGroupBy[{k}]: {k:?} is not a group-by key of meter {}",
                m.def.slug
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let tz = q.tz.unwrap_or(chrono_tz::UTC);
    let wanted: BTreeSet<&str> = q.subjects.iter().map(String::as_str).collect();
    type Key = (i64, i64, Option<String>, Vec<Option<String>>);
    let mut folds: BTreeMap<Key, Fold> = BTreeMap::new();
    let mut first = i64::MAX;
    let window_of = |t: i64| match q.window {
        Some(w) => window(w, tz, t),
        None => (0, 0),
    };
    if let Some(names) = &gathered.names {
        let names = names.lock();
        let names = &names.names;
        let wanted_ids: HashSet<u32> = wanted.iter().filter_map(|s| names.find(s)).collect();
        let filter_ids: Vec<(usize, HashSet<u32>)> = filters
            .iter()
            .map(|(i, vals)| (*i, vals.iter().filter_map(|v| names.find(v)).collect()))
            .collect();
        // Windows by number, then (window, subject, asked groups) by
        // number: each row costs a lookup of integers.
        let mut windows: Vec<(i64, i64)> = Vec::new();
        // (window and subject, up to two asked groups, more asked groups)
        type IdKey = (u64, u64, Option<Box<[u32]>>);
        let pack = |groups: &[u32]| -> (u64, Option<Box<[u32]>>) {
            match asked.len() {
                0 => (0, None),
                1 => (u64::from(groups[asked[0]]), None),
                2 => (
                    u64::from(groups[asked[0]]) | u64::from(groups[asked[1]]) << 32,
                    None,
                ),
                _ => (0, Some(asked.iter().map(|i| groups[*i]).collect())),
            }
        };
        let unpack = |packed: u64, more: Option<Box<[u32]>>| -> Vec<u32> {
            match (asked.len(), more) {
                (_, Some(more)) => more.into_vec(),
                (0, None) => Vec::new(),
                (1, None) => vec![packed as u32],
                _ => vec![packed as u32, (packed >> 32) as u32],
            }
        };
        let mut by_id: IdMap<IdKey, (Fold, HashSet<u32>)> = IdMap::default();
        for (day, d) in &gathered.days {
            let w = window_of(*day);
            let wi = match windows.iter().position(|x| *x == w) {
                Some(i) => i,
                None => {
                    windows.push(w);
                    windows.len() - 1
                }
            } as u64;
            for row in &d.rows {
                if (!wanted.is_empty() && !wanted_ids.contains(&row.subject))
                    || filter_ids
                        .iter()
                        .any(|(i, ids)| !ids.contains(&row.groups[*i]))
                {
                    continue;
                }
                first = first.min(row.first);
                let subject = if by_subject { row.subject } else { NONE };
                let (groups, more) = pack(&row.groups);
                let key = ((wi << 32) | u64::from(subject), groups, more);
                let acc = by_id
                    .entry(key)
                    .or_insert_with(|| (Fold::new(m.aggregation), HashSet::new()));
                match (&mut acc.0, &row.fold) {
                    (Fold::Unique(_), _) => acc.1.extend(row.distinct.iter().copied()),
                    (kept, other) => kept.merge_ref(other),
                }
            }
        }
        for ((packed, groups, more), (mut fold, distinct)) in by_id {
            let groups = unpack(groups, more);
            let (start, end) = windows[(packed >> 32) as usize];
            let subject = packed as u32;
            if let Fold::Unique(set) = &mut fold {
                set.extend(
                    distinct
                        .into_iter()
                        .filter_map(|id| names.name(id).map(str::to_string)),
                );
            }
            let key = (
                start,
                end,
                by_subject.then(|| names.name(subject).unwrap_or_default().to_string()),
                groups
                    .iter()
                    .map(|g| names.name(*g).map(str::to_string))
                    .collect(),
            );
            match folds.get_mut(&key) {
                Some(f) => f.merge(fold),
                None => {
                    folds.insert(key, fold);
                }
            }
        }
    }
    for (h, rows) in &gathered.hours {
        let (start, end) = window_of(*h);
        let of_hour: Box<dyn Iterator<Item = HourRow>> = if wanted.is_empty() {
            Box::new(rows.rows(m, tenant))
        } else {
            Box::new(
                wanted
                    .iter()
                    .flat_map(|s| rows.rows_of_subject(m, tenant, s)),
            )
        };
        for row in of_hour {
            if row.events == 0
                || (!wanted.is_empty() && !wanted.contains(row.subject))
                || filters.iter().any(|(i, vals)| {
                    !row.groups
                        .get(*i)
                        .copied()
                        .flatten()
                        .is_some_and(|v| vals.contains(v))
                })
            {
                continue;
            }
            first = first.min(row.first.unwrap_or(*h));
            let key = (
                start,
                end,
                by_subject.then(|| row.subject.to_string()),
                asked
                    .iter()
                    .map(|i| row.groups.get(*i).copied().flatten().map(str::to_string))
                    .collect(),
            );
            folds
                .entry(key)
                .or_insert_with(|| Fold::new(m.aggregation))
                .merge(row.fold);
        }
    }
    for (t, subject, data) in &gathered.raw {
        if !wanted.is_empty() && !wanted.contains(subject.as_str()) {
            continue;
        }
        let Ok(reading) = m.read(data.as_ref()) else {
            continue;
        };
        if filters.iter().any(|(i, vals)| {
            !reading.groups[*i]
                .as_ref()
                .is_some_and(|v| vals.contains(v))
        }) {
            continue;
        }
        let (start, end) = window_of(*t);
        first = first.min(*t);
        let key = (
            start,
            end,
            by_subject.then(|| subject.clone()),
            asked.iter().map(|i| reading.groups[*i].clone()).collect(),
        );
        folds
            .entry(key)
            .or_insert_with(|| Fold::new(m.aggregation))
            .add(*t, &reading.value);
    }
    Ok(folds
        .into_iter()
        .filter_map(|((start, end, subject, groups), fold)| {
            let (start, end) = match q.window {
                Some(_) => (start, end),
                None => (q.from.unwrap_or(first), to),
            };
            Some(Row {
                start,
                end,
                subject,
                groups,
                value: fold.value()?,
            })
        })
        .collect())
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

async fn answer(
    m: Meters,
    access: Access,
    id_or_slug: String,
    headers: HeaderMap,
    q: Result<MeterQuery, Vec<String>>,
) -> Response {
    let (tenant, meter) = match meter_of(&m, &access, &id_or_slug) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    let q = match q {
        Ok(q) => q,
        Err(errors) => return bad(errors.join("; ")),
    };
    let to = q.to.unwrap_or_else(tally_pipeline::now_ns);
    let gathered = match gather(&m, &tenant, &meter, q.from, to, Fit::of(&q)).await {
        Ok(g) => g,
        Err(e) => return unexpected("a meter query", e),
    };
    let rows = match fold_rows(&meter, &tenant, &q, &gathered, to) {
        Ok(r) => r,
        Err(errors) => return bad(errors.join("; ")),
    };
    let asked: Vec<&String> = q.group_by.iter().filter(|g| *g != "subject").collect();
    if wants_csv(&headers) {
        let mut out = String::from("window_start,window_end,subject");
        for k in &asked {
            out.push(',');
            out.push_str(&csv_field(k));
        }
        out.push_str(",value\n");
        for r in &rows {
            out.push_str(&format!(
                "{},{},{}",
                rfc3339(r.start),
                rfc3339(r.end),
                csv_field(r.subject.as_deref().unwrap_or(""))
            ));
            for g in &r.groups {
                out.push(',');
                out.push_str(&csv_field(g.as_deref().unwrap_or("")));
            }
            out.push_str(&format!(",{}\n", r.value));
        }
        let mut resp = (StatusCode::OK, out).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
        return resp;
    }
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let groups: Map<String, Value> = asked
                .iter()
                .zip(&r.groups)
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            json!({
                "value": r.value,
                "windowStart": rfc3339(r.start),
                "windowEnd": rfc3339(r.end),
                "subject": r.subject,
                "groupBy": groups,
            })
        })
        .collect();
    let mut body = json!({"data": data});
    if let Some(f) = q.from {
        body["from"] = json!(rfc3339(f));
    }
    body["to"] = json!(rfc3339(to));
    if let Some(w) = q.window {
        body["windowSize"] = json!(w.name());
    }
    Json(body).into_response()
}

pub async fn get_query(
    State(m): State<Meters>,
    Extension(access): Extension<Access>,
    Path(id_or_slug): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    answer(
        m,
        access,
        id_or_slug,
        headers,
        MeterQuery::from_pairs(&pairs),
    )
    .await
}

pub async fn post_query(
    State(m): State<Meters>,
    Extension(access): Extension<Access>,
    Path(id_or_slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let q = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => MeterQuery::from_body(&v),
        Err(e) => Err(vec![format!("the body is not valid JSON: {e}")]),
    };
    answer(m, access, id_or_slug, headers, q).await
}

/// The subjects of the events a meter counts.
pub async fn subjects(
    State(m): State<Meters>,
    Extension(access): Extension<Access>,
    Path(id_or_slug): Path<String>,
) -> Response {
    listed(&m, &access, &id_or_slug, None).await
}

/// The values a group-by key takes in the events a meter counts.
pub async fn group_values(
    State(m): State<Meters>,
    Extension(access): Extension<Access>,
    Path((id_or_slug, key)): Path<(String, String)>,
) -> Response {
    listed(&m, &access, &id_or_slug, Some(&key)).await
}

/// The subjects (`key` `None`), or the values of a group-by key, of the
/// events a meter counts.
async fn listed(m: &Meters, access: &Access, id_or_slug: &str, key: Option<&str>) -> Response {
    let (tenant, meter) = match meter_of(m, access, id_or_slug) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    let index = match key {
        None => None,
        Some(key) => match meter.meter.group_by.iter().position(|(k, _)| k == key) {
            Some(i) => Some(i),
            None => {
                return bad(format!(
                    "{key:?} is not a group-by key of meter {}",
                    meter.meter.def.slug
                ))
            }
        },
    };
    let now = tally_pipeline::now_ns();
    let g = match gather(m, &tenant, &meter, None, now, Fit::ANY).await {
        Ok(g) => g,
        Err(e) => return unexpected("reading a meter's events", e),
    };
    let mtr = &meter.meter;
    let mut set: BTreeSet<String> = g
        .raw
        .iter()
        .filter_map(|(_, subject, d)| {
            let reading = mtr.read(d.as_ref()).ok()?;
            match index {
                None => Some(subject.clone()),
                Some(i) => reading.groups[i].clone(),
            }
        })
        .collect();
    if let Some(names) = &g.names {
        let names = names.lock();
        for (_, d) in &g.days {
            set.extend(d.rows.iter().filter_map(|r| {
                let id = index.map_or(r.subject, |i| r.groups[i]);
                names.names.name(id).map(str::to_string)
            }));
        }
    }
    for (_, rows) in &g.hours {
        set.extend(
            rows.rows(mtr, &tenant)
                .filter(|r| r.events > 0)
                .filter_map(|r| match index {
                    None => Some(r.subject),
                    Some(i) => r.groups.get(i).copied().flatten(),
                })
                .map(str::to_string),
        );
    }
    Json(set.into_iter().collect::<Vec<_>>()).into_response()
}
