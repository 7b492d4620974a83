//! A meter (OpenMeter's model): which events it counts (`eventType`, and
//! `eventFrom` on), what it takes from each (`valueProperty`, a JSONPath
//! into `data`), how it folds them (`aggregation`), and what it groups by
//! (`groupBy`, named JSONPaths). Checked when defined, from the config file
//! or the API; the read side folds events by it.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json_path::{self, JsonPath};

/// A meter as the API and `[[meters]]` write it (OpenMeter's field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeterDef {
    pub slug: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub event_type: String,
    pub aggregation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_property: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_by: BTreeMap<String, String>,
    /// RFC 3339: events before it are not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_from: Option<String>,
}

/// How a meter folds its events' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Sum,
    Count,
    UniqueCount,
    Avg,
    Min,
    Max,
    Latest,
}

impl Aggregation {
    pub const ALL: [Aggregation; 7] = [
        Aggregation::Sum,
        Aggregation::Count,
        Aggregation::UniqueCount,
        Aggregation::Avg,
        Aggregation::Min,
        Aggregation::Max,
        Aggregation::Latest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Sum => "SUM",
            Aggregation::Count => "COUNT",
            Aggregation::UniqueCount => "UNIQUE_COUNT",
            Aggregation::Avg => "AVG",
            Aggregation::Min => "MIN",
            Aggregation::Max => "MAX",
            Aggregation::Latest => "LATEST",
        }
    }

    /// Whether it needs a number from each event (`UNIQUE_COUNT` takes any
    /// value, `COUNT` none).
    pub fn numeric(self) -> bool {
        !matches!(self, Aggregation::Count | Aggregation::UniqueCount)
    }
}

/// A checked meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Meter {
    pub def: MeterDef,
    pub aggregation: Aggregation,
    pub value: Option<JsonPath>,
    /// In the order of their names.
    pub group_by: Vec<(String, JsonPath)>,
    /// Nanoseconds since the epoch.
    pub event_from: Option<i64>,
}

/// Names as OpenMeter allows them: lowercase letters and digits in words
/// joined by single underscores, at most 64 characters.
fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('_').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// Group-by keys: letters, digits and underscores (`subject` is reserved).
fn is_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Meter {
    /// Checks a definition; every broken rule is named by its field.
    pub fn check(def: MeterDef) -> Result<Meter, Vec<String>> {
        let mut errors = Vec::new();
        if !is_slug(&def.slug) {
            errors.push(format!(
                "slug must be lowercase letters and digits joined by underscores, at most 64 characters, got {:?}",
                def.slug
            ));
        }
        if def.event_type.is_empty() {
            errors.push("eventType must not be empty".into());
        }
        let aggregation = Aggregation::ALL
            .into_iter()
            .find(|a| a.name() == def.aggregation);
        if aggregation.is_none() {
            errors.push(format!(
                "aggregation must be one of SUM, COUNT, UNIQUE_COUNT, AVG, MIN, MAX, LATEST, got {:?}",
                def.aggregation
            ));
        }
        let value = match (&def.value_property, aggregation) {
            (_, Some(Aggregation::Count)) => None,
            (None, Some(a)) => {
                errors.push(format!("valueProperty is required for {}", a.name()));
                None
            }
            (None, None) => None,
            (Some(p), _) => match JsonPath::parse(p) {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(format!("valueProperty: {e}"));
                    None
                }
            },
        };
        let mut group_by = Vec::new();
        for (key, path) in &def.group_by {
            if !is_key(key) || key == "subject" {
                errors.push(format!(
                    "groupBy key {key:?} must be letters, digits and underscores, and not subject"
                ));
            }
            match JsonPath::parse(path) {
                Ok(p) => group_by.push((key.clone(), p)),
                Err(e) => errors.push(format!("groupBy.{key}: {e}")),
            }
        }
        let event_from = match &def.event_from {
            None => None,
            Some(t) => match chrono::DateTime::parse_from_rfc3339(t)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
            {
                Some(ns) => Some(ns),
                None => {
                    errors.push(format!("eventFrom must be an RFC 3339 time, got {t:?}"));
                    None
                }
            },
        };
        match aggregation {
            Some(aggregation) if errors.is_empty() => Ok(Meter {
                def,
                aggregation,
                value,
                group_by,
                event_from,
            }),
            _ => Err(errors),
        }
    }

    /// What an event adds to this meter: its value (`None` for `COUNT`)
    /// and its group-by values (`None` where the path finds nothing), or
    /// why it counts nothing.
    pub fn read(&self, data: Option<&Value>) -> Result<Reading, Unreadable> {
        let null = Value::Null;
        let data = data.unwrap_or(&null);
        let value = match (&self.value, self.aggregation) {
            (_, Aggregation::Count) | (None, _) => Taken::None,
            (Some(p), a) => match p.get(data) {
                None => return Err(Unreadable::Missing),
                Some(v) if a.numeric() => match json_path::number(v) {
                    Some(x) => Taken::Number(x),
                    None => return Err(Unreadable::NotANumber),
                },
                Some(v) => Taken::Text(json_path::text(v)),
            },
        };
        let groups = self
            .group_by
            .iter()
            .map(|(_, p)| p.get(data).map(json_path::text))
            .collect();
        Ok(Reading { value, groups })
    }
}

/// What one event gives a meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub value: Taken,
    /// In the order of `Meter::group_by`.
    pub groups: Vec<Option<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    None,
    Number(f64),
    Text(String),
}

/// Why an event counts nothing for a meter that needs a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("the value is missing")]
    Missing,
    #[error("the value is not a number")]
    NotANumber,
}

/// A meter's value over some events, folded one at a time.
#[derive(Debug, Clone)]
pub enum Fold {
    Sum(f64),
    Count(u64),
    Unique(HashSet<String>),
    Avg(f64, u64),
    Min(Option<f64>),
    Max(Option<f64>),
    /// (time, value) of the latest event; ties go to the later one seen.
    Latest(Option<(i64, f64)>),
}

impl Fold {
    pub fn new(a: Aggregation) -> Fold {
        match a {
            Aggregation::Sum => Fold::Sum(0.0),
            Aggregation::Count => Fold::Count(0),
            Aggregation::UniqueCount => Fold::Unique(HashSet::new()),
            Aggregation::Avg => Fold::Avg(0.0, 0),
            Aggregation::Min => Fold::Min(None),
            Aggregation::Max => Fold::Max(None),
            Aggregation::Latest => Fold::Latest(None),
        }
    }

    pub fn add(&mut self, at: i64, taken: &Taken) {
        let x = match taken {
            Taken::Number(x) => Some(*x),
            _ => None,
        };
        match (self, taken) {
            (Fold::Count(n), _) => *n += 1,
            (Fold::Unique(set), Taken::Text(s)) => {
                set.insert(s.clone());
            }
            (Fold::Unique(set), Taken::Number(x)) => {
                set.insert(x.to_string());
            }
            (Fold::Sum(s), _) => *s += x.unwrap_or(0.0),
            (Fold::Avg(s, n), _) => {
                if let Some(x) = x {
                    *s += x;
                    *n += 1;
                }
            }
            (Fold::Min(m), _) => {
                if let Some(x) = x {
                    *m = Some(m.map_or(x, |m| m.min(x)));
                }
            }
            (Fold::Max(m), _) => {
                if let Some(x) = x {
                    *m = Some(m.map_or(x, |m| m.max(x)));
                }
            }
            (Fold::Latest(l), _) => {
                if let Some(x) = x {
                    if l.is_none_or(|(t, _)| at >= t) {
                        *l = Some((at, x));
                    }
                }
            }
            (Fold::Unique(_), Taken::None) => {}
        }
    }

    /// The value; `None` where there is none (an average, minimum, maximum
    /// or latest value of no event).
    pub fn value(&self) -> Option<f64> {
        match self {
            Fold::Sum(s) => Some(*s),
            Fold::Count(n) => Some(*n as f64),
            Fold::Unique(set) => Some(set.len() as f64),
            Fold::Avg(s, n) => (*n > 0).then(|| s / *n as f64),
            Fold::Min(m) | Fold::Max(m) => *m,
            Fold::Latest(l) => l.map(|(_, x)| x),
        }
    }
}

impl Fold {
    /// [`Fold::merge`] of a borrowed fold: a month's regroup merges a
    /// million of them, and only `UNIQUE_COUNT`'s values need a copy.
    pub fn merge_ref(&mut self, other: &Fold) {
        match (self, other) {
            (Fold::Sum(a), Fold::Sum(b)) => *a += b,
            (Fold::Count(a), Fold::Count(b)) => *a += b,
            (Fold::Avg(s, n), Fold::Avg(s2, n2)) => {
                *s += s2;
                *n += n2;
            }
            (kept, other) => kept.merge(other.clone()),
        }
    }

    /// Adds another fold of the same aggregation: the value of both sets
    /// of events (hourly rollups merged into a window).
    pub fn merge(&mut self, other: Fold) {
        match (self, other) {
            (Fold::Sum(a), Fold::Sum(b)) => *a += b,
            (Fold::Count(a), Fold::Count(b)) => *a += b,
            (Fold::Unique(a), Fold::Unique(b)) => {
                if a.len() < b.len() {
                    let small = std::mem::replace(a, b);
                    a.extend(small);
                } else {
                    a.extend(b);
                }
            }
            (Fold::Avg(s, n), Fold::Avg(s2, n2)) => {
                *s += s2;
                *n += n2;
            }
            (Fold::Min(a), Fold::Min(Some(b))) => *a = Some(a.map_or(b, |a| a.min(b))),
            (Fold::Max(a), Fold::Max(Some(b))) => *a = Some(a.map_or(b, |a| a.max(b))),
            (Fold::Latest(a), Fold::Latest(Some((t, x)))) => {
                if a.is_none_or(|(ta, _)| t >= ta) {
                    *a = Some((t, x));
                }
            }
            (Fold::Min(_), Fold::Min(None))
            | (Fold::Max(_), Fold::Max(None))
            | (Fold::Latest(_), Fold::Latest(None)) => {}
            (a, b) => debug_assert!(false, "folds of two aggregations: {a:?} and {b:?}"),
        }
    }
}

/// A stable fingerprint of what a meter counts (not its name or
/// description): stored with its hourly rollups, so a changed meter never
/// reads rollups of its former definition. FNV-1a over the fields.
pub fn definition_fingerprint(def: &MeterDef) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&def.slug);
    eat(&def.event_type);
    eat(&def.aggregation);
    eat(def.value_property.as_deref().unwrap_or(""));
    for (k, v) in &def.group_by {
        eat(k);
        eat(v);
    }
    eat(def.event_from.as_deref().unwrap_or(""));
    h
}

/// The fingerprint of a set of meters: an hour rolled up for another set
/// is rolled up again.
pub fn meters_fingerprint<'a>(meters: impl IntoIterator<Item = &'a MeterDef>) -> u64 {
    let mut all: Vec<u64> = meters.into_iter().map(definition_fingerprint).collect();
    if all.is_empty() {
        return 0;
    }
    all.sort_unstable();
    all.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, f| {
        (h ^ f).wrapping_mul(0x0100_0000_01b3).rotate_left(17)
    }) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(v: Value) -> MeterDef {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_meter_copied_from_openmeter_is_checked() {
        let m = Meter::check(def(json!({
            "slug": "tokens_total", "eventType": "prompt", "aggregation": "SUM",
            "valueProperty": "$.tokens", "groupBy": {"model": "$.model", "type": "$.type"}
        })))
        .unwrap();
        assert_eq!(m.aggregation, Aggregation::Sum);
        assert_eq!(
            m.group_by
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["model", "type"]
        );
        let r = m
            .read(Some(&json!({"tokens": "12", "model": "gpt-4"})))
            .unwrap();
        assert_eq!(r.value, Taken::Number(12.0));
        assert_eq!(r.groups, [Some("gpt-4".to_string()), None]);
        assert_eq!(
            m.read(Some(&json!({"model": "x"}))),
            Err(Unreadable::Missing)
        );
        assert_eq!(
            m.read(Some(&json!({"tokens": "x"}))),
            Err(Unreadable::NotANumber)
        );
    }

    #[test]
    fn every_broken_rule_names_its_field() {
        let errors = Meter::check(def(json!({
            "slug": "Bad-Slug", "eventType": "", "aggregation": "MEDIAN",
            "valueProperty": "tokens", "groupBy": {"subject": "$.s", "m": "$."}
        })))
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "slug must be",
            "eventType must not be empty",
            "aggregation must be one of",
            "valueProperty: \"tokens\" is not a JSONPath",
            "groupBy key \"subject\"",
            "groupBy.m:",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
        let e = Meter::check(def(
            json!({"slug": "s", "eventType": "t", "aggregation": "SUM"}),
        ))
        .unwrap_err();
        assert_eq!(e, ["valueProperty is required for SUM"]);
        // COUNT needs none (and ignores one).
        assert!(Meter::check(def(
            json!({"slug": "s", "eventType": "t", "aggregation": "COUNT"})
        ))
        .is_ok());
    }

    #[test]
    fn folds_follow_their_aggregation() {
        let events = [(1, 3.0), (3, 1.0), (2, 5.0), (3, 4.0)];
        let fold = |a| {
            let mut f = Fold::new(a);
            for (t, x) in events {
                f.add(t, &Taken::Number(x));
            }
            f.value()
        };
        assert_eq!(fold(Aggregation::Sum), Some(13.0));
        assert_eq!(fold(Aggregation::Count), Some(4.0));
        assert_eq!(fold(Aggregation::Avg), Some(3.25));
        assert_eq!(fold(Aggregation::Min), Some(1.0));
        assert_eq!(fold(Aggregation::Max), Some(5.0));
        assert_eq!(fold(Aggregation::Latest), Some(4.0));
        assert_eq!(fold(Aggregation::UniqueCount), Some(4.0));
        let mut u = Fold::new(Aggregation::UniqueCount);
        for s in ["a", "b", "a"] {
            u.add(0, &Taken::Text(s.into()));
        }
        assert_eq!(u.value(), Some(2.0));
        assert_eq!(Fold::new(Aggregation::Avg).value(), None);
    }
}
