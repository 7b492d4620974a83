//! `POST /v1/sql`: the body is the SQL text; the answer's format follows `Accept`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::format::OutputFormat;
use crate::sql::{QueryError, SqlEngine};

pub fn router(engine: SqlEngine) -> Router {
    Router::new()
        .route("/v1/sql", post(run_sql))
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
    error_response(status, error, detail)
}

/// The error shape of tally's HTTP read APIs: `{"error": …, "detail": …}`.
pub fn error_response(status: StatusCode, error: &str, detail: String) -> Response {
    (status, Json(json!({"error": error, "detail": detail}))).into_response()
}
