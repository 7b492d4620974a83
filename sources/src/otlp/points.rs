//! OTLP metric data points as `otel_metrics` rows: one row per point, as
//! sent. Gauges and sums keep `value`; histograms, exponential histograms
//! and summaries keep `count` and `sum`. `series` is a digest of the
//! stream's identity (tenant, metric name, the point's attributes, the
//! resource's); `point_id` adds its start and time, so a point exported
//! again is a copy and counts once. Cumulative streams become deltas at
//! read time (the `otel_metric_deltas` view).
//!
//! Model calls are never counted from metrics (`claude_code.token.usage`,
//! `codex.turn.token_usage` carry the same tokens as the log records):
//! points go to `otel_metrics` only, never to `usage_llm`.

use serde_json::{json, Map, Value as Json};
use tally_pipeline::batch::{Cell, Row};
use tally_pipeline::Dataset;
use tally_proto::opentelemetry::proto::common::v1::{any_value, AnyValue, KeyValue};
use tally_proto::opentelemetry::proto::metrics::v1::{metric::Data, number_data_point, Metric};

/// Attributes as a JSON object, keys sorted (a stable text for digests).
pub fn attributes_json(attrs: &[KeyValue]) -> String {
    let mut sorted: Vec<&KeyValue> = attrs.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut m = Map::new();
    for kv in sorted {
        m.insert(kv.key.clone(), any_json(kv.value.as_ref()));
    }
    Json::Object(m).to_string()
}

fn any_json(v: Option<&AnyValue>) -> Json {
    match v.and_then(|v| v.value.as_ref()) {
        None => Json::Null,
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Json::Array(a.values.iter().map(|v| any_json(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            serde_json::from_str(&attributes_json(&kv.values)).unwrap_or(Json::Null)
        }
        Some(any_value::Value::BytesValue(b)) => {
            json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        }
    }
}

fn digest(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn temporality(t: i32) -> &'static str {
    match t {
        1 => "delta",
        2 => "cumulative",
        _ => "unspecified",
    }
}

/// One point, before it is a row.
struct Point<'a> {
    attributes: &'a [KeyValue],
    start: u64,
    time: u64,
    value: Option<f64>,
    count: Option<u64>,
    sum: Option<f64>,
}

/// The rows of one metric's points; a point without a time is refused
/// with the reason.
pub fn rows_of<'a>(
    tenant: &'a str,
    resource: &'a str,
    m: &'a Metric,
    received: i64,
) -> Vec<Result<Row<'a>, String>> {
    let (kind, temp, monotonic, points): (&str, i32, Option<bool>, Vec<Point>) = match &m.data {
        Some(Data::Gauge(g)) => ("gauge", 0, None, g.data_points.iter().map(number).collect()),
        Some(Data::Sum(s)) => (
            "sum",
            s.aggregation_temporality,
            Some(s.is_monotonic),
            s.data_points.iter().map(number).collect(),
        ),
        Some(Data::Histogram(h)) => (
            "histogram",
            h.aggregation_temporality,
            None,
            h.data_points
                .iter()
                .map(|p| {
                    counted(
                        &p.attributes,
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        p.count,
                        p.sum,
                    )
                })
                .collect(),
        ),
        Some(Data::ExponentialHistogram(h)) => (
            "exponential_histogram",
            h.aggregation_temporality,
            None,
            h.data_points
                .iter()
                .map(|p| {
                    counted(
                        &p.attributes,
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        p.count,
                        p.sum,
                    )
                })
                .collect(),
        ),
        // Summaries are cumulative by definition.
        Some(Data::Summary(s)) => (
            "summary",
            2,
            None,
            s.data_points
                .iter()
                .map(|p| {
                    counted(
                        &p.attributes,
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        p.count,
                        Some(p.sum),
                    )
                })
                .collect(),
        ),
        None => return Vec::new(),
    };
    points
        .into_iter()
        .map(|p| {
            if p.time == 0 {
                return Err(format!("{}: a data point needs timeUnixNano", m.name));
            }
            let attributes = attributes_json(p.attributes);
            let series = digest(&[tenant, &m.name, &attributes, resource]);
            let point_id = digest(&[&series, &p.start.to_string(), &p.time.to_string()]);
            let mut b = Row::new(Dataset::OtelMetrics);
            b.set("point_id", point_id)
                .set("timestamp", Cell::Ts(p.time as i64))
                .set("tenant", tenant)
                .set("name", m.name.as_str())
                .set("unit", (!m.unit.is_empty()).then_some(m.unit.as_str()))
                .set("kind", kind)
                .set("temporality", temporality(temp))
                .set("monotonic", monotonic)
                .set("series", series)
                .set(
                    "start_time",
                    if p.start > 0 {
                        Cell::Ts(p.start as i64)
                    } else {
                        Cell::Null
                    },
                )
                .set("value", p.value)
                .set("count", p.count.map(|c| c as i64))
                .set("sum", p.sum)
                .set("attributes", attributes)
                .set("resource", resource)
                .set("ingested_at", Cell::Ts(received));
            // Checked against the schema where it joins its columns.
            Ok(b)
        })
        .collect()
}

/// A histogram's or summary's point: its count and sum.
fn counted(
    attributes: &[KeyValue],
    start: u64,
    time: u64,
    count: u64,
    sum: Option<f64>,
) -> Point<'_> {
    Point {
        attributes,
        start,
        time,
        value: None,
        count: Some(count),
        sum,
    }
}

fn number(p: &tally_proto::opentelemetry::proto::metrics::v1::NumberDataPoint) -> Point<'_> {
    Point {
        attributes: &p.attributes,
        start: p.start_time_unix_nano,
        time: p.time_unix_nano,
        value: match p.value {
            Some(number_data_point::Value::AsDouble(d)) => Some(d),
            Some(number_data_point::Value::AsInt(i)) => Some(i as f64),
            None => None,
        },
        count: None,
        sum: None,
    }
}
