//! `tally serve`: each component started in order, the routes put
//! together, and the shutdown order.
//!
//! The order: the core (recovery, WAL, pipeline), the Parquet sink (flusher,
//! shared listing, compactor), the read side (history, SQL engine), the
//! sources, the routes, the listeners. Shutdown goes the other way: no new
//! requests, sources stop, the last flush, the WAL closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use tally_derive::alerts::Alerts;
use tally_derive::anomalies::Anomalies;
use tally_derive::budgets::Budgets;
use tally_derive::plan_usage::PlanUsage;
use tally_derive::rollups::HourRollups;
use tally_pipeline::clock::NS_PER_SEC;
use tally_pipeline::component::{Context, Handle};
use tally_pipeline::dedup::Dedup;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::quarantine::Quarantine;
use tally_pipeline::store::Store;
use tally_pipeline::tap::PayloadTap;
use tally_pipeline::wal::{Wal, WalConfig};
use tally_pipeline::{now_ns, Pipeline, Relay};
use tally_queries::api_usage::UsageApi;
use tally_queries::history::History;
use tally_queries::prices::PriceCatalogue;
use tally_queries::SqlEngine;
use tally_sinks::control_plane::{self, ControlPlaneForwarder};
use tally_sinks::kafka_relay::KafkaRelay;
use tally_sinks::parquet::layout::wal_dir;
use tally_sinks::parquet::scrub::Scrub;
use tally_sinks::parquet::sink::{ParquetSink, SinkParts};
use tally_sinks::parquet::verify::FileDoctor;
use tally_sinks::{recover, Compactor, Destination, FlushTarget};
use tally_sources::billing::BillingService;
use tally_sources::hardware;
use tally_sources::kafka::KafkaStatus;
use tally_sources::nats::NatsStatus;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, Auth, Need};
use crate::config::Config;
use crate::status::{self, StatusState};
use crate::tls::Tls;
use tally_pipeline::access::Role;

type Shared<T> = Arc<parking_lot::Mutex<T>>;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let started = Instant::now();
    let (stop_tx, stop) = watch::channel(false);
    let auth = Auth::start(
        &config.auth,
        &config.state_root(),
        &config.data,
        &config.listen,
    )?;
    let tls = Tls::start(&config.tls)?;
    let core = Core::start(&config).await?;
    let ctx = Context {
        pipeline: core.pipeline.clone(),
        stop: stop.clone(),
    };
    let sink = tally_sinks::parquet::sink::start(&config.parquet, core.sink_parts(&config), &ctx);
    tokio::spawn(core.dedup.clone().expire_every_minute(stop.clone()));
    let read = ReadSide::start(&config, &core, &sink, &stop).await?;
    let sources = Sources::start(&config, &ctx, &sink).await?;
    let status = StatusState {
        pipeline: core.pipeline.clone(),
        flusher: sink.flusher.clone(),
        billing: sources.billing.metrics.clone(),
        forwarder: sources.forwarder.as_ref().map(|f| f.metrics.clone()),
        nats: sources.nats.as_ref().map(|(_, s)| s.clone()),
        kafka: sources.kafka.as_ref().map(|(_, s)| s.clone()),
        sampler: config
            .sampler_interval
            .map(|_| sources.sampler.tick_cost.clone()),
        quarantine: core.quarantine.clone(),
        gpu: sources.sampler.gpu_status.clone(),
        auth: auth.clone(),
        lost: read.lost.clone(),
        started,
    };
    tokio::spawn(auth.clone().run(stop.clone()));
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(stop.clone()));
    }
    let app = routes(&config, &core, &read, &sources, status.clone(), &auth)?;
    let metrics_only = config
        .metrics_listen
        .map(|a| (a, status::metrics_router(status.clone())));
    let listeners = config.listen.iter().map(|a| (*a, app.clone()));
    let mut servers = Vec::new();
    for (addr, app) in listeners.chain(metrics_only) {
        servers.push(listen(addr, app, tls.clone(), stop.clone()).await?);
    }

    shutdown_signal().await;
    tracing::info!("shutting down: no new requests; flushing");
    let _ = stop_tx.send(true);
    for s in servers {
        if let Ok(Err(e)) = s.await {
            tracing::warn!(error = %e, "listener ended with an error");
        }
    }
    sources.stopped().await;
    sink.handle.stopped().await;
    let flushed = sink.flusher.flush().await;
    core.wal.shutdown().await;
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

/// Recovery, the WAL and the pipeline every source writes through.
struct Core {
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    dedup: Arc<Dedup>,
    quarantine: Arc<Quarantine>,
    target: FlushTarget,
    wal: Wal,
    pipeline: Pipeline,
    checkpoint: tally_sinks::Checkpoint,
    compacted: Vec<(tally_pipeline::Dataset, std::path::PathBuf)>,
}

impl Core {
    /// What the Parquet sink is started with.
    fn sink_parts(&self, config: &Config) -> SinkParts {
        SinkParts {
            target: self.target.clone(),
            store: self.store.clone(),
            wal: self.wal.clone(),
            dedup: self.dedup.clone(),
            metrics: self.metrics.clone(),
            checkpoint: self.checkpoint.clone(),
            shared: config.shares_data_location(),
        }
    }

    async fn start(config: &Config) -> anyhow::Result<Core> {
        let metrics = Arc::new(Metrics::default());
        let p = &config.pipeline;
        let store = Arc::new(Store::new(p.max_queued_rows));
        let dedup = Arc::new(Dedup::new(
            p.dedup_window.as_secs(),
            p.dedup_max_keys,
            metrics.clone(),
        ));
        let (data, state) = (config.files_dir(), config.state_root());
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
        let now_secs = (now_ns() / NS_PER_SEC) as u64;
        let (wal, replay) = Wal::open(
            WalConfig {
                dir: wal_dir(&state),
                segment_bytes: p.wal_segment_bytes,
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
        let relay: Option<Arc<dyn Relay>> = match &config.relay {
            Some(r) => {
                tracing::info!(brokers = %r.brokers, topic = %r.topic, "edge node: relaying accepted records to Kafka");
                Some(Arc::new(
                    KafkaRelay::new(&r.brokers, &r.topic, r.timeout, &r.options)
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
        Ok(Core {
            metrics,
            store,
            dedup,
            quarantine,
            target,
            wal,
            pipeline,
            checkpoint: recovered.checkpoint,
            compacted: recovered.compacted,
        })
    }
}

/// The read side: prices, history (stored rollups and raw records, and the
/// compactor that writes the rollups), the SQL engine.
struct ReadSide {
    prices: Arc<PriceCatalogue>,
    /// Hours whose raw rows damage took: the read APIs mark their answers.
    lost: crate::incomplete::Lost,
    history: History,
    engine: SqlEngine,
    alerts: Alerts,
    budgets: Budgets,
    anomalies: Anomalies,
}

impl ReadSide {
    async fn start(
        config: &Config,
        core: &Core,
        sink: &ParquetSink,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<ReadSide> {
        let prices = Arc::new(config.prices.load()?);
        tracing::info!(models = prices.len(), "price catalogue loaded");
        let object = core.target.destination.object_store();
        let history = History::new(
            core.store.clone(),
            sink.rollups.clone(),
            object.clone(),
            prices.clone(),
        );
        // Queries and compaction that meet an unreadable file move it to
        // the quarantine through one doctor (it remembers verified files).
        let doctor = Arc::new(FileDoctor::new(
            core.target.destination.clone(),
            core.target.data.clone(),
            core.store.clone(),
            sink.rollups.clone(),
            core.quarantine.clone(),
            core.metrics.clone(),
        ));
        // Reads check each file's checksum the first time they use it; the
        // scrub reads every file again each interval.
        core.store.set_file_check(doctor.clone());
        let scrub = Arc::new(Scrub::new(
            doctor.clone(),
            core.metrics.clone(),
            config.parquet.scrub,
        ));
        tokio::spawn(scrub.run(stop.clone()));
        let compactor = Arc::new(
            Compactor::new(
                core.target.clone(),
                core.store.clone(),
                sink.rollups.clone(),
                Arc::new(HourRollups::new(history.clone(), prices.clone())),
                config.parquet.compaction.clone(),
                core.metrics.clone(),
            )
            .with_file_check(doctor.clone()),
        );
        let (c, compacted) = (compactor.clone(), core.compacted.clone());
        let n = tokio::task::spawn_blocking(move || c.recover(&compacted))
            .await?
            .context("loading the stored rollups")?;
        tracing::info!(hours = n, "stored rollups registered");
        tokio::spawn(compactor.run(stop.clone()));
        let engine = SqlEngine::with_object_store(core.store.clone(), object)
            .await?
            .with_file_check(doctor);
        history.register_rollup_tables(&engine).await?;
        tally_queries::vm_billing::table::register(&engine, &history)?;
        for udf in tally_queries::prices::cost_udfs(prices.clone()) {
            engine.register_udf(udf);
        }
        let state = tally_sinks::parquet::layout::state_dir(&core.target.state);
        let target = config.alerts.target().map_err(anyhow::Error::msg)?;
        let alerts = Alerts::open(
            state.join("alerts"),
            core.pipeline.clone(),
            target,
            &core.quarantine,
        )
        .context("loading the alert delivery states")?;
        let budgets = Budgets::open(
            state.join("budgets"),
            history.clone(),
            prices.clone(),
            alerts.clone(),
            &config.budgets,
            &core.quarantine,
        )
        .context("loading the budgets")?;
        let anomalies = Anomalies::new(
            history.clone(),
            prices.clone(),
            core.pipeline.clone(),
            alerts.clone(),
            &config.anomalies,
        )
        .map_err(anyhow::Error::msg)?;
        tokio::spawn(alerts.clone().deliver(stop.clone()));
        tokio::spawn(budgets.clone().run(stop.clone()));
        tokio::spawn(anomalies.clone().run(stop.clone()));
        Ok(ReadSide {
            lost: crate::incomplete::Lost {
                store: core.store.clone(),
                rollups: sink.rollups.clone(),
                raw_reads: false,
            },
            prices,
            history,
            engine,
            alerts,
            budgets,
            anomalies,
        })
    }
}

/// The sources besides HTTP ingest: billing.v1, NATS, Kafka, the host
/// sampler, and the control-plane hook that sees accepted payloads.
struct Sources {
    billing: BillingService,
    forwarder: Option<Arc<ControlPlaneForwarder>>,
    tap: Option<Arc<dyn PayloadTap>>,
    nats: Option<(Handle, Shared<NatsStatus>)>,
    kafka: Option<(Handle, Shared<KafkaStatus>)>,
    sampler: hardware::Sampler,
}

impl Sources {
    async fn start(config: &Config, ctx: &Context, sink: &ParquetSink) -> anyhow::Result<Sources> {
        let kafka = match config.kafka.clone() {
            Some(k) => Some(
                tally_sources::kafka::start(k, ctx, sink.control())
                    .context("starting the Kafka source")?,
            ),
            None => None,
        };
        let forwarder = config.control_plane.clone().map(|c| {
            tracing::info!(url = %c.url, "forwarding chat.usage_summary to the control plane");
            control_plane::start(c)
        });
        let tap = forwarder.clone().map(|f| f as Arc<dyn PayloadTap>);
        let nats = config
            .nats
            .clone()
            .map(|n| tally_sources::nats::start(n, ctx, tap.clone()));
        Ok(Sources {
            billing: BillingService::new(ctx.pipeline.clone())
                .with_customer_limits(config.limits.customers()),
            forwarder,
            tap,
            nats,
            kafka,
            sampler: hardware::start(config.sampler_interval, ctx).await,
        })
    }

    /// Waits for the sources to stop (after the stop signal).
    async fn stopped(self) {
        drop(self.sampler.keepalive);
        for (handle, _) in self.nats.into_iter() {
            handle.stopped().await;
        }
        for (handle, _) in self.kafka.into_iter() {
            handle.stopped().await;
        }
        self.sampler.handle.stopped().await;
    }
}

/// Every route of the main listeners, each group behind the token check
/// its role needs (`/health` and the dashboard's files alone are open).
fn routes(
    config: &Config,
    core: &Core,
    read: &ReadSide,
    sources: &Sources,
    status: StatusState,
    auth: &Arc<Auth>,
) -> anyhow::Result<Router> {
    let usage_config_path =
        tally_sinks::parquet::layout::state_dir(&core.target.state).join("usage_config.json");
    quarantine_unreadable_usage_config(&usage_config_path, &core.quarantine)?;
    let settings = config.usage_api.resolve(usage_config_path);
    let usage_api = UsageApi::new(
        read.engine.clone(),
        read.history.clone(),
        read.prices.clone(),
        &settings,
        Arc::new(PlanUsage::new(
            settings.config_path.clone(),
            core.pipeline.clone(),
        )),
    )
    .context("loading the usage API configuration")?;
    let gate = |router: Router, need: Need, render: auth::Render| {
        router.route_layer(axum::middleware::from_fn_with_state(
            auth.gate(need, render),
            auth::authenticate,
        ))
    };
    let json = auth::json_refusal;
    // Answers built from stored rows carry the marker while rows are lost.
    let marked_by = |router: Router, lost: crate::incomplete::Lost| {
        router.layer(axum::middleware::from_fn_with_state(
            lost,
            crate::incomplete::mark,
        ))
    };
    let marked = |router: Router| marked_by(router, read.lost.clone());
    Ok(Router::new()
        .merge(gate(
            tally_sources::http::router(
                core.pipeline.clone(),
                sources.tap.clone(),
                config.limits.tenants().map(Arc::new),
            ),
            Need::role(Role::Ingest),
            json,
        ))
        .merge(gate(
            tally_sources::billing::router(sources.billing.clone(), config.max_body_bytes),
            Need::role(Role::Ingest),
            billing_refusal,
        ))
        .merge(gate(
            tally_queries::usage::router(sources.sampler.feed.clone()),
            Need::role(Role::Read).all_tenants(),
            json,
        ))
        .merge(gate(
            marked(tally_queries::internal_usage::router(
                read.history.clone(),
                read.prices.clone(),
            )),
            Need::role(Role::Read),
            json,
        ))
        .merge(gate(
            marked(usage_api.router()),
            Need::role(Role::Read).writes(Role::Admin),
            json,
        ))
        .merge(gate(
            marked_by(
                tally_queries::sql::route::router(read.engine.clone()),
                read.lost.for_raw_reads(),
            ),
            Need::role(Role::Admin),
            json,
        ))
        .merge(gate(
            marked(tally_queries::vm_billing::router(read.history.clone())),
            Need::role(Role::Read),
            json,
        ))
        .merge(gate(
            marked(tally_queries::budgets::api::router(Arc::new(
                read.budgets.clone(),
            ))),
            Need::role(Role::Read).writes(Role::Admin),
            json,
        ))
        .merge(gate(
            tally_queries::alerts::api::router(read.alerts.feed())
                .merge(tally_queries::anomalies::router(read.anomalies.board())),
            Need::role(Role::Read),
            json,
        ))
        .merge(gate(
            status::router(status.clone()),
            Need::role(Role::Read).writes(Role::Admin).all_tenants(),
            json,
        ))
        .merge(status::health_router(status))
        // The page holds no data: it asks for a token when an API needs one.
        .merge(tally_queries::dashboard::router())
        .layer(DefaultBodyLimit::max(config.max_body_bytes)))
}

/// billing.v1's refusals in its protocols' shapes.
fn billing_refusal(headers: &axum::http::HeaderMap, d: &auth::Denial) -> axum::response::Response {
    tally_sources::billing::refusal(
        headers,
        d.status == axum::http::StatusCode::UNAUTHORIZED,
        &d.detail,
    )
}

/// Serves `app` on `addr` until `stop`.
async fn listen(
    addr: SocketAddr,
    app: Router,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "listening");
    if let Some(tls) = tls {
        return Ok(tokio::spawn(crate::tls::serve(listener, app, tls, stop)));
    }
    // No Nagle delay: without it an answer written in parts (gRPC's
    // headers, message and trailers) waited for the client's delayed ACK,
    // up to 40 ms, or for the next request on the connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    Ok(tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    }))
}

/// A Usage API configuration file that cannot be read goes to the
/// quarantine (reported); the API then starts from the defaults.
fn quarantine_unreadable_usage_config(
    path: &std::path::Path,
    quarantine: &Quarantine,
) -> anyhow::Result<()> {
    // A damaged file (its checksum does not match) is refused, not
    // replaced by the defaults: the operator restores it.
    let Some((bytes, _)) = tally_pipeline::state_file::read(path)? else {
        return Ok(());
    };
    let Err(e) = serde_json::from_slice::<tally_queries::api_usage::config::UsageConfig>(&bytes)
    else {
        return Ok(());
    };
    quarantine.set_aside(
        path,
        "state/usage_config.json",
        format!("the Usage API configuration cannot be read ({e}); the defaults are used until it is set again"),
    );
    Ok(())
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
