//! The NATS source's settings (`[nats]` in `tally.toml`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tally_pipeline::config::ConfigError;
use tally_pipeline::duration::parse_duration;

use super::NatsConfig;
use crate::events::Subject;

const CONSUMER: &str = "tally";
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Messages the client holds for each subscribed subject before it drops
/// them as a slow consumer (the client's own default is 65,536). At 300,000
/// events/s this rides out about 0.9 s of a full pipeline; at ~0.5 KiB a
/// message, ~128 MiB at most per flooded subject.
const BUFFER: usize = 256 * 1024;

#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "NATS source")]
pub struct NatsArgs {
    /// Collect the event subjects (README "NATS") from this NATS server.
    #[arg(id = "nats", value_name = "URL", long = "nats", env = "NATS_URL")]
    #[serde(default)]
    pub url: Option<String>,

    /// Consume through this JetStream stream (at-least-once) instead of core NATS.
    #[arg(
        id = "nats_stream",
        value_name = "STREAM",
        long = "nats-stream",
        env = "TALLY_NATS_STREAM",
        requires = "nats"
    )]
    #[serde(default)]
    pub stream: Option<String>,

    /// Create the stream when it does not exist.
    #[arg(
        id = "nats_create_stream",
        value_name = "BOOL",
        long = "nats-create-stream",
        env = "TALLY_NATS_CREATE_STREAM",
        requires = "nats_stream",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    #[serde(default)]
    pub create_stream: Option<bool>,

    #[arg(help = tally_pipeline::config::help("Durable consumer name.", CONSUMER), 
        id = "nats_consumer",
        value_name = "NAME",
        long = "nats-consumer",
        env = "TALLY_NATS_CONSUMER"
    )]
    #[serde(default)]
    pub consumer: Option<String>,

    #[arg(help = tally_pipeline::config::help("Redelivery delay of unacknowledged JetStream messages.", tally_pipeline::config::show_duration(ACK_WAIT)), id = "nats_ack_wait",
        value_name = "DURATION", long = "nats-ack-wait", env = "TALLY_NATS_ACK_WAIT", value_parser = parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub ack_wait: Option<Duration>,

    #[arg(help = tally_pipeline::config::help("Messages the NATS client holds per subject for tally before core NATS drops them as a slow consumer.", BUFFER), id = "nats_buffer",
        value_name = "MESSAGES", long = "nats-buffer", env = "TALLY_NATS_BUFFER")]
    #[serde(default)]
    pub buffer: Option<usize>,

    /// Use another NATS subject for an event type, e.g. usage.llm=acme.usage.llm (repeatable).
    #[arg(
        id = "nats_subjects",
        long = "nats-subject",
        value_name = "EVENT=SUBJECT"
    )]
    #[serde(default)]
    pub subjects: Vec<String>,

    /// NATS credentials file (a user JWT and its NKey seed).
    #[arg(
        id = "nats_credentials",
        long = "nats-credentials",
        value_name = "FILE",
        env = "TALLY_NATS_CREDENTIALS"
    )]
    #[serde(default)]
    pub credentials: Option<PathBuf>,

    /// CA (PEM) of the NATS server's certificate: connect over TLS only.
    #[arg(
        id = "nats_tls_ca",
        long = "nats-tls-ca",
        value_name = "PEM",
        env = "TALLY_NATS_TLS_CA"
    )]
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for a NATS server that asks for one.
    #[arg(
        id = "nats_tls_cert",
        long = "nats-tls-cert",
        value_name = "PEM",
        requires = "nats_tls_key"
    )]
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,

    /// Key (PEM) of --nats-tls-cert.
    #[arg(
        id = "nats_tls_key",
        long = "nats-tls-key",
        value_name = "PEM",
        requires = "nats_tls_cert"
    )]
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// `None` when no NATS server is configured.
    pub fn resolve(&self) -> Result<Option<NatsConfig>, ConfigError> {
        let Some(url) = self.url.clone() else {
            return Ok(None);
        };
        let mut subjects = HashMap::new();
        for pair in &self.subjects {
            let (event, subject) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(s) = Subject::from_name(event) else {
                return Err(ConfigError::new(
                    "nats.subjects",
                    format!("nats subject override: unknown event type {event:?}"),
                ));
            };
            if subject.is_empty() {
                return Err(ConfigError::new(
                    "nats.subjects",
                    format!(
                        "nats subject override for {event} must be EVENT=SUBJECT with a subject"
                    ),
                ));
            }
            subjects.insert(s, subject.to_string());
        }
        let buffer = self.buffer.unwrap_or(BUFFER);
        if buffer == 0 {
            return Err(ConfigError::new("nats.buffer", "must be at least 1"));
        }
        Ok(Some(NatsConfig {
            url,
            buffer,
            stream: self.stream.clone(),
            create_stream: self.create_stream.unwrap_or(false),
            consumer: self.consumer.clone().unwrap_or_else(|| CONSUMER.into()),
            ack_wait: self.ack_wait.unwrap_or(ACK_WAIT),
            subjects,
            credentials: self.credentials.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_client: match (&self.tls_cert, &self.tls_key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::new(
                        "nats.tls_cert",
                        "nats tls_cert and tls_key go together",
                    ))
                }
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(buffer: Option<usize>) -> NatsArgs {
        NatsArgs {
            url: Some("nats://127.0.0.1:4222".into()),
            buffer,
            ..Default::default()
        }
    }

    #[test]
    fn buffer_defaults_and_must_hold_a_message() {
        let resolved = |b| args(b).resolve().unwrap().unwrap().buffer;
        assert_eq!(resolved(None), 262_144);
        assert_eq!(resolved(Some(1_000)), 1_000);
        let err = args(Some(0)).resolve().unwrap_err();
        assert_eq!(err.to_string(), "nats.buffer: must be at least 1");
        let from_file: NatsArgs = toml::from_str("url = \"nats://h:4222\"\nbuffer = 5\n").unwrap();
        assert_eq!(from_file.resolve().unwrap().unwrap().buffer, 5);
    }
}
