//! `POST /v1/sql`: the body is the SQL text; the answer's format follows `Accept`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::format::OutputFormat;
use super::{QueryError, SqlEngine};
use crate::http::error_response;

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
            Err(e) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Result encoding failed",
                e.to_string(),
            ),
        },
        Err(QueryError::Invalid(detail)) => {
            error_response(StatusCode::BAD_REQUEST, "Invalid query", detail)
        }
        Err(QueryError::Execution(detail)) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "Query failed", detail)
        }
    }
}
