//! The protobuf JSON mapping of the billing.v1 requests, as Connect JSON
//! clients send them: lowerCamelCase or the proto field names, int64 as a
//! string or a number, Timestamp as an RFC 3339 string. Unknown fields are
//! ignored.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use tally_proto::billing::v1::{
    NotifyPossibleGapRequest, NotifyVmStartedRequest, NotifyVmStoppedRequest, SendHeartbeatRequest,
    VmMetrics,
};

use super::batch::{MetricsBatch, Samples, MAX_BATCH};

fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        N(i64),
        S(String),
        Null(()),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s
            .parse()
            .map_err(|_| de::Error::custom(format!("expected an int64, got {s:?}"))),
        Int::Null(()) => Ok(0),
    }
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<prost_types::Timestamp>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let t = chrono::DateTime::parse_from_rfc3339(&s).map_err(|_| {
        de::Error::custom(format!(
            "expected an RFC 3339 timestamp such as 2024-01-15T10:30:00.100Z, got {s:?}"
        ))
    })?;
    Ok(Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }))
}

#[derive(Deserialize)]
struct Metrics {
    #[serde(default, deserialize_with = "timestamp")]
    timestamp: Option<prost_types::Timestamp>,
    #[serde(default, alias = "cpuTimeNanos", deserialize_with = "int64")]
    cpu_time_nanos: i64,
    #[serde(default, alias = "memoryUsageBytes", deserialize_with = "int64")]
    memory_usage_bytes: i64,
    #[serde(default, alias = "diskReadBytes", deserialize_with = "int64")]
    disk_read_bytes: i64,
    #[serde(default, alias = "diskWriteBytes", deserialize_with = "int64")]
    disk_write_bytes: i64,
    #[serde(default, alias = "networkRxBytes", deserialize_with = "int64")]
    network_rx_bytes: i64,
    #[serde(default, alias = "networkTxBytes", deserialize_with = "int64")]
    network_tx_bytes: i64,
}

#[derive(Deserialize)]
struct Batch {
    #[serde(default, alias = "vmId")]
    vm_id: String,
    #[serde(default, alias = "customerId")]
    customer_id: String,
    #[serde(default, deserialize_with = "samples")]
    metrics: Samples,
}

/// `metrics`: each sample is appended to the columns as it is parsed (no
/// list of samples first). An error names the sample's index.
fn samples<'de, D: Deserializer<'de>>(d: D) -> Result<Samples, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Samples;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of samples")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Samples, A::Error> {
            let mut samples = Samples::default();
            samples.reserve(seq.size_hint().unwrap_or(0).min(MAX_BATCH + 1));
            while let Some(m) = seq.next_element::<Metrics>()? {
                samples.push(&VmMetrics {
                    timestamp: m.timestamp,
                    cpu_time_nanos: m.cpu_time_nanos,
                    memory_usage_bytes: m.memory_usage_bytes,
                    disk_read_bytes: m.disk_read_bytes,
                    disk_write_bytes: m.disk_write_bytes,
                    network_rx_bytes: m.network_rx_bytes,
                    network_tx_bytes: m.network_tx_bytes,
                });
            }
            Ok(samples)
        }
    }
    d.deserialize_seq(Visitor)
}

#[derive(Deserialize)]
struct Heartbeat {
    #[serde(default, alias = "instanceId")]
    instance_id: String,
    #[serde(default, alias = "activeVms")]
    active_vms: Vec<String>,
}

#[derive(Deserialize)]
struct Started {
    #[serde(default, alias = "vmId")]
    vm_id: String,
    #[serde(default, alias = "customerId")]
    customer_id: String,
    #[serde(default, alias = "startTime", deserialize_with = "int64")]
    start_time: i64,
}

#[derive(Deserialize)]
struct Stopped {
    #[serde(default, alias = "vmId")]
    vm_id: String,
    #[serde(default, alias = "stopTime", deserialize_with = "int64")]
    stop_time: i64,
}

#[derive(Deserialize)]
struct Gap {
    #[serde(default, alias = "vmId")]
    vm_id: String,
    #[serde(default, alias = "lastSent", deserialize_with = "int64")]
    last_sent: i64,
    #[serde(default, alias = "resumeTime", deserialize_with = "int64")]
    resume_time: i64,
}

/// Parses JSON, naming the path of the field that failed.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            format!("invalid JSON request: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })
}

pub(crate) fn metrics_batch(body: &[u8]) -> Result<MetricsBatch, String> {
    let b: Batch = parse(body)?;
    Ok(MetricsBatch {
        vm_id: b.vm_id,
        customer_id: b.customer_id,
        samples: b.metrics,
    })
}

pub(crate) fn heartbeat(body: &[u8]) -> Result<SendHeartbeatRequest, String> {
    let h: Heartbeat = parse(body)?;
    Ok(SendHeartbeatRequest {
        instance_id: h.instance_id,
        active_vms: h.active_vms,
    })
}

pub(crate) fn vm_started(body: &[u8]) -> Result<NotifyVmStartedRequest, String> {
    let s: Started = parse(body)?;
    Ok(NotifyVmStartedRequest {
        vm_id: s.vm_id,
        customer_id: s.customer_id,
        start_time: s.start_time,
    })
}

pub(crate) fn vm_stopped(body: &[u8]) -> Result<NotifyVmStoppedRequest, String> {
    let s: Stopped = parse(body)?;
    Ok(NotifyVmStoppedRequest {
        vm_id: s.vm_id,
        stop_time: s.stop_time,
    })
}

pub(crate) fn possible_gap(body: &[u8]) -> Result<NotifyPossibleGapRequest, String> {
    let g: Gap = parse(body)?;
    Ok(NotifyPossibleGapRequest {
        vm_id: g.vm_id,
        last_sent: g.last_sent,
        resume_time: g.resume_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_with_both_spellings_and_string_int64() {
        let r = metrics_batch(
            br#"{"vmId":"ud-1","customer_id":"c","metrics":[{"timestamp":"2024-01-15T10:30:00.100Z",
               "cpu_time_nanos":1234567890123,"memoryUsageBytes":"536870912"}]}"#,
        )
        .unwrap();
        let want = tally_proto::billing::v1::SendMetricsBatchRequest {
            vm_id: "ud-1".into(),
            customer_id: "c".into(),
            metrics: vec![VmMetrics {
                timestamp: Some(prost_types::Timestamp {
                    seconds: 1_705_314_600,
                    nanos: 100_000_000,
                }),
                cpu_time_nanos: 1_234_567_890_123,
                memory_usage_bytes: 536_870_912,
                ..Default::default()
            }],
        };
        assert_eq!(r, MetricsBatch::from_request(&want));
    }

    #[test]
    fn errors_name_the_path() {
        let e = metrics_batch(br#"{"vm_id":"v","metrics":[{},{"cpu_time_nanos":"lots"}]}"#)
            .unwrap_err();
        assert!(
            e.starts_with("metrics[1].cpu_time_nanos: expected an int64"),
            "{e}"
        );
        let e = vm_started(br#"{"start_time": true}"#).unwrap_err();
        assert!(e.starts_with("start_time:"), "{e}");
    }
}
