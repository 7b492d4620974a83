//! Settings of `tally serve`: each component's section, flags and
//! environment over `tally.toml` over the component's defaults.
//!
//! Every component owns its settings struct (flags, environment variable,
//! `tally.toml` key, help text) and its defaults, in its own folder;
//! [`Components`] lists them, one line each, and is both the flag set of
//! `tally serve` and the shape of `tally.toml` (a section per component).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tally_derive::alerts::AlertArgs;
use tally_derive::anomalies::AnomalyArgs;
use tally_derive::budgets::BudgetArgs;
use tally_pipeline::access::limits::LimitsArgs;
use tally_pipeline::config::{layer, PipelineArgs, PipelineSettings};
use tally_pipeline::rules::meter::MeterDef;
use tally_queries::api_usage::UsageApiArgs;
use tally_queries::prices::PricesArgs;
use tally_sinks::control_plane::config::ControlPlaneArgs;
use tally_sinks::control_plane::ForwarderConfig;
use tally_sinks::kafka_relay::{RelayArgs, RelaySettings};
use tally_sinks::parquet::layout::check_node_id;
use tally_sinks::{ParquetArgs, ParquetSettings};
use tally_sources::hardware::SamplerArgs;
use tally_sources::http::HttpArgs;
use tally_sources::kafka::config::KafkaArgs;
use tally_sources::kafka::KafkaConfig;
use tally_sources::nats::config::NatsArgs;
use tally_sources::nats::NatsConfig;
use tally_sources::otlp::OtlpArgs;

use crate::auth::AuthArgs;
use crate::tls::TlsArgs;

/// The data directory when none is given (also of `tally sql` and `tally check`).
pub const DEFAULT_DATA: &str = "data";
/// The state directory of a node whose data is in object storage.
pub const DEFAULT_OBJECT_STATE: &str = "tally-state";
const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

/// This node: where its data and state live, its id, its listeners
/// (`[node]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Node")]
pub struct NodeArgs {
    #[arg(help = tally_pipeline::config::help("Data directory, or `s3://bucket/prefix` for object storage.", DEFAULT_DATA), long, env = "TALLY_DATA")]
    #[serde(default)]
    pub data: Option<PathBuf>,

    /// WAL and checkpoint (and staging for `s3://`) in this directory instead of
    /// the data directory. [default: the data directory; ./tally-state for s3://]
    #[arg(long, env = "TALLY_STATE_DIR")]
    #[serde(default)]
    pub state_dir: Option<PathBuf>,

    /// This node's id, written into the name of every Parquet file it writes;
    /// nodes sharing a data prefix need distinct ids. [default: the host name]
    #[arg(long, env = "TALLY_NODE_ID")]
    #[serde(default)]
    pub node_id: Option<String>,

    #[arg(help = tally_pipeline::config::help("Address to serve every route on (repeatable, or comma-separated).", DEFAULT_LISTEN), long, env = "TALLY_LISTEN", value_delimiter = ',')]
    #[serde(default)]
    pub listen: Vec<SocketAddr>,

    /// Also serve `/metrics` alone on this address (for Prometheus).
    #[arg(long, env = "TALLY_METRICS_LISTEN")]
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Every component's settings: the flags of `tally serve` and the sections
/// of `tally.toml`. A new component adds its line here.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Components {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub parquet: ParquetArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub usage_api: UsageApiArgs,
    #[command(flatten)]
    pub prices: PricesArgs,
    #[command(flatten)]
    pub control_plane: ControlPlaneArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub limits: LimitsArgs,
    #[command(flatten)]
    pub budgets: BudgetArgs,
    #[command(flatten)]
    pub anomalies: AnomalyArgs,
    #[command(flatten)]
    pub alerts: AlertArgs,
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// `[[meters]]`: meters as OpenMeter defines them (`slug`, `eventType`,
    /// `aggregation`, `valueProperty`, `groupBy`, …), in every tenant. Only
    /// in the config file.
    #[arg(skip)]
    #[serde(default)]
    pub meters: Vec<MeterDef>,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// A local directory, or `s3://bucket/prefix`.
    pub data: PathBuf,
    /// WAL and checkpoint (and staging when `data` is on object storage),
    /// when not in the data directory.
    pub state_dir: Option<PathBuf>,
    pub node_id: String,
    pub listen: Vec<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub pipeline: PipelineSettings,
    pub parquet: ParquetSettings,
    pub max_body_bytes: usize,
    pub nats: Option<NatsConfig>,
    pub kafka: Option<KafkaConfig>,
    /// Edge mode: relay accepted records to Kafka.
    pub relay: Option<RelaySettings>,
    /// `None` when the sampler is off.
    pub sampler_interval: Option<Duration>,
    pub usage_api: UsageApiArgs,
    pub prices: PricesArgs,
    /// The control-plane usage hook, when enabled.
    pub control_plane: Option<ForwarderConfig>,
    pub auth: AuthArgs,
    pub tls: TlsArgs,
    pub limits: LimitsArgs,
    pub budgets: BudgetArgs,
    pub anomalies: AnomalyArgs,
    pub alerts: AlertArgs,
    pub otlp: OtlpArgs,
    pub meters: Vec<MeterDef>,
}

impl Config {
    /// `flags` over the config file (`--config`, else `./tally.toml` when it
    /// exists) over the defaults.
    pub fn resolve(config_file: Option<&Path>, flags: &Components) -> anyhow::Result<Config> {
        let file = match config_file {
            Some(path) => load(path)?,
            None if Path::new("tally.toml").exists() => load(Path::new("tally.toml"))?,
            None => Components::default(),
        };
        let c = layer(flags, file).context("layering flags over the config file")?;
        let node_id = c.node.node_id.clone().unwrap_or_else(default_node_id);
        check_node_id(&node_id)?;
        let listen = if c.node.listen.is_empty() {
            vec![DEFAULT_LISTEN.parse().expect("the default address parses")]
        } else {
            c.node.listen.clone()
        };
        c.alerts.target()?;
        c.anomalies.threshold()?;
        let kafka = c.kafka.resolve(&node_id)?;
        let relay = c.relay.resolve()?;
        if kafka.is_some() && relay.is_some() {
            anyhow::bail!("relay_kafka and kafka cannot be combined: an edge node relays to Kafka, a writer consumes from it");
        }
        Ok(Config {
            data: c
                .node
                .data
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA)),
            state_dir: c.node.state_dir.clone(),
            node_id,
            listen,
            metrics_listen: c.node.metrics_listen,
            pipeline: c.pipeline.resolve()?,
            parquet: c.parquet.resolve()?,
            max_body_bytes: c.http.max_body_bytes(),
            nats: c.nats.resolve()?,
            kafka,
            relay,
            sampler_interval: c.sampler.resolve()?,
            usage_api: c.usage_api.clone(),
            prices: c.prices.clone(),
            control_plane: c.control_plane.resolve()?,
            auth: c.auth.clone(),
            tls: c.tls.clone(),
            limits: c.limits.clone(),
            budgets: c.budgets.clone(),
            anomalies: c.anomalies.clone(),
            alerts: c.alerts.clone(),
            otlp: c.otlp.clone(),
            meters: c.meters.clone(),
        })
    }

    /// Whether Parquet goes to object storage.
    pub fn data_is_object_store(&self) -> bool {
        self.data.to_string_lossy().starts_with("s3://")
    }

    /// Whether other nodes may write under the data location too (object
    /// storage, a state directory of its own, a Kafka role): then the
    /// location is listed every `list_interval` for their files. A lone node
    /// on its own directory knows every file already.
    pub fn shares_data_location(&self) -> bool {
        self.data_is_object_store()
            || self.state_dir.is_some()
            || self.kafka.is_some()
            || self.relay.is_some()
    }

    /// The local directory whose `_tally/` holds the WAL and checkpoint:
    /// `--state-dir`, else the data directory (or `./tally-state` when the
    /// data is on object storage).
    pub fn state_root(&self) -> PathBuf {
        match (&self.state_dir, self.data_is_object_store()) {
            (Some(s), _) => s.clone(),
            (None, true) => PathBuf::from(DEFAULT_OBJECT_STATE),
            (None, false) => self.data.clone(),
        }
    }

    /// The local directory files are written to: the data directory, or the
    /// staging directory (the state root) on object storage.
    pub fn files_dir(&self) -> PathBuf {
        if self.data_is_object_store() {
            self.state_root()
        } else {
            self.data.clone()
        }
    }
}

/// The host name (unique per container), else `tally`.
pub(crate) fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| check_node_id(h).is_ok())
        .unwrap_or_else(|| "tally".into())
}

fn load(path: &Path) -> anyhow::Result<Components> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_sources::events::Subject;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[parquet]\nflush_rows = 5\nflush_interval = \"2s\"\n[node]\ndata = \"/x\"\n",
        )
        .unwrap();
        let mut flags = Components::default();
        flags.parquet.flush_rows = Some(7);
        let c = Config::resolve(Some(&path), &flags).unwrap();
        assert_eq!(c.parquet.flush.max_rows, 7);
        assert_eq!(c.parquet.flush.max_age, Duration::from_secs(2));
        assert_eq!(c.data, PathBuf::from("/x"));
        assert_eq!(c.pipeline.max_queued_rows, 1_000_000);
    }

    #[test]
    fn kafka_settings_resolve_and_bad_ones_name_the_rule() {
        let mut flags = Components::default();
        flags.kafka.brokers = Some("k:9092".into());
        flags.kafka.topics = vec!["usage.llm=acme.llm".into(), "vm.metrics=acme.vm".into()];
        flags.node.node_id = Some("writer-1".into());
        let c = Config::resolve(None, &flags).unwrap();
        let k = c.kafka.unwrap();
        assert_eq!((k.brokers.as_str(), k.group.as_str()), ("k:9092", "tally"));
        assert_eq!(k.subjects[&Subject::UsageLlm], "acme.llm");
        assert_eq!(k.vm_metrics_topic, "acme.vm");
        assert_eq!(k.node, "writer-1");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[kafka]\nbrokers = \"k:9092\"\n[relay]\nbrokers = \"k:9092\"\n",
        )
        .unwrap();
        let err = Config::resolve(Some(&path), &Components::default()).unwrap_err();
        assert!(err.to_string().contains("cannot be combined"), "{err}");

        let mut flags = Components::default();
        flags.node.node_id = Some("a b".into());
        let err = Config::resolve(None, &flags).unwrap_err();
        assert!(err.to_string().contains("node_id may hold"), "{err}");
    }

    #[test]
    fn object_storage_keeps_state_local() {
        let mut flags = Components::default();
        flags.node.data = Some("s3://bkt/prefix".into());
        let c = Config::resolve(None, &flags).unwrap();
        assert!(c.data_is_object_store());
        assert_eq!(c.state_root(), PathBuf::from("tally-state"));
        assert_eq!(c.files_dir(), PathBuf::from("tally-state"));
        let mut flags = Components::default();
        flags.node.data = Some("/shared".into());
        flags.node.state_dir = Some("/node".into());
        let c = Config::resolve(None, &flags).unwrap();
        assert_eq!(
            (c.files_dir(), c.state_root()),
            ("/shared".into(), "/node".into())
        );
    }

    #[test]
    fn an_unknown_key_in_a_section_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[parquet]\nflush_rowz = 5\n").unwrap();
        let err = Config::resolve(Some(&path), &Components::default()).unwrap_err();
        assert!(format!("{err:#}").contains("flush_rowz"), "{err:#}");
    }
}
