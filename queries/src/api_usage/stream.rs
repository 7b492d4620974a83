//! `GET /api/usage/stream`: a WebSocket of `usage_update` messages.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tally_pipeline::access::Access;

use super::api::{now_ms, pairs, validation_failed, Scope, UsageApi};

/// `{"type":"usage_update","data":<stats>,"timestamp":ms}` every
/// `refresh_rate` seconds (from the stored config).
pub(super) async fn stream(
    State(api): State<UsageApi>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let mut params = pairs(params);
    let mut errors = Vec::new();
    let scope = Scope::take(&mut params, &mut errors);
    if !errors.is_empty() {
        return validation_failed(errors);
    }
    let scope = match scope.within(&access) {
        Ok(s) => s,
        Err(e) => return crate::http::forbidden(e),
    };
    ws.read_buffer_size(4 * 1024)
        .on_upgrade(move |socket| stream_updates(socket, api, scope))
}

async fn stream_updates(socket: WebSocket, api: UsageApi, scope: Scope) {
    let (mut tx, mut rx) = socket.split();
    loop {
        let cfg = api.0.config.lock().clone();
        let now = now_ms();
        let message = match api.compute(&cfg, &scope, now).await {
            Ok((stats, current)) => {
                if let Some(b) = &current {
                    api.snapshot(&cfg, &scope, b, &stats, now).await;
                }
                json!({"type": "usage_update", "data": stats, "timestamp": now})
            }
            Err(e) => json!({"type": "error", "error": e.to_string(), "timestamp": now}),
        };
        if tx
            .send(Message::Text(message.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        let wait = Duration::from_secs(cfg.refresh_rate.max(1) as u64);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                msg = rx.next() => match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}
