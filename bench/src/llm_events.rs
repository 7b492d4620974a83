//! The `usage.llm` events the load generator sends.

use std::fmt::Write;

/// One NDJSON body of `n` LLM events with fresh ids. Written straight into
/// one string, the timestamp formatted once per second of event time: the
/// generator shares the cores with the server, and its time counts in the
/// latency it measures.
pub fn body(first_id: u64, n: usize) -> String {
    let mut s = String::with_capacity(n * 330);
    let mut stamp = (u64::MAX, String::new());
    for id in first_id..first_id + n as u64 {
        let secs = 1_763_985_600 + id / 1000;
        if stamp.0 != secs {
            let ts = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
            stamp = (secs, ts.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        let _ = write!(
            s,
            concat!(
                "{{\"event_id\":\"bench-{:012}\",\"timestamp\":\"{}\",\"actor_id\":\"user:{}\",",
                "\"actor_type\":\"human\",\"agent_id\":\"agent:{}\",\"microdao_id\":\"microdao:{}\",",
                "\"model\":\"{}\",\"provider\":\"openai\",\"prompt_tokens\":{},\"completion_tokens\":{},",
                "\"total_tokens\":{},\"latency_ms\":{},\"success\":true}}\n"
            ),
            id,
            stamp.1,
            id % 97,
            id % 13,
            id % 7,
            ["gpt-4.1-mini", "gpt-4o", "claude-3-5-sonnet-20241022"][(id % 3) as usize],
            100 + id % 900,
            20 + id % 300,
            120 + id % 900 + id % 300,
            200 + id % 2000,
        );
    }
    s
}
