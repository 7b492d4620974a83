//! `budget-check`: `--budgets` budgets (10,000 by default) on tally, LLM
//! usage of this month under them (`--events`), then `--queries` calls of
//! `GET /v1/budgets/check` one after another on one connection, as an LLM
//! proxy makes before each request; the latency of each is measured here.
//!
//! The PostgreSQL peer (with `DATABASE_URL`) holds the same budgets' state
//! in a table indexed by tenant and answers the same checks with one
//! prepared statement on one connection: the home-grown way.

use std::time::{Duration, Instant};

use chrono::Datelike;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct BudgetReport {
    pub budgets: usize,
    pub events: u64,
    /// Creating the budgets, `concurrency` POSTs at a time.
    pub create_per_second: f64,
    /// One `GET /v1/budgets`: a fresh evaluation of every budget, listed.
    pub evaluate_all_ms: f64,
    pub checks: usize,
    pub check: Latency,
    /// Checks that found at least one budget.
    pub checks_matching: usize,
    pub postgres: Option<Latency>,
    pub postgres_skipped: Option<String>,
    /// PostgreSQL's p50 and p99 over tally's (above 1: tally is faster).
    pub p50_postgres_over_tally: Option<f64>,
    pub p99_postgres_over_tally: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }
}

/// The scope of budget `i`: 74 % a tenant, 20 % a tenant's agent, 5 % an
/// actor of a tenant, 1 % an agent of any tenant.
fn scope(i: usize, tenants: usize) -> Value {
    let t = format!("microdao:{}", i % tenants);
    let a = format!("agent:{}", i % 7);
    match i % 100 {
        0..=73 => json!({"microdao_id": t}),
        74..=93 => json!({"microdao_id": t, "agent_id": a}),
        94..=98 => json!({"microdao_id": t, "actor_id": format!("user:{}", i % 11)}),
        _ => json!({"agent_id": a}),
    }
}

/// The parameters of check `i`.
fn check_params(i: usize, tenants: usize) -> [String; 3] {
    [
        format!("microdao:{}", (i * 7919) % tenants),
        format!("agent:{}", i % 7),
        format!("user:{}", i % 11),
    ]
}

pub async fn run(
    base: &str,
    budgets: usize,
    events: u64,
    checks: usize,
    concurrency: usize,
    database_url: Option<&str>,
) -> anyhow::Result<BudgetReport> {
    let client = reqwest::Client::new();
    let tenants = (budgets / 2).max(1);
    let now = chrono::Utc::now();
    let month_start = now
        .date_naive()
        .with_day0(0)
        .expect("day 1")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let span = (now - month_start).num_seconds().max(60);
    // This month's usage, 5,000 events a request.
    let mut sent = 0u64;
    while sent < events {
        let n = 5000.min(events - sent);
        let body: String = (sent..sent + n)
            .map(|i| {
                let t = month_start + chrono::Duration::seconds((i as i64 * 7919) % span);
                format!(
                    "{}\n",
                    json!({"event_id": format!("b{i}"), "timestamp": t.to_rfc3339(),
                    "actor_id": format!("user:{}", i % 11), "actor_type": "human",
                    "agent_id": format!("agent:{}", i % 7), "microdao_id": format!("microdao:{}", i as usize % tenants),
                    "model": "gpt-4.1-mini", "provider": "openai", "prompt_tokens": 1000 + i % 500,
                    "completion_tokens": 200, "total_tokens": 1200 + i % 500, "latency_ms": 500, "success": true})
                )
            })
            .collect();
        let r = client
            .post(format!("{base}/v1/events/usage.llm"))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "ingest: {}", r.status());
        sent += n;
    }

    let started = Instant::now();
    let created = futures::stream::iter(0..budgets)
        .map(|i| {
            let client = client.clone();
            async move {
                let body = json!({"name": format!("budget {i}"), "scope": scope(i, tenants),
                    "metric": "cost_usd", "period": "month", "limit": 5.0 + (i % 50) as f64});
                let r = client
                    .post(format!("{base}/v1/budgets"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().as_u16() == 201, "create: {}", r.status());
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<anyhow::Result<()>>>()
        .await;
    for r in created {
        r?;
    }
    let create_per_second = budgets as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let listed: Value = client
        .get(format!("{base}/v1/budgets"))
        .send()
        .await?
        .json()
        .await?;
    let evaluate_all_ms = started.elapsed().as_secs_f64() * 1000.0;
    let states = listed["budgets"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(states.len() == budgets, "listed {} budgets", states.len());
    // The check index is rebuilt by the periodic evaluation: wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = client
            .get(format!(
                "{base}/v1/budgets/check?microdao_id=microdao:0&agent_id=agent:0"
            ))
            .send()
            .await?
            .json()
            .await?;
        if v["budgets"].as_array().is_some_and(|b| b.len() >= 2) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "check never saw the budgets: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut h = Histogram::<u64>::new(3)?;
    let mut matching = 0;
    for i in 0..checks {
        let [t, a, u] = check_params(i, tenants);
        let url = format!("{base}/v1/budgets/check?microdao_id={t}&agent_id={a}&actor_id={u}");
        let at = Instant::now();
        let body = client.get(url).send().await?.bytes().await?;
        h.record(at.elapsed().as_nanos() as u64)?;
        // The body is read, not parsed (PostgreSQL's rows are not either).
        if !body.windows(13).any(|w| w == b"\"budgets\":[]") {
            matching += 1;
        }
    }
    let check = Latency::of(&h);

    let (postgres, postgres_skipped) = match database_url {
        None => (None, Some("DATABASE_URL is not set".to_string())),
        Some(url) => match peer(url, &states, checks, tenants).await {
            Ok(l) => (Some(l), None),
            Err(e) => (
                None,
                Some(format!("PostgreSQL at DATABASE_URL failed: {e:#}")),
            ),
        },
    };
    Ok(BudgetReport {
        budgets,
        events,
        create_per_second,
        evaluate_all_ms,
        checks,
        p50_postgres_over_tally: postgres.as_ref().map(|p| p.p50_us / check.p50_us),
        p99_postgres_over_tally: postgres.as_ref().map(|p| p.p99_us / check.p99_us),
        check,
        checks_matching: matching,
        postgres,
        postgres_skipped,
    })
}

const PG_SCHEMA: &str = "
DROP SCHEMA IF EXISTS tally_bench_budgets CASCADE;
CREATE SCHEMA tally_bench_budgets;
CREATE TABLE tally_bench_budgets.budget_state (
    id text PRIMARY KEY, name text NOT NULL,
    microdao_id text, agent_id text, actor_id text, customer_id text, vm_id text,
    state text NOT NULL, used double precision NOT NULL, budget_limit double precision NOT NULL
);
";
const PG_INDEXES: &str = "
CREATE INDEX ON tally_bench_budgets.budget_state (microdao_id);
CREATE INDEX ON tally_bench_budgets.budget_state (agent_id) WHERE microdao_id IS NULL;
ANALYZE tally_bench_budgets.budget_state;
";
const PG_CHECK: &str = "
SELECT id, name, state, greatest(budget_limit - used, 0) AS remaining
FROM tally_bench_budgets.budget_state
WHERE (microdao_id = $1 OR microdao_id IS NULL)
  AND (agent_id = $2 OR agent_id IS NULL)
  AND (actor_id = $3 OR actor_id IS NULL)
  AND customer_id IS NULL AND vm_id IS NULL";

/// The same budgets' states in PostgreSQL, the same checks.
async fn peer(
    url: &str,
    states: &[Value],
    checks: usize,
    tenants: usize,
) -> anyhow::Result<Latency> {
    let (pg, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    pg.batch_execute(PG_SCHEMA).await?;
    let insert = pg
        .prepare(
            "INSERT INTO tally_bench_budgets.budget_state VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $7, $8)",
        )
        .await?;
    for s in states {
        let scope = |k: &str| s["scope"][k].as_str().map(str::to_string);
        pg.execute(
            &insert,
            &[
                &s["id"].as_str(),
                &s["name"].as_str(),
                &scope("microdao_id"),
                &scope("agent_id"),
                &scope("actor_id"),
                &s["state"].as_str(),
                &s["used"].as_f64(),
                &s["limit"].as_f64(),
            ],
        )
        .await?;
    }
    pg.batch_execute(PG_INDEXES).await?;
    let check = pg.prepare(PG_CHECK).await?;
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..checks {
        let [t, a, u] = check_params(i, tenants);
        let at = Instant::now();
        let rows = pg.query(&check, &[&t, &a, &u]).await?;
        h.record(at.elapsed().as_nanos() as u64)?;
        std::hint::black_box(rows);
    }
    Ok(Latency::of(&h))
}
