//! `sql/raw_once.sql` (each key's first stored copy) on a few rows.

use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;

/// 2025-11-20T10:00:00Z.
const H10: i64 = 1_763_632_800_000_000_000;
const MIN: i64 = 60_000_000_000;

#[tokio::test]
async fn raw_once_keeps_the_first_stored_copy_of_each_key() {
    // e1 stored twice (the later copy differs), e2 once, e3 outside the range.
    let rows = [("e1", 5, 1), ("e2", 6, 2), ("e1", 7, 99), ("e3", 70, 3)];
    let schema = Arc::new(Schema::new(vec![
        Field::new("microdao_id", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("prompt_tokens", DataType::Int32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["dao:1"; rows.len()])),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| H10 + r.1 * MIN))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    let ctx = SessionContext::new();
    ctx.register_batch("raw", batch).unwrap();
    let within = format!(
        "CAST(timestamp AS BIGINT) >= {} AND CAST(timestamp AS BIGINT) < {}",
        H10,
        H10 + 60 * MIN
    );
    let sql = super::raw_once(&["microdao_id", "event_id"], &within);
    let out = ctx
        .sql(&format!(
            "SELECT event_id, prompt_tokens FROM ({sql}) ORDER BY event_id"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        pretty_format_batches(&out).unwrap().to_string(),
        [
            "+----------+---------------+",
            "| event_id | prompt_tokens |",
            "+----------+---------------+",
            "| e1       | 1             |",
            "| e2       | 2             |",
            "+----------+---------------+",
        ]
        .join("\n")
    );
}
