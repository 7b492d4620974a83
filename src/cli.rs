//! Command line: `tally serve` and `tally sql`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// tally — usage metering: durable ingest into Parquet, queried with SQL.
///
/// Every setting of `tally serve` comes, in this order of precedence, from
/// its flag, its environment variable, the config file (`tally.toml` in the
/// working directory, or `--config`), or the built-in default.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: HTTP ingest, billing.v1, NATS, SQL and the read APIs, /usage, /health and /metrics.
    Serve(Box<ServeArgs>),
    /// Run one read-only SQL query over a data directory, offline.
    Sql(SqlArgs),
    /// Verify a data directory offline: every WAL frame, the checkpoint and
    /// every Parquet file (footer, schema, rows). Exits 1 on damage.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Data directory to check.
    #[arg(long, env = "TALLY_DATA", default_value = "data")]
    pub data: PathBuf,

    /// The node's state directory (WAL, checkpoint, quarantine). [default: the data directory]
    #[arg(long, env = "TALLY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The node id whose files rebuild an unreadable checkpoint (--repair). [default: the host name]
    #[arg(long, env = "TALLY_NODE_ID")]
    pub node_id: Option<String>,

    /// Do what start-up does with damage, without serving: copy damaged WAL
    /// segments into the quarantine, move unreadable and foreign files there,
    /// and record the reports.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Config file (TOML; keys as the long flags with `_`). Default: ./tally.toml if it exists.
    #[arg(long, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Data directory (Parquet files, WAL and checkpoint), or `s3://bucket/prefix`
    /// for Parquet on S3-compatible storage (credentials and endpoint from the
    /// usual AWS_* variables; the WAL stays in --state-dir). [default: ./data]
    #[arg(long, env = "TALLY_DATA")]
    pub data: Option<PathBuf>,

    /// This node's own directory for the WAL and checkpoint (and upload staging
    /// when --data is on object storage). Writers sharing one data directory
    /// each need their own. [default: the data directory; ./tally-state for s3://]
    #[arg(long, env = "TALLY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// This node's id, written into the name of every Parquet file it writes;
    /// nodes sharing a data prefix need distinct ids. [default: the host name]
    #[arg(long, env = "TALLY_NODE_ID")]
    pub node_id: Option<String>,

    /// How often the data prefix is listed for files other nodes wrote. [default: 10s]
    #[arg(long, env = "TALLY_LIST_INTERVAL", value_parser = crate::config::parse_duration)]
    pub list_interval: Option<std::time::Duration>,

    /// Consume usage from these Kafka brokers (host:port,...) in a consumer group.
    #[arg(long, env = "TALLY_KAFKA")]
    pub kafka: Option<String>,

    /// Kafka consumer group. [default: tally]
    #[arg(long, env = "TALLY_KAFKA_GROUP", requires = "kafka")]
    pub kafka_group: Option<String>,

    /// Use another Kafka topic for an event type, e.g. usage.llm=acme.usage.llm,
    /// or vm.metrics=TOPIC, tally.records=TOPIC (repeatable).
    #[arg(long = "kafka-topic", value_name = "EVENT=TOPIC", requires = "kafka")]
    pub kafka_topics: Vec<String>,

    /// Partitions of the Kafka topics created when missing. [default: 8]
    #[arg(long, env = "TALLY_KAFKA_PARTITIONS")]
    pub kafka_partitions: Option<i32>,

    /// Kafka group session timeout: how soon a dead writer's partitions move. [default: 10s]
    #[arg(long, env = "TALLY_KAFKA_SESSION_TIMEOUT", value_parser = crate::config::parse_duration)]
    pub kafka_session_timeout: Option<std::time::Duration>,

    /// Edge mode: relay accepted records to these Kafka brokers (acks=all)
    /// instead of writing Parquet; clients are answered once Kafka has them.
    #[arg(long, env = "TALLY_RELAY_KAFKA", conflicts_with = "kafka")]
    pub relay_kafka: Option<String>,

    /// Topic of relayed records. [default: tally.records]
    #[arg(long, env = "TALLY_RELAY_TOPIC")]
    pub relay_topic: Option<String>,

    /// Address to listen on; repeat for several (all routes on each). [default: 127.0.0.1:8081]
    #[arg(long, env = "TALLY_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// Also serve `/metrics` alone on this address (e.g. 127.0.0.1:9465).
    #[arg(long, env = "TALLY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Flush the live buffer to Parquet when its oldest record is this old. [default: 10s]
    #[arg(long, env = "TALLY_FLUSH_INTERVAL", value_parser = crate::config::parse_duration)]
    pub flush_interval: Option<std::time::Duration>,

    /// Flush when a dataset buffers this many rows. [default: 200000]
    #[arg(long, env = "TALLY_FLUSH_ROWS")]
    pub flush_rows: Option<usize>,

    /// Flush when a dataset buffers this many bytes. [default: 67108864]
    #[arg(long, env = "TALLY_FLUSH_BYTES")]
    pub flush_bytes: Option<usize>,

    /// Rows per dataset admitted but not yet in Parquet; beyond it ingest answers 429. [default: 1000000]
    #[arg(long, env = "TALLY_MAX_QUEUED_ROWS")]
    pub max_queued_rows: Option<usize>,

    /// How long a key is remembered for dedup. [default: 24h]
    #[arg(long, env = "TALLY_DEDUP_WINDOW", value_parser = crate::config::parse_duration)]
    pub dedup_window: Option<std::time::Duration>,

    /// An hour partition is compacted (one file, copies dropped, rollups
    /// written) this long after its end. [default: 10m]
    #[arg(long, env = "TALLY_COMPACT_AFTER", value_parser = crate::config::parse_duration)]
    pub compact_after: Option<std::time::Duration>,

    /// How often the compactor looks for closed hours. [default: 30s]
    #[arg(long, env = "TALLY_COMPACT_INTERVAL", value_parser = crate::config::parse_duration)]
    pub compact_interval: Option<std::time::Duration>,

    /// Raw hours older than this are deleted once rolled up; bills and
    /// summaries of them keep answering from the rollups. [default: keep forever]
    #[arg(long, env = "TALLY_RAW_RETENTION", value_parser = crate::config::parse_duration)]
    pub raw_retention: Option<std::time::Duration>,

    /// Rollups of hours older than this (whose raw files are gone) are
    /// deleted. [default: keep forever]
    #[arg(long, env = "TALLY_ROLLUP_RETENTION", value_parser = crate::config::parse_duration)]
    pub rollup_retention: Option<std::time::Duration>,

    /// Dedup keys kept in memory per dataset; beyond it the oldest hour is dropped early (compaction still drops copies). [default: 10000000]
    #[arg(long, env = "TALLY_DEDUP_MAX_KEYS")]
    pub dedup_max_keys: Option<usize>,

    /// WAL segment size before a new segment starts. [default: 67108864]
    #[arg(long, env = "TALLY_WAL_SEGMENT_BYTES")]
    pub wal_segment_bytes: Option<u64>,

    /// Largest request body accepted. [default: 33554432]
    #[arg(long, env = "TALLY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,

    /// How often the hardware sampler reads CPU, RAM and GPU (at least 200ms). [default: 1s]
    #[arg(long, env = "TALLY_SAMPLER_INTERVAL", value_parser = crate::config::parse_duration)]
    pub sampler_interval: Option<std::time::Duration>,

    /// Turn the hardware sampler off (no host_usage rows, no /usage updates).
    #[arg(long, env = "TALLY_NO_SAMPLER")]
    pub no_sampler: bool,

    /// Usage API: POST /api/usage/config (and reset) per client IP per minute. [default: 60]
    #[arg(long, env = "TALLY_USAGE_CONFIG_RATE")]
    pub usage_config_rate: Option<u32>,

    /// Usage API: GET /api/usage/stats per client IP per minute. [default: 300]
    #[arg(long, env = "TALLY_USAGE_STATS_RATE")]
    pub usage_stats_rate: Option<u32>,

    /// Consume usage events from this NATS server (core NATS unless --nats-stream).
    #[arg(long, env = "NATS_URL")]
    pub nats: Option<String>,

    /// Consume through this JetStream stream with a durable pull consumer.
    #[arg(long, env = "TALLY_NATS_STREAM", requires = "nats")]
    pub nats_stream: Option<String>,

    /// Create the JetStream stream over the event subjects if it does not exist.
    #[arg(long, env = "TALLY_NATS_CREATE_STREAM", requires = "nats_stream")]
    pub nats_create_stream: bool,

    /// Durable consumer name. [default: tally]
    #[arg(long, env = "TALLY_NATS_CONSUMER")]
    pub nats_consumer: Option<String>,

    /// How long JetStream waits for tally's ack before redelivering (after a
    /// crash, unacked messages return after this). [default: 10s]
    #[arg(long, env = "TALLY_NATS_ACK_WAIT", value_parser = crate::config::parse_duration)]
    pub nats_ack_wait: Option<std::time::Duration>,

    /// Use another NATS subject for an event type, e.g. usage.llm=acme.usage.llm (repeatable).
    #[arg(long = "nats-subject", value_name = "EVENT=SUBJECT")]
    pub nats_subjects: Vec<String>,

    /// LLM price catalogue (LiteLLM's JSON shape) instead of the built-in one.
    #[arg(long, env = "TALLY_PRICES")]
    pub prices: Option<PathBuf>,

    /// POST every accepted chat.usage_summary to the control plane (spec 004).
    #[arg(long, env = "CONTROL_PLANE_USAGE_INGEST_ENABLED")]
    pub control_plane_usage_ingest_enabled: bool,

    /// Where the control-plane usage hook posts.
    #[arg(long, env = "CONTROL_PLANE_USAGE_INGEST_URL")]
    pub control_plane_usage_ingest_url: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SqlFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Data directory to read.
    #[arg(long, env = "TALLY_DATA", default_value = "data")]
    pub data: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SqlFormat,

    /// The query, e.g. "SELECT model, count(*) FROM usage_llm GROUP BY model".
    pub query: String,
}
