//! The Parquet sink's settings (`[parquet]` in `tally.toml`): flushing,
//! listing a shared prefix, compaction and retention.

use std::time::Duration;

use tally_pipeline::config::ConfigError;
use tally_pipeline::duration::parse_duration;

use super::compact::CompactionPolicy;
use super::flusher::FlushPolicy;

#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Parquet sink: flushing, compaction, retention")]
pub struct ParquetArgs {
    /// Flush buffered records to Parquet at least this often. [default: 10s]
    #[arg(long, env = "TALLY_FLUSH_INTERVAL", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub flush_interval: Option<Duration>,

    /// Flush once this many records are buffered. [default: 200000]
    #[arg(long, env = "TALLY_FLUSH_ROWS")]
    #[serde(default)]
    pub flush_rows: Option<usize>,

    /// Flush once this many bytes are buffered. [default: 67108864]
    #[arg(long, env = "TALLY_FLUSH_BYTES")]
    #[serde(default)]
    pub flush_bytes: Option<usize>,

    /// How often the data prefix is listed for files other nodes wrote. [default: 10s]
    #[arg(long, env = "TALLY_LIST_INTERVAL", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub list_interval: Option<Duration>,

    /// Compact an hour partition this long after its end. [default: 10m]
    #[arg(long, env = "TALLY_COMPACT_AFTER", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub compact_after: Option<Duration>,

    /// How often the compactor looks for closed hours. [default: 30s]
    #[arg(long, env = "TALLY_COMPACT_INTERVAL", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub compact_interval: Option<Duration>,

    /// Delete raw hours older than this once they are rolled up. [default: keep forever]
    #[arg(long, env = "TALLY_RAW_RETENTION", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub raw_retention: Option<Duration>,

    /// Delete rollups older than this once their raw hours are gone. [default: keep forever]
    #[arg(long, env = "TALLY_ROLLUP_RETENTION", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub rollup_retention: Option<Duration>,
}

/// [`ParquetArgs`] with the defaults applied.
#[derive(Debug, Clone)]
pub struct ParquetSettings {
    pub flush: FlushPolicy,
    pub compaction: CompactionPolicy,
    pub list_interval: Duration,
}

impl ParquetArgs {
    pub fn resolve(&self) -> Result<ParquetSettings, ConfigError> {
        let flush = FlushPolicy {
            max_rows: self.flush_rows.unwrap_or(200_000),
            max_bytes: self.flush_bytes.unwrap_or(64 << 20),
            max_age: self.flush_interval.unwrap_or(Duration::from_secs(10)),
            tick: Duration::from_millis(100),
        };
        if flush.max_rows == 0 {
            return Err(ConfigError::new("flush_rows", "must be at least 1"));
        }
        let interval = self.compact_interval.unwrap_or(Duration::from_secs(30));
        Ok(ParquetSettings {
            flush,
            compaction: CompactionPolicy {
                compact_after: self.compact_after.unwrap_or(Duration::from_secs(600)),
                interval,
                raw_retention: self.raw_retention,
                rollup_retention: self.rollup_retention,
                // Replaced files stay one interval for queries still reading them.
                grace: interval,
            },
            list_interval: self.list_interval.unwrap_or(Duration::from_secs(10)),
        })
    }
}
