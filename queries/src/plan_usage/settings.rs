//! The Usage API's settings (`[usage_api]` in `tally.toml`).

use std::path::PathBuf;

/// The Usage API's rate limits (`[usage_api]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Usage API (spec 002)")]
pub struct UsageApiArgs {
    /// Configuration changes allowed per client and minute. [default: 60]
    #[arg(long, env = "TALLY_USAGE_CONFIG_RATE")]
    #[serde(default)]
    pub usage_config_rate: Option<u32>,

    /// `/api/usage/stats` requests allowed per client and minute. [default: 300]
    #[arg(long, env = "TALLY_USAGE_STATS_RATE")]
    #[serde(default)]
    pub usage_stats_rate: Option<u32>,
}

impl UsageApiArgs {
    /// The settings, with the configuration file at `config_path`.
    pub fn resolve(&self, config_path: PathBuf) -> UsageApiConfig {
        UsageApiConfig {
            config_path,
            config_updates_per_minute: self.usage_config_rate.unwrap_or(60),
            stats_per_minute: self.usage_stats_rate.unwrap_or(300),
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
