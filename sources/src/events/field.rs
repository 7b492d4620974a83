//! A top-level field of a JSON event, and the tag its name is looked up
//! by: what the hand reader ([`super::scan`]) and `serde_json`'s visitor
//! ([`super::object`]) both build.

use std::borrow::Cow;

use serde_json::Value as Json;

/// A top-level field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer (how JSON parsers read `0`, `12`, ...).
    PosInt(u64),
    /// A negative integer.
    NegInt(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// An array or an object.
    Nested(Json),
}

impl Field<'_> {
    /// How an error names what was sent.
    pub fn kind(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Bool(_) => "a boolean",
            Field::PosInt(_) | Field::NegInt(_) | Field::Float(_) => "a number",
            Field::Str(_) => "a string",
            Field::Nested(Json::Array(_)) => "an array",
            Field::Nested(_) => "an object",
        }
    }

    /// The integer, if the number is one that fits 64 signed bits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Field::PosInt(n) => i64::try_from(*n).ok(),
            Field::NegInt(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Field::PosInt(n) => Some(*n as f64),
            Field::NegInt(n) => Some(*n as f64),
            Field::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Field::PosInt(_) | Field::NegInt(_) | Field::Float(_))
    }

    /// The value as a `serde_json::Value` (to keep it as JSON text).
    pub fn to_json(&self) -> Json {
        match self {
            Field::Null => Json::Null,
            Field::Bool(b) => Json::Bool(*b),
            Field::PosInt(n) => Json::from(*n),
            Field::NegInt(n) => Json::from(*n),
            Field::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
            Field::Str(s) => Json::String(s.to_string()),
            Field::Nested(v) => v.clone(),
        }
    }

    pub(super) fn from_json(v: &Json) -> Field<'_> {
        match v {
            Json::Null => Field::Null,
            Json::Bool(b) => Field::Bool(*b),
            Json::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Field::PosInt(u),
                (None, Some(i)) => Field::NegInt(i),
                _ => Field::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Field::Str(Cow::Borrowed(s)),
            nested => Field::Nested(nested.clone()),
        }
    }
}

/// A name's length and its first and last eight bytes (a short name's
/// bytes) folded into one word. Two names with different tags differ, so a
/// lookup compares tags and compares names only where the tags are equal:
/// a decoder asks for ~25 names among ~15 fields per event.
pub(super) fn tag(name: &str) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let b = name.as_bytes();
    let len = (b.len() as u64).wrapping_mul(K);
    match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(head), Some(tail)) => {
            u64::from_le_bytes(*head) ^ u64::from_le_bytes(*tail).rotate_left(23) ^ len
        }
        _ => b.iter().fold(len, |t, &x| t.rotate_left(8) ^ x as u64),
    }
}
