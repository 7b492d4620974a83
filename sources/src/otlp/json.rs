//! OTLP/JSON (the protobuf JSON mapping with OTLP's exceptions) into the
//! same messages protobuf gives: keys in lowerCamelCase (snake_case taken
//! too), trace and span ids as hex, 64-bit integers as strings or as bare
//! numbers (Claude Code sends `"intValue": 101`), enums as numbers.

use serde_json::{Map, Value};
use tally_proto::opentelemetry::proto::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use tally_proto::opentelemetry::proto::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use tally_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tally_proto::opentelemetry::proto::metrics::v1::{
    metric, number_data_point, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint,
};
use tally_proto::opentelemetry::proto::resource::v1::Resource;
use tally_proto::opentelemetry::proto::trace::v1::{span, ResourceSpans, ScopeSpans, Span};

/// What is wrong with a body, naming the field by its path.
pub type Bad = String;

type Obj = Map<String, Value>;

fn parse(body: &[u8]) -> Result<Obj, Bad> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// A field by its lowerCamelCase name, or its snake_case one.
fn field<'a>(o: &'a Obj, camel: &str) -> Option<&'a Value> {
    if let Some(v) = o.get(camel).filter(|v| !v.is_null()) {
        return Some(v);
    }
    let mut snake = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    o.get(&snake).filter(|v| !v.is_null())
}

fn objects<'a>(o: &'a Obj, camel: &str, at: &str) -> Result<Vec<(String, &'a Obj)>, Bad> {
    match field(o, camel) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let path = format!("{at}.{camel}[{i}]");
                v.as_object()
                    .map(|o| (path.clone(), o))
                    .ok_or_else(|| format!("{path} must be an object"))
            })
            .collect(),
        Some(_) => Err(format!("{at}.{camel} must be an array")),
    }
}

fn object<'a>(o: &'a Obj, camel: &str, at: &str) -> Result<Option<&'a Obj>, Bad> {
    match field(o, camel) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(format!("{at}.{camel} must be an object")),
    }
}

fn string(o: &Obj, camel: &str, at: &str) -> Result<String, Bad> {
    match field(o, camel) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{at}.{camel} must be a string")),
    }
}

/// A 64-bit integer as a string or a number.
fn int(o: &Obj, camel: &str, at: &str) -> Result<Option<i64>, Bad> {
    let bad = || format!("{at}.{camel} must be an integer (a number or a decimal string)");
    match field(o, camel) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(bad),
        Some(Value::String(s)) => s
            .parse::<i64>()
            .or_else(|_| s.parse::<u64>().map(|u| u as i64))
            .map(Some)
            .map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn uint(o: &Obj, camel: &str, at: &str) -> Result<u64, Bad> {
    Ok(int(o, camel, at)?.unwrap_or(0) as u64)
}

/// A double as a number or a string (`"NaN"`, `"Infinity"` too).
fn double(o: &Obj, camel: &str, at: &str) -> Result<Option<f64>, Bad> {
    match field(o, camel) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => match s.as_str() {
            "NaN" => Ok(Some(f64::NAN)),
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            _ => s
                .parse()
                .map(Some)
                .map_err(|_| format!("{at}.{camel} must be a number")),
        },
        Some(_) => Err(format!("{at}.{camel} must be a number")),
    }
}

/// Trace and span ids: hex (OTLP/JSON), or base64 (the plain protobuf
/// JSON mapping some senders use).
fn id(o: &Obj, camel: &str, at: &str) -> Result<Vec<u8>, Bad> {
    let s = string(o, camel, at)?;
    if s.is_empty() {
        return Ok(Vec::new());
    }
    if s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok((0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
            .collect());
    }
    Err(format!("{at}.{camel} must be a hex id, got {s:?}"))
}

fn any(v: &Value, at: &str) -> Result<AnyValue, Bad> {
    let Some(o) = v.as_object() else {
        return Err(format!("{at} must be an AnyValue object"));
    };
    let value = if let Some(s) = field(o, "stringValue") {
        let s = s
            .as_str()
            .ok_or_else(|| format!("{at}.stringValue must be a string"))?;
        Some(any_value::Value::StringValue(s.to_string()))
    } else if let Some(b) = field(o, "boolValue") {
        let b = b
            .as_bool()
            .ok_or_else(|| format!("{at}.boolValue must be a boolean"))?;
        Some(any_value::Value::BoolValue(b))
    } else if field(o, "intValue").is_some() {
        int(o, "intValue", at)?.map(any_value::Value::IntValue)
    } else if field(o, "doubleValue").is_some() {
        double(o, "doubleValue", at)?.map(any_value::Value::DoubleValue)
    } else if let Some(a) = object(o, "arrayValue", at)? {
        let values = match field(a, "values") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| any(v, &format!("{at}.arrayValue.values[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("{at}.arrayValue.values must be an array")),
        };
        Some(any_value::Value::ArrayValue(ArrayValue { values }))
    } else if let Some(kv) = object(o, "kvlistValue", at)? {
        Some(any_value::Value::KvlistValue(KeyValueList {
            values: key_values(kv, "values", &format!("{at}.kvlistValue"))?,
        }))
    } else if field(o, "bytesValue").is_some() {
        Some(any_value::Value::BytesValue(
            string(o, "bytesValue", at)?.into_bytes(),
        ))
    } else {
        None
    };
    Ok(AnyValue { value })
}

fn key_values(o: &Obj, camel: &str, at: &str) -> Result<Vec<KeyValue>, Bad> {
    objects(o, camel, at)?
        .into_iter()
        .map(|(path, kv)| {
            Ok(KeyValue {
                key: string(kv, "key", &path)?,
                value: field(kv, "value")
                    .map(|v| any(v, &format!("{path}.value")))
                    .transpose()?,
            })
        })
        .collect()
}

fn resource(o: &Obj, at: &str) -> Result<Option<Resource>, Bad> {
    object(o, "resource", at)?
        .map(|r| {
            Ok(Resource {
                attributes: key_values(r, "attributes", &format!("{at}.resource"))?,
            })
        })
        .transpose()
}

fn scope(o: &Obj, at: &str) -> Result<Option<InstrumentationScope>, Bad> {
    object(o, "scope", at)?
        .map(|s| {
            let at = format!("{at}.scope");
            Ok(InstrumentationScope {
                name: string(s, "name", &at)?,
                version: string(s, "version", &at)?,
                attributes: key_values(s, "attributes", &at)?,
            })
        })
        .transpose()
}

pub fn logs(body: &[u8]) -> Result<ExportLogsServiceRequest, Bad> {
    let o = parse(body)?;
    let mut out = ExportLogsServiceRequest::default();
    for (at, rl) in objects(&o, "resourceLogs", "")? {
        let mut resource_logs = ResourceLogs {
            resource: resource(rl, &at)?,
            ..Default::default()
        };
        for (at, sl) in objects(rl, "scopeLogs", &at)? {
            let mut scope_logs = ScopeLogs {
                scope: scope(sl, &at)?,
                ..Default::default()
            };
            for (at, r) in objects(sl, "logRecords", &at)? {
                scope_logs.log_records.push(LogRecord {
                    time_unix_nano: uint(r, "timeUnixNano", &at)?,
                    observed_time_unix_nano: uint(r, "observedTimeUnixNano", &at)?,
                    severity_number: int(r, "severityNumber", &at)?.unwrap_or(0) as i32,
                    severity_text: string(r, "severityText", &at)?,
                    body: field(r, "body")
                        .map(|b| any(b, &format!("{at}.body")))
                        .transpose()?,
                    attributes: key_values(r, "attributes", &at)?,
                    flags: uint(r, "flags", &at)? as u32,
                    trace_id: id(r, "traceId", &at)?,
                    span_id: id(r, "spanId", &at)?,
                    event_name: string(r, "eventName", &at)?,
                });
            }
            resource_logs.scope_logs.push(scope_logs);
        }
        out.resource_logs.push(resource_logs);
    }
    Ok(out)
}

pub fn traces(body: &[u8]) -> Result<ExportTraceServiceRequest, Bad> {
    let o = parse(body)?;
    let mut out = ExportTraceServiceRequest::default();
    for (at, rs) in objects(&o, "resourceSpans", "")? {
        let mut resource_spans = ResourceSpans {
            resource: resource(rs, &at)?,
            ..Default::default()
        };
        for (at, ss) in objects(rs, "scopeSpans", &at)? {
            let mut scope_spans = ScopeSpans {
                scope: scope(ss, &at)?,
                ..Default::default()
            };
            for (at, s) in objects(ss, "spans", &at)? {
                let events = objects(s, "events", &at)?
                    .into_iter()
                    .map(|(at, e)| {
                        Ok(span::Event {
                            time_unix_nano: uint(e, "timeUnixNano", &at)?,
                            name: string(e, "name", &at)?,
                            attributes: key_values(e, "attributes", &at)?,
                        })
                    })
                    .collect::<Result<_, Bad>>()?;
                scope_spans.spans.push(Span {
                    trace_id: id(s, "traceId", &at)?,
                    span_id: id(s, "spanId", &at)?,
                    parent_span_id: id(s, "parentSpanId", &at)?,
                    name: string(s, "name", &at)?,
                    kind: int(s, "kind", &at)?.unwrap_or(0) as i32,
                    start_time_unix_nano: uint(s, "startTimeUnixNano", &at)?,
                    end_time_unix_nano: uint(s, "endTimeUnixNano", &at)?,
                    attributes: key_values(s, "attributes", &at)?,
                    events,
                });
            }
            resource_spans.scope_spans.push(scope_spans);
        }
        out.resource_spans.push(resource_spans);
    }
    Ok(out)
}

fn number_points(o: &Obj, at: &str) -> Result<Vec<NumberDataPoint>, Bad> {
    objects(o, "dataPoints", at)?
        .into_iter()
        .map(|(at, p)| {
            let value = if field(p, "asInt").is_some() {
                int(p, "asInt", &at)?.map(number_data_point::Value::AsInt)
            } else {
                double(p, "asDouble", &at)?.map(number_data_point::Value::AsDouble)
            };
            Ok(NumberDataPoint {
                attributes: key_values(p, "attributes", &at)?,
                start_time_unix_nano: uint(p, "startTimeUnixNano", &at)?,
                time_unix_nano: uint(p, "timeUnixNano", &at)?,
                value,
            })
        })
        .collect()
}

/// What histogram and summary points share.
struct Counted {
    attributes: Vec<KeyValue>,
    start: u64,
    time: u64,
    count: u64,
    sum: Option<f64>,
}

fn counted_points<T>(o: &Obj, at: &str, make: impl Fn(Counted) -> T) -> Result<Vec<T>, Bad> {
    objects(o, "dataPoints", at)?
        .into_iter()
        .map(|(at, p)| {
            Ok(make(Counted {
                attributes: key_values(p, "attributes", &at)?,
                start: uint(p, "startTimeUnixNano", &at)?,
                time: uint(p, "timeUnixNano", &at)?,
                count: uint(p, "count", &at)?,
                sum: double(p, "sum", &at)?,
            }))
        })
        .collect()
}

pub fn metrics(body: &[u8]) -> Result<ExportMetricsServiceRequest, Bad> {
    let o = parse(body)?;
    let mut out = ExportMetricsServiceRequest::default();
    for (at, rm) in objects(&o, "resourceMetrics", "")? {
        let mut resource_metrics = ResourceMetrics {
            resource: resource(rm, &at)?,
            ..Default::default()
        };
        for (at, sm) in objects(rm, "scopeMetrics", &at)? {
            let mut scope_metrics = ScopeMetrics {
                scope: scope(sm, &at)?,
                ..Default::default()
            };
            for (at, m) in objects(sm, "metrics", &at)? {
                let temporality = |d: &Obj, at: &str| {
                    int(d, "aggregationTemporality", at).map(|t| t.unwrap_or(0) as i32)
                };
                let data = if let Some(g) = object(m, "gauge", &at)? {
                    let at = format!("{at}.gauge");
                    Some(metric::Data::Gauge(Gauge {
                        data_points: number_points(g, &at)?,
                    }))
                } else if let Some(s) = object(m, "sum", &at)? {
                    let at = format!("{at}.sum");
                    Some(metric::Data::Sum(Sum {
                        data_points: number_points(s, &at)?,
                        aggregation_temporality: temporality(s, &at)?,
                        is_monotonic: field(s, "isMonotonic").and_then(Value::as_bool)
                            == Some(true),
                    }))
                } else if let Some(h) = object(m, "histogram", &at)? {
                    let at = format!("{at}.histogram");
                    let data_points = counted_points(h, &at, |c| HistogramDataPoint {
                        attributes: c.attributes,
                        start_time_unix_nano: c.start,
                        time_unix_nano: c.time,
                        count: c.count,
                        sum: c.sum,
                    })?;
                    Some(metric::Data::Histogram(Histogram {
                        data_points,
                        aggregation_temporality: temporality(h, &at)?,
                    }))
                } else if let Some(h) = object(m, "exponentialHistogram", &at)? {
                    let at = format!("{at}.exponentialHistogram");
                    let data_points = counted_points(h, &at, |c| ExponentialHistogramDataPoint {
                        attributes: c.attributes,
                        start_time_unix_nano: c.start,
                        time_unix_nano: c.time,
                        count: c.count,
                        sum: c.sum,
                    })?;
                    Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                        data_points,
                        aggregation_temporality: temporality(h, &at)?,
                    }))
                } else if let Some(s) = object(m, "summary", &at)? {
                    let at = format!("{at}.summary");
                    let data_points = counted_points(s, &at, |c| SummaryDataPoint {
                        attributes: c.attributes,
                        start_time_unix_nano: c.start,
                        time_unix_nano: c.time,
                        count: c.count,
                        sum: c.sum.unwrap_or(0.0),
                    })?;
                    Some(metric::Data::Summary(Summary { data_points }))
                } else {
                    None
                };
                scope_metrics.metrics.push(Metric {
                    name: string(m, "name", &at)?,
                    description: string(m, "description", &at)?,
                    unit: string(m, "unit", &at)?,
                    data,
                });
            }
            resource_metrics.scope_metrics.push(scope_metrics);
        }
        out.resource_metrics.push(resource_metrics);
    }
    Ok(out)
}
