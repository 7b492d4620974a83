//! The error bodies of tally's HTTP read APIs, built in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
/// `{"error": …, "detail": …}`: `/v1/sql`, `/v1/billing`, `/internal/usage`.
pub use tally_pipeline::http_reply::error_response;

/// `{"error", "detail", "validation_errors"}`: the Usage API's shape (README "Usage API").
pub fn validation_response(
    status: StatusCode,
    error: &str,
    detail: Option<String>,
    validation_errors: Vec<String>,
) -> Response {
    (
        status,
        Json(json!({"error": error, "detail": detail, "validation_errors": validation_errors})),
    )
        .into_response()
}

/// 403 `{"error":"forbidden","detail":…}`: the token does not cover what was
/// asked.
pub fn forbidden(e: tally_pipeline::access::Forbidden) -> Response {
    error_response(StatusCode::FORBIDDEN, "forbidden", e.0)
}
