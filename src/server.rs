//! `tally serve`: recovery, wiring and graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use tally_pipeline::dedup::Dedup;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::quarantine::Quarantine;
use tally_pipeline::rollup::Rollups;
use tally_pipeline::store::Store;
use tally_pipeline::tap::PayloadTap;
use tally_pipeline::wal::{Wal, WalConfig};
use tally_pipeline::{now_ns, Pipeline, Relay};
use tally_queries::history::History;
use tally_queries::plan_usage::{UsageApi, UsageApiConfig};
use tally_queries::prices::PriceCatalogue;
use tally_queries::SqlEngine;
use tally_sinks::control_plane::{self, ForwarderConfig};
use tally_sinks::kafka_relay::KafkaRelay;
use tally_sinks::parquet::layout::wal_dir;
use tally_sinks::parquet::verify::FileDoctor;
use tally_sinks::{
    recover, CompactionPolicy, Compactor, Destination, FlushPolicy, FlushTarget, Flusher,
    SharedListing,
};
use tally_sources::billing::BillingService;
use tally_sources::hardware::stream::UsageFeed;
use tally_sources::hardware::{self, HostSampler};
use tally_sources::kafka::{KafkaHooks, KafkaStatus};
use tally_sources::nats::NatsStatus;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::status::{self, StatusState};

/// Samples further apart than this are a gap (DESIGN.md's billing rules; the
/// rollup SQL uses the same limit).
const GAP_LIMIT_SECS: u64 = 120;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let started = Instant::now();
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(Store::new(config.max_queued_rows));
    let dedup = Arc::new(Dedup::new(
        config.dedup_window.as_secs(),
        config.dedup_max_keys,
        metrics.clone(),
    ));

    let data = config.files_dir();
    let state = config.state_root();
    let destination = match Destination::parse(&config.data.to_string_lossy())? {
        Some(object) => {
            tracing::info!(location = %config.data.display(), state = %state.display(), "Parquet goes to object storage; WAL and staging stay local");
            object
        }
        None => Destination::Local,
    };
    let quarantine_dir = tally_sinks::parquet::layout::quarantine_dir(&state);
    let quarantine = Arc::new(
        Quarantine::open(&quarantine_dir, metrics.clone())
            .with_context(|| format!("opening the quarantine {}", quarantine_dir.display()))?,
    );
    let target = FlushTarget {
        data: data.clone(),
        state: state.clone(),
        destination: Arc::new(destination),
        node: config.node_id.clone(),
        quarantine: Some(quarantine.clone()),
    };
    let recovered = {
        let (target, store, dedup) = (target.clone(), store.clone(), dedup.clone());
        tokio::task::spawn_blocking(move || recover(&target, &store, &dedup)).await?
    }
    .with_context(|| format!("recovering data location {}", config.data.display()))?;
    let now_secs = (now_ns() / 1_000_000_000) as u64;
    let (wal, replay) = Wal::open(
        WalConfig {
            dir: wal_dir(&state),
            segment_bytes: config.wal_segment_bytes,
            max_group_bytes: 16 << 20,
            quarantine: Some(quarantine.clone()),
        },
        store.clone(),
        metrics.clone(),
        recovered.checkpoint.flushed_seq,
        |r| {
            if let Some(key) = r.key() {
                dedup.insert(r.dataset, &key, now_secs);
            }
        },
    )
    .context("opening the WAL")?;
    tracing::info!(
        data = %data.display(),
        files = recovered.files,
        dedup_keys = recovered.dedup_keys_restored,
        renames_completed = recovered.renames_completed,
        files_quarantined = recovered.quarantined,
        wal_damaged_regions = replay.damage.len(),
        wal_entries_replayed = replay.entries_replayed,
        wal_records_replayed = replay.records_replayed,
        wal_entries_left_to_kafka = replay.entries_left_to_log,
        last_seq = replay.last_seq,
        "recovered"
    );

    let relay: Option<Arc<dyn Relay>> = match &config.relay_kafka {
        Some((brokers, topic)) => {
            tracing::info!(%brokers, %topic, "edge node: relaying accepted records to Kafka");
            Some(Arc::new(
                KafkaRelay::new(brokers, topic, Duration::from_secs(30))
                    .context("starting the Kafka relay")?,
            ))
        }
        None => None,
    };
    let pipeline = Pipeline::with_relay(
        wal.clone(),
        store.clone(),
        dedup.clone(),
        metrics.clone(),
        relay,
    );
    let flusher = Arc::new(Flusher::new(
        target.clone(),
        store.clone(),
        wal.clone(),
        metrics.clone(),
        FlushPolicy {
            max_rows: config.flush_rows,
            max_bytes: config.flush_bytes,
            max_age: config.flush_interval,
            tick: Duration::from_millis(100),
        },
        recovered.checkpoint,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let flusher_task = tokio::spawn(flusher.clone().run(stop_rx.clone()));
    tokio::spawn(expire_dedup(dedup.clone(), stop_rx.clone()));

    let listing = Arc::new(SharedListing::new(
        target.clone(),
        store.clone(),
        dedup.clone(),
    ));
    if config.shares_data_location() {
        tokio::spawn(listing.clone().run(config.list_interval, stop_rx.clone()));
    }
    let prices = Arc::new(match &config.prices {
        Some(path) => PriceCatalogue::from_file(path)?,
        None => PriceCatalogue::embedded(),
    });
    tracing::info!(models = prices.len(), "price catalogue loaded");
    let rollups = Arc::new(Rollups::new());
    let history = History::new(
        store.clone(),
        rollups.clone(),
        target.destination.object_store(),
        prices.clone(),
        GAP_LIMIT_SECS,
    );
    let compactor = Arc::new(Compactor::new(
        target.clone(),
        store.clone(),
        rollups.clone(),
        Arc::new(history.clone()),
        CompactionPolicy {
            compact_after: config.compact_after,
            interval: config.compact_interval,
            raw_retention: config.raw_retention,
            rollup_retention: config.rollup_retention,
            // Replaced files stay one interval for queries still reading them.
            grace: config.compact_interval,
        },
        metrics.clone(),
    ));
    {
        let (c, compacted) = (compactor.clone(), recovered.compacted.clone());
        let n = tokio::task::spawn_blocking(move || c.recover(&compacted))
            .await?
            .context("loading the stored rollups")?;
        tracing::info!(hours = n, "stored rollups registered");
    }
    tokio::spawn(compactor.clone().run(stop_rx.clone()));
    let engine = SqlEngine::with_object_store(store.clone(), target.destination.object_store())
        .await?
        .with_history(&history, prices.clone())
        .await?
        .with_file_check(Arc::new(FileDoctor::new(
            target.destination.clone(),
            data.clone(),
            store.clone(),
            quarantine.clone(),
        )));
    let kafka_status = Arc::new(parking_lot::Mutex::new(KafkaStatus::default()));
    let kafka_thread = match config.kafka.clone() {
        Some(kafka) => {
            let hooks = KafkaHooks {
                flushed: flusher.flushed(),
                flush_now: {
                    let flusher = flusher.clone();
                    Arc::new(move || {
                        let flusher = flusher.clone();
                        Box::pin(async move {
                            flusher.flush().await.map_err(|e| e.to_string())?;
                            let flushed = *flusher.flushed().borrow();
                            Ok(flushed)
                        })
                    })
                },
                refresh: {
                    let listing = listing.clone();
                    Arc::new(move || {
                        let listing = listing.clone();
                        Box::pin(async move {
                            listing
                                .refresh()
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        })
                    })
                },
            };
            Some(
                tally_sources::kafka::start(
                    kafka,
                    pipeline.clone(),
                    hooks,
                    kafka_status.clone(),
                    stop_rx.clone(),
                )
                .context("starting the Kafka source")?,
            )
        }
        None => None,
    };
    let (updates_tx, updates_rx) = watch::channel(None);
    let tick_cost = Arc::new(parking_lot::Mutex::new(Duration::ZERO));
    let sampler = match config.sampler_interval {
        Some(_) => {
            let gpu = tokio::task::spawn_blocking(hardware::gpu::open).await?;
            match HostSampler::new(gpu) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "hardware sampler disabled");
                    None
                }
            }
        }
        None => None,
    };
    let host = sampler.as_ref().map(|s| s.info.clone());
    let gpu_absent = sampler.as_ref().and_then(|s| s.gpu_absent.clone());
    if let Some(why) = &gpu_absent {
        tracing::info!(reason = %why, "no GPU telemetry; GPU fields are left out");
    }
    let updates_keepalive = match (sampler, config.sampler_interval) {
        (Some(sampler), Some(interval)) => {
            tokio::spawn(hardware::run(
                sampler,
                interval,
                pipeline.clone(),
                updates_tx,
                tick_cost.clone(),
                stop_rx.clone(),
            ));
            None
        }
        // No sampler: /usage still answers system_info; nothing follows.
        _ => Some(updates_tx),
    };
    let host_for_ws = host.clone();
    let feed = UsageFeed {
        system_info: Arc::new(move || {
            match &host_for_ws {
            Some(h) => h.system_info().to_string(),
            None => serde_json::json!({"type": "system_info", "timestamp": tally_pipeline::now_ns() / 1_000_000_000}).to_string(),
        }
        }),
        updates: updates_rx,
    };
    let forwarder = config.control_plane_url.clone().map(|url| {
        tracing::info!(%url, "forwarding chat.usage_summary to the control plane");
        control_plane::start(ForwarderConfig::new(url))
    });
    let tap: Option<Arc<dyn PayloadTap>> = forwarder.clone().map(|f| f as Arc<dyn PayloadTap>);
    let nats_status = Arc::new(parking_lot::Mutex::new(NatsStatus::default()));
    let nats_task = config.nats.clone().map(|nats| {
        let (pipeline, tap, status, stop) = (
            pipeline.clone(),
            tap.clone(),
            nats_status.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) =
                tally_sources::nats::run(nats, pipeline, tap, status.clone(), stop).await
            {
                tracing::error!(error = %e, "NATS collector stopped");
                *status.lock() = NatsStatus {
                    connected: false,
                    detail: Some(e.to_string()),
                };
            }
        })
    });
    let billing = BillingService::new(pipeline.clone(), GAP_LIMIT_SECS);
    let status = StatusState {
        pipeline: pipeline.clone(),
        flusher: flusher.clone(),
        billing: billing.metrics.clone(),
        forwarder: forwarder.as_ref().map(|f| f.metrics.clone()),
        nats: config.nats.is_some().then(|| nats_status.clone()),
        kafka: config.kafka.is_some().then(|| kafka_status.clone()),
        sampler: config.sampler_interval.map(|_| tick_cost.clone()),
        quarantine: quarantine.clone(),
        gpu: host.as_ref().map(|h| match &gpu_absent {
            None => serde_json::json!({"status": "ok", "count": h.gpus.len()}),
            Some(why) => serde_json::json!({"status": "absent", "detail": why}),
        }),
        started,
    };
    let usage_config_path =
        tally_sinks::parquet::layout::state_dir(&state).join("usage_config.json");
    quarantine_unreadable_usage_config(&usage_config_path, &quarantine);
    let app = Router::new()
        .merge(tally_sources::http::router(pipeline.clone(), tap.clone()))
        .merge(tally_queries::agent_usage::router(
            history.clone(),
            prices.clone(),
        ))
        .merge(hardware::stream::router(feed))
        .merge(
            UsageApi::new(
                engine.clone(),
                history.clone(),
                pipeline.clone(),
                prices.clone(),
                UsageApiConfig {
                    config_path: usage_config_path.clone(),
                    config_updates_per_minute: config.usage_config_rate,
                    stats_per_minute: config.usage_stats_rate,
                },
            )
            .context("loading the usage API configuration")?
            .router(),
        )
        .merge(tally_sources::billing::router(
            billing,
            config.max_body_bytes,
        ))
        .merge(tally_queries::sql::route::router(engine))
        .merge(tally_queries::vm_billing::router(history.clone()))
        .merge(status::router(status.clone()))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));

    let mut servers = Vec::new();
    let listeners = config.listen.iter().map(|a| (*a, app.clone())).chain(
        config
            .metrics_listen
            .map(|a| (a, status::metrics_router(status.clone()))),
    );
    for (addr, app) in listeners {
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        }));
    }

    shutdown_signal().await;
    tracing::info!("shutting down: no new requests; flushing");
    let _ = stop_tx.send(true);
    for s in servers {
        if let Ok(Err(e)) = s.await {
            tracing::warn!(error = %e, "listener ended with an error");
        }
    }
    drop(updates_keepalive);
    let _ = flusher_task.await;
    if let Some(t) = nats_task {
        let _ = t.await;
    }
    if let Some(t) = kafka_thread {
        // It flushes and commits what it consumed before it returns.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let flushed = flusher.flush().await;
    wal.shutdown().await;
    match flushed {
        Ok(stats) => {
            tracing::info!(
                files = stats.files,
                rows = stats.rows,
                "stopped; everything is in Parquet"
            );
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "final flush failed; the WAL keeps the records for the next start");
            Err(e.into())
        }
    }
}

/// A Usage API configuration file that cannot be read goes to the
/// quarantine (reported); the API then starts from the defaults.
fn quarantine_unreadable_usage_config(path: &std::path::Path, quarantine: &Quarantine) {
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let Err(e) = serde_json::from_slice::<tally_queries::plan_usage::config::UsageConfig>(&bytes)
    else {
        return;
    };
    let kept = quarantine
        .move_in(path, std::path::Path::new("state/usage_config.json"))
        .map(|p| p.display().to_string());
    if let Err(err) = &kept {
        tracing::error!(path = %path.display(), error = %err, "cannot move the unreadable Usage API configuration aside");
    }
    quarantine.report(tally_pipeline::quarantine::Damage {
        kind: tally_pipeline::quarantine::DamageKind::StateFile,
        path: path.display().to_string(),
        quarantined: kept.ok(),
        offset: None,
        unread_entries: 0,
        unread_bytes: bytes.len() as u64,
        detail: format!("the Usage API configuration cannot be read ({e}); the defaults are used until it is set again"),
        found_at: tally_pipeline::quarantine::now_secs(),
        acknowledged: false,
    });
}

async fn expire_dedup(dedup: Arc<Dedup>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let dedup = dedup.clone();
        let now = (now_ns() / 1_000_000_000) as u64;
        let _ = tokio::task::spawn_blocking(move || dedup.expire(now)).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Raises the soft limit of open files to the hard limit, as servers do:
/// a query over many hours opens a file per hour not yet compacted.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let soft = limit.rlim_cur;
        if soft < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(
                    from = soft,
                    to = limit.rlim_max,
                    "raised the open-file limit"
                );
            }
        }
    }
}
