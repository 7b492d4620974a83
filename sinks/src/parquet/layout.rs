//! File layout: `<data>/<dataset>/date=YYYY-MM-DD/hour=HH/<first-wal-seq>-<uuid>.parquet`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Timelike};
use tally_pipeline::Dataset;

/// Directory of tally's own state (WAL, checkpoint); Hive readers skip `_`.
pub fn state_dir(data: &Path) -> PathBuf {
    data.join("_tally")
}

pub fn wal_dir(data: &Path) -> PathBuf {
    state_dir(data).join("wal")
}

/// `(date, hour)` of a timestamp in nanoseconds, UTC.
pub fn partition_of(ts_ns: i64) -> (String, u32) {
    let t = DateTime::from_timestamp_nanos(ts_ns);
    (
        format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day()),
        t.hour(),
    )
}

/// The directory of a partition, relative to the data directory.
pub fn partition_dir(dataset: Dataset, date: &str, hour: u32) -> PathBuf {
    PathBuf::from(dataset.name())
        .join(format!("date={date}"))
        .join(format!("hour={hour:02}"))
}

pub fn file_name(first_seq: u64, id: &uuid::Uuid) -> String {
    format!("{first_seq:020}-{}.parquet", id.simple())
}

/// A file that is being written: hidden from Hive readers by its dot.
pub fn tmp_name(final_name: &str) -> String {
    format!(".{final_name}.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_utc_hours() {
        // 2025-11-24T12:34:56.789Z
        let ts = 1_763_987_696_789_000_000;
        assert_eq!(partition_of(ts), ("2025-11-24".to_string(), 12));
        assert_eq!(
            partition_dir(Dataset::UsageLlm, "2025-11-24", 3),
            PathBuf::from("usage_llm/date=2025-11-24/hour=03")
        );
        assert_eq!(partition_of(0), ("1970-01-01".to_string(), 0));
    }

    #[test]
    fn file_names_sort_by_sequence() {
        let id = uuid::Uuid::nil();
        assert!(file_name(9, &id) < file_name(10, &id));
        assert!(tmp_name("a.parquet").starts_with('.'));
    }
}
