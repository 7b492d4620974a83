//! `GET /v1/anomalies`: the anomalies found and the last scan's judgement
//! of each series, from the [`AnomalyBoard`] that the derive side's scan
//! (`tally_derive::anomalies`, which has the method) keeps.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::{json, Value};
use tally_pipeline::access::Access;
use tally_pipeline::clock::{DAY_NS, HOUR_NS};

use crate::alerts::api::{time_param, unknown_params};
use crate::alerts::AlertFeed;
use crate::budgets::model::rfc3339;
use crate::http::validation_response;

/// One (scope, metric, hour) as judged.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub scope: &'static str,
    pub scope_id: String,
    pub metric: &'static str,
    pub hour: String,
    pub value: f64,
    /// `ok`, `anomaly` or `not enough history`.
    pub status: &'static str,
    pub baseline_days: usize,
    pub baseline: Option<f64>,
    pub spread: Option<f64>,
    pub score: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub at: Option<i64>,
    pub checked: Vec<Checked>,
}

/// What the last scan found, as readers see it.
#[derive(Clone)]
pub struct AnomalyBoard(Arc<Board>);

struct Board {
    alerts: AlertFeed,
    threshold: f64,
    last: RwLock<Report>,
}

impl AnomalyBoard {
    pub fn new(alerts: AlertFeed, threshold: f64) -> Self {
        AnomalyBoard(Arc::new(Board {
            alerts,
            threshold,
            last: RwLock::new(Report::default()),
        }))
    }

    /// A scan's judgements.
    pub fn report(&self, report: Report) {
        *self.0.last.write() = report;
    }
}

pub fn router(anomalies: AnomalyBoard) -> Router {
    Router::new()
        .route("/v1/anomalies", get(list))
        .with_state(anomalies)
}

/// `GET /v1/anomalies?since=RFC3339`: the anomalies of hours ending after
/// `since` (default: 24 hours ago), and the last scan's judgement of each
/// series (with "not enough history" where it lacks 3 days).
async fn list(
    State(a): State<AnomalyBoard>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut errors = Vec::new();
    unknown_params(&params, &["since"], &mut errors);
    let since = time_param(
        &params,
        "since",
        tally_pipeline::now_ns() - DAY_NS,
        &mut errors,
    );
    if !errors.is_empty() {
        return validation_response(StatusCode::BAD_REQUEST, "Validation failed", None, errors);
    }
    let found: Vec<Value> =
        a.0.alerts
            .since(i64::MIN)
            .into_iter()
            .filter(|f| f.kind == "anomaly" && f.visible_to(&access))
            .filter_map(|f| serde_json::from_str::<Value>(&f.body).ok())
            .filter(|v| {
                v["hour"]
                    .as_str()
                    .and_then(|h| chrono::DateTime::parse_from_rfc3339(h).ok())
                    .and_then(|h| h.timestamp_nanos_opt())
                    .is_some_and(|h| h + HOUR_NS > since)
            })
            .collect();
    let report = a.0.last.read();
    let checked: Vec<&Checked> = report
        .checked
        .iter()
        .filter(|c| access.covers(Some(&c.scope_id)))
        .collect();
    Json(json!({
        "anomalies": found,
        "checked_at": report.at.map(rfc3339),
        "threshold": a.0.threshold,
        "checked": checked,
    }))
    .into_response()
}
