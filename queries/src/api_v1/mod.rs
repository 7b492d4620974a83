//! `/api/v1/…`: OpenMeter's API as its clients call it (README "Meters and
//! the OpenMeter API"). Errors are RFC 7807 problems, as those clients read
//! them.
//!
//! - `events.rs`: `GET /api/v1/events`, the events a tenant sent;
//! - `meters/`: meters, their queries, subjects and group-by values.

pub mod events;
pub mod meters;
pub mod problems;

use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use tally_pipeline::http_reply::problem;

/// The routes of `/api/v1` that read: the events list, meters and their
/// queries (`meters::definitions_router` changes meters).
pub fn router(meters: meters::Meters) -> Router {
    Router::new()
        .route("/api/v1/events", get(events::list))
        .with_state(meters.engine.clone())
        .merge(meters::router(meters))
        .route("/api/v1/{*rest}", any(not_served))
}

/// The rest of OpenMeter's API (entitlements, grants, plans, customers,
/// invoices, …) is not part of tally: a clear 501, not a bare 404.
async fn not_served(uri: Uri) -> Response {
    problem(
        StatusCode::NOT_IMPLEMENTED,
        "Not Implemented",
        format!(
            "tally serves OpenMeter's events and meters only; {} is not part of tally (entitlements, grants, plans, subscriptions, customers and invoices are not)",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod sql_tests;
