//! `GET /api/usage/stats`: the current block, recent blocks, limits and
//! predictions, from hourly LLM rollups (stored where rolled up, raw records
//! for the other hours).

use std::collections::HashMap;
use std::net::SocketAddr;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::TimeZone;
use serde_json::{json, Value};
use tally_pipeline::access::Access;
use tally_pipeline::Dataset;

use super::api::{now_ms, pairs, server_error, too_many, validation_failed, Scope, UsageApi};
use super::config::UsageConfig;
use super::model::{self, Block, Call, HOUR_MS};
use crate::internal_usage::totals::get as str_at;
use crate::prices::Tokens;
use crate::sql::QueryError;

impl UsageApi {
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
                    || !scope.covers_tenant(str_at(microdao, r))
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
                let hour = n("hour").value(r);
                let cost = self.0.prices.price(&model, str_at(provider, r)).map(|p| {
                    p.at(hour).cost(Tokens {
                        prompt: input as f64,
                        completion: output as f64,
                        cache_creation: cache_creation as f64,
                        cache_read: cache_read as f64,
                    })
                });
                calls.push(Call {
                    timestamp_ms: hour / 1_000_000,
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
    pub(super) async fn compute(
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
                "token_percentage": pct(b.token_counts.toward_limit() as f64, limits.tokens),
                "tokens_toward_limit": b.token_counts.toward_limit(),
                "message_percentage": pct(b.sent_messages_count as f64, limits.messages),
                "time_to_reset_percentage": pct((now - b.start_time) as f64, (b.end_time - b.start_time) as f64),
            }),
            None => {
                json!({"cost_percentage": 0.0, "token_percentage": 0.0, "tokens_toward_limit": 0, "message_percentage": 0.0, "time_to_reset_percentage": 0.0})
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

pub(super) async fn stats(
    State(api): State<UsageApi>,
    Extension(access): Extension<Access>,
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
    let scope = match scope.within(&access) {
        Ok(s) => s,
        Err(e) => return crate::http::forbidden(e),
    };
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
