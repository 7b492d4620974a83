//! `GET`/`POST /api/v1/meters` and `GET`/`PUT`/`DELETE
//! /api/v1/meters/{idOrSlug}`: meters as OpenMeter's `Meter` objects.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use tally_pipeline::http_reply::problem;
use tally_pipeline::rules::meter::{Meter, MeterDef};

use super::book::{MeterError, MeterUpdate, Meters};
use crate::api_v1::problems::{bad, no_meter, unexpected};

pub(super) fn failed(e: MeterError) -> Response {
    match e {
        MeterError::Exists(_) => problem(StatusCode::CONFLICT, "Conflict", e.to_string()),
        MeterError::FromConfig(_) => problem(StatusCode::FORBIDDEN, "Forbidden", e.to_string()),
        MeterError::Invalid(_) => bad(e.to_string()),
        MeterError::State(_) => unexpected("storing a meter", e),
    }
}

pub async fn list(State(m): State<Meters>) -> Response {
    let all: Vec<Value> = m.book.list().iter().map(|s| s.json()).collect();
    Json(all).into_response()
}

pub async fn one(State(m): State<Meters>, Path(id_or_slug): Path<String>) -> Response {
    match m.book.get(&id_or_slug) {
        Some(s) => Json(s.json()).into_response(),
        None => no_meter(&id_or_slug),
    }
}

pub async fn create(State(m): State<Meters>, body: Bytes) -> Response {
    // OpenMeter's clients send `metadata` and `dimensions`-free meters; the
    // fields tally keeps are those of `MeterDef`.
    let mut v: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad("the body must be a meter (a JSON object)".into()),
        Err(e) => return bad(format!("the body is not valid JSON: {e}")),
    };
    if let Some(obj) = v.as_object_mut() {
        obj.remove("metadata");
    }
    let def: MeterDef = match serde_json::from_value(v) {
        Ok(d) => d,
        Err(e) => {
            return bad(format!(
                "the meter does not fit OpenMeter's MeterCreate: {e}"
            ))
        }
    };
    let meter = match Meter::check(def) {
        Ok(m) => m,
        Err(errors) => return bad(errors.join("; ")),
    };
    match m.book.create(meter).await {
        Ok(s) => (StatusCode::CREATED, Json(s.json())).into_response(),
        Err(e) => failed(e),
    }
}

pub async fn update(
    State(m): State<Meters>,
    Path(id_or_slug): Path<String>,
    body: Bytes,
) -> Response {
    let update: MeterUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return bad(format!(
                "the body does not fit OpenMeter's MeterUpdate: {e}"
            ))
        }
    };
    match m.book.update(&id_or_slug, update).await {
        Ok(Some(s)) => Json(s.json()).into_response(),
        Ok(None) => no_meter(&id_or_slug),
        Err(e) => failed(e),
    }
}

pub async fn delete(State(m): State<Meters>, Path(id_or_slug): Path<String>) -> Response {
    match m.book.delete(&id_or_slug).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => no_meter(&id_or_slug),
        Err(e) => failed(e),
    }
}
