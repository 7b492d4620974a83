//! The `ws-clients` scenario: many WebSocket clients on `/usage`; memory per
//! idle client and the spread of each update's arrival across clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Serialize)]
pub struct WsReport {
    pub clients: usize,
    pub connected: usize,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub kib_per_client: f64,
    pub updates_seen: u64,
    /// Per update and client: arrival minus the first client's arrival, ms.
    pub delay_ms_p50: f64,
    pub delay_ms_p99: f64,
    pub delay_ms_max: f64,
}

pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

pub async fn run(
    base: &str,
    server_pid: Option<u32>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<WsReport> {
    let url = format!("{}/usage", base.replacen("http://", "ws://", 1));
    let before = server_pid.map(rss_mib).unwrap_or(0.0);
    // Arrival instants per update (keyed by the update's JSON text).
    let arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, arrivals, measuring) = (url.clone(), arrivals.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
                return false;
            };
            let deadline = tokio::time::Instant::now() + duration + Duration::from_secs(30);
            while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
                if let Message::Text(t) = msg {
                    if measuring.load(std::sync::atomic::Ordering::Relaxed)
                        && t.contains("usage_update")
                    {
                        arrivals
                            .lock()
                            .expect("not poisoned")
                            .entry(t.to_string())
                            .or_default()
                            .push(Instant::now());
                    }
                }
            }
            true
        }));
    }
    // Let every client connect and settle, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server_pid.map(rss_mib).unwrap_or(0.0);
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    let arrivals = std::mem::take(&mut *arrivals.lock().expect("not poisoned"));
    for t in &tasks {
        t.abort();
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut connected = 0;
    for times in arrivals.values() {
        connected = connected.max(times.len());
        if let Some(first) = times.iter().min() {
            for t in times {
                hist.record((t.duration_since(*first).as_micros() as u64).max(1))?;
            }
        }
    }
    Ok(WsReport {
        clients,
        connected,
        rss_before_mib: before,
        rss_after_mib: after,
        kib_per_client: (after - before) * 1024.0 / clients.max(1) as f64,
        updates_seen: arrivals.len() as u64,
        delay_ms_p50: hist.value_at_quantile(0.5) as f64 / 1000.0,
        delay_ms_p99: hist.value_at_quantile(0.99) as f64 / 1000.0,
        delay_ms_max: hist.max() as f64 / 1000.0,
    })
}
