//! The JSONPath of a meter's `valueProperty` and `groupBy` (as OpenMeter
//! writes them): `$`, then fields (`.tokens`, `['a b']`, `["a"]`) and array
//! indexes (`[0]`). Checked when a meter is defined; applied to each
//! event's `data`.

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Field(String),
    Index(usize),
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

/// A path tally cannot read: what is wrong, at which character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?} is not a JSONPath tally reads ({rule}, at character {at}); write it as $.field, $.a.b, $['a b'] or $.list[0]")]
pub struct BadPath {
    pub path: String,
    pub rule: &'static str,
    pub at: usize,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, BadPath> {
        let bad = |rule, at| BadPath {
            path: text.to_string(),
            rule,
            at,
        };
        let chars: Vec<char> = text.chars().collect();
        if chars.first() != Some(&'$') {
            return Err(bad("it must start with $", 0));
        }
        let mut steps = Vec::new();
        let mut i = 1;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < chars.len()
                        && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '-')
                    {
                        j += 1;
                    }
                    if j == start {
                        return Err(bad("a field name must follow a dot", start));
                    }
                    steps.push(Step::Field(chars[start..j].iter().collect()));
                    i = j;
                }
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|c| *c == ']')
                        .map(|p| i + p)
                        .ok_or_else(|| bad("a bracket is not closed", i))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let quoted = inner.len() >= 2
                        && ((inner.starts_with('\'') && inner.ends_with('\''))
                            || (inner.starts_with('"') && inner.ends_with('"')));
                    if quoted {
                        steps.push(Step::Field(inner[1..inner.len() - 1].to_string()));
                    } else if let Ok(n) = inner.parse::<usize>() {
                        steps.push(Step::Index(n));
                    } else {
                        return Err(bad("brackets hold a quoted name or an index", i + 1));
                    }
                    i = close + 1;
                }
                _ => return Err(bad("expected . or [", i)),
            }
        }
        if steps.is_empty() {
            return Err(bad("it must name a field", 1));
        }
        Ok(JsonPath {
            text: text.to_string(),
            steps,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `v`, if any (`null` counts as none).
    pub fn get<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        let mut at = v;
        for s in &self.steps {
            at = match s {
                Step::Field(f) => at.get(f.as_str())?,
                Step::Index(n) => at.get(*n)?,
            };
        }
        (!at.is_null()).then_some(at)
    }
}

/// A value as a meter's number: a JSON number, or a string holding one.
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

/// A value as a group-by key: a string as it is, any other scalar as its
/// JSON text, objects and arrays as their JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_read_fields_quoted_names_and_indexes() {
        let v = json!({"tokens": 12, "a": {"b c": [5, {"d": "x"}]}, "n": null});
        let at = |p: &str| JsonPath::parse(p).unwrap().get(&v).cloned();
        assert_eq!(at("$.tokens"), Some(json!(12)));
        assert_eq!(at("$['tokens']"), Some(json!(12)));
        assert_eq!(at("$.a[\"b c\"][0]"), Some(json!(5)));
        assert_eq!(at("$.a['b c'][1].d"), Some(json!("x")));
        assert_eq!(at("$.missing"), None);
        assert_eq!(at("$.n"), None);
        assert_eq!(at("$.tokens.deeper"), None);
    }

    #[test]
    fn a_bad_path_says_where() {
        for (p, rule) in [
            ("tokens", "it must start with $"),
            ("$", "it must name a field"),
            ("$.", "a field name must follow a dot"),
            ("$.a[", "a bracket is not closed"),
            ("$.a[x]", "brackets hold a quoted name or an index"),
            ("$a", "expected . or ["),
        ] {
            assert_eq!(JsonPath::parse(p).unwrap_err().rule, rule, "{p}");
        }
    }

    #[test]
    fn numbers_and_texts() {
        assert_eq!(number(&json!(2.5)), Some(2.5));
        assert_eq!(number(&json!("3")), Some(3.0));
        assert_eq!(number(&json!("three")), None);
        assert_eq!(number(&json!(true)), None);
        assert_eq!(text(&json!("gpt-4")), "gpt-4");
        assert_eq!(text(&json!(4)), "4");
        assert_eq!(text(&json!(true)), "true");
    }
}
