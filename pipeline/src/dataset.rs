//! The datasets (README, "Datasets"): their columns, dedup keys and time column.

use std::fmt;
use std::str::FromStr;

/// The Arrow type a column is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Utf8,
    /// Low-cardinality string: `Dictionary(Int32, Utf8)`.
    Dict,
    Int32,
    Int64,
    Float64,
    Bool,
    /// `Timestamp(Nanosecond, "UTC")`.
    TimestampNs,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub nullable: bool,
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        nullable: false,
    }
}

const fn opt(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        nullable: true,
    }
}

use ColumnType::{Bool, Dict, Float64, Int32, Int64, TimestampNs, Utf8};

const USAGE_LLM: &[Column] = &[
    col("event_id", Utf8),
    col("timestamp", TimestampNs),
    opt("actor_id", Dict),
    opt("actor_type", Dict),
    opt("agent_id", Dict),
    opt("microdao_id", Dict),
    opt("model", Dict),
    opt("provider", Dict),
    col("prompt_tokens", Int32),
    col("completion_tokens", Int32),
    col("total_tokens", Int32),
    opt("cache_creation_tokens", Int32),
    opt("cache_read_tokens", Int32),
    opt("latency_ms", Int32),
    col("success", Bool),
    opt("error", Utf8),
    opt("cached", Bool),
    opt("chat_id", Utf8),
    opt("workflow_name", Dict),
    opt("invocation_id", Utf8),
    col("source", Dict),
    opt("metadata", Utf8),
];

const USAGE_TOOL: &[Column] = &[
    col("event_id", Utf8),
    col("timestamp", TimestampNs),
    col("actor_id", Dict),
    col("actor_type", Dict),
    opt("agent_id", Dict),
    opt("microdao_id", Dict),
    col("tool_id", Dict),
    col("tool_name", Dict),
    col("success", Bool),
    col("latency_ms", Int32),
    opt("error", Utf8),
    opt("metadata", Utf8),
];

const USAGE_AGENT: &[Column] = &[
    col("event_id", Utf8),
    col("timestamp", TimestampNs),
    col("agent_id", Dict),
    opt("microdao_id", Dict),
    opt("channel_id", Dict),
    col("trigger", Dict),
    col("duration_ms", Int32),
    col("llm_calls", Int32),
    col("tool_calls", Int32),
    col("success", Bool),
    opt("error", Utf8),
    opt("metadata", Utf8),
];

const USAGE_MESSAGE: &[Column] = &[
    col("event_id", Utf8),
    col("timestamp", TimestampNs),
    col("actor_id", Dict),
    col("actor_type", Dict),
    col("microdao_id", Dict),
    col("channel_id", Dict),
    col("message_length", Int32),
    opt("metadata", Utf8),
];

const USAGE_CHAT_SUMMARY: &[Column] = &[
    col("event_id", Utf8),
    col("timestamp", TimestampNs),
    col("chat_id", Utf8),
    col("app_id", Dict),
    col("user_id", Dict),
    col("workflow_name", Dict),
    col("prompt_tokens", Int64),
    col("completion_tokens", Int64),
    col("total_tokens", Int64),
];

const VM_METRICS: &[Column] = &[
    col("customer_id", Dict),
    col("vm_id", Dict),
    col("timestamp", TimestampNs),
    col("cpu_time_nanos", Int64),
    col("memory_usage_bytes", Int64),
    col("disk_read_bytes", Int64),
    col("disk_write_bytes", Int64),
    col("network_rx_bytes", Int64),
    col("network_tx_bytes", Int64),
];

const VM_EVENTS: &[Column] = &[
    col("event_id", Utf8),
    col("timestamp", TimestampNs),
    col("kind", Dict),
    opt("vm_id", Dict),
    opt("customer_id", Dict),
    opt("instance_id", Dict),
    opt("active_vms", Utf8),
    opt("event_time", TimestampNs),
    opt("last_sent", TimestampNs),
    opt("resume_time", TimestampNs),
];

const HOST_USAGE: &[Column] = &[
    col("hostname", Dict),
    col("timestamp", TimestampNs),
    col("cpu_percent", Float64),
    col("ram_percent", Float64),
    col("ram_used_mb", Int64),
    col("ram_total_mb", Int64),
    opt("gpu_percent", Float64),
    opt("gpu_mem_used_mb", Int64),
    opt("gpu_mem_total_mb", Int64),
];

const USAGE_SNAPSHOTS: &[Column] = &[
    col("id", Utf8),
    col("timestamp", TimestampNs),
    col("session_id", Utf8),
    opt("actor_id", Dict),
    opt("microdao_id", Dict),
    col("plan", Dict),
    col("input_tokens", Int64),
    col("output_tokens", Int64),
    col("cache_creation_tokens", Int64),
    col("cache_read_tokens", Int64),
    col("total_tokens", Int64),
    opt("cost_usd", Float64),
    col("messages", Int64),
    opt("stats", Utf8),
];

const REJECTED: &[Column] = &[
    col("timestamp", TimestampNs),
    col("source", Dict),
    opt("subject", Dict),
    opt("dataset", Dict),
    opt("index", Int32),
    col("reason", Utf8),
    col("payload", Utf8),
];

const ALERTS: &[Column] = &[
    col("id", Utf8),
    col("timestamp", TimestampNs),
    col("type", Dict),
    opt("microdao_id", Dict),
    opt("customer_id", Dict),
    opt("budget_id", Utf8),
    opt("budget_name", Utf8),
    col("metric", Dict),
    opt("threshold", Float64),
    opt("used", Float64),
    opt("limit", Float64),
    opt("period_start", TimestampNs),
    opt("period_end", TimestampNs),
    opt("webhook_url", Utf8),
    col("payload", Utf8),
];

const ANOMALIES: &[Column] = &[
    col("id", Utf8),
    col("timestamp", TimestampNs),
    col("scope", Dict),
    col("scope_id", Dict),
    col("metric", Dict),
    col("hour", TimestampNs),
    col("value", Float64),
    col("baseline", Float64),
    col("spread", Float64),
    col("score", Float64),
    col("baseline_days", Int32),
];

/// CloudEvents (`POST /api/v1/events`, OpenMeter's API): the event as sent,
/// `data` as its JSON text, under the tenant of the token that sent it.
const EVENTS: &[Column] = &[
    col("id", Utf8),
    col("timestamp", TimestampNs),
    col("tenant", Dict),
    col("source", Dict),
    col("type", Dict),
    col("subject", Utf8),
    col("specversion", Dict),
    opt("datacontenttype", Dict),
    opt("dataschema", Utf8),
    opt("data", Utf8),
    col("ingested_at", TimestampNs),
];

/// OTLP metric data points (`POST /v1/metrics`, the Metrics service), one
/// row each, as sent: `value` for gauges and sums, `count` and `sum` for
/// histograms and summaries. `series` names the stream (tenant, name,
/// attributes, resource); `point_id` is the point's identity (series,
/// start and time), so an exporter's retry is a copy. Cumulative streams
/// become deltas in the `otel_metric_deltas` view.
const OTEL_METRICS: &[Column] = &[
    col("point_id", Utf8),
    col("timestamp", TimestampNs),
    col("tenant", Dict),
    col("name", Dict),
    opt("unit", Dict),
    col("kind", Dict),
    col("temporality", Dict),
    opt("monotonic", Bool),
    col("series", Utf8),
    opt("start_time", TimestampNs),
    opt("value", Float64),
    opt("count", Int64),
    opt("sum", Float64),
    opt("attributes", Utf8),
    opt("resource", Utf8),
    col("ingested_at", TimestampNs),
];

/// Every dataset tally stores. Each is one directory of Parquet files and one
/// SQL table of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Dataset {
    UsageLlm = 0,
    UsageTool = 1,
    UsageAgent = 2,
    UsageMessage = 3,
    UsageChatSummary = 4,
    VmMetrics = 5,
    VmEvents = 6,
    HostUsage = 7,
    UsageSnapshots = 8,
    Rejected = 9,
    Alerts = 10,
    Anomalies = 11,
    Events = 12,
    OtelMetrics = 13,
}

impl Dataset {
    /// How many datasets there are.
    pub const COUNT: usize = 14;

    pub const ALL: [Dataset; Dataset::COUNT] = [
        Dataset::UsageLlm,
        Dataset::UsageTool,
        Dataset::UsageAgent,
        Dataset::UsageMessage,
        Dataset::UsageChatSummary,
        Dataset::VmMetrics,
        Dataset::VmEvents,
        Dataset::HostUsage,
        Dataset::UsageSnapshots,
        Dataset::Rejected,
        Dataset::Alerts,
        Dataset::Anomalies,
        Dataset::Events,
        Dataset::OtelMetrics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dataset::UsageLlm => "usage_llm",
            Dataset::UsageTool => "usage_tool",
            Dataset::UsageAgent => "usage_agent",
            Dataset::UsageMessage => "usage_message",
            Dataset::UsageChatSummary => "usage_chat_summary",
            Dataset::VmMetrics => "vm_metrics",
            Dataset::VmEvents => "vm_events",
            Dataset::HostUsage => "host_usage",
            Dataset::UsageSnapshots => "usage_snapshots",
            Dataset::Rejected => "rejected",
            Dataset::Alerts => "alerts",
            Dataset::Anomalies => "anomalies",
            Dataset::Events => "events",
            Dataset::OtelMetrics => "otel_metrics",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: u8) -> Option<Dataset> {
        Dataset::ALL.get(i as usize).copied()
    }

    pub fn columns(self) -> &'static [Column] {
        match self {
            Dataset::UsageLlm => USAGE_LLM,
            Dataset::UsageTool => USAGE_TOOL,
            Dataset::UsageAgent => USAGE_AGENT,
            Dataset::UsageMessage => USAGE_MESSAGE,
            Dataset::UsageChatSummary => USAGE_CHAT_SUMMARY,
            Dataset::VmMetrics => VM_METRICS,
            Dataset::VmEvents => VM_EVENTS,
            Dataset::HostUsage => HOST_USAGE,
            Dataset::UsageSnapshots => USAGE_SNAPSHOTS,
            Dataset::Rejected => REJECTED,
            Dataset::Alerts => ALERTS,
            Dataset::Anomalies => ANOMALIES,
            Dataset::Events => EVENTS,
            Dataset::OtelMetrics => OTEL_METRICS,
        }
    }

    pub fn column_index(self, name: &str) -> Option<usize> {
        self.columns().iter().position(|c| same_name(c.name, name))
    }

    /// Whether records of this dataset have a dedup key.
    pub fn has_key(self) -> bool {
        !self.key_columns().is_empty()
    }

    /// The dedup key's columns by name, in order. Empty: append only.
    ///
    /// A usage dataset's key starts with its tenant (see
    /// [`Dataset::tenant_column`]), so one tenant's ids never suppress
    /// another's; files are sorted by the key, then time.
    pub fn key_names(self) -> &'static [&'static str] {
        match self {
            // chat.usage_delta events land here, keyed as chat events are
            // (app_id is their microdao_id); other calls have no chat_id.
            Dataset::UsageLlm => &["microdao_id", "chat_id", "event_id"],
            Dataset::UsageTool | Dataset::UsageAgent | Dataset::UsageMessage => {
                &["microdao_id", "event_id"]
            }
            Dataset::UsageChatSummary => &["app_id", "chat_id", "event_id"],
            Dataset::VmMetrics => &["customer_id", "vm_id", "timestamp"],
            Dataset::UsageSnapshots => &["microdao_id", "id"],
            Dataset::HostUsage => &["hostname", "timestamp"],
            Dataset::Rejected => &[],
            // An alert's id names its crossing (budget, threshold, period)
            // or its anomaly, so a crossing found again is a copy.
            Dataset::Alerts | Dataset::Anomalies => &["id"],
            // VM events name their VM in event_id; only starts carry a
            // customer.
            Dataset::VmEvents => &["event_id"],
            // CloudEvents are one event per (source, id), within a tenant.
            Dataset::Events => &["tenant", "source", "id"],
            Dataset::OtelMetrics => &["tenant", "point_id"],
        }
    }

    /// The positions of [`Dataset::key_names`] in the schema (looked up by
    /// name once).
    pub fn key_columns(self) -> &'static [usize] {
        static KEYS: std::sync::LazyLock<[Vec<usize>; Dataset::COUNT]> =
            std::sync::LazyLock::new(|| {
                Dataset::ALL.map(|d| {
                    d.key_names()
                        .iter()
                        .map(|n| d.column_index(n).expect("a key column is in its schema"))
                        .collect()
                })
            });
        &KEYS[self.index()]
    }

    /// The column naming a record's tenant: `microdao_id` for the usage
    /// datasets, `app_id` for chat events, `customer_id` for VM data.
    /// Tokens limited to tenants are checked against it.
    pub fn tenant_column(self) -> Option<usize> {
        let name = match self {
            Dataset::UsageLlm
            | Dataset::UsageTool
            | Dataset::UsageAgent
            | Dataset::UsageMessage
            | Dataset::UsageSnapshots => "microdao_id",
            Dataset::UsageChatSummary => "app_id",
            Dataset::VmMetrics | Dataset::VmEvents => "customer_id",
            Dataset::Events | Dataset::OtelMetrics => "tenant",
            Dataset::HostUsage | Dataset::Rejected | Dataset::Alerts | Dataset::Anomalies => {
                return None
            }
        };
        self.column_index(name)
    }

    /// Whether the key is more than one column and its last is the record's
    /// time: dedup then keeps a table of times per key prefix.
    pub fn key_ends_in_time(self) -> bool {
        let cols = self.key_columns();
        cols.len() >= 2 && cols.last() == Some(&self.time_column())
    }

    /// The column that places a record in a `date=/hour=` partition:
    /// `timestamp`, in every dataset.
    pub const TIME: &'static str = "timestamp";

    /// The position of [`Dataset::TIME`] in the schema.
    pub fn time_column(self) -> usize {
        static TIMES: std::sync::LazyLock<[usize; Dataset::COUNT]> =
            std::sync::LazyLock::new(|| {
                Dataset::ALL.map(|d| {
                    d.column_index(Dataset::TIME)
                        .expect("every dataset has a timestamp")
                })
            });
        TIMES[self.index()]
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dataset {s:?}"))
    }
}

/// Whether two names are equal: names of at most 16 bytes (almost every
/// column and field name) as two 8-byte words each, without a call to
/// `memcmp`; longer ones as slices. Decoders look up ~25 names an event.
#[inline]
pub fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 16 {
        if let (Some(ah), Some(at), Some(bh), Some(bt)) = (
            a.first_chunk::<8>(),
            a.last_chunk::<8>(),
            b.first_chunk::<8>(),
            b.last_chunk::<8>(),
        ) {
            return ah == bh && at == bt;
        }
    }
    a == b
}

#[cfg(test)]
mod tests {

    /// `same_name` is `==` on names around the 8- and 16-byte edges.
    #[test]
    fn same_name_is_equality() {
        let names: Vec<String> = (0..=20)
            .flat_map(|n| {
                let base: String = "abcdefghijklmnopqrstu".chars().take(n).collect();
                let mut last = base.clone();
                if let Some(c) = last.pop() {
                    last.push(if c == 'z' { 'y' } else { 'z' });
                }
                let mut first = base.clone();
                if !first.is_empty() {
                    first.replace_range(0..1, "Z");
                }
                let mut middle = base.clone();
                if n > 2 {
                    middle.replace_range(n / 2..n / 2 + 1, "_");
                }
                [base, last, first, middle]
            })
            .collect();
        for a in &names {
            for b in &names {
                assert_eq!(super::same_name(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }
    use super::*;

    #[test]
    fn names_round_trip_and_indexes_are_dense() {
        for (i, d) in Dataset::ALL.into_iter().enumerate() {
            assert_eq!(d.index(), i);
            assert_eq!(Dataset::from_index(i as u8), Some(d));
            assert_eq!(d.name().parse::<Dataset>().unwrap(), d);
        }
        assert!("nope".parse::<Dataset>().is_err());
    }

    #[test]
    fn key_and_time_columns_are_not_nullable_but_the_tenant_and_chat() {
        for d in Dataset::ALL {
            let cols = d.columns();
            assert_eq!(cols[d.time_column()].ty, ColumnType::TimestampNs, "{d}");
            for &k in d.key_columns() {
                assert!(
                    !cols[k].nullable
                        || Some(k) == d.tenant_column()
                        || (d, cols[k].name) == (Dataset::UsageLlm, "chat_id"),
                    "{d}.{}",
                    cols[k].name
                );
            }
        }
    }

    #[test]
    fn usage_keys_start_with_the_tenant() {
        let names = |d: Dataset| -> Vec<&str> {
            d.key_columns()
                .iter()
                .map(|&c| d.columns()[c].name)
                .collect()
        };
        assert_eq!(
            names(Dataset::UsageLlm),
            ["microdao_id", "chat_id", "event_id"]
        );
        for d in [
            Dataset::UsageTool,
            Dataset::UsageAgent,
            Dataset::UsageMessage,
        ] {
            assert_eq!(names(d), ["microdao_id", "event_id"], "{d}");
        }
        assert_eq!(
            names(Dataset::UsageChatSummary),
            ["app_id", "chat_id", "event_id"]
        );
        assert_eq!(
            names(Dataset::VmMetrics),
            ["customer_id", "vm_id", "timestamp"]
        );
        assert_eq!(names(Dataset::UsageSnapshots), ["microdao_id", "id"]);
        for d in Dataset::ALL {
            if let Some(t) = d.tenant_column() {
                if d != Dataset::VmEvents {
                    assert_eq!(d.key_columns()[0], t, "{d}");
                }
            }
        }
    }
}
