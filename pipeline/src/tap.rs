//! A tap on accepted payloads. Sinks that forward what tally accepted (the
//! control-plane usage hook) implement it; sources call it after the WAL
//! fsync, for records that were not duplicates.

pub trait PayloadTap: Send + Sync {
    /// `subject` is the event subject (`chat.usage_summary`, …). Must not
    /// block: ingest never waits for a tap.
    fn offer(&self, subject: &str, payload: &[u8]);
}
