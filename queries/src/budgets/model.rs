//! A budget as posted and stored, its checks, and its periods.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alerts::check_url;

/// The scope keys, in the order the check index uses.
pub const SCOPE_KEYS: [&str; 5] = [
    "microdao_id",
    "agent_id",
    "actor_id",
    "customer_id",
    "vm_id",
];

/// What a budget counts, and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `usage_llm`, priced by the running server's price catalogue.
    CostUsd,
    /// `usage_llm.total_tokens`.
    TotalTokens,
    /// `usage_llm` records.
    LlmCalls,
    /// `usage_tool` records.
    ToolCalls,
    /// VM billing rules (README, "billing.v1 (VM metering)"), `vm_metrics`.
    VmCpuSeconds,
    VmMemoryGibHours,
    /// Received plus sent.
    VmNetworkBytes,
}

/// Where a metric is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Llm,
    Tool,
    Vm,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::CostUsd,
        Metric::TotalTokens,
        Metric::LlmCalls,
        Metric::ToolCalls,
        Metric::VmCpuSeconds,
        Metric::VmMemoryGibHours,
        Metric::VmNetworkBytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::CostUsd => "cost_usd",
            Metric::TotalTokens => "total_tokens",
            Metric::LlmCalls => "llm_calls",
            Metric::ToolCalls => "tool_calls",
            Metric::VmCpuSeconds => "vm_cpu_seconds",
            Metric::VmMemoryGibHours => "vm_memory_gib_hours",
            Metric::VmNetworkBytes => "vm_network_bytes",
        }
    }

    pub fn source(self) -> Source {
        match self {
            Metric::CostUsd | Metric::TotalTokens | Metric::LlmCalls => Source::Llm,
            Metric::ToolCalls => Source::Tool,
            _ => Source::Vm,
        }
    }

    /// The scope keys its rows carry.
    pub fn scope_keys(self) -> &'static [&'static str] {
        match self.source() {
            Source::Llm => &["microdao_id", "agent_id", "actor_id"],
            // usage_tool_hourly is kept per tenant, agent and tool.
            Source::Tool => &["microdao_id", "agent_id"],
            Source::Vm => &["customer_id", "vm_id"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    /// ISO weeks: from Monday.
    Week,
    /// Calendar months.
    Month,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The period holding `now` in `tz`: `[start, end)` in nanoseconds.
    pub fn around(self, now: i64, tz: Tz) -> (i64, i64) {
        let local = DateTime::<Utc>::from_timestamp_nanos(now)
            .with_timezone(&tz)
            .date_naive();
        let first = match self {
            Period::Day => local,
            Period::Week => local - Duration::days(local.weekday().num_days_from_monday() as i64),
            Period::Month => local.with_day(1).expect("day 1 exists"),
        };
        let next = match self {
            Period::Day => first + Duration::days(1),
            Period::Week => first + Duration::days(7),
            Period::Month => {
                let (y, m) = if first.month() == 12 {
                    (first.year() + 1, 1)
                } else {
                    (first.year(), first.month() + 1)
                };
                NaiveDate::from_ymd_opt(y, m, 1).expect("day 1 exists")
            }
        };
        (midnight(first, tz), midnight(next, tz))
    }
}

/// The first instant of `day` in `tz` (the earliest of an ambiguous
/// midnight; the hour after a skipped one).
fn midnight(day: NaiveDate, tz: Tz) -> i64 {
    let naive = day.and_hms_opt(0, 0, 0).expect("midnight exists");
    let t = match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t,
        chrono::LocalResult::Ambiguous(a, _) => a,
        chrono::LocalResult::None => tz
            .from_local_datetime(&(naive + Duration::hours(1)))
            .earliest()
            .expect("an hour after a skipped midnight exists"),
    };
    t.with_timezone(&Utc)
        .timestamp_nanos_opt()
        .unwrap_or_default()
}

/// A budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub id: String,
    pub name: String,
    /// Key → value; all must match.
    pub scope: std::collections::BTreeMap<String, String>,
    pub metric: Metric,
    pub period: Period,
    pub timezone: String,
    pub limit: f64,
    /// Ascending fractions of the limit.
    pub thresholds: Vec<f64>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub created_at: String,
}

/// The thresholds when none are given.
pub const DEFAULT_THRESHOLDS: [f64; 3] = [0.5, 0.8, 1.0];
const FIELDS: [&str; 9] = [
    "name",
    "scope",
    "metric",
    "period",
    "timezone",
    "limit",
    "thresholds",
    "webhook_url",
    "webhook_secret",
];

impl Budget {
    /// A budget from a POST body, or every error in it.
    pub fn from_request(body: &Value, id: String, now: i64) -> Result<Budget, Vec<String>> {
        let mut errors = Vec::new();
        let Some(obj) = body.as_object() else {
            return Err(vec!["the body must be a JSON object".into()]);
        };
        for k in obj.keys() {
            if !FIELDS.contains(&k.as_str()) {
                errors.push(format!(
                    "{k} is not a budget field (fields: {})",
                    FIELDS.join(", ")
                ));
            }
        }
        let text = |name: &str, errors: &mut Vec<String>| -> Option<String> {
            match obj.get(name) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 500 => Some(s.clone()),
                Some(Value::String(_)) => {
                    errors.push(format!("{name} must not be empty and at most 500 bytes"));
                    None
                }
                Some(v) => {
                    errors.push(format!("{name} must be a string, got {v}"));
                    None
                }
            }
        };
        let name = text("name", &mut errors);
        if name.is_none() && !errors.iter().any(|e| e.starts_with("name ")) {
            errors.push("name is required".into());
        }
        let metric = match obj.get("metric") {
            Some(Value::String(s)) => match Metric::ALL.iter().find(|m| m.name() == s) {
                Some(m) => Some(*m),
                None => {
                    errors.push(format!(
                        "metric must be one of {}, got {s:?}",
                        Metric::ALL.map(|m| m.name()).join(", ")
                    ));
                    None
                }
            },
            None => {
                errors.push("metric is required".into());
                None
            }
            Some(v) => {
                errors.push(format!("metric must be a string, got {v}"));
                None
            }
        };
        let period = match obj.get("period").and_then(Value::as_str) {
            Some("day") => Some(Period::Day),
            Some("week") => Some(Period::Week),
            Some("month") => Some(Period::Month),
            _ => {
                errors.push(format!(
                    "period must be one of day, week, month, got {}",
                    obj.get("period").unwrap_or(&Value::Null)
                ));
                None
            }
        };
        let timezone = text("timezone", &mut errors).unwrap_or_else(|| "UTC".into());
        if timezone.parse::<Tz>().is_err() {
            errors.push(format!(
                "timezone must be an IANA time zone such as Europe/Berlin, got {timezone:?}"
            ));
        }
        let limit = match obj.get("limit").and_then(Value::as_f64) {
            Some(l) if l.is_finite() && l > 0.0 => l,
            _ => {
                errors.push(format!(
                    "limit must be a number above 0, got {}",
                    obj.get("limit").unwrap_or(&Value::Null)
                ));
                0.0
            }
        };
        let thresholds = thresholds(obj, &mut errors);
        let scope = scope(obj, metric, &mut errors);
        let webhook_url = text("webhook_url", &mut errors);
        if let Some(u) = &webhook_url {
            if let Err(e) = check_url(u) {
                errors.push(format!("webhook_url {e}"));
            }
        }
        let webhook_secret = text("webhook_secret", &mut errors);
        if webhook_secret.is_some() && webhook_url.is_none() {
            errors.push("webhook_secret needs a webhook_url".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Budget {
            id,
            name: name.unwrap_or_default(),
            scope,
            metric: metric.expect("checked"),
            period: period.expect("checked"),
            timezone,
            limit,
            thresholds,
            webhook_url,
            webhook_secret,
            created_at: rfc3339(now),
        })
    }

    pub fn tz(&self) -> Tz {
        self.timezone.parse().unwrap_or(Tz::UTC)
    }

    /// The tenant the budget is about: its `microdao_id` or `customer_id`.
    pub fn tenant(&self) -> Option<&str> {
        self.scope
            .get("microdao_id")
            .or_else(|| self.scope.get("customer_id"))
            .map(String::as_str)
    }

    /// The first threshold below 1: past it the budget is in `warning`.
    pub fn warning_at(&self) -> Option<f64> {
        self.thresholds.iter().copied().find(|t| *t < 1.0)
    }
}

fn thresholds(obj: &Map<String, Value>, errors: &mut Vec<String>) -> Vec<f64> {
    let Some(v) = obj.get("thresholds").filter(|v| !v.is_null()) else {
        return DEFAULT_THRESHOLDS.to_vec();
    };
    let Some(list) = v.as_array().filter(|l| !l.is_empty() && l.len() <= 10) else {
        errors.push(format!(
            "thresholds must be a list of 1 to 10 fractions of the limit, got {v}"
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in list {
        match t.as_f64() {
            Some(f) if f > 0.0 && f <= 10.0 => out.push(f),
            _ => errors.push(format!(
                "thresholds must be fractions of the limit above 0 and at most 10 (1.0 = the limit), got {t}"
            )),
        }
    }
    out.sort_by(f64::total_cmp);
    out.dedup();
    out
}

fn scope(
    obj: &Map<String, Value>,
    metric: Option<Metric>,
    errors: &mut Vec<String>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Some(v) = obj.get("scope").filter(|v| !v.is_null()) else {
        return out;
    };
    let Some(map) = v.as_object() else {
        errors.push(format!("scope must be an object, got {v}"));
        return out;
    };
    for (k, v) in map {
        if !SCOPE_KEYS.contains(&k.as_str()) {
            errors.push(format!(
                "scope.{k} is not a scope key (keys: {})",
                SCOPE_KEYS.join(", ")
            ));
            continue;
        }
        if let Some(m) = metric {
            if !m.scope_keys().contains(&k.as_str()) {
                errors.push(format!(
                    "scope.{k} does not apply to metric {}: its rows carry {}",
                    m.name(),
                    m.scope_keys().join(", ")
                ));
                continue;
            }
        }
        match v.as_str() {
            Some(s) if !s.is_empty() => {
                out.insert(k.clone(), s.to_string());
            }
            _ => errors.push(format!("scope.{k} must be a non-empty string, got {v}")),
        }
    }
    out
}

/// RFC 3339 in UTC with the precision needed.
pub use tally_pipeline::clock::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    }

    #[test]
    fn periods_by_calendar_and_zone() {
        let now = ns("2026-11-25T03:00:00Z"); // a Wednesday
        let utc = Tz::UTC;
        assert_eq!(
            Period::Day.around(now, utc),
            (ns("2026-11-25T00:00:00Z"), ns("2026-11-26T00:00:00Z"))
        );
        assert_eq!(
            Period::Week.around(now, utc),
            (ns("2026-11-23T00:00:00Z"), ns("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            Period::Month.around(ns("2026-12-31T23:00:00Z"), utc),
            (ns("2026-12-01T00:00:00Z"), ns("2027-01-01T00:00:00Z"))
        );
        // 03:00 UTC is still the 24th in New York (UTC-5).
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            Period::Day.around(now, ny),
            (ns("2026-11-24T05:00:00Z"), ns("2026-11-25T05:00:00Z"))
        );
        // A month across the end of summer time in Berlin.
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            Period::Month.around(ns("2026-10-15T12:00:00Z"), berlin),
            (ns("2026-09-30T22:00:00Z"), ns("2026-10-31T23:00:00Z"))
        );
    }

    #[test]
    fn every_error_is_listed_at_once() {
        let body = json!({
            "scope": {"microdao_id": "m", "customer_id": "c", "planet": "x"},
            "metric": "cost_usd", "period": "year", "limit": -1,
            "thresholds": [0.5, 0], "webhook_url": "ftp://x", "extra": 1,
            "timezone": "Mars/Olympus"
        });
        let errors = Budget::from_request(&body, "b".into(), 0).unwrap_err();
        for needle in [
            "extra is not a budget field",
            "name is required",
            "period must be one of day, week, month",
            "timezone must be an IANA time zone",
            "limit must be a number above 0",
            "thresholds must be fractions",
            "scope.customer_id does not apply to metric cost_usd",
            "scope.planet is not a scope key",
            "webhook_url must be an http or https URL",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{needle:?} not in {errors:#?}"
            );
        }
    }

    #[test]
    fn defaults_and_sorted_thresholds() {
        let b = Budget::from_request(
            &json!({"name": "n", "metric": "vm_cpu_seconds", "period": "day", "limit": 10,
                    "scope": {"customer_id": "c"}, "thresholds": [1.0, 0.9, 0.9]}),
            "b".into(),
            0,
        )
        .unwrap();
        assert_eq!(b.thresholds, [0.9, 1.0]);
        assert_eq!(b.timezone, "UTC");
        assert_eq!(b.tenant(), Some("c"));
        assert_eq!(b.warning_at(), Some(0.9));
    }
}
