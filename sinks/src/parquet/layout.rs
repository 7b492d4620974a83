//! File layout: `<data>/<dataset>/date=YYYY-MM-DD/hour=HH/<node>-<first-wal-seq>-<uuid>.parquet`.
//!
//! The node id in the name keeps the files of writers that share one prefix
//! apart, and tells a node which files of a listing are its own.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Timelike};
use tally_pipeline::config::ConfigError;
use tally_pipeline::Dataset;

/// Directory of tally's own state (WAL, checkpoint); Hive readers skip `_`.
pub fn state_dir(data: &Path) -> PathBuf {
    data.join("_tally")
}

pub fn wal_dir(data: &Path) -> PathBuf {
    state_dir(data).join("wal")
}

/// Damaged WAL segments, unreadable and foreign files, and their reports.
pub fn quarantine_dir(data: &Path) -> PathBuf {
    state_dir(data).join("quarantine")
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

pub fn file_name(node: &str, first_seq: u64, id: &uuid::Uuid) -> String {
    format!("{node}-{first_seq:020}-{}.parquet", id.simple())
}

/// The node id of a file name written by [`file_name`]; `None` for names
/// of other shapes (files of older versions, or of other tools).
pub fn node_of(name: &str) -> Option<&str> {
    // Without the checksum a sealed name carries (`.crc32-XXXXXXXX`).
    let stem = name.strip_suffix(".parquet")?;
    let stem = match stem.rsplit_once(".crc32-") {
        Some((base, crc)) if crc.len() == 8 => base,
        _ => stem,
    };
    let (rest, id) = stem.rsplit_once('-')?;
    let (node, seq) = rest.rsplit_once('-')?;
    let ok = id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && seq.len() == 20
        && seq.bytes().all(|b| b.is_ascii_digit())
        && !node.is_empty();
    ok.then_some(node)
}

/// The top-level directory (a dataset or a rollup table) of a file at
/// `…/<table>/date=…/hour=…/<file>`, a path or an object URL.
pub fn table_of(path: &Path) -> Option<&str> {
    path.iter().rev().nth(3)?.to_str()
}

/// A node id is a file-name part: letters, digits, `.`, `_` and `-`.
pub fn check_node_id(node: &str) -> Result<(), ConfigError> {
    if node.is_empty() || node.len() > 64 {
        return Err(ConfigError::new(
            "node_id",
            format!(
                "node_id must be 1 to 64 characters, got {} ({node:?})",
                node.len()
            ),
        ));
    }
    match node
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(ConfigError::new(
            "node_id",
            format!(
                "node_id may hold letters, digits, '.', '_' and '-' only, got {c:?} in {node:?}"
            ),
        )),
        None => Ok(()),
    }
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
    fn file_names_sort_by_sequence_and_carry_the_node() {
        let id = uuid::Uuid::nil();
        assert!(file_name("w-1", 9, &id) < file_name("w-1", 10, &id));
        assert!(tmp_name("a.parquet").starts_with('.'));
        assert_eq!(node_of(&file_name("writer-1", 7, &id)), Some("writer-1"));
        let sealed = tally_pipeline::checksum::sealed_name(&file_name("writer-1", 7, &id), 9);
        assert_eq!(node_of(&sealed), Some("writer-1"));
        assert_eq!(
            node_of(&file_name("a", 7, &uuid::Uuid::new_v4())),
            Some("a")
        );
        // Names of the earlier `<seq>-<uuid>` shape have no node.
        assert_eq!(node_of(&format!("{:020}-{}.parquet", 7, id.simple())), None);
        assert_eq!(node_of("x.parquet"), None);
    }

    #[test]
    fn node_ids_are_file_name_parts() {
        assert!(check_node_id("writer-1.eu_west").is_ok());
        assert!(check_node_id("")
            .unwrap_err()
            .reason
            .contains("node_id must be 1 to 64 characters"));
        assert!(check_node_id("a/b").unwrap_err().reason.contains("'/'"));
    }
}
