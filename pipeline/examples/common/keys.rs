//! The dedup keys the examples feed the index: the `i`-th key of a dataset.

use tally_pipeline::record::{encode_key_part, Value};
use tally_pipeline::Dataset;

/// Appends to `key` the `i`-th key: a 36-byte UUID text `event_id` for
/// `usage_llm`, else a `vm_metrics` key of one of 1,000 VMs, each VM's
/// samples 100 ms apart.
pub fn key_of(dataset: Dataset, i: u64, key: &mut Vec<u8>) {
    if dataset == Dataset::UsageLlm {
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            i,
            i % 65536,
            i % 4096,
            i % 4096,
            i * 7919
        );
        encode_key_part(&Value::Str(id), key);
    } else {
        encode_key_part(&Value::Str(format!("ud-{:016x}", i % 1000)), key);
        encode_key_part(
            &Value::Ts(1_700_000_000_000_000_000 + i as i64 * 100_000_000),
            key,
        );
    }
}
