//! `GET /api/v1/events`: the events a tenant sent, as OpenMeter's
//! `IngestedEvent` objects, most recently ingested first.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use datafusion::common::ScalarValue;
use serde_json::{json, Map, Value};
use tally_pipeline::access::Access;
use tally_pipeline::clock::{rfc3339, HOUR_NS};

use super::problems::{bad, forbidden, unexpected};
use crate::sql::format::OutputFormat;
use crate::sql::SqlEngine;

pub(crate) const EVENTS: &str = include_str!("sql/events.sql");

/// The parameters OpenMeter's list takes; `clientId` only tracks a query.
const PARAMS: [&str; 9] = [
    "clientId",
    "ingestedAtFrom",
    "ingestedAtTo",
    "id",
    "subject",
    "customerId",
    "from",
    "to",
    "limit",
];

fn time(params: &HashMap<String, String>, name: &str, errors: &mut Vec<String>) -> Option<i64> {
    let v = params.get(name)?;
    match chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
    {
        Some(ns) => Some(ns),
        None => {
            errors.push(format!("{name} must be an RFC 3339 time, got {v:?}"));
            None
        }
    }
}

pub async fn list(
    State(engine): State<SqlEngine>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut errors = Vec::new();
    let mut unknown: Vec<&String> = params
        .keys()
        .filter(|k| !PARAMS.contains(&k.as_str()))
        .collect();
    unknown.sort();
    for k in unknown {
        errors.push(format!("{k} is not a parameter of GET /api/v1/events"));
    }
    if params.contains_key("customerId") {
        errors.push("customerId: tally has no customer entities; filter by subject".into());
    }
    let from = time(&params, "from", &mut errors);
    let to = time(&params, "to", &mut errors);
    let ingested_from = time(&params, "ingestedAtFrom", &mut errors);
    let ingested_to = time(&params, "ingestedAtTo", &mut errors);
    let limit = match params.get("limit") {
        None => 100,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                errors.push(format!("limit must be an integer from 1 to 100, got {v:?}"));
                100
            }
        },
    };
    if !errors.is_empty() {
        return bad(errors.join("; "));
    }
    let tenant = match access.namespace() {
        Ok(t) => t,
        Err(e) => return forbidden(e),
    };
    // Without `from`, the last 72 hours (as OpenMeter).
    let from = from.or_else(|| Some(tally_pipeline::now_ns() - 72 * HOUR_NS));
    let text = |name: &str| ScalarValue::Utf8(params.get(name).cloned());
    let values = vec![
        ScalarValue::Utf8(Some(tenant)),
        ScalarValue::Int64(from),
        ScalarValue::Int64(to),
        ScalarValue::Int64(ingested_from),
        ScalarValue::Int64(ingested_to),
        text("id"),
        text("subject"),
        ScalarValue::Int64(Some(limit)),
    ];
    let rows = match engine.query_with_params(EVENTS, values).await {
        Ok(batches) => match OutputFormat::Json.write(&batches) {
            Ok(bytes) => serde_json::from_slice::<Vec<Map<String, Value>>>(&bytes),
            Err(e) => return unexpected("listing events", e),
        },
        Err(e) => return unexpected("listing events", e),
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return unexpected("listing events", e),
    };
    Json(rows.iter().map(ingested_event).collect::<Vec<_>>()).into_response()
}

/// A row as an `IngestedEvent`: the event as sent, and when it was stored
/// (acknowledged once durable, so ingested and stored at once).
fn ingested_event(row: &Map<String, Value>) -> Value {
    let ns = |k: &str| row.get(k).and_then(Value::as_i64).unwrap_or(0);
    let mut event = Map::new();
    for k in ["id", "source", "specversion", "type", "subject"] {
        event.insert(k.into(), row.get(k).cloned().unwrap_or(Value::Null));
    }
    event.insert("time".into(), json!(rfc3339(ns("time_ns"))));
    for k in ["datacontenttype", "dataschema"] {
        if let Some(v) = row.get(k).filter(|v| !v.is_null()) {
            event.insert(k.into(), v.clone());
        }
    }
    if let Some(data) = row
        .get("data")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    {
        event.insert("data".into(), data);
    }
    let at = rfc3339(ns("ingested_ns"));
    json!({"event": event, "ingestedAt": at, "storedAt": at})
}
