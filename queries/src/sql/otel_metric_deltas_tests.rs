//! `otel_metric_deltas.sql` on a few points: cumulative streams with a new
//! start and a drop (resets), a delta stream, a cumulative histogram.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;

/// (series, temporality, kind, start, time, value, count, sum)
type Point = (
    &'static str,
    &'static str,
    &'static str,
    i64,
    i64,
    Option<f64>,
    Option<i64>,
    Option<f64>,
);

#[tokio::test]
async fn cumulative_streams_become_deltas_across_resets() {
    #[rustfmt::skip]
    let points: [Point; 11] = [
        // Cumulative: 10, 15, 15; then a new start (4, 9); then a drop.
        ("c", "cumulative", "sum", 100, 1, Some(10.0), None, None),
        ("c", "cumulative", "sum", 100, 2, Some(15.0), None, None),
        ("c", "cumulative", "sum", 100, 3, Some(15.0), None, None),
        ("c", "cumulative", "sum", 200, 4, Some(4.0), None, None),
        ("c", "cumulative", "sum", 200, 5, Some(9.0), None, None),
        ("c", "cumulative", "sum", 200, 6, Some(2.0), None, None),
        // Delta: each point its own.
        ("d", "delta", "sum", 0, 1, Some(3.0), None, None),
        ("d", "delta", "sum", 0, 2, Some(4.0), None, None),
        // A cumulative histogram: (2, 20), (5, 50), then a new start (1, 7).
        ("h", "cumulative", "histogram", 100, 1, None, Some(2), Some(20.0)),
        ("h", "cumulative", "histogram", 100, 2, None, Some(5), Some(50.0)),
        ("h", "cumulative", "histogram", 300, 3, None, Some(1), Some(7.0)),
    ];
    let strings = |f: fn(&Point) -> &'static str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(points.iter().map(f)))
    };
    let times = |f: fn(&Point) -> i64| -> ArrayRef {
        Arc::new(
            TimestampNanosecondArray::from_iter_values(points.iter().map(f)).with_timezone("UTC"),
        )
    };
    let batch = RecordBatch::try_from_iter(vec![
        ("tenant", strings(|_| "acme")),
        ("name", strings(|p| p.0)),
        ("unit", strings(|_| "1")),
        ("kind", strings(|p| p.2)),
        ("temporality", strings(|p| p.1)),
        ("series", strings(|p| p.0)),
        ("attributes", strings(|_| "{}")),
        ("resource", strings(|_| "{}")),
        ("timestamp", times(|p| p.4)),
        ("start_time", times(|p| p.3)),
        (
            "value",
            Arc::new(Float64Array::from_iter(points.iter().map(|p| p.5))) as ArrayRef,
        ),
        (
            "count",
            Arc::new(Int64Array::from_iter(points.iter().map(|p| p.6))) as ArrayRef,
        ),
        (
            "sum",
            Arc::new(Float64Array::from_iter(points.iter().map(|p| p.7))) as ArrayRef,
        ),
    ])
    .unwrap();
    let ctx = SessionContext::new();
    ctx.register_batch("otel_metrics", batch).unwrap();
    let out = ctx
        .sql(&format!(
            "SELECT series, CAST(timestamp AS BIGINT) AS t, value, count, sum
             FROM ({}) ORDER BY series, t",
            super::OTEL_METRIC_DELTAS
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        pretty_format_batches(&out).unwrap().to_string(),
        [
            "+--------+---+-------+-------+------+",
            "| series | t | value | count | sum  |",
            "+--------+---+-------+-------+------+",
            "| c      | 1 | 10.0  |       |      |",
            "| c      | 2 | 5.0   |       |      |",
            "| c      | 3 | 0.0   |       |      |",
            "| c      | 4 | 4.0   |       |      |",
            "| c      | 5 | 5.0   |       |      |",
            "| c      | 6 | 2.0   |       |      |",
            "| d      | 1 | 3.0   |       |      |",
            "| d      | 2 | 4.0   |       |      |",
            "| h      | 1 |       | 2     | 20.0 |",
            "| h      | 2 |       | 3     | 30.0 |",
            "| h      | 3 |       | 1     | 7.0  |",
            "+--------+---+-------+-------+------+",
        ]
        .join("\n")
    );
}
