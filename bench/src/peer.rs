//! The PostgreSQL peer: the Usage Engine specification's own design (its
//! schema and indexes), loaded with the same events tally got, two ways (one
//! `INSERT … ON CONFLICT DO NOTHING` per event as the specification's
//! consumer does, and `COPY`), then asked the same summary.

use std::time::Instant;

use bytes::Bytes;
use futures::SinkExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_postgres::{Client, NoTls};

use crate::summary::{LlmEvent, SummaryReport};

const SCHEMA_SQL: &str = include_str!("../sql/pg_schema.sql");
const SUMMARY_SQL: &str = include_str!("../sql/pg_summary.sql");

/// The peer's figures, and tally's relative to them.
#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub events: u64,
    /// One `INSERT … ON CONFLICT DO NOTHING` per event, `connections` at once.
    pub insert_per_event_per_second: f64,
    pub connections: usize,
    /// `COPY usage_llm FROM STDIN` in one stream.
    pub copy_per_second: f64,
    pub summary_p50_ms: f64,
    pub summary_p95_ms: f64,
    pub llm_calls_total: i64,
    /// tally's HTTP load rate over the peer's per-event INSERT rate.
    pub tally_load_vs_insert: f64,
    /// tally's HTTP load rate over the peer's COPY rate.
    pub tally_load_vs_copy: f64,
    /// The peer's summary p50 over tally's (above 1: tally is faster).
    pub summary_p50_postgres_over_tally: f64,
}

/// What happened to the peer part of a run.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PeerOutcome {
    Ran(PeerReport),
    Skipped { skipped: String },
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    client
        .batch_execute("SET search_path TO tally_bench; SET synchronous_commit TO on")
        .await?;
    Ok(client)
}

/// Runs the peer, or says why it was skipped (no `url`, or unreachable).
pub async fn run(
    url: Option<&str>,
    events: u64,
    now_s: i64,
    queries: usize,
    connections: usize,
    tally: &SummaryReport,
) -> PeerOutcome {
    let Some(url) = url else {
        return PeerOutcome::Skipped {
            skipped: "DATABASE_URL is not set".into(),
        };
    };
    match run_peer(url, events, now_s, queries, connections, tally).await {
        Ok(r) => PeerOutcome::Ran(r),
        Err(e) => PeerOutcome::Skipped {
            skipped: format!("PostgreSQL at DATABASE_URL failed: {e:#}"),
        },
    }
}

async fn run_peer(
    url: &str,
    events: u64,
    now_s: i64,
    queries: usize,
    connections: usize,
    tally: &SummaryReport,
) -> anyhow::Result<PeerReport> {
    // `connect` already points search_path at tally_bench, made here.
    let client = connect(url).await?;
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS tally_bench CASCADE; CREATE SCHEMA tally_bench; {SCHEMA_SQL}"
        ))
        .await?;

    // 1. The specification's way: one INSERT per event.
    let connections = connections.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections as u64 {
        let client = connect(url).await?;
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare(
                    "INSERT INTO usage_llm (event_id, timestamp, actor_id, actor_type, agent_id, \
                     microdao_id, model, provider, prompt_tokens, completion_tokens, total_tokens, \
                     latency_ms, success) VALUES ($1, $2, $3, 'human', $4, $5, $6, 'openai', $7, \
                     $8, $9, $10, true) ON CONFLICT (event_id) DO NOTHING",
                )
                .await?;
            let mut id = c;
            while id < events {
                let e = LlmEvent::generate(id, now_s);
                client
                    .execute(
                        &insert,
                        &[
                            &e.event_id,
                            &e.timestamp,
                            &e.actor_id,
                            &e.agent_id,
                            &e.microdao_id,
                            &e.model,
                            &e.prompt_tokens,
                            &e.completion_tokens,
                            &e.total_tokens(),
                            &e.latency_ms,
                        ],
                    )
                    .await?;
                id += connections as u64;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let insert_secs = started.elapsed().as_secs_f64();

    // 2. The bulk way: COPY into the emptied table, indexes in place.
    client.batch_execute("TRUNCATE usage_llm").await?;
    let started = Instant::now();
    let sink = client
        .copy_in(
            "COPY usage_llm (event_id, timestamp, actor_id, actor_type, agent_id, microdao_id, \
             model, provider, prompt_tokens, completion_tokens, total_tokens, latency_ms, success) \
             FROM STDIN",
        )
        .await?;
    futures::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 20);
    for id in 0..events {
        let e = LlmEvent::generate(id, now_s);
        buf.push_str(&format!(
            "{}\t{}\t{}\thuman\t{}\t{}\t{}\topenai\t{}\t{}\t{}\t{}\tt\n",
            e.event_id,
            e.timestamp.to_rfc3339(),
            e.actor_id,
            e.agent_id,
            e.microdao_id,
            e.model,
            e.prompt_tokens,
            e.completion_tokens,
            e.total_tokens(),
            e.latency_ms
        ));
        if buf.len() >= 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    let copied = sink.finish().await?;
    anyhow::ensure!(copied == events, "COPY stored {copied} of {events} rows");
    let copy_secs = started.elapsed().as_secs_f64();
    client.batch_execute("ANALYZE usage_llm").await?;

    // 3. The summary, as tally is asked it: the last 24 hours.
    let end = chrono::DateTime::from_timestamp(now_s + 60, 0).unwrap_or_default();
    let start = end - chrono::Duration::hours(24);
    let statements: Vec<_> = SUMMARY_SQL
        .split(';')
        .map(str::trim)
        .filter(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with("--"))
        })
        .collect();
    let mut prepared = Vec::new();
    for s in &statements {
        prepared.push(client.prepare(s).await?);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut calls = 0;
    for _ in 0..queries.max(1) {
        let t = Instant::now();
        for (i, p) in prepared.iter().enumerate() {
            let rows = client.query(p, &[&start, &end]).await?;
            if i == 0 {
                calls = rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0);
            }
        }
        hist.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    let rate = |secs: f64| events as f64 / secs.max(1e-9);
    let tally_rate = tally.events as f64 / tally.load_seconds.max(1e-9);
    let p50_ms = hist.value_at_quantile(0.5) as f64 / 1000.0;
    Ok(PeerReport {
        events,
        insert_per_event_per_second: rate(insert_secs),
        connections,
        copy_per_second: rate(copy_secs),
        summary_p50_ms: p50_ms,
        summary_p95_ms: hist.value_at_quantile(0.95) as f64 / 1000.0,
        llm_calls_total: calls,
        tally_load_vs_insert: tally_rate / rate(insert_secs),
        tally_load_vs_copy: tally_rate / rate(copy_secs),
        summary_p50_postgres_over_tally: p50_ms / tally.p50_ms.max(1e-9),
    })
}
