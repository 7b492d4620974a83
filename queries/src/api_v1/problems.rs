//! The problems (RFC 7807) every `/api/v1` route answers alike.

use axum::http::StatusCode;
use axum::response::Response;
use tally_pipeline::access::Forbidden;
use tally_pipeline::http_reply::problem;

pub fn bad(detail: String) -> Response {
    problem(StatusCode::BAD_REQUEST, "Bad Request", detail)
}

pub fn forbidden(e: Forbidden) -> Response {
    problem(StatusCode::FORBIDDEN, "Forbidden", e.to_string())
}

pub fn no_meter(id_or_slug: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Not Found",
        format!("meter {id_or_slug:?} not found"),
    )
}

/// A failure of tally's own, logged with `what` failed.
pub fn unexpected(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "{what} failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        e.to_string(),
    )
}
