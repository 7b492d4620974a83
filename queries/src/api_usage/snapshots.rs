//! Usage snapshots: stored with each computed stats of an active block (at
//! most once per `refresh_rate`), and read back by `GET /api/usage/sessions`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use datafusion::common::ScalarValue;
use serde_json::{json, Map, Value};
use tally_pipeline::access::Access;
use tally_pipeline::{Dataset, RecordBuilder};

use super::api::{now_ms, pairs, server_error, validation_failed, Scope, UsageApi, SOURCE};
use super::config::UsageConfig;
use super::model::{Block, HOUR_MS};
use crate::sql::format::OutputFormat;
use crate::sql::QueryError;

/// The query of `GET /api/usage/sessions`.
const SESSIONS: &str = include_str!("sql/sessions.sql");

/// Rows as JSON objects by column name.
fn json_rows(batches: &[arrow::array::RecordBatch]) -> Result<Vec<Map<String, Value>>, QueryError> {
    let bytes = OutputFormat::Json
        .write(batches)
        .map_err(|e| QueryError::Execution(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| QueryError::Execution(e.to_string()))
}

impl UsageApi {
    /// Stores a snapshot of `stats` at most once per `refresh_rate` seconds
    /// per session and scope.
    pub(super) async fn snapshot(
        &self,
        cfg: &UsageConfig,
        scope: &Scope,
        block: &Block,
        stats: &Value,
        now: i64,
    ) {
        if scope.tenants.is_some() {
            return;
        }
        let key = format!("{}|{}", block.id, scope.key());
        {
            let mut last = self.0.snapshots.lock();
            if last
                .get(&key)
                .is_some_and(|t| now - t < cfg.refresh_rate * 1000)
            {
                return;
            }
            last.insert(key.clone(), now);
        }
        use tally_pipeline::Value as V;
        let t = block.token_counts;
        let mut b = RecordBuilder::new(Dataset::UsageSnapshots);
        b.set("id", format!("{key}|{now}"))
            .set("timestamp", V::Ts(now * 1_000_000))
            .set("session_id", block.id.as_str())
            .set("actor_id", scope.actor_id.clone())
            .set("microdao_id", scope.microdao_id.clone())
            .set("plan", cfg.plan.as_str())
            .set("input_tokens", t.input_tokens)
            .set("output_tokens", t.output_tokens)
            .set("cache_creation_tokens", t.cache_creation_tokens)
            .set("cache_read_tokens", t.cache_read_tokens)
            .set("total_tokens", t.total_tokens)
            .set("cost_usd", block.cost_usd)
            .set("messages", block.sent_messages_count)
            .set("stats", stats.to_string());
        let record = match b.build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "usage snapshot does not fit usage_snapshots; not stored");
                return;
            }
        };
        if let Err(e) = self
            .0
            .pipeline
            .ingest(SOURCE, vec![record], Vec::new())
            .await
        {
            tracing::warn!(error = %e, "usage snapshot not stored");
            self.0.snapshots.lock().remove(&key);
        }
    }
}

fn int_param(
    params: &[(String, String)],
    name: &str,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
    errors: &mut Vec<String>,
) -> i64 {
    match params.iter().find(|(k, _)| k == name) {
        None => default,
        Some((_, v)) => match v.parse::<i64>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                errors.push(format!(
                    "{name} must be an integer between {} and {}, got {v:?}",
                    range.start(),
                    range.end()
                ));
                default
            }
        },
    }
}

pub(super) async fn sessions(
    State(api): State<UsageApi>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut params = pairs(params);
    let mut errors = Vec::new();
    let scope = Scope::take(&mut params, &mut errors);
    let hours_back = int_param(&params, "hours_back", 1..=720, 24, &mut errors);
    let limit = int_param(&params, "limit", 1..=1000, 100, &mut errors);
    let session_id = params
        .iter()
        .find(|(k, _)| k == "session_id")
        .map(|(_, v)| v.clone());
    for (k, _) in &params {
        if !["hours_back", "limit", "session_id"].contains(&k.as_str()) {
            errors.push(format!("{k} is not a parameter of /api/usage/sessions"));
        }
    }
    if !errors.is_empty() {
        return validation_failed(errors);
    }
    let scope = match scope.within(&access) {
        Ok(s) => s,
        Err(e) => return crate::http::forbidden(e),
    };
    let text = |v: &Option<String>| ScalarValue::Utf8(v.clone());
    let params = vec![
        ScalarValue::Int64(Some((now_ms() - hours_back * HOUR_MS) * 1_000_000)),
        text(&scope.actor_id),
        text(&scope.microdao_id),
        text(&session_id),
        ScalarValue::Int64(Some(limit)),
        text(&scope.tenant_param()),
    ];
    let rows = match api.0.engine.query_with_params(SESSIONS, params).await {
        Ok(batches) => match json_rows(&batches) {
            Ok(rows) => rows,
            Err(e) => return server_error(e),
        },
        Err(e) => return server_error(e),
    };
    let count = rows
        .first()
        .and_then(|r| r.get("total_count"))
        .cloned()
        .unwrap_or(json!(0));
    let sessions: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let data = r
                .get("stats")
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str::<Value>(s).ok());
            json!({
                "id": r.get("id"),
                "session_id": r.get("session_id"),
                "snapshot_type": "stats",
                "timestamp": r.get("ts_ms"),
                "data": data,
            })
        })
        .collect();
    Json(json!({
        "sessions": sessions,
        "total_count": count,
        "hours_back": hours_back,
        "limit": limit,
        "session_id": session_id,
    }))
    .into_response()
}
