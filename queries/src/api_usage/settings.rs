//! The Usage API's settings (`[usage_api]` in `tally.toml`).

use std::path::PathBuf;

const CONFIG_RATE: u32 = 60;
const STATS_RATE: u32 = 300;

/// The Usage API's rate limits (`[usage_api]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Usage API")]
pub struct UsageApiArgs {
    #[arg(help = tally_pipeline::config::help("Configuration changes allowed per client and minute.", CONFIG_RATE), long, env = "TALLY_USAGE_CONFIG_RATE")]
    #[serde(default)]
    pub usage_config_rate: Option<u32>,

    #[arg(help = tally_pipeline::config::help("`/api/usage/stats` requests allowed per client and minute.", STATS_RATE), long, env = "TALLY_USAGE_STATS_RATE")]
    #[serde(default)]
    pub usage_stats_rate: Option<u32>,
}

impl UsageApiArgs {
    /// The settings, with the configuration file at `config_path`.
    pub fn resolve(&self, config_path: PathBuf) -> UsageApiConfig {
        UsageApiConfig {
            config_path,
            config_updates_per_minute: self.usage_config_rate.unwrap_or(CONFIG_RATE),
            stats_per_minute: self.usage_stats_rate.unwrap_or(STATS_RATE),
        }
    }
}

/// Settings of the Usage API.
#[derive(Debug, Clone)]
pub struct UsageApiConfig {
    pub config_path: PathBuf,
    pub config_updates_per_minute: u32,
    pub stats_per_minute: u32,
}
