//! The usage-engine read API of spec 001: `GET /internal/usage/summary`,
//! `/models`, `/agents`, `/tools`, with costs from the price catalogue.
//!
//! Filters: `microdao_id`, `agent_id`, `period_hours` (1..720, default 24).
//! `agent_id` applies to messages as their sender (`actor_id`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use crate::format::OutputFormat;
use crate::prices::{PriceCatalogue, Tokens};
use crate::sql::{QueryError, SqlEngine};

const MODELS_SQL: &str = include_str!("../sql/usage_models.sql");
const AGENTS_SQL: &str = include_str!("../sql/usage_agents.sql");
const TOOLS_SQL: &str = include_str!("../sql/usage_tools.sql");
const SUMMARY_SQL: &str = include_str!("../sql/usage_summary.sql");

#[derive(Clone)]
struct UsageApi {
    engine: SqlEngine,
    prices: Arc<PriceCatalogue>,
}

pub fn router(engine: SqlEngine, prices: Arc<PriceCatalogue>) -> Router {
    Router::new()
        .route("/internal/usage/summary", get(summary))
        .route("/internal/usage/models", get(models))
        .route("/internal/usage/agents", get(agents))
        .route("/internal/usage/tools", get(tools))
        .with_state(UsageApi { engine, prices })
}

/// Validated filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Filters {
    pub microdao_id: Option<String>,
    pub agent_id: Option<String>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

impl Filters {
    pub fn parse(params: &HashMap<String, String>, now: DateTime<Utc>) -> Result<Filters, String> {
        let mut errors = Vec::new();
        let hours = match params.get("period_hours") {
            None => 24,
            Some(s) => match s.trim().parse::<i64>() {
                Ok(h) if (1..=720).contains(&h) => h,
                Ok(h) => {
                    errors.push(format!("period_hours must be between 1 and 720, got {h}"));
                    24
                }
                Err(_) => {
                    errors.push(format!(
                        "period_hours must be an integer between 1 and 720, got {s:?}"
                    ));
                    24
                }
            },
        };
        let text = |name: &str, errors: &mut Vec<String>| match params.get(name) {
            Some(v) if v.is_empty() => {
                errors.push(format!("{name} must not be empty when given"));
                None
            }
            other => other.cloned(),
        };
        let microdao_id = text("microdao_id", &mut errors);
        let agent_id = text("agent_id", &mut errors);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Filters {
            microdao_id,
            agent_id,
            period_start: now - chrono::Duration::hours(hours),
            period_end: now,
        })
    }

    /// The WHERE clause of a table; `agent_column` is the column the agent
    /// filter applies to.
    fn clause(&self, agent_column: &str) -> String {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let ns = |t: DateTime<Utc>| t.timestamp_nanos_opt().unwrap_or_default();
        let mut c = format!(
            "CAST(timestamp AS BIGINT) >= {} AND CAST(timestamp AS BIGINT) < {}",
            ns(self.period_start),
            ns(self.period_end)
        );
        if let Some(m) = &self.microdao_id {
            c += &format!(" AND microdao_id = {}", quote(m));
        }
        if let Some(a) = &self.agent_id {
            c += &format!(" AND {agent_column} = {}", quote(a));
        }
        c
    }

    fn fill(&self, sql: &str) -> String {
        sql.replace("{llm}", &self.clause("agent_id"))
            .replace("{tool}", &self.clause("agent_id"))
            .replace("{agent}", &self.clause("agent_id"))
            .replace("{message}", &self.clause("actor_id"))
    }
}

fn bad_request(detail: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "Invalid request", "detail": detail})),
    )
        .into_response()
}

fn failed(e: QueryError) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "Query failed", "detail": e.to_string()})),
    )
        .into_response()
}

async fn rows(engine: &SqlEngine, sql: &str) -> Result<Vec<Map<String, Value>>, QueryError> {
    let batches = engine.query(sql).await?;
    let bytes = OutputFormat::Json
        .write(&batches)
        .map_err(|e| QueryError::Execution(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| QueryError::Execution(e.to_string()))
}

/// Model rows with `cost_usd` (null when unpriced), the priced total, and
/// the number of calls that could not be priced.
async fn model_rows(api: &UsageApi, f: &Filters) -> Result<(Vec<Value>, f64, u64), QueryError> {
    let mut total = 0.0;
    let mut unpriced = 0;
    let mut out = Vec::new();
    for mut row in rows(&api.engine, &f.fill(MODELS_SQL)).await? {
        let num = |k: &str| row.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let tokens = Tokens {
            prompt: num("prompt_tokens"),
            completion: num("completion_tokens"),
            cache_creation: num("cache_creation_tokens"),
            cache_read: num("cache_read_tokens"),
        };
        let model = row.get("model").and_then(Value::as_str).unwrap_or("");
        let provider = row.get("provider").and_then(Value::as_str);
        let cost = api.prices.price(model, provider).map(|p| p.cost(tokens));
        match cost {
            Some(c) => total += c,
            None => unpriced += row.get("calls").and_then(Value::as_u64).unwrap_or(0),
        }
        row.insert("cost_usd".into(), cost.map_or(Value::Null, |c| json!(c)));
        out.push(Value::Object(row));
    }
    Ok((out, total, unpriced))
}

async fn models(
    State(api): State<UsageApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let f = match Filters::parse(&params, Utc::now()) {
        Ok(f) => f,
        Err(detail) => return bad_request(detail),
    };
    match model_rows(&api, &f).await {
        Ok((models, _, _)) => Json(json!({"models": models})).into_response(),
        Err(e) => failed(e),
    }
}

async fn agents(
    State(api): State<UsageApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    list(&api, &params, AGENTS_SQL, "agents").await
}

async fn tools(
    State(api): State<UsageApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    list(&api, &params, TOOLS_SQL, "tools").await
}

/// `{"<key>": rows}` of a named query under the request's filters.
async fn list(api: &UsageApi, params: &HashMap<String, String>, sql: &str, key: &str) -> Response {
    let f = match Filters::parse(params, Utc::now()) {
        Ok(f) => f,
        Err(detail) => return bad_request(detail),
    };
    match rows(&api.engine, &f.fill(sql)).await {
        Ok(rows) => Json(json!({ key: rows })).into_response(),
        Err(e) => failed(e),
    }
}

async fn summary(
    State(api): State<UsageApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let f = match Filters::parse(&params, Utc::now()) {
        Ok(f) => f,
        Err(detail) => return bad_request(detail),
    };
    let result = async {
        let totals = rows(&api.engine, &f.fill(SUMMARY_SQL)).await?;
        let (models, cost, unpriced) = model_rows(&api, &f).await?;
        let agents = rows(&api.engine, &f.fill(AGENTS_SQL)).await?;
        let tools = rows(&api.engine, &f.fill(TOOLS_SQL)).await?;
        Ok::<_, QueryError>((totals, models, cost, unpriced, agents, tools))
    }
    .await;
    let (totals, models, cost, unpriced, agents, tools) = match result {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let mut summary = Map::new();
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    summary.insert("period_start".into(), json!(time(f.period_start)));
    summary.insert("period_end".into(), json!(time(f.period_end)));
    summary.insert("microdao_id".into(), json!(f.microdao_id));
    summary.insert("agent_id".into(), json!(f.agent_id));
    if let Some(t) = totals.into_iter().next() {
        summary.extend(t);
    }
    summary.insert("llm_cost_usd_total".into(), json!(cost));
    summary.insert("unpriced_calls".into(), json!(unpriced));
    Json(json!({"summary": summary, "models": models, "agents": agents, "tools": tools}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Filters, String> {
        let params = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Filters::parse(&params, DateTime::from_timestamp(1_000_000, 0).unwrap())
    }

    #[test]
    fn period_hours_is_validated_and_defaults_to_24() {
        let f = parse(&[]).unwrap();
        assert_eq!((f.period_end - f.period_start).num_hours(), 24);
        assert_eq!(
            parse(&[("period_hours", "720")]).map(|f| (f.period_end - f.period_start).num_hours()),
            Ok(720)
        );
        assert_eq!(
            parse(&[("period_hours", "0")]),
            Err("period_hours must be between 1 and 720, got 0".into())
        );
        assert_eq!(
            parse(&[("period_hours", "721")]),
            Err("period_hours must be between 1 and 720, got 721".into())
        );
        assert_eq!(
            parse(&[("period_hours", "1.5"), ("microdao_id", "")]),
            Err("period_hours must be an integer between 1 and 720, got \"1.5\"; microdao_id must not be empty when given".into())
        );
    }

    #[test]
    fn filters_quote_their_values() {
        let f = parse(&[("microdao_id", "o'brien")]).unwrap();
        assert!(f
            .clause("agent_id")
            .ends_with("AND microdao_id = 'o''brien'"));
    }
}
