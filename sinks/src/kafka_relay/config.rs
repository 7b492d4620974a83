//! The relay's settings (`[relay]` in `tally.toml`).

use std::time::Duration;

use tally_pipeline::config::ConfigError;
use tally_pipeline::wal::codec::RECORDS_TOPIC;

/// An edge node's relay (`[relay]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Kafka relay (edge node)")]
pub struct RelayArgs {
    /// Edge node: relay accepted records to these Kafka brokers instead of
    /// writing Parquet (acknowledged once the brokers have them).
    #[arg(
        id = "relay_kafka",
        value_name = "BROKERS",
        long = "relay-kafka",
        env = "TALLY_RELAY_KAFKA",
        conflicts_with = "kafka"
    )]
    #[serde(default)]
    pub brokers: Option<String>,

    #[arg(help = tally_pipeline::config::help("Topic of relayed records.", RECORDS_TOPIC), 
        id = "relay_topic",
        value_name = "TOPIC",
        long = "relay-topic",
        env = "TALLY_RELAY_TOPIC"
    )]
    #[serde(default)]
    pub topic: Option<String>,

    /// A librdkafka property for the brokers' TLS and credentials, e.g.
    /// security.protocol=SSL (repeatable).
    #[arg(
        id = "relay_options",
        long = "relay-kafka-option",
        value_name = "KEY=VALUE"
    )]
    #[serde(default)]
    pub options: Vec<String>,
}

/// Properties the relay sets itself: acknowledging only what the brokers
/// hold, once, depends on them.
const FIXED: [&str; 4] = [
    "bootstrap.servers",
    "acks",
    "enable.idempotence",
    "message.timeout.ms",
];

/// [`RelayArgs`] with the defaults applied: brokers and topic.
#[derive(Debug, Clone, PartialEq)]
pub struct RelaySettings {
    pub brokers: String,
    pub topic: String,
    /// How long a record may wait for the brokers.
    pub timeout: Duration,
    /// More librdkafka properties (`--relay-kafka-option`).
    pub options: Vec<(String, String)>,
}

impl RelayArgs {
    /// `None` when this node is not an edge node.
    pub fn resolve(&self) -> Result<Option<RelaySettings>, ConfigError> {
        let Some(brokers) = self.brokers.clone() else {
            return Ok(None);
        };
        Ok(Some(RelaySettings {
            brokers,
            topic: self.topic.clone().unwrap_or_else(|| RECORDS_TOPIC.into()),
            timeout: Duration::from_secs(30),
            options: tally_pipeline::config::client_options(
                "relay.options",
                &self.options,
                &FIXED,
            )?,
        }))
    }
}
