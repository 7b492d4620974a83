//! `/api/v1/…`: OpenMeter's API as its clients call it (README "Meters and
//! the OpenMeter API"). Errors are RFC 7807 problems, as those clients read
//! them.
//!
//! - `events.rs`: `GET /api/v1/events`, the events a tenant sent.

pub mod events;

use axum::routing::get;
use axum::Router;

use crate::sql::SqlEngine;

/// The read routes of `/api/v1`.
pub fn router(engine: SqlEngine) -> Router {
    Router::new()
        .route("/api/v1/events", get(events::list))
        .with_state(engine)
}
