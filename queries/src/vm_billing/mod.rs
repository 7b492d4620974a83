//! VM billing: `GET /v1/billing/vm-usage`, from stored hourly rollups for
//! rolled-up hours and from raw samples for the others (see `history`).

pub mod table;

/// The billing rules over raw samples in SQL: `tally sql` registers it as
/// the views `vm_usage_hourly`, `vm_usage_daily` and `vm_usage_monthly`
/// (the server has the bill tables of `table.rs` under those names).
pub const RAW_VIEW_SQL: &str = include_str!("sql/vm_usage.sql");

/// View suffix and `date_trunc` unit of each window.
pub const RAW_VIEW_WINDOWS: [(&str, &str); 3] =
    [("hourly", "hour"), ("daily", "day"), ("monthly", "month")];

/// Registers `vm_usage_hourly`, `vm_usage_daily` and `vm_usage_monthly` as
/// views over raw samples (`tally sql`, which has no stored rollups).
pub async fn register_raw_views(engine: &SqlEngine) -> Result<(), QueryError> {
    for (suffix, unit) in RAW_VIEW_WINDOWS {
        let body = RAW_VIEW_SQL.replace("{window}", unit).replace(
            "{gap_limit_ns}",
            &(tally_pipeline::rollup::VM_GAP_LIMIT_SECS as i64 * NS_PER_SEC).to_string(),
        );
        engine
            .create_view(&format!("vm_usage_{suffix}"), &body)
            .await?;
    }
    Ok(())
}

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use tally_pipeline::access::Access;
use tally_pipeline::clock::{HOUR_NS, NS_PER_SEC};
use tally_pipeline::Dataset;

use crate::history::History;
use crate::http::{error_response, forbidden};
use crate::sql::format::{csv_rfc4180, OutputFormat};
use crate::sql::{QueryError, SqlEngine};
use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use tally_pipeline::rules::vm::{self as hours, Sample, Usage, VmHour};
use tally_pipeline::rules::vm_bill::{BillRow, HourIndex};
use tally_pipeline::rules::{gap_fingerprint, VM_SAMPLES};

pub fn router(history: History) -> Router {
    Router::new()
        .route("/v1/billing/vm-usage", get(vm_usage))
        .with_state(history)
}

/// A window unit of the API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    Hour,
    Day,
    Month,
}

impl Window {
    /// The window holding the hour `h` (ns): its start and end.
    pub fn of(self, h: i64) -> (i64, i64) {
        let t = DateTime::from_timestamp_nanos(h);
        let ns = |t: DateTime<Utc>| t.timestamp_nanos_opt().unwrap_or(i64::MAX);
        match self {
            Window::Hour => (h, h + HOUR_NS),
            Window::Day => {
                let start = h.div_euclid(24 * HOUR_NS) * 24 * HOUR_NS;
                (start, start + 24 * HOUR_NS)
            }
            Window::Month => {
                let start = Utc
                    .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                    .single()
                    .expect("the first of a month exists");
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                let end = Utc
                    .with_ymd_and_hms(y, m, 1, 0, 0, 0)
                    .single()
                    .expect("the first of a month exists");
                (ns(start), ns(end))
            }
        }
    }

    /// The hours of the windows that start in `[from, to)`.
    pub fn hours_of(self, from: i64, to: i64) -> (i64, i64) {
        let floor = |t: i64| t.div_euclid(HOUR_NS) * HOUR_NS;
        let (s, e) = self.of(floor(from));
        let first = if s >= from { s } else { e };
        let last_end = self.of(floor(to - 1)).1;
        (first, last_end.max(first))
    }
}

/// One row of the answer: one window of one VM.
pub type WindowRow = BillRow;

/// The bill: windows of `window` starting in `[from, to)`, for the VMs
/// `keep` accepts (by customer and VM), ordered by customer, VM and time.
/// Stored hours are read in place ([`HourIndex`]); hours not rolled up are
/// folded from raw samples and join them as batches of one hour each.
pub async fn bill(
    history: &History,
    window: Window,
    from: i64,
    to: i64,
    keep: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Vec<WindowRow>, QueryError> {
    let (h0, h1) = window.hours_of(from, to);
    if h0 >= h1 {
        return Ok(Vec::new());
    }
    let spans = history.gap_spans().await?;
    let fp = |h: i64| gap_fingerprint(&spans, h);
    let limit = history.gap_limit_ns;
    let d = Dataset::VmMetrics;

    let cov = history.coverage(d, h0, h1, &fp);
    let rolled = history.rolled_rows(d, &cov).await?;
    let raw = history.raw_rows(d, VM_SAMPLES, &cov).await?;
    // Hours folded from raw samples, as batches of one hour like the stored.
    let mut raw_hours: BTreeMap<i64, Vec<VmHour>> = BTreeMap::new();
    for h in hours::fold(&raw, &spans, limit) {
        if keep(&h.customer_id, &h.vm_id) {
            raw_hours.entry(h.hour).or_default().push(h);
        }
    }
    let raw_hours: Vec<RecordBatch> = raw_hours.values().map(|h| hours::to_batch(h)).collect();
    let mut batches: Vec<&RecordBatch> = rolled.iter().map(|b| b.as_ref()).collect();
    batches.extend(&raw_hours);
    let index = HourIndex::new(&batches, keep);
    let wanted: HashSet<&str> = index.vm_ids().collect();
    let before = last_samples_before(history, h0, wanted, keep, &spans).await?;
    let mut rows = index.windows(&before, &spans, limit, &|h| window.of(h));
    rows.retain(|r| r.start >= from && r.start < to);
    Ok(rows)
}

/// The last sample before `h0` of each VM in `wanted`: the pair it makes
/// with the VM's first sample in range counts (or is a gap).
async fn last_samples_before(
    history: &History,
    h0: i64,
    mut wanted: HashSet<&str>,
    keep: &(dyn Fn(&str, &str) -> bool + Sync),
    spans: &hours::GapSpans,
) -> Result<HashMap<String, Sample>, QueryError> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let fp = |h: i64| gap_fingerprint(spans, h);
    let cov = history.coverage(Dataset::VmMetrics, i64::MIN / 2, h0, &fp);
    // Raw hours before the range are recent ones not compacted yet, or
    // dirty ones; they may hold a later sample than any rolled hour.
    let raw = history
        .raw_rows(Dataset::VmMetrics, VM_SAMPLES, &cov)
        .await?;
    let mut latest: HashMap<String, Sample> = HashMap::new();
    for h in hours::fold(&raw, spans, history.gap_limit_ns) {
        if wanted.contains(h.vm_id.as_str()) {
            let e = latest.entry(h.vm_id.clone()).or_insert(h.last);
            if h.last.ts > e.ts {
                *e = h.last;
            }
        }
    }
    // Rolled hours, newest first, until every VM has its sample.
    for (hour, rolled) in cov.rolled.iter().rev() {
        if wanted.is_empty() {
            break;
        }
        let Some(f) = rolled.tables.get("vm_usage_hours") else {
            continue;
        };
        let batch = history.load(f).await?;
        for h in hours::from_batch(&batch, &|c, v| keep(c, v) && wanted.contains(v)) {
            let e = latest.entry(h.vm_id.clone()).or_insert(h.last);
            if h.last.ts > e.ts {
                *e = h.last;
            }
        }
        // A VM found in this hour has nothing later in older hours; raw
        // samples may still be later.
        wanted.retain(|vm| latest.get(*vm).is_none_or(|s| s.ts < *hour));
    }
    Ok(latest)
}

fn time(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `GET /v1/billing/vm-usage?customer_id=&vm_id=&from=&to=&window=hour|day|month`:
/// rollup rows of the windows that start in [`from`, `to`). `from` and `to`
/// are RFC 3339; they default to the 24 hours before now.
async fn vm_usage(
    State(history): State<History>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut errors = Vec::new();
    let window = match params.get("window").map(String::as_str).unwrap_or("hour") {
        "hour" => Window::Hour,
        "day" => Window::Day,
        "month" => Window::Month,
        other => {
            errors.push(format!(
                "window must be one of hour, day, month, got {other:?}"
            ));
            Window::Hour
        }
    };
    let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let mut time_param = |name: &str, default: i64| match params.get(name) {
        None => Some(default),
        Some(s) => match DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
        {
            Some(ns) => Some(ns),
            None => {
                errors.push(format!(
                    "{name} must be an RFC 3339 time such as 2024-01-15T10:00:00Z, got {s:?}"
                ));
                None
            }
        },
    };
    let to = time_param("to", now);
    let from = time_param("from", now - 24 * HOUR_NS);
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            errors.push("from must be before to".to_string());
        }
    }
    for (name, v) in &params {
        if !["customer_id", "vm_id", "from", "to", "window", "format"].contains(&name.as_str()) {
            errors.push(format!("unknown parameter {name:?}"));
        } else if (name == "customer_id" || name == "vm_id") && v.is_empty() {
            errors.push(format!("{name} must not be empty when given"));
        }
    }
    let csv = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            errors.push(format!("format must be json or csv, got {other:?}"));
            false
        }
    };
    if !errors.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            errors.join("; "),
        );
    }
    let (from, to) = (from.unwrap_or_default(), to.unwrap_or_default());
    let customer = params.get("customer_id").cloned();
    if let Err(e) = access.check_filter("customer_id", customer.as_deref()) {
        return forbidden(e);
    }
    let vm = params.get("vm_id").cloned();
    // A token of some customers sees theirs alone.
    let keep = move |c: &str, v: &str| {
        customer.as_deref().is_none_or(|x| x == c)
            && vm.as_deref().is_none_or(|x| x == v)
            && access.covers(Some(c))
    };
    match bill(&history, window, from, to, &keep).await {
        Ok(rows) => {
            let batch = [answer(&rows)];
            let (written, format) = if csv {
                (csv_rfc4180(&batch), OutputFormat::Csv)
            } else {
                (OutputFormat::Json.write(&batch), OutputFormat::Json)
            };
            match written {
                Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
                Err(e) => error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Query failed",
                    e.to_string(),
                ),
            }
        }
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Query failed",
            e.to_string(),
        ),
    }
}

/// A bill's rows as the answer's columns, in the order of the CSV: what
/// the JSON and CSV writers write (numbers as the rules give them, times
/// as RFC 3339).
fn answer(rows: &[WindowRow]) -> RecordBatch {
    let text = |f: &dyn Fn(&WindowRow) -> String| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let float = |f: &dyn Fn(&Usage) -> f64| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(&r.usage)).collect::<Float64Array>())
    };
    let int = |f: &dyn Fn(&Usage) -> i64| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(&r.usage)).collect::<Int64Array>())
    };
    let columns: [(&str, ArrayRef); 13] = [
        ("customer_id", text(&|r| r.customer_id.clone())),
        ("vm_id", text(&|r| r.vm_id.clone())),
        ("window_start", text(&|r| time(r.start))),
        ("window_end", text(&|r| time(r.end))),
        ("cpu_seconds", float(&Usage::cpu_seconds)),
        ("memory_gib_hours", float(&Usage::memory_gib_hours)),
        ("disk_read_bytes", int(&|u| u.disk_read)),
        ("disk_write_bytes", int(&|u| u.disk_write)),
        ("network_rx_bytes", int(&|u| u.rx)),
        ("network_tx_bytes", int(&|u| u.tx)),
        ("observed_seconds", float(&Usage::observed_seconds)),
        ("samples", int(&|u| u.samples)),
        ("gaps", int(&|u| u.gaps)),
    ];
    RecordBatch::try_from_iter(columns).expect("the answer's columns are as long as the bill")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The columns of a bill row, as the API documents them.
    const CSV_COLUMNS: [&str; 13] = [
        "customer_id",
        "vm_id",
        "window_start",
        "window_end",
        "cpu_seconds",
        "memory_gib_hours",
        "disk_read_bytes",
        "disk_write_bytes",
        "network_rx_bytes",
        "network_tx_bytes",
        "observed_seconds",
        "samples",
        "gaps",
    ];

    /// The answer's columns are written as JSON rows and as CSV (RFC 4180:
    /// CRLF line ends, fields quoted where needed) with the same numbers.
    #[test]
    fn the_answer_is_written_from_its_columns() {
        let mut usage = Usage {
            cpu_nanos: 1_500_000_000,
            samples: 2,
            ..Default::default()
        };
        usage.mem_byte_ns = 1_073_741_824.0 * 3600.0 * 1e9;
        let rows = vec![WindowRow {
            customer_id: "a,b".into(),
            vm_id: "v\"1".into(),
            start: 0,
            end: HOUR_NS,
            usage,
        }];
        let batch = answer(&rows);
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, CSV_COLUMNS);
        let json: Value = serde_json::from_slice(
            &OutputFormat::Json
                .write(std::slice::from_ref(&batch))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "customer_id": "a,b", "vm_id": "v\"1",
                "window_start": "1970-01-01T00:00:00Z", "window_end": "1970-01-01T01:00:00Z",
                "cpu_seconds": 1.5, "memory_gib_hours": 1.0,
                "disk_read_bytes": 0, "disk_write_bytes": 0,
                "network_rx_bytes": 0, "network_tx_bytes": 0,
                "observed_seconds": 0.0, "samples": 2, "gaps": 0
            }])
        );
        let csv = String::from_utf8(csv_rfc4180(&[batch]).unwrap()).unwrap();
        assert_eq!(
            csv,
            format!(
                "{}\r\n{}\r\n",
                CSV_COLUMNS.join(","),
                "\"a,b\",\"v\"\"1\",1970-01-01T00:00:00Z,1970-01-01T01:00:00Z,1.5,1.0,0,0,0,0,0.0,2,0"
            )
        );
        // No rows: the JSON is an empty list, the CSV its header.
        let empty = answer(&[]);
        assert_eq!(
            OutputFormat::Json
                .write(std::slice::from_ref(&empty))
                .unwrap(),
            b"[]"
        );
        assert_eq!(
            String::from_utf8(csv_rfc4180(&[empty]).unwrap()).unwrap(),
            format!("{}\r\n", CSV_COLUMNS.join(","))
        );
    }

    #[test]
    fn windows_start_at_or_after_from() {
        let h = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap()
        };
        let (a, b) = Window::Month.hours_of(h("2026-01-15T00:00:00Z"), h("2026-03-01T00:00:00Z"));
        assert_eq!(
            (a, b),
            (h("2026-02-01T00:00:00Z"), h("2026-03-01T00:00:00Z"))
        );
        let (a, b) = Window::Day.hours_of(h("2026-01-15T00:00:00Z"), h("2026-01-15T00:00:01Z"));
        assert_eq!(
            (a, b),
            (h("2026-01-15T00:00:00Z"), h("2026-01-16T00:00:00Z"))
        );
        let (a, b) = Window::Hour.hours_of(h("2026-01-15T10:30:00Z"), h("2026-01-15T11:00:00Z"));
        assert_eq!(a, b, "no hour starts in [10:30, 11:00)");
    }
}

#[cfg(test)]
mod sql_tests;
