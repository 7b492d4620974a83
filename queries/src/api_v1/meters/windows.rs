//! Query windows (`windowSize` in `windowTimeZone`): a window starts at a
//! local minute, hour, day or month, so a day across a DST change is 23 or
//! 25 hours long.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// `windowSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSize {
    Minute,
    Hour,
    Day,
    Month,
}

impl WindowSize {
    pub fn parse(s: &str) -> Option<WindowSize> {
        match s {
            "MINUTE" => Some(WindowSize::Minute),
            "HOUR" => Some(WindowSize::Hour),
            "DAY" => Some(WindowSize::Day),
            "MONTH" => Some(WindowSize::Month),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WindowSize::Minute => "MINUTE",
            WindowSize::Hour => "HOUR",
            WindowSize::Day => "DAY",
            WindowSize::Month => "MONTH",
        }
    }
}

/// The local time `t` (UTC nanoseconds) shows in `tz`.
fn local(tz: Tz, t: i64) -> NaiveDateTime {
    DateTime::<Utc>::from_timestamp_nanos(t)
        .with_timezone(&tz)
        .naive_local()
}

/// The first instant at or after local time `n` in `tz` (a local time a
/// DST change skips starts at the change).
fn instant(tz: Tz, n: NaiveDateTime) -> i64 {
    let mut probe = n;
    for _ in 0..180 {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return t.timestamp_nanos_opt().unwrap_or(i64::MAX),
            LocalResult::Ambiguous(early, _) => {
                return early.timestamp_nanos_opt().unwrap_or(i64::MAX)
            }
            LocalResult::None => probe += Duration::minutes(1),
        }
    }
    i64::MAX
}

/// The local start of the window holding local time `n`.
fn floor(size: WindowSize, n: NaiveDateTime) -> NaiveDateTime {
    let d = n.date();
    match size {
        WindowSize::Minute => d.and_hms_opt(n.hour(), n.minute(), 0),
        WindowSize::Hour => d.and_hms_opt(n.hour(), 0, 0),
        WindowSize::Day => d.and_hms_opt(0, 0, 0),
        WindowSize::Month => {
            NaiveDate::from_ymd_opt(d.year(), d.month(), 1).and_then(|d| d.and_hms_opt(0, 0, 0))
        }
    }
    .unwrap_or(n)
}

/// The local start of the window after the one starting at `n`.
fn next(size: WindowSize, n: NaiveDateTime) -> NaiveDateTime {
    match size {
        WindowSize::Minute => n + Duration::minutes(1),
        WindowSize::Hour => n + Duration::hours(1),
        WindowSize::Day => n + Duration::days(1),
        WindowSize::Month => {
            let (y, m) = if n.month() == 12 {
                (n.year() + 1, 1)
            } else {
                (n.year(), n.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .unwrap_or(n)
        }
    }
}

/// The window of `size` in `tz` holding instant `t`: [start, end) in UTC
/// nanoseconds.
pub fn window(size: WindowSize, tz: Tz, t: i64) -> (i64, i64) {
    let start_local = floor(size, local(tz, t));
    let mut start = instant(tz, start_local);
    // An hour that repeats (DST ends) holds two windows: the later one
    // starts an hour after the earlier.
    if size == WindowSize::Minute || size == WindowSize::Hour {
        if let LocalResult::Ambiguous(early, late) = tz.from_local_datetime(&start_local) {
            let late = late.timestamp_nanos_opt().unwrap_or(i64::MAX);
            if t >= late {
                start = late;
            } else {
                start = early.timestamp_nanos_opt().unwrap_or(start);
            }
        }
    }
    let end_local = next(size, start_local);
    let mut end = instant(tz, end_local);
    if end <= start {
        // The next local start repeats (DST ends): a fixed step then.
        end = start
            + match size {
                WindowSize::Minute => 60_000_000_000,
                _ => 3_600_000_000_000,
            };
    }
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    }

    fn show(ns: i64) -> String {
        DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339()
    }

    #[test]
    fn days_across_dst_are_23_and_25_hours() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-03-08: clocks go forward at 02:00 local.
        let (s, e) = window(WindowSize::Day, ny, at("2026-03-08T12:00:00Z"));
        assert_eq!(
            (show(s), show(e)),
            (
                "2026-03-08T05:00:00+00:00".into(),
                "2026-03-09T04:00:00+00:00".into()
            )
        );
        assert_eq!((e - s) / 3_600_000_000_000, 23);
        // 2026-11-01: clocks go back at 02:00 local.
        let (s, e) = window(WindowSize::Day, ny, at("2026-11-01T12:00:00Z"));
        assert_eq!((e - s) / 3_600_000_000_000, 25);
        assert_eq!(show(s), "2026-11-01T04:00:00+00:00");
    }

    #[test]
    fn months_and_minutes() {
        let utc: Tz = "UTC".parse().unwrap();
        let (s, e) = window(WindowSize::Month, utc, at("2026-12-31T23:59:59Z"));
        assert_eq!(
            (show(s), show(e)),
            (
                "2026-12-01T00:00:00+00:00".into(),
                "2027-01-01T00:00:00+00:00".into()
            )
        );
        let (s, e) = window(WindowSize::Minute, utc, at("2026-12-06T10:00:59.9Z"));
        assert_eq!(
            (show(s), show(e)),
            (
                "2026-12-06T10:00:00+00:00".into(),
                "2026-12-06T10:01:00+00:00".into()
            )
        );
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let (s, _) = window(WindowSize::Hour, kolkata, at("2026-12-06T10:10:00Z"));
        assert_eq!(show(s), "2026-12-06T09:30:00+00:00");
    }

    #[test]
    fn the_repeated_hour_is_two_windows() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let first = window(WindowSize::Hour, ny, at("2026-11-01T05:30:00Z"));
        let second = window(WindowSize::Hour, ny, at("2026-11-01T06:30:00Z"));
        assert_eq!(show(first.0), "2026-11-01T05:00:00+00:00");
        assert_eq!(show(second.0), "2026-11-01T06:00:00+00:00");
        assert_eq!(second.1 - second.0, 3_600_000_000_000);
    }
}
