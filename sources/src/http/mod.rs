//! HTTP ingest: `POST /v1/events/{subject}` and `POST /usage/ingest`.
//!
//! The answer comes after the WAL fsync: `{"accepted","duplicates","rejected"}`.

pub mod body;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

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
}

/// The ingest routes; `tap` sees every accepted, non-duplicate payload.
pub fn router(pipeline: Pipeline, tap: Option<Arc<dyn PayloadTap>>) -> Router {
    Router::new()
        .route("/v1/events/{subject}", post(ingest_subject))
        .route("/usage/ingest", post(ingest_usage_summary))
        .with_state(HttpIngest { pipeline, tap })
}

async fn ingest_subject(
    State(state): State<HttpIngest>,
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
    ingest(&state, subject, &headers, &body).await
}

async fn ingest_usage_summary(
    State(state): State<HttpIngest>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ingest(&state, Subject::ChatUsageSummary, &headers, &body).await
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("ndjson") || ct.contains("jsonl") || ct.contains("json-seq"))
}

async fn ingest(
    state: &HttpIngest,
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
    let mut records = Vec::with_capacity(items.len());
    let mut payloads = Vec::new();
    let mut rejections = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let decoded = match item {
            Item::Event(v) => match subject.decode(&v) {
                Ok(r) => Ok((r, v)),
                Err(e) => Err((v.to_string(), e.0)),
            },
            Item::Unreadable { raw, error } => Err((raw, error)),
        };
        match decoded {
            Ok((r, payload)) => {
                if state.tap.is_some() {
                    payloads.push(payload);
                }
                records.push(r);
            }
            Err((payload, reason)) => rejections.push(Rejection {
                index: Some(index),
                subject: Some(subject.name().to_string()),
                dataset: Some(subject.dataset()),
                reason,
                payload,
            }),
        }
    }
    match state.pipeline.ingest(SOURCE, records, rejections).await {
        Ok(report) => {
            if let Some(tap) = &state.tap {
                for (payload, stored) in payloads.iter().zip(&report.stored_flags) {
                    if *stored {
                        tap.offer(subject.name(), payload.to_string().as_bytes());
                    }
                }
            }
            (StatusCode::OK, Json(report_json(&report))).into_response()
        }
        Err(e) => ingest_error_response(&e),
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
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
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

pub fn error_response(status: StatusCode, error: &str, detail: String) -> Response {
    (status, Json(json!({"error": error, "detail": detail}))).into_response()
}
