//! `meter('slug')`: a meter's events as a table, one row per event of its
//! type (from its `eventFrom` on) with what the meter reads from it:
//!
//! | column | what |
//! |---|---|
//! | `tenant`, `time`, `subject`, `source`, `id` | the event's |
//! | `value` | `1.0` for `COUNT`; the value's text for `UNIQUE_COUNT`; its number otherwise |
//! | one per `groupBy` key | the key's value as text |
//! | `unreadable` | why the meter counts nothing of the event (its value is missing, or not a number), NULL when it counts it |
//!
//! It is a view over `events`, by the meter's definition at the time the
//! statement is planned.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::logical_expr::{col, lit, when, Expr, LogicalPlanBuilder, ScalarUDF};
use datafusion::prelude::cast;
use tally_pipeline::rules::meter::{Aggregation, Meter, Unreadable};

/// Finds a meter by slug (or id).
pub type MeterLookup = Arc<dyn Fn(&str) -> Option<Meter> + Send + Sync>;

pub struct MeterFunction {
    pub events: Arc<dyn TableProvider>,
    pub meters: MeterLookup,
    /// `json_text`, `json_number`.
    pub json: [ScalarUDF; 2],
}

impl std::fmt::Debug for MeterFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("meter()")
    }
}

impl MeterFunction {
    /// The view of one meter.
    pub fn view(&self, meter: &Meter) -> Result<ViewTable> {
        let data = || col("data");
        let text = |path: &str| self.json[0].call(vec![data(), lit(path.to_string())]);
        let number = |path: &str| self.json[1].call(vec![data(), lit(path.to_string())]);
        let missing = lit(Unreadable::Missing.to_string());
        let not_a_number = lit(Unreadable::NotANumber.to_string());
        let no_reason = cast(
            lit(ScalarValue::Utf8(None)),
            arrow::datatypes::DataType::Utf8,
        );
        let (value, unreadable) = match (meter.aggregation, &meter.value) {
            (Aggregation::Count, _) | (_, None) => (lit(1.0f64), no_reason),
            (Aggregation::UniqueCount, Some(p)) => (
                text(p.as_str()),
                when(text(p.as_str()).is_null(), missing).end()?,
            ),
            (_, Some(p)) => (
                number(p.as_str()),
                when(text(p.as_str()).is_null(), missing)
                    .when(number(p.as_str()).is_null(), not_a_number)
                    .end()?,
            ),
        };
        let mut filter = col("type").eq(lit(meter.def.event_type.clone()));
        if let Some(from) = meter.event_from {
            filter = filter
                .and(cast(col("timestamp"), arrow::datatypes::DataType::Int64).gt_eq(lit(from)));
        }
        let mut columns: Vec<Expr> = vec![
            cast(col("tenant"), arrow::datatypes::DataType::Utf8).alias("tenant"),
            col("timestamp").alias("time"),
            col("subject"),
            cast(col("source"), arrow::datatypes::DataType::Utf8).alias("source"),
            col("id"),
            value.alias("value"),
        ];
        for (key, path) in &meter.group_by {
            columns.push(text(path.as_str()).alias(key.as_str()));
        }
        columns.push(unreadable.alias("unreadable"));
        let plan =
            LogicalPlanBuilder::scan("events", provider_as_source(self.events.clone()), None)?
                .filter(filter)?
                .project(columns)?
                .build()?;
        Ok(ViewTable::new(plan, None))
    }
}

impl TableFunctionImpl for MeterFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let slug = match args.exprs() {
            [Expr::Literal(v, _)] => v.try_as_str().flatten().map(str::to_string),
            _ => None,
        };
        let Some(slug) = slug else {
            return plan_err!("meter() takes one argument: a meter's slug, as a string, e.g. meter('api_requests')");
        };
        let Some(meter) = (self.meters)(&slug) else {
            return plan_err!("meter({slug:?}): there is no meter with this slug or id");
        };
        Ok(Arc::new(self.view(&meter)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    use tally_pipeline::batch::{records_to_batch, schema};
    use tally_pipeline::rules::meter::MeterDef;
    use tally_pipeline::{Dataset, RecordBuilder, Value};

    fn event(id: &str, kind: &str, subject: &str, data: &str) -> tally_pipeline::Record {
        let mut r = RecordBuilder::new(Dataset::Events);
        r.set("id", id)
            .set("timestamp", Value::Ts(1_000))
            .set("tenant", "acme")
            .set("source", "src")
            .set("type", kind)
            .set("subject", subject)
            .set("specversion", "1.0")
            .set("data", data)
            .set("ingested_at", Value::Ts(2_000));
        r.build().unwrap()
    }

    fn meter(v: serde_json::Value) -> Meter {
        Meter::check(serde_json::from_value::<MeterDef>(v).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_meters_table_reads_what_the_meter_reads_and_says_why_not() {
        let rows = [
            event(
                "a",
                "req",
                "s1",
                r#"{"ms": 12, "route": "/x", "user": "u1"}"#,
            ),
            event("b", "req", "s2", r#"{"ms": "7.5", "route": "/y"}"#),
            event(
                "c",
                "req",
                "s1",
                r#"{"ms": "slow", "route": "/x", "user": "u2"}"#,
            ),
            event("d", "req", "s1", r#"{"route": "/z", "user": null}"#),
            event("e", "other", "s1", r#"{"ms": 1}"#),
        ];
        let batch = records_to_batch(Dataset::Events, rows.iter()).unwrap();
        let events =
            Arc::new(MemTable::try_new(schema(Dataset::Events), vec![vec![batch]]).unwrap());
        let meters = [
            meter(
                serde_json::json!({"slug": "latency", "eventType": "req", "aggregation": "SUM",
                "valueProperty": "$.ms", "groupBy": {"route": "$.route"}}),
            ),
            meter(serde_json::json!({"slug": "users", "eventType": "req",
                "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user"})),
        ];
        let ctx = SessionContext::new();
        for udf in crate::sql::json::json_udfs() {
            ctx.register_udf(udf);
        }
        ctx.register_udtf(
            "meter",
            Arc::new(MeterFunction {
                events,
                meters: Arc::new(move |s: &str| meters.iter().find(|m| m.def.slug == s).cloned()),
                json: crate::sql::json::json_udfs(),
            }),
        );
        let run = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let out = ctx.sql(sql).await?.collect().await?;
                Ok::<_, datafusion::error::DataFusionError>(
                    pretty_format_batches(&out).unwrap().to_string(),
                )
            }
        };
        assert_eq!(
            run("SELECT id, subject, value, route, unreadable FROM meter('latency') ORDER BY id")
                .await
                .unwrap(),
            [
                "+----+---------+-------+-------+---------------------------+",
                "| id | subject | value | route | unreadable                |",
                "+----+---------+-------+-------+---------------------------+",
                "| a  | s1      | 12.0  | /x    |                           |",
                "| b  | s2      | 7.5   | /y    |                           |",
                "| c  | s1      |       | /x    | the value is not a number |",
                "| d  | s1      |       | /z    | the value is missing      |",
                "+----+---------+-------+-------+---------------------------+",
            ]
            .join("\n")
        );
        // JSON null is no value, as the meter reads it.
        assert_eq!(
            run("SELECT id, value, unreadable FROM meter('users') ORDER BY id")
                .await
                .unwrap(),
            [
                "+----+-------+----------------------+",
                "| id | value | unreadable           |",
                "+----+-------+----------------------+",
                "| a  | u1    |                      |",
                "| b  |       | the value is missing |",
                "| c  | u2    |                      |",
                "| d  |       | the value is missing |",
                "+----+-------+----------------------+",
            ]
            .join("\n")
        );
        let e = run("SELECT * FROM meter('nope')").await.unwrap_err();
        assert!(e.to_string().contains("no meter"), "{e}");
        let e = run("SELECT * FROM meter(1)").await.unwrap_err();
        assert!(e.to_string().contains("a meter's slug"), "{e}");
        let e = run("SELECT json_text('{}', 'x') FROM meter('users')")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a JSONPath"), "{e}");
    }
}
