//! `GET`/`POST /api/usage/config` and `POST /api/usage/config/reset`.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::api::{error, now_ms, server_error, too_many, validation_failed, UsageApi};
use super::config::UsageConfig;

pub(super) async fn get_config(State(api): State<UsageApi>) -> Response {
    Json(api.0.config.lock().clone()).into_response()
}

pub(super) async fn post_config(
    State(api): State<UsageApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let now = now_ms();
    if let Err(wait) = api.0.config_limit.check(peer.ip(), now) {
        return too_many(wait);
    }
    let changes: Map<String, Value> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid request body",
                Some(format!("expected a JSON object, got {other}")),
                Vec::new(),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid request body",
                Some(format!("Failed to parse JSON: {e}")),
                Vec::new(),
            )
        }
    };
    let updated = {
        let mut cfg = api.0.config.lock();
        let mut next = cfg.clone();
        if let Err(errors) = next.apply(&changes) {
            return validation_failed(errors);
        }
        next.updated_at = now / 1000;
        if let Err(e) = api.0.state.store(&next) {
            return server_error(format!("storing the configuration: {e}"));
        }
        *cfg = next.clone();
        next
    };
    Json(json!({"success": true, "message": "Configuration updated successfully", "data": updated}))
        .into_response()
}

pub(super) async fn reset_config(
    State(api): State<UsageApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let now = now_ms();
    if let Err(wait) = api.0.config_limit.check(peer.ip(), now) {
        return too_many(wait);
    }
    let data = {
        let mut cfg = api.0.config.lock();
        let mut next = UsageConfig::defaults(now / 1000);
        next.created_at = cfg.created_at;
        if let Err(e) = api.0.state.store(&next) {
            return server_error(format!("storing the configuration: {e}"));
        }
        *cfg = next.clone();
        next
    };
    Json(json!({"success": true, "message": "Configuration reset to defaults successfully", "data": data})).into_response()
}
