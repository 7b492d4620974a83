//! Times putting a flush round's `usage_llm` rows in the file's order
//! (`writer::in_file_order`): 400 requests of 500 rows (200,000 rows), the
//! load generator's events (7 tenants, ids `bench-000000000123`), and the
//! same rows with random UUID-like ids. Prints ms per round, median of 9.
//!
//! `cargo run --release -p tally-sinks --example file_order`

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use tally_pipeline::batch::{Row, Rows};
use tally_pipeline::Dataset;
use tally_sinks::parquet::writer::in_file_order;

const REQUESTS: u64 = 400;
const ROWS: u64 = 500;
const ROUNDS: usize = 9;

fn batches(id: impl Fn(u64) -> String) -> Vec<RecordBatch> {
    let d = Dataset::UsageLlm;
    (0..REQUESTS)
        .map(|r| {
            let mut rows = Rows::new(d, ROWS as usize);
            for i in r * ROWS..(r + 1) * ROWS {
                let (id, tenant) = (id(i), format!("microdao:{}", i % 7));
                let mut row = Row::new(d);
                row.set("event_id", id.as_str())
                    .set("timestamp", tally_pipeline::batch::Cell::Ts(i as i64))
                    .set("microdao_id", tenant.as_str())
                    .set("prompt_tokens", 1)
                    .set("completion_tokens", 1)
                    .set("total_tokens", 2)
                    .set("success", true)
                    .set("source", "usage.llm");
                rows.push(&row).expect("a usage_llm row");
            }
            rows.finish().batch().clone()
        })
        .collect()
}

fn main() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let uuids: Vec<String> = (0..REQUESTS * ROWS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let hi = state;
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("{:016x}{:016x}", hi, state)
        })
        .collect();
    for (name, input) in [
        ("generator ids", batches(|i| format!("bench-{i:012}"))),
        ("random ids", batches(|i| uuids[i as usize].clone())),
    ] {
        let mut ms = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let out = in_file_order(Dataset::UsageLlm, &input).expect("ordered");
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(out.num_rows() as u64, REQUESTS * ROWS);
        }
        ms.sort_by(f64::total_cmp);
        println!("| {name} | {:.1} ms |", ms[ROUNDS / 2]);
    }
}
