//! Meters (OpenMeter's API): `GET`/`POST /api/v1/meters`,
//! `GET`/`PUT`/`DELETE /api/v1/meters/{idOrSlug}`, their queries
//! (`query.rs`), subjects and group-by values. The definitions are kept by
//! the derive side (`tally_derive::meters`), reached through `MeterBook`
//! (`book.rs`); a meter is defined for every tenant, and a token's tenant
//! (OpenMeter's namespace) scopes the events its queries read.

pub mod book;
pub mod days;
pub mod definitions;
pub mod query;
pub mod windows;

use axum::routing::{get, post, put};
use axum::Router;

pub use book::{MeterBook, MeterError, MeterUpdate, Meters, StoredMeter};
use definitions::{create, delete, list, one, update};

/// The routes that change meters (a token of the admin role).
pub fn definitions_router(meters: Meters) -> Router {
    Router::new()
        .route("/api/v1/meters", post(create))
        .route("/api/v1/meters/{id_or_slug}", put(update).delete(delete))
        .with_state(meters)
}

/// The routes that read meters and their values (a query may be a POST).
pub fn router(meters: Meters) -> Router {
    Router::new()
        .route("/api/v1/meters", get(list))
        .route("/api/v1/meters/{id_or_slug}", get(one))
        .route(
            "/api/v1/meters/{id_or_slug}/query",
            get(query::get_query).post(query::post_query),
        )
        .route("/api/v1/meters/{id_or_slug}/subjects", get(query::subjects))
        .route(
            "/api/v1/meters/{id_or_slug}/group-by/{key}/values",
            get(query::group_values),
        )
        .with_state(meters)
}
