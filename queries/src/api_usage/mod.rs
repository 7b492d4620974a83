//! The Usage API of README "Usage API": `GET /api/usage/stats`, `GET`/`POST
//! /api/usage/config`, `POST /api/usage/config/reset`, `GET
//! /api/usage/sessions`, and the `GET /api/usage/stream` WebSocket.
//!
//! Beyond the spec, optional `actor_id` and `microdao_id` parameters scope
//! every endpoint, so one tally serves many users.
pub mod api;
pub mod config;
mod config_api;
pub mod model;
pub mod rate_limit;
pub mod settings;
mod snapshots;
pub mod state;
mod stats;
mod stream;

use axum::routing::{get, post};
use axum::Router;

pub use api::UsageApi;
pub use settings::{UsageApiArgs, UsageApiConfig};

impl UsageApi {
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/usage/stats", get(stats::stats))
            .route(
                "/api/usage/config",
                get(config_api::get_config).post(config_api::post_config),
            )
            .route("/api/usage/config/reset", post(config_api::reset_config))
            .route("/api/usage/sessions", get(snapshots::sessions))
            .route("/api/usage/stream", get(stream::stream))
            .with_state(self)
    }
}
