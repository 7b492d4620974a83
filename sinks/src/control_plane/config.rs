//! The hook's settings (`[control_plane]` in `tally.toml`).

use super::ForwarderConfig;

/// The control-plane usage hook (README "Control-plane usage hook") (`[control_plane]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Control-plane usage hook")]
pub struct ControlPlaneArgs {
    /// POST every accepted chat.usage_summary to the control plane (README "Control-plane usage hook").
    #[arg(
        id = "control_plane_usage_ingest_enabled",
        value_name = "BOOL",
        long = "control-plane-usage-ingest-enabled",
        env = "CONTROL_PLANE_USAGE_INGEST_ENABLED",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    #[serde(default)]
    pub enabled: Option<bool>,

    /// Where the control-plane usage hook posts.
    #[arg(
        id = "control_plane_usage_ingest_url",
        value_name = "URL",
        long = "control-plane-usage-ingest-url",
        env = "CONTROL_PLANE_USAGE_INGEST_URL"
    )]
    #[serde(default)]
    pub url: Option<String>,
}

impl ControlPlaneArgs {
    /// The forwarder's settings when the hook is on; an error when it is on
    /// without a URL.
    pub fn resolve(&self) -> Result<Option<ForwarderConfig>, tally_pipeline::config::ConfigError> {
        if !self.enabled.unwrap_or(false) {
            return Ok(None);
        }
        match &self.url {
            Some(url) if !url.is_empty() => Ok(Some(ForwarderConfig::new(url.clone()))),
            _ => Err(tally_pipeline::config::ConfigError::new(
                "control_plane.url",
                "CONTROL_PLANE_USAGE_INGEST_ENABLED=true needs CONTROL_PLANE_USAGE_INGEST_URL",
            )),
        }
    }
}
