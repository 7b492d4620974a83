//! The Usage API's shared state (`UsageApi`), its error bodies and the
//! `actor_id` / `microdao_id` scope every endpoint takes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use parking_lot::Mutex;
use tally_pipeline::access::{Access, Forbidden};

use super::config::UsageConfig;
use super::rate_limit::RateLimiter;
use super::settings::UsageApiConfig;
use super::state::PlanState;
use crate::history::History;
/// The spec's error body: `{"error","detail","validation_errors"}`.
pub(super) use crate::http::validation_response as error;
use crate::prices::PriceCatalogue;
use crate::sql::SqlEngine;

pub(super) struct Inner {
    pub(super) engine: SqlEngine,
    pub(super) history: History,
    pub(super) prices: Arc<PriceCatalogue>,
    pub(super) config: Mutex<UsageConfig>,
    pub(super) state: Arc<dyn PlanState>,
    pub(super) config_limit: RateLimiter,
    pub(super) stats_limit: RateLimiter,
}

#[derive(Clone)]
pub struct UsageApi(pub(super) Arc<Inner>);

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(super) fn validation_failed(errors: Vec<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "Validation failed", None, errors)
}

pub(super) fn too_many(wait: u64) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        Some(format!(
            "rate limit reached for this client; retry in {wait} s"
        )),
        Vec::new(),
    );
    tally_pipeline::http_reply::retry_after(&mut r, wait);
    r
}

pub(super) fn server_error(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        Some(e.to_string()),
        Vec::new(),
    )
}

/// `actor_id` / `microdao_id` scope, taken out of the parameters.
#[derive(Debug, Clone, Default)]
pub(super) struct Scope {
    pub(super) actor_id: Option<String>,
    pub(super) microdao_id: Option<String>,
    /// The tenants of a token of several, asked for none in particular:
    /// their union is read (and no snapshot kept, as it is no one's plan).
    pub(super) tenants: Option<Arc<BTreeSet<String>>>,
}

impl Scope {
    pub(super) fn take(params: &mut Vec<(String, String)>, errors: &mut Vec<String>) -> Scope {
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

    /// Narrows the scope to what `access` covers: another tenant's
    /// `microdao_id` is refused; a token of one tenant reads that one, a
    /// token of several their union.
    pub(super) fn within(mut self, access: &Access) -> Result<Scope, Forbidden> {
        access.check_filter("microdao_id", self.microdao_id.as_deref())?;
        if self.microdao_id.is_none() {
            match &access.tenants {
                Some(t) if t.len() == 1 => self.microdao_id = t.iter().next().cloned(),
                Some(t) => self.tenants = Some(t.clone()),
                None => {}
            }
        }
        Ok(self)
    }

    /// Whether a row of `microdao_id` is in the scope's tenants.
    pub(super) fn covers_tenant(&self, microdao_id: Option<&str>) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|t| microdao_id.is_some_and(|m| t.contains(m)))
    }

    /// The tenant list as one SQL parameter (comma-separated; tenant ids
    /// hold no commas), or NULL.
    pub(super) fn tenant_param(&self) -> Option<String> {
        self.tenants
            .as_ref()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(","))
    }

    pub(super) fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.actor_id.as_deref().unwrap_or(""),
            self.microdao_id.as_deref().unwrap_or(""),
            self.tenant_param().unwrap_or_default()
        )
    }
}

impl UsageApi {
    pub fn new(
        engine: SqlEngine,
        history: History,
        prices: Arc<PriceCatalogue>,
        settings: &UsageApiConfig,
        state: Arc<dyn PlanState>,
    ) -> std::io::Result<Self> {
        let config = state.load_or_init(now_ms() / 1000)?;
        Ok(Self(Arc::new(Inner {
            engine,
            history,
            prices,
            config: Mutex::new(config),
            state,
            config_limit: RateLimiter::new(settings.config_updates_per_minute),
            stats_limit: RateLimiter::new(settings.stats_per_minute),
        })))
    }
}

pub(super) fn pairs(params: HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = params.into_iter().collect();
    v.sort();
    v
}
