//! The rules that turn stored records into usage, in one place for both
//! sides: the derive jobs store rollups by them, and the read side applies
//! the same rules to the hours that have no stored rollup yet, so an answer
//! is the same whichever way an hour is read.
//!
//! - `sql/`: each rolled-up dataset's hourly rollup as a SQL file over a
//!   table `source` (its raw rows);
//! - [`vm`]: VM usage per hour by the billing rules (README, "billing.v1
//!   (VM metering)"), folded over samples in key and time order;
//! - [`meter`] and [`json_path`]: user-defined meters over CloudEvents
//!   (OpenMeter's model) and the JSONPaths they read `data` with.

use std::hash::{Hash, Hasher};

use crate::clock::HOUR_NS;
use crate::dataset::Dataset;

pub mod json_path;
pub mod meter;
pub mod meter_hourly;
pub mod vm;
pub mod vm_bill;

pub const USAGE_LLM_HOURLY: &str = include_str!("sql/usage_llm_hourly.sql");
pub const USAGE_TOOL_HOURLY: &str = include_str!("sql/usage_tool_hourly.sql");
pub const USAGE_AGENT_HOURLY: &str = include_str!("sql/usage_agent_hourly.sql");
pub const USAGE_MESSAGE_HOURLY: &str = include_str!("sql/usage_message_hourly.sql");
pub const VM_GAP_SPANS: &str = include_str!("sql/vm_gap_spans.sql");
/// The samples of `vm_metrics` that [`vm`] folds (VM usage has no SQL
/// aggregate: it is folded in Rust).
pub const VM_SAMPLES: &str = include_str!("sql/vm_samples.sql");

/// Each rolled-up dataset: its rollup table (one) and the SQL that builds it.
const ROLLUPS: [(Dataset, [&str; 1], &str); 6] = [
    (Dataset::UsageLlm, ["usage_llm_hourly"], USAGE_LLM_HOURLY),
    (Dataset::UsageTool, ["usage_tool_hourly"], USAGE_TOOL_HOURLY),
    (
        Dataset::UsageAgent,
        ["usage_agent_hourly"],
        USAGE_AGENT_HOURLY,
    ),
    (
        Dataset::UsageMessage,
        ["usage_message_hourly"],
        USAGE_MESSAGE_HOURLY,
    ),
    (Dataset::VmMetrics, ["vm_usage_hours"], VM_SAMPLES),
    (Dataset::VmEvents, ["vm_gap_spans"], VM_GAP_SPANS),
];

/// The rollup table of a dataset and the SQL that builds it.
pub fn rollup_of(d: Dataset) -> Option<(&'static str, &'static str)> {
    ROLLUPS
        .iter()
        .find(|(rd, _, _)| *rd == d)
        .map(|(_, [table], sql)| (*table, *sql))
}

/// The rollup tables derived from a dataset (empty: none). `events` has
/// its meters' hourly rows ([`meter_hourly`]), folded in Rust by the meters
/// defined when the hour is rolled up.
pub fn tables_of(d: Dataset) -> &'static [&'static str] {
    if d == Dataset::Events {
        return &[meter_hourly::TABLE];
    }
    ROLLUPS
        .iter()
        .find(|(rd, _, _)| *rd == d)
        .map_or(&[], |(_, tables, _)| tables.as_slice())
}

/// The tables rolled up by UTC day from `d`'s hourly rollups, as (day
/// table, hourly table): a month is read as 30 days, not 720 hours.
pub fn day_tables_of(d: Dataset) -> &'static [(&'static str, &'static str)] {
    if d == Dataset::Events {
        return &[(meter_hourly::DAY_TABLE, meter_hourly::TABLE)];
    }
    &[]
}

/// What a VM hour's rollup depends on besides its samples: the reported
/// spans that overlap the hour (0 when none).
pub fn gap_fingerprint(spans: &vm::GapSpans, hour: i64) -> u64 {
    let mut touching: Vec<(&str, i64, i64)> = Vec::new();
    for (vm, list) in spans {
        for &(a, z) in list {
            if a < hour + HOUR_NS && z > hour {
                touching.push((vm, a, z));
            }
        }
    }
    if touching.is_empty() {
        return 0;
    }
    touching.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    touching.hash(&mut h);
    h.finish() | 1
}
