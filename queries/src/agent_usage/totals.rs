//! Totals of the usage-engine API summed from hourly rollup rows (the
//! columns of `sql/rollups/usage_*_hourly.sql`), stored or computed from raw.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;

/// Which rows count: the filters of the API.
#[derive(Debug, Clone, Default)]
pub struct Scope<'a> {
    pub microdao_id: Option<&'a str>,
    /// Compared with `agent_column` of each table.
    pub agent_id: Option<&'a str>,
}

/// One table's rows as named columns.
struct Rows<'b> {
    batch: &'b RecordBatch,
}

impl<'b> Rows<'b> {
    fn str(&self, name: &str) -> &'b StringArray {
        self.batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("rollup rows have column {name}"))
            .as_string::<i32>()
    }

    fn int(&self, name: &str) -> &'b arrow::array::Int64Array {
        self.batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("rollup rows have column {name}"))
            .as_primitive::<Int64Type>()
    }
}

/// The string at row `r`, `None` when null.
pub fn get(a: &StringArray, r: usize) -> Option<&str> {
    a.is_valid(r).then(|| a.value(r))
}

/// Visits the rows of `batches` that `scope` keeps (agent filter on `agent_column`).
fn each_row<'b>(
    batches: &'b [Arc<RecordBatch>],
    scope: &Scope,
    agent_column: &str,
    mut f: impl FnMut(&Rows<'b>, usize),
) {
    for b in batches {
        let rows = Rows { batch: b };
        let (microdao, agent) = (rows.str("microdao_id"), rows.str(agent_column));
        for r in 0..b.num_rows() {
            if scope
                .microdao_id
                .is_some_and(|m| get(microdao, r) != Some(m))
                || scope.agent_id.is_some_and(|a| get(agent, r) != Some(a))
            {
                continue;
            }
            f(&rows, r);
        }
    }
}

/// LLM calls of one model and provider.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelTotals {
    pub calls: i64,
    pub tokens: i64,
    pub prompt: i64,
    pub completion: i64,
    pub cache_creation: i64,
    pub cache_read: i64,
    pub latency_sum: i64,
    pub latency_count: i64,
}

impl ModelTotals {
    pub fn avg_latency_ms(&self) -> Option<f64> {
        (self.latency_count > 0).then(|| self.latency_sum as f64 / self.latency_count as f64)
    }
}

type Key = (Option<String>, Option<String>);

/// Per (model, provider), from `usage_llm_hourly` rows.
pub fn models(llm: &[Arc<RecordBatch>], scope: &Scope) -> BTreeMap<Key, ModelTotals> {
    let mut out: BTreeMap<Key, ModelTotals> = BTreeMap::new();
    each_row(llm, scope, "agent_id", |rows, r| {
        let key = (
            get(rows.str("model"), r).map(str::to_string),
            get(rows.str("provider"), r).map(str::to_string),
        );
        let t = out.entry(key).or_default();
        t.calls += rows.int("calls").value(r);
        t.tokens += rows.int("total_tokens").value(r);
        t.prompt += rows.int("prompt_tokens").value(r);
        t.completion += rows.int("completion_tokens").value(r);
        t.cache_creation += rows.int("cache_creation_tokens").value(r);
        t.cache_read += rows.int("cache_read_tokens").value(r);
        t.latency_sum += rows.int("latency_ms_sum").value(r);
        t.latency_count += rows.int("latency_count").value(r);
    });
    out
}

/// Per agent: invocations, LLM calls, tool calls and the LLM calls' tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentTotals {
    pub invocations: i64,
    pub llm_calls: i64,
    pub tool_calls: i64,
    pub total_tokens: i64,
}

pub fn agents(
    agent: &[Arc<RecordBatch>],
    llm: &[Arc<RecordBatch>],
    tool: &[Arc<RecordBatch>],
    scope: &Scope,
) -> HashMap<String, AgentTotals> {
    let mut out: HashMap<String, AgentTotals> = HashMap::new();
    let mut add = |batches: &[Arc<RecordBatch>], f: &dyn Fn(&mut AgentTotals, &Rows, usize)| {
        each_row(batches, scope, "agent_id", |rows, r| {
            if let Some(a) = get(rows.str("agent_id"), r) {
                f(out.entry(a.to_string()).or_default(), rows, r);
            }
        });
    };
    add(agent, &|t, rows, r| {
        t.invocations += rows.int("invocations").value(r)
    });
    add(llm, &|t, rows, r| {
        t.llm_calls += rows.int("calls").value(r);
        t.total_tokens += rows.int("total_tokens").value(r);
    });
    add(tool, &|t, rows, r| {
        t.tool_calls += rows.int("calls").value(r)
    });
    out
}

/// Per (tool_id, tool_name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolTotals {
    pub calls: i64,
    pub successes: i64,
    pub latency_sum: i64,
    pub latency_count: i64,
}

pub fn tools(tool: &[Arc<RecordBatch>], scope: &Scope) -> BTreeMap<Key, ToolTotals> {
    let mut out: BTreeMap<Key, ToolTotals> = BTreeMap::new();
    each_row(tool, scope, "agent_id", |rows, r| {
        let key = (
            get(rows.str("tool_id"), r).map(str::to_string),
            get(rows.str("tool_name"), r).map(str::to_string),
        );
        let t = out.entry(key).or_default();
        t.calls += rows.int("calls").value(r);
        t.successes += rows.int("successes").value(r);
        t.latency_sum += rows.int("latency_ms_sum").value(r);
        t.latency_count += rows.int("latency_count").value(r);
    });
    out
}

/// Σ `column` over the rows `scope` keeps.
pub fn sum(batches: &[Arc<RecordBatch>], scope: &Scope, agent_column: &str, column: &str) -> i64 {
    let mut total = 0;
    each_row(batches, scope, agent_column, |rows, r| {
        total += rows.int(column).value(r)
    });
    total
}
