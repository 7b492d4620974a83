//! The Usage API of spec 002: `GET /api/usage/stats`, `GET`/`POST
//! /api/usage/config`, `POST /api/usage/config/reset`, `GET
//! /api/usage/sessions`, and the `GET /api/usage/stream` WebSocket.
//!
//! Beyond the spec, optional `actor_id` and `microdao_id` parameters scope
//! every endpoint, so one tally serves many users.

pub mod config;
pub mod model;
pub mod rate_limit;
mod snapshots;
mod stats;
mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tally_pipeline::Pipeline;

use crate::history::History;
use crate::http::validation_response;
use crate::prices::PriceCatalogue;
use crate::sql::SqlEngine;
use config::{ConfigFile, UsageConfig};
use rate_limit::RateLimiter;

pub const SOURCE: &str = "usage_api";

/// The Usage API's rate limits (`[usage_api]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Usage API (spec 002)")]
pub struct UsageApiArgs {
    /// Configuration changes allowed per client and minute. [default: 60]
    #[arg(long, env = "TALLY_USAGE_CONFIG_RATE")]
    #[serde(default)]
    pub usage_config_rate: Option<u32>,

    /// `/api/usage/stats` requests allowed per client and minute. [default: 300]
    #[arg(long, env = "TALLY_USAGE_STATS_RATE")]
    #[serde(default)]
    pub usage_stats_rate: Option<u32>,
}

impl UsageApiArgs {
    /// The settings, with the configuration file at `config_path`.
    pub fn resolve(&self, config_path: PathBuf) -> UsageApiConfig {
        UsageApiConfig {
            config_path,
            config_updates_per_minute: self.usage_config_rate.unwrap_or(60),
            stats_per_minute: self.usage_stats_rate.unwrap_or(300),
        }
    }
}

/// Settings of the Usage API.
#[derive(Debug, Clone)]
pub struct UsageApiConfig {
    pub config_path: PathBuf,
    pub config_updates_per_minute: u32,
    pub stats_per_minute: u32,
}

struct Inner {
    engine: SqlEngine,
    history: History,
    pipeline: Pipeline,
    prices: Arc<PriceCatalogue>,
    config: Mutex<UsageConfig>,
    file: ConfigFile,
    config_limit: RateLimiter,
    stats_limit: RateLimiter,
    /// Last snapshot time (ms) per session and scope.
    snapshots: Mutex<HashMap<String, i64>>,
}

#[derive(Clone)]
pub struct UsageApi(Arc<Inner>);

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The spec's error body: `{"error","detail","validation_errors"}`.
fn error(
    status: StatusCode,
    error: &str,
    detail: Option<String>,
    validation: Vec<String>,
) -> Response {
    validation_response(status, error, detail, validation)
}

fn validation_failed(errors: Vec<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "Validation failed", None, errors)
}

fn too_many(wait: u64) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        Some(format!(
            "rate limit reached for this client; retry in {wait} s"
        )),
        Vec::new(),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    r
}

fn server_error(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        Some(e.to_string()),
        Vec::new(),
    )
}

/// `actor_id` / `microdao_id` scope, taken out of the parameters.
#[derive(Debug, Clone, Default)]
struct Scope {
    actor_id: Option<String>,
    microdao_id: Option<String>,
}

impl Scope {
    fn take(params: &mut Vec<(String, String)>, errors: &mut Vec<String>) -> Scope {
        let mut scope = Scope::default();
        params.retain(|(k, v)| {
            let slot = match k.as_str() {
                "actor_id" => &mut scope.actor_id,
                "microdao_id" => &mut scope.microdao_id,
                _ => return true,
            };
            if v.is_empty() {
                errors.push(format!("{k} must not be empty when given"));
            } else {
                *slot = Some(v.clone());
            }
            false
        });
        scope
    }

    fn key(&self) -> String {
        format!(
            "{}|{}",
            self.actor_id.as_deref().unwrap_or(""),
            self.microdao_id.as_deref().unwrap_or("")
        )
    }
}

impl UsageApi {
    pub fn new(
        engine: SqlEngine,
        history: History,
        pipeline: Pipeline,
        prices: Arc<PriceCatalogue>,
        settings: UsageApiConfig,
    ) -> std::io::Result<Self> {
        let file = ConfigFile::new(settings.config_path);
        let config = file.load_or_init(now_ms() / 1000)?;
        Ok(Self(Arc::new(Inner {
            engine,
            history,
            pipeline,
            prices,
            config: Mutex::new(config),
            file,
            config_limit: RateLimiter::new(settings.config_updates_per_minute),
            stats_limit: RateLimiter::new(settings.stats_per_minute),
            snapshots: Mutex::new(HashMap::new()),
        })))
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/api/usage/stats", get(stats::stats))
            .route("/api/usage/config", get(get_config).post(post_config))
            .route("/api/usage/config/reset", post(reset_config))
            .route("/api/usage/sessions", get(snapshots::sessions))
            .route("/api/usage/stream", get(stream::stream))
            .with_state(self)
    }
}

fn pairs(params: HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = params.into_iter().collect();
    v.sort();
    v
}

async fn get_config(State(api): State<UsageApi>) -> Response {
    Json(api.0.config.lock().clone()).into_response()
}

async fn post_config(
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
        if let Err(e) = api.0.file.store(&next) {
            return server_error(format!("storing the configuration: {e}"));
        }
        *cfg = next.clone();
        next
    };
    Json(json!({"success": true, "message": "Configuration updated successfully", "data": updated}))
        .into_response()
}

async fn reset_config(
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
        if let Err(e) = api.0.file.store(&next) {
            return server_error(format!("storing the configuration: {e}"));
        }
        *cfg = next.clone();
        next
    };
    Json(json!({"success": true, "message": "Configuration reset to defaults successfully", "data": data})).into_response()
}
