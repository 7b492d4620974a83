//! WebSocket `/usage` (README "Host telemetry and the /usage WebSocket"): `system_info` on connect, then a
//! `usage_update` per sample. Clients never have to send anything.
//!
//! Each client has its own task reading the newest update from a watch
//! channel, so a client that falls behind skips to the newest update and
//! never slows the sampler or other clients; after [`MAX_LAG_STRIKES`]
//! laggy updates in a row it is closed with code 1008. Server pings find
//! dead peers.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use tally_pipeline::host::{HostUpdate, UsageFeed};

/// Consecutive skipped or slow updates before a client is closed.
pub const MAX_LAG_STRIKES: u32 = 3;
const PING_EVERY: Duration = Duration::from_secs(15);
/// A send slower than this is a lag strike.
const SLOW_SEND: Duration = Duration::from_secs(1);

pub fn router(feed: UsageFeed) -> Router {
    Router::new().route("/usage", get(upgrade)).with_state(feed)
}

async fn upgrade(State(feed): State<UsageFeed>, ws: WebSocketUpgrade) -> Response {
    // Small buffers: ten thousand idle clients should cost little.
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve(socket, feed))
}

async fn serve(socket: WebSocket, feed: UsageFeed) {
    let (mut tx, mut rx) = socket.split();
    if tx
        .send(Message::Text((feed.system_info)().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut updates = feed.updates;
    let mut last_seq = None;
    let mut strikes = 0u32;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = Instant::now();
    // The newest update right away, then each new one.
    let mut pending: Option<HostUpdate> = updates.borrow_and_update().clone();
    loop {
        if let Some(update) = pending.take() {
            let skipped = last_seq.is_some_and(|s: u64| update.seq > s + 1);
            let Ok(text) = Utf8Bytes::try_from(update.json.clone()) else {
                return;
            };
            let sent = tokio::time::timeout(SLOW_SEND, tx.send(Message::Text(text))).await;
            match sent {
                Ok(Ok(())) if !skipped => strikes = 0,
                Ok(Ok(())) => strikes += 1,
                Ok(Err(_)) => return,
                Err(_) => strikes += 1,
            }
            last_seq = Some(update.seq);
            if strikes >= MAX_LAG_STRIKES {
                let frame = CloseFrame {
                    code: 1008,
                    reason: Utf8Bytes::from_static("client too slow: it kept missing updates"),
                };
                let _ = tokio::time::timeout(SLOW_SEND, tx.send(Message::Close(Some(frame)))).await;
                return;
            }
        }
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    // The sampler stopped: tally is shutting down.
                    let _ = tx.send(Message::Close(None)).await;
                    return;
                }
                pending = updates.borrow_and_update().clone();
            }
            msg = rx.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > 2 * PING_EVERY {
                    return;
                }
                if tokio::time::timeout(SLOW_SEND, tx.send(Message::Ping(Default::default()))).await.is_err() {
                    strikes += 1;
                }
            }
        }
    }
}
