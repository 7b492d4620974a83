//! `/health` (a status per component) and `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tally_pipeline::quarantine::{DamageKind, Quarantine};
use tally_pipeline::{Dataset, Pipeline};
use tally_sinks::control_plane::ForwarderMetrics;
use tally_sinks::Flusher;
use tally_sources::billing::metrics::BillingMetrics;
use tally_sources::kafka::KafkaStatus;
use tally_sources::nats::NatsStatus;

#[derive(Clone)]
pub struct StatusState {
    pub pipeline: Pipeline,
    pub flusher: Arc<Flusher>,
    pub billing: Arc<BillingMetrics>,
    pub forwarder: Option<Arc<ForwarderMetrics>>,
    /// Present when the NATS collector is configured.
    pub nats: Option<Arc<parking_lot::Mutex<NatsStatus>>>,
    /// Present when the Kafka source is configured.
    pub kafka: Option<Arc<parking_lot::Mutex<KafkaStatus>>>,
    /// CPU time of the sampler's last tick, when the sampler runs.
    pub sampler: Option<Arc<parking_lot::Mutex<std::time::Duration>>>,
    /// GPU telemetry status, when the sampler runs.
    pub gpu: Option<serde_json::Value>,
    /// Damage found on disk, until an operator acknowledges it.
    pub quarantine: Arc<Quarantine>,
    /// Refused requests, by route and reason.
    pub auth: Arc<crate::auth::Auth>,
    /// Hours whose raw rows were lost and that no rollup holds.
    pub lost: crate::incomplete::Lost,
    pub started: Instant,
}

/// `/metrics` alone, for a separate metrics port (`--metrics-listen`).
pub fn metrics_router(state: StatusState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `/health`: open to all (it reveals no tenant's data).
pub fn health_router(state: StatusState) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(state)
}

/// `/metrics` and the damage reports (behind a token when auth is on).
pub fn router(state: StatusState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/damage", get(damage))
        .route("/v1/damage/acknowledge", post(acknowledge))
        .with_state(state)
}

/// Every damage report, acknowledged or not.
async fn damage(State(s): State<StatusState>) -> Response {
    Json(json!({"damage": s.quarantine.all()})).into_response()
}

/// An operator has seen the damage: `/health` stops saying `degraded`.
async fn acknowledge(State(s): State<StatusState>) -> Response {
    match s.quarantine.acknowledge() {
        Ok(n) => Json(json!({"acknowledged": n})).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "Cannot record the acknowledgement", "detail": e.to_string()})),
        )
            .into_response(),
    }
}

/// The `damage` component of `/health`.
fn damage_status(q: &Quarantine) -> serde_json::Value {
    let open = q.unacknowledged();
    if open.is_empty() {
        return json!({"status": "ok"});
    }
    let entries: u64 = open.iter().map(|d| d.unread_entries).sum();
    json!({
        "status": "degraded",
        "detail": format!(
            "{} damage report(s) not acknowledged: {} unreadable WAL entries, {} file(s) quarantined; POST /v1/damage/acknowledge once handled",
            open.len(),
            entries,
            open.iter().filter(|d| d.kind != DamageKind::WalSegment).count(),
        ),
        "unacknowledged": open.len(),
        "unread_wal_entries": entries,
        "reports": open,
    })
}

async fn health(State(s): State<StatusState>) -> Response {
    let wal = match s.pipeline.wal().failure() {
        None => json!({"status": "ok"}),
        Some(reason) => json!({"status": "down", "detail": reason}),
    };
    let writer = match (s.flusher.is_halted(), s.flusher.last_error()) {
        (true, reason) => json!({"status": "down", "detail": reason}),
        (false, Some(reason)) => json!({"status": "degraded", "detail": reason}),
        (false, None) => json!({"status": "ok"}),
    };
    let store = s.pipeline.store();
    let queues: serde_json::Map<String, serde_json::Value> = Dataset::ALL
        .iter()
        .map(|d| {
            let st = store.stats(*d);
            (
                d.name().to_string(),
                json!({"queued_rows": st.queued_rows, "buffered_rows": st.buffered_rows, "files": st.files}),
            )
        })
        .collect();
    let nats = s.nats.as_ref().map(|n| {
        let n = n.lock().clone();
        if n.connected {
            json!({"status": "ok"})
        } else {
            json!({"status": "down", "detail": n.detail})
        }
    });
    let damage = damage_status(&s.quarantine);
    let lost = s.lost.hours();
    let lost_rows = if lost.is_empty() {
        json!({"status": "ok"})
    } else {
        json!({
            "status": "degraded",
            "detail": format!(
                "{} hour(s) lost rows to damage and no rollup holds them: answers over them carry \"incomplete\": true. Do: `tally check --repair --from BACKUP` restores the files from a copy",
                lost.len()
            ),
            "hours": lost,
        })
    };
    let degraded = damage["status"] == "degraded" || !lost.is_empty();
    let down = wal["status"] == "down"
        || writer["status"] == "down"
        || nats.as_ref().is_some_and(|n| n["status"] == "down");
    let body = json!({
        "status": if down { "down" } else if degraded { "degraded" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "components": {
            "wal": wal,
            "parquet_writer": writer,
            "queues": {"status": "ok", "datasets": queues},
            "damage": damage,
            "lost_rows": lost_rows,
        },
    });
    let mut body = body;
    if let Some(n) = nats {
        body["components"]["nats"] = n;
    }
    if let Some(k) = &s.kafka {
        let k = k.lock().clone();
        body["components"]["kafka"] = json!({
            "status": if k.last_error.is_some() { "degraded" } else { "ok" },
            "assigned_partitions": k.assigned_partitions,
            "messages": k.messages,
            "committed_messages": k.committed_messages,
            "rebalances": k.rebalances,
            "detail": k.last_error,
        });
    }
    if let Some(t) = &s.sampler {
        body["components"]["sampler"] =
            json!({"status": "ok", "last_tick_micros": t.lock().as_micros() as u64});
    }
    if let Some(g) = &s.gpu {
        body["components"]["gpu"] = g.clone();
    }
    let status = if down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// The live buffer of each dataset: rows, the bytes of their Arrow
/// columns, and the bytes per row.
fn render_buffer(store: &tally_pipeline::store::Store, text: &mut String) {
    let stats: Vec<_> = Dataset::ALL.iter().map(|d| (d, store.stats(*d))).collect();
    text.push_str("# HELP tally_buffer_rows Rows durable in the WAL and held in memory until their Parquet file is written.\n# TYPE tally_buffer_rows gauge\n");
    for (d, st) in &stats {
        text.push_str(&format!(
            "tally_buffer_rows{{dataset=\"{d}\"}} {}\n",
            st.buffered_rows
        ));
    }
    text.push_str("# HELP tally_buffer_bytes Bytes of the live buffer's Arrow columns.\n# TYPE tally_buffer_bytes gauge\n");
    for (d, st) in &stats {
        text.push_str(&format!(
            "tally_buffer_bytes{{dataset=\"{d}\"}} {}\n",
            st.buffered_bytes
        ));
    }
    text.push_str("# HELP tally_buffer_bytes_per_row Bytes of the live buffer per row held (0 when empty).\n# TYPE tally_buffer_bytes_per_row gauge\n");
    for (d, st) in &stats {
        let per_row = st.buffered_bytes.checked_div(st.buffered_rows).unwrap_or(0);
        text.push_str(&format!(
            "tally_buffer_bytes_per_row{{dataset=\"{d}\"}} {per_row}\n"
        ));
    }
}

async fn metrics(State(s): State<StatusState>) -> Response {
    let store = s.pipeline.store().clone();
    let mut text = s.pipeline.metrics().render(|d| store.stats(d).queued_rows);
    render_buffer(&store, &mut text);
    text.push_str(&format!(
        "# HELP tally_damage_unacknowledged Damage reports no operator has acknowledged yet.\n# TYPE tally_damage_unacknowledged gauge\ntally_damage_unacknowledged {}\n",
        s.quarantine.unacknowledged().len()
    ));
    text.push_str(&s.billing.render());
    s.auth.render_metrics(&mut text);
    if let Some(f) = &s.forwarder {
        text.push_str(&f.render());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
