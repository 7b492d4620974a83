//! `POST /v1/budgets`, `GET /v1/budgets`, `GET|DELETE /v1/budgets/{id}`,
//! `GET /v1/budgets/check`. Errors are in the Usage API's shape
//! (`{"error","detail","validation_errors"}`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tally_pipeline::access::Access;

use super::evaluate::BudgetState;
use super::model::{rfc3339, Budget, SCOPE_KEYS};
use super::{BudgetBook, BudgetError};
use crate::alerts::api::unknown_params;
use crate::http::validation_response;

pub fn router(budgets: Arc<dyn BudgetBook>) -> Router {
    Router::new()
        .route("/v1/budgets", get(list).post(create))
        .route("/v1/budgets/check", get(check))
        .route("/v1/budgets/{id}", get(one).delete(remove))
        .with_state(budgets)
}

fn invalid(errors: Vec<String>) -> Response {
    validation_response(StatusCode::BAD_REQUEST, "Validation failed", None, errors)
}

fn failed(e: BudgetError) -> Response {
    tracing::error!(error = %e, "budget request failed");
    validation_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        Some(e.to_string()),
        Vec::new(),
    )
}

fn not_found(id: &str) -> Response {
    validation_response(
        StatusCode::NOT_FOUND,
        "Not found",
        Some(format!("no budget {id:?}")),
        Vec::new(),
    )
}

/// A budget and its state as the API shows them (the secret is never
/// shown); `at`: when the state was evaluated.
fn view(s: &BudgetState, at: i64) -> Value {
    let b = &s.budget;
    json!({
        "id": b.id,
        "name": b.name,
        "scope": b.scope,
        "metric": b.metric.name(),
        "period": b.period.name(),
        "timezone": b.timezone,
        "limit": b.limit,
        "thresholds": b.thresholds,
        "webhook_url": b.webhook_url,
        "webhook_secret_set": b.webhook_secret.is_some(),
        "created_at": b.created_at,
        "period_start": rfc3339(s.period_start),
        "period_end": rfc3339(s.period_end),
        "used": s.used,
        "remaining": s.remaining(),
        "percent": s.percent(),
        "state": s.state(),
        "unpriced_calls": s.unpriced_calls,
        "evaluated_at": rfc3339(at),
    })
}

/// `None` when the token may see budget `id`, else a 404 (a budget of
/// another tenant is not said to exist).
fn refused(budgets: &Arc<dyn BudgetBook>, access: &Access, id: &str) -> Option<Response> {
    match budgets.get(id) {
        Some(b) if visible(access, &b) => None,
        _ => Some(not_found(id)),
    }
}

fn visible(access: &Access, b: &Budget) -> bool {
    match b.tenant() {
        Some(t) => access.covers(Some(t)),
        None => access.tenants.is_none(),
    }
}

async fn create(State(budgets): State<Arc<dyn BudgetBook>>, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return invalid(vec![format!("the body must be JSON: {e}")]),
    };
    let now = tally_pipeline::now_ns();
    let id = format!("bdg_{}", uuid::Uuid::new_v4().simple());
    let budget = match Budget::from_request(&value, id, now) {
        Ok(b) => b,
        Err(errors) => return invalid(errors),
    };
    match budgets.create(budget).await {
        Ok((state, at)) => (StatusCode::CREATED, Json(view(&state, at))).into_response(),
        Err(e) => failed(e),
    }
}

async fn list(
    State(budgets): State<Arc<dyn BudgetBook>>,
    Extension(access): Extension<Access>,
) -> Response {
    let evaluated = match budgets.fresh().await {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let rows: Vec<Value> = evaluated
        .states
        .iter()
        .filter(|s| visible(&access, &s.budget))
        .map(|s| view(s, evaluated.at))
        .collect();
    Json(json!({"budgets": rows})).into_response()
}

async fn one(
    State(budgets): State<Arc<dyn BudgetBook>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&budgets, &access, &id) {
        return r;
    }
    let evaluated = match budgets.fresh().await {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    match evaluated.states.iter().find(|s| s.budget.id == id) {
        Some(s) => Json(view(s, evaluated.at)).into_response(),
        None => not_found(&id),
    }
}

async fn remove(
    State(budgets): State<Arc<dyn BudgetBook>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&budgets, &access, &id) {
        return r;
    }
    match budgets.delete(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&id),
        Err(e) => failed(e),
    }
}

/// A budget a check matched.
#[derive(serde::Serialize)]
struct Matched<'a> {
    id: &'a str,
    name: &'a str,
    metric: &'static str,
    state: &'static str,
    used: f64,
    limit: f64,
    remaining: f64,
}

#[derive(serde::Serialize)]
struct CheckAnswer<'a> {
    allowed: bool,
    budgets: Vec<Matched<'a>>,
    evaluated_at: String,
}

/// `{"allowed": false, "budgets": [...]}`: `allowed` is false when a
/// budget whose scope the parameters match is exceeded. From the last
/// evaluation (at most `--budget-interval` old), in memory.
async fn check(
    State(budgets): State<Arc<dyn BudgetBook>>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut errors = Vec::new();
    unknown_params(&params, &SCOPE_KEYS, &mut errors);
    for (k, v) in &params {
        if v.is_empty() {
            errors.push(format!("{k} must not be empty when given"));
        }
    }
    if !errors.is_empty() {
        return invalid(errors);
    }
    for column in ["microdao_id", "customer_id"] {
        if let Err(e) = access.check_filter(column, params.get(column).map(String::as_str)) {
            return crate::http::forbidden(e);
        }
    }
    let values = SCOPE_KEYS.map(|k| params.get(k).map(String::as_str));
    let evaluated = budgets.last();
    let mut allowed = true;
    let mut out = Vec::new();
    evaluated.index.matching(&values, |i| {
        let s = &evaluated.states[i];
        let state = s.state();
        allowed &= state != "exceeded";
        out.push(Matched {
            id: &s.budget.id,
            name: &s.budget.name,
            metric: s.budget.metric.name(),
            state,
            used: s.used,
            limit: s.budget.limit,
            remaining: s.remaining(),
        });
    });
    Json(CheckAnswer {
        allowed,
        budgets: out,
        evaluated_at: rfc3339(evaluated.at),
    })
    .into_response()
}
