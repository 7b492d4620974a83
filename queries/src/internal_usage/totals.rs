//! Totals of the usage-engine API summed from hourly rollup rows (the
//! columns of `sql/rollups/usage_*_hourly.sql`), stored or computed from raw.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;

use crate::prices::{ModelPrices, PriceCatalogue, Tokens};

/// Which rows count: the filters of the API.
#[derive(Debug, Clone, Default)]
pub struct Scope<'a> {
    pub microdao_id: Option<&'a str>,
    /// Compared with the table's agent column (`agent_id`, or `actor_id`
    /// for messages).
    pub agent_id: Option<&'a str>,
    /// The tenants the request's token covers (`None`: all).
    pub tenants: Option<&'a BTreeSet<String>>,
}

/// The string at row `r`, `None` when null.
pub fn get(a: &StringArray, r: usize) -> Option<&str> {
    a.is_valid(r).then(|| a.value(r))
}

fn text<'b>(b: &'b RecordBatch, name: &str) -> &'b StringArray {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("rollup rows have column {name}"))
        .as_string::<i32>()
}

fn int<'b>(b: &'b RecordBatch, name: &str) -> &'b Int64Array {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("rollup rows have column {name}"))
        .as_primitive::<Int64Type>()
}

/// The rows of `b` that `scope` keeps (agent filter on `agent_column`).
fn kept<'s>(
    b: &'s RecordBatch,
    scope: &'s Scope,
    agent_column: &str,
) -> impl Iterator<Item = usize> + 's {
    let (microdao, agent) = (text(b, "microdao_id"), text(b, agent_column));
    (0..b.num_rows()).filter(move |&r| {
        scope
            .microdao_id
            .is_none_or(|m| get(microdao, r) == Some(m))
            && scope.agent_id.is_none_or(|a| get(agent, r) == Some(a))
            && scope
                .tenants
                .is_none_or(|t| get(microdao, r).is_some_and(|m| t.contains(m)))
    })
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
    /// USD, each hour's tokens at that hour's price; `None`: the model has
    /// no price.
    pub cost: Option<f64>,
}

impl ModelTotals {
    pub fn avg_latency_ms(&self) -> Option<f64> {
        (self.latency_count > 0).then(|| self.latency_sum as f64 / self.latency_count as f64)
    }
}

/// A pair of optional strings: (model, provider), (tool_id, tool_name).
pub type Key = (Option<String>, Option<String>);
type BorrowedKey<'b> = (Option<&'b str>, Option<&'b str>);

fn owned<T>(m: HashMap<(Option<&str>, Option<&str>), T>) -> BTreeMap<Key, T> {
    m.into_iter()
        .map(|((a, b), t)| ((a.map(str::to_string), b.map(str::to_string)), t))
        .collect()
}

/// The summed columns of a `usage_llm_hourly` row, in the order
/// [`each_priced`] hands them over.
const LLM_SUMS: [&str; 8] = [
    "calls",
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "latency_ms_sum",
    "latency_count",
];

/// Calls `f` with each `usage_llm_hourly` row that `scope` keeps: its
/// batch and index, its (model, provider), its [`LLM_SUMS`], and its cost at
/// the row's hour (`None` for a model without a price). Each model's price
/// is looked up once.
fn each_priced<'b>(
    llm: &'b [Arc<RecordBatch>],
    scope: &Scope,
    prices: &'b PriceCatalogue,
    mut f: impl FnMut(&'b RecordBatch, usize, BorrowedKey<'b>, [i64; 8], Option<f64>),
) {
    let mut priced: HashMap<BorrowedKey<'b>, Option<&'b ModelPrices>> = HashMap::new();
    for b in llm {
        let (model, provider, hour) = (text(b, "model"), text(b, "provider"), int(b, "hour"));
        let c = LLM_SUMS.map(|n| int(b, n));
        for r in kept(b, scope, "agent_id") {
            let key = (get(model, r), get(provider, r));
            let price = *priced
                .entry(key)
                .or_insert_with(|| prices.price(key.0.unwrap_or(""), key.1));
            let v = c.map(|a| a.value(r));
            let cost = price.map(|p| {
                p.at(hour.value(r)).cost(Tokens {
                    prompt: v[2] as f64,
                    completion: v[3] as f64,
                    cache_creation: v[4] as f64,
                    cache_read: v[5] as f64,
                })
            });
            f(b, r, key, v, cost);
        }
    }
}

/// Per (model, provider), from `usage_llm_hourly` rows, priced by
/// `prices` at each row's hour.
pub fn models(
    llm: &[Arc<RecordBatch>],
    scope: &Scope,
    prices: &PriceCatalogue,
) -> BTreeMap<Key, ModelTotals> {
    let mut out: HashMap<BorrowedKey, ModelTotals> = HashMap::new();
    each_priced(llm, scope, prices, |_, _, key, v, cost| {
        let t = out.entry(key).or_insert_with(|| ModelTotals {
            cost: cost.map(|_| 0.0),
            ..ModelTotals::default()
        });
        if let (Some(sum), Some(c)) = (&mut t.cost, cost) {
            *sum += c;
        }
        t.calls += v[0];
        t.tokens += v[1];
        t.prompt += v[2];
        t.completion += v[3];
        t.cache_creation += v[4];
        t.cache_read += v[5];
        t.latency_sum += v[6];
        t.latency_count += v[7];
    });
    owned(out)
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
    let mut out: HashMap<&str, AgentTotals> = HashMap::new();
    // (table, column summed, where it goes)
    type Part<'a> = (&'a [Arc<RecordBatch>], &'a str, fn(&mut AgentTotals, i64));
    let parts: [Part; 4] = [
        (agent, "invocations", |t, v| t.invocations += v),
        (llm, "calls", |t, v| t.llm_calls += v),
        (llm, "total_tokens", |t, v| t.total_tokens += v),
        (tool, "calls", |t, v| t.tool_calls += v),
    ];
    for (batches, column, add) in parts {
        for b in batches {
            let (ids, values) = (text(b, "agent_id"), int(b, column));
            for r in kept(b, scope, "agent_id") {
                if let Some(a) = get(ids, r) {
                    add(out.entry(a).or_default(), values.value(r));
                }
            }
        }
    }
    out.into_iter().map(|(a, t)| (a.to_string(), t)).collect()
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
    let mut out: HashMap<(Option<&str>, Option<&str>), ToolTotals> = HashMap::new();
    for b in tool {
        let (id, name) = (text(b, "tool_id"), text(b, "tool_name"));
        let c = ["calls", "successes", "latency_ms_sum", "latency_count"].map(|n| int(b, n));
        for r in kept(b, scope, "agent_id") {
            let t = out.entry((get(id, r), get(name, r))).or_default();
            t.calls += c[0].value(r);
            t.successes += c[1].value(r);
            t.latency_sum += c[2].value(r);
            t.latency_count += c[3].value(r);
        }
    }
    owned(out)
}

/// Σ `column` over the rows `scope` keeps.
pub fn sum(batches: &[Arc<RecordBatch>], scope: &Scope, agent_column: &str, column: &str) -> i64 {
    batches
        .iter()
        .map(|b| {
            let values = int(b, column);
            kept(b, scope, agent_column)
                .map(|r| values.value(r))
                .sum::<i64>()
        })
        .sum()
}

/// LLM calls of one group (a tenant, agent, actor, model or hour).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupTotals {
    pub calls: i64,
    pub tokens: i64,
    /// USD of the priced calls, each hour's tokens at that hour's price.
    pub cost: f64,
    /// Calls of models without a price (not in `cost`).
    pub unpriced_calls: i64,
}

/// Sums `usage_llm_hourly` rows that `scope` keeps into the group `key`
/// gives each row, priced by `prices` at the row's hour.
pub fn grouped<K: Ord>(
    llm: &[Arc<RecordBatch>],
    scope: &Scope,
    prices: &PriceCatalogue,
    mut key: impl FnMut(&RecordBatch, usize) -> K,
) -> BTreeMap<K, GroupTotals> {
    let mut out: BTreeMap<K, GroupTotals> = BTreeMap::new();
    each_priced(llm, scope, prices, |b, r, _, v, cost| {
        let t = out.entry(key(b, r)).or_default();
        t.calls += v[0];
        t.tokens += v[1];
        match cost {
            Some(c) => t.cost += c,
            None => t.unpriced_calls += v[0],
        }
    });
    out
}

/// The string of column `name` at row `r` (`None` when null): a key for
/// [`grouped`].
pub fn text_at(b: &RecordBatch, name: &str, r: usize) -> Option<String> {
    get(text(b, name), r).map(str::to_string)
}

/// The hour (ns) of row `r`: a key for [`grouped`].
pub fn hour_at(b: &RecordBatch, r: usize) -> i64 {
    int(b, "hour").value(r)
}
