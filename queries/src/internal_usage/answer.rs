//! The usage-engine API's answers written from columns: each list of rows
//! (models, agents, tools, groups, hours) is an Arrow batch that the JSON
//! writer of SQL answers writes; only the object around the lists is
//! written here. No JSON value is built per row.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::totals::{AgentTotals, GroupTotals, Key, ModelTotals, ToolTotals};
use crate::sql::format::OutputFormat;
use crate::sql::QueryError;

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).expect("an answer's columns are as long as its rows")
}

fn text<T>(rows: &[T], f: impl Fn(&T) -> Option<&str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn int<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
}

fn float<T>(rows: &[T], f: impl Fn(&T) -> Option<f64>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Float64Array>())
}

/// `model, provider, calls, tokens, prompt_tokens, completion_tokens,
/// cache_creation_tokens, cache_read_tokens, avg_latency_ms, cost_usd`
/// (`cost_usd` null for a model without a price).
pub fn models(rows: &[(Key, ModelTotals)]) -> RecordBatch {
    batch(vec![
        ("model", text(rows, |((m, _), _)| m.as_deref())),
        ("provider", text(rows, |((_, p), _)| p.as_deref())),
        ("calls", int(rows, |(_, t)| t.calls)),
        ("tokens", int(rows, |(_, t)| t.tokens)),
        ("prompt_tokens", int(rows, |(_, t)| t.prompt)),
        ("completion_tokens", int(rows, |(_, t)| t.completion)),
        (
            "cache_creation_tokens",
            int(rows, |(_, t)| t.cache_creation),
        ),
        ("cache_read_tokens", int(rows, |(_, t)| t.cache_read)),
        ("avg_latency_ms", float(rows, |(_, t)| t.avg_latency_ms())),
        ("cost_usd", float(rows, |(_, t)| t.cost)),
    ])
}

/// `agent_id, invocations, llm_calls, tool_calls, total_tokens`.
pub fn agents(rows: &[(String, AgentTotals)]) -> RecordBatch {
    batch(vec![
        ("agent_id", text(rows, |(a, _)| Some(a))),
        ("invocations", int(rows, |(_, t)| t.invocations)),
        ("llm_calls", int(rows, |(_, t)| t.llm_calls)),
        ("tool_calls", int(rows, |(_, t)| t.tool_calls)),
        ("total_tokens", int(rows, |(_, t)| t.total_tokens)),
    ])
}

/// `tool_id, tool_name, calls, success_rate, avg_latency_ms` (null
/// without a measured latency).
pub fn tools(rows: &[(Key, ToolTotals)]) -> RecordBatch {
    batch(vec![
        ("tool_id", text(rows, |((id, _), _)| id.as_deref())),
        ("tool_name", text(rows, |((_, name), _)| name.as_deref())),
        ("calls", int(rows, |(_, t)| t.calls)),
        (
            "success_rate",
            float(rows, |(_, t)| {
                Some(t.successes as f64 / t.calls.max(1) as f64)
            }),
        ),
        (
            "avg_latency_ms",
            float(rows, |(_, t)| {
                (t.latency_count > 0).then(|| t.latency_sum as f64 / t.latency_count as f64)
            }),
        ),
    ])
}

/// `<key_name>, calls, tokens, cost_usd, unpriced_calls`: LLM calls per
/// group, the group's key written by `key`.
pub fn groups<K>(
    rows: &[(K, GroupTotals)],
    key_name: &str,
    key: impl Fn(&K) -> Option<String>,
) -> RecordBatch {
    let keys: StringArray = rows.iter().map(|(k, _)| key(k)).collect();
    batch(vec![
        (key_name, Arc::new(keys)),
        ("calls", int(rows, |(_, t)| t.calls)),
        ("tokens", int(rows, |(_, t)| t.tokens)),
        ("cost_usd", float(rows, |(_, t)| Some(t.cost))),
        ("unpriced_calls", int(rows, |(_, t)| t.unpriced_calls)),
    ])
}

/// A JSON object written field by field, in order: values by serde, lists
/// of rows from their columns.
pub struct Answer(Vec<u8>);

impl Default for Answer {
    fn default() -> Answer {
        Answer(vec![b'{'])
    }
}

impl Answer {
    pub fn new() -> Answer {
        Answer::default()
    }

    fn name(&mut self, name: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        serde_json::to_writer(&mut self.0, name).expect("a string serialises");
        self.0.push(b':');
    }

    /// `"name": v`.
    pub fn value(mut self, name: &str, v: &impl Serialize) -> Answer {
        self.name(name);
        serde_json::to_writer(&mut self.0, v).expect("an answer's values serialise");
        self
    }

    /// `"name": [{row}, …]`, written from `rows`' columns (nulls written
    /// as `null`).
    pub fn rows(mut self, name: &str, rows: &RecordBatch) -> Result<Answer, QueryError> {
        self.name(name);
        let json = OutputFormat::Json
            .write(std::slice::from_ref(rows))
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        self.0.extend_from_slice(&json);
        Ok(self)
    }
}

impl IntoResponse for Answer {
    fn into_response(mut self) -> Response {
        self.0.push(b'}');
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Rows written from columns are the objects the API documents, with
    /// nulls written out and the object around them valid JSON.
    #[test]
    fn rows_are_written_from_their_columns_with_nulls() {
        let models = models(&[
            (
                (Some("gpt-4o".into()), Some("openai".into())),
                ModelTotals {
                    calls: 3,
                    tokens: 30,
                    prompt: 20,
                    completion: 10,
                    latency_sum: 300,
                    latency_count: 2,
                    cost: Some(0.25),
                    ..Default::default()
                },
            ),
            (
                (None, None),
                ModelTotals {
                    calls: 1,
                    ..Default::default()
                },
            ),
        ]);
        let tools = tools(&[]);
        let body = Answer::new()
            .value("period", &"x")
            .rows("models", &models)
            .unwrap()
            .rows("tools", &tools)
            .unwrap()
            .into_response();
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(body.into_body(), 1 << 20)).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({
                "period": "x",
                "models": [
                    {"model": "gpt-4o", "provider": "openai", "calls": 3, "tokens": 30,
                     "prompt_tokens": 20, "completion_tokens": 10, "cache_creation_tokens": 0,
                     "cache_read_tokens": 0, "avg_latency_ms": 150.0, "cost_usd": 0.25},
                    {"model": null, "provider": null, "calls": 1, "tokens": 0,
                     "prompt_tokens": 0, "completion_tokens": 0, "cache_creation_tokens": 0,
                     "cache_read_tokens": 0, "avg_latency_ms": null, "cost_usd": null}
                ],
                "tools": []
            })
        );
    }
}
