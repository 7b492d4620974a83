//! Settings of `tally serve`: flags and environment over `tally.toml` over defaults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use tally_sources::events::Subject;
use tally_sources::kafka::KafkaConfig;
use tally_sources::nats::NatsConfig;

use crate::cli::ServeArgs;

/// `tally.toml`: every key optional, same names as the long flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    node_id: Option<String>,
    list_interval: Option<String>,
    kafka: Option<String>,
    kafka_group: Option<String>,
    kafka_topics: Option<HashMap<String, String>>,
    kafka_partitions: Option<i32>,
    kafka_session_timeout: Option<String>,
    relay_kafka: Option<String>,
    relay_topic: Option<String>,
    listen: Option<Vec<SocketAddr>>,
    metrics_listen: Option<SocketAddr>,
    flush_interval: Option<String>,
    flush_rows: Option<usize>,
    flush_bytes: Option<usize>,
    max_queued_rows: Option<usize>,
    dedup_window: Option<String>,
    dedup_max_keys: Option<usize>,
    compact_after: Option<String>,
    compact_interval: Option<String>,
    raw_retention: Option<String>,
    rollup_retention: Option<String>,
    wal_segment_bytes: Option<u64>,
    max_body_bytes: Option<usize>,
    sampler_interval: Option<String>,
    no_sampler: Option<bool>,
    usage_config_rate: Option<u32>,
    usage_stats_rate: Option<u32>,
    nats: Option<String>,
    nats_stream: Option<String>,
    nats_create_stream: Option<bool>,
    nats_consumer: Option<String>,
    nats_subjects: Option<HashMap<String, String>>,
    prices: Option<PathBuf>,
    control_plane_usage_ingest_url: Option<String>,
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
    pub list_interval: Duration,
    pub kafka: Option<KafkaConfig>,
    /// Edge mode: brokers and topic of the relay.
    pub relay_kafka: Option<(String, String)>,
    pub listen: Vec<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub flush_interval: Duration,
    pub flush_rows: usize,
    pub flush_bytes: usize,
    pub max_queued_rows: usize,
    pub dedup_window: Duration,
    pub dedup_max_keys: usize,
    pub compact_after: Duration,
    pub compact_interval: Duration,
    pub raw_retention: Option<Duration>,
    pub rollup_retention: Option<Duration>,
    pub wal_segment_bytes: u64,
    pub max_body_bytes: usize,
    pub usage_config_rate: u32,
    pub usage_stats_rate: u32,
    /// `None` when the sampler is off.
    pub sampler_interval: Option<Duration>,
    pub nats: Option<NatsConfig>,
    pub prices: Option<PathBuf>,
    /// Control-plane usage hook URL, when enabled.
    pub control_plane_url: Option<String>,
}

/// Parses `500ms`, `10s`, `5m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("duration must be a number with a unit (ms, s, m, h, d), got {s:?}")
    })?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86_400)),
        _ => Err(format!(
            "duration unit must be one of ms, s, m, h, d; got {unit:?}"
        )),
    }
}

impl Config {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => load(path)?,
            None if Path::new("tally.toml").exists() => load(Path::new("tally.toml"))?,
            None => FileConfig::default(),
        };
        let duration = |flag: Option<Duration>,
                        file: &Option<String>,
                        name: &str,
                        default: Duration| match (flag, file) {
            (Some(d), _) => Ok(d),
            (None, Some(s)) => {
                parse_duration(s).map_err(|e| anyhow::anyhow!("{name} in the config file: {e}"))
            }
            (None, None) => Ok(default),
        };
        let listen = if !args.listen.is_empty() {
            args.listen
        } else {
            file.listen
                .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], 8081))])
        };
        let node_id = args
            .node_id
            .or(file.node_id)
            .unwrap_or_else(default_node_id);
        tally_sinks::parquet::layout::check_node_id(&node_id).map_err(anyhow::Error::msg)?;
        let config = Config {
            data: args
                .data
                .or(file.data)
                .unwrap_or_else(|| PathBuf::from("data")),
            state_dir: args.state_dir.or(file.state_dir),
            node_id: node_id.clone(),
            list_interval: duration(
                args.list_interval,
                &file.list_interval,
                "list_interval",
                Duration::from_secs(10),
            )?,
            kafka: None,
            relay_kafka: None,
            listen,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            flush_interval: duration(
                args.flush_interval,
                &file.flush_interval,
                "flush_interval",
                Duration::from_secs(10),
            )?,
            flush_rows: args.flush_rows.or(file.flush_rows).unwrap_or(200_000),
            flush_bytes: args.flush_bytes.or(file.flush_bytes).unwrap_or(64 << 20),
            max_queued_rows: args
                .max_queued_rows
                .or(file.max_queued_rows)
                .unwrap_or(1_000_000),
            dedup_window: duration(
                args.dedup_window,
                &file.dedup_window,
                "dedup_window",
                Duration::from_secs(86_400),
            )?,
            dedup_max_keys: args
                .dedup_max_keys
                .or(file.dedup_max_keys)
                .unwrap_or(10_000_000),
            compact_after: duration(
                args.compact_after,
                &file.compact_after,
                "compact_after",
                Duration::from_secs(600),
            )?,
            compact_interval: duration(
                args.compact_interval,
                &file.compact_interval,
                "compact_interval",
                Duration::from_secs(30),
            )?,
            raw_retention: match (args.raw_retention, &file.raw_retention) {
                (None, None) => None,
                (flag, file) => Some(duration(flag, file, "raw_retention", Duration::ZERO)?),
            },
            rollup_retention: match (args.rollup_retention, &file.rollup_retention) {
                (None, None) => None,
                (flag, file) => Some(duration(flag, file, "rollup_retention", Duration::ZERO)?),
            },
            wal_segment_bytes: args
                .wal_segment_bytes
                .or(file.wal_segment_bytes)
                .unwrap_or(64 << 20),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(32 << 20),
            sampler_interval: if args.no_sampler || file.no_sampler.unwrap_or(false) {
                None
            } else {
                Some(duration(
                    args.sampler_interval,
                    &file.sampler_interval,
                    "sampler_interval",
                    Duration::from_secs(1),
                )?)
            },
            usage_config_rate: args
                .usage_config_rate
                .or(file.usage_config_rate)
                .unwrap_or(60),
            usage_stats_rate: args
                .usage_stats_rate
                .or(file.usage_stats_rate)
                .unwrap_or(300),
            nats: None,
            prices: args.prices.or(file.prices),
            control_plane_url: None,
        };
        let mut config = config;
        if let Some(url) = args.nats.or(file.nats) {
            let mut subjects = HashMap::new();
            for (event, subject) in overrides(file.nats_subjects, &args.nats_subjects) {
                let Some(s) = Subject::from_name(&event) else {
                    anyhow::bail!("nats subject override: unknown event type {event:?}");
                };
                if subject.is_empty() {
                    anyhow::bail!(
                        "nats subject override for {event} must be EVENT=SUBJECT with a subject"
                    );
                }
                subjects.insert(s, subject);
            }
            config.nats = Some(NatsConfig {
                url,
                stream: args.nats_stream.or(file.nats_stream),
                create_stream: args.nats_create_stream || file.nats_create_stream.unwrap_or(false),
                consumer: args
                    .nats_consumer
                    .or(file.nats_consumer)
                    .unwrap_or_else(|| "tally".into()),
                ack_wait: args.nats_ack_wait.unwrap_or(Duration::from_secs(10)),
                subjects,
            });
        }
        if let Some(brokers) = args.kafka.or(file.kafka) {
            let group = args
                .kafka_group
                .or(file.kafka_group)
                .unwrap_or_else(|| "tally".into());
            let mut k = KafkaConfig::new(&brokers, &group, &node_id);
            for (event, topic) in overrides(file.kafka_topics, &args.kafka_topics) {
                if topic.is_empty() {
                    anyhow::bail!(
                        "kafka topic override for {event} must be EVENT=TOPIC with a topic"
                    );
                }
                match event.as_str() {
                    "vm.metrics" => k.vm_metrics_topic = topic,
                    "tally.records" => k.records_topic = topic,
                    other => match Subject::from_name(other) {
                        Some(s) => {
                            k.subjects.insert(s, topic);
                        }
                        None => anyhow::bail!(
                            "kafka topic override: unknown event type {other:?} (an event subject, vm.metrics or tally.records)"
                        ),
                    },
                }
            }
            if let Some(n) = args.kafka_partitions.or(file.kafka_partitions) {
                if !(1..=10_000).contains(&n) {
                    anyhow::bail!("kafka_partitions must be between 1 and 10000, got {n}");
                }
                k.partitions = n;
            }
            k.session_timeout = duration(
                args.kafka_session_timeout,
                &file.kafka_session_timeout,
                "kafka_session_timeout",
                k.session_timeout,
            )?;
            config.kafka = Some(k);
        }
        if let Some(brokers) = args.relay_kafka.or(file.relay_kafka) {
            if config.kafka.is_some() {
                anyhow::bail!("relay_kafka and kafka cannot be combined: an edge node relays to Kafka, a writer consumes from it");
            }
            let topic = args
                .relay_topic
                .or(file.relay_topic)
                .unwrap_or_else(|| "tally.records".into());
            config.relay_kafka = Some((brokers, topic));
        }
        if args.control_plane_usage_ingest_enabled {
            match args
                .control_plane_usage_ingest_url
                .or(file.control_plane_usage_ingest_url)
            {
                Some(url) if !url.is_empty() => config.control_plane_url = Some(url),
                _ => anyhow::bail!(
                    "CONTROL_PLANE_USAGE_INGEST_ENABLED=true needs CONTROL_PLANE_USAGE_INGEST_URL"
                ),
            }
        }
        if config
            .sampler_interval
            .is_some_and(|i| i < Duration::from_millis(200))
        {
            anyhow::bail!("sampler_interval must be at least 200ms (CPU usage needs two readings that far apart)");
        }
        if config.listen.is_empty() {
            anyhow::bail!("listen must name at least one address");
        }
        if config.flush_rows == 0 || config.max_queued_rows == 0 {
            anyhow::bail!("flush_rows and max_queued_rows must be at least 1");
        }
        Ok(config)
    }
}

/// `EVENT=NAME` overrides: the config file's table, then the flags (which
/// win by coming later). A flag without `=` has an empty name.
fn overrides(file: Option<HashMap<String, String>>, flags: &[String]) -> Vec<(String, String)> {
    let flags = flags.iter().map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k.to_string(), v.to_string())
    });
    file.unwrap_or_default().into_iter().chain(flags).collect()
}

/// The host name (unique per container), else `tally`.
pub(crate) fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| tally_sinks::parquet::layout::check_node_id(h).is_ok())
        .unwrap_or_else(|| "tally".into())
}

impl Config {
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
            || self.relay_kafka.is_some()
    }

    /// The local directory whose `_tally/` holds the WAL and checkpoint:
    /// `--state-dir`, else the data directory (or `./tally-state` when the
    /// data is on object storage).
    pub fn state_root(&self) -> PathBuf {
        match (&self.state_dir, self.data_is_object_store()) {
            (Some(s), _) => s.clone(),
            (None, true) => PathBuf::from("tally-state"),
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

fn load(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "flush_rows = 5\nflush_interval = \"2s\"\ndata = \"/x\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            flush_rows: Some(7),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.flush_rows, 7);
        assert_eq!(c.flush_interval, Duration::from_secs(2));
        assert_eq!(c.data, PathBuf::from("/x"));
        assert_eq!(c.max_queued_rows, 1_000_000);
    }

    #[test]
    fn kafka_settings_resolve_and_bad_ones_name_the_rule() {
        let args = ServeArgs {
            kafka: Some("k:9092".into()),
            kafka_topics: vec!["usage.llm=acme.llm".into(), "vm.metrics=acme.vm".into()],
            node_id: Some("writer-1".into()),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        let k = c.kafka.unwrap();
        assert_eq!((k.brokers.as_str(), k.group.as_str()), ("k:9092", "tally"));
        assert_eq!(k.subjects[&Subject::UsageLlm], "acme.llm");
        assert_eq!(k.vm_metrics_topic, "acme.vm");
        assert_eq!(k.node, "writer-1");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "kafka = \"k:9092\"\nrelay_kafka = \"k:9092\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("cannot be combined"), "{err}");

        let err = Config::resolve(ServeArgs {
            node_id: Some("a b".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("node_id may hold"), "{err}");
    }

    #[test]
    fn object_storage_keeps_state_local() {
        let c = Config::resolve(ServeArgs {
            data: Some("s3://bkt/prefix".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(c.data_is_object_store());
        assert_eq!(c.state_root(), PathBuf::from("tally-state"));
        assert_eq!(c.files_dir(), PathBuf::from("tally-state"));
        let c = Config::resolve(ServeArgs {
            data: Some("/shared".into()),
            state_dir: Some("/node".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.files_dir(), c.state_root()),
            ("/shared".into(), "/node".into())
        );
    }
}
