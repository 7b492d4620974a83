//! HTTP ingest: `POST /v1/events/{subject}` and `POST /usage/ingest`.
//!
//! The answer comes after the WAL fsync: `{"accepted","duplicates","rejected"}`.

pub mod body;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

use tally_pipeline::component::{Component, Context, Handle};

use arrow::array::BooleanArray;
use tally_pipeline::access::limits::{OverRate, RateLimiter};
use tally_pipeline::access::Access;
use tally_pipeline::batch::{Columns, Row, Rows};
use tally_pipeline::http_reply::retry_after;
use tally_pipeline::tap::PayloadTap;
use tally_pipeline::{IngestError, IngestReport, Pipeline, Rejection};

use crate::events::Subject;
use body::Item;

pub const SOURCE: &str = "http";

const MAX_BODY_BYTES: usize = 32 << 20;

/// Request limits of every HTTP route (`[http]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    #[arg(help = tally_pipeline::config::help("Largest request body accepted, in bytes.", MAX_BODY_BYTES), long, env = "TALLY_MAX_BODY_BYTES")]
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
}

impl HttpArgs {
    /// The largest request body, in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes.unwrap_or(MAX_BODY_BYTES)
    }
}

#[derive(Clone)]
struct HttpIngest {
    pipeline: Pipeline,
    tap: Option<Arc<dyn PayloadTap>>,
    limits: Option<Arc<RateLimiter>>,
}

/// HTTP ingest: `tap` sees every accepted, non-duplicate payload; `limits`
/// holds each tenant to its rate (`--tenant-rate`).
pub struct Http {
    pub tap: Option<Arc<dyn PayloadTap>>,
    pub limits: Option<Arc<RateLimiter>>,
}

#[async_trait::async_trait]
impl Component for Http {
    const NAME: &'static str = "HTTP ingest";
    /// Its routes: it runs nothing of its own.
    type Running = Router;
    type Error = std::convert::Infallible;

    async fn start(self, ctx: &Context) -> Result<(Handle, Router), Self::Error> {
        let routes = router(ctx.pipeline.clone(), self.tap, self.limits);
        Ok((Handle::Idle, routes))
    }
}

/// The ingest routes. Every request needs an [`Access`] (the server's auth
/// layer sets it).
pub fn router(
    pipeline: Pipeline,
    tap: Option<Arc<dyn PayloadTap>>,
    limits: Option<Arc<RateLimiter>>,
) -> Router {
    Router::new()
        .route("/v1/events/{subject}", post(ingest_subject))
        .route("/usage/ingest", post(ingest_usage_summary))
        .with_state(HttpIngest {
            pipeline,
            tap,
            limits,
        })
}

async fn ingest_subject(
    State(state): State<HttpIngest>,
    Extension(access): Extension<Access>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(subject) = Subject::from_name(&subject) else {
        let known: Vec<_> = Subject::ALL.iter().map(|s| s.name()).collect();
        return error_response(
            StatusCode::NOT_FOUND,
            "Unknown subject",
            format!(
                "unknown subject {subject:?}; known subjects: {}",
                known.join(", ")
            ),
        );
    };
    ingest(&state, &access, subject, &headers, &body).await
}

async fn ingest_usage_summary(
    State(state): State<HttpIngest>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ingest(&state, &access, Subject::ChatUsageSummary, &headers, &body).await
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("ndjson") || ct.contains("jsonl") || ct.contains("json-seq"))
}

async fn ingest(
    state: &HttpIngest,
    access: &Access,
    subject: Subject,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let items = match body::split(body, is_ndjson(headers)) {
        Ok(items) => items,
        Err(body::InvalidBody(detail)) => {
            return error_response(StatusCode::BAD_REQUEST, "Invalid request body", detail)
        }
    };
    let dataset = subject.dataset();
    // Each event is decoded into one row, checked and appended to the
    // request's columns; an event that fails is rejected alone.
    let mut rows = Rows::new(dataset, items.len());
    let mut row = Row::new(dataset);
    let mut kept = Kept::default();
    let mut rejections = Vec::new();
    // Records refused for their tenant, and the first reason.
    let mut refused_tenant: (usize, Option<String>) = (0, None);
    for (index, item) in items.iter().enumerate() {
        let result = match item {
            Item::Event { event, .. } => subject.decode_into(event, &mut row).map_err(|e| e.0),
            Item::Unreadable { error, .. } => Err(error.clone()),
        };
        let result = result.and_then(|()| match access.refuse_row(dataset, row.tenant()) {
            None => rows.push(&row).map_err(|e| e.to_string()),
            Some(reason) => {
                refused_tenant.0 += 1;
                refused_tenant.1.get_or_insert_with(|| reason.clone());
                Err(reason)
            }
        });
        match result {
            Ok(()) => {
                kept.indexes.push(index);
                if state.limits.is_some() {
                    kept.tenants.push(row.tenant().map(str::to_owned));
                }
                // The payload is kept for the tap alone.
                if state.tap.is_some() {
                    kept.payloads.push(item.payload());
                }
            }
            Err(reason) => rejections.push(Rejection {
                index: Some(index),
                subject: Some(subject.name().to_string()),
                dataset: Some(dataset),
                reason,
                payload: item.payload(),
            }),
        }
    }
    drop(row);
    drop(items);
    // Every record is another tenant's: the request as a whole may not.
    if let (n, Some(reason)) = &refused_tenant {
        if rows.is_empty() && *n == rejections.len() {
            return error_response(StatusCode::FORBIDDEN, "forbidden", reason.clone());
        }
    }
    let mut columns = rows.finish();
    let over_rate = match &state.limits {
        Some(limits) => kept.within_rate(limits, &mut columns),
        None => Vec::new(),
    };
    if columns.rows() == 0 && rejections.is_empty() {
        if let Some((_, e)) = over_rate.first() {
            let mut r = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                e.to_string(),
            );
            set_retry_after(&mut r, &over_rate);
            return r;
        }
    }
    match state
        .pipeline
        .ingest_columns(SOURCE, columns, rejections)
        .await
    {
        Ok(mut report) => {
            if let Some(tap) = &state.tap {
                for (payload, stored) in kept.payloads.iter().zip(&report.stored_flags) {
                    if *stored {
                        tap.offer(subject.name(), payload.as_bytes());
                    }
                }
            }
            // Over-rate records are not kept: the sender sends them again.
            report
                .rejected
                .extend(over_rate.iter().map(|(i, e)| (Some(*i), e.to_string())));
            report.rejected.sort_by_key(|(i, _)| *i);
            let mut r = (StatusCode::OK, Json(report_json(&report))).into_response();
            set_retry_after(&mut r, &over_rate);
            r
        }
        Err(e) => ingest_error_response(&e),
    }
}

/// Of each row appended to a request's columns, in order: its index in the
/// request, its tenant (when rates are limited) and its payload (for the
/// tap).
#[derive(Default)]
struct Kept {
    indexes: Vec<usize>,
    tenants: Vec<Option<String>>,
    payloads: Vec<String>,
}

impl Kept {
    /// Drops the rows of every tenant over its rate from `columns` (and
    /// from `self`), and returns their request indexes with the refusal.
    fn within_rate(
        &mut self,
        limits: &RateLimiter,
        columns: &mut Columns,
    ) -> Vec<(usize, OverRate)> {
        let mut per_tenant: BTreeMap<&str, u64> = BTreeMap::new();
        for t in &self.tenants {
            *per_tenant
                .entry(t.as_deref().unwrap_or_default())
                .or_default() += 1;
        }
        let refused: BTreeMap<String, OverRate> = per_tenant
            .into_iter()
            .filter_map(|(t, n)| limits.take(t, n).err().map(|e| (t.to_string(), e)))
            .collect();
        if refused.is_empty() {
            return Vec::new();
        }
        let mut over = Vec::new();
        let keep: Vec<bool> = self
            .tenants
            .iter()
            .zip(&self.indexes)
            .map(
                |(t, &i)| match refused.get(t.as_deref().unwrap_or_default()) {
                    Some(e) => {
                        over.push((i, e.clone()));
                        false
                    }
                    None => true,
                },
            )
            .collect();
        let mut flags = keep.iter();
        self.indexes.retain(|_| *flags.next().unwrap_or(&false));
        if !self.payloads.is_empty() {
            let mut flags = keep.iter();
            self.payloads.retain(|_| *flags.next().unwrap_or(&false));
        }
        *columns = columns.filter(&BooleanArray::from(keep));
        over
    }
}

fn set_retry_after(r: &mut Response, over: &[(usize, OverRate)]) {
    if let Some(secs) = over.iter().map(|(_, e)| e.retry_after.as_secs()).max() {
        retry_after(r, secs);
    }
}

fn report_json(report: &IngestReport) -> serde_json::Value {
    let rejected: Vec<_> = report
        .rejected
        .iter()
        .map(|(index, error)| json!({"index": index, "error": error}))
        .collect();
    json!({
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": rejected,
    })
}

/// The HTTP answer to a pipeline refusal: 429 with `Retry-After` when a queue
/// is full, 503 when the WAL cannot take writes.
pub fn ingest_error_response(e: &IngestError) -> Response {
    match e {
        IngestError::QueueFull(q) => {
            let mut r = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                q.to_string(),
            );
            retry_after(&mut r, 1);
            r
        }
        IngestError::Wal(w) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            w.to_string(),
        ),
        IngestError::Relay(r) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            format!("the Kafka relay did not take the records: {r}"),
        ),
    }
}

pub use tally_pipeline::http_reply::error_response;
