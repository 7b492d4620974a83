//! `sql/events.sql` and `sql/meter_events.sql` on a few events, against the
//! tables written out here.

use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use datafusion::common::ParamValues;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use tally_pipeline::batch::{records_to_batch, schema};
use tally_pipeline::{Dataset, Record, RecordBuilder, Value};

/// 2026-12-06T10:00:00Z, and minutes after it.
const T0: i64 = 1_796_551_200_000_000_000;
const MIN: i64 = 60_000_000_000;

fn event(id: &str, tenant: &str, kind: &str, subject: &str, at_min: i64, in_min: i64) -> Record {
    let mut r = RecordBuilder::new(Dataset::Events);
    r.set("id", id)
        .set("timestamp", Value::Ts(T0 + at_min * MIN))
        .set("tenant", tenant)
        .set("source", "src")
        .set("type", kind)
        .set("subject", subject)
        .set("specversion", "1.0")
        .set("data", format!("{{\"n\":{at_min}}}"))
        .set("ingested_at", Value::Ts(T0 + in_min * MIN));
    r.build().unwrap()
}

fn context() -> SessionContext {
    let rows = [
        event("a", "acme", "req", "cust-1", 0, 10),
        event("b", "acme", "req", "cust-2", 5, 30),
        event("c", "acme", "tok", "cust-1", 7, 20),
        event("d", "globex", "req", "cust-1", 8, 40),
        event("e", "acme", "req", "cust-12", 60, 50),
    ];
    let ctx = SessionContext::new();
    let batch = records_to_batch(Dataset::Events, rows.iter()).unwrap();
    let table = MemTable::try_new(schema(Dataset::Events), vec![vec![batch]]).unwrap();
    ctx.register_table("events", Arc::new(table)).unwrap();
    ctx
}

async fn run(ctx: &SessionContext, sql: &str, params: Vec<ScalarValue>) -> String {
    let out = ctx
        .sql(sql)
        .await
        .unwrap()
        .with_param_values(ParamValues::List(
            params.into_iter().map(Into::into).collect(),
        ))
        .unwrap()
        .collect()
        .await
        .unwrap();
    pretty_format_batches(&out).unwrap().to_string()
}

fn table(lines: &[&str]) -> String {
    lines.join("\n")
}

#[tokio::test]
async fn events_of_a_tenant_newest_ingested_first_filtered_and_limited() {
    let ctx = context();
    let ask = |from: Option<i64>, id: Option<&str>, subject: Option<&str>, limit: i64| {
        let ctx = ctx.clone();
        let text = |v: Option<&str>| ScalarValue::Utf8(v.map(str::to_string));
        let params = vec![
            text(Some("acme")),
            ScalarValue::Int64(from.map(|m| T0 + m * MIN)),
            ScalarValue::Int64(None),
            ScalarValue::Int64(None),
            ScalarValue::Int64(None),
            text(id),
            text(subject),
            ScalarValue::Int64(Some(limit)),
        ];
        async move {
            let sql = format!("SELECT id, subject FROM ({}) AS e", super::events::EVENTS);
            run(&ctx, &sql, params).await
        }
    };
    // Newest ingested first: e (50), b (30), c (20), a (10); globex's d never.
    assert_eq!(
        ask(None, None, None, 100).await,
        table(&[
            "+----+---------+",
            "| id | subject |",
            "+----+---------+",
            "| e  | cust-12 |",
            "| b  | cust-2  |",
            "| c  | cust-1  |",
            "| a  | cust-1  |",
            "+----+---------+",
        ])
    );
    // Part of a subject; the event time's lower bound; the limit.
    assert_eq!(
        ask(Some(1), None, Some("cust-1"), 100).await,
        table(&[
            "+----+---------+",
            "| id | subject |",
            "+----+---------+",
            "| e  | cust-12 |",
            "| c  | cust-1  |",
            "+----+---------+",
        ])
    );
    assert_eq!(
        ask(None, Some("b"), None, 1).await,
        table(&[
            "+----+---------+",
            "| id | subject |",
            "+----+---------+",
            "| b  | cust-2  |",
            "+----+---------+",
        ])
    );
}

#[tokio::test]
async fn a_meters_events_are_its_tenants_of_its_type() {
    let ctx = context();
    ctx.register_table("source", ctx.table_provider("events").await.unwrap())
        .unwrap();
    let params = vec![
        ScalarValue::Utf8(Some("acme".into())),
        ScalarValue::Utf8(Some("req".into())),
    ];
    let sql = format!(
        "SELECT (ts - {T0}) / {MIN} AS minute, subject, data FROM ({}) AS m ORDER BY ts",
        super::meters::query::METER_EVENTS
    );
    assert_eq!(
        run(&ctx, &sql, params).await,
        table(&[
            "+--------+---------+----------+",
            "| minute | subject | data     |",
            "+--------+---------+----------+",
            "| 0      | cust-1  | {\"n\":0}  |",
            "| 5      | cust-2  | {\"n\":5}  |",
            "| 60     | cust-12 | {\"n\":60} |",
            "+--------+---------+----------+",
        ])
    );
}
