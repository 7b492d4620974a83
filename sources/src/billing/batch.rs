//! A `SendMetricsBatch` request as the server reads it: the VM, the
//! customer and the samples as columns, filled as the message is decoded
//! (protobuf over gRPC, Connect and Kafka; JSON over Connect). No message
//! of samples is built and then transposed: each sample's fields go to
//! their columns as they are read, and the columns become the
//! `vm_metrics` rows without a copy.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, DictionaryArray, Int32Array, Int64Array, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::Int32Type;
use prost::Message;
use tally_pipeline::batch::Columns;
use tally_pipeline::clock::{DAY_NS, NS_PER_SEC};
use tally_pipeline::rules::vm::SAMPLE_VALUES;
use tally_pipeline::{Dataset, SchemaError};
use tally_proto::billing::v1::{SendMetricsBatchRequest, VmMetrics};
use tally_proto::codec::FromWire;
use tally_proto::fast::BatchSink;

use super::error::RpcError;

/// At most this many samples per batch.
pub const MAX_BATCH: usize = 1000;
/// Samples may be stamped at most this far in the future.
const MAX_FUTURE_NS: i64 = DAY_NS;

/// A batch of one VM's samples, as columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsBatch {
    pub vm_id: String,
    pub customer_id: String,
    pub samples: Samples,
}

/// The samples of a batch, one column per field, in the order sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// Each sample's timestamp as sent (0 and 0 where it has none).
    seconds: Vec<i64>,
    nanos: Vec<i32>,
    /// The first sample without a timestamp.
    first_untimed: Option<usize>,
    /// The six counters, in the order of [`SAMPLE_VALUES`] (the order of
    /// the message's fields).
    counters: [Vec<i64>; 6],
}

impl Samples {
    pub fn len(&self) -> usize {
        self.seconds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    pub fn reserve(&mut self, n: usize) {
        self.seconds.reserve(n);
        self.nanos.reserve(n);
        for c in &mut self.counters {
            c.reserve(n);
        }
    }

    /// Whether every sample is valid (see [`MetricsBatch::validate`]),
    /// column by column, without branching per sample. `false` may also
    /// mean a time too near `i64::MAX` to check this way: the caller then
    /// checks sample by sample.
    fn all_valid(&self, now: i64) -> bool {
        if self.first_untimed.is_some() {
            return false;
        }
        let latest = now.saturating_add(MAX_FUTURE_NS).min(i64::MAX - NS_PER_SEC);
        let max_seconds = latest.div_euclid(NS_PER_SEC);
        let times = self
            .seconds
            .iter()
            .zip(&self.nanos)
            .fold(true, |ok, (&seconds, &nanos)| {
                // Within `max_seconds` the product cannot overflow; past
                // it the wrapped value is not used.
                let ns = seconds.wrapping_mul(NS_PER_SEC).wrapping_add(nanos as i64);
                ok & (seconds > 0)
                    & (seconds <= max_seconds)
                    & (nanos >= 0)
                    & (nanos < NS_PER_SEC as i32)
                    & (ns <= latest)
            });
        // A negative counter sets the sign bit of the column's OR.
        times
            && self
                .counters
                .iter()
                .all(|c| c.iter().fold(0i64, |any, &v| any | v) >= 0)
    }

    /// Appends one sample's fields to their columns.
    pub fn push(&mut self, m: &VmMetrics) {
        let (seconds, nanos) = match &m.timestamp {
            Some(t) => (t.seconds, t.nanos),
            None => {
                self.first_untimed.get_or_insert(self.seconds.len());
                (0, 0)
            }
        };
        self.seconds.push(seconds);
        self.nanos.push(nanos);
        for (column, v) in self.counters.iter_mut().zip(counters(m)) {
            column.push(v);
        }
    }
}

/// A sample's six counters, in the order of [`SAMPLE_VALUES`].
fn counters(m: &VmMetrics) -> [i64; 6] {
    [
        m.cpu_time_nanos,
        m.memory_usage_bytes,
        m.disk_read_bytes,
        m.disk_write_bytes,
        m.network_rx_bytes,
        m.network_tx_bytes,
    ]
}

impl BatchSink for MetricsBatch {
    fn reserve(&mut self, samples: usize) {
        self.samples.reserve(samples);
    }
    fn vm_id(&mut self, vm_id: &str) {
        vm_id.clone_into(&mut self.vm_id);
    }
    fn customer_id(&mut self, customer_id: &str) {
        customer_id.clone_into(&mut self.customer_id);
    }
    fn sample(&mut self, sample: &VmMetrics) {
        self.samples.push(sample);
    }
}

impl FromWire for MetricsBatch {
    fn from_wire(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        MetricsBatch::decode(bytes)
    }
}

/// A required text field: present, at most 1 KiB, without NUL.
pub(super) fn required(name: &str, v: &str) -> Result<(), RpcError> {
    if v.is_empty() {
        Err(RpcError::InvalidArgument(format!("{name} is required")))
    } else if v.len() > 1024 || v.contains('\0') {
        Err(RpcError::InvalidArgument(format!(
            "{name} must be at most 1024 bytes without NUL characters"
        )))
    } else {
        Ok(())
    }
}

/// Seconds and nanoseconds as Unix nanoseconds, `None` past i64.
fn timestamp_ns(seconds: i64, nanos: i32) -> Option<i64> {
    seconds.checked_mul(NS_PER_SEC)?.checked_add(nanos as i64)
}

impl MetricsBatch {
    /// A batch from its protobuf encoding: by the direct decoder into the
    /// columns when it can, else by prost (whose result and errors it
    /// then has).
    pub fn decode(bytes: &[u8]) -> Result<MetricsBatch, prost::DecodeError> {
        let mut batch = MetricsBatch::default();
        if tally_proto::fast::send_metrics_batch_into(bytes, &mut batch).is_some() {
            return Ok(batch);
        }
        SendMetricsBatchRequest::decode(bytes).map(|r| MetricsBatch::from_request(&r))
    }

    /// The batch of a decoded message (gRPC-Web, which tonic's generated
    /// service decodes; and messages the direct decoder left to prost).
    pub fn from_request(req: &SendMetricsBatchRequest) -> MetricsBatch {
        let mut batch = MetricsBatch {
            vm_id: req.vm_id.clone(),
            customer_id: req.customer_id.clone(),
            samples: Samples::default(),
        };
        batch.samples.reserve(req.metrics.len());
        for m in &req.metrics {
            batch.samples.push(m);
        }
        batch
    }

    /// Checks the batch; the first error names the field and the sample's
    /// index.
    pub fn validate(&self, now: i64) -> Result<(), RpcError> {
        required("vm_id", &self.vm_id)?;
        required("customer_id", &self.customer_id)?;
        let s = &self.samples;
        let n = s.len();
        if n == 0 || n > MAX_BATCH {
            return Err(RpcError::InvalidArgument(format!(
                "metrics must hold between 1 and {MAX_BATCH} samples, got {n}"
            )));
        }
        if s.all_valid(now) {
            return Ok(());
        }
        // Something is wrong: find the first fault by index, and name it.
        for i in 0..n {
            if s.first_untimed == Some(i) {
                return Err(RpcError::InvalidArgument(format!(
                    "metrics[{i}].timestamp is required"
                )));
            }
            let (seconds, nanos) = (s.seconds[i], s.nanos[i]);
            if !(0..NS_PER_SEC as i32).contains(&nanos) || seconds <= 0 {
                return Err(RpcError::InvalidArgument(format!(
                    "metrics[{i}].timestamp must be after 1970 with nanos in 0..1e9, got {seconds}s {nanos}ns"
                )));
            }
            let ns = timestamp_ns(seconds, nanos).ok_or_else(|| {
                RpcError::InvalidArgument(format!("metrics[{i}].timestamp is out of range"))
            })?;
            if ns > now + MAX_FUTURE_NS {
                return Err(RpcError::InvalidArgument(format!(
                    "metrics[{i}].timestamp is more than 24h in the future"
                )));
            }
            for (name, column) in SAMPLE_VALUES.into_iter().zip(&s.counters) {
                let v = column[i];
                if v < 0 {
                    return Err(RpcError::InvalidArgument(format!(
                        "metrics[{i}].{name} must be >= 0, got {v}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A short account of a refused batch, kept in `rejected`.
    pub fn summary(&self) -> String {
        format!(
            "{{\"vm_id\":{:?},\"customer_id\":{:?},\"samples\":{}}}",
            self.vm_id,
            self.customer_id,
            self.samples.len()
        )
    }

    /// The `vm_metrics` rows of a validated batch, and its newest sample
    /// time. The sample columns become the rows' columns as they are (the
    /// seconds are made nanoseconds in place); the VM and the customer are
    /// one dictionary value each. The columns are checked against the
    /// schema by name when assembled.
    pub fn into_columns(self) -> Result<(Columns, i64), SchemaError> {
        let Samples {
            mut seconds,
            nanos,
            counters,
            ..
        } = self.samples;
        let n = seconds.len();
        let mut newest = i64::MIN;
        for (t, nanos) in seconds.iter_mut().zip(nanos) {
            *t = timestamp_ns(*t, nanos).unwrap_or_default();
            newest = newest.max(*t);
        }
        let one = |v: &str| -> ArrayRef {
            Arc::new(DictionaryArray::<Int32Type>::new(
                Int32Array::from(vec![0; n]),
                Arc::new(StringArray::from(vec![v])),
            ))
        };
        let mut columns: Vec<(&str, ArrayRef)> = vec![
            ("customer_id", one(&self.customer_id)),
            ("vm_id", one(&self.vm_id)),
            (
                "timestamp",
                Arc::new(TimestampNanosecondArray::from(seconds).with_timezone("UTC")),
            ),
        ];
        for (name, values) in SAMPLE_VALUES.into_iter().zip(counters) {
            columns.push((name, Arc::new(Int64Array::from(values))));
        }
        Ok((Columns::assemble(Dataset::VmMetrics, n, columns)?, newest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secs: i64) -> VmMetrics {
        VmMetrics {
            timestamp: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            cpu_time_nanos: 1,
            memory_usage_bytes: 1,
            disk_read_bytes: 1,
            disk_write_bytes: 1,
            network_rx_bytes: 1,
            network_tx_bytes: 1,
        }
    }

    fn batch(metrics: Vec<VmMetrics>) -> SendMetricsBatchRequest {
        SendMetricsBatchRequest {
            vm_id: "vm".into(),
            customer_id: "c".into(),
            metrics,
        }
    }

    fn err(req: &SendMetricsBatchRequest) -> String {
        MetricsBatch::from_request(req)
            .validate(2_000_000_000 * NS_PER_SEC)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn validation_names_the_field_and_the_index() {
        let mut b = batch((0..20).map(|i| sample(1_700_000_000 + i)).collect());
        assert!(MetricsBatch::from_request(&b)
            .validate(2_000_000_000 * NS_PER_SEC)
            .is_ok());
        b.metrics[17].timestamp = None;
        assert_eq!(err(&b), "metrics[17].timestamp is required");
        // An earlier sample's fault comes first, a later missing time after.
        b.metrics[19].timestamp = None;
        b.metrics[4].network_rx_bytes = -1;
        assert_eq!(err(&b), "metrics[4].network_rx_bytes must be >= 0, got -1");
        b.metrics[4] = sample(1_700_000_000);
        b.metrics[17] = sample(1_700_000_000);
        assert_eq!(err(&b), "metrics[19].timestamp is required");
        b.metrics[19] = sample(1_700_000_000);
        b.metrics[3].disk_write_bytes = -5;
        assert_eq!(err(&b), "metrics[3].disk_write_bytes must be >= 0, got -5");
        b.metrics[3] = sample(2_000_000_000 + 25 * 3600);
        assert_eq!(
            err(&b),
            "metrics[3].timestamp is more than 24h in the future"
        );
        b.metrics[3] = sample(-4);
        assert_eq!(
            err(&b),
            "metrics[3].timestamp must be after 1970 with nanos in 0..1e9, got -4s 0ns"
        );
        b.metrics[3] = sample(i64::MAX / 2);
        assert_eq!(err(&b), "metrics[3].timestamp is out of range");
        assert_eq!(
            err(&batch(vec![])),
            "metrics must hold between 1 and 1000 samples, got 0"
        );
        assert_eq!(
            err(&batch(
                (0..1001).map(|i| sample(1_700_000_000 + i)).collect()
            )),
            "metrics must hold between 1 and 1000 samples, got 1001"
        );
        let mut no_vm = batch(vec![sample(1_700_000_000)]);
        no_vm.vm_id.clear();
        assert_eq!(err(&no_vm), "vm_id is required");
    }

    /// The column-wise check says "valid" exactly when every sample passes
    /// the rules checked one by one here, on batches with values at the
    /// rules' edges.
    #[test]
    fn the_column_check_agrees_with_a_check_per_sample() {
        let now = 1_765_000_000 * NS_PER_SEC;
        let latest = now + 24 * 3600 * NS_PER_SEC;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let edge_seconds = [
            1,
            0,
            -1,
            latest / NS_PER_SEC,
            latest / NS_PER_SEC + 1,
            i64::MAX / NS_PER_SEC + 1,
            i64::MAX,
            i64::MIN,
        ];
        let edge_nanos = [0, 999_999_999, 1_000_000_000, -1, i32::MAX, i32::MIN];
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..20_000 {
            let metrics: Vec<VmMetrics> = (0..1 + next(4))
                .map(|_| {
                    let mut m = sample(1_700_000_000 + next(1000) as i64);
                    if next(8) == 0 {
                        m.timestamp = None;
                    }
                    if let Some(t) = &mut m.timestamp {
                        if next(6) == 0 {
                            t.seconds = edge_seconds[next(edge_seconds.len() as u64) as usize];
                        }
                        if next(6) == 0 {
                            t.nanos = edge_nanos[next(edge_nanos.len() as u64) as usize];
                        }
                    }
                    if next(10) == 0 {
                        m.disk_read_bytes = -(next(3) as i64) * (i64::MAX / 2);
                    }
                    if next(10) == 0 {
                        m.network_tx_bytes = [i64::MIN, i64::MAX, 0][next(3) as usize];
                    }
                    m
                })
                .collect();
            let ok_one = |m: &VmMetrics| {
                let Some(t) = m.timestamp else {
                    return false;
                };
                let ns = (t.seconds as i128) * (NS_PER_SEC as i128) + t.nanos as i128;
                t.seconds > 0
                    && (0..1_000_000_000).contains(&t.nanos)
                    && ns <= latest as i128
                    && counters(m).iter().all(|&v| v >= 0)
            };
            let want = metrics.iter().all(ok_one);
            let b = MetricsBatch::from_request(&batch(metrics));
            assert_eq!(b.samples.all_valid(now), want, "{b:?}");
            assert_eq!(b.validate(now).is_ok(), want, "{b:?}");
            if want {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        assert!(
            valid > 1000 && invalid > 1000,
            "{valid} valid, {invalid} invalid"
        );
    }

    /// The columns hold each sample's fields in the order sent, read here
    /// from the message's samples one by one.
    #[test]
    fn the_columns_are_the_samples_fields() {
        let req = SendMetricsBatchRequest {
            vm_id: "vm-7".into(),
            customer_id: "acme".into(),
            metrics: (0..5)
                .map(|i| VmMetrics {
                    timestamp: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000 + 10 * i,
                        nanos: 7 * i as i32,
                    }),
                    cpu_time_nanos: i,
                    memory_usage_bytes: 2 * i,
                    disk_read_bytes: 3 * i,
                    disk_write_bytes: 4 * i,
                    network_rx_bytes: 5 * i,
                    network_tx_bytes: 6 * i,
                })
                .collect(),
        };
        let decoded = MetricsBatch::decode(&req.encode_to_vec()).unwrap();
        assert_eq!(decoded, MetricsBatch::from_request(&req));
        let (columns, newest) = decoded.into_columns().unwrap();
        let records = columns.to_records();
        assert_eq!(records.len(), 5);
        for (r, m) in records.iter().zip(&req.metrics) {
            let t = m.timestamp.unwrap();
            let want_ns = t.seconds * NS_PER_SEC + t.nanos as i64;
            assert_eq!(
                r.get("timestamp"),
                Some(&tally_pipeline::Value::Ts(want_ns))
            );
            assert_eq!(r.get("vm_id"), Some(&tally_pipeline::Value::from("vm-7")));
            assert_eq!(
                r.get("customer_id"),
                Some(&tally_pipeline::Value::from("acme"))
            );
            assert_eq!(
                r.get("network_tx_bytes"),
                Some(&tally_pipeline::Value::I64(m.network_tx_bytes))
            );
            assert_eq!(
                r.get("cpu_time_nanos"),
                Some(&tally_pipeline::Value::I64(m.cpu_time_nanos))
            );
        }
        assert_eq!(newest, (1_700_000_040) * NS_PER_SEC + 28);
    }

    /// Bytes the direct decoder leaves to prost (an unknown field) decode
    /// to prost's message; bytes prost refuses are prost's error.
    #[test]
    fn what_the_direct_decoder_leaves_is_prosts() {
        let req = batch(vec![sample(1_700_000_000), sample(1_700_000_001)]);
        let mut bytes = req.encode_to_vec();
        // Field 15, varint 1: unknown to billing.v1, skipped by prost.
        bytes.extend([0x78, 0x01]);
        assert!(tally_proto::fast::send_metrics_batch(&bytes).is_none());
        assert_eq!(
            MetricsBatch::decode(&bytes).unwrap(),
            MetricsBatch::from_request(&req)
        );
        let cut = &bytes[..bytes.len() - 3];
        assert_eq!(
            MetricsBatch::decode(cut).unwrap_err(),
            SendMetricsBatchRequest::decode(cut).unwrap_err()
        );
    }
}
