//! One clock: the time now, and the units tally counts time in
//! (nanoseconds since the Unix epoch, UTC).

use std::time::{SystemTime, UNIX_EPOCH};

pub const NS_PER_SEC: i64 = 1_000_000_000;
pub const HOUR_NS: i64 = 3600 * NS_PER_SEC;
pub const DAY_NS: i64 = 24 * HOUR_NS;

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// Nanoseconds since the epoch as RFC 3339 (UTC, `Z`, fractions only when
/// there are any).
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(ns)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Now, in whole seconds since the epoch.
pub fn now_secs() -> i64 {
    now_ns() / NS_PER_SEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(HOUR_NS, 3_600_000_000_000);
        assert_eq!(DAY_NS, 86_400_000_000_000);
        // 2026-01-01T00:00:00Z and later.
        assert!(now_secs() > 1_767_225_600);
        assert_eq!(now_ns() / NS_PER_SEC / 10, now_secs() / 10);
    }
}
