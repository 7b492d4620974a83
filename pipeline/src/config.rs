//! What every component's settings share: the error a bad setting gives,
//! and the layering of flags (and environment) over `tally.toml`.
//!
//! A component owns one settings struct, both `clap::Args` (its flags,
//! environment variables and `--help` text) and serde (its `tally.toml`
//! section), with every field optional; its `resolve` applies the defaults,
//! written there only.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A setting's help text with its default, as `tally serve --help` shows
/// it: the default is the constant `resolve` uses, written once.
pub fn help(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

/// librdkafka properties given as `KEY=VALUE` (`--kafka-option`), checked:
/// each has a key and a value, and none is one tally sets itself (`fixed`:
/// its delivery guarantees depend on them).
pub fn client_options(
    setting: &'static str,
    pairs: &[String],
    fixed: &[&str],
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let Some((k, v)) = pair
            .split_once('=')
            .filter(|(k, v)| !k.trim().is_empty() && !v.is_empty())
        else {
            return Err(ConfigError::new(
                setting,
                format!("{setting} must be KEY=VALUE (a librdkafka property), got {pair:?}"),
            ));
        };
        let k = k.trim();
        if fixed.contains(&k) {
            return Err(ConfigError::new(
                setting,
                format!("{setting}: {k} is set by tally (its delivery guarantees depend on it) and cannot be changed"),
            ));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// A duration as the flags write it: `500ms`, `10s`, `10m`, `24h`, `7d`.
pub fn show_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The setting's name, as in `tally.toml`.
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// `flags` over `file`: each setting the flags (or environment) give wins;
/// the others come from the file. A setting is given when it is not `None`
/// and not an empty list; sections (nested structs) are layered the same way.
pub fn layer<T: Serialize + DeserializeOwned>(flags: &T, file: T) -> Result<T, serde_json::Error> {
    let mut merged = serde_json::to_value(file)?;
    overlay(&mut merged, serde_json::to_value(flags)?);
    serde_json::from_value(merged)
}

fn overlay(into: &mut serde_json::Value, from: serde_json::Value) {
    use serde_json::Value;
    match (into, from) {
        (Value::Object(m), Value::Object(f)) => {
            for (k, v) in f {
                match m.get_mut(&k) {
                    Some(slot @ Value::Object(_)) if v.is_object() => overlay(slot, v),
                    _ => {
                        let given = match &v {
                            Value::Null => false,
                            Value::Array(a) => !a.is_empty(),
                            _ => true,
                        };
                        if given {
                            m.insert(k, v);
                        }
                    }
                }
            }
        }
        (slot, v) => {
            if !v.is_null() {
                *slot = v;
            }
        }
    }
}

const MAX_QUEUED_ROWS: usize = 1_000_000;
const DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(86_400);
const DEDUP_MAX_KEYS: usize = 10_000_000;
const WAL_SEGMENT_BYTES: u64 = 64 << 20;

/// Admission, dedup and the WAL (`[pipeline]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Pipeline: admission, dedup, WAL")]
pub struct PipelineArgs {
    #[arg(help = help("Records admitted but not yet in Parquet, per dataset, before senders are refused with a retry hint.", MAX_QUEUED_ROWS), long, env = "TALLY_MAX_QUEUED_ROWS")]
    #[serde(default)]
    pub max_queued_rows: Option<usize>,

    #[arg(help = help("How long a record's key is remembered to drop a resent copy.", show_duration(DEDUP_WINDOW)), long, env = "TALLY_DEDUP_WINDOW", value_parser = crate::duration::parse_duration)]
    #[serde(default, with = "crate::duration::opt")]
    pub dedup_window: Option<std::time::Duration>,

    #[arg(help = help("At most this many keys per dataset in the in-memory dedup index (the oldest are evicted first; compaction drops copies it misses).", DEDUP_MAX_KEYS), long, env = "TALLY_DEDUP_MAX_KEYS")]
    #[serde(default)]
    pub dedup_max_keys: Option<usize>,

    #[arg(help = help("Size at which a WAL segment is closed and a new one started.", WAL_SEGMENT_BYTES), long, env = "TALLY_WAL_SEGMENT_BYTES")]
    #[serde(default)]
    pub wal_segment_bytes: Option<u64>,
}

/// [`PipelineArgs`] with the defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSettings {
    pub max_queued_rows: usize,
    pub dedup_window: std::time::Duration,
    pub dedup_max_keys: usize,
    pub wal_segment_bytes: u64,
}

impl PipelineArgs {
    pub fn resolve(&self) -> Result<PipelineSettings, ConfigError> {
        let s = PipelineSettings {
            max_queued_rows: self.max_queued_rows.unwrap_or(MAX_QUEUED_ROWS),
            dedup_window: self.dedup_window.unwrap_or(DEDUP_WINDOW),
            dedup_max_keys: self.dedup_max_keys.unwrap_or(DEDUP_MAX_KEYS),
            wal_segment_bytes: self.wal_segment_bytes.unwrap_or(WAL_SEGMENT_BYTES),
        };
        if s.max_queued_rows == 0 {
            return Err(ConfigError::new("max_queued_rows", "must be at least 1"));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_options_are_key_value_pairs_that_leave_tallys_own_alone() {
        let ok = client_options(
            "kafka.options",
            &[
                "security.protocol=SASL_SSL".into(),
                "sasl.password=a=b".into(),
            ],
            &["group.id"],
        )
        .unwrap();
        assert_eq!(
            ok,
            [
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
                ("sasl.password".to_string(), "a=b".to_string())
            ]
        );
        let e = client_options("kafka.options", &["nokey".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("KEY=VALUE"), "{e}");
        let e = client_options("kafka.options", &["group.id=x".into()], &["group.id"]).unwrap_err();
        assert!(e.to_string().contains("group.id is set by tally"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file_setting_by_setting() {
        let file = PipelineArgs {
            max_queued_rows: Some(5),
            dedup_max_keys: Some(9),
            ..Default::default()
        };
        let flags = PipelineArgs {
            max_queued_rows: Some(7),
            dedup_window: Some(std::time::Duration::from_millis(1500)),
            ..Default::default()
        };
        let s = layer(&flags, file).unwrap().resolve().unwrap();
        assert_eq!(show_duration(s.dedup_window), "1500ms");
        assert_eq!(show_duration(std::time::Duration::from_secs(86_400)), "24h");
        assert_eq!(show_duration(std::time::Duration::from_secs(600)), "10m");
        assert_eq!(
            (
                s.max_queued_rows,
                s.dedup_max_keys,
                s.dedup_window.as_millis()
            ),
            (7, 9, 1500)
        );
        assert_eq!(s.wal_segment_bytes, 64 << 20);
    }
}
