//! The Kafka relay of an edge node: accepted records go to a Kafka topic
//! instead of the local WAL, and the client is answered once every broker in
//! the partition's in-sync set has them (`acks=all`).
//!
//! Records travel in the WAL's own encoding (`tally_pipeline::wal::codec`),
//! grouped by tenant (`customer_id` or `microdao_id`), so a tenant's records
//! stay in one partition and in order. Writers read the topic back with the
//! same codec. The subject-shaped JSON would not do: `usage.llm` and
//! `chat.usage_delta` share a dataset, and rejections must travel too.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_pipeline::wal::codec::encode_records;
use tally_pipeline::{Record, Relay, RelayError, Value};

/// Upper bound of one Kafka message; the broker default is 1 MiB.
const MAX_MESSAGE_BYTES: usize = 512 << 10;

pub mod config;

pub use config::{RelayArgs, RelaySettings};

#[derive(Debug, thiserror::Error)]
pub enum KafkaRelayError {
    #[error("cannot create the Kafka producer for {brokers}: {source}")]
    Create {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
}

pub struct KafkaRelay {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaRelay {
    /// A producer to `brokers`; `options` are more librdkafka properties.
    pub fn new(
        brokers: &str,
        topic: &str,
        timeout: Duration,
        options: &[(String, String)],
    ) -> Result<Self, KafkaRelayError> {
        let mut config = ClientConfig::new();
        for (k, v) in options {
            config.set(k, v);
        }
        let producer = config
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            // Retries never write a message twice.
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()
            .map_err(|source| KafkaRelayError::Create {
                brokers: brokers.to_string(),
                source,
            })?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            timeout,
        })
    }

    async fn send_all(&self, records: Vec<Record>) -> Result<(), RelayError> {
        let mut by_tenant: HashMap<String, Vec<Record>> = HashMap::new();
        for r in records {
            by_tenant.entry(partition_key(&r)).or_default().push(r);
        }
        let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
        for (key, group) in by_tenant {
            encode_chunks(&group, &mut |payload| messages.push((key.clone(), payload)));
        }
        try_join_all(messages.iter().map(|(key, payload)| {
            self.producer.send(
                FutureRecord::to(&self.topic).key(key).payload(payload),
                self.timeout,
            )
        }))
        .await
        .map_err(|(e, _)| RelayError {
            topic: self.topic.clone(),
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

impl Relay for KafkaRelay {
    fn send(
        &self,
        records: Vec<Record>,
    ) -> Pin<Box<dyn Future<Output = Result<(), RelayError>> + Send + '_>> {
        Box::pin(self.send_all(records))
    }
}

/// The tenant of a record (`customer_id`, else `microdao_id`), or its
/// dataset's name when it has neither.
pub fn partition_key(r: &Record) -> String {
    for name in ["customer_id", "microdao_id"] {
        if let Some(i) = r.dataset.column_index(name) {
            if let Some(Value::Str(s)) = r.values.get(i) {
                return s.clone();
            }
        }
    }
    r.dataset.name().to_string()
}

/// Encodes `records` into payloads no larger than the message bound
/// (a single record larger than the bound goes alone).
fn encode_chunks(records: &[Record], emit: &mut dyn FnMut(Vec<u8>)) {
    let mut buf = Vec::new();
    encode_records(records, &mut buf);
    if buf.len() <= MAX_MESSAGE_BYTES || records.len() == 1 {
        emit(buf);
        return;
    }
    let (a, b) = records.split_at(records.len() / 2);
    encode_chunks(a, emit);
    encode_chunks(b, emit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_pipeline::wal::codec::decode_records;
    use tally_pipeline::{Dataset, RecordBuilder};

    fn rejected(payload: String) -> Record {
        let mut r = RecordBuilder::new(Dataset::Rejected);
        r.set("timestamp", Value::Ts(1))
            .set("source", "http")
            .set("reason", "reason")
            .set("payload", payload);
        r.build().unwrap()
    }

    #[test]
    fn large_groups_split_into_bounded_messages_that_decode_back() {
        let records: Vec<Record> = (0..40)
            .map(|i| rejected(format!("{i}:{}", "x".repeat(40_000))))
            .collect();
        let mut messages = Vec::new();
        encode_chunks(&records, &mut |m| messages.push(m));
        assert!(messages.len() >= 4, "{} messages", messages.len());
        assert!(messages.iter().all(|m| m.len() <= MAX_MESSAGE_BYTES));
        let back: Vec<Record> = messages
            .iter()
            .flat_map(|m| decode_records(m).unwrap())
            .collect();
        assert_eq!(back, records);
    }

    #[test]
    fn records_are_keyed_by_tenant_else_by_dataset() {
        assert_eq!(partition_key(&rejected("p".into())), "rejected");
        let sample = crate::parquet::listing::tests::vm_sample("cust-42", "vm-1", 1);
        assert_eq!(partition_key(&sample), "cust-42");
    }
}
