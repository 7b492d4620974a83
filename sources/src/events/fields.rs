//! Reading a JSON object's fields into typed values, collecting every error
//! with the field's name and the rule it broke.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime};
use tally_pipeline::batch::Cell;

use super::invalid::InvalidEvent;
use super::object::{Field, Object};

/// A JSON object being decoded. Getters return a placeholder on error and
/// remember the error; [`Fields::finish`] reports them all.
pub struct Fields<'a> {
    obj: &'a Object<'a>,
    errors: Vec<String>,
}

/// Longest string tally stores in an identifier column.
const MAX_ID_LEN: usize = 1024;

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Object<'a>) -> Self {
        Self {
            obj,
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, e: String) {
        self.errors.push(e);
    }

    fn get(&self, name: &str) -> Option<&'a Field<'a>> {
        self.obj.get(name).filter(|v| !matches!(v, Field::Null))
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn opt_str(&mut self, name: &str) -> Option<Cow<'a, str>> {
        let v = self.get(name)?;
        self.string(name, v)
    }

    /// The string `v` of field `name`, checked.
    fn string(&mut self, name: &str, v: &'a Field<'a>) -> Option<Cow<'a, str>> {
        match v {
            Field::Str(s) => {
                if s.len() > MAX_ID_LEN && name != "error" {
                    self.errors.push(format!(
                        "{name} must be at most {MAX_ID_LEN} bytes, got {}",
                        s.len()
                    ));
                    None
                } else if s.as_bytes().contains(&0) {
                    self.errors
                        .push(format!("{name} must not contain NUL characters"));
                    None
                } else {
                    Some(Cow::Borrowed(s.as_ref()))
                }
            }
            other => {
                self.errors
                    .push(format!("{name} must be a string, got {}", other.kind()));
                None
            }
        }
    }

    /// A required, non-empty string.
    pub fn str(&mut self, name: &str) -> Cell<'a> {
        let Some(v) = self.get(name) else {
            self.errors.push(format!("{name} is required"));
            return Cell::Null;
        };
        match self.string(name, v) {
            Some(s) if s.is_empty() => {
                self.errors.push(format!("{name} must not be empty"));
                Cell::Null
            }
            Some(s) => Cell::Str(s),
            None => Cell::Null,
        }
    }

    pub fn opt_str_value(&mut self, name: &str) -> Cell<'a> {
        self.opt_str(name).map(Cell::Str).unwrap_or(Cell::Null)
    }

    /// A string with a default when absent.
    pub fn str_or(&mut self, name: &str, default: &'static str) -> Cell<'a> {
        if self.has(name) {
            self.str(name)
        } else {
            Cell::from(default)
        }
    }

    /// A required time: RFC 3339, or ISO 8601 without an offset (read as UTC).
    pub fn timestamp(&mut self, name: &str) -> Cell<'a> {
        match self.get(name) {
            None => {
                self.errors.push(format!("{name} is required"));
                Cell::Null
            }
            Some(Field::Str(s)) => match parse_time(s) {
                Some(ns) => Cell::Ts(ns),
                None => {
                    self.errors.push(format!(
                        "{name} must be an RFC 3339 time such as 2025-11-24T12:00:00Z, got {s:?}"
                    ));
                    Cell::Null
                }
            },
            Some(other) => {
                self.errors.push(format!(
                    "{name} must be an RFC 3339 time string, got {}",
                    other.kind()
                ));
                Cell::Null
            }
        }
    }

    fn integer(&mut self, name: &str, v: &Field) -> Option<i64> {
        match v.as_i64() {
            Some(n) => Some(n),
            None => {
                let what = if v.is_number() {
                    "a fraction or out of range"
                } else {
                    v.kind()
                };
                self.errors
                    .push(format!("{name} must be an integer, got {what}"));
                None
            }
        }
    }

    /// A non-negative count that fits the column's 32 bits; `None` if absent.
    pub fn opt_count32(&mut self, name: &str) -> Option<i32> {
        let v = self.get(name)?;
        self.count32_of(name, v)
    }

    /// The count `v` of field `name`, checked.
    fn count32_of(&mut self, name: &str, v: &Field) -> Option<i32> {
        let n = self.integer(name, v)?;
        if n < 0 {
            self.errors.push(format!("{name} must be >= 0, got {n}"));
            None
        } else if n > i32::MAX as i64 {
            self.errors
                .push(format!("{name} must be at most {}, got {n}", i32::MAX));
            None
        } else {
            Some(n as i32)
        }
    }

    pub fn count32(&mut self, name: &str) -> Cell<'a> {
        let Some(v) = self.get(name) else {
            self.errors.push(format!("{name} is required"));
            return Cell::Null;
        };
        self.count32_of(name, v)
            .map(Cell::I32)
            .unwrap_or(Cell::Null)
    }

    pub fn opt_count64(&mut self, name: &str) -> Option<i64> {
        let v = self.get(name)?;
        let n = self.integer(name, v)?;
        if n < 0 {
            self.errors.push(format!("{name} must be >= 0, got {n}"));
            None
        } else {
            Some(n)
        }
    }

    pub fn count64(&mut self, name: &str) -> Cell<'a> {
        if !self.has(name) {
            self.errors.push(format!("{name} is required"));
            return Cell::Null;
        }
        self.opt_count64(name).map(Cell::I64).unwrap_or(Cell::Null)
    }

    pub fn opt_bool(&mut self, name: &str) -> Option<bool> {
        match self.get(name)? {
            Field::Bool(b) => Some(*b),
            other => {
                self.errors
                    .push(format!("{name} must be a boolean, got {}", other.kind()));
                None
            }
        }
    }

    pub fn bool_or(&mut self, name: &str, default: bool) -> Cell<'a> {
        Cell::Bool(self.opt_bool(name).unwrap_or(default))
    }

    pub fn bool(&mut self, name: &str) -> Cell<'a> {
        if !self.has(name) {
            self.errors.push(format!("{name} is required"));
            return Cell::Null;
        }
        self.opt_bool(name).map(Cell::Bool).unwrap_or(Cell::Null)
    }

    /// A non-negative number of seconds, as whole milliseconds.
    pub fn opt_seconds_as_ms(&mut self, name: &str) -> Option<i32> {
        let v = self.get(name)?;
        match v.as_f64() {
            Some(s) if s >= 0.0 && s * 1000.0 <= i32::MAX as f64 => {
                Some((s * 1000.0).round() as i32)
            }
            Some(s) => {
                self.errors.push(format!(
                    "{name} must be between 0 and 2147483 seconds, got {s}"
                ));
                None
            }
            None => {
                self.errors
                    .push(format!("{name} must be a number, got {}", v.kind()));
                None
            }
        }
    }

    /// `total_tokens` as sent, or prompt + completion when left out; the
    /// width (32 or 64 bits) follows `prompt`.
    pub fn total_tokens(&mut self, prompt: &Cell, completion: &Cell) -> Cell<'a> {
        let wide = matches!(prompt, Cell::I64(_));
        if self.has("total_tokens") {
            return if wide {
                self.count64("total_tokens")
            } else {
                self.count32("total_tokens")
            };
        }
        match (prompt, completion) {
            (Cell::I64(p), Cell::I64(c)) => Cell::I64(p.saturating_add(*c)),
            (Cell::I32(p), Cell::I32(c)) => match p.checked_add(*c) {
                Some(t) => Cell::I32(t),
                None => {
                    self.error("prompt_tokens + completion_tokens must fit in 32 bits".into());
                    Cell::Null
                }
            },
            _ => Cell::Null,
        }
    }

    /// `metadata` as JSON text; any JSON value is kept as it is.
    pub fn metadata(&self) -> Cell<'a> {
        self.get("metadata")
            .map(|m| match m {
                Field::Nested(v) => Cell::from(v.to_string()),
                scalar => Cell::from(scalar.to_json().to_string()),
            })
            .unwrap_or(Cell::Null)
    }

    /// Every field error, joined; the row's fit to its schema is checked
    /// where it is appended (or made a record).
    pub fn finish(self) -> Result<(), InvalidEvent> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidEvent(self.errors.join("; ")))
        }
    }
}

/// Parses RFC 3339, or an ISO 8601 time without an offset as UTC (what
/// Python's `datetime.utcnow().isoformat()` sends).
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt();
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .and_then(|t| t.and_utc().timestamp_nanos_opt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_with_offset_and_without_are_utc() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(parse_time("1970-01-01T01:00:01+01:00"), Some(1_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5"), Some(1_500_000_000));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn errors_name_the_field_and_the_rule() {
        let obj = json!({"a": -5, "b": "x", "c": 1.5, "e": "", "t": "noon"});
        let obj = Object::from_map(obj.as_object().unwrap());
        let mut f = Fields::new(&obj);
        f.count32("a");
        f.count32("b");
        f.count32("c");
        f.str("d");
        f.str("e");
        f.timestamp("t");
        let err = f.finish().unwrap_err();
        assert_eq!(
            err.to_string(),
            "a must be >= 0, got -5; b must be an integer, got a string; \
             c must be an integer, got a fraction or out of range; d is required; \
             e must not be empty; t must be an RFC 3339 time such as 2025-11-24T12:00:00Z, got \"noon\""
        );
    }
}
