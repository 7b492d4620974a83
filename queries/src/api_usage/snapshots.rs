//! Usage snapshots: offered with each computed stats of an active block
//! (the derive side stores them, at most once per `refresh_rate`), and read
//! back by `GET /api/usage/sessions`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use datafusion::common::ScalarValue;
use serde_json::{json, Map, Value};
use tally_pipeline::access::Access;

use super::api::{now_ms, pairs, server_error, validation_failed, Scope, UsageApi};
use super::config::UsageConfig;
use super::model::{Block, HOUR_MS};
use super::state::Snapshot;
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
    /// Offers a snapshot of `stats` (kept at most once per `refresh_rate`
    /// seconds per session and scope); a scope of several tenants keeps
    /// none, as it is no one's plan.
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
        let snapshot = Snapshot {
            key: format!("{}|{}", block.id, scope.key()),
            actor_id: scope.actor_id.clone(),
            microdao_id: scope.microdao_id.clone(),
            plan: cfg.plan.clone(),
            refresh_rate_ms: cfg.refresh_rate * 1000,
            block: block.clone(),
            stats: stats.clone(),
            now,
        };
        self.0.state.snapshot(snapshot).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::common::ParamValues;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    use datafusion::scalar::ScalarValue;
    use tally_pipeline::batch::{records_to_batch, schema};
    use tally_pipeline::{Dataset, Record, RecordBuilder, Value};

    fn snapshot(id: &str, ms: i64, session: &str, actor: &str, dao: &str) -> Record {
        let mut r = RecordBuilder::new(Dataset::UsageSnapshots);
        for c in Dataset::UsageSnapshots.columns() {
            let v = match c.name {
                "id" => Value::Str(id.into()),
                "timestamp" => Value::Ts(ms * 1_000_000),
                "session_id" => Value::Str(session.into()),
                "actor_id" => Value::Str(actor.into()),
                "microdao_id" => Value::Str(dao.into()),
                "plan" => Value::Str("pro".into()),
                "stats" => Value::Str(format!("{{\"id\":\"{id}\"}}")),
                "cost_usd" => Value::Null,
                _ => Value::I64(0),
            };
            r.set(c.name, v);
        }
        r.build().unwrap()
    }

    /// `sql/sessions.sql`: newest first, the filters, the limit, the
    /// tenants a token covers, and the count of every match.
    #[tokio::test]
    async fn sessions_newest_first_filtered_limited_and_counted() {
        let rows = [
            snapshot("a", 1_000, "s1", "user:1", "dao:1"),
            snapshot("b", 2_000, "s1", "user:1", "dao:1"),
            snapshot("c", 3_000, "s2", "user:2", "dao:2"),
            snapshot("d", 4_000, "s1", "user:1", "dao:1"),
            snapshot("e", 500, "s1", "user:1", "dao:1"),
        ];
        let ctx = SessionContext::new();
        let batch = records_to_batch(Dataset::UsageSnapshots, rows.iter()).unwrap();
        let table = MemTable::try_new(schema(Dataset::UsageSnapshots), vec![vec![batch]]).unwrap();
        ctx.register_table("usage_snapshots", Arc::new(table))
            .unwrap();
        let ask = |since_ms: i64,
                   actor: Option<&str>,
                   dao: Option<&str>,
                   session: Option<&str>,
                   limit: i64,
                   tenants: Option<&str>| {
            let ctx = ctx.clone();
            let text = |v: Option<&str>| ScalarValue::Utf8(v.map(str::to_string));
            let params = vec![
                ScalarValue::Int64(Some(since_ms * 1_000_000)),
                text(actor),
                text(dao),
                text(session),
                ScalarValue::Int64(Some(limit)),
                text(tenants),
            ];
            async move {
                let out = ctx
                    .sql(super::SESSIONS)
                    .await
                    .unwrap()
                    .with_param_values(ParamValues::List(
                        params.into_iter().map(Into::into).collect(),
                    ))
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                arrow::util::pretty::pretty_format_batches(&out)
                    .unwrap()
                    .to_string()
            }
        };
        // Since 1 s, user:1's session s1, at most 2: d and b of the 3 (a, b, d).
        assert_eq!(
            ask(1_000, Some("user:1"), None, Some("s1"), 2, None).await,
            [
                "+----+------------+-------+------------+-------------+",
                "| id | session_id | ts_ms | stats      | total_count |",
                "+----+------------+-------+------------+-------------+",
                "| d  | s1         | 4000  | {\"id\":\"d\"} | 3           |",
                "| b  | s1         | 2000  | {\"id\":\"b\"} | 3           |",
                "+----+------------+-------+------------+-------------+",
            ]
            .join("\n")
        );
        // A token of dao:2 sees c only, whatever else is asked.
        assert_eq!(
            ask(0, None, None, None, 10, Some("dao:2")).await,
            [
                "+----+------------+-------+------------+-------------+",
                "| id | session_id | ts_ms | stats      | total_count |",
                "+----+------------+-------+------------+-------------+",
                "| c  | s2         | 3000  | {\"id\":\"c\"} | 1           |",
                "+----+------------+-------+------------+-------------+",
            ]
            .join("\n")
        );
    }
}
