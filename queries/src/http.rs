//! `POST /v1/sql`: the body is the SQL text; the answer's format follows `Accept`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::format::OutputFormat;
use crate::sql::{QueryError, SqlEngine};

pub fn router(engine: SqlEngine) -> Router {
    Router::new()
        .route("/v1/sql", post(run_sql))
        .route("/v1/billing/vm-usage", get(vm_usage))
        .with_state(engine)
}

async fn run_sql(State(engine): State<SqlEngine>, headers: HeaderMap, body: String) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = OutputFormat::from_accept(accept);
    match engine.query(&body).await {
        Ok(batches) => match format.write(&batches) {
            Ok(bytes) => ([(header::CONTENT_TYPE, format.content_type())], bytes).into_response(),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Result encoding failed",
                e.to_string(),
            ),
        },
        Err(QueryError::Invalid(detail)) => error(StatusCode::BAD_REQUEST, "Invalid query", detail),
        Err(QueryError::Execution(detail)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "Query failed", detail)
        }
    }
}

fn error(status: StatusCode, error: &str, detail: String) -> Response {
    (status, Json(json!({"error": error, "detail": detail}))).into_response()
}

/// `GET /v1/billing/vm-usage?customer_id=&vm_id=&from=&to=&window=hour|day|month`:
/// rollup rows of the windows that start in [`from`, `to`). `from` and `to`
/// are RFC 3339; they default to the 24 hours before now.
async fn vm_usage(
    State(engine): State<SqlEngine>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut errors = Vec::new();
    let window = params.get("window").map(String::as_str).unwrap_or("hour");
    let view = match window {
        "hour" => "vm_usage_hourly",
        "day" => "vm_usage_daily",
        "month" => "vm_usage_monthly",
        other => {
            errors.push(format!(
                "window must be one of hour, day, month, got {other:?}"
            ));
            ""
        }
    };
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let mut time = |name: &str, default: i64| match params.get(name) {
        None => Some(default),
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
        {
            Some(ns) => Some(ns),
            None => {
                errors.push(format!(
                    "{name} must be an RFC 3339 time such as 2024-01-15T10:00:00Z, got {s:?}"
                ));
                None
            }
        },
    };
    let to = time("to", now);
    let from = time("from", now - 86_400_000_000_000);
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            errors.push("from must be before to".to_string());
        }
    }
    for (name, v) in &params {
        if !["customer_id", "vm_id", "from", "to", "window"].contains(&name.as_str()) {
            errors.push(format!("unknown parameter {name:?}"));
        } else if (name == "customer_id" || name == "vm_id") && v.is_empty() {
            errors.push(format!("{name} must not be empty when given"));
        }
    }
    if !errors.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            errors.join("; "),
        );
    }
    let (from, to) = (from.unwrap_or_default(), to.unwrap_or_default());
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut sql = format!(
        "SELECT * FROM {view} WHERE CAST(window_start AS BIGINT) >= {from} AND CAST(window_start AS BIGINT) < {to}"
    );
    for name in ["customer_id", "vm_id"] {
        if let Some(v) = params.get(name) {
            sql += &format!(" AND {name} = {}", quote(v));
        }
    }
    sql += " ORDER BY customer_id, vm_id, window_start";
    match engine.query(&sql).await {
        Ok(batches) => match OutputFormat::Json.write(&batches) {
            Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Result encoding failed",
                e.to_string(),
            ),
        },
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Query failed",
            e.to_string(),
        ),
    }
}
