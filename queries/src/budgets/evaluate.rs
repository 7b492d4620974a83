//! What each budget has used in its current period, from the hourly rows
//! of history (stored rollups for closed hours, raw records for the rest:
//! no scan of raw history), and the index `GET /v1/budgets/check` answers
//! from.
//!
//! Budgets are grouped by where their metric comes from and by period, so
//! that one pass over a period's hourly rows serves every budget of it:
//! each row is matched to budgets through a hash lookup per *scope shape*
//! (the set of scope keys a budget names), not by trying every budget.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use tally_pipeline::clock::HOUR_NS;
use tally_pipeline::Dataset;

use super::model::{Budget, Metric, Source, SCOPE_KEYS};
use crate::history::History;
use crate::prices::{PriceCatalogue, Tokens};
use crate::sql::QueryError;
use crate::vm_billing::{self, Window};

/// A budget and what it used in its current period.
#[derive(Debug, Clone)]
pub struct BudgetState {
    pub budget: Arc<Budget>,
    pub period_start: i64,
    pub period_end: i64,
    pub used: f64,
    /// LLM calls of models without a price (cost budgets count them as 0).
    pub unpriced_calls: u64,
}

impl BudgetState {
    pub fn remaining(&self) -> f64 {
        (self.budget.limit - self.used).max(0.0)
    }

    pub fn percent(&self) -> f64 {
        self.used / self.budget.limit * 100.0
    }

    /// `exceeded` at the limit, `warning` past the first threshold below
    /// it, else `ok`.
    pub fn state(&self) -> &'static str {
        let b = &self.budget;
        if self.used >= b.limit {
            "exceeded"
        } else if b.warning_at().is_some_and(|t| self.used >= t * b.limit) {
            "warning"
        } else {
            "ok"
        }
    }
}

/// The scope keys a budget names, as bits of [`SCOPE_KEYS`].
fn shape(b: &Budget) -> u8 {
    SCOPE_KEYS
        .iter()
        .enumerate()
        .filter(|(_, k)| b.scope.contains_key(**k))
        .fold(0, |m, (i, _)| m | 1 << i)
}

/// The lookup key of `values` for `shape`; `None` when a key it needs is
/// missing.
fn key_of(shape: u8, values: &[Option<&str>; 5]) -> Option<String> {
    let mut key = String::new();
    write_key(shape, values, &mut key).then_some(key)
}

/// Writes the lookup key into `key` (cleared first); `false` when a key
/// the shape needs is missing.
fn write_key(shape: u8, values: &[Option<&str>; 5], key: &mut String) -> bool {
    key.clear();
    for (i, v) in values.iter().enumerate() {
        if shape & (1 << i) != 0 {
            match v.filter(|s| !s.is_empty()) {
                Some(v) => key.push_str(v),
                None => return false,
            }
            key.push('\u{1f}');
        }
    }
    true
}

/// Budgets by scope shape and scope values.
#[derive(Debug, Default)]
pub struct ScopeIndex {
    shapes: Vec<(u8, HashMap<String, Vec<usize>>)>,
}

impl ScopeIndex {
    pub fn new<'a>(budgets: impl Iterator<Item = &'a Budget>) -> ScopeIndex {
        let mut by: BTreeMap<u8, HashMap<String, Vec<usize>>> = BTreeMap::new();
        for (i, b) in budgets.enumerate() {
            let s = shape(b);
            let values = SCOPE_KEYS.map(|k| b.scope.get(k).map(String::as_str));
            let key = key_of(s, &values).expect("a budget names its shape's keys");
            by.entry(s).or_default().entry(key).or_default().push(i);
        }
        ScopeIndex {
            shapes: by.into_iter().collect(),
        }
    }

    /// Every budget whose scope `values` match (each key it names equal).
    pub fn matching(&self, values: &[Option<&str>; 5], f: impl FnMut(usize)) {
        self.matching_with(values, &mut String::new(), f)
    }

    /// [`ScopeIndex::matching`] with a buffer for the keys (no allocation
    /// per call once it has grown).
    pub fn matching_with(
        &self,
        values: &[Option<&str>; 5],
        key: &mut String,
        mut f: impl FnMut(usize),
    ) {
        for (shape, map) in &self.shapes {
            if write_key(*shape, values, key) {
                if let Some(ids) = map.get(key.as_str()) {
                    ids.iter().for_each(|i| f(*i));
                }
            }
        }
    }
}

/// A column as strings (rollup rows and raw rows may differ in type).
pub fn strings(b: &RecordBatch, name: &str) -> Result<arrow::array::StringArray, QueryError> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| QueryError::Execution(format!("hourly rows have no {name}")))?;
    let cast = arrow::compute::cast(col, &DataType::Utf8)
        .map_err(|e| QueryError::Execution(e.to_string()))?;
    Ok(cast.as_string::<i32>().clone())
}

pub fn ints(b: &RecordBatch, name: &str) -> Result<arrow::array::Int64Array, QueryError> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| QueryError::Execution(format!("hourly rows have no {name}")))?;
    let cast = arrow::compute::cast(col, &DataType::Int64)
        .map_err(|e| QueryError::Execution(e.to_string()))?;
    Ok(cast.as_primitive::<Int64Type>().clone())
}

pub fn opt(a: &arrow::array::StringArray, r: usize) -> Option<&str> {
    (!a.is_null(r)).then(|| a.value(r))
}

/// Prices by (model, provider), looked up once per evaluation.
pub type Priced<'p> = HashMap<(String, String), Option<&'p crate::prices::ModelPrices>>;

/// One hourly row of `usage_llm`, priced.
pub struct LlmRow<'a> {
    pub hour: i64,
    pub microdao_id: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub actor_id: Option<&'a str>,
    pub calls: i64,
    pub total_tokens: i64,
    /// `None`: the model has no price.
    pub cost: Option<f64>,
}

/// Calls `f` with each row of a batch of `usage_llm` hourly rows, priced
/// by the running server's catalogue at the row's hour.
pub fn llm_rows<'p>(
    b: &RecordBatch,
    prices: &'p PriceCatalogue,
    priced: &mut Priced<'p>,
    mut f: impl FnMut(LlmRow<'_>),
) -> Result<(), QueryError> {
    let (tenant, agent, actor) = (
        strings(b, "microdao_id")?,
        strings(b, "agent_id")?,
        strings(b, "actor_id")?,
    );
    let (model, provider) = (strings(b, "model")?, strings(b, "provider")?);
    let [hour, calls, prompt, completion, creation, read, total] = [
        "hour",
        "calls",
        "prompt_tokens",
        "completion_tokens",
        "cache_creation_tokens",
        "cache_read_tokens",
        "total_tokens",
    ]
    .map(|c| ints(b, c));
    let (hour, calls, prompt, completion, creation, read, total) = (
        hour?,
        calls?,
        prompt?,
        completion?,
        creation?,
        read?,
        total?,
    );
    let mut last: Option<(&str, &str, Option<&crate::prices::ModelPrices>)> = None;
    for r in 0..b.num_rows() {
        let (m, p) = (
            opt(&model, r).unwrap_or_default(),
            opt(&provider, r).unwrap_or_default(),
        );
        // Rows of a batch mostly repeat their neighbour's model.
        let price = match &last {
            Some((lm, lp, price)) if *lm == m && *lp == p => *price,
            _ => {
                let price = *priced
                    .entry((m.to_string(), p.to_string()))
                    .or_insert_with(|| prices.price(m, (!p.is_empty()).then_some(p)));
                last = Some((m, p, price));
                price
            }
        };
        f(LlmRow {
            hour: hour.value(r),
            microdao_id: opt(&tenant, r),
            agent_id: opt(&agent, r),
            actor_id: opt(&actor, r),
            calls: calls.value(r),
            total_tokens: total.value(r),
            cost: price.map(|price| {
                price.at(hour.value(r)).cost(Tokens {
                    prompt: prompt.value(r) as f64,
                    completion: completion.value(r) as f64,
                    cache_creation: creation.value(r) as f64,
                    cache_read: read.value(r) as f64,
                })
            }),
        });
    }
    Ok(())
}

/// A period's hourly rows of one source, as read for an evaluation.
#[derive(Debug)]
pub enum GroupRows {
    Llm(Vec<Arc<RecordBatch>>),
    Tool(Vec<Arc<RecordBatch>>),
    Vm(Vec<vm_billing::WindowRow>),
}

/// Where budgets' rows come from and over which period.
pub type GroupKey = (Source, i64, i64);

/// The rows each group was evaluated from, kept with the evaluation: a
/// budget created afterwards is evaluated from them without a query.
pub type GroupCache = HashMap<GroupKey, Arc<GroupRows>>;

/// Reads the hourly rows of `source` over `[start, end)`.
async fn fetch(history: &History, (source, start, end): GroupKey) -> Result<GroupRows, QueryError> {
    Ok(match source {
        Source::Llm => GroupRows::Llm(history.hourly(Dataset::UsageLlm, start, end).await?),
        Source::Tool => GroupRows::Tool(history.hourly(Dataset::UsageTool, start, end).await?),
        Source::Vm => {
            // VM usage is counted in whole hours (the billing rules'
            // windows): a period starting inside an hour counts it.
            let from = start.div_euclid(HOUR_NS) * HOUR_NS;
            GroupRows::Vm(vm_billing::bill(history, Window::Hour, from, end, &|_, _| true).await?)
        }
    })
}

/// Adds `rows` to the states of `members` (budgets of the rows' group).
fn apply<'p>(
    rows: &GroupRows,
    prices: &'p PriceCatalogue,
    priced: &mut Priced<'p>,
    states: &mut [BudgetState],
    members: &[usize],
) -> Result<(), QueryError> {
    let index = ScopeIndex::new(members.iter().map(|&i| states[i].budget.as_ref()));
    let mut key = String::new();
    let mut add = |values: &[Option<&str>; 5], amount: &dyn Fn(Metric) -> (f64, u64)| {
        index.matching_with(values, &mut key, |j| {
            let s = &mut states[members[j]];
            let (v, unpriced) = amount(s.budget.metric);
            s.used += v;
            s.unpriced_calls += unpriced;
        });
    };
    match rows {
        GroupRows::Llm(batches) => {
            for b in batches {
                llm_rows(b, prices, priced, |row| {
                    let values = [row.microdao_id, row.agent_id, row.actor_id, None, None];
                    add(&values, &|metric| match metric {
                        Metric::CostUsd => (
                            row.cost.unwrap_or(0.0),
                            row.cost.map_or(row.calls as u64, |_| 0),
                        ),
                        Metric::TotalTokens => (row.total_tokens as f64, 0),
                        _ => (row.calls as f64, 0),
                    });
                })?;
            }
        }
        GroupRows::Tool(batches) => {
            for b in batches {
                let (tenant, agent) = (strings(b, "microdao_id")?, strings(b, "agent_id")?);
                let calls = ints(b, "calls")?;
                for r in 0..b.num_rows() {
                    let values = [opt(&tenant, r), opt(&agent, r), None, None, None];
                    let n = calls.value(r) as f64;
                    add(&values, &|_| (n, 0));
                }
            }
        }
        GroupRows::Vm(windows) => {
            for w in windows {
                let values = [
                    None,
                    None,
                    None,
                    Some(w.customer_id.as_str()),
                    Some(w.vm_id.as_str()),
                ];
                let u = w.usage;
                add(&values, &|metric| match metric {
                    Metric::VmCpuSeconds => (u.cpu_seconds(), 0),
                    Metric::VmMemoryGibHours => (u.memory_gib_hours(), 0),
                    _ => ((u.rx + u.tx) as f64, 0),
                });
            }
        }
    }
    Ok(())
}

/// The states of `budgets` at `now`, in their order, and the rows they
/// were computed from. A group found in `cached` is not read again.
pub async fn evaluate(
    history: &History,
    prices: &PriceCatalogue,
    budgets: &[Arc<Budget>],
    now: i64,
    cached: Option<&GroupCache>,
) -> Result<(Vec<BudgetState>, GroupCache), QueryError> {
    let mut states: Vec<BudgetState> = budgets
        .iter()
        .map(|b| {
            let (start, end) = b.period.around(now, b.tz());
            BudgetState {
                budget: b.clone(),
                period_start: start,
                period_end: end,
                used: 0.0,
                unpriced_calls: 0,
            }
        })
        .collect();
    let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
    for (i, s) in states.iter().enumerate() {
        let key = (s.budget.metric.source(), s.period_start, s.period_end);
        groups.entry(key).or_default().push(i);
    }
    let mut priced = Priced::new();
    let mut read = GroupCache::new();
    for (key, members) in groups {
        let rows = match cached.and_then(|c| c.get(&key)) {
            Some(rows) => rows.clone(),
            None => Arc::new(fetch(history, key).await?),
        };
        apply(&rows, prices, &mut priced, &mut states, &members)?;
        read.insert(key, rows);
    }
    Ok((states, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(scope: &[(&str, &str)]) -> Budget {
        Budget {
            id: "b".into(),
            name: "n".into(),
            scope: scope
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metric: Metric::CostUsd,
            period: super::super::model::Period::Day,
            timezone: "UTC".into(),
            limit: 1.0,
            thresholds: vec![0.5, 1.0],
            webhook_url: None,
            webhook_secret: None,
            created_at: String::new(),
        }
    }

    #[test]
    fn a_scope_matches_when_every_key_it_names_is_equal() {
        let budgets = [
            budget(&[]),
            budget(&[("microdao_id", "m1")]),
            budget(&[("microdao_id", "m1"), ("agent_id", "a1")]),
            budget(&[("microdao_id", "m2")]),
            budget(&[("agent_id", "a1")]),
        ];
        let index = ScopeIndex::new(budgets.iter());
        let got = |values: [Option<&str>; 5]| {
            let mut out = Vec::new();
            index.matching(&values, |i| out.push(i));
            out.sort();
            out
        };
        assert_eq!(
            got([Some("m1"), Some("a1"), None, None, None]),
            [0, 1, 2, 4]
        );
        assert_eq!(got([Some("m1"), None, None, None, None]), [0, 1]);
        assert_eq!(got([Some("m2"), Some("a2"), None, None, None]), [0, 3]);
        assert_eq!(got([None, None, None, None, None]), [0]);
    }
}
