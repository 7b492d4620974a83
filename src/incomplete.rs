//! The marker on answers that miss rows: while an hour's raw rows are lost
//! to damage and no stored rollup holds the hour, every answer of the read
//! APIs says so. The response carries `Tally-Incomplete: <dataset> <hour>,
//! …`, and its JSON body `"incomplete": true`: on every row when the body
//! is an array of rows, at the top with `incomplete_hours` otherwise.
//! Restoring the file (`tally check --repair --from`) clears it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use tally_pipeline::rollup::Rollups;
use tally_pipeline::store::Store;

#[derive(Clone)]
pub struct Lost {
    pub store: Arc<Store>,
    pub rollups: Arc<Rollups>,
    /// Answers read raw rows only (SQL): an hour whose raw rows were lost
    /// counts even when a rollup holds it.
    pub raw_reads: bool,
}

impl Lost {
    /// The same, for answers that read raw rows only.
    pub fn for_raw_reads(&self) -> Lost {
        Lost {
            raw_reads: true,
            ..self.clone()
        }
    }

    /// `<dataset> <hour>` of every hour whose answers are incomplete.
    pub fn hours(&self) -> Vec<String> {
        let hours = if self.raw_reads {
            self.store.all_lost()
        } else {
            self.store.all_incomplete(&self.rollups)
        };
        hours
            .into_iter()
            .map(|(d, h)| {
                format!(
                    "{} {}",
                    d.name(),
                    chrono::DateTime::from_timestamp_nanos(h).format("%Y-%m-%dT%H:00:00Z")
                )
            })
            .collect()
    }
}

/// Adds the marker to a read API's answer while hours are lost.
pub async fn mark(State(lost): State<Lost>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let hours = lost.hours();
    if hours.is_empty() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    if let Ok(v) = HeaderValue::from_str(&hours.join(", ")) {
        parts.headers.insert("tally-incomplete", v);
    }
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return Response::from_parts(parts, body);
    }
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let marked = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(mut rows)) => {
            for row in rows.iter_mut() {
                if let Value::Object(m) = row {
                    m.insert("incomplete".into(), Value::Bool(true));
                }
            }
            Value::Array(rows)
        }
        Ok(Value::Object(mut m)) => {
            m.insert("incomplete".into(), Value::Bool(true));
            m.insert("incomplete_hours".into(), serde_json::json!(hours));
            Value::Object(m)
        }
        _ => return Response::from_parts(parts, Body::from(bytes)),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&marked).expect("JSON serialises")),
    )
}
