//! The usage-engine read API of README "Usage engine API": `GET /internal/usage/summary`,
//! `/models`, `/agents`, `/tools`, with costs from the price catalogue.
//!
//! Filters: `microdao_id`, `agent_id`, `period_hours` (1..720, default 24),
//! or `from` and `to` (RFC 3339) instead of `period_hours`. `agent_id`
//! applies to messages as their sender (`actor_id`).
//!
//! Beyond the spec, for the dashboard and other clients:
//! `/internal/usage/breakdown?by=microdao_id|agent_id|actor_id|model` (LLM
//! calls, tokens and cost per group) and `/internal/usage/hourly` (the same
//! per hour), with the same filters.

pub mod answer;
pub mod totals;

/// `usage_llm_hourly` regrouped without the actor (see the file).
const USAGE_LLM_BY_AGENT: &str = include_str!("sql/usage_llm_hourly_by_agent.sql");

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map};
use tally_pipeline::access::Access;
use tally_pipeline::Dataset;

use crate::history::History;
use crate::http::{error_response, forbidden};
use crate::prices::PriceCatalogue;
use crate::sql::QueryError;
use answer::Answer;
use totals::Scope;

#[derive(Clone)]
struct InternalUsage {
    history: History,
    prices: Arc<PriceCatalogue>,
}

pub fn router(history: History, prices: Arc<PriceCatalogue>) -> Router {
    Router::new()
        .route("/internal/usage/summary", get(summary))
        .route("/internal/usage/models", get(models))
        .route("/internal/usage/agents", get(agents))
        .route("/internal/usage/tools", get(tools))
        .route("/internal/usage/breakdown", get(breakdown))
        .route("/internal/usage/hourly", get(hourly_totals))
        .with_state(InternalUsage { history, prices })
}

/// Validated filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Filters {
    pub microdao_id: Option<String>,
    pub agent_id: Option<String>,
    /// The tenants the token covers (`None`: all).
    pub tenants: Option<Arc<BTreeSet<String>>>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

impl Filters {
    pub(crate) fn parse(
        params: &HashMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Filters, String> {
        let mut errors = Vec::new();
        let (period_start, period_end) = period(params, now, &mut errors);
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
            tenants: None,
            period_start,
            period_end,
        })
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            microdao_id: self.microdao_id.as_deref(),
            agent_id: self.agent_id.as_deref(),
            tenants: self.tenants.as_deref(),
        }
    }

    /// The period in nanoseconds.
    fn range(&self) -> (i64, i64) {
        let ns = |t: DateTime<Utc>| t.timestamp_nanos_opt().unwrap_or_default();
        (ns(self.period_start), ns(self.period_end))
    }
}

/// The longest `from`..`to` span, in hours (a year and a day).
const MAX_SPAN_HOURS: i64 = 366 * 24;

/// `[start, end)` from `period_hours` (the hours before `now`) or from
/// `from` and `to`; a problem is pushed to `errors`.
fn period(
    params: &HashMap<String, String>,
    now: DateTime<Utc>,
    errors: &mut Vec<String>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let last_day = (now - chrono::Duration::hours(24), now);
    if params.contains_key("from") || params.contains_key("to") {
        if params.contains_key("period_hours") {
            errors.push("period_hours cannot be combined with from and to".into());
            return last_day;
        }
        let mut time = |name: &str| match params.get(name) {
            None => {
                errors.push(format!("{name} is required when from or to is given"));
                None
            }
            Some(s) => match DateTime::parse_from_rfc3339(s.trim()) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    errors.push(format!(
                        "{name} must be an RFC 3339 time such as 2025-11-24T12:00:00Z, got {s:?}"
                    ));
                    None
                }
            },
        };
        let (from, to) = (time("from"), time("to"));
        return match (from, to) {
            (Some(f), Some(t)) if f >= t => {
                errors.push("from must be before to".into());
                last_day
            }
            (Some(f), Some(t)) if (t - f).num_hours() > MAX_SPAN_HOURS => {
                errors.push(format!(
                    "from and to may be at most {MAX_SPAN_HOURS} hours apart, got {}",
                    (t - f).num_hours()
                ));
                last_day
            }
            (Some(f), Some(t)) => (f, t),
            _ => last_day,
        };
    }
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
    (now - chrono::Duration::hours(hours), now)
}

fn bad_request(detail: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "Invalid request", detail)
}

fn failed(e: QueryError) -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Query failed",
        e.to_string(),
    )
}

type Batch = Arc<RecordBatch>;

/// Hourly rollup rows of one dataset over the period (LLM calls without
/// their actor: these answers never ask for it).
async fn hourly(api: &InternalUsage, d: Dataset, f: &Filters) -> Result<Vec<Batch>, QueryError> {
    let (from, to) = f.range();
    if d == Dataset::UsageLlm {
        return api
            .history
            .hourly_regrouped(d, from, to, USAGE_LLM_BY_AGENT)
            .await;
    }
    api.history.hourly(d, from, to).await
}

/// `a` before `b` with `None` last, as SQL orders ascending.
fn nulls_last(a: &Option<String>, b: &Option<String>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// Model rows with `cost_usd` (null when unpriced), the priced total, and
/// the number of calls that could not be priced.
fn model_rows(api: &InternalUsage, f: &Filters, llm: &[Batch]) -> (RecordBatch, f64, u64) {
    let mut rows: Vec<_> = totals::models(llm, &f.scope(), &api.prices)
        .into_iter()
        .collect();
    rows.sort_by(|((ma, pa), a), ((mb, pb), b)| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| nulls_last(ma, mb))
            .then_with(|| nulls_last(pa, pb))
    });
    let mut total = 0.0;
    let mut unpriced = 0;
    for (_, t) in &rows {
        match t.cost {
            Some(c) => total += c,
            None => unpriced += t.calls as u64,
        }
    }
    (answer::models(&rows), total, unpriced)
}

fn agent_rows(f: &Filters, agent: &[Batch], llm: &[Batch], tool: &[Batch]) -> RecordBatch {
    let mut rows: Vec<_> = totals::agents(agent, llm, tool, &f.scope())
        .into_iter()
        .collect();
    rows.sort_by(|(a_id, a), (b_id, b)| {
        b.invocations
            .cmp(&a.invocations)
            .then(b.llm_calls.cmp(&a.llm_calls))
            .then_with(|| a_id.cmp(b_id))
    });
    answer::agents(&rows)
}

fn tool_rows(f: &Filters, tool: &[Batch]) -> RecordBatch {
    let mut rows: Vec<_> = totals::tools(tool, &f.scope()).into_iter().collect();
    rows.sort_by(|((ia, _), a), ((ib, _), b)| {
        b.calls.cmp(&a.calls).then_with(|| nulls_last(ia, ib))
    });
    answer::tools(&rows)
}

/// Parses the filters and answers with `rows`, or names what is wrong. A
/// token of some tenants asks for its own and sees only theirs.
async fn answer<F, Fut>(
    api: InternalUsage,
    access: Access,
    params: HashMap<String, String>,
    rows: F,
) -> Response
where
    F: FnOnce(InternalUsage, Filters) -> Fut,
    Fut: std::future::Future<Output = Result<Answer, QueryError>>,
{
    match Filters::parse(&params, Utc::now()) {
        Ok(mut f) => {
            if let Err(e) = access.check_filter("microdao_id", f.microdao_id.as_deref()) {
                return forbidden(e);
            }
            f.tenants = access.tenants.clone();
            match rows(api, f).await {
                Ok(a) => a.into_response(),
                Err(e) => failed(e),
            }
        }
        Err(detail) => bad_request(detail),
    }
}

async fn models(
    State(api): State<InternalUsage>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    answer(api, access, params, |api, f| async move {
        let llm = hourly(&api, Dataset::UsageLlm, &f).await?;
        let (models, _, _) = model_rows(&api, &f, &llm);
        Answer::new().rows("models", &models)
    })
    .await
}

async fn agents(
    State(api): State<InternalUsage>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    answer(api, access, params, |api, f| async move {
        let agent = hourly(&api, Dataset::UsageAgent, &f).await?;
        let llm = hourly(&api, Dataset::UsageLlm, &f).await?;
        let tool = hourly(&api, Dataset::UsageTool, &f).await?;
        Answer::new().rows("agents", &agent_rows(&f, &agent, &llm, &tool))
    })
    .await
}

async fn tools(
    State(api): State<InternalUsage>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    answer(api, access, params, |api, f| async move {
        let tool = hourly(&api, Dataset::UsageTool, &f).await?;
        Answer::new().rows("tools", &tool_rows(&f, &tool))
    })
    .await
}

/// The columns `/internal/usage/breakdown` groups by.
const BREAKDOWN_BY: [&str; 4] = ["microdao_id", "agent_id", "actor_id", "model"];

/// `{"by": …, "rows": [{"key", "calls", "tokens", "cost_usd",
/// "unpriced_calls"}]}`, most calls first.
async fn breakdown(
    State(api): State<InternalUsage>,
    Extension(access): Extension<Access>,
    Query(mut params): Query<HashMap<String, String>>,
) -> Response {
    let by = params.remove("by").unwrap_or_else(|| "microdao_id".into());
    let Some(by) = BREAKDOWN_BY.into_iter().find(|b| *b == by) else {
        return bad_request(format!(
            "by must be one of {}, got {by:?}",
            BREAKDOWN_BY.join(", ")
        ));
    };
    answer(api, access, params, move |api, f| async move {
        let (from, to) = f.range();
        // The actor is only in the full rows; the others group the smaller ones.
        let llm = if by == "actor_id" {
            api.history.hourly(Dataset::UsageLlm, from, to).await?
        } else {
            hourly(&api, Dataset::UsageLlm, &f).await?
        };
        let groups = totals::grouped(&llm, &f.scope(), &api.prices, |b, r| {
            totals::text_at(b, by, r)
        });
        let mut rows: Vec<_> = groups.into_iter().collect();
        rows.sort_by(|(ka, a), (kb, b)| b.calls.cmp(&a.calls).then_with(|| nulls_last(ka, kb)));
        let rows = answer::groups(&rows, "key", |k| k.clone());
        Answer::new().value("by", &by).rows("rows", &rows)
    })
    .await
}

/// `{"hours": [{"hour", "calls", "tokens", "cost_usd", "unpriced_calls"}]}`:
/// the hours of the period with LLM calls, oldest first.
async fn hourly_totals(
    State(api): State<InternalUsage>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    answer(api, access, params, |api, f| async move {
        let llm = hourly(&api, Dataset::UsageLlm, &f).await?;
        let groups = totals::grouped(&llm, &f.scope(), &api.prices, totals::hour_at);
        let hours: Vec<_> = groups.into_iter().collect();
        let hours = answer::groups(&hours, "hour", |&hour| {
            let at = DateTime::from_timestamp_nanos(hour);
            Some(at.to_rfc3339_opts(SecondsFormat::Secs, true))
        });
        Answer::new().rows("hours", &hours)
    })
    .await
}

async fn summary(
    State(api): State<InternalUsage>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    answer(api, access, params, |api, f| async move {
        let scope = f.scope();
        let llm = hourly(&api, Dataset::UsageLlm, &f).await?;
        let tool = hourly(&api, Dataset::UsageTool, &f).await?;
        let agent = hourly(&api, Dataset::UsageAgent, &f).await?;
        let message = hourly(&api, Dataset::UsageMessage, &f).await?;
        let (models, cost, unpriced) = model_rows(&api, &f, &llm);
        let agents = agent_rows(&f, &agent, &llm, &tool);
        let tools = tool_rows(&f, &tool);
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut summary = Map::new();
        summary.insert("period_start".into(), json!(time(f.period_start)));
        summary.insert("period_end".into(), json!(time(f.period_end)));
        summary.insert("microdao_id".into(), json!(f.microdao_id));
        summary.insert("agent_id".into(), json!(f.agent_id));
        summary.insert(
            "llm_calls_total".into(),
            json!(totals::sum(&llm, &scope, "agent_id", "calls")),
        );
        summary.insert(
            "llm_tokens_total".into(),
            json!(totals::sum(&llm, &scope, "agent_id", "total_tokens")),
        );
        summary.insert(
            "tool_calls_total".into(),
            json!(totals::sum(&tool, &scope, "agent_id", "calls")),
        );
        summary.insert(
            "agent_invocations_total".into(),
            json!(totals::sum(&agent, &scope, "agent_id", "invocations")),
        );
        summary.insert(
            "messages_sent".into(),
            json!(totals::sum(&message, &scope, "actor_id", "messages")),
        );
        summary.insert("llm_cost_usd_total".into(), json!(cost));
        summary.insert("unpriced_calls".into(), json!(unpriced));
        Answer::new()
            .value("summary", &summary)
            .rows("models", &models)?
            .rows("agents", &agents)?
            .rows("tools", &tools)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sql/usage_llm_hourly_by_agent.sql` on stored hour rows of two actors
    /// of one agent and one of another agent: the actor goes, the sums stay.
    #[tokio::test]
    async fn the_hourly_rows_regrouped_without_the_actor() {
        use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
        use arrow::record_batch::RecordBatch;
        let strs = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        let ints = |v: &[i64]| Arc::new(Int64Array::from(v.to_vec())) as ArrayRef;
        let h = 1_763_632_800_000_000_000i64;
        let batch = RecordBatch::try_from_iter([
            ("hour", ints(&[h, h, h])),
            ("microdao_id", strs(&["dao:1", "dao:1", "dao:1"])),
            ("agent_id", strs(&["agent:a", "agent:a", "agent:b"])),
            ("actor_id", strs(&["user:1", "user:2", "user:1"])),
            ("model", strs(&["m", "m", "m"])),
            ("provider", strs(&["p", "p", "p"])),
            ("calls", ints(&[2, 3, 1])),
            ("prompt_tokens", ints(&[10, 20, 5])),
            ("completion_tokens", ints(&[1, 2, 3])),
            ("cache_creation_tokens", ints(&[0, 4, 0])),
            ("cache_read_tokens", ints(&[7, 0, 0])),
            ("total_tokens", ints(&[18, 26, 8])),
            ("latency_ms_sum", ints(&[100, 300, 50])),
            ("latency_count", ints(&[2, 3, 1])),
            ("failures", ints(&[0, 1, 0])),
            (
                "cost_usd",
                Arc::new(Float64Array::from(vec![Some(0.5), Some(0.25), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_batch("source", batch).unwrap();
        let out = ctx
            .sql(&format!(
                "SELECT agent_id, actor_id, calls, prompt_tokens, cache_creation_tokens, \
                 cache_read_tokens, total_tokens, latency_ms_sum, failures, cost_usd \
                 FROM ({USAGE_LLM_BY_AGENT}) ORDER BY agent_id"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&out)
                .unwrap()
                .to_string(),
            [
                "+----------+----------+-------+---------------+-----------------------+-------------------+--------------+----------------+----------+----------+",
                "| agent_id | actor_id | calls | prompt_tokens | cache_creation_tokens | cache_read_tokens | total_tokens | latency_ms_sum | failures | cost_usd |",
                "+----------+----------+-------+---------------+-----------------------+-------------------+--------------+----------------+----------+----------+",
                "| agent:a  |          | 5     | 30            | 4                     | 7                 | 44           | 400            | 1        | 0.75     |",
                "| agent:b  |          | 1     | 5             | 0                     | 0                 | 8            | 50             | 0        |          |",
                "+----------+----------+-------+---------------+-----------------------+-------------------+--------------+----------------+----------+----------+",
            ]
            .join("\n")
        );
    }

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
    fn from_and_to_replace_period_hours() {
        let f = parse(&[
            ("from", "2025-01-01T00:00:00Z"),
            ("to", "2025-01-03T12:00:00+02:00"),
        ])
        .unwrap();
        assert_eq!(f.period_start.to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!(f.period_end.to_rfc3339(), "2025-01-03T10:00:00+00:00");
        assert_eq!(
            parse(&[("from", "2025-01-01T00:00:00Z")]),
            Err("to is required when from or to is given".into())
        );
        assert_eq!(
            parse(&[
                ("from", "2025-01-02T00:00:00Z"),
                ("to", "2025-01-01T00:00:00Z")
            ]),
            Err("from must be before to".into())
        );
        assert_eq!(
            parse(&[
                ("from", "yesterday"),
                ("to", "2025-01-01T00:00:00Z"),
                ("period_hours", "5")
            ]),
            Err("period_hours cannot be combined with from and to".into())
        );
        assert_eq!(
            parse(&[("from", "yesterday"), ("to", "2025-01-01T00:00:00Z")]),
            Err(
                "from must be an RFC 3339 time such as 2025-11-24T12:00:00Z, got \"yesterday\""
                    .into()
            )
        );
    }
}
