//! The rollup SQL files, each run on a few rows of its dataset (written as
//! the Parquet file compaction hands it, with the dataset's own schema),
//! against the table written out here.

use std::path::Path;
use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use datafusion::parquet::arrow::ArrowWriter;
use tally_pipeline::batch::records_to_batch;
use tally_pipeline::rollup::RollupMemory;
use tally_pipeline::{ColumnType, Dataset, Record, RecordBuilder, Value};

use super::stream::sql_over_file;
use tally_queries::prices::PriceCatalogue;

/// 2025-11-20T10:00:00Z, and minutes after it.
const H10: i64 = 1_763_632_800_000_000_000;
fn at(min: i64) -> i64 {
    H10 + min * 60_000_000_000
}

/// A record of `d` with `values`; every other required column gets a
/// placeholder (`-`, 0, false).
fn record(d: Dataset, values: &[(&str, Value)]) -> Record {
    let mut r = RecordBuilder::new(d);
    for c in d.columns() {
        let v = match values.iter().find(|(n, _)| *n == c.name) {
            Some((_, v)) => v.clone(),
            None if c.nullable => Value::Null,
            None => match c.ty {
                ColumnType::Utf8 | ColumnType::Dict => Value::Str("-".into()),
                ColumnType::Int32 => Value::I32(0),
                ColumnType::Int64 => Value::I64(0),
                ColumnType::Float64 => Value::F64(0.0),
                ColumnType::Bool => Value::Bool(false),
                ColumnType::TimestampNs => Value::Ts(0),
            },
        };
        r.set(c.name, v);
    }
    r.build().unwrap()
}

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

/// Runs `sql` over `records` of `d` as compaction does (a Parquet file,
/// streamed), the rows sorted by the first `keys` columns, as a table.
fn run(d: Dataset, sql: &str, keys: usize, records: &[Record]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hour.parquet");
    write(&path, &records_to_batch(d, records.iter()).unwrap());
    let out = sql_over_file(
        Arc::new(PriceCatalogue::embedded()),
        &path,
        &format!(
            "SELECT * FROM ({sql}) ORDER BY {}",
            (1..=keys)
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RollupMemory::unreported(64 << 20),
    )
    .unwrap();
    pretty_format_batches(&[out]).unwrap().to_string()
}

fn write(path: &Path, batch: &arrow::record_batch::RecordBatch) {
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn table(lines: &[&str]) -> String {
    lines.join("\n")
}

#[test]
fn usage_tool_hourly_counts_calls_successes_and_latency_per_tool() {
    let tool = |id: &str, min: i64, tool: &str, ok: bool, latency: Option<i32>| {
        // (latency_ms is required: None stands for a record without one,
        // which admission refuses.)
        record(
            Dataset::UsageTool,
            &[
                ("event_id", s(id)),
                ("timestamp", Value::Ts(at(min))),
                ("microdao_id", s("dao:1")),
                ("agent_id", s("agent:a")),
                ("tool_id", s(tool)),
                ("tool_name", s(&format!("Tool {tool}"))),
                ("success", Value::Bool(ok)),
                ("latency_ms", latency.map_or(Value::Null, Value::I32)),
            ],
        )
    };
    let got = run(
        Dataset::UsageTool,
        tally_pipeline::rules::USAGE_TOOL_HOURLY,
        5,
        &[
            tool("1", 1, "search", true, Some(100)),
            tool("2", 59, "search", false, Some(50)),
            tool("3", 30, "list", true, Some(0)),
            tool("4", 61, "search", true, Some(7)),
        ],
    );
    assert_eq!(
        got,
        table(&[
            "+---------------------+-------------+----------+---------+-------------+-------+-----------+----------------+---------------+",
            "| hour                | microdao_id | agent_id | tool_id | tool_name   | calls | successes | latency_ms_sum | latency_count |",
            "+---------------------+-------------+----------+---------+-------------+-------+-----------+----------------+---------------+",
            "| 1763632800000000000 | dao:1       | agent:a  | list    | Tool list   | 1     | 1         | 0              | 1             |",
            "| 1763632800000000000 | dao:1       | agent:a  | search  | Tool search | 2     | 1         | 150            | 2             |",
            "| 1763636400000000000 | dao:1       | agent:a  | search  | Tool search | 1     | 1         | 7              | 1             |",
            "+---------------------+-------------+----------+---------+-------------+-------+-----------+----------------+---------------+",
        ])
    );
}

#[test]
fn usage_agent_and_message_hourly_count_per_tenant() {
    let agent = |id: &str, min: i64, dao: &str| {
        record(
            Dataset::UsageAgent,
            &[
                ("event_id", s(id)),
                ("timestamp", Value::Ts(at(min))),
                ("microdao_id", s(dao)),
                ("agent_id", s("agent:a")),
            ],
        )
    };
    let got = run(
        Dataset::UsageAgent,
        tally_pipeline::rules::USAGE_AGENT_HOURLY,
        3,
        &[
            agent("1", 0, "dao:1"),
            agent("2", 10, "dao:1"),
            agent("3", 20, "dao:2"),
        ],
    );
    assert_eq!(
        got,
        table(&[
            "+---------------------+-------------+----------+-------------+",
            "| hour                | microdao_id | agent_id | invocations |",
            "+---------------------+-------------+----------+-------------+",
            "| 1763632800000000000 | dao:1       | agent:a  | 2           |",
            "| 1763632800000000000 | dao:2       | agent:a  | 1           |",
            "+---------------------+-------------+----------+-------------+",
        ])
    );
    let message = |id: &str, min: i64, actor: &str| {
        record(
            Dataset::UsageMessage,
            &[
                ("event_id", s(id)),
                ("timestamp", Value::Ts(at(min))),
                ("microdao_id", s("dao:1")),
                ("actor_id", s(actor)),
            ],
        )
    };
    let got = run(
        Dataset::UsageMessage,
        tally_pipeline::rules::USAGE_MESSAGE_HOURLY,
        3,
        &[
            message("1", 5, "user:1"),
            message("2", 6, "user:1"),
            message("3", 65, "user:2"),
        ],
    );
    assert_eq!(
        got,
        table(&[
            "+---------------------+-------------+----------+----------+",
            "| hour                | microdao_id | actor_id | messages |",
            "+---------------------+-------------+----------+----------+",
            "| 1763632800000000000 | dao:1       | user:1   | 2        |",
            "| 1763636400000000000 | dao:1       | user:2   | 1        |",
            "+---------------------+-------------+----------+----------+",
        ])
    );
}

#[test]
fn usage_llm_hourly_sums_tokens_and_leaves_an_unpriced_model_without_cost() {
    let llm = |id: &str, min: i64, p: i32, c: i32, ok: bool| {
        record(
            Dataset::UsageLlm,
            &[
                ("event_id", s(id)),
                ("timestamp", Value::Ts(at(min))),
                ("microdao_id", s("dao:1")),
                ("agent_id", s("agent:a")),
                ("actor_id", s("user:1")),
                ("model", s("no-such-model")),
                ("provider", s("nobody")),
                ("prompt_tokens", Value::I32(p)),
                ("completion_tokens", Value::I32(c)),
                ("total_tokens", Value::I32(p + c)),
                ("latency_ms", Value::I32(10)),
                ("success", Value::Bool(ok)),
            ],
        )
    };
    let got = run(
        Dataset::UsageLlm,
        tally_pipeline::rules::USAGE_LLM_HOURLY,
        6,
        &[llm("1", 1, 100, 20, true), llm("2", 2, 300, 40, false)],
    );
    assert_eq!(
        got,
        table(&[
            "+---------------------+-------------+----------+----------+---------------+----------+-------+---------------+-------------------+-----------------------+-------------------+--------------+----------------+---------------+----------+----------+",
            "| hour                | microdao_id | agent_id | actor_id | model         | provider | calls | prompt_tokens | completion_tokens | cache_creation_tokens | cache_read_tokens | total_tokens | latency_ms_sum | latency_count | failures | cost_usd |",
            "+---------------------+-------------+----------+----------+---------------+----------+-------+---------------+-------------------+-----------------------+-------------------+--------------+----------------+---------------+----------+----------+",
            "| 1763632800000000000 | dao:1       | agent:a  | user:1   | no-such-model | nobody   | 2     | 400           | 60                | 0                     | 0                 | 460          | 20             | 2             | 1        |          |",
            "+---------------------+-------------+----------+----------+---------------+----------+-------+---------------+-------------------+-----------------------+-------------------+--------------+----------------+---------------+----------+----------+",
        ])
    );
}

#[test]
fn vm_gap_spans_keep_only_complete_possible_gap_notices() {
    let event = |id: &str, kind: &str, vm: Option<&str>, span: Option<(i64, i64)>| {
        record(
            Dataset::VmEvents,
            &[
                ("event_id", s(id)),
                ("timestamp", Value::Ts(at(1))),
                ("kind", s(kind)),
                ("vm_id", vm.map_or(Value::Null, s)),
                ("last_sent", span.map_or(Value::Null, |(a, _)| Value::Ts(a))),
                (
                    "resume_time",
                    span.map_or(Value::Null, |(_, b)| Value::Ts(b)),
                ),
            ],
        )
    };
    let got = run(
        Dataset::VmEvents,
        tally_pipeline::rules::VM_GAP_SPANS,
        3,
        &[
            event("1", "possible_gap", Some("vm-1"), Some((100, 200))),
            event("2", "possible_gap", Some("vm-2"), None),
            event("3", "started", Some("vm-1"), Some((1, 2))),
            event("4", "possible_gap", None, Some((5, 6))),
        ],
    );
    assert_eq!(
        got,
        table(&[
            "+-------+-----------+-------------+",
            "| vm_id | last_sent | resume_time |",
            "+-------+-----------+-------------+",
            "| vm-1  | 100       | 200         |",
            "+-------+-----------+-------------+",
        ])
    );
}

#[test]
fn vm_samples_come_in_vm_and_time_order() {
    let sample = |customer: &str, vm: &str, secs: i64, cpu: i64| {
        record(
            Dataset::VmMetrics,
            &[
                ("customer_id", s(customer)),
                ("vm_id", s(vm)),
                ("timestamp", Value::Ts(secs * 1_000_000_000)),
                ("cpu_time_nanos", Value::I64(cpu)),
            ],
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hour.parquet");
    let records = [
        sample("c", "vm-2", 5, 50),
        sample("c", "vm-1", 9, 90),
        sample("c", "vm-1", 3, 30),
    ];
    write(
        &path,
        &records_to_batch(Dataset::VmMetrics, records.iter()).unwrap(),
    );
    // Its own order, not one added here: the file runs as it is.
    let out = sql_over_file(
        Arc::new(PriceCatalogue::embedded()),
        &path,
        tally_pipeline::rules::VM_SAMPLES,
        RollupMemory::unreported(64 << 20),
    )
    .unwrap();
    let schema = out.schema();
    let cols: Vec<usize> = ["vm_id", "ts", "cpu_time_nanos"]
        .iter()
        .map(|c| schema.index_of(c).unwrap())
        .collect();
    let out = out.project(&cols).unwrap();
    assert_eq!(
        pretty_format_batches(&[out]).unwrap().to_string(),
        table(&[
            "+-------+------------+----------------+",
            "| vm_id | ts         | cpu_time_nanos |",
            "+-------+------------+----------------+",
            "| vm-1  | 3000000000 | 30             |",
            "| vm-1  | 9000000000 | 90             |",
            "| vm-2  | 5000000000 | 50             |",
            "+-------+------------+----------------+",
        ])
    );
}
