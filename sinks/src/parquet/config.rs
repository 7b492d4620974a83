//! The Parquet sink's settings (`[parquet]` in `tally.toml`): flushing,
//! listing a shared prefix, compaction and retention.

use std::time::Duration;

use tally_pipeline::config::ConfigError;
use tally_pipeline::duration::parse_duration;

use super::compact::CompactionPolicy;
use super::flusher::FlushPolicy;

const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
const FLUSH_ROWS: usize = 200_000;
const FLUSH_BYTES: usize = 64 << 20;
const LIST_INTERVAL: Duration = Duration::from_secs(10);
const COMPACT_AFTER: Duration = Duration::from_secs(600);
const COMPACT_INTERVAL: Duration = Duration::from_secs(30);
const COMPACT_MEMORY: usize = 512 << 20;
const SCRUB_INTERVAL: Duration = Duration::from_secs(24 * 3600);
const SCRUB_RATE_MB: f64 = 50.0;
/// Below this a merge cannot hold a batch of two inputs and a row group.
const COMPACT_MEMORY_MIN: usize = 16 << 20;

#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Parquet sink: flushing, compaction, retention")]
pub struct ParquetArgs {
    #[arg(help = tally_pipeline::config::help("Flush buffered records to Parquet at least this often.", tally_pipeline::config::show_duration(FLUSH_INTERVAL)), long, env = "TALLY_FLUSH_INTERVAL", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub flush_interval: Option<Duration>,

    #[arg(help = tally_pipeline::config::help("Flush once this many records are buffered.", FLUSH_ROWS), long, env = "TALLY_FLUSH_ROWS")]
    #[serde(default)]
    pub flush_rows: Option<usize>,

    #[arg(help = tally_pipeline::config::help("Flush once this many bytes are buffered.", FLUSH_BYTES), long, env = "TALLY_FLUSH_BYTES")]
    #[serde(default)]
    pub flush_bytes: Option<usize>,

    #[arg(help = tally_pipeline::config::help("How often the data prefix is listed for files other nodes wrote.", tally_pipeline::config::show_duration(LIST_INTERVAL)), long, env = "TALLY_LIST_INTERVAL", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub list_interval: Option<Duration>,

    #[arg(help = tally_pipeline::config::help("Compact an hour partition this long after its end.", tally_pipeline::config::show_duration(COMPACT_AFTER)), long, env = "TALLY_COMPACT_AFTER", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub compact_after: Option<Duration>,

    #[arg(help = tally_pipeline::config::help("How often the compactor looks for closed hours.", tally_pipeline::config::show_duration(COMPACT_INTERVAL)), long, env = "TALLY_COMPACT_INTERVAL", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub compact_interval: Option<Duration>,

    #[arg(help = tally_pipeline::config::help("Memory one hour's compaction may hold (merge, then rollups), e.g. 512MiB; a larger hour is merged in rounds.", tally_pipeline::size::show_size(COMPACT_MEMORY)), long, env = "TALLY_COMPACT_MEMORY", value_parser = tally_pipeline::size::parse_size)]
    #[serde(default, with = "tally_pipeline::size::opt")]
    pub compact_memory: Option<usize>,

    #[arg(help = tally_pipeline::config::help("The background scrub reads every stored file once this often and checks it against its checksum; 0s turns it off.", tally_pipeline::config::show_duration(SCRUB_INTERVAL)), long, env = "TALLY_SCRUB_INTERVAL", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub scrub_interval: Option<Duration>,

    #[arg(help = tally_pipeline::config::help("The most the scrub reads, in MB (10^6 bytes) per second.", SCRUB_RATE_MB), long, env = "TALLY_SCRUB_RATE")]
    #[serde(default)]
    pub scrub_rate: Option<f64>,

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
    pub scrub: super::scrub::ScrubPolicy,
}

impl ParquetArgs {
    pub fn resolve(&self) -> Result<ParquetSettings, ConfigError> {
        let flush = FlushPolicy {
            max_rows: self.flush_rows.unwrap_or(FLUSH_ROWS),
            max_bytes: self.flush_bytes.unwrap_or(FLUSH_BYTES),
            max_age: self.flush_interval.unwrap_or(FLUSH_INTERVAL),
            tick: Duration::from_millis(100),
        };
        if flush.max_rows == 0 {
            return Err(ConfigError::new("flush_rows", "must be at least 1"));
        }
        let interval = self.compact_interval.unwrap_or(COMPACT_INTERVAL);
        let memory = self.compact_memory.unwrap_or(COMPACT_MEMORY);
        if memory < COMPACT_MEMORY_MIN {
            return Err(ConfigError::new(
                "compact_memory",
                format!(
                    "must be at least {}, got {}",
                    tally_pipeline::size::show_size(COMPACT_MEMORY_MIN),
                    tally_pipeline::size::show_size(memory)
                ),
            ));
        }
        let rate = self.scrub_rate.unwrap_or(SCRUB_RATE_MB);
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ConfigError::new(
                "scrub_rate",
                format!("must be a number of MB/s above 0, got {rate}"),
            ));
        }
        Ok(ParquetSettings {
            scrub: super::scrub::ScrubPolicy {
                interval: self.scrub_interval.unwrap_or(SCRUB_INTERVAL),
                bytes_per_second: rate * 1e6,
            },
            flush,
            compaction: CompactionPolicy {
                compact_after: self.compact_after.unwrap_or(COMPACT_AFTER),
                interval,
                raw_retention: self.raw_retention,
                rollup_retention: self.rollup_retention,
                // Replaced files stay one interval for queries still reading them.
                grace: interval,
                memory,
            },
            list_interval: self.list_interval.unwrap_or(LIST_INTERVAL),
        })
    }
}
