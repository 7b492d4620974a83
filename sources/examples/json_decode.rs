//! Decodes the same `usage.llm` events (the load generator's) into records
//! with each JSON parser, and prints ns per event, median of the rounds:
//!
//! - `serde_json tree`: `serde_json::Value`, then the fields read from it
//!   (how events were decoded before);
//! - `serde_json one pass`, `simd-json one pass`, `sonic-rs one pass`: the
//!   event read straight into its typed fields by each parser's serde
//!   deserializer, then into the record; only the parser differs;
//! - `hand reader one pass`: `Object::parse` as tally reads events, its
//!   own loop over the bytes with `serde_json` for what it leaves;
//! - `..., parse only`: the event's fields read, not decoded into a record.

use std::time::Instant;

#[path = "../../bench/src/llm_events.rs"]
mod llm_events;

use tally_sources::events::object::{Event, Object};
use tally_sources::events::Subject;

const EVENTS: usize = 200_000;
const ROUNDS: usize = 7;

fn main() {
    let body = llm_events::body(1, EVENTS);
    let lines: Vec<&[u8]> = body.lines().map(str::as_bytes).collect();
    let subject = Subject::UsageLlm;

    let tree = |line: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(line).expect("valid JSON");
        let map = v.as_object().expect("an object");
        subject.decode(&Event::Object(Object::from_map(map)))
    };
    let serde_one_pass =
        |line: &[u8]| subject.decode(&serde_json::from_slice::<Event>(line).expect("valid JSON"));
    let sonic =
        |line: &[u8]| subject.decode(&sonic_rs::from_slice::<Event>(line).expect("valid JSON"));
    let by_hand = |line: &[u8]| subject.decode(&Object::parse(line).expect("valid JSON"));

    // Every decoder gives the same records.
    for line in lines.iter().take(1000) {
        let want = tree(line).expect("decodes").values;
        assert_eq!(serde_one_pass(line).expect("decodes").values, want);
        assert_eq!(sonic(line).expect("decodes").values, want);
        assert_eq!(by_hand(line).expect("decodes").values, want);
        let mut copy = line.to_vec();
        let simd = simd_json::serde::from_slice::<Event>(&mut copy).expect("valid JSON");
        assert_eq!(subject.decode(&simd).expect("decodes").values, want);
    }

    let mut results: Vec<(&str, f64)> = Vec::new();
    let mut time = |name: &'static str, f: &mut dyn FnMut(&[u8]) -> usize| {
        let mut per_event = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let mut n = 0;
            for line in &lines {
                n += f(line);
            }
            assert_eq!(n, lines.len());
            per_event.push(started.elapsed().as_nanos() as f64 / lines.len() as f64);
        }
        per_event.sort_by(f64::total_cmp);
        results.push((name, per_event[ROUNDS / 2]));
    };
    time("serde_json tree", &mut |l| tree(l).map_or(0, |_| 1));
    time("serde_json one pass", &mut |l| {
        serde_one_pass(l).map_or(0, |_| 1)
    });
    // simd-json parses in place: the copy it needs is part of its cost.
    let mut scratch = Vec::new();
    time("simd-json one pass", &mut |l| {
        scratch.clear();
        scratch.extend_from_slice(l);
        let event = simd_json::serde::from_slice::<Event>(&mut scratch).expect("valid JSON");
        subject.decode(&event).map_or(0, |_| 1)
    });
    time("sonic-rs one pass", &mut |l| sonic(l).map_or(0, |_| 1));
    time("hand reader one pass", &mut |l| by_hand(l).map_or(0, |_| 1));
    // The parsers alone, without the decoding into a record.
    time("serde_json, parse only", &mut |l| {
        Object::parse_with_serde(l).map_or(0, |_| 1)
    });
    time("hand reader, parse only", &mut |l| {
        Object::parse(l).map_or(0, |_| 1)
    });

    let base = results[0].1;
    println!(
        "| decoder | ns per event (median of {ROUNDS} rounds of {EVENTS}) | vs serde_json tree |"
    );
    println!("|---|---|---|");
    for (name, ns) in &results {
        println!("| {name} | {ns:.0} | {:.2}× |", base / ns);
    }
}
