//! `tally serve`: each component started in order, the routes put
//! together, and the shutdown order.
//!
//! The order: the core (recovery, WAL, pipeline), then every component
//! through one contract (`tally_pipeline::component`): the Parquet sink
//! (flusher, shared listing), the read side (history, file checks, SQL
//! engine; it runs nothing), the derive jobs (compaction and its rollups,
//! the scrub, alerts, budgets, anomalies), the sources; then the routes and
//! the listeners. Shutdown goes the other way: no new requests, the
//! components in reverse order (sources first), the last flush, the WAL
//! closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use tally_derive::alerts::{AlertJob, Alerts};
use tally_derive::anomalies::{Anomalies, AnomalyJob};
use tally_derive::budgets::{BudgetJob, Budgets};
use tally_derive::meters::MeterJob;
use tally_derive::plan_usage::PlanUsage;
use tally_derive::rollups::HourRollups;
use tally_pipeline::clock::NS_PER_SEC;
use tally_pipeline::component::{Components, Context};
use tally_pipeline::dedup::{Dedup, Keys};
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
use tally_sinks::control_plane::ControlPlane;
use tally_sinks::kafka_relay::KafkaRelay;
use tally_sinks::parquet::layout::wal_dir;
use tally_sinks::parquet::sink::{Compaction, Parquet, ParquetSink, Scrubbing, SinkParts};
use tally_sinks::parquet::verify::FileDoctor;
use tally_sinks::{recover, Destination, FlushTarget};
use tally_sources::billing::BillingSource;
use tally_sources::cloudevents::CloudEvents;
use tally_sources::hardware::Sampler;
use tally_sources::http::Http;
use tally_sources::kafka::Kafka;
use tally_sources::nats::Nats;
use tally_sources::otlp::OtlpSource;
use tally_sources::stripe::StripeMeterEvents;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, Auth, Need};
use crate::config::Config;
use crate::status::{self, StatusState};
use crate::tls::Tls;
use tally_pipeline::access::Role;

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
    tokio::spawn(core.dedup.clone().expire_every_minute(stop.clone()));

    // Every component, in start order: store, read, derive, ingest.
    let mut all = Components::default();
    let sink = all
        .start(
            Parquet {
                settings: config.parquet.clone(),
                parts: core.sink_parts(&config),
            },
            &ctx,
        )
        .await?;
    let read = ReadSide::open(&config, &core, &sink).await?;
    let state = tally_sinks::parquet::layout::state_dir(&core.target.state);
    let meters = all
        .start(
            MeterJob {
                dir: state.join("meters"),
                configured: config.meters.clone(),
                quarantine: core.quarantine.clone(),
            },
            &ctx,
        )
        .await?;
    {
        let book = meters.clone();
        read.engine
            .register_meters(Arc::new(move |slug: &str| {
                tally_queries::api_v1::meters::MeterBook::get(book.as_ref(), slug)
                    .map(|s| s.meter.clone())
            }))
            .await?;
    }
    all.start(
        Compaction {
            settings: config.parquet.clone(),
            target: core.target.clone(),
            store: core.store.clone(),
            rollups: sink.rollups.clone(),
            builder: Arc::new(
                HourRollups::new(read.history.clone(), read.prices.clone())
                    .with_meters(meters.clone(), core.metrics.clone()),
            ),
            metrics: core.metrics.clone(),
            doctor: read.doctor.clone(),
            compacted: core.compacted.clone(),
        },
        &ctx,
    )
    .await?;
    all.start(
        Scrubbing {
            settings: config.parquet.clone(),
            doctor: read.doctor.clone(),
            metrics: core.metrics.clone(),
        },
        &ctx,
    )
    .await?;
    let alerts = all
        .start(
            AlertJob {
                dir: state.join("alerts"),
                target: config.alerts.target()?,
                quarantine: core.quarantine.clone(),
            },
            &ctx,
        )
        .await?;
    let budgets = all
        .start(
            BudgetJob {
                dir: state.join("budgets"),
                history: read.history.clone(),
                prices: read.prices.clone(),
                alerts: alerts.clone(),
                args: config.budgets.clone(),
                quarantine: core.quarantine.clone(),
            },
            &ctx,
        )
        .await?;
    let anomalies = all
        .start(
            AnomalyJob {
                history: read.history.clone(),
                prices: read.prices.clone(),
                alerts: alerts.clone(),
                args: config.anomalies.clone(),
            },
            &ctx,
        )
        .await?;
    let forwarder = match config.control_plane.clone() {
        Some(c) => Some(all.start(ControlPlane(c), &ctx).await?),
        None => None,
    };
    let tap = forwarder.clone().map(|f| f as Arc<dyn PayloadTap>);
    let kafka = match config.kafka.clone() {
        Some(k) => Some(
            all.start(
                Kafka {
                    config: k,
                    sink: sink.control(),
                },
                &ctx,
            )
            .await?,
        ),
        None => None,
    };
    let nats = match config.nats.clone() {
        Some(n) => Some(
            all.start(
                Nats {
                    config: n,
                    tap: tap.clone(),
                },
                &ctx,
            )
            .await?,
        ),
        None => None,
    };
    let sampling = all
        .start(
            Sampler {
                interval: config.sampler_interval,
            },
            &ctx,
        )
        .await?;
    let http = all
        .start(
            Http {
                tap,
                limits: config.limits.tenants().map(Arc::new),
            },
            &ctx,
        )
        .await?;
    let cloudevents = all.start(CloudEvents, &ctx).await?;
    let stripe = all.start(StripeMeterEvents, &ctx).await?;
    let billing = all
        .start(
            BillingSource {
                customer_limits: config.limits.customers(),
                max_body: config.max_body_bytes,
            },
            &ctx,
        )
        .await?;

    let otlp = all
        .start(
            OtlpSource {
                default_tenant: config.otlp.otlp_default_tenant.clone(),
                max_body: config.max_body_bytes,
            },
            &ctx,
        )
        .await?;

    let status = StatusState {
        pipeline: core.pipeline.clone(),
        flusher: sink.flusher.clone(),
        billing: billing.metrics.clone(),
        forwarder: forwarder.as_ref().map(|f| f.metrics.clone()),
        nats,
        kafka,
        sampler: config.sampler_interval.map(|_| sampling.tick_cost.clone()),
        quarantine: core.quarantine.clone(),
        gpu: sampling.gpu_status.clone(),
        auth: auth.clone(),
        lost: read.lost.clone(),
        started,
    };
    tokio::spawn(auth.clone().run(stop.clone()));
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(stop.clone()));
    }
    let running = Running {
        ingest: http,
        cloudevents,
        stripe,
        billing: billing.routes,
        otlp: otlp.routes,
        usage_feed: sampling.feed,
        budgets,
        alerts,
        anomalies,
        meters,
    };
    // `--otlp-listen`: the OTLP routes alone, behind the same token check.
    let otlp_only =
        otlp_routes(running.otlp.clone(), &auth).merge(status::health_router(status.clone()));
    let app = routes(&config, &core, &read, running, status.clone(), &auth)?;
    let metrics_only = config
        .metrics_listen
        .map(|a| (a, status::metrics_router(status.clone())));
    let listeners = config.listen.iter().map(|a| (*a, app.clone()));
    let otlp_listeners = config
        .otlp
        .otlp_listen
        .iter()
        .map(|a| (*a, otlp_only.clone()));
    let mut servers = Vec::new();
    for (addr, app) in listeners.chain(otlp_listeners).chain(metrics_only) {
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
    // Sources first, the flusher last.
    all.stopped().await;
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

/// What the routes are built from, besides the read side.
struct Running {
    ingest: Router,
    cloudevents: Router,
    stripe: Router,
    billing: Router,
    otlp: Router,
    usage_feed: tally_pipeline::host::UsageFeed,
    budgets: Budgets,
    alerts: Alerts,
    anomalies: Anomalies,
    meters: Arc<tally_derive::meters::Meters>,
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
            |columns| {
                for (dataset, key) in Keys::of_columns(columns).iter() {
                    dedup.insert(dataset, key, now_secs);
                }
            },
        )
        .context("opening the WAL")?;
        dedup.order_by_first_seen();
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

/// The read side: prices, history (stored rollups and raw records), the
/// file checks every reader and the compactor share, the SQL engine. It
/// runs nothing of its own.
struct ReadSide {
    prices: Arc<PriceCatalogue>,
    /// Hours whose raw rows damage took: the read APIs mark their answers.
    lost: crate::incomplete::Lost,
    history: History,
    engine: SqlEngine,
    doctor: Arc<FileDoctor>,
}

impl ReadSide {
    async fn open(config: &Config, core: &Core, sink: &ParquetSink) -> anyhow::Result<ReadSide> {
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
        let engine = SqlEngine::with_object_store(core.store.clone(), object)
            .await?
            .with_file_check(doctor.clone());
        history.register_rollup_tables(&engine).await?;
        tally_queries::vm_billing::table::register(&engine, &history)?;
        for udf in tally_queries::prices::cost_udfs(prices.clone()) {
            engine.register_udf(udf);
        }
        Ok(ReadSide {
            lost: crate::incomplete::Lost {
                store: core.store.clone(),
                rollups: sink.rollups.clone(),
                raw_reads: false,
            },
            prices,
            history,
            engine,
            doctor,
        })
    }
}

/// Every route of the main listeners, each group behind the token check
/// its role needs (`/health` and the dashboard's files alone are open).
fn routes(
    config: &Config,
    core: &Core,
    read: &ReadSide,
    running: Running,
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
    let meters = tally_queries::api_v1::meters::Meters::new(
        running.meters.clone(),
        read.engine.clone(),
        read.history.clone(),
        core.metrics.clone(),
    );
    Ok(Router::new()
        .merge(gate(running.ingest, Need::role(Role::Ingest), json))
        .merge(gate(
            running.cloudevents,
            Need::role(Role::Ingest),
            auth::problem_refusal,
        ))
        .merge(gate(
            running.stripe,
            Need::role(Role::Ingest),
            auth::stripe_refusal,
        ))
        .merge(gate(
            tally_queries::api_v1::router(meters.clone()),
            Need::role(Role::Read),
            auth::problem_refusal,
        ))
        .merge(gate(
            tally_queries::api_v1::meters::definitions_router(meters),
            Need::role(Role::Admin),
            auth::problem_refusal,
        ))
        .merge(gate(
            running.billing,
            Need::role(Role::Ingest),
            billing_refusal,
        ))
        .merge(otlp_routes(running.otlp, auth))
        .merge(gate(
            tally_queries::usage::router(running.usage_feed),
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
                running.budgets,
            ))),
            Need::role(Role::Read).writes(Role::Admin),
            json,
        ))
        .merge(gate(
            tally_queries::alerts::api::router(running.alerts.feed())
                .merge(tally_queries::anomalies::router(running.anomalies.board())),
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

/// The OTLP routes behind the ingest role's token check.
fn otlp_routes(otlp: Router, auth: &Arc<Auth>) -> Router {
    otlp.route_layer(axum::middleware::from_fn_with_state(
        auth.gate(Need::role(Role::Ingest), otlp_refusal),
        auth::authenticate,
    ))
}

/// OTLP's refusals: a gRPC status, or OTLP/HTTP's `google.rpc.Status`.
fn otlp_refusal(headers: &axum::http::HeaderMap, d: &auth::Denial) -> axum::response::Response {
    tally_sources::otlp::refusal(
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
