//! The Kafka source's settings (`[kafka]` in `tally.toml`).

use std::time::Duration;

use tally_pipeline::config::ConfigError;
use tally_pipeline::duration::parse_duration;

use super::KafkaConfig;
use crate::events::Subject;

const GROUP: &str = "tally";

#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Kafka source (writer node)")]
pub struct KafkaArgs {
    /// Consume usage from these Kafka brokers (host:port,...) in a consumer group.
    #[arg(
        id = "kafka",
        value_name = "BROKERS",
        long = "kafka",
        env = "TALLY_KAFKA"
    )]
    #[serde(default)]
    pub brokers: Option<String>,

    #[arg(help = tally_pipeline::config::help("Consumer group.", GROUP), 
        id = "kafka_group",
        value_name = "NAME",
        long = "kafka-group",
        env = "TALLY_KAFKA_GROUP",
        requires = "kafka"
    )]
    #[serde(default)]
    pub group: Option<String>,

    /// Use another topic for an event type (EVENT=TOPIC), or vm.metrics=TOPIC,
    /// tally.records=TOPIC (repeatable).
    #[arg(
        id = "kafka_topics",
        long = "kafka-topic",
        value_name = "EVENT=TOPIC",
        requires = "kafka"
    )]
    #[serde(default)]
    pub topics: Vec<String>,

    #[arg(help = tally_pipeline::config::help("Partitions of the topics created when missing.", super::DEFAULT_PARTITIONS), 
        id = "kafka_partitions",
        value_name = "N",
        long = "kafka-partitions",
        env = "TALLY_KAFKA_PARTITIONS"
    )]
    #[serde(default)]
    pub partitions: Option<i32>,

    #[arg(help = tally_pipeline::config::help("Consumer session timeout: how fast a dead writer's partitions move.", tally_pipeline::config::show_duration(super::DEFAULT_SESSION_TIMEOUT)), 
        id = "kafka_session_timeout",
        value_name = "DURATION",
        long = "kafka-session-timeout",
        env = "TALLY_KAFKA_SESSION_TIMEOUT",
        value_parser = parse_duration
    )]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub session_timeout: Option<Duration>,

    /// A librdkafka property for the brokers' TLS and credentials, e.g.
    /// security.protocol=SASL_SSL, sasl.mechanism=PLAIN,
    /// ssl.ca.location=/etc/ca.pem (repeatable).
    #[arg(id = "kafka_options", long = "kafka-option", value_name = "KEY=VALUE")]
    #[serde(default)]
    pub options: Vec<String>,
}

/// Properties the source sets itself: its exactly-once commits depend on them.
const FIXED: [&str; 5] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

impl KafkaArgs {
    /// `None` when no brokers are configured. `node` goes into commit metadata.
    pub fn resolve(&self, node: &str) -> Result<Option<KafkaConfig>, ConfigError> {
        let Some(brokers) = &self.brokers else {
            return Ok(None);
        };
        let group = self.group.as_deref().unwrap_or(GROUP);
        let mut k = KafkaConfig::new(brokers, group, node);
        for pair in &self.topics {
            let (event, topic) = pair.split_once('=').unwrap_or((pair, ""));
            if topic.is_empty() {
                return Err(ConfigError::new(
                    "kafka.topics",
                    format!("kafka topic override for {event} must be EVENT=TOPIC with a topic"),
                ));
            }
            match event {
                "vm.metrics" => k.vm_metrics_topic = topic.to_string(),
                tally_pipeline::wal::codec::RECORDS_TOPIC => k.records_topic = topic.to_string(),
                other => match Subject::from_name(other) {
                    Some(s) => {
                        k.subjects.insert(s, topic.to_string());
                    }
                    None => {
                        return Err(ConfigError::new(
                            "kafka.topics",
                            format!("kafka topic override: unknown event type {other:?} (an event subject, vm.metrics or tally.records)"),
                        ))
                    }
                },
            }
        }
        if let Some(n) = self.partitions {
            if !(1..=10_000).contains(&n) {
                return Err(ConfigError::new(
                    "kafka.partitions",
                    format!("kafka_partitions must be between 1 and 10000, got {n}"),
                ));
            }
            k.partitions = n;
        }
        if let Some(t) = self.session_timeout {
            k.session_timeout = t;
        }
        k.options = tally_pipeline::config::client_options("kafka.options", &self.options, &FIXED)?;
        Ok(Some(k))
    }
}
