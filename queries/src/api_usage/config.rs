//! The Usage API configuration: a singleton that survives restarts (atomic
//! file replace), validated by the rules of README "Usage API".

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageConfig {
    pub id: i64,
    pub plan: String,
    pub custom_limit_tokens: Option<i64>,
    pub view: String,
    pub timezone: String,
    pub time_format: String,
    pub theme: String,
    pub refresh_rate: i64,
    pub refresh_per_second: f64,
    pub reset_hour: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl UsageConfig {
    pub fn defaults(now_secs: i64) -> Self {
        Self {
            id: 1,
            plan: "custom".into(),
            custom_limit_tokens: None,
            view: "realtime".into(),
            timezone: "auto".into(),
            time_format: "auto".into(),
            theme: "auto".into(),
            refresh_rate: 10,
            refresh_per_second: 0.75,
            reset_hour: None,
            created_at: now_secs,
            updated_at: now_secs,
        }
    }

    /// Applies the fields of `changes` (JSON values), collecting every
    /// validation error instead of stopping at the first.
    pub fn apply(&mut self, changes: &Map<String, Value>) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let mut next = self.clone();
        for (key, v) in changes {
            if let Err(e) = next.set(key, v) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            *self = next;
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Applies query-string overrides (all strings) with the same rules.
    pub fn apply_query(&mut self, params: &[(String, String)]) -> Result<(), Vec<String>> {
        let mut changes = Map::new();
        for (k, v) in params {
            let value = match k.as_str() {
                "custom_limit_tokens" | "refresh_rate" | "reset_hour" => v
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(v.clone())),
                "refresh_per_second" => v
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                    .unwrap_or_else(|| Value::String(v.clone())),
                _ => Value::String(v.clone()),
            };
            changes.insert(k.clone(), value);
        }
        self.apply(&changes)
    }

    fn set(&mut self, key: &str, v: &Value) -> Result<(), String> {
        fn one_of(name: &str, v: &Value, allowed: &[&str]) -> Result<String, String> {
            match v.as_str() {
                Some(s) if allowed.contains(&s) => Ok(s.to_string()),
                _ => Err(format!("{name} must be one of: {}", allowed.join(", "))),
            }
        }
        match key {
            "plan" => self.plan = one_of(key, v, &["pro", "max5", "max20", "custom"])?,
            "view" => self.view = one_of(key, v, &["realtime", "daily", "monthly", "session"])?,
            "time_format" => self.time_format = one_of(key, v, &["12h", "24h", "auto"])?,
            "theme" => self.theme = one_of(key, v, &["light", "dark", "classic", "auto"])?,
            "timezone" => match v.as_str() {
                Some(tz) if tz == "auto" || tz.parse::<chrono_tz::Tz>().is_ok() => self.timezone = tz.to_string(),
                _ => return Err(format!("timezone must be a valid IANA timezone such as America/New_York (or auto), got {v}")),
            },
            "custom_limit_tokens" => match v {
                Value::Null => self.custom_limit_tokens = None,
                _ => match v.as_i64() {
                    Some(n) if n > 0 => self.custom_limit_tokens = Some(n),
                    _ => return Err(format!("custom_limit_tokens must be a positive integer or null, got {v}")),
                },
            },
            "refresh_rate" => match v.as_i64() {
                Some(n) if (1..=60).contains(&n) => self.refresh_rate = n,
                _ => return Err(format!("refresh_rate must be an integer between 1 and 60, got {v}")),
            },
            "refresh_per_second" => match v.as_f64() {
                Some(f) if (0.1..=20.0).contains(&f) => self.refresh_per_second = f,
                _ => return Err(format!("refresh_per_second must be a number between 0.1 and 20.0, got {v}")),
            },
            "reset_hour" => match v {
                Value::Null => self.reset_hour = None,
                _ => match v.as_i64() {
                    Some(h) if (0..=23).contains(&h) => self.reset_hour = Some(h),
                    _ => return Err(format!("reset_hour must be an integer between 0 and 23 or null, got {v}")),
                },
            },
            other => return Err(format!("{other} is not a configuration field")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn all_errors_are_listed_and_nothing_changes() {
        let mut c = UsageConfig::defaults(1);
        let before = c.clone();
        let err = c
            .apply(
                json!({"plan": "invalid", "refresh_rate": 999, "theme": "dark", "nope": 1})
                    .as_object()
                    .unwrap(),
            )
            .unwrap_err();
        assert_eq!(
            err,
            vec![
                "nope is not a configuration field",
                "plan must be one of: pro, max5, max20, custom",
                "refresh_rate must be an integer between 1 and 60, got 999",
            ]
        );
        assert_eq!(c, before);
    }

    #[test]
    fn partial_update_and_query_overrides() {
        let mut c = UsageConfig::defaults(1);
        c.apply(
            json!({"theme": "light", "reset_hour": 0, "timezone": "America/New_York"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (c.theme.as_str(), c.reset_hour, c.plan.as_str()),
            ("light", Some(0), "custom")
        );
        let q = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(c.apply_query(&q("refresh_per_second", "0.05")).is_err());
        assert!(c.apply_query(&q("timezone", "Mars/Olympus")).is_err());
        c.apply_query(&q("custom_limit_tokens", "50000")).unwrap();
        assert_eq!(c.custom_limit_tokens, Some(50000));
    }
}
