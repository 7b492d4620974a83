//! `GET /v1/alerts?since=&type=` (the fired alerts this node knows, with
//! their delivery) and the WebSocket `GET /v1/alerts/stream`.

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tally_pipeline::access::Access;
use tokio::sync::broadcast::error::RecvError;

use super::{AlertFeed, Fired};
use crate::http::validation_response;

pub fn router(alerts: AlertFeed) -> Router {
    Router::new()
        .route("/v1/alerts", get(list))
        .route("/v1/alerts/stream", get(stream))
        .with_state(alerts)
}

/// An RFC 3339 parameter in nanoseconds; `default` when absent.
pub fn time_param(
    params: &HashMap<String, String>,
    name: &str,
    default: i64,
    errors: &mut Vec<String>,
) -> i64 {
    match params.get(name) {
        None => default,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
        {
            Some(ns) => ns,
            None => {
                errors.push(format!(
                    "{name} must be an RFC 3339 time such as 2026-11-01T00:00:00Z, got {s:?}"
                ));
                default
            }
        },
    }
}

/// The parameters not in `known`, each an error.
pub fn unknown_params(params: &HashMap<String, String>, known: &[&str], errors: &mut Vec<String>) {
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    for k in names {
        if !known.contains(&k.as_str()) {
            errors.push(format!(
                "{k} is not a parameter here (known: {})",
                known.join(", ")
            ));
        }
    }
}

fn view(f: &Fired) -> Value {
    json!({
        "id": f.id,
        "type": f.kind,
        "at": tally_pipeline::clock::rfc3339(f.at),
        "alert": serde_json::from_str::<Value>(&f.body).unwrap_or(Value::Null),
        "webhook": f.target.as_ref().map(|t| json!({
            "url": t.url,
            "signed": t.secret.is_some(),
            "delivery": f.delivery(),
            "attempts": f.attempts,
            "delivered_at": f.delivered_at.map(tally_pipeline::clock::rfc3339),
            "last_error": f.last_error,
        })),
    })
}

/// The alerts fired since `since` (default: 7 days ago), of `type` when
/// given, that the token may see.
async fn list(
    State(alerts): State<AlertFeed>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut errors = Vec::new();
    unknown_params(&params, &["since", "type"], &mut errors);
    let week = 7 * tally_pipeline::clock::DAY_NS;
    let since = time_param(
        &params,
        "since",
        tally_pipeline::now_ns() - week,
        &mut errors,
    );
    let kind = params.get("type").cloned();
    if let Some(k) = &kind {
        if !["budget.threshold", "anomaly"].contains(&k.as_str()) {
            errors.push(format!(
                "type must be budget.threshold or anomaly, got {k:?}"
            ));
        }
    }
    if !errors.is_empty() {
        return validation_response(StatusCode::BAD_REQUEST, "Validation failed", None, errors);
    }
    let rows: Vec<Value> = alerts
        .since(since)
        .iter()
        .filter(|f| f.visible_to(&access))
        .filter(|f| kind.as_ref().is_none_or(|k| *k == f.kind))
        .map(view)
        .collect();
    Json(json!({"alerts": rows})).into_response()
}

/// Each alert fired from now on, as its webhook body, while connected.
async fn stream(
    State(alerts): State<AlertFeed>,
    Extension(access): Extension<Access>,
    ws: WebSocketUpgrade,
) -> Response {
    let rx = alerts.subscribe();
    ws.read_buffer_size(4 * 1024)
        .on_upgrade(move |socket| forward(socket, rx, access))
}

async fn forward(
    socket: WebSocket,
    mut alerts: tokio::sync::broadcast::Receiver<std::sync::Arc<Fired>>,
    access: Access,
) {
    let (mut tx, mut rx) = socket.split();
    loop {
        tokio::select! {
            got = alerts.recv() => {
                let text = match got {
                    Ok(f) if f.visible_to(&access) => f.body.clone(),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        json!({"type": "lagged", "missed": n, "detail": "this client read too slowly; GET /v1/alerts lists what it missed"}).to_string()
                    }
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            msg = rx.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
