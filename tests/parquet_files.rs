//! The files an analyst reads: Hive layout (README, "Datasets"), sorted rows, the
//! declared types and encodings, and exactly the rows sent.

mod common;

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int32Type, TimeUnit, TimestampNanosecondType};
use common::{llm_event, ndjson, parquet_files, read_parquet, strings, Tally};
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};

#[tokio::test]
async fn files_hold_exactly_the_rows_sent_in_hive_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &["--flush-interval", "1h"]).await;

    // 300 events over three hours of two days; the expected partition of
    // each is computed here from its timestamp text.
    let hours = [
        "2025-11-23T23:59:59.999Z",
        "2025-11-24T00:00:00Z",
        "2025-11-24T07:30:00.5+00:00",
    ];
    let partitions = [
        "date=2025-11-23/hour=23",
        "date=2025-11-24/hour=00",
        "date=2025-11-24/hour=07",
    ];
    let mut expected: BTreeMap<String, (String, i32)> = BTreeMap::new();
    let mut events = Vec::new();
    for i in 0..300 {
        // Ids not in time or send order, so sorting is visible.
        let id = format!("e-{:05}", (i * 7919) % 100_000);
        let h = i % 3;
        events.push(llm_event(&id, hours[h], i as i64, 1));
        expected.insert(id, (partitions[h].to_string(), i as i32));
    }
    let r = reqwest::Client::new()
        .post(t.url("/v1/events/usage.llm"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&events))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    t.terminate();

    let files = parquet_files(&data, "usage_llm");
    assert_eq!(files.len(), 3, "{files:?}");
    let mut seen = BTreeMap::new();
    for f in &files {
        let rel = f
            .strip_prefix(&data)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 4, "{rel}");
        assert_eq!(parts[0], "usage_llm");
        let partition = format!("{}/{}", parts[1], parts[2]);
        // <node>-<first WAL seq>-<uuid>.crc32-<CRC-32 of the bytes>.parquet;
        // the node id may hold '-'.
        let (stem, crc) = parts[3]
            .trim_end_matches(".parquet")
            .rsplit_once(".crc32-")
            .unwrap();
        assert_eq!(
            u32::from_str_radix(crc, 16).unwrap(),
            common::crc32_bitwise(&std::fs::read(f).unwrap()),
            "{rel}"
        );
        let (rest, uuid) = stem.rsplit_once('-').unwrap();
        let (node, seq) = rest.rsplit_once('-').unwrap();
        assert!(!node.is_empty(), "{rel}");
        assert!(
            seq.len() == 20 && seq.chars().all(|c| c.is_ascii_digit()),
            "{rel}"
        );
        assert!(
            uuid.len() == 32 && uuid.chars().all(|c| c.is_ascii_hexdigit()),
            "{rel}"
        );

        let reader = SerializedFileReader::new(std::fs::File::open(f).unwrap()).unwrap();
        let meta = reader.metadata();
        for col in meta.row_group(0).columns() {
            assert!(
                matches!(col.compression(), Compression::ZSTD(_)),
                "{}",
                col.column_path()
            );
        }
        let batches = read_parquet(f);
        let schema = batches[0].schema();
        assert_eq!(
            schema.field_with_name("timestamp").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
        );
        assert!(matches!(
            schema.field_with_name("model").unwrap().data_type(),
            DataType::Dictionary(_, _)
        ));

        for b in &batches {
            let ids = strings(b, "event_id");
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted, "rows of {rel} are not sorted by key");
            let prompt = b
                .column_by_name("prompt_tokens")
                .unwrap()
                .as_primitive::<Int32Type>();
            let ts = b
                .column_by_name("timestamp")
                .unwrap()
                .as_primitive::<TimestampNanosecondType>();
            for (row, id) in ids.into_iter().enumerate() {
                // The row's own time falls in the partition it is filed under.
                let t = chrono::DateTime::from_timestamp_nanos(ts.value(row));
                assert_eq!(t.format("date=%Y-%m-%d/hour=%H").to_string(), partition);
                seen.insert(id, (partition.clone(), prompt.value(row)));
            }
        }
    }
    assert_eq!(seen, expected);
}
