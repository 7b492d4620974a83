//! The Usage API of spec 002: `GET /api/usage/stats`, `GET`/`POST
//! /api/usage/config`, `POST /api/usage/config/reset`, `GET
//! /api/usage/sessions`, and the `GET /api/usage/stream` WebSocket.
//!
//! Beyond the spec, optional `actor_id` and `microdao_id` parameters scope
//! every endpoint, so one tally serves many users.

pub mod config;
pub mod model;
pub mod rate_limit;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tally_pipeline::{Dataset, Pipeline, RecordBuilder};

use crate::agent_usage::totals::get as str_at;
use crate::format::OutputFormat;
use crate::history::History;
use crate::prices::{PriceCatalogue, Tokens};
use crate::sql::{QueryError, SqlEngine};
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use config::{ConfigFile, UsageConfig};
use model::{Block, Call, HOUR_MS};
use rate_limit::RateLimiter;

pub const SOURCE: &str = "usage_api";

/// Settings of the Usage API.
#[derive(Debug, Clone)]
pub struct UsageApiConfig {
    pub config_path: PathBuf,
    pub config_updates_per_minute: u32,
    pub stats_per_minute: u32,
}

struct Inner {
    engine: SqlEngine,
    history: History,
    pipeline: Pipeline,
    prices: Arc<PriceCatalogue>,
    config: Mutex<UsageConfig>,
    file: ConfigFile,
    config_limit: RateLimiter,
    stats_limit: RateLimiter,
    /// Last snapshot time (ms) per session and scope.
    snapshots: Mutex<HashMap<String, i64>>,
}

#[derive(Clone)]
pub struct UsageApi(Arc<Inner>);

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The spec's error body: `{"error","detail","validation_errors"}`.
fn error(
    status: StatusCode,
    error: &str,
    detail: Option<String>,
    validation: Vec<String>,
) -> Response {
    (
        status,
        Json(json!({"error": error, "detail": detail, "validation_errors": validation})),
    )
        .into_response()
}

fn validation_failed(errors: Vec<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "Validation failed", None, errors)
}

fn too_many(wait: u64) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        Some(format!(
            "rate limit reached for this client; retry in {wait} s"
        )),
        Vec::new(),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    r
}

fn server_error(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        Some(e.to_string()),
        Vec::new(),
    )
}

/// `actor_id` / `microdao_id` scope, taken out of the parameters.
#[derive(Debug, Clone, Default)]
struct Scope {
    actor_id: Option<String>,
    microdao_id: Option<String>,
}

impl Scope {
    fn take(params: &mut Vec<(String, String)>, errors: &mut Vec<String>) -> Scope {
        let mut scope = Scope::default();
        params.retain(|(k, v)| {
            let slot = match k.as_str() {
                "actor_id" => &mut scope.actor_id,
                "microdao_id" => &mut scope.microdao_id,
                _ => return true,
            };
            if v.is_empty() {
                errors.push(format!("{k} must not be empty when given"));
            } else {
                *slot = Some(v.clone());
            }
            false
        });
        scope
    }

    fn sql(&self) -> String {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut c = String::new();
        if let Some(a) = &self.actor_id {
            c += &format!(" AND actor_id = {}", quote(a));
        }
        if let Some(m) = &self.microdao_id {
            c += &format!(" AND microdao_id = {}", quote(m));
        }
        c
    }

    fn key(&self) -> String {
        format!(
            "{}|{}",
            self.actor_id.as_deref().unwrap_or(""),
            self.microdao_id.as_deref().unwrap_or("")
        )
    }
}

impl UsageApi {
    pub fn new(
        engine: SqlEngine,
        history: History,
        pipeline: Pipeline,
        prices: Arc<PriceCatalogue>,
        settings: UsageApiConfig,
    ) -> std::io::Result<Self> {
        let file = ConfigFile::new(settings.config_path);
        let config = file.load_or_init(now_ms() / 1000)?;
        Ok(Self(Arc::new(Inner {
            engine,
            history,
            pipeline,
            prices,
            config: Mutex::new(config),
            file,
            config_limit: RateLimiter::new(settings.config_updates_per_minute),
            stats_limit: RateLimiter::new(settings.stats_per_minute),
            snapshots: Mutex::new(HashMap::new()),
        })))
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/api/usage/stats", get(stats))
            .route("/api/usage/config", get(get_config).post(post_config))
            .route("/api/usage/config/reset", post(reset_config))
            .route("/api/usage/sessions", get(sessions))
            .route("/api/usage/stream", get(stream))
            .with_state(self)
    }

    /// The LLM calls of `scope` since a time, summed per hour, model and
    /// provider (block bounds are whole hours, so that is all blocks need):
    /// stored rollups for rolled-up hours, raw records for the others.
    async fn calls(&self, scope: &Scope, since_ms: i64) -> Result<Vec<Call>, QueryError> {
        let batches = self
            .0
            .history
            .hourly(Dataset::UsageLlm, since_ms * 1_000_000, i64::MAX / 2)
            .await?;
        let mut calls = Vec::new();
        for b in &batches {
            let s = |name: &str| {
                b.column_by_name(name)
                    .expect("rollup column")
                    .as_string::<i32>()
            };
            let n = |name: &str| {
                b.column_by_name(name)
                    .expect("rollup column")
                    .as_primitive::<Int64Type>()
            };
            let (actor, microdao, model, provider) =
                (s("actor_id"), s("microdao_id"), s("model"), s("provider"));
            for r in 0..b.num_rows() {
                if scope
                    .actor_id
                    .as_deref()
                    .is_some_and(|x| str_at(actor, r) != Some(x))
                    || scope
                        .microdao_id
                        .as_deref()
                        .is_some_and(|x| str_at(microdao, r) != Some(x))
                {
                    continue;
                }
                let model = str_at(model, r).unwrap_or("unknown").to_string();
                let (input, output, cache_creation, cache_read) = (
                    n("prompt_tokens").value(r),
                    n("completion_tokens").value(r),
                    n("cache_creation_tokens").value(r),
                    n("cache_read_tokens").value(r),
                );
                let cost = self.0.prices.price(&model, str_at(provider, r)).map(|p| {
                    p.cost(Tokens {
                        prompt: input as f64,
                        completion: output as f64,
                        cache_creation: cache_creation as f64,
                        cache_read: cache_read as f64,
                    })
                });
                calls.push(Call {
                    timestamp_ms: n("hour").value(r) / 1_000_000,
                    model,
                    input,
                    output,
                    cache_creation,
                    cache_read,
                    cost,
                    messages: n("calls").value(r),
                });
            }
        }
        Ok(calls)
    }

    /// The stats of the spec for `cfg` and `scope` at `now`.
    async fn compute(
        &self,
        cfg: &UsageConfig,
        scope: &Scope,
        now: i64,
    ) -> Result<(Value, Option<Block>), QueryError> {
        // 8 days for the custom limit, plus one block reaching back into them.
        let calls = self
            .calls(scope, now - 8 * 24 * HOUR_MS - model::BLOCK_MS)
            .await?;
        let blocks = model::blocks(&calls, now);
        let limits = model::limits(&cfg.plan, cfg.custom_limit_tokens, &blocks, now);
        let current = blocks.iter().rev().find(|b| b.is_active).cloned();
        let recent: Vec<&Block> = blocks
            .iter()
            .rev()
            .filter(|b| !b.is_active && b.end_time > now - 24 * HOUR_MS)
            .collect();
        let burn = current.as_ref().map(|b| b.burn_rate).unwrap_or_default();
        let resets_at = match cfg.reset_hour {
            Some(h) => Some(next_reset(now, h as u32, &cfg.timezone)),
            None => current.as_ref().map(|b| b.end_time),
        };
        let pct = |used: f64, limit: f64| {
            if limit > 0.0 {
                used * 100.0 / limit
            } else {
                0.0
            }
        };
        let totals = match &current {
            Some(b) => json!({
                "cost_percentage": pct(b.cost_usd, limits.cost),
                "token_percentage": pct(b.token_counts.total_tokens as f64, limits.tokens),
                "message_percentage": pct(b.sent_messages_count as f64, limits.messages),
                "time_to_reset_percentage": pct((now - b.start_time) as f64, (b.end_time - b.start_time) as f64),
            }),
            None => {
                json!({"cost_percentage": 0.0, "token_percentage": 0.0, "message_percentage": 0.0, "time_to_reset_percentage": 0.0})
            }
        };
        let mut applied = serde_json::to_value(cfg).unwrap_or_default();
        if let Some(m) = applied.as_object_mut() {
            for k in ["id", "created_at", "updated_at"] {
                m.remove(k);
            }
        }
        let stats = json!({
            "current_session": current,
            "recent_sessions": recent,
            "predictions": {
                "tokens_run_out": current.as_ref().and_then(|b| model::runs_out_at(b, &limits, now)),
                "limit_resets_at": resets_at,
            },
            "burn_rate": burn,
            "totals": totals,
            "limits": limits,
            "config_applied": applied,
        });
        Ok((stats, current))
    }

    /// Stores a snapshot of `stats` at most once per `refresh_rate` seconds
    /// per session and scope.
    async fn snapshot(
        &self,
        cfg: &UsageConfig,
        scope: &Scope,
        block: &Block,
        stats: &Value,
        now: i64,
    ) {
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

/// The next `hour`:00 in `timezone` (UTC for `auto`) after `now`, in ms.
fn next_reset(now_ms: i64, hour: u32, timezone: &str) -> i64 {
    let tz: chrono_tz::Tz = timezone.parse().unwrap_or(chrono_tz::UTC);
    let now = tz
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_else(|| tz.timestamp_millis_opt(0).unwrap());
    let mut day = now.date_naive();
    for _ in 0..3 {
        if let Some(t) = day
            .and_hms_opt(hour, 0, 0)
            .and_then(|naive| tz.from_local_datetime(&naive).earliest())
        {
            if t.timestamp_millis() > now_ms {
                return t.timestamp_millis();
            }
        }
        day = day.succ_opt().unwrap_or(day);
    }
    now_ms + 24 * HOUR_MS
}

fn pairs(params: HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = params.into_iter().collect();
    v.sort();
    v
}

async fn stats(
    State(api): State<UsageApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let now = now_ms();
    if let Err(wait) = api.0.stats_limit.check(peer.ip(), now) {
        return too_many(wait);
    }
    let mut params = pairs(params);
    let mut errors = Vec::new();
    let scope = Scope::take(&mut params, &mut errors);
    let mut cfg = api.0.config.lock().clone();
    if let Err(e) = cfg.apply_query(&params) {
        errors.extend(e);
    }
    if !errors.is_empty() {
        return validation_failed(errors);
    }
    match api.compute(&cfg, &scope, now).await {
        Ok((stats, current)) => {
            if let Some(b) = &current {
                api.snapshot(&cfg, &scope, b, &stats, now).await;
            }
            Json(stats).into_response()
        }
        Err(e) => server_error(e),
    }
}

async fn get_config(State(api): State<UsageApi>) -> Response {
    Json(api.0.config.lock().clone()).into_response()
}

async fn post_config(
    State(api): State<UsageApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let now = now_ms();
    if let Err(wait) = api.0.config_limit.check(peer.ip(), now) {
        return too_many(wait);
    }
    let changes: Map<String, Value> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid request body",
                Some(format!("expected a JSON object, got {other}")),
                Vec::new(),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid request body",
                Some(format!("Failed to parse JSON: {e}")),
                Vec::new(),
            )
        }
    };
    let updated = {
        let mut cfg = api.0.config.lock();
        let mut next = cfg.clone();
        if let Err(errors) = next.apply(&changes) {
            return validation_failed(errors);
        }
        next.updated_at = now / 1000;
        if let Err(e) = api.0.file.store(&next) {
            return server_error(format!("storing the configuration: {e}"));
        }
        *cfg = next.clone();
        next
    };
    Json(json!({"success": true, "message": "Configuration updated successfully", "data": updated}))
        .into_response()
}

async fn reset_config(
    State(api): State<UsageApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let now = now_ms();
    if let Err(wait) = api.0.config_limit.check(peer.ip(), now) {
        return too_many(wait);
    }
    let data = {
        let mut cfg = api.0.config.lock();
        let mut next = UsageConfig::defaults(now / 1000);
        next.created_at = cfg.created_at;
        if let Err(e) = api.0.file.store(&next) {
            return server_error(format!("storing the configuration: {e}"));
        }
        *cfg = next.clone();
        next
    };
    Json(json!({"success": true, "message": "Configuration reset to defaults successfully", "data": data})).into_response()
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

async fn sessions(
    State(api): State<UsageApi>,
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
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut filter = format!(
        "CAST(timestamp AS BIGINT) >= {}{}",
        (now_ms() - hours_back * HOUR_MS) * 1_000_000,
        scope.sql()
    );
    if let Some(s) = &session_id {
        filter += &format!(" AND session_id = {}", quote(s));
    }
    let sql = format!(
        "SELECT id, session_id, CAST(timestamp AS BIGINT) / 1000000 AS ts_ms, stats FROM usage_snapshots \
         WHERE {filter} ORDER BY timestamp DESC LIMIT {limit}"
    );
    let count_sql = format!("SELECT count(*) AS n FROM usage_snapshots WHERE {filter}");
    let run = |sql: String| {
        let engine = api.0.engine.clone();
        async move {
            let batches = engine.query(&sql).await?;
            let bytes = OutputFormat::Json
                .write(&batches)
                .map_err(|e| QueryError::Execution(e.to_string()))?;
            serde_json::from_slice::<Vec<Map<String, Value>>>(&bytes)
                .map_err(|e| QueryError::Execution(e.to_string()))
        }
    };
    let (rows, count) = match (run(sql).await, run(count_sql).await) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return server_error(e),
    };
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
        "total_count": count.first().and_then(|c| c.get("n")).cloned().unwrap_or(json!(0)),
        "hours_back": hours_back,
        "limit": limit,
        "session_id": session_id,
    }))
    .into_response()
}

/// `{"type":"usage_update","data":<stats>,"timestamp":ms}` every
/// `refresh_rate` seconds (from the stored config).
async fn stream(
    State(api): State<UsageApi>,
    Query(params): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let mut params = pairs(params);
    let mut errors = Vec::new();
    let scope = Scope::take(&mut params, &mut errors);
    if !errors.is_empty() {
        return validation_failed(errors);
    }
    ws.read_buffer_size(4 * 1024)
        .on_upgrade(move |socket| stream_updates(socket, api, scope))
}

async fn stream_updates(socket: WebSocket, api: UsageApi, scope: Scope) {
    let (mut tx, mut rx) = socket.split();
    loop {
        let cfg = api.0.config.lock().clone();
        let now = now_ms();
        let message = match api.compute(&cfg, &scope, now).await {
            Ok((stats, current)) => {
                if let Some(b) = &current {
                    api.snapshot(&cfg, &scope, b, &stats, now).await;
                }
                json!({"type": "usage_update", "data": stats, "timestamp": now})
            }
            Err(e) => json!({"type": "error", "error": e.to_string(), "timestamp": now}),
        };
        if tx
            .send(Message::Text(message.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        let wait = Duration::from_secs(cfg.refresh_rate.max(1) as u64);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                msg = rx.next() => match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_is_the_next_hour_in_the_timezone() {
        // 2024-01-15T10:30:00Z
        let now = 1_705_314_600_000;
        // Next 00:00 UTC: 2024-01-16T00:00:00Z.
        assert_eq!(next_reset(now, 0, "auto"), 1_705_363_200_000);
        // Next 09:00 in New York (UTC-5): 2024-01-15T14:00:00Z, later today.
        assert_eq!(next_reset(now, 9, "America/New_York"), 1_705_327_200_000);
    }
}
